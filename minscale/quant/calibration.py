"""Calibration of a float Sequential: its activation ranges on sample rows.

Shared by post-training quantization (:mod:`minscale.quant.ptq`), the fixed-point path
(:mod:`minscale.quant.fixed_model`) and QAT's conversion (:mod:`minscale.quant.qat`).
"""

from __future__ import annotations

import numpy as np

from .. import layers
from .._checks import check_int
from ..model import Sequential, check_X
from .observers import MinMaxObserver

__all__ = [
    "calibration_ranges",
]

# The float activations by name, each called as f(z, alpha) (only leaky_relu uses alpha): the
# pure functions of minscale.layers, which the float model's kernels are tested against.
ACTIVATION_FUNCTIONS = {
    "identity": lambda z, alpha: layers.identity(z),
    "relu": lambda z, alpha: layers.relu(z),
    "leaky_relu": layers.leaky_relu,
    "tanh": lambda z, alpha: layers.tanh(z),
    "sigmoid": lambda z, alpha: layers.sigmoid(z),
}


def check_sequential(model):
    """Return `model` when it is a built Sequential; TypeError / ValueError otherwise."""
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
    model = check_sequential(model)
    X = check_X(X, model.input_dim, model.dtype, "calibration_data")
    n = X.shape[0]
    bs = n if batch_size is None else check_int("batch_size", batch_size, 1)
    observers = [MinMaxObserver() for _ in range(len(model.layers) + 1)]
    for start in range(0, n, bs):
        a = X[start : start + bs].astype(np.float64)
        observers[0].observe(a)
        for layer, obs in zip(model.layers, observers[1:]):
            b = layer.b.astype(np.float64) if layer.use_bias else None
            a = ACTIVATION_FUNCTIONS[layer.activation](
                a @ layer.W.astype(np.float64) + (0.0 if b is None else b), layer.alpha
            )
            obs.observe(a)
    return [(obs.min_val, obs.max_val) for obs in observers]
