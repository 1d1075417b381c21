"""Tensor parallelism (Megatron-LM style): one model's Dense layers split across ranks.

Consecutive Dense layers are taken in pairs ``(0, 1), (2, 3), ...``. In each pair the first
layer is split by columns (:class:`ColumnParallelDense`: rank r holds output units
``shard_bounds(units, r, k)`` of W and b, and applies the activation to them locally, which is
valid because the activation is element-wise) and the second by rows
(:class:`RowParallelDense`: rank r holds the same rows of W, computes a partial product,
allreduces it, then adds the full bias once). A last layer without a partner is replicated:
every rank holds all of it and computes it identically. Per pair that is one allreduce in the
forward pass (the row layer's partial outputs) and one in the backward pass (the column
layer's partial input gradients), none when the column layer is the network's first layer,
whose input gradient nobody uses.

Each rank's share is an ordinary :class:`minscale.Sequential` (:class:`TensorShard`) over its
own flat buffers, so the training loop, every optimizer, masks and kernel regularizers run on
it unchanged; ``TensorShard.full_index`` maps each of its parameters to the position in the
full model's flat buffer, and `gather` / `scatter` move parameters, masks and optimizer state
between the two layouts. Split layers under quantization-aware training take the whole
kernel's range for their scale (:class:`ShardWeightQuantizer`). `SubgroupComm` and
`grid_groups` give the tensor and the data-parallel groups of ``workers=d x tensor_parallel=k``.

References
----------
Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language Models Using
Model Parallelism", section 3 (the MLP block: column- then row-parallel, the conjugate
operators f and g).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .. import kernels
from .._checks import check_int
from ..layers import Dense, dense_forward
from ..model import Sequential
from ..quant.affine import affine_qparams, channel_min_max
from ..quant.fake_quant import fake_quantize_with_mask
from ..quant.fixed_point import FRAC_BITS_LIMIT, QFormat, choose_frac_bits
from .base import check_buffer, check_op, check_root, shard_bounds

__all__ = [
    "ColumnParallelDense",
    "RowParallelDense",
    "TensorShard",
    "tensor_roles",
    "check_tensor_parallel",
    "shard_model",
    "gather",
    "scatter",
    "SubgroupComm",
    "grid_groups",
    "ShardWeightQuantizer",
]

#: Role of a layer in the split, by position: see `tensor_roles`.
ROLES = ("column", "row", "replicated")


def tensor_roles(n_layers):
    """How each of `n_layers` Dense layers is split: pairs column/row, an odd last replicated.

    Parameters
    ----------
    n_layers : int, >= 1

    Returns
    -------
    tuple of str
        ``"column"``, ``"row"`` or ``"replicated"`` per layer.

    Examples
    --------
    >>> tensor_roles(3)
    ('column', 'row', 'replicated')
    """
    n_layers = check_int("n_layers", n_layers, 1)
    roles = ["column" if i % 2 == 0 else "row" for i in range(n_layers)]
    if n_layers % 2:
        roles[-1] = "replicated"
    return tuple(roles)


def check_tensor_parallel(model, tensor_parallel):
    """Validate ``tensor_parallel`` for `model` before any process starts.

    Parameters
    ----------
    model : Sequential, built
    tensor_parallel : int, >= 1
        Ranks k to split the model over.

    Returns
    -------
    int
        `tensor_parallel`.

    Raises
    ------
    ValueError
        `tensor_parallel` not an integer >= 1; for k > 1, a model of fewer than 2 layers (no
        pair to split), a column-split layer narrower than k (a rank would hold no unit), or
        a kernel quantizer other than minscale's QAT weight quantizer (its scale must be made
        global over the shards). Every message names ``tensor_parallel``.
    """
    k = check_int("tensor_parallel", tensor_parallel, 1)
    if k == 1:
        return k
    layers = model.layers
    if len(layers) < 2:
        raise ValueError(f"tensor_parallel={k} splits pairs of Dense layers, but the model has "
                         f"{len(layers)} layer; give it a hidden layer or use tensor_parallel=1")
    for i, (layer, role) in enumerate(zip(layers, tensor_roles(len(layers)))):
        if role == "column" and layer.units < k:
            raise ValueError(f"tensor_parallel={k} is more than the {layer.units} units of "
                             f"layer {i}, which is split by columns: every rank needs at least "
                             "one unit")
        kq = layer.kernel_quantizer
        if kq is not None and not hasattr(kq, "spec"):
            raise ValueError(f"tensor_parallel={k} needs layer {i}'s kernel quantizer to be "
                             "a minscale.quant WeightFakeQuantizer (its scale must be made "
                             f"global over the shards), got {type(kq).__name__}")
    return k


class ColumnParallelDense(Dense):
    """Output units ``[start, stop)`` of a Dense layer (Megatron's column-parallel linear).

    Forward is a plain Dense on the shard (no communication: the input is replicated);
    backward allreduces the input gradient, the sum of every rank's ``dz_r @ W_r.T`` added in
    rank order (``comm.allreduce_in_rank_order``), so every rank and every backend get the
    same bits (Megatron's operator f: identity forward, allreduce backward).

    Parameters
    ----------
    units : int
        Units of this shard, ``stop - start``.
    comm : Communicator
        The tensor-parallel group.
    full_units, start : int
        Units of the whole layer and the first unit of this shard.
    **config
        The whole layer's Dense arguments (activation, use_bias, ...).
    """

    def __init__(self, units, *, comm, full_units, start, **config):
        super().__init__(units, **config)
        self.comm, self.full_units, self.start = comm, int(full_units), int(start)

    def backward(self, da, need_dx=True):
        """Dense backward on the shard, then allreduce dx (sum over ranks, in place)."""
        dx = super().backward(da, need_dx)
        if dx is not None:
            self.comm.allreduce_in_rank_order(dx)
        return dx


class RowParallelDense(Dense):
    """Input rows ``[start, stop)`` of a Dense layer's W, the full bias (row-parallel linear).

    Forward: ``z = allreduce(x_r @ W_r) + b`` (the partials added in rank order,
    ``comm.allreduce_in_rank_order``), then the activation, so the output is the same bit for
    bit on every rank and the bias is added once (Megatron's operator g: allreduce forward,
    identity backward). Backward is a plain Dense backward: ``dW_r = x_r.T @ dz``, ``db`` the
    same on every rank, ``dx_r = dz @ W_r.T`` is this rank's slice of the input gradient.

    Parameters
    ----------
    units : int
        Output units (not split).
    comm : Communicator
    full_rows, start : int
        Input width of the whole layer and the first row of this shard.
    **config
        The whole layer's Dense arguments.
    """

    def __init__(self, units, *, comm, full_rows, start, **config):
        super().__init__(units, **config)
        self.comm, self.full_rows, self.start = comm, int(full_rows), int(start)

    def forward(self, x, training=False):
        """Partial product, allreduce, bias once, activation (shapes as :meth:`Dense.forward`)."""
        W = self.W
        self._kernel_pass = None
        if self.kernel_quantizer is not None:
            W, self._kernel_pass = self.kernel_quantizer(W, training)
        z = dense_forward(x, W)
        self.comm.allreduce_in_rank_order(z)
        if self.use_bias:
            z += self.b
        a = kernels.bias_act(z, np.zeros(0, dtype=z.dtype),
                             kernels.ACTIVATION_CODES[self.activation], self.alpha)
        self._a = a
        self._output_pass = None
        if self.output_quantizer is not None:
            a, self._output_pass = self.output_quantizer(a, training)
        self._x, self._W_used = x, W
        return a


class TensorShard(Sequential):
    """One rank's share of a tensor-parallel model: a Sequential over its own flat buffers.

    Attributes
    ----------
    comm : Communicator
        The tensor-parallel group (rank ``tensor_rank`` of ``tensor_size``).
    full_index : ndarray of int64, shape (P_shard,)
        Strictly increasing: ``params[i]`` is ``full.params[full_index[i]]``.
    owned : ndarray of bool, shape (P_shard,)
        Entries this rank contributes to a `gather`: all sharded ones, the replicated ones
        (odd last layer, row layers' biases) on rank 0 only.
    full_size : int
        P of the whole model.
    """

    def regularize(self):
        """Each layer adds its regularizer gradient to its own shard; the penalty is summed.

        Returns
        -------
        float
            The whole model's ``sum over layers of l2 * sum(W**2)``: every rank's share of
            the split kernels plus the replicated kernels once (one allreduce of one value).
        """
        local = 0.0
        for layer in self.layers:
            penalty = layer.regularize()  # the gradient: on every rank, for its own entries
            split = isinstance(layer, (ColumnParallelDense, RowParallelDense))
            if split or self.tensor_rank == 0:  # a replicated kernel counts once
                local += penalty
        buf = np.array([local], dtype=np.float64)
        self.comm.allreduce_in_rank_order(buf)
        return float(buf[0])

    def global_sparsity(self):
        """Masked fraction of all prunable weights of the whole model (one allreduce)."""
        keep = self.owned & self.prunable
        buf = np.array([np.count_nonzero(~self.mask[keep]), np.count_nonzero(keep)],
                       dtype=np.float64)
        self.comm.allreduce(buf)
        return float(buf[0] / buf[1])


def shard_model(model, comm):
    """Build rank ``comm.rank``'s :class:`TensorShard` of `model` (k = ``comm.size``).

    Parameters
    ----------
    model : Sequential, built
        The whole model; its parameters, mask and compile settings are copied into the shard
        (the optimizer: a copy with its state sliced to the shard).
    comm : Communicator

    Returns
    -------
    TensorShard

    Raises
    ------
    ValueError
        From `check_tensor_parallel`.
    """
    k, rank = comm.size, comm.rank
    check_tensor_parallel(model, k)
    roles = tensor_roles(len(model.layers))
    layers, index, owned = [], [], []
    d_full = model.input_dim
    rows = (0, d_full)  # the shard's slice of the current layer's input
    for layer, role, (start, _stop) in zip(model.layers, roles, model.layer_slices()):
        config = layer.get_config()
        units = config.pop("units")
        W_pos = start + np.arange(d_full * units, dtype=np.int64).reshape(d_full, units)
        b_pos = start + d_full * units + np.arange(units, dtype=np.int64)
        if role == "column":
            lo, hi = shard_bounds(units, rank, k)
            layers.append(ColumnParallelDense(hi - lo, comm=comm, full_units=units, start=lo,
                                              **config))
            parts = [(W_pos[:, lo:hi], True)] + ([(b_pos[lo:hi], True)] if layer.use_bias else [])
            rows = (lo, hi)
        elif role == "row":
            lo, hi = rows
            layers.append(RowParallelDense(units, comm=comm, full_rows=d_full, start=lo,
                                           **config))
            parts = [(W_pos[lo:hi], True)] + ([(b_pos, rank == 0)] if layer.use_bias else [])
            rows = (0, units)
        else:
            layers.append(Dense(units, **config))
            parts = [(W_pos, rank == 0)] + ([(b_pos, rank == 0)] if layer.use_bias else [])
            rows = (0, units)
        for pos, mine in parts:
            index.append(pos.reshape(-1))
            owned.append(np.full(pos.size, mine))
        new = layers[-1]
        if layer.kernel_quantizer is not None:
            new.kernel_quantizer = layer.kernel_quantizer if role == "replicated" else \
                ShardWeightQuantizer(layer.kernel_quantizer.spec, comm, role)
        new.output_quantizer = copy.deepcopy(layer.output_quantizer)
        d_full = units
    shard = TensorShard(layers, input_dim=model.input_dim, seed=model.seed, dtype=model.dtype)
    shard.comm, shard.tensor_rank, shard.tensor_size = comm, rank, k
    shard.full_index = np.concatenate(index)
    shard.owned = np.concatenate(owned)
    shard.full_size = model.params.size
    scatter(model.params, shard.params, shard)
    scatter(model.mask, shard.mask, shard)
    shard.reduction, shard.metrics, shard.loss = model.reduction, list(model.metrics), model.loss
    if model.optimizer is not None:
        opt = model.optimizer
        shard.optimizer = _fresh_copy(opt)
        arrays = {name: buf[shard.full_index] for name, buf in opt.state_arrays().items()
                  if buf.shape == model.params.shape}
        shard.optimizer.set_state(opt.iterations, arrays)
    return shard


class ShardWeightQuantizer:
    """QAT kernel hook of a split layer: the whole kernel's scale, applied to this shard.

    :class:`minscale.quant.WeightFakeQuantizer` takes its scale from the W it is given; on a
    shard that would be the shard's range. This hook computes the range the whole kernel has --
    per tensor: min and max over every shard (one allreduce ``op="max"`` of ``[-min, max]``,
    exact); per channel (a column of W): local for a column-split layer, which holds whole
    columns, and one allreduce of the per-column ranges for a row-split layer -- and then
    fake-quantizes exactly as the whole-model hook does. Whether the weights diverged (NaN,
    inf, beyond the coarsest fixed-point format) is decided for all shards together, so every
    rank takes the same branch.

    Parameters
    ----------
    spec : minscale.quant.WeightSpec
    comm : Communicator
        The tensor-parallel group.
    role : {"column", "row"}
        How the kernel is split.
    """

    def __init__(self, spec, comm, role):
        self.spec, self.comm, self.role = spec, comm, role

    def _global_range(self, W, axis):
        lo, hi = channel_min_max(W, axis)
        if axis is not None and self.role == "column":
            return lo, hi  # whole columns: the shard's range is the column's
        lo, hi = np.atleast_1d(lo), np.atleast_1d(hi)
        buf = np.concatenate([-lo, hi]).astype(np.float64)
        self.comm.allreduce(buf, op="max")
        lo, hi = -buf[:lo.size], buf[lo.size:]
        return (lo, hi) if axis is not None else (float(lo[0]), float(hi[0]))

    def _diverged(self, W):
        spec = self.spec
        bad = not np.isfinite(W).all()
        if not bad and spec.scheme == "fixed" and spec.frac_bits is None and W.size:
            coarsest = QFormat(spec.bits, -FRAC_BITS_LIMIT, spec.signed)
            bad = bool(W.max() > coarsest.max_value
                       or (spec.signed and W.min() < coarsest.min_value))
        flag = np.array([1.0 if bad else 0.0])
        self.comm.allreduce(flag, op="max")
        return bool(flag[0])

    def __call__(self, W, training=False):
        """``W -> (fake-quantized W, pass mask or None)``, as WeightFakeQuantizer."""
        spec = self.spec
        if training and self._diverged(W):
            return np.full_like(W, np.nan), None
        if spec.scheme == "affine":
            axis = 1 if spec.per_channel else None
            lo, hi = self._global_range(W, axis)
            scale, zp = affine_qparams(lo, hi, spec.bits, symmetric=True, narrow_range=True)
            out, _ = fake_quantize_with_mask(W, scale, zp, spec.bits, narrow_range=True, axis=axis)
            return out, None
        f = spec.frac_bits
        if f is None:
            lo, hi = self._global_range(W, None)
            f = choose_frac_bits(np.array([lo, hi]), spec.bits, spec.signed)
        want_mask = training and spec.frac_bits is not None
        step = math.ldexp(1.0, -f)
        return fake_quantize_with_mask(W, step, 0, spec.bits, spec.signed, want_mask=want_mask)

    def __repr__(self):
        return f"ShardWeightQuantizer({self.spec.name}, {self.role})"


def _fresh_copy(optimizer):
    new = copy.deepcopy(optimizer)
    new.reset()
    return new


def scatter(full, local, shard):
    """Copy the shard's entries of a whole-model flat array into `local`.

    Parameters
    ----------
    full : ndarray, shape (P,)
    local : ndarray, shape (P_shard,)
        Written in place.
    shard : TensorShard

    Returns
    -------
    local
    """
    local[...] = full[shard.full_index]
    return local


def gather(local, shard, out=None, chunk=None):
    """Assemble a whole-model flat array from every rank's shard (collective).

    Each rank writes the entries it owns into a buffer of negative zeros and the buffers are
    summed by allreduce; every entry has exactly one contributor that is not ``-0.0``, and
    ``x + (-0.0) == x`` exactly for every x (signed zeros included; ``+0.0`` would turn an
    owned ``-0.0`` into ``+0.0``), so the result is exact in any summation order (MPI's too).

    Parameters
    ----------
    local : ndarray, shape (P_shard,), float or bool
    shard : TensorShard
    out : ndarray, shape (P,), optional
        Receives the result (same dtype as `local`); allocated when None.
    chunk : int, optional
        Entries per allreduce (a shared-memory group carries at most its capacity); all at
        once when None.

    Returns
    -------
    ndarray, shape (P,)
        The same on every rank.
    """
    P = shard.full_size
    if out is None:
        out = np.empty(P, dtype=local.dtype)
    wire = local.dtype if local.dtype.kind == "f" else np.dtype(np.float64)
    step = P if chunk is None else max(1, int(chunk))
    index, owned = shard.full_index, shard.owned
    for lo in range(0, P, step):
        hi = min(P, lo + step)
        a, b = np.searchsorted(index, [lo, hi])
        buf = np.full(hi - lo, -0.0, dtype=wire)
        sel = owned[a:b]
        buf[index[a:b][sel] - lo] = local[a:b][sel]
        shard.comm.allreduce(buf)
        out[lo:hi] = buf if out.dtype == wire else buf != 0
    return out


def grid_groups(data_parallel, tensor_parallel):
    """World ranks of the tensor-parallel and the data-parallel groups of a d x k grid.

    World rank ``w`` is tensor rank ``w % k`` of replica (data rank) ``w // k``: the k ranks of
    one replica are neighbours, so each tensor group is contiguous.

    Parameters
    ----------
    data_parallel : int, >= 1
        d, the replicas.
    tensor_parallel : int, >= 1
        k, the ranks of one replica.

    Returns
    -------
    tensor_groups, data_groups : list of list of int
        ``tensor_groups[i]`` are replica i's ranks; ``data_groups[t]`` the ranks holding tensor
        shard t of every replica.

    Examples
    --------
    >>> grid_groups(2, 3)
    ([[0, 1, 2], [3, 4, 5]], [[0, 3], [1, 4], [2, 5]])
    """
    d = check_int("data_parallel", data_parallel, 1)
    k = check_int("tensor_parallel", tensor_parallel, 1)
    return ([[i * k + t for t in range(k)] for i in range(d)],
            [[i * k + t for i in range(d)] for t in range(k)])


# -0.0, not +0.0: x + (-0.0) == x for every x, -0.0 included
_IDENTITY = {"sum": -0.0, "max": -np.inf, "min": np.inf}


class SubgroupComm:
    """One group of a partition of a world communicator, built on the world's collectives.

    All groups of the partition run their collectives at the same time, in the same order (as
    the groups of a d x k training grid do): a collective is ONE world collective of a buffer
    made of every group's segment, where each rank writes its own segment and the identity of
    the operation (-0.0 for sum, -inf for max, +inf for min) everywhere else. The world
    collective is ``world.allreduce_in_rank_order`` and ``x + (-0.0) == x`` exactly, so each
    segment's result is its members' reduction in rank order, bit for bit what a group of its
    own would give over shared memory -- under MPI too, whose own allreduce order is not fixed. The segments' lengths are
    exchanged first (one allreduce of ``world.size`` values), so groups may reduce buffers of
    different lengths (e.g. uneven data shards).

    Parameters
    ----------
    world : Communicator
    groups : list of list of int
        A partition of ``range(world.size)``, each group in increasing rank order.

    Attributes
    ----------
    rank, size : int
        This process's rank in its group, and the group's size.

    Raises
    ------
    ValueError
        `groups` not a partition of the world's ranks into increasing lists; at a collective,
        members of one group passing buffers of different lengths.

    Notes
    -----
    Cost: a world collective of the sum of all groups' buffers, plus the length exchange;
    under MPI, where the rank-order collective gathers every rank's buffer, a receive buffer of
    ``world.size`` times that sum per rank. ``MPI_Comm_split`` would avoid both (not used here,
    so one code path serves shared memory and MPI).
    """

    def __init__(self, world, groups):
        groups = [list(map(int, g)) for g in groups]
        flat = sorted(r for g in groups for r in g)
        if flat != list(range(world.size)) or any(g != sorted(g) or not g for g in groups):
            raise ValueError(f"groups must partition the {world.size} world ranks into "
                             f"increasing lists, got {groups}")
        self.world, self.groups = world, groups
        self._g = next(i for i, g in enumerate(groups) if world.rank in g)
        self._members = groups[self._g]

    @property
    def rank(self):
        """This process's rank in its group."""
        return self._members.index(self.world.rank)

    @property
    def size(self):
        """The number of ranks in this process's group."""
        return len(self._members)

    def _segments(self, n):
        sizes = np.zeros(self.world.size, dtype=np.float64)
        sizes[self.world.rank] = n
        self.world.allreduce(sizes)
        lengths = []
        for g in self.groups:
            group_sizes = {int(sizes[r]) for r in g}
            if len(group_sizes) != 1:
                raise ValueError(f"ranks {g} of one group passed buffers of different lengths "
                                 f"{sorted(group_sizes)} to one collective")
            lengths.append(group_sizes.pop())
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        return offsets[self._g], offsets[-1]

    def allreduce(self, buf, op="sum"):
        """Reduce `buf` over this group in rank order, in place (see the class notes); return `buf`."""
        check_buffer(buf)
        check_op(op)
        flat = buf.reshape(-1)
        start, total = self._segments(flat.size)
        wire = np.full(total, _IDENTITY[op], dtype=buf.dtype)
        wire[start:start + flat.size] = flat
        self.world.allreduce_in_rank_order(wire, op)
        flat[...] = wire[start:start + flat.size]
        return buf

    def allreduce_in_rank_order(self, buf, op="sum"):
        """The same as `allreduce`, which reduces in rank order on every backend."""
        return self.allreduce(buf, op)

    def broadcast(self, buf, root=0):
        """Copy `buf` of group rank `root` to every member (a sum of root's buffer and -0.0)."""
        check_buffer(buf)
        root = check_root(root, self.size)
        if self.rank != root:
            buf[...] = -0.0
        return self.allreduce(buf)

    def barrier(self):
        """A world barrier (every group reaches it together)."""
        self.world.barrier()

    def __repr__(self):
        return f"SubgroupComm(rank={self.rank}, size={self.size}, groups={self.groups})"
