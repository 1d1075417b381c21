"""Post-training quantization of a float Sequential into a :class:`QuantizedModel`.
"""

from __future__ import annotations

import math

import numpy as np

from ._arrays import as_float64
from .affine import (
    affine_qparams,
    bias_safe_weight_scale,
    quantize_affine,
    quantize_bias,
    quantize_weights,
)
from .calibration import calibration_ranges, check_sequential
from .fixed_model import FIXED_SPECS, quantize_fixed_model
from .fixed_point import FRAC_BITS_LIMIT, QFormat, choose_frac_bits, quantize
from .quantized_model import QuantizedDense, QuantizedModel
from .specs import activation_spec, json_ready, weight_spec

__all__ = [
    "quantize_layer_weights",
    "quantize_model",
]

def quantize_layer_weights(W, spec):
    """Weight codes and per-output-channel scales of one Dense kernel under `spec`.

    Parameters
    ----------
    W : array_like of float, shape (d_in, d_out)
    spec : WeightSpec or anything :func:`weight_spec` accepts

    Returns
    -------
    codes : ndarray of ``code_dtype(bits, signed)``, shape (d_in, d_out)
    scale : float64 ndarray, shape (d_out,)
        Real value of one code step per output unit (repeated when per tensor).
    frac_bits : int or None
        The fixed-point format's fractional bits (None for affine).

    Raises
    ------
    ValueError
        If W is not 2-D or holds NaN/inf.

    Notes
    -----
    ``W ≈ scale[None, :] * codes``. Affine: :func:`quantize_weights`; fixed:
    :func:`quantize` with ``QFormat(bits, frac_bits or choose_frac_bits(W, bits), signed)``.
    """
    spec = weight_spec(spec)
    W = as_float64("W", W, allow_inf=False)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (d_in, d_out), got shape {W.shape}")
    d_out = W.shape[1]
    if spec.scheme == "affine":
        codes, scale, _ = quantize_weights(W, spec.bits, axis=1 if spec.per_channel else None)
        return codes, np.broadcast_to(np.asarray(scale, np.float64), (d_out,)).copy(), None
    f = (
        spec.frac_bits
        if spec.frac_bits is not None
        else choose_frac_bits(W, spec.bits, spec.signed)
    )
    fmt = QFormat(spec.bits, f, spec.signed)
    return quantize(W, fmt), np.full(d_out, fmt.step), f


def _fit_bias(W, b, input_scale, spec, codes, w_scale, frac_bits):
    """Weights requantized at :func:`bias_safe_weight_scale` when the int32 bias needs it.

    Affine weights take the widened scales; automatic fixed point takes the finest format whose
    step is at least the widened scale; a fixed point format the user gave is kept (an
    unrepresentable bias then raises in :func:`quantize_bias`).
    """
    per_channel = spec.scheme == "affine" and spec.per_channel
    safe = bias_safe_weight_scale(b, input_scale, w_scale, per_channel)
    if np.array_equal(safe, w_scale):
        return codes, w_scale, frac_bits
    if spec.scheme == "affine":
        zeros = np.zeros(safe.shape, np.int64)
        codes = quantize_affine(W, safe, zeros, spec.bits, narrow_range=True, axis=1)
        return codes, safe, frac_bits
    if spec.frac_bits is not None:
        return codes, w_scale, frac_bits
    # step 2**-f >= safe: f = -e for safe = m * 2**e, m in [0.5, 1)
    f = max(min(frac_bits, -math.frexp(float(safe.max()))[1]), -FRAC_BITS_LIMIT)
    fmt = QFormat(spec.bits, f, spec.signed)
    return quantize(W, fmt), np.full(safe.shape, fmt.step), f


