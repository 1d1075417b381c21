"""SharedMemoryComm: k processes on one machine, collectives through POSIX shared memory.

Layout. The parent creates one shared workspace of shape ``(2, size, slot)`` bytes and a
`BoundedBarrier` for ``size`` processes. An allreduce is

1. rank r copies its buffer into slot ``[g % 2, r]`` (g counts the group's data collectives),
2. barrier: every slot of generation g is written,
3. every rank reduces slots ``[g % 2, 0..size-1]`` in rank order into its own buffer,

so all ranks compute the same sum in the same order: bit-identical results, no root rank.
Alternating between the two slot sets (double buffering) removes the second barrier a
single set would need: rank r overwrites set ``g % 2`` again only at collective g + 2, after
the barrier of collective g + 1, which no rank passes before every rank finished reading g.

Failure model. Every lock and wait of a collective is bounded: a rank gives up after
``timeout`` seconds (CommTimeoutError) when a peer died, is stopped (SIGSTOP) or hung, even if
that peer holds the barrier's lock. The launching parent sets the barrier's abort flag as soon
as it sees a worker exit, so peers stop within 0.1 s. A worker ends when its parent dies:
on Linux through a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), on every
system through a watchdog thread and a check of the parent in each collective. The parent
creates and unlinks every segment (named ``minscale_<pid>_<hex>`` after it); workers only
attach, without registering the segment with the resource tracker, so no worker's exit can
unlink a segment still in use. When the parent is killed, its resource tracker unlinks the
segments and semaphores once the last worker has exited.

References
----------
Python ``multiprocessing.shared_memory`` and ``multiprocessing.synchronize`` documentation;
bpo-39959 / gh-82300 for the resource-tracker behaviour of attached segments; prctl(2) for
``PR_SET_PDEATHSIG``; A. B. Downey, "The Little Book of Semaphores", 3.7 (reusable barrier).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import secrets
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from .. import kernels
from .base import (
    DEFAULT_TIMEOUT,
    CommAbortedError,
    CommError,
    CommTimeoutError,
    WorkerError,
    check_buffer,
    check_op,
    check_root,
    check_timeout,
    default_timeout,
    reduce_in_rank_order,
)

__all__ = [
    "BoundedBarrier",
    "SharedArray",
    "SharedArraySpec",
    "SharedMemoryComm",
    "SharedMemoryCommSpec",
    "SharedMemoryGroup",
    "run_workers",
    "pack_exception",
    "unpack_exception",
    "DEFAULT_TIMEOUT",
    "exit_with_parent",
    "process_gone",
    "check_not_bootstrapping",
]

# Slots start on cache-line boundaries so two ranks never write the same line.
_SLOT_ALIGN = 64

# Seconds between checks of the abort flag and of the parent while a rank waits; also how
# often a worker's watchdog looks at its parent.
_POLL = 0.1

# Segment names: "/minscale_" + pid (up to 7 digits) + "_" + 8 hex digits = at most 26
# characters, within macOS's 31-character limit for POSIX shared-memory names.
_SEGMENT_PREFIX = "minscale_"

# Seconds between the parent's looks at the workers' process states (stopped ones).
_WATCH = 1.0

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_TRACKER_LOCK = threading.Lock()


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _resolve_timeout(timeout):
    return default_timeout() if timeout is None else check_timeout(timeout)


def process_gone(pid):
    """Whether process `pid` has ended: exited, or a zombie its parent has not reaped yet.

    Parameters
    ----------
    pid : int

    Returns
    -------
    bool
        False for this process and for its live parent. A dead parent is seen at once on
        every POSIX system (its children are re-parented, so ``os.getppid()`` changes); any
        other process is looked up with signal 0 and, where ``/proc`` exists, its state.
    """
    if pid == os.getpid() or pid == os.getppid() or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _process_state(pid):
    """One word for a live process's state from /proc (Linux), or "" where unknown."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    return {b"T": "stopped", b"t": "stopped by a debugger", b"D": "blocked in the kernel"}.get(state, "")


def _create_segment(nbytes):
    # Named after the creating process, so a leftover segment can be traced to its run.
    while True:
        name = f"{_SEGMENT_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        try:
            return shared_memory.SharedMemory(name=name, create=True, size=nbytes)
        except FileExistsError:
            continue


