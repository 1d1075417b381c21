"""Data-parallel training on one machine: ``fit(..., workers=k)`` in sync or async mode.

Both modes start k worker processes with :func:`minscale.parallel.run_workers` (spawn start
method, one BLAS thread each, the parent's kernel backend) and run the core's training loop,
:func:`minscale.train.loop.run`, inside every worker; there is no second training loop here.
The communicators live in :mod:`minscale.parallel`, below train; ``minscale.parallel`` and
``minscale.parallel.trainer`` re-export this module's public names (on first access, since a
static import would make the two packages import each other).

Sync (default). Every worker holds a full copy of the model. ``run(..., comm=comm)`` splits
each global batch of ``batch_size`` rows into k contiguous shards (`shard_bounds`, uneven
allowed, empty shards contribute zero), each rank writes the gradient of its shard scaled by
the global batch size, one allreduce adds the shards, and every rank applies the same update,
so the parameters equal single-process training on the same global batches up to float
summation order. Every rank makes the same collective calls because the batch schedule is
global. The training data sit once in shared memory; rank 0's parameters are broadcast at the
start.

Async (``mode="async"``, Hogwild). Parameters and pruning mask live in one shared-memory
buffer. The rows are permuted once (``seed``) and cut into k contiguous shards; each worker
runs the core loop over its own shard with ``batch_size`` rows per update and writes its
updates into the shared parameters without locks (Niu, Recht, Re & Wright 2011, "HOGWILD!: A
Lock-Free Approach to Parallelizing Stochastic Gradient Descent"). Caveats: a gradient may be
computed from parameters that peers change while it is being computed (staleness of up to
about k - 1 updates), concurrent writes to the same parameter can be lost, results are not
reproducible run to run, each worker keeps its own optimizer state (Adam moments, step count
for the learning-rate schedule), and Hogwild's convergence guarantee assumes sparse updates and
plain SGD; dense layers with Adam converge in practice (see the tests) but without that proof.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import kernels
from ..parallel.base import (
    CommAbortedError,
    CommError,
    WorkerError,
    check_timeout,
    default_timeout,
    shard_bounds,
)
from ..parallel.shm import (
    SharedArray,
    SharedArraySpec,
    check_not_bootstrapping,
    pack_exception,
    run_workers,
    unpack_exception,
)
from . import compiled_dp
from .callbacks import Callback
from .history import DivergenceError
from .loop import run

__all__ = ["fit_workers", "relink_model", "combine_epoch_losses", "MODES"]

#: Data-parallel modes of `fit_workers`.
MODES = ("sync", "async")


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, pickled once per worker at process start."""

    mode: str
    model: Any
    backend: str
    X: SharedArraySpec
    y: SharedArraySpec
    options: dict
    params: SharedArraySpec | None = None
    mask: SharedArraySpec | None = None
    order: np.ndarray | None = None
    seeds: tuple | None = None


def relink_model(model):
    """Re-create a model's view structure after unpickling: fresh gradient buffer, layers rebound.

    Pickling copies every view (``layer.W``, ``model.grads``, ...) into an array of its own, so
    an unpickled Sequential's layers no longer write into ``model.grad_buffer``, the buffer the
    training loop allreduces. This restores ``grads = grad_buffer[:P]`` and rebinds every layer
    to ``params``, ``grads`` and ``mask`` (:meth:`minscale.Sequential.relink`).

    Parameters
    ----------
    model : Sequential, built

    Returns
    -------
    model : the same object

    Raises
    ------
    ValueError
        If the model is not built.
    """
    return model.relink()


def _digest(params, mask):
    return hashlib.sha256(params.tobytes() + np.packbits(mask).tobytes()).hexdigest()


def _report(model, history, rank, rows, error):
    params = np.array(model.params, copy=True)
    mask = np.array(model.mask, copy=True)
    report = {"rank": rank, "digest": _digest(params, mask), "history": history, "rows": rows,
              "error": error}
    if rank == 0:
        report.update(
            params=params,
            mask=mask,
            optimizer=model.optimizer,
            state=model.state,
            quantizers=[(layer.kernel_quantizer, layer.output_quantizer) for layer in model.layers],
        )
    return report


