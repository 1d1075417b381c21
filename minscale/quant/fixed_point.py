"""Qm.n fixed-point numbers: a code ``q`` stands for ``q * 2**-frac_bits``.

The seed formula ``q = round(w * 2**f)`` made exact: the scaling by a power of two is exact in
float64, so the only rounding is the one the caller chooses (``nearest_even``, ``half_away``,
``floor``, ``stochastic``), followed by saturation to ``[qmin, qmax]``. Element-wise work runs
in the active backend's kernels (:mod:`minscale.kernels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels
from .._checks import check_bool, check_choice, check_float_dtype, check_int, plain
from ..kernels._numpy import ROUNDING_CODES as _ROUNDING_CODES
from ._arrays import as_float64, as_int_array, as_real_array

__all__ = [
    "ROUNDING_MODES",
    "FRAC_BITS_LIMIT",
    "integer_range",
    "code_dtype",
    "QFormat",
    "round_values",
    "quantize",
    "dequantize",
    "choose_frac_bits",
]

ROUNDING_MODES = ("nearest_even", "half_away", "floor", "stochastic")


# |frac_bits| <= 960 keeps step = 2**-frac_bits >= 2**-960 a normal float64 (> 2**-1022) and
# max_value < 2**(32 + 960) < 2**1024 finite for every bits <= 32.
FRAC_BITS_LIMIT = 960


def keep_underflow_sign(v, x):
    """`v` with underflowed zeros of negative `x` made the tiniest negative float64."""
    # A tiny negative input whose scaled value underflowed to -0.0 must still floor to -1.
    return np.where((v == 0) & (x < 0), -np.finfo(np.float64).tiny, v)


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
    bits = check_int("bits", bits, 2, 32)
    signed = check_bool("signed", signed)
    narrow_range = check_bool("narrow_range", narrow_range)
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
        object.__setattr__(self, "bits", check_int("bits", self.bits, 2, 32))
        object.__setattr__(
            self,
            "frac_bits",
            check_int("frac_bits", self.frac_bits, -FRAC_BITS_LIMIT, FRAC_BITS_LIMIT),
        )
        object.__setattr__(self, "signed", check_bool("signed", self.signed))

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
    check_choice("rounding", rounding, ROUNDING_MODES)
    v = as_float64("v", v)
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
    v = keep_underflow_sign(v, x)
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
    check_choice("rounding", rounding, ROUNDING_MODES)
    saturate = check_bool("saturate", saturate)
    if rounding == "stochastic":
        x = as_float64("x", x)
        with np.errstate(over="ignore", under="ignore"):  # overflow saturates, underflow is handled
            v = np.ldexp(x, fmt.frac_bits)
        return _scaled_to_codes(v, x, fmt.qmin, fmt.qmax, rounding, seed, saturate, fmt.dtype, "x")
    x = as_real_array("x", x)
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
    q = as_int_array("q", q)
    if q.size and (q.min() < fmt.qmin or q.max() > fmt.qmax):
        raise ValueError(
            f"q has codes in [{q.min()}, {q.max()}], outside {fmt.name}'s [{fmt.qmin}, {fmt.qmax}]"
        )
    out = np.empty(q.shape, dtype=check_float_dtype("dtype", dtype))
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
    x = as_float64("x", x, allow_inf=False)
    pos = float(x.max()) if x.size and x.max() > 0 else 0.0
    neg = float(-x.min()) if x.size and x.min() < 0 else 0.0
    if neg > 0 and not signed:
        raise ValueError(f"x has negative values (min {plain(-neg)!r}) but signed=False")
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
                f"x has max |x| = {plain(max(pos, neg))!r}, too large for any {bits}-bit format with "
                f"frac_bits >= {-FRAC_BITS_LIMIT}"
            )
    return f
