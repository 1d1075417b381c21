"""Cases of the pipeline tests, importable by spawned stage processes and mpiexec ranks.

Every case trains 20 updates (23 rows, global batch 7: batches of 7, 7, 7 and 2 rows over 5
epochs), so with m > 2 the last batch of each epoch has empty micro-batches. ``stage_cases``
is the body of one stage process that runs many cases on one set of mailboxes: one process
start per pipeline size instead of one per case.

Usage under MPI: ``mpiexec -n P python tests/train/pipeline_cases.py OUT_DIR CASE:M:SCHEDULE:BACKEND ...``;
rank 0 saves each case's parameters as ``OUT_DIR/<case>_<m>_<schedule>_<backend>.npy``. A fifth
field ``:STAGES`` trains ``-n / STAGES`` data-parallel replicas of a STAGES-stage pipeline
(saved as ``..._<backend>_<stages>.npy``).
"""

import sys
from pathlib import Path

import numpy as np

EPOCHS, BATCH, ROWS = 5, 7, 23


def build(name):
    """(model, X, y, fit_kwargs) of case `name`."""
    import minscale as ms
    from minscale.optim import SGD, Adam, AdamW
    from minscale.prune import ConstantSparsity

    rng = np.random.default_rng(20240601)
    X = rng.standard_normal((ROWS, 3))
    y = np.column_stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], X[:, 0] - 0.5 * X[:, 2]])
    layers = [ms.Dense(6, activation="tanh"), ms.Dense(5, activation="relu"),
              ms.Dense(4, activation="leaky_relu"), ms.Dense(2)]
    kwargs = dict(epochs=EPOCHS, batch_size=BATCH, seed=11, shuffle=True)
    if name == "regularized":
        for layer in layers:
            layer.kernel_regularizer = ms.regularizers.L2(0.01)
    dtype = "float32" if name == "float32" else "float64"
    model = ms.Sequential(layers, input_dim=3, seed=7, dtype=dtype)
    if name == "float32":
        from minscale.schedules import InverseTimeDecay

        model.compile(optimizer=SGD(InverseTimeDecay(0.1, decay_rate=0.5, decay_steps=5)))
    elif name == "plain":
        model.compile(optimizer=Adam(0.02))
    elif name == "momentum":
        model.compile(optimizer=SGD(0.003, momentum=0.9, nesterov=True, weight_decay=0.01),
                      reduction="sum")
    elif name == "regularized":
        model.compile(optimizer=AdamW(0.02, weight_decay=0.1, decay_bias=False))
    elif name == "pruned":
        model.compile(optimizer=SGD(0.05, momentum=0.9))
        kwargs["pruning"] = ConstantSparsity(0.9, begin_step=0, frequency=5)
        kwargs["pruning_method"] = "global"
    elif name == "qat":
        model.compile(optimizer=Adam(0.01))
        kwargs["quantization"] = "int8"
    else:
        raise ValueError(f"unknown case {name!r}")
    return model, X, y, kwargs


class FailingSchedule:
    """A pruning schedule that never prunes, but kills (SIGKILL) or raises in the process
    that `is_target` picks, before update `step`: a stage failing mid-training."""

    def __init__(self, how, step, rank=1):
        self.how, self.step, self.rank = how, step, rank

    def _is_target(self):
        import multiprocessing
        import os

        name = multiprocessing.current_process().name
        mpi_rank = os.environ.get("PMI_RANK")
        return name == f"minscale-worker-{self.rank}" or mpi_rank == str(self.rank)

    def should_prune(self, step):
        if step == self.step and self._is_target():
            if self.how == "kill":
                import os
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"stage failed on purpose before update {step}")
        return False

    def sparsity(self, step):
        return 0.0


def reference(name, micro_batches, backend, pipeline_stages=1, schedule="gpipe"):
    """The case's parameters after single-process training with `micro_batches` (or, with
    pipeline_stages > 1, after pipeline training in this process's caller's sense)."""
    import minscale as ms
    from minscale.parallel import LocalComm

    previous = ms.kernels.get_backend()
    ms.set_backend(backend)
    try:
        model, X, y, kwargs = build(name)
        # comm=LocalComm() keeps m = 1 off the compiled loop, which agrees only to rounding
        model.fit(X, y, micro_batches=micro_batches, pipeline_stages=pipeline_stages,
                  schedule=schedule, comm=LocalComm() if pipeline_stages == 1 else None,
                  **kwargs)
    finally:
        ms.set_backend(previous)
    return model


def replica_reference(name, micro_batches, replicas, backend="numpy"):
    """The case's parameters after the single-process reference of `replicas` data-parallel
    replicas of a pipeline (``loop.run(..., replicas=d)``: each replica's micro-batches
    accumulated in order, then the replica sums in rank order)."""
    import minscale as ms
    from minscale.quant import prepare_qat, qat_config
    from minscale.train import loop

    previous = ms.kernels.get_backend()
    ms.set_backend(backend)
    try:
        model, X, y, kwargs = build(name)
        quantization = kwargs.pop("quantization", None)
        if quantization is not None:
            prepare_qat(model, qat_config(quantization))
        X, y = X.astype(model.dtype), y.astype(model.dtype)
        loop.run(model, X, y, validation_data=None, verbose=0, callbacks=[],
                 pruning=kwargs.pop("pruning", None),
                 pruning_method=kwargs.pop("pruning_method", "magnitude"),
                 micro_batches=micro_batches, replicas=replicas, **kwargs)
    finally:
        ms.set_backend(previous)
    return model


