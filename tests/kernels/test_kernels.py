"""Numba kernels against their NumPy twins, and minscale importing and training without Numba.

Integer paths (codes, accumulators, masks) must agree bit for bit; float paths to a few ulps
(``exp``/``tanh`` come from different libraries). Reference values are worked out in the
comments. The compiled epoch loop is tested against the general loop in
``tests/train/test_compiled.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from minscale.kernels import _numpy as R

nb = pytest.importorskip("numba")
from minscale.kernels import _numba as N  # noqa: E402

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

SETTINGS = settings(deadline=None, max_examples=40,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

float_dtypes = st.sampled_from([np.float64, np.float32])


def finite_arrays(dtype, shape, lo=-1e3, hi=1e3):
    width = 32 if dtype == np.float32 else 64
    return arrays(dtype, shape, elements=st.floats(lo, hi, allow_nan=False, width=width))


def assert_close(a, b, dtype):
    rtol = 1e-6 if np.dtype(dtype) == np.float32 else 1e-13
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


# --- activations and optimizer updates -----------------------------------------------------

@SETTINGS
@given(data=st.data(), dtype=float_dtypes, act=st.integers(0, 4), has_bias=st.booleans())
def test_bias_act_and_backward_equal_numpy(data, dtype, act, has_bias):
    n, d = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 7))
    z = data.draw(finite_arrays(dtype, (n, d), -30, 30))
    b = data.draw(finite_arrays(dtype, (d,), -3, 3)) if has_bias else np.zeros(0, dtype)
    a_ref = R.bias_act(z.copy(), b, act, 0.01)
    a_jit = N.bias_act(z.copy(), b, act, 0.01)
    assert a_jit.dtype == dtype
    assert_close(a_jit, a_ref, dtype)
    da = data.draw(finite_arrays(dtype, (n, d), -5, 5))
    out_ref = R.act_backward(a_ref, da.copy(), act, 0.01, np.empty_like(da))
    out_jit = N.act_backward(a_ref, da.copy(), act, 0.01, np.empty_like(da))
    assert_close(out_jit, out_ref, dtype)


def test_activation_reference_values():
    # sigmoid(0) = 1/2, tanh(0) = 0, relu(-1) = 0, leaky_relu(-1) = -alpha (worked by hand)
    z = np.array([[0.0, -1.0]])
    for act, expected in ((4, [0.5, 1 / (1 + np.e)]), (3, [0.0, np.tanh(-1.0)]), (1, [0.0, 0.0]),
                          (2, [0.0, -0.2])):
        np.testing.assert_allclose(N.bias_act(z.copy(), np.zeros(0), act, 0.2)[0], expected,
                                   rtol=1e-15)


def _update_case(data, dtype, with_mask):
    p = data.draw(st.integers(1, 40))
    arrs = [data.draw(finite_arrays(dtype, (p,), -10, 10)) for _ in range(3)]
    v = np.abs(data.draw(finite_arrays(dtype, (p,), 0, 10)))
    mask = data.draw(arrays(np.bool_, (p,))) if with_mask else None
    return arrs, v, mask


def _run_both(fn_name, arrays_in, *args, mask):
    ref = [a.copy() for a in arrays_in]
    jit = [a.copy() for a in arrays_in]
    getattr(R, fn_name)(*ref, *args, mask)
    getattr(N, fn_name)(*jit, *args, mask)
    return ref, jit


@SETTINGS
@given(data=st.data(), dtype=float_dtypes, with_mask=st.booleans())
def test_sgd_and_momentum_updates_equal_numpy(data, dtype, with_mask):
    (theta, grad, vel), _, mask = _update_case(data, dtype, with_mask)
    dt = np.dtype(dtype).type
    ref, jit = _run_both("sgd_update", [theta, grad], dt(0.1), mask=mask)
    for a, b in zip(ref, jit):
        np.testing.assert_array_equal(a, b)  # elementwise IEEE ops in the same order: equal
    for nesterov in (False, True):
        ref, jit = _run_both("momentum_update", [theta, grad, vel], dt(0.1), dt(0.9), nesterov,
                             mask=mask)
        for a, b in zip(ref, jit):
            np.testing.assert_array_equal(a, b)
    if mask is not None:
        assert np.all(jit[0][~mask] == 0) and np.all(jit[2][~mask] == 0)


@SETTINGS
@given(data=st.data(), dtype=float_dtypes, with_mask=st.booleans(), t=st.integers(1, 500))
def test_adam_update_equals_numpy(data, dtype, with_mask, t):
    (theta, grad, m), v, mask = _update_case(data, dtype, with_mask)
    dt = np.dtype(dtype).type
    args = (dt(1e-3), dt(0.9), dt(0.999), dt(1e-8), dt(1 - 0.9 ** t), dt(1 - 0.999 ** t))
    ref, jit = _run_both("adam_update", [theta, grad, m, v], *args, mask=mask)
    for a, b in zip(ref, jit):
        np.testing.assert_array_equal(a, b)


def test_parallel_bodies_equal_serial(monkeypatch):
    # above PARALLEL_MIN the wrappers switch to the prange bodies; force it on a small array
    monkeypatch.setattr(N, "PARALLEL_MIN", 1)
    rng = np.random.default_rng(0)
    theta, grad, m = rng.standard_normal((3, 50_000))
    v = rng.random(50_000)
    mask = rng.random(50_000) > 0.3
    ref = [a.copy() for a in (theta, grad, m, v)]
    jit = [a.copy() for a in (theta, grad, m, v)]
    R.adam_update(*ref, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, mask)
    N.adam_update(*jit, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, mask)
    for a, b in zip(ref, jit):
        np.testing.assert_array_equal(a, b)
    z = rng.standard_normal((400, 300))
    b = rng.standard_normal(300)
    np.testing.assert_allclose(N.bias_act(z.copy(), b, 3, 0.01), R.bias_act(z.copy(), b, 3, 0.01),
                               rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("impl", [R, N], ids=["numpy", "numba"])
@pytest.mark.parametrize("beta", [0.9, 0.999, 0.95, 0.5, 0.123456789])
def test_bias_corrections_equal_python(impl, beta):
    # the compiled loop's Adam corrections are optim.adam_step's own expression, bit for bit,
    # on both backends (no compiled pow)
    assert impl.bias_corrections(beta, 3, 5000).tolist() == \
        [1 - beta ** t for t in range(3, 5003)]
    assert impl.bias_corrections(beta, 1, 0).shape == (0,)



@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction, expected", [("mean", 1.25), ("sum", 5.0), ("half_sum", 2.5)])
def test_mse_forward_backward_is_the_twin_of_losses(dtype, reduction, expected):
    # the compiled loop's loss and gradient against minscale.losses (the formula's one home)
    from minscale import losses
    from minscale.kernels import _fastfit

    y_true = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    y_pred = np.array([[0.0, 2.0], [3.0, 6.0]], dtype)   # squared errors 1, 0, 0, 4
    code = _fastfit.REDUCTION_CODES[reduction]
    d_pred, loss = np.empty_like(y_pred), np.zeros(2, dtype)
    got = _fastfit.mse_forward_backward(y_pred, y_true, d_pred, code, loss, dtype(1))
    assert got == expected == losses.mse(y_true, y_pred, reduction) and loss[0] == expected
    np.testing.assert_array_equal(d_pred, losses.mse_grad(y_true, y_pred, reduction))
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.standard_normal((2, 9, 3)).astype(dtype)
    got = _fastfit.mse_forward_backward(y_pred, y_true, d_pred := np.empty_like(y_pred), code,
                                        loss, dtype(1))
    # the gradient bit for bit; the loss up to summation order (np.dot sums in another one)
    np.testing.assert_array_equal(d_pred, losses.mse_grad(y_true, y_pred, reduction))
    np.testing.assert_allclose(got, losses.mse(y_true, y_pred, reduction),
                               rtol=1e-6 if dtype == np.float32 else 1e-14)


# --- fixed-point and affine quantization ---------------------------------------------------

TIES = np.array([0.5, 1.5, 2.5, -0.5, -2.5])


@pytest.mark.parametrize("impl", [R, N], ids=["numpy", "numba"])
def test_round_half_even_reference(impl):
    # IEEE 754 round-half-to-even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -2.5 -> -2
    out = np.empty(5, np.int8)
    assert impl.quantize_fixed(TIES, 0, -128, 127, 0, out) == -1
    assert out.tolist() == [0, 2, 2, 0, -2]
    out3 = np.empty((1, 1, 5), np.int8)
    impl.quantize_affine(TIES.reshape(1, 1, 5), np.array([1.0]), np.array([0]), -128, 127, 0, out3)
    assert out3.ravel().tolist() == [0, 2, 2, 0, -2]
    # half away from zero: 1, 2, 3, -1, -3; floor: 0, 1, 2, -1, -3
    impl.quantize_fixed(TIES, 0, -128, 127, 1, out)
    assert out.tolist() == [1, 2, 3, -1, -3]
    impl.quantize_fixed(TIES, 0, -128, 127, 2, out)
    assert out.tolist() == [0, 1, 2, -1, -3]


def test_quantize_fixed_saturation_and_underflow_reference():
    # Q3.4 (8 bits, 4 fractional): 0.3 * 16 = 4.8 -> 5; 100 * 16 saturates to 127; -100 to -128;
    # +-inf saturate; a negative value whose product underflows still floors to -1
    x = np.array([0.3, 100.0, -100.0, np.inf, -np.inf, -1e-320])
    for impl in (R, N):
        out = np.empty(6, np.int8)
        assert impl.quantize_fixed(x, 4, -128, 127, 0, out) == 1
        assert out.tolist() == [5, 127, -128, 127, -128, 0]
        impl.quantize_fixed(x, -1070, -128, 127, 2, out)
        assert out[-1] == -1


quant_elements = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=64),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 127.5, -128.5, np.inf, -np.inf, 1e-310,
                     -1e-310]),
    st.integers(-300, 300).map(lambda k: k + 0.5),
)


@SETTINGS
@given(x=arrays(np.float64, array_shapes(max_dims=2, max_side=20), elements=quant_elements),
       frac_bits=st.integers(-8, 12), bits=st.sampled_from([4, 8, 16]),
       rounding=st.integers(0, 2), as32=st.booleans())
def test_quantize_fixed_equals_numpy(x, frac_bits, bits, rounding, as32):
    if as32:
        x = x.astype(np.float32)
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    dtype = np.int8 if bits <= 8 else np.int16
    o1, o2 = np.empty(x.shape, dtype), np.empty(x.shape, dtype)
    assert R.quantize_fixed(x, frac_bits, qmin, qmax, rounding, o1) == \
        N.quantize_fixed(x, frac_bits, qmin, qmax, rounding, o2)
    np.testing.assert_array_equal(o1, o2)
    back1, back2 = np.empty(x.shape), np.empty(x.shape)
    R.dequantize_fixed(o1, frac_bits, back1)
    N.dequantize_fixed(o1, frac_bits, back2)
    np.testing.assert_array_equal(back1, back2)


def _channels(draw_shape, axis):
    outer = int(np.prod(draw_shape[:axis]))
    inner = int(np.prod(draw_shape[axis + 1:]))
    return outer, draw_shape[axis], inner


@SETTINGS
@given(data=st.data(), rounding=st.integers(0, 2), signed=st.booleans(),
       per_channel=st.booleans(), as32=st.booleans())
def test_affine_kernels_equal_numpy(data, rounding, signed, per_channel, as32):
    shape = data.draw(array_shapes(min_dims=1, max_dims=3, max_side=9))
    x = data.draw(arrays(np.float64, shape, elements=quant_elements))
    if as32:
        x = x.astype(np.float32)
    axis = data.draw(st.integers(0, len(shape) - 1)) if per_channel else None
    x3 = x.reshape(_channels(shape, axis) if axis is not None else (1, 1, -1))
    c = x3.shape[1]
    qmin, qmax = (-128, 127) if signed else (0, 255)
    scale = np.array(data.draw(st.lists(st.sampled_from([1.0, 0.1, 0.02, 1 / 3, 2.0 ** -7, 7.5]),
                                        min_size=c, max_size=c)))
    zp = np.array(data.draw(st.lists(st.integers(qmin, qmax), min_size=c, max_size=c)))
    code_dt = np.int8 if signed else np.uint8
    o1, o2 = np.empty(x3.shape, code_dt), np.empty(x3.shape, code_dt)
    R.quantize_affine(x3, scale, zp, qmin, qmax, rounding, o1)
    N.quantize_affine(x3, scale, zp, qmin, qmax, rounding, o2)
    np.testing.assert_array_equal(o1, o2)
    d1, d2 = np.empty(x3.shape), np.empty(x3.shape)
    R.dequantize_affine(o1, scale, zp, d1)
    N.dequantize_affine(o1, scale, zp, d2)
    np.testing.assert_array_equal(d1, d2)
    f1, f2 = np.empty_like(x3), np.empty_like(x3)
    m1, m2 = np.empty(x3.shape, bool), np.empty(x3.shape, bool)
    R.fake_quantize(x3, scale, zp, qmin, qmax, rounding, f1, m1)
    N.fake_quantize(x3, scale, zp, qmin, qmax, rounding, f2, m2)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(m1, m2)
    N.fake_quantize(x3, scale, zp, qmin, qmax, rounding, f2, np.zeros(0, bool))
    np.testing.assert_array_equal(f1, f2)


@pytest.mark.parametrize("rounding", [0, 1, 2])
@pytest.mark.parametrize("scale", [0.1, 1 / 3, 0.02, 3e-3])
def test_division_free_affine_quantizer_is_exact_at_ties(rounding, scale, monkeypatch):
    # x = fl((k + 1/2) * s) and its neighbours: x / s lands on or within an ulp of a tie (or of
    # an integer for floor), exactly where x * (1/s) can round the other way. The multiply-and-
    # check kernel must fall back to the division there and agree with the reference.
    k = np.arange(-140, 140, dtype=np.float64)
    base = np.concatenate([(k + 0.5) * scale, k * scale])
    x = np.concatenate([base, np.nextafter(base, np.inf), np.nextafter(base, -np.inf)])
    x = np.tile(x, 3)  # several blocks, some clean, some needing the fallback
    x3 = x.reshape(1, 1, -1)
    o1, o2 = np.empty(x3.shape, np.int8), np.empty(x3.shape, np.int8)
    R.quantize_affine(x3, np.array([scale]), np.array([1]), -128, 127, rounding, o1)
    N.quantize_affine(x3, np.array([scale]), np.array([1]), -128, 127, rounding, o2)
    np.testing.assert_array_equal(o1, o2)
    monkeypatch.setattr(N, "PARALLEL_MIN", 1)  # the prange body, with the same fallback
    N.quantize_affine(x3, np.array([scale]), np.array([1]), -128, 127, rounding, o2)
    np.testing.assert_array_equal(o1, o2)


@pytest.mark.parametrize("rounding", [0, 1, 2])
@pytest.mark.parametrize("scale", [0.1, 1 / 3, 0.02, 3e-3, 7.5])
@pytest.mark.parametrize("codes", [(-128, 127, 1, np.int8), (0, 255, 0, np.uint8),
                                   (-32768, 32767, -7, np.int16)])
def test_float32_affine_quantizer_is_exact_at_ties(rounding, scale, codes, monkeypatch):
    # float32 inputs take the float32 multiply-and-check loop: x = fl32((k + 1/2) s), fl32(k s)
    # and their float32 neighbours put x / s within an ulp of every jump, plus zeros of both
    # signs, infinities, subnormals and values far outside the clip range
    qmin, qmax, zp, dt = codes
    k = np.arange(qmin - zp - 3, qmax - zp + 3, dtype=np.float64)
    base = np.concatenate([(k + 0.5) * scale, k * scale]).astype(np.float32)
    extra = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3e38, -3e38], np.float32)
    x = np.concatenate([base, np.nextafter(base, np.float32(np.inf)),
                        np.nextafter(base, np.float32(-np.inf)), extra])
    x = np.tile(x, 3)
    x3 = x.reshape(1, 1, -1)
    o1, o2 = np.empty(x3.shape, dt), np.empty(x3.shape, dt)
    R.quantize_affine(x3, np.array([scale]), np.array([zp]), qmin, qmax, rounding, o1)
    assert N.quantize_affine_checked(x3, np.array([scale]), np.array([zp]), qmin, qmax,
                                     rounding, o2) == -1
    np.testing.assert_array_equal(o1, o2)
    monkeypatch.setattr(N, "PARALLEL_MIN", 1)  # the prange body
    o2[...] = 0
    N.quantize_affine(x3, np.array([scale]), np.array([zp]), qmin, qmax, rounding, o2)
    np.testing.assert_array_equal(o1, o2)


def test_float32_fast_loop_is_taken_and_flags_rarely():
    # scale 0.02: inv32 = 50 exactly and tol = 8e-6, so few 1024-blocks of N(0, 1) data are
    # flagged (about 1.6% expected; < 10% asserted), i.e. the fast path really runs
    x = np.random.default_rng(0).standard_normal(1 << 17).astype(np.float32)
    out = np.empty(x.size, np.int8)
    thr = N._f32_tolerance(np.array([0.02]), np.array([50.0], np.float32), np.array([3]),
                           -128, 127, 0)
    assert 0.5 - 1e-5 < thr[0] < 0.5
    flags = [N._affine_fast_codes32(x, np.float32(50.0), 3, -131.0, 124.0, 0, thr[0], out, b,
                                    b + 1024) for b in range(0, x.size, 1024)]
    assert sum(flags) < 0.1 * len(flags)
    ref = np.empty(x.size, np.int8)
    R.quantize_affine(x.reshape(1, 1, -1), np.array([0.02]), np.array([3]), -128, 127, 0,
                      ref.reshape(1, 1, -1))
    clean = np.repeat(~np.array(flags), 1024)
    np.testing.assert_array_equal(out[clean], ref[clean])


@SETTINGS
@given(data=st.data(), rounding=st.integers(0, 2), per_channel=st.booleans(),
       as32=st.booleans(), n_nan=st.integers(0, 2))
def test_quantize_affine_checked_equals_numpy(data, rounding, per_channel, as32, n_nan):
    shape = data.draw(array_shapes(min_dims=1, max_dims=3, max_side=9))
    x = data.draw(arrays(np.float64, shape, elements=quant_elements))
    if as32:
        x = x.astype(np.float32)
    nan_at = sorted(data.draw(st.lists(st.integers(0, x.size - 1), min_size=n_nan,
                                       max_size=n_nan)))
    x.reshape(-1)[nan_at] = np.nan
    axis = data.draw(st.integers(0, len(shape) - 1)) if per_channel else None
    x3 = x.reshape(_channels(shape, axis) if axis is not None else (1, 1, -1))
    c = x3.shape[1]
    scale = np.array(data.draw(st.lists(st.sampled_from([1.0, 0.1, 0.02, 1 / 3, 2.0 ** -7, 7.5]),
                                        min_size=c, max_size=c)))
    zp = np.array(data.draw(st.lists(st.integers(-128, 127), min_size=c, max_size=c)))
    o1, o2 = np.empty(x3.shape, np.int8), np.empty(x3.shape, np.int8)
    r1 = R.quantize_affine_checked(x3, scale, zp, -128, 127, rounding, o1)
    r2 = N.quantize_affine_checked(x3, scale, zp, -128, 127, rounding, o2)
    assert r1 == r2 == (nan_at[0] if nan_at else -1)
    if r1 < 0:
        np.testing.assert_array_equal(o1, o2)
        R.quantize_affine(x3, scale, zp, -128, 127, rounding, o1)
        np.testing.assert_array_equal(o1, o2)


def test_public_quantize_affine_reports_nan_from_the_kernel(backend):
    from minscale import quant

    x = np.zeros((3, 4), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN \(first at index \(np.int64\(2\), "
                                         r"np.int64\(1\)\)\)"):
        quant.quantize_affine(x, 0.1, 0)


def test_quant_module_uses_the_active_backend(backend):
    # minscale.quant calls the kernels: both backends give the formula layer's codes
    from minscale import quant

    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 7)) * 3
    codes = quant.quantize_affine(x, 0.05, 3)
    np.testing.assert_array_equal(codes, np.clip(np.rint(x / 0.05) + 3, -128, 127))
    assert quant.quantize(TIES, quant.QFormat(8, 0)).tolist() == [0, 2, 2, 0, -2]


# --- integer matrix product and requantization ---------------------------------------------

@pytest.mark.parametrize("impl", [R, N], ids=["numpy", "numba"])
def test_int8_sum_reference(impl):
    # 300 * 127 = 38100, exact (a float32 sum of 300 terms would be exact too, but 38100 needs
    # the int32 accumulator: it does not fit int16)
    a = np.full((1, 300), 127, dtype=np.int8)
    b = np.ones((300, 1), dtype=np.int8)
    out = np.empty((1, 1), np.int32)
    assert impl.int8_matmul(a, b, 0, np.zeros(1, np.int64), out)
    assert out[0, 0] == 38100


@SETTINGS
@given(data=st.data(), a_unsigned=st.booleans(), b_unsigned=st.booleans())
def test_int8_matmul_equals_numpy(data, a_unsigned, b_unsigned):
    n, k, m = (data.draw(st.integers(1, 6)), data.draw(st.integers(0, 2100)),
               data.draw(st.integers(1, 5)))
    a_dt = np.uint8 if a_unsigned else np.int8
    b_dt = np.uint8 if b_unsigned else np.int8
    ia, ib = np.iinfo(a_dt), np.iinfo(b_dt)
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    # extreme codes most of the time: the exactness bound is tight there
    a = rng.choice([ia.min, ia.max, 0, 1], size=(n, k)).astype(a_dt)
    b = rng.integers(ib.min, ib.max + 1, size=(k, m)).astype(b_dt)
    za = data.draw(st.integers(int(ia.min), int(ia.max)))
    zb = np.array(data.draw(st.lists(st.integers(int(ib.min), int(ib.max)), min_size=m,
                                     max_size=m)), dtype=np.int64)
    o1, o2 = np.empty((n, m), np.int32), np.empty((n, m), np.int32)
    ok1 = R.int8_matmul(a, b, za, zb, o1)
    ok2 = N.int8_matmul(a, b, za, zb, o2)
    assert ok1 == ok2
    exact = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    if ok1:
        np.testing.assert_array_equal(o1, exact)
        np.testing.assert_array_equal(o2, exact)


def test_int8_matmul_blocks_and_overflow():
    # k = 5000 > 1024 forces several float32 blocks; -128 * -128 * 5000 = 81 920 000 fits int32
    a = np.full((2, 5000), -128, dtype=np.int8)
    b = np.full((5000, 3), -128, dtype=np.int8)
    for impl in (R, N):
        out = np.empty((2, 3), np.int32)
        assert impl.int8_matmul(a, b, 0, np.zeros(3, np.int64), out)
        assert (out == 81_920_000).all()
    # 140 000 * 16 384 = 2 293 760 000 > 2**31 - 1: reported, not wrapped
    a = np.full((1, 140_000), -128, dtype=np.int8)
    b = np.full((140_000, 1), -128, dtype=np.int8)
    for impl in (R, N):
        assert not impl.int8_matmul(a, b, 0, np.zeros(1, np.int64), np.empty((1, 1), np.int32))


@SETTINGS
@given(data=st.data(), a_unsigned=st.booleans(), b_unsigned=st.booleans())
def test_packed_int8_kernels_equal_int8_matmul_and_requantize(data, a_unsigned, b_unsigned):
    # int8_matmul_packed == int8_matmul and int8_dense_packed == int8_matmul + requantize, on
    # both backends, bit for bit; k up to 2100 crosses the one-block bound (several float32
    # blocks), large biases and multipliers > 1 leave the unchecked fused loop for the checked one
    n, k, m = (data.draw(st.integers(1, 6)), data.draw(st.integers(0, 2100)),
               data.draw(st.integers(1, 5)))
    a_dt = np.uint8 if a_unsigned else np.int8
    b_dt = np.uint8 if b_unsigned else np.int8
    ia, ib = np.iinfo(a_dt), np.iinfo(b_dt)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    a = rng.choice([ia.min, ia.max, 0, 1], size=(n, k)).astype(a_dt)
    b = rng.integers(ib.min, ib.max + 1, size=(k, m)).astype(b_dt)
    za = data.draw(st.integers(int(ia.min), int(ia.max)))
    zb = np.array(data.draw(st.lists(st.integers(int(ib.min), int(ib.max)), min_size=m,
                                     max_size=m)), dtype=np.int64)
    from minscale import quant

    per_channel = data.draw(st.booleans())
    reals = data.draw(st.lists(st.floats(1e-7, 3.0), min_size=m if per_channel else 1,
                               max_size=m if per_channel else 1))
    pairs = [quant.quantize_multiplier(r) for r in reals]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    sh = np.array([p[1] for p in pairs], dtype=np.int64)
    bmag = data.draw(st.sampled_from([0, 1000, 2 ** 30]))
    bias = (rng.integers(-bmag, bmag + 1, size=m).astype(np.int32) if bmag
            else np.zeros(0, np.int32))
    zp = data.draw(st.integers(-128, 127))
    lower = max(-128, zp) if data.draw(st.booleans()) else -128
    acc_ref = np.empty((n, m), np.int32)
    ok_mm = R.int8_matmul(a, b, za, zb, acc_ref)
    q_ref = np.empty((n, m), np.int8)
    ok_ref = ok_mm and R.requantize(acc_ref, bias, m0, sh, zp, lower, 127, q_ref)
    for impl in (R, N):
        packed = impl.pack_int8_weights(b, zb)
        acc = np.empty((n, m), np.int32)
        assert impl.int8_matmul_packed(a, packed, za, acc) == ok_mm
        if ok_mm:
            np.testing.assert_array_equal(acc, acc_ref)
        q = np.empty((n, m), np.int8)
        assert impl.int8_dense_packed(a, packed, za, bias, m0, sh, zp, lower, 127, q) == ok_ref
        if ok_ref:
            np.testing.assert_array_equal(q, q_ref)


def test_packed_dense_reference_values():
    # 300 * 127 = 38100 through the pack; M = 0.1 (M0 = 1717986918, shift -3) gives 3810;
    # with bias 5: 38105 * 0.1 = 3810.5 -> 3811 (ties away from zero), clamped to 127 as int8
    a = np.full((1, 300), 127, dtype=np.int8)
    b = np.ones((300, 2), dtype=np.int8)
    for impl in (R, N):
        packed = impl.pack_int8_weights(b, np.zeros(2, np.int64))
        assert packed.wmax == 1 and packed.colsum.tolist() == [300, 300]
        acc = np.empty((1, 2), np.int32)
        assert impl.int8_matmul_packed(a, packed, 0, acc) and acc.tolist() == [[38100, 38100]]
        out = np.empty((1, 2), np.int16)
        assert impl.int8_dense_packed(a, packed, 0, np.array([0, 5], np.int32),
                                      np.array([1717986918]), np.array([-3]), 0, -32768, 32767,
                                      out)
        assert out.tolist() == [[3810, 3811]]


@SETTINGS
@given(data=st.data(), relu=st.booleans(), per_channel=st.booleans(), with_bias=st.booleans())
def test_requantize_equals_numpy_and_quant(data, relu, per_channel, with_bias):
    from minscale import quant

    n, m = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6))
    acc = np.array(data.draw(st.lists(st.integers(-2 ** 24, 2 ** 24), min_size=n * m,
                                      max_size=n * m)), dtype=np.int32).reshape(n, m)
    reals = data.draw(st.lists(st.floats(1e-6, 4.0), min_size=m if per_channel else 1,
                               max_size=m if per_channel else 1))
    pairs = [quant.quantize_multiplier(r) for r in reals]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    sh = np.array([p[1] for p in pairs], dtype=np.int64)
    bias = (np.array(data.draw(st.lists(st.integers(-1000, 1000), min_size=m, max_size=m)),
                     dtype=np.int32) if with_bias else np.zeros(0, np.int32))
    zp = data.draw(st.integers(-128, 127))
    lower = max(-128, zp) if relu else -128
    o1, o2 = np.empty((n, m), np.int8), np.empty((n, m), np.int8)
    ok1 = R.requantize(acc, bias, m0, sh, zp, lower, 127, o1)
    ok2 = N.requantize(acc, bias, m0, sh, zp, lower, 127, o2)
    assert ok1 == ok2
    if ok1:
        np.testing.assert_array_equal(o1, o2)
        x = acc.astype(np.int64) + (bias if with_bias else 0)
        ref = np.clip(quant.multiply_by_quantized_multiplier(x, m0, sh).astype(np.int64) + zp,
                      lower, 127)
        np.testing.assert_array_equal(o2, ref)


def test_requantize_reference_values():
    # TFLite MultiplyByQuantizedMultiplier with M = 0.1 (M0 = 1717986918, shift = -3):
    # 1000 -> 100, -1000 -> -100, 15 -> 1.5 -> 2, -15 -> -1.5 -> -2 (ties away from zero)
    acc = np.array([[1000, -1000, 15, -15]], dtype=np.int32)
    for impl in (R, N):
        out = np.empty((1, 4), np.int8)
        assert impl.requantize(acc, np.zeros(0, np.int32), np.array([1717986918]),
                               np.array([-3]), 0, -128, 127, out)
        assert out.tolist() == [[100, -100, 2, -2]]


# --- masks ---------------------------------------------------------------------------------

MASK10 = [True, False, True, True, False, True, True, False, True, True]


def test_count_zeros_reference():
    # 3 False in 10 entries, counted from 1: 4
    m = np.array(MASK10)
    assert R.count_zeros(m, 1) == N.count_zeros(m, 1) == N._count_zeros_parallel(m, 1) == 4


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_count_zeros_adds_start_once(threads):
    # A parallel reduction that seeded every thread with `start` would give 5 with 2 threads.
    code = textwrap.dedent(f"""
        import numba, numpy as np
        from minscale.kernels import _numba as N
        assert numba.config.NUMBA_NUM_THREADS == {threads}
        print(N._count_zeros_parallel(np.array({MASK10}), 1))
    """)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"


score_elements = st.one_of(st.floats(-50, 50, allow_nan=False, width=64),
                           st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0]))


@SETTINGS
@given(scores=arrays(np.float64, st.integers(1, 60), elements=score_elements),
       data=st.data(), as32=st.booleans())
def test_keep_all_but_smallest_equals_numpy(scores, data, as32):
    if as32:
        scores = scores.astype(np.float32)
    k = data.draw(st.integers(0, scores.size))
    k1 = R.keep_all_but_smallest(scores, k, np.empty(scores.size, bool))
    twin_max = N.SELECT_TWIN_MAX
    N.SELECT_TWIN_MAX = 0  # the compiled selection, not the NumPy twin small arrays take
    try:
        k2 = N.keep_all_but_smallest(scores, k, np.empty(scores.size, bool))
    finally:
        N.SELECT_TWIN_MAX = twin_max
    np.testing.assert_array_equal(k1, k2)
    assert (~k2).sum() == k


@pytest.mark.parametrize("kind", ["normal", "ties", "periodic", "sorted", "signed_zeros"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_selection_on_large_arrays(kind, dtype):
    # large enough for the sampling select; "periodic" and "sorted" defeat an evenly strided
    # sample, so the radix fallback runs too; results must equal np.partition's value
    rng = np.random.default_rng(7)
    n = 400_003
    if kind == "normal":
        s = np.abs(rng.standard_normal(n))
    elif kind == "ties":
        s = np.round(np.abs(rng.standard_normal(n)), 1)
    elif kind == "periodic":
        s = np.tile(rng.standard_normal(997), n // 997 + 1)[:n]
    elif kind == "sorted":
        s = np.sort(rng.standard_normal(n))
    else:
        s = rng.choice([0.0, -0.0, 1.0, -1.0], size=n)
    s = s.astype(dtype)
    for k in (0, 1, n // 2, int(0.9 * n), n - 1):
        assert N.kth_smallest(s, k) == np.partition(s, k)[k]
        assert N._radix_kth(s, k) == np.partition(s, k)[k]
    k = int(0.9 * n)
    np.testing.assert_array_equal(N.keep_all_but_smallest(s, k, np.empty(n, bool)),
                                  R.keep_all_but_smallest(s, k, np.empty(n, bool)))


# --- importing without numba ---------------------------------------------------------------

def _run_python(code, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("MINSCALE_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_import_minscale_does_not_import_numba():
    out = _run_python("""
        import sys
        import minscale
        assert "numba" not in sys.modules, "import minscale imported numba"
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_minscale_trains_with_numba_unimportable():
    # sys.modules["numba"] = None makes every `import numba` raise ImportError
    out = _run_python("""
        import sys
        sys.modules["numba"] = None
        import numpy as np
        import minscale as ms
        rng = np.random.default_rng(0)
        X = rng.uniform(-1, 1, (100, 1)); y = 2 * X + 1
        m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
        m.compile(optimizer=ms.optim.Adam(0.1))
        h = m.fit(X, y, epochs=30, batch_size=10, seed=0)
        assert ms.get_backend() == "numpy", ms.get_backend()
        assert h["loss"][-1] < h["loss"][0]
        from minscale import quant
        assert quant.quantize([0.5, 1.5, 2.5, -0.5, -2.5], quant.QFormat(8, 0)).tolist() == \\
            [0, 2, 2, 0, -2]
        try:
            ms.set_backend("numba")
        except ImportError:
            print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_small_quantizer_inputs_take_the_numpy_twin_with_the_same_codes(monkeypatch):
    # the folder's conftest sets QUANT_TWIN_MAX to 0; the default sends these to the twin
    rng = np.random.default_rng(3)
    scale, zp = np.array([0.02, 0.05]), np.array([3, -7])
    for n in (1, 5, 2000):
        x = rng.standard_normal((2, 2, n)) * 3
        x[0, 0, 0] = 0.01 * 0.5  # a tie
        runs = []
        for twin_max in (0, 1 << 30):
            monkeypatch.setattr(N, "QUANT_TWIN_MAX", twin_max)
            codes = N.quantize_affine(x, scale, zp, -128, 127, 0, np.empty(x.shape, np.int8))
            back = N.dequantize_affine(codes, scale, zp, np.empty(x.shape))
            checked = N.quantize_affine_checked(x, scale, zp, -128, 127, 1,
                                                np.empty(x.shape, np.int32))
            fixed = np.empty(x.shape, np.int16)
            clipped = N.quantize_fixed(x, 13, -32768, 32767, 2, fixed)
            runs.append((codes, back, checked, fixed, clipped))
        np.testing.assert_array_equal(runs[0][3], runs[1][3])
        assert runs[0][4] == runs[1][4] >= 0  # 3 * 2**13 saturates int16
        np.testing.assert_array_equal(runs[0][0], runs[1][0])
        np.testing.assert_array_equal(runs[0][1], runs[1][1])
        assert runs[0][2] == runs[1][2] == -1
