"""Point-to-point messages between neighbouring pipeline stages: shared memory or MPI.

A pipeline stage sends its activations to the next stage and the gradients of its input to
the previous one. Both transports offer the same three calls, so the stage loop
(:mod:`minscale.train.pipeline`) is written once:

- ``send(buf, peer, slot, tag)`` starts sending `buf` (the caller keeps `buf` unchanged until
  `flush`);
- ``recv(out, peer, slot, tag)`` returns when `out` holds the message, or raises;
- ``flush()`` completes every send started since the last flush.

Sends never wait for the receiver before `flush`, so no schedule can deadlock on two
neighbours sending to each other at once (the 1F1B steady state does exactly that).

`SharedMemoryMailboxes` (one machine). The parent creates, for every ordered pair of
neighbouring stages, a mailbox with one slot per micro-batch: a payload area and two int64
words ``[tag, nbytes]``. The sender copies the payload into slot ``slot`` and then writes the
message's `tag` (the trainer uses the batch counter, so every message of a step has a tag no
earlier step used); the receiver waits until the word holds the tag it expects and copies the
payload out. One slot per micro-batch means a sender never waits: a slot is written again only
in the next step, after the receiver has copied the message out (it needed that message to
finish the step whose results the sender waited for). The wait is bounded like every
collective of :class:`~minscale.parallel.SharedMemoryComm`: it ends with CommAbortedError as
soon as the group is aborted (a peer failed, the parent stopped the run) or the parent died,
and with CommTimeoutError after ``timeout`` seconds. It polls with a sleep growing from 10 us
to 0.2 ms (a message is seen at most that late), so a waiting stage leaves its core to the
one computing.

Memory order: the tag is written after the payload with plain stores; x86-64 makes stores
visible in program order (TSO), so a receiver that sees the tag sees the payload. CPUs with a
weaker order (ARM) would need a fence between the two, which Python does not offer.

`MPILinks` (``mpiexec``). ``MPI_Isend`` / ``MPI_Irecv`` between the ranks, completed under the
deadline of :class:`~minscale.parallel.MPIComm` (the job is aborted when a peer does not answer
within its timeout). MPI keeps messages between one pair of ranks with one tag in order, so
the slot is not needed; the tag says the direction.

References
----------
MPI 4.0 standard, section 3.7 (nonblocking communication); the batched ``isend``/``irecv`` of
``torch.distributed.pipelining`` avoid the same send-send deadlock.
"""
from __future__ import annotations

import time

import numpy as np

from .base import CommAbortedError, CommTimeoutError, check_buffer
from .shm import SharedArray, process_gone

__all__ = ["SharedMemoryMailboxes", "SharedMemoryLinks", "MPILinks"]

# Seconds between looks at the parent process while a receive waits.
_PARENT_POLL = 0.1
# Longest sleep between two looks at a mailbox's tag word.
_MAX_PAUSE = 2e-4


