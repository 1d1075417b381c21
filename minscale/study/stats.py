"""Seeds and intervals: the study's statistics over repeated runs.

Pure functions, numbers in, numbers out. A variant run from ``n`` seeds gives ``n`` losses;
its mean is reported with a 95 % Student-t interval, and a variant is called better or worse
than its control only when the t-interval of the *paired* differences (same seed, variant
minus control) excludes 0. Pairing removes the seed-to-seed spread the two share (the same
initial weights and data order), so it resolves smaller effects than comparing two unpaired
intervals.

Source: Student's t-interval for a mean, ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s``
the sample standard deviation (ddof 1); e.g. NIST/SEMATECH e-Handbook of Statistical
Methods, section 7.2.2.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["CONFIDENCE", "mean_ci95", "paired_difference_ci95", "verdict"]

#: The confidence level of every interval the study prints.
CONFIDENCE = 0.95


def _finite_1d(values, name):
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of real numbers") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one value, got none")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def mean_ci95(values):
    """Mean of per-seed values and its 95 % Student-t interval.

    Parameters
    ----------
    values : sequence of float, length n >= 1
        One value per seed (e.g. test losses), finite.

    Returns
    -------
    mean : float
    low, high : float
        ``mean -+ t_{0.975, n-1} * s / sqrt(n)``, ``s`` the sample standard deviation (ddof
        1). With ``n == 1`` the interval is undefined and both ends are NaN (one seed says
        nothing about the spread); with ``n >= 2`` and equal values it is ``[mean, mean]``.

    Raises
    ------
    TypeError
        If `values` are not real numbers.
    ValueError
        If `values` is empty, not 1-D or not finite.

    Examples
    --------
    >>> m, lo, hi = mean_ci95([1.0, 2.0, 3.0])   # s = 1, t_{0.975,2} = 4.3027
    >>> round(m, 4), round(lo, 4), round(hi, 4)
    (2.0, -0.4841, 4.4841)
    """
    arr = _finite_1d(values, "values")
    n = arr.size
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, math.nan
    half = float(_scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * arr.std(ddof=1)
                 / math.sqrt(n))
    return mean, mean - half, mean + half


def paired_difference_ci95(variant, control):
    """Mean and 95 % t-interval of the paired differences ``variant - control``.

    Parameters
    ----------
    variant, control : sequence of float, length n >= 1
        Per-seed values; entry i of both comes from seed i.

    Returns
    -------
    mean, low, high : float
        As :func:`mean_ci95` of ``variant - control`` (NaN ends when n == 1).

    Raises
    ------
    ValueError
        If the lengths differ, or as :func:`mean_ci95`.
    """
    v = _finite_1d(variant, "variant")
    c = _finite_1d(control, "control")
    if v.shape != c.shape:
        raise ValueError(f"variant and control must have one value per seed each, got "
                         f"{v.size} and {c.size}")
    return mean_ci95(v - c)


def verdict(variant, control):
    """``"better"``, ``"worse"`` or ``"no significant difference"`` for losses (lower wins).

    Parameters
    ----------
    variant, control : sequence of float, length n
        Per-seed losses, paired by seed.

    Returns
    -------
    str
        ``"better"`` when the 95 % interval of the paired differences lies wholly below 0,
        ``"worse"`` when wholly above, otherwise ``"no significant difference"`` — also
        with one seed (no interval), when no verdict can be given.

    Raises
    ------
    ValueError
        As :func:`paired_difference_ci95`.
    """
    _, low, high = paired_difference_ci95(variant, control)
    if math.isnan(low):
        return "no significant difference"
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "no significant difference"
