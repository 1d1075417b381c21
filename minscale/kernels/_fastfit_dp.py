"""Whole epochs of synchronous data-parallel training in one compiled function per worker.

The data-parallel twin of :mod:`minscale.kernels._fastfit`: every worker runs
:func:`train_epochs_dp` over the same global batches; per batch it takes its contiguous shard
(the split of ``minscale.parallel.shard_bounds``), computes the shard's gradient and loss
scaled by the *global* batch size (:func:`mse_shard`), publishes them in its slot of the
shared-memory group (:mod:`minscale.kernels._collectives`), sums the loss and *its slice* of
the gradient over the ranks in rank order (reduce-scatter), adds the L2 penalties once, checks
for divergence, updates its slice of the parameters and optimizer state (ZeRO stage 1,
Rajbhandari et al. 2020), and gathers the other ranks' updated slices (all-gather) -- two
barriers and no Python per step. Every value is summed in rank order, so every rank holds the
same bits; :func:`allgather_slices` makes the optimizer state whole after a call. The
arithmetic is that of the general data-parallel loop (:func:`minscale.train.loop.run` with a
communicator), operation for operation, except that matrix products with few terms are summed
in index order (as in the single-process compiled loop).

The body repeats :func:`minscale.kernels._fastfit.train_epochs`'s on purpose (its loop is one
function for speed, see there) with these changes: the shard rows, :func:`mse_shard`, the
reduce-scatter before the penalties, the update of one slice followed by the all-gather, and
an empty shard (more ranks than rows in a short last batch) contributing zero gradients. The per-element rules, the matrix product and the named
tuples are imported from ``_fastfit`` and ``_rules``.

Imports only NumPy, Numba and :mod:`minscale.kernels`.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._collectives import (
    ABORTED,
    GENERATION,
    OK,
    PUBLISHED,
    STATUS_ABORTED,
    _reduce_rows,
    _slice,
    load_acquire,
    store_release,
    wait_all,
)
from ._fastfit import MOMENTUM, SGD, _all_finite, small_matmul
from ._rules import act_backward_range, adam_range, bias_act_rows, momentum_range, sgd_range

__all__ = ["mse_shard", "train_epochs_dp", "allgather_slices"]


@njit(cache=True)
def mse_shard(y_pred, y_true, d_pred, reduction, loss, one, count):
    """A shard's MSE and its gradient, divided by the global `count` (mean reduction):
    the Numba twin of :func:`minscale.losses.mse` and :func:`minscale.losses.mse_grad` with
    ``n_total`` (``count = n_total * d``).

    Parameters
    ----------
    y_pred, y_true : ndarray, shape (nb, d), one float dtype (nb may be 0)
    d_pred : ndarray, shape (nb, d)
        Receives dL/dy_pred: ``(2 / count)`` rounded to the dtype times ``(y_pred - y)``
        (mean), ``2 (y_pred - y)`` (sum), ``y_pred - y`` (half_sum).
    reduction : int
        0 mean, 1 sum, 2 half_sum.
    loss : ndarray, shape (2,), the dtype
        Slot 0 receives the shard's loss rounded to the dtype; slot 1 is scratch.
    one : scalar of the dtype
    count : int, >= 1
        Values of the whole batch (rows times outputs).
    """
    nb, d = y_pred.shape
    total = one - one
    for r in range(nb):
        for j in range(d):
            diff = y_pred[r, j] - y_true[r, j]
            total += diff * diff
            d_pred[r, j] = diff
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


@njit(cache=True)
def train_epochs_dp(batches, net, buf, update, scratch, n_epochs, reduction, loss_limit, slots,
                    ctl, me, rank, size, gradbuf, status):
    """Train `n_epochs` epochs as one rank of a synchronous data-parallel group.

    Parameters
    ----------
    batches, net, buf, update, scratch, n_epochs, reduction, loss_limit
        As :func:`minscale.kernels._fastfit.train_epochs`; `batches` holds the whole data
        and the global orders (identical on every rank).
    slots, ctl, me
        The group (:class:`minscale.kernels._collectives.Group`), slots in the model's dtype.
    rank, size : int
        This rank and the group size.
    gradbuf : ndarray, shape (P + 1,)
        The model's gradient buffer: ``buf.grads`` is ``gradbuf[:P]``, the batch loss rides
        in ``gradbuf[P]``.
    status : int64 ndarray, shape (4,)
        Receives ``(code, epoch, step, comm_status)``: codes 0-2 as ``scratch.status`` of
        ``train_epochs``; 3 = the allreduce failed or the group was aborted before update
        `step`, with the collectives' status code in ``comm_status``.

    Returns
    -------
    int
        Updates applied.
    """
    X, y, orders, shuffle, bs = batches
    dims, w_off, b_off, act, alpha, one, reg, l2, l2_coef = net
    params, grads, mask, has_mask, backup = buf
    kind, lrs, step_sizes, sqrt_bc2s, beta_1, c1, beta_2, c2, epsilon, momentum, nesterov, \
        slot_1, slot_2, weight_decay, decay_all, decay, decoupled, factor = update
    acts, aoff, grad_a, grad_b, loss, epoch_loss, _ = scratch
    return _epochs_dp(X, y, orders, shuffle, bs, dims, w_off, b_off, act, alpha, one, params,
                      grads, mask, has_mask, backup, kind, lrs, step_sizes, sqrt_bc2s, beta_1,
                      c1, beta_2, c2, epsilon, momentum, nesterov, slot_1, slot_2, acts, aoff,
                      grad_a, grad_b, loss, epoch_loss, status, n_epochs, reduction,
                      loss_limit, reg, l2, l2_coef, weight_decay, decay_all, decay, decoupled,
                      factor, slots, ctl, me, rank, size, gradbuf)


@njit(cache=True)
def _epochs_dp(X, y, orders, shuffle, bs, dims, w_off, b_off, act, alpha, one, params, grads,
               mask, has_mask, backup, kind, lrs, step_sizes, sqrt_bc2s, beta_1, c1, beta_2, c2,
               epsilon, momentum, nesterov, slot_1, slot_2, acts, aoff, grad_a, grad_b, loss,
               epoch_loss, status, n_epochs, reduction, loss_limit, reg, l2, l2_coef,
               weight_decay, decay_all, decay, decoupled, factor, slots, ctl, me, rank, size,
               gradbuf):
    """The body of :func:`train_epochs_dp`, on the fields of its named tuples."""
    n, d_out, n_layers, P = X.shape[0], y.shape[1], act.size, params.size
    n_batches = (n + bs - 1) // bs
    align = max(1, 64 // params.itemsize)
    empty = params[:0]
    step = 0
    status[0] = 0
    for e in range(n_epochs):
        loss_total = 0.0
        for bi in range(n_batches):
            lo = bi * bs
            hi = min(n, lo + bs)
            n_total = hi - lo
            # this rank's contiguous shard of the batch (minscale.parallel.shard_bounds)
            q, rem = n_total // size, n_total % size
            s_lo = lo + rank * q + min(rank, rem)
            nb = q + (1 if rank < rem else 0)
            if load_acquire(ctl, ABORTED) != 0:
                status[0], status[1], status[2], status[3] = 3, e, step, STATUS_ABORTED
                return step
            # gather the batch into layer 0's activations and the targets into grad_b
            A0 = acts[aoff[0]:aoff[0] + nb * dims[0]].reshape((nb, dims[0]))
            Yb = grad_b[:nb * d_out].reshape((nb, d_out))
            for r in range(nb):
                src = orders[e, s_lo + r] if shuffle else s_lo + r
                for j in range(dims[0]):
                    A0[r, j] = X[src, j]
                for j in range(d_out):
                    Yb[r, j] = y[src, j]
            # forward
            for li in range(n_layers):
                d_in, d_o = dims[li], dims[li + 1]
                A_in = acts[aoff[li]:aoff[li] + nb * d_in].reshape((nb, d_in))
                Z = acts[aoff[li + 1]:aoff[li + 1] + nb * d_o].reshape((nb, d_o))
                W = params[w_off[li]:w_off[li] + d_in * d_o].reshape((d_in, d_o))
                small_matmul(A_in, W, Z, one)
                b = params[b_off[li]:b_off[li] + d_o] if b_off[li] >= 0 else params[:0]
                bias_act_rows(Z, b, act[li], alpha[li], one, 0, nb)
            # loss, and dL/dy_pred into grad_a
            Yh = acts[aoff[n_layers]:aoff[n_layers] + nb * d_out].reshape((nb, d_out))
            D = grad_a[:nb * d_out].reshape((nb, d_out))
            mse_shard(Yh, Yb, D, reduction, loss, one, n_total * d_out)
            # backward: D holds dL/da of layer li; ping-pong between grad_a and grad_b
            cur_is_a = True
            for li in range(n_layers - 1, -1, -1):
                d_in, d_o = dims[li], dims[li + 1]
                A_in = acts[aoff[li]:aoff[li] + nb * d_in].reshape((nb, d_in))
                D_flat = grad_a[:nb * d_o] if cur_is_a else grad_b[:nb * d_o]
                if act[li] != 0:
                    A_out = acts[aoff[li + 1]:aoff[li + 1] + nb * d_o]
                    act_backward_range(A_out, D_flat, act[li], alpha[li], one, D_flat, 0,
                                       nb * d_o)
                D = D_flat.reshape((nb, d_o))
                dW = grads[w_off[li]:w_off[li] + d_in * d_o].reshape((d_in, d_o))
                small_matmul(A_in.T, D, dW, one)
                if b_off[li] >= 0:
                    db = grads[b_off[li]:b_off[li] + d_o]
                    for j in range(d_o):
                        db[j] = D[0, j] if nb > 0 else one - one
                    for r in range(1, nb):
                        for j in range(d_o):
                            db[j] = db[j] + D[r, j]
                if li > 0:
                    W = params[w_off[li]:w_off[li] + d_in * d_o].reshape((d_in, d_o))
                    D_next = grad_b if cur_is_a else grad_a
                    small_matmul(D, W.T, D_next[:nb * d_in].reshape((nb, d_in)), one)
                    cur_is_a = not cur_is_a
            # publish this shard's gradients and loss (slot set g % 2, as every collective)
            g = ctl[me + GENERATION]
            ctl[me + GENERATION] = g + 1
            sl = g % 2
            base = ctl[me + PUBLISHED]
            mine = slots[sl, rank]
            for i in range(np.uint64(0), np.uint64(P)):
                mine[i] = grads[i]
            mine[P] = loss[0]
            store_release(ctl, me, base + 1)
            comm_status = wait_all(ctl, me, base + 1)
            if comm_status != OK:
                status[0], status[1], status[2], status[3] = 3, e, step, comm_status
                return step
            # the batch loss, summed in rank order by every rank; the gradient of my slice
            # [a, b) of the parameters only (the reduce-scatter half of an allreduce)
            acc = slots[sl, 0, P]
            for r in range(1, size):
                acc = acc + slots[sl, r, P]
            loss[0] = acc
            batch_loss = np.float64(loss[0])
            a, b = _slice(0, P, rank, size, align)
            _reduce_rows(slots, sl, size, a, b, 0, grads, empty)
            # the L2 kernel penalties, once after the sum: gradient 2 * l2 * W (my slice),
            # loss l2 * sum(W**2) (all weights, on every rank)
            penalty = 0.0
            has_reg = False
            for li in range(n_layers):
                if reg[li]:
                    has_reg = True
                    n_w = dims[li] * dims[li + 1]
                    sq = one - one
                    for i in range(w_off[li], w_off[li] + n_w):
                        if a <= i < b:
                            grads[i] = grads[i] + l2_coef[li] * params[i]
                        sq += params[i] * params[i]
                    penalty += l2[li] * np.float64(sq)
            if has_reg:
                loss[0] = loss[0] + penalty
                batch_loss = np.float64(loss[0])
            if not np.isfinite(batch_loss) or batch_loss > loss_limit:
                ctl[me + PUBLISHED] = base + 1
                status[0], status[1], status[2] = 1, e, step
                return step
            backup[:] = params
            # the update of my slice (ZeRO stage 1: each rank updates 1/size of the values)
            if decoupled:
                f = factor[step]
                for i in range(a, b):
                    if decay_all or decay[i]:
                        params[i] = params[i] * f
            elif weight_decay != 0:
                for i in range(a, b):
                    if decay_all or decay[i]:
                        grads[i] = grads[i] + weight_decay * params[i]
            if kind == SGD:
                sgd_range(params, grads, lrs[step], mask, has_mask, one, a, b)
            elif kind == MOMENTUM:
                momentum_range(params, grads, slot_1, lrs[step], momentum, nesterov, mask,
                               has_mask, one, a, b)
            else:
                adam_range(params, grads, slot_1, slot_2, step_sizes[step], beta_1, c1, beta_2,
                           c2, sqrt_bc2s[step], epsilon, mask, has_mask, one, a, b)
            # all-gather the parameters: my slice goes where my gradient slice was (no peer
            # reads it: each sums only its own slice of my row)
            for i in range(np.uint64(a), np.uint64(b)):
                mine[i] = params[i]
            store_release(ctl, me, base + 2)
            comm_status = wait_all(ctl, me, base + 2)
            if comm_status != OK:
                status[0], status[1], status[2], status[3] = 3, e, step, comm_status
                return step
            ctl[me + PUBLISHED] = base + 2
            for r in range(size):
                if r != rank:
                    ra, rb = _slice(0, P, r, size, align)
                    src = slots[sl, r]
                    for i in range(np.uint64(ra), np.uint64(rb)):
                        params[i] = src[i]
            step += 1
            loss_total += batch_loss * n_total if reduction == 0 else batch_loss
        epoch_loss[e] = loss_total / n if reduction == 0 else loss_total
        if not _all_finite(params):
            status[0], status[1], status[2] = 2, e, step
            return step
    return step


@njit(cache=True)
def allgather_slices(arr, slots, ctl, me, rank, size):
    """Make `arr` whole on every rank from each rank's slice (:func:`train_epochs_dp` updates
    only rank r's slice of the optimizer state): copy my slice into my row, one barrier, copy
    every other slice from its owner's row. Returns OK or a status code.

    Parameters
    ----------
    arr : ndarray, shape (P,), the slots' dtype
    slots, ctl, me
        The group (:class:`minscale.kernels._collectives.Group`).
    rank, size : int
    """
    P = arr.size
    align = max(1, 64 // arr.itemsize)
    g = ctl[me + GENERATION]
    ctl[me + GENERATION] = g + 1
    sl = g % 2
    base = ctl[me + PUBLISHED]
    a, b = _slice(0, P, rank, size, align)
    mine = slots[sl, rank]
    for i in range(np.uint64(a), np.uint64(b)):
        mine[i] = arr[i]
    store_release(ctl, me, base + 1)
    status = wait_all(ctl, me, base + 1)
    if status != OK:
        return status
    ctl[me + PUBLISHED] = base + 1
    for r in range(size):
        if r != rank:
            ra, rb = _slice(0, P, r, size, align)
            src = slots[sl, r]
            for i in range(np.uint64(ra), np.uint64(rb)):
                arr[i] = src[i]
    return OK
