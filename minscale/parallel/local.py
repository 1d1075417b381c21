"""LocalComm: the one-process communicator, and the oracle the parallel tests compare against."""

from __future__ import annotations

from .base import check_buffer, check_op, check_root

__all__ = ["LocalComm"]


class LocalComm:
    """A process group of size 1: every collective is the identity.

    Training with ``comm=LocalComm()`` runs exactly the single-process code path, including
    the allreduce call, so it is the reference the other backends must reproduce.

    Attributes
    ----------
    rank : int
        Always 0.
    size : int
        Always 1.

    Examples
    --------
    >>> import numpy as np
    >>> LocalComm().allreduce(np.array([1.0, 2.0]))
    array([1., 2.])
    """

    rank = 0
    size = 1

    def allreduce(self, buf, op="sum"):
        """Reduce `buf` over one rank: validate it and return it unchanged.

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array

        Raises
        ------
        TypeError, ValueError
            From `check_buffer` / `check_op`, as on every backend, so bad calls fail here too.
        """
        check_buffer(buf)
        check_op(op)
        return buf

    def allreduce_in_rank_order(self, buf, op="sum"):
        """Rank-order reduction over one rank: the same as `allreduce` (validate, return `buf`).

        Parameters
        ----------
        buf : ndarray of float32 or float64, C-contiguous, writeable
        op : {"sum", "max", "min"}, default "sum"

        Returns
        -------
        buf : the same array
        """
        return self.allreduce(buf, op)

    def broadcast(self, buf, root=0):
        """Broadcast from `root` (must be 0) to one rank: validate and return `buf` unchanged.

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
            If `buf` is not a valid buffer or `root` is not 0.
        """
        check_buffer(buf)
        check_root(root, self.size)
        return buf

    def barrier(self):
        """Return immediately: one rank is always in the barrier."""

    def abort(self):
        """Nothing to abort in one process; present so trainers can call it on any backend."""

    def close(self):
        """Nothing to release; present so trainers can call it on any backend."""

    def __repr__(self):
        return "LocalComm(rank=0, size=1)"
