"""Sparsity schedules (TensorFlow Model Optimization): when masks update, to what sparsity.

The pure functions own the rules (:func:`should_prune_at`, :func:`polynomial_decay_sparsity`);
the schedule classes only hold their parameters. Steps count optimizer updates from 0.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import _checks
from .._checks import plain

__all__ = [
    "should_prune_at",
    "polynomial_decay_sparsity",
    "ConstantSparsity",
    "PolynomialDecaySparsity",
]



def should_prune_at(step, begin_step, end_step=-1, frequency=100):
    """Whether the masks are updated at optimizer update `step`.

    Parameters
    ----------
    step : int or int ndarray, >= 0
        Updates taken so far. Unit: optimizer updates.
    begin_step : int, >= 0
    end_step : int, -1 or >= begin_step
        Last step at which masks may update; -1 = never stop.
    frequency : int, > 0
        Update every `frequency` steps from `begin_step`.

    Returns
    -------
    due : bool, or bool ndarray shaped like `step`

    Notes
    -----
    due = step >= begin_step and (end_step == -1 or step <= end_step)
          and (step - begin_step) % frequency == 0

    References
    ----------
    TensorFlow Model Optimization, ``PruningSchedule._should_prune_in_step``
    (``tensorflow_model_optimization/python/core/sparsity/keras/pruning_schedule.py``).

    Examples
    --------
    >>> [s for s in range(0, 500, 50) if should_prune_at(s, 100, 300, 100)]
    [100, 200, 300]
    """
    t = _checks.check_step("step", plain(step))
    begin_step, end_step = _check_begin_end(begin_step, end_step, allow_forever=True)
    frequency = _checks.check_int("frequency", frequency, lo=1)
    in_range = (t >= begin_step) & ((end_step < 0) | (t <= end_step))
    due = in_range & ((t - begin_step) % frequency == 0)
    return bool(due) if isinstance(t, int) else due


def polynomial_decay_sparsity(step, initial_sparsity, final_sparsity, begin_step, end_step,
                              power=3):
    """Target sparsity at `step` under the polynomial-decay schedule of Zhu & Gupta.

    Parameters
    ----------
    step : int or int ndarray, >= 0
        Updates taken so far. Unit: optimizer updates.
    initial_sparsity, final_sparsity : float in [0, 1]
        s_i (returned up to `begin_step`) and s_f (returned from `end_step` on).
    begin_step : int, >= 0
    end_step : int, > begin_step
    power : float, > 0, default 3

    Returns
    -------
    sparsity : float, or float64 ndarray shaped like `step`
        Exactly s_i for step <= begin_step, exactly s_f for step >= end_step, monotone in
        between (non-decreasing if s_f >= s_i).

    Raises
    ------
    ValueError
        If an argument is out of range (see Parameters), naming it and its value.

    Notes
    -----
    p = clip((step - begin_step) / (end_step - begin_step), 0, 1)
    s = s_f + (s_i - s_f) * (1 - p) ** power
    Evaluated in that form (monotone under rounding), then clipped into [min(s_i, s_f),
    max(s_i, s_f)] and set to exactly s_i at p == 0, where ``s_f + (s_i - s_f)`` can be one
    ulp off.

    References
    ----------
    Zhu & Gupta 2017, "To prune, or not to prune", eq. (1); TensorFlow Model Optimization
    ``PolynomialDecay`` (same formula).

    Examples
    --------
    >>> polynomial_decay_sparsity(50, 0.0, 0.5, begin_step=0, end_step=100)  # 0.5 - 0.5 / 8
    0.4375
    """
    t = _checks.check_step("step", plain(step))
    s_i = _checks.check_sparsity("initial_sparsity", initial_sparsity)
    s_f = _checks.check_sparsity("final_sparsity", final_sparsity)
    begin_step, end_step = _check_begin_end(begin_step, end_step, allow_forever=False)
    power = _check_power(power)
    p = np.clip((np.asarray(t, dtype=np.float64) - begin_step) / (end_step - begin_step), 0.0, 1.0)
    s = s_f + (s_i - s_f) * (1.0 - p) ** power
    s = np.clip(s, min(s_i, s_f), max(s_i, s_f))
    s = np.where(p == 0.0, s_i, s)
    return float(s) if isinstance(t, int) else s


def _check_begin_end(begin_step, end_step, allow_forever):
    begin_step = _checks.check_int("begin_step", begin_step, lo=0)
    end_step = _checks.check_int("end_step", plain(end_step))
    if end_step == -1 and allow_forever:
        return begin_step, end_step
    if end_step == -1:
        raise ValueError("end_step must be > begin_step; -1 (never stop) is not allowed for a "
                         "decaying schedule, it needs an end")
    if end_step < 0:
        raise ValueError(f"end_step must be -1 or >= 0, got {end_step}")
    if end_step < begin_step or (end_step == begin_step and not allow_forever):
        raise ValueError(
            f"end_step must be {'>=' if allow_forever else '>'} begin_step = {begin_step}, "
            f"got {end_step}"
        )
    return begin_step, end_step


def _check_power(power):
    if isinstance(power, (bool, np.bool_)) or not isinstance(power, numbers.Real):
        raise TypeError(f"power must be a real number > 0, got {plain(power)!r}")
    if not (math.isfinite(power) and power > 0):
        raise ValueError(f"power must be finite and > 0, got {plain(power)!r}")
    return power


@dataclass(frozen=True)
class ConstantSparsity:
    """Prune to one target sparsity at `begin_step` and every `frequency` steps after.

    Parameters
    ----------
    target_sparsity : float in [0, 1]
    begin_step : int, >= 0, default 0
        Unit: optimizer updates (``t`` counts updates from 0).
    end_step : int, default -1
        Last step at which the masks may update, >= begin_step; -1 = until training ends.
        ``end_step == begin_step`` is a single pruning at that step (allowed by TFMO).
    frequency : int, > 0, default 100

    Raises
    ------
    ValueError
        If an argument is out of range, naming it and its value.

    Notes
    -----
    sparsity(step) = target_sparsity; masks update where :func:`should_prune_at` is True.

    References
    ----------
    TensorFlow Model Optimization ``ConstantSparsity`` (same parameters and update steps;
    TFMO requires sparsity < 1, here 1 is allowed).

    Examples
    --------
    >>> sched = ConstantSparsity(0.9, begin_step=10, frequency=5)
    >>> sched(3), sched.should_prune(10), sched.should_prune(12), sched.should_prune(15)
    (0.9, True, False, True)
    """

    target_sparsity: float
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 100

    def __post_init__(self):
        object.__setattr__(self, "target_sparsity",
                           _checks.check_sparsity("target_sparsity", self.target_sparsity))
        b, e = _check_begin_end(self.begin_step, self.end_step, allow_forever=True)
        object.__setattr__(self, "begin_step", b)
        object.__setattr__(self, "end_step", e)
        object.__setattr__(self, "frequency", _checks.check_int("frequency", self.frequency, lo=1))

    def __call__(self, step):
        """Target sparsity at `step` (int or int ndarray, >= 0): always `target_sparsity`."""
        t = _checks.check_step("step", plain(step))
        if isinstance(t, int):
            return self.target_sparsity
        return np.full(t.shape, self.target_sparsity)

    def sparsity(self, step):
        """Same as calling the schedule; the name :func:`minscale.train.fit` looks up."""
        return self(step)

    def should_prune(self, step):
        """Whether masks update at `step`; see :func:`should_prune_at`."""
        return should_prune_at(step, self.begin_step, self.end_step, self.frequency)

    def get_config(self):
        """Constructor arguments as a dict: ``ConstantSparsity(**get_config())`` rebuilds it."""
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}

    @classmethod
    def from_config(cls, config):
        """Inverse of :meth:`get_config`."""
        return cls(**config)


@dataclass(frozen=True)
class PolynomialDecaySparsity:
    """Gradual pruning from `initial_sparsity` to `final_sparsity` (Zhu & Gupta 2017).

    Parameters
    ----------
    initial_sparsity, final_sparsity : float in [0, 1]
    begin_step : int, >= 0
        Unit: optimizer updates.
    end_step : int, > begin_step
        (begin_step == end_step would divide by zero and is rejected.)
    power : float, > 0, default 3
    frequency : int, > 0, default 100

    Raises
    ------
    ValueError
        If an argument is out of range, naming it and its value.

    Notes
    -----
    sparsity(step) = :func:`polynomial_decay_sparsity`; masks update where
    :func:`should_prune_at` (begin_step, end_step, frequency) is True.

    References
    ----------
    Zhu & Gupta 2017, "To prune, or not to prune"; TensorFlow Model Optimization
    ``PolynomialDecay`` (same formula, parameters and update steps).

    Examples
    --------
    >>> sched = PolynomialDecaySparsity(0.0, 0.5, begin_step=0, end_step=100, frequency=50)
    >>> sched(0), sched(50), sched(100), [sched.should_prune(t) for t in (0, 50, 100, 150)]
    (0.0, 0.4375, 0.5, [True, True, True, False])
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3
    frequency: int = 100

    def __post_init__(self):
        object.__setattr__(self, "initial_sparsity",
                           _checks.check_sparsity("initial_sparsity", self.initial_sparsity))
        object.__setattr__(self, "final_sparsity",
                           _checks.check_sparsity("final_sparsity", self.final_sparsity))
        b, e = _check_begin_end(self.begin_step, self.end_step, allow_forever=False)
        object.__setattr__(self, "begin_step", b)
        object.__setattr__(self, "end_step", e)
        object.__setattr__(self, "power", _check_power(self.power))
        object.__setattr__(self, "frequency", _checks.check_int("frequency", self.frequency, lo=1))

    def __call__(self, step):
        """Target sparsity at `step` (int or int ndarray, >= 0)."""
        return polynomial_decay_sparsity(step, self.initial_sparsity, self.final_sparsity,
                                         self.begin_step, self.end_step, self.power)

    def sparsity(self, step):
        """Same as calling the schedule; the name :func:`minscale.train.fit` looks up."""
        return self(step)

    def should_prune(self, step):
        """Whether masks update at `step`; see :func:`should_prune_at`."""
        return should_prune_at(step, self.begin_step, self.end_step, self.frequency)

    def get_config(self):
        """Constructor arguments as a dict: ``PolynomialDecaySparsity(**get_config())``."""
        return {"initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "power": self.power, "frequency": self.frequency}

    @classmethod
    def from_config(cls, config):
        """Inverse of :meth:`get_config`."""
        return cls(**config)


