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

Layout: the pure formula functions first, then the observers (running ranges), then the model
level: :class:`WeightSpec`, post-training :func:`quantize_model` into a :class:`QuantizedModel`
(float-simulated and integer-only ``predict``, exact sizes), and quantization-aware training
(:func:`prepare_qat`, installed by ``fit(..., quantization=...)``, then :func:`convert`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..kernels._numpy import ROUNDING_CODES as _ROUNDING_CODES

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
]

ROUNDING_MODES = ("nearest_even", "half_away", "floor", "stochastic")

# |frac_bits| <= 960 keeps step = 2**-frac_bits >= 2**-960 a normal float64 (> 2**-1022) and
# max_value < 2**(32 + 960) < 2**1024 finite for every bits <= 32.
FRAC_BITS_LIMIT = 960

# torch.ao.quantization observers clamp scales from below at float32 machine epsilon (2**-23).
FLOAT32_EPS = float(np.finfo(np.float32).eps)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# quantize_multiplier's upper bound: M0 < 2**31 with a left shift of at most 30 bits.
MULTIPLIER_LIMIT = 2.0**30


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_int(name, value, lo=None, hi=None):
    """Return ``value`` as a Python int, or raise naming ``name``; bool is not an integer here."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        expected = (
            f"in [{lo}, {hi}]" if hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        )
        raise ValueError(f"{name} must be an integer {expected}, got {value}")
    return value


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _as_float64(name, x, allow_inf=True):
    """``x`` as a float64 ndarray (exact for every float32, float16 and int32 input).

    Raises TypeError for non-real data and ValueError for NaN (or inf when not allowed).
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        idx = np.unravel_index(int(np.argmax(np.isnan(arr))), arr.shape) if arr.ndim else ()
        raise ValueError(f"{name} contains NaN (first at index {idx}); NaN cannot be quantized")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name} contains an infinite value; a finite number is needed")
    return arr


