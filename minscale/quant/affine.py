"""Affine integer numbers (Jacob et al. 2018; TFLite int8, ``torch.ao.quantization``).

``real = scale * (q - zero_point)``, per tensor or per channel, with zero exactly
representable. Quantization is ``q = clip(round(x / scale) + zero_point, qmin, qmax)``: round
first, then add the zero point, the same order in every path.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import kernels
from .._checks import check_bool, check_choice, check_float_dtype, plain
from ..kernels._numpy import ROUNDING_CODES as _ROUNDING_CODES
from ._arrays import (
    FLOAT32_EPS,
    INT32_MAX,
    INT32_MIN,
    as_channels,
    as_float64,
    as_int_array,
    as_real_array,
    channel_shape,
    normalize_axis,
)
from .fixed_point import (
    ROUNDING_MODES,
    code_dtype,
    integer_range,
    keep_underflow_sign,
    round_values,
)

__all__ = [
    "channel_min_max",
    "affine_qparams",
    "quantize_affine",
    "dequantize_affine",
    "quantize_weights",
    "quantize_bias",
    "bias_safe_weight_scale",
]

def channel_min_max(x, axis=None):
    """Minimum and maximum of `x` per tensor or per channel.

    Parameters
    ----------
    x : array_like of float, any shape
    axis : int or None, default None
        The channel axis: one (min, max) per index along it, reduced over all other axes. None
        reduces over everything.

    Returns
    -------
    (x_min, x_max) : floats, or float64 ndarrays of shape (x.shape[axis],)
        An empty tensor (or channel) gives (0.0, 0.0).

    Raises
    ------
    ValueError
        If x contains NaN or axis is out of range.

    Examples
    --------
    >>> channel_min_max([[0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]], axis=0)
    (array([ 0., -1.]), array([0., 1.]))
    """
    x = as_float64("x", x)
    axis = normalize_axis(axis, x.ndim)
    if axis is None:
        if x.size == 0:
            return 0.0, 0.0
        return float(x.min()), float(x.max())
    xt = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    if xt.shape[1] == 0:
        return np.zeros(xt.shape[0]), np.zeros(xt.shape[0])
    return xt.min(axis=1), xt.max(axis=1)


def affine_qparams(
    x_min, x_max, bits=8, signed=True, symmetric=False, narrow_range=False, eps=FLOAT32_EPS
):
    """Scale and zero point that map ``[x_min, x_max]`` onto the integer codes.

    Parameters
    ----------
    x_min, x_max : float, or array_like of float of one shape (per channel)
        Observed range; finite, ``x_min <= x_max``. Any dtype; computed in float64.
    bits : int, 2..32, default 8
    signed : bool, default True
        int8-style codes (TFLite) or uint8-style codes (torch ``quint8``).
    symmetric : bool, default False
        Scale from ``max(|x_min|, |x_max|)`` and a fixed zero point (0 signed, the midpoint
        ``2**(bits-1)`` unsigned), as torch's ``per_tensor_symmetric``/``per_channel_symmetric``.
    narrow_range : bool, default False
        Drop the lowest code: ``[-127, 127]`` for signed 8 bits (TFLite weights).
    eps : float, > 0, default FLOAT32_EPS (2**-23)
        Smallest scale, as torch.ao observers; an all-zero or constant range gets a finite,
        positive scale, never a division by zero.

    Returns
    -------
    (scale, zero_point) : (float, int), or (float64 ndarray, int64 ndarray) shaped like x_min

    Raises
    ------
    TypeError
        If bits is not an integer or a flag is not a bool.
    ValueError
        If x_min or x_max holds NaN or inf, x_min > x_max anywhere, their shapes differ, bits is
        outside 2..32, or eps is not a finite positive number.

    Notes
    -----
    The range is first widened to include 0: ``lo = min(x_min, 0)``, ``hi = max(x_max, 0)``.
    Asymmetric: ``scale = max((hi - lo) / (qmax - qmin), eps)``,
    ``zero_point = clip(qmin - round_half_even(lo / scale), qmin, qmax)`` (round, then clamp).
    Symmetric: ``scale = max(max(-lo, hi) / ((qmax - qmin) / 2), eps)``,
    ``zero_point = (qmin + qmax + 1) // 2`` (0 for signed, 2**(bits-1) unsigned).
    Zero is then exactly representable: ``quantize_affine(0) == zero_point``.

    References
    ----------
    ``torch.ao.quantization.observer._ObserverBase._calculate_qparams`` (torch 2.x); Jacob et al.
    2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
    Inference", section 2.1; TFLite 8-bit quantization specification.

    Examples
    --------
    >>> affine_qparams(-1.0, 1.0, signed=False)
    (0.00784313725490196, 128)
    >>> affine_qparams(-1.0, 1.0, symmetric=True, narrow_range=True)
    (0.007874015748031496, 0)
    >>> affine_qparams(0.0, 0.0)
    (1.1920928955078125e-07, -128)
    """
    qmin, qmax = integer_range(bits, signed, narrow_range)
    symmetric = check_bool("symmetric", symmetric)
    eps = _check_eps(eps)
    lo, hi = _check_range(x_min, x_max)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / ((qmax - qmin) / 2.0), eps)
        zero_point = np.full(lo.shape, (qmin + qmax + 1) // 2, dtype=np.int64)
    else:
        scale = np.maximum((hi - lo) / float(qmax - qmin), eps)
        zero_point = np.clip(qmin - np.rint(lo / scale), qmin, qmax).astype(np.int64)
    if lo.ndim == 0:
        return float(scale), int(zero_point)
    return scale, zero_point



def _check_eps(eps):
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive number, got {plain(eps)!r}")
    return eps


def _check_range(x_min, x_max):
    """Finite float64 bounds of one shape with ``x_min <= x_max`` everywhere."""
    lo = as_float64("x_min", x_min, allow_inf=False)
    hi = as_float64("x_max", x_max, allow_inf=False)
    if lo.shape != hi.shape:
        raise ValueError(f"x_min and x_max must have one shape, got {lo.shape} and {hi.shape}")
    bad = lo > hi
    if bad.any():
        i = int(np.argmax(bad.ravel()))
        raise ValueError(
            f"x_min must be <= x_max, got x_min={float(lo.ravel()[i])!r} > "
            f"x_max={float(hi.ravel()[i])!r}" + (f" at channel {i}" if lo.ndim else "")
        )
    return lo, hi


def check_qparams(scale, zero_point, x_ndim, axis, qmin, qmax):
    """Validate scale/zero_point; return them shaped to broadcast against x (float64, int64)."""
    scale = as_float64("scale", scale, allow_inf=False)
    zp = as_int_array("zero_point", zero_point).astype(np.int64)
    if (scale <= 0).any():
        raise ValueError(f"scale must be positive, got minimum {float(scale.min())!r}")
    if zp.size and (zp.min() < qmin or zp.max() > qmax):
        raise ValueError(
            f"zero_point must lie in [{qmin}, {qmax}], got range [{zp.min()}, {zp.max()}]"
        )
    if axis is None:
        if scale.ndim or zp.ndim:
            raise ValueError(
                f"scale and zero_point must be scalars when axis is None, got shapes {scale.shape} "
                f"and {zp.shape}; pass axis for per-channel parameters"
            )
        return scale, zp
    if scale.ndim != 1 or zp.shape != scale.shape:
        raise ValueError(
            f"per-channel scale and zero_point must be 1-D of one length, got shapes {scale.shape} "
            f"and {zp.shape}"
        )
    shape = channel_shape(x_ndim, axis)
    return scale.reshape(shape), zp.reshape(shape)


def check_channels(x, axis, scale):
    """ValueError unless x has as many channels along `axis` as `scale` has entries."""
    if axis is not None and x.shape[axis] != np.asarray(scale).size:
        raise ValueError(
            f"x has {x.shape[axis]} channels along axis {axis} but scale has "
            f"{np.asarray(scale).size}"
        )


def quantize_affine(
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
    """Affine codes: ``q = clip(round(x / scale) + zero_point, qmin, qmax)``.

    Parameters
    ----------
    x : array_like of float, any shape
        Real values (converted to float64; ±inf saturates).
    scale : float > 0, or float array of shape (x.shape[axis],)
        Real value of one code step.
    zero_point : int in [qmin, qmax], or int array of shape (x.shape[axis],)
        Code that represents 0.0.
    bits : int, 2..32, default 8
    signed : bool, default True
    narrow_range : bool, default False
        Codes in ``[qmin + 1, qmax]``.
    axis : int or None, default None
        Channel axis of x for per-channel parameters; None for per-tensor scalars.
    rounding : str, default "nearest_even"
        See :func:`round_values`; torch and FBGEMM round half to even.
    seed : None, int or numpy.random.Generator
        For stochastic rounding.

    Returns
    -------
    q : ndarray of ``code_dtype(bits, signed)`` shaped like x

    Raises
    ------
    TypeError
        If x or scale is not real or zero_point is not an integer.
    ValueError
        If x has NaN, scale is not finite positive, zero_point is outside [qmin, qmax], the
        parameter shapes do not match axis, or rounding is unknown.

    Notes
    -----
    The order is fixed: divide, round, then add the zero point, then clamp. Rounding
    ``x / scale + zero_point`` instead would differ at ties when the zero point is odd.
    ``x / scale`` is one correctly rounded float64 division (torch multiplies by a float32
    ``1 / scale``; the two agree whenever the scale is a power of two).

    References
    ----------
    Jacob et al. 2018, eq. (1); ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel``;
    TFLite ``AffineQuantize``.

    Examples
    --------
    >>> quantize_affine([0.5, 1.5, 2.5, -0.5, -2.5], 1.0, 0).tolist()
    [0, 2, 2, 0, -2]
    >>> quantize_affine([0.5, 1.5, 2.5], 1.0, 1).tolist()
    [1, 3, 3]
    """
    qmin, qmax = integer_range(bits, signed, narrow_range)
    check_choice("rounding", rounding, ROUNDING_MODES)
    # the deterministic roundings find NaN inside the kernel's pass (no separate scan)
    x = as_real_array("x", x, check_nan=rounding == "stochastic")
    axis = normalize_axis(axis, x.ndim)
    check_channels(x, axis, scale)
    s, zp = check_qparams(scale, zero_point, x.ndim, axis, qmin, qmax)
    if rounding != "stochastic":
        dtype = code_dtype(bits, signed)
        return _quantize_affine_kernel(x, s, zp, qmin, qmax, rounding, axis, dtype)
    x = x.astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
        v = x / s
    # Clipping at qmin - zp / qmax - zp before rounding equals clipping the shifted code after it.
    lo = (qmin - zp).astype(np.float64)
    hi = (qmax - zp).astype(np.float64)
    r = round_values(np.clip(keep_underflow_sign(v, x), lo, hi), rounding, seed)
    return (r.astype(np.int64) + zp).astype(code_dtype(bits, signed))



def _quantize_affine_kernel(x, s, zp, qmin, qmax, rounding, axis, dtype):
    """The deterministic roundings in the backend's one-pass kernel (it also finds NaN)."""
    out = np.empty(x.shape, dtype=dtype)
    if not x.size:
        return out
    with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
        first_nan = kernels.quantize_affine_checked(
            as_channels(x, axis), s.reshape(-1), zp.reshape(-1), qmin, qmax,
            _ROUNDING_CODES[rounding], as_channels(out, axis),
        )
    if first_nan >= 0:
        idx = np.unravel_index(first_nan, x.shape) if x.ndim else ()
        raise ValueError(f"x contains NaN (first at index {idx}); NaN cannot be quantized")
    return out


