"""Regularizers and weight decay: pure formulas on arrays, and the Keras-shaped ``L2``.

Three forms, each with its reference's semantics (docs/regularization.md):

- :class:`L2` (Keras ``tf.keras.regularizers.L2``): the training loss gains
  ``l2 * sum(W**2)`` over a layer's kernel (no 1/2, biases excluded); its gradient is
  ``2 * l2 * W``.
- coupled weight decay (``torch.optim.SGD`` / ``torch.optim.Adam`` ``weight_decay``): the
  gradient gains ``wd * theta`` before the optimizer's rule (through Adam's denominator).
- decoupled weight decay (``torch.optim.AdamW``, Loshchilov & Hutter 2019):
  ``theta <- theta * (1 - lr * wd)`` before the Adam step, with the scheduled rate.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .data import plain

__all__ = ["l2_penalty", "l2_gradient", "coupled_weight_decay", "decoupled_weight_decay",
           "check_strength", "L2", "get", "serialize", "deserialize"]


def check_strength(name, value):
    """A regularization strength checked: a finite real number >= 0, as a float.

    Parameters
    ----------
    name : str
        The argument's name, used in the message.
    value : object

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Not a real number (bools refused), NaN, infinite or negative, naming `name`.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {plain(value)!r}")
    return float(value)


def l2_penalty(W, l2):
    """Keras L2 penalty ``l2 * sum(W**2)`` of one kernel.

    Parameters
    ----------
    W : ndarray, any shape, float32 or float64
    l2 : float, >= 0

    Returns
    -------
    float
        In float64 (the sum of squares is taken in the dtype of `W`).

    Notes
    -----
    penalty = l2 * sum(W * W)  (no factor 1/2).

    References
    ----------
    ``tf.keras.regularizers.L2``.

    Examples
    --------
    >>> l2_penalty(np.array([1.0, -2.0]), 0.1)
    0.5
    """
    W = np.asarray(W)
    return float(l2) * float(np.sum(W * W))


def l2_gradient(W, l2, out=None):
    """Gradient ``2 * l2 * W`` of :func:`l2_penalty`, added to `out` when given.

    Parameters
    ----------
    W : ndarray, float32 or float64
    l2 : float, >= 0
    out : ndarray, shape of `W`, optional
        A gradient to add to, in place (``out += (2 * l2) * W``; the factor rounded to the
        dtype first).

    Returns
    -------
    ndarray, shape and dtype of `W`
        `out`, or a new array.
    """
    coef = W.dtype.type(2.0 * l2)
    if out is None:
        return coef * W
    out += coef * W
    return out


def coupled_weight_decay(grad, theta, weight_decay, where=None):
    """Coupled weight decay: ``grad <- grad + weight_decay * theta``, in place.

    Parameters
    ----------
    grad, theta : ndarray, shape (P,), same float dtype
    weight_decay : float, >= 0
    where : ndarray of bool, shape (P,), optional
        Only these entries decay (all by default).

    Returns
    -------
    ndarray
        `grad`.

    References
    ----------
    ``torch.optim.SGD`` / ``torch.optim.Adam``: ``d_p = d_p.add(p, alpha=weight_decay)``.
    """
    wd = grad.dtype.type(weight_decay)
    if where is None:
        grad += wd * theta
    else:
        grad[where] += wd * theta[where]
    return grad


def decoupled_weight_decay(theta, lr, weight_decay, where=None):
    """Decoupled weight decay: ``theta <- theta * (1 - lr * weight_decay)``, in place.

    Parameters
    ----------
    theta : ndarray, shape (P,), float32 or float64
    lr : float, >= 0
        The learning rate of this update (scheduled).
    weight_decay : float, >= 0
    where : ndarray of bool, shape (P,), optional
        Only these entries decay (all by default).

    Returns
    -------
    ndarray
        `theta`.

    References
    ----------
    Loshchilov & Hutter 2019; ``torch.optim.AdamW``: ``param.mul_(1 - lr * weight_decay)``.
    """
    factor = theta.dtype.type(1.0 - float(lr) * float(weight_decay))
    if where is None:
        theta *= factor
    else:
        theta[where] *= factor
    return theta


class L2:
    """Keras L2 kernel regularizer: the loss gains ``l2 * sum(W**2)``.

    Parameters
    ----------
    l2 : float, >= 0, default 0.01
        Strength (Keras's default).

    Raises
    ------
    ValueError
        `l2` negative, NaN, infinite or not a number.

    Notes
    -----
    penalty = l2 * sum(W**2); gradient 2 * l2 * W. The training loss that ``fit`` reports
    includes the penalty; ``evaluate`` does not.
    """

    def __init__(self, l2=0.01):
        self.l2 = check_strength("l2", l2)

    def __call__(self, W):
        """The penalty of kernel `W` (float)."""
        return l2_penalty(W, self.l2)

    def gradient(self, W, out=None):
        """``2 * l2 * W``, added to `out` when given (see :func:`l2_gradient`)."""
        return l2_gradient(W, self.l2, out)

    def get_config(self):
        """JSON-ready config."""
        return {"name": "l2", "l2": self.l2}

    def __eq__(self, other):
        return type(other) is L2 and other.l2 == self.l2

    def __hash__(self):
        return hash(("L2", self.l2))

    def __repr__(self):
        return f"L2(l2={self.l2!r})"


def serialize(regularizer):
    """JSON-ready config of a regularizer, or None."""
    return None if regularizer is None else regularizer.get_config()


def deserialize(config):
    """A regularizer from :func:`serialize`'s output.

    Raises
    ------
    ValueError
        Unknown name or bad strength.
    """
    if config is None:
        return None
    if not isinstance(config, dict) or config.get("name") != "l2" or set(config) - {"name", "l2"}:
        raise ValueError(f"kernel_regularizer config must be {{'name': 'l2', 'l2': ...}}, "
                         f"got {config!r}")
    return L2(config.get("l2", 0.01))


def get(regularizer, name="kernel_regularizer"):
    """A regularizer from None, an :class:`L2` or its config dict.

    Raises
    ------
    TypeError
        Anything else, naming `name`.
    """
    if regularizer is None or isinstance(regularizer, L2):
        return regularizer
    if isinstance(regularizer, dict):
        return deserialize(regularizer)
    raise TypeError(f"{name} must be None or minscale.regularizers.L2, got "
                    f"{type(regularizer).__name__}")
