"""Qm.n fixed point: QFormat, the rounding modes, quantize/dequantize, choose_frac_bits.

Reference values are worked by hand in the comment beside each.
"""

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale.quant import (
    FRAC_BITS_LIMIT,
    INT32_MAX,
    INT32_MIN,
    QFormat,
    choose_frac_bits,
    code_dtype,
    dequantize,
    integer_range,
    quantize,
    quantize_affine,
    round_values,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

MODES = ["nearest_even", "half_away", "floor", "stochastic"]


@st.composite
def formats(draw, max_bits=16):
    bits = draw(st.integers(2, max_bits))
    return QFormat(bits, draw(st.integers(-6, 14)), draw(st.booleans()))


def in_range_values(fmt, n_max=20):
    return arrays(
        np.float64,
        st.integers(1, n_max),
        elements=st.floats(fmt.min_value, fmt.max_value, allow_nan=False, allow_infinity=False),
    )


def exact_error(x, x_hat):
    """Exact |x - x_hat| per element, as Fractions (no float rounding in the test itself)."""
    return [
        abs(Fraction(float(a)) - Fraction(float(b))) for a, b in zip(np.ravel(x), np.ravel(x_hat))
    ]


def test_qformat_q3_4_reference():
    # 8 bits signed, 4 fractional: codes [-128, 127], step 1/16, values [-8, 127/16].
    fmt = QFormat(8, 4)
    assert (fmt.qmin, fmt.qmax, fmt.step) == (-128, 127, 0.0625)
    assert (fmt.min_value, fmt.max_value) == (-8.0, 7.9375)
    assert fmt.name == "Q3.4" and str(fmt) == "Q3.4"
    assert fmt.dtype == np.int8


def test_qformat_unsigned_and_wide_names():
    # Unsigned 8 bits, 4 fractional: codes [0, 255], max 255/16; UQ4.4 in ARM notation.
    u = QFormat(8, 4, signed=False)
    assert (u.qmin, u.qmax, u.max_value, u.name, u.dtype) == (0, 255, 15.9375, "UQ4.4", np.uint8)
    assert QFormat(32, 30).name == "Q1.30" and QFormat(32, 30).dtype == np.int32
    assert QFormat(16, 15).name == "Q0.15" and QFormat(16, 15).qmin == -32768
    assert QFormat(8, -2).name == "Q9.-2" and QFormat(8, -2).step == 4.0
    assert (
        QFormat(32, 0, signed=False).qmax == 2**32 - 1
        and QFormat(32, 0, signed=False).dtype == np.uint32
    )


def test_qformat_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QFormat(8, 4).bits = 4


@pytest.mark.parametrize("bits", [0, 1, 33, -8])
def test_qformat_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 32\], got"):
        QFormat(bits, 0)


@pytest.mark.parametrize("bits", [8.0, "8", True, None])
def test_qformat_bits_not_integer(bits):
    with pytest.raises(TypeError, match="bits must be an integer"):
        QFormat(bits, 0)


def test_qformat_frac_bits_checked():
    with pytest.raises(ValueError, match="frac_bits"):
        QFormat(8, FRAC_BITS_LIMIT + 1)
    with pytest.raises(TypeError, match="frac_bits"):
        QFormat(8, 2.5)
    with pytest.raises(TypeError, match="signed"):
        QFormat(8, 2, signed=1)
    assert QFormat(np.int64(8), np.int32(3)).bits == 8  # numpy integers are integers


@settings(deadline=None)
@given(bits=st.integers(2, 32), signed=st.booleans())
def test_code_dtype_is_smallest_that_holds_range(bits, signed):
    qmin, qmax = integer_range(bits, signed)
    dtype = code_dtype(bits, signed)
    info = np.iinfo(dtype)
    assert info.min <= qmin and qmax <= info.max
    assert info.bits == min(w for w in (8, 16, 32) if w >= bits)
    assert (info.min < 0) == signed


def test_integer_range_reference():
    assert integer_range(8) == (-128, 127)
    assert integer_range(8, narrow_range=True) == (-127, 127)
    assert integer_range(8, signed=False, narrow_range=True) == (1, 255)
    assert integer_range(2) == (-2, 1)
    assert integer_range(32) == (INT32_MIN, INT32_MAX)


def test_round_half_even_reference_case():
    # IEEE 754 roundTiesToEven: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -2.5 -> -2.
    x = [0.5, 1.5, 2.5, -0.5, -2.5]
    assert quantize(x, QFormat(8, 0)).tolist() == [0, 2, 2, 0, -2]
    assert quantize_affine(x, 1.0, 0).tolist() == [0, 2, 2, 0, -2]
    assert quantize(x, QFormat(8, 0), "half_away").tolist() == [1, 2, 3, -1, -3]
    assert quantize(x, QFormat(8, 0), "floor").tolist() == [0, 1, 2, -1, -3]