def _attach_untracked(name):
    """Attach to an existing segment without registering it with the resource tracker.

    On Python < 3.13 ``SharedMemory(name)`` registers the segment in the attaching process,
    so a process with its own tracker would unlink it at exit (bpo-39959). Python 3.13 added
    ``track=False`` for exactly this; before it, the registration call is skipped for this
    one name while the constructor runs.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    posix_name = name if name.startswith("/") else "/" + name
    with _TRACKER_LOCK:
        original = resource_tracker.register

        def register(res_name, rtype):
            if rtype == "shared_memory" and res_name == posix_name:
                return None
            return original(res_name, rtype)

        resource_tracker.register = register
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = original


@dataclass(frozen=True)
class SharedArraySpec:
    """Picklable description of a shared array, enough for another process to attach.

    Attributes
    ----------
    name : str
        Segment name (without the leading "/"; lives in /dev/shm on Linux).
    shape : tuple of int
    dtype : str
        NumPy dtype string, e.g. "float64".
    """

    name: str
    shape: tuple
    dtype: str


class SharedArray:
    """An ndarray backed by a named POSIX shared-memory segment.

    Create it in the parent (`create`, which owns and later unlinks the segment) and pass
    `spec` to workers, which `attach`. All processes then see the same memory.

    Attributes
    ----------
    array : ndarray
        The shared array (C-contiguous), shape ``spec.shape``, dtype ``spec.dtype``.
    spec : SharedArraySpec
    owner : bool
        True in the creating process: `unlink` removes the segment.
    """

    def __init__(self, shm, spec, owner):
        self._shm = shm
        self.spec = spec
        self.owner = owner
        self.array = np.ndarray(spec.shape, dtype=np.dtype(spec.dtype), buffer=shm.buf)

    @classmethod
    def create(cls, shape, dtype="float64", fill=0):
        """Create a new zero-filled (or `fill`-filled) shared array owned by this process.

        Parameters
        ----------
        shape : int or tuple of int, each >= 0
        dtype : str or numpy dtype, default "float64"
        fill : scalar, default 0

        Returns
        -------
        SharedArray

        Raises
        ------
        ValueError
            If a dimension is negative.
        """
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"shape must have dimensions >= 0, got {shape}")
        dt = np.dtype(dtype)
        # A zero-byte segment cannot be created; one spare byte keeps empty arrays valid.
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dt.itemsize, 1)
        shm = _create_segment(nbytes)
        spec = SharedArraySpec(name=shm.name, shape=shape, dtype=dt.str)
        out = cls(shm, spec, owner=True)
        out.array.fill(fill)
        return out

    @classmethod
    def attach(cls, spec):
        """Attach to a shared array created by another process.

        Parameters
        ----------
        spec : SharedArraySpec

        Returns
        -------
        SharedArray
            Not the owner: `close` detaches, the creator unlinks.

        Raises
        ------
        TypeError
            If `spec` is not a SharedArraySpec.
        FileNotFoundError
            If the segment no longer exists.
        """
        if not isinstance(spec, SharedArraySpec):
            raise TypeError(f"spec must be a SharedArraySpec, got {type(spec).__name__}")
        return cls(_attach_untracked(spec.name), spec, owner=False)

    def close(self):
        """Drop this handle's references to the segment; safe to call twice.

        The mapping itself is released when the last array viewing it is garbage-collected,
        never earlier: NumPy arrays built on the segment keep the ``mmap`` as their ``base``
        without holding a buffer export, so ``SharedMemory.close()`` would unmap memory they
        still point to (a segmentation fault on the next access). Unlinking is unaffected.
        """
        if self._shm is None:
            return
        shm, self._shm, self.array = self._shm, None, None
        # Leave the mmap to the reference counts of the arrays that view it; close only the
        # file descriptor (SharedMemory.close skips the attributes set to None).
        shm._buf = None
        shm._mmap = None
        shm.close()

    def unlink(self):
        """Remove the segment name (owner only; no-op elsewhere and on repeat)."""
        if self.owner:
            self.owner = False
            with contextlib.suppress(FileNotFoundError):
                shared_memory.SharedMemory.unlink(self._shm_for_unlink())

    def _shm_for_unlink(self):
        if self._shm is not None:
            return self._shm
        # close() dropped the handle: rebuild a bare one just to unlink by name.
        bare = shared_memory.SharedMemory.__new__(shared_memory.SharedMemory)
        bare._name = "/" + self.spec.name
        return bare

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        self.unlink()

    def __repr__(self):
        role = "owner" if self.owner else "attached"
        return f"SharedArray(name={self.spec.name!r}, shape={self.spec.shape}, dtype={self.spec.dtype}, {role})"


class BoundedBarrier:
    """A barrier for `size` processes in which every lock and every wait is bounded.

    ``multiprocessing.Barrier`` bounds only its wait on the condition; it takes its internal
    lock without a timeout, so a peer stopped (SIGSTOP) or killed while holding that lock
    blocks every other rank forever. Here the lock and the gates are semaphores taken with
    ``acquire(timeout=0.1)`` in a loop that also watches an abort flag, a broken flag, the
    deadline and an optional `interrupt` check.

    Parameters
    ----------
    size : int, >= 1
        Processes that must arrive before any passes.
    context : multiprocessing context
        Creates the lock, the two gate semaphores and the four shared int64 words
        ``[arrived, generation, broken, aborted]``.
    extra_words : int, default 0
        Further shared int64 words after those four (the counters of the compiled
        collectives, which read the broken and aborted flags from the same array).

    Notes
    -----
    Arrival: under the lock, ``arrived += 1``; the last arrival of generation g resets
    ``arrived``, advances the generation and releases gate ``g % 2`` ``size - 1`` times; the
    others wait on that gate. Two gates alternate, so a rank that hurries on to barrier g + 1
    waits on the other gate and cannot take a release meant for barrier g. A rank that gives
    up sets ``broken``, so its peers give up too instead of waiting out their own timeout.
    Pass it to workers as a Process argument (it holds multiprocessing semaphores).

    References
    ----------
    Cf. the reusable barrier of A. B. Downey, "The Little Book of Semaphores", section 3.7
    (two turnstiles per use there; here one per generation, alternating).
    """

    _ARRIVED, _GENERATION, _BROKEN, _ABORTED = range(4)

    def __init__(self, size, context, extra_words=0):
        self.size = _check_positive_int(size, "size")
        self._lock = context.Lock()
        self._gates = (context.Semaphore(0), context.Semaphore(0))
        self._words = context.RawArray("q", 4 + int(extra_words))

    @property
    def aborted(self):
        """True once `abort` was called by any process."""
        return bool(self._words[self._ABORTED])

    @property
    def broken(self):
        """True once a rank gave up waiting (its timeout expired or it was interrupted)."""
        return bool(self._words[self._BROKEN])

    def abort(self):
        """Make every current and future `wait` return "aborted" within 0.1 s; never blocks."""
        self._words[self._ABORTED] = 1

    def wait(self, timeout, interrupt=None):
        """Return when all `size` processes have called `wait`, or say why not.

        Parameters
        ----------
        timeout : float, > 0
            Seconds for the whole call, taking the lock included.
        interrupt : callable or None
            Called about every 0.1 s while waiting; a non-empty string it returns ends the
            wait with that string (e.g. the parent process died).

        Returns
        -------
        None or str
            None when every process arrived; else "aborted", "broken" (a peer gave up),
            "timeout", or the message `interrupt` returned.
        """
        deadline = time.monotonic() + timeout
        status = self._acquire(self._lock, deadline, interrupt)
        if status is not None:
            return status
        words = self._words
        try:
            if words[self._ABORTED]:
                return "aborted"
            if words[self._BROKEN]:
                return "broken"
            generation = words[self._GENERATION]
            words[self._ARRIVED] += 1
            last = words[self._ARRIVED] == self.size
            if last:
                words[self._ARRIVED] = 0
                words[self._GENERATION] = generation + 1
                gate = self._gates[generation % 2]
                for _ in range(self.size - 1):
                    gate.release()
        finally:
            self._lock.release()
        if last:
            return None
        return self._acquire(self._gates[generation % 2], deadline, interrupt)

    def _acquire(self, semaphore, deadline, interrupt):
        words = self._words
        while True:
            if words[self._ABORTED]:
                return "aborted"
            if words[self._BROKEN]:
                return "broken"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                words[self._BROKEN] = 1
                return "timeout"
            if semaphore.acquire(timeout=min(_POLL, remaining)):
                return None
            message = interrupt() if interrupt is not None else None
            if message:
                words[self._BROKEN] = 1
                return message


@dataclass(frozen=True)
class SharedMemoryCommSpec:
    """What a worker needs to join a SharedMemoryGroup; pass it as a Process argument.

    The barrier holds multiprocessing semaphores: it can be handed to a child only through
    process creation (``Process(args=...)``), not through a queue or pipe.

    Attributes
    ----------
    workspace : SharedArraySpec
        The ``(2, size, slot_bytes)`` uint8 slot array.
    size : int
    barrier : BoundedBarrier
        Also carries the group's abort flag.
    timeout : float
        Seconds, per collective.
    owner_pid : int
        The process that created the group; ranks stop when it dies.
    compiled : bool, default False
        Whether the ranks run the compiled collectives (the creator's backend was numba);
        the barrier's words then hold their counters too.
    """

    workspace: SharedArraySpec
    size: int
    barrier: Any
    timeout: float
    owner_pid: int
    compiled: bool = False


class SharedMemoryGroup:
    """Parent-side owner of a shared-memory process group: workspace, barrier, abort event.

    Parameters
    ----------
    size : int, >= 1
        Number of ranks that will join.
    nbytes : int, >= 1
        Largest buffer, in bytes, any collective of this group will carry
        (e.g. ``n_params * 8`` for a float64 gradient buffer).
    timeout : float, > 0, or None
        Seconds a rank waits at a collective before raising CommTimeoutError; None means
        `default_timeout` (``$MINSCALE_COMM_TIMEOUT``, else 120).
    context : multiprocessing context or None
        Defaults to ``multiprocessing.get_context("spawn")``.
    compiled : bool or None, default None
        Whether the ranks allreduce in compiled code (:mod:`minscale.kernels._collectives`);
        None: when the kernel backend is numba (``kernels.compiled_collectives``). Every rank
        follows this choice.

    Attributes
    ----------
    spec : SharedMemoryCommSpec
        Pass to each worker, which builds ``SharedMemoryComm(spec, rank)``.

    Raises
    ------
    TypeError, ValueError
        On a non-integer or non-positive size/nbytes or a bad timeout.

    Notes
    -----
    Memory: ``2 * size * ceil(nbytes / 64) * 64`` bytes of shared memory, plus 128 bytes
    per rank of counters when compiled. Use as a context manager, or call `close`, so the
    segment is unlinked even when workers fail.
    """

    def __init__(self, size, nbytes, *, timeout=None, context=None, compiled=None):
        size = _check_positive_int(size, "size")
        nbytes = _check_positive_int(nbytes, "nbytes")
        timeout = _resolve_timeout(timeout)
        ctx = context if context is not None else multiprocessing.get_context("spawn")
        native = kernels.compiled_collectives("numba" if compiled else None) \
            if compiled is None or compiled else None
        slot = -(-nbytes // _SLOT_ALIGN) * _SLOT_ALIGN
        self._workspace = SharedArray.create((2, size, slot), dtype="uint8")
        try:
            self.spec = SharedMemoryCommSpec(
                workspace=self._workspace.spec,
                size=size,
                # room for one 128-byte block per rank, aligned (the arena aligns on 8)
                barrier=BoundedBarrier(size, ctx, 0 if native is None else
                                       native.STRIDE * (size + 1)),
                timeout=timeout,
                owner_pid=os.getpid(),
                compiled=native is not None,
            )
        except BaseException:
            self._workspace.close()
            self._workspace.unlink()
            raise
        self.nbytes = nbytes

    @property
    def size(self):
        """Number of ranks in the group."""
        return self.spec.size

    def abort(self):
        """Make every rank's current or next collective raise CommAbortedError (within 0.1 s).

        Sets a flag in shared memory: it takes no lock, so a worker killed or stopped while
        holding the barrier's lock cannot block it.
        """
        self.spec.barrier.abort()

    def close(self):
        """Unlink the workspace segment (idempotent)."""
        self._workspace.close()
        self._workspace.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SharedMemoryGroup(size={self.size}, nbytes={self.nbytes}, name={self.spec.workspace.name!r})"


class SharedMemoryComm:
    """One rank's handle on a SharedMemoryGroup; implements the Communicator protocol.

    Parameters
    ----------
    spec : SharedMemoryCommSpec
        From ``SharedMemoryGroup.spec`` (received as a Process argument).
    rank : int, in [0, spec.size)

    Attributes
    ----------
    rank, size : int
    timeout : float
        Seconds per collective.

    Raises
    ------
    TypeError, ValueError
        On a bad spec or rank.

    Notes
    -----
    allreduce: ``buf <- sum over r = 0..size-1 of buf_r``, added in rank order, identical on
    every rank. In a compiled group (``spec.compiled``) it runs
    :func:`minscale.kernels._collectives.allreduce`: a spin barrier on per-rank counters and,
    for large buffers, a reduce-scatter + all-gather in pipelined chunks; otherwise one copy
    in, one `BoundedBarrier` wait and ``size`` reads. See the module docstring for the
    double-buffered slot scheme, which both paths share.

    Examples
    --------
    In each of ``size`` worker processes (see `run_workers`)::

        comm = SharedMemoryComm(spec, rank)
        grad = ...                  # float64, contiguous
        comm.allreduce(grad)        # now the sum over ranks, on every rank
    """

    def __init__(self, spec, rank):
        if not isinstance(spec, SharedMemoryCommSpec):
            raise TypeError(f"spec must be a SharedMemoryCommSpec, got {type(spec).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise TypeError(f"rank must be an int, got {type(rank).__name__}")
        if not 0 <= rank < spec.size:
            raise ValueError(f"rank must be in [0, {spec.size}), got {rank}")
        self._rank = int(rank)
        self._size = spec.size
        self.timeout = spec.timeout
        self._barrier = spec.barrier
        self._owner_pid = spec.owner_pid
        self._next_owner_check = 0.0
        self._workspace = SharedArray.attach(spec.workspace)
        self._slot_bytes = spec.workspace.shape[2]
        self._views = {}
        # [collectives so far (selects the slot set), steps published by the compiled path]
        self._state = np.zeros(2, dtype=np.int64)
        self._native = None
        self._groups = {}
        if spec.compiled:
            native = self._native = kernels.compiled_collectives("numba")
            self._ctl = np.frombuffer(self._barrier._words, dtype=np.int64)
            self._me = native.setup(self._ctl, native.control_offset(self._ctl.ctypes.data),
                                    self._rank, self._size, int(self.timeout * 1e9),
                                    int(self._owner_pid))
            # the compiled code keeps the same two counts in this rank's block
            self._state = self._ctl[self._me + native.GENERATION:
                                    self._me + native.PUBLISHED + 1]

    @property
    def _generation(self):
        return int(self._state[0])

    @property
    def rank(self):
        """This process's rank, in [0, size)."""
        return self._rank

    @property
    def size(self):
        """Number of ranks in the group."""
        return self._size

    @property
    def aborted(self):
        """True once the parent or a failing rank aborted the group (a flag read, no wait)."""
        return self._barrier.aborted

    @property
    def name(self):
        """Name of the shared workspace segment (``/dev/shm/<name>`` on Linux)."""
        return self._workspace.spec.name

    def _slots(self, dtype):
        view = self._views.get(dtype)
        if view is None:
            view = self._workspace.array.view(dtype)
            self._views[dtype] = view
        return view[self._generation % 2]

    def compiled_group(self, dtype):
        """This rank's view of the group for compiled code, or None in a Python-only group.

        Parameters
        ----------
        dtype : numpy dtype, float32 or float64
            The dtype of the buffers to allreduce.

        Returns
        -------
        minscale.kernels._collectives.Group or None
            Shares this communicator's state: compiled allreduces through it (e.g. inside a
            compiled training loop, ``_collectives.allreduce``) and this object's collectives
            may alternate, in the same order on every rank.
        """
        group = self._groups.get(dtype)
        if group is None and self._native is not None:
            dtype = np.dtype(dtype)
            group = self._native.Group(self._workspace.array.view(dtype), self._ctl, self._me)
            self._groups[dtype] = group
        return group

    def raise_status(self, status, what):
        """Raise the error for a failed compiled collective's status code.

        Parameters
        ----------
        status : int
            A nonzero status of :mod:`minscale.kernels._collectives`.
        what : str
            The collective, e.g. "allreduce".

        Raises
        ------
        CommAbortedError
            Aborted, or the creator of the group died.
        CommTimeoutError
            The timeout passed, or a peer gave up first.
        """
        native = self._native
        text = {native.STATUS_ABORTED: "aborted", native.STATUS_BROKEN: "broken",
                native.STATUS_TIMEOUT: "timeout"}.get(status)
        if text is None:
            text = f"the parent process (pid {self._owner_pid}) that started the group died"
        self._raise(text, f"{what} #{self._generation}")

    def _check_fits(self, buf):
        if buf.nbytes > self._slot_bytes:
            raise ValueError(
                f"buf has {buf.nbytes} bytes but this group was created with room for "
                f"{self._slot_bytes} bytes per rank; create the SharedMemoryGroup with a larger nbytes"
            )

    def _owner_died(self):
        # looked up at most every _POLL s: a collective costs microseconds, a /proc read more
        now = time.monotonic()
        if now < self._next_owner_check:
            return None
        self._next_owner_check = now + _POLL
        if process_gone(self._owner_pid):
            return f"the parent process (pid {self._owner_pid}) that started the group died"
        return None

    def _wait(self, what):
        where = f"{what} #{self._generation}"
        if self._barrier.aborted:
            raise CommAbortedError(f"rank {self._rank}: group aborted before {where}")
        status = self._owner_died() or self._barrier.wait(self.timeout, self._owner_died)
        if status is not None:
            self._raise(status, where)

    def _raise(self, status, where):
        if status == "aborted":
            raise CommAbortedError(
                f"rank {self._rank}: group aborted during {where} "
                "(the parent or a failing peer stopped the group)"
            )
        if status in ("timeout", "broken"):
            raise CommTimeoutError(
                f"rank {self._rank}: peers did not reach {where} within "
                f"timeout={self.timeout:g} s (or a peer timed out first); a peer may have died, "
                "be stopped or hung, or have skipped a collective"
            )
        raise CommAbortedError(f"rank {self._rank}: {status}, during {where}")

    def allreduce(self, buf, op="sum"):
        """Reduce `buf` element-wise over all ranks, in place, in rank order.

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable, any shape
            Same size and dtype on every rank; at most the group's `nbytes`.
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array, holding the reduction (bit-identical on every rank)

        Raises
        ------
        TypeError, ValueError
            On a bad buffer, op, or a buffer larger than the group's capacity.
        CommTimeoutError
            If peers do not arrive within `timeout` seconds.
        CommAbortedError
            If the group was aborted.

        Notes
        -----
        buf = buf_0 op buf_1 op ... op buf_{size-1}  (`reduce_in_rank_order`)
        """
        check_buffer(buf)
        check_op(op)
        self._check_fits(buf)
        if self._size == 1:
            return buf
        flat = buf if buf.ndim == 1 else buf.reshape(-1)
        if self._native is not None:
            # the fields one by one: a tuple argument costs the dispatcher microseconds
            status = self._native.allreduce(flat, *self.compiled_group(buf.dtype),
                                            self._native.OPS[op])
            if status:
                self.raise_status(status, "allreduce")
            return buf
        slots = self._slots(buf.dtype)
        self._state[0] += 1
        n = flat.size
        slots[self._rank, :n] = flat
        self._wait("allreduce")
        reduce_in_rank_order(slots[:, :n], op, flat)
        return buf

    def allreduce_in_rank_order(self, buf, op="sum"):
        """The same as `allreduce`, which already reduces in rank order (see its Notes)."""
        return self.allreduce(buf, op)

    def broadcast(self, buf, root=0):
        """Copy `buf` from rank `root` into `buf` on every rank.

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable
        root : int, default 0

        Returns
        -------
        buf : the same array

        Raises
        ------
        TypeError, ValueError
            On a bad buffer or root, or a buffer larger than the group's capacity.
        CommTimeoutError, CommAbortedError
            As for `allreduce`.
        """
        check_buffer(buf)
        root = check_root(root, self._size)
        self._check_fits(buf)
        if self._size == 1:
            return buf
        flat = buf if buf.ndim == 1 else buf.reshape(-1)
        if self._native is not None:
            status = self._native.broadcast(flat, *self.compiled_group(buf.dtype), root)
            if status:
                self.raise_status(status, "broadcast")
            return buf
        slots = self._slots(buf.dtype)
        self._state[0] += 1
        n = flat.size
        if self._rank == root:
            slots[root, :n] = flat
        self._wait("broadcast")
        if self._rank != root:
            flat[:] = slots[root, :n]
        return buf

    def barrier(self):
        """Block until every rank has called `barrier`.

        Raises
        ------
        CommTimeoutError, CommAbortedError
            As for `allreduce`.
        """
        if self._size > 1 and self._native is not None:
            status = self._native.barrier(self._ctl, self._me)
            if status:
                self.raise_status(status, "barrier")
        elif self._size > 1:
            self._wait("barrier")

    def abort(self):
        """Stop the group: every rank's current or next collective raises CommAbortedError."""
        self._barrier.abort()

    def close(self):
        """Detach from the workspace (the parent unlinks it); idempotent."""
        self._views.clear()
        self._groups.clear()
        self._workspace.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SharedMemoryComm(rank={self._rank}, size={self._size})"


def _limit_blas(blas_threads, compiled=False):
    if blas_threads is None:
        return contextlib.nullcontext()
    if compiled:
        # Numba's np.dot (the compiled training loops' matrix products) calls SciPy's
        # OpenBLAS, a second copy that threadpoolctl can limit only once it is loaded: left
        # to load later, it ran 2 threads per worker and k workers slowed down ~40x
        with contextlib.suppress(ImportError):
            import scipy.linalg.cython_blas  # noqa: F401, PLC0415  (third-party, for Numba)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415  (third-party, loaded when used)

    return threadpool_limits(limits=blas_threads)


def pack_exception(exc):
    """Pickle an exception as (class, args, attributes), or return None if that fails.

    Plain ``pickle.dumps(exc)`` re-calls ``type(exc)(*exc.args)`` on loading, which breaks for
    exceptions whose ``__init__`` takes more arguments than it passes to ``args`` (e.g.
    ``minscale.train.DivergenceError``); rebuilding through ``__new__`` avoids that.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    bytes or None
    """
    try:
        return pickle.dumps((type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))
    except Exception:
        return None


def unpack_exception(blob):
    """Rebuild an exception packed by `pack_exception`; None if it cannot be rebuilt.

    Parameters
    ----------
    blob : bytes or None

    Returns
    -------
    BaseException or None
    """
    if blob is None:
        return None
    try:
        cls, args, attributes = pickle.loads(blob)
        exc = cls.__new__(cls, *args)
        exc.args = args
        exc.__dict__.update(attributes)
        return exc
    except Exception:
        return None


def _watch_parent(parent_pid):
    while not process_gone(parent_pid):
        time.sleep(_POLL)
    # nobody is left to collect a result; the parent's resource tracker unlinks the
    # segments once the last worker is gone
    os._exit(1)


def exit_with_parent(parent_pid):
    """Make this process end as soon as process `parent_pid` (its parent) dies.

    An orphaned worker would otherwise train on until its epochs run out, keeping its
    shared-memory segments and semaphores alive (async workers never wait on a peer, so a
    check in the collectives alone would not see it).

    Parameters
    ----------
    parent_pid : int
        The launching process.

    Notes
    -----
    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, delivered by the kernel the moment the parent
    exits, even while this process computes in native code or is stopped. Everywhere: a
    daemon thread that checks `process_gone` every 0.1 s and calls ``os._exit(1)``; it also
    covers a parent that died before the prctl call.

    References
    ----------
    prctl(2), ``PR_SET_PDEATHSIG``.
    """
    if sys.platform.startswith("linux") and os.getppid() == parent_pid:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="minscale-parent-watch",
                     daemon=True).start()