class _StopWhenAborted(Callback):
    """Ends an async worker at its next update once the group is aborted (Ctrl-C in the parent,
    a failed or stopped peer): async workers reach no collective after the start, where the
    abort would otherwise be seen."""

    def __init__(self, comm):
        self.comm = comm

    def on_step_begin(self, model, step):
        if self.comm.aborted:
            raise CommAbortedError(f"rank {self.comm.rank}: group aborted during async training, "
                                   f"before update {step} (the parent or a failing peer stopped it)")


def _train_worker(comm, job):
    """Worker body: attach the shared data, run the core loop, report to the parent."""
    kernels.set_backend(job.backend)
    attached = [SharedArray.attach(job.X), SharedArray.attach(job.y)]
    model = job.model
    try:
        relink_model(model)
        X, y = attached[0].array, attached[1].array
        options = dict(job.options)
        run_comm = comm
        if job.mode == "async":
            params, mask = SharedArray.attach(job.params), SharedArray.attach(job.mask)
            attached += [params, mask]
            model.rebind(params=params.array, mask=mask.array)
            lo, hi = shard_bounds(len(job.order), comm.rank, comm.size)
            rows = job.order[lo:hi]
            X, y = X[rows], y[rows]
            options["seed"] = job.seeds[comm.rank]
            if comm.rank != 0:
                options["verbose"] = 0
                options["validation_data"] = None
            options["callbacks"] = [*options["callbacks"], _StopWhenAborted(comm)]
            run_comm = None
            # Start together, so no worker runs through its shard on stale initial weights alone.
            comm.barrier()
        error = history = None
        try:
            if run_comm is not None and compiled_dp.supports(model, options, run_comm):
                # whole epochs per compiled call, the allreduce inside (same results)
                history = compiled_dp.run(model, X, y, run_comm, **options)
            else:
                # run() synchronizes QAT observers itself when comm has more than one rank
                history = run(model, X, y, comm=run_comm, **options)
        except DivergenceError as exc:
            # The loop restored the last finite parameters; hand them back with the error.
            error = pack_exception(exc)
        return _report(model, history, comm.rank, X.shape[0], error)
    finally:
        model = X = y = None
        for shared in attached:
            shared.close()


def _install(model, report):
    """Copy rank 0's final state into the parent's model, keeping the parent's objects."""
    model.params[...] = report["params"]
    model.mask[...] = report["mask"]
    if model.optimizer is not None and report["optimizer"] is not None:
        # In place, so references the user holds to the optimizer see the new step count.
        state = vars(report["optimizer"])
        vars(model.optimizer).clear()
        vars(model.optimizer).update(state)
    model.state.clear()
    model.state.update(report["state"])
    for layer, (kernel_q, output_q) in zip(model.layers, report["quantizers"]):
        layer.kernel_quantizer, layer.output_quantizer = kernel_q, output_q