def test_half_away_has_no_add_half_error():
    # 0.49999999999999994 + 0.5 rounds to 1.0 in float64, so floor(x + 0.5) would give 1.
    assert round_values([0.49999999999999994, -0.49999999999999994], "half_away").tolist() == [
        0.0,
        0.0,
    ]


def test_floor_keeps_sign_of_underflowed_negatives():
    # -1e-300 * 2**-960 underflows to -0.0, yet floor of a negative value in (-1, 0) is -1.
    assert quantize([-1e-300, 1e-300], QFormat(8, -960), "floor").tolist() == [-1, 0]


def test_unknown_rounding_mode():
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize([1.0], QFormat(8, 0), rounding="nearest")
    with pytest.raises(ValueError, match="rounding"):
        quantize_affine([1.0], 1.0, 0, rounding="ceil")


@settings(max_examples=60, deadline=None)
@given(data=st.data(), fmt=formats(), rounding=st.sampled_from(["nearest_even", "half_away"]))
def test_nearest_error_at_most_half_step(data, fmt, rounding, backend):
    x = data.draw(in_range_values(fmt))
    err = exact_error(x, dequantize(quantize(x, fmt, rounding), fmt))
    assert max(err) <= Fraction(fmt.step) / 2


@settings(max_examples=60, deadline=None)
@given(data=st.data(), fmt=formats())
def test_floor_error_below_one_step_and_one_sided(data, fmt, backend):
    x = data.draw(in_range_values(fmt))
    x_hat = dequantize(quantize(x, fmt, "floor"), fmt)
    assert np.all(x_hat <= x)
    assert max(exact_error(x, x_hat)) < Fraction(fmt.step)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), fmt=formats(), seed=st.integers(0, 2**32 - 1))
def test_stochastic_rounds_to_a_neighbour(data, fmt, seed):
    x = data.draw(in_range_values(fmt))
    q = quantize(x, fmt, "stochastic", seed=seed).astype(np.int64)
    v = np.ldexp(x, fmt.frac_bits)
    assert np.all((q == np.floor(v)) | (q == np.ceil(v)))
    assert max(exact_error(x, dequantize(q, fmt))) < Fraction(fmt.step)


@settings(max_examples=60, deadline=None)
@given(
    fmt=formats(max_bits=32),
    x=arrays(np.float64, st.integers(1, 20), elements=st.floats(allow_nan=False)),
    rounding=st.sampled_from(MODES),
)
def test_codes_never_leave_range(fmt, x, rounding, backend):
    q = quantize(x, fmt, rounding, seed=0)
    assert q.dtype == fmt.dtype
    assert q.min() >= fmt.qmin and q.max() <= fmt.qmax


@settings(max_examples=60, deadline=None)
@given(fmt=formats(), excess=st.floats(1.0, 1e6), rounding=st.sampled_from(MODES))
def test_out_of_range_saturates_to_the_ends(fmt, excess, rounding, backend):
    x = [fmt.max_value + excess * fmt.step, fmt.min_value - excess * fmt.step, np.inf, -np.inf]
    assert quantize(x, fmt, rounding, seed=1).tolist() == [fmt.qmax, fmt.qmin, fmt.qmax, fmt.qmin]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), fmt=formats(max_bits=32), rounding=st.sampled_from(MODES))
def test_dequantize_then_quantize_is_identity_on_codes(data, fmt, rounding, backend):
    q = np.array(
        data.draw(st.lists(st.integers(fmt.qmin, fmt.qmax), min_size=1, max_size=20)),
        dtype=fmt.dtype,
    )
    assert np.array_equal(quantize(dequantize(q, fmt), fmt, rounding, seed=3), q)


@settings(max_examples=25, deadline=None)
@given(x=st.floats(-3.0, 3.0), seed=st.integers(0, 2**32 - 1))
def test_stochastic_rounding_is_unbiased(x, seed):
    # One draw of dequantize(q) is x_floor + step * Bernoulli(p): mean x, sd step*sqrt(p(1-p))
    # <= step/2. The mean of N draws therefore has sd <= step / (2 sqrt N); a deviation beyond
    # 5 sd has two-sided Gaussian probability < 6e-7 per example.
    fmt, n = QFormat(8, 4), 20_000
    x_hat = dequantize(quantize(np.full(n, x), fmt, "stochastic", seed=seed), fmt)
    assert abs(x_hat.mean() - x) <= 5 * fmt.step / (2 * math.sqrt(n))


