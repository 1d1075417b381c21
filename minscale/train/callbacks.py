"""Training callbacks: the hook base class, and the one the loop installs for gradual pruning."""
from __future__ import annotations

from ..prune import prune

# PruningCallback is installed by the loop itself (fit's pruning=), not by users
__all__ = ["Callback"]


class Callback:
    """Base class of training callbacks; every hook is optional.

    Hooks: ``on_train_begin(model)``, ``on_step_begin(model, step)`` (before the batch's
    forward pass; ``step`` = updates applied so far), ``on_epoch_end(model, epoch, logs)`` and
    ``on_train_end(model, history)``.
    """

    def on_train_begin(self, model):
        """Called once before the first batch."""

    def on_step_begin(self, model, step):
        """Called before each batch's forward pass."""

    def on_epoch_end(self, model, epoch, logs):
        """Called after each epoch with its logs dict."""

    def on_train_end(self, model, history):
        """Called once after the last epoch."""


class PruningCallback(Callback):
    """Gradual pruning: update the masks when the schedule says so (TFMO semantics)."""

    def __init__(self, schedule, method):
        self.schedule, self.method = schedule, method

    def on_step_begin(self, model, step):
        if self.schedule.should_prune(step):
            prune(model, float(self.schedule.sparsity(step)), method=self.method)
