"""Optimizers: pure update rules on flat buffers, and thin stateful wrappers.

Both optimizers take the learning rate as a float or a schedule (any callable of the step,
see :mod:`minscale.schedules`). ``iterations`` counts applied updates from 0; update ``t``
uses ``learning_rate(t)``.

Pruning: when a mask is given (True = kept), the gradient, the momentum / moment estimates and
the parameter itself are zeroed where the mask is False, in the same pass, so pruned weights
stay exactly zero under every optimizer.

Weight decay (docs/regularization.md): ``weight_decay=`` on :class:`SGD` and :class:`Adam` is
coupled, as ``torch.optim``: the gradient gains ``weight_decay * theta`` before the rule (for
Adam it passes through the adaptive denominator). :class:`AdamW` decouples it, as
``torch.optim.AdamW``: ``theta <- theta * (1 - lr * weight_decay)`` with the scheduled rate,
then the Adam step. Every parameter decays, biases included, unless ``decay_bias=False``;
pruned weights are 0, so their decay is 0 and they stay exactly 0.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import kernels, regularizers, schedules
from ._checks import check_int
from .data import plain

__all__ = ["sgd_step", "adam_step", "SGD", "Adam", "AdamW", "get", "serialize", "deserialize"]


def _scalar(value, dtype):
    # cast to the buffer's dtype so float32 buffers never meet a float64 scalar
    return np.dtype(dtype).type(value)


def sgd_step(theta, grad, lr, velocity=None, momentum=0.0, nesterov=False, mask=None):
    """One SGD update of a flat buffer, in place.

    Parameters
    ----------
    theta, grad : ndarray, shape (P,), float32 or float64
        `grad` may be modified (masked).
    lr : float, >= 0
    velocity : ndarray, shape (P,), optional
        Momentum buffer; required when ``momentum > 0``.
    momentum : float, in [0, 1)
    nesterov : bool
    mask : ndarray of bool, shape (P,), optional

    Notes
    -----
    theta <- theta - lr * g (plain); v <- momentum v + g, theta <- theta - lr v (heavy ball);
    theta <- theta - lr (g + momentum v) (Nesterov) -- the ``torch.optim.SGD`` forms with
    dampening 0 (Sutskever et al. 2013).

    Raises
    ------
    ValueError
        ``momentum > 0`` without a velocity buffer.
    """
    dtype = theta.dtype
    if momentum == 0:
        kernels.sgd_update(theta, grad, _scalar(lr, dtype), mask)
        return
    if velocity is None:
        raise ValueError("velocity buffer is required when momentum > 0")
    kernels.momentum_update(theta, grad, velocity, _scalar(lr, dtype), _scalar(momentum, dtype),
                            bool(nesterov), mask)


def adam_step(theta, grad, m, v, step, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8, mask=None):
    """One Adam update of a flat buffer, in place.

    Parameters
    ----------
    theta, grad, m, v : ndarray, shape (P,), same float dtype
    step : int, >= 0
        Updates already applied; bias correction uses t = step + 1.
    lr, beta_1, beta_2, epsilon : float
    mask : ndarray of bool, shape (P,), optional

    Notes
    -----
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon).

    References
    ----------
    Kingma & Ba 2015, Algorithm 1; epsilon placement and defaults as ``torch.optim.Adam``
    (lr 1e-3, betas (0.9, 0.999), eps 1e-8; Keras uses eps 1e-7).
    """
    dtype = theta.dtype
    t = step + 1
    kernels.adam_update(theta, grad, m, v, _scalar(lr, dtype), _scalar(beta_1, dtype),
                        _scalar(beta_2, dtype), _scalar(epsilon, dtype),
                        _scalar(1 - beta_1 ** t, dtype), _scalar(1 - beta_2 ** t, dtype), mask)


def _check_unit(name, value, upper_open=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or value < 0 or value >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {plain(value)!r}")
    return float(value)


def _check_learning_rate(learning_rate):
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        if not math.isfinite(learning_rate) or learning_rate < 0:
            raise ValueError("learning_rate must be a finite number >= 0,"
                             f" got {plain(learning_rate)!r}")
    return schedules.get(learning_rate)


class _Optimizer:
    """State shared by the optimizers: the schedule, the update counter, the weight decay."""

    def __init__(self, learning_rate, weight_decay=0.0, decay_bias=True):
        self.learning_rate = _check_learning_rate(learning_rate)
        self.iterations = 0
        self.weight_decay = regularizers.check_strength("weight_decay", weight_decay)
        if not isinstance(decay_bias, (bool, np.bool_)):
            raise TypeError(f"decay_bias must be True or False, got {plain(decay_bias)!r}")
        self.decay_bias = bool(decay_bias)

    def decay_where(self, weights):
        """Which entries decay: None (all) when ``decay_bias``, else `weights`.

        Raises
        ------
        ValueError
            ``decay_bias=False`` without `weights` (the optimizer cannot tell biases apart).
        """
        if self.decay_bias:
            return None
        if weights is None:
            raise ValueError("weights (bool, True on kernel entries) is required when "
                             "decay_bias=False")
        return weights

    def _couple(self, params, grads, weights):
        if self.weight_decay:
            regularizers.coupled_weight_decay(grads, params, self.weight_decay,
                                              self.decay_where(weights))

    def _decay_config(self, config):
        # written only when not the default, so files without weight decay are unchanged
        if self.weight_decay != type(self).DEFAULT_WEIGHT_DECAY:
            config["weight_decay"] = self.weight_decay
        if not self.decay_bias:
            config["decay_bias"] = False
        return config

    def current_learning_rate(self):
        """Rate the next update will use: ``learning_rate(iterations)``.

        Raises
        ------
        ValueError
            If the schedule returns a negative or non-finite rate.
        """
        lr = float(self.learning_rate(self.iterations))
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"learning rate schedule gave {plain(lr)!r} at step {self.iterations}")
        return lr

    def reset(self):
        """Forget all state: counter to 0, buffers dropped."""
        self.iterations = 0
        self._buffers = {}

    def state_arrays(self):
        """Name -> buffer dict of the optimizer's arrays (for checkpoints)."""
        return dict(getattr(self, "_buffers", {}))

    def set_state(self, iterations, arrays):
        """Restore state saved from :meth:`state_arrays` and ``iterations`` (checkpoints).

        Parameters
        ----------
        iterations : int, >= 0
            Updates already applied.
        arrays : dict of str -> ndarray, shape (P,)
            Buffers by name ("velocity", or "m" and "v"); copied.

        Raises
        ------
        ValueError
            Negative `iterations`; a non-integer raises
            :class:`minscale._checks.ArgumentTypeError`, which is a ValueError too.
        """
        iterations = check_int("iterations", iterations, 0)
        self.reset()
        self.iterations = iterations
        for name, arr in arrays.items():
            self.buffer(name, arr)[...] = arr

    def buffer(self, name, like):
        """The optimizer's state array `name`, zeros like `like` on first use.

        Parameters
        ----------
        name : str
            "velocity" (SGD with momentum), "m" or "v" (Adam).
        like : ndarray, shape (P,)
            The parameters the state belongs to; a buffer of another shape or dtype is
            replaced by zeros of this one.

        Returns
        -------
        ndarray, shape and dtype of `like`
            The stored buffer itself (updates write into it in place).
        """
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = buffers[name] = np.zeros_like(like)
        return buf