def test_stochastic_rounding_follows_seed_and_generator():
    x, fmt = np.linspace(-1, 1, 101), QFormat(8, 3)
    a = quantize(x, fmt, "stochastic", seed=7)
    assert np.array_equal(a, quantize(x, fmt, "stochastic", seed=7))
    assert np.array_equal(a, quantize(x, fmt, "stochastic", seed=np.random.default_rng(7)))
    assert not np.array_equal(a, quantize(x, fmt, "stochastic", seed=8))


def test_saturate_false_raises_instead_of_clipping():
    fmt = QFormat(8, 4)
    # 7.96 * 16 = 127.36 rounds to 127: in range; 7.99 * 16 = 127.84 rounds to 128: out.
    assert quantize([7.96], fmt, saturate=False).tolist() == [127]
    with pytest.raises(ValueError, match=r"x has values whose codes fall outside \[-128, 127\]"):
        quantize([7.99], fmt, saturate=False)
    assert quantize([7.99], fmt, "floor", saturate=False).tolist() == [127]
    with pytest.raises(ValueError, match="saturate=False"):
        quantize([-np.inf], fmt, saturate=False)


def test_quantize_rejects_nan_and_bad_types():
    with pytest.raises(ValueError, match="x contains NaN"):
        quantize([0.0, np.nan], QFormat(8, 4))
    with pytest.raises(TypeError, match="fmt must be a QFormat"):
        quantize([1.0], 8)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        quantize(np.array([1 + 1j]), QFormat(8, 4))
    with pytest.raises(TypeError, match="saturate must be a bool"):
        quantize([1.0], QFormat(8, 4), saturate="yes")


def test_dequantize_checks_codes():
    with pytest.raises(ValueError, match=r"outside Q3.4's \[-128, 127\]"):
        dequantize(np.array([200]), QFormat(8, 4))
    with pytest.raises(TypeError, match="q must be an integer array"):
        dequantize(np.array([1.0]), QFormat(8, 4))
    assert dequantize(np.array([3], np.int8), QFormat(8, 4), dtype=np.float32).dtype == np.float32


def test_float32_input_is_quantized_exactly():
    # float32 -> float64 is exact, so the float32 grid value 0.1f lands on the float64 result.
    x32 = np.float32(0.1)
    fmt = QFormat(32, 30)
    assert quantize([x32], fmt).tolist() == [round(Fraction(float(x32)) * 2**30)]


def test_choose_frac_bits_reference():
    # 0.9: 0.9 * 2**7 = 115.2 <= 127 but 0.9 * 2**8 = 230.4 > 127 -> 7.
    # 1.0: 2**7 = 128 > 127 -> 6.  -1.0: -128 >= -128 fits -> 7.
    assert choose_frac_bits([0.9, -0.3], 8) == 7
    assert choose_frac_bits([1.0], 8) == 6
    assert choose_frac_bits([-1.0], 8) == 7
    # unsigned 8 bits: 1.0 * 2**7 = 128 <= 255, 2**8 = 256 > 255 -> 7
    assert choose_frac_bits([1.0], 8, signed=False) == 7
    # 100 needs 7 integer bits: Q7.0 for 8 bits, Q7.8 for 16 bits
    assert choose_frac_bits([100.0], 8) == 0 and choose_frac_bits([100.0], 16) == 8
    assert choose_frac_bits(np.zeros(4), 8) == FRAC_BITS_LIMIT
    assert choose_frac_bits(np.zeros(0), 8) == FRAC_BITS_LIMIT


@settings(max_examples=80, deadline=None)
@given(
    x=arrays(np.float64, st.integers(1, 20), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    bits=st.integers(2, 32),
    signed=st.booleans(),
)
def test_choose_frac_bits_is_largest_without_saturation(x, bits, signed):
    if not signed:
        x = np.abs(x)
    assume(np.any(x != 0))
    f = choose_frac_bits(x, bits, signed)
    fmt = QFormat(bits, f, signed)
    assert np.all((x >= fmt.min_value) & (x <= fmt.max_value))
    if f < FRAC_BITS_LIMIT:  # at the cap (tiny x) no finer format exists to compare with
        finer = QFormat(bits, f + 1, signed)
        assert np.any((x < finer.min_value) | (x > finer.max_value))


def test_choose_frac_bits_bad_input():
    with pytest.raises(ValueError, match="negative values"):
        choose_frac_bits([-0.5, 1.0], 8, signed=False)
    with pytest.raises(ValueError, match="infinite"):
        choose_frac_bits([np.inf], 8)
    with pytest.raises(ValueError, match="NaN"):
        choose_frac_bits([np.nan], 8)
    with pytest.raises(ValueError, match="too large"):
        choose_frac_bits([1e300], 8)
    with pytest.raises(ValueError, match="bits"):
        choose_frac_bits([1.0], 40)
