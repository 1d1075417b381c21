"""The public path of the one-machine data-parallel trainer; the code lives elsewhere.

``fit(..., workers=k)`` is public and reaches the trainer with a downward import, so the trainer
is part of train: :mod:`minscale.train.workers` defines `MODES`, `combine_epoch_losses`,
`fit_workers` and `relink_model`, and :mod:`minscale.parallel.observers` defines
`synchronized_observers`. This module re-exports them under their old path: the observers
directly, the trainer's names on first access (PEP 562 ``__getattr__``), because a static import
of train here would make the packages parallel and train import each other.
"""
from __future__ import annotations

import importlib

from .observers import synchronized_observers

# the names other than synchronized_observers resolve through __getattr__ below
__all__ = [  # noqa: F822
    "fit_workers", "relink_model", "combine_epoch_losses", "synchronized_observers", "MODES",
]

#: name -> module that defines it, imported on first access
_MOVED = {name: "minscale.train.workers"
          for name in ("fit_workers", "relink_model", "combine_epoch_losses", "MODES")}


def __getattr__(name):
    if name in _MOVED:
        value = getattr(importlib.import_module(_MOVED[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MOVED))