def _as_real_array(name, x, check_nan=True):
    """``x`` as a C-contiguous float32 or float64 array for the kernels (ints become float64).

    Kept in float32 when it is float32, so no float64 temporary is made; the kernels convert
    each element exactly. Raises like :func:`_as_float64`; ``check_nan=False`` leaves the NaN
    test to a kernel that does it in its own pass (``quantize_affine_checked``).
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    if arr.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    if check_nan and np.isnan(arr).any():
        idx = np.unravel_index(int(np.argmax(np.isnan(arr))), arr.shape) if arr.ndim else ()
        raise ValueError(f"{name} contains NaN (first at index {idx}); NaN cannot be quantized")
    return arr


def _as_channels(arr, axis):
    """View of a C-contiguous array as (n_outer, C, n_inner), channels on axis 1 (kernel layout)."""
    if axis is None:
        return arr.reshape(1, 1, -1)
    outer = int(np.prod(arr.shape[:axis], dtype=np.int64))
    inner = int(np.prod(arr.shape[axis + 1 :], dtype=np.int64))
    return arr.reshape(outer, arr.shape[axis], inner)


def _as_int_array(name, q):
    arr = np.asarray(q)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of codes, got dtype {arr.dtype}")
    return arr


def _check_float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _check_rounding(rounding):
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")


def _keep_underflow_sign(v, x):
    # A tiny negative input whose scaled value underflowed to -0.0 must still floor to -1.
    return np.where((v == 0) & (x < 0), -np.finfo(np.float64).tiny, v)


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def _normalize_axis(axis, ndim, name="axis"):
    if axis is None:
        return None
    axis = _check_int(name, axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D array, got {axis}"
        )
    return axis % ndim


# --------------------------------------------------------------------------------------------
# Integer ranges and the fixed-point format
# --------------------------------------------------------------------------------------------


def integer_range(bits, signed=True, narrow_range=False):
    """Smallest and largest code of a `bits`-bit integer.

    Parameters
    ----------
    bits : int, 2..32
    signed : bool, default True
        Two's complement ``[-2**(bits-1), 2**(bits-1) - 1]``, else ``[0, 2**bits - 1]``.
    narrow_range : bool, default False
        Drop the lowest code, so a signed range is symmetric (``[-127, 127]`` for 8 bits) and an
        unsigned one is ``[1, 2**bits - 1]`` (TFLite's ``narrow_range``).

    Returns
    -------
    (qmin, qmax) : tuple of int

    Raises
    ------
    TypeError
        If bits is not an integer or signed/narrow_range is not a bool.
    ValueError
        If bits is outside 2..32.

    Examples
    --------
    >>> integer_range(8), integer_range(8, narrow_range=True), integer_range(4, signed=False)
    ((-128, 127), (-127, 127), (0, 15))
    """
    bits = _check_int("bits", bits, 2, 32)
    signed = _check_bool("signed", signed)
    narrow_range = _check_bool("narrow_range", narrow_range)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return qmin + int(narrow_range), qmax


def code_dtype(bits, signed=True):
    """Smallest NumPy integer dtype that holds every `bits`-bit code.

    Parameters
    ----------
    bits : int, 2..32
    signed : bool, default True

    Returns
    -------
    numpy.dtype
        int8/int16/int32 when signed, uint8/uint16/uint32 otherwise.

    Raises
    ------
    TypeError, ValueError
        As :func:`integer_range`.

    Examples
    --------
    >>> code_dtype(8), code_dtype(9), code_dtype(4, signed=False)
    (dtype('int8'), dtype('int16'), dtype('uint8'))
    """
    integer_range(bits, signed)
    width = 8 if bits <= 8 else 16 if bits <= 16 else 32
    return np.dtype(f"{'int' if signed else 'uint'}{width}")


@dataclass(frozen=True)
class QFormat:
    """A Qm.n fixed-point format: code ``q`` stands for ``q * 2**-frac_bits``.

    Parameters
    ----------
    bits : int, 2..32
        Total bits of a code, the sign bit included.
    frac_bits : int, in [-FRAC_BITS_LIMIT, FRAC_BITS_LIMIT]
        Fractional bits ``n``; the step is ``2**-frac_bits``. It may exceed ``bits`` (small
        values) or be negative (steps larger than 1).
    signed : bool, default True

    Attributes
    ----------
    qmin, qmax : int
        Code range, ``[-2**(bits-1), 2**(bits-1) - 1]`` or ``[0, 2**bits - 1]``.
    step : float
        ``2**-frac_bits``, the value of one code (one LSB).
    min_value, max_value : float
        ``qmin * step`` and ``qmax * step``, the representable range, exact in float64.
    name : str
        ARM notation ``Qm.n`` (``UQm.n`` when unsigned) with ``m = bits - n - 1`` integer bits
        besides the sign bit (``m = bits - n`` when unsigned); ``QFormat(8, 4).name == "Q3.4"``.
    dtype : numpy.dtype
        Smallest integer dtype holding the codes.

    Raises
    ------
    TypeError
        If bits or frac_bits is not an integer, or signed is not a bool.
    ValueError
        If bits is outside 2..32 or |frac_bits| > FRAC_BITS_LIMIT.

    References
    ----------
    ARM, "Fixed-point arithmetic: Q format" (Qm.n and UQm.n notation).

    Examples
    --------
    >>> fmt = QFormat(8, 4)
    >>> fmt.name, fmt.qmin, fmt.qmax, fmt.step, fmt.min_value, fmt.max_value
    ('Q3.4', -128, 127, 0.0625, -8.0, 7.9375)
    """

    bits: int
    frac_bits: int
    signed: bool = True

    def __post_init__(self):
        object.__setattr__(self, "bits", _check_int("bits", self.bits, 2, 32))
        object.__setattr__(
            self,
            "frac_bits",
            _check_int("frac_bits", self.frac_bits, -FRAC_BITS_LIMIT, FRAC_BITS_LIMIT),
        )
        object.__setattr__(self, "signed", _check_bool("signed", self.signed))

    @property
    def qmin(self):
        return integer_range(self.bits, self.signed)[0]

    @property
    def qmax(self):
        return integer_range(self.bits, self.signed)[1]

    @property
    def step(self):
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def min_value(self):
        return math.ldexp(float(self.qmin), -self.frac_bits)

    @property
    def max_value(self):
        return math.ldexp(float(self.qmax), -self.frac_bits)

    @property
    def dtype(self):
        return code_dtype(self.bits, self.signed)

    @property
    def name(self):
        integer_bits = self.bits - self.frac_bits - int(self.signed)
        return f"{'' if self.signed else 'U'}Q{integer_bits}.{self.frac_bits}"

    def __str__(self):
        return self.name


# --------------------------------------------------------------------------------------------
# Rounding and fixed-point quantization
# --------------------------------------------------------------------------------------------


def round_values(v, rounding="nearest_even", seed=None):
    """Round real numbers to integers (still as float64) under one of four rules.

    Parameters
    ----------
    v : array_like of float, any shape
        Values in code units (``x * 2**frac_bits`` or ``x / scale``). NaN is rejected.
    rounding : {"nearest_even", "half_away", "floor", "stochastic"}, default "nearest_even"
        ``nearest_even``: nearest integer, ties to even (IEEE 754 default, ``np.rint``,
        ``torch.round``). ``half_away``: nearest, ties away from zero (C ``round``, TFLite's
        reference ``TfLiteRound``). ``floor``: largest integer <= v (truncation of two's complement
        bits). ``stochastic``: ``floor(v) + 1`` with probability ``v - floor(v)``, else
        ``floor(v)``, so ``E[round(v)] = v`` (Gupta et al. 2015).
    seed : None, int, numpy.random.SeedSequence or numpy.random.Generator
        Randomness of ``stochastic``; ignored by the other rules.

    Returns
    -------
    r : float64 ndarray shaped like `v`, integer-valued

    Raises
    ------
    ValueError
        If rounding is unknown or v contains NaN.

    Notes
    -----
    half_away: ``t = trunc(v); r = t + sign(v) * (|v - t| >= 0.5)``; ``v - t`` is exact, which
    avoids the ``floor(v + 0.5)`` error at 0.49999999999999994. stochastic: ``r = f + (u < v - f)``,
    ``f = floor(v)``, ``u ~ U[0, 1)``; the probability is exact up to float64 resolution (2**-53).

    References
    ----------
    Gupta, Agrawal, Gopalakrishnan, Narayanan, "Deep Learning with Limited Numerical Precision",
    ICML 2015 (stochastic rounding).

    Examples
    --------
    >>> round_values([0.5, 1.5, 2.5, -0.5, -2.5]).tolist()
    [0.0, 2.0, 2.0, -0.0, -2.0]
    >>> round_values([0.5, 1.5, 2.5, -0.5, -2.5], "half_away").tolist()
    [1.0, 2.0, 3.0, -1.0, -3.0]
    """
    _check_rounding(rounding)
    v = _as_float64("v", v)
    if rounding == "nearest_even":
        return np.rint(v)
    if rounding == "half_away":
        t = np.trunc(v)
        return t + np.copysign((np.abs(v - t) >= 0.5).astype(np.float64), v)
    f = np.floor(v)
    if rounding == "floor":
        return f
    rng = np.random.default_rng(seed)
    # np.inf - np.inf would be NaN; infinite inputs keep their (saturating) floor.
    frac = np.where(np.isfinite(v), v - np.where(np.isfinite(f), f, 0.0), 0.0)
    return f + (rng.random(v.shape) < frac)


def _scaled_to_codes(v, x, qmin, qmax, rounding, seed, saturate, dtype, arg_name):
    """Round code-unit values ``v`` (from input ``x``) into ``[qmin, qmax]`` codes of ``dtype``."""
    v = _keep_underflow_sign(v, x)
    # Bounds are integers, so clipping before rounding equals clipping after it; it also turns
    # infinities into finite values before floor/rint. Without saturation, keep one code of
    # margin on each side so out-of-range results are still detected.
    lo, hi = (qmin, qmax) if saturate else (qmin - 1, qmax + 1)
    r = round_values(np.clip(v, lo, hi), rounding, seed)
    if not saturate:
        bad = (r < qmin) | (r > qmax)
        if bad.any():
            raise ValueError(
                f"{arg_name} has values whose codes fall outside [{qmin}, {qmax}] (first at flat "
                f"index {int(np.argmax(bad.ravel()))}) and saturate=False"
            )
    return r.astype(dtype)


def quantize(x, fmt, rounding="nearest_even", saturate=True, seed=None):
    """Fixed-point codes of `x` in format `fmt`: ``q = clip(round(x * 2**frac_bits), qmin, qmax)``.

    Parameters
    ----------
    x : array_like of float or int, any shape
        Real values. Converted to float64 first (exact for float32). ±inf saturates.
    fmt : QFormat
    rounding : {"nearest_even", "half_away", "floor", "stochastic"}, default "nearest_even"
        See :func:`round_values`.
    saturate : bool, default True
        Clip out-of-range codes to ``[qmin, qmax]``. With False an out-of-range code raises
        ValueError instead of wrapping around.
    seed : None, int or numpy.random.Generator
        Randomness of stochastic rounding.

    Returns
    -------
    q : ndarray of ``fmt.dtype``, shaped like x
        ``fmt.dtype`` is the smallest integer dtype holding ``[qmin, qmax]``.

    Raises
    ------
    TypeError
        If fmt is not a QFormat or x is not real.
    ValueError
        If x contains NaN, rounding is unknown, or saturate=False and a code is out of range.

    Notes
    -----
    ``x * 2**frac_bits`` is computed with ``ldexp`` and is exact (barring float64 overflow, which
    saturates, or underflow, which rounds as the tiny signed value it was), so rounding is the
    only error: at most ``step / 2`` for the nearest rules and below ``step`` for floor and
    stochastic, inside ``[fmt.min_value, fmt.max_value]``.

    References
    ----------
    Seed formula ``q = round(w * 2**f)``; saturation as in ARM CMSIS ``__SSAT``.

    Examples
    --------
    >>> quantize([0.5, 1.5, 2.5, -0.5, -2.5], QFormat(8, 0)).tolist()
    [0, 2, 2, 0, -2]
    >>> quantize([0.3, 100.0, -100.0], QFormat(8, 4)).tolist()
    [5, 127, -128]
    """
    if not isinstance(fmt, QFormat):
        raise TypeError(f"fmt must be a QFormat, got {type(fmt).__name__}")
    _check_rounding(rounding)
    saturate = _check_bool("saturate", saturate)
    if rounding == "stochastic":
        x = _as_float64("x", x)
        with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
            v = np.ldexp(x, fmt.frac_bits)
        return _scaled_to_codes(v, x, fmt.qmin, fmt.qmax, rounding, seed, saturate, fmt.dtype, "x")
    x = _as_real_array("x", x)
    out = np.empty(x.shape, dtype=fmt.dtype)
    if x.size == 0:
        return out
    with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
        first = kernels.quantize_fixed(
            x, fmt.frac_bits, fmt.qmin, fmt.qmax, _ROUNDING_CODES[rounding], out
        )
    if not saturate and first >= 0:
        raise ValueError(
            f"x has values whose codes fall outside [{fmt.qmin}, {fmt.qmax}] (first at flat "
            f"index {first}) and saturate=False"
        )
    return out


def dequantize(q, fmt, dtype=np.float64):
    """Real values of fixed-point codes: ``x = q * 2**-frac_bits``.

    Parameters
    ----------
    q : array_like of int, any shape
        Codes in ``[fmt.qmin, fmt.qmax]``.
    fmt : QFormat
    dtype : float dtype, default float64
        Output dtype. The float64 result is exact; float32 rounds codes wider than 24 bits.

    Returns
    -------
    x : ndarray of `dtype`, shaped like q

    Raises
    ------
    TypeError
        If q is not an integer array or fmt is not a QFormat.
    ValueError
        If a code lies outside ``[fmt.qmin, fmt.qmax]``.

    Examples
    --------
    >>> dequantize(np.array([5, 127, -128], dtype=np.int8), QFormat(8, 4)).tolist()
    [0.3125, 7.9375, -8.0]
    """
    if not isinstance(fmt, QFormat):
        raise TypeError(f"fmt must be a QFormat, got {type(fmt).__name__}")
    q = _as_int_array("q", q)
    if q.size and (q.min() < fmt.qmin or q.max() > fmt.qmax):
        raise ValueError(
            f"q has codes in [{q.min()}, {q.max()}], outside {fmt.name}'s [{fmt.qmin}, {fmt.qmax}]"
        )
    out = np.empty(q.shape, dtype=_check_float_dtype(dtype))
    if q.size:
        kernels.dequantize_fixed(np.ascontiguousarray(q), fmt.frac_bits, out)
    return out


def choose_frac_bits(x, bits, signed=True):
    """Largest frac_bits for which no value of `x` saturates in a `bits`-bit format.

    Parameters
    ----------
    x : array_like of float, any shape
        Finite values (weights).
    bits : int, 2..32
    signed : bool, default True

    Returns
    -------
    frac_bits : int, in [-FRAC_BITS_LIMIT, FRAC_BITS_LIMIT]
        Every ``x`` lies in ``[min_value, max_value]`` of ``QFormat(bits, frac_bits, signed)``,
        so no rounding mode clips any value, and ``frac_bits + 1`` would leave some value out.
        An all-zero or empty `x` fits every format and gets ``FRAC_BITS_LIMIT``.

    Raises
    ------
    TypeError
        If bits is not an integer or x is not real.
    ValueError
        If x has NaN or inf, bits is outside 2..32, x has negative values and signed is False,
        or max |x| is too large for frac_bits >= -FRAC_BITS_LIMIT.

    Notes
    -----
    frac_bits = max { f : qmin <= x * 2**f <= qmax for every x }, searched exactly with ldexp
    from the estimate ``bits - 1 - e`` where ``max|x| = m * 2**e``, m in [0.5, 1).

    Examples
    --------
    >>> choose_frac_bits([0.9, -0.3], 8), choose_frac_bits([1.0], 8), choose_frac_bits([-1.0], 8)
    (7, 6, 7)
    """
    qmin, qmax = integer_range(bits, signed)
    x = _as_float64("x", x, allow_inf=False)
    pos = float(x.max()) if x.size and x.max() > 0 else 0.0
    neg = float(-x.min()) if x.size and x.min() < 0 else 0.0
    if neg > 0 and not signed:
        raise ValueError(f"x has negative values (min {-neg!r}) but signed=False")
    if pos == 0 and neg == 0:
        return FRAC_BITS_LIMIT

    def fits(f):
        return math.ldexp(pos, f) <= qmax and math.ldexp(neg, f) <= -qmin

    f = min(max(bits - 1 - math.frexp(max(pos, neg))[1], -FRAC_BITS_LIMIT), FRAC_BITS_LIMIT)
    while f < FRAC_BITS_LIMIT and fits(f + 1):
        f += 1
    while not fits(f):
        f -= 1
        if f < -FRAC_BITS_LIMIT:
            raise ValueError(
                f"x has max |x| = {max(pos, neg)!r}, too large for any {bits}-bit format with "
                f"frac_bits >= {-FRAC_BITS_LIMIT}"
            )
    return f


# --------------------------------------------------------------------------------------------
# Affine (scale, zero point) quantization
# --------------------------------------------------------------------------------------------


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
    x = _as_float64("x", x)
    axis = _normalize_axis(axis, x.ndim)
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
    symmetric = _check_bool("symmetric", symmetric)
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive number, got {eps!r}")
    lo = _as_float64("x_min", x_min, allow_inf=False)
    hi = _as_float64("x_max", x_max, allow_inf=False)
    if lo.shape != hi.shape:
        raise ValueError(f"x_min and x_max must have one shape, got {lo.shape} and {hi.shape}")
    bad = lo > hi
    if bad.any():
        i = int(np.argmax(bad.ravel()))
        raise ValueError(
            f"x_min must be <= x_max, got x_min={float(lo.ravel()[i])!r} > "
            f"x_max={float(hi.ravel()[i])!r}" + (f" at channel {i}" if lo.ndim else "")
        )
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / ((qmax - qmin) / 2.0), eps)
        zero_point = np.full(lo.shape, (qmin + qmax + 1) // 2, dtype=np.int64)
    else:
        scale = np.maximum((hi - lo) / float(qmax - qmin), eps)
        zero_point = np.clip(qmin - np.rint(lo / scale), qmin, qmax).astype(np.int64)
    if lo.ndim == 0:
        return float(scale), int(zero_point)
    return scale, zero_point


def _check_qparams(scale, zero_point, x_ndim, axis, qmin, qmax):
    """Validate scale/zero_point; return them shaped to broadcast against x (float64, int64)."""
    scale = _as_float64("scale", scale, allow_inf=False)
    zp = _as_int_array("zero_point", zero_point).astype(np.int64)
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
    shape = _channel_shape(x_ndim, axis)
    return scale.reshape(shape), zp.reshape(shape)


def _check_channels(x, axis, scale):
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
    _check_rounding(rounding)
    # the deterministic roundings find NaN inside the kernel's pass (no separate scan)
    x = _as_real_array("x", x, check_nan=rounding == "stochastic")
    axis = _normalize_axis(axis, x.ndim)
    _check_channels(x, axis, scale)
    s, zp = _check_qparams(scale, zero_point, x.ndim, axis, qmin, qmax)
    if rounding != "stochastic":
        out = np.empty(x.shape, dtype=code_dtype(bits, signed))
        if x.size:
            with np.errstate(
                over="ignore", under="ignore"
            ):  # overflow saturates, underflow is handled
                first_nan = kernels.quantize_affine_checked(
                    _as_channels(x, axis),
                    s.reshape(-1),
                    zp.reshape(-1),
                    qmin,
                    qmax,
                    _ROUNDING_CODES[rounding],
                    _as_channels(out, axis),
                )
            if first_nan >= 0:
                idx = np.unravel_index(first_nan, x.shape) if x.ndim else ()
                raise ValueError(
                    f"x contains NaN (first at index {idx}); NaN cannot be quantized"
                )
        return out
    x = x.astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
        v = x / s
    # Clipping at qmin - zp / qmax - zp before rounding equals clipping the shifted code after it.
    lo = (qmin - zp).astype(np.float64)
    hi = (qmax - zp).astype(np.float64)
    r = round_values(np.clip(_keep_underflow_sign(v, x), lo, hi), rounding, seed)
    return (r.astype(np.int64) + zp).astype(code_dtype(bits, signed))


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
    q = _as_int_array("q", q)
    axis = _normalize_axis(axis, q.ndim)
    _check_channels(q, axis, scale)
    s, zp = _check_qparams(scale, zero_point, q.ndim, axis, -(2**63), 2**63 - 1)
    out = np.empty(q.shape, dtype=_check_float_dtype(dtype))
    if q.size:
        q = np.ascontiguousarray(q)
        kernels.dequantize_affine(
            _as_channels(q, axis), s.reshape(-1), zp.reshape(-1), _as_channels(out, axis)
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
    w = _as_float64("w", w, allow_inf=False)
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
    b = _as_float64("b", b)
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D (d_out,), got shape {b.shape}")
    s_in = _as_float64("input_scale", input_scale, allow_inf=False)
    s_w = _as_float64("weight_scale", weight_scale, allow_inf=False)
    if s_in.ndim != 0 or s_in <= 0:
        raise ValueError(f"input_scale must be a positive scalar, got {input_scale!r}")
    if (s_w <= 0).any() or s_w.ndim > 1 or (s_w.ndim == 1 and s_w.shape != b.shape):
        raise ValueError(
            f"weight_scale must be positive, scalar or of shape {b.shape}, "
            f"got {np.asarray(weight_scale)!r}"
        )
    scale = np.broadcast_to(s_in * s_w, b.shape).astype(np.float64)
    if not np.isfinite(scale).all() or (scale <= 0).any():
        raise ValueError(
            f"input_scale * weight_scale must be finite and positive, got {input_scale!r} * "
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
    b = _as_float64("b", b, allow_inf=False)
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D (d_out,), got shape {b.shape}")
    per_channel = _check_bool("per_channel", per_channel)
    s_in = _as_float64("input_scale", input_scale, allow_inf=False)
    s_w = _as_float64("weight_scale", weight_scale, allow_inf=False)
    if s_in.ndim != 0 or s_in <= 0:
        raise ValueError(f"input_scale must be a positive scalar, got {input_scale!r}")
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
    return _fake_quant(x, scale, zero_point, bits, signed, narrow_range, axis, rounding, seed)[0]


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
    return _fake_quant(x, scale, zero_point, bits, signed, narrow_range, axis, want_mask=True)[1]


def _fake_quant(
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
    _check_rounding(rounding)
    x = _as_real_array("x", x)
    axis = _normalize_axis(axis, x.ndim)
    _check_channels(x, axis, scale)
    s, zp = _check_qparams(scale, zero_point, x.ndim, axis, qmin, qmax)
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
            _as_channels(x, axis),
            s.reshape(-1),
            zp.reshape(-1),
            qmin,
            qmax,
            _ROUNDING_CODES[rounding],
            _as_channels(out, axis),
            _as_channels(mask, axis) if want_mask else np.zeros(0, np.bool_),
        )
    return out, mask


# --------------------------------------------------------------------------------------------
# Integer-only arithmetic (gemmlowp / TFLite)
# --------------------------------------------------------------------------------------------


def quantize_multiplier(real_multiplier):
    """Fixed-point form of a positive real multiplier: ``real ≈ M0 * 2**(shift - 31)``.

    Parameters
    ----------
    real_multiplier : float, finite, in [0, 2**30)
        Typically ``input_scale * weight_scale / output_scale``. ``2**30`` is the largest
        multiplier an int32 ``M0`` with a left shift of at most 30 bits can hold (see Notes).

    Returns
    -------
    (M0, shift) : (int, int)
        ``M0`` in ``[2**30, 2**31 - 1]`` (``M0 / 2**31`` in [0.5, 1)), or 0 for a zero or negligible
        multiplier; ``shift`` in ``[-31, 30]``, the range :func:`multiply_by_quantized_multiplier`
        and :func:`requantize` accept: a left shift by ``shift`` bits when positive, a right shift
        by ``-shift`` bits when negative (TFLite's sign convention). Every pair returned is
        accepted by those two functions.

    Raises
    ------
    TypeError
        If real_multiplier is not a real number.
    ValueError
        If it is negative, NaN, infinite, or >= 2**30 (it would need a left shift of 31 bits,
        which no int32 accumulator survives).

    Notes
    -----
    ``q, e = frexp(real)`` (q in [0.5, 1)); ``M0 = round_half_away(q * 2**31)``; if rounding
    reaches ``2**31`` then ``M0 = 2**30`` and ``e += 1``; ``shift = e``. Then TFLite's two edge
    rules, so that the shift stays in [-31, 30]:

    * ``shift < -31`` (``real < 2**-32 - 2**-64``): ``(M0, shift) = (0, 0)``, the multiplier
      flushed to zero, since a right shift of more than 31 bits leaves nothing of an int32;
    * ``shift > 30`` (only ``real`` in ``[2**30 - 2**-2, 2**30)``, which rounds up to ``2**30``):
      ``(M0, shift) = (2**31 - 1, 30)``, the largest representable multiplier ``2**30 - 2**-1``.

    Relative error ``|M0 * 2**(shift - 31) - real| / real``: at most ``2**-31`` for every
    accepted ``real >= 2**-32 - 2**-64`` (the saturated edge included: its error is below
    ``2**-1 / 2**30``); the flushed multipliers give exactly 0. Larger multipliers are refused
    rather than saturated: TFLite's ``shift > 30`` rule would silently turn any ``real`` up to
    ``2**31`` into ``2**30 - 2**-1``, and its double-rounding kernel would overflow computing
    ``x * 2**31``.

    References
    ----------
    TFLite ``tflite::QuantizeMultiplier`` (tensorflow/lite/kernels/internal/quantization_util.cc:
    the ``shift < -31`` flush to zero, and the ``shift > 30`` saturation of the
    ``TFLITE_SINGLE_ROUNDING`` build); Jacob et al. 2018, section 2.2 (M = 2**-n M0).

    Examples
    --------
    >>> quantize_multiplier(0.5), quantize_multiplier(1.0), quantize_multiplier(0.1)
    ((1073741824, 0), (1073741824, 1), (1717986918, -3))
    >>> quantize_multiplier(2.0**-33), quantize_multiplier(2.0**30 - 0.125)
    ((0, 0), (2147483647, 30))
    """
    if isinstance(real_multiplier, (bool, np.bool_)) or not isinstance(
        real_multiplier, numbers.Real
    ):
        raise TypeError(f"real_multiplier must be a real number, got {real_multiplier!r}")
    m = float(real_multiplier)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"real_multiplier must be finite and >= 0, got {real_multiplier!r}")
    if m >= MULTIPLIER_LIMIT:
        raise ValueError(
            f"real_multiplier must be < 2**30, got {real_multiplier!r}: a larger multiplier "
            "needs a left shift of 31 bits or more, which overflows any nonzero int32 accumulator"
        )
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    # q * 2**31 < 2**31 has an ulp >= 2**-22, so adding 0.5 is exact: this is round-half-up,
    # i.e. half away from zero for the positive q.
    q_fixed = math.floor(q * 2.0**31 + 0.5)
    if q_fixed == 2**31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return int(q_fixed), int(shift)


def _as_int32_values(name, x):
    arr = _as_int_array(name, x)
    if arr.size and (arr.min() < INT32_MIN or arr.max() > INT32_MAX):
        raise ValueError(f"{name} must fit int32, got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def _int32_result(r, scalar):
    r = r.astype(np.int32)
    return r[()] if scalar else r


def _trunc_div(n, d):
    """C integer division (truncation toward zero) of int64 arrays by a positive int."""
    return np.where(n >= 0, n // d, -((-n) // d))


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul: ``round(a * b / 2**31)`` in int32.

    Parameters
    ----------
    a, b : int or array_like of int, int32 values, broadcastable

    Returns
    -------
    r : int32 (ndarray, or numpy scalar for scalar inputs)
        The high 32 bits of ``2 * a * b`` rounded to nearest, ties toward +inf; the one overflow
        case ``a == b == INT32_MIN`` saturates to ``INT32_MAX``.

    Raises
    ------
    TypeError
        If a or b is not integer.
    ValueError
        If a value does not fit int32.

    Notes
    -----
    ``ab = a * b`` (int64); ``nudge = 2**30 if ab >= 0 else 1 - 2**30``;
    ``r = (ab + nudge) / 2**31`` with C truncation toward zero, which is
    ``floor(ab / 2**31 + 1/2)``.

    References
    ----------
    gemmlowp ``fixedpoint/fixedpoint.h``, ``SaturatingRoundingDoublingHighMul`` (the scalar
    std::int32_t specialization).

    Examples
    --------
    >>> int(saturating_rounding_doubling_high_mul(2**30, 2**30))
    536870912
    >>> int(saturating_rounding_doubling_high_mul(-2**31, -2**31))
    2147483647
    """
    scalar = np.ndim(a) == 0 and np.ndim(b) == 0
    a64 = _as_int32_values("a", a)
    b64 = _as_int32_values("b", b)
    ab = a64 * b64
    nudge = np.where(ab >= 0, 2**30, 1 - 2**30)
    r = _trunc_div(ab + nudge, 2**31)
    r = np.where((a64 == INT32_MIN) & (b64 == INT32_MIN), INT32_MAX, r)
    return _int32_result(r, scalar)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: ``x / 2**exponent`` rounded to nearest, ties away from zero.

    Parameters
    ----------
    x : int or array_like of int, int32 values
    exponent : int or array_like of int in [0, 31], broadcastable with x

    Returns
    -------
    r : int32 (ndarray, or numpy scalar for scalar inputs)

    Raises
    ------
    TypeError
        If x or exponent is not integer.
    ValueError
        If x does not fit int32 or exponent is outside [0, 31].

    Notes
    -----
    ``mask = 2**exponent - 1``; ``remainder = x & mask``;
    ``threshold = (mask >> 1) + (1 if x < 0 else 0)``;
    ``r = (x >> exponent) + (1 if remainder > threshold else 0)`` with arithmetic shifts.
    For x = -5, exponent = 1: remainder 1, threshold 1, ``-5 >> 1 = -3``, so -2.5 -> -3.

    References
    ----------
    gemmlowp ``fixedpoint/fixedpoint.h``, ``RoundingDivideByPOT``.

    Examples
    --------
    >>> [int(rounding_divide_by_pot(x, e)) for x, e in [(-5, 1), (5, 1), (-6, 2)]]
    [-3, 3, -2]
    """
    scalar = np.ndim(x) == 0 and np.ndim(exponent) == 0
    x64 = _as_int32_values("x", x)
    e = _as_int_array("exponent", exponent).astype(np.int64)
    if e.size and (e.min() < 0 or e.max() > 31):
        raise ValueError(f"exponent must lie in [0, 31], got range [{e.min()}, {e.max()}]")
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    r = (x64 >> e) + (remainder > threshold)
    return _int32_result(r, scalar)


REQUANTIZE_ROUNDINGS = ("double", "single")


def multiply_by_quantized_multiplier(x, quantized_multiplier, shift, rounding="double"):
    """``x * M0 * 2**(shift - 31)`` in integer arithmetic, rounded as TFLite.

    Parameters
    ----------
    x : int or array_like of int, int32 values (accumulators)
    quantized_multiplier : int or array_like of int, int32 values >= 0
        ``M0`` from :func:`quantize_multiplier`; per-channel arrays broadcast against x.
    shift : int or array_like of int, in [-31, 30]
        TFLite's exponent: left shift when positive, right shift when negative.
    rounding : {"double", "single"}, default "double"
        ``double``: gemmlowp's two roundings (SaturatingRoundingDoublingHighMul, then
        RoundingDivideByPOT), TFLite's classic reference. ``single``: one rounding of the 64-bit
        product, half up, TFLite's ``TFLITE_SINGLE_ROUNDING`` variant.

    Returns
    -------
    r : int32 (ndarray, or numpy scalar for scalar inputs)

    Raises
    ------
    TypeError
        If an argument is not integer.
    ValueError
        If a value does not fit int32, shift is outside [-31, 30], rounding is unknown, or the
        result (double: ``x * 2**shift`` for a positive shift) overflows int32.

    Notes
    -----
    double: ``left = max(shift, 0)``, ``right = max(-shift, 0)``;
    ``r = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**left, M0), right)``.
    The first rounding leaves an error of up to ``2**-(right+1)`` output units that the second
    can push across a tie, so r may differ by 1 from ``round(x * M)`` for values within
    ``2**-(right+1)`` of a half-integer; |r - x * M0 * 2**(shift-31)| <= 1/2 + 2**-(right+1).

    single: ``r = (x * M0 + 2**(30 - shift)) >> (31 - shift)`` in int64 (|x * M0| < 2**62), i.e.
    ``floor(x * M0 * 2**(shift-31) + 1/2)``: |r - x * M0 * 2**(shift-31)| <= 1/2.

    References
    ----------
    TFLite ``MultiplyByQuantizedMultiplier`` (tensorflow/lite/kernels/internal/common.cc, both
    the default and the ``TFLITE_SINGLE_ROUNDING`` branch); gemmlowp ``fixedpoint.h``.

    Examples
    --------
    >>> M0, shift = quantize_multiplier(0.1)
    >>> multiply_by_quantized_multiplier(np.array([1000, -1000, 15, -15]), M0, shift).tolist()
    [100, -100, 2, -2]
    >>> M0, shift = quantize_multiplier(43.4937 / 4901)  # 4901 * M = 43.4937: double rounds to 44
    >>> [int(multiply_by_quantized_multiplier(4901, M0, shift, r)) for r in ("double", "single")]
    [44, 43]
    """
    if rounding not in REQUANTIZE_ROUNDINGS:
        raise ValueError(f"rounding must be one of {REQUANTIZE_ROUNDINGS}, got {rounding!r}")
    scalar = all(np.ndim(v) == 0 for v in (x, quantized_multiplier, shift))
    x64 = _as_int32_values("x", x)
    m64 = _as_int32_values("quantized_multiplier", quantized_multiplier)
    if m64.size and m64.min() < 0:
        raise ValueError(f"quantized_multiplier must be >= 0, got minimum {m64.min()}")
    s = _as_int_array("shift", shift).astype(np.int64)
    if s.size and (s.min() < -31 or s.max() > 30):
        raise ValueError(f"shift must lie in [-31, 30], got range [{s.min()}, {s.max()}]")
    if rounding == "single":
        total = 31 - s
        r = (x64 * m64 + (np.int64(1) << (total - 1))) >> total
        if r.size and (r.min() < INT32_MIN or r.max() > INT32_MAX):
            raise ValueError(
                "x * M0 * 2**(shift - 31) overflows int32; the multiplier is too large for "
                "these inputs"
            )
        return _int32_result(r, scalar)
    left = np.maximum(s, 0)
    shifted = x64 << left
    if shifted.size and (shifted.min() < INT32_MIN or shifted.max() > INT32_MAX):
        raise ValueError(
            "x * 2**shift overflows int32; the real multiplier is too large for these inputs"
        )
    r = rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(shifted, m64), np.maximum(-s, 0)
    )
    return _int32_result(np.asarray(r, dtype=np.int64), scalar)


def int_matmul(a, b, a_zero_point=0, b_zero_point=0):
    """Integer matrix product of 8-bit codes with int32 accumulation: ``sum_k (a - za)(b - zb)``.

    Parameters
    ----------
    a : int8 or uint8 ndarray, shape (n, k)
        Activation codes.
    b : int8 or uint8 ndarray, shape (k, m)
        Weight codes.
    a_zero_point : int, default 0
        In a's dtype range.
    b_zero_point : int or int array of shape (m,), default 0
        Per-tensor or per-column (output channel) zero point, in b's dtype range.

    Returns
    -------
    acc : int32 ndarray, shape (n, m)
        ``acc[i, j] = sum_k (a[i, k] - a_zero_point) * (b[k, j] - b_zero_point[j])``.

    Raises
    ------
    TypeError
        If a or b is not int8/uint8 or a zero point is not integer.
    ValueError
        If the shapes do not chain, a zero point is outside its dtype's range, k is too large for
        the exactness bound, or an accumulator leaves int32 (hardware would wrap).

    Notes
    -----
    Computed with float64 BLAS, and exact. Each factor ``a - za`` and ``b - zb`` is a difference
    of two integers of one 8-bit range, so its magnitude is at most 255; each product is an
    integer of magnitude at most ``255**2 = 65025 < 2**16``. Whatever order or blocking the BLAS
    uses, with or without fused multiply-add, every partial sum is an integer of magnitude at most
    ``k * 65025``, which is below ``2**53`` for ``k <= 2**36``; integers below ``2**53`` are exact
    in float64, so no intermediate rounds and the result equals the int64 sum bit for bit.

    References
    ----------
    Jacob et al. 2018, eq. (7); gemmlowp (uint8 x uint8 -> int32 GEMM with offsets).

    Examples
    --------
    >>> a = np.full((1, 4), 127, dtype=np.int8); b = np.full((4, 1), 127, dtype=np.int8)
    >>> int_matmul(a, b).tolist()
    [[64516]]
    """
    factors = []
    for name, arr, zp_name, zp in (
        ("a", a, "a_zero_point", a_zero_point),
        ("b", b, "b_zero_point", b_zero_point),
    ):
        arr = np.asarray(arr)
        if arr.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise TypeError(f"{name} must be an int8 or uint8 array, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
        info = np.iinfo(arr.dtype)
        z = _as_int_array(zp_name, zp).astype(np.int64)
        if z.size and (z.min() < info.min or z.max() > info.max):
            raise ValueError(
                f"{zp_name} must lie in [{info.min}, {info.max}] for {arr.dtype}, got {zp!r}"
            )
        factors.append((arr, z))
    (a, za), (b, zb) = factors
    if za.ndim != 0:
        raise ValueError(f"a_zero_point must be a scalar, got shape {za.shape}")
    if zb.ndim not in (0, 1) or (zb.ndim == 1 and zb.shape != (b.shape[1],)):
        raise ValueError(
            f"b_zero_point must be a scalar or of shape ({b.shape[1]},), got shape {zb.shape}"
        )
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a of shape {a.shape} and b of shape {b.shape} do not chain (k differs)")
    if a.shape[1] > 2**36:
        raise ValueError(f"k = {a.shape[1]} exceeds 2**36, beyond the float64 exactness bound")
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.int32)
    if out.size == 0:
        return out
    if a.shape[1] == 0:
        out[...] = 0
        return out
    zb_cols = np.ascontiguousarray(np.broadcast_to(zb, (b.shape[1],)), dtype=np.int64)
    if not kernels.int8_matmul(
        np.ascontiguousarray(a), np.ascontiguousarray(b), int(za), zb_cols, out
    ):
        raise ValueError("int32 accumulator overflow: some sum_k (a - za)(b - zb) leaves int32")
    return out


def requantize(
    acc,
    quantized_multiplier,
    shift,
    zero_point=0,
    bits=8,
    signed=True,
    relu=False,
    bias=None,
    rounding="double",
):
    """Rescale int32 accumulators to codes: ``clamp(MBQM(acc + bias, M0, shift) + zero_point)``.

    Parameters
    ----------
    acc : array_like of int, int32 values, shape (n, d_out) or (d_out,)
        Accumulators, real value ``input_scale * weight_scale * acc``.
    quantized_multiplier : int, or int array of shape (d_out,)
        ``M0`` of ``input_scale * weight_scale / output_scale`` from :func:`quantize_multiplier`,
        per tensor or per output channel (the last axis of acc); in [0, 2**31).
    shift : int, or int array like quantized_multiplier, in [-31, 30]
    zero_point : int, default 0
        Output zero point, in [qmin, qmax].
    bits : int, 2..32, default 8
    signed : bool, default True
    relu : bool, default False
        Fused ReLU as a clamp: the lower bound becomes ``max(qmin, zero_point)`` (the code of 0.0).
    bias : None or int array of shape (d_out,), int32 values
        Bias codes at scale ``input_scale * weight_scale`` (:func:`quantize_bias`), added to the
        accumulators in int64; each sum must fit int32.
    rounding : {"double", "single"}, default "double"
        See :func:`multiply_by_quantized_multiplier`. "double" runs the active backend's
        ``requantize`` kernel; "single" is computed here in NumPy int64.

    Returns
    -------
    q : ndarray of ``code_dtype(bits, signed)`` shaped like acc
        Saturated to ``[qmin, qmax]`` before the cast, never wrapped.

    Raises
    ------
    TypeError, ValueError
        As :func:`multiply_by_quantized_multiplier` (including ``acc + bias`` or its left shift
        overflowing int32), zero_point outside [qmin, qmax], or shapes that do not match.

    Notes
    -----
    Equals ``clip(multiply_by_quantized_multiplier(acc + bias, M0, shift) + zero_point, lower,
    qmax)``; computed in one pass by the active backend's ``requantize`` kernel.

    References
    ----------
    TFLite ``FullyConnected`` int8 reference kernel (output_offset, output_activation_min/max);
    Jacob et al. 2018, section 2.4 (ReLU folded into the clamp).

    Examples
    --------
    >>> M0, shift = quantize_multiplier(1.0)
    >>> requantize(np.array([-236, 200]), M0, shift).tolist()
    [-128, 127]
    """
    qmin, qmax = integer_range(bits, signed)
    zero_point = _check_int("zero_point", zero_point, qmin, qmax)
    relu = _check_bool("relu", relu)
    a = _as_int32_values("acc", acc)
    if a.ndim not in (1, 2):
        raise ValueError(f"acc must be 1-D (d_out,) or 2-D (n, d_out), got shape {a.shape}")
    a2 = a.reshape(-1, a.shape[-1])
    d_out = a2.shape[1]
    params = []
    for name, value, lo, hi in (
        ("quantized_multiplier", quantized_multiplier, 0, INT32_MAX),
        ("shift", shift, -31, 30),
    ):
        v = _as_int_array(name, value).astype(np.int64)
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, d_out)):
            raise ValueError(f"{name} must be a scalar or of shape ({d_out},), got shape {v.shape}")
        if v.size and (v.min() < lo or v.max() > hi):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got range [{v.min()}, {v.max()}]")
        params.append(v.reshape(-1))
    m0, sh = params
    if m0.size != sh.size:
        m0, sh = np.broadcast_to(m0, (d_out,)), np.broadcast_to(sh, (d_out,))
    if bias is None:
        b = np.zeros(0, dtype=np.int32)
    else:
        b = _as_int32_values("bias", bias)
        if b.shape != (d_out,):
            raise ValueError(f"bias must have shape ({d_out},), got {b.shape}")
        b = b.astype(np.int32)
    out = np.empty(a2.shape, dtype=code_dtype(bits, signed))
    lower = max(qmin, zero_point) if relu else qmin
    if rounding == "single":
        x = a2 + b if b.size else a2
        if x.size and (x.min() < INT32_MIN or x.max() > INT32_MAX):
            raise ValueError("acc + bias overflows int32")
        scaled = multiply_by_quantized_multiplier(x, m0, sh, rounding="single").astype(np.int64)
        out[...] = np.clip(scaled + zero_point, lower, qmax)
        return out.reshape(a.shape)
    if rounding != "double":
        raise ValueError(f"rounding must be one of {REQUANTIZE_ROUNDINGS}, got {rounding!r}")
    if out.size and not kernels.requantize(
        np.ascontiguousarray(a2, dtype=np.int32),
        b,
        np.ascontiguousarray(m0),
        np.ascontiguousarray(sh),
        zero_point,
        lower,
        qmax,
        out,
    ):
        raise ValueError("acc + bias, or acc + bias shifted left by shift, overflows int32")
    return out.reshape(a.shape)


# --------------------------------------------------------------------------------------------
# Size accounting
# --------------------------------------------------------------------------------------------


def quantized_nbytes(n_codes, bits, n_scales=0, n_zero_points=0, packed=False):
    """Exact storage of a quantized tensor: codes + float32 scales + zero points, in bytes.

    Parameters
    ----------
    n_codes : int >= 0
        Number of quantized values.
    bits : int, 2..32
    n_scales : int >= 0, default 0
        Scales stored as float32, 4 bytes each (TFLite stores float32 scales). A fixed-point
        tensor's frac_bits can be counted here too, as its scale ``2**-frac_bits``.
    n_zero_points : int >= 0, default 0
        Zero points, stored like the codes (a zero point lies in [qmin, qmax]).
    packed : bool, default False
        False: each code (and zero point) takes ``ceil(bits / 8)`` whole bytes, as in a NumPy
        array of the smallest holding dtype (a 4-bit code takes 1 byte). True: codes packed
        back to back, ``ceil(n_codes * bits / 8)`` bytes (zero points likewise).

    Returns
    -------
    nbytes : int

    Raises
    ------
    TypeError, ValueError
        If a count is not a non-negative integer or bits is outside 2..32.

    Examples
    --------
    >>> quantized_nbytes(1000, 8, n_scales=10, n_zero_points=10)
    1050
    >>> quantized_nbytes(1000, 4), quantized_nbytes(1000, 4, packed=True)
    (1000, 500)
    """
    n_codes = _check_int("n_codes", n_codes, 0)
    bits = _check_int("bits", bits, 2, 32)
    n_scales = _check_int("n_scales", n_scales, 0)
    n_zero_points = _check_int("n_zero_points", n_zero_points, 0)
    packed = _check_bool("packed", packed)
    if packed:
        return -(-n_codes * bits // 8) + 4 * n_scales + -(-n_zero_points * bits // 8)
    width = -(-bits // 8)
    return n_codes * width + 4 * n_scales + n_zero_points * width


def compression_ratio(float_nbytes, quantized_nbytes):
    """Size of the float model over the size of the quantized one (> 1 means smaller).

    Parameters
    ----------
    float_nbytes : int > 0
        Reference size, e.g. ``4 * n_parameters`` for float32.
    quantized_nbytes : int > 0

    Returns
    -------
    ratio : float

    Raises
    ------
    TypeError, ValueError
        If a size is not a positive integer.

    Examples
    --------
    >>> compression_ratio(4000, 1050)
    3.8095238095238093
    """
    f = _check_int("float_nbytes", float_nbytes, 1)
    q = _check_int("quantized_nbytes", quantized_nbytes, 1)
    return f / q


# --------------------------------------------------------------------------------------------
# Observers (state): running ranges of activations
# --------------------------------------------------------------------------------------------


class MinMaxObserver:
    """Running minimum and maximum of observed tensors, turned into affine qparams.

    Parameters
    ----------
    bits : int, 2..32, default 8
    signed : bool, default True
    symmetric : bool, default False
    narrow_range : bool, default False
    axis : int or None, default None
        Channel axis for per-channel ranges (torch's ``PerChannelMinMaxObserver`` ``ch_axis``);
        None tracks one range for the whole tensor.
    eps : float, default FLOAT32_EPS
        Smallest scale (see :func:`affine_qparams`).

    Attributes
    ----------
    min_val, max_val : None, float, or float64 ndarray of shape (channels,)
        None until a non-empty tensor is observed.

    Raises
    ------
    As :func:`integer_range` and :func:`affine_qparams` for bad settings.

    Notes
    -----
    ``min_val = min(min_val, min(x))``, ``max_val = max(max_val, max(x))``; empty tensors are
    ignored, as torch does.

    References
    ----------
    ``torch.ao.quantization.MinMaxObserver`` / ``PerChannelMinMaxObserver``.

    Examples
    --------
    >>> obs = MinMaxObserver(signed=False)
    >>> _ = obs.observe([-1.0, 0.5]); _ = obs.observe([1.0])
    >>> obs.calculate_qparams()
    (0.00784313725490196, 128)
    """

    def __init__(
        self, bits=8, signed=True, symmetric=False, narrow_range=False, axis=None, eps=FLOAT32_EPS
    ):
        integer_range(bits, signed, narrow_range)
        affine_qparams(0.0, 0.0, bits, signed, symmetric, narrow_range, eps)
        self.bits, self.signed, self.symmetric = int(bits), bool(signed), bool(symmetric)
        self.narrow_range, self.eps = bool(narrow_range), float(eps)
        self.axis = None if axis is None else _check_int("axis", axis)
        self.min_val = None
        self.max_val = None

    def _combine(self, old, new, pick):
        return pick(old, new)

    def observe(self, x):
        """Fold tensor `x` into the running range and return it unchanged.

        Parameters
        ----------
        x : array_like of float; per-channel observers need the same channel count each time

        Returns
        -------
        x : the input, unchanged (so an observer can sit in a forward pass)

        Raises
        ------
        ValueError
            If x has NaN, axis is out of range for x, or the channel count changed.
        """
        arr = _as_float64("x", x)
        if arr.size == 0:
            return x
        axis = _normalize_axis(self.axis, arr.ndim)
        cur_min, cur_max = channel_min_max(arr, axis)
        if self.min_val is None:
            self.min_val, self.max_val = cur_min, cur_max
        else:
            if np.shape(cur_min) != np.shape(self.min_val):
                raise ValueError(
                    f"x has {np.size(cur_min)} channels along axis {self.axis}, the observer saw "
                    f"{np.size(self.min_val)} before"
                )
            self.min_val = self._combine(self.min_val, cur_min, np.minimum)
            self.max_val = self._combine(self.max_val, cur_max, np.maximum)
            if np.ndim(self.min_val) == 0:
                self.min_val, self.max_val = float(self.min_val), float(self.max_val)
        return x

    __call__ = observe

    def calculate_qparams(self):
        """(scale, zero_point) of the observed range, as :func:`affine_qparams`.

        Raises
        ------
        ValueError
            If nothing has been observed yet.
        """
        if self.min_val is None:
            raise ValueError(
                "observer has seen no data; call observe(x) before calculate_qparams()"
            )
        return affine_qparams(
            self.min_val,
            self.max_val,
            self.bits,
            self.signed,
            self.symmetric,
            self.narrow_range,
            self.eps,
        )

    def reset(self):
        """Forget the observed range."""
        self.min_val = None
        self.max_val = None


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch minima and maxima.

    Parameters
    ----------
    averaging_constant : float in (0, 1], default 0.01
        Weight c of the newest batch (torch's default 0.01).
    bits, signed, symmetric, narrow_range, axis, eps
        As :class:`MinMaxObserver`.

    Raises
    ------
    ValueError
        If averaging_constant is outside (0, 1].

    Notes
    -----
    First batch: ``min_val = min(x)``; afterwards ``min_val += c * (min(x) - min_val)`` and the
    same for max_val.

    References
    ----------
    ``torch.ao.quantization.MovingAverageMinMaxObserver``; Jacob et al. 2018, section 3.1 (EMA of
    activation ranges during training).

    Examples
    --------
    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> _ = obs.observe([0.0, 2.0]); _ = obs.observe([0.0, 4.0])
    >>> obs.max_val
    3.0
    """

    def __init__(
        self,
        averaging_constant=0.01,
        bits=8,
        signed=True,
        symmetric=False,
        narrow_range=False,
        axis=None,
        eps=FLOAT32_EPS,
    ):
        if isinstance(averaging_constant, (bool, np.bool_)) or not (
            isinstance(averaging_constant, numbers.Real) and 0 < averaging_constant <= 1
        ):
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant!r}")
        super().__init__(bits, signed, symmetric, narrow_range, axis, eps)
        self.averaging_constant = float(averaging_constant)

    def _combine(self, old, new, pick):
        return old + self.averaging_constant * (new - old)


