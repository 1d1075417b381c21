"""Quantization: Qm.n fixed point, affine int8, fake quantization, integer-only arithmetic.

Two schemes live here.

* **Fixed point** (``QFormat``): a code ``q`` stands for ``q * 2**-frac_bits``. The seed formula
  ``q = round(w * 2**f)`` made exact: the scaling by a power of two is exact in float64, so the only
  rounding is the one the caller chooses (``nearest_even``, ``half_away``, ``floor``,
  ``stochastic``), followed by saturation to ``[qmin, qmax]``.
* **Affine** (Jacob et al. 2018; TFLite int8, ``torch.ao.quantization``):
  ``real = scale * (q - zero_point)``, per tensor or per channel, with zero exactly representable.
  Quantization is ``q = clip(round(x / scale) + zero_point, qmin, qmax)``: round first, then add the
  zero point, the same order in every path of this module.

The integer-only part reproduces gemmlowp's fixed-point primitives bit for bit
(``SaturatingRoundingDoublingHighMul``, ``RoundingDivideByPOT``) and TFLite's
``QuantizeMultiplier`` / ``MultiplyByQuantizedMultiplier``, so that a dense layer can run from int8
inputs to int8 outputs with no floating-point operation.

Every function rejects NaN with ``ValueError``; infinities saturate to the ends of the code range
where a function saturates, and are rejected where a finite number is needed (ranges, scales).
Element-wise work (quantize, dequantize, fake-quantize, the int8 product, requantization) runs
in the active backend's kernels (:mod:`minscale.kernels`); checks and allocation happen here.

Layout: this package re-exports the public names of its modules, formulas first --
``fixed_point`` (Qm.n numbers), ``affine`` (scale and zero point), ``fake_quant``, ``integer``
(gemmlowp/TFLite primitives), ``observers`` (running ranges), ``specs`` (weight/activation specs,
sizes) -- then the model level: ``calibration`` (activation ranges of a float model), ``ptq``
(post-training :func:`quantize_model` into a ``quantized_model.QuantizedModel``, float-simulated
and integer-only ``predict``, exact sizes), ``fixed_model`` (integer-only Qm.n
:class:`FixedPointModel`) and ``qat`` (:func:`prepare_qat`, installed by
``fit(..., quantization=...)``, then :func:`convert`).
"""

from __future__ import annotations

from ..sizes import compression_ratio
from ._arrays import FLOAT32_EPS, INT32_MAX, INT32_MIN
from .affine import (
    affine_qparams,
    bias_safe_weight_scale,
    channel_min_max,
    dequantize_affine,
    quantize_affine,
    quantize_bias,
    quantize_weights,
)
from .calibration import calibration_ranges
from .fake_quant import fake_quantize, fake_quantize_grad_mask
from .fixed_model import (
    FIXED_ROUNDINGS,
    FIXED_SPECS,
    FixedDense,
    FixedPointModel,
    fixed_frac_range,
    fixed_shift_round,
    quantize_fixed_model,
)
from .fixed_point import (
    FRAC_BITS_LIMIT,
    ROUNDING_MODES,
    QFormat,
    choose_frac_bits,
    code_dtype,
    dequantize,
    integer_range,
    quantize,
    round_values,
)
from .integer import (
    MULTIPLIER_LIMIT,
    REQUANTIZE_ROUNDINGS,
    int_matmul,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from .observers import MinMaxObserver, MovingAverageMinMaxObserver
from .ptq import quantize_layer_weights, quantize_model
from .qat import (
    ActivationFakeQuantizer,
    QATConfig,
    WeightFakeQuantizer,
    convert,
    prepare_qat,
    qat_config,
    strip_qat,
)
from .quantized_model import QuantizedDense, QuantizedModel
from .specs import ACTIVATION_SPECS, INTEGER_ACTIVATIONS, WeightSpec, quantized_nbytes, weight_spec

__all__ = [
    "ROUNDING_MODES",
    "FRAC_BITS_LIMIT",
    "FLOAT32_EPS",
    "INT32_MIN",
    "INT32_MAX",
    "MULTIPLIER_LIMIT",
    "integer_range",
    "code_dtype",
    "QFormat",
    "round_values",
    "quantize",
    "dequantize",
    "choose_frac_bits",
    "channel_min_max",
    "affine_qparams",
    "quantize_affine",
    "dequantize_affine",
    "quantize_weights",
    "quantize_bias",
    "bias_safe_weight_scale",
    "fake_quantize",
    "fake_quantize_grad_mask",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "REQUANTIZE_ROUNDINGS",
    "multiply_by_quantized_multiplier",
    "int_matmul",
    "requantize",
    "quantized_nbytes",
    "compression_ratio",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "ACTIVATION_SPECS",
    "INTEGER_ACTIVATIONS",
    "WeightSpec",
    "weight_spec",
    "quantize_layer_weights",
    "calibration_ranges",
    "QuantizedDense",
    "QuantizedModel",
    "quantize_model",
    "QATConfig",
    "qat_config",
    "WeightFakeQuantizer",
    "ActivationFakeQuantizer",
    "prepare_qat",
    "strip_qat",
    "convert",
    "FIXED_SPECS",
    "FIXED_ROUNDINGS",
    "fixed_frac_range",
    "fixed_shift_round",
    "FixedDense",
    "FixedPointModel",
    "quantize_fixed_model",
]
