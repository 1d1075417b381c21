"""Learning-rate schedules: pure functions of the update count, and frozen dataclasses.

``step`` counts optimizer updates already applied, from 0; update ``t`` uses ``lr(t)``, so
the first update uses the initial rate. Semantics follow ``keras.optimizers.schedules``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .data import plain

__all__ = [
    "inverse_time_decay", "exponential_decay", "polynomial_decay",
    "Constant", "InverseTimeDecay", "ExponentialDecay", "PolynomialDecay",
    "get", "serialize", "deserialize",
]


def _check_step(step):
    arr = np.asarray(step)
    if arr.dtype.kind not in "iuf" or np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"step must be a non-negative number of updates, got {plain(step)!r}")
    return arr


def _check_positive(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {expected}, got {plain(value)!r}")
    return float(value)


def _out(arr, value):
    return float(value) if arr.ndim == 0 else np.asarray(value, dtype=np.float64)


def _pow(base, exponent):
    """``base ** exponent`` elementwise, every element through the C library's scalar ``pow``.

    NumPy's vectorized ``np.power`` dispatches to SIMD code on some CPUs (AVX-512 among them)
    and to the scalar ``pow`` on others; the two may differ in the last bit. Computing each
    element as a scalar makes a schedule called on an array of steps equal, bit for bit and on
    every machine, the same schedule called on each step alone -- which is what lets the
    compiled epoch loop evaluate a whole run's rates at once. Costs about 0.1 us an element.
    """
    b, e = np.broadcast_arrays(np.asarray(base, dtype=np.float64),
                               np.asarray(exponent, dtype=np.float64))
    flat = [x ** y for x, y in zip(b.ravel().tolist(), e.ravel().tolist())]
    return np.array(flat, dtype=np.float64).reshape(b.shape)


def inverse_time_decay(step, initial_learning_rate, decay_rate, decay_steps=1, staircase=False):
    """Learning rate after `step` optimizer updates under inverse-time decay.

    Parameters
    ----------
    step : int or ndarray of int, shape (k,)
        Updates taken so far, from 0. Unit: optimizer updates (not epochs or samples).
    initial_learning_rate : float, >= 0
        eta0, the rate of update 0.
    decay_rate : float, >= 0
    decay_steps : int or float, > 0, default 1
        Unit: optimizer updates.
    staircase : bool, default False
        Decay in whole stages: p = floor(t / decay_steps).

    Returns
    -------
    lr : float, or float64 ndarray shaped like `step`

    Raises
    ------
    ValueError
        If decay_steps <= 0, decay_rate < 0, initial_learning_rate < 0 or step < 0, naming the
        argument and value.

    Notes
    -----
    eta(t) = eta0 / (1 + decay_rate * p),  p = t / decay_steps  (floor of it if staircase)

    References
    ----------
    Keras ``InverseTimeDecay``; the textbook eta0 / (1 + alpha * t) is decay_steps=1.

    Examples
    --------
    >>> inverse_time_decay(10, 0.1, decay_rate=0.5, decay_steps=10)
    0.06666666666666667
    """
    t = _check_step(step)
    eta0 = _check_positive("initial_learning_rate", initial_learning_rate, allow_zero=True)
    decay_rate = _check_positive("decay_rate", decay_rate, allow_zero=True)
    decay_steps = _check_positive("decay_steps", decay_steps)
    p = t / decay_steps
    if staircase:
        p = np.floor(p)
    return _out(t, eta0 / (1 + decay_rate * p))


def exponential_decay(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    """Exponential decay: eta(t) = eta0 * decay_rate ** p, p = t / decay_steps.

    Parameters
    ----------
    step : int or ndarray of int
        Updates taken so far, from 0.
    initial_learning_rate : float, >= 0
    decay_steps : int or float, > 0
    decay_rate : float, in (0, 1]
        Factor per `decay_steps` updates (Keras argument order: decay_steps first).
    staircase : bool
        p = floor(t / decay_steps).

    Returns
    -------
    lr : float or float64 ndarray

    Raises
    ------
    ValueError
        Arguments out of range, naming the argument.

    References
    ----------
    Keras ``ExponentialDecay``.
    """
    t = _check_step(step)
    eta0 = _check_positive("initial_learning_rate", initial_learning_rate, allow_zero=True)
    decay_steps = _check_positive("decay_steps", decay_steps)
    decay_rate = _check_positive("decay_rate", decay_rate)
    if decay_rate > 1:
        raise ValueError("decay_rate must be in (0, 1] for a decaying rate,"
                         f" got {plain(decay_rate)!r}")
    p = t / decay_steps
    if staircase:
        p = np.floor(p)
    return _out(t, eta0 * _pow(decay_rate, p))


def polynomial_decay(step, initial_learning_rate, decay_steps, end_learning_rate=1e-4,
                     power=1.0):
    """Polynomial decay from eta0 to end_learning_rate over `decay_steps`, then constant.

    Parameters
    ----------
    step : int or ndarray of int
    initial_learning_rate : float, >= 0
    decay_steps : int or float, > 0
    end_learning_rate : float, 0 <= end_learning_rate <= initial_learning_rate
    power : float, > 0

    Returns
    -------
    lr : float or float64 ndarray

    Raises
    ------
    ValueError
        Arguments out of range, naming the argument.

    Notes
    -----
    eta(t) = (eta0 - eta_end) * (1 - min(t, decay_steps) / decay_steps) ** power + eta_end

    References
    ----------
    Keras ``PolynomialDecay`` with ``cycle=False``.
    """
    t = _check_step(step)
    eta0 = _check_positive("initial_learning_rate", initial_learning_rate, allow_zero=True)
    decay_steps = _check_positive("decay_steps", decay_steps)
    end = _check_positive("end_learning_rate", end_learning_rate, allow_zero=True)
    power = _check_positive("power", power)
    if end > eta0:
        raise ValueError(f"end_learning_rate must be <= initial_learning_rate ({eta0}), got {end}")
    p = np.minimum(t, decay_steps) / decay_steps
    return _out(t, (eta0 - end) * _pow(1 - p, power) + end)


# --- schedule objects ----------------------------------------------------------------------

class _Schedule:
    """Shared behaviour: a schedule is a callable of the step with a JSON config."""

    def get_config(self):
        """JSON-ready dict of the constructor arguments."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        """Inverse of :meth:`get_config`."""
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class Constant(_Schedule):
    """A constant learning rate (a plain float given to an optimizer becomes this).

    Parameters
    ----------
    learning_rate : float, >= 0

    Raises
    ------
    ValueError
        Negative or non-finite rate.
    """

    learning_rate: float

    def __post_init__(self):
        _check_positive("learning_rate", self.learning_rate, allow_zero=True)

    def __call__(self, step):
        """Rate of update `step` (the same for every step)."""
        t = _check_step(step)
        return _out(t, np.full(t.shape, float(self.learning_rate)))


@dataclasses.dataclass(frozen=True)
class InverseTimeDecay(_Schedule):
    """Keras ``InverseTimeDecay``: eta0 / (1 + decay_rate * t / decay_steps).

    Parameters
    ----------
    initial_learning_rate : float, >= 0
    decay_rate : float, >= 0
    decay_steps : int or float, > 0, default 1
    staircase : bool, default False

    Raises
    ------
    ValueError
        As :func:`inverse_time_decay`, at construction.

    Examples
    --------
    >>> InverseTimeDecay(0.1, decay_rate=0.01)(1)
    0.09900990099009901
    """

    initial_learning_rate: float
    decay_rate: float
    decay_steps: float = 1
    staircase: bool = False

    def __post_init__(self):
        inverse_time_decay(0, self.initial_learning_rate, self.decay_rate, self.decay_steps)

    def __call__(self, step):
        """Rate of update `step` (see :func:`inverse_time_decay`)."""
        return inverse_time_decay(step, self.initial_learning_rate, self.decay_rate,
                                  self.decay_steps, self.staircase)


@dataclasses.dataclass(frozen=True)
class ExponentialDecay(_Schedule):
    """Keras ``ExponentialDecay``: eta0 * decay_rate ** (t / decay_steps).

    Parameters
    ----------
    initial_learning_rate : float
    decay_steps : int or float, > 0
    decay_rate : float, in (0, 1]
    staircase : bool, default False

    Raises
    ------
    ValueError
        As :func:`exponential_decay`, at construction.
    """

    initial_learning_rate: float
    decay_steps: float
    decay_rate: float
    staircase: bool = False

    def __post_init__(self):
        exponential_decay(0, self.initial_learning_rate, self.decay_steps, self.decay_rate)

    def __call__(self, step):
        """Rate of update `step` (see :func:`exponential_decay`)."""
        return exponential_decay(step, self.initial_learning_rate, self.decay_steps,
                                 self.decay_rate, self.staircase)


@dataclasses.dataclass(frozen=True)
class PolynomialDecay(_Schedule):
    """Keras ``PolynomialDecay`` (no cycling).

    Parameters
    ----------
    initial_learning_rate : float
    decay_steps : int or float, > 0
    end_learning_rate : float, default 1e-4
    power : float, default 1.0

    Raises
    ------
    ValueError
        As :func:`polynomial_decay`, at construction.
    """

    initial_learning_rate: float
    decay_steps: float
    end_learning_rate: float = 1e-4
    power: float = 1.0

    def __post_init__(self):
        polynomial_decay(0, self.initial_learning_rate, self.decay_steps,
                         self.end_learning_rate, self.power)

    def __call__(self, step):
        """Rate of update `step` (see :func:`polynomial_decay`)."""
        return polynomial_decay(step, self.initial_learning_rate, self.decay_steps,
                                self.end_learning_rate, self.power)


_CLASSES = {cls.__name__: cls for cls in (Constant, InverseTimeDecay, ExponentialDecay,
                                          PolynomialDecay)}


def get(learning_rate):
    """A schedule from a float or a schedule.

    Parameters
    ----------
    learning_rate : float or schedule
        A number becomes :class:`Constant`; any callable ``step -> float`` is returned as is.

    Returns
    -------
    callable

    Raises
    ------
    ValueError
        A negative or non-finite number.
    TypeError
        Neither a number nor a callable.
    """
    if callable(learning_rate):
        return learning_rate
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool):
        return Constant(float(learning_rate))
    raise TypeError(f"learning_rate must be a number or a schedule, got {plain(learning_rate)!r}")


def serialize(schedule):
    """``{"class_name": ..., "config": ...}`` of a built-in schedule.

    Raises
    ------
    TypeError
        If `schedule` is not one of the built-in schedule classes.
    """
    name = type(schedule).__name__
    if name not in _CLASSES:
        raise TypeError(f"cannot serialize schedule of type {name}")
    return {"class_name": name, "config": schedule.get_config()}


def deserialize(config):
    """Inverse of :func:`serialize`.

    Raises
    ------
    ValueError
        Unknown class name or bad config.
    """
    try:
        cls = _CLASSES[config["class_name"]]
    except (KeyError, TypeError):
        raise ValueError(f"unknown schedule config {config!r}") from None
    return cls.from_config(dict(config["config"]))
