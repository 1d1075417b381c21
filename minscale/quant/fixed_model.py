"""Integer-only fixed point: Qm.n weights and activations, requantization by a rounding shift.

Every tensor has a power-of-two scale ``2**-frac``; a layer is ``x @ W + b`` in int64, one
rounding shift and a saturation (CMSIS-NN q7/q15, NNoM style).
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..model import check_X
from ._arrays import INT32_MAX
from .calibration import calibration_ranges, check_sequential
from .fixed_point import (
    QFormat,
    choose_frac_bits,
    code_dtype,
    dequantize,
    integer_range,
    quantize,
    round_values,
)
from .specs import INTEGER_ACTIVATIONS

__all__ = [
    "FIXED_SPECS",
    "FIXED_ROUNDINGS",
    "fixed_frac_range",
    "fixed_shift_round",
    "FixedDense",
    "FixedPointModel",
    "quantize_fixed_model",
]

#: weight/activation requests that build a :class:`FixedPointModel`
FIXED_SPECS = ("fixed8", "fixed16")


#: roundings of the requantizing shift
FIXED_ROUNDINGS = ("half_away", "nearest_even")


def fixed_frac_range(bits):
    """Allowed frac bits of a fixed8/fixed16 tensor: ``[-bits, bits + 8]``.

    A calibration range or weight tensor whose finest non-saturating format lies outside is
    clipped into it: above, values are so small that ``bits + 8`` fractional bits already
    resolve them to ``2**-(bits + 8)``; below, they exceed ``2**(2 * bits - 1)``.
    """
    return -bits, bits + 8


def fixed_shift_round(x, shift, rounding="half_away"):
    """``x / 2**shift`` rounded to an integer, by an arithmetic shift: the requantization step.

    Parameters
    ----------
    x : int64 ndarray
        Accumulators plus bias, ``|x| < 2**61``.
    shift : int
        Right shift when positive, left shift when negative.
    rounding : {"half_away", "nearest_even"}, default "half_away"

    Returns
    -------
    int64 ndarray shaped like x
        Not yet saturated. A left shift first clamps x to ``[-2**16, 2**16]`` and shifts by at
        most 31, so the result stays in int64 and every value that leaves the 16-bit range
        still does (saturation then gives the exact result).

    Notes
    -----
    half_away: ``sign(x) * ((|x| + 2**(shift-1)) >> shift)`` (CMSIS-NN ``NN_ROUND``
    applied to magnitudes; C ``round``). nearest_even: ``q = x >> shift``,
    ``r = x - q * 2**shift``, ``q + (r > h or (r == h and q odd))`` with ``h = 2**(shift-1)``.
    Shifts above 62 equal 62 exactly (``|x| < 2**61`` rounds to 0 either way).

    Examples
    --------
    >>> fixed_shift_round(np.array([5, -5, 6, -6, 7]), 1, "half_away").tolist()
    [3, -3, 3, -3, 4]
    >>> fixed_shift_round(np.array([5, -5, 6, -6, 7]), 1, "nearest_even").tolist()
    [2, -2, 3, -3, 4]
    """
    if rounding not in FIXED_ROUNDINGS:
        raise ValueError(f"rounding must be one of {FIXED_ROUNDINGS}, got {rounding!r}")
    x = np.asarray(x, dtype=np.int64)
    shift = int(shift)
    if shift <= 0:
        return np.clip(x, -(2**16), 2**16) << min(-shift, 31)
    shift = min(shift, 62)
    half = np.int64(1) << (shift - 1)
    if rounding == "half_away":
        mag = (np.abs(x) + half) >> shift
        return np.where(x < 0, -mag, mag)
    q = x >> shift
    r = x - (q << shift)
    return q + ((r > half) | ((r == half) & ((q & 1) == 1)))


class FixedDense:
    """One fixed-point layer: ``y = sat(shift_round(x @ W + b, f_in + f_w - f_out))``.

    Attributes
    ----------
    codes : int8/int16 ndarray (d_in, d_out)
        Weights in ``Q(bits-1-frac_w).frac_w``.
    frac_w, frac_in, frac_out : int
    bias_codes : int64 ndarray (d_out,) or None
        Bias at frac ``frac_in + frac_w``, saturated to int32 (fixed8) or 2**40 (fixed16).
    activation : {"identity", "relu"}
    shift : int
        ``frac_in + frac_w - frac_out``.
    """

    def __init__(self, codes, frac_w, frac_in, frac_out, bias_codes, activation):
        self.codes, self.bias_codes, self.activation = codes, bias_codes, activation
        self.frac_w, self.frac_in, self.frac_out = int(frac_w), int(frac_in), int(frac_out)
        self.shift = self.frac_in + self.frac_w - self.frac_out

    @property
    def shape(self):
        return self.codes.shape

    def __repr__(self):
        return (f"FixedDense({self.shape}, Q.{self.frac_w} weights, Q.{self.frac_in} -> "
                f"Q.{self.frac_out}, {self.activation!r})")


class FixedPointModel:
    """A Qm.n fixed-point model that runs integer-only (CMSIS-NN q7/q15, NNoM style).

    Every tensor has a power-of-two scale ``2**-frac``; requantization is one rounding
    shift (:func:`fixed_shift_round`) and a saturation; ReLU is a clamp at 0. Built by
    :func:`quantize_fixed_model` (``quantize_model(model, "fixed8", "fixed8", X)``).

    Attributes
    ----------
    layers : list of FixedDense
    bits : {8, 16}
    rounding : {"half_away", "nearest_even"}
    input_frac : int
    input_dim : int
    dtype : numpy dtype of :meth:`predict`
    """

    def __init__(self, layers, bits, rounding, input_frac, input_dim, dtype="float64"):
        self.layers, self.bits, self.rounding = list(layers), int(bits), rounding
        self.input_frac, self.input_dim = int(input_frac), int(input_dim)
        self.dtype = np.dtype(dtype)
        self.activations = f"fixed{self.bits}"

    @property
    def code_dtype(self):
        return code_dtype(self.bits, True)

    def quantize_input(self, X):
        """Input codes ``quantize(X, QFormat(bits, input_frac), rounding)``, shape (n, d_in)."""
        X = check_X(X, self.input_dim, None)
        return quantize(X, QFormat(self.bits, self.input_frac), rounding=self.rounding)

    def predict_codes(self, X, batch_size=None):
        """Output codes of the integer-only path (at ``layers[-1].frac_out``).

        Notes
        -----
        Per layer, in the active backend's ``fixed_dense`` kernel: ``acc = x @ W`` exact in
        int64 (NumPy: float64 BLAS on integers, each product at most ``2**30`` for 16 bits,
        every partial sum an integer below ``2**53`` for ``d_in < 2**23``; Numba: int64
        loops), ``+ bias``, :func:`fixed_shift_round` by ``shift``, clip to ``[qmin, qmax]``
        (``[0, qmax]`` after a ReLU).
        """
        xq = np.ascontiguousarray(self.quantize_input(X))
        qmin, qmax = integer_range(self.bits, True)
        code = kernels.impl().FIXED_ROUNDING_CODES[self.rounding]
        for layer in self.layers:
            bias = (np.zeros(0, dtype=np.int64) if layer.bias_codes is None
                    else np.ascontiguousarray(layer.bias_codes, dtype=np.int64))
            out = np.empty((xq.shape[0], layer.shape[1]), dtype=self.code_dtype)
            kernels.fixed_dense(xq, np.ascontiguousarray(layer.codes), bias, layer.shift, code,
                                0 if layer.activation == "relu" else qmin, qmax, out)
            xq = out
        return xq

    def predict(self, X, batch_size=None, integer=True):
        """Dequantized outputs of :meth:`predict_codes`, shape (n, d_out), ``self.dtype``."""
        codes = self.predict_codes(X)
        return dequantize(codes, QFormat(self.bits, self.layers[-1].frac_out), dtype=self.dtype)

    def __repr__(self):
        return (f"FixedPointModel({[layer.shape for layer in self.layers]}, "
                f"fixed{self.bits}, rounding={self.rounding!r})")


def _fixed_frac(x, bits):
    lo, hi = fixed_frac_range(bits)
    return int(min(max(choose_frac_bits(x, bits), lo), hi))


def quantize_fixed_model(model, weights="fixed8", activations=None, calibration_data=None,
                         batch_size=None, rounding="half_away"):
    """Integer-only Qm.n quantization with power-of-two scales chosen from calibration ranges.

    Parameters
    ----------
    model : Sequential, built, identity/relu layers
    weights : {"fixed8", "fixed16"}
    activations : {"fixed8", "fixed16"} or None
        Must equal weights (None means the same).
    calibration_data : array_like (n, d_in), required
    batch_size : int, optional
    rounding : {"half_away", "nearest_even"}, default "half_away"
        Of the input quantization and of every requantizing shift.

    Returns
    -------
    FixedPointModel

    Raises
    ------
    ValueError
        Mismatched or unknown specs, missing calibration data, an activation other than
        identity/relu.

    Notes
    -----
    Frac bits rule: per layer, ``frac_w = choose_frac_bits(W, bits)`` (the finest format in
    which no weight saturates); per activation tensor (the input and each layer's output),
    ``frac = choose_frac_bits([min, max], bits)`` of its calibration range
    (:func:`calibration_ranges`), so no calibration value saturates; both clipped to
    :func:`fixed_frac_range`. Bias: ``round(b * 2**(frac_in + frac_w))`` (half away),
    saturated to int32 (fixed8) or ``[-2**40 - 1, 2**40]`` (fixed16).

    References
    ----------
    CMSIS-NN q7/q15 fully connected (``arm_fully_connected_q7``: bias and output shifts, NN_ROUND,
    saturation); NNoM's per-layer Q-format selection from calibration ranges.
    """
    activations = weights if activations is None else activations
    if weights not in FIXED_SPECS or activations != weights:
        raise ValueError(f"fixed point needs weights and activations both 'fixed8' or both "
                         f"'fixed16', got weights={weights!r}, activations={activations!r}")
    if rounding not in FIXED_ROUNDINGS:
        raise ValueError(f"rounding must be one of {FIXED_ROUNDINGS}, got {rounding!r}")
    if calibration_data is None:
        raise ValueError("calibration_data is required for fixed-point activations; pass rows "
                         "of training data")
    model = check_sequential(model)
    for i, layer in enumerate(model.layers):
        if layer.activation not in INTEGER_ACTIVATIONS:
            raise ValueError(f"layer {i} has activation {layer.activation!r}; the integer-only "
                             f"fixed-point path supports {INTEGER_ACTIVATIONS}")
    bits = int(weights[5:])
    ranges = calibration_ranges(model, calibration_data, batch_size)
    fracs = [_fixed_frac(np.array(r, dtype=np.float64), bits) for r in ranges]
    # fixed16 bias bound 2**40 keeps |acc + bias| < 2**61 (acc < 2**23 * 2**30 for
    # d_in < 2**23), which fixed_shift_round and the exported C need
    bias_max = INT32_MAX if bits == 8 else 2**40
    layers = []
    for i, layer in enumerate(model.layers):
        W = layer.W.astype(np.float64)
        f_w = _fixed_frac(W, bits)
        codes = quantize(W, QFormat(bits, f_w), rounding="nearest_even")
        bias = None
        if layer.use_bias:
            scaled = np.ldexp(layer.b.astype(np.float64), fracs[i] + f_w)
            bias = np.clip(round_values(scaled, "half_away"), -bias_max - 1, bias_max)
            bias = bias.astype(np.int64)
        layers.append(FixedDense(codes, f_w, fracs[i], fracs[i + 1], bias, layer.activation))
    return FixedPointModel(layers, bits, rounding, fracs[0], model.input_dim, model.dtype)
