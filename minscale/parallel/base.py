"""The Communicator protocol, its errors, and the pure rules every backend shares.

A communicator is the handful of collective operations data-parallel training needs:
``allreduce`` (sum, in place, on one contiguous float buffer), ``broadcast`` (in place),
``barrier``, plus ``rank`` and ``size``; and, for tensor parallelism,
``allreduce_in_rank_order`` (the same reduction, added rank 0 + rank 1 + ... left to
right). The three backends (`LocalComm`, `SharedMemoryComm`, `MPIComm`) follow the buffer-based, in-place semantics of MPI's ``MPI_Allreduce`` with
``MPI_IN_PLACE`` and ``MPI_Bcast``, so code written against one runs unchanged on the others.

Collective rule (MPI standard, "Correctness" section of the collective-communication chapter): every rank calls the same collectives in the same
order, with buffers of the same length and dtype. A rank that skips a call leaves its peers
waiting; the shared-memory backend turns that into a timeout, MPI into a hang, which is why the
trainer makes every worker issue the same number of calls even when its shard is empty.
"""

from __future__ import annotations

import math
import os
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Communicator",
    "CommError",
    "CommAbortedError",
    "CommTimeoutError",
    "WorkerError",
    "REDUCE_OPS",
    "DEFAULT_TIMEOUT",
    "TIMEOUT_ENV",
    "check_buffer",
    "check_timeout",
    "default_timeout",
    "check_op",
    "check_root",
    "reduce_in_rank_order",
    "shard_bounds",
]

#: Reduction operators every backend accepts, by name.
REDUCE_OPS = ("sum", "max", "min")

#: Seconds a rank waits at one collective for its peers before the group gives up.
DEFAULT_TIMEOUT = 120.0

#: Environment variable that replaces `DEFAULT_TIMEOUT` for every communicator and trainer
#: that is not given a timeout explicitly (seconds, a number > 0).
TIMEOUT_ENV = "MINSCALE_COMM_TIMEOUT"


class CommError(RuntimeError):
    """A collective operation could not complete (base class of the communicator errors)."""


class CommAbortedError(CommError):
    """The group was aborted (by the parent process or by a failing peer) during a collective."""


class CommTimeoutError(CommError, TimeoutError):
    """Peers did not reach a collective within the timeout; one of them may have died."""


class WorkerError(RuntimeError):
    """A worker process raised or died; raised in the parent that launched the workers.

    Attributes
    ----------
    rank : int
        Rank of the worker that failed first (the root cause, not a peer aborted after it).
    exitcode : int or None
        The worker's exit code; negative -N means it was killed by signal N.
    remote_traceback : str or None
        The formatted traceback from the worker, when it raised a Python exception.
    exception : BaseException or None
        The worker's exception rebuilt in the parent (same type, args and attributes), when
        its class could be imported and rebuilt; None for a killed worker.
    """

    def __init__(self, message, *, rank, exitcode=None, remote_traceback=None, exception=None):
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode
        self.remote_traceback = remote_traceback
        self.exception = exception


