"""The compiled data-parallel training path: whole epochs per compiled call on every worker.

The synchronous workers of ``fit(..., workers=k)`` run the general loop
(:func:`minscale.train.loop.run` with a communicator), which costs tens of microseconds of
Python per update on top of the allreduce: on the small models this is more than the update
itself. When the compiled single-process loop supports the model and options
(:func:`minscale.train.compiled.supports`) and the communicator has compiled collectives
(``SharedMemoryComm.compiled_group``), every worker instead hands whole epochs to
``minscale.kernels._fastfit_dp.train_epochs_dp`` (reached through
:func:`minscale.kernels.compiled_data_parallel_epochs`), which takes its shard of every global
batch, sums the shard gradients and losses over the ranks in compiled code (a reduce-scatter:
each rank sums and updates its slice of the parameters, then an all-gather) and ends every step
with the same parameters on every rank. The optimizer state each rank updated in slices is
gathered after every compiled call (``_fastfit_dp.allgather_slices``).

Everything around it is the single-process compiled path's (:mod:`minscale.train.compiled`:
the per-update schedule, the model's layout, the work buffers, the history) and the general
loop's start (rank 0's parameters and shuffling seed are broadcast), so the batches, the
updates and the history equal the general data-parallel loop's up to the order of the
additions in small matrix products, and every rank ends bit-identical.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .. import kernels
from . import compiled, loop
from .history import History, divergence_limit
from .progress import progress_bar

# internal to train: the workers dispatch here
__all__ = []


def supports(model, options, comm):
    """Whether :func:`run` can train `model` with these options as one rank of `comm`.

    Parameters
    ----------
    model : Sequential, compiled and built
    options : dict
        The keyword arguments of :func:`minscale.train.loop.run`.
    comm : Communicator
        More than one rank, with compiled collectives (``compiled_group``).

    Returns
    -------
    bool
    """
    if comm is None or comm.size < 2 or kernels.compiled_data_parallel_epochs() is None:
        return False
    group = getattr(comm, "compiled_group", None)
    return group is not None and compiled.supports(model, options) \
        and group(model.dtype) is not None


def run(model, X, y, comm, epochs, batch_size, shuffle, seed, validation_data, verbose,
        callbacks=(), pruning=None, pruning_method="magnitude", timing=False):
    """Train as :func:`minscale.train.loop.run` does with `comm`, whole epochs per call.

    Parameters
    ----------
    model : Sequential
        :func:`supports` must be True.
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype, C-contiguous
        The whole training data, identical on every rank.
    comm : SharedMemoryComm
    epochs, batch_size, shuffle, seed, validation_data, verbose
        As :func:`minscale.train.fit` (`batch_size` is the global batch); only rank 0 prints.
    callbacks, pruning, pruning_method
        Must be empty / None.
    timing : bool, default False
        Record every epoch's wall-clock seconds in ``History.epoch_seconds`` on every rank
        (a compiled call, and its optimizer-state gather, then covers one epoch, as when
        validating; the results are the same bit for bit).

    Returns
    -------
    History
        Equal on every rank, ``epoch_seconds`` aside; ``loop`` is ``"compiled"``.

    Raises
    ------
    DivergenceError
        As :func:`minscale.train.compiled.run`, on every rank at the same step.
    CommTimeoutError, CommAbortedError
        A peer did not reach an allreduce within the timeout, or the group was aborted.
    ValueError
        Callbacks or a pruning schedule given.
    """
    if callbacks or pruning is not None:
        raise ValueError("the compiled fit loop takes no callbacks and no pruning schedule")
    dp = kernels.compiled_data_parallel_epochs()
    fastfit = kernels.compiled_epochs()
    opt = model.optimizer
    n = X.shape[0]
    rank = comm.rank
    total = epochs * math.ceil(n / batch_size)
    step0 = opt.iterations
    lr_last = opt.current_learning_rate()  # raises as the general loop does on a bad schedule
    lr64 = compiled.learning_rates(opt.learning_rate, step0, total)
    if total and (not np.all(np.isfinite(lr64)) or lr64.min() < 0):
        # a rate the optimizer would reject: let the general loop raise at the right step
        return loop.run(model, X, y, epochs, batch_size, shuffle, seed, validation_data,
                        verbose, list(callbacks), pruning, pruning_method, comm=comm,
                        timing=timing)
    # identical start on every rank: rank 0's parameters and shuffling seed (as loop.run)
    comm.broadcast(model.params, root=0)
    seed_buf = np.array([np.random.SeedSequence(seed).entropy % 2**52 if rank == 0 else 0],
                        dtype=np.float64)
    comm.broadcast(seed_buf, root=0)
    rng = np.random.default_rng(int(seed_buf[0]))
    show = verbose if rank == 0 else 0  # only rank 0 prints
    update = compiled._update(fastfit, opt, model.params, step0, lr64, model.prunable)
    net = compiled._network(fastfit, model)
    has_mask = not model.mask.all()
    buf = fastfit.Buffers(model.params, model.grads,
                          model.mask if has_mask else np.zeros(0, dtype=np.bool_), has_mask,
                          model.params.copy())
    bs = int(min(batch_size, n))
    scratch = compiled._scratch(fastfit, net.dims, bs, model.dtype)
    batches = fastfit.Batches(X, y, np.zeros((0, 0), dtype=np.int64), bool(shuffle),
                              int(batch_size))
    reduction = fastfit.REDUCTION_CODES[model.reduction]
    group = comm.compiled_group(model.dtype)
    status = np.zeros(4, dtype=np.int64)
    history = History()
    history.loop = "compiled"
    # from the arguments every rank has alike (not `show`): the optimizer state is gathered
    # after every call, a collective every rank must make as often as the others
    per_call = 1 if (validation_data is not None or verbose or timing) else max(1, epochs)
    per_call = min(per_call, max(1, compiled.ORDER_ENTRIES // max(n, 1)))
    loss_limit = None
    bar = progress_bar(show, total)
    done = 0
    tick = time.perf_counter() if timing else None
    try:
        for e0 in range(0, epochs, per_call):
            e1 = min(epochs, e0 + per_call)
            if shuffle:
                orders = np.stack([rng.permutation(n) for _ in range(e0, e1)])
            else:
                orders = np.zeros((e1 - e0, 0), dtype=np.int64)
            if loss_limit is None:
                rows = orders[0, :bs] if shuffle else slice(0, bs)
                start = model.evaluate(X[rows], y[rows], return_dict=True)["loss"]
                loss_limit = divergence_limit(start)
            scratch = scratch._replace(epoch_loss=np.zeros(e1 - e0, dtype=np.float64))
            steps = int(dp.train_epochs_dp(
                batches._replace(orders=orders), net, buf,
                update._replace(lr=update.lr[done:], step_size=update.step_size[done:],
                                sqrt_bc2=update.sqrt_bc2[done:], factor=update.factor[done:]),
                scratch, e1 - e0, reduction, loss_limit, group.slots, group.ctl, group.me,
                rank, comm.size, model.grad_buffer, status))
            opt.iterations += steps
            history.history["lr"].extend(lr64[done:done + steps].tolist())
            if steps:
                lr_last = float(lr64[done + steps - 1])
            done += steps
            if bar is not None:
                bar.update(steps)
            code, epoch = int(status[0]), e0 + int(status[1])
            if code == 3:
                comm.raise_status(int(status[3]), "allreduce")
            # each rank updated its slice of the optimizer state: make it whole everywhere
            for state in (update.slot_1, update.slot_2):
                if state.size:
                    failed = dp.allgather_slices(state, group.slots, group.ctl, group.me, rank,
                                                 comm.size)
                    if failed:
                        comm.raise_status(failed, "allgather")
            model.grad_buffer[-1] = scratch.loss[0]
            if code == 1:
                loop.diverged(model, buf.backup, epoch, opt.iterations, lr_last,
                              float(scratch.loss[0]), loss_limit)
            if code == 2:
                loop.diverged(model, buf.backup, epoch, opt.iterations, lr_last, float("nan"))
            compiled._log_epochs(model, history, bar, e0, scratch.epoch_loss, epochs,
                                 validation_data, show)
            if timing:
                tick = loop.lap(history, tick)
    finally:
        if bar is not None:
            bar.close()
    return history