def dequantize_affine(q, scale, zero_point, axis=None, dtype=np.float64):
    """Real values of affine codes: ``x = scale * (q - zero_point)``.

    Parameters
    ----------
    q : array_like of int, any shape
    scale : float > 0, or float array of shape (q.shape[axis],)
    zero_point : int, or int array of shape (q.shape[axis],)
    axis : int or None, default None
        Channel axis for per-channel parameters.
    dtype : float dtype, default float64

    Returns
    -------
    x : ndarray of `dtype` shaped like q
        ``q - zero_point`` is exact in int64; the product with the scale is one float64 rounding.

    Raises
    ------
    TypeError
        If q or zero_point is not integer or scale not real.
    ValueError
        If scale is not finite positive or the parameter shapes do not match axis.

    Examples
    --------
    >>> dequantize_affine(np.array([0, 64, 255], dtype=np.uint8), 0.5, 64).tolist()
    [-32.0, 0.0, 95.5]
    """
    q = as_int_array("q", q)
    axis = normalize_axis(axis, q.ndim)
    check_channels(q, axis, scale)
    s, zp = check_qparams(scale, zero_point, q.ndim, axis, -(2**63), 2**63 - 1)
    out = np.empty(q.shape, dtype=check_float_dtype("dtype", dtype))
    if q.size:
        q = np.ascontiguousarray(q)
        kernels.dequantize_affine(
            as_channels(q, axis), s.reshape(-1), zp.reshape(-1), as_channels(out, axis)
        )
    return out


