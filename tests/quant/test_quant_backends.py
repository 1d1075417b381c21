"""quant's formulas give the same codes on the NumPy and the Numba backend.
"""

import numpy as np
import pytest

from minscale import kernels
from minscale.quant import (
    QFormat,
    dequantize,
    dequantize_affine,
    fake_quantize,
    fake_quantize_grad_mask,
    int_matmul,
    quantize,
    quantize_affine,
    quantize_multiplier,
    quantize_weights,
    requantize,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

def _with_backend(name, fn):
    previous = kernels._forced  # restored as the shared `backend` fixture does
    kernels.set_backend(name)
    try:
        return fn()
    finally:
        kernels.set_backend(previous)


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