class SGD(_Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    Parameters
    ----------
    learning_rate : float or schedule, default 0.01
    momentum : float in [0, 1), default 0
    nesterov : bool, default False
    weight_decay : float >= 0, default 0
        Coupled, as ``torch.optim.SGD``: ``g <- g + weight_decay * theta`` before the update.
        With mean reduction this equals :class:`minscale.regularizers.L2` with
        ``l2 = weight_decay / 2`` on every decayed parameter.
    decay_bias : bool, default True
        False: biases do not decay (only kernels).

    Raises
    ------
    ValueError
        Negative learning rate, momentum outside [0, 1), nesterov without momentum, negative,
        NaN or non-numeric `weight_decay`.
    TypeError
        `decay_bias` not a bool.
    """

    DEFAULT_WEIGHT_DECAY = 0.0

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 decay_bias=True):
        super().__init__(learning_rate, weight_decay, decay_bias)
        self.momentum = _check_unit("momentum", momentum)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True requires momentum > 0")
        self.nesterov = bool(nesterov)

    def apply(self, params, grads, mask=None, weights=None):
        """Apply one update to the flat buffers and advance ``iterations``.

        Parameters
        ----------
        params, grads : ndarray, shape (P,)
            `grads` gains the coupled weight decay in place.
        mask : ndarray of bool, shape (P,), optional
        weights : ndarray of bool, shape (P,), optional
            True on kernel entries (``model.prunable``); required with ``decay_bias=False``.

        Returns
        -------
        float
            The learning rate used.
        """
        lr = self.current_learning_rate()
        self._couple(params, grads, weights)
        velocity = self.buffer("velocity", params) if self.momentum else None
        sgd_step(params, grads, lr, velocity, self.momentum, self.nesterov, mask)
        self.iterations += 1
        return lr

    def get_config(self):
        """JSON-ready config (schedules serialized)."""
        return self._decay_config({"name": "sgd",
                                   "learning_rate": _serialize_lr(self.learning_rate),
                                   "momentum": self.momentum, "nesterov": self.nesterov})


class Adam(_Optimizer):
    """Adam with bias correction (Kingma & Ba 2015), epsilon as ``torch.optim.Adam``.

    Parameters
    ----------
    learning_rate : float or schedule, default 0.001
    beta_1 : float in [0, 1), default 0.9
    beta_2 : float in [0, 1), default 0.999
    epsilon : float > 0, default 1e-8
    weight_decay : float >= 0, default 0
        Coupled, as ``torch.optim.Adam``: ``g <- g + weight_decay * theta`` before the moments
        (so the decay is divided by the adaptive denominator; :class:`AdamW` decouples it).
    decay_bias : bool, default True
        False: biases do not decay (only kernels).

    Raises
    ------
    ValueError
        Arguments out of range, naming the argument.
    TypeError
        `decay_bias` not a bool.
    """

    DEFAULT_WEIGHT_DECAY = 0.0

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.0, decay_bias=True):
        super().__init__(learning_rate, weight_decay, decay_bias)
        self.beta_1 = _check_unit("beta_1", beta_1)
        self.beta_2 = _check_unit("beta_2", beta_2)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) \
                or not (epsilon > 0) or not math.isfinite(epsilon):
            raise ValueError(f"epsilon must be a finite number > 0, got {plain(epsilon)!r}")
        self.epsilon = float(epsilon)

    def apply(self, params, grads, mask=None, weights=None):
        """Apply one update to the flat buffers and advance ``iterations``.

        Parameters
        ----------
        params, grads : ndarray, shape (P,)
            `grads` gains the coupled weight decay in place.
        mask : ndarray of bool, shape (P,), optional
        weights : ndarray of bool, shape (P,), optional
            True on kernel entries (``model.prunable``); required with ``decay_bias=False``.

        Returns
        -------
        float
            The learning rate used.
        """
        lr = self.current_learning_rate()
        self._decay(params, grads, lr, weights)
        m = self.buffer("m", params)
        v = self.buffer("v", params)
        adam_step(params, grads, m, v, self.iterations, lr, self.beta_1, self.beta_2,
                  self.epsilon, mask)
        self.iterations += 1
        return lr

    def _decay(self, params, grads, lr, weights):
        self._couple(params, grads, weights)

    def get_config(self):
        """JSON-ready config (schedules serialized)."""
        return self._decay_config({"name": self.NAME,
                                   "learning_rate": _serialize_lr(self.learning_rate),
                                   "beta_1": self.beta_1, "beta_2": self.beta_2,
                                   "epsilon": self.epsilon})

    NAME = "adam"


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``.

    Parameters
    ----------
    learning_rate : float or schedule, default 0.001
    beta_1, beta_2, epsilon
        As :class:`Adam`.
    weight_decay : float >= 0, default 0.01
        Decoupled: ``theta <- theta * (1 - lr * weight_decay)`` with the update's scheduled
        rate, then the Adam step on the plain gradient.
    decay_bias : bool, default True
        False: biases do not decay (only kernels).

    Raises
    ------
    ValueError
        Arguments out of range, naming the argument.
    TypeError
        `decay_bias` not a bool.
    """

    DEFAULT_WEIGHT_DECAY = 0.01
    NAME = "adamw"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=0.01, decay_bias=True):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, decay_bias)

    def _decay(self, params, grads, lr, weights):
        if self.weight_decay:
            regularizers.decoupled_weight_decay(params, lr, self.weight_decay,
                                                self.decay_where(weights))


