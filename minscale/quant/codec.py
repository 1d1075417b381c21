"""Model-file codecs of quant: ``QuantizedModel``, ``FixedPointModel`` and the ``qat`` extension.

Imported by :mod:`minscale.io.codecs` the first time a file of one of these kinds is saved
or loaded (or a QAT model is), so :mod:`minscale.io` never imports quant.

``QuantizedModel``
    The fields and arrays of :meth:`QuantizedModel.to_payload` (integer weight codes in their
    code dtype, float64 scales, int32 or float64 biases, activation scales and zero points),
    stored as they are; the activation names are checked against the kernels' table before
    :meth:`QuantizedModel.from_payload` picks functions by name.
``FixedPointModel``
    ``bits``, ``rounding``, ``input_frac``, ``input_dim``, ``dtype`` and per layer ``shape``,
    ``activation``, ``frac_w``, ``frac_in``, ``frac_out`` and ``bias`` (bool); arrays
    ``layers/<i>/codes`` (int8 for fixed8, int16 for fixed16) and ``layers/<i>/bias``
    (int64). Every integer is stored exactly, so a loaded model computes the same codes.
``qat`` extension
    ``qat_observers``: the ``[min, max]`` of each layer's activation observer (None where a
    layer has none); on load, the QAT hooks are re-installed from ``state["quantization"]``
    (:func:`minscale.quant.prepare_qat`) and the ranges set.
"""
from __future__ import annotations

import numpy as np

from ..io import codecs
from ..io.container import (
    HEADER_KEYS,
    ModelFileError,
    decode_state,
    encode_state,
    manifest_array,
    manifest_dtype,
    manifest_field,
)
from ..kernels import ACTIVATION_CODES
from ..quant import (
    FIXED_ROUNDINGS,
    INT32_MAX,
    INTEGER_ACTIVATIONS,
    FixedDense,
    FixedPointModel,
    QuantizedModel,
    code_dtype,
    fixed_frac_range,
    prepare_qat,
)

__all__ = ["encode_quantized", "decode_quantized", "quantized_layer_table", "encode_fixed",
           "decode_fixed", "fixed_layer_table", "encode_qat", "decode_qat"]

#: largest bias magnitude (plus one below) quantize_fixed_model writes, per bits
_FIXED_BIAS_MAX = {8: INT32_MAX, 16: 2**40}


# ------------------------------------------------------------------------------------------
# QuantizedModel