def quantize_weights(w, bits=8, axis=-1):
    """Symmetric, narrow-range, per-channel quantization of a weight tensor (TFLite int8 weights).

    Parameters
    ----------
    w : array_like of float, any shape; for a Dense kernel (d_in, d_out)
    bits : int, 2..32, default 8
        Codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, i.e. [-127, 127] for 8 bits.
    axis : int or None, default -1
        Channel axis; -1 gives one scale per output unit of a (d_in, d_out) kernel. None: one
        scale for the whole tensor.

    Returns
    -------
    codes : ndarray of ``code_dtype(bits)`` shaped like w
    scale : float, or float64 ndarray of shape (w.shape[axis],)
        ``max|w_c| / qmax`` per channel (``FLOAT32_EPS`` for an all-zero channel).
    zero_point : int 0, or int64 zeros of shape (w.shape[axis],)

    Raises
    ------
    ValueError
        If w contains NaN or inf, or axis is out of range.

    References
    ----------
    TFLite 8-bit quantization specification (weights: int8, symmetric, per-axis, range
    [-127, 127]); Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient
    inference: A whitepaper", section 2.

    Examples
    --------
    >>> codes, scale, zp = quantize_weights([[0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]], axis=0)
    >>> codes.tolist()
    [[0, 0, 0], [-127, 64, 127]]
    """
    w = as_float64("w", w, allow_inf=False)
    w_min, w_max = channel_min_max(w, axis)
    scale, zero_point = affine_qparams(
        w_min, w_max, bits, signed=True, symmetric=True, narrow_range=True
    )
    codes = quantize_affine(w, scale, zero_point, bits, signed=True, narrow_range=True, axis=axis)
    return codes, scale, zero_point


