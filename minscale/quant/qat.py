"""Quantization-aware training: fake-quantization hooks for ``fit(..., quantization=...)``,
then :func:`convert` to a :class:`QuantizedModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .affine import affine_qparams, channel_min_max
from .calibration import calibration_ranges, check_sequential
from .fake_quant import fake_quantize_with_mask
from .fixed_point import FRAC_BITS_LIMIT, QFormat, choose_frac_bits
from .observers import MovingAverageMinMaxObserver
from .ptq import build_quantized
from .specs import WeightSpec, activation_spec, weight_spec

__all__ = [
    "QATConfig",
    "qat_config",
    "WeightFakeQuantizer",
    "ActivationFakeQuantizer",
    "prepare_qat",
    "strip_qat",
    "convert",
]

@dataclass(frozen=True)
class QATConfig:
    """What quantization-aware training simulates.

    Parameters
    ----------
    weights : str, QFormat, WeightSpec or dict, default "int8"
        Normalized with :func:`weight_spec`.
    activations : {"int8", "uint8"} or None, default "int8"
        Fake-quantize every layer's output with ranges from a moving average of batch minima
        and maxima.
    averaging_constant : float in (0, 1], default 0.01
        Of the activation observers (torch's default).

    Raises
    ------
    TypeError, ValueError
        Bad fields, naming them.
    """

    weights: object = "int8"
    activations: str | None = "int8"
    averaging_constant: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "weights", weight_spec(self.weights))
        activation_spec(self.activations)
        MovingAverageMinMaxObserver(self.averaging_constant)

    def to_config(self):
        """JSON-ready fields."""
        return {
            "weights": self.weights.to_config(),
            "activations": self.activations,
            "averaging_constant": self.averaging_constant,
        }


def qat_config(quantization):
    """Normalize fit's ``quantization`` argument to a :class:`QATConfig`.

    Parameters
    ----------
    quantization : QATConfig, dict of its fields, or a weight spec (str, QFormat, WeightSpec)
        A bare weight spec means ``QATConfig(weights=spec)`` (int8 activations).

    Returns
    -------
    QATConfig
    """
    if isinstance(quantization, QATConfig):
        return quantization
    if isinstance(quantization, dict):
        fields = dict(quantization)
        if isinstance(fields.get("weights"), dict):
            fields["weights"] = WeightSpec(**fields["weights"])
        return QATConfig(**fields)
    return QATConfig(weights=quantization)


def _diverged_weights(W, spec):
    """True if no format of `spec` can hold W: NaN or inf, or beyond the coarsest fixed point."""
    W = np.asarray(W)
    if not np.isfinite(W).all():
        return True
    if spec.scheme == "fixed" and spec.frac_bits is None and W.size:
        coarsest = QFormat(spec.bits, -FRAC_BITS_LIMIT, spec.signed)
        return bool(W.max() > coarsest.max_value or (spec.signed and W.min() < coarsest.min_value))
    return False


class WeightFakeQuantizer:
    """Kernel hook of QAT: ``W -> (fake-quantized W, pass mask)`` under a :class:`WeightSpec`.

    Scales come from the current W at every call (TFMO's last-value quantizer), so the forward
    pass uses exactly the weights :func:`convert` will store. When the range is W's own (affine,
    or fixed point with automatic frac_bits) nothing is clipped and every gradient passes (mask
    None); a fixed format with given frac_bits passes gradients only inside its range.

    In training, weights that no format can hold -- NaN or inf, or (automatic fixed point)
    beyond the coarsest format -- come out as NaN instead of raising: only a diverging update
    produces them, and the NaN loss then makes ``fit`` report the divergence with its epoch,
    step and learning rate, as it does without QAT. Outside training they raise ValueError.

    Parameters
    ----------
    spec : WeightSpec
    """

    def __init__(self, spec):
        self.spec = weight_spec(spec)

    def __call__(self, W, training=False):
        spec = self.spec
        if training and _diverged_weights(W, spec):
            return np.full_like(W, np.nan), None
        if spec.scheme == "affine":
            axis = 1 if spec.per_channel else None
            lo, hi = channel_min_max(W, axis)
            scale, zp = affine_qparams(lo, hi, spec.bits, symmetric=True, narrow_range=True)
            out, _ = fake_quantize_with_mask(W, scale, zp, spec.bits, narrow_range=True, axis=axis)
            return out, None
        f = spec.frac_bits
        if f is None:
            f = choose_frac_bits(W, spec.bits, spec.signed)
        want_mask = training and spec.frac_bits is not None
        step = math.ldexp(1.0, -f)
        return fake_quantize_with_mask(W, step, 0, spec.bits, spec.signed, want_mask=want_mask)

    def __repr__(self):
        return f"WeightFakeQuantizer({self.spec.name})"


class ActivationFakeQuantizer:
    """Output hook of QAT: observe (in training) and fake-quantize a layer's activations.

    Parameters
    ----------
    activations : {"int8", "uint8"}
    averaging_constant : float in (0, 1]

    Attributes
    ----------
    observer : MovingAverageMinMaxObserver
        Per-tensor range; its qparams are those :func:`convert` gives the layer output.
    """

    def __init__(self, activations="int8", averaging_constant=0.01):
        self.activations = activation_spec(activations)
        self.signed = activations != "uint8"
        self.observer = MovingAverageMinMaxObserver(averaging_constant, signed=self.signed)

    def __call__(self, a, training=False):
        finite = True
        if training:
            finite = bool(np.isfinite(a).all())
            # a non-finite batch (a diverging step) is not folded into the range; observing an
            # empty batch instead keeps a synchronized observer's allreduce in step on all ranks
            self.observer.observe(a if finite else a[:0])
            if not finite:
                return a, None  # NaN/inf go on to the loss, where fit reports the divergence
        if self.observer.min_val is None:
            return a, None  # nothing observed yet: no range to quantize to
        scale, zp = self.observer.calculate_qparams()
        if training and not math.isfinite(scale):
            return np.full_like(a, np.nan), None  # a range too wide for float64: diverged
        return fake_quantize_with_mask(a, scale, zp, 8, self.signed, want_mask=training)

    def __repr__(self):
        obs = self.observer
        return f"ActivationFakeQuantizer({self.activations}, range={obs.min_val}..{obs.max_val})"


def prepare_qat(model, quantization):
    """Install quantization-aware-training hooks on every Dense layer of `model`.

    Called by ``fit(..., quantization=...)`` before training; calling it again with the same
    config keeps the observers' ranges (training continues), a different config replaces them.

    Parameters
    ----------
    model : Sequential, built
    quantization : see :func:`qat_config`

    Returns
    -------
    model : the same Sequential, with ``layer.kernel_quantizer`` (a :class:`WeightFakeQuantizer`)
        and ``layer.output_quantizer`` (an :class:`ActivationFakeQuantizer`, or None) set, and
        ``model.state["quantization"]`` holding the config.

    Raises
    ------
    TypeError, ValueError
        Bad model or config.

    Notes
    -----
    Forward: ``W_q = fake_quant(W)``, ``a_q = fake_quant(act(x @ W_q + b))``; backward: the
    straight-through estimator, ``dW`` masked where W was clipped and ``da`` where a was
    (Jacob et al. 2018, section 3; Bengio et al. 2013). The network input is not fake-quantized
    during training (the core has no input hook); :func:`convert` quantizes it from calibration
    data.
    """
    model = check_sequential(model)
    config = qat_config(quantization)
    same = model.state.get("quantization") == config.to_config()
    for layer in model.layers:
        if not (same and isinstance(layer.kernel_quantizer, WeightFakeQuantizer)):
            layer.kernel_quantizer = WeightFakeQuantizer(config.weights)
        if config.activations is None:
            layer.output_quantizer = None
        elif not (same and isinstance(layer.output_quantizer, ActivationFakeQuantizer)):
            layer.output_quantizer = ActivationFakeQuantizer(
                config.activations, config.averaging_constant
            )
    model.state["quantization"] = config.to_config()
    return model


def strip_qat(model):
    """Remove QAT hooks and config from `model` (its float weights are kept as trained).

    Returns
    -------
    model : the same Sequential
    """
    model = check_sequential(model)
    for layer in model.layers:
        layer.kernel_quantizer = None
        layer.output_quantizer = None
    model.state.pop("quantization", None)
    return model


def convert(model, calibration_data=None, batch_size=None):
    """QuantizedModel from a QAT-trained Sequential, with the ranges training observed.

    Parameters
    ----------
    model : Sequential prepared by :func:`prepare_qat` (trained with ``fit(..., quantization=...)``)
    calibration_data : array_like, shape (n, d_in)
        Required with quantized activations: sets the input range (and the range of any layer
        whose observer saw no data).
    batch_size : int, optional

    Returns
    -------
    QuantizedModel
        Weights quantized exactly as the QAT forward pass did; layer output qparams from the
        activation observers.

    Raises
    ------
    ValueError
        If model has no QAT config, or calibration_data is missing when needed.
    """
    model = check_sequential(model)
    if "quantization" not in model.state:
        raise ValueError(
            "model has no QAT config: train with fit(..., quantization=...) or call "
            "prepare_qat first (or use quantize_model for post-training quantization)"
        )
    config = qat_config(model.state["quantization"])
    ranges = None
    if config.activations is not None:
        if calibration_data is None:
            raise ValueError(
                "calibration_data is required to set the input range of a model with "
                "quantized activations"
            )
        ranges = calibration_ranges(model, calibration_data, batch_size)
        for i, layer in enumerate(model.layers):
            q = layer.output_quantizer
            if isinstance(q, ActivationFakeQuantizer) and q.observer.min_val is not None:
                ranges[i + 1] = (q.observer.min_val, q.observer.max_val)
    return build_quantized(model, config.weights, config.activations, ranges)
