"""Scaling with model size: counted training FLOPs and a robust power-law fit of loss vs size.

Pure functions, numbers in, numbers out (no model is trained here; the width and depth runs
are :mod:`minscale.study.width_depth`). The fitted law is the saturating power law of the
scaling-law literature, ``L(N) = c + a * N**(-alpha)`` over the parameter count ``N``
(Hestness et al. 2017, "Deep Learning Scaling is Predictable, Empirically"; Kaplan et al.
2020, "Scaling Laws for Neural Language Models", eq. 1.1 with the irreducible term of
Henighan et al. 2020); ``docs/study.md`` derives the fit and its bootstrap.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_int, check_real

__all__ = ["training_flops_per_sample", "power_law", "fit_power_law", "HUBER_DELTA"]

#: Huber threshold of the fit, in natural-log units of the loss: residuals up to 0.1
#: (about 10 % relative error) count quadratically, larger ones linearly.
HUBER_DELTA = 0.1

#: points of the first grid over the asymptote c in [0, min(L))
_GRID = 32
#: rounds of refinement of the grid over c, and the points of each refined grid
_LEVELS, _FINE = 10, 13
#: bootstrap resamples fitted together
_CHUNK = 250


def training_flops_per_sample(layer_sizes):
    """Floating-point operations to train an MLP on one sample (forward and backward).

    Parameters
    ----------
    layer_sizes : sequence of int, length >= 2, each >= 1
        ``[d_in, h_1, ..., h_k, d_out]``: input width, hidden widths, output width of a
        Sequential of Dense layers with an activation on every hidden layer and a linear
        output (the study's MLP).

    Returns
    -------
    int
        ``3 * forward`` with ``forward = sum_l (2 * in_l * out_l + out_l) + sum_hidden h``.

    Raises
    ------
    ValueError, TypeError
        Fewer than two sizes, or a size that is not an integer >= 1 (naming ``layer_sizes[i]``).

    Notes
    -----
    What is counted, per sample: each Dense layer ``in -> out`` costs ``in * out``
    multiply-adds (2 FLOPs each) and ``out`` bias additions; each hidden activation (ReLU)
    one operation per unit; the linear output layer none. The backward pass is counted as
    twice the forward one (one matrix product for the weight gradient, one for the input
    gradient), so training = 3 x forward; this is the ``C = 6 N`` per sample of Kaplan et al.
    2020 (section 2.1) plus the bias and activation terms. Not counted: the loss and its
    gradient (``3 * d_out``), the optimizer update (per batch, not per sample) and data
    movement.

    Examples
    --------
    >>> training_flops_per_sample([64, 32, 10])   # forward 4096 + 32 + 32 + 640 + 10 = 4810
    14430
    """
    if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {layer_sizes!r}")
    sizes = [check_int(f"layer_sizes[{i}]", s, 1) for i, s in enumerate(layer_sizes)]
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes must hold at least an input and an output width, got "
                         f"{sizes}")
    forward = sum(2 * i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    forward += sum(sizes[1:-1])
    return 3 * forward


def power_law(n, c, a, alpha):
    """``c + a * n**(-alpha)``, the law :func:`fit_power_law` fits.

    Parameters
    ----------
    n : float or ndarray
        Parameter counts, > 0.
    c, a, alpha : float
        Asymptote, scale and exponent.

    Returns
    -------
    float or ndarray
        Shaped like `n`.

    Examples
    --------
    >>> power_law(100.0, 0.1, 2.0, 0.5)
    0.30000000000000004
    """
    return c + a * np.asarray(n, dtype=float) ** (-alpha)


def _check_points(n_params, losses):
    try:
        n = np.asarray(n_params, dtype=float)
        y = np.asarray(losses, dtype=float)
    except (TypeError, ValueError):
        raise TypeError("n_params and losses must be sequences of real numbers") from None
    if n.ndim != 1 or y.ndim != 1:
        raise ValueError(f"n_params and losses must be 1-D, got shapes {n.shape} and {y.shape}")
    if n.shape != y.shape:
        raise ValueError(f"n_params and losses must have the same length, got {n.size} and "
                         f"{y.size}")
    if not (np.isfinite(n).all() and np.isfinite(y).all()):
        raise ValueError("n_params and losses must be finite")
    if (n <= 0).any() or (y <= 0).any():
        raise ValueError(f"n_params and losses must be > 0 (a log-space fit), got "
                         f"n_params {n.tolist()} and losses {y.tolist()}")
    if np.unique(n).size < 3:
        raise ValueError(f"fit_power_law needs at least 3 distinct n_params (three unknowns c, "
                         f"a, alpha), got {np.unique(n).tolist()}")
    return n, y


def _huber_rho(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _huber_lines(x, Z, delta, iterations=12):
    """Huber line fits ``Z[..., j, :] ~ b0 + b1 * x`` along the last axis, by IRLS.

    x has shape (..., 1, n) and Z (..., g, n); returns b0, b1 of shape (..., g).
    """
    w = np.ones_like(Z)
    for _ in range(iterations):
        sw = w.sum(axis=-1)
        mx = (w * x).sum(axis=-1) / sw
        mz = (w * Z).sum(axis=-1) / sw
        dx = x - mx[..., None]
        b1 = (w * dx * (Z - mz[..., None])).sum(axis=-1) / (w * dx * dx).sum(axis=-1)
        b0 = mz - b1 * mx
        r = np.abs(Z - b0[..., None] - b1[..., None] * x)
        w = np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-300))
    return b0, b1


def _profile(x, y, cs, delta):
    """For each candidate c (shape (B, g)): line fit, then the Huber loss of log L."""
    with np.errstate(divide="ignore", invalid="ignore"):
        Z = np.log(y[:, None, :] - cs[..., None])
        b0, b1 = _huber_lines(x[:, None, :], Z, delta)
        pred = np.log(cs[..., None] + np.exp(b0[..., None] + b1[..., None] * x[:, None, :]))
        cost = _huber_rho(np.log(y)[:, None, :] - pred, delta).sum(axis=-1)
    return np.where(np.isfinite(cost), cost, np.inf), b0, b1


def _fit_batch(n, y, delta):
    """(c, a, alpha), each shape (B,), of B data sets (rows of `n` and `y`, shape (B, m)).

    A grid of _GRID values of c in [0, min L) (denser towards min L), then _LEVELS rounds of
    a finer grid between the neighbours of the best point.
    """
    x = np.log(n)
    ymin = y.min(axis=1)
    u = np.concatenate([[0.0], 1.0 - np.geomspace(1.0, 1e-3, _GRID)[1:]])
    cs = ymin[:, None] * u[None, :]
    rows = np.arange(n.shape[0])
    for level in range(_LEVELS + 1):
        cost, b0, b1 = _profile(x, y, cs, delta)
        j = np.argmin(cost, axis=1)
        best_c, best_b0, best_b1 = cs[rows, j], b0[rows, j], b1[rows, j]
        if level == _LEVELS:
            break
        lo = cs[rows, np.maximum(j - 1, 0)]
        hi = np.where(j + 1 < cs.shape[1], cs[rows, np.minimum(j + 1, cs.shape[1] - 1)],
                      ymin)
        # stay strictly below min L, where log(L - c) is finite
        hi = np.minimum(hi, ymin * (1 - 1e-15))
        cs = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, _FINE)[None, :]
    return best_c, np.exp(best_b0), -best_b1


def fit_power_law(n_params, losses, n_bootstrap=1000, seed=0, delta=HUBER_DELTA):
    """Fit ``L(N) = c + a * N**(-alpha)`` robustly in log space, with a bootstrap for alpha.

    Parameters
    ----------
    n_params : sequence of float, length n >= 3, each > 0
        Parameter counts N (at least 3 distinct values).
    losses : sequence of float, length n, each > 0
        The loss at each N (e.g. the mean over seeds).
    n_bootstrap : int, >= 0, default 1000
        Bootstrap resamples of the points (0: no interval).
    seed : int, >= 0, default 0
        Seed of the resampling (``numpy.random.default_rng``): same inputs, same interval.
    delta : float, > 0, default :data:`HUBER_DELTA` (0.1)
        Huber threshold, in natural-log units of the loss.

    Returns
    -------
    dict
        JSON-ready: ``c``, ``a``, ``alpha`` (floats), ``alpha_ci95`` ([low, high], the 2.5 and
        97.5 percentiles of the bootstrap alphas, or [None, None] without resamples),
        ``n_points``, ``n_bootstrap`` (asked), ``bootstrap_used`` (resamples with at least 3
        distinct N, the others are skipped), ``rmse_log`` (root mean square of the log
        residuals ``log L - log L_fit``), ``delta`` and ``method`` (a sentence).

    Raises
    ------
    ValueError
        Lengths differ, a value is non-finite or <= 0, or fewer than 3 distinct `n_params`;
        a count or `delta` out of range.
    TypeError
        Non-numeric input.

    Notes
    -----
Residuals are taken in log space, ``r_i = log L_i - log(c + a * N_i**(-alpha))``, so every
    point weighs by its relative error whatever its size, and their Huber loss (quadratic up
    to `delta`, linear beyond) bounds the pull of an outlier. c is profiled: for a given c,
    ``log(L - c) = log a - alpha * log N`` is a line, and a Huber line fit (iteratively
    reweighted least squares, 12 rounds) gives a and alpha; the c whose fit has the smallest
    Huber loss of the r_i wins. c is searched on a grid of 32 values in [0, min L) (denser
    towards min L), then 10 times on a grid of 13 points between the best point's
    neighbours (each round 6 times finer), so to about 2e-8 of the first spacing.
    On noiseless data from the law the residuals vanish at the true c, and the fit returns
    c, a and alpha to rounding. The interval: resample the n points with replacement
    `n_bootstrap` times, refit, take the 2.5 and 97.5 percentiles of alpha (percentile
    bootstrap; Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13).
    With few points it is wide, as it should be.

    Examples
    --------
    >>> n = [100, 400, 1600, 6400]
    >>> fit = fit_power_law(n, [0.1 + 2.0 * v ** -0.5 for v in n], n_bootstrap=0)
    >>> round(fit["alpha"], 6), round(fit["c"], 6), round(fit["a"], 6)
    (0.5, 0.1, 2.0)
    """
    n, y = _check_points(n_params, losses)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 0)
    seed = check_int("seed", seed, 0)
    delta = check_real("delta", delta, lo=0.0, lo_open=True)
    c, a, alpha = (float(v[0]) for v in _fit_batch(n[None, :], y[None, :], delta))
    resid = np.log(y) - np.log(power_law(n, c, a, alpha))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n.size, (n_bootstrap, n.size))
    ns, ys = n[idx], y[idx]
    distinct = (np.diff(np.sort(ns, axis=1), axis=1) > 0).sum(axis=1) + 1
    ok = distinct >= 3
    alphas = np.empty(0)
    for lo in range(0, int(ok.sum()), _CHUNK):  # chunks bound the (B, grid, n) arrays
        sel = np.flatnonzero(ok)[lo:lo + _CHUNK]
        alphas = np.concatenate([alphas, _fit_batch(ns[sel], ys[sel], delta)[2]])
    ci = ([float(v) for v in np.percentile(alphas, [2.5, 97.5])] if alphas.size
          else [None, None])
    return {"c": c, "a": a, "alpha": alpha, "alpha_ci95": ci, "n_points": int(n.size),
            "n_bootstrap": n_bootstrap, "bootstrap_used": int(alphas.size),
            "rmse_log": float(np.sqrt(np.mean(resid ** 2))), "delta": float(delta),
            "method": ("L = c + a * N**(-alpha): Huber loss (delta in natural-log units) "
                       "of log L residuals, c profiled on refined grids in [0, min L), a and "
                       "alpha by a Huber line fit of log(L - c) on log N; alpha interval: "
                       "percentile bootstrap over points")}
