"""The compiled training path: whole epochs per compiled call (Numba backend only).

On a small model each optimizer update is a few microseconds of arithmetic and tens of
microseconds of Python. :func:`run` therefore hands whole epochs to one compiled function
(through ``minscale.kernels._fastfit.train_epochs``, reached through
:func:`minscale.kernels.compiled_epochs` so that the NumPy path never imports Numba) and keeps
in Python only what must be there: the shuffling (the rows of successive
``numpy.random.Generator.permutation`` calls, drawn in one ``permuted`` call, so the batches are
those of the general loop), the learning-rate schedule (evaluated once for every
step, vectorized: :func:`learning_rates`), validation, printing and the history.

:func:`supports` says when it applies: the numba backend; Dense layers without quantization
hooks; loss ``mse`` (any reduction); :class:`~minscale.optim.SGD` (any momentum, Nesterov or
not), :class:`~minscale.optim.Adam` or :class:`~minscale.optim.AdamW` (with or without weight
decay) with a float or a built-in schedule, L2 kernel regularizers or none; no pruning schedule,
no callbacks, one process. Masks of an already pruned model are honoured. Everything else runs
the general loop (:func:`minscale.train.loop.run`).

Results equal the general loop's up to floating-point summation order (matrix products with
few terms are summed in index order there and by BLAS kernels here): float64 parameters,
optimizer state and history agree to about 1e-15 relative, far inside the 1e-12 the tests ask.
The model's state is read and written through public attributes only (``params``, ``grads``,
``mask``, ``grad_buffer``, ``optimizer.buffer``, ``optimizer.iterations``).
"""
from __future__ import annotations

import math
import time

import numpy as np

from .. import kernels, optim, schedules
from ..kernels import ACTIVATION_CODES
from ..layers import Dense
from . import loop
from .history import BLOWUP_FACTOR, History
from .progress import progress_bar, report_epoch

# internal to train: fit dispatches here
__all__ = []

#: the schedules :func:`learning_rates` evaluates for a whole run at once
BUILTIN_SCHEDULES = (schedules.Constant, schedules.InverseTimeDecay, schedules.ExponentialDecay,
                     schedules.PolynomialDecay)
#: Shuffled row indices one compiled call receives at most (int64: 32 MiB); epochs beyond
#: that go to further calls, which continue the same generator and schedule
ORDER_ENTRIES = 2**22


def supports(model, options):
    """Whether :func:`run` can train `model` with these :func:`minscale.train.fit` options.

    Parameters
    ----------
    model : Sequential, compiled and built
    options : dict
        The keyword arguments :func:`run` would get (epochs, batch_size, shuffle, seed,
        validation_data, verbose, callbacks, pruning, pruning_method), after fit's checks.

    Returns
    -------
    bool
        True when the backend is numba, no callback or pruning schedule is given, the loss is
        mse, the optimizer is exactly SGD, Adam or AdamW (any weight decay) with a float or
        built-in schedule, every
        layer is a Dense layer without quantization hooks, and the dtype is float32 or float64.
    """
    fastfit = kernels.compiled_epochs()  # None unless the backend is numba
    if fastfit is None or options.get("callbacks") or options.get("pruning") is not None:
        return False
    if model.loss != "mse" or model.reduction not in fastfit.REDUCTION_CODES:
        return False
    opt = model.optimizer
    if type(opt) not in (optim.SGD, optim.Adam, optim.AdamW) \
            or type(opt.learning_rate) not in BUILTIN_SCHEDULES:
        return False
    for layer in model.layers:
        if type(layer) is not Dense or layer.kernel_quantizer is not None \
                or layer.output_quantizer is not None or layer.activation not in ACTIVATION_CODES:
            return False
    return model.dtype in (np.dtype(np.float32), np.dtype(np.float64))