# --------------------------------------------------------------------------------------------
# Model level: weight specs, calibration, post-training quantization, QAT, integer inference
# --------------------------------------------------------------------------------------------

ACTIVATION_SPECS = ("int8", "uint8")
# Activations the integer-only path computes without a float operation (ReLU is a clamp).
INTEGER_ACTIVATIONS = ("identity", "relu")


@dataclass(frozen=True)
class WeightSpec:
    """How the weights W of every Dense layer are quantized (biases follow the activations).

    Parameters
    ----------
    bits : int, 2..32, default 8
    scheme : {"affine", "fixed"}, default "affine"
        ``affine``: symmetric, narrow range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, zero point
        0, scale ``max|W| / qmax`` per output channel or per tensor (TFLite int8 weights).
        ``fixed``: Qm.n fixed point, scale ``2**-frac_bits`` per tensor.
    per_channel : bool, default True
        affine only: one scale per output unit (column of W) rather than one per layer.
    frac_bits : int or None, default None
        fixed only: the format's fractional bits; None picks, per layer,
        :func:`choose_frac_bits` of that layer's W (the finest format that does not saturate).
    signed : bool, default True
        fixed only: signed or unsigned codes (affine weights are always signed).

    Attributes
    ----------
    name : str
        ``"int8"``, ``"int4/tensor"``, ``"Q3.4"`` or ``"fixed8/auto"``.

    Raises
    ------
    TypeError, ValueError
        Bad field values, naming the field.

    Examples
    --------
    >>> weight_spec("int4"), weight_spec(QFormat(8, 4)).name
    (WeightSpec(bits=4, scheme='affine', per_channel=True, frac_bits=None, signed=True), 'Q3.4')
    """

    bits: int = 8
    scheme: str = "affine"
    per_channel: bool = True
    frac_bits: int | None = None
    signed: bool = True

    def __post_init__(self):
        object.__setattr__(self, "bits", _check_int("bits", self.bits, 2, 32))
        if self.scheme not in ("affine", "fixed"):
            raise ValueError(f"scheme must be 'affine' or 'fixed', got {self.scheme!r}")
        object.__setattr__(self, "per_channel", _check_bool("per_channel", self.per_channel))
        object.__setattr__(self, "signed", _check_bool("signed", self.signed))
        if self.frac_bits is not None:
            if self.scheme != "fixed":
                raise ValueError("frac_bits applies to scheme='fixed' only")
            QFormat(self.bits, self.frac_bits, self.signed)
            object.__setattr__(self, "frac_bits", int(self.frac_bits))
        if self.scheme == "affine" and not self.signed:
            raise ValueError(
                "affine weights are symmetric and signed; signed=False needs scheme='fixed'"
            )

    @property
    def name(self):
        if self.scheme == "fixed":
            if self.frac_bits is None:
                return f"{'' if self.signed else 'u'}fixed{self.bits}/auto"
            return QFormat(self.bits, self.frac_bits, self.signed).name
        return f"int{self.bits}" + ("" if self.per_channel else "/tensor")

    def to_config(self):
        """JSON-ready fields."""
        return {
            "bits": self.bits,
            "scheme": self.scheme,
            "per_channel": self.per_channel,
            "frac_bits": self.frac_bits,
            "signed": self.signed,
        }


