"""prune's argument checks: :mod:`minscale._checks` with prune's tested message texts.

The type checks are :mod:`minscale._checks`'s. Three texts stay prune's own because tests
match them: ``"X must be >= 1, got 0"`` (``_checks`` says ``"X must be an integer >= 1, got
0"``; pinned for ``n``, ``begin_step``, ``frequency``, ``bits``, the first in
``tests/test_data.py``), ``"include_bias must be True or False"`` and ``"seed must be a
non-negative int, got -1"``. Switching them to the ``_checks`` texts is a follow-up that changes
those ``match=`` strings. Every message shows a NumPy scalar as the plain number it holds
(:func:`minscale.data.plain`).

A private module with public names: shared by the modules of ``minscale.prune`` only.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import _checks
from ..data import plain


def check_sparsity(name, value):
    """:func:`minscale._checks.check_sparsity`, the value shown as a plain number.

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    TypeError, ValueError
        As ``_checks.check_sparsity`` ("a fraction of zeros, not a percent").
    """
    return _checks.check_sparsity(name, plain(value))


def check_count(name, value, minimum):
    """Return ``value`` as a Python int >= ``minimum``.

    Raises
    ------
    TypeError
        Not an integer (bool included): ``"{name} must be an integer, got …"``.
    ValueError
        ``"{name} must be >= {minimum}, got {value}"``.
    """
    value = _checks.check_int(name, plain(value))
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_flag(name, value):
    """Return ``value`` as a Python bool; only bool and ``numpy.bool_`` are accepted.

    Raises
    ------
    TypeError
        ``"{name} must be True or False, got …"``.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise _checks.ArgumentTypeError(f"{name} must be True or False, got {plain(value)!r}")
    return bool(value)


def as_rng(name, seed):
    """A ``numpy.random.Generator`` from an int seed >= 0, or the Generator given (as is).

    Raises
    ------
    TypeError
        Neither an integer nor a Generator.
    ValueError
        ``"{name} must be a non-negative int, got {seed}"``.
    """
    seed = plain(seed)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    return _checks.as_rng(name, seed)


# ----------------------------------------------------------------------------------------
# value first, for the two callers outside prune that import prune's private checks
# (minscale.study, minscale.commands.prune); they move to minscale._checks, then these go


def check_int_value_first(value, name, minimum):
    """``check_count(name, value, minimum)``: the former ``prune._check_int``."""
    return check_count(name, value, minimum)


def check_sparsity_value_first(sparsity, name="sparsity"):
    """``check_sparsity(name, sparsity)``: the former ``prune._check_sparsity``."""
    return check_sparsity(name, sparsity)
