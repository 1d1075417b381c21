"""The per-element rules of the Numba backend: one compiled definition of each.

Both the Numba kernels (:mod:`minscale.kernels._numba`, which split arrays across threads) and
the compiled epoch loop (:mod:`minscale.kernels._fastfit`) call these functions, so each
activation and optimizer formula has one NumPy form (:mod:`minscale.kernels._numpy`, where the
formulas and their sources are stated) and one compiled form, here. Every function works on a
sub-range (rows ``r0:r1`` or elements ``lo:hi``) so a parallel caller can hand out chunks.

No ``fastmath``: no reassociation and no FMA contraction, so every element rounds as NumPy's
arithmetic does. Loops over a sub-range index with ``np.uint64``: Numba must otherwise allow
for negative indices (Python wrap-around), which blocks vectorization and made these loops
3-5x slower.

Numba does not notice when a cached caller's callee in another file changes: after editing
this file, delete ``minscale/kernels/__pycache__/*.nbi`` and ``*.nbc``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["bias_act_rows", "act_backward_range", "sgd_range", "momentum_range", "adam_range"]


@njit(cache=True)
def bias_act_rows(z, b, act, alpha, one, r0, r1):
    """``z[r0:r1] <- act(z[r0:r1] + b)``, in place, row by row.

    The per-element rule of :func:`minscale.kernels._numpy.bias_act` (formula, activation
    codes and the overflow-free sigmoid are stated there): first ``z + b`` rounded to the
    dtype, then the activation, as the NumPy twin does in two passes.

    Parameters
    ----------
    z : ndarray, shape (n, d), float32 or float64
    b : ndarray, shape (d,) or (0,), dtype of `z`
        An empty bias adds nothing.
    act : int
        Activation code (0 identity, 1 relu, 2 leaky_relu, 3 tanh, 4 sigmoid).
    alpha, one : scalars of the dtype of `z`
        leaky_relu slope, and 1 (its type fixes the arithmetic's dtype).
    r0, r1 : int, 0 <= r0 <= r1 <= n
        The rows to transform.
    """
    d = z.shape[1]
    has_b = b.shape[0] > 0
    for i in range(np.uint64(r0), np.uint64(r1)):
        row = z[i]
        if has_b:
            for j in range(d):
                row[j] = row[j] + b[j]
        if act == 1:
            for j in range(d):
                # max(z, 0) as np.maximum: NaN propagates
                v = row[j]
                row[j] = v if (v >= 0 or v != v) else one - one
        elif act == 2:
            for j in range(d):
                v = row[j]
                row[j] = v * (one if v > 0 else alpha)
        elif act == 3:
            for j in range(d):
                row[j] = np.tanh(row[j])
        elif act == 4:
            for j in range(d):
                v = row[j]
                e = np.exp(-np.abs(v))
                row[j] = (one if v >= 0 else e) / (one + e)


@njit(cache=True)
def act_backward_range(a, da, act, alpha, one, out, lo, hi):
    """``out[lo:hi] <- da[lo:hi] * act'(a[lo:hi])`` on flat arrays (`out` may be `da`).

    The per-element rule of :func:`minscale.kernels._numpy.act_backward` (derivatives in
    terms of the activation output, stated there).

    Parameters
    ----------
    a, da, out : ndarray, shape (N,), one float dtype, contiguous
        Activation output, dL/da, and the receiver of dL/dz.
    act : int
        Activation code.
    alpha, one : scalars of the dtype
    lo, hi : int, 0 <= lo <= hi <= N
    """
    if act == 0:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = da[i]
    elif act == 1:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = da[i] * (one if a[i] > 0 else one - one)
    elif act == 2:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = da[i] * (one if a[i] > 0 else alpha)
    elif act == 3:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = da[i] * (one - a[i] * a[i])
    elif act == 4:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = da[i] * (a[i] * (one - a[i]))


@njit(cache=True)
def sgd_range(theta, grad, lr, mask, has_mask, one, lo, hi):
    """One plain SGD update of ``theta[lo:hi]``, in place, masked.

    The per-element rule of :func:`minscale.kernels._numpy.sgd_update`:
    ``theta <- theta - lr * g``, and with a mask ``g <- g * m``, ``theta <- (theta - lr g) m``.

    Parameters
    ----------
    theta, grad : ndarray, shape (P,), one float dtype
        `grad` is zeroed where the mask is False.
    lr, one : scalars of the dtype
    mask : ndarray of bool, shape (P,) or (0,)
    has_mask : bool
        Whether `mask` applies.
    lo, hi : int, 0 <= lo <= hi <= P
    """
    zero = one - one
    if has_mask:
        for i in range(np.uint64(lo), np.uint64(hi)):
            mk = one if mask[i] else zero
            g = grad[i] * mk
            grad[i] = g
            theta[i] = (theta[i] - lr * g) * mk
    else:
        for i in range(np.uint64(lo), np.uint64(hi)):
            theta[i] = theta[i] - lr * grad[i]


@njit(cache=True)
def momentum_range(theta, grad, velocity, lr, momentum, nesterov, mask, has_mask, one, lo, hi):
    """One SGD-with-momentum update of ``theta[lo:hi]`` (heavy ball or Nesterov), in place.

    The per-element rule of :func:`minscale.kernels._numpy.momentum_update` (``torch.optim.SGD``
    with dampening 0): ``v <- momentum v + g``; ``theta <- theta - lr (g + momentum v)``
    (Nesterov) or ``theta - lr v``; masked entries of g, v and theta become 0.

    Parameters
    ----------
    theta, grad, velocity : ndarray, shape (P,), one float dtype
    lr, momentum, one : scalars of the dtype
    nesterov, has_mask : bool
    mask : ndarray of bool, shape (P,) or (0,)
    lo, hi : int, 0 <= lo <= hi <= P
    """
    zero = one - one
    for i in range(np.uint64(lo), np.uint64(hi)):
        mk = one
        g = grad[i]
        if has_mask:
            mk = one if mask[i] else zero
            g = g * mk
            grad[i] = g
        v = velocity[i] * momentum + g
        if nesterov:
            t = theta[i] - lr * (g + momentum * v)
        else:
            t = theta[i] - lr * v
        if has_mask:
            v = v * mk
            t = t * mk
        velocity[i] = v
        theta[i] = t


@njit(cache=True)
def adam_range(theta, grad, m, v, step_size, beta_1, c1, beta_2, c2, sqrt_bc2, epsilon, mask,
                has_mask, one, lo, hi):
    """One Adam update of ``theta[lo:hi]``, in place, masked.

    The per-element rule of :func:`minscale.kernels._numpy.adam_update` (Kingma & Ba 2015,
    Alg. 1, epsilon as ``torch.optim.Adam``): ``m <- b1 m + c1 g``, ``v <- b2 v + c2 g^2``,
    ``theta <- theta - step_size * m / (sqrt(v) / sqrt_bc2 + epsilon)``.

    Parameters
    ----------
    theta, grad, m, v : ndarray, shape (P,), one float dtype
    step_size : scalar of the dtype
        ``lr / (1 - beta_1 ** t)``.
    beta_1, c1, beta_2, c2 : scalars of the dtype
        The betas and ``1 - beta`` (rounded as the caller's ``adam_constants``).
    sqrt_bc2 : scalar of the dtype
        ``sqrt(1 - beta_2 ** t)``.
    epsilon, one : scalars of the dtype
    mask : ndarray of bool, shape (P,) or (0,)
    has_mask : bool
    lo, hi : int, 0 <= lo <= hi <= P
    """
    zero = one - one
    for i in range(np.uint64(lo), np.uint64(hi)):
        mk = one
        g = grad[i]
        if has_mask:
            mk = one if mask[i] else zero
            g = g * mk
            grad[i] = g
        mi = m[i] * beta_1 + c1 * g
        vi = v[i] * beta_2 + c2 * (g * g)
        denom = np.sqrt(vi) / sqrt_bc2 + epsilon
        t = theta[i] - step_size * (mi / denom)
        if has_mask:
            mi = mi * mk
            vi = vi * mk
            t = t * mk
        m[i] = mi
        v[i] = vi
        theta[i] = t