def learning_rates(schedule, step0, count):
    """The rates of updates ``step0 .. step0 + count - 1``, as the optimizer would ask for them.

    Parameters
    ----------
    schedule : Constant, InverseTimeDecay, ExponentialDecay or PolynomialDecay
    step0 : int, >= 0
        Updates already applied (``optimizer.iterations``).
    count : int, >= 0

    Returns
    -------
    float64 ndarray, shape (count,)
        The same numbers, bit for bit, as ``[float(schedule(t)) for t in range(step0, step0 +
        count)]``: the built-in schedules use only correctly rounded operations (+, -, *, /,
        floor, min), which give the same bits vectorized or not, and compute powers element by
        element with the scalar ``pow`` (see ``minscale.schedules``); the tests compare both.
    """
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(schedule(np.arange(step0, step0 + count, dtype=np.int64)),
                      dtype=np.float64).reshape(count)


def _network(fastfit, model):
    """The layout of the model's flat buffer (``_fastfit.Network``)."""
    layers = model.layers
    dims = np.array([model.input_dim] + [layer.units for layer in layers], dtype=np.int64)
    w_off = np.empty(len(layers), dtype=np.int64)
    b_off = np.empty(len(layers), dtype=np.int64)
    for i, (layer, (start, _)) in enumerate(zip(layers, model.layer_slices())):
        w_off[i] = start
        b_off[i] = start + layer.W.size if layer.use_bias else -1
    acts = np.array([ACTIVATION_CODES[layer.activation] for layer in layers], dtype=np.int64)
    alphas = np.array([layer.alpha for layer in layers], dtype=model.dtype)
    reg = np.array([layer.kernel_regularizer is not None for layer in layers], dtype=np.bool_)
    l2 = np.array([layer.kernel_regularizer.l2 if layer.kernel_regularizer is not None else 0.0
                   for layer in layers], dtype=np.float64)
    # 2 * l2 rounded to the dtype, as minscale.regularizers.l2_gradient rounds it
    l2_coef = np.array([model.dtype.type(2.0 * value) for value in l2], dtype=model.dtype)
    return fastfit.Network(dims, w_off, b_off, acts, alphas, model.dtype.type(1), reg, l2,
                           l2_coef)


def _update(fastfit, opt, params, step0, lr64, weights):
    """The optimizer's per-update scalars for the whole run, and its state buffers
    (``_fastfit.Update``), rounded to the dtype as :func:`minscale.optim.adam_step` and
    :mod:`minscale.regularizers` round them."""
    update = _rule(fastfit, opt, params, step0, lr64)
    dtype = params.dtype
    where = opt.decay_where(weights) if opt.weight_decay else None
    decay = np.zeros(0, dtype=np.bool_) if where is None else np.ascontiguousarray(where)
    decoupled = isinstance(opt, optim.AdamW) and opt.weight_decay != 0
    # 1 - lr * wd per update, as minscale.regularizers.decoupled_weight_decay computes it
    factor = (1.0 - lr64 * opt.weight_decay).astype(dtype) if decoupled \
        else np.zeros(0, dtype=dtype)
    coupled = 0.0 if decoupled else opt.weight_decay
    return update._replace(weight_decay=dtype.type(coupled), decay_all=where is None,
                           decay=decay, decoupled=decoupled, factor=factor)


def _rule(fastfit, opt, params, step0, lr64):
    dtype = params.dtype
    dt = dtype.type
    total = lr64.size
    lrs = lr64.astype(dtype)
    empty, zero = np.zeros(0, dtype=dtype), dt(0)
    nodecay = (zero, True, np.zeros(0, dtype=np.bool_), False, empty)
    if isinstance(opt, optim.Adam):
        # the general loop's own expression 1 - beta ** (step + 1), bit for bit
        bc1 = kernels.bias_corrections(opt.beta_1, step0 + 1, total).astype(dtype)
        bc2 = kernels.bias_corrections(opt.beta_2, step0 + 1, total).astype(dtype)
        beta_1, beta_2 = dt(opt.beta_1), dt(opt.beta_2)
        # the state exists once an update is applied, as with optimizer.apply
        m, v = (opt.buffer("m", params), opt.buffer("v", params)) if total else (empty, empty)
        return fastfit.Update(fastfit.ADAM, lrs, lrs / bc1, np.sqrt(bc2), beta_1, dt(1) - beta_1,
                              beta_2, dt(1) - beta_2, dt(opt.epsilon), zero, False, m, v, *nodecay)
    if opt.momentum:
        velocity = opt.buffer("velocity", params) if total else empty
        return fastfit.Update(fastfit.MOMENTUM, lrs, empty, empty, zero, zero, zero, zero, zero,
                              dt(opt.momentum), bool(opt.nesterov), velocity, empty, *nodecay)
    return fastfit.Update(fastfit.SGD, lrs, empty, empty, zero, zero, zero, zero, zero, zero,
                          False, empty, empty, *nodecay)


