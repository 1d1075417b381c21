"""Integer-only arithmetic: gemmlowp's fixed-point primitives and TFLite's requantization.

Reproduces gemmlowp's ``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT`` and
TFLite's ``QuantizeMultiplier`` / ``MultiplyByQuantizedMultiplier`` bit for bit, in the order a
dense layer uses them, so that it can run from int8 inputs to int8 outputs with no
floating-point operation.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import kernels
from .._checks import check_bool, check_choice, check_int, plain
from ._arrays import INT32_MAX, INT32_MIN, as_int_array
from .fixed_point import code_dtype, integer_range

__all__ = [
    "MULTIPLIER_LIMIT",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "REQUANTIZE_ROUNDINGS",
    "multiply_by_quantized_multiplier",
    "int_matmul",
    "requantize",
]

# quantize_multiplier's upper bound: M0 < 2**31 with a left shift of at most 30 bits.
MULTIPLIER_LIMIT = 2.0**30


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
        raise TypeError(f"real_multiplier must be a real number, got {plain(real_multiplier)!r}")
    m = float(real_multiplier)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"real_multiplier must be finite and >= 0, got {plain(real_multiplier)!r}")
    if m >= MULTIPLIER_LIMIT:
        raise ValueError(
            f"real_multiplier must be < 2**30, got {plain(real_multiplier)!r}: a larger multiplier "
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
    arr = as_int_array(name, x)
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
    e = as_int_array("exponent", exponent).astype(np.int64)
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
    s = as_int_array("shift", shift).astype(np.int64)
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
        z = as_int_array(zp_name, zp).astype(np.int64)
        if z.size and (z.min() < info.min or z.max() > info.max):
            raise ValueError(
                f"{zp_name} must lie in [{info.min}, {info.max}] for {arr.dtype}, got {plain(zp)!r}"
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
    zero_point = check_int("zero_point", zero_point, qmin, qmax)
    relu = check_bool("relu", relu)
    acc = _accumulators(acc)
    acc2 = acc.reshape(-1, acc.shape[-1])
    d_out = acc2.shape[1]
    m0 = _per_channel("quantized_multiplier", quantized_multiplier, 0, INT32_MAX, d_out)
    sh = _per_channel("shift", shift, -31, 30, d_out)
    b = _bias_codes(bias, d_out)
    rounding = check_choice("rounding", rounding, REQUANTIZE_ROUNDINGS)
    lower = max(qmin, zero_point) if relu else qmin
    out = np.empty(acc2.shape, dtype=code_dtype(bits, signed))
    if rounding == "single":
        x = _int32_sum(acc2, b)
        scaled = multiply_by_quantized_multiplier(x, m0, sh, rounding="single").astype(np.int64)
        out[...] = np.clip(scaled + zero_point, lower, qmax)
    elif out.size and not kernels.requantize(
        np.ascontiguousarray(acc2, dtype=np.int32), b, m0, sh, zero_point, lower, qmax, out
    ):
        raise ValueError("acc + bias, or acc + bias shifted left by shift, overflows int32")
    return out.reshape(acc.shape)


def _accumulators(acc):
    """``acc`` as int64, 1-D or 2-D, every value in int32."""
    a = _as_int32_values("acc", acc)
    if a.ndim not in (1, 2):
        raise ValueError(f"acc must be 1-D (d_out,) or 2-D (n, d_out), got shape {a.shape}")
    return a


def _per_channel(name, value, lo, hi, d_out):
    """A per-tensor or per-output-channel integer parameter as a contiguous int64 (d_out,)."""
    v = as_int_array(name, value).astype(np.int64)
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, d_out)):
        raise ValueError(f"{name} must be a scalar or of shape ({d_out},), got shape {v.shape}")
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got range [{v.min()}, {v.max()}]")
    return np.ascontiguousarray(np.broadcast_to(v.reshape(-1), (d_out,)))


def _bias_codes(bias, d_out):
    """int32 bias codes of shape (d_out,), or an empty int32 array for no bias."""
    if bias is None:
        return np.zeros(0, dtype=np.int32)
    b = _as_int32_values("bias", bias)
    if b.shape != (d_out,):
        raise ValueError(f"bias must have shape ({d_out},), got {b.shape}")
    return b.astype(np.int32)


def _int32_sum(acc, bias):
    """``acc + bias`` in int64, refused when a sum leaves int32."""
    x = acc + bias if bias.size else acc
    if x.size and (x.min() < INT32_MIN or x.max() > INT32_MAX):
        raise ValueError("acc + bias overflows int32")
    return x
