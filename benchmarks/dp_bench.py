"""Issue 18, items 1-2: the shared-memory allreduce against MPI's, and data-parallel fit
against one process, measured side by side.

Usage: ``python -m benchmarks.dp_bench [--blocks 3] [--only allreduce,fit] [--out PATH]``
(about 2-3 minutes on a 2-vCPU machine).

allreduce: seconds of one in-place float64 sum allreduce between 2 processes at 8 B, 10 KB and
4 MiB, ``SharedMemoryComm`` (two workers of ``minscale.parallel.run_workers``, numba backend:
the compiled collective) against ``MPIComm`` (``benchmarks/mpi_allreduce_bench.py`` under the
venv's ``mpiexec -n 2``). Every job times the three sizes in turn, each call behind a barrier;
a call's time is its slowest rank's. Jobs alternate SHM, MPI, SHM, MPI ... (``--blocks``
pairs); the ratio SHM / MPI of the block medians is taken per pair and its median reported
(target <= 1.0), with the core-to-core hand-off time (``shared/tools/c2c_probe.c``) sampled
before every pair.

fit: steady-state samples/s of ``fit(workers=2)`` over ``fit(workers=1)`` for three models:
784-300-100-10 ReLU float32 SGD at global batch 256 (W5's shape; target >= 1.7), the study's
digits model (64-32-10 ReLU, Adam, batch 32, float64, the digits training split; target >= 1.2)
and its diabetes model (10-32-1, Adam, batch 32; target >= 1.0). One worker is the compiled
loop in this process at one BLAS thread; two workers are what ``fit(workers=2)`` runs in each
of its processes (``minscale.train.compiled_dp.run``), timed inside them after a warm-up
epoch, so process start-up (spawn, imports, cache loads: seconds, and noisy) stays out.
Blocks alternate 1 and 2 workers (``--blocks``, 3 timed runs each); the ratio is per block
(median, min, max) with the c2c probe sampled per block.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import common
from .mpi_allreduce_bench import time_allreduce_sizes

SIZES = (8, 10240, 4 * 1024 * 1024)
WARMUP = 20
SAMPLES = 200


def _mpiexec():
    candidate = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return candidate if os.path.exists(candidate) else None


def _mpi_job(mpiexec, samples):
    script = os.path.join(common.ROOT, "benchmarks", "mpi_allreduce_bench.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=common.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [mpiexec, "-n", "2", "-launcher", "fork", "-hosts", "127.0.0.1", sys.executable,
           script, "--warmup", str(WARMUP), "--samples", str(samples), "--sizes",
           ",".join(map(str, SIZES))]
    out = subprocess.run(cmd, env=env, cwd=common.ROOT, capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"mpiexec exited {out.returncode}: {out.stderr.strip()[-400:]}")
    line = next(v for v in out.stdout.splitlines() if v.startswith("{"))
    return {int(k): v for k, v in json.loads(line)["sizes"].items()}


def _shm_job(samples):
    from minscale.parallel import run_workers

    res = run_workers(time_allreduce_sizes, 2, args=(SIZES, WARMUP, samples),
                      nbytes=max(SIZES), timeout=60.0, blas_threads=1)
    return {nb: [max(col) for col in zip(*(r[nb] for r in res))] for nb in SIZES}


def run_allreduce(blocks, probe, samples=SAMPLES):
    import minscale as ms

    ms.set_backend("numba")
    mpiexec = _mpiexec()
    if mpiexec is None:
        return {"skipped": "no mpiexec next to the interpreter"}
    pairs = []
    for _ in range(blocks):
        c2c = probe.sample()
        shm = _shm_job(samples)
        mpi = _mpi_job(mpiexec, samples)
        pairs.append({"c2c_ns": c2c,
                      **{f"{nb} B": {"shm_median_s": statistics.median(shm[nb]),
                                     "mpi_median_s": statistics.median(mpi[nb])}
                         for nb in SIZES}})
    result = {"unit": "s per allreduce (slowest rank), 2 processes", "pairs": pairs,
              "ratio shm/mpi": {}}
    for nb in SIZES:
        key = f"{nb} B"
        result["ratio shm/mpi"][key] = common.summary(
            [p[key]["shm_median_s"] / p[key]["mpi_median_s"] for p in pairs])
    return result


# --- fit(workers=2) / fit(workers=1) ------------------------------------------------------------

def _w5_case():
    import minscale as ms

    rng = np.random.default_rng(0)
    n = 256 * 40
    X = rng.standard_normal((n, 784), dtype=np.float32)
    y = rng.standard_normal((n, 10), dtype=np.float32)

    def model():
        layers = [ms.Dense(300, "relu"), ms.Dense(100, "relu"), ms.Dense(10)]
        m = ms.Sequential(layers, input_dim=784, seed=0, dtype="float32")
        return m.compile(loss="mse", optimizer=ms.optim.SGD(0.001))
    return model, X, y, 256, 2


def _study_case(name):
    import types

    import minscale as ms
    from minscale.commands._common import load_task
    from minscale.study.config import StudyConfig
    from minscale.study.runs import new_model

    task = load_task(types.SimpleNamespace(data=name, target=None, test_size=0.2, seed=0))
    config = StudyConfig()

    def model():
        m = new_model(task, config)
        return m.compile(optimizer=ms.optim.Adam(0.01))
    # enough epochs that a timed run is tens of milliseconds, far above the set-up of a call
    return model, task["X_train"], task["y_train"], config.batch_size, \
        {"digits": 20, "diabetes": 200}[name]


CASES = {"784-300-100-10 b256": (_w5_case, 1.7),
         "digits 64-32-10 b32": (lambda: _study_case("digits"), 1.2),
         "diabetes 10-32-1 b32": (lambda: _study_case("diabetes"), 1.0)}


def _options(epochs, batch):
    return dict(epochs=epochs, batch_size=batch, shuffle=True, seed=0, validation_data=None,
                verbose=0, callbacks=[], pruning=None, pruning_method="magnitude")


def _timed_worker(comm, label, epochs, repeats):
    """In each of the 2 workers: what ``fit(workers=2)`` runs there (compiled_dp.run), one
    untimed epoch (cache loads, page faults), then `repeats` timed runs of `epochs` epochs,
    each behind a barrier. Returns this rank's seconds per run."""
    import minscale as ms
    from minscale.train import compiled_dp

    ms.set_backend("numba")
    make, _ = CASES[label]
    model_fn, X, y, batch, _ = make()
    model = model_fn()
    assert compiled_dp.supports(model, _options(1, batch), comm)
    compiled_dp.run(model, X, y, comm, **_options(1, batch))
    out = []
    for _ in range(repeats):
        comm.barrier()
        t = time.perf_counter()
        compiled_dp.run(model, X, y, comm, **_options(epochs, batch))
        out.append(time.perf_counter() - t)
    return out