def _serialize_lr(schedule):
    if isinstance(schedule, schedules.Constant):
        return schedule.learning_rate
    return schedules.serialize(schedule)


def serialize(optimizer):
    """JSON-ready config of an optimizer (see :func:`deserialize`)."""
    return optimizer.get_config()


def deserialize(config):
    """Build an optimizer from :func:`serialize`'s output.

    Raises
    ------
    ValueError
        Unknown optimizer name or bad arguments.
    """
    config = dict(config)
    name = config.pop("name", None)
    lr = config.pop("learning_rate")
    if isinstance(lr, dict):
        lr = schedules.deserialize(lr)
    if name == "sgd":
        return SGD(lr, **config)
    if name == "adam":
        return Adam(lr, **config)
    if name == "adamw":
        return AdamW(lr, **config)
    raise ValueError(f"optimizer name must be 'sgd', 'adam' or 'adamw', got {name!r}")


def get(optimizer, learning_rate=None):
    """An optimizer from a name or an instance.

    Parameters
    ----------
    optimizer : {"sgd", "momentum", "nesterov", "adam", "adamw"} or optimizer instance
        ``"momentum"`` is SGD with momentum 0.9; ``"nesterov"`` adds Nesterov.
    learning_rate : float or schedule, optional
        For names only; each optimizer's default otherwise.

    Returns
    -------
    SGD, Adam or AdamW

    Raises
    ------
    ValueError
        Unknown name.
    """
    if isinstance(optimizer, _Optimizer):
        return optimizer
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    if optimizer == "sgd":
        return SGD(**kwargs)
    if optimizer == "momentum":
        return SGD(momentum=0.9, **kwargs)
    if optimizer == "nesterov":
        return SGD(momentum=0.9, nesterov=True, **kwargs)
    if optimizer == "adam":
        return Adam(**kwargs)
    if optimizer == "adamw":
        return AdamW(**kwargs)
    raise ValueError("optimizer must be 'sgd', 'momentum', 'nesterov', 'adam', 'adamw' or an "
                     f"optimizer instance, got {optimizer!r}")
