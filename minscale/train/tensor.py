"""Tensor-parallel training: ``fit(..., tensor_parallel=k)`` on one machine or over MPI.

Every rank holds its :class:`minscale.parallel.tensor.TensorShard` of the model (column- and
row-split Dense pairs, an odd last layer replicated) and runs the core training loop,
:func:`minscale.train.loop.run`, on it with the **whole** global batch: the collectives sit
inside the split layers (one allreduce forward and one backward per pair), the loss and the
model output are the same on every rank, and each rank's optimizer updates its own shard.
There is no second training loop. At the end the shards are gathered (exactly: see
:func:`minscale.parallel.tensor.gather`) into the caller's model.

On one machine the k ranks are worker processes joined by a
:class:`~minscale.parallel.SharedMemoryComm` (:func:`minscale.parallel.run_workers`); with
``comm=MPIComm()`` under ``mpiexec -n k`` every MPI rank runs it in place. The split layers
sum their partials with ``allreduce_in_rank_order`` (over MPI an allgather, then the sum in
rank order), so both backends give the same bits on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import kernels
from ..data import COUNT_MAX, check_int
from ..parallel.base import CommError, WorkerError, check_timeout, default_timeout
from ..parallel.observers import synchronized_observers
from ..parallel.shm import (
    SharedArray,
    SharedArraySpec,
    check_not_bootstrapping,
    pack_exception,
    run_workers,
    unpack_exception,
)
from ..parallel.tensor import (
    SubgroupComm,
    check_tensor_parallel,
    gather,
    grid_groups,
    scatter,
    shard_model,
    tensor_roles,
)
from ..prune import prune
from ..prune.model import BACKUP_KEY
from .callbacks import Callback
from .history import DivergenceError
from .loop import run

__all__ = ["fit_tensor_parallel", "check_fit_arguments"]

#: Fewest entries per allreduce when shards are gathered through shared memory.
_MIN_CHUNK = 1 << 16


@dataclass(frozen=True)
class _Job:
    """What a shared-memory worker needs, pickled once per worker at process start."""

    model: Any
    backend: str
    X: SharedArraySpec
    y: SharedArraySpec
    options: dict
    chunk: int
    tensor_parallel: int


class _ShardPruning(Callback):
    """Gradual pruning of a tensor-parallel model: the schedule's rule on the WHOLE model.

    A mask rule ranks weights over a whole tensor (or all tensors), so it cannot run on one
    shard: when the schedule says so, every rank gathers parameters and mask into a full copy,
    prunes it exactly as one process would, and takes its shard back. The epoch's sparsity is
    the whole model's.
    """

    def __init__(self, schedule, method, full, chunk):
        self.schedule, self.method, self.full, self.chunk = schedule, method, full, chunk
        self.sparsity = []

    def on_step_begin(self, model, step):
        if not self.schedule.should_prune(step):
            return
        gather(model.params, model, out=self.full.params, chunk=self.chunk)
        gather(model.mask, model, out=self.full.mask, chunk=self.chunk)
        prune(self.full, float(self.schedule.sparsity(step)), method=self.method)
        scatter(self.full.params, model.params, model)
        scatter(self.full.mask, model.mask, model)
        for buf in model.optimizer.state_arrays().values():
            np.copyto(buf, 0, where=~model.mask)

    def on_epoch_end(self, model, epoch, logs):
        logs["sparsity"] = model.global_sparsity()
        self.sparsity.append(logs["sparsity"])

    def on_train_end(self, model, history):
        history.history["sparsity"] = list(self.sparsity)


def check_fit_arguments(tensor_parallel, *, mode="sync", checkpoint=None, resume=None,
                        pipeline_stages=1, micro_batches=1):
    """Refuse what tensor-parallel training does not combine with, naming the arguments.

    Parameters
    ----------
    tensor_parallel : int, >= 1
    mode, checkpoint, resume, pipeline_stages, micro_batches
        As given to :func:`minscale.train.fit`.

    Returns
    -------
    int
        `tensor_parallel`.

    Raises
    ------
    ValueError
        `tensor_parallel` not an integer >= 1; with k > 1: ``mode="async"``,
        ``pipeline_stages > 1``, ``micro_batches > 1``, `checkpoint` or `resume`. (``workers = d``
        combines: d replicas of k ranks, see :func:`fit_tensor_parallel`.)
    """
    k = check_int("tensor_parallel", tensor_parallel, 1, COUNT_MAX)
    if k == 1:
        return k
    refused = [(mode == "async", "mode='async'", "tensor-parallel ranks must run in lock-step "
                "(every forward pass needs all of them)"),
               (pipeline_stages != 1, f"pipeline_stages={pipeline_stages}", "tensor and "
                "pipeline parallelism do not combine; give one of them"),
               (micro_batches != 1, f"micro_batches={micro_batches}", "micro-batches belong to "
                "pipeline training"),
               (checkpoint is not None or resume is not None, "checkpoint/resume",
                "checkpoints of a sharded model are not implemented")]
    for bad, what, why in refused:
        if bad:
            raise ValueError(f"tensor_parallel={k} does not work with {what}: {why}")
    return k


def _finite_everywhere(apply, shard):
    """`apply` (an optimizer's), then one scalar allreduce: if an update left any rank's shard
    non-finite, every rank's shard becomes non-finite.

    The loop checks the parameters for NaN/inf at the end of every epoch; on a shard that check
    is local, and a rank stopping there alone would leave its peers waiting in their next
    collective. With this, every rank raises the same DivergenceError at the same point.
    """
    def wrapped(params, grads, mask=None, weights=None):
        lr = apply(params, grads, mask, weights=weights)
        finite = bool(np.isfinite(params).all())
        flag = np.array([0.0 if finite else 1.0])
        shard.comm.allreduce(flag)
        if flag[0] and finite:
            params[0] = np.nan  # the loop restores the last finite parameters on every rank
        return lr

    return wrapped


def _shared_seed(comm, seed):
    """The caller's seed, or one drawn on rank 0 and broadcast: every rank shuffles alike."""
    if seed is not None:
        return seed
    buf = np.array([np.random.SeedSequence().entropy % 2**52 if comm.rank == 0 else 0],
                   dtype=np.float64)
    comm.broadcast(buf, root=0)
    return int(buf[0])


def train_rank(comm, model, X, y, options, chunk=None, broadcast_start=True, data_comm=None,
               world=None):
    """One rank of tensor-parallel training: shard, run the loop, gather (collective).

    Parameters
    ----------
    comm : Communicator
        The tensor-parallel group, k = ``comm.size``.
    data_comm : Communicator, optional
        The data-parallel group of this rank's shard (the same shard of every replica): the
        loop splits each global batch over it and allreduces the shard's gradients over it.
    world : Communicator, optional
        The group of all ranks (for the start-up broadcasts); `comm` when None.
    model : Sequential, built and compiled
        The whole model (not changed here).
    X, y : ndarray
        The whole training data (every rank sees every row).
    options : dict
        The loop's options (see :func:`minscale.train.fit`).
    chunk : int, optional
        Entries per allreduce of the final gather (shared memory's capacity).
    broadcast_start : bool
        Broadcast rank 0's parameters and mask first (MPI, where every rank built its own).

    Returns
    -------
    dict
        ``params``, ``mask``, ``iterations``, ``arrays`` (optimizer state, whole model),
        ``history``, ``backup`` (the pruning backup or None), ``error`` (the DivergenceError
        or None) and ``output_quantizers`` (the layers' QAT output hooks, with their observers).
    """
    world = comm if world is None else world
    if broadcast_start and world.size > 1:
        world.broadcast(model.params, root=0)
        mask = model.mask.astype(np.float64)
        world.broadcast(mask, root=0)
        model.mask[...] = mask != 0
    shard = shard_model(model, comm)
    shard.optimizer.apply = _finite_everywhere(shard.optimizer.apply, shard)
    options = dict(options)
    options["seed"] = _shared_seed(world, options["seed"])
    if comm.rank != 0:
        options["verbose"] = 0
    pruning, method = options.pop("pruning"), options.pop("pruning_method")
    callbacks = list(options.pop("callbacks"))
    pruner = None
    if pruning is not None:
        full = model.copy()
        full.optimizer = None  # the shards' optimizers hold the state
        pruner = _ShardPruning(pruning, method, full, chunk)
        callbacks.insert(0, pruner)
    error = history = None
    try:
        # QAT activation observers fold in the range over every rank: a column-split layer's
        # units are spread over the tensor group and the batch over the data group (the
        # loop's own data-group wrapping then finds them wrapped already)
        with synchronized_observers(shard, world):
            history = run(shard, X, y, pruning=None, pruning_method=method,
                          callbacks=callbacks, comm=data_comm, **options)
    except DivergenceError as exc:
        # every rank sees the same (replicated) loss, so all stop at the same step
        error = exc
    opt = shard.optimizer
    report = {
        "params": gather(shard.params, shard, chunk=chunk),
        "mask": gather(shard.mask, shard, chunk=chunk),
        "iterations": opt.iterations,
        "arrays": {name: gather(buf, shard, chunk=chunk)
                   for name, buf in sorted(opt.state_arrays().items())},
        "history": history,
        "backup": None if pruner is None else pruner.full.state.get(BACKUP_KEY),
        "error": error,
        "output_quantizers": [layer.output_quantizer for layer in shard.layers],
    }
    return report


def install(model, report):
    """Copy a gathered result into the caller's model (parameters, mask, optimizer state)."""
    model.params[...] = report["params"]
    model.mask[...] = report["mask"]
    if model.optimizer is not None:
        model.optimizer.set_state(report["iterations"], report["arrays"])
    if report["backup"] is not None:
        model.state[BACKUP_KEY] = report["backup"]
    for layer, quantizer in zip(model.layers, report["output_quantizers"]):
        layer.output_quantizer = quantizer  # QAT observers: the same on every rank


def _worker(comm, job):
    """Shared-memory worker body: attach the data, train this rank, report."""
    kernels.set_backend(job.backend)
    attached = [SharedArray.attach(job.X), SharedArray.attach(job.y)]
    try:
        model = job.model.relink()
        tensor, data = _grid(comm, job.tensor_parallel)
        report = train_rank(tensor, model, attached[0].array, attached[1].array, job.options,
                            chunk=job.chunk, broadcast_start=False, data_comm=data, world=comm)
        if report["error"] is not None:
            report["error"] = pack_exception(report["error"])
        # the whole model is gathered on every rank; the parent needs it once
        return report if comm.rank == 0 else None
    finally:
        model = None
        for shared in attached:
            shared.close()


def _grid(world, k):
    """The tensor and data groups of `world` for k ranks per replica (no data group if d = 1)."""
    d = world.size // k
    if d == 1:
        return world, None
    tensor_groups, data_groups = grid_groups(d, k)
    return SubgroupComm(world, tensor_groups), SubgroupComm(world, data_groups)


def _activation_bytes(model, rows):
    """Largest activation allreduce, in float64 bytes: the row layers' outputs and the
    column layers' input gradients of a batch of `rows` rows."""
    widths, d = [1], model.input_dim
    for i, (layer, role) in enumerate(zip(model.layers, tensor_roles(len(model.layers)))):
        if role == "row":
            widths.append(layer.units)
        elif role == "column" and i > 0:
            widths.append(d)
        d = layer.units
    return rows * max(widths) * 8


def fit_tensor_parallel(model, X, y, *, tensor_parallel, workers=1, comm=None, epochs=1,
                        batch_size=32,
                        shuffle=True, seed=None, validation_data=None, verbose=0,
                        callbacks=None, pruning=None, pruning_method="magnitude", timeout=None,
                        blas_threads=1, start_method="spawn"):
    """Train `model` tensor-parallel over k ranks; the core of ``fit(..., tensor_parallel=k)``.

    Parameters
    ----------
    model : Sequential, built and compiled
        Trained in place: on return its parameters, mask and optimizer state are the gathered
        shards (see :func:`minscale.parallel.tensor.gather`).
    X : ndarray, shape (n, d_in), the model's dtype
    y : ndarray, shape (n, d_out), the model's dtype
    tensor_parallel : int, >= 1
        k, the ranks the model is split over (see :mod:`minscale.parallel.tensor`).
    workers : int, >= 1, default 1
        d, data-parallel replicas of the k ranks: d x k processes on this machine; replica i's
        ranks take shard i of every global batch (`shard_bounds`) and the gradients of each
        tensor shard are allreduced over the d replicas (`grid_groups`, `SubgroupComm`).
    comm : Communicator, optional
        Train as one rank of this group (``MPIComm()`` under ``mpiexec -n d*k``; its size must
        be a multiple of k, and d = size / k); without it, d x k worker processes on this
        machine. It must provide ``allreduce_in_rank_order`` (every minscale backend does).
    epochs, batch_size, shuffle, seed, validation_data, verbose, callbacks, pruning,
    pruning_method
        As in :func:`minscale.train.fit`; `batch_size` is the global batch, which every rank
        processes whole. Callbacks run on every rank and see that rank's
        :class:`~minscale.parallel.tensor.TensorShard`; only rank 0 prints.
    timeout, blas_threads, start_method
        As in :func:`minscale.parallel.fit_workers` (shared memory only).

    Returns
    -------
    History
        Rank 0's, which every rank shares (the loss is computed from the replicated output).

    Raises
    ------
    ValueError
        Bad `tensor_parallel` for this model (:func:`~minscale.parallel.tensor.check_tensor_parallel`),
        a `comm` whose size is not a multiple of k, or `workers` with `comm`.
    DivergenceError
        As in :func:`minscale.train.fit`; the model holds the last finite parameters.
    WorkerError
        A worker died or a collective failed (shared memory), naming the rank, after every
        worker is stopped and the shared memory unlinked; an exception raised in a worker is
        re-raised with its own type, chained from the WorkerError.

    References
    ----------
    Shoeybi et al. 2019, "Megatron-LM", section 3.
    """
    k = check_tensor_parallel(model, tensor_parallel)
    options = dict(epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                   validation_data=validation_data, verbose=verbose,
                   callbacks=list(callbacks or []), pruning=pruning,
                   pruning_method=pruning_method)
    d = check_int("workers", workers, 1, COUNT_MAX)
    if comm is not None:
        if comm.size % k or d != 1:
            raise ValueError(f"tensor_parallel={k} over comm= needs a communicator of a "
                             f"multiple of {k} ranks (d replicas x {k}; start mpiexec -n "
                             f"d*{k}) and workers=1, got size {comm.size}, workers={d}")
        tensor, data = _grid(comm, k)
        report = train_rank(tensor, model, X, y, options, data_comm=data, world=comm)
    else:
        check_not_bootstrapping()
        timeout = default_timeout() if timeout is None else check_timeout(timeout)
        rows = max(min(batch_size, X.shape[0]),
                   0 if validation_data is None else len(validation_data[0]))
        activations = _activation_bytes(model, rows)
        chunk = max(activations // 8, _MIN_CHUNK)
        # a sub-group collective carries every group's segment (SubgroupComm): d activation
        # or gather buffers, or the k shards' gradients (at most twice the whole model)
        nbytes = max(activations, chunk * 8) if d == 1 else \
            d * max(activations, chunk * 8) + 8 * (2 * model.params.size + 2 * k + d * k)
        owned = []
        try:
            for arr in (X, y):
                shared = SharedArray.create(arr.shape, dtype=arr.dtype)
                owned.append(shared)
                shared.array[...] = arr
            job = _Job(model=model, backend=kernels.get_backend(), X=owned[0].spec,
                       y=owned[1].spec, options=options, chunk=chunk, tensor_parallel=k)
            try:
                report = run_workers(_worker, d * k, args=(job,), nbytes=nbytes,
                                     timeout=timeout, blas_threads=blas_threads,
                                     start_method=start_method)[0]
            except WorkerError as err:
                original = err.exception
                if original is None or isinstance(original, CommError):
                    raise
                if hasattr(original, "add_note"):
                    original.add_note(f"(raised in tensor-parallel rank {err.rank}; its "
                                      "traceback is the cause above)")
                raise original from err
        finally:
            for shared in owned:
                shared.close()
                shared.unlink()
        if report["error"] is not None:
            report["error"] = unpack_exception(report["error"]) or DivergenceError(
                "training diverged in a tensor-parallel rank (the error could not be rebuilt)",
                None, None, None)
    install(model, report)
    if report["error"] is not None:
        raise report["error"]
    return report["history"]