def _load_payload(payload):
    """``(fn, args)`` from what `run_workers` handed the worker: the pair itself (fork) or the
    spec of the shared segment holding its pickle (spawn, forkserver)."""
    if not isinstance(payload, SharedArraySpec):
        return payload
    shared = SharedArray.attach(payload)
    try:
        return pickle.loads(shared.array.data)
    finally:
        shared.close()


def _worker_main(spec, rank, payload, conn, blas_threads):
    """Entry point of a worker process (module level so spawn can import it)."""
    # The parent coordinates shutdown on Ctrl-C; a worker dying of SIGINT on its own would
    # only race with that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # started with SIGINT blocked (see _start_ignoring_sigint); now that it is ignored, a
    # Ctrl-C that arrived during start-up is discarded instead of interrupting the imports
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    exit_with_parent(spec.owner_pid)
    comm = None
    status = 0
    try:
        fn, args = _load_payload(payload)
        comm = SharedMemoryComm(spec, rank)
        # from here on a death is not a start-up failure (see _death_message)
        conn.send(("started", rank))
        with _limit_blas(blas_threads, spec.compiled):
            result = fn(comm, *args)
        conn.send(("ok", rank, result))
    except BaseException as exc:
        status = 1
        message = (
            "error",
            rank,
            type(exc).__name__,
            str(exc),
            traceback.format_exc(),
            isinstance(exc, CommError),
            pack_exception(exc),
        )
        # Report first, then abort: the parent should hear the root cause before the
        # CommAbortedError reports of the peers this abort is about to cause.
        with contextlib.suppress(Exception):
            conn.send(message)
        if comm is not None:
            comm.abort()
        else:
            with contextlib.suppress(Exception):
                spec.barrier.abort()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        if comm is not None:
            comm.close()
    if status:
        sys.exit(status)


