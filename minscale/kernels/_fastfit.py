"""Whole epochs of training in one compiled function, for small all-Dense models.

On a model like the classic one-unit regression (100 x 1 data, batch 10), each optimizer update
costs a few microseconds of arithmetic and tens of microseconds of Python: calls, small
temporaries, dispatch. :func:`run` moves the entire loop -- batch gathering, forward pass, MSE,
backward pass, masked optimizer update, divergence checks, loss bookkeeping -- into one
``@njit`` function per chunk of epochs, and keeps in Python only what must be there: the
shuffling (``numpy.random.Generator.permutation``, so the batches are those of the general loop),
the learning-rate schedule (evaluated once for every step, vectorized), validation, printing
and the history.

:func:`supports` says when it applies: the numba backend; Dense layers without quantization
hooks; loss ``mse`` (any reduction); :class:`~minscale.optim.SGD` (any momentum, Nesterov or
not) or :class:`~minscale.optim.Adam` with a float or a built-in schedule; no pruning schedule,
no callbacks, one process. Masks of an already pruned model are honoured. Everything else runs
the general loop of :mod:`minscale.train`.

Results equal the general loop's up to floating-point summation order (matrix products with
few terms are summed in index order here and by BLAS kernels there): float64 parameters,
optimizer state and history agree to about 1e-15 relative, far inside the 1e-12 the tests ask.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .. import optim as _optim
from .. import schedules as _schedules
from . import ACTIVATION_CODES
from ._rules import adam_range as _adam_range
from ._rules import momentum_range as _momentum_range
from ._rules import sgd_range as _sgd_range

__all__ = ["supports", "run", "learning_rates", "bias_corrections"]

_SCHEDULES = (_schedules.Constant, _schedules.InverseTimeDecay, _schedules.ExponentialDecay,
              _schedules.PolynomialDecay)
_REDUCTION_CODES = {"mean": 0, "sum": 1, "half_sum": 2}
#: Shuffled row indices one compiled call receives at most (int64: 32 MiB); epochs beyond
#: that go to further calls, which continue the same generator and schedule
_ORDER_ENTRIES = 2**22
_OPT_SGD, _OPT_MOMENTUM, _OPT_ADAM = 0, 1, 2

#: matrix products with at most this many multiply-adds run as plain loops; larger ones call
#: BLAS through np.dot (whose call costs about a microsecond)
SMALL_MATMUL = 4096


def supports(model, epochs=1, batch_size=32, shuffle=True, seed=None, validation_data=None,
             verbose=0, callbacks=(), pruning=None, pruning_method="magnitude"):
    """Whether :func:`run` can train `model` with these :func:`minscale.train.fit` options.

    Parameters
    ----------
    model : Sequential, compiled and built
    epochs, batch_size, shuffle, seed, validation_data, verbose, callbacks, pruning, \
