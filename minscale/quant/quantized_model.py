"""The quantized inference model: float-simulated and integer-only ``predict``, exact sizes.
"""

from __future__ import annotations

import numpy as np

from .. import data, kernels, losses
from .._checks import check_bool, check_int
from ..model import check_X
from ..sizes import compression_ratio
from . import integer as int_ops
from ._arrays import as_float64, as_int_array
from .affine import dequantize_affine, quantize_affine
from .calibration import ACTIVATION_FUNCTIONS
from .fake_quant import fake_quantize
from .fixed_point import code_dtype, integer_range
from .integer import MULTIPLIER_LIMIT, REQUANTIZE_ROUNDINGS, quantize_multiplier
from .specs import INTEGER_ACTIVATIONS, activation_spec, json_ready, quantized_nbytes, weight_spec

__all__ = [
    "QuantizedDense",
    "QuantizedModel",
]

class QuantizedDense:
    """One quantized Dense layer: weight codes and scales, bias, output quantization.

    Parameters
    ----------
    codes : integer ndarray, shape (d_in, d_out)
        Weight codes, zero point 0.
    weight_scale : float64 ndarray, shape (d_out,)
    activation : str
        As :class:`minscale.layers.Dense`.
    alpha : float
        leaky_relu slope.
    bias : float64 ndarray (d_out,) or None
        Float bias, used when activations are not quantized.
    bias_codes : int32 ndarray (d_out,) or None
        Bias at scale ``input_scale * weight_scale``, used when activations are quantized.
    input_qparams, output_qparams : (float, int) or None
        Scale and zero point of the layer's input and output activations.
    weight_spec : WeightSpec
    frac_bits : int or None
        Fixed-point weights: the format's fractional bits.

    Attributes
    ----------
    W_dequantized : float64 ndarray, shape (d_in, d_out)
        ``weight_scale * codes``.
    multiplier, shift : int64 ndarrays, shape (d_out,), or None
        Fixed-point requantization multiplier of ``s_in * s_w[j] / s_out`` per output unit, when
        activations are quantized and every such multiplier is below 2**30
        (:func:`quantize_multiplier`).
    multiplier_problem : str or None
        Why multiplier is None although activations are quantized (the integer path then
        refuses the model; the simulation runs).
    """

    def __init__(
        self,
        codes,
        weight_scale,
        activation,
        alpha,
        bias,
        bias_codes,
        input_qparams,
        output_qparams,
        weight_spec,
        frac_bits,
    ):
        self.codes = codes
        self.weight_scale = np.asarray(weight_scale, dtype=np.float64)
        self.activation, self.alpha = activation, float(alpha)
        self.bias = bias
        self.bias_codes = bias_codes
        self.input_qparams, self.output_qparams = input_qparams, output_qparams
        self.weight_spec, self.frac_bits = weight_spec, frac_bits
        self.W_dequantized = self.weight_scale * codes.astype(np.float64)
        self.multiplier = self.shift = None
        self.multiplier_problem = None
        if input_qparams is not None:
            s_in, s_out = input_qparams[0], output_qparams[0]
            with np.errstate(over="ignore"):
                reals = s_in * self.weight_scale / s_out
            big = ~np.isfinite(reals) | (reals >= MULTIPLIER_LIMIT)
            if big.any():
                # the float simulation still runs; only the integer path cannot
                j = int(np.argmax(big))
                self.multiplier_problem = (
                    f"its requantization multiplier s_in * s_w / s_out of unit {j} is "
                    f"{float(reals[j]):.4g}, not below 2**30 (output scale {s_out!r})"
                )
            else:
                pairs = [quantize_multiplier(float(r)) for r in reals]
                self.multiplier = np.array([m for m, _ in pairs], dtype=np.int64)
                self.shift = np.array([s for _, s in pairs], dtype=np.int64)

    @property
    def shape(self):
        return self.codes.shape

    def n_scales(self):
        """Distinct weight scales stored: d_out per channel, 1 per tensor (or fixed point)."""
        spec = self.weight_spec
        return self.shape[1] if spec.scheme == "affine" and spec.per_channel else 1

    def nbytes(self, packed=False):
        """Bytes of this layer: weight codes and scales, bias (4 B each), output scale and zp."""
        n = quantized_nbytes(
            self.codes.size, self.weight_spec.bits, n_scales=self.n_scales(), packed=packed
        )
        n_bias = self.shape[1] if (self.bias is not None or self.bias_codes is not None) else 0
        n += 4 * n_bias
        if self.output_qparams is not None:
            n += quantized_nbytes(0, 8, n_scales=1, n_zero_points=1)
        return n

    def bias_dequantized(self):
        """The bias as the simulation adds it: float, or ``s_in * s_w * bias_codes``."""
        if self.bias_codes is not None:
            return (self.input_qparams[0] * self.weight_scale) * self.bias_codes.astype(np.float64)
        return self.bias

    def __repr__(self):
        return (
            f"QuantizedDense({self.shape}, weights={self.weight_spec.name}, "
            f"activation={self.activation!r})"
        )