def _describe_exit(exitcode):
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name} (exit code {exitcode})"
        except ValueError:
            return f"was killed by signal {-exitcode} (exit code {exitcode})"
    return f"exited with code {exitcode}"


def _main_may_lack_guard():
    """Whether the main module is a script file spawned workers re-import (not minscale's CLI)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.split(".")[0] == "minscale":
        return False  # python -m minscale
    path = getattr(main, "__file__", None)
    # no file: an interactive session, which spawned workers do not re-run; "minscale":
    # the console script, whose entry point is guarded
    return path is not None and Path(path).stem != "minscale"


_GUARD_HINT = ("workers start with the spawn method and import the main module: a script that "
               "trains with workers must guard its entry point with `if __name__ == \"__main__\":`")


def check_not_bootstrapping():
    """Refuse to start workers from a spawned process that is still importing the main module.

    A script without ``if __name__ == "__main__":`` re-runs its top level in every spawned
    worker; a ``run_workers`` or ``fit(..., workers=k)`` call there would start workers of
    workers. multiprocessing refuses too, but only inside ``Process.start``, after the caller
    created its shared memory; this check comes first, so nothing is created.

    Raises
    ------
    RuntimeError
        In a spawned or forkserver child during its start-up, with the ``__main__`` hint.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            f"this process is a worker still starting up, and the main module it imports "
            f"starts workers again at its top level ({_GUARD_HINT})"
        )


