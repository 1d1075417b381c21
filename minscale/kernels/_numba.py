"""The kernels of :mod:`minscale.kernels._numpy`, JIT-compiled with Numba.

Same names, signatures and results (float: equal up to the last bits of ``exp``/``tanh``;
integer: bit for bit). Each public function is a thin Python wrapper that converts ``None``
masks to what a compiled function can take, casts scalars to the buffer's dtype (as
:mod:`minscale.optim` already passes them) and picks the serial or the parallel compiled
body: ``parallel=True`` pays only on large arrays (at least :data:`PARALLEL_MIN` elements)
and only with more than one Numba thread, since waking the thread pool costs microseconds.
Every compiled body is ``@njit(cache=True)`` without ``fastmath`` (no reassociation, no FMA
contraction), so elementwise arithmetic rounds as NumPy's does.

The wrappers' docstrings append the reference docstring of their NumPy twin, which states the
formula, the shapes and the sources.

The per-element rules of the activations and optimizer updates are compiled once, in
:mod:`minscale.kernels._rules`, and shared with the compiled epoch loop
(:mod:`minscale.kernels._fastfit`).
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import _numpy as _ref
from ._rules import act_backward_range, adam_range, bias_act_rows, momentum_range, sgd_range

# GNU OpenMP (the "omp" layer of the PyPI wheels) aborts a process that forks after using it;
# minscale's data-parallel workers fork. "forksafe" picks TBB, a fork-safe OpenMP or Numba's
# own workqueue. A user's NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "forksafe"

NAME = "numba"
ROUNDING_CODES = _ref.ROUNDING_CODES

#: arrays with fewer elements run the serial compiled body: waking the thread pool costs tens
#: of microseconds on this 2-core machine, about what a serial pass over 2**17 elements takes
PARALLEL_MIN = 1 << 17

#: keep_all_but_smallest on fewer scores runs the NumPy twin (same mask): below this size
#: np.partition beats the compiled select and its parallel marking pass (measured 2x faster at
#: 2**15 scores, 5x at 100, on a 2-core machine), and a run that prunes only small models never
#: compiles the selection kernels (about 1.5 s of a cold start)
SELECT_TWIN_MAX = 1 << 15

#: quantize_fixed, quantize_affine, quantize_affine_checked and dequantize_affine on fewer
#: elements run the NumPy twin (the same codes: the compiled kernels equal it bit for bit).
#: The compiled affine kernels cost about 3 s of compilation per code dtype on a cold cache,
#: the fixed-point one about 0.5 s per code dtype (together about 8 s of the first
#: ``minscale demo``, which quantizes a two-parameter model and the diabetes data), while the
#: twin costs at most about 0.1 ms more per call below this size (measured on a 2-core
#: machine: affine 45 vs 24 us at 1 element, 98 vs 19 us at 8192; fixed 19 vs 2.5 us at 1,
#: 119 vs 33 us at 8192; dequantize 24 vs 4 us at 8192). These are one-off conversions;
#: fake_quantize, called at every step of quantization-aware training, always runs compiled.
QUANT_TWIN_MAX = 1 << 13

_CHUNK = 1 << 14  # elements per parallel work item
# Loops over a sub-range index with np.uint64: Numba must otherwise allow for negative indices
# (Python wrap-around), which blocks vectorization and made these loops 3-5x slower.
_BLOCK = 1024  # elements per exactness check of the division-free quantizers
_TINY = np.finfo(np.float64).tiny
_EMPTY_BOOL = np.zeros(0, dtype=np.bool_)


def _twin(fn):
    """Append the NumPy twin's docstring to a wrapper's own."""
    ref = getattr(_ref, fn.__name__)
    fn.__doc__ = (fn.__doc__ or "") + "\n    Reference (NumPy twin)\n    ----------------------\n" \
        + (ref.__doc__ or "")
    return fn


def _parallel(n):
    return n >= PARALLEL_MIN and numba.get_num_threads() > 1


def _nchunks(n):
    return (n + _CHUNK - 1) // _CHUNK


# --- activations ---------------------------------------------------------------------------

@njit(cache=True)
def _bias_act_serial(z, b, act, alpha, one):
    bias_act_rows(z, b, act, alpha, one, 0, z.shape[0])


@njit(cache=True, parallel=True)
def _bias_act_parallel(z, b, act, alpha, one, rows_per_item):
    n = z.shape[0]
    items = (n + rows_per_item - 1) // rows_per_item
    for c in prange(items):
        r0 = c * rows_per_item
        bias_act_rows(z, b, act, alpha, one, r0, min(n, r0 + rows_per_item))


@_twin
def bias_act(z, b, act, alpha):
    """Numba twin of :func:`minscale.kernels._numpy.bias_act` (rows split across threads)."""
    dt = z.dtype.type
    if _parallel(z.size):
        rows = max(1, _CHUNK // max(1, z.shape[1]))
        _bias_act_parallel(z, b, act, dt(alpha), dt(1), rows)
    else:
        _bias_act_serial(z, b, act, dt(alpha), dt(1))
    return z


@njit(cache=True)
def _act_backward_serial(a, da, act, alpha, one, out):
    act_backward_range(a, da, act, alpha, one, out, 0, a.size)


@njit(cache=True, parallel=True)
def _act_backward_parallel(a, da, act, alpha, one, out):
    n = a.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        act_backward_range(a, da, act, alpha, one, out, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@_twin
def act_backward(a, da, act, alpha, out):
    """Numba twin of :func:`minscale.kernels._numpy.act_backward` (flat, contiguous arrays)."""
    if act == 0 and out is da:
        return out
    dt = a.dtype.type
    args = (a.reshape(-1), da.reshape(-1), act, dt(alpha), dt(1), out.reshape(-1))
    if _parallel(a.size):
        _act_backward_parallel(*args)
    else:
        _act_backward_serial(*args)
    return out


# --- optimizer updates ---------------------------------------------------------------------

@njit(cache=True)
def _sgd_serial(theta, grad, lr, mask, has_mask, one):
    sgd_range(theta, grad, lr, mask, has_mask, one, 0, theta.size)


@njit(cache=True, parallel=True)
def _sgd_parallel(theta, grad, lr, mask, has_mask, one):
    n = theta.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        sgd_range(theta, grad, lr, mask, has_mask, one, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@_twin
def sgd_update(theta, grad, lr, mask):
    """Numba twin of :func:`minscale.kernels._numpy.sgd_update`: one pass over the buffers."""
    dt = theta.dtype.type
    m, has = (_EMPTY_BOOL, False) if mask is None else (mask, True)
    (_sgd_parallel if _parallel(theta.size) else _sgd_serial)(theta, grad, dt(lr), m, has, dt(1))


@njit(cache=True)
def _momentum_serial(theta, grad, velocity, lr, momentum, nesterov, mask, has_mask, one):
    momentum_range(theta, grad, velocity, lr, momentum, nesterov, mask, has_mask, one, 0,
                    theta.size)


@njit(cache=True, parallel=True)
def _momentum_parallel(theta, grad, velocity, lr, momentum, nesterov, mask, has_mask, one):
    n = theta.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        momentum_range(theta, grad, velocity, lr, momentum, nesterov, mask, has_mask, one,
                        c * _CHUNK, min(n, (c + 1) * _CHUNK))


@_twin
def momentum_update(theta, grad, velocity, lr, momentum, nesterov, mask):
    """Numba twin of :func:`minscale.kernels._numpy.momentum_update`: one pass."""
    dt = theta.dtype.type
    m, has = (_EMPTY_BOOL, False) if mask is None else (mask, True)
    body = _momentum_parallel if _parallel(theta.size) else _momentum_serial
    body(theta, grad, velocity, dt(lr), dt(momentum), bool(nesterov), m, has, dt(1))


@njit(cache=True)
def _adam_serial(theta, grad, m, v, step_size, beta_1, c1, beta_2, c2, sqrt_bc2, epsilon, mask,
                 has_mask, one):
    adam_range(theta, grad, m, v, step_size, beta_1, c1, beta_2, c2, sqrt_bc2, epsilon, mask,
                has_mask, one, 0, theta.size)


@njit(cache=True, parallel=True)
def _adam_parallel(theta, grad, m, v, step_size, beta_1, c1, beta_2, c2, sqrt_bc2, epsilon, mask,
                   has_mask, one):
    n = theta.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        adam_range(theta, grad, m, v, step_size, beta_1, c1, beta_2, c2, sqrt_bc2, epsilon,
                    mask, has_mask, one, c * _CHUNK, min(n, (c + 1) * _CHUNK))


def adam_constants(dtype, lr, beta_1, beta_2, bias_correction_1, bias_correction_2):
    """The scalars of one Adam update in the buffers' dtype, rounded as the NumPy twin rounds.

    Parameters
    ----------
    dtype : float32 or float64 dtype
    lr, beta_1, beta_2, bias_correction_1, bias_correction_2 : float

    Returns
    -------
    tuple
        ``(lr / bc1, beta_1, 1 - beta_1, beta_2, 1 - beta_2, sqrt(bc2))``, each a scalar of
        `dtype` computed in `dtype` from the `dtype`-cast inputs.
    """
    dt = np.dtype(dtype).type
    lr, b1, b2, bc1, bc2 = dt(lr), dt(beta_1), dt(beta_2), dt(bias_correction_1), \
        dt(bias_correction_2)
    one = dt(1)
    return lr / bc1, b1, one - b1, b2, one - b2, np.sqrt(bc2)


@_twin
def adam_update(theta, grad, m, v, lr, beta_1, beta_2, epsilon, bias_correction_1,
                bias_correction_2, mask):
    """Numba twin of :func:`minscale.kernels._numpy.adam_update`: one pass over four buffers.

    Scalars are taken in the buffers' dtype (as :func:`minscale.optim.adam_step` passes them).
    """
    dt = theta.dtype.type
    step_size, b1, c1, b2, c2, sq = adam_constants(theta.dtype, lr, beta_1, beta_2,
                                                   bias_correction_1, bias_correction_2)
    mk, has = (_EMPTY_BOOL, False) if mask is None else (mask, True)
    body = _adam_parallel if _parallel(theta.size) else _adam_serial
    body(theta, grad, m, v, step_size, b1, c1, b2, c2, sq, dt(epsilon), mk, has, dt(1))


#: Adam's bias corrections stay the Python expression of the general loop on this backend too:
#: a compiled ``pow`` could differ from the C library's in the last bit (see the NumPy twin)
bias_corrections = _ref.bias_corrections


# --- rounding and the fixed-point quantizer ------------------------------------------------

@njit(cache=True, inline="always")
def _round(v, rounding):
    if rounding == 0:
        return np.rint(v)
    if rounding == 1:
        t = np.trunc(v)
        return t + (np.copysign(1.0, v) if np.abs(v - t) >= 0.5 else 0.0 * v)
    return np.floor(v)


@njit(cache=True)
def _quantize_fixed_range(x, p2, qmin, qmax, rounding, out, lo, hi):
    """Codes of x[lo:hi]; returns the first index whose code saturated, or -1."""
    flo = qmin - 1.0
    fhi = qmax + 1.0
    first = -1
    for i in range(np.uint64(lo), np.uint64(hi)):
        xi = np.float64(x[i])
        v = xi * p2
        if v == 0.0 and xi < 0.0:
            v = -_TINY
        r = _round(min(max(v, flo), fhi), rounding)
        if r < qmin:
            r = np.float64(qmin)
            if first < 0:
                first = np.int64(i)
        elif r > qmax:
            r = np.float64(qmax)
            if first < 0:
                first = np.int64(i)
        out[i] = np.int64(r)
    return first


@njit(cache=True)
def _quantize_fixed_serial(x, p2, qmin, qmax, rounding, out):
    return _quantize_fixed_range(x, p2, qmin, qmax, rounding, out, 0, x.size)


@njit(cache=True, parallel=True)
def _quantize_fixed_parallel(x, p2, qmin, qmax, rounding, out):
    n = x.size
    items = (n + _CHUNK - 1) // _CHUNK
    firsts = np.empty(items, dtype=np.int64)
    for c in prange(items):
        firsts[c] = _quantize_fixed_range(x, p2, qmin, qmax, rounding, out, c * _CHUNK,
                                          min(n, (c + 1) * _CHUNK))
    for c in range(items):
        if firsts[c] >= 0:
            return firsts[c]
    return -1


@_twin
def quantize_fixed(x, frac_bits, qmin, qmax, rounding, out):
    """Numba twin of :func:`minscale.kernels._numpy.quantize_fixed`: one pass, no temporaries."""
    if x.size < QUANT_TWIN_MAX:
        return _ref.quantize_fixed(x, frac_bits, qmin, qmax, rounding, out)
    p2 = float(np.ldexp(1.0, int(frac_bits)))
    xf, of = x.reshape(-1), out.reshape(-1)
    body = _quantize_fixed_parallel if _parallel(x.size) else _quantize_fixed_serial
    return int(body(xf, p2, int(qmin), int(qmax), int(rounding), of))


@njit(cache=True)
def _dequantize_fixed_range(q, p2, out, lo, hi):
    for i in range(np.uint64(lo), np.uint64(hi)):
        out[i] = np.float64(q[i]) * p2


@njit(cache=True)
def _dequantize_fixed_serial(q, p2, out):
    _dequantize_fixed_range(q, p2, out, 0, q.size)


@njit(cache=True, parallel=True)
def _dequantize_fixed_parallel(q, p2, out):
    n = q.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        _dequantize_fixed_range(q, p2, out, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@_twin
def dequantize_fixed(q, frac_bits, out):
    """Numba twin of :func:`minscale.kernels._numpy.dequantize_fixed`.

    ``q * 2**-frac_bits`` by one float64 multiplication, exact like ``ldexp``.
    """
    p2 = float(np.ldexp(1.0, -int(frac_bits)))
    body = _dequantize_fixed_parallel if _parallel(q.size) else _dequantize_fixed_serial
    body(q.reshape(-1), p2, out.reshape(-1))
    return out


# --- affine quantization without a division per element ------------------------------------
#
# x / scale costs a float64 division per element, several times the cost of a multiplication
# and the bottleneck of a memory-bound pass. The kernels below compute v' = x * (1 / scale)
# instead and fall back to the division only where that can change the result:
#
#   Let q = x / s exactly, r = fl(1 / s) = (1 / s)(1 + d1) and v' = fl(x * r) = q (1 + d1)(1 + d2),
#   |d1|, |d2| <= u = 2**-53 (s, 1 / s and v' normal). The reference value fl(x / s) = q (1 + d3).
#   So |v' - fl(x / s)| <= |q| (3u + u**2) < |v'| 2**-50. Every result of the kernel (the code,
#   the fake-quant value, the STE mask) is a step function of the reference value with jumps only
#   at half-integers (nearest rules), at integers (floor) or at the clip bounds (mask). If v' is
#   farther than tol = |v'| 2**-50 + 2**-1000 from every jump, the reference value lies strictly
#   on the same side of every jump, so both give the same result. The 2**-1000 term covers
#   subnormal v' (where relative bounds fail) and the -0.0 underflow rule, which only the floor
#   rule sees at its jump at 0. A block of _BLOCK elements with any element within tol of a jump
#   is recomputed with the division. For random data the chance per element is about 2**-48.
#   Scales whose inverse is not a normal number (or that are not normal) always divide.

_INV_MIN = 2.0 ** -1000
_INV_MAX = 2.0 ** 1000
_REL = 2.0 ** -50
_ABS = 2.0 ** -1000


@njit(cache=True, inline="always")
def _near_jump(v, rounding, lo, hi, tol):
    """True if v is within tol of a jump of round-then-clip (or of the mask bounds)."""
    if rounding == 2:
        d = v - np.floor(v)
        dist = min(d, 1.0 - d)
    else:
        dist = 0.5 - np.abs(v - np.rint(v))
    near = (dist <= tol) | (np.abs(v - lo) <= tol) | (np.abs(v - hi) <= tol)
    return near & (v > lo - 1.0) & (v < hi + 1.0)


@njit(cache=True)
def _affine_fast_codes(x, inv, zp, lo, hi, rounding, out, b0, b1):
    """Codes of x[b0:b1] by multiplication; True if some element is near a jump or is NaN.

    One loop per rounding rule with branch-free bodies, a boolean OR for the check (an integer
    count would be widened to int64 by Numba and halve the vector width) and the zero point
    added in float64 before an int32 conversion (AVX2 has no packed float64 -> int64
    conversion), so LLVM vectorizes each loop. Rounding before clipping equals clipping before
    rounding (integer bounds), and ``r + zp`` is an integer below 2**32, exact in float64. The
    check ignores the clip range: an element near a jump outside it only costs a recomputation.
    Every comparison is written so that NaN flags its block (NaN compares false), which sends
    the block to :func:`_affine_exact`, where NaN is reported.
    """
    zpf = np.float64(zp)
    near = False
    if rounding == 0:
        for i in range(np.uint64(b0), np.uint64(b1)):
            v = np.float64(x[i]) * inv
            r = np.rint(v)
            out[i] = np.int32(min(max(r, lo), hi) + zpf)
            near |= not (0.5 - np.abs(v - r) > np.abs(v) * _REL + _ABS)
    elif rounding == 1:
        for i in range(np.uint64(b0), np.uint64(b1)):
            v = np.float64(x[i]) * inv
            t = np.trunc(v)
            r = t + np.copysign(np.float64(np.abs(v - t) >= 0.5), v)
            out[i] = np.int32(min(max(r, lo), hi) + zpf)
            near |= not (0.5 - np.abs(v - np.rint(v)) > np.abs(v) * _REL + _ABS)
    else:
        for i in range(np.uint64(b0), np.uint64(b1)):
            v = np.float64(x[i]) * inv
            r = np.floor(v)
            out[i] = np.int32(min(max(r, lo), hi) + zpf)
            d = v - r
            near |= not (min(d, 1.0 - d) > np.abs(v) * _REL + _ABS)
    return near


# --- float32 inputs: the same scheme in float32, 8 lanes per AVX2 instruction ------------------
#
# For float32 x the kernel below multiplies in float32 by inv32 = fl32(fl64(1 / s)) and checks
# each element against one tolerance per channel. Claim: every element it does not flag gets the
# reference code of r64 = fl64(x / s). Proof. Let q = x / s (exact real) and [lo, hi] =
# [qmin - zp, qmax - zp] (lo <= 0 <= hi since qmin <= zp <= qmax), with max(-lo, hi) <= 2**20,
# and inv32 a normal float32 (both checked by :func:`_f32_tolerance`, else the float64 loop
# runs). Write x * inv32 = q (1 + eps) with eps = s * inv32 - 1; the wrapper computes
# p = fl64(s * inv32) and uses |eps| <= eb = |p - 1| + 2**-52 (the float64 product of two
# numbers near 1 / each other errs by at most 2**-53 (1 + |eps|); eb < 2**-23 always). The
# float32 product v = fl32(x * inv32) errs by at most |x * inv32| 2**-24 + 2**-150 (normal or
# subnormal result; an overflow to +-inf needs |q| >= 2**127, far outside the clip range, where
# both give the saturated code), and the reference by |q| 2**-53 + 2**-1075. So
#   |v - r64| <= |q| E + 2**-149,  E = eb + 2**-24 (1 + eb) + 2**-53,
# and with |q| <= (|v| + 2**-150) / (1 - 2**-22): |v - r64| <= |v| E (1 + 2**-21) + 2**-148.
#   Codes are a step function of the value with jumps at half-integers (nearest rules) or at
# integers (floor, which also sees the sign of -0.0 through the -TINY rule at its jump at 0).
# The kernel clamps v to [lo - c, hi + c] (c = 1/4 for the nearest rules, 1/2 for floor);
# |vc| <= M = max(-lo, hi) + c <= 2**20 + 1/2 < 2**23, so f = vc - rint(vc) and
# d = vc - floor(vc) are exact in float32, the clamped value rounds into [lo, hi] (floor:
# [lo - 1, hi], clipped), and tol = M E (1 + 2**-20) + 2**-100 (computed in float64, rounded up
# to float32; E <= 2**-23 + 2**-24 + 2**-52 < 2**-22.4, so tol < (2**20 + 1/2) 2**-22.4 < 0.2)
# bounds |v - r64| for every unclamped v.
# (i) v was clamped, say v >= hi + c: r64 >= (hi + c)(1 - E (1 + 2**-21)) - 2**-148 >
# hi + c - 0.2, so r64 > hi (floor, c = 1/2) and r64 > hi - 1/2 (nearest, c = 1/4): the
# reference code is hi, as is the kernel's. Symmetrically, v <= lo - c gives r64 < lo - c + 0.2,
# below lo (floor) and below lo + 1/2 (nearest): code lo. (ii) vc = v. Nearest rules: an
# unflagged element has |f| < thr, thr = fl32 of 0.5 - tol rounded down, so the distance
# 1/2 - |f| from v to the nearest half-integer exceeds tol >= |v - r64|. Floor: an unflagged
# element has d > tol and fl32(d + tol) < 1, hence d + tol < 1 exactly (rounding is monotone and
# 1 is a float32), so no integer lies within tol of v; v = -0.0 gives d = 0 <= tol and is
# flagged, so the -0.0 rule never meets the fast path. In every case r64 lies strictly on the
# same side of every jump as v, so both give the same code. NaN makes every comparison false
# and is flagged. QED.
#   The flag is an OR over a block of _BLOCK elements; in a flagged block a scalar pass
# (:func:`_affine_fix32`) recomputes each element's flag with the same float32 operations and
# divides only where it is set (the division path costs about 7 ns per element, 30 times the
# fast loop, so recomputing whole blocks cost more than the fast loop itself). For scale 0.02
# (inv32 = 50 exactly, eb = 2**-52) and int8 codes, tol = 8e-6: about 1 in 30 000 elements of
# N(0, 1) data is divided.

_F32_MAX_BOUND = 2.0 ** 20
_F32_INV_MIN = 2.0 ** -125
_F32_INV_MAX = 2.0 ** 125


@njit(cache=True)
def _f32_tolerance(scale, inv32, zero_point, qmin, qmax, rounding):
    """Per channel: the float32 threshold of the fast float32 loop, or -1 where it cannot run.

    Returns a float32 array: ``thr`` (nearest rules; an element is flagged when
    ``|f| >= thr``) or ``tol`` (floor; flagged unless ``tol < d`` and ``d + tol < 1``), see the
    proof above; -1 marks a channel whose inverse is not a normal float32 or whose clip bounds
    exceed 2**20. Compiled, so a per-tensor call costs no NumPy temporaries.
    """
    n = scale.size
    res = np.empty(n, dtype=np.float32)
    for c in range(n):
        i32 = inv32[c]
        half_width = max(zero_point[c] - qmin, qmax - zero_point[c])
        p = scale[c] * np.float64(i32)
        eb = np.abs(p - 1.0) + 2.0 ** -52
        if not (i32 >= _F32_INV_MIN and i32 <= _F32_INV_MAX and half_width <= _F32_MAX_BOUND
                and eb < 2.0 ** -23):
            res[c] = -1.0
            continue
        err = eb + 2.0 ** -24 * (1.0 + eb) + 2.0 ** -53
        m = half_width + (0.5 if rounding == 2 else 0.25)
        tol = m * err * (1.0 + 2.0 ** -20) + 2.0 ** -100
        if rounding == 2:  # tol, rounded up to float32
            t32 = np.float32(tol)
            if np.float64(t32) < tol:
                t32 = np.nextafter(t32, np.float32(np.inf))
        else:  # 1/2 - tol, rounded down to float32
            thr = 0.5 - tol
            t32 = np.float32(thr)
            if np.float64(t32) > thr:
                t32 = np.nextafter(t32, np.float32(0.0))
        res[c] = t32
    return res


@njit(cache=True, inline="always")
def _sat_bounds(out):
    """Bounds of out's dtype (clipped to int32) as int32 constants. Clamping to them changes no
    code (codes lie in [qmin, qmax]), but it lets LLVM narrow to int8 with the saturating pack
    instructions instead of a chain of shuffles."""
    info = np.iinfo(out.dtype)
    return (np.int32(max(info.min, -2147483648)), np.int32(min(info.max, 2147483647)))


@njit(cache=True)
def _affine_fast_codes32(x, inv, zp, lo, hi, rounding, thr, out, b0, b1):
    """float32 codes of x[b0:b1] (x float32, inv and thr float32); True if the block must be
    recomputed (an element near a jump, or NaN).

    Branch-free float32 loops (see the proof above); every constant is a float32 so no lane is
    widened to float64, and the flag is a boolean OR (an integer count would be widened to
    int64 by Numba and halve the vector width).
    """
    smin, smax = _sat_bounds(out)
    zpf = np.float32(zp)
    half = np.float32(0.5)
    one = np.float32(1.0)
    near = False
    if rounding == 2:
        clo = np.float32(lo - 0.5)
        chi = np.float32(hi + 0.5)
        flo = np.float32(lo)
        for i in range(np.uint64(b0), np.uint64(b1)):
            v = x[i] * inv
            vc = clo if v < clo else v
            vc = chi if vc > chi else vc
            r = np.floor(vc)
            rc = flo if r < flo else r
            out[i] = min(max(np.int32(rc + zpf), smin), smax)
            d = vc - r
            near |= not ((d > thr) & (d + thr < one))
        return near
    clo = np.float32(lo - 0.25)
    chi = np.float32(hi + 0.25)
    if rounding == 0:
        for i in range(np.uint64(b0), np.uint64(b1)):
            v = x[i] * inv
            vc = clo if v < clo else v
            vc = chi if vc > chi else vc
            r = np.rint(vc)
            out[i] = min(max(np.int32(r + zpf), smin), smax)
            near |= not (np.abs(vc - r) < thr)
    else:
        for i in range(np.uint64(b0), np.uint64(b1)):
            v = x[i] * inv
            vc = clo if v < clo else v
            vc = chi if vc > chi else vc
            t = np.trunc(vc)
            r = t + np.copysign(np.float32(np.abs(vc - t) >= half), vc)
            out[i] = min(max(np.int32(r + zpf), smin), smax)
            near |= not (np.abs(vc - np.rint(vc)) < thr)
    return near


@njit(cache=True)
def _affine_fix32(x, s, inv, zp, lo, hi, rounding, thr, out, fq, mask, b0, b1):
    """Redo the flagged elements of a block of :func:`_affine_fast_codes32` with the division.

    The flag is recomputed per element by the same float32 operations (IEEE arithmetic is
    deterministic, so it is set exactly where the fast loop's was); returns the first NaN's
    index or -1.
    """
    first_nan = -1
    one = np.float32(1.0)
    c = np.float32(0.5) if rounding == 2 else np.float32(0.25)
    clo = np.float32(lo - c)
    chi = np.float32(hi + c)
    for i in range(np.uint64(b0), np.uint64(b1)):
        v = x[i] * inv
        vc = clo if v < clo else v
        vc = chi if vc > chi else vc
        if rounding == 2:
            d = vc - np.floor(vc)
            near = not ((d > thr) & (d + thr < one))
        else:
            near = not (np.abs(vc - np.rint(vc)) < thr)
        if near:
            nan_at = _affine_exact(x, s, zp, lo, hi, rounding, out, fq, mask, False, 0, i, i + 1)
            if first_nan < 0:
                first_nan = nan_at
    return first_nan


@njit(cache=True)
def _affine_exact(x, s, zp, lo, hi, rounding, out, fq, mask, has_mask, mode, b0, b1):
    """The reference formula, one division per element; returns the first NaN's index or -1."""
    first_nan = -1
    for i in range(np.uint64(b0), np.uint64(b1)):
        xi = np.float64(x[i])
        if first_nan < 0 and xi != xi:
            first_nan = np.int64(i)
        v = xi / s
        if mode == 1 and has_mask:
            mask[i] = v >= lo and v <= hi
        if v == 0.0 and xi < 0.0:
            v = -_TINY
        r = _round(min(max(v, lo), hi), rounding)
        if mode == 0:
            out[i] = np.int64(r) + zp
        else:
            fq[i] = s * r
    return first_nan


def _fast32_codes(x, inv, zp, lo, hi, rounding, thr, out, b0, b1):
    """:func:`_affine_fast_codes32` for float32 `x`; for other dtypes a stub returning True
    that is never reached (``is32`` is False there). Chosen by type when compiled (see
    :func:`_ol_fast32_codes`), so a float64 quantization never compiles the float32 loops: on a
    cold cache, the float32 kernels were about a third of the affine kernels' compile time."""
    raise NotImplementedError("compiled code only")


def _fast32_fix(x, s, inv, zp, lo, hi, rounding, thr, out, fq, mask, b0, b1):
    """:func:`_affine_fix32` for float32 `x`; for other dtypes an unreached stub (see
    :func:`_fast32_codes`)."""
    raise NotImplementedError("compiled code only")


@overload(_fast32_codes, jit_options={"cache": True})
def _ol_fast32_codes(x, inv, zp, lo, hi, rounding, thr, out, b0, b1):
    if x.dtype == types.float32:
        def impl(x, inv, zp, lo, hi, rounding, thr, out, b0, b1):
            return _affine_fast_codes32(x, inv, zp, lo, hi, rounding, thr, out, b0, b1)
    else:
        def impl(x, inv, zp, lo, hi, rounding, thr, out, b0, b1):
            return True
    return impl


@overload(_fast32_fix, jit_options={"cache": True})
def _ol_fast32_fix(x, s, inv, zp, lo, hi, rounding, thr, out, fq, mask, b0, b1):
    if x.dtype == types.float32:
        def impl(x, s, inv, zp, lo, hi, rounding, thr, out, fq, mask, b0, b1):
            return _affine_fix32(x, s, inv, zp, lo, hi, rounding, thr, out, fq, mask, b0, b1)
    else:
        def impl(x, s, inv, zp, lo, hi, rounding, thr, out, fq, mask, b0, b1):
            return -1
    return impl


@njit(cache=True)
def _affine_run(x, s, inv, inv32, thr32, is32, zp, lo, hi, rounding, out, fq, mask, has_mask,
                mode, i0, i1):
    """One contiguous run of one channel. mode 0: codes into out; 1: fake-quant into fq.

    Returns the flat index of the first NaN in the run, or -1 (found in mode 0 only).
    """
    fast = inv >= _INV_MIN and inv <= _INV_MAX and s >= _INV_MIN and s <= _INV_MAX
    # int32 conversion in the fast code loop needs the shifted codes inside int32
    fast_codes = fast and lo > -2147483648.0 and hi < 2147483647.0
    # the float32 loop: float32 input and a channel that _f32_tolerance accepted
    fast32 = is32 and mode == 0 and thr32 >= 0
    first_nan = -1
    b0 = i0
    while b0 < i1:
        b1 = min(i1, b0 + _BLOCK)
        redo = True
        if fast32:
            redo = _fast32_codes(x, inv32, zp, lo, hi, rounding, thr32, out, b0, b1)
        elif mode == 0 and fast_codes:
            redo = _affine_fast_codes(x, inv, zp, lo, hi, rounding, out, b0, b1)
        elif mode == 1 and fast:
            flag = 0
            for i in range(np.uint64(b0), np.uint64(b1)):
                v = np.float64(x[i]) * inv
                fq[i] = s * _round(min(max(v, lo), hi), rounding)
                if has_mask:
                    mask[i] = (v >= lo) & (v <= hi)
                flag |= np.int32(_near_jump(v, rounding, lo, hi, np.abs(v) * _REL + _ABS))
            redo = flag != 0
        if redo:
            if fast32:
                nan_at = _fast32_fix(x, s, inv32, zp, lo, hi, rounding, thr32, out, fq, mask,
                                     b0, b1)
            else:
                nan_at = _affine_exact(x, s, zp, lo, hi, rounding, out, fq, mask, has_mask, mode,
                                       b0, b1)
            if first_nan < 0:
                first_nan = nan_at
        b0 = b1
    return first_nan


@njit(cache=True)
def _affine_serial(x, scale, inv, inv32, thr32, is32, zero_point, qmin, qmax, rounding, out, fq,
                   mask, has_mask, mode):
    n_outer, n_ch, n_inner = x.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    ff = fq.reshape(-1)
    mf = mask.reshape(-1)
    first_nan = -1
    for a in range(n_outer):
        for c in range(n_ch):
            zp = zero_point[c]
            base = (a * n_ch + c) * n_inner
            nan_at = _affine_run(xf, scale[c], inv[c], inv32[c], thr32[c], is32, zp,
                                 np.float64(qmin - zp),
                                 np.float64(qmax - zp), rounding, of, ff, mf, has_mask, mode,
                                 base, base + n_inner)
            if first_nan < 0:
                first_nan = nan_at
    return first_nan


@njit(cache=True, parallel=True)
def _affine_tensor_parallel(x, s, inv, inv32, thr32, is32, zp, qmin, qmax, rounding, out, fq,
                            mask, has_mask, mode):
    n = x.size
    lo = np.float64(qmin - zp)
    hi = np.float64(qmax - zp)
    items = (n + _CHUNK - 1) // _CHUNK
    nans = np.empty(items, dtype=np.int64)
    for c in prange(items):
        nans[c] = _affine_run(x, s, inv, inv32, thr32, is32, zp, lo, hi, rounding, out, fq, mask,
                              has_mask, mode, c * _CHUNK, min(n, (c + 1) * _CHUNK))
    for c in range(items):
        if nans[c] >= 0:
            return nans[c]
    return -1


def _affine(x, scale, zero_point, qmin, qmax, rounding, out, fq, mask, mode):
    """Run the affine kernel; returns the flat index of the first NaN of x (mode 0) or -1."""
    scale = np.ascontiguousarray(scale, dtype=np.float64).reshape(-1)
    zero_point = np.ascontiguousarray(zero_point, dtype=np.int64).reshape(-1)
    with np.errstate(divide="ignore", over="ignore"):
        inv = 1.0 / scale
        inv32 = inv.astype(np.float32)
    is32 = x.dtype == np.float32 and mode == 0
    if is32:
        thr32 = _f32_tolerance(scale, inv32, zero_point, int(qmin), int(qmax), int(rounding))
    else:
        thr32 = np.full(scale.size, -1.0, dtype=np.float32)
    has_mask = mask.size > 0
    if scale.size == 1 and _parallel(x.size):
        return int(_affine_tensor_parallel(
            x.reshape(-1), float(scale[0]), float(inv[0]), inv32[0], thr32[0], is32,
            int(zero_point[0]), int(qmin), int(qmax), int(rounding), out.reshape(-1),
            fq.reshape(-1), mask.reshape(-1), has_mask, mode))
    return int(_affine_serial(x, scale, inv, inv32, thr32, is32, zero_point, int(qmin),
                              int(qmax), int(rounding), out, fq, mask, has_mask, mode))


_DUMMY_CODES = np.zeros((1, 1, 1), dtype=np.int8)
_DUMMY_F64 = np.zeros((1, 1, 1), dtype=np.float64)
_DUMMY_MASK = np.zeros((0, 1, 1), dtype=np.bool_)


@_twin
def quantize_affine(x, scale, zero_point, qmin, qmax, rounding, out):
    """Numba twin of :func:`minscale.kernels._numpy.quantize_affine`.

    One pass, no temporaries, a multiplication by ``1 / scale`` per element with an exactness
    check that falls back to the division per block (see the module source): results equal the
    division-based reference bit for bit.
    """
    if x.size < QUANT_TWIN_MAX:
        return _ref.quantize_affine(x, scale, zero_point, qmin, qmax, rounding, out)
    _affine(x, scale, zero_point, qmin, qmax, rounding, out, _DUMMY_F64, _DUMMY_MASK, 0)
    return out


@_twin
def quantize_affine_checked(x, scale, zero_point, qmin, qmax, rounding, out):
    """Numba twin of :func:`minscale.kernels._numpy.quantize_affine_checked`.

    The NaN test costs nothing extra: NaN fails every exactness comparison of the fast loops, so
    its block goes to the division path, which records the first NaN's index.
    """
    if x.size < QUANT_TWIN_MAX:
        return _ref.quantize_affine_checked(x, scale, zero_point, qmin, qmax, rounding, out)
    return _affine(x, scale, zero_point, qmin, qmax, rounding, out, _DUMMY_F64, _DUMMY_MASK, 0)


@_twin
def fake_quantize(x, scale, zero_point, qmin, qmax, rounding, out, pass_mask):
    """Numba twin of :func:`minscale.kernels._numpy.fake_quantize`: one pass for both outputs."""
    mask = pass_mask.reshape(x.shape) if pass_mask.size else _DUMMY_MASK
    _affine(x, scale, zero_point, qmin, qmax, rounding, _DUMMY_CODES, out, mask, 1)
    return out


@njit(cache=True)
def _dequantize_affine_serial(q, scale, zero_point, out):
    n_outer, n_ch, n_inner = q.shape
    for a in range(n_outer):
        for c in range(n_ch):
            s = scale[c]
            zp = zero_point[c]
            for i in range(n_inner):
                out[a, c, i] = s * np.float64(np.int64(q[a, c, i]) - zp)


@njit(cache=True, parallel=True)
def _dequantize_affine_tensor_parallel(q, s, zp, out):
    n = q.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(np.uint64(c * _CHUNK), np.uint64(min(n, (c + 1) * _CHUNK))):
            out[i] = s * np.float64(np.int64(q[i]) - zp)


@_twin
def dequantize_affine(q, scale, zero_point, out):
    """Numba twin of :func:`minscale.kernels._numpy.dequantize_affine`."""
    if q.size < QUANT_TWIN_MAX:
        return _ref.dequantize_affine(q, scale, zero_point, out)
    scale = np.ascontiguousarray(scale, dtype=np.float64).reshape(-1)
    zero_point = np.ascontiguousarray(zero_point, dtype=np.int64).reshape(-1)
    if scale.size == 1 and _parallel(q.size):
        _dequantize_affine_tensor_parallel(q.reshape(-1), float(scale[0]), int(zero_point[0]),
                                           out.reshape(-1))
    else:
        _dequantize_affine_serial(q, scale, zero_point, out)
    return out


# --- integer matrix product and requantization ---------------------------------------------

@njit(cache=True)
def _center_rows(a, offset, out, rowsum, r0, r1):
    """out = float32(a - offset) for rows r0:r1, row sums into rowsum; returns max |a - offset|."""
    k = a.shape[1]
    amax = 0
    for i in range(np.uint64(r0), np.uint64(r1)):
        s = 0
        mx = 0
        for j in range(k):
            c = np.int64(a[i, j]) - offset
            out[i, j] = np.float32(c)
            s += c
            mx = max(mx, abs(c))
        rowsum[i] = s
        amax = max(amax, mx)
    return amax


@njit(cache=True)
def _center_cols(b, offset, out, colsum, r0, r1):
    """out = float32(b - offset) for rows r0:r1, column sums added into colsum; max |b - offset|."""
    m = b.shape[1]
    bmax = 0
    for i in range(np.uint64(r0), np.uint64(r1)):
        for j in range(m):
            c = np.int64(b[i, j]) - offset
            out[i, j] = np.float32(c)
            colsum[j] += c
            bmax = max(bmax, abs(c))
    return bmax


@njit(cache=True)
def _finish_acc(acc, rowsum, colsum, za, zb, k, out, r0, r1):
    """out = acc - za colsum - zb rowsum + k za zb (exact int64); False if out of int32."""
    ok = True
    m = acc.shape[1]
    for i in range(np.uint64(r0), np.uint64(r1)):
        rs = rowsum[i]
        for j in range(m):
            val = np.int64(acc[i, j]) - za * colsum[j] - zb[j] * rs + k * za * zb[j]
            ok &= (val >= -2147483648) & (val <= 2147483647)
            out[i, j] = val
    return ok


def _offset(dtype):
    return 128 if dtype == np.uint8 else 0


def int8_matmul(a, b, a_zero_point, b_zero_point, out):
    """Numba twin of :func:`minscale.kernels._numpy.int8_matmul`: float32 BLAS, exact in blocks.

    Notes
    -----
    Codes are first centred to signed values ``a' = a - o_a``, ``b' = b - o_b`` (o = 128 for
    uint8, 0 for int8), so ``|a'|, |b'| <= 128``, and the zero points move with them:
    ``za' = za - o_a``, ``zb' = zb - o_b``. The product is expanded (gemmlowp's offset trick):

        sum_k (a' - za')(b' - zb') = sum_k a'b' - za' colsum(b') - zb' rowsum(a') + k za' zb'

    The row and column sums are integers summed exactly in int64 while converting. ``sum_k a'b'``
    runs in float32 BLAS over blocks of ``kb = floor(2**24 / (A * B))`` columns of a', where A and
    B are the largest |a'| and |b'| present (so kb >= 1024 for 8-bit codes). Why it is exact:
    every product a'b' is an integer of magnitude <= A * B <= 2**24 / kb; a BLAS forms each
    output as a sum of the block's products in some order and grouping (OpenBLAS, MKL and BLIS
    all do; no mainstream sgemm uses a Strassen-type scheme), with or without fused
    multiply-add, so every partial sum is an integer of magnitude <= kb * A * B <= 2**24, and
    float32 represents every integer up to 2**24 exactly: no operation rounds. One block gives
    the exact sum in float32; several blocks are added in float64, exact below 2**53. The
    correction terms are then applied in int64 and the int32 range checked.
    """
    n, k = a.shape
    m = b.shape[1]
    oa, ob = _offset(a.dtype), _offset(b.dtype)
    za = int(a_zero_point) - oa
    zb = np.ascontiguousarray(b_zero_point, dtype=np.int64).reshape(-1) - ob
    a32 = np.empty((n, k), dtype=np.float32)
    b32 = np.empty((k, m), dtype=np.float32)
    rowsum = np.empty(n, dtype=np.int64)
    # Serial on purpose: right after (or before) a multi-threaded BLAS call, whose threads
    # spin-wait for a while, a Numba thread pool on the same 2 cores made the whole product
    # several times slower; the conversions are a few percent of the work.
    amax = _center_rows(a, oa, a32, rowsum, 0, n)
    colsum = np.zeros(m, dtype=np.int64)
    bmax = _center_cols(b, ob, b32, colsum, 0, k)
    kb = (1 << 24) // max(int(amax) * int(bmax), 1)
    if k <= kb:
        acc = np.matmul(a32, b32)
    else:
        acc = np.zeros((n, m), dtype=np.float64)
        part = np.empty((n, m), dtype=np.float32)
        for j0 in range(0, k, kb):
            np.matmul(a32[:, j0:j0 + kb], b32[j0:j0 + kb], out=part)
            acc += part
    return bool(_finish_acc(acc, rowsum, colsum, za, zb, k, out, 0, n))


int8_matmul = _twin(int8_matmul)


@njit(cache=True)
def _requantize_rows(acc, bias, m0, shift, zero_point, lower, upper, out, r0, r1):
    m = acc.shape[1]
    has_bias = bias.shape[0] > 0
    per_channel = m0.shape[0] > 1
    ok = True
    for i in range(np.uint64(r0), np.uint64(r1)):
        for j in range(m):
            c = j if per_channel else 0
            x = np.int64(acc[i, j])
            if has_bias:
                x += np.int64(bias[j])
            sh = shift[c]
            left = sh if sh > 0 else 0
            right = -sh if sh < 0 else 0
            s = x << left
            if x < -2147483648 or x > 2147483647 or s < -2147483648 or s > 2147483647:
                ok = False
                s = 0
            ab = s * m0[c]
            nb = ab + (1073741824 if ab >= 0 else 1 - 1073741824)
            h = (nb >> 31) if nb >= 0 else -((-nb) >> 31)
            mask = (np.int64(1) << right) - 1
            r = (h >> right) + (1 if (h & mask) > (mask >> 1) + (1 if h < 0 else 0) else 0)
            r += zero_point
            out[i, j] = min(max(r, lower), upper)
    return ok


@njit(cache=True, parallel=True)
def _requantize_parallel(acc, bias, m0, shift, zero_point, lower, upper, out):
    n = acc.shape[0]
    rows = max(1, _CHUNK // max(1, acc.shape[1]))
    items = (n + rows - 1) // rows
    oks = np.ones(items, dtype=np.bool_)
    for c in prange(items):
        oks[c] = _requantize_rows(acc, bias, m0, shift, zero_point, lower, upper, out, c * rows,
                                  min(n, (c + 1) * rows))
    return oks.all()


@_twin
def requantize(acc, bias, quantized_multiplier, shift, zero_point, lower, upper, out):
    """Numba twin of :func:`minscale.kernels._numpy.requantize`: one pass, int64 arithmetic."""
    m0 = np.ascontiguousarray(quantized_multiplier, dtype=np.int64).reshape(-1)
    sh = np.ascontiguousarray(shift, dtype=np.int64).reshape(-1)
    args = (acc, bias, m0, sh, int(zero_point), int(lower), int(upper), out)
    if _parallel(acc.size):
        return bool(_requantize_parallel(*args))
    return bool(_requantize_rows(*args, 0, acc.shape[0]))


# --- integer dense with pre-packed weights -------------------------------------------------
#
# A quantized model multiplies the same weight matrix by every batch: int8_matmul converted it
# to float32 (and summed its columns) on every call, about as much work as converting the
# activations, and requantized in a second pass over an int32 matrix. Here the weights are
# packed once (pack_int8_weights: float32 of b - zb, exact), each call converts only the
# activations, runs one float32 GEMM and then one pass from the float32 sums to the output codes
# (zero-point correction, bias, requantization, clamp).

PackedWeights = _ref.PackedWeights
#: packing is done once per weight matrix; the NumPy reference is the implementation for both
pack_int8_weights = _ref.pack_int8_weights


@njit(cache=True)
def _activations_f32(a, offset, out):
    """out = float32(a - offset), elementwise over the flattened arrays (exact, vectorized)."""
    af = a.reshape(-1)
    of = out.reshape(-1)
    off = np.float32(offset)
    for i in range(np.uint64(0), np.uint64(af.size)):
        of[i] = np.float32(af[i]) - off


def _packed_product(a, packed, a_zero_point):
    """The float32 GEMM of the centred activations by the pack, exact (see int8_matmul_packed).

    Returns (acc, colterm, amax): acc float32 (one block) or float64 (block sums), the int64
    column correction ``-(za - o_a) * colsum`` to add to it, and max |a - o_a|.
    """
    n, k = a.shape
    oa = _offset(a.dtype)
    za = int(a_zero_point) - oa
    a32 = np.empty((n, k), dtype=np.float32)
    _activations_f32(a, oa, a32)
    amax = max(abs(int(a.min()) - oa), abs(int(a.max()) - oa)) if a.size else 0
    kb = (1 << 24) // max(amax * packed.wmax, 1)
    colterm = -za * packed.colsum
    if k <= kb:
        return np.matmul(a32, packed.w), colterm, amax
    m = packed.w.shape[1]
    acc = np.zeros((n, m), dtype=np.float64)
    part = np.empty((n, m), dtype=np.float32)
    for j0 in range(0, k, kb):
        np.matmul(a32[:, j0:j0 + kb], packed.w[j0:j0 + kb], out=part)
        acc += part
    return acc, colterm, amax


def int8_matmul_packed(a, packed, a_zero_point, out):
    """Numba twin of :func:`minscale.kernels._numpy.int8_matmul_packed`: float32 BLAS, exact.

    Notes
    -----
    With ``a' = a - o_a`` (o_a = 128 for uint8, 0 for int8) and ``w = b - zb`` from the pack,
    ``sum_k (a - za) w = sum_k a' w - (za - o_a) colsum(w)``. ``sum_k a' w`` runs in float32
    BLAS over blocks of ``kb = floor(2**24 / (A * W))`` columns, A = max |a'| <= 128 and
    W = max |w| <= 255 (``packed.wmax``). Exact by the argument of :func:`int8_matmul`: every
    product is an integer of magnitude <= A * W, every partial sum of a block, in any order or
    grouping, with or without fused multiply-add, an integer of magnitude <= kb * A * W <= 2**24,
    which float32 represents exactly; blocks are added in float64, exact below 2**53. For
    symmetric int8 weights (W <= 128) kb >= 1024, so a 1024-wide layer is one GEMM call. The
    correction is applied in int64 and the int32 range checked.
    """
    acc, colterm, _ = _packed_product(a, packed, a_zero_point)
    zeros = np.zeros(max(a.shape[0], colterm.size), dtype=np.int64)
    return bool(_finish_acc(acc, zeros, colterm, -1, zeros[:colterm.size], 0, out, 0,
                            a.shape[0]))


int8_matmul_packed = _twin(int8_matmul_packed)


@njit(cache=True)
def _dense_requantize(acc, cb, m0, left, right, zero_point, lower, upper, out):
    """Output codes from one float32 block of sums: + correction and bias, requantize, clamp.

    Runs only when the caller has proven that no int32 range check can fail (see
    :func:`int8_dense_packed`), so the loop has no checks: acc holds exact integers of
    magnitude <= 2**24 (one GEMM block, so the int32 conversion is exact and vectorizes),
    ``cb = colterm + bias`` per column (int64), m0 (int32), left and right (int64) per column.
    The arithmetic is :func:`_requantize_rows`' (gemmlowp SaturatingRoundingDoublingHighMul and
    RoundingDivideByPOT), with the truncating division by 2**31 written as
    ``(nb + ((nb >> 63) & (2**31 - 1))) >> 31`` and the int32 casts that let LLVM use 32 x 32
    -> 64-bit multiplies; flat indices over unsigned ranges so the loop vectorizes.
    """
    n, m = acc.shape
    af = acc.reshape(-1)
    of = out.reshape(-1)
    for i in range(n):
        base = i * m
        for j in range(np.uint64(0), np.uint64(m)):
            x = np.int64(np.int32(af[base + j])) + cb[j]
            sh = np.int64(np.int32(x << left[j]))
            ab = sh * np.int64(m0[j])
            nb = ab + (1073741824 if ab >= 0 else -1073741823)
            nb = nb + ((nb >> 63) & 2147483647)
            h = np.int64(np.int32(nb >> 31))
            rt = right[j]
            mask = (np.int64(1) << rt) - 1
            r = (h >> rt) + (1 if (h & mask) > (mask >> 1) + (1 if h < 0 else 0) else 0)
            r += zero_point
            of[base + j] = min(max(r, lower), upper)


def int8_dense_packed(a, packed, a_zero_point, bias, quantized_multiplier, shift, zero_point,
                      lower, upper, out):
    """Numba twin of :func:`minscale.kernels._numpy.int8_dense_packed`.

    One float32 GEMM (exact, see :func:`int8_matmul_packed`) and one unchecked pass from its
    sums to the output codes, when a bound proves no check can fail: every GEMM sum has
    magnitude <= B = k * A * W (A = max |a - o_a|, W = packed.wmax), so with
    C1 = max |colterm| and C2 = max |colterm + bias| the accumulator, ``acc + bias`` and its left
    shift stay in int32 if B + C1 and (B + C2) * 2**max(left) are <= 2**31 - 1 (Python
    integers, exact). Otherwise, and for layers too deep for one float32 block, the checked
    kernels run in turn.
    """
    n, k = a.shape
    m = out.shape[1]
    m0 = np.ascontiguousarray(quantized_multiplier, dtype=np.int64).reshape(-1)
    sh = np.ascontiguousarray(shift, dtype=np.int64).reshape(-1)
    if m0.size != m:
        m0, sh = np.full(m, m0[0], dtype=np.int64), np.full(m, sh[0], dtype=np.int64)
    acc, colterm, amax = _packed_product(a, packed, a_zero_point)
    cb = colterm + bias.astype(np.int64) if bias.size else colterm
    if acc.dtype == np.float32 and n and m:
        bound = k * amax * packed.wmax
        c1 = int(np.abs(colterm).max())
        c2 = int(np.abs(cb).max())
        left = np.maximum(sh, 0)
        if bound + c1 <= 2**31 - 1 and (bound + c2) << int(left.max()) <= 2**31 - 1:
            _dense_requantize(acc, cb, m0.astype(np.int32), left, np.maximum(-sh, 0),
                              int(zero_point), int(lower), int(upper), out)
            return True
    acc32 = np.empty((n, m), dtype=np.int32)
    zeros = np.zeros(max(n, m), dtype=np.int64)
    if not _finish_acc(acc, zeros, colterm, -1, zeros[:m], 0, acc32, 0, n):
        return False
    return bool(_requantize_rows(acc32, bias, m0, sh, int(zero_point), int(lower), int(upper),
                                 out, 0, n))


int8_dense_packed = _twin(int8_dense_packed)


# --- masks ---------------------------------------------------------------------------------

@njit(cache=True)
def _count_zeros_serial(mask, start):
    total = start
    for i in range(mask.size):
        total += 0 if mask[i] else 1
    return total


@njit(cache=True, parallel=True)
def _count_zeros_parallel(mask, start):
    # `start` seeds the reduction once; Numba gives each thread the identity 0 and adds the
    # partial counts to it (tests check this for 1 and 2 threads)
    total = start
    for i in prange(mask.size):
        total += 0 if mask[i] else 1
    return total


@_twin
def count_zeros(mask, start):
    """Numba twin of :func:`minscale.kernels._numpy.count_zeros` (a parallel reduction)."""
    flat = mask.reshape(-1)
    body = _count_zeros_parallel if _parallel(flat.size) else _count_zeros_serial
    return int(body(flat, np.int64(start)))


# Magnitude-threshold selection by radix select on order-preserving integer keys. A float's
# bits read as a signed integer b order the non-negative floats; negative floats are mapped to
# b ^ INT_MAX so that every float orders as its key (-0.0 just below +0.0, both found equal by the
# final float comparisons). Pass 1 histograms the top 16 key bits over all n scores (per thread,
# then summed), the bucket holding rank k - 1 is gathered, and 16 more bits are resolved per pass
# on the gathered candidates. It is the fallback of the sampling select in kth_smallest.

@njit(cache=True, inline="always")
def _key32(bits):
    k = np.int64(bits)
    return k ^ 0x7FFFFFFF if k < 0 else k


@njit(cache=True, inline="always")
def _key64(bits):
    return bits ^ 0x7FFFFFFFFFFFFFFF if bits < 0 else bits


@njit(cache=True, parallel=True)
def _top_histogram(bits, wide, n_threads):
    n = bits.size
    shift = 48 if wide else 16
    per = (n + n_threads - 1) // n_threads
    hist = np.zeros((n_threads, 65536), dtype=np.int64)
    for t in prange(n_threads):
        h = hist[t]
        for i in range(np.uint64(t * per), np.uint64(min(n, (t + 1) * per))):
            key = _key64(np.int64(bits[i])) if wide else _key32(bits[i])
            h[(key >> shift) + 32768] += 1
    return hist.sum(axis=0)


@njit(cache=True)
def _gather_bucket(bits, wide, bucket, count):
    shift = 48 if wide else 16
    out = np.empty(count, dtype=np.int64)
    j = 0
    for i in range(bits.size):
        key = _key64(np.int64(bits[i])) if wide else _key32(bits[i])
        if (key >> shift) + 32768 == bucket:
            out[j] = key
            j += 1
    return out


@njit(cache=True)
def _select_key(keys, rank, shift):
    """The key of rank `rank` (0-based) among `keys`, resolving 16 bits below `shift` per pass."""
    while shift > 0:
        shift -= 16
        hist = np.zeros(65536, dtype=np.int64)
        for i in range(keys.size):
            hist[(keys[i] >> shift) & 0xFFFF] += 1
        acc = 0
        bucket = 0
        for bkt in range(65536):
            if acc + hist[bkt] > rank:
                bucket = bkt
                break
            acc += hist[bkt]
        rank -= acc
        kept = np.empty(hist[bucket], dtype=np.int64)
        j = 0
        for i in range(keys.size):
            if (keys[i] >> shift) & 0xFFFF == bucket:
                kept[j] = keys[i]
                j += 1
        keys = kept
    return keys[0]


@njit(cache=True, parallel=True)
def _mark_above(scores, threshold, keep, ties):
    """keep = scores > threshold; per chunk, ties[c] = #(== threshold); returns #(> threshold)."""
    n = scores.size
    above = 0
    for c in prange(ties.size):
        t = 0
        a = 0
        for i in range(np.uint64(c * _CHUNK), np.uint64(min(n, (c + 1) * _CHUNK))):
            v = scores[i]
            gt = v > threshold
            keep[i] = gt
            a += np.int64(gt)
            t += np.int64(v == threshold)
        ties[c] = t
        above += a
    return above


@njit(cache=True)
def _prune_ties(scores, threshold, keep, ties, n_prune):
    """Prune the first n_prune scores equal to threshold (index order); keep the other ties."""
    n = scores.size
    left = n_prune
    for c in range(ties.size):
        if ties[c] == 0:
            continue
        for i in range(np.uint64(c * _CHUNK), np.uint64(min(n, (c + 1) * _CHUNK))):
            if scores[i] == threshold:
                if left > 0:
                    left -= 1
                else:
                    keep[i] = True


@njit(cache=True, parallel=True)
def _count_window(scores, lo, hi, below, inside):
    """Per chunk c: below[c] = #(scores < lo), inside[c] = #(lo <= scores <= hi); vectorized."""
    n = scores.size
    for c in prange(below.size):
        b = 0
        w = 0
        for i in range(np.uint64(c * _CHUNK), np.uint64(min(n, (c + 1) * _CHUNK))):
            v = scores[i]
            b += np.int64(v < lo)
            w += np.int64((v >= lo) & (v <= hi))
        below[c] = b
        inside[c] = w


@njit(cache=True, parallel=True)
def _gather_window(scores, lo, hi, inside, offsets, out):
    """Copy the scores in [lo, hi] of chunk c to out[offsets[c]:], in index order.

    Every score is stored and the write position advances only past those inside the window:
    a branch-free loop, several times faster than a branch taken for 2 % of the scores. Chunk
    c's region has inside[c] + 1 slots, the last one taking the final discarded store.
    """
    n = scores.size
    for c in prange(inside.size):
        j = offsets[c]
        for i in range(np.uint64(c * _CHUNK), np.uint64(min(n, (c + 1) * _CHUNK))):
            v = scores[i]
            out[j] = v
            j += np.int64((v >= lo) & (v <= hi))


@njit(cache=True)
def _compact_regions(padded, inside, offsets, out):
    j = 0
    for c in range(inside.size):
        o = offsets[c]
        for i in range(inside[c]):
            out[j] = padded[o + i]
            j += 1


_SAMPLE = 1 << 16


def _radix_kth(scores, k):
    wide = scores.dtype == np.float64
    bits = scores.view(np.int64 if wide else np.int32)
    hist = _top_histogram(bits, wide, max(1, min(numba.get_num_threads(), bits.size // _CHUNK)))
    cum = np.cumsum(hist)
    bucket = int(np.searchsorted(cum, k, side="right"))
    below = int(cum[bucket - 1]) if bucket else 0
    keys = _gather_bucket(bits, wide, bucket, int(hist[bucket]))
    key = int(_select_key(keys, k - below, 48 if wide else 16))
    if key < 0:
        key ^= 0x7FFFFFFFFFFFFFFF if wide else 0x7FFFFFFF
    return np.array([key], dtype=np.int64 if wide else np.int32).view(scores.dtype)[0]


def kth_smallest(scores, k):
    """The value ``np.partition(scores, k)[k]``: sampling select, radix select as fallback.

    Parameters
    ----------
    scores : float32 or float64 ndarray, shape (n,), C-contiguous, no NaN
    k : int, in [0, n)

    Returns
    -------
    value : scalar of scores' dtype
        Equal (as a number) to the k-th smallest score; -0.0 and 0.0 count as one value.

    Notes
    -----
    Floyd & Rivest's idea (CACM 18(3), 1975): the order statistics of an evenly strided sample
    of m = 65536 scores bracket the target rank p = k / n: with d = 2.5 sqrt(m) + 2 sample
    ranks either side (five standard deviations of a sample rank), ``lo`` and ``hi`` contain
    the answer unless the data are adversarially periodic. One pass counts the scores below
    ``lo`` and in ``[lo, hi]`` (vectorized), a second copies those in ``[lo, hi]`` (about 2 %
    of them); if the rank k falls among the copies, ``np.partition`` of the copies gives the
    exact answer. Otherwise (or if the window holds more than n / 8 scores) an exact radix select on order-preserving integer keys runs instead:
    a histogram of the top 16 key bits, then 16 more bits per pass over the bucket holding rank k.
    Either way the result is exact; only the time depends on the data.
    """
    n = scores.size
    if n <= 4 * _SAMPLE:
        return np.partition(scores, k)[k]
    stride = n // _SAMPLE
    sample = scores[: stride * _SAMPLE: stride].copy()
    m = sample.size
    pos = k * m / n
    d = int(2.5 * np.sqrt(m)) + 2
    ilo, ihi = max(0, int(pos) - d), min(m - 1, int(pos) + d + 1)
    part = np.partition(sample, [ilo, ihi])
    lo, hi = part[ilo], part[ihi]
    if ilo == 0:
        lo = scores.dtype.type(-np.inf)
    if ihi == m - 1:
        hi = scores.dtype.type(np.inf)
    items = _nchunks(n)
    below = np.empty(items, dtype=np.int64)
    inside = np.empty(items, dtype=np.int64)
    _count_window(scores, lo, hi, below, inside)
    n_below = int(below.sum())
    n_inside = int(inside.sum())
    if n_below <= k < n_below + n_inside and n_inside <= n // 8:
        offsets = np.zeros(items, dtype=np.int64)
        np.cumsum(inside[:-1] + 1, out=offsets[1:])
        padded = np.empty(n_inside + items, dtype=scores.dtype)
        _gather_window(scores, lo, hi, inside, offsets, padded)
        cands = np.empty(n_inside, dtype=scores.dtype)
        _compact_regions(padded, inside, offsets, cands)
        return np.partition(cands, k - n_below)[k - n_below]
    return _radix_kth(scores, k)


@_twin
def keep_all_but_smallest(scores, k, keep):
    """Numba twin of :func:`minscale.kernels._numpy.keep_all_but_smallest`.

    The threshold comes from :func:`kth_smallest` (radix select) instead of ``np.partition``;
    one parallel pass marks the scores above it and counts ties per chunk, and the ties are
    resolved in index order only in the chunks that hold some. Fewer than
    :data:`SELECT_TWIN_MAX` scores go to the NumPy twin, which is faster there.
    """
    n = scores.size
    if n < SELECT_TWIN_MAX:
        return _ref.keep_all_but_smallest(scores, k, keep)
    if k <= 0:
        keep[...] = True
        return keep
    if k >= n:
        keep[...] = False
        return keep
    threshold = kth_smallest(scores, k - 1)
    ties = np.zeros(_nchunks(n), dtype=np.int64)
    n_above = int(_mark_above(scores, threshold, keep, ties))
    n_ties = int(ties.sum())
    n_below = n - n_above - n_ties
    _prune_ties(scores, threshold, keep, ties, k - n_below)
    return keep


# --- integer-only fixed point ----------------------------------------------------------------

FIXED_ROUNDING_CODES = _ref.FIXED_ROUNDING_CODES


@njit(cache=True)
def _fixed_dense_rows(x, w, bias, shift, rounding, lower, upper, out):
    n, k = x.shape
    m = w.shape[1]
    s = min(shift, 62)
    left = min(-shift, 31)
    acc = np.empty(m, dtype=np.int64)
    for i in range(n):
        for j in range(m):
            acc[j] = bias[j] if bias.size else 0
        for t in range(k):
            xv = np.int64(x[i, t])
            if xv == 0:
                continue
            for j in range(m):
                acc[j] += xv * np.int64(w[t, j])
        for j in range(m):
            v = acc[j]
            if shift <= 0:
                v = min(max(v, -65536), 65536) << left
            elif rounding == 0:
                half = np.int64(1) << (s - 1)
                v = -((-v + half) >> s) if v < 0 else (v + half) >> s
            else:
                half = np.int64(1) << (s - 1)
                q = v >> s
                r = v - (q << s)
                v = q + 1 if (r > half or (r == half and (q & 1) == 1)) else q
            out[i, j] = min(max(v, lower), upper)


@_twin
def fixed_dense(x, w, bias, shift, rounding, lower, upper, out):
    """Numba twin of :func:`minscale.kernels._numpy.fixed_dense`: int64 loops, no BLAS."""
    _fixed_dense_rows(x, w, bias, int(shift), int(rounding), int(lower), int(upper), out)
