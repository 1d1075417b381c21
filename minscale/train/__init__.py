"""The fit loop: batching, shuffling, history, callbacks, divergence checks, progress bar.

One loop serves one process and every data-parallel worker: with a communicator of size k,
each global batch is split into k contiguous shards, each rank computes the gradient of its
shard scaled by the *global* batch size (so the shard gradients add up to the batch
gradient), one allreduce sums them (the batch loss rides along in the same buffer), and every
rank applies the same update.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

import numpy as np

from ..parallel.base import shard_bounds

__all__ = ["History", "DivergenceError", "BLOWUP_FACTOR", "divergence_limit", "Callback", "fit",
           "shard_bounds"]


#: A batch loss this many times the first batch loss of a fit call counts as divergence. Adam's
#: step is bounded by the learning rate, so at an absurd rate the loss can climb to 1e36
#: without ever overflowing; ordinary training never multiplies its loss by 1e10.
BLOWUP_FACTOR = 1e10


def divergence_limit(start_loss):
    """The batch loss above which training counts as diverged.

    Parameters
    ----------
    start_loss : float
        Loss of the first batch of the fit call, before any update (the loss's unit).

    Returns
    -------
    float
        ``BLOWUP_FACTOR * start_loss`` when `start_loss` is positive and finite, else ``inf``
        (a zero starting loss gives no scale to compare with; NaN and inf are caught apart).
    """
    if start_loss > 0 and math.isfinite(start_loss):
        return BLOWUP_FACTOR * start_loss
    return math.inf


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss, or a loss `BLOWUP_FACTOR` times the first
    batch's; the model keeps its last finite parameters.

    Attributes
    ----------
    epoch : int
        0-based epoch in which it happened.
    step : int
        Optimizer updates applied before the failing batch.
    learning_rate : float
        The rate of the last update applied.
    """

    def __init__(self, message, epoch, step, learning_rate):
        super().__init__(message)
        self.epoch, self.step, self.learning_rate = epoch, step, learning_rate


class History:
    """What :func:`fit` measured.

    Attributes
    ----------
    history : dict of list
        ``"loss"`` (per epoch, every sample weighted equally), ``"val_loss"`` and
        ``"val_accuracy"`` when validation data / the metric are given, ``"lr"`` (the rate of
        every update, in order), ``"sparsity"`` (per epoch, when pruning).
    epoch : list of int
    """

    def __init__(self):
        self.history = {"loss": [], "lr": []}
        self.epoch = []

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class Callback:
    """Base class of training callbacks; every hook is optional.

    Hooks: ``on_train_begin(model)``, ``on_step_begin(model, step)`` (before the batch's
    forward pass; ``step`` = updates applied so far), ``on_epoch_end(model, epoch, logs)`` and
    ``on_train_end(model, history)``.
    """

    def on_train_begin(self, model):
        """Called once before the first batch."""

    def on_step_begin(self, model, step):
        """Called before each batch's forward pass."""

    def on_epoch_end(self, model, epoch, logs):
        """Called after each epoch with its logs dict."""

    def on_train_end(self, model, history):
        """Called once after the last epoch."""


class _PruningCallback(Callback):
    """Gradual pruning: update the masks when the schedule says so (TFMO semantics)."""

    def __init__(self, schedule, method):
        self.schedule, self.method = schedule, method

    def on_step_begin(self, model, step):
        if self.schedule.should_prune(step):
            from ..prune import prune
            prune(model, float(self.schedule.sparsity(step)), method=self.method)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _prepare(model, X, y):
    return model._check_Xy(X, y)


def _compiled_fit_supports(model, options):
    # whole epochs in one compiled call (minscale.kernels._fastfit): numba backend only, so the
    # NumPy path never imports numba
    from .. import kernels
    if kernels.get_backend() != "numba":
        return False
    from ..kernels import _fastfit
    return _fastfit.supports(model, **options)


def fit(model, X, y, epochs=1, batch_size=32, shuffle=True, seed=None, validation_data=None,
        verbose=0, callbacks=None, pruning=None, pruning_method="magnitude", quantization=None,
        workers=1, mode="sync", comm=None, checkpoint=None, checkpoint_every=None, resume=None):
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
    seed : int, optional
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
        Worker processes on this machine (data-parallel; see :mod:`minscale.parallel`).
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

    Returns
    -------
    History

    Raises
    ------
    ValueError
        Bad data or arguments, naming the argument; a `resume` checkpoint that does not fit
        the model, data or arguments.
    minscale.io.ModelFileError
        A damaged or foreign `resume` file.
    DivergenceError
        The loss became NaN or inf, or a batch loss exceeded `BLOWUP_FACTOR` (1e10) times the
        first batch loss of this call; the message names epoch, step and learning rate, and
        the model keeps its last finite parameters.
    """
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    workers = _check_int("workers", workers, 1)
    if mode not in ("sync", "async"):
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
    X, y = _prepare(model, X, y)
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        validation_data = _prepare(model, *validation_data)
    if model.optimizer is None:
        model.compile()
    if pruning is not None and not (hasattr(pruning, "should_prune")
                                    and hasattr(pruning, "sparsity")):
        raise ValueError("pruning must be a sparsity schedule with should_prune(step) and "
                         f"sparsity(step), got {pruning!r}")
    if quantization is not None:
        from ..quant import prepare_qat
        prepare_qat(model, quantization)
    options = dict(epochs=epochs, batch_size=batch_size, shuffle=shuffle, seed=seed,
                   validation_data=validation_data, verbose=verbose,
                   callbacks=list(callbacks or []), pruning=pruning,
                   pruning_method=pruning_method)
    if comm is not None and mode == "async":
        raise ValueError("mode='async' runs worker processes on one machine; training over "
                         "comm= is synchronous (mode='sync')")
    if workers > 1 or mode == "async":
        if comm is not None:
            raise ValueError("give either workers (processes on this machine) or comm, not both")
        from ..parallel import fit_workers
        history = fit_workers(model, X, y, workers=workers, mode=mode, **options)
    elif comm is None and checkpoint is None and resume is None \
            and _compiled_fit_supports(model, options):
        from ..kernels import _fastfit
        history = _fastfit.run(model, X, y, **options)
    else:
        history = run(model, X, y, comm=comm, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume, **options)
    model.history = history
    return history


def run(model, X, y, epochs, batch_size, shuffle, seed, validation_data, verbose, callbacks,
        pruning, pruning_method, comm=None, checkpoint=None, checkpoint_every=None,
        resume=None):
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

    Returns
    -------
    History
    """
    rank = 0 if comm is None else comm.rank
    size = 1 if comm is None else comm.size
    run_seed = seed  # the caller's seed, recorded in checkpoints (ranks derive their own)
    if pruning is not None:
        callbacks = [_PruningCallback(pruning, pruning_method)] + list(callbacks)
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
        from .. import io as _io
        data_sha = _io.data_digest(X, y)
    if resume is not None:
        progress = _io.restore_checkpoint(model, resume, X, y, batch_size, shuffle, run_seed,
                                          epochs)
        rng.bit_generator.state = progress.rng_state
        history = progress.history
        start_epoch, start_batch = progress.epoch, progress.batch
        order, loss_total = progress.order, progress.loss_total

    def save_checkpoint(epoch, batch, order, loss_total):
        if checkpoint is None:
            return
        if not np.isfinite(model.params).all():
            # a checkpoint is always a finite snapshot to resume from
            _diverged(model, backup, epoch, optimizer.iterations, lr, float("nan"))
        if rank == 0:
            _io.write_checkpoint(checkpoint, model, _io.TrainingProgress(
                epoch=epoch, batch=batch, loss_total=loss_total, order=order,
                rng_state=rng.bit_generator.state, history=history, seed=run_seed,
                batch_size=batch_size, shuffle=bool(shuffle), n_samples=n,
                data_sha256=data_sha))

    P = model.params.size
    backup = model.params.copy()
    bar = _progress(verbose and rank == 0, epochs * n_batches)
    lr = optimizer.current_learning_rate()
    loss_limit = None  # set from the first batch loss of this call
    for cb in callbacks:
        cb.on_train_begin(model)
    stack = contextlib.ExitStack()
    # overflow is reported as a DivergenceError naming epoch, step and rate, not as warnings
    stack.enter_context(np.errstate(over="ignore", invalid="ignore"))
    if comm is not None and size > 1:
        # QAT activation observers must see the global batch's range, not the shard's
        from ..parallel.trainer import synchronized_observers
        stack.enter_context(synchronized_observers(model, comm))
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
                model._gradbuf[P] = model.compute_gradients(Xb, yb, n_total=hi - lo)
                if size > 1:
                    comm.allreduce(model._gradbuf)
                batch_loss = float(model._gradbuf[P])
                if loss_limit is None:
                    loss_limit = divergence_limit(batch_loss)
                if not math.isfinite(batch_loss) or batch_loss > loss_limit:
                    _diverged(model, backup, epoch, step, lr, batch_loss, loss_limit)
                np.copyto(backup, model.params)
                mask = None if model.mask.all() else model.mask
                lr = optimizer.apply(model.params, model.grads, mask)
                history.history["lr"].append(lr)
                loss_total += batch_loss * (hi - lo) if model.reduction == "mean" else batch_loss
                if checkpoint_every is not None and optimizer.iterations % checkpoint_every == 0:
                    save_checkpoint(epoch, b + 1, order, loss_total)
                if bar is not None:
                    bar.update(1)
            if not np.isfinite(model.params).all():
                _diverged(model, backup, epoch, optimizer.iterations, lr, float("nan"))
            logs = {"loss": loss_total / n if model.reduction == "mean" else loss_total}
            if validation_data is not None:
                val = model.evaluate(*validation_data, return_dict=True)
                logs.update({f"val_{k}": v for k, v in val.items()})
            if pruning is not None:
                logs["sparsity"] = model.sparsity()["total"]
            history.epoch.append(epoch)
            for key, value in logs.items():
                history.history.setdefault(key, []).append(value)
            for cb in callbacks:
                cb.on_epoch_end(model, epoch, logs)
            if verbose and rank == 0:
                _report(bar, epoch, epochs, logs, verbose)
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


def _diverged(model, backup, epoch, step, lr, loss, loss_limit=math.inf):
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


def _progress(enabled, total):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)


def _report(bar, epoch, epochs, logs, verbose):
    text = " - ".join(f"{k} {v:.6g}" for k, v in logs.items())
    if bar is not None:
        bar.set_postfix_str(text)
        if verbose >= 2:
            bar.write(f"epoch {epoch + 1}/{epochs} - {text}")
    else:
        print(f"epoch {epoch + 1}/{epochs} - {text}", flush=True)