def _death_message(rank, proc, started):
    """One sentence for a worker that ended without a result, with the hint that fits."""
    text = f"worker rank {rank} (pid {proc.pid}) {_describe_exit(proc.exitcode)} before returning a result"
    if proc.exitcode is not None and proc.exitcode < 0:
        return text + " (a signal from outside the run: the out-of-memory killer, kill, a job scheduler)"
    if not started:
        text += ", while starting up"
        if _main_may_lack_guard():
            text += f" ({_GUARD_HINT})"
    return text


def _shutdown(procs, grace, started=None):
    """Join `procs` within `grace` seconds, then terminate, then kill what is left.

    ``started[r]`` False: rank r never reported that it started (it is still importing, or
    stuck there); it cannot see the group's abort flag, so it is terminated without the wait.
    """
    deadline = time.monotonic() + grace
    for rank, p in enumerate(procs):
        if started is not None and not started[rank] and p.is_alive():
            p.terminate()
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            # a stopped worker would hold SIGTERM pending until continued
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGCONT)
    for p in procs:
        p.join(1.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)


class _Collector:
    """Parent-side bookkeeping: results, failures, which pipes and sentinels are open."""

    def __init__(self, procs, conns):
        self.procs = procs
        self.conns = conns
        self.results = [None] * len(procs)
        self.done = [False] * len(procs)
        self.started = [False] * len(procs)
        self.failures = []  # (rank, is_comm_error, WorkerError)
        self.stopped_since = {}  # rank -> when it was first seen stopped
        self.open_conns = {conn: rank for rank, conn in enumerate(conns)}
        self.open_sentinels = {p.sentinel: rank for rank, p in enumerate(procs)}

    def waitables(self):
        return list(self.open_conns) + list(self.open_sentinels)

    def finished(self):
        return all(self.done) or not (self.open_conns or self.open_sentinels)

    def handle(self, ready):
        # Pipes before sentinels: a worker that sent its result and exited has both ready.
        for obj in ready:
            if obj in self.open_conns:
                self._read(obj)
        for obj in ready:
            if obj in self.open_sentinels:
                rank = self.open_sentinels.pop(obj)
                conn = self.conns[rank]
                while conn in self.open_conns and conn.poll():
                    self._read(conn)
                if not self.done[rank] and not any(f[0] == rank for f in self.failures):
                    proc = self.procs[rank]
                    proc.join(1.0)
                    self.failures.append(
                        (
                            rank,
                            False,
                            WorkerError(_death_message(rank, proc, self.started[rank]), rank=rank,
                                        exitcode=proc.exitcode),
                        )
                    )

    def _read(self, conn):
        rank = self.open_conns[conn]
        try:
            message = conn.recv()
        except (EOFError, OSError):
            # Closed without a message: the sentinel branch reports how the worker ended.
            del self.open_conns[conn]
            return
        if message[0] == "started":
            self.started[rank] = True
            return
        del self.open_conns[conn]
        if message[0] == "ok":
            self.results[rank] = message[2]
            self.done[rank] = True
            return
        _, rank, exc_type, exc_text, remote_tb, is_comm_error, packed = message
        self.failures.append(
            (
                rank,
                is_comm_error,
                WorkerError(
                    f"worker rank {rank} raised {exc_type}: {exc_text}\n"
                    f"--- traceback in worker rank {rank} ---\n{remote_tb}",
                    rank=rank,
                    exitcode=None,
                    remote_traceback=remote_tb,
                    exception=unpack_exception(packed),
                ),
            )
        )

    def check_stopped(self, timeout):
        """Record a failure for a worker seen stopped (SIGSTOP, a debugger) for over `timeout` s.

        Async workers never wait for each other, so no peer's collective times out on a
        stopped one; without this the parent would wait for it forever. Needs /proc (Linux).
        """
        now = time.monotonic()
        for rank, proc in enumerate(self.procs):
            if self.done[rank] or any(f[0] == rank for f in self.failures):
                continue
            state = _process_state(proc.pid)
            if not state.startswith("stopped"):
                self.stopped_since.pop(rank, None)
            elif now - self.stopped_since.setdefault(rank, now) > timeout:
                self.failures.append((rank, False, WorkerError(
                    f"worker rank {rank} (pid {proc.pid}) stopped responding (process state: "
                    f"{state}) for more than timeout={timeout:g} s; it was killed",
                    rank=rank, exitcode=None)))
                proc.kill()  # a stopped process would sit out the grace period

    def root_cause(self, timeout):
        # Peers of a failing worker report CommAborted/CommTimeout; the first failure that is
        # not such a consequence is the one to show.
        for _rank, is_comm_error, err in self.failures:
            if not is_comm_error:
                return err
        # only timeouts: a worker that is still running and never reported kept them waiting
        for rank, proc in enumerate(self.procs):
            if not self.done[rank] and not any(f[0] == rank for f in self.failures) and proc.is_alive():
                state = _process_state(proc.pid)
                return WorkerError(
                    f"worker rank {rank} (pid {proc.pid}) stopped responding"
                    f"{' (process state: ' + state + ')' if state else ''}: its peers waited "
                    f"timeout={timeout:g} s for it at a collective; it was killed",
                    rank=rank,
                    exitcode=None,
                )
        return self.failures[0][2]


