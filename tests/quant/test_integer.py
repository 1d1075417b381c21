"""gemmlowp/TFLite integer primitives, the int8 product and requantization.

Oracles use Python's unbounded integers and ``fractions.Fraction``, so they are exact.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale.quant import (
    INT32_MAX,
    INT32_MIN,
    REQUANTIZE_ROUNDINGS,
    affine_qparams,
    dequantize_affine,
    int_matmul,
    multiply_by_quantized_multiplier,
    quantize_affine,
    quantize_bias,
    quantize_multiplier,
    quantize_weights,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

int32s = st.integers(INT32_MIN, INT32_MAX)


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