def encode_quantized(model):
    """Manifest fields and arrays of a :class:`minscale.quant.QuantizedModel`.

    Parameters
    ----------
    model : QuantizedModel

    Returns
    -------
    fields : dict
        :meth:`QuantizedModel.to_payload`'s fields.
    arrays : dict of str -> ndarray
        Its arrays, C-contiguous, dtypes kept.
    """
    fields, arrays = model.to_payload()
    return fields, {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def decode_quantized(manifest, arrays, path):
    """Rebuild a :class:`minscale.quant.QuantizedModel` from a verified file.

    Parameters
    ----------
    manifest : dict
    arrays : dict of str -> ndarray
    path : str
        Named in messages.

    Returns
    -------
    QuantizedModel

    Raises
    ------
    minscale.io.ModelFileError
        Missing fields, an unknown activation, or arrays that do not fit the fields.
    """
    layers = manifest_field(manifest, "layers", list, "manifest")
    manifest_field(manifest, "input_dim", int, "manifest")
    manifest_dtype(manifest, path)
    for i, lf in enumerate(layers):
        where = f"manifest['layers'][{i}]"
        activation = manifest_field(lf, "activation", str, where)
        alpha = manifest_field(lf, "alpha", (int, float), where)
        # the activation name picks a function by name: only the known ones are allowed
        if activation not in ACTIVATION_CODES or isinstance(alpha, bool) or not alpha > 0:
            raise ModelFileError(f"{path!r}: layer {i} activation {activation!r} / alpha "
                                 f"{alpha!r} not supported")
    fields = {k: v for k, v in manifest.items() if k not in HEADER_KEYS}
    try:
        return QuantizedModel.from_payload(fields, arrays)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ModelFileError(f"{path!r}: the quantized model does not fit its manifest: "
                             f"{type(exc).__name__}: {exc}") from None


def quantized_layer_table(model):
    """:meth:`QuantizedModel.layer_table` (the rows of :func:`minscale.io.layer_table`)."""
    return model.layer_table()


# ------------------------------------------------------------------------------------------
# FixedPointModel


def encode_fixed(model):
    """Manifest fields and arrays of a :class:`minscale.quant.FixedPointModel`.

    Parameters
    ----------
    model : FixedPointModel

    Returns
    -------
    fields : dict
        ``dtype``, ``input_dim``, ``bits``, ``rounding``, ``input_frac`` and ``layers``
        (per layer ``shape``, ``activation``, ``frac_w``, ``frac_in``, ``frac_out``,
        ``bias``: whether ``layers/<i>/bias`` exists).
    arrays : dict of str -> ndarray
        ``layers/<i>/codes`` in the model's code dtype (int8 / int16), shape (d_in, d_out);
        ``layers/<i>/bias`` int64, shape (d_out,).
    """
    arrays, layers = {}, []
    dtype = code_dtype(model.bits, True)
    for i, layer in enumerate(model.layers):
        arrays[f"layers/{i}/codes"] = np.ascontiguousarray(layer.codes, dtype=dtype)
        if layer.bias_codes is not None:
            arrays[f"layers/{i}/bias"] = np.ascontiguousarray(layer.bias_codes, dtype=np.int64)
        layers.append({"shape": [int(s) for s in layer.shape], "activation": layer.activation,
                       "frac_w": layer.frac_w, "frac_in": layer.frac_in,
                       "frac_out": layer.frac_out, "bias": layer.bias_codes is not None})
    fields = {"dtype": model.dtype.name, "input_dim": model.input_dim, "bits": model.bits,
              "rounding": model.rounding, "input_frac": model.input_frac, "layers": layers}
    return fields, arrays


def _check_frac(value, bits, what, path):
    lo, hi = fixed_frac_range(bits)
    if not lo <= value <= hi:
        raise ModelFileError(f"{path!r}: {what} is {value}; fixed{bits} frac bits lie in "
                             f"[{lo}, {hi}]")


def decode_fixed(manifest, arrays, path):
    """Rebuild a :class:`minscale.quant.FixedPointModel` from a verified file.

    Parameters
    ----------
    manifest : dict
    arrays : dict of str -> ndarray
    path : str
        Named in messages.

    Returns
    -------
    FixedPointModel

    Raises
    ------
    minscale.io.ModelFileError
        Missing or mistyped fields; bits other than 8 or 16; an unknown rounding or an
        activation other than identity/relu; frac bits outside :func:`fixed_frac_range` or
        not chained (``frac_in`` of layer 0 = ``input_frac``, of layer k+1 = ``frac_out`` of
        layer k); codes of the wrong dtype or shape; biases beyond the bound
        :func:`minscale.quant.quantize_fixed_model` keeps (int32 for fixed8, ``2**40`` for
        fixed16), which the integer path relies on.
    """
    dtype = manifest_dtype(manifest, path)
    d = manifest_field(manifest, "input_dim", int, "manifest")
    bits = manifest_field(manifest, "bits", int, "manifest")
    rounding = manifest_field(manifest, "rounding", str, "manifest")
    input_frac = manifest_field(manifest, "input_frac", int, "manifest")
    specs = manifest_field(manifest, "layers", list, "manifest")
    if bits not in _FIXED_BIAS_MAX:
        raise ModelFileError(f"{path!r}: bits is {bits}; a fixed-point model has 8 or 16")
    if rounding not in FIXED_ROUNDINGS:
        raise ModelFileError(f"{path!r}: rounding {rounding!r}; expected one of "
                             f"{FIXED_ROUNDINGS}")
    if d < 1 or not specs:
        raise ModelFileError(f"{path!r}: a fixed-point model needs input_dim >= 1 and layers")
    _check_frac(input_frac, bits, "input_frac", path)
    codes_dtype = code_dtype(bits, True)
    bias_max = _FIXED_BIAS_MAX[bits]
    layers, frac = [], input_frac
    for i, spec in enumerate(specs):
        where = f"manifest['layers'][{i}]"
        shape = manifest_field(spec, "shape", list, where)
        activation = manifest_field(spec, "activation", str, where)
        fracs = {k: manifest_field(spec, k, int, where) for k in ("frac_w", "frac_in",
                                                                  "frac_out")}
        has_bias = manifest_field(spec, "bias", bool, where)
        if len(shape) != 2 or shape[0] != d or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ModelFileError(f"{path!r}: layer {i} shape {shape!r}; expected [{d}, d_out]")
        if activation not in INTEGER_ACTIVATIONS:
            raise ModelFileError(f"{path!r}: layer {i} activation {activation!r}; the "
                                 f"fixed-point path supports {INTEGER_ACTIVATIONS}")
        for k, v in fracs.items():
            _check_frac(v, bits, f"layer {i} {k}", path)
        if fracs["frac_in"] != frac:
            raise ModelFileError(f"{path!r}: layer {i} frac_in is {fracs['frac_in']}, the "
                                 f"previous output has frac {frac}")
        codes = manifest_array(arrays, f"layers/{i}/codes", tuple(shape), codes_dtype, path)
        bias = None
        if has_bias:
            bias = manifest_array(arrays, f"layers/{i}/bias", (shape[1],), np.int64, path)
            if bias.size and (bias.min() < -bias_max - 1 or bias.max() > bias_max):
                raise ModelFileError(f"{path!r}: layer {i} bias codes leave "
                                     f"[{-bias_max - 1}, {bias_max}]")
        layers.append(FixedDense(codes, fracs["frac_w"], fracs["frac_in"], fracs["frac_out"],
                                 bias, activation))
        d, frac = shape[1], fracs["frac_out"]
    return FixedPointModel(layers, bits, rounding, input_frac, manifest["input_dim"], dtype)


def fixed_layer_table(model):
    """Per-layer rows of a :class:`minscale.quant.FixedPointModel` for ``minscale info``.

    Returns
    -------
    list of dict
        The keys of :func:`minscale.io.layer_table`: ``sparsity`` is the fraction of zero
        weight codes, ``bits`` the model's bits, ``nbytes`` the weight codes (bits / 8 bytes
        each) plus the bias (4 bytes each for fixed8, 8 for fixed16: the width its bound
        needs).
    """
    rows = []
    bias_bytes = 4 if model.bits == 8 else 8
    for i, layer in enumerate(model.layers):
        d_in, d_out = layer.shape
        has_b = layer.bias_codes is not None
        rows.append({"index": i, "W_shape": (d_in, d_out), "b_shape": (d_out,) if has_b else None,
                     "activation": layer.activation,
                     "n_params": d_in * d_out + (d_out if has_b else 0),
                     "sparsity": float(np.mean(layer.codes == 0)), "bits": model.bits,
                     "nbytes": d_in * d_out * model.bits // 8 + (d_out * bias_bytes if has_b
                                                                  else 0)})
    return rows