def grid_cases(comm, job):
    """One process of a d x p grid (d replicas of a p-stage pipeline, ``job["stages"]`` = p):
    run every (case, m, schedule, backend) of `job`; world rank 0 returns the parameters."""
    import minscale as ms
    from minscale.parallel.p2p import SharedMemoryLinks
    from minscale.train.pipeline import _replica_groups, run_stage, stage_bounds

    p = job["stages"]
    links = SharedMemoryLinks(job["mailboxes"][comm.rank // p], comm, job["parent_pid"],
                              rank=comm.rank % p)
    pipe, data = _replica_groups(comm, p)
    out = []
    try:
        for name, m, schedule, backend in job["runs"]:
            ms.set_backend(backend)
            model, X, y, kwargs = build(name)
            X, y = X.astype(model.dtype), y.astype(model.dtype)
            comm.barrier()
            links.reset()
            comm.barrier()
            run_stage(model, X, y, comm=pipe, links=links, bounds=stage_bounds(model, p),
                      data_comm=data, micro_batches=m, schedule=schedule, verbose=0,
                      pruning=kwargs.pop("pruning", None),
                      pruning_method=kwargs.pop("pruning_method", "magnitude"), **kwargs)
            out.append(model.params.copy() if comm.rank == 0 else None)
    finally:
        links.close()
    return out


def run_grid_cases(replicas, stages, runs):
    """Parameters of every run (list of (case, m, schedule, backend)) trained by `replicas` x
    `stages` processes on this machine (started once)."""
    import contextlib
    import os

    from minscale.parallel import run_workers
    from minscale.parallel.p2p import SharedMemoryMailboxes

    widths = [3, 6, 5, 4, 2]
    slots = max(m for _, m, _, _ in runs)
    with contextlib.ExitStack() as stack:
        boxes = [stack.enter_context(SharedMemoryMailboxes([BATCH * max(widths) * 8]
                                                           * (stages - 1), slots))
                 for _ in range(replicas)]
        job = {"mailboxes": [b.specs for b in boxes], "parent_pid": os.getpid(), "runs": runs,
               "stages": stages}
        results = run_workers(grid_cases, replicas * stages, args=(job,), nbytes=8192,
                              timeout=60)
    return results[0]


def stage_cases(comm, job):
    """One stage process: run every (case, m, schedule, backend) of `job` on the same
    mailboxes; stage 0 returns the final parameters of each."""
    import minscale as ms
    from minscale.parallel.p2p import SharedMemoryLinks
    from minscale.quant import prepare_qat, qat_config
    from minscale.train.pipeline import run_stage, stage_bounds

    links = SharedMemoryLinks(job["mailboxes"], comm, job["parent_pid"])
    out = []
    try:
        for name, m, schedule, backend in job["runs"]:
            ms.set_backend(backend)
            model, X, y, kwargs = build(name)
            quantization = kwargs.pop("quantization", None)
            if quantization is not None:
                prepare_qat(model, qat_config(quantization))
            X, y = X.astype(model.dtype), y.astype(model.dtype)  # as fit validates them
            bounds = stage_bounds(model, comm.size)
            comm.barrier()
            links.reset()
            comm.barrier()
            run_stage(model, X, y, comm=comm, links=links, bounds=bounds, micro_batches=m,
                      schedule=schedule, verbose=0, pruning=kwargs.pop("pruning", None),
                      pruning_method=kwargs.pop("pruning_method", "magnitude"), **kwargs)
            out.append(model.params.copy() if comm.rank == 0 else None)
    finally:
        links.close()
    return out


def run_stage_cases(stages, runs):
    """Parameters of every run (list of (case, m, schedule, backend)) trained by `stages`
    stage processes on this machine (started once)."""
    import os

    from minscale.parallel import run_workers
    from minscale.parallel.p2p import SharedMemoryMailboxes

    widths = [3, 6, 5, 4, 2]
    # room for the largest micro-batch (m = 1: the whole batch) at the widest cut
    with SharedMemoryMailboxes([BATCH * max(widths) * 8] * (stages - 1),
                               max(m for _, m, _, _ in runs)) as boxes:
        job = {"mailboxes": boxes.specs, "parent_pid": os.getpid(), "runs": runs}
        results = run_workers(stage_cases, stages, args=(job,), nbytes=4096, timeout=60)
    return results[0]


def main(out_dir, specs):
    import minscale as ms
    from minscale.parallel import MPIComm

    comm = MPIComm(timeout=60)
    for spec in specs:
        name, m, schedule, backend, *grid = spec.split(":")
        stages = int(grid[0]) if grid else comm.size
        ms.set_backend(backend)
        if name == "fail":
            model, X, y, kwargs = build("plain")
            kwargs.update(epochs=1000, pruning=FailingSchedule("raise", 3))
        else:
            model, X, y, kwargs = build(name)
        model.fit(X, y, comm=comm, pipeline_stages=stages, micro_batches=int(m),
                  schedule=schedule, **kwargs)
        if comm.rank == 0:
            suffix = f"_{stages}" if grid else ""
            np.save(Path(out_dir, f"{name}_{m}_{schedule}_{backend}{suffix}.npy"), model.params)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