def _scratch(fastfit, dims, batch_rows, dtype):
    """Work buffers for batches of at most `batch_rows` rows (``_fastfit.Scratch``)."""
    sizes = [batch_rows * int(d) for d in dims]
    widest = batch_rows * int(dims.max())
    return fastfit.Scratch(
        acts=np.empty(sum(sizes), dtype=dtype),
        act_offset=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        grad_a=np.empty(widest, dtype=dtype), grad_b=np.empty(widest, dtype=dtype),
        loss=np.zeros(2, dtype=dtype), epoch_loss=np.zeros(0, dtype=np.float64),
        status=np.zeros(3, dtype=np.int64))


def _orders(rng, n, count):
    """`count` successive ``rng.permutation(n)``, as rows of one (count, n) int64 array.

    ``Generator.permuted(..., axis=1)`` shuffles each row in turn with the same Fisher-Yates
    draws as ``permutation`` (so the batches are the general loop's:
    ``tests/train/test_compiled.py::test_orders_equal_successive_permutations``), in one call
    instead of one per epoch.
    """
    out = np.empty((count, n), dtype=np.int64)
    out[:] = np.arange(n, dtype=np.int64)
    return rng.permuted(out, axis=1, out=out)


def _log_epochs(model, history, bar, first, epoch_loss, epochs, validation_data, verbose):
    """Append the epochs ``first ..`` of one compiled call to `history`; validate; print."""
    if validation_data is None and not verbose:
        history.epoch.extend(range(first, first + epoch_loss.size))
        history.history.setdefault("loss", []).extend(epoch_loss.tolist())
        return
    for j, loss in enumerate(epoch_loss.tolist()):
        logs = {"loss": loss}
        if validation_data is not None:
            val = model.evaluate(*validation_data, return_dict=True)
            logs.update({f"val_{k}": v for k, v in val.items()})
        history.epoch.append(first + j)
        for key, value in logs.items():
            history.history.setdefault(key, []).append(value)
        if verbose:
            report_epoch(bar, first + j, epochs, logs, verbose)


