"""MPIComm: the Communicator protocol over mpi4py, for training across processes and machines.

Run with ``mpiexec -n K python -m minscale train ... --comm mpi`` or, from Python,
``model.fit(X, y, ..., comm=MPIComm())`` in a script started by ``mpiexec``. mpi4py is imported
only when an MPIComm is created, so minscale imports without it.

An uncaught exception on one rank would otherwise leave the others blocked in their next
collective forever (MPI has no failure detection by default). `MPIComm` therefore installs an
excepthook that prints the traceback and calls ``MPI_Abort``, which makes ``mpiexec`` kill every
rank and exit non-zero; `abort_on_error` does the same for a block of code. This is what
``python -m mpi4py script.py`` does too (mpi4py documentation, "mpi4py.run").

A rank that is stopped, hung, or has left early (even with exit status 0) raises nothing:
its peers would wait in their next collective forever. Every `MPIComm` collective is
therefore started non-blocking (``MPI_Iallreduce``, ``MPI_Ibcast``, ``MPI_Ibarrier``) and
completed under a deadline (``timeout`` seconds): ``MPI_Wait`` watched by a watchdog thread
when MPI provides ``MPI_THREAD_MULTIPLE`` (mpi4py's default), else ``MPI_Test`` polling. A rank
whose collective does not complete in time prints one line naming itself and the collective,
then calls ``MPI_Abort``, so ``mpiexec`` ends every rank and exits non-zero.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback

import numpy as np

from .base import (
    check_buffer,
    check_op,
    check_root,
    check_timeout,
    default_timeout,
    reduce_in_rank_order,
)

__all__ = ["MPIComm", "abort_on_error", "abort_mpi_job", "install_abort_excepthook", "import_mpi"]


def import_mpi():
    """Import and return ``mpi4py.MPI``.

    Returns
    -------
    module
        ``mpi4py.MPI``.

    Raises
    ------
    ImportError
        If mpi4py (or an MPI library) is missing, saying how to install it.
    """
    try:
        from mpi4py import MPI  # noqa: PLC0415  (optional third-party: the mpi extra)
    except ImportError as exc:
        raise ImportError(
            "MPIComm needs mpi4py and an MPI library: pip install 'minscale[mpi]' "
            f"(mpi4py and the mpich wheel); import failed with: {exc}"
        ) from exc
    return MPI


def _abort(comm, errorcode):
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # mpiexec forwards a rank's output through its proxy asynchronously; MPI_Abort right after
    # the flush can kill the job before the error line reaches the user (seen under load)
    time.sleep(0.2)
    comm.Abort(errorcode)


def install_abort_excepthook(comm=None, errorcode=1):
    """Make an uncaught exception on this rank abort the whole MPI job.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        Communicator to abort; ``MPI.COMM_WORLD`` when None.
    errorcode : int, default 1
        Exit code handed to ``MPI_Abort`` (mpiexec exits non-zero).

    Notes
    -----
    The previous hook runs first, so the traceback is printed; installing twice is a no-op.
    Only the main thread's uncaught exceptions reach ``sys.excepthook``.
    """
    MPI = import_mpi()
    target = MPI.COMM_WORLD if comm is None else comm
    previous = sys.excepthook
    if getattr(previous, "_minscale_mpi_abort", False):
        return

    def hook(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
        finally:
            _abort(target, errorcode)

    hook._minscale_mpi_abort = True
    sys.excepthook = hook


def abort_mpi_job(errorcode=1):
    """If this process is one rank of a running multi-rank MPI job, abort the whole job.

    For code that turns an exception into an exit code (a command line that prints one line
    and returns 2): exiting normally on one rank would leave the others blocked in their next
    collective, since mpi4py's exit handler waits in ``MPI_Finalize``. Call this after
    printing the message and before returning the code.

    Parameters
    ----------
    errorcode : int, default 1
        Exit code for ``MPI_Abort``; mpiexec exits non-zero.

    Returns
    -------
    bool
        False when there is nothing to abort: mpi4py was never imported (so this never
        imports it), MPI is not initialized or already finalized, or the job has one rank.
        Otherwise it does not return.
    """
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return False
    if MPI.COMM_WORLD.Get_size() <= 1:
        return False
    _abort(MPI.COMM_WORLD, errorcode)
    return True


@contextlib.contextmanager
def abort_on_error(comm=None, errorcode=1):
    """Context manager: an exception (or Ctrl-C) inside the block aborts the whole MPI job.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        ``MPI.COMM_WORLD`` when None.
    errorcode : int, default 1

    Notes
    -----
    ``SystemExit`` with code 0 or None passes through; any other exception prints its
    traceback with the rank and calls ``MPI_Abort(comm, errorcode)``.

    Examples
    --------
    ::

        with abort_on_error():
            model.fit(X, y, comm=MPIComm())
    """
    MPI = import_mpi()
    target = MPI.COMM_WORLD if comm is None else comm
    try:
        yield
    except SystemExit as exc:
        if exc.code in (None, 0):
            raise
        print(f"[rank {target.Get_rank()}] exiting with {exc.code!r}; aborting the MPI job", file=sys.stderr)
        _abort(target, errorcode)
    except BaseException:
        print(f"[rank {target.Get_rank()}] uncaught exception; aborting the MPI job", file=sys.stderr)
        traceback.print_exc()
        _abort(target, errorcode)


class MPIComm:
    """Communicator over an mpi4py communicator, using the buffer (upper-case) calls in place.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        Defaults to ``MPI.COMM_WORLD``.
    abort_on_exception : bool, default True
        Install `install_abort_excepthook`, so an uncaught exception on any rank ends the
        whole job non-zero instead of leaving the other ranks blocked.
    timeout : float, > 0, or None
        Seconds one collective may take on this rank before the job is aborted (a peer is
        stopped, hung or gone); None means ``$MINSCALE_COMM_TIMEOUT`` if set, else 120.

    Attributes
    ----------
    rank, size : int
    comm : mpi4py.MPI.Comm
    timeout : float

    Raises
    ------
    ImportError
        If mpi4py is not installed.
    TypeError, ValueError
        On a bad `timeout` or ``$MINSCALE_COMM_TIMEOUT``.

    Notes
    -----
    allreduce is ``comm.Iallreduce(MPI.IN_PLACE, buf, op)``, broadcast ``comm.Ibcast(buf, root)``,
    barrier ``comm.Ibarrier()``, each completed under a deadline (see the module docstring); the dtype
    travels with the NumPy buffer (float64 -> MPI_DOUBLE, float32 -> MPI_FLOAT). Every rank
    must use MPIComm for its collectives: MPI never matches a non-blocking collective with a
    blocking one.
    The order in which MPI adds contributions in `allreduce` is the library's choice, so
    results may differ from `SharedMemoryComm` in the last bits, and from run to run when the
    library picks another algorithm (MPICH's give every rank the same bits; the standard
    fixes no order);
    `allreduce_in_rank_order` (``comm.Iallgather``, then the sum in rank order on every rank)
    fixes the order, for tensor parallelism.

    References
    ----------
    MPI 4.0 standard, sections 6.4 (Bcast), 6.9.6 (in-place Allreduce) and 6.12 (nonblocking
    collective operations); mpi4py tutorial, "Collective Communication" (buffer-based calls).
    """

    def __init__(self, comm=None, *, abort_on_exception=True, timeout=None):
        self.timeout = default_timeout() if timeout is None else check_timeout(timeout)
        MPI = import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        self._count = 0
        # (deadline, what, count) of the collective in progress, read by the watchdog
        self._pending = None
        self._watchdog = None
        # MPI_Abort from the watchdog thread while this one waits inside MPI needs
        # MPI_THREAD_MULTIPLE; Test polling from Python costs about twice as much per call
        self._use_watchdog = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        if abort_on_exception:
            install_abort_excepthook(self.comm)

    def _timed_out(self, what, count):
        print(f"minscale: error: MPI rank {self.rank} of {self.size}: {what} #{count} did not "
              f"complete within timeout={self.timeout:g} s (MINSCALE_COMM_TIMEOUT); another rank "
              "is stopped, hung or has exited; aborting the MPI job", file=sys.stderr)
        _abort(self.comm, 1)

    def _watch(self):
        while True:
            time.sleep(min(0.1, self.timeout / 10))
            pending = self._pending
            if pending is not None and time.monotonic() >= pending[0]:
                self._timed_out(pending[1], pending[2])

    def _complete(self, request, what):
        """Wait for `request`; abort the job if it is not complete after `timeout` seconds."""
        self._count += 1
        if self._use_watchdog:
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="minscale-mpi-watchdog",
                                                  daemon=True)
                self._watchdog.start()
            self._pending = (time.monotonic() + self.timeout, what, self._count)
            try:
                request.Wait()  # mpi4py releases the GIL here, so the watchdog runs
            finally:
                self._pending = None
            return
        start = time.monotonic()
        pause = 1e-6
        while not request.Test():
            now = time.monotonic()
            if now >= start + self.timeout:
                self._timed_out(what, self._count)
            # a short wait is polled at once; a long one (a slow peer) backs off to 1 ms
            if now - start > 1e-3:
                time.sleep(pause)
                pause = min(2 * pause, 1e-3)

    @property
    def rank(self):
        """This process's rank, in [0, size)."""
        return self.comm.Get_rank()

    @property
    def size(self):
        """Number of ranks."""
        return self.comm.Get_size()

    def allreduce(self, buf, op="sum"):
        """Reduce `buf` element-wise over all ranks, in place (``MPI_Allreduce``, ``MPI_IN_PLACE``).

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable
            Same size and dtype on every rank.
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array, holding the reduction

        Raises
        ------
        TypeError, ValueError
            On a bad buffer or op.

        Notes
        -----
        Not completed within `timeout` seconds: one line on stderr, then ``MPI_Abort``.
        """
        check_buffer(buf)
        check_op(op)
        self._complete(self.comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._ops[op]), "allreduce")
        return buf

    def allreduce_in_rank_order(self, buf, op="sum"):
        """Reduce `buf` over all ranks in rank order, in place: gather every buffer, then add.

        ``MPI_Iallgather`` brings every rank's buffer to every rank unchanged (no arithmetic
        in MPI), then each rank computes ``buf_0 op buf_1 op ... op buf_{size-1}`` left to
        right (`reduce_in_rank_order`, the order `SharedMemoryComm` uses): the same float
        operations in the same order on every rank, so the result is bit-identical on every
        rank, run to run, and to a one-process reference that adds the same buffers in rank
        order -- which `allreduce` does not promise (the MPI library chooses its order).

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable
            Same size and dtype on every rank.
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array, holding the reduction

        Raises
        ------
        TypeError, ValueError
            On a bad buffer or op.

        Notes
        -----
        Costs a ``(size, buf.size)`` receive buffer and ``size - 1`` buffers received per rank
        (an allreduce moves about 2), so it is meant for the small activation and gradient
        buffers of tensor parallelism, not a whole model's gradient. Not completed within
        `timeout` seconds: one line on stderr, then ``MPI_Abort``, as every collective.

        References
        ----------
        MPI 4.0 standard, sections 6.7 (Allgather) and 6.9.1 (an implementation may combine
        the contributions of a reduction in any order).
        """
        check_buffer(buf)
        check_op(op)
        flat = buf.reshape(-1)
        slots = np.empty((self.size, flat.size), dtype=buf.dtype)
        self._complete(self.comm.Iallgather(flat, slots), "allreduce_in_rank_order")
        reduce_in_rank_order(slots, op, flat)
        return buf

    def broadcast(self, buf, root=0):
        """Overwrite `buf` on every rank with root's `buf` (``MPI_Bcast``).

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
            On a bad buffer or root.

        Notes
        -----
        Not completed within `timeout` seconds: one line on stderr, then ``MPI_Abort``.
        """
        check_buffer(buf)
        root = check_root(root, self.size)
        self._complete(self.comm.Ibcast(buf, root=root), "broadcast")
        return buf

    def barrier(self):
        """Block until every rank has entered (``MPI_Ibarrier``; the job aborts after `timeout`)."""
        self._complete(self.comm.Ibarrier(), "barrier")

    def isend(self, buf, dest, tag=0):
        """Start sending `buf` to rank `dest` (``MPI_Isend``); complete it with `wait`.

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous
            Must stay unchanged until the send is complete.
        dest : int, in [0, size)
        tag : int, >= 0

        Returns
        -------
        mpi4py.MPI.Request
        """
        check_buffer(buf)
        return self.comm.Isend(buf, dest=check_root(dest, self.size), tag=tag)

    def wait(self, request, what="send"):
        """Complete `request` under the deadline: after `timeout` s one line, then ``MPI_Abort``."""
        self._complete(request, what)

    def recv(self, buf, source, tag=0):
        """Receive a message from rank `source` into `buf` (``MPI_Irecv``, under the deadline).

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable
            The message's size and dtype.
        source : int, in [0, size)
        tag : int, >= 0

        Returns
        -------
        buf : the same array
        """
        check_buffer(buf)
        source = check_root(source, self.size)
        self._complete(self.comm.Irecv(buf, source=source, tag=tag), f"receive from rank {source}")
        return buf

    def abort(self, errorcode=1):
        """End the whole MPI job with `errorcode` (``MPI_Abort``); does not return."""
        _abort(self.comm, errorcode)

    def close(self):
        """Nothing to release: MPI is finalized by mpi4py at interpreter exit."""

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size})"
