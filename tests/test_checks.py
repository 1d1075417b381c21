"""minscale._checks: one reference message per helper, and check_int accepts exactly the
integers of its range."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale import _checks as C


def test_argument_type_error_is_both_type_and_value_error():
    with pytest.raises(TypeError):
        C.check_int("epochs", 1.5, 1)
    with pytest.raises(ValueError, match=r"^epochs must be an integer, got 1.5 of type float$"):
        C.check_int("epochs", 1.5, 1)


def test_check_int_messages():
    assert C.check_int("bits", np.int16(8), 2, 32) == 8
    assert type(C.check_int("bits", np.int16(8), 2, 32)) is int
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[2, 32\], got 40$"):
        C.check_int("bits", 40, 2, 32)
    with pytest.raises(ValueError, match=r"^workers must be an integer >= 1, got 0$"):
        C.check_int("workers", 0, 1)
    with pytest.raises(ValueError, match=r"^shift must be an integer <= 31, got 32$"):
        C.check_int("shift", 32, hi=31)
    with pytest.raises(C.ArgumentTypeError, match=r"^step must be an integer, got True"):
        C.check_int("step", True, 0)


@settings(deadline=None, max_examples=200)
@given(value=st.one_of(st.integers(-50, 50), st.floats(-50, 50), st.booleans(), st.none(),
                       st.text(max_size=2)),
       lo=st.one_of(st.none(), st.integers(-20, 20)), width=st.integers(0, 20))
def test_check_int_accepts_exactly_the_integers_in_range(value, lo, width):
    hi = None if lo is None else lo + width
    ok = (isinstance(value, int) and not isinstance(value, bool)
          and (lo is None or lo <= value <= hi))
    if ok:
        assert C.check_int("x", value, lo, hi) == value
    else:
        with pytest.raises(ValueError, match=r"^x must be an integer"):
            C.check_int("x", value, lo, hi)


def test_check_bool():
    assert C.check_bool("packed", np.True_) is True
    with pytest.raises(C.ArgumentTypeError, match=r"^packed must be a bool, got 1$"):
        C.check_bool("packed", 1)


def test_check_real():
    assert C.check_real("lr", 1) == 1.0
    with pytest.raises(ValueError, match=r"^lr must be > 0, got 0.0$"):
        C.check_real("lr", 0.0, 0, lo_open=True)
    with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\), got 1.0$"):
        C.check_real("beta", 1.0, 0, 1, hi_open=True)
    with pytest.raises(ValueError, match=r"^tol must be <= 2, got 3.0$"):
        C.check_real("tol", 3, hi=2)
    with pytest.raises(ValueError, match=r"^lr must not be NaN$"):
        C.check_real("lr", float("nan"))
    with pytest.raises(C.ArgumentTypeError, match=r"^lr must be a real number, got '1'$"):
        C.check_real("lr", "1")


def test_check_sparsity():
    assert C.check_sparsity("sparsity", 1) == 1.0
    with pytest.raises(ValueError, match=r"^sparsity must be in \[0, 1\] \(a fraction of zeros, "
                                         r"not a percent\), got 50$"):
        C.check_sparsity("sparsity", 50)
    with pytest.raises(C.ArgumentTypeError, match=r"a fraction of zeros, not a percent"):
        C.check_sparsity("sparsity", "0.5")


def test_check_choice():
    assert C.check_choice("rounding", "floor", ("nearest", "floor")) == "floor"
    with pytest.raises(ValueError,
                       match=r"^rounding must be one of \('nearest', 'floor'\), got 'up'$"):
        C.check_choice("rounding", "up", ("nearest", "floor"))


def test_check_step():
    assert C.check_step("step", np.int64(3)) == 3
    np.testing.assert_array_equal(C.check_step("step", np.array([0, 2], np.int32)), [0, 2])
    assert C.check_step("step", np.array([0, 2], np.int32)).dtype == np.int64
    with pytest.raises(ValueError, match=r"^step must be >= 0 \(updates taken so far\), got -1$"):
        C.check_step("step", -1)
    with pytest.raises(ValueError, match=r"got min -2$"):
        C.check_step("step", np.array([1, -2]))
    with pytest.raises(C.ArgumentTypeError, match=r"^step must be an integer or an integer ndarray"):
        C.check_step("step", 1.0)


def test_as_rng():
    g = np.random.default_rng(1)
    assert C.as_rng("seed", g) is g
    assert C.as_rng("seed", 3).integers(1 << 30) == np.random.default_rng(3).integers(1 << 30)
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0, got -1$"):
        C.as_rng("seed", -1)
    with pytest.raises(C.ArgumentTypeError, match=r"^seed must be an integer >= 0 or a numpy"):
        C.as_rng("seed", 1.0)


def test_check_float_dtype():
    assert C.check_float_dtype("dtype", "float32") == np.float32
    with pytest.raises(ValueError, match=r"^dtype must be float32 or float64, got 'int8'$"):
        C.check_float_dtype("dtype", "int8")
    with pytest.raises(C.ArgumentTypeError, match=r"^dtype must be float32 or float64"):
        C.check_float_dtype("dtype", object())


def test_check_finite_array():
    a = np.array([[1.0, np.nan], [np.inf, 2.0]])
    with pytest.raises(ValueError, match=r"^W must be finite, got 2 non-finite entries, the first "
                                         r"(np.float64\()?nan\)? at index \(0, 1\)$"):
        C.check_finite_array("W", a)
    with pytest.raises(ValueError, match=r"got 1 non-finite entry, the first (np.float64\()?inf\)? at "
                                         r"index \(1,\)$"):
        C.check_finite_array("b", np.array([0.0, np.inf]))
    ints = np.arange(3)
    assert C.check_finite_array("q", ints) is ints


def test_check_int_array():
    out = C.check_int_array("acc", np.array([1, -2], np.int32), -(2**31), 2**31 - 1)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [1, -2])
    with pytest.raises(ValueError, match=r"^shift must hold integers in \[-31, 31\], got 40 at "
                                         r"index \(1,\)$"):
        C.check_int_array("shift", [0, 40], -31, 31)
    with pytest.raises(ValueError, match=r"^acc must have shape \(3,\), got shape \(2,\)$"):
        C.check_int_array("acc", [1, 2], 0, 9, shape=(3,))
    with pytest.raises(C.ArgumentTypeError, match=r"^acc must hold integers, got dtype float64$"):
        C.check_int_array("acc", [1.0], 0, 9)


def test_size_limits_name_only_the_violated_side_and_long_integers_are_shortened():
    from minscale._checks import COUNT_MAX, check_int

    with pytest.raises(ValueError, match=r"^epochs must be an integer >= 0, got -1$"):
        check_int("epochs", -1, 0, COUNT_MAX)
    with pytest.raises(ValueError, match=r"^batch_size must be an integer <= 2\*\*31 - 1 = "
                                         r"2147483647, got 100000000000\.\.\. \(32 digits\)$"):
        check_int("batch_size", 10**31, 1, COUNT_MAX)
    # a range that is part of the argument's meaning is given whole
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[2, 32\], got 1$"):
        check_int("bits", 1, 2, 32)