def run(model, X, y, epochs, batch_size, shuffle, seed, validation_data, verbose, callbacks=(),
        pruning=None, pruning_method="magnitude", timing=False):
    """Train as :func:`minscale.train.loop.run` does, whole epochs per compiled call.

    Parameters
    ----------
    model : Sequential
        Compiled and built; :func:`supports` must be True for these options.
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype, C-contiguous
    epochs, batch_size, shuffle, seed, validation_data, verbose
        As :func:`minscale.train.fit`. Validation and printing happen in Python after each
        epoch (a compiled call then covers one epoch); otherwise a call covers all epochs, or
        as many as keep its shuffled orders within :data:`ORDER_ENTRIES` indices.
    callbacks, pruning, pruning_method
        Accepted for the signature of :func:`minscale.train.loop.run`; must be empty / None.
    timing : bool, default False
        Record every epoch's wall-clock seconds in ``History.epoch_seconds``: a compiled call
        then covers one epoch, as when validating (the same float operations in the same order,
        so the same results bit for bit:
        ``tests/train/test_compiled.py::test_timing_splits_epochs_without_changing_results``).

    Returns
    -------
    History
        The same keys and values as the general loop: per-epoch ``loss`` (every sample weighted
        equally), per-step ``lr``, ``val_*`` when validating; ``loop`` is ``"compiled"``.

    Raises
    ------
    DivergenceError
        As the general loop (:func:`minscale.train.loop.diverged`): on a non-finite batch loss
        or one above :func:`minscale.train.history.divergence_limit` of the first batch's
        (before that step's update), or non-finite parameters at the end of an epoch, with the
        same message, epoch, step and learning rate; parameters are restored from the copy
        taken before the last update when they are not finite. ``optimizer.iterations`` and its
        state count the updates applied.
    ValueError
        Callbacks or a pruning schedule given.
    """
    if callbacks or pruning is not None:
        raise ValueError("the compiled fit loop takes no callbacks and no pruning schedule")
    fastfit = kernels.compiled_epochs()
    opt = model.optimizer
    n = X.shape[0]
    total = epochs * math.ceil(n / batch_size)
    step0 = opt.iterations
    lr_last = opt.current_learning_rate()  # raises as the general loop does on a bad schedule
    lr64 = learning_rates(opt.learning_rate, step0, total)
    if total and (not np.all(np.isfinite(lr64)) or lr64.min() < 0):
        # a rate the optimizer would reject: let the general loop raise at the right step
        return loop.run(model, X, y, epochs, batch_size, shuffle, seed, validation_data,
                        verbose, list(callbacks), pruning, pruning_method, timing=timing)
    update = _update(fastfit, opt, model.params, step0, lr64, model.prunable)
    net = _network(fastfit, model)
    has_mask = not model.mask.all()
    buf = fastfit.Buffers(model.params, model.grads,
                          model.mask if has_mask else np.zeros(0, dtype=np.bool_), has_mask,
                          model.params.copy())
    bs = int(min(batch_size, n))
    scratch = _scratch(fastfit, net.dims, bs, model.dtype)
    batches = fastfit.Batches(X, y, np.zeros((0, 0), dtype=np.int64), bool(shuffle),
                              int(batch_size))
    reduction = fastfit.REDUCTION_CODES[model.reduction]
    history = History()
    history.loop = "compiled"
    rng = np.random.default_rng(seed)
    per_call = 1 if (validation_data is not None or verbose or timing) else max(1, epochs)
    # never more than ORDER_ENTRIES shuffled row indices per call: a long run must not
    # allocate an (epochs, n) order array up front
    per_call = min(per_call, max(1, ORDER_ENTRIES // max(n, 1)))
    # NaN: the compiled loop takes the limit from the run's first batch loss, before any update,
    # regularizer penalty included, as the general loop does
    loss_limit = math.nan
    bar = progress_bar(verbose, total)
    done = 0  # updates applied in this run
    tick = time.perf_counter() if timing else None
    try:
        for e0 in range(0, epochs, per_call):
            e1 = min(epochs, e0 + per_call)
            orders = _orders(rng, n, e1 - e0) if shuffle \
                else np.zeros((e1 - e0, 0), dtype=np.int64)
            scratch = scratch._replace(epoch_loss=np.zeros(e1 - e0, dtype=np.float64))
            steps, loss_limit = fastfit.train_epochs(
                batches._replace(orders=orders), net, buf,
                update._replace(lr=update.lr[done:], step_size=update.step_size[done:],
                                sqrt_bc2=update.sqrt_bc2[done:], factor=update.factor[done:]),
                scratch, e1 - e0, reduction, loss_limit, BLOWUP_FACTOR)
            opt.iterations += steps
            history.history["lr"].extend(lr64[done:done + steps].tolist())
            if steps:
                lr_last = float(lr64[done + steps - 1])
            done += steps
            if bar is not None:
                bar.update(steps)
            model.grad_buffer[-1] = scratch.loss[0]
            code, epoch = int(scratch.status[0]), e0 + int(scratch.status[1])
            if code == 1:
                loop.diverged(model, buf.backup, epoch, opt.iterations, lr_last,
                              float(scratch.loss[0]), loss_limit)
            if code == 2:
                loop.diverged(model, buf.backup, epoch, opt.iterations, lr_last, float("nan"))
            _log_epochs(model, history, bar, e0, scratch.epoch_loss, epochs, validation_data,
                        verbose)
            if timing:
                tick = loop.lap(history, tick)
    finally:
        if bar is not None:
            bar.close()
    return history
