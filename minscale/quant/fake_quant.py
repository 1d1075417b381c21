"""Fake quantization (quantize, then dequantize, in float) and its straight-through mask.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .._checks import check_choice
from ..kernels._numpy import ROUNDING_CODES as _ROUNDING_CODES
from ._arrays import as_channels, as_real_array, normalize_axis
from .affine import check_channels, check_qparams, dequantize_affine, quantize_affine
from .fixed_point import ROUNDING_MODES, integer_range

__all__ = [
    "fake_quantize",
    "fake_quantize_grad_mask",
]

def fake_quantize(
    x,
    scale,
    zero_point,
    bits=8,
    signed=True,
    narrow_range=False,
    axis=None,
    rounding="nearest_even",
    seed=None,
):
    """Quantize then dequantize: the forward pass of fake quantization.

    Parameters
    ----------
    x : array_like of float, any shape
    scale, zero_point, bits, signed, narrow_range, axis, rounding, seed
        As :func:`quantize_affine`. A fixed-point ``QFormat`` is ``scale = fmt.step``,
        ``zero_point = 0``, ``bits = fmt.bits``, ``signed = fmt.signed``.

    Returns
    -------
    x_hat : ndarray shaped like x, of x's float dtype (float64 for integer x)
        ``scale * (clip(round(x / scale) + zero_point, qmin, qmax) - zero_point)``, computed in
        float64 and cast once.

    Raises
    ------
    As :func:`quantize_affine`.

    References
    ----------
    Jacob et al. 2018, section 3 (simulated quantization);
    ``torch.fake_quantize_per_tensor_affine``.

    Examples
    --------
    >>> fake_quantize([0.3, 2.0], 0.25, 0).tolist()
    [0.25, 2.0]
    """
    out, _ = fake_quantize_with_mask(
        x, scale, zero_point, bits, signed, narrow_range, axis, rounding, seed
    )
    return out


def fake_quantize_grad_mask(
    x, scale, zero_point, bits=8, signed=True, narrow_range=False, axis=None
):
    """Straight-through-estimator mask: True where the gradient of fake quantization passes.

    Parameters
    ----------
    x : array_like of float, any shape
        The forward input.
    scale, zero_point, bits, signed, narrow_range, axis
        As :func:`quantize_affine`.

    Returns
    -------
    mask : bool ndarray shaped like x
        True where ``qmin - zero_point <= x / scale <= qmax - zero_point`` (inside the
        representable range, bounds included), False where the forward pass clipped. The
        backward pass is ``dx = dy * mask``.

    Raises
    ------
    As :func:`quantize_affine`.

    Notes
    -----
    The test uses the same float64 ``x / scale`` as the forward pass, so "clipped" means exactly
    what the forward did. TensorFlow's ``FakeQuantWithMinMaxVarsGradient`` uses the same
    inclusive range on x; torch tests the rounded code instead, which also passes inputs within
    half a step outside the range.

    References
    ----------
    Bengio, Léonard, Courville 2013 (straight-through estimator); Jacob et al. 2018, section 3.

    Examples
    --------
    >>> x = [-1.5, -1.0, 0.2, 1.0, 1.5]
    >>> fake_quantize_grad_mask(x, 1 / 127, 0, narrow_range=True).astype(int).tolist()
    [0, 1, 1, 1, 0]
    """
    _, mask = fake_quantize_with_mask(
        x, scale, zero_point, bits, signed, narrow_range, axis, want_mask=True
    )
    return mask


def fake_quantize_with_mask(
    x,
    scale,
    zero_point,
    bits=8,
    signed=True,
    narrow_range=False,
    axis=None,
    rounding="nearest_even",
    seed=None,
    want_mask=False,
):
    """Fake-quantized x (in x's float dtype) and, if asked, the STE pass mask, in one pass."""
    qmin, qmax = integer_range(bits, signed, narrow_range)
    check_choice("rounding", rounding, ROUNDING_MODES)
    x = as_real_array("x", x)
    axis = normalize_axis(axis, x.ndim)
    check_channels(x, axis, scale)
    s, zp = check_qparams(scale, zero_point, x.ndim, axis, qmin, qmax)
    out = np.empty(x.shape, dtype=x.dtype)
    mask = np.empty(x.shape, dtype=np.bool_) if want_mask else None
    if x.size == 0:
        return out, mask
    if rounding == "stochastic":
        q = quantize_affine(x, scale, zero_point, bits, signed, narrow_range, axis, rounding, seed)
        out[...] = dequantize_affine(q, scale, zero_point, axis=axis)
        if want_mask:
            with np.errstate(over="ignore", under="ignore"):
                v = x.astype(np.float64) / s
            mask[...] = (v >= qmin - zp) & (v <= qmax - zp)
        return out, mask
    with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
        kernels.fake_quantize(
            as_channels(x, axis),
            s.reshape(-1),
            zp.reshape(-1),
            qmin,
            qmax,
            _ROUNDING_CODES[rounding],
            as_channels(out, axis),
            as_channels(mask, axis) if want_mask else np.zeros(0, np.bool_),
        )
    return out, mask
