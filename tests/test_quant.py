"""Tests of minscale.quant's formula layer: fixed point, affine, fake quant, gemmlowp integer ops.

Reference values are worked by hand in the comment beside each; oracles for the integer
primitives use Python's unbounded integers and ``fractions.Fraction``, so they are exact.
"""

import dataclasses
import doctest
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale import kernels, quant
from minscale.quant import (
    FLOAT32_EPS,
    FRAC_BITS_LIMIT,
    INT32_MAX,
    INT32_MIN,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    QFormat,
    affine_qparams,
    bias_safe_weight_scale,
    channel_min_max,
    choose_frac_bits,
    code_dtype,
    compression_ratio,
    dequantize,
    dequantize_affine,
    fake_quantize,
    fake_quantize_grad_mask,
    int_matmul,
    integer_range,
    multiply_by_quantized_multiplier,
    quantize,
    quantize_affine,
    quantize_bias,
    quantize_multiplier,
    quantize_weights,
    quantized_nbytes,
    REQUANTIZE_ROUNDINGS,
    requantize,
    round_values,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

MODES = ["nearest_even", "half_away", "floor", "stochastic"]
int32s = st.integers(INT32_MIN, INT32_MAX)


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


def quiet():
    """Context in which any warning or floating-point exception is an error."""

    class _Quiet:
        def __enter__(self):
            self._w = warnings.catch_warnings()
            self._w.__enter__()
            warnings.simplefilter("error")
            self._e = np.errstate(all="raise")
            self._e.__enter__()

        def __exit__(self, *exc):
            self._e.__exit__(*exc)
            return self._w.__exit__(*exc)

    return _Quiet()


def test_docstring_examples_run():
    result = doctest.testmod(quant, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 30
    assert result.failed == 0


# ---------------------------------------------------------------------------------- QFormat


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


# ---------------------------------------------------------------------------------- rounding


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


# ---------------------------------------------------------------------------------- fixed point


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


# ------------------------------------------------------------------------------ choose_frac_bits


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


# ---------------------------------------------------------------------------------- affine qparams


def test_affine_qparams_reference_values():
    # [-1, 1] uint8: scale 2/255; zero_point = 0 - round(-1 / (2/255)) = -round(-127.5) = 128.
    assert affine_qparams(-1.0, 1.0, signed=False) == (2 / 255, 128)
    # [0, 1] int8: scale 1/255, zero_point = -128 - round(0) = -128.
    assert affine_qparams(0.0, 1.0) == (1 / 255, -128)
    # [-2, 0] int8: scale 2/255, zero_point = -128 - round(-255) = 127.
    assert affine_qparams(-2.0, 0.0) == (2 / 255, 127)
    # Range widened to include 0: [0.5, 3] behaves as [0, 3].
    assert affine_qparams(0.5, 3.0) == affine_qparams(0.0, 3.0)
    # Symmetric int8: scale max|x| / 127.5 (full range) or / 127 (narrow); zero point 0.
    assert affine_qparams(-1.0, 0.5, symmetric=True) == (1 / 127.5, 0)
    assert affine_qparams(-1.0, 0.5, symmetric=True, narrow_range=True) == (1 / 127, 0)
    # Symmetric uint8: zero point at the midpoint 128 (torch's quint8 symmetric default).
    assert affine_qparams(-1.0, 0.5, signed=False, symmetric=True) == (1 / 127.5, 128)
    # 4-bit unsigned [0, 15]: [-1, 2] -> scale 3/15 = 0.2, zero_point = -round(-5) = 5.
    scale, zp = affine_qparams(-1.0, 2.0, bits=4, signed=False)
    assert zp == 5 and scale == pytest.approx(0.2, rel=1e-15)


def test_affine_qparams_types_are_float64_and_int():
    scale, zp = affine_qparams(np.float32(-1.0), np.float32(1.0))
    assert type(scale) is float and type(zp) is int
    s, z = affine_qparams(np.array([-1.0, 0.0], np.float32), np.array([1.0, 2.0], np.float32))
    assert s.dtype == np.float64 and z.dtype == np.int64 and s.shape == (2,)


def test_all_zero_and_constant_tensors_are_quiet_and_exact(backend):
    with quiet():
        for x, kw in [
            (np.zeros(4), {}),
            (np.zeros(4), {"signed": False}),
            (np.zeros(4), {"symmetric": True}),
            (np.full(3, 0.5), {}),
            (np.full(3, 0.5), {"signed": False}),
            (np.full(3, 0.5), {"symmetric": True, "narrow_range": True}),
            (np.full(3, -0.5), {}),
        ]:
            scale, zp = affine_qparams(*channel_min_max(x), **kw)
            assert math.isfinite(scale) and scale > 0
            q = quantize_affine(
                x,
                scale,
                zp,
                signed=kw.get("signed", True),
                narrow_range=kw.get("narrow_range", False),
            )
            assert np.array_equal(dequantize_affine(q, scale, zp), x), (x, kw)
    # The floor is torch's eps: an all-zero range gets scale 2**-23, not 0 or NaN.
    assert affine_qparams(0.0, 0.0)[0] == FLOAT32_EPS == 2.0**-23


def test_per_row_symmetric_narrow_weights_reference(backend):
    # Row 1: max |w| = 1 -> scale 1/127; codes -1*127 = -127, 0.5*127 = 63.5 -> 64 (ties to
    # even), 1*127 = 127. Row 0 is all zero: scale eps, codes 0, and no 0/0 anywhere.
    W = np.array([[0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]])
    with quiet():
        codes, scale, zp = quantize_weights(W, axis=0)
    assert codes.dtype == np.int8
    assert codes.tolist() == [[0, 0, 0], [-127, 64, 127]]
    assert scale.tolist() == [FLOAT32_EPS, 1 / 127] and zp.tolist() == [0, 0]
    assert dequantize_affine(codes, scale, zp, axis=0)[0].tolist() == [0.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    w=arrays(
        np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=st.floats(-100, 100)
    ),
    axis=st.sampled_from([0, 1, -1, None]),
)
def test_weights_are_narrow_symmetric_with_exact_zero(w, axis):
    codes, scale, zp = quantize_weights(w, axis=axis)
    assert codes.min() >= -127 and codes.max() <= 127
    assert np.all(np.asarray(zp) == 0)
    assert np.all(codes[w == 0] == 0)
    # Each channel's largest |w| maps to +-127 exactly, unless the channel's scale is floored at
    # eps (max |w| < 127 * eps, all zero included).
    wa = (
        np.abs(w).reshape(1, -1)
        if axis is None
        else np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
    )
    ca = (
        np.abs(codes).reshape(1, -1)
        if axis is None
        else np.moveaxis(np.abs(codes), axis, 0).reshape(w.shape[axis], -1)
    )
    for w_row, c_row in zip(np.atleast_2d(wa), np.atleast_2d(ca)):
        if w_row.max() >= 127 * FLOAT32_EPS:
            assert c_row[np.argmax(w_row)] == 127
        else:  # scale floored at eps: the largest |w| maps to round(max|w| / eps) < 127
            assert c_row[np.argmax(w_row)] == np.rint(w_row.max() / FLOAT32_EPS)


@st.composite
def ranges_and_formats(draw):
    lo = draw(st.floats(-1e4, 1e4))
    hi = draw(st.floats(lo, 1e4)) if lo < 1e4 else lo
    return (
        lo,
        hi,
        dict(
            bits=draw(st.integers(2, 16)),
            signed=draw(st.booleans()),
            symmetric=draw(st.booleans()),
            narrow_range=draw(st.booleans()),
        ),
    )


@settings(max_examples=50, deadline=None)
@given(ranges_and_formats())
def test_zero_maps_exactly_to_zero_point(backend, case):
    lo, hi, kw = case
    scale, zp = affine_qparams(lo, hi, **kw)
    qmin, qmax = integer_range(kw["bits"], kw["signed"], kw["narrow_range"])
    assert math.isfinite(scale) and scale > 0 and qmin <= zp <= qmax
    q0 = quantize_affine([0.0, -0.0], scale, zp, kw["bits"], kw["signed"], kw["narrow_range"])
    assert q0.tolist() == [zp, zp]
    assert dequantize_affine(q0, scale, zp).tolist() == [0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(ranges_and_formats(), st.floats(0, 1))
def test_affine_error_at_most_half_scale_inside_range(backend, case, t):
    lo, hi, kw = case
    assume(not kw["symmetric"])  # full-range symmetric deliberately clips the top half step
    scale, zp = affine_qparams(lo, hi, **kw)
    assume(scale > FLOAT32_EPS)
    x = np.array([lo, hi, lo + t * (hi - lo)])
    q = quantize_affine(x, scale, zp, kw["bits"], kw["signed"], kw["narrow_range"])
    # float64 division and multiplication add a few ulps of |x| to the half-step bound.
    err = np.abs(dequantize_affine(q, scale, zp) - x)
    assert np.all(err <= scale / 2 + 8 * np.finfo(float).eps * (np.abs(x) + scale))


def test_affine_rounds_before_adding_zero_point():
    # Odd zero point 1: round(0.5) + 1 = 1 and round(2.5) + 1 = 3; rounding x/s + zp instead
    # would give round(1.5) = 2 and round(3.5) = 4.
    assert quantize_affine([0.5, 2.5, -0.5], 1.0, 1).tolist() == [1, 3, 1]
    assert fake_quantize([0.5, 2.5, -0.5], 1.0, 1).tolist() == [0.0, 2.0, 0.0]
    assert quantize_affine(
        [[0.5], [2.5]], np.array([1.0, 1.0]), np.array([1, 3]), axis=0
    ).tolist() == [[1], [5]]


def test_per_channel_matches_per_tensor_on_each_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    lo, hi = channel_min_max(x, axis=1)
    scale, zp = affine_qparams(lo, hi, signed=False)
    q = quantize_affine(x, scale, zp, signed=False, axis=1)
    for c in range(4):
        assert np.array_equal(q[:, c], quantize_affine(x[:, c], scale[c], int(zp[c]), signed=False))
    assert np.array_equal(
        dequantize_affine(q, scale, zp, axis=1)[:, 2],
        dequantize_affine(q[:, 2], scale[2], int(zp[2])),
    )


def test_channel_min_max_reference():
    x = np.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    assert [a.tolist() for a in channel_min_max(x, axis=1)] == [[-1.0, -2.0], [3.0, 4.0]]
    assert [a.tolist() for a in channel_min_max(x, axis=0)] == [[-2.0, 0.5, -1.0], [1.0, 3.0, 4.0]]
    assert channel_min_max(x) == (-2.0, 4.0)
    assert channel_min_max(np.zeros((0,))) == (0.0, 0.0)


def test_affine_bad_input():
    with pytest.raises(ValueError, match=r"x_min must be <= x_max, got x_min=2.0 > x_max=1.0"):
        affine_qparams(2.0, 1.0)
    with pytest.raises(ValueError, match="at channel 1"):
        affine_qparams([0.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="x_min contains NaN"):
        affine_qparams(np.nan, 1.0)
    with pytest.raises(ValueError, match="x_max contains an infinite value"):
        affine_qparams(0.0, np.inf)
    with pytest.raises(ValueError, match="bits"):
        affine_qparams(0.0, 1.0, bits=1)
    with pytest.raises(TypeError, match="bits"):
        affine_qparams(0.0, 1.0, bits=7.5)
    with pytest.raises(ValueError, match="eps"):
        affine_qparams(0.0, 1.0, eps=0.0)
    with pytest.raises(ValueError, match="one shape"):
        affine_qparams([0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize_affine([1.0], 0.0, 0)
    with pytest.raises(ValueError, match=r"zero_point must lie in \[-128, 127\]"):
        quantize_affine([1.0], 1.0, 128)
    with pytest.raises(TypeError, match="zero_point"):
        quantize_affine([1.0], 1.0, 0.0)
    with pytest.raises(ValueError, match="x contains NaN"):
        quantize_affine([np.nan], 1.0, 0)
    with pytest.raises(ValueError, match="channels along axis 0"):
        quantize_affine(np.ones((3, 2)), np.ones(2), np.zeros(2, int), axis=0)
    with pytest.raises(ValueError, match="must be scalars when axis is None"):
        quantize_affine(np.ones((3, 2)), np.ones(2), np.zeros(2, int))
    with pytest.raises(ValueError, match="axis must be in"):
        quantize_affine(np.ones((3, 2)), np.ones(2), np.zeros(2, int), axis=2)


def test_quantize_affine_saturates_and_stays_in_range(backend):
    q = quantize_affine([1e300, -1e300, np.inf, -np.inf, 1e-300], 1e-300, 0)
    assert q.tolist() == [127, -128, 127, -128, 1]
    assert quantize_affine([1.0, 300.0], 1.0, 0, narrow_range=True).dtype == np.int8
    assert quantize_affine([-300.0], 1.0, 0, narrow_range=True).tolist() == [-127]
    assert quantize_affine([300.0], 1.0, 0, bits=12, signed=False).dtype == np.uint16


def test_quantize_bias_reference():
    # scale 0.5 * [0.25, 0.125] = [0.125, 0.0625]; 0.3 / 0.125 = 2.4 -> 2; -1 / 0.0625 = -16.
    codes, scale = quantize_bias([0.3, -1.0], 0.5, np.array([0.25, 0.125]))
    assert codes.dtype == np.int32 and codes.tolist() == [2, -16]
    assert scale.tolist() == [0.125, 0.0625]
    # 1e12 / 1e-6 = 1e18 codes cannot be held by int32: refused, not saturated to INT32_MAX.
    with pytest.raises(ValueError, match=r"b\[0\] = 1000000000000.0 is beyond the int32 range"):
        quantize_bias([1e12], 1e-3, 1e-3)
    with pytest.raises(ValueError, match=r"b\[1\] = -inf"):
        quantize_bias([0.0, -np.inf], 1e-3, 1e-3)
    # the int32 ends themselves are representable
    assert quantize_bias([INT32_MAX, INT32_MIN], 1.0, 1.0)[0].tolist() == [INT32_MAX, INT32_MIN]
    with pytest.raises(ValueError, match="weight_scale"):
        quantize_bias([1.0, 2.0], 0.5, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="input_scale"):
        quantize_bias([1.0], -0.5, 0.1)


def test_bias_safe_weight_scale_reference():
    # TFLite's rule: widen s_j when |b_j| >= 0.5 * s_in * s_j * INT32_MAX, to
    # 2 |b_j| / (INT32_MAX * s_in). Channel 0 is an all-zero weight column (floor scale 2**-23):
    # 0.5 * 0.02 * 2**-23 * (2**31 - 1) = 2.56 <= 5, so s_0 = 10 / (0.02 * (2**31 - 1)).
    # Channel 1: 0.5 * 0.02 * 0.01 * (2**31 - 1) = 2.1e5 > 0.5, kept.
    s = bias_safe_weight_scale([5.0, 0.5], 0.02, np.array([FLOAT32_EPS, 0.01]))
    assert s.tolist() == [10.0 / (INT32_MAX * 0.02), 0.01]
    codes, _ = quantize_bias([5.0, 0.5], 0.02, s)
    assert codes.tolist() == [2**30, 2500]  # 5 / (0.02 * s_0) = INT32_MAX / 2, rounded
    # per tensor: one scale, widened for the largest |b|
    s = bias_safe_weight_scale([5.0, -6.0], 0.02, FLOAT32_EPS, per_channel=False)
    assert s.tolist() == [12.0 / (INT32_MAX * 0.02)] * 2
    with pytest.raises(ValueError, match="input_scale"):
        bias_safe_weight_scale([1.0], 0.0, 0.1)
    with pytest.raises(ValueError, match="weight_scale"):
        bias_safe_weight_scale([1.0, 2.0], 0.5, np.array([0.1, 0.2, 0.3]))


@settings(max_examples=100, deadline=None)
@given(
    b=arrays(np.float64, st.integers(1, 6), elements=st.floats(-1e6, 1e6)),
    s_in=st.floats(2.0**-23, 10.0),
    log_s_w=st.floats(-23.0, 0.0),
    per_channel=st.booleans(),
)
def test_bias_safe_weight_scale_makes_every_bias_representable(b, s_in, log_s_w, per_channel):
    s_w = np.full(b.shape, 2.0**log_s_w)
    safe = bias_safe_weight_scale(b, s_in, s_w, per_channel)
    assert (safe >= s_w).all()
    codes, scale = quantize_bias(b, s_in, safe)  # never raises: the bias fits
    assert np.abs(codes.astype(np.int64)).max() <= INT32_MAX // 2 + 1
    # each bias is held to within half a code step (exact arithmetic on the float64 values)
    for c, sc, v in zip(codes.tolist(), scale.tolist(), b.tolist()):
        assert abs(c * Fraction(sc) - Fraction(v)) <= Fraction(sc) / 2 + abs(Fraction(v)) / 2**50


# ---------------------------------------------------------------------------------- fake quant


def test_fake_quant_gradient_mask_reference(backend):
    # scale 1/127: x/scale = [-190.5, -127, 25.4, 127, 190.5]; the ends +-1.5 are clipped,
    # the bounds +-1 are representable (included). Upstream gradient of ones.
    x = np.array([-1.5, -1.0, 0.2, 1.0, 1.5])
    for narrow in (True, False):
        mask = fake_quantize_grad_mask(x, 1 / 127, 0, narrow_range=narrow)
        assert (np.ones(5) * mask).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    fq = fake_quantize(x, 1 / 127, 0, narrow_range=True)
    # 0.2 * 127 = 25.4 -> code 25, value scale * 25 (one float64 product).
    assert fq.tolist() == [-1.0, -1.0, (1 / 127) * 25, 1.0, 1.0]


@settings(max_examples=80, deadline=None)
@given(
    x=arrays(np.float64, st.integers(1, 20), elements=st.floats(-10, 10)),
    scale=st.floats(0.01, 1.0),
    zp=st.integers(-128, 127),
)
def test_fake_quant_forward_and_mask_agree(x, scale, zp, backend):
    fq = fake_quantize(x, scale, zp)
    mask = fake_quantize_grad_mask(x, scale, zp)
    lo, hi = (-128 - zp) * scale, (127 - zp) * scale
    # Where the gradient passes, the forward is x rounded to the grid; where it is blocked, the
    # forward is stuck at an end of the range.
    assert np.all(np.abs(fq - x)[mask] <= scale / 2 * (1 + 1e-9))
    assert np.all(np.isin(fq[~mask], [lo, hi]))
    assert np.all((x[~mask] < lo) | (x[~mask] > hi))


def test_fake_quant_keeps_float32():
    x = np.array([0.3, -0.7], np.float32)
    assert fake_quantize(x, 0.25, 0).dtype == np.float32
    assert fake_quantize(np.array([1, 2]), 0.5, 0).dtype == np.float64


def test_fixed_point_fake_quant_equals_qformat_round_trip():
    fmt = QFormat(6, 3)
    x = np.linspace(-5, 5, 41)
    expected = dequantize(quantize(x, fmt), fmt)
    assert np.array_equal(fake_quantize(x, fmt.step, 0, bits=fmt.bits), expected)


# ---------------------------------------------------------------------------------- gemmlowp


def srdhm_oracle(a, b):
    """round(a*b / 2**31), ties toward +inf, with the single overflow case saturated."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return (a * b + 2**30) // 2**31  # Python // floors: floor(ab/2**31 + 1/2)


def rdbpot_oracle(x, e):
    """x / 2**e rounded to nearest, ties away from zero, in exact integers."""
    q, r = divmod(abs(x), 2**e)
    q += 2 * r >= 2**e
    return q if x >= 0 else -q


def test_srdhm_reference_values():
    # (2**30)(2**30)/2**31 = 2**29 exactly.
    assert int(saturating_rounding_doubling_high_mul(2**30, 2**30)) == 2**29
    # The one overflow: (-2**31)(-2**31)/2**31 = 2**31 > INT32_MAX -> saturates.
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX
    # 2**30 / 2**31 = 0.5 rounds up to 1; -0.5 rounds up to 0 (nudge 1 - 2**30, C truncation).
    assert int(saturating_rounding_doubling_high_mul(1, 2**30)) == 1
    assert int(saturating_rounding_doubling_high_mul(-1, 2**30)) == 0
    # (2**31-1)**2 / 2**31 = 2**31 - 2 + 2**-31 -> 2**31 - 2.
    assert int(saturating_rounding_doubling_high_mul(INT32_MAX, INT32_MAX)) == 2**31 - 2
    # (-2**31)(2**31-1)/2**31 = -(2**31-1) exactly.
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX)) == -(2**31 - 1)
    r = saturating_rounding_doubling_high_mul(np.array([2**30, -3]), 2**30)
    assert r.dtype == np.int32 and r.tolist() == [2**29, -1]  # -3/2 = -1.5 -> -1 (ties up)


@settings(max_examples=200, deadline=None)
@given(a=int32s, b=int32s)
def test_srdhm_matches_exact_oracle(a, b):
    assert int(saturating_rounding_doubling_high_mul(a, b)) == srdhm_oracle(a, b)


def test_rdbpot_reference_values():
    # Ties go away from zero: -5/2 = -2.5 -> -3, 5/2 -> 3, -6/4 = -1.5 -> -2, 6/4 -> 2.
    assert int(rounding_divide_by_pot(-5, 1)) == -3
    assert int(rounding_divide_by_pot(5, 1)) == 3
    assert int(rounding_divide_by_pot(-6, 2)) == -2
    assert int(rounding_divide_by_pot(6, 2)) == 2
    # Non-ties: -3/4 = -0.75 -> -1, -5/4 = -1.25 -> -1; exponent 0 is the identity.
    assert int(rounding_divide_by_pot(-3, 2)) == -1
    assert int(rounding_divide_by_pot(-5, 2)) == -1
    assert int(rounding_divide_by_pot(-7, 0)) == -7
    # Extremes: -2**31 / 2**31 = -1; (2**31 - 1) / 2**31 -> 1.
    assert int(rounding_divide_by_pot(INT32_MIN, 31)) == -1
    assert int(rounding_divide_by_pot(INT32_MAX, 31)) == 1
    assert rounding_divide_by_pot(np.array([-5, 5, 9]), np.array([1, 1, 3])).tolist() == [-3, 3, 1]


@settings(max_examples=200, deadline=None)
@given(x=int32s, e=st.integers(0, 31))
def test_rdbpot_matches_exact_oracle(x, e):
    assert int(rounding_divide_by_pot(x, e)) == rdbpot_oracle(x, e)


def test_quantize_multiplier_reference_values():
    # 0.5 = 0.5 * 2**0 -> M0 = 2**30, shift 0; 1.0 = 0.5 * 2**1 -> shift 1.
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(1.0) == (2**30, 1)
    # 0.1 = 0.8 * 2**-3; 0.8 * 2**31 = 1717986918.4 -> 1717986918.
    assert quantize_multiplier(0.1) == (1717986918, -3)
    # 0.75 * 2**31 = 1610612736.
    assert quantize_multiplier(0.75) == (1610612736, 0)
    # 1 - 2**-40: q * 2**31 = 2**31 - 2**-9 rounds to 2**31, renormalised to (2**30, shift + 1).
    assert quantize_multiplier(1 - 2.0**-40) == (2**30, 1)
    # Below 2**-32 the right shift would exceed 31: (0, 0), as TFLite.
    assert quantize_multiplier(2.0**-40) == (0, 0)
    assert quantize_multiplier(0.0) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(m=st.floats(2.0**-31, 2.0**30, exclude_max=True))
def test_quantize_multiplier_normalized_and_accurate(m):
    M0, shift = quantize_multiplier(m)
    assert 2**30 <= M0 < 2**31  # M0 / 2**31 in [0.5, 1)
    approx = Fraction(M0) * Fraction(2) ** (shift - 31)
    assert abs(approx - Fraction(m)) <= Fraction(m) / 2**31


# The documented input range [0, 2**30) with its edges: zero, the tiniest multipliers, both
# sides of the flush-to-zero bound 2**-32 - 2**-64, values just below and at powers of two
# (where rounding carries into the next exponent), and the largest accepted float below 2**30.
MULTIPLIER_EDGES = [
    0.0,
    5e-324,
    1e-300,
    1e-12,
    2.0**-33,
    2.0**-32 - 2.0**-64 - 2.0**-85,  # the largest float that flushes to zero
    2.0**-32 - 2.0**-64,  # rounds up to exactly 2**-32: (2**30, -31)
    2.0**-32,
    2.0**-31 * (1 - 2.0**-53),
    0.5 * (1 - 2.0**-53),
    1.0,
    1.0 - 2.0**-33,
    2.0**29 * (1 - 2.0**-53),
    2.0**30 - 2.0**-2 - 2.0**-23,  # the largest that rounds normally: (2**31 - 1, 30)
    2.0**30 - 2.0**-2,  # rounds up to 2**30: TFLite's saturation rule
    2.0**30 - 2.0**-23,  # the largest accepted multiplier
]


def multiplier_inputs():
    """Floats over the whole documented range [0, 2**30), edges weighted in."""
    return st.one_of(
        st.sampled_from(MULTIPLIER_EDGES),
        st.floats(0.0, 2.0**30, exclude_max=True),
        st.integers(-1074, 29).flatmap(
            lambda e: st.floats(2.0**e, 2.0 ** (e + 1), exclude_max=True)
        ),
    )


@settings(max_examples=300, deadline=None)
@given(m=multiplier_inputs(), x=st.sampled_from([0, 1, -1]), data=st.data())
def test_every_quantized_multiplier_is_accepted_by_the_integer_primitives(m, x, data, backend):
    # Every (M0, shift) quantize_multiplier returns over its documented range must be accepted by
    # multiply_by_quantized_multiplier and requantize, both roundings, and carry the documented
    # relative error (exactly 0 where TFLite flushes a multiplier to zero).
    M0, shift = quantize_multiplier(m)
    assert 0 <= M0 <= INT32_MAX and -31 <= shift <= 30
    realized = Fraction(M0) * Fraction(2) ** (shift - 31)
    if m < 2.0**-32 - 2.0**-64:
        assert (M0, shift) == (0, 0)
    else:
        assert 2**30 <= M0 <= INT32_MAX
        assert abs(realized - Fraction(m)) <= Fraction(m) / 2**31
    # x * 2**shift must fit int32 for the double rounding's left shift; beyond that the primitive
    # rightly reports an overflow of these inputs, not a bad shift.
    if shift >= 0:
        x = data.draw(st.integers(-(2 ** (30 - shift)), 2 ** (30 - shift) - 1), label="x")
    exact = Fraction(x) * realized
    for rounding in REQUANTIZE_ROUNDINGS:
        r = int(multiply_by_quantized_multiplier(x, M0, shift, rounding=rounding))
        assert abs(Fraction(r) - exact) <= Fraction(1, 2) + Fraction(1, 2 ** (max(-shift, 0) + 1))
        codes = requantize(np.array([x]), M0, shift, bits=32, rounding=rounding)
        assert int(codes[0]) == r


def test_quantize_multiplier_edges_follow_tflite():
    # Rounding carries 2**30 - 2**-2 up to 2**30 (shift 31); TFLite saturates to (2**31 - 1, 30).
    assert quantize_multiplier(2.0**30 - 2.0**-2) == (INT32_MAX, 30)
    assert quantize_multiplier(2.0**30 - 2.0**-23) == (INT32_MAX, 30)
    # Just below the carry: q * 2**31 = 2**31 - 1 - 2**-21 rounds to 2**31 - 1 with shift 30.
    assert quantize_multiplier(2.0**30 - 2.0**-2 - 2.0**-23) == (INT32_MAX, 30)
    assert multiply_by_quantized_multiplier(1, INT32_MAX, 30, rounding="single") == 2**30
    # 2**-32 - 2**-64 rounds up to 2**-32 = 2**30 * 2**(-31 - 31); the next float down flushes.
    assert quantize_multiplier(2.0**-32 - 2.0**-64) == (2**30, -31)
    assert quantize_multiplier(2.0**-32 - 2.0**-64 - 2.0**-85) == (0, 0)
    # 2**30 and above would need shift 31: refused, not saturated.
    for m in (2.0**30, 2.0**31 - 1, 2.0**31 - 2.0**-22):
        with pytest.raises(ValueError, match="real_multiplier must be < 2\\*\\*30"):
            quantize_multiplier(m)


@pytest.mark.parametrize(
    "m, exc",
    [
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (2.0**31, ValueError),
        ("0.5", TypeError),
        (True, TypeError),
    ],
)
def test_quantize_multiplier_bad_input(m, exc):
    with pytest.raises(exc, match="real_multiplier"):
        quantize_multiplier(m)


@settings(max_examples=200, deadline=None)
@given(x=st.integers(-(2**24), 2**24), m=st.floats(2.0**-20, 8.0))
def test_multiply_by_quantized_multiplier_within_one_of_real_product(x, m):
    # SRDHM rounds once (<= 1/2), RDBPOT once more (<= 1/2 after dividing the first error);
    # M0 carries a relative error <= 2**-31 of m.
    M0, shift = quantize_multiplier(m)
    r = int(multiply_by_quantized_multiplier(x, M0, shift))
    assert (
        abs(Fraction(r) - Fraction(x) * Fraction(m)) <= 1 + abs(Fraction(x) * Fraction(m)) / 2**30
    )


def test_multiply_by_quantized_multiplier_reference_and_errors():
    # M = 0.1: 1000 -> 100; 15 -> SRDHM 11.99... -> 12, then 12 / 8 = 1.5 -> 2 (away); -15 -> -2.
    M0, shift = quantize_multiplier(0.1)
    assert multiply_by_quantized_multiplier(
        np.array([1000, -1000, 15, -15]), M0, shift
    ).tolist() == [100, -100, 2, -2]
    # Multiplier 1 (2**30, shift 1) is the identity where 2x fits int32.
    one = quantize_multiplier(1.0)
    assert multiply_by_quantized_multiplier(np.array([-236, 200, 2**30 - 1]), *one).tolist() == [
        -236,
        200,
        2**30 - 1,
    ]
    with pytest.raises(ValueError, match="overflows int32"):
        multiply_by_quantized_multiplier(2**30, *one)
    with pytest.raises(ValueError, match="shift"):
        multiply_by_quantized_multiplier(1, 2**30, 31)
    with pytest.raises(ValueError, match="x must fit int32"):
        multiply_by_quantized_multiplier(2**31, 2**30, 0)
    with pytest.raises(TypeError, match="x must be an integer"):
        multiply_by_quantized_multiplier(1.5, 2**30, 0)
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(1, 32)


# ---------------------------------------------------------------------------------- int matmul


def test_int_matmul_reference_values(backend):
    # 4 * 127 * 127 = 64516; 4 * (-128)(-128) = 65536.
    row = np.full((1, 4), 127, np.int8)
    col = np.full((4, 1), 127, np.int8)
    acc = int_matmul(row, col)
    assert acc.dtype == np.int32 and acc.tolist() == [[64516]]
    assert int_matmul(np.full((1, 4), -128, np.int8), np.full((4, 1), -128, np.int8)).tolist() == [
        [65536]
    ]
    # uint8 activations with zero point 128: (200 - 128) * 1 + (0 - 128) * 2 = 72 - 256 = -184.
    a = np.array([[200, 0]], np.uint8)
    b = np.array([[1], [2]], np.int8)
    assert int_matmul(a, b, a_zero_point=128).tolist() == [[-184]]
    # Per-column weight zero points [0, 1]: column 1 is (200-128)*(3-1) + (0-128)*(5-1) = 144 - 512.
    b2 = np.array([[1, 3], [2, 5]], np.int8)
    assert int_matmul(a, b2, 128, np.array([0, 1])).tolist() == [[-184, -368]]


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 5),
    k=st.integers(1, 40),
    m=st.integers(1, 5),
    a_dtype=st.sampled_from([np.int8, np.uint8]),
)
def test_int_matmul_equals_int64_sum(data, n, k, m, a_dtype, backend):
    a = data.draw(arrays(a_dtype, (n, k)))
    b = data.draw(arrays(np.int8, (k, m)))
    info = np.iinfo(a_dtype)
    za = data.draw(st.integers(int(info.min), int(info.max)))
    zb = data.draw(st.integers(-128, 127))
    expected = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    assert np.array_equal(int_matmul(a, b, za, zb), expected)


def test_int_matmul_detects_int32_overflow():
    # k = 33026 products of (255 - 0) * (-128 - 127) = -65025 sum to -2147515650 < -2**31.
    k = 33026
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 1), -128, np.int8)
    with pytest.raises(ValueError, match="int32 accumulator overflow"):
        int_matmul(a, b, 0, 127)
    assert int_matmul(a[:, :33025], b[:33025], 0, 127).tolist() == [[-33025 * 65025]]


def test_int_matmul_bad_input():
    with pytest.raises(TypeError, match="a must be an int8 or uint8 array"):
        int_matmul(np.ones((2, 2), np.int16), np.ones((2, 2), np.int8))
    with pytest.raises(TypeError, match="b must be an int8 or uint8"):
        int_matmul(np.ones((2, 2), np.int8), np.ones((2, 2)))
    with pytest.raises(ValueError, match="do not chain"):
        int_matmul(np.ones((2, 3), np.int8), np.ones((2, 2), np.int8))
    with pytest.raises(ValueError, match="a_zero_point"):
        int_matmul(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8), a_zero_point=200)


def test_requantize_saturates_instead_of_wrapping(backend):
    # Multiplier 1: accumulators pass unchanged, then [-236, 200] saturate to [-128, 127]
    # (a wrapping cast would give [20, -56]).
    M0, shift = quantize_multiplier(1.0)
    out = requantize(np.array([-236, 200], np.int32), M0, shift)
    assert out.dtype == np.int8 and out.tolist() == [-128, 127]
    # Output zero point -5: [-236, 200, 2] -> [-241, 195, -3] -> clamp [-128, 127, -3];
    # fused ReLU clamps below at the zero point's code, -5.
    acc = np.array([-236, 200, 2])
    assert requantize(acc, M0, shift, zero_point=-5).tolist() == [-128, 127, -3]
    assert requantize(acc, M0, shift, zero_point=-5, relu=True).tolist() == [-5, 127, -3]
    assert requantize(acc, M0, shift, zero_point=0, signed=False).tolist() == [0, 200, 2]
    with pytest.raises(ValueError, match="zero_point"):
        requantize(acc, M0, shift, zero_point=300)


def test_integer_dense_layer_matches_float_reference():
    # An int8 layer end to end: its output codes are within 1 of quantizing the float result.
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(16, 8))
    W = rng.normal(size=(8, 4)) * 0.5
    b = rng.normal(size=4) * 0.1
    s_x, z_x = affine_qparams(-1.0, 1.0)
    xq = quantize_affine(x, s_x, z_x)
    Wq, s_w, _ = quantize_weights(W, axis=1)
    bq, _ = quantize_bias(b, s_x, s_w)
    y_ref = (
        dequantize_affine(xq, s_x, z_x) @ dequantize_affine(Wq, s_w, np.zeros(4, int), axis=1) + b
    )
    s_y, z_y = affine_qparams(y_ref.min(), y_ref.max())
    mult = [quantize_multiplier(s_x * s / s_y) for s in s_w]
    acc = int_matmul(xq, Wq, z_x).astype(np.int64) + bq
    yq = requantize(acc, np.array([m for m, _ in mult]), np.array([s for _, s in mult]), z_y)
    expected = quantize_affine(y_ref, s_y, z_y)
    assert np.abs(yq.astype(int) - expected.astype(int)).max() <= 1


# ---------------------------------------------------------------------------------- sizes


def test_quantized_nbytes_reference():
    # 1000 int8 codes + 10 float32 scales (40 B) + 10 int8 zero points (10 B) = 1050 B.
    assert quantized_nbytes(1000, 8, n_scales=10, n_zero_points=10) == 1050
    # 4-bit codes take a whole byte each unpacked, half a byte packed.
    assert quantized_nbytes(1000, 4) == 1000 and quantized_nbytes(1000, 4, packed=True) == 500
    # 3 codes of 4 bits = 12 bits -> 2 bytes packed; 10 codes of 12 bits: 20 B vs 15 B.
    assert quantized_nbytes(3, 4, packed=True) == 2
    assert quantized_nbytes(10, 12) == 20 and quantized_nbytes(10, 12, packed=True) == 15
    assert quantized_nbytes(5, 32, n_scales=1) == 24
    assert compression_ratio(4000, 1050) == 4000 / 1050
    with pytest.raises(ValueError, match="n_codes"):
        quantized_nbytes(-1, 8)
    with pytest.raises(ValueError, match="quantized_nbytes"):
        compression_ratio(10, 0)


@settings(deadline=None)
@given(n=st.integers(0, 10**6), bits=st.integers(2, 32))
def test_packed_never_larger_than_byte_aligned(n, bits):
    packed = quantized_nbytes(n, bits, packed=True)
    aligned = quantized_nbytes(n, bits)
    assert packed <= aligned and packed * 8 >= n * bits and (packed - 1) * 8 < n * bits or n == 0


# ---------------------------------------------------------------------------------- observers


def test_minmax_observer_running_range():
    obs = MinMaxObserver(signed=False)
    x = np.array([-1.0, 0.5])
    assert obs.observe(x) is x
    obs(np.array([[0.25, 1.0]]))
    obs(np.zeros(0))  # ignored, as torch
    assert (obs.min_val, obs.max_val) == (-1.0, 1.0)
    assert obs.calculate_qparams() == affine_qparams(-1.0, 1.0, signed=False) == (2 / 255, 128)
    obs.reset()
    with pytest.raises(ValueError, match="seen no data"):
        obs.calculate_qparams()


def test_per_channel_observer():
    obs = MinMaxObserver(symmetric=True, narrow_range=True, axis=1)
    obs.observe(np.array([[1.0, -2.0], [0.5, 0.0]]))
    obs.observe(np.array([[-3.0, 1.0]]))
    assert obs.min_val.tolist() == [-3.0, -2.0] and obs.max_val.tolist() == [1.0, 1.0]
    scale, zp = obs.calculate_qparams()
    assert scale.tolist() == [3 / 127, 2 / 127] and zp.tolist() == [0, 0]
    with pytest.raises(ValueError, match="channels"):
        obs.observe(np.ones((2, 3)))


def test_moving_average_observer_reference():
    # torch's rule with c = 0.01: first batch sets [0, 2]; then min 0 + 0.01(-1 - 0) = -0.01,
    # max 2 + 0.01(4 - 2) = 2.02.
    obs = MovingAverageMinMaxObserver()
    obs.observe([0.0, 2.0])
    obs.observe([-1.0, 4.0])
    assert obs.min_val == pytest.approx(-0.01, abs=1e-17)
    assert obs.max_val == pytest.approx(2.02, rel=1e-15)
    assert obs.averaging_constant == 0.01


def test_observer_bad_input():
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0.0)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=1.5)
    with pytest.raises(ValueError, match="bits"):
        MinMaxObserver(bits=64)
    with pytest.raises(ValueError, match="x contains NaN"):
        MinMaxObserver().observe([np.nan])


# ---------------------------------------------------------------------------------- backends
# `backend` is the shared fixture of tests/conftest.py (numpy, then numba).


def test_reference_cases_on_every_backend(backend):
    x = [0.5, 1.5, 2.5, -0.5, -2.5]
    assert quantize(x, QFormat(8, 0)).tolist() == [0, 2, 2, 0, -2]
    assert quantize_affine(x, 1.0, 0).tolist() == [0, 2, 2, 0, -2]
    assert quantize_affine(np.array(x, np.float32), 1.0, 0).tolist() == [0, 2, 2, 0, -2]
    assert quantize(x, QFormat(8, 0), "half_away").tolist() == [1, 2, 3, -1, -3]
    assert quantize(x, QFormat(8, 0), "floor").tolist() == [0, 1, 2, -1, -3]
    codes, _, _ = quantize_weights([[0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]], axis=0)
    assert codes.tolist() == [[0, 0, 0], [-127, 64, 127]]
    assert int_matmul(np.full((1, 4), 127, np.int8), np.full((4, 1), 127, np.int8)).tolist() == [
        [64516]
    ]
    assert requantize(np.array([-236, 200]), *quantize_multiplier(1.0)).tolist() == [-128, 127]
    mask = fake_quantize_grad_mask([-1.5, -1.0, 0.2, 1.0, 1.5], 1 / 127, 0)
    assert mask.tolist() == [False, True, True, True, False]


def _with_backend(name, fn):
    previous = kernels._forced  # restored as the shared `backend` fixture does
    kernels.set_backend(name)
    try:
        return fn()
    finally:
        kernels.set_backend(previous)


def test_numpy_and_numba_backends_are_bit_identical():
    # Sizes above the Numba kernels' parallel threshold (2**17) and below it; data with exact
    # ties (k + 1/2) * scale mixed in, where a multiply-by-inverse shortcut would go wrong.
    rng = np.random.default_rng(11)
    n = 2**17 + 37
    scale = 0.0123
    x = rng.normal(scale=2.0, size=n)
    x[::7] = (rng.integers(-200, 200, size=x[::7].size) + 0.5) * scale
    x32 = x.astype(np.float32)
    w = rng.normal(size=(300, 40))
    w_scale = np.abs(w).max(axis=0) / 127
    a = rng.integers(-128, 128, size=(50, 300)).astype(np.int8)
    b = rng.integers(-127, 128, size=(300, 40)).astype(np.int8)
    mults = [quantize_multiplier(m) for m in rng.uniform(1e-4, 2.0, size=40)]
    m0 = np.array([m for m, _ in mults])
    sh = np.array([s for _, s in mults])
    bias = rng.integers(-5000, 5000, size=40)

    def run():
        out = {}
        for mode in ("nearest_even", "half_away", "floor"):
            out[f"fixed-{mode}"] = quantize(x, QFormat(8, 4), mode)
            out[f"fixed32-{mode}"] = quantize(x32, QFormat(12, 6), mode)
            out[f"affine-{mode}"] = quantize_affine(x, scale, 3, rounding=mode)
            out[f"affine32-{mode}"] = quantize_affine(x32, scale, -7, rounding=mode)
            out[f"channel-{mode}"] = quantize_affine(
                w, w_scale, np.zeros(40, int), axis=1, rounding=mode
            )
        out["fake"] = fake_quantize(x, scale, 3)
        out["fake32"] = fake_quantize(x32, scale, 3)
        out["mask"] = fake_quantize_grad_mask(x, scale, 3)
        out["deq"] = dequantize(out["fixed-nearest_even"], QFormat(8, 4))
        out["deq-affine"] = dequantize_affine(
            out["channel-floor"], w_scale, np.zeros(40, int), axis=1
        )
        out["matmul"] = int_matmul(a, b, a_zero_point=5)
        out["matmul-u8"] = int_matmul(a.view(np.uint8), b, a_zero_point=128)
        out["requant"] = requantize(out["matmul"], m0, sh, zero_point=-3, relu=True, bias=bias)
        return out

    ref = _with_backend("numpy", run)
    jit = _with_backend("numba", run)
    for key in ref:
        assert ref[key].dtype == jit[key].dtype, key
        assert np.array_equal(ref[key], jit[key]), key


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    m=st.integers(1, 4),
    zp=st.integers(-128, 127),
    relu=st.booleans(),
)
def test_requantize_equals_composition_of_primitives(data, n, m, zp, relu, backend):
    acc = data.draw(arrays(np.int64, (n, m), elements=st.integers(-(2**24), 2**24)))
    bias = data.draw(arrays(np.int64, (m,), elements=st.integers(-(2**20), 2**20)))
    mult = [quantize_multiplier(data.draw(st.floats(2.0**-20, 4.0))) for _ in range(m)]
    m0 = np.array([a for a, _ in mult])
    sh = np.array([b for _, b in mult])
    expected = np.clip(
        multiply_by_quantized_multiplier(acc + bias, m0, sh).astype(np.int64) + zp,
        zp if relu and zp > -128 else -128,
        127,
    )
    assert np.array_equal(requantize(acc, m0, sh, zp, relu=relu, bias=bias), expected)
