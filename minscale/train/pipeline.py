"""Pipeline training: ``fit(..., pipeline_stages=p, micro_batches=m, schedule=...)``.

The Sequential is cut into p contiguous stages of layers (:func:`stage_bounds`), one process
per stage. Every global batch is split into m micro-batches (``shard_bounds``, the first ones
one row longer; empty ones when the batch has fewer than m rows, see below). Each stage runs
its actions in the order :func:`minscale.parallel.schedule.pipeline_schedule` gives: a
forward of micro-batch i takes its input from the previous stage (stage 0: from the data),
runs the stage's layers and sends the output on (the last stage: computes the micro-batch's
loss and its gradient); a backward restores the layers' saved activations of micro-batch i,
takes the output gradient from the next stage, runs the layers' backward and sends the input
gradient back. Each stage adds its micro-batch gradients in micro-batch order 0, 1, ...,
m - 1 (both schedules run the backwards in that order), then applies its slice of the
optimizer update. One update per global batch.

Exactness. A stage runs on its layers the float operations a single process running
:func:`minscale.train.loop.accumulate_micro_batches` runs on them, in the same order: the
same rows (taken from the batch the same way), the same layer code on the same shapes, the
loss gradient with ``n_total`` = the batch's rows, the same accumulation
``((g_0 + g_1) + g_2) + ...``, and an element-wise optimizer on its slice of the flat buffer.
Activations and gradients travel as exact copies. So the parameters equal that process's bit
for bit, and equal full-batch training up to the rounding of the re-associated sums.

Global steps. Everything that needs all layers goes through the stages' communicator: the
batch loss and the layers' regularization penalties (one allreduce per step of
``1 + n_layers`` float64, every entry written by one stage, so the sum is exact); the
parameters when pruning, validation, a checkpoint or the end of training need the whole
model (every stage broadcasts its slice, so every process then holds the current model);
the QAT activation ranges and optimizer buffers likewise at the end and at checkpoints.

Memory. Each stage process holds the model's full parameter vector (as the caller's model
does; only the stage's slice is current between those gathers), but gradients, optimizer
state and saved activations for its own layers only.

Empty micro-batches are allowed: a batch of n < m rows (the last batch of an epoch, say) has
m - n empty micro-batches, which travel through the pipeline as 0-row arrays and add exact
zeros, as they do in the single-process reference.

Data-parallel replicas (``workers=d``). d x p processes, world rank w being stage w % p of
replica w // p (``grid_groups(d, p)``); ``comm`` is then the replica's pipeline group and
``data_comm`` the stage's d replicas, both :class:`~minscale.parallel.tensor.SubgroupComm`.
Replica r takes shard ``shard_bounds(n, r, d)`` of every batch (the data-parallel rule) and
cuts it into m micro-batches; after the last backward each stage's accumulated gradient is
allreduced over its replicas, in replica order: the float operations of
``accumulate_micro_batches(..., replicas=d)``, so again equal bit for bit.

QAT. Activation observers are per layer, so each stage's observers see its layers'
micro-batches in order, as in the single-process reference; with m > 1 that is m range
updates per step where full-batch training makes one, so QAT training equals full-batch
training only for m = 1 (it always equals the micro-batch reference).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import kernels, losses
from .._checks import check_int
from ..io import TrainingProgress, data_digest, restore_checkpoint, write_checkpoint
from ..parallel.base import CommError, WorkerError, default_timeout, shard_bounds
from ..parallel.p2p import MPILinks, SharedMemoryLinks, SharedMemoryMailboxes
from ..parallel.schedule import pipeline_schedule
from ..parallel.shm import (
    SharedArray,
    SharedArraySpec,
    check_not_bootstrapping,
    pack_exception,
    run_workers,
    unpack_exception,
)
from ..parallel.tensor import SubgroupComm, grid_groups
from ..prune import prune
from .history import DivergenceError, History, divergence_limit
from .loop import diverged
from .progress import progress_bar, report_epoch

__all__ = ["stage_bounds", "fit_pipeline"]

# What Dense.forward keeps for its backward; saved per micro-batch while it is in flight.
_LAYER_CACHE = ("_x", "_a", "_W_used", "_kernel_pass", "_output_pass")


def stage_bounds(model, stages, bounds=None):
    """The layers of each pipeline stage: contiguous, balanced by parameter count.

    Parameters
    ----------
    model : Sequential, built
    stages : int, in [1, len(model.layers)]
    bounds : sequence of int, length stages + 1, optional
        Explicit cut points ``0 = b_0 < b_1 < ... < b_p = len(model.layers)``: stage s gets
        layers ``b_s .. b_{s+1} - 1``.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` layer indices of each stage.

    Raises
    ------
    ValueError
        `stages` more than the layers or below 1; `bounds` not of that form (naming
        ``stage_bounds``).

    Notes
    -----
    Without `bounds`: the split that minimizes the largest stage's parameter count (dynamic
    programming over the cut points, O(p L^2)); among equally good splits, each cut is the
    earliest that reaches the optimum (deterministic). The slowest stage sets the pipeline's
    pace, so the stages are balanced by cost as in GPipe (Huang et al. 2019); a Dense
    layer's parameter count is proportional to its multiply-adds per row (d_in * d_out).
    """
    n_layers = len(model.layers)
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
        raise ValueError(f"pipeline_stages must be an integer >= 1, got {stages!r}")
    stages = int(stages)
    if stages > n_layers:
        raise ValueError(f"pipeline_stages={stages} is more than the model's {n_layers} layers "
                         "(every stage needs at least one layer)")
    if bounds is not None:
        if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__"):
            raise ValueError(f"stage_bounds must be a sequence of layer indices, got {bounds!r}")
        cuts = [check_int(f"stage_bounds[{i}]", b) for i, b in enumerate(bounds)]
        if (len(cuts) != stages + 1 or cuts[0] != 0 or cuts[-1] != n_layers
                or any(b <= a for a, b in zip(cuts, cuts[1:]))):
            raise ValueError(f"stage_bounds must be {stages + 1} increasing layer indices from 0 "
                             f"to {n_layers} (pipeline_stages={stages}), got {list(bounds)!r}")
        return list(zip(cuts, cuts[1:]))
    counts = [stop - start for start, stop in model.layer_slices()]
    prefix = np.concatenate([[0], np.cumsum(counts)]).tolist()
    inf = math.inf
    # best[k][j]: the smallest possible largest stage over the first j layers in k stages
    best = [[inf] * (n_layers + 1) for _ in range(stages + 1)]
    cut = [[0] * (n_layers + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for k in range(1, stages + 1):
        for j in range(k, n_layers + 1):
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    cuts, j = [n_layers], n_layers
    for k in range(stages, 0, -1):
        j = cut[k][j]
        cuts.append(j)
    cuts.reverse()
    return list(zip(cuts, cuts[1:]))


# --- one stage ------------------------------------------------------------------------------

class _Stage:
    """A stage's view of the model: its layers, its slice of the flat buffers, its messages."""

    def __init__(self, model, bounds, comm, links):
        self.model, self.comm, self.links = model, comm, links
        self.bounds = bounds
        self.rank, self.size = comm.rank, comm.size
        self.first, self.stop = bounds[self.rank]
        self.layers = model.layers[self.first:self.stop]
        slices = model.layer_slices()
        # every stage's parameter slice, for the gathers
        self.param_slices = [(slices[a][0], slices[b - 1][1]) for a, b in bounds]
        self.lo, self.hi = self.param_slices[self.rank]
        self.last = self.rank == self.size - 1
        widths = [model.input_dim] + [layer.units for layer in model.layers]
        self.width_in, self.width_out = widths[self.first], widths[self.stop]

    def gather(self, full):
        """Every stage broadcasts its slice of `full` (shape (P,)); all then hold all of it."""
        for root, (lo, hi) in enumerate(self.param_slices):
            self.comm.broadcast(full[lo:hi], root=root)

    def gather_params(self):
        self.gather(self.model.params)

    def gather_observers(self):
        """Every layer's QAT activation range (per-tensor min, max), from its stage to all."""
        model = self.model
        buf = np.full(2 * len(model.layers), np.nan)
        for k in range(self.first, self.stop):
            observer = getattr(model.layers[k].output_quantizer, "observer", None)
            if observer is not None and observer.min_val is not None:
                buf[2 * k:2 * k + 2] = observer.min_val, observer.max_val
        if not any(getattr(layer.output_quantizer, "observer", None) is not None
                   for layer in model.layers):
            return
        for root, (a, b) in enumerate(self.bounds):
            self.comm.broadcast(buf[2 * a:2 * b], root=root)
        for k, layer in enumerate(model.layers):
            observer = getattr(layer.output_quantizer, "observer", None)
            if observer is not None and not np.isnan(buf[2 * k]):
                observer.min_val, observer.max_val = float(buf[2 * k]), float(buf[2 * k + 1])

    def full_optimizer_state(self):
        """The optimizer's buffers as full (P,) arrays, gathered from every stage."""
        optimizer = self.model.optimizer
        full = {}
        for name, buf in sorted(optimizer.state_arrays().items()):
            arr = np.zeros(self.model.params.size, dtype=self.model.dtype)
            arr[self.lo:self.hi] = buf
            self.gather(arr)
            full[name] = arr
        return full

    def set_full_optimizer(self, full):
        self.model.optimizer.set_state(self.model.optimizer.iterations, full)

    def slice_optimizer(self):
        optimizer = self.model.optimizer
        arrays = optimizer.state_arrays()
        if arrays:
            optimizer.set_state(optimizer.iterations, {
                name: buf[self.lo:self.hi] if buf.shape == self.model.params.shape else buf
                for name, buf in arrays.items()})

    def forward(self, x, training=True):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def stash(self):
        return [tuple(getattr(layer, name) for name in _LAYER_CACHE) for layer in self.layers]

    def unstash(self, saved):
        for layer, values in zip(self.layers, saved):
            for name, value in zip(_LAYER_CACHE, values):
                setattr(layer, name, value)

    def backward(self, dy):
        for k in range(self.stop - 1, self.first - 1, -1):
            dy = self.model.layers[k].backward(dy, need_dx=k > 0)
        return dy


def _stash_bytes(saved):
    # activations only (inputs, outputs, QAT pass masks; not the weights used), and each
    # array once: a layer's output is the next layer's input
    arrays = {id(a): a.nbytes for layer in saved for a in (layer[0], layer[1], layer[4])
              if isinstance(a, np.ndarray)}
    return sum(arrays.values())


def _run_batch(stage, schedule, Xb, yb, n_rows, n_total, micro_batches, tag, stats=None):
    """One batch (this replica's shard of it: `n_rows` of the global batch's `n_total` rows)
    through this stage: returns the data loss (last stage; 0.0 elsewhere).

    Writes the stage's accumulated gradient into its slice of ``model.grads``; with `stats`,
    raises ``stats["peak_stash_bytes"]`` to the most bytes of saved activations held at once.
    """
    model, links, rank = stage.model, stage.links, stage.rank
    dtype = model.dtype
    grads = model.grads[stage.lo:stage.hi]
    rows = [shard_bounds(n_rows, i, micro_batches) for i in range(micro_batches)]
    saved, outputs = {}, {}
    acc = None
    loss = 0.0
    for action, i in schedule:
        lo, hi = rows[i]
        if action == "forward":
            if rank == 0:
                x = Xb[lo:hi]
            else:
                x = links.recv(np.empty((hi - lo, stage.width_in), dtype=dtype), rank - 1, i, tag)
            out = stage.forward(x)
            saved[i] = stage.stash()
            if stats is not None:
                held = sum(_stash_bytes(v) for v in saved.values())
                stats["peak_stash_bytes"] = max(stats.get("peak_stash_bytes", 0), held)
            if stage.last:
                yi = yb[lo:hi]
                loss += losses.mse(yi, out, model.reduction, n_total)
                outputs[i] = losses.mse_grad(yi, out, model.reduction, n_total)
            else:
                links.send(out, rank + 1, i, tag)
        else:
            stage.unstash(saved.pop(i))
            if stage.last:
                dy = outputs.pop(i)
            else:
                dy = links.recv(np.empty((hi - lo, stage.width_out), dtype=dtype), rank + 1, i,
                                tag)
            dx = stage.backward(dy)
            # the backwards come in micro-batch order (checked in run_stage): the order in
            # which accumulate_micro_batches adds the gradients
            if acc is None:
                acc = grads.copy()
            else:
                acc += grads
            if rank > 0:
                links.send(dx, rank - 1, i, tag)
    links.flush()
    np.copyto(grads, acc)
    return loss


def run_stage(model, X, y, *, comm, links, bounds, micro_batches, schedule, epochs, batch_size,
              shuffle, seed, verbose, pruning, pruning_method, validation_data=None,
              checkpoint=None, checkpoint_every=None, resume=None, stats=None, run_seed=None,
              data_comm=None):
    """Train pipeline stage ``comm.rank`` of ``comm.size``; the pipeline's training loop.

    Parameters
    ----------
    model : Sequential, built and compiled, the same on every stage
        On return (and on a DivergenceError) every stage's `model` holds the whole trained
        model: parameters, mask, optimizer state (full buffers) and QAT ranges.
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype, the same on every stage
        Stage 0 reads X, the last stage y.
    comm : Communicator
        One rank per stage, rank = stage (a replica's group of the grid: ``SubgroupComm``).
    links : SharedMemoryLinks or MPILinks
        The point-to-point messages between neighbouring stages.
    bounds : list of (int, int)
        :func:`stage_bounds`.
    micro_batches : int, >= 1
    schedule : {"gpipe", "1f1b"}
    epochs, batch_size, shuffle, seed, verbose, pruning, pruning_method, validation_data,
    checkpoint, checkpoint_every, resume
        As in :func:`minscale.train.fit`; rank 0 prints and writes checkpoints.
    run_seed : int or None
        The caller's `seed`, recorded in and checked against checkpoints when `seed` is one
        derived from it (every stage must shuffle alike, so a None seed is drawn once).
    data_comm : Communicator, optional
        The d data-parallel replicas of this stage (``SubgroupComm`` of the grid; rank =
        replica): this replica trains on shard ``shard_bounds(n, replica, d)`` of every batch
        and the stage's accumulated gradient is allreduced over them before the update.
    stats : dict, optional
        Filled for benchmarks: ``step_seconds`` (list, wall time of each update on this
        stage, its messages and the loss allreduce included) and ``peak_stash_bytes``.

    Returns
    -------
    History
        The same on every stage.

    Raises
    ------
    DivergenceError
        On every stage at the same step, after the final gather (the model keeps the last
        finite parameters).
    """
    stage = _Stage(model, bounds, comm, links)
    actions = pipeline_schedule(comm.size, micro_batches, schedule)[comm.rank]
    if [i for action, i in actions if action == "backward"] != list(range(micro_batches)):
        raise RuntimeError(f"schedule {schedule!r} runs the backwards of stage {comm.rank} out "
                           "of micro-batch order; the gradients would not add up as the "
                           "single-process reference adds them")
    rank = comm.rank
    replica = 0 if data_comm is None else data_comm.rank
    replicas = 1 if data_comm is None else data_comm.size
    leader = rank == 0 and replica == 0  # prints and writes checkpoints
    rng = np.random.default_rng(seed)
    if run_seed is None:
        run_seed = seed
    n = X.shape[0]
    n_batches = math.ceil(n / batch_size)
    optimizer = model.optimizer
    history = History()
    start_epoch, start_batch, order, loss_total = 0, 0, None, 0.0
    if checkpoint is not None or resume is not None:
        data_sha = data_digest(X, y)
    if resume is not None:
        progress = restore_checkpoint(model, resume, X, y, batch_size, shuffle, run_seed,
                                      epochs)
        rng.bit_generator.state = progress.rng_state
        history = progress.history
        start_epoch, start_batch = progress.epoch, progress.batch
        order, loss_total = progress.order, progress.loss_total
    stage.slice_optimizer()
    lo_p, hi_p = stage.lo, stage.hi
    params = model.params[lo_p:hi_p]
    grads = model.grads[lo_p:hi_p]
    prunable = model.prunable[lo_p:hi_p]
    regularized = model.regularized
    n_layers = len(model.layers)
    backup = params.copy()
    lossbuf = np.zeros(1 + n_layers)
    scalar = np.zeros(1, dtype=model.dtype)
    bar = progress_bar(verbose and leader, epochs * n_batches)
    lr = optimizer.current_learning_rate()
    loss_limit = None
    tag = 0

    def gather_all():
        stage.gather_params()
        stage.gather_observers()

    def save_checkpoint(epoch, batch, order, loss_total):
        if checkpoint is None:
            return
        gather_all()
        full = stage.full_optimizer_state()
        if leader:
            stage.set_full_optimizer(full)
            write_checkpoint(checkpoint, model, TrainingProgress(
                epoch=epoch, batch=batch, loss_total=loss_total, order=order,
                rng_state=rng.bit_generator.state, history=history, seed=run_seed,
                batch_size=batch_size, shuffle=bool(shuffle), n_samples=n,
                data_sha256=data_sha))
            stage.slice_optimizer()
        comm.barrier()  # no stage races ahead of a checkpoint that may fail

    def stage_diverged(epoch, step, batch_loss, limit=math.inf):
        diverged(SimpleNamespace(params=params), backup, epoch, step, lr, batch_loss, limit)

    stack = contextlib.ExitStack()
    stack.enter_context(np.errstate(over="ignore", invalid="ignore"))
    error = None
    try:
        for epoch in range(start_epoch, epochs):
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                order = rng.permutation(n) if shuffle else None
                loss_total = 0.0
            for b in range(first, n_batches):
                lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
                # this replica's shard of the batch, as in data-parallel training (loop.run)
                s_lo, s_hi = shard_bounds(hi - lo, replica, replicas)
                rows = slice(lo + s_lo, lo + s_hi)
                if order is None:
                    Xb, yb = X[rows], y[rows]
                else:
                    idx = order[rows]
                    Xb = X[idx] if rank == 0 else None
                    yb = y[idx] if stage.last else None
                step = optimizer.iterations
                if pruning is not None and pruning.should_prune(step):
                    _prune_stage(stage, pruning, pruning_method, step)
                tag += 1
                started = time.perf_counter()
                data_loss = _run_batch(stage, actions, Xb, yb, s_hi - s_lo, hi - lo,
                                       micro_batches, tag, stats)
                if data_comm is not None:
                    # G = ((G_0 + G_1) + ...) in replica order (accumulate_micro_batches)
                    data_comm.allreduce(grads)
                lossbuf[:] = 0.0
                if stage.last:
                    lossbuf[0] = data_loss
                if regularized:
                    # every replica adds the penalty's gradient (after the allreduce, as
                    # loop.run); the penalty is counted once, from replica 0
                    for k in range(stage.first, stage.stop):
                        penalty = model.layers[k].regularize()
                        lossbuf[1 + k] = penalty if replica == 0 else 0.0
                comm.allreduce(lossbuf)
                if data_comm is not None:
                    data_comm.allreduce(lossbuf)
                scalar[0] = lossbuf[0]
                if regularized:
                    # as Sequential.regularize: the layers' penalties added in layer order
                    scalar[0] += float(sum(float(v) for v in lossbuf[1:]))
                batch_loss = float(scalar[0])
                if loss_limit is None:
                    loss_limit = divergence_limit(batch_loss)
                if not math.isfinite(batch_loss) or batch_loss > loss_limit:
                    stage_diverged(epoch, step, batch_loss, loss_limit)
                np.copyto(backup, params)
                mask = None if model.mask.all() else model.mask[lo_p:hi_p]
                lr = optimizer.apply(params, grads, mask, weights=prunable)
                history.history["lr"].append(lr)
                if stats is not None:
                    stats.setdefault("step_seconds", []).append(time.perf_counter() - started)
                loss_total += batch_loss * (hi - lo) if model.reduction == "mean" else batch_loss
                if checkpoint_every is not None and optimizer.iterations % checkpoint_every == 0:
                    save_checkpoint(epoch, b + 1, order, loss_total)
                if bar is not None:
                    bar.update(1)
            finite = np.array([0.0 if np.isfinite(params).all() else 1.0])
            comm.allreduce(finite)
            if finite[0]:
                stage_diverged(epoch, optimizer.iterations, float("nan"))
            logs = {"loss": loss_total / n if model.reduction == "mean" else loss_total}
            if validation_data is not None:
                gather_all()
                val = model.evaluate(*validation_data, return_dict=True)
                logs.update({f"val_{k}": v for k, v in val.items()})
            if pruning is not None:
                logs["sparsity"] = model.sparsity()["total"]
            history.epoch.append(epoch)
            for key, value in logs.items():
                history.history.setdefault(key, []).append(value)
            if verbose and leader:
                report_epoch(bar, epoch, epochs, logs, verbose)
            if checkpoint_every is None:
                save_checkpoint(epoch + 1, 0, None, 0.0)
        if checkpoint_every is not None:
            save_checkpoint(epochs, 0, None, 0.0)
    except DivergenceError as exc:
        error = exc
    finally:
        stack.close()
        if bar is not None:
            bar.close()
    # the whole model on every stage: parameters, QAT ranges, optimizer buffers
    gather_all()
    stage.set_full_optimizer(stage.full_optimizer_state())
    if error is not None:
        raise error
    return history


def _prune_stage(stage, pruning, method, step):
    """The pruning callback's update on the whole model, every stage computing the same."""
    model = stage.model
    stage.gather_params()
    optimizer, model.optimizer = model.optimizer, None  # its buffers are this stage's slices
    try:
        prune(model, float(pruning.sparsity(step)), method=method)
    finally:
        model.optimizer = optimizer
    pruned = ~model.mask[stage.lo:stage.hi]
    for buf in optimizer.state_arrays().values():
        if isinstance(buf, np.ndarray) and buf.shape == pruned.shape:
            np.copyto(buf, 0, where=pruned)


# --- one machine: a process per stage over shared memory ------------------------------------

@dataclass(frozen=True)
class _Job:
    model: Any
    backend: str
    X: SharedArraySpec
    y: SharedArraySpec
    mailboxes: dict
    parent_pid: int
    bounds: list
    options: dict
    replicas: int = 1


def _stage_worker(comm, job):
    """Worker body: attach data and mailboxes, train the stage, report (rank 0: everything)."""
    kernels.set_backend(job.backend)
    attached = [SharedArray.attach(job.X), SharedArray.attach(job.y)]
    stages = len(job.bounds)
    # the whole grid's comm bounds the mailbox waits (its abort flag, timeout)
    links = SharedMemoryLinks(job.mailboxes[comm.rank // stages], comm, job.parent_pid,
                              rank=comm.rank % stages)
    model = job.model
    try:
        model.relink()
        pipe, data = _replica_groups(comm, stages)
        error = history = None
        try:
            history = run_stage(model, attached[0].array, attached[1].array, comm=pipe,
                                links=links, bounds=job.bounds, data_comm=data, **job.options)
        except DivergenceError as exc:
            error = pack_exception(exc)
        report = {"rank": comm.rank, "history": history, "error": error}
        if comm.rank == 0:
            report.update(params=model.params.copy(), mask=model.mask.copy(),
                          optimizer=model.optimizer, state=model.state,
                          quantizers=[(layer.kernel_quantizer, layer.output_quantizer)
                                      for layer in model.layers])
        return report
    finally:
        model = None
        links.close()
        for shared in attached:
            shared.close()


def _replica_groups(world, stages):
    """The pipeline and data-parallel groups of a grid of d replicas x p stages.

    World rank ``w`` is stage ``w % p`` of replica ``w // p`` (:func:`grid_groups` with k = p:
    a replica's stages are neighbouring ranks).

    Parameters
    ----------
    world : Communicator
        Of size d * p.
    stages : int, >= 1
        p.

    Returns
    -------
    pipe : Communicator
        This process's replica: rank = stage (`world` itself when d = 1).
    data : SubgroupComm or None
        The d processes running this stage: rank = replica (None when d = 1).

    Raises
    ------
    ValueError
        The world's size not a multiple of `stages`.
    """
    if world.size % stages:
        raise ValueError(f"a pipeline of {stages} stages needs a multiple of {stages} ranks "
                         f"(d replicas x {stages} stages), got {world.size}")
    replicas = world.size // stages
    if replicas == 1:
        return world, None
    pipe_groups, data_groups = grid_groups(replicas, stages)
    return SubgroupComm(world, pipe_groups), SubgroupComm(world, data_groups)


def _shared_copy(arr):
    shared = SharedArray.create(arr.shape, dtype=arr.dtype)
    shared.array[...] = arr
    return shared


def fit_pipeline(model, X, y, *, stages, micro_batches, schedule="gpipe", bounds=None,
                 replicas=1, epochs=1, batch_size=32, shuffle=True, seed=None, validation_data=None,
                 verbose=0, pruning=None, pruning_method="magnitude", checkpoint=None,
                 checkpoint_every=None, resume=None, comm=None, timeout=None, blas_threads=1):
    """Pipeline-parallel training; the core of ``fit(..., pipeline_stages=p)``.

    Parameters
    ----------
    model : Sequential, built and compiled
        Trained in place: on return it holds the trained parameters, mask, optimizer state,
        ``model.state`` and QAT ranges of the whole model.
    X, y : ndarray, validated (as :func:`minscale.train.fit` passes them)
    stages : int, in [2, len(model.layers)]
        Processes per replica, one per stage.
    replicas : int, >= 1, default 1
        d, data-parallel replicas of the pipeline (``fit(..., workers=d)``): d x p processes
        on this machine; replica r takes shard ``shard_bounds(n, r, d)`` of every global batch
        and each stage's gradients are allreduced over its d replicas (`grid_groups`).
        With `comm`, d = ``comm.size / stages`` instead (give 1).
    micro_batches : int, >= 1
    schedule : {"gpipe", "1f1b"}
    bounds : sequence of int, optional
        Explicit stage cut points (:func:`stage_bounds`).
    epochs, batch_size, shuffle, seed, validation_data, verbose, pruning, pruning_method,
    checkpoint, checkpoint_every, resume
        As in :func:`minscale.train.fit`.
    comm : MPIComm, optional
        Run as rank ``comm.rank`` of an ``mpiexec`` job of d x p ranks, rank w being stage
        ``w % p`` of replica ``w // p`` (every rank calls fit alike); without it, `replicas`
        x `stages` processes are started on this machine.
    timeout : float, optional
        Seconds a stage waits for a message or collective (default
        :func:`minscale.parallel.base.default_timeout`).
    blas_threads : int, default 1
        BLAS threads per stage process.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        A `comm` whose size is not a multiple of `stages`, or `replicas` > 1 with `comm`.
    WorkerError
        A stage process raised or died: every stage is stopped (within the group's grace
        period, about 5 s; a stage that stopped responding after `timeout`), the shared
        memory is unlinked, and the message names the stage, its layers and (d > 1) the
        replica.
    DivergenceError
        As in fit; the model keeps the last finite parameters.
    """
    replicas = check_int("replicas", replicas, 1)
    if comm is not None:
        if replicas != 1:
            raise ValueError("with comm= the replicas are comm.size / stages; give replicas=1")
        pipe, data = _replica_groups(comm, stages)
        links = MPILinks(comm, [comm.rank - comm.rank % stages + s for s in range(stages)])
        # one start on every rank: rank 0's parameters and shuffling seed (as loop.run)
        seed_buf = np.array([np.random.SeedSequence(seed).entropy % 2**52 if comm.rank == 0
                             else 0], dtype=np.float64)
        comm.broadcast(model.params, root=0)
        comm.broadcast(seed_buf, root=0)
        try:
            return run_stage(model, X, y, comm=pipe, links=links, bounds=bounds, data_comm=data,
                             micro_batches=micro_batches, schedule=schedule, epochs=epochs,
                             batch_size=batch_size, shuffle=shuffle,
                             seed=seed if seed is not None else int(seed_buf[0]),
                             run_seed=seed,
                             verbose=verbose, pruning=pruning, pruning_method=pruning_method,
                             validation_data=validation_data, checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every, resume=resume)
        except Exception as exc:
            if not isinstance(exc, DivergenceError) and hasattr(exc, "add_note"):
                exc.add_note(f"(raised in {_where(comm.rank, bounds, comm.size // stages)}, "
                             f"MPI rank {comm.rank})")
            raise
    check_not_bootstrapping()
    timeout = default_timeout() if timeout is None else timeout
    # every stage must shuffle alike: a None seed is drawn once, here
    options = dict(micro_batches=micro_batches, schedule=schedule, epochs=epochs,
                   batch_size=batch_size, shuffle=shuffle,
                   seed=seed if seed is not None else int(np.random.SeedSequence().entropy
                                                          % 2**52),
                   run_seed=seed,
                   verbose=verbose,
                   pruning=pruning, pruning_method=pruning_method,
                   validation_data=validation_data, checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every, resume=resume)
    itemsize = model.dtype.itemsize
    widths = [model.input_dim] + [layer.units for layer in model.layers]
    rows = -(-batch_size // micro_batches)
    capacities = [rows * widths[b] * itemsize for _, b in bounds[:-1]]
    slices = model.layer_slices()
    largest = max(slices[b - 1][1] - slices[a][0] for a, b in bounds)
    if replicas == 1:
        nbytes = max(largest, 2 * len(model.layers) + 1) * 8
    else:
        # a sub-group collective carries every group's segment (SubgroupComm): d replicas'
        # gathers or loss buffers, the p stages' gradients (the whole model) or loss
        # buffers, the lengths
        n_layers = len(model.layers)
        nbytes = max(replicas * largest, model.params.size, replicas * (2 * n_layers + 1),
                     stages * (1 + n_layers), replicas * stages) * 8
    owned = []
    try:
        X_shared, y_shared = _shared_copy(X), _shared_copy(y)
        owned += [X_shared, y_shared]
        with contextlib.ExitStack() as boxes:
            mailboxes = [boxes.enter_context(SharedMemoryMailboxes(capacities, micro_batches))
                         for _ in range(replicas)]
            job = _Job(model=model, backend=kernels.get_backend(), X=X_shared.spec,
                       y=y_shared.spec, mailboxes=[m.specs for m in mailboxes],
                       parent_pid=os.getpid(), bounds=bounds, options=options,
                       replicas=replicas)
            try:
                reports = run_workers(_stage_worker, replicas * stages, args=(job,),
                                      nbytes=nbytes, timeout=timeout, blas_threads=blas_threads)
            except WorkerError as err:
                stage_text = f"{_where(err.rank, bounds, replicas)} failed"
                original = err.exception
                if original is not None and not isinstance(original, CommError):
                    if hasattr(original, "add_note"):
                        original.add_note(f"(raised in {stage_text.replace(' failed', '')}; "
                                          "its traceback is the cause above)")
                    raise original from err
                raise WorkerError(f"{stage_text}: {err}", rank=err.rank, exitcode=err.exitcode,
                                  remote_traceback=err.remote_traceback,
                                  exception=err.exception) from err
    finally:
        for shared in owned:
            shared.close()
            shared.unlink()
    report = reports[0]
    _install(model, report)
    if report["error"] is not None:
        error = unpack_exception(report["error"])
        raise error if error is not None else DivergenceError(
            "training diverged in a pipeline stage", None, None, None)
    return report["history"]


def _where(rank, bounds, replicas):
    """'pipeline stage s of p (layers a..b)', and the replica when there are several."""
    stages = len(bounds)
    stage = rank % stages
    a, b = bounds[stage]
    text = f"pipeline stage {stage} of {stages} (layers {a}..{b - 1})"
    if replicas > 1:
        text += f" of replica {rank // stages} of {replicas}"
    return text


def _install(model, report):
    """Copy stage 0's gathered final state into the caller's model, keeping its objects."""
    model.params[...] = report["params"]
    model.mask[...] = report["mask"]
    if model.optimizer is not None and report["optimizer"] is not None:
        state = vars(report["optimizer"])
        vars(model.optimizer).clear()
        vars(model.optimizer).update(state)
    model.state.clear()
    model.state.update(report["state"])
    for layer, (kernel_q, output_q) in zip(model.layers, report["quantizers"]):
        layer.kernel_quantizer, layer.output_quantizer = kernel_q, output_q
