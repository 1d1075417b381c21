"""minscale: framework-free training, pruning, quantization and data-parallel scaling.

The top level re-exports :class:`Sequential`, :class:`Dense`, :func:`save`, :func:`load`,
:func:`set_backend` and the submodules. Submodules that pull in optional or heavy
dependencies load on first attribute access, so ``import minscale`` stays cheap and never
imports Numba.
"""
from __future__ import annotations

import importlib

from . import datasets, layers, losses, optim, regularizers, schedules
from ._version import __version__
from .kernels import get_backend, set_backend
from .layers import Dense
from .model import Sequential

_LAZY_SUBMODULES = ("data", "train", "prune", "quant", "parallel", "io", "study", "report",
                    "testing", "kernels", "model", "export")
_LAZY_FUNCTIONS = {"save": "io", "load": "io"}

__all__ = ["Sequential", "Dense", "save", "load", "set_backend", "get_backend", "__version__",
           "datasets", "layers", "losses", "optim", "regularizers", "schedules", *_LAZY_SUBMODULES]


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"minscale.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f"minscale.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module 'minscale' has no attribute {name!r}")
