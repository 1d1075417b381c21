"""What a fit call reports: its History, and the DivergenceError that stops it.

The divergence rule lives here too (``BLOWUP_FACTOR``, :func:`divergence_limit`) because both
training loops -- the Python loop (:mod:`minscale.train.loop`) and the compiled one -- apply it.
"""
from __future__ import annotations

import math

__all__ = ["History", "DivergenceError", "BLOWUP_FACTOR", "divergence_limit"]


#: A batch loss this many times the first batch loss of a fit call counts as divergence. Adam's
#: step is bounded by the learning rate, so at an absurd rate the loss can climb to 1e36
#: without ever overflowing; ordinary training never multiplies its loss by 1e10.
BLOWUP_FACTOR = 1e10


def divergence_limit(start_loss):
    """The batch loss above which training counts as diverged.

    Parameters
    ----------
    start_loss : float
        Loss of the first batch of the fit call, before any update (the loss's unit).

    Returns
    -------
    float
        ``BLOWUP_FACTOR * start_loss`` when `start_loss` is positive and finite, else ``inf``
        (a zero starting loss gives no scale to compare with; NaN and inf are caught apart).
    """
    if start_loss > 0 and math.isfinite(start_loss):
        return BLOWUP_FACTOR * start_loss
    return math.inf


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss, or a loss `BLOWUP_FACTOR` times the first
    batch's; the model keeps its last finite parameters.

    Attributes
    ----------
    epoch : int
        0-based epoch in which it happened.
    step : int
        Optimizer updates applied before the failing batch.
    learning_rate : float
        The rate of the last update applied.
    """

    def __init__(self, message, epoch, step, learning_rate):
        super().__init__(message)
        self.epoch, self.step, self.learning_rate = epoch, step, learning_rate


class History:
    """What :func:`fit` measured.

    Attributes
    ----------
    history : dict of list
        ``"loss"`` (per epoch, every sample weighted equally), ``"val_loss"`` and
        ``"val_accuracy"`` when validation data / the metric are given, ``"lr"`` (the rate of
        every update, in order), ``"sparsity"`` (per epoch, when pruning).
    epoch : list of int
    epoch_seconds : list of float
        With ``fit(..., timing=True)``: the wall-clock seconds (``time.perf_counter``) of every
        epoch of the call, measured in the process that runs rank 0 (inside the worker in
        data-parallel training, so process start-up is left out). The first epoch's span starts
        after the loop's set-up and includes any first-call costs (JIT cache loads, page
        faults). Empty without `timing`. Kept apart from :attr:`history` so that two runs'
        histories compare equal whatever their timings.
    loop : {"compiled", "general"} or None
        The training loop that ran: the compiled whole-epoch loop
        (:mod:`minscale.train.compiled`, :mod:`minscale.train.compiled_dp`) or the general
        Python loop (:func:`minscale.train.loop.run`); None for pipeline training and a history
        restored from a checkpoint before it resumes.
    """

    def __init__(self):
        self.history = {"loss": [], "lr": []}
        self.epoch = []
        self.epoch_seconds = []
        self.loop = None

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
