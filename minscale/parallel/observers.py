"""QAT observers that see the global batch in synchronous data-parallel training.

Each rank's forward pass sees only its shard of the batch; :func:`synchronized_observers`
makes every activation observer fold in the range of the whole batch instead, through one
allreduce per observed layer, so the ranks and a single process end with the same observer
state. The training loop (:func:`minscale.train.loop.run`) enters it whenever its
communicator has more than one rank.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..quant import channel_min_max

__all__ = ["synchronized_observers"]


def _range_tensor(lo, hi, axis, ndim):
    """A small tensor whose (per-channel, along `axis`) minimum is `lo` and maximum is `hi`."""
    if axis is None:
        return np.array([lo[0], hi[0]])
    pair = np.stack([lo, hi], axis=1).reshape((lo.size, 2) + (1,) * (ndim - 2))
    return np.moveaxis(pair, 0, axis)


def _synced_observe(observer, original, comm):
    """An ``observe`` for `observer` that folds in the global batch's range, not the shard's."""

    def observe(x):
        arr = np.asarray(x, dtype=np.float64)
        if observer.axis is not None and arr.ndim < 2:
            # One value per channel: the channel count follows the shard, nothing to share.
            return original(x)
        axis = None if observer.axis is None else observer.axis % arr.ndim
        channels = 1 if axis is None else arr.shape[axis]
        if arr.size:
            lo, hi = channel_min_max(arr, axis)
        else:
            # An empty shard still joins the allreduce, with the identities of min and max.
            lo, hi = np.inf, -np.inf
        buf = np.empty(2 * channels)
        buf[:channels], buf[channels:] = -np.asarray(lo, dtype=np.float64), hi
        comm.allreduce(buf, op="max")
        lo, hi = -buf[:channels], buf[channels:]
        if np.all(np.isfinite(lo)):
            original(_range_tensor(lo, hi, axis, arr.ndim))
        return x

    return observe


@contextlib.contextmanager
def synchronized_observers(model, comm):
    """Within the block, activation observers of QAT see the range of the global batch.

    In synchronous data-parallel training each rank's forward pass sees only its shard, so a
    QAT activation observer (``layer.output_quantizer.observer``) would fold a different range
    into its running statistics on every rank, and the fake-quantized forward passes would no
    longer match single-process training. Inside this context every observer's ``observe``
    first allreduces the shard's minimum and maximum (``op="max"`` on ``[-min, max]``, exact in
    floating point) and then folds in the global values, so every rank, and a single process
    on the whole batch, end with the same observer state.

    Parameters
    ----------
    model : Sequential
        Layers whose ``output_quantizer`` has an ``observer`` with ``observe(x)``, ``axis``
        (None or int) and min/max semantics (``minimum = min(x)`` over the reduced axes), as
        :class:`minscale.quant.MinMaxObserver` and its moving-average subclass.
    comm : Communicator

    Yields
    ------
    int
        Number of observers synchronized.

    Notes
    -----
    Adds one allreduce of ``2 * channels`` float64 per observed layer to every training forward
    pass; every rank makes it, empty shards included (they contribute +inf / -inf). The
    observers are restored on exit (the wrapper holds the communicator, which cannot be
    pickled).

    References
    ----------
    Same idea as synchronized batch normalization (``torch.nn.SyncBatchNorm``): statistics
    of the global batch through an allreduce inside the forward pass.
    """
    wrapped = []
    if comm is not None and comm.size > 1:
        for layer in model.layers:
            observer = getattr(getattr(layer, "output_quantizer", None), "observer", None)
            if observer is not None and callable(getattr(observer, "observe", None)) \
                    and "observe" not in vars(observer):
                observer.observe = _synced_observe(observer, observer.observe, comm)
                wrapped.append(observer)
    try:
        yield len(wrapped)
    finally:
        for observer in wrapped:
            del observer.observe