def build_quantized(model, spec, activations, ranges):
    """QuantizedModel from a float model, a weight spec and activation ranges (or None)."""
    signed = activations != "uint8"
    qparams = None
    if activations is not None:
        qparams = [affine_qparams(lo, hi, 8, signed=signed) for lo, hi in ranges]
    layers = []
    for i, layer in enumerate(model.layers):
        codes, w_scale, frac_bits = quantize_layer_weights(layer.W, spec)
        bias = bias_codes = None
        if layer.use_bias:
            b = layer.b.astype(np.float64)
            if qparams is not None:
                codes, w_scale, frac_bits = _fit_bias(
                    layer.W, b, qparams[i][0], spec, codes, w_scale, frac_bits
                )
                bias_codes, _ = quantize_bias(b, qparams[i][0], w_scale)
            else:
                bias = b.copy()
        layers.append(
            QuantizedDense(
                codes,
                w_scale,
                layer.activation,
                layer.alpha,
                bias,
                bias_codes,
                None if qparams is None else qparams[i],
                None if qparams is None else qparams[i + 1],
                spec,
                frac_bits,
            )
        )
    state = {k: v for k, v in json_ready(model.state).items() if k != "quantization"}
    return QuantizedModel(
        layers,
        model.input_dim,
        model.dtype,
        spec,
        activations,
        None if qparams is None else qparams[0],
        model.count_params(),
        state,
    )


def quantize_model(
    model, weights="int8", activations="int8", calibration_data=None, batch_size=None
):
    """Post-training quantization of a float Sequential.

    Parameters
    ----------
    model : Sequential, built
    weights : str, QFormat or WeightSpec, default "int8"
        See :func:`weight_spec`: ``"int8"`` is TFLite's per-channel symmetric int8; a QFormat is
        fixed point in that format. ``"fixed8"`` / ``"fixed16"`` (activations the same) builds
        an integer-only :class:`FixedPointModel` instead (:func:`quantize_fixed_model`).
    activations : {"int8", "uint8"} or None, default "int8"
        Quantize the input and every layer output with asymmetric per-tensor 8-bit affine
        parameters from the calibration ranges; biases become int32 at ``s_in * s_w``, after
        :func:`bias_safe_weight_scale` widens any weight scale the bias would not fit (an
        all-zero weight channel, say). None quantizes the weights only (biases and activations
        stay float).
    calibration_data : array_like, shape (n, d_in)
        Required when activations are quantized: rows whose float activations set the ranges
        (:func:`calibration_ranges`).
    batch_size : int, optional
        Rows per calibration pass.

    Returns
    -------
    QuantizedModel

    Raises
    ------
    TypeError
        If model is not a Sequential or weights is of an unknown kind.
    ValueError
        If activations is unknown, calibration_data is missing when needed, data is bad, or a
        bias cannot be held in int32 under a fixed-point format given with its frac_bits.

    References
    ----------
    Jacob et al. 2018; Krishnamoorthi 2018, section 3.1 (post-training quantization);
    TFLite post-training integer quantization with a representative dataset.

    Examples
    --------
    >>> import minscale as ms
    >>> m = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=0)
    >>> X = np.random.default_rng(0).normal(size=(50, 2))
    >>> q = quantize_model(m, "int8", "int8", calibration_data=X)
    >>> lsb = q.layers[-1].output_qparams[0]
    >>> y_int = q.predict(X, integer=True, requantize_rounding="single")
    >>> bool(np.abs(y_int - q.predict(X)).max() <= lsb)
    True
    """
    model = check_sequential(model)
    if weights in FIXED_SPECS or activations in FIXED_SPECS:
        return quantize_fixed_model(model, weights, activations, calibration_data, batch_size)
    spec = weight_spec(weights)
    activations = activation_spec(activations)
    ranges = None
    if activations is not None:
        if calibration_data is None:
            raise ValueError(
                "calibration_data is required when activations are quantized "
                f"(activations={activations!r}); pass rows of training data"
            )
        ranges = calibration_ranges(model, calibration_data, batch_size)
    return build_quantized(model, spec, activations, ranges)
