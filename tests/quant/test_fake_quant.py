"""Fake quantization: forward values and the straight-through gradient mask.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale.quant import (
    QFormat,
    dequantize,
    fake_quantize,
    fake_quantize_grad_mask,
    quantize,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

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
