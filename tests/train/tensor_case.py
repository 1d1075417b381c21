"""Shared by tests/train/test_tensor_parallel.py and tests/train/mpi_tensor.py: the test model,
its data, and the single-process reference of tensor-parallel training.

The reference runs the k ranks of :func:`minscale.train.tensor.train_rank` as k threads of ONE
process joined by `ThreadComm`, whose allreduce adds the ranks' buffers in rank order with
:func:`minscale.parallel.reduce_in_rank_order` -- the order `SharedMemoryComm` documents. So
it performs the same float operations in the same order as k processes over shared memory,
and the two must agree bit for bit. One lock makes the ranks take turns (a rank computes
only while it holds it and lets go only to wait for its peers), so the reference runs the
shards sequentially and never calls Numba's threading layer from two threads at once.
"""

import os
import signal
import threading

import numpy as np

import minscale as ms
from minscale.parallel import reduce_in_rank_order
from minscale.parallel.tensor import SubgroupComm, grid_groups
from minscale.prune import prune
from minscale.train.callbacks import Callback
from minscale.train.tensor import train_rank

#: 4 epochs of 5 batches: 20 optimizer steps.
OPTIONS = dict(epochs=4, batch_size=8, shuffle=True, seed=5)


def make_case(dtype="float64", sparsity=0.9, optimizer=None):
    """A 5-layer model (two split pairs, uneven widths 7 and 6, an odd replicated last layer,
    an L2-regularized row layer), pruned to `sparsity`, and 40 rows of data."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 4)).astype(dtype)
    y = rng.standard_normal((40, 2)).astype(dtype)
    model = ms.Sequential([
        ms.Dense(7, "tanh"),
        ms.Dense(5, "relu", kernel_regularizer=ms.regularizers.L2(1e-3)),
        ms.Dense(6, "sigmoid"),
        ms.Dense(4, "leaky_relu"),
        ms.Dense(2),
    ], input_dim=4, seed=3, dtype=dtype)
    if sparsity:
        prune(model, sparsity)
    model.compile(optimizer=optimizer if optimizer is not None else ms.optim.Adam(0.01))
    return model, X, y


class ThreadComm:
    """Rank `rank` of an in-process group of threads; allreduce in rank order."""

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group["size"]

    def _wait(self):
        self.group["lock"].release()
        try:
            self.group["barrier"].wait()
        finally:
            self.group["lock"].acquire()

    def _exchange(self, buf):
        g = self.group
        g["slots"][self.rank] = buf.reshape(-1).copy()
        self._wait()
        slots = np.stack(g["slots"])
        self._wait()  # nobody overwrites a slot before everyone has read them
        return slots

    def allreduce(self, buf, op="sum"):
        slots = self._exchange(buf)
        reduce_in_rank_order(slots, op, buf.reshape(-1))
        return buf

    def allreduce_in_rank_order(self, buf, op="sum"):
        return self.allreduce(buf, op)

    def broadcast(self, buf, root=0):
        buf.reshape(-1)[...] = self._exchange(buf)[root]
        return buf

    def barrier(self):
        self._wait()


def thread_group(k):
    """The shared state of a k-rank ThreadComm group."""
    return {"size": k, "slots": [None] * k, "barrier": threading.Barrier(k, timeout=120),
            "lock": threading.Lock()}


def run_ranks(k, fn):
    """Run ``fn(comm)`` for ranks 0..k-1 as threads taking turns; their results in rank order."""
    group = thread_group(k)
    results, errors = [None] * k, []

    def rank_main(rank):
        with group["lock"]:
            try:
                results[rank] = fn(ThreadComm(group, rank))
            except BaseException as exc:  # surfaced below; abort the peers' waits
                errors.append(exc)
                group["barrier"].abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def reference(model, X, y, k, chunk=None, workers=1, **options):
    """Tensor-parallel training of `model` (unchanged) in workers x k threads; rank 0's report."""
    options = dict(dict(OPTIONS, validation_data=None, verbose=0, callbacks=[], pruning=None,
                        pruning_method="magnitude"), **options)

    def rank_main(world):
        tensor, data = world, None
        if workers > 1:
            tensor_groups, data_groups = grid_groups(workers, k)
            tensor, data = SubgroupComm(world, tensor_groups), SubgroupComm(world, data_groups)
        return train_rank(tensor, model, X, y, options, chunk=chunk, broadcast_start=False,
                          data_comm=data, world=world)

    return run_ranks(workers * k, rank_main)[0]


class FailOnRank(Callback):
    """Makes tensor-parallel rank `rank` raise (or kill itself) before update `step`."""

    def __init__(self, rank, step, how="raise"):
        self.rank, self.step, self.how = rank, step, how

    def on_step_begin(self, model, step):
        if model.tensor_rank == self.rank and step == self.step:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ArithmeticError(f"rank {self.rank} fails on purpose at step {step}")


class PoisonedSGD(ms.optim.SGD):
    """SGD whose update writes inf into the parameters while ``poison`` is set."""

    def apply(self, params, grads, mask=None, weights=None):
        lr = super().apply(params, grads, mask, weights)
        if getattr(self, "poison", False):
            params[...] = np.inf
        return lr


class PoisonOnRank(Callback):
    """Sets the shard optimizer's ``poison`` on tensor rank `rank` for update `step` only."""

    def __init__(self, rank, step):
        self.rank, self.step = rank, step

    def on_step_begin(self, model, step):
        model.optimizer.poison = model.tensor_rank == self.rank and step == self.step
