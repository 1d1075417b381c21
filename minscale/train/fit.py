"""fit: one block of argument checks, then the dispatch to the workers, the compiled loop or
the Python loop."""
from __future__ import annotations

import math
import os

from .._checks import check_bool
from ..data import COUNT_MAX, SEED_MAX, check_int, check_nbytes, check_output_path
from ..parallel.schedule import PIPELINE_SCHEDULES
from ..parallel.tensor import check_tensor_parallel
from ..quant import prepare_qat, qat_config
from . import compiled, loop
from .pipeline import fit_pipeline
from .pipeline import stage_bounds as split_stages
from .tensor import check_fit_arguments, fit_tensor_parallel
from .workers import MODES, fit_workers

__all__ = ["fit"]

#: Bytes each optimizer update costs for the whole run, allocated up front or kept: its learning
#: rate in ``History.history["lr"]`` (a Python float: 24-byte object + 8-byte list slot) and
#: the compiled loop's per-update schedule (rate, Adam's bias corrections and step factors:
#: six float64 arrays), with room for the temporary list of a chunk's rates.
BYTES_PER_UPDATE = 96


def check_updates(epochs, n_samples, batch_size, epochs_name="epochs",
                  batch_size_name="batch_size"):
    """Refuse a run whose per-update records would not fit in memory, before it starts.

    Parameters
    ----------
    epochs : int, >= 0
    n_samples : int, >= 1
        Training rows.
    batch_size : int, >= 1
    epochs_name, batch_size_name : str
        How the caller names the two arguments (``"--finetune-epochs"`` on the command line).

    Returns
    -------
    int
        The number of updates, ``epochs * ceil(n_samples / batch_size)``.

    Raises
    ------
    ValueError
        ``updates * BYTES_PER_UPDATE`` exceeds :func:`minscale.data.memory_limit`; the message
        names both arguments, the bytes and the limit.
    """
    n_batches = math.ceil(n_samples / batch_size)
    updates = epochs * n_batches
    check_nbytes(updates * BYTES_PER_UPDATE,
                 f"{epochs_name} {epochs} of {n_batches} batches ({n_samples} rows, "
                 f"{batch_size_name} {batch_size}) make {updates:,} updates, whose records "
                 f"(History.history['lr'] and the compiled loop's schedule, {BYTES_PER_UPDATE} "
                 "bytes per update)",
                 f"give fewer {epochs_name} or a larger {batch_size_name}")
    return updates


def _check_int(name, value, minimum):
    return check_int(name, value, minimum, COUNT_MAX)


def _prepare(model, X, y):
    return model._check_Xy(X, y)