class SharedMemoryMailboxes:
    """Parent-side owner of the shared-memory mailboxes of a pipeline of `stages` processes.

    Parameters
    ----------
    capacities : list of int, length stages - 1
        ``capacities[s]``: the largest message in bytes between stage s and stage s + 1 (the
        activations of the largest micro-batch; their gradients have the same size).
    slots : int, >= 1
        Messages in flight per direction and pair (the number of micro-batches).

    Attributes
    ----------
    specs : dict of (int, int) -> (SharedArraySpec, SharedArraySpec)
        ``specs[(src, dst)]``: the payload array ``(slots, capacity)`` uint8 and the header
        ``(slots, 2)`` int64 of the mailbox from `src` to `dst`. Pass it to the stages.

    Notes
    -----
    Memory: ``2 * slots * sum(capacities)`` bytes of shared memory. Use as a context manager
    (or call `close`), so the segments are unlinked even when a stage fails.
    """

    def __init__(self, capacities, slots):
        self._owned = []
        self.specs = {}
        try:
            for s, capacity in enumerate(capacities):
                for src, dst in ((s, s + 1), (s + 1, s)):
                    data = SharedArray.create((slots, max(int(capacity), 1)), dtype="uint8")
                    self._owned.append(data)
                    header = SharedArray.create((slots, 2), dtype="int64")
                    self._owned.append(header)
                    self.specs[(src, dst)] = (data.spec, header.spec)
        except BaseException:
            self.close()
            raise

    def close(self):
        """Unlink every mailbox segment (idempotent)."""
        for shared in self._owned:
            shared.close()
            shared.unlink()
        self._owned = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SharedMemoryLinks:
    """One stage's end of the shared-memory mailboxes, waiting under the group's rules.

    Parameters
    ----------
    specs : dict
        `SharedMemoryMailboxes.specs`.
    comm : SharedMemoryComm
        The stage's communicator: its abort flag, rank and timeout bound every wait.
    parent_pid : int
        The launching process; a receive gives up when it has died.
    rank : int, optional
        This process's stage in `specs` (default ``comm.rank``; a data-parallel replica of the
        pipeline passes its stage, its `comm` being the whole grid's).

    Raises
    ------
    CommAbortedError, CommTimeoutError
        From `recv` (see the module docstring).
    """

    def __init__(self, specs, comm, parent_pid, rank=None):
        self.comm = comm
        self.rank = comm.rank if rank is None else int(rank)
        self.parent_pid = parent_pid
        self._boxes = {}
        self._attached = []
        for (src, dst), (data_spec, header_spec) in specs.items():
            if self.rank not in (src, dst):
                continue
            data, header = SharedArray.attach(data_spec), SharedArray.attach(header_spec)
            self._attached += [data, header]
            self._boxes[(src, dst)] = (data.array, header.array)

    def _box(self, src, dst):
        try:
            return self._boxes[(src, dst)]
        except KeyError:
            raise ValueError(f"no mailbox from stage {src} to stage {dst}: stages exchange "
                             "messages with their neighbours only") from None

    def send(self, buf, peer, slot, tag):
        """Copy `buf` into slot `slot` of the mailbox to `peer`, then publish `tag`.

        Parameters
        ----------
        buf : ndarray, C-contiguous
        peer : int
            The receiving stage, a neighbour.
        slot : int, in [0, slots)
        tag : int, > 0
            What the receiver waits for; never reused within a run.

        Raises
        ------
        ValueError
            `buf` larger than the mailbox's capacity.
        """
        data, header = self._box(self.rank, peer)
        raw = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        if raw.size > data.shape[1]:
            raise ValueError(f"a message of {raw.size} bytes does not fit the mailbox to stage "
                             f"{peer} ({data.shape[1]} bytes per slot)")
        data[slot, :raw.size] = raw
        header[slot, 1] = raw.size
        header[slot, 0] = tag  # last: the receiver reads the payload once it sees the tag

    def recv(self, out, peer, slot, tag):
        """Wait for message `tag` in slot `slot` of the mailbox from `peer`; copy it into `out`.

        Parameters
        ----------
        out : ndarray, C-contiguous, writeable
            Must have the message's size in bytes.
        peer, slot, tag
            As in `send`.

        Returns
        -------
        out : ndarray

        Raises
        ------
        CommAbortedError
            The group was aborted (a stage failed, the parent stopped it) or the parent died.
        CommTimeoutError
            No message within the communicator's timeout.
        ValueError
            The message's size is not ``out.nbytes`` (the stages disagree on the schedule).
        """
        data, header = self._box(peer, self.rank)
        word = header[slot]
        rank = self.rank
        what = f"the message from stage {peer} (slot {slot}, tag {tag})"
        start = time.monotonic()
        deadline = start + self.comm.timeout
        next_parent_check = start + _PARENT_POLL
        pause = 1e-5
        while word[0] != tag:
            if self.comm.aborted:
                raise CommAbortedError(f"stage {rank}: group aborted while waiting for {what} "
                                       "(the parent or a failing stage stopped the pipeline)")
            now = time.monotonic()
            if now >= next_parent_check:
                next_parent_check = now + _PARENT_POLL
                if process_gone(self.parent_pid):
                    raise CommAbortedError(f"stage {rank}: the parent process (pid "
                                           f"{self.parent_pid}) died while waiting for {what}")
            if now >= deadline:
                raise CommTimeoutError(
                    f"stage {rank}: {what} did not arrive within timeout={self.comm.timeout:g} s; "
                    f"stage {peer} may have died, be stopped or hung")
            time.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)
        nbytes = int(word[1])
        if nbytes != out.nbytes:
            raise ValueError(f"stage {rank}: {what} has {nbytes} bytes, expected {out.nbytes}")
        out.reshape(-1).view(np.uint8)[...] = data[slot, :nbytes]
        return out

    def flush(self):
        """Nothing to complete: a shared-memory send is done when `send` returns."""

    def reset(self):
        """Forget the messages delivered to this stage, so the mailboxes serve another run
        whose tags start again at 1. Every stage must call it between two barriers (no message
        of either run in flight)."""
        for (_src, dst), (_data, header) in self._boxes.items():
            if dst == self.rank:
                header[...] = 0

    def close(self):
        """Detach from the mailboxes (the parent unlinks them)."""
        self._boxes.clear()
        for shared in self._attached:
            shared.close()
        self._attached = []


class MPILinks:
    """One rank's point-to-point messages over an :class:`~minscale.parallel.MPIComm`.

    Parameters
    ----------
    comm : MPIComm
    ranks : list of int, optional
        The MPI ranks of the pipeline's stages, in stage order (default: stage s is rank s);
        a data-parallel replica of the pipeline passes its own (``grid_groups``). `peer`
        arguments are stages.

    Notes
    -----
    ``send`` is ``MPI_Isend`` (the request is kept until `flush`), ``recv`` ``MPI_Irecv``
    completed under the communicator's deadline; a peer that does not answer within
    ``comm.timeout`` seconds aborts the MPI job (one line on stderr naming this rank). The
    message tag is the direction (`tag` argument modulo 2 is ignored: MPI keeps one pair's
    messages in order), the slot unused.
    """

    def __init__(self, comm, ranks=None):
        self.comm = comm
        self.ranks = list(range(comm.size)) if ranks is None else [int(r) for r in ranks]
        self.rank = self.ranks.index(comm.rank)
        self._pending = []

    def send(self, buf, peer, slot, tag):
        """Start ``MPI_Isend`` of `buf` to stage `peer`; keep `buf` unchanged until `flush`."""
        check_buffer(buf)
        kind = 1 if peer > self.rank else 2  # forward: to the next stage
        target = self.ranks[peer]
        self._pending.append((self.comm.isend(buf, target, tag=kind), buf, target))

    def recv(self, out, peer, slot, tag):
        """Receive the next message from stage `peer` into `out` (``MPI_Irecv``, deadline)."""
        kind = 1 if peer < self.rank else 2
        self.comm.recv(out, self.ranks[peer], tag=kind)
        return out

    def flush(self):
        """Complete every pending send (under the communicator's deadline)."""
        pending, self._pending = self._pending, []
        for request, _buf, peer in pending:
            self.comm.wait(request, f"send to rank {peer}")

    def close(self):
        """Complete what is pending."""
        self.flush()