# ------------------------------------------------------------------------------------------
# the qat extension of Sequential files


def encode_qat(model, manifest, arrays):
    """Store the ranges of the QAT activation observers as ``manifest["qat_observers"]``.

    Parameters
    ----------
    model : Sequential
    manifest : dict
        Receives ``qat_observers``: per layer ``[min, max]`` or None; None when no layer has
        an observer.
    arrays : dict
        Receives ``state/<i>`` arrays for per-channel ranges.
    """
    out = []
    for layer in model.layers:
        obs = getattr(layer.output_quantizer, "observer", None)
        out.append(None if obs is None else [obs.min_val, obs.max_val])
    manifest["qat_observers"] = None if all(o is None for o in out) else \
        encode_state(out, arrays, "QAT observer ranges")


def decode_qat(model, manifest, arrays, path):
    """Re-install QAT hooks from ``model.state["quantization"]`` and set the observer ranges.

    Raises
    ------
    minscale.io.ModelFileError
        ``qat_observers`` that do not list one ``[min, max]`` per layer where the QAT config
        puts an observer.
    """
    prepare_qat(model, model.state["quantization"])
    observers = decode_state(manifest.get("qat_observers"), arrays)
    if observers is None:
        return
    if not isinstance(observers, list) or len(observers) != len(model.layers):
        raise ModelFileError(f"{path!r}: qat_observers must list one entry per layer")
    for i, (layer, rng) in enumerate(zip(model.layers, observers)):
        obs = getattr(layer.output_quantizer, "observer", None)
        if rng is None:
            continue
        if obs is None or not (isinstance(rng, list) and len(rng) == 2):
            raise ModelFileError(f"{path!r}: qat_observers[{i}] does not fit the QAT config")
        obs.min_val, obs.max_val = rng


codecs.register("QuantizedModel", encode_quantized, decode_quantized, quantized_layer_table)
codecs.register("FixedPointModel", encode_fixed, decode_fixed, fixed_layer_table)
codecs.register_extension("qat", encode_qat, decode_qat)