pruning_method
        As :func:`minscale.train.fit` (after its checks).

    Returns
    -------
    bool
        True when the backend is numba, no callback or pruning schedule is given, the loss is
        mse, the optimizer is exactly SGD or Adam with a float or built-in schedule, and every
        layer is a Dense layer without quantization hooks.
    """
    from . import get_backend
    from ..layers import Dense

    if get_backend() != "numba" or callbacks or pruning is not None:
        return False
    if model.loss != "mse" or model.reduction not in _REDUCTION_CODES:
        return False
    opt = model.optimizer
    if type(opt) not in (_optim.SGD, _optim.Adam):
        return False
    if type(opt.learning_rate) not in _SCHEDULES:
        return False
    for layer in model.layers:
        if type(layer) is not Dense or layer.kernel_quantizer is not None \
                or layer.output_quantizer is not None:
            return False
        if layer.activation not in ACTIVATION_CODES:
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


def bias_corrections(beta, t0, count):
    """``1 - beta ** t`` for ``t = t0 .. t0 + count - 1``, as :func:`minscale.optim.adam_step`
    computes each one.

    Parameters
    ----------
    beta : float, in [0, 1)
    t0 : int, >= 1
        First update number (Adam counts from 1).
    count : int, >= 0

    Returns
    -------
    float64 ndarray, shape (count,)

    Notes
    -----
    The same Python expression ``1 - beta ** t`` (a float to an int power: the C library's
    ``pow``) as the general loop evaluates at each step, so the two agree bit for bit on any
    machine; a compiled or vectorized power could be a different implementation of ``pow``.
    Costs about 0.1 us an update, once per run.
    """
    beta = float(beta)
    return np.array([1 - beta ** t for t in range(t0, t0 + count)], dtype=np.float64)


# --- the compiled loop ---------------------------------------------------------------------

@njit(cache=True)
def _matmul(A, B, out, one):
    """out = A @ B; plain loops for tiny products, BLAS otherwise."""
    m, k = A.shape
    n = B.shape[1]
    if m * n * k <= SMALL_MATMUL:
        zero = one - one
        for i in range(m):
            for j in range(n):
                s = zero
                for p in range(k):
                    s += A[i, p] * B[p, j]
                out[i, j] = s
    else:
        np.dot(A, B, out)


@njit(cache=True)
def _bias_act(Z, b, has_b, act, alpha, one):
    nb, d = Z.shape
    zero = one - one
    for i in range(nb):
        for j in range(d):
            v = Z[i, j]
            if has_b:
                v = v + b[j]
            if act == 1:
                v = v if (v >= 0 or v != v) else zero
            elif act == 2:
                v = v * (one if v > 0 else alpha)
            elif act == 3:
                v = np.tanh(v)
            elif act == 4:
                e = np.exp(-np.abs(v))
                v = (one if v >= 0 else e) / (one + e)
            Z[i, j] = v


@njit(cache=True)
def _act_backward(A, D, act, alpha, one):
    nb, d = A.shape
    zero = one - one
    if act == 0:
        return
    for i in range(nb):
        for j in range(d):
            a = A[i, j]
            if act == 1:
                D[i, j] = D[i, j] * (one if a > 0 else zero)
            elif act == 2:
                D[i, j] = D[i, j] * (one if a > 0 else alpha)
            elif act == 3:
                D[i, j] = D[i, j] * (one - a * a)
            else:
                D[i, j] = D[i, j] * (a * (one - a))


@njit(cache=True)
def _all_finite(x):
    for i in range(x.size):
        if not np.isfinite(x[i]):
            return False
    return True


@njit(cache=True)
def _train_epochs(X, y, orders, shuffle, n_epochs, bs, dims, w_off, b_off, acts, alphas,
                  params, grads, mask, has_mask, opt_kind, lrs, aux1, aux2, beta_1, c1, beta_2,
                  c2, epsilon, momentum, nesterov, s1, s2, reduction, one, backup, abuf, aoff,
                  dbuf1, dbuf2, lossbuf, epoch_loss, loss_limit, status):
    """Train n_epochs epochs; returns the number of updates applied.

    status receives (code, epoch, step) with code 0 = done, 1 = non-finite batch loss or one
    above `loss_limit` (float64) before update `step` (counted within this call), 2 =
    non-finite parameters after epoch `epoch`;
    lossbuf (the dtype, 2 slots) holds the last batch loss in slot 0, scratch in slot 1.
    """
    n = X.shape[0]
    d_out = y.shape[1]
    n_layers = acts.size
    n_batches = (n + bs - 1) // bs
    step = 0
    status[0] = 0
    for e in range(n_epochs):
        loss_total = 0.0
        for bi in range(n_batches):
            lo = bi * bs
            hi = min(n, lo + bs)
            nb = hi - lo
            # gather the batch into layer 0's activation buffer
            A0 = abuf[aoff[0]:aoff[0] + nb * dims[0]].reshape((nb, dims[0]))
            Yb = dbuf2[:nb * d_out].reshape((nb, d_out))
            for r in range(nb):
                src = orders[e, lo + r] if shuffle else lo + r
                for j in range(dims[0]):
                    A0[r, j] = X[src, j]
                for j in range(d_out):
                    Yb[r, j] = y[src, j]
            # forward
            for li in range(n_layers):
                d_in = dims[li]
                d_o = dims[li + 1]
                Ain = abuf[aoff[li]:aoff[li] + nb * d_in].reshape((nb, d_in))
                Z = abuf[aoff[li + 1]:aoff[li + 1] + nb * d_o].reshape((nb, d_o))
                W = params[w_off[li]:w_off[li] + d_in * d_o].reshape((d_in, d_o))
                _matmul(Ain, W, Z, one)
                has_b = b_off[li] >= 0
                b = params[b_off[li]:b_off[li] + d_o] if has_b else params[:0]
                _bias_act(Z, b, has_b, acts[li], alphas[li], one)
            # loss and dL/dy_hat (into dbuf1), as minscale.losses.mse / mse_grad
            Yh = abuf[aoff[n_layers]:aoff[n_layers] + nb * d_out].reshape((nb, d_out))
            D = dbuf1[:nb * d_out].reshape((nb, d_out))
            total = one - one
            for r in range(nb):
                for j in range(d_out):
                    diff = Yh[r, j] - Yb[r, j]
                    total += diff * diff
                    D[r, j] = diff
            count = nb * d_out
            if reduction == 0:
                lossbuf[0] = np.float64(total) / count
                lossbuf[1] = 2.0 / count  # rounded to the dtype, as mse_grad's scale
                scale = lossbuf[1]
                for r in range(nb):
                    for j in range(d_out):
                        D[r, j] = D[r, j] * scale
            elif reduction == 1:
                lossbuf[0] = np.float64(total)
                for r in range(nb):
                    for j in range(d_out):
                        D[r, j] = D[r, j] * 2
            else:
                lossbuf[0] = np.float64(total) / 2
            batch_loss = np.float64(lossbuf[0])
            # backward: D holds dL/da of layer li; ping-pong between dbuf1 and dbuf2
            cur_is_1 = True
            for li in range(n_layers - 1, -1, -1):
                d_in = dims[li]
                d_o = dims[li + 1]
                Ain = abuf[aoff[li]:aoff[li] + nb * d_in].reshape((nb, d_in))
                Aout = abuf[aoff[li + 1]:aoff[li + 1] + nb * d_o].reshape((nb, d_o))
                if cur_is_1:
                    D = dbuf1[:nb * d_o].reshape((nb, d_o))
                else:
                    D = dbuf2[:nb * d_o].reshape((nb, d_o))
                _act_backward(Aout, D, acts[li], alphas[li], one)
                dW = grads[w_off[li]:w_off[li] + d_in * d_o].reshape((d_in, d_o))
                _matmul(Ain.T, D, dW, one)
                if b_off[li] >= 0:
                    db = grads[b_off[li]:b_off[li] + d_o]
                    for j in range(d_o):
                        db[j] = D[0, j]
                    for r in range(1, nb):
                        for j in range(d_o):
                            db[j] = db[j] + D[r, j]
                if li > 0:
                    W = params[w_off[li]:w_off[li] + d_in * d_o].reshape((d_in, d_o))
                    if cur_is_1:
                        Dn = dbuf2[:nb * d_in].reshape((nb, d_in))
                    else:
                        Dn = dbuf1[:nb * d_in].reshape((nb, d_in))
                    _matmul(D, W.T, Dn, one)
                    cur_is_1 = not cur_is_1
            if not np.isfinite(batch_loss) or batch_loss > loss_limit:
                status[0] = 1
                status[1] = e
                status[2] = step
                return step
            backup[:] = params
            P = params.size
            if opt_kind == 0:
                _sgd_range(params, grads, lrs[step], mask, has_mask, one, 0, P)
            elif opt_kind == 1:
                _momentum_range(params, grads, s1, lrs[step], momentum, nesterov, mask, has_mask,
                                one, 0, P)
            else:
                _adam_range(params, grads, s1, s2, aux1[step], beta_1, c1, beta_2, c2,
                            aux2[step], epsilon, mask, has_mask, one, 0, P)
            step += 1
            loss_total += batch_loss * nb if reduction == 0 else batch_loss
        epoch_loss[e] = loss_total / n if reduction == 0 else loss_total
        if not _all_finite(params):
            status[0] = 2
            status[1] = e
            status[2] = step
            return step
    return step


# --- the Python driver ---------------------------------------------------------------------

def _layout(model):
    layers = model.layers
    dims = np.array([model.input_dim] + [layer.units for layer in layers], dtype=np.int64)
    w_off = np.empty(len(layers), dtype=np.int64)
    b_off = np.empty(len(layers), dtype=np.int64)
    for i, (layer, (start, _)) in enumerate(zip(layers, model.layer_slices())):
        w_off[i] = start
        b_off[i] = start + layer.W.size if layer.use_bias else -1
    acts = np.array([ACTIVATION_CODES[layer.activation] for layer in layers], dtype=np.int64)
    alphas = np.array([layer.alpha for layer in layers], dtype=model.dtype)
    return dims, w_off, b_off, acts, alphas


def run(model, X, y, epochs, batch_size, shuffle, seed, validation_data, verbose, callbacks=(),
        pruning=None, pruning_method="magnitude"):
    """Train as :func:`minscale.train.run` does, whole epochs per compiled call.

    Parameters
    ----------
    model : Sequential
        Compiled and built; :func:`supports` must be True for these options.
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype, C-contiguous
    epochs, batch_size, shuffle, seed, validation_data, verbose
        As :func:`minscale.train.fit`. Validation and printing happen in Python after each
        epoch (the compiled call then covers one epoch); otherwise all epochs run in one call.
    callbacks, pruning, pruning_method
        Accepted for the signature of :func:`minscale.train.run`; must be empty / None.

    Returns
    -------
    History
        The same keys and values as the general loop: per-epoch ``loss`` (every sample weighted
        equally), per-step ``lr``, ``val_*`` when validating.

    Raises
    ------
    DivergenceError
        As the general loop: on a non-finite batch loss (before that step's update) or
        non-finite parameters at the end of an epoch, with the same message, epoch, step and
        learning rate; parameters are restored from the copy taken before the last update when
        they are not finite. ``optimizer.iterations`` and its state count the updates applied.
    """
    from .. import train as _train

    if callbacks or pruning is not None:
        raise ValueError("the compiled fit loop takes no callbacks and no pruning schedule")
    dtype = model.dtype
    dt = dtype.type
    opt = model.optimizer
    n = X.shape[0]
    n_batches = math.ceil(n / batch_size)
    total = epochs * n_batches
    step0 = opt.iterations
    lr_last = opt.current_learning_rate()  # raises as the general loop does on a bad schedule
    lr64 = learning_rates(opt.learning_rate, step0, total)
    if total and (not np.all(np.isfinite(lr64)) or lr64.min() < 0):
        # a rate the optimizer would reject: let the general loop raise at the right step
        return _train.loop.run(model, X, y, epochs, batch_size, shuffle, seed, validation_data,
                               verbose, list(callbacks), pruning, pruning_method)
    lrs = lr64.astype(dtype)
    empty = np.zeros(0, dtype=dtype)
    aux1 = aux2 = empty
    s1 = s2 = empty
    beta_1 = c1 = beta_2 = c2 = epsilon = momentum = dt(0)
    nesterov = False
    if isinstance(opt, _optim.Adam):
        opt_kind = _OPT_ADAM
        bc1 = bias_corrections(opt.beta_1, step0 + 1, total).astype(dtype)
        bc2 = bias_corrections(opt.beta_2, step0 + 1, total).astype(dtype)
        aux1 = lrs / bc1
        aux2 = np.sqrt(bc2)
        beta_1, beta_2 = dt(opt.beta_1), dt(opt.beta_2)
        c1, c2 = dt(1) - beta_1, dt(1) - beta_2
        epsilon = dt(opt.epsilon)
        if total:
            s1 = opt._buffer("m", model.params)
            s2 = opt._buffer("v", model.params)
    elif opt.momentum:
        opt_kind = _OPT_MOMENTUM
        momentum = dt(opt.momentum)
        nesterov = bool(opt.nesterov)
        if total:
            s1 = opt._buffer("velocity", model.params)
    else:
        opt_kind = _OPT_SGD
    has_mask = not model.mask.all()
    mask = model.mask if has_mask else np.zeros(0, dtype=np.bool_)
    dims, w_off, b_off, acts, alphas = _layout(model)
    bs = int(min(batch_size, n))
    abuf = np.empty(int(sum(bs * d for d in dims)), dtype=dtype)
    aoff = np.concatenate([[0], np.cumsum([bs * d for d in dims])]).astype(np.int64)
    dmax = int(dims.max())
    dbuf1 = np.empty(bs * dmax, dtype=dtype)
    dbuf2 = np.empty(bs * dmax, dtype=dtype)
    lossbuf_dt = np.zeros(2, dtype=dtype)
    backup = model.params.copy()
    status = np.zeros(3, dtype=np.int64)
    history = _train.History()
    rng = np.random.default_rng(seed)
    P = model.params.size
    per_call = 1 if (validation_data is not None or verbose) else max(1, epochs)
    loss_limit = None  # from the first batch, before any update, as the general loop sets it
    bar = _train.progress.progress_bar(verbose, total)
    done = 0  # updates applied in this run
    # never more than _ORDER_ENTRIES shuffled row indices per call: a long run must not
    # allocate an (epochs, n) order array up front
    per_call = min(per_call, max(1, _ORDER_ENTRIES // max(n, 1)))
    try:
        for e0 in range(0, epochs, per_call):
            e1 = min(epochs, e0 + per_call)
            if shuffle:
                orders = np.stack([rng.permutation(n) for _ in range(e0, e1)])
            else:
                orders = np.zeros((e1 - e0, 0), dtype=np.int64)
            epoch_loss = np.zeros(e1 - e0, dtype=np.float64)
            if loss_limit is None:
                rows = orders[0, :bs] if shuffle else slice(0, bs)
                start = model.evaluate(X[rows], y[rows], return_dict=True)["loss"]
                loss_limit = _train.divergence_limit(start)
            sl = slice(done, total)
            steps = _train_epochs(
                X, y, orders, bool(shuffle), e1 - e0, int(batch_size), dims, w_off, b_off, acts,
                alphas, model.params, model.grads, mask, has_mask, opt_kind, lrs[sl],
                aux1[sl] if aux1.size else aux1, aux2[sl] if aux2.size else aux2, beta_1, c1,
                beta_2, c2, epsilon, momentum, nesterov, s1, s2,
                _REDUCTION_CODES[model.reduction], dt(1), backup, abuf, aoff, dbuf1, dbuf2,
                lossbuf_dt, epoch_loss, loss_limit, status)
            opt.iterations += int(steps)
            history.history["lr"].extend(lr64[done:done + steps].tolist())
            if steps:
                lr_last = float(lr64[done + steps - 1])
            done += int(steps)
            if bar is not None:
                bar.update(int(steps))
            code = int(status[0])
            if code:
                epoch = e0 + int(status[1])
                model._gradbuf[P] = lossbuf_dt[0]
                if code == 1:
                    _train.loop.diverged(model, backup, epoch, opt.iterations, lr_last,
                                     float(lossbuf_dt[0]), loss_limit)
                _train.loop.diverged(model, backup, epoch, opt.iterations, lr_last, float("nan"))
            model._gradbuf[P] = lossbuf_dt[0]
            for j, epoch in enumerate(range(e0, e1)):
                logs = {"loss": float(epoch_loss[j])}
                if validation_data is not None:
                    val = model.evaluate(*validation_data, return_dict=True)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                history.epoch.append(epoch)
                for key, value in logs.items():
                    history.history.setdefault(key, []).append(value)
                if verbose:
                    _train.progress.report_epoch(bar, epoch, epochs, logs, verbose)
    finally:
        if bar is not None:
            bar.close()
    return history