def weight_spec(weights):
    """Normalize a weight quantization request to a :class:`WeightSpec`.

    Parameters
    ----------
    weights : str, QFormat, WeightSpec or dict
        ``"int8"`` (or ``"intN"``, N in 2..32): affine symmetric per-channel N-bit weights;
        a ``QFormat``: fixed point in exactly that format; a ``WeightSpec`` as is; a dict of
        WeightSpec fields.

    Returns
    -------
    WeightSpec

    Raises
    ------
    TypeError
        If weights is none of these.
    ValueError
        If a string is not ``"intN"`` with N in 2..32.
    """
    if isinstance(weights, WeightSpec):
        return weights
    if isinstance(weights, QFormat):
        return WeightSpec(weights.bits, "fixed", frac_bits=weights.frac_bits, signed=weights.signed)
    if isinstance(weights, dict):
        return WeightSpec(**weights)
    if isinstance(weights, str):
        if weights.startswith("int") and weights[3:].isdigit() and 2 <= int(weights[3:]) <= 32:
            return WeightSpec(int(weights[3:]))
        raise ValueError(
            f"weights must be 'intN' with N in 2..32, a QFormat or a WeightSpec, got {weights!r}"
        )
    raise TypeError(
        f"weights must be a str like 'int8', a QFormat or a WeightSpec, "
        f"got {type(weights).__name__}"
    )


