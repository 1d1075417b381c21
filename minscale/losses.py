"""Mean squared error and its gradient, in three reductions.

=============  ==============================  =========================
reduction      loss L                          dL/dy_pred
=============  ==============================  =========================
``mean``       sum((y_pred - y)**2) / (n d)    2 (y_pred - y) / (n d)
``sum``        sum((y_pred - y)**2)            2 (y_pred - y)
``half_sum``   sum((y_pred - y)**2) / 2        (y_pred - y)
=============  ==============================  =========================

``mean`` averages over all n * d elements, as Keras ``MeanSquaredError`` and PyTorch
``MSELoss(reduction="mean")`` do; ``half_sum`` is the textbook J = 1/2 sum (y - y_hat)^2.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_choice

__all__ = ["REDUCTIONS", "mse", "mse_grad", "check_reduction"]

REDUCTIONS = ("mean", "sum", "half_sum")


def check_reduction(reduction):
    """Return `reduction` if known.

    Raises
    ------
    ValueError
        If `reduction` is not one of ``mean``, ``sum``, ``half_sum``.
    """
    return check_choice("reduction", reduction, REDUCTIONS)


def _count(y_true, n_total):
    n = y_true.shape[0] if n_total is None else n_total
    return n * (y_true.shape[1] if y_true.ndim > 1 else 1)


def mse(y_true, y_pred, reduction="mean", n_total=None):
    """Mean squared error.

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n, d) or (n,)
    reduction : {"mean", "sum", "half_sum"}, default "mean"
    n_total : int, optional
        For ``mean``, the number of rows to divide by instead of ``n``; data-parallel workers
        pass the global batch size so that shard losses add up to the batch loss.

    Returns
    -------
    float
        In the squared unit of y.

    Raises
    ------
    ValueError
        Unknown `reduction` or shapes that differ.

    Examples
    --------
    >>> mse(np.array([[2.0], [4.0]]), np.zeros((2, 1)))
    10.0
    """
    check_reduction(reduction)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} != y_pred shape {y_pred.shape}")
    diff = y_pred - y_true
    total = float(np.dot(diff.ravel(), diff.ravel()))
    if reduction == "mean":
        count = _count(y_true, n_total)
        return total / count if count else 0.0
    return total / 2 if reduction == "half_sum" else total


def mse_grad(y_true, y_pred, reduction="mean", n_total=None):
    """dL/dy_pred of :func:`mse`.

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n, d)
    reduction : {"mean", "sum", "half_sum"}
    n_total : int, optional
        Rows to divide by for ``mean`` (see :func:`mse`).

    Returns
    -------
    ndarray, shape (n, d), dtype of `y_pred`

    Raises
    ------
    ValueError
        Unknown `reduction` or shapes that differ.
    """
    check_reduction(reduction)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} != y_pred shape {y_pred.shape}")
    diff = y_pred - y_true
    if reduction == "half_sum":
        return diff
    if reduction == "sum":
        diff *= 2
        return diff
    count = _count(y_true, n_total)
    diff *= y_pred.dtype.type(2.0 / count) if count else 0
    return diff