@runtime_checkable
class Communicator(Protocol):
    """What a data-parallel (and tensor-parallel) trainer needs from a process group.

    Attributes
    ----------
    rank : int
        This process's index in the group, ``0 <= rank < size``.
    size : int
        Number of processes in the group, >= 1.

    Notes
    -----
    Semantics follow MPI's buffer interface (``MPI_Allreduce`` with ``MPI_IN_PLACE``,
    ``MPI_Bcast``, ``MPI_Barrier``): operations are collective and in place, and every rank
    must call them in the same order with equally long buffers of the same dtype.
    """

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """Reduce `buf` element-wise over all ranks, in place; return `buf`.

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable, any shape
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array, now holding the reduction (identical on every rank)
        """

    def allreduce_in_rank_order(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """As `allreduce`, with the order fixed: ``buf_0 op buf_1 op ... op buf_{size-1}``.

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable, any shape
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array, now holding `reduce_in_rank_order` of the ranks' buffers, bit
            for bit, identical on every rank

        Notes
        -----
        What tensor parallelism uses, so that k processes reproduce a single-process
        reference of the same split exactly. A backend whose `allreduce` already adds in
        rank order (`LocalComm`, `SharedMemoryComm`) may simply call it; `MPIComm`, whose
        `allreduce` leaves the order to the MPI library, gathers every rank's buffer first.
        """

    def broadcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite `buf` on every rank with the contents of `buf` on `root`; return `buf`."""

    def barrier(self) -> None:
        """Return only when every rank has entered the barrier."""


def check_buffer(buf, name="buf"):
    """Validate a collective's buffer: a writeable, C-contiguous float32/float64 ndarray.

    Parameters
    ----------
    buf : object
        The candidate buffer.
    name : str, default "buf"
        Argument name used in error messages.

    Returns
    -------
    buf : ndarray
        The same object, unchanged.

    Raises
    ------
    TypeError
        If `buf` is not an ndarray or its dtype is not float32/float64.
    ValueError
        If `buf` is not C-contiguous or is read-only (in-place collectives write into it).
    """
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float32 or float64, got {buf.dtype}")
    if not buf.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (collectives work in place on one memory block), "
            f"got an array with strides {buf.strides}"
        )
    if not buf.flags.writeable:
        raise ValueError(f"{name} must be writeable (collectives work in place), got a read-only array")
    return buf


def check_timeout(timeout, name="timeout"):
    """Validate a collective timeout: a finite number of seconds > 0.

    Parameters
    ----------
    timeout : int or float
        Seconds.
    name : str, default "timeout"
        Argument name used in error messages.

    Returns
    -------
    timeout : float

    Raises
    ------
    TypeError
        If `timeout` is not a number.
    ValueError
        If `timeout` is not finite or not > 0.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of seconds, got {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {timeout}")
    return float(timeout)


def default_timeout():
    """Seconds per collective when none is given: ``$MINSCALE_COMM_TIMEOUT``, else 120.

    Returns
    -------
    timeout : float

    Raises
    ------
    ValueError
        If the environment variable is set but is not a finite number of seconds > 0.
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a finite number of seconds > 0, got {text!r}") from None
    return check_timeout(value, TIMEOUT_ENV)


def check_op(op):
    """Validate a reduction operator name.

    Parameters
    ----------
    op : str
        One of `REDUCE_OPS`.

    Returns
    -------
    op : str

    Raises
    ------
    ValueError
        If `op` is not one of "sum", "max", "min".
    """
    if not isinstance(op, str) or op not in REDUCE_OPS:
        raise ValueError(f"op must be one of {REDUCE_OPS}, got {op!r}")
    return op


def check_root(root, size):
    """Validate a broadcast root rank.

    Parameters
    ----------
    root : int
    size : int
        Group size.

    Returns
    -------
    root : int

    Raises
    ------
    TypeError
        If `root` is not an integer.
    ValueError
        If `root` is outside ``[0, size)``.
    """
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
        raise TypeError(f"root must be an int, got {type(root).__name__}")
    if not 0 <= root < size:
        raise ValueError(f"root must be in [0, {size}) for a group of size {size}, got {root}")
    return int(root)


def reduce_in_rank_order(slots, op, out):
    """Reduce the rows of `slots` into `out`, adding rank 0, then 1, ..., then size-1.

    A fixed order makes the result bit-identical on every rank and across runs, which
    floating-point addition (not associative) would not guarantee under any other order.

    Parameters
    ----------
    slots : ndarray, shape (size, p), float32 or float64
        Row r holds rank r's contribution.
    op : {"sum", "max", "min"}
    out : ndarray, shape (p,), same dtype as `slots`
        Receives the reduction; may not alias any row of `slots`.

    Returns
    -------
    out : ndarray, shape (p,)

    Notes
    -----
    out = (((slots[0] op slots[1]) op slots[2]) ... op slots[size-1])

    References
    ----------
    The MPI standard lets an implementation combine contributions in any order (predefined
    operations are treated as associative); this fixed rank order is minscale's choice, so
    the shared-memory backend is reproducible bit for bit.
    """
    check_op(op)
    np.copyto(out, slots[0])
    ufunc = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]
    for r in range(1, slots.shape[0]):
        ufunc(out, slots[r], out=out)
    return out


def shard_bounds(n, rank, size):
    """Start and stop of rank's contiguous shard when `n` samples are split over `size` ranks.

    The first ``n % size`` ranks get one sample more; when ``n < size`` the last ranks get an
    empty shard (``start == stop``), which contributes zero to a gradient sum.

    Parameters
    ----------
    n : int, >= 0
        Number of samples in the global batch.
    rank : int, in [0, size)
    size : int, >= 1
        Number of ranks.

    Returns
    -------
    (start, stop) : tuple of int
        Rank's samples are ``batch[start:stop]``; shards tile ``[0, n)`` in rank order.

    Raises
    ------
    TypeError
        If an argument is not an integer.
    ValueError
        If n < 0, size < 1 or rank outside [0, size).

    Notes
    -----
    q, r = divmod(n, size);  start = rank * q + min(rank, r);  stop = start + q + (rank < r)

    References
    ----------
    The split of ``numpy.array_split`` and of PyTorch ``DistributedSampler`` without padding.

    Examples
    --------
    >>> [shard_bounds(5, r, 3) for r in range(3)]
    [(0, 2), (2, 4), (4, 5)]
    """
    for arg_name, value in (("n", n), ("rank", rank), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{arg_name} must be an int, got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    q, r = divmod(int(n), int(size))
    start = rank * q + min(rank, r)
    stop = start + q + (1 if rank < r else 0)
    return int(start), int(stop)