def run_fit(blocks, probe, only=None, repeats=3):
    """Steady-state samples/s: ``fit(workers=1)`` in this process (the compiled loop, one BLAS
    thread) against the 2 workers of ``fit(workers=2)`` running the compiled data-parallel
    loop (process start-up excluded: timed inside the workers after a warm-up epoch; a run's
    time is its slowest rank's). Blocks alternate w1, w2; the ratio is per block."""
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's BLAS, loaded before the limits)

    import minscale as ms
    from minscale.parallel import run_workers

    ms.set_backend("numba")
    out = {}
    for label, (make, target) in CASES.items():
        if only and label.split()[0] not in only:
            continue
        model_fn, X, y, batch, epochs = make()
        model = model_fn()
        samples = epochs * X.shape[0]
        c2c, ratios, rates = [], [], {1: [], 2: []}
        with common.threads(1):
            model.fit(X, y, epochs=1, batch_size=batch, seed=0)
            for _ in range(blocks):
                c2c.append(probe.sample())
                t1 = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    model.fit(X, y, epochs=epochs, batch_size=batch, seed=0)
                    t1.append(time.perf_counter() - t)
                res = run_workers(_timed_worker, 2, args=(label, epochs, repeats),
                                  nbytes=(model.params.size + 1) * 8, blas_threads=1)
                t2 = [max(col) for col in zip(*res)]
                r1 = samples / statistics.median(t1)
                r2 = samples / statistics.median(t2)
                rates[1].append(r1)
                rates[2].append(r2)
                ratios.append(r2 / r1)
        out[label] = {"samples_per_s_w1": common.summary(rates[1]),
                      "samples_per_s_w2": common.summary(rates[2]),
                      "ratio w2/w1": common.summary(ratios), "target": target,
                      "c2c_ns": c2c, "epochs_per_run": epochs, "rows": int(X.shape[0])}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--only", default="allreduce,fit",
                        help="allreduce, fit, or fit:784,digits,diabetes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    probe = common.C2CProbe()
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    parts = args.only.split(",")
    if "allreduce" in parts:
        result["allreduce"] = run_allreduce(args.blocks, probe)
        for key, s in result["allreduce"].get("ratio shm/mpi", {}).items():
            print(f"allreduce {key}: SHM/MPI {s['median']:.3g} ({s['min']:.3g}..{s['max']:.3g})"
                  f"  target <= 1.0", flush=True)
        print("  c2c ns per pair:", [p["c2c_ns"] for p in result["allreduce"].get("pairs", [])])
    fit_parts = [p for p in parts if p.startswith("fit")]
    if fit_parts:
        only = fit_parts[0].split(":")[1].split("+") if ":" in fit_parts[0] else None
        result["fit"] = run_fit(args.blocks, probe, only)
        for label, r in result["fit"].items():
            s = r["ratio w2/w1"]
            print(f"fit {label}: w2/w1 samples/s {s['median']:.3g} ({s['min']:.3g}.."
                  f"{s['max']:.3g})  target >= {r['target']}  c2c ns {r['c2c_ns']}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
