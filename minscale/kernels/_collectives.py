"""The shared-memory allreduce in compiled code: a spin barrier on atomic counters, chunked
reduce-scatter + all-gather, rank-order sums.

`minscale.parallel.SharedMemoryComm` calls :func:`allreduce` from Python when the backend is
numba, and the compiled data-parallel epoch loop (:mod:`minscale.kernels._fastfit_dp`) calls
the same function inside its loop, so one update of a small model costs no Python at all.

Memory. ``slots`` is the group's workspace, ``(2, size, capacity)`` values: rank r writes only
row ``[s, r]``, where ``s`` alternates between collectives (double buffering, as the Python
path). ``ctl`` is one shared int64 array: the barrier's flags (``ctl[BROKEN]``,
``ctl[ABORTED]``, the words of ``minscale.parallel.shm.BoundedBarrier``), then from index
``off`` (128-byte aligned) one block of :data:`STRIDE` words per rank (two cache lines, so the
adjacent-line prefetcher does not make ranks share one); only rank r writes its block. Word 0
counts the steps rank r has published since the group started; words 1-7 hold the rank's
constants (:data:`RANK` ... :data:`SPLIT_MIN_BYTES`, written once by :func:`setup`); the
second cache line holds its own bookkeeping (:data:`GENERATION`, :data:`PUBLISHED`,
:data:`DEADLINE`, :data:`NEXT_CHECK`). So a compiled collective takes three arrays and the
index of the rank's block: each argument costs dispatch time (about 0.5 us per array,
0.15 us per number), which is most of an 8-byte allreduce. Counters only grow, so no reset (and no second barrier for one) is needed; every
rank makes the same collectives with the same lengths, so every rank knows from its own count
which value a peer's counter reaches at each step.

Algorithm:

* small buffers (fewer than ``SPLIT_MIN_BYTES``, 2 MiB by default): copy the buffer into my
  row, publish (one step), wait until every peer published it, then sum it over rows 0, 1,
  ..., size-1 into my buffer: one barrier. Every wait can cost a scheduler time slice on a
  machine with more runnable processes than cores, so the latency path has exactly one.
* large buffers, per chunk of ``CHUNK_BYTES`` (1 MiB by default, so a chunk stays in a core's
  2 MiB L2): reduce-scatter then all-gather. Copy the chunk in, publish, wait; sum my slice of
  the chunk (slice r of size equal parts, cache-line aligned) over the rows in rank order and
  write it into my row (which no peer reads for my slice in the first step) and my buffer;
  publish (second step), wait; copy each peer's slice of the result from its row. Each rank
  adds 1/size of the values instead of all of them.

Either way every element is ``((x_0 op x_1) op x_2) ... op x_{size-1}`` (the order of
``minscale.parallel.base.reduce_in_rank_order``), so the result is bit-identical on every rank
and to the Python path. Slot set ``s`` is written again only two collectives later, after the
writer saw every peer's counter of the collective in between, which each peer publishes only
after reading set ``s``: no rank overwrites data a peer has yet to read.

Memory order: a counter is published with a store-release and read with a load-acquire
(LLVM atomics emitted by :func:`load_acquire` / :func:`store_release`), so the data written
before a publish is visible to a peer that saw the counter; a plain load in a spin loop could
be hoisted out of it by the optimizer.

Waiting: spin on the counters for :data:`SPIN` rounds (no system call: a running peer arrives
within microseconds), then call :func:`slow_wait` between short spins. It yields the core
(``sched_yield``, as MPICH's progress loop does after a number of polls, so a peer waiting for
the same core gets it), after 50 ms of waiting sleeps 50 us per call instead, and checks the
deadline (``timeout`` seconds from the first slow call), whether the group's creator is still
alive, and the group's abort and broken flags. A rank that gives up (deadline, dead creator)
sets the broken flag, so its peers give up at once too.

Imports only NumPy, Numba and :mod:`minscale.kernels`.

References
----------
J. M. Mellor-Crummey & M. L. Scott, "Algorithms for Scalable Synchronization on Shared-Memory
Multiprocessors", ACM TOCS 9(1), 1991 (spinning on flags each written by one processor);
R. Thakur, R. Rabenseifner & W. Gropp, "Optimization of Collective Communication Operations in
MPICH", IJHPCA 19(1), 2005 (reduce-scatter + all-gather for long allreduces).
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np
from numba import njit, objmode, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["Group", "STRIDE", "BROKEN", "ABORTED", "RANK", "SIZE", "OFF", "TIMEOUT_NS",
           "OWNER_PID", "CHUNK_BYTES", "SPLIT_MIN_BYTES", "GENERATION", "PUBLISHED", "DEADLINE",
           "NEXT_CHECK", "SPIN", "OPS", "OK", "STATUS_ABORTED", "STATUS_BROKEN",
           "STATUS_TIMEOUT", "STATUS_OWNER_GONE", "DEFAULT_CHUNK_BYTES",
           "DEFAULT_SPLIT_MIN_BYTES", "control_offset", "setup", "load_acquire",
           "store_release", "slow_wait", "wait_all", "allreduce", "barrier", "broadcast"]

#: int64 words per rank block of ``ctl`` (128 bytes)
STRIDE = 16
#: indices of the broken and aborted flags in ``ctl`` (as ``BoundedBarrier`` lays them out)
BROKEN, ABORTED = 2, 3
#: a rank's constants, at ``me + ...`` (``me`` = index of its block): its rank, the group size,
#: the index of rank 0's block, the wait's timeout (ns), the creator's pid, the bytes per
#: pipelined chunk and the smallest buffer (bytes) that is reduce-scattered
RANK, SIZE, OFF, TIMEOUT_NS, OWNER_PID, CHUNK_BYTES, SPLIT_MIN_BYTES = 1, 2, 3, 4, 5, 6, 7
#: a rank's own counts, at ``me + ...``: collectives so far (selects the slot set), steps
#: published, the deadline and the next creator check of a wait (monotonic ns)
GENERATION, PUBLISHED, DEADLINE, NEXT_CHECK = 8, 9, 10, 11
#: rounds of spinning on the counters before the first :func:`slow_wait` (tens of microseconds;
#: then the rank yields between short spins, as MPICH's progress loop does, so that a peer
#: waiting for the same core gets it)
SPIN = 16384
# spins between two slow calls
_SPIN_BETWEEN = 256
#: ``op`` codes of :func:`allreduce`
OPS = {"sum": 0, "max": 1, "min": 2}
#: status codes: done; aborted; a peer gave up (broken); the deadline passed; creator died
OK, STATUS_ABORTED, STATUS_BROKEN, STATUS_TIMEOUT, STATUS_OWNER_GONE = 0, 1, 2, 3, 4
#: bytes per pipelined chunk of a reduce-scattered allreduce (two barriers per chunk)
DEFAULT_CHUNK_BYTES = 1 << 20
#: buffers of at least this many bytes take the reduce-scatter + all-gather path; smaller
#: ones are summed whole by every rank after one barrier
DEFAULT_SPLIT_MIN_BYTES = 1 << 21

# nanoseconds between two looks at the group's creator while waiting
_OWNER_POLL_NS = 100_000_000
# nanoseconds of a wait spent yielding before the slow calls start sleeping: sleeping under
# load wakes late (milliseconds), so only waits this long, far beyond any training step's
# imbalance, stop burning a core
_YIELD_NS = 50_000_000
_SLEEP = 5e-5


def control_offset(address, first=4):
    """Index of the first 128-byte aligned int64 at or after index `first` of an int64 array
    that starts at `address` (every process maps shared memory at the same offset within a
    page, so every rank computes the same index)."""
    return first + (-(address + 8 * first) % 128) // 8


def setup(ctl, off, rank, size, timeout_ns, owner_pid, chunk_bytes=DEFAULT_CHUNK_BYTES,
          split_min_bytes=DEFAULT_SPLIT_MIN_BYTES):
    """Write rank's constants into its block; return the block's index ``me``.

    Parameters
    ----------
    ctl : int64 ndarray (shared)
    off : int
        :func:`control_offset` of `ctl`.
    rank, size : int
    timeout_ns : int
        Nanoseconds a wait may take from its first slow call.
    owner_pid : int
    chunk_bytes, split_min_bytes : int
        See :data:`DEFAULT_CHUNK_BYTES`, :data:`DEFAULT_SPLIT_MIN_BYTES`.

    Returns
    -------
    int
    """
    me = off + rank * STRIDE
    for key, value in ((RANK, rank), (SIZE, size), (OFF, off), (TIMEOUT_NS, timeout_ns),
                       (OWNER_PID, owner_pid), (CHUNK_BYTES, chunk_bytes),
                       (SPLIT_MIN_BYTES, split_min_bytes)):
        ctl[me + key] = value
    return me


class Group(NamedTuple):
    """One rank's view of a shared-memory group, as the compiled collectives take it.

    Attributes
    ----------
    slots : ndarray, shape (2, size, capacity), float32 or float64
        The workspace (shared memory), viewed in the buffer's dtype.
    ctl : int64 ndarray
        The flags and per-rank blocks (shared memory), see the module docstring.
    me : int
        Index of this rank's block in `ctl` (:func:`setup`).
    """

    slots: np.ndarray
    ctl: np.ndarray
    me: int


def _check_int64_array(arr, idx):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 \
        and isinstance(idx, types.Integer)


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` read with an atomic load-acquire (int64 array, index not wrapped)."""
    if not _check_int64_array(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        aryty, idxty = sig.args
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i], wraparound=False)
        return builder.load_atomic(ptr, ordering="acquire", align=8)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, value):
    """``arr[idx] = value`` with an atomic store-release (int64 array, index not wrapped)."""
    if not _check_int64_array(arr, idx) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        aryty, idxty, valty = sig.args
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], idxty, types.intp)
        v = context.cast(builder, args[2], valty, types.int64)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i], wraparound=False)
        builder.store_atomic(v, ptr, ordering="release", align=8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


def _owner_gone(pid):
    # a dead parent's children are re-parented at once; any other creator is looked up
    if pid == os.getpid() or pid == os.getppid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def slow_wait(ctl, me, calls):
    """One slow round of a wait (plain Python, called from compiled code through objmode).

    Parameters
    ----------
    ctl : int64 ndarray
    me : int
        Index of this rank's block; ``me + DEADLINE`` and ``me + NEXT_CHECK`` are set on the
        first call of a wait, ``me + TIMEOUT_NS`` and ``me + OWNER_PID`` are read.
    calls : int
        Slow calls before this one in the current wait.

    Returns
    -------
    int
        OK, STATUS_TIMEOUT or STATUS_OWNER_GONE.
    """
    now = time.monotonic_ns()
    if calls == 0:
        ctl[me + DEADLINE] = now + int(ctl[me + TIMEOUT_NS])
        ctl[me + NEXT_CHECK] = now
    elif now > ctl[me + DEADLINE]:
        return STATUS_TIMEOUT
    if now >= ctl[me + NEXT_CHECK]:
        ctl[me + NEXT_CHECK] = now + _OWNER_POLL_NS
        if _owner_gone(int(ctl[me + OWNER_PID])):
            return STATUS_OWNER_GONE
    if now - (ctl[me + DEADLINE] - ctl[me + TIMEOUT_NS]) < _YIELD_NS:
        os.sched_yield()
    else:
        time.sleep(_SLEEP)
    return OK


@njit(cache=True)
def wait_all(ctl, me, target):
    """Wait until every peer's counter reached `target`; return a status code.

    Parameters
    ----------
    ctl, me
        See :class:`Group`.
    target : int
        The count each peer's counter ``ctl[off + r * STRIDE]`` must reach.

    Returns
    -------
    int
        OK; STATUS_ABORTED or STATUS_BROKEN when a flag was seen; STATUS_TIMEOUT or
        STATUS_OWNER_GONE after setting the broken flag.
    """
    spins = 0
    calls = 0
    rank, size, off = ctl[me + RANK], ctl[me + SIZE], ctl[me + OFF]
    while True:
        ready = True
        for r in range(size):
            if r != rank and load_acquire(ctl, off + r * STRIDE) < target:
                ready = False
                break
        if ready:
            return OK
        spins += 1
        if spins < SPIN:
            continue
        spins = SPIN - _SPIN_BETWEEN
        if load_acquire(ctl, ABORTED) != 0:
            return STATUS_ABORTED
        if load_acquire(ctl, BROKEN) != 0:
            return STATUS_BROKEN
        with objmode(status="int64"):
            status = slow_wait(ctl, me, calls)
        calls += 1
        if status != OK:
            store_release(ctl, BROKEN, 1)
            return status


@njit(cache=True)
def _combine(a, b, op):
    if op == 0:
        return a + b
    if op == 1:
        # np.maximum: NaN propagates
        return a if (a >= b or a != a) else b
    return a if (a <= b or a != a) else b


@njit(cache=True)
def _reduce_rows(slots, s, size, lo, hi, op, out, mine):
    """``out[i] = slots[s, 0, i] op ... op slots[s, size-1, i]`` for lo <= i < hi, one pass
    per row after the first two (simple loops the compiler vectorizes); then ``mine[i] =
    out[i]`` unless `mine` is empty."""
    first = slots[s, 0]
    second = slots[s, 1]
    if op == 0:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = first[i] + second[i]
        for r in range(2, size):
            row = slots[s, r]
            for i in range(np.uint64(lo), np.uint64(hi)):
                out[i] = out[i] + row[i]
    else:
        for i in range(np.uint64(lo), np.uint64(hi)):
            out[i] = _combine(first[i], second[i], op)
        for r in range(2, size):
            row = slots[s, r]
            for i in range(np.uint64(lo), np.uint64(hi)):
                out[i] = _combine(out[i], row[i], op)
    if mine.size > 0:
        for i in range(np.uint64(lo), np.uint64(hi)):
            mine[i] = out[i]


@njit(cache=True)
def _slice(lo, hi, r, size, align):
    """Rank r's part of [lo, hi): size nearly equal parts, boundaries on multiples of align."""
    n = hi - lo
    per = (n + size - 1) // size
    per = (per + align - 1) // align * align
    a = min(hi, lo + r * per)
    return a, min(hi, a + per)


@njit(cache=True)
def allreduce(buf, slots, ctl, me, op):
    """Reduce `buf` over the group, in place, in rank order (see the module docstring).

    Parameters
    ----------
    buf : ndarray, shape (n,), float32 or float64, contiguous
        n <= the slot capacity.
    slots, ctl, me
        The fields of :class:`Group` (slots in the dtype of `buf`).
    op : int
        :data:`OPS` code.

    Returns
    -------
    int
        OK, or a status code: aborted before or during the call, or the wait that failed
        (the buffer is then undefined).
    """
    if load_acquire(ctl, ABORTED) != 0:
        return STATUS_ABORTED
    g = ctl[me + GENERATION]
    ctl[me + GENERATION] = g + 1
    rank, size = ctl[me + RANK], ctl[me + SIZE]
    if size == 1:
        return OK
    n = buf.size
    s = g % 2
    base = ctl[me + PUBLISHED]
    mine = slots[s, rank]
    split = n * buf.itemsize >= ctl[me + SPLIT_MIN_BYTES]
    steps = 2 if split else 1
    # one barrier in all below the split size: every wait may cost a scheduler time slice
    # when the machine has more runnable processes than cores
    chunk = max(1, ctl[me + CHUNK_BYTES] // buf.itemsize) if split else max(1, n)
    nchunks = max(1, (n + chunk - 1) // chunk)
    align = max(1, 64 // buf.itemsize)
    empty = mine[:0]
    for c in range(nchunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        for i in range(np.uint64(lo), np.uint64(hi)):
            mine[i] = buf[i]
        target = base + c * steps + 1
        store_release(ctl, me, target)
        status = wait_all(ctl, me, target)
        if status != OK:
            return status
        if not split:
            _reduce_rows(slots, s, size, lo, hi, op, buf, empty)
            continue
        a, b = _slice(lo, hi, rank, size, align)
        _reduce_rows(slots, s, size, a, b, op, buf, mine)
        store_release(ctl, me, target + 1)
        status = wait_all(ctl, me, target + 1)
        if status != OK:
            return status
        for r in range(size):
            if r != rank:
                a, b = _slice(lo, hi, r, size, align)
                src = slots[s, r]
                for i in range(np.uint64(a), np.uint64(b)):
                    buf[i] = src[i]
    ctl[me + PUBLISHED] = base + nchunks * steps
    return OK


@njit(cache=True)
def barrier(ctl, me):
    """Return OK once every rank has called it (one published step), else a status code.

    Parameters
    ----------
    ctl, me
        The fields of :class:`Group`.
    """
    if load_acquire(ctl, ABORTED) != 0:
        return STATUS_ABORTED
    if ctl[me + SIZE] == 1:
        return OK
    target = ctl[me + PUBLISHED] + 1
    store_release(ctl, me, target)
    status = wait_all(ctl, me, target)
    if status == OK:
        ctl[me + PUBLISHED] = target
    return status


@njit(cache=True)
def broadcast(buf, slots, ctl, me, root):
    """Copy `buf` of rank `root` into `buf` on every rank (one published step).

    Parameters
    ----------
    buf : ndarray, shape (n,), float32 or float64, contiguous
    slots, ctl, me
        The fields of :class:`Group`.
    root : int

    Returns
    -------
    int
        OK or a status code.
    """
    if load_acquire(ctl, ABORTED) != 0:
        return STATUS_ABORTED
    g = ctl[me + GENERATION]
    ctl[me + GENERATION] = g + 1
    if ctl[me + SIZE] == 1:
        return OK
    n = buf.size
    src = slots[g % 2, root]
    rank = ctl[me + RANK]
    if rank == root:
        for i in range(np.uint64(0), np.uint64(n)):
            src[i] = buf[i]
    status = barrier(ctl, me)
    if status != OK or rank == root:
        return status
    for i in range(np.uint64(0), np.uint64(n)):
        buf[i] = src[i]
    return OK
