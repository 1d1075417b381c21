"""Whole epochs of training in one compiled function, for small all-Dense models.

On a model like the classic one-unit regression (100 x 1 data, batch 10), each optimizer update
costs a few microseconds of arithmetic and tens of microseconds of Python: calls, small
temporaries, dispatch. :func:`train_epochs` runs the entire loop -- batch gathering, forward
pass, MSE, backward pass, masked optimizer update, divergence checks, loss bookkeeping -- for a
chunk of epochs in one call of the compiled body ``_epochs``. The Python side (shuffling, the learning-rate schedule,
validation, printing, the history, which models qualify) is :mod:`minscale.train.compiled`.

Everything arrives in five named tuples of arrays and scalars (:class:`Batches`,
:class:`Network`, :class:`Buffers`, :class:`Update`, :class:`Scratch`), defined here at module
level because Numba's cache records argument types by their qualified name;
:func:`train_epochs` unpacks them in Python. Compiled functions are compiled on first use only
(``cache=True``: later processes load them from Numba's cache). The activations and
optimizer updates are the Numba backend's own per-element rules (:mod:`minscale.kernels._rules`),
the loss is :func:`mse_forward_backward`; the arithmetic is the general loop's, operation for
operation, except that matrix products with few terms are summed in index order here and by BLAS
kernels there (float64 results agree to about 1e-15 relative).

Imports only NumPy, Numba and :mod:`minscale.kernels`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from ._rules import act_backward_range, adam_range, bias_act_rows, momentum_range, sgd_range

__all__ = ["Batches", "Network", "Buffers", "Update", "Scratch", "SGD", "MOMENTUM", "ADAM",
           "REDUCTION_CODES", "SMALL_MATMUL", "small_matmul", "mse_forward_backward",
           "train_epochs"]

#: :attr:`Update.kind` codes
SGD, MOMENTUM, ADAM = 0, 1, 2

#: ``reduction`` codes of :func:`train_epochs`, by :data:`minscale.losses.REDUCTIONS` name
REDUCTION_CODES = {"mean": 0, "sum": 1, "half_sum": 2}

#: matrix products with at most this many multiply-adds run as plain loops; larger ones call
#: BLAS through np.dot (whose call costs about a microsecond)
SMALL_MATMUL = 4096


class Batches(NamedTuple):
    """The training data and this call's batch orders.

    Attributes
    ----------
    X, y : ndarray, shape (n, d_in) and (n, d_out), the model's dtype, C-contiguous
    orders : int64 ndarray, shape (n_epochs, n), or (n_epochs, 0) without shuffling
        Row ``orders[e, i]`` is the i-th sample of epoch e of this call.
    shuffle : bool
        False: every epoch takes the rows in order.
    batch_size : int, >= 1
        The last batch of an epoch may be smaller.
    """

    X: np.ndarray
    y: np.ndarray
    orders: np.ndarray
    shuffle: bool
    batch_size: int


class Network(NamedTuple):
    """Where each Dense layer's weights sit in the flat parameter buffer, and its activation.

    Attributes
    ----------
    dims : int64 ndarray, shape (L + 1,)
        Input width, then each layer's units.
    w_offset : int64 ndarray, shape (L,)
        Start of layer l's ``W`` (shape ``(dims[l], dims[l + 1])``, row-major) in ``params``.
    b_offset : int64 ndarray, shape (L,)
        Start of its bias, or -1 for a layer without one.
    act : int64 ndarray, shape (L,)
        Activation codes (:data:`minscale.kernels.ACTIVATION_CODES`).
    alpha : ndarray, shape (L,), the model's dtype
        leaky_relu slopes.
    one : scalar of the model's dtype
        1; its type fixes the dtype of the arithmetic.
    reg : bool ndarray, shape (L,)
        Whether layer l has an L2 kernel regularizer.
    l2 : float64 ndarray, shape (L,)
        Its strength: the batch loss gains ``l2 * sum(W**2)``.
    l2_coef : ndarray, shape (L,), the model's dtype
        ``2 * l2`` rounded to the dtype: ``dW`` gains ``l2_coef * W``.
    """

    dims: np.ndarray
    w_offset: np.ndarray
    b_offset: np.ndarray
    act: np.ndarray
    alpha: np.ndarray
    one: float
    reg: np.ndarray
    l2: np.ndarray
    l2_coef: np.ndarray


class Buffers(NamedTuple):
    """The model's flat buffers, written in place.

    Attributes
    ----------
    params, grads : ndarray, shape (P,), the model's dtype
    mask : bool ndarray, shape (P,), or (0,) when ``has_mask`` is False
        True = kept; pruned entries stay exactly 0.
    has_mask : bool
    backup : ndarray, shape (P,)
        Receives the parameters before every update (restored on divergence by the caller).
    """

    params: np.ndarray
    grads: np.ndarray
    mask: np.ndarray
    has_mask: bool
    backup: np.ndarray


class Update(NamedTuple):
    """The optimizer, with every per-update scalar precomputed.

    Attributes
    ----------
    kind : int
        :data:`SGD`, :data:`MOMENTUM` or :data:`ADAM`.
    lr : ndarray, shape (>= updates of the call,), the model's dtype
        Rate of the call's k-th update (SGD, momentum).
    step_size, sqrt_bc2 : ndarray, same shape, or (0,) unless Adam
        ``lr / (1 - beta_1 ** t)`` and ``sqrt(1 - beta_2 ** t)`` of the k-th update.
    beta_1, c1, beta_2, c2, epsilon : scalars of the dtype
        Adam's betas, ``1 - beta`` and epsilon (0 otherwise).
    momentum : scalar of the dtype
    nesterov : bool
    slot_1, slot_2 : ndarray, shape (P,) or (0,)
        The optimizer's state, written in place: the velocity (momentum), or Adam's m and v.
    weight_decay : scalar of the dtype
        Coupled decay: the gradient gains ``weight_decay * theta`` before the update (0: none).
    decay_all : bool
        Every parameter decays; else only where `decay` is True.
    decay : bool ndarray, shape (P,) or (0,)
    decoupled : bool
        Decoupled decay (AdamW): ``theta <- theta * factor[k]`` before the k-th update.
    factor : ndarray, shape (>= updates of the call,) or (0,), the dtype
        ``1 - lr * weight_decay`` of the k-th update.
    """

    kind: int
    lr: np.ndarray
    step_size: np.ndarray
    sqrt_bc2: np.ndarray
    beta_1: float
    c1: float
    beta_2: float
    c2: float
    epsilon: float
    momentum: float
    nesterov: bool
    slot_1: np.ndarray
    slot_2: np.ndarray
    weight_decay: float
    decay_all: bool
    decay: np.ndarray
    decoupled: bool
    factor: np.ndarray


class Scratch(NamedTuple):
    """Work buffers and results.

    Attributes
    ----------
    acts : ndarray, the model's dtype
        Every layer's activations for one batch, back to back (layer 0 = the input batch).
    act_offset : int64 ndarray, shape (L + 2,)
        Start of layer l's activations in `acts` (``batch_size * dims[l]`` entries each).
    grad_a, grad_b : ndarray, shape (batch_size * max(dims),)
        The backward pass's ping-pong gradients; `grad_b` holds the batch targets until then.
    loss : ndarray, shape (2,), the model's dtype
        Slot 0: the last batch loss; slot 1: scratch.
    epoch_loss : float64 ndarray, shape (n_epochs,)
        Receives each epoch's loss (every sample weighted equally for ``mean``).
    status : int64 ndarray, shape (3,)
        Receives ``(code, epoch, step)``: code 0 = done; 1 = a non-finite batch loss or one
        above the limit before update `step` (counted within the call); 2 = non-finite
        parameters after epoch `epoch` (within the call).
    """

    acts: np.ndarray
    act_offset: np.ndarray
    grad_a: np.ndarray
    grad_b: np.ndarray
    loss: np.ndarray
    epoch_loss: np.ndarray
    status: np.ndarray


@njit(cache=True)
def small_matmul(A, B, out, one):
    """``out = A @ B``: plain loops in index order for tiny products, BLAS otherwise.

    Parameters
    ----------
    A, B : ndarray, shape (m, k) and (k, n), one float dtype (views, any layout)
    out : ndarray, shape (m, n)
    one : scalar of the dtype
    """
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
def _matmul_flat(a, a0, ta, b, b0, tb, c, c0, m, k, n, one):
    """``C = op(A) @ op(B)`` on flat buffers, as :func:`small_matmul` computes it.

    ``A`` is stored row-major at ``a[a0:]`` as (m, k), or as (k, m) when `ta` (then op(A) is
    its transpose); ``B`` at ``b[b0:]`` as (k, n), or (n, k) when `tb`; ``C`` (m, n) goes to
    ``c[c0:]``. Tiny products run the same index-order loops as :func:`small_matmul` without
    building 2-D views: a ``reshape`` costs about 30 ns in compiled code, several times one
    update of the classic one-unit model. Larger ones reshape and call BLAS.
    """
    if m * n * k <= SMALL_MATMUL:
        zero = one - one
        for i in range(m):
            for j in range(n):
                s = zero
                for p in range(k):
                    av = a[a0 + p * m + i] if ta else a[a0 + i * k + p]
                    bv = b[b0 + j * k + p] if tb else b[b0 + p * n + j]
                    s += av * bv
                c[c0 + i * n + j] = s
    else:
        out = c[c0:c0 + m * n].reshape((m, n))
        if ta:
            np.dot(a[a0:a0 + m * k].reshape((k, m)).T, b[b0:b0 + k * n].reshape((k, n)), out)
        elif tb:
            np.dot(a[a0:a0 + m * k].reshape((m, k)), b[b0:b0 + k * n].reshape((n, k)).T, out)
        else:
            np.dot(a[a0:a0 + m * k].reshape((m, k)), b[b0:b0 + k * n].reshape((k, n)), out)


@njit(cache=True)
def mse_forward_backward(y_pred, y_true, d_pred, reduction, loss, one):
    """The batch's MSE and its gradient: the Numba twin of :func:`minscale.losses.mse` and
    :func:`minscale.losses.mse_grad`, with the same reduction codes (:data:`REDUCTION_CODES`).

    Parameters
    ----------
    y_pred, y_true : ndarray, shape (nb, d), one float dtype
    d_pred : ndarray, shape (nb, d)
        Receives dL/dy_pred: ``2 (y_pred - y) / (nb d)`` (mean, the factor rounded to the
        dtype as ``mse_grad`` rounds it), ``2 (y_pred - y)`` (sum), ``y_pred - y`` (half_sum).
    reduction : int
        0 mean, 1 sum, 2 half_sum.
    loss : ndarray, shape (2,), the dtype
        Slot 0 receives the loss rounded to the dtype; slot 1 is scratch.
    one : scalar of the dtype
        The squared errors are summed in the dtype, in row-major order.

    Returns
    -------
    float
        The loss, in float64 (``loss[0]`` widened).
    """
    nb, d = y_pred.shape
    total = one - one
    for r in range(nb):
        for j in range(d):
            diff = y_pred[r, j] - y_true[r, j]
            total += diff * diff
            d_pred[r, j] = diff
    count = nb * d
    if reduction == 0:
        loss[0] = np.float64(total) / count
        loss[1] = 2.0 / count  # rounded to the dtype, as mse_grad's scale
        scale = loss[1]
        for r in range(nb):
            for j in range(d):
                d_pred[r, j] = d_pred[r, j] * scale
    elif reduction == 1:
        loss[0] = np.float64(total)
        for r in range(nb):
            for j in range(d):
                d_pred[r, j] = d_pred[r, j] * 2
    else:
        loss[0] = np.float64(total) / 2
    return np.float64(loss[0])


@njit(cache=True)
def _all_finite(x):
    for i in range(x.size):
        if not np.isfinite(x[i]):
            return False
    return True


def train_epochs(batches, net, buf, update, scratch, n_epochs, reduction, loss_limit,
                 blowup_factor=math.inf):
    """Train `n_epochs` epochs, as :func:`minscale.train.loop.run` does one batch at a time.

    Per batch: gather the rows, forward (``_matmul_flat``, the flat-buffer form of
    :func:`small_matmul`, then ``bias_act_rows``), :func:`mse_forward_backward`, backward
    (``act_backward_range``, ``_matmul_flat``, the bias sums); then stop (status code 1) if
    the batch loss is not finite or ``batch_loss > loss_limit``, before the update; else copy
    the parameters to ``buf.backup`` and apply the update (``sgd_range``, ``momentum_range``
    or ``adam_range``).
    Per epoch: record the loss; stop (status code 2) if a parameter is not finite.

    Parameters
    ----------
    batches : Batches
    net : Network
    buf : Buffers
    update : Update
    scratch : Scratch
        ``scratch.epoch_loss`` must have at least `n_epochs` entries.
    n_epochs : int, >= 0
    reduction : int
        :data:`REDUCTION_CODES` of the model's loss reduction.
    loss_limit : float
        float64; :func:`minscale.train.history.divergence_limit` of the run's first batch loss,
        or NaN to derive it here from the first batch loss of this call (regularizer penalty
        included, as the general loop does): ``blowup_factor * loss`` when that loss is
        positive and finite, else inf.
    blowup_factor : float
        :data:`minscale.train.history.BLOWUP_FACTOR`, used only when `loss_limit` is NaN.

    Returns
    -------
    (int, float)
        Updates applied (index into the per-update arrays of `update` for the next call), and
        the loss limit (the one given, or the one derived from the first batch; NaN if the call
        ran no batch).

    Notes
    -----
    A plain Python function: it unpacks the named tuples and calls the compiled body
    (``_epochs``) with their fields. A compiled wrapper doing the same unpacking cost about
    5 s of compilation on a cold cache (Numba links the callee into the caller and LLVM
    optimizes the whole loop a second time) and saves nothing at run time: one call per
    chunk of epochs. The body takes the fields as separate arguments and runs as one
    function on purpose: reading the arrays out of the tuples in the loop's own function, or
    splitting the steps into compiled helpers, measured about 1.3x slower on the classic
    1000-update fit (W1) on a 2-core machine.
    """
    X, y, orders, shuffle, bs = batches
    dims, w_off, b_off, act, alpha, one, reg, l2, l2_coef = net
    params, grads, mask, has_mask, backup = buf
    kind, lrs, step_sizes, sqrt_bc2s, beta_1, c1, beta_2, c2, epsilon, momentum, nesterov, \
        slot_1, slot_2, weight_decay, decay_all, decay, decoupled, factor = update
    acts, aoff, grad_a, grad_b, loss, epoch_loss, status = scratch
    # None for the arrays the optimizer does not use: the body picks the update by these
    # arguments' types, so Numba compiles only that optimizer's branch (see _epochs)
    if kind == ADAM:
        lrs = None
    else:
        step_sizes = sqrt_bc2s = slot_2 = None
        if kind == SGD:
            slot_1 = None
    steps, limit = _epochs(
        X, y, orders, shuffle, bs, dims, w_off, b_off, act, alpha, one, params, grads, mask,
        has_mask, backup, kind, lrs, step_sizes, sqrt_bc2s, beta_1, c1, beta_2, c2, epsilon,
        momentum, nesterov, slot_1, slot_2, acts, aoff, grad_a, grad_b, loss, epoch_loss, status,
        n_epochs, reduction, float(loss_limit), reg, l2, l2_coef, weight_decay, decay_all, decay,
        decoupled, factor, float(blowup_factor))
    return int(steps), float(limit)


@njit(cache=True)
def _epochs(X, y, orders, shuffle, bs, dims, w_off, b_off, act, alpha, one, params, grads, mask,
            has_mask, backup, kind, lrs, step_sizes, sqrt_bc2s, beta_1, c1, beta_2, c2, epsilon,
            momentum, nesterov, slot_1, slot_2, acts, aoff, grad_a, grad_b, loss, epoch_loss,
            status, n_epochs, reduction, loss_limit, reg, l2, l2_coef, weight_decay, decay_all,
            decay, decoupled, factor, blowup_factor):
    """The body of :func:`train_epochs`, on the fields of its named tuples (in their order);
    returns ``(updates applied, loss limit)``.

    The update follows from which optimizer arrays are None, not from `kind`: Adam gets
    ``lrs=None``; momentum ``step_sizes``, ``sqrt_bc2s`` and ``slot_2`` None; SGD those and
    ``slot_1`` too (:func:`train_epochs` sets them). A caller must pass them so: with every
    array given, Adam's update and then momentum's would both run.
    """
    n, d_out, n_layers, P = X.shape[0], y.shape[1], act.size, params.size
    n_batches = (n + bs - 1) // bs
    step = 0
    status[0] = 0
    # run-time values, not literals: Numba compiles a callee once per literal argument, and
    # the three products below would compile _matmul_flat three times (about 1.5 s more of a
    # cold start than one compile, for no measured gain)
    no, yes, start = np.bool_(False), np.bool_(True), np.int64(0)
    for e in range(n_epochs):
        loss_total = 0.0
        for bi in range(n_batches):
            lo = bi * bs
            hi = min(n, lo + bs)
            nb = hi - lo
            # gather the batch into layer 0's activations and the targets into grad_b
            d0, a00 = dims[0], aoff[0]
            for r in range(nb):
                src = orders[e, lo + r] if shuffle else lo + r
                for j in range(d0):
                    acts[a00 + r * d0 + j] = X[src, j]
                for j in range(d_out):
                    grad_b[r * d_out + j] = y[src, j]
            Yb = grad_b[:nb * d_out].reshape((nb, d_out))
            # forward
            for li in range(n_layers):
                d_in, d_o = dims[li], dims[li + 1]
                _matmul_flat(acts, aoff[li], no, params, w_off[li], no, acts, aoff[li + 1],
                             nb, d_in, d_o, one)
                Z = acts[aoff[li + 1]:aoff[li + 1] + nb * d_o].reshape((nb, d_o))
                b = params[b_off[li]:b_off[li] + d_o] if b_off[li] >= 0 else params[:0]
                bias_act_rows(Z, b, act[li], alpha[li], one, 0, nb)
            # loss, and dL/dy_pred into grad_a
            Yh = acts[aoff[n_layers]:aoff[n_layers] + nb * d_out].reshape((nb, d_out))
            D = grad_a[:nb * d_out].reshape((nb, d_out))
            batch_loss = mse_forward_backward(Yh, Yb, D, reduction, loss, one)
            # backward: D holds dL/da of layer li; ping-pong between grad_a and grad_b
            cur_is_a = True
            for li in range(n_layers - 1, -1, -1):
                d_in, d_o = dims[li], dims[li + 1]
                D_flat = grad_a[:nb * d_o] if cur_is_a else grad_b[:nb * d_o]
                if act[li] != 0:
                    A_out = acts[aoff[li + 1]:aoff[li + 1] + nb * d_o]
                    act_backward_range(A_out, D_flat, act[li], alpha[li], one, D_flat, 0,
                                       nb * d_o)
                # dW = A_in.T @ D
                _matmul_flat(acts, aoff[li], yes, D_flat, start, no, grads, w_off[li], d_in, nb,
                             d_o, one)
                if b_off[li] >= 0:
                    db = grads[b_off[li]:b_off[li] + d_o]
                    for j in range(d_o):
                        db[j] = D_flat[j]
                    for r in range(1, nb):
                        for j in range(d_o):
                            db[j] = db[j] + D_flat[r * d_o + j]
                if li > 0:
                    # dL/da of the layer below = D @ W.T
                    D_next = grad_b if cur_is_a else grad_a
                    _matmul_flat(D_flat, start, no, params, w_off[li], yes, D_next, start, nb, d_o,
                                 d_in, one)
                    cur_is_a = not cur_is_a
            # the L2 kernel penalties: gradient 2 * l2 * W, loss l2 * sum(W**2)
            penalty = 0.0
            has_reg = False
            for li in range(n_layers):
                if reg[li]:
                    has_reg = True
                    n_w = dims[li] * dims[li + 1]
                    sq = one - one
                    for i in range(w_off[li], w_off[li] + n_w):
                        grads[i] = grads[i] + l2_coef[li] * params[i]
                        sq += params[i] * params[i]
                    penalty += l2[li] * np.float64(sq)
            if has_reg:
                loss[0] = loss[0] + penalty
                batch_loss = np.float64(loss[0])
            if loss_limit != loss_limit:
                # the first batch of the run: divergence_limit of its loss
                ok = batch_loss > 0 and batch_loss < np.inf
                loss_limit = blowup_factor * batch_loss if ok else np.inf
            if not np.isfinite(batch_loss) or batch_loss > loss_limit:
                status[0], status[1], status[2] = 1, e, step
                return step, loss_limit
            # a loop, not backup[:] = params: slice assignment compiles a shape-mismatch message
            # (string formatting, about 2 s of a cold start) for a case that cannot happen here
            for i in range(P):
                backup[i] = params[i]
            if decoupled:
                f = factor[step]
                for i in range(P):
                    if decay_all or decay[i]:
                        params[i] = params[i] * f
            elif weight_decay != 0:
                for i in range(P):
                    if decay_all or decay[i]:
                        grads[i] = grads[i] + weight_decay * params[i]
            # chosen by which arrays are None, not by `kind`: Numba drops a branch testing
            # `x is not None` (or `x is None`) for an argument that is None by type before it
            # compiles, so an Adam run compiles no SGD or momentum update
            if step_sizes is not None:
                adam_range(params, grads, slot_1, slot_2, step_sizes[step], beta_1, c1, beta_2,
                           c2, sqrt_bc2s[step], epsilon, mask, has_mask, one, 0, P)
            if lrs is not None:
                if slot_1 is None:
                    sgd_range(params, grads, lrs[step], mask, has_mask, one, 0, P)
                else:
                    momentum_range(params, grads, slot_1, lrs[step], momentum, nesterov, mask,
                                   has_mask, one, 0, P)
            step += 1
            loss_total += batch_loss * nb if reduction == 0 else batch_loss
        epoch_loss[e] = loss_total / n if reduction == 0 else loss_total
        if not _all_finite(params):
            status[0], status[1], status[2] = 2, e, step
            return step, loss_limit
    return step, loss_limit
