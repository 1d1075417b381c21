"""Affine quantization: scale and zero point, per tensor and per channel, weights and biases.
"""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale.quant import (
    FLOAT32_EPS,
    INT32_MAX,
    INT32_MIN,
    affine_qparams,
    bias_safe_weight_scale,
    channel_min_max,
    dequantize_affine,
    fake_quantize,
    integer_range,
    quantize_affine,
    quantize_bias,
    quantize_weights,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

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
