"""The one place where minscale chooses its compute backend.

Two backends have the same functions with the same signatures:

* ``numpy`` (:mod:`minscale.kernels._numpy`) -- the reference, readable, always present;
* ``numba`` (:mod:`minscale.kernels._numba`) -- the same kernels JIT-compiled.

Choice, in order: :func:`set_backend`, else the environment variable ``MINSCALE_BACKEND``
(``numpy`` or ``numba``), else ``numba`` when it imports, else ``numpy``. The choice is made on
first use of a kernel, not at ``import minscale``, so code that never calls a kernel never pays
for importing Numba.
"""
from __future__ import annotations

import importlib
import os

__all__ = ["BACKENDS", "get_backend", "set_backend", "impl", "compiled_epochs",
           "compiled_collectives", "compiled_data_parallel_epochs", "ACTIVATION_CODES"]

BACKENDS = ("numpy", "numba")

#: integer codes of the activations, as the kernels take them
ACTIVATION_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4}

_forced: str | None = None
_active: str | None = None
_module = None


def _load(name: str):
    if name == "numba":
        return importlib.import_module("minscale.kernels._numba")
    return importlib.import_module("minscale.kernels._numpy")


def _check_name(name, argument):
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS}, got {name!r}")


def set_backend(name: str | None) -> str:
    """Force a backend for every later kernel call.

    Parameters
    ----------
    name : {"numpy", "numba"} or None
        ``None`` returns to automatic selection (``MINSCALE_BACKEND``, else numba if it
        imports, else numpy).

    Returns
    -------
    str
        The backend now in use.

    Raises
    ------
    ValueError
        If `name` is not a known backend.
    ImportError
        If ``"numba"`` is asked for and Numba cannot be imported.
    """
    global _forced, _active, _module
    if name is not None:
        _check_name(name, "name")
        module = _load(name)  # fail here, loudly, rather than on the first kernel call
        _forced, _active, _module = name, name, module
        return name
    _forced, _active, _module = None, None, None
    return get_backend()


def _resolve():
    global _active, _module
    requested = _forced or os.environ.get("MINSCALE_BACKEND") or None
    if requested is not None:
        _check_name(requested, "MINSCALE_BACKEND")
        _module, _active = _load(requested), requested
        return _module
    try:
        _module, _active = _load("numba"), "numba"
    except ImportError:
        _module, _active = _load("numpy"), "numpy"
    return _module


def get_backend() -> str:
    """Name of the backend in use (resolving it if no kernel has run yet).

    Returns
    -------
    str
        ``"numpy"`` or ``"numba"``.
    """
    if _module is None:
        _resolve()
    return _active


def impl():
    """The module implementing the active backend (``_numpy`` or ``_numba``).

    Returns
    -------
    module
        It has every kernel function named in :mod:`minscale.kernels._numpy`.
    """
    return _module if _module is not None else _resolve()


def compiled_epochs():
    """The compiled epoch loop (:mod:`minscale.kernels._fastfit`) when the backend is numba.

    Whole training epochs in one compiled call exist only as Numba code, so they are reached
    through this function: the NumPy backend never imports Numba.

    Returns
    -------
    module or None
        ``minscale.kernels._fastfit`` when :func:`get_backend` is ``"numba"``, else None.
    """
    if get_backend() != "numba":
        return None
    return importlib.import_module("minscale.kernels._fastfit")


def compiled_data_parallel_epochs():
    """The compiled data-parallel epoch loop (:mod:`minscale.kernels._fastfit_dp`) on numba.

    Returns
    -------
    module or None
        ``minscale.kernels._fastfit_dp`` when :func:`get_backend` is ``"numba"``, else None.
    """
    if get_backend() != "numba":
        return None
    return importlib.import_module("minscale.kernels._fastfit_dp")


def compiled_collectives(backend=None):
    """The compiled shared-memory allreduce (:mod:`minscale.kernels._collectives`) on numba.

    Parameters
    ----------
    backend : {"numpy", "numba"} or None
        None: the backend in use (:func:`get_backend`). A shared-memory group records the
        choice its creator made, and its workers pass it here, so that every rank runs the
        same algorithm whatever backend the worker resolves on its own.

    Returns
    -------
    module or None
        ``minscale.kernels._collectives`` for numba, else None.

    Raises
    ------
    ValueError
        If `backend` is not a known backend.
    ImportError
        If `backend` is ``"numba"`` and Numba cannot be imported.
    """
    if backend is None:
        backend = get_backend()
    _check_name(backend, "backend")
    if backend != "numba":
        return None
    return importlib.import_module("minscale.kernels._collectives")


def __getattr__(name):
    # Kernels are looked up on the active backend at call time, so set_backend() takes effect
    # immediately: ``kernels.bias_act(...)`` runs the current backend's ``bias_act``.
    if name.startswith("__"):
        raise AttributeError(name)
    module = impl()
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"no kernel named {name!r} in minscale.kernels") from None
