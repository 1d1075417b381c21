"""What an exporter needs of a model, checked once: per layer the arrays and integers it writes.

:func:`integer_plan` reads a :class:`minscale.quant.QuantizedModel` that runs integer-only
(quantized activations, weights of at most 8 bits, identity or ReLU layers) and returns, per
layer, exactly the numbers :meth:`QuantizedModel.predict_codes` uses: weight codes (zero point
0), int32 bias codes, the requantization multiplier ``M0`` and ``shift`` per output unit, the
input and output zero points, and the clamp bounds (``max(qmin, zero_point)`` for a fused ReLU).
:func:`float_plan` reads a float :class:`minscale.Sequential`. Both raise ``ValueError`` naming
what cannot be exported; the writers then only format numbers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..model import Sequential
from ..quant import INTEGER_ACTIVATIONS, FixedPointModel, QuantizedModel, integer_range

__all__ = ["IntegerLayer", "FloatLayer", "FixedLayer", "Plan", "integer_plan", "float_plan",
           "fixed_plan", "check_name",
           "FLOAT_ACTIVATIONS", "C_KEYWORDS", "MAX_D_IN"]

#: activations the float export writes (the integer export: ``INTEGER_ACTIVATIONS``)
FLOAT_ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid")

# Every partial sum of an int8 dot product is at most d_in * 255 * 128 in magnitude; it stays
# inside int32 (2**31 - 1) for d_in <= 65793, so a C int32 accumulator cannot overflow early.
MAX_D_IN = 65793

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while _Bool _Complex _Imaginary".split()
)


@dataclass(frozen=True)
class IntegerLayer:
    """One layer of the integer-only path, as the generated code computes it.

    Attributes
    ----------
    Wt : int8 or uint8 ndarray, shape (d_out, d_in)
        Weight codes, transposed (zero point 0).
    bias : int32 ndarray, shape (d_out,)
        Bias codes at ``s_in * s_w`` (zeros for a layer without bias).
    multiplier : int64 ndarray, shape (d_out,)
        ``M0`` in [0, 2**31).
    shift : int64 ndarray, shape (d_out,)
        In [-31, 30].
    input_zero_point, output_zero_point, lower, upper : int
    activation : str
    """

    Wt: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    input_zero_point: int
    output_zero_point: int
    lower: int
    upper: int
    activation: str


@dataclass(frozen=True)
class FixedLayer:
    """One Qm.n layer: ``y = clamp(shift_round(x @ W + bias, shift), lower, upper)``.

    Attributes
    ----------
    Wt : int8/int16 ndarray (d_out, d_in)
    bias : int64 ndarray (d_out,)  (zeros without bias)
    shift : int
        Right shift when positive; the exporters clamp it as :func:`fixed_shift_round` does.
    lower, upper : int
    activation : str
    """

    Wt: np.ndarray
    bias: np.ndarray
    shift: int
    lower: int
    upper: int
    activation: str


@dataclass(frozen=True)
class FloatLayer:
    """One float layer: ``y = act(x @ W + b)``, with ``Wt = W.T`` (d_out, d_in) float32."""

    Wt: np.ndarray
    bias: np.ndarray
    activation: str
    alpha: float


@dataclass(frozen=True)
class Plan:
    """A model ready to write.

    Attributes
    ----------
    kind : {"integer", "fixed", "float"}
    layers : list of IntegerLayer or FloatLayer
    input_dim, output_dim : int
    code_ctype : str
        ``int8_t`` / ``uint8_t`` (activation codes) or ``float``.
    weight_ctype : str
        ``int8_t`` / ``uint8_t`` or ``float``.
    signed : bool
        Activation codes signed (int8) or not (uint8).
    """

    kind: str
    layers: list
    input_dim: int
    output_dim: int
    code_ctype: str
    weight_ctype: str
    signed: bool = True
    bits: int = 8
    rounding: str = ""

    @property
    def scratch_size(self):
        """Elements of the one scratch buffer: two hidden widths (ping-pong), one or none."""
        hidden = [layer.Wt.shape[0] for layer in self.layers[:-1]]
        if not hidden:
            return 0
        return (2 if len(hidden) >= 2 else 1) * max(hidden)


def check_name(name):
    """Return `name` if it is a C identifier usable as a prefix, else raise ValueError.

    Raises
    ------
    TypeError
        If name is not a str.
    ValueError
        If name is not ``[A-Za-z_][A-Za-z0-9_]*``, is a C99 keyword, starts with an underscore
        (reserved at file scope) or is longer than 31 characters (C99's guaranteed external
        identifier length is 31).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name in C_KEYWORDS or len(name) > 31:
        raise ValueError(f"name must be a C identifier (a letter, then letters, digits or _; "
                         f"at most 31 characters; not a keyword), got {name!r}")
    return name


