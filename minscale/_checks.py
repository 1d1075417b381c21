"""Argument checks shared by every module: one family, name first, normalized value returned.

Each check raises :class:`ArgumentTypeError` (a TypeError that is also a ValueError) for a
value of the wrong type and ValueError for a value out of range; every message names the
argument, the value received and what was expected. The texts follow the ones quant has
always used ("bits must be an integer in [2, 32], got 40"), which contain the patterns the
tests of quant, prune, train and the CLI match.

This module imports only NumPy, so any module of minscale may use it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "COUNT_MAX",
    "SEED_MAX",
    "integer_text",
    "plain",
    "ArgumentTypeError",
    "check_int",
    "check_bool",
    "check_real",
    "check_sparsity",
    "check_choice",
    "check_step",
    "as_rng",
    "check_float_dtype",
    "check_finite_array",
    "check_int_array",
]


#: Largest value of a count argument (epochs, batch size, units, input features, workers,
#: rows, ...): 2**31 - 1. A product of two counts (epochs x batches, rows x units) then stays
#: below 2**62, inside the int64 range the compiled kernels compute indices in.
COUNT_MAX = 2**31 - 1
#: Largest seed: 2**63 - 1, the int64 range (numpy itself accepts any size of integer).
SEED_MAX = 2**63 - 1


def plain(value):
    """`value` for an error message: a NumPy scalar as the Python number it holds.

    ``repr(np.int64(0))`` is ``'np.int64(0)'`` on NumPy >= 2; messages show ``0``.

    Parameters
    ----------
    value : object

    Returns
    -------
    object
        ``value.item()`` for a NumPy scalar (``numpy.generic``); a tuple or list with its
        items converted so (recursively); else `value` unchanged.
    """
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type.

    A subclass of both TypeError and ValueError: quant and prune document TypeError for a
    wrong type, ``fit`` and the CLI document ValueError for every bad argument; this one
    exception keeps both promises (``except ValueError`` and ``except TypeError`` both catch it).
    """


def _is_int(value):
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Integral)


def integer_text(value):
    """An integer for a message: in full up to 30 digits, else its length."""
    text = str(value)
    n = len(text.lstrip("-"))
    return text if n <= 30 else f"{text[:12]}... ({n} digits)"


def _bound(value):
    # the two named limits read as what they are, not as ten-digit numbers
    return {COUNT_MAX: f"2**31 - 1 = {COUNT_MAX}", SEED_MAX: f"2**63 - 1 = {SEED_MAX}"}.get(
        value, str(value))


def _range_text(lo, hi, lo_open=False, hi_open=False):
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_bound(lo)}"
    return f"{'<' if hi_open else '<='} {_bound(hi)}"


def check_int(name, value, lo=None, hi=None):
    """Return ``value`` as a Python int in ``[lo, hi]``; bool is not an integer here.

    Parameters
    ----------
    name : str
        The argument's name, used in the message.
    value : object
        Accepted: any ``numbers.Integral`` except bool / ``numpy.bool_``.
    lo, hi : int or None, default None
        Inclusive bounds; None leaves that side open.

    Returns
    -------
    int

    Raises
    ------
    ArgumentTypeError
        ``"{name} must be an integer, got {plain(value)!r} of type {type}"``.
    ValueError
        ``"{name} must be an integer in [lo, hi], got v"`` (or ``>= lo`` / ``<= hi``).

    Examples
    --------
    >>> check_int("bits", 8, 2, 32)
    8
    """
    if not _is_int(value):
        raise ArgumentTypeError(
            f"{name} must be an integer, got {plain(value)!r} of type {type(value).__name__}"
        )
    value = int(value)
    below, above = lo is not None and value < lo, hi is not None and value > hi
    if below or above:
        if hi in (COUNT_MAX, SEED_MAX):
            # a size limit, not part of the argument's meaning: name only the side violated
            lo, hi = (lo, None) if below else (None, hi)
        raise ValueError(f"{name} must be an integer {_range_text(lo, hi)}, got "
                         f"{integer_text(value)}")
    return value


