"""The training loop proper, as DESIGN.md's data flow states it.

One loop serves one process and every data-parallel worker: with a communicator of size k,
each global batch is split into k contiguous shards, each rank computes the gradient of its
shard scaled by the *global* batch size (so the shard gradients add up to the batch
gradient), one allreduce sums them (the batch loss rides along in the same buffer), and every
rank applies the same update.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from ..io import TrainingProgress, data_digest, restore_checkpoint, write_checkpoint
from ..parallel.base import shard_bounds
from ..parallel.observers import synchronized_observers
from .callbacks import PruningCallback
from .history import BLOWUP_FACTOR, DivergenceError, History, divergence_limit
from .progress import progress_bar, report_epoch

# the loop is reached through fit; run is public for the data-parallel workers
__all__ = []


def run(model, X, y, epochs, batch_size, shuffle, seed, validation_data, verbose, callbacks,
        pruning, pruning_method, comm=None, checkpoint=None, checkpoint_every=None,
        resume=None, micro_batches=1, replicas=1, timing=False):
    """The training loop proper, on validated arrays (see :func:`fit`).

    Parameters
    ----------
    model : Sequential, compiled and built
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype
    comm : Communicator, optional
        When given, this process is rank ``comm.rank`` of ``comm.size``: it computes the
        gradient of its shard of every batch and allreduces it.
    checkpoint, checkpoint_every, resume
        See :func:`fit`; every rank reads `resume`, rank 0 writes `checkpoint`.
    micro_batches : int, default 1
        Split each batch (each rank's shard) into this many micro-batches and accumulate
        their gradients (:func:`accumulate_micro_batches`): the single-process reference of
        pipeline training.
    replicas : int, default 1
        With `micro_batches`, split each batch first into this many replica shards
        (:func:`accumulate_micro_batches`): the single-process reference of
        ``fit(..., workers=replicas, pipeline_stages=p, micro_batches=m)``. One process only.
    timing : bool, default False
        Record every epoch's wall-clock seconds in ``History.epoch_seconds`` (see
        :func:`fit`).

    Returns
    -------
    History
    """
    if replicas > 1 and comm is not None:
        raise ValueError("replicas is the single-process reference; give it without comm")
    rank = 0 if comm is None else comm.rank
    size = 1 if comm is None else comm.size
    run_seed = seed  # the caller's seed, recorded in checkpoints (ranks derive their own)
    if pruning is not None:
        callbacks = [PruningCallback(pruning, pruning_method)] + list(callbacks)
    if comm is not None and size > 1:
        # identical start on every rank: rank 0's parameters and shuffling seed win
        comm.broadcast(model.params, root=0)
        seed_buf = np.array([np.random.SeedSequence(seed).entropy % 2**52 if rank == 0 else 0],
                            dtype=np.float64)
        comm.broadcast(seed_buf, root=0)
        seed = int(seed_buf[0])
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    n_batches = math.ceil(n / batch_size)
    optimizer = model.optimizer
    history = History()
    start_epoch, start_batch, order, loss_total = 0, 0, None, 0.0
    if checkpoint is not None or resume is not None:
        data_sha = data_digest(X, y)
    if resume is not None:
        progress = restore_checkpoint(model, resume, X, y, batch_size, shuffle, run_seed, epochs)
        rng.bit_generator.state = progress.rng_state
        history = progress.history
        start_epoch, start_batch = progress.epoch, progress.batch
        order, loss_total = progress.order, progress.loss_total
    history.loop = "general"
    history.epoch_seconds = []  # this call's epochs only, also after a resume

    def save_checkpoint(epoch, batch, order, loss_total):
        if checkpoint is None:
            return
        if not np.isfinite(model.params).all():
            # a checkpoint is always a finite snapshot to resume from
            diverged(model, backup, epoch, optimizer.iterations, lr, float("nan"))
        if rank == 0:
            write_checkpoint(checkpoint, model, TrainingProgress(
                epoch=epoch, batch=batch, loss_total=loss_total, order=order,
                rng_state=rng.bit_generator.state, history=history, seed=run_seed,
                batch_size=batch_size, shuffle=bool(shuffle), n_samples=n,
                data_sha256=data_sha))

    P = model.params.size
    regularized = model.regularized
    backup = model.params.copy()
    bar = progress_bar(verbose and rank == 0, epochs * n_batches)
    lr = optimizer.current_learning_rate()
    loss_limit = None  # set from the first batch loss of this call
    for cb in callbacks:
        cb.on_train_begin(model)
    stack = contextlib.ExitStack()
    # overflow is reported as a DivergenceError naming epoch, step and rate, not as warnings
    stack.enter_context(np.errstate(over="ignore", invalid="ignore"))
    if comm is not None and size > 1:
        # QAT activation observers must see the global batch's range, not the shard's
        stack.enter_context(synchronized_observers(model, comm))
    tick = time.perf_counter() if timing else None
    try:
        for epoch in range(start_epoch, epochs):
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                order = rng.permutation(n) if shuffle else None
                loss_total = 0.0
            for b in range(first, n_batches):
                lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
                s_lo, s_hi = shard_bounds(hi - lo, rank, size)
                rows = slice(lo + s_lo, lo + s_hi)
                if order is None:
                    Xb, yb = X[rows], y[rows]
                else:
                    idx = order[rows]
                    Xb, yb = X[idx], y[idx]
                step = optimizer.iterations
                for cb in callbacks:
                    cb.on_step_begin(model, step)
                # grads (P values) and the batch loss share one buffer: one allreduce sums both
                if micro_batches == 1 and replicas == 1:
                    model.grad_buffer[P] = model.compute_gradients(Xb, yb, n_total=hi - lo,
                                                                   regularize=False)
                else:
                    model.grad_buffer[P] = accumulate_micro_batches(model, Xb, yb, hi - lo,
                                                                    micro_batches, replicas)
                if size > 1:
                    comm.allreduce(model.grad_buffer)
                if regularized:
                    # once, after the allreduce: per shard it would count `size` times
                    model.grad_buffer[P] += model.regularize()
                batch_loss = float(model.grad_buffer[P])
                if loss_limit is None:
                    loss_limit = divergence_limit(batch_loss)
                if not math.isfinite(batch_loss) or batch_loss > loss_limit:
                    diverged(model, backup, epoch, step, lr, batch_loss, loss_limit)
                np.copyto(backup, model.params)
                mask = None if model.mask.all() else model.mask
                lr = optimizer.apply(model.params, model.grads, mask, weights=model.prunable)
                history.history["lr"].append(lr)
                loss_total += batch_loss * (hi - lo) if model.reduction == "mean" else batch_loss
                if checkpoint_every is not None and optimizer.iterations % checkpoint_every == 0:
                    save_checkpoint(epoch, b + 1, order, loss_total)
                if bar is not None:
                    bar.update(1)
            if not np.isfinite(model.params).all():
                diverged(model, backup, epoch, optimizer.iterations, lr, float("nan"))
            logs = {"loss": loss_total / n if model.reduction == "mean" else loss_total}
            if validation_data is not None:
                val = model.evaluate(*validation_data, return_dict=True)
                logs.update({f"val_{k}": v for k, v in val.items()})
            if pruning is not None:
                logs["sparsity"] = model.sparsity()["total"]
            history.epoch.append(epoch)
            for key, value in logs.items():
                history.history.setdefault(key, []).append(value)
            if timing:
                tick = lap(history, tick)
            for cb in callbacks:
                cb.on_epoch_end(model, epoch, logs)
            if verbose and rank == 0:
                report_epoch(bar, epoch, epochs, logs, verbose)
            if checkpoint_every is None:
                save_checkpoint(epoch + 1, 0, None, 0.0)
        if checkpoint_every is not None:
            save_checkpoint(epochs, 0, None, 0.0)
    finally:
        stack.close()
        if bar is not None:
            bar.close()
    for cb in callbacks:
        cb.on_train_end(model, history)
    return history


def lap(history, tick):
    """Append the seconds since `tick` to ``history.epoch_seconds``; return the new tick."""
    now = time.perf_counter()
    history.epoch_seconds.append(now - tick)
    return now


def accumulate_micro_batches(model, X, y, n_total, micro_batches, replicas=1):
    """Gradient of a batch as the sum of its micro-batches' gradients, in micro-batch order.

    The single-process reference of pipeline training: micro-batch i is rows
    ``shard_bounds(n, i, micro_batches)`` of the batch (contiguous, the first ones one row
    longer, empty ones when ``n < micro_batches``); each gets a forward and a backward pass of
    the whole model, and ``grads = ((g_0 + g_1) + g_2) + ...``. A pipeline stage runs the same
    float operations on its layers in the same order, so it ends with the same bits.

    With ``replicas = d > 1`` it is the reference of d data-parallel replicas of the pipeline
    (``fit(..., workers=d, pipeline_stages=p, micro_batches=m)``): replica r's shard is rows
    ``shard_bounds(n, r, d)`` of the batch (the data-parallel rule), micro-batch i of replica r
    is rows ``shard_bounds(n_r, i, m)`` of that shard, ``G_r = ((g_r0 + g_r1) + ...)`` as
    above, and ``grads = ((G_0 + G_1) + G_2) + ...`` in replica (rank) order, which is how the
    allreduce over the replicas of each stage adds them. The losses add up likewise.

    Parameters
    ----------
    model : Sequential, built and compiled
    X : ndarray, shape (n, d_in), the model's dtype
    y : ndarray, shape (n, d_out), the model's dtype
    n_total : int, >= 1
        Rows of the global batch (``n`` in one process): the ``mean`` reduction divides every
        micro-batch's squared error by it, so the micro-batch losses and gradients add up to
        those of the batch (see ``docs/mse.md``, "Shards of a batch: n_total"); dividing
        each by its own row count and averaging would weight the rows of a short micro-batch
        more.
    micro_batches : int, >= 1
    replicas : int, >= 1, default 1

    Returns
    -------
    float
        The batch's data loss, the micro-batch losses added in order (no regularization;
        the loop adds it once); with replicas, the replicas' losses added in replica order.

    Notes
    -----
    Writes ``model.grads``. Memory: one more gradient buffer (P values), two with replicas.

    References
    ----------
    Gradient accumulation over micro-batches as in GPipe (Huang et al. 2019, section 2.2);
    data-parallel shards scaled by the global batch as in Goyal et al. 2017.
    """
    P = model.params.size
    total = None
    total_loss = 0.0
    for r in range(replicas):
        r_lo, r_hi = shard_bounds(X.shape[0], r, replicas)
        Xr, yr = X[r_lo:r_hi], y[r_lo:r_hi]
        acc = None
        loss = 0.0
        for i in range(micro_batches):
            lo, hi = shard_bounds(Xr.shape[0], i, micro_batches)
            loss += model.compute_gradients(Xr[lo:hi], yr[lo:hi], n_total=n_total,
                                            regularize=False)
            if acc is None:
                acc = model.grads.copy()
            else:
                acc += model.grad_buffer[:P]
        if total is None:
            total, total_loss = acc, loss
        else:
            total += acc
            total_loss += loss
    np.copyto(model.grads, total)
    return total_loss


def diverged(model, backup, epoch, step, lr, loss, loss_limit=math.inf):
    """Restore the last finite parameters if needed and raise :class:`DivergenceError`.

    The message names epoch, step, learning rate and why (NaN/inf, or the relative limit).
    """
    # backup holds the parameters before the last update (or at the start of this run)
    if not np.isfinite(model.params).all():
        np.copyto(model.params, backup)
    if math.isfinite(loss) and loss > loss_limit:
        what = (f"loss {loss:.3g} is over {BLOWUP_FACTOR:.0e} times the first batch's "
                f"({loss_limit / BLOWUP_FACTOR:.3g})")
    else:
        what = f"loss is {loss}"
    raise DivergenceError(
        f"training diverged in epoch {epoch}, step {step}: {what} at learning rate "
        f"{lr:g}; the model keeps its last finite parameters -- lower the learning rate or "
        "add decay", epoch, step, lr)