def fit(model, X, y, epochs=1, batch_size=32, shuffle=True, seed=None, validation_data=None,
        verbose=0, callbacks=None, pruning=None, pruning_method="magnitude", quantization=None,
        workers=1, mode="sync", comm=None, checkpoint=None, checkpoint_every=None, resume=None,
        tensor_parallel=1, pipeline_stages=1, micro_batches=1, schedule="gpipe",
        stage_bounds=None, timing=False):
    """Train `model` by minibatch gradient descent on MSE.

    Parameters
    ----------
    model : Sequential
        Compiled (an uncompiled model gets Adam with its defaults).
    X : array_like, shape (n, d_in)
    y : array_like, shape (n, d_out) or (n,)
    epochs : int, >= 0
    batch_size : int, >= 1
        Global batch size (split across workers in data-parallel training). The last batch of
        an epoch may be shorter.
    shuffle : bool, default True
        New order every epoch from ``numpy.random.default_rng(seed)``.
    seed : int in [0, 2**63 - 1], optional
        Seeds the shuffling; required for reproducible runs.
    validation_data : (X_val, y_val), optional
    verbose : int
        0 silent; 1 a tqdm bar on a terminal (one line per epoch otherwise); 2 one line per
        epoch. Only rank 0 prints.
    callbacks : list of Callback, optional
    pruning : sparsity schedule, optional
        An object with ``should_prune(step) -> bool`` and ``sparsity(step) -> float`` (see
        :mod:`minscale.prune`); masks are updated before the step's forward pass.
    pruning_method : str
        Mask rule used by the schedule (see :func:`minscale.prune.prune`).
    quantization : optional
        Quantization-aware training config, passed to :func:`minscale.quant.prepare_qat`.
    workers : int, default 1
        Worker processes on this machine (data-parallel; see :mod:`minscale.parallel`); with
        ``pipeline_stages=p``, data-parallel replicas of the pipeline (``workers x p``
        processes).
    mode : {"sync", "async"}
        Data-parallel mode for ``workers > 1``.
    comm : Communicator, optional
        Train as one rank of a group (e.g. ``MPIComm()``); every rank calls fit alike.
    checkpoint : str or os.PathLike, optional
        Checkpoint file (see :func:`minscale.io.write_checkpoint`), written atomically with
        parameters, masks, optimizer state, step, shuffling generator state, the epoch's
        order and position, and history. Only rank 0 writes. Not with ``workers > 1``.
    checkpoint_every : int, >= 1, optional
        Write after every `checkpoint_every` optimizer updates (counted by
        ``optimizer.iterations``) and once when training ends; default: after every epoch.
    resume : str or os.PathLike, optional
        Continue from a checkpoint: the model (same architecture and compile settings),
        data, batch_size, shuffle and seed must be those of the checkpointed run, and
        `epochs` is the total to reach. The result is bit-identical to the uninterrupted
        run with the same arguments (checkpointing keeps a run off the compiled fast path,
        which agrees with this loop only to rounding).
    tensor_parallel : int, >= 1, default 1
        Split the model over k ranks Megatron-style (:mod:`minscale.parallel.tensor`): k
        worker processes on this machine (``workers x k`` with ``workers`` data-parallel
        replicas), or the ranks of `comm` (a multiple of k). Not with ``mode="async"``,
        `checkpoint` or `resume`.
    pipeline_stages : int, in [1, len(model.layers)], default 1
        Pipeline-parallel training (:mod:`minscale.train.pipeline`, docs/parallel.md
        "Pipeline training"): the layers are cut into this many contiguous stages, one
        process each (on this machine, or the ranks of `comm` under ``mpiexec``, whose size
        must be a multiple of it). With ``workers=d`` (or a `comm` of d x p ranks): d
        data-parallel replicas of the pipeline, each stage's gradients allreduced over its
        replicas (docs/parallel.md "Combined with data parallelism"; not with `checkpoint`,
        `resume` or `quantization`). Not with ``mode="async"`` or `callbacks`.
    micro_batches : int, >= 1, default 1
        Split every batch into this many micro-batches and accumulate their gradients (in
        micro-batch order, each scaled by the batch's row count); an update per batch. With
        ``pipeline_stages=1`` this is the single-process reference pipeline training equals
        bit for bit. A batch of fewer rows has empty micro-batches, which add nothing.
    schedule : {"gpipe", "1f1b"}, default "gpipe"
        Pipeline schedule (:func:`minscale.parallel.schedule.pipeline_schedule`).
    stage_bounds : sequence of int, optional
        Cut points ``0 = b_0 < ... < b_p = len(model.layers)`` instead of the split balanced
        by parameter count (:func:`minscale.train.pipeline.stage_bounds`).
    timing : bool, default False
        Record the wall-clock seconds of every epoch in ``History.epoch_seconds``, taken by the
        training loop itself (in rank 0's worker with ``workers > 1``), so that a timed run
        keeps the compiled loop a callback would leave (the compiled loops then make one call
        per epoch, with the same results bit for bit). ``History.loop`` says which loop ran.
        Not with ``tensor_parallel > 1`` or ``pipeline_stages > 1``.

    Returns
    -------
    History
        ``history["loss"]`` is the training loss: the data loss plus the layers' kernel
        regularizer penalties (``l2 * sum(W**2)``, see :mod:`minscale.regularizers`);
        ``val_loss`` and :meth:`Sequential.evaluate` exclude the penalty. Weight decay
        (``optimizer.weight_decay``, :class:`minscale.optim.AdamW`) changes the updates only.

    Raises
    ------
    ValueError
        Bad data or arguments, naming the argument: `epochs`, `batch_size`, `workers` and
        `checkpoint_every` must lie in [minimum, :data:`minscale.data.COUNT_MAX`]; a
        `checkpoint` path that cannot be a file (see :func:`minscale.data.check_output_path`),
        checked before training; a run of so many updates (``epochs * ceil(n / batch_size)``)
        that their records (:data:`BYTES_PER_UPDATE` each) exceed
        :func:`minscale.data.memory_limit`; a `resume` checkpoint that does not fit the model,
        data or arguments. Every argument is checked (a bad `quantization` config too, raising
        what :func:`minscale.quant.qat_config` raises) before fit compiles the model or installs
        QAT hooks, so a refused call leaves the model as it was (an unbuilt model may have been
        built from the width of `X`, which is checked last).
    minscale.io.ModelFileError
        A damaged or foreign `resume` file.
    minscale.parallel.WorkerError
        A pipeline stage process died or stopped answering (``pipeline_stages > 1``): the
        message names the stage and its layers (and its replica with ``workers > 1``); a stage's exception is re-raised with its
        own type and a note naming the stage.
    DivergenceError
        The loss became NaN or inf, or a batch loss exceeded `BLOWUP_FACTOR` (1e10) times the
        first batch loss of this call; the message names epoch, step and learning rate, and
        the model keeps its last finite parameters.
    """
    # every check first, the data last (an unbuilt model takes its input width from X):
    # a refused call leaves the model as it was
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    workers = _check_int("workers", workers, 1)
    if seed is not None:
        seed = check_int("seed", seed, 0, SEED_MAX)
    if mode not in MODES:
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    if checkpoint_every is not None:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
        if checkpoint is None:
            raise ValueError("checkpoint_every needs a checkpoint path (checkpoint=...)")
    for name, value in (("checkpoint", checkpoint), ("resume", resume)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{name} must be a file path, got {value!r}")
    if (checkpoint is not None or resume is not None) and (workers > 1 or mode == "async"):
        raise ValueError("checkpoint and resume work in one process or with comm=, not with "
                         f"workers={workers}, mode={mode!r}")
    if comm is not None and mode == "async":
        raise ValueError("mode='async' runs worker processes on one machine; training over "
                         "comm= is synchronous (mode='sync')")
    if comm is not None and workers > 1:
        raise ValueError("give either workers (processes on this machine) or comm, not both")
    timing = check_bool("timing", timing)
    pipeline_stages = _check_int("pipeline_stages", pipeline_stages, 1)
    micro_batches = _check_int("micro_batches", micro_batches, 1)
    if schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"schedule must be one of {PIPELINE_SCHEDULES}, got {schedule!r}")
    if pipeline_stages > 1 or micro_batches > 1:
        if mode == "async":
            raise ValueError("pipeline_stages and micro_batches need mode='sync': the pipeline "
                             "makes one synchronous update per global batch")
        if workers > 1 and pipeline_stages == 1:
            raise ValueError(f"micro_batches={micro_batches} combines with workers={workers} "
                             "only in pipeline training (pipeline_stages > 1)")
    if pipeline_stages > 1:
        if pipeline_stages > len(model.layers):
            raise ValueError(f"pipeline_stages={pipeline_stages} is more than the model's "
                             f"{len(model.layers)} layers (every stage needs at least one layer)")
        if callbacks:
            raise ValueError("callbacks do not run in pipeline training (pipeline_stages > 1): "
                             "each stage holds a part of the model")
        if comm is not None and comm.size % pipeline_stages:
            raise ValueError(f"pipeline_stages={pipeline_stages} must divide the communicator's "
                             f"size {comm.size} (d replicas x one rank per stage)")
        replicas = workers if comm is None else comm.size // pipeline_stages
        if replicas > 1 and (checkpoint is not None or resume is not None
                             or quantization is not None
                             or any(getattr(getattr(layer, "output_quantizer", None),
                                            "observer", None) is not None
                                    for layer in model.layers)):
            # per-replica QAT ranges would drift apart; checkpoints are untested with replicas
            raise ValueError("checkpoint, resume and quantization are not supported with data-"
                             f"parallel replicas of a pipeline ({replicas} replicas)")
    elif stage_bounds is not None:
        raise ValueError("stage_bounds needs pipeline_stages > 1")
    if pruning is not None and not (hasattr(pruning, "should_prune")
                                    and hasattr(pruning, "sparsity")):
        raise ValueError("pruning must be a sparsity schedule with should_prune(step) and "
                         f"sparsity(step), got {pruning!r}")
    if validation_data is not None and not (isinstance(validation_data, (tuple, list))
                                            and len(validation_data) == 2):
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    if quantization is not None:
        quantization = qat_config(quantization)
    tensor_parallel = check_fit_arguments(tensor_parallel, mode=mode, checkpoint=checkpoint,
                                          resume=resume, pipeline_stages=pipeline_stages,
                                          micro_batches=micro_batches)
    if timing and (pipeline_stages > 1 or tensor_parallel > 1):
        raise ValueError("timing is recorded by the single-process and data-parallel loops, not "
                         f"with pipeline_stages={pipeline_stages}, "
                         f"tensor_parallel={tensor_parallel}")
    if checkpoint is not None and (comm is None or comm.rank == 0):
        # only rank 0 writes; a path that cannot be a file is refused before any training
        check_output_path(checkpoint, "checkpoint")
    X, y = _prepare(model, X, y)
    check_updates(epochs, X.shape[0], batch_size)
    check_tensor_parallel(model, tensor_parallel)  # layers narrower than k, QAT hooks
    if validation_data is not None:
        validation_data = _prepare(model, *validation_data)
    bounds = split_stages(model, pipeline_stages, stage_bounds) if pipeline_stages > 1 else None

    if model.optimizer is None:
        model.compile()
    if quantization is not None:
        prepare_qat(model, quantization)
    options = dict(epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                   validation_data=validation_data, verbose=verbose,
                   callbacks=list(callbacks or []), pruning=pruning,
                   pruning_method=pruning_method)
    if tensor_parallel > 1:
        history = fit_tensor_parallel(model, X, y, tensor_parallel=tensor_parallel,
                                      workers=workers, comm=comm, **options)
    elif pipeline_stages > 1:
        history = fit_pipeline(model, X, y, stages=pipeline_stages, micro_batches=micro_batches,
                               schedule=schedule, bounds=bounds, comm=comm,
                               replicas=workers if comm is None else 1,
                               checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                               resume=resume, **{k: v for k, v in options.items()
                                                 if k != "callbacks"})
    elif workers > 1 or mode == "async":
        history = fit_workers(model, X, y, workers=workers, mode=mode, timing=timing, **options)
    elif comm is None and checkpoint is None and resume is None and micro_batches == 1 \
            and compiled.supports(model, options):
        history = compiled.run(model, X, y, timing=timing, **options)
    else:
        history = loop.run(model, X, y, comm=comm, checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, resume=resume,
                           micro_batches=micro_batches, timing=timing, **options)
    model.history = history
    return history
