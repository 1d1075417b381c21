"""W5, data-parallel training on one machine, and the allreduce under it.

``run`` (W5): samples/s of ``fit(..., workers=k)``, k = 1, 2, next to PyTorch. Model
784-300-100-10 (ReLU), float32, plain SGD, MSE, global batch 256, synthetic data of 40 batches.
``workers=1`` trains in this process with one BLAS thread (the compiled loop on the numba
backend); ``workers=2`` starts two spawned processes with one BLAS thread each that allreduce
through shared memory every step (sync mode). Process start-up (spawn, imports, JIT cache
loading) is a fixed cost, so each configuration runs 2 and 6 epochs and the steady-state rate
is the marginal one: 4 epochs of samples / (t6 - t2). Both totals are reported too.
The PyTorch peers (``benchmarks/ddp_bench.py``, when torch is installed) train the same shape,
data and global batch: one process at one thread, and DistributedDataParallel over gloo with
2 processes x 1 thread on 127.0.0.1, kept alive between samples so that start-up stays out of
the rate; each sample is 4 epochs. All six candidates run interleaved. Scaling 2 vs 1 is the
2-process rate over the 1-process rate: per round for torch, and as the ratio of the median
marginal rates for minscale (a marginal rate is a difference of two samples: one slow sample
can make it meaningless, even negative, in its round).

``run_allreduce`` (W5allreduce): seconds of one in-place sum allreduce of 524288 float64
(4 MiB) between 2 processes with one BLAS thread each, on ``SharedMemoryComm`` (2 workers of
``minscale.parallel.run_workers``) and on ``MPIComm`` (``benchmarks/mpi_allreduce_bench.py``
under ``mpiexec -n 2``, the mpich of the venv, on 127.0.0.1). Each job times 5 untimed then 30
calls, each behind a barrier, the slowest rank's time per call; jobs alternate SHM, MPI, SHM,
MPI, ... (`AR_BLOCKS` each), with the core-to-core probe sampled before every pair.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

from . import common

NAME = "W5 data-parallel samples/s, 1 vs 2 workers, minscale and torch DDP"
NAME_ALLREDUCE = "W5 allreduce of 4 MiB float64, SharedMemoryComm vs MPIComm, 2 processes"
WIDTHS = [784, 300, 100, 10]
BATCH = 256
STEPS = 40
AR_VALUES = 524288
AR_WARMUP = 5
AR_SAMPLES = 30
AR_BLOCKS = 3


def run(ctx):
    import minscale as ms

    try:
        from minscale.parallel import fit_workers  # noqa: F401
    except ImportError as exc:
        return {"name": NAME, "skipped": f"minscale.parallel.fit_workers unavailable: {exc}"}
    rng = np.random.default_rng(0)
    n = BATCH * STEPS
    X = rng.standard_normal((n, WIDTHS[0]), dtype=np.float32)
    y = rng.standard_normal((n, WIDTHS[-1]), dtype=np.float32)

    def fit(workers, epochs):
        def f():
            ms.set_backend("numba")
            layers = [ms.Dense(w, "relu") for w in WIDTHS[1:-1]] + [ms.Dense(WIDTHS[-1])]
            model = ms.Sequential(layers, input_dim=WIDTHS[0], seed=0, dtype="float32")
            model.compile(loss="mse", optimizer=ms.optim.SGD(0.001))
            model.fit(X, y, epochs=epochs, batch_size=BATCH, seed=0, workers=workers)
        return f

    rounds = max(3, ctx["rounds"] // 2)
    torch = common.torch_module()
    cands = {"w1 e2": fit(1, 2), "w1 e6": fit(1, 6), "w2 e2": fit(2, 2), "w2 e6": fit(2, 6)}
    ddp = None
    torch_note = None if torch else "torch not installed"
    try:
        with common.threads(1):
            if torch:
                from . import ddp_bench

                try:
                    ddp = ddp_bench.DDPGroup(world=2, threads=1, widths=WIDTHS, batch=BATCH,
                                             n=n, seed=0, lr=1e-3)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    # a failed gloo start must not cost the minscale figures
                    torch_note = f"DDP did not start: {str(exc)[-400:]}"
                else:
                    single = ddp_bench.TorchSingle(WIDTHS, BATCH, n, seed=0, lr=1e-3)
                    cands["torch t1 e4"] = lambda: single.epochs(4)
                    cands["torch ddp 2x1 e4"] = lambda: ddp.epochs(4)
            c2c = ctx["probe"].sample()
            times = common.interleaved(cands, rounds)
    finally:
        if ddp is not None:
            ddp.close()
    result = {"name": NAME, "unit": "samples/s", "samples_per_epoch": n, "c2c_ns": c2c,
              "times": {k: common.summary(v) for k, v in times.items()}}
    for w in (1, 2):
        # marginal rate = 4 epochs of samples / (t(6 epochs) - t(2 epochs)), from the medians:
        # a per-round difference of two noisy samples can even come out negative under load
        t2, t6 = (statistics.median(times[f"w{w} e{e}"]) for e in (2, 6))
        rate = 4 * n / (t6 - t2) if t6 > t2 else float("nan")
        total = [6 * n / t for t in times[f"w{w} e6"]]
        result[f"workers_{w}"] = {
            "marginal_samples_per_s": {"median": rate, "min": rate, "max": rate, "n": 1},
            "samples_per_s_incl_startup_6_epochs": common.summary(total)}
    result["scaling_marginal"] = result["workers_2"]["marginal_samples_per_s"]["median"] / \
        result["workers_1"]["marginal_samples_per_s"]["median"]
    if torch_note is None:
        rate = {k: [4 * n / t for t in times[k]] for k in ("torch t1 e4", "torch ddp 2x1 e4")}
        result["torch"] = {
            "single_1_thread_samples_per_s": common.summary(rate["torch t1 e4"]),
            "ddp_gloo_2x1_samples_per_s": common.summary(rate["torch ddp 2x1 e4"]),
            "scaling_ddp_per_round": common.ratios(times, "torch t1 e4", "torch ddp 2x1 e4"),
            "note": "steady state (processes started before timing), 4 epochs per sample; "
                    "gloo on tcp://127.0.0.1, GLOO_SOCKET_IFNAME=lo"}
        # a marginal rate is a difference of two samples, too noisy for per-round ratios:
        # ratios of medians here
        result["minscale_vs_torch"] = {
            "2 workers / DDP 2x1": result["workers_2"]["marginal_samples_per_s"]["median"] /
            result["torch"]["ddp_gloo_2x1_samples_per_s"]["median"],
            "1 worker / torch 1 thread": result["workers_1"]["marginal_samples_per_s"]["median"] /
            result["torch"]["single_1_thread_samples_per_s"]["median"],
            "note": "ratios of median samples/s (minscale marginal, torch steady state)"}
    else:
        result["torch"] = {"skipped": torch_note}
    ms.set_backend(None)
    return result


def targets(result):
    """No numeric target in the issue; the scaling is reported."""
    return []


def _mpiexec():
    candidate = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return candidate if os.path.exists(candidate) else shutil.which("mpiexec")


def _mpi_block(mpiexec, env):
    """One ``mpiexec -n 2`` job of the MPI script: per-call seconds, or an error string."""
    script = os.path.join(common.ROOT, "benchmarks", "mpi_allreduce_bench.py")
    cmd = [mpiexec, "-n", "2", "-launcher", "fork", "-hosts", "127.0.0.1", sys.executable,
           script, "--n", str(AR_VALUES), "--warmup", str(AR_WARMUP), "--samples",
           str(AR_SAMPLES)]
    try:
        out = subprocess.run(cmd, env=env, cwd=common.ROOT, capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        return "mpiexec timed out after 120 s"
    if out.returncode != 0:
        return f"mpiexec exited {out.returncode}: {out.stderr.strip()[-400:]}"
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)["samples_s"]
    return f"no JSON line in mpiexec output: {out.stdout.strip()[-200:]}"


def run_allreduce(ctx):
    from minscale.parallel import run_workers

    from .mpi_allreduce_bench import time_allreduce

    mpiexec = _mpiexec()
    mpi_note = None
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        mpi_note = f"mpi4py not importable: {exc}"
    if mpi_note is None and mpiexec is None:
        mpi_note = "mpiexec not found next to the interpreter or on PATH"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=common.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    shm, mpi, blocks = [], [], []
    for _ in range(AR_BLOCKS):
        c2c = ctx["probe"].sample()
        res = run_workers(time_allreduce, 2, args=(AR_VALUES, AR_WARMUP, AR_SAMPLES),
                          nbytes=AR_VALUES * 8, timeout=60.0, blas_threads=1)
        s = [max(col) for col in zip(*res)]
        shm += s
        block = {"c2c_ns": c2c, "shm_median_s": common.summary(s)["median"]}
        if mpi_note is None:
            m = _mpi_block(mpiexec, env)
            if isinstance(m, str):
                mpi_note = m
            else:
                mpi += m
                block["mpi_median_s"] = common.summary(m)["median"]
                block["mpi/shm"] = block["mpi_median_s"] / block["shm_median_s"]
        blocks.append(block)
    nbytes = AR_VALUES * 8
    result = {"name": NAME_ALLREDUCE, "unit": "s per allreduce", "values": AR_VALUES,
              "bytes": nbytes, "samples_per_job": AR_SAMPLES, "blocks": blocks,
              "SharedMemoryComm": common.summary(shm)}
    result["SharedMemoryComm"]["GB_per_s_buffer"] = nbytes / result["SharedMemoryComm"][
        "median"] / 1e9
    if mpi:
        result["MPIComm"] = common.summary(mpi)
        result["MPIComm"]["GB_per_s_buffer"] = nbytes / result["MPIComm"]["median"] / 1e9
        result["mpi/shm per block"] = common.summary([b["mpi/shm"] for b in blocks
                                                      if "mpi/shm" in b])
    if mpi_note is not None:
        result["MPIComm_skipped"] = mpi_note
    return result


def targets_allreduce(result):
    """No numeric target in the issue; the times are reported."""
    return []