def combine_epoch_losses(losses, rows, reduction="mean"):
    """Epoch loss over all workers of an async run, from each worker's loss on its shard.

    Parameters
    ----------
    losses : array_like, shape (k, epochs)
        Worker w's epoch losses on its own shard.
    rows : array_like of int, shape (k,)
        Rows in each worker's shard.
    reduction : {"mean", "sum", "half_sum"}

    Returns
    -------
    ndarray of float64, shape (epochs,)

    Raises
    ------
    ValueError
        If the shapes disagree or rows sum to 0.

    Notes
    -----
    mean: loss = sum_w rows_w * loss_w / sum_w rows_w (every sample weighted equally, as
    :func:`minscale.train.run` does within one process); sum, half_sum: loss = sum_w loss_w.
    """
    losses = np.asarray(losses, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    if losses.ndim != 2 or rows.shape != (losses.shape[0],):
        raise ValueError(
            f"losses must have shape (k, epochs) and rows shape (k,), got {losses.shape} and "
            f"{rows.shape}"
        )
    if reduction == "mean":
        if rows.sum() <= 0:
            raise ValueError(f"rows must sum to a positive count, got {rows.tolist()}")
        return (rows[:, None] * losses).sum(axis=0) / rows.sum()
    return losses.sum(axis=0)


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_data(model, X, y):
    for name, arr in (("X", X), ("y", y)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D ndarray (validated by fit), got {type(arr).__name__}")
        if arr.dtype != model.dtype:
            raise ValueError(f"{name} must have the model's dtype {model.dtype}, got {arr.dtype}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")


def _check_picklable(model, callbacks, pruning, validation_data):
    for name, obj in (("model", model), ("callbacks", callbacks), ("pruning", pruning),
                      ("validation_data", validation_data)):
        try:
            pickle.dumps(obj)
        except Exception as exc:
            raise TypeError(
                f"{name} must be picklable to train with workers (processes start with spawn; "
                f"layer quantizers, callbacks and schedules must be module-level classes): {exc}"
            ) from None


def _shared_copy(arr):
    shared = SharedArray.create(arr.shape, dtype=arr.dtype)
    shared.array[...] = arr
    return shared


def fit_workers(model, X, y, *, workers, mode="sync", epochs=1, batch_size=32, shuffle=True,
                seed=None, validation_data=None, verbose=0, callbacks=None, pruning=None,
                pruning_method="magnitude", timeout=None, blas_threads=1, start_method="spawn",
                timing=False):
    """Train `model` data-parallel in `workers` processes on this machine; the core of
    ``fit(..., workers=k)``.

    Parameters
    ----------
    model : Sequential, built and compiled
        Trained in place: on return ``model.params``, ``model.mask``, the optimizer state,
        ``model.state`` and the layer quantizers hold rank 0's final values.
    X : ndarray, shape (n, d_in), the model's dtype
    y : ndarray, shape (n, d_out), the model's dtype
        Validated arrays (as :func:`minscale.train.fit` passes them).
    workers : int, >= 1
        Worker processes (k).
    mode : {"sync", "async"}, default "sync"
        See the module docstring.
    epochs, shuffle, seed, validation_data, verbose, pruning, pruning_method
        As in :func:`minscale.train.fit`. Only rank 0 prints.
    batch_size : int, default 32
        sync: the global batch, split over the workers. async: rows per update of each worker.
    callbacks : list of Callback, optional
        Run inside every worker (they must be picklable; changes they make to themselves stay
        in the worker processes).
    timeout : float or None, default None
        Seconds a worker waits at one collective before giving up; None means
        ``$MINSCALE_COMM_TIMEOUT`` if set, else 120 (`minscale.parallel.base.default_timeout`).
    blas_threads : int or None, default 1
        BLAS threads per worker (threadpoolctl).
    start_method : {"spawn", "forkserver", "fork"}, default "spawn"
    timing : bool, default False
        Every worker records its epochs' wall-clock seconds; the history returned holds rank 0's
        (``History.epoch_seconds``, process start-up left out).

    Returns
    -------
    History
        Sync: rank 0's history, which equals the single-process one. Async: rank 0's ``lr`` and
        validation entries; ``loss`` is the epoch loss over all workers' shards
        (`combine_epoch_losses`).

    Raises
    ------
    ValueError
        Bad `workers`, `mode`, data, or async with fewer rows than workers.
    TypeError
        If model, callbacks, pruning schedule or validation data cannot be pickled.
    RuntimeError
        If called in a worker that is still importing the main module (a script without
        the ``__main__`` guard); the parent then raises the WorkerError below with that hint.
    DivergenceError
        The loss became NaN or inf; the model holds the last finite parameters.
    Exception
        An exception raised in a worker is re-raised in the parent with its own type, chained
        from the WorkerError that carries the worker's traceback.
    WorkerError
        A worker died (e.g. SIGKILL), or a collective failed: raised within about 10 s of the
        death, after the other workers are stopped and the shared memory is unlinked. A
        stopped or hung worker is reported within `timeout` + about 7 s.
    RuntimeError
        If the sync workers ended with different parameters (a callback or quantizer that
        depends on the worker's shard).

    Notes
    -----
    Spawned workers import the caller's main module, so a script that trains with workers must
    keep its top-level code under ``if __name__ == "__main__":`` (the usual multiprocessing rule).
    The parent holds X and y once more in shared memory for the duration of the call.

    References
    ----------
    Sync: the allreduce-of-gradients scheme of PyTorch DistributedDataParallel and Horovod
    (Sergeev & Del Balso 2018); here each shard's gradient sum is divided by the global batch
    size before the allreduce (the same value as dividing the allreduced sum, up to rounding),
    so uneven shards need no reweighting. Async: Niu et al. 2011 (HOGWILD!).
    """
    # before any shared memory exists: in a worker re-running an unguarded script's top level
    check_not_bootstrapping()
    workers = _check_count("workers", workers, 1)
    epochs = _check_count("epochs", epochs, 0)
    batch_size = _check_count("batch_size", batch_size, 1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    timeout = default_timeout() if timeout is None else check_timeout(timeout)
    _check_data(model, X, y)
    n = X.shape[0]
    if mode == "async" and workers > n:
        raise ValueError(f"async mode needs at least one row per worker: workers={workers} but "
                         f"X has {n} rows")
    callbacks = list(callbacks or [])
    _check_picklable(model, callbacks, pruning, validation_data)
    options = dict(epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                   validation_data=validation_data, verbose=verbose, callbacks=callbacks,
                   pruning=pruning, pruning_method=pruning_method, timing=bool(timing))
    owned = []
    params_shared = mask_shared = None
    try:
        X_shared, y_shared = _shared_copy(X), _shared_copy(y)
        owned += [X_shared, y_shared]
        job = dict(mode=mode, model=model, backend=kernels.get_backend(), X=X_shared.spec,
                   y=y_shared.spec, options=options)
        if mode == "async":
            params_shared, mask_shared = _shared_copy(model.params), _shared_copy(model.mask)
            owned += [params_shared, mask_shared]
            children = np.random.SeedSequence(seed).spawn(workers + 1)
            order = np.random.default_rng(children[-1]).permutation(n) if shuffle else np.arange(n)
            job.update(params=params_shared.spec, mask=mask_shared.spec, order=order,
                       seeds=tuple(children[:-1]))
        # grads + loss, float64-sized so a float32 model's float64 seed broadcast fits too;
        # room for the observer ranges
        nbytes = (model.params.size + 1 + 2 * sum(layer.units for layer in model.layers)) * 8
        try:
            reports = run_workers(_train_worker, workers, args=(_Job(**job),), nbytes=nbytes,
                                  timeout=timeout, blas_threads=blas_threads,
                                  start_method=start_method)
        except WorkerError as err:
            original = err.exception
            if original is None or isinstance(original, CommError):
                raise
            if hasattr(original, "add_note"):
                original.add_note(f"(raised in data-parallel worker rank {err.rank}; its "
                                  "traceback is the cause above)")
            raise original from err
        if mode == "sync":
            for report in reports[1:]:
                if report["digest"] != reports[0]["digest"]:
                    raise RuntimeError(
                        f"synchronous workers ended with different parameters (rank "
                        f"{report['rank']} differs from rank 0): a callback, pruning rule or "
                        "quantizer observer used rank-local data"
                    )
        _install(model, reports[0])
        if mode == "async":
            # The shared buffers hold the result of all workers; rank 0's copy was a snapshot.
            model.params[...] = params_shared.array
            model.mask[...] = mask_shared.array
    finally:
        for shared in owned:
            shared.close()
            shared.unlink()
    errors = [r["error"] for r in reports if r["error"] is not None]
    if errors:
        error = unpack_exception(errors[0])
        raise error if error is not None else DivergenceError(
            "training diverged in a worker (the error could not be rebuilt)", None, None, None)
    history = reports[0]["history"]
    if mode == "async":
        history.history["loss"] = combine_epoch_losses(
            [r["history"].history["loss"] for r in reports], [r["rows"] for r in reports],
            model.reduction).tolist()
    return history
