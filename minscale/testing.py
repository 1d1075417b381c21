"""Tools for testing models and formulas: a gradient checker and hypothesis strategies.

``check_gradients`` compares the analytic gradients of a model (or of any function with a
gradient) with central finite differences. The strategies draw the inputs minscale's own
property tests use, so users can write the same kind of tests for their models.
"""
from __future__ import annotations

import numpy as np

__all__ = ["numeric_gradient", "check_gradients", "relative_error"]


def relative_error(analytic, numeric, floor=1e-8):
    """Relative error of two gradients of one tensor: ``||a - n|| / max(||a|| + ||n||, floor)``.

    Parameters
    ----------
    analytic, numeric : ndarray, same shape
    floor : float
        Denominator floor, so that two gradients that are both ~0 do not count as an error.

    Returns
    -------
    float
        In [0, 1]; about 1e-7 or less for a correct float64 gradient.

    Notes
    -----
    Norm-based rather than elementwise, so one tiny entry whose finite difference is
    dominated by rounding does not decide the verdict (the CS231n gradient-check criterion,
    applied per tensor).
    """
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), floor))


def numeric_gradient(f, x, eps=1e-6):
    """Central-difference gradient of a scalar function, in float64.

    Parameters
    ----------
    f : callable
        ``f() -> float``, reading `x` (which this function perturbs in place and restores).
    x : ndarray, float64
        The variable; any shape.
    eps : float
        Step h of (f(x + h) - f(x - h)) / (2 h); truncation error O(h^2).

    Returns
    -------
    ndarray shaped like `x`
    """
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def check_gradients(model_or_fn, X, y=None, eps=1e-6, rtol=1e-5):
    """Compare analytic and central-difference gradients; return the worst relative errors.

    Parameters
    ----------
    model_or_fn : Sequential or callable
        A built float64 :class:`~minscale.model.Sequential` (its compiled reduction is used),
        or a function ``fn(X) -> (value, grad)`` returning a scalar and dvalue/dX.
    X : ndarray, float64, shape (n, d_in) for a model; any shape for a function
    y : ndarray, shape (n, d_out), required for a model
    eps : float
        Finite-difference step.
    rtol : float
        Error above which AssertionError is raised (``None``: never raise).

    Returns
    -------
    dict
        For a model: ``{"layer0.W": err, "layer0.b": err, ..., "input": err}``; for a
        function: ``{"input": err}``, each the worst :func:`relative_error`.

    Raises
    ------
    ValueError
        A model that is not float64 or not built, or a missing `y`.
    AssertionError
        Some error exceeds `rtol`.

    Notes
    -----
    Central differences have truncation error O(eps^2) and rounding error O(u / eps) with u the
    unit roundoff, so eps = 1e-6 suits float64 (CS231n notes on gradient checking).
    """
    from .losses import mse, mse_grad
    from .model import Sequential
    X = np.asarray(X, dtype=np.float64)
    errors = {}
    if isinstance(model_or_fn, Sequential):
        model = model_or_fn
        if not model.built:
            model.build(X.shape[1])
        if model.dtype != np.float64:
            raise ValueError(f"check_gradients needs a float64 model, got {model.dtype}")
        if y is None:
            raise ValueError("y is required to check a model's gradients")
        y = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
        X = X.copy()
        model.compute_gradients(X, y)
        analytic = model.grads.copy()

        def loss():
            return mse(y, model.forward(X), model.reduction)

        numeric = numeric_gradient(loss, model.params, eps)
        y_hat = model.forward(X, training=True)
        dy = mse_grad(y, y_hat, model.reduction)
        for i in range(len(model.layers) - 1, -1, -1):
            dy = model.layers[i].backward(dy, need_dx=True)
        errors = {}
        for i, (layer, (start, stop)) in enumerate(zip(model.layers, model.layer_slices())):
            n_w = layer.W.size
            errors[f"layer{i}.W"] = relative_error(analytic[start:start + n_w],
                                                   numeric[start:start + n_w])
            if layer.use_bias:
                errors[f"layer{i}.b"] = relative_error(analytic[start + n_w:stop],
                                                       numeric[start + n_w:stop])
        errors["input"] = relative_error(dy, numeric_gradient(loss, X, eps))
        model.compute_gradients(X, y)  # leave grads as the analytic parameter gradient
    else:
        X = X.copy()
        _, analytic = model_or_fn(X)
        numeric = numeric_gradient(lambda: float(model_or_fn(X)[0]), X, eps)
        errors["input"] = relative_error(analytic, numeric)
    if rtol is not None:
        bad = {k: v for k, v in errors.items() if v > rtol}
        if bad:
            raise AssertionError(f"gradient check failed (rtol {rtol}): {bad}")
    return errors