def _activation_spec(activations):
    if activations is not None and activations not in ACTIVATION_SPECS:
        raise ValueError(
            f"activations must be one of {ACTIVATION_SPECS} or None, got {activations!r}"
        )
    return activations


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
    W = _as_float64("W", W, allow_inf=False)
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


def _apply_activation(z, name, alpha):
    from .. import layers as _layers

    if name == "leaky_relu":
        return _layers.leaky_relu(z, alpha)
    return getattr(_layers, name)(z)


def _check_sequential(model):
    from ..model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minscale Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError("model is not built: give input_dim or fit it first")
    return model


def calibration_ranges(model, X, batch_size=None):
    """Minimum and maximum of the float network's input and of every layer's output on `X`.

    Parameters
    ----------
    model : Sequential, built
    X : array_like, shape (n, d_in)
        Calibration data (typically a few hundred training rows).
    batch_size : int, optional
        Rows per forward pass (all at once by default).

    Returns
    -------
    ranges : list of (float, float), length len(model.layers) + 1
        ``ranges[0]`` is the input's (min, max), ``ranges[i + 1]`` that of layer i's output after
        its activation, over all rows.

    Raises
    ------
    TypeError
        If model is not a Sequential.
    ValueError
        Bad X (NaN, wrong width) or batch_size.

    Notes
    -----
    The float model computes ``a = act(a @ W + b)`` layer by layer with the pure functions of
    :mod:`minscale.layers` (quantization hooks are not applied); a :class:`MinMaxObserver` per
    tensor collects the range, as TFLite's post-training calibration does.
    """
    from ..model import check_X

    model = _check_sequential(model)
    X = check_X(X, model.input_dim, model.dtype, "calibration_data")
    n = X.shape[0]
    bs = n if batch_size is None else _check_int("batch_size", batch_size, 1)
    observers = [MinMaxObserver() for _ in range(len(model.layers) + 1)]
    for start in range(0, n, bs):
        a = X[start : start + bs].astype(np.float64)
        observers[0].observe(a)
        for layer, obs in zip(model.layers, observers[1:]):
            b = layer.b.astype(np.float64) if layer.use_bias else None
            a = _apply_activation(
                a @ layer.W.astype(np.float64) + (0.0 if b is None else b),
                layer.activation,
                layer.alpha,
            )
            obs.observe(a)
    return [(obs.min_val, obs.max_val) for obs in observers]


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
        self.activations = _activation_spec(activations)
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
        from ..model import check_X

        X = check_X(X, self.input_dim, None)
        n = X.shape[0]
        bs = n if batch_size is None else _check_int("batch_size", batch_size, 1)
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
            a = _apply_activation(z, layer.activation, layer.alpha)
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
            per_col = (lambda v: np.ascontiguousarray(np.broadcast_to(
                np.asarray(v, dtype=np.int64).reshape(-1), (d_out,))))
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
            acc = int_matmul(xq, layer.codes, a_zero_point=layer.input_qparams[1])
            xq = requantize(
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
        integer = _check_bool("integer", integer)
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
        from .. import losses
        from ..data import accuracy as _accuracy
        from ..data import check_Xy

        X, y = check_Xy(X, y, dtype=self.dtype)
        y_hat = self.predict(
            X, integer=integer, batch_size=batch_size, requantize_rounding=requantize_rounding
        )
        if y.shape != y_hat.shape:
            raise ValueError(f"y has shape {y.shape}, the model predicts {y_hat.shape}")
        out = {"loss": losses.mse(y, y_hat)}
        if accuracy or (accuracy is None and y.shape[1] >= 2):
            out["accuracy"] = float(_accuracy(y, y_hat))
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
            "state": _json_ready(self.state),
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
        activations = _activation_spec(fields["activations"])
        n_layers = len(fields["layers"])
        qp = None
        if activations is not None:
            scale = _as_float64("qparams/scale", arrays["qparams/scale"], allow_inf=False)
            zp = _as_int_array("qparams/zero_point", arrays["qparams/zero_point"])
            if scale.shape != (n_layers + 1,) or zp.shape != scale.shape or (scale <= 0).any():
                raise ValueError(
                    "qparams/scale and qparams/zero_point must be positive scales and zero "
                    f"points of shape ({n_layers + 1},)"
                )
            qp = [(float(s), int(z)) for s, z in zip(scale, zp)]
        layers, d = [], int(fields["input_dim"])
        for i, lf in enumerate(fields["layers"]):
            d_in, d_out = (int(v) for v in lf["shape"])
            codes = _as_int_array(f"layers/{i}/codes", arrays[f"layers/{i}/codes"])
            w_scale = _as_float64(
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
            bias = bias_codes = None
            if lf["bias"] == "int32":
                bias_codes = _as_int_array(f"layers/{i}/bias", arrays[f"layers/{i}/bias"]).astype(
                    np.int32
                )
            elif lf["bias"] == "float":
                bias = _as_float64(f"layers/{i}/bias", arrays[f"layers/{i}/bias"], allow_inf=False)
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


def _json_ready(state):
    """The entries of a state dict that are plain JSON (arrays and objects are left out)."""
    import json

    out = {}
    for key, value in state.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


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


def _build_quantized(model, spec, activations, ranges):
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
    state = {k: v for k, v in _json_ready(model.state).items() if k != "quantization"}
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
    model = _check_sequential(model)
    if weights in FIXED_SPECS or activations in FIXED_SPECS:
        return quantize_fixed_model(model, weights, activations, calibration_data, batch_size)
    spec = weight_spec(weights)
    activations = _activation_spec(activations)
    ranges = None
    if activations is not None:
        if calibration_data is None:
            raise ValueError(
                "calibration_data is required when activations are quantized "
                f"(activations={activations!r}); pass rows of training data"
            )
        ranges = calibration_ranges(model, calibration_data, batch_size)
    return _build_quantized(model, spec, activations, ranges)


# --------------------------------------------------------------------------------------------
# Quantization-aware training
# --------------------------------------------------------------------------------------------


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
        _activation_spec(self.activations)
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
            out, _ = _fake_quant(W, scale, zp, spec.bits, narrow_range=True, axis=axis)
            return out, None
        f = spec.frac_bits
        if f is None:
            f = choose_frac_bits(W, spec.bits, spec.signed)
        want_mask = training and spec.frac_bits is not None
        return _fake_quant(W, math.ldexp(1.0, -f), 0, spec.bits, spec.signed, want_mask=want_mask)

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
        self.activations = _activation_spec(activations)
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
        return _fake_quant(a, scale, zp, 8, self.signed, want_mask=training)

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
    model = _check_sequential(model)
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
    model = _check_sequential(model)
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
    model = _check_sequential(model)
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
    return _build_quantized(model, config.weights, config.activations, ranges)


# --------------------------------------------------------------------------------------------
# Integer-only fixed point: Qm.n weights and activations, requantization by a rounding shift
# --------------------------------------------------------------------------------------------

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
        from ..model import check_X

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
    model = _check_sequential(model)
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


__all__ += ["FIXED_SPECS", "FIXED_ROUNDINGS", "fixed_frac_range", "fixed_shift_round",
            "FixedDense", "FixedPointModel", "quantize_fixed_model"]
