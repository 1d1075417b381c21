"""Pipeline training: step time against micro-batches, the bubble, activation memory per stage.

Run (from the project root, in a quiet window; about 2.5 minutes with the defaults)::

    PYTHONPATH=$PWD python -m benchmarks.pipeline_bench [--out results/pipeline.json]

What it does. A compute-dominated model (4 Dense layers 2048 -> 2048, ReLU, float32, SGD,
global batch 256: about 26 GFLOP per update) is trained by p = 2 stage processes (one BLAS
thread each) for m in 1, 2, 4, 8, 16 under GPipe and 1F1B, and by one process (one thread)
as the reference. One pool of stage processes runs every configuration (process start-up
is not timed); the configurations run interleaved, round after round (A B C ... A B C ...),
each run one untimed warm-up update and then `--steps` timed ones; the figures are medians
over rounds with min and max.

Reported per configuration: seconds per update (the slower stage's wall time per update,
messages and the loss allreduce included), the speed-up over one process with m = 1, the
measured bubble (the fraction of the stages' time not spent on the one-process work, so
communication and imbalance count as bubble) beside GPipe's ``(p - 1) / (m + p - 1)``, and
the peak bytes of activations each stage keeps saved for its backwards (GPipe: all m
micro-batches; 1F1B: at most p - s on stage s). "one" rows: one process accumulating the
same m micro-batches (``accumulate_micro_batches``), which separates the cost of
micro-batching itself (a pass over the gradients and a thin, memory-bound ``x.T @ dz`` per
micro-batch) from the pipeline's idle time; the bubble is measured against it:
``1 - T_one(m) / (p * T_pipeline(m))``.

The machine has 2 cores shared with whatever else runs: figures are indicative unless taken
in a quiet window.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def _build(width, layers, dtype, seed=0):
    import minscale as ms

    model = ms.Sequential([ms.Dense(width, activation="relu") for _ in range(layers - 1)]
                          + [ms.Dense(width)], input_dim=width, seed=seed, dtype=dtype)
    model.compile(optimizer=ms.optim.SGD(1e-4))
    return model


def _data(width, rows, dtype):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((rows, width)).astype(dtype)
    y = rng.standard_normal((rows, width)).astype(dtype) * 0.1
    return X, y


def _one_process(model, X, y, batch, micro_batches):
    """Seconds per update of single-process training with `micro_batches` accumulated (1:
    plain full-batch training), the loop's work per batch."""
    from minscale.train.loop import accumulate_micro_batches

    times = []
    for b in range(X.shape[0] // batch):
        Xb, yb = X[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
        start = time.perf_counter()
        if micro_batches == 1:
            model.compute_gradients(Xb, yb, regularize=False)
        else:
            accumulate_micro_batches(model, Xb, yb, batch, micro_batches)
        model.optimizer.apply(model.params, model.grads)
        times.append(time.perf_counter() - start)
    return times


def _stage_body(comm, job):
    """Every configuration, round after round, in one pool of stage processes."""
    import minscale as ms
    from minscale.parallel.p2p import SharedMemoryLinks
    from minscale.train.pipeline import run_stage, stage_bounds

    ms.set_backend(job["backend"])
    links = SharedMemoryLinks(job["mailboxes"], comm, job["parent_pid"])
    width, layers, dtype, batch, steps = (job[k] for k in ("width", "layers", "dtype", "batch",
                                                           "steps"))
    X, y = _data(width, batch * (steps + 1), dtype)
    results = []
    try:
        for round_ in range(job["rounds"]):
            for kind, m in job["configs"]:
                comm.barrier()
                links.reset()
                comm.barrier()
                model = _build(width, layers, dtype)
                if kind == "one":
                    if comm.rank == 0:
                        seconds = _one_process(model, X, y, batch, m)[1:]
                        results.append((round_, kind, m, 0, statistics.median(seconds), 0))
                    comm.barrier()
                    continue
                stats = {}
                run_stage(model, X, y, comm=comm, links=links,
                          bounds=stage_bounds(model, comm.size), micro_batches=m,
                          schedule=kind, epochs=1, batch_size=batch, shuffle=False, seed=0,
                          verbose=0, pruning=None, pruning_method="magnitude", stats=stats)
                results.append((round_, kind, m, comm.rank,
                                statistics.median(stats["step_seconds"][1:]),
                                stats["peak_stash_bytes"]))
    finally:
        links.close()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--micro-batches", default="1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=3, help="timed updates per run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backend", default="numpy", choices=("numpy", "numba"))
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from minscale.parallel import run_workers
    from minscale.parallel.p2p import SharedMemoryMailboxes
    from minscale.parallel.schedule import bubble_fraction

    ms_list = [int(v) for v in args.micro_batches.split(",")]
    p = args.stages
    configs = [(kind, m) for m in ms_list for kind in ("one", "gpipe", "1f1b")]
    itemsize = np.dtype(args.dtype).itemsize
    start = time.monotonic()
    with threadpool_limits(1), SharedMemoryMailboxes(
            [args.batch * args.width * itemsize] * (p - 1), max(ms_list)) as boxes:
        job = dict(mailboxes=boxes.specs, parent_pid=os.getpid(), width=args.width,
                   layers=args.layers, dtype=args.dtype, batch=args.batch, steps=args.steps,
                   rounds=args.rounds, configs=configs, backend=args.backend)
        per_rank = run_workers(_stage_body, p, args=(job,), nbytes=8 * args.width ** 2 * 4,
                               timeout=600, blas_threads=1)
    rows = [r for results in per_rank for r in results]

    def per_round(kind, m):
        mine = [r for r in rows if r[1] == kind and r[2] == m]
        # the slowest stage's step in each round (the stages wait for each other)
        return [max(r[4] for r in mine if r[0] == k) for k in range(args.rounds)]

    t1 = statistics.median(per_round("one", 1))
    report = {"model": f"{args.layers} x Dense {args.width}, {args.dtype}, batch {args.batch}",
              "stages": p, "one_process_seconds": t1, "configs": []}
    print(f"{report['model']}, p = {p}, {args.rounds} rounds x {args.steps} updates, "
          f"machine load {os.getloadavg()[0]:.1f}")
    print("one: one process accumulating the same m micro-batches; speed-up over one process "
          "with m = 1; bubble = 1 - T_one(m) / (p T_pipeline(m))")
    print(f"{'schedule':>8} {'m':>3} {'ms/update':>10} {'(min..max)':>16} {'speed-up':>8} "
          f"{'bubble':>7} {'formula':>7} " + " ".join(f"{'stash s' + str(s):>10}" for s in range(p)))
    for kind, m in configs:
        times = per_round(kind, m)
        tp = statistics.median(times)
        t1m = statistics.median(per_round("one", m))
        entry = dict(schedule=kind, micro_batches=m, seconds=tp, seconds_min=min(times),
                     seconds_max=max(times), speedup=t1 / tp)
        text = (f"{kind:>8} {m:>3} {tp * 1e3:>10.1f} {min(times) * 1e3:>7.1f}.."
                f"{max(times) * 1e3:<8.1f} {t1 / tp:>8.2f}")
        if kind != "one":
            stash = [max(r[5] for r in rows if r[1] == kind and r[2] == m and r[3] == s)
                     for s in range(p)]
            entry.update(bubble=1 - t1m / (p * tp), bubble_formula=float(bubble_fraction(p, m)),
                         stash_bytes=stash)
            text += (f" {entry['bubble']:>7.3f} {entry['bubble_formula']:>7.3f} "
                     + " ".join(f"{b / 2**20:>8.2f}MB" for b in stash))
        report["configs"].append(entry)
        print(text)
    print(f"total {time.monotonic() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