def integer_plan(model, mode="integer"):
    """The integer-only layers of a QuantizedModel; see the module docstring.

    Parameters
    ----------
    model : QuantizedModel
    mode : {"integer", "qdq"}, default "integer"
        The export asking (the integer C code or ONNX graph, or the ONNX QDQ graph, which is
        built from the same plan); only the messages name it.

    Returns
    -------
    Plan

    Raises
    ------
    TypeError
        If model is not a QuantizedModel.
    ValueError
        If the model cannot run integer-only (weights-only quantization, weights wider than 8
        bits, an activation other than identity/relu), or a layer is wider than MAX_D_IN.
    """
    if mode not in ("integer", "qdq"):
        raise ValueError(f"mode must be 'integer' or 'qdq', got {mode!r}")
    what = "an integer export" if mode == "integer" else "a qdq export"
    if isinstance(model, Sequential):
        raise ValueError(f"{what} needs a QuantizedModel with quantized activations; "
                         "this is a float Sequential (quantize it first: minscale quantize "
                         "--affine --calibrate, or quantize_model(..., activations='int8'))")
    if not isinstance(model, QuantizedModel):
        raise TypeError(f"model must be a QuantizedModel or a Sequential, got "
                        f"{type(model).__name__}")
    if model.activations is None:
        raise ValueError(f"{what} needs quantized activations; this model quantizes "
                         "its weights only (quantize with activations='int8', or --calibrate)")
    for i, layer in enumerate(model.layers):
        if layer.activation not in INTEGER_ACTIVATIONS:
            raise ValueError(f"layer {i} has activation {layer.activation!r}; {what} "
                             f"supports {INTEGER_ACTIVATIONS}")
        if layer.codes.dtype.itemsize != 1:
            raise ValueError(f"layer {i} has {layer.weight_spec.bits}-bit weights; {what} "
                             "needs <= 8 bits")
        if layer.shape[0] > MAX_D_IN:
            raise ValueError(f"layer {i} has d_in = {layer.shape[0]} > {MAX_D_IN}, beyond the "
                             "int32 accumulator's guarantee")
    if not model.integer_supported:
        # any further reason QuantizedModel itself gives for refusing its integer path
        try:
            model.predict_codes(np.zeros((1, model.input_dim)))
        except ValueError as exc:
            raise ValueError(f"{what} needs a model the integer path runs: {exc}") \
                from None
    signed = model.activations != "uint8"
    qmin, qmax = integer_range(8, signed)
    layers = []
    for layer in model.layers:
        d_out = layer.shape[1]
        zp = int(layer.output_qparams[1])
        bias = (np.zeros(d_out, np.int32) if layer.bias_codes is None
                else np.asarray(layer.bias_codes, np.int32))
        layers.append(IntegerLayer(
            Wt=np.ascontiguousarray(layer.codes.T),
            bias=bias,
            multiplier=np.broadcast_to(np.asarray(layer.multiplier, np.int64), (d_out,)).copy(),
            shift=np.broadcast_to(np.asarray(layer.shift, np.int64), (d_out,)).copy(),
            input_zero_point=int(layer.input_qparams[1]),
            output_zero_point=zp,
            lower=max(qmin, zp) if layer.activation == "relu" else qmin,
            upper=qmax,
            activation=layer.activation,
        ))
    ctype = "int8_t" if signed else "uint8_t"
    wtype = "int8_t" if model.layers[0].codes.dtype == np.int8 else "uint8_t"
    return Plan("integer", layers, model.input_dim, model.layers[-1].shape[1], ctype, wtype,
                signed)


def fixed_plan(model):
    """The layers of a :class:`minscale.quant.FixedPointModel` (fixed8 or fixed16).

    Raises
    ------
    TypeError
        If model is not a FixedPointModel.
    """
    if not isinstance(model, FixedPointModel):
        raise TypeError(f"model must be a FixedPointModel, got {type(model).__name__}")
    qmin, qmax = integer_range(model.bits, True)
    layers = []
    for layer in model.layers:
        d_out = layer.shape[1]
        bias = (np.zeros(d_out, np.int64) if layer.bias_codes is None
                else np.asarray(layer.bias_codes, np.int64))
        layers.append(FixedLayer(np.ascontiguousarray(layer.codes.T), bias, int(layer.shift),
                                 0 if layer.activation == "relu" else qmin, qmax,
                                 layer.activation))
    ctype = f"int{model.bits}_t"
    return Plan("fixed", layers, model.input_dim, model.layers[-1].shape[1], ctype, ctype,
                True, model.bits, model.rounding)


def float_plan(model):
    """The float32 layers of a Sequential (pruned weights are exact zeros).

    Raises
    ------
    TypeError
        If model is not a Sequential.
    ValueError
        If it is not built, has quantization hooks, or an activation the export lacks.
    """
    if isinstance(model, QuantizedModel):
        raise ValueError("a float export needs a float Sequential; this is a QuantizedModel "
                         "(export it as integer)")
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a Sequential or a QuantizedModel, got "
                        f"{type(model).__name__}")
    if not model.built:
        raise ValueError("model is not built: give input_dim or fit it first")
    layers = []
    for i, layer in enumerate(model.layers):
        if layer.kernel_quantizer is not None or layer.output_quantizer is not None:
            raise ValueError(f"layer {i} has quantization hooks; convert the model first "
                             "(minscale.quant.convert) and export the QuantizedModel")
        if layer.activation not in FLOAT_ACTIVATIONS:
            raise ValueError(f"layer {i} has activation {layer.activation!r}; the float export "
                             f"supports {FLOAT_ACTIVATIONS}")
        W = np.where(layer.W_mask, layer.W, 0)
        d_out = W.shape[1]
        b = (np.where(layer.b_mask, layer.b, 0) if layer.use_bias else np.zeros(d_out))
        layers.append(FloatLayer(np.ascontiguousarray(W.T, dtype=np.float32),
                                 np.asarray(b, np.float32), layer.activation,
                                 float(layer.alpha)))
    return Plan("float", layers, model.input_dim, model.layers[-1].W.shape[1], "float",
                "float")