def quantize_bias(b, input_scale, weight_scale):
    """int32 bias codes at scale ``input_scale * weight_scale`` with zero point 0.

    Parameters
    ----------
    b : array_like of float, shape (d_out,)
    input_scale : float > 0
        Scale of the layer's input activations.
    weight_scale : float > 0, or float array of shape (d_out,)
        Per-tensor or per-output-channel weight scale.

    Returns
    -------
    codes : int32 ndarray, shape (d_out,)
        ``round_half_even(b / (input_scale * weight_scale))``.
    scale : float64 ndarray, shape (d_out,)
        ``input_scale * weight_scale``, broadcast to (d_out,).

    Raises
    ------
    ValueError
        If b has NaN, a scale (or their product) is not finite positive, shapes do not match,
        or a code would leave int32: the bias cannot be represented at that scale, and is
        refused rather than saturated (widen the weight scale first with
        :func:`bias_safe_weight_scale`, as :func:`quantize_model` does).

    Notes
    -----
    With this scale the bias adds straight into the int32 accumulator of
    ``sum_k (x_q - zp_x) * w_q``, whose real value is ``input_scale * weight_scale * acc``.

    References
    ----------
    Jacob et al. 2018, section 2.4; TFLite quantization specification (bias: int32,
    scale = input_scale * weight_scale, zero point 0).

    Examples
    --------
    >>> quantize_bias([0.25, -1.0], 0.5, 0.25)[0].tolist()
    [2, -8]
    """
    b = as_float64("b", b)
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D (d_out,), got shape {b.shape}")
    s_in = as_float64("input_scale", input_scale, allow_inf=False)
    s_w = as_float64("weight_scale", weight_scale, allow_inf=False)
    if s_in.ndim != 0 or s_in <= 0:
        raise ValueError(f"input_scale must be a positive scalar, got {plain(input_scale)!r}")
    if (s_w <= 0).any() or s_w.ndim > 1 or (s_w.ndim == 1 and s_w.shape != b.shape):
        raise ValueError(
            f"weight_scale must be positive, scalar or of shape {b.shape}, "
            f"got {np.asarray(weight_scale)!r}"
        )
    scale = np.broadcast_to(s_in * s_w, b.shape).astype(np.float64)
    if not np.isfinite(scale).all() or (scale <= 0).any():
        raise ValueError(
            f"input_scale * weight_scale must be finite and positive, got {plain(input_scale)!r} * "
            f"{np.asarray(weight_scale)!r}"
        )
    with np.errstate(over="ignore"):
        ratio = np.rint(b / scale)
    bad = (ratio < INT32_MIN) | (ratio > INT32_MAX) | np.isinf(b)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(
            f"b[{j}] = {float(b[j])!r} is beyond the int32 range at scale input_scale * "
            f"weight_scale = {float(scale[j])!r} (code {float(ratio[j]):.4g}); widen the weight "
            "scale (bias_safe_weight_scale) rather than saturate the bias"
        )
    codes = quantize_affine(b, scale, np.zeros(b.shape, np.int64), bits=32, axis=0)
    return codes, scale