def _start_ignoring_sigint(proc):
    """Start `proc` with SIGINT blocked, so a Ctrl-C during its start-up cannot kill it midway.

    The signal mask is inherited across fork and exec: the spawned interpreter imports with
    SIGINT held pending, and :func:`_worker_main` ignores it before unblocking, so the parent
    alone handles Ctrl-C. In the parent, a SIGINT that arrives while blocked is delivered as
    soon as the mask is restored, so no Ctrl-C is lost.

    ``start()`` must therefore never block. With spawn it writes the pickled process object
    into a pipe whose read end the parent itself holds until the write ends; a child that
    dies before reading everything (a script without the ``__main__`` guard) leaves a write
    larger than the pipe buffer (64 KiB on Linux) blocked forever, with SIGINT blocked too.
    `run_workers` keeps that message at a few kB: ``fn`` and ``args`` travel in a shared
    segment, not in the process object.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_workers(
    fn,
    size,
    *,
    args=(),
    nbytes,
    timeout=None,
    blas_threads=1,
    start_method="spawn",
    grace=5.0,
):
    """Run ``fn(comm, *args)`` in `size` worker processes joined by a SharedMemoryComm.

    Parameters
    ----------
    fn : callable
        A module-level function (spawn pickles it by reference): ``fn(comm, *args) -> result``.
        Its return value must be picklable.
    size : int, >= 1
        Number of worker processes (ranks 0..size-1).
    args : tuple, default ()
        Extra picklable arguments, the same for every rank. With spawn and forkserver, ``fn``
        and `args` are pickled once (plain `pickle`: no multiprocessing locks or queues) into
        a shared segment every worker reads at start-up and the parent unlinks at the end.
    nbytes : int, >= 1
        Largest collective buffer in bytes (see `SharedMemoryGroup`).
    timeout : float or None, default None
        Seconds a rank waits at one collective before raising CommTimeoutError; None means
        `default_timeout` (``$MINSCALE_COMM_TIMEOUT``, else 120).
    blas_threads : int or None, default 1
        BLAS/OpenMP threads per worker (threadpoolctl), so `size` workers do not oversubscribe
        the cores; None leaves the libraries' defaults.
    start_method : {"spawn", "forkserver", "fork"}, default "spawn"
    grace : float, default 5.0
        Seconds the other workers get to stop after a failure before they are terminated.

    Returns
    -------
    results : list, length size
        ``results[r]`` is rank r's return value.

    Raises
    ------
    TypeError
        If `fn` or `args` cannot be pickled.
    RuntimeError
        If called in a spawned worker while it imports the main module
        (`check_not_bootstrapping`).
    WorkerError
        If a worker raised or died (e.g. SIGKILL). Raised as soon as the parent sees it (a
        process exit is seen immediately), after at most `grace` + 2 s of shutdown; the other
        workers are stopped and the shared segment is unlinked. A stopped or hung worker is
        reported (as the rank that stopped responding) after `timeout` + `grace` + 2 s; a
        stopped one also when no peer waits for it (async training), where /proc exists.
    KeyboardInterrupt
        Re-raised after the same shutdown when Ctrl-C reaches the parent (workers ignore SIGINT).

    Notes
    -----
    The parent does not take part in the collectives; it only monitors the workers' pipes and
    process sentinels (``multiprocessing.connection.wait``), so it sees a worker's exit at
    once, during start-up too. Starting a worker never blocks (`_start_ignoring_sigint`).
    Workers that never reported their start are terminated at once on a failure or Ctrl-C
    (they cannot see the abort flag); the others get `grace`. Workers end when the parent
    dies (`exit_with_parent`).

    Examples
    --------
    ::

        def work(comm, n):
            buf = np.full(n, comm.rank + 1.0)
            comm.allreduce(buf)
            return buf

        run_workers(work, 2, args=(3,), nbytes=24)   # [array([3., 3., 3.])] * 2
    """
    size = _check_positive_int(size, "size")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if blas_threads is not None:
        blas_threads = _check_positive_int(blas_threads, "blas_threads")
    if start_method not in ("spawn", "forkserver", "fork"):
        raise ValueError(f"start_method must be 'spawn', 'forkserver' or 'fork', got {start_method!r}")
    if start_method != "fork":
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"fn must be picklable (a module-level function) to start workers with "
                f"{start_method!r}, got {fn!r}: {exc}"
            ) from None
    check_not_bootstrapping()
    args = tuple(args)
    blob = None
    if start_method != "fork":
        try:
            blob = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"args must be picklable to start workers with {start_method!r}: {exc}") from None
    ctx = multiprocessing.get_context(start_method)
    procs, conns = [], []
    collector = payload = None
    stop_by = None  # end of the grace period, once a failure started it
    with SharedMemoryGroup(size, nbytes, timeout=timeout, context=ctx) as group:
        try:
            if blob is None:
                payload = (fn, args)  # fork: inherited, never written to a pipe
            else:
                # One segment read by every worker, so the message that starts a spawned
                # worker stays a few kB (see _start_ignoring_sigint).
                payload = SharedArray.create(len(blob), dtype="uint8")
                payload.array[...] = np.frombuffer(blob, dtype=np.uint8)
                blob = None
            handed = payload if isinstance(payload, tuple) else payload.spec
            for rank in range(size):
                recv_end, send_end = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(group.spec, rank, handed, send_end, blas_threads),
                    name=f"minscale-worker-{rank}",
                    daemon=True,
                )
                try:
                    _start_ignoring_sigint(proc)
                finally:
                    # Only the worker may hold the write end, so its exit closes the pipe.
                    send_end.close()
                procs.append(proc)
                conns.append(recv_end)
            collector = _Collector(procs, conns)
            while not collector.finished() and not collector.failures:
                collector.handle(multiprocessing.connection.wait(collector.waitables(), _WATCH))
                collector.check_stopped(group.spec.timeout)
            if collector.failures:
                group.abort()
                stop_by = time.monotonic() + grace
                while not collector.finished():
                    remaining = stop_by - time.monotonic()
                    if remaining <= 0:
                        break
                    collector.handle(multiprocessing.connection.wait(collector.waitables(), remaining))
                raise collector.root_cause(group.spec.timeout)
            return collector.results
        except BaseException:
            group.abort()
            raise
        finally:
            # one grace period in all: what is left of it after a failure, else a full one
            _shutdown(procs, grace if stop_by is None else max(0.0, stop_by - time.monotonic()),
                      started=[False] * len(procs) if collector is None else collector.started)
            for conn in conns:
                conn.close()
            for proc in procs:
                with contextlib.suppress(ValueError):
                    proc.close()
            if isinstance(payload, SharedArray):
                payload.close()
                payload.unlink()