def check_bool(name, value):
    """Return ``value`` as a Python bool; only bool and ``numpy.bool_`` are accepted.

    Raises
    ------
    ArgumentTypeError
        ``"{name} must be a bool, got {plain(value)!r}"`` (an int 0/1 is refused: it is usually a
        positional argument in the wrong place).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be a bool, got {plain(value)!r}")
    return bool(value)


def check_real(name, value, lo=None, hi=None, *, lo_open=False, hi_open=False):
    """Return ``value`` as a Python float in the interval given; NaN is refused.

    Parameters
    ----------
    name : str
    value : object
        Any ``numbers.Real`` except bool.
    lo, hi : float or None
        Bounds; None leaves that side open (infinite values pass an open side).
    lo_open, hi_open : bool, default False
        Exclude the bound itself.

    Returns
    -------
    float

    Raises
    ------
    ArgumentTypeError
        ``"{name} must be a real number, got {plain(value)!r}"``.
    ValueError
        ``"{name} must not be NaN"`` or ``"{name} must be > 0, got -1.0"`` (the interval).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {plain(value)!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    bad_lo = lo is not None and (value < lo or (lo_open and value == lo))
    bad_hi = hi is not None and (value > hi or (hi_open and value == hi))
    if bad_lo or bad_hi:
        raise ValueError(
            f"{name} must be {_range_text(lo, hi, lo_open, hi_open)}, got {plain(value)!r}"
        )
    return value


def check_sparsity(name, value):
    """Return a sparsity (fraction of zeros) as a float in [0, 1].

    Raises
    ------
    ArgumentTypeError
        For a non-real value; the message says "a fraction of zeros, not a percent".
    ValueError
        Outside [0, 1] or NaN, with the same reminder (50 is the usual mistake for 0.5).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(
            f"{name} must be a real number in [0, 1] (a fraction of zeros, not a percent), "
            f"got {plain(value)!r} of type {type(value).__name__}"
        )
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1] (a fraction of zeros, not a percent), got {plain(value)!r}"
        )
    return number


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``.

    Raises
    ------
    ValueError
        ``"{name} must be one of {choices}, got {plain(value)!r}"``.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {plain(value)!r}")
    return value


def check_step(name, step):
    """Return an optimizer step count as an int, or an integer ndarray as int64; all >= 0.

    Raises
    ------
    ArgumentTypeError
        ``"{name} must be an integer (optimizer updates), got …"`` for bool, floats and
        non-integer arrays.
    ValueError
        ``"{name} must be >= 0 (updates taken so far), got …"``.
    """
    if isinstance(step, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be an integer (optimizer updates), got {plain(step)!r}")
    if isinstance(step, numbers.Integral):
        if step < 0:
            raise ValueError(f"{name} must be >= 0 (updates taken so far), got {plain(step)!r}")
        return int(step)
    arr = np.asarray(step)
    if arr.dtype.kind not in "iu":
        raise ArgumentTypeError(
            f"{name} must be an integer or an integer ndarray (optimizer updates), got {plain(step)!r}"
        )
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0 (updates taken so far), got min {arr.min()}")
    return arr.astype(np.int64)


def as_rng(name, seed):
    """A ``numpy.random.Generator`` from an int seed >= 0, or the Generator given (as is).

    Raises
    ------
    ArgumentTypeError
        Neither an integer nor a Generator.
    ValueError
        A negative seed.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if not _is_int(seed):
        raise ArgumentTypeError(
            f"{name} must be an integer >= 0 or a numpy.random.Generator, got {plain(seed)!r}"
        )
    if seed < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {plain(seed)!r}")
    return np.random.default_rng(int(seed))


def check_float_dtype(name, dtype):
    """Return ``numpy.dtype(dtype)`` when it is float32 or float64.

    Raises
    ------
    ArgumentTypeError
        ``dtype`` is not understood by NumPy at all.
    ValueError
        ``"{name} must be float32 or float64, got {dtype!r}"``.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name} must be float32 or float64, got {dtype!r}")
    return dt


def check_finite_array(name, arr):
    """Return ``arr`` (an ndarray) when every entry is finite; integer arrays always are.

    Raises
    ------
    ValueError
        ``"{name} must be finite, got 2 non-finite entries, the first nan at index (0, 1)"``.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fc" or not arr.size or np.isfinite(arr).all():
        return arr
    bad = np.flatnonzero(~np.isfinite(arr.ravel()))
    first = np.unravel_index(bad[0], arr.shape)
    raise ValueError(
        f"{name} must be finite, got {bad.size} non-finite entr"
        f"{'y' if bad.size == 1 else 'ies'}, the first {plain(arr.ravel()[bad[0]])!r} at index "
        f"{tuple(int(i) for i in first)}"
    )


def check_int_array(name, value, lo, hi, shape=None):
    """Return ``value`` as an int64 ndarray whose entries lie in ``[lo, hi]``.

    Parameters
    ----------
    name : str
    value : array_like of integers (a Python int is a 0-d array)
    lo, hi : int
        Inclusive range of every entry.
    shape : tuple of int or None
        When given, the required shape (broadcasting is the caller's business).

    Raises
    ------
    ArgumentTypeError
        Not an integer dtype (bool and floats are refused).
    ValueError
        Wrong shape, or an entry outside the range (the message gives the first one).
    """
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ArgumentTypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {arr.shape}")
    if arr.size:
        out = (arr < lo) | (arr > hi)
        if out.any():
            idx = np.unravel_index(int(np.argmax(out)), arr.shape) if arr.ndim else ()
            raise ValueError(
                f"{name} must hold integers in [{lo}, {hi}], got {int(arr[idx])} at index "
                f"{tuple(int(i) for i in idx)}"
            )
    return arr.astype(np.int64)