def bias_safe_weight_scale(b, input_scale, weight_scale, per_channel=True):
    """Weight scales widened where needed so that the int32 bias holds the real bias.

    Parameters
    ----------
    b : array_like of float, shape (d_out,)
        The layer's float bias.
    input_scale : float > 0
        Scale of the layer's input activations.
    weight_scale : float > 0, or float array of shape (d_out,)
        The weight scales from the weights alone (e.g. :func:`quantize_weights`).
    per_channel : bool, default True
        One scale per output unit; False widens the one per-tensor scale for the largest |b|.

    Returns
    -------
    scale : float64 ndarray, shape (d_out,)
        ``weight_scale`` where the bias fits in half the int32 range, else the widened scale.

    Raises
    ------
    ValueError
        If b has NaN or inf, a scale is not finite positive, or the shapes do not match.

    Notes
    -----
    The bias is stored as ``round(b / (input_scale * weight_scale))`` in int32 (TFLite's bias
    scale). A weight scale that is tiny next to the bias -- an all-zero weight channel gets the
    floor scale ``FLOAT32_EPS`` -- would saturate that code and silently lose the bias. So, per
    channel: if ``|b_j| >= 0.5 * input_scale * s_j * INT32_MAX`` then
    ``s_j = 2 * |b_j| / (INT32_MAX * input_scale)``, which puts the bias code at about
    ``INT32_MAX / 2``, leaving the other half of int32 for the accumulator. Per tensor the same
    with ``max_j |b_j|``. Weight codes must then be quantized with the widened scale; the weights
    of such a channel contribute at most ``127 * 255 / 2**30`` of the bias per input, so nothing
    measurable is lost.

    References
    ----------
    TFLite ``AdjustWeightsForBiasScale`` (tensorflow/lite/tools/optimize/quantization_utils.cc),
    which the TFLite post-training quantizer applies before quantizing weights and biases.

    Examples
    --------
    >>> bias_safe_weight_scale([5.0, 0.5], 0.02, np.array([FLOAT32_EPS, 0.01])).tolist()
    [2.3283064376228985e-07, 0.01]
    """
    b = as_float64("b", b, allow_inf=False)
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D (d_out,), got shape {b.shape}")
    per_channel = check_bool("per_channel", per_channel)
    s_in = as_float64("input_scale", input_scale, allow_inf=False)
    s_w = as_float64("weight_scale", weight_scale, allow_inf=False)
    if s_in.ndim != 0 or s_in <= 0:
        raise ValueError(f"input_scale must be a positive scalar, got {plain(input_scale)!r}")
    if (s_w <= 0).any() or s_w.ndim > 1 or (s_w.ndim == 1 and s_w.shape != b.shape):
        raise ValueError(
            f"weight_scale must be positive, scalar or of shape {b.shape}, "
            f"got {np.asarray(weight_scale)!r}"
        )
    scale = np.broadcast_to(s_w, b.shape).astype(np.float64)
    need = np.abs(b) if per_channel else np.full(b.shape, np.abs(b).max(initial=0.0))
    widen = need >= 0.5 * float(s_in) * scale * INT32_MAX
    scale[widen] = 2.0 * need[widen] / (INT32_MAX * float(s_in))
    return scale