class QuantizedModel:
    """A quantized Sequential: float-simulated and integer-only inference, exact size.

    Built by :func:`quantize_model` (post-training) or :func:`convert` (after QAT).

    Parameters
    ----------
    layers : list of QuantizedDense
    input_dim : int
    dtype : {"float32", "float64"}
        dtype of predictions (the source model's).
    weights : WeightSpec
    activations : {"int8", "uint8"} or None
    input_qparams : (float, int) or None
        Scale and zero point of the model input (None without activation quantization).
    n_float_params : int
        Parameters of the float model (weights and biases), the reference of the ratio.
    state : dict, optional
        JSON-ready facts carried from the float model (``minscale train`` records its data
        options under ``"data"``).

    Attributes
    ----------
    nbytes, nbytes_packed : int
        Exact bytes (see :meth:`size_report`).
    integer_supported : bool
        Whether :meth:`predict` can run ``integer=True``.
    """

    def __init__(
        self,
        layers,
        input_dim,
        dtype,
        weights,
        activations,
        input_qparams,
        n_float_params,
        state=None,
    ):
        self.layers = list(layers)
        self.state = dict(state or {})
        self.input_dim = int(input_dim)
        self.dtype = np.dtype(dtype)
        self.weights = weight_spec(weights)
        self.activations = activation_spec(activations)
        self.input_qparams = input_qparams
        self.n_float_params = int(n_float_params)
        # per layer: weights packed once for the fused integer kernel (derived, never saved)
        self._packed = {}

    # size -----------------------------------------------------------------------------------
    @property
    def nbytes(self):
        return self.size_report()["nbytes"]

    @property
    def nbytes_packed(self):
        return self.size_report()["nbytes_packed"]

    def size_report(self):
        """Exact storage of the quantized model and its ratio to float32.

        Returns
        -------
        dict
            ``float32_nbytes`` (4 bytes per float parameter), ``nbytes`` (weight codes at
            ``ceil(bits / 8)`` bytes each + float32 weight scales, 4 bytes each, one per output
            channel or per tensor (a fixed-point format's frac_bits counted as one) + biases at
            4 bytes each (int32 codes, or float32 when activations are float) + a float32 scale
            and a ``ceil(8/8)``-byte zero point per quantized activation tensor, the input
            included), ``nbytes_packed`` (the same with codes packed at `bits` bits),
            ``ratio`` and ``ratio_packed`` (float32 bytes / quantized bytes).

        Notes
        -----
        Symmetric weights have zero point 0 by construction and store none. The integer-only
        path's multipliers are derived from the scales when the model is loaded, as TFLite does
        when it prepares a graph, and are not counted.
        """
        nbytes = sum(layer.nbytes() for layer in self.layers)
        packed = sum(layer.nbytes(packed=True) for layer in self.layers)
        if self.input_qparams is not None:
            nbytes += quantized_nbytes(0, 8, n_scales=1, n_zero_points=1)
            packed += quantized_nbytes(0, 8, n_scales=1, n_zero_points=1)
        f32 = 4 * self.n_float_params
        return {
            "float32_nbytes": f32,
            "nbytes": nbytes,
            "nbytes_packed": packed,
            "ratio": compression_ratio(f32, nbytes),
            "ratio_packed": compression_ratio(f32, packed),
        }

    # inference ------------------------------------------------------------------------------
    def _integer_problem(self):
        if self.activations is None:
            return "activations are not quantized (quantize with activations='int8')"
        for i, layer in enumerate(self.layers):
            if layer.activation not in INTEGER_ACTIVATIONS:
                return (
                    f"layer {i} has activation {layer.activation!r}; the integer path supports "
                    f"{INTEGER_ACTIVATIONS}"
                )
            if layer.codes.dtype.itemsize != 1:
                return (
                    f"layer {i} has {layer.weight_spec.bits}-bit weights; the integer path "
                    "needs <= 8 bits"
                )
            if layer.multiplier_problem is not None:
                return f"layer {i}: {layer.multiplier_problem}"
        return None

    @property
    def integer_supported(self):
        return self._integer_problem() is None

    def _check_X(self, X, batch_size):
        X = check_X(X, self.input_dim, None)
        n = X.shape[0]
        bs = n if batch_size is None else check_int("batch_size", batch_size, 1)
        return X, n, bs

    def _simulate(self, X):
        signed = self.activations != "uint8"
        a = X.astype(np.float64)
        if self.input_qparams is not None:
            a = fake_quantize(a, *self.input_qparams, signed=signed)
        for layer in self.layers:
            b = layer.bias_dequantized()
            z = a @ layer.W_dequantized
            if b is not None:
                z += b
            a = ACTIVATION_FUNCTIONS[layer.activation](z, layer.alpha)
            if layer.output_qparams is not None:
                a = fake_quantize(a, *layer.output_qparams, signed=signed)
        return a

    def _fused_layer(self, i, xq, signed):
        """One layer through ``kernels.int8_dense_packed``, or None to take the general path.

        The weight codes are packed once per layer (cached in ``self._packed``, keyed on the
        codes array, so replacing a layer's codes repacks). Only gemmlowp double rounding has
        a fused kernel; an overflow makes the kernel decline, and the general path then raises
        its precise error.
        """
        layer = self.layers[i]
        cached = self._packed.get(i)
        if cached is None or cached[0] is not layer.codes:
            d_out = layer.shape[1]

            def per_col(v):
                return np.ascontiguousarray(
                    np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (d_out,))
                )

            packed = kernels.pack_int8_weights(np.ascontiguousarray(layer.codes),
                                               np.zeros(d_out, dtype=np.int64))
            bias = (np.zeros(0, dtype=np.int32) if layer.bias_codes is None
                    else np.ascontiguousarray(layer.bias_codes, dtype=np.int32))
            cached = (layer.codes, packed, bias, per_col(layer.multiplier), per_col(layer.shift))
            self._packed[i] = cached
        _, packed, bias, m0, sh = cached
        qmin, qmax = integer_range(8, signed)
        zero_point = int(layer.output_qparams[1])
        lower = max(qmin, zero_point) if layer.activation == "relu" else qmin
        out = np.empty((xq.shape[0], layer.shape[1]), dtype=code_dtype(8, signed))
        ok = kernels.int8_dense_packed(np.ascontiguousarray(xq), packed,
                                       int(layer.input_qparams[1]), bias, m0, sh, zero_point,
                                       lower, qmax, out)
        return out if ok else None

    def _integer_codes(self, X, rounding):
        signed = self.activations != "uint8"
        xq = quantize_affine(X, *self.input_qparams, signed=signed)
        for i, layer in enumerate(self.layers):
            if rounding == "double" and layer.codes.dtype.itemsize == 1:
                fused = self._fused_layer(i, xq, signed)
                if fused is not None:
                    xq = fused
                    continue
            acc = int_ops.int_matmul(xq, layer.codes, a_zero_point=layer.input_qparams[1])
            xq = int_ops.requantize(
                acc,
                layer.multiplier,
                layer.shift,
                layer.output_qparams[1],
                bits=8,
                signed=signed,
                relu=layer.activation == "relu",
                bias=layer.bias_codes,
                rounding=rounding,
            )
        return xq

    def predict_codes(self, X, batch_size=None, requantize_rounding="double"):
        """Output codes of the integer-only path.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        batch_size : int, optional
        requantize_rounding : {"double", "single"}, default "double"
            gemmlowp's double rounding (TFLite's classic reference) or TFLite's single rounding;
            see :func:`multiply_by_quantized_multiplier`.

        Returns
        -------
        codes : int8 (uint8 for ``activations="uint8"``) ndarray, shape (n, d_out)
            At the last layer's output scale and zero point (``self.layers[-1].output_qparams``).

        Raises
        ------
        ValueError
            Bad X, or a model the integer path cannot run (weights-only quantization, weights
            wider than 8 bits, activations other than identity/relu), naming the reason.

        Notes
        -----
        The input is quantized once (``quantize_affine``); then, per layer, int8 x int8 -> int32
        (:func:`int_matmul`), + int32 bias, fixed-point requantization with gemmlowp rounding,
        saturation and the ReLU clamp (:func:`requantize`). No float operation happens between the
        input quantization and the output codes (Jacob et al. 2018, section 2.4; TFLite int8).

        Agreement with the simulation (:meth:`predict` with ``integer=False``): fed the same input
        codes, a layer's integer output codes differ from the simulation's by at most 1. With
        "single" rounding they differ only where ``x / s_out`` lies within ``2**-30`` relative of
        a half-integer; with "double" rounding also within ``2**-(right+1)`` of one, so a 1-code
        difference in a hidden layer is more frequent and can grow in later layers.
        """
        problem = self._integer_problem()
        if problem is not None:
            raise ValueError(f"integer-only inference is not available: {problem}")
        if requantize_rounding not in REQUANTIZE_ROUNDINGS:
            raise ValueError(
                f"requantize_rounding must be one of {REQUANTIZE_ROUNDINGS}, "
                f"got {requantize_rounding!r}"
            )
        X, n, bs = self._check_X(X, batch_size)
        return np.concatenate(
            [self._integer_codes(X[i : i + bs], requantize_rounding) for i in range(0, n, bs)]
        )

    def predict(self, X, integer=False, batch_size=None, requantize_rounding="double"):
        """Model outputs for `X`, float-simulated or integer-only.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        integer : bool, default False
            False: fake-quantization simulation in float64 (quantized weights, int32 bias as
            ``s_in * s_w * code``, every activation tensor quantize-dequantized). True: the
            integer-only path (:meth:`predict_codes`), dequantized once at the end.
        batch_size : int, optional
        requantize_rounding : {"double", "single"}, default "double"
            Integer path only; see :meth:`predict_codes`.

        Returns
        -------
        y : ndarray, shape (n, d_out), the model's dtype

        Raises
        ------
        ValueError
            Bad X or batch_size; ``integer=True`` on a model the integer path cannot run.
        """
        integer = check_bool("integer", integer)
        if integer:
            codes = self.predict_codes(X, batch_size, requantize_rounding)
            return dequantize_affine(codes, *self.layers[-1].output_qparams, dtype=self.dtype)
        X, n, bs = self._check_X(X, batch_size)
        return np.concatenate([self._simulate(X[i : i + bs]) for i in range(0, n, bs)]).astype(
            self.dtype
        )

    def evaluate(
        self, X, y, integer=False, batch_size=None, accuracy=None, requantize_rounding="double"
    ):
        """MSE (mean over all entries' squared errors per row, as the float model's) and accuracy.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        y : array_like, shape (n, d_out) or (n,)
        integer : bool, default False
            Which inference path (see :meth:`predict`).
        batch_size : int, optional
        accuracy : bool or None
            Add ``"accuracy"`` (argmax agreement); None adds it when y has 2 or more columns.
        requantize_rounding : {"double", "single"}, default "double"

        Returns
        -------
        dict
            ``{"loss": float}`` plus ``"accuracy"`` when asked.
        """
        X, y = data.check_Xy(X, y, dtype=self.dtype)
        y_hat = self.predict(
            X, integer=integer, batch_size=batch_size, requantize_rounding=requantize_rounding
        )
        if y.shape != y_hat.shape:
            raise ValueError(f"y has shape {y.shape}, the model predicts {y_hat.shape}")
        out = {"loss": losses.mse(y, y_hat)}
        if accuracy or (accuracy is None and y.shape[1] >= 2):
            out["accuracy"] = float(data.accuracy(y, y_hat))
        return out

    # inspection and files -------------------------------------------------------------------
    def layer_table(self):
        """Per-layer rows for ``minscale info``: the keys of :func:`minscale.io.layer_table`."""
        rows = []
        for i, layer in enumerate(self.layers):
            d_in, d_out = layer.shape
            has_b = layer.bias is not None or layer.bias_codes is not None
            rows.append(
                {
                    "index": i,
                    "W_shape": (d_in, d_out),
                    "b_shape": (d_out,) if has_b else None,
                    "activation": layer.activation,
                    "n_params": d_in * d_out + (d_out if has_b else 0),
                    "sparsity": float(np.mean(layer.codes == 0)),
                    "bits": layer.weight_spec.bits,
                    "nbytes": layer.nbytes(),
                }
            )
        return rows

    def to_payload(self):
        """Manifest fields and arrays for a model file (see :mod:`minscale.io`).

        Returns
        -------
        fields : dict
            JSON-ready: ``dtype``, ``input_dim``, ``n_float_params``, ``weights`` (WeightSpec
            fields), ``activations`` and per layer ``shape``, ``activation``, ``alpha``,
            ``frac_bits``, ``bias`` (``"int32"``, ``"float"`` or None), and ``state`` (its
            JSON-ready entries).
        arrays : dict of str -> ndarray
            ``layers/<i>/codes``, ``layers/<i>/weight_scale``, ``layers/<i>/bias`` (int32 codes
            or float64), and, with quantized activations, ``qparams/scale`` (float64, input then
            each layer output) and ``qparams/zero_point`` (int64).
        """
        arrays, layers = {}, []
        for i, layer in enumerate(self.layers):
            arrays[f"layers/{i}/codes"] = np.ascontiguousarray(layer.codes)
            arrays[f"layers/{i}/weight_scale"] = layer.weight_scale.copy()
            kind = None
            if layer.bias_codes is not None:
                arrays[f"layers/{i}/bias"], kind = layer.bias_codes.astype(np.int32), "int32"
            elif layer.bias is not None:
                arrays[f"layers/{i}/bias"], kind = np.asarray(layer.bias, np.float64), "float"
            layers.append(
                {
                    "shape": [int(s) for s in layer.shape],
                    "activation": layer.activation,
                    "alpha": layer.alpha,
                    "frac_bits": layer.frac_bits,
                    "bias": kind,
                }
            )
        if self.input_qparams is not None:
            qp = [self.input_qparams] + [layer.output_qparams for layer in self.layers]
            arrays["qparams/scale"] = np.array([s for s, _ in qp], dtype=np.float64)
            arrays["qparams/zero_point"] = np.array([z for _, z in qp], dtype=np.int64)
        fields = {
            "dtype": self.dtype.name,
            "input_dim": self.input_dim,
            "n_float_params": self.n_float_params,
            "weights": self.weights.to_config(),
            "activations": self.activations,
            "layers": layers,
            "state": json_ready(self.state),
        }
        return fields, arrays

    @classmethod
    def from_payload(cls, fields, arrays):
        """Rebuild a model from :meth:`to_payload`'s output.

        Raises
        ------
        ValueError
            Missing arrays, or shapes, dtypes or parameters that do not fit the fields.
        """
        spec = weight_spec(dict(fields["weights"]))
        activations = activation_spec(fields["activations"])
        n_layers = len(fields["layers"])
        qp = None
        if activations is not None:
            scale = as_float64("qparams/scale", arrays["qparams/scale"], allow_inf=False)
            zp = as_int_array("qparams/zero_point", arrays["qparams/zero_point"])
            if scale.shape != (n_layers + 1,) or zp.shape != scale.shape or (scale <= 0).any():
                raise ValueError(
                    "qparams/scale and qparams/zero_point must be positive scales and zero "
                    f"points of shape ({n_layers + 1},)"
                )
            zmin, zmax = integer_range(8, signed=activations == "int8")
            if ((zp < zmin) | (zp > zmax)).any():
                raise ValueError(f"qparams/zero_point must lie in [{zmin}, {zmax}] for "
                                 f"{activations} activations, got {zp.tolist()}")
            qp = [(float(s), int(z)) for s, z in zip(scale, zp)]
        # a file's codes must be codes of the format it declares: weights of `bits` bits
        # (affine: the narrow range), int32 biases
        cmin, cmax = integer_range(spec.bits, spec.signed, narrow_range=spec.scheme == "affine")
        layers, d = [], int(fields["input_dim"])
        for i, lf in enumerate(fields["layers"]):
            d_in, d_out = (int(v) for v in lf["shape"])
            codes = as_int_array(f"layers/{i}/codes", arrays[f"layers/{i}/codes"])
            w_scale = as_float64(
                f"layers/{i}/weight_scale", arrays[f"layers/{i}/weight_scale"], allow_inf=False
            )
            if (
                d_in != d
                or codes.shape != (d_in, d_out)
                or codes.dtype != code_dtype(spec.bits, spec.signed)
                or w_scale.shape != (d_out,)
                or (w_scale <= 0).any()
            ):
                raise ValueError(
                    f"layer {i}: codes, weight scales or shape do not fit the manifest"
                )
            if codes.size and (codes.min() < cmin or codes.max() > cmax):
                raise ValueError(f"layer {i}: weight codes span [{codes.min()}, {codes.max()}], "
                                 f"outside [{cmin}, {cmax}] of {spec.bits}-bit weights")
            bias = bias_codes = None
            if lf["bias"] == "int32":
                raw = as_int_array(f"layers/{i}/bias", arrays[f"layers/{i}/bias"])
                if raw.size and (raw.min() < -2**31 or raw.max() > 2**31 - 1):
                    raise ValueError(f"layer {i}: bias codes leave the int32 range")
                bias_codes = raw.astype(np.int32)
            elif lf["bias"] == "float":
                bias = as_float64(f"layers/{i}/bias", arrays[f"layers/{i}/bias"], allow_inf=False)
            for b in (bias, bias_codes):
                if b is not None and b.shape != (d_out,):
                    raise ValueError(f"layer {i}: bias must have shape ({d_out},)")
            layers.append(
                QuantizedDense(
                    codes,
                    w_scale,
                    lf["activation"],
                    lf["alpha"],
                    bias,
                    bias_codes,
                    None if qp is None else qp[i],
                    None if qp is None else qp[i + 1],
                    spec,
                    lf["frac_bits"],
                )
            )
            d = d_out
        return cls(
            layers,
            fields["input_dim"],
            fields["dtype"],
            spec,
            activations,
            None if qp is None else qp[0],
            fields["n_float_params"],
            fields.get("state"),
        )

    def quantize_input(self, X):
        """Input codes of the integer-only path: what an exported ``predict`` function reads.

        Parameters
        ----------
        X : array_like, shape (n, d_in)

        Returns
        -------
        codes : int8 (uint8 for ``activations="uint8"``) ndarray, shape (n, d_in)
            ``quantize_affine(X, *self.input_qparams)``, the first step of
            :meth:`predict_codes`.

        Raises
        ------
        ValueError
            Bad X, or a model without quantized activations.
        """
        if self.input_qparams is None:
            raise ValueError("quantize_input needs quantized activations; this model "
                             "quantizes its weights only")
        X, _, _ = self._check_X(X, None)
        return quantize_affine(X, *self.input_qparams, signed=self.activations != "uint8")

    def __repr__(self):
        return (
            f"QuantizedModel({[layer.shape for layer in self.layers]}, "
            f"weights={self.weights.name}, "
            f"activations={self.activations!r})"
        )
