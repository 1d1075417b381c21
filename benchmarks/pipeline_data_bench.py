"""Pipeline x data parallelism: seconds per update of fit(workers=d, pipeline_stages=p).

Run (from the project root, in a quiet window; about 3 minutes with the defaults, 8.5 for
--rounds 2 at load average 11 - 13)::

    PYTHONPATH=$PWD python -m benchmarks.pipeline_data_bench [--rounds 3] [--out PATH]

Configurations, all on the same model (4 Dense layers 1024 -> 1024, ReLU, float32, SGD) and
global batch (256 rows, 10 batches per epoch), one BLAS thread per process: one process
(m = 1, plain), data parallel ``workers=2``, pipeline ``pipeline_stages=2, micro_batches=4``
(1F1B), and the grid ``workers=2, pipeline_stages=2, micro_batches=4`` (4 processes). Process
start-up (spawn, imports) is a fixed cost, so each configuration runs 1 and 3 epochs and the
steady time per update is (t3 - t1) / 20 (as W5 does), after one untimed run of each. The configurations run interleaved,
round after round (A B C D A B C D ...); reported: median seconds per update with min and
max over rounds, and the speed-up over one process.

On a machine of 2 cores the grid runs 4 processes on 2 cores: it cannot beat the 2-process
forms there; the benchmark shows what the oversubscription costs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

WIDTH, LAYERS, BATCH, BATCHES = 1024, 4, 256, 10
CONFIGS = {
    "one process": {},
    "data parallel d=2": dict(workers=2),
    "pipeline p=2 m=4": dict(pipeline_stages=2, micro_batches=4, schedule="1f1b"),
    "grid d=2 x p=2 m=4": dict(workers=2, pipeline_stages=2, micro_batches=4,
                               schedule="1f1b"),
}


def _fit_seconds(epochs, extra):
    import minscale as ms

    model = ms.Sequential([ms.Dense(WIDTH, activation="relu") for _ in range(LAYERS - 1)]
                          + [ms.Dense(WIDTH)], input_dim=WIDTH, seed=0, dtype="float32")
    model.compile(optimizer=ms.optim.SGD(1e-4))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((BATCH * BATCHES, WIDTH)).astype("float32")
    y = (rng.standard_normal((BATCH * BATCHES, WIDTH)) * 0.1).astype("float32")
    comm = ms.parallel.LocalComm() if not extra else None  # the general loop, not compiled
    start = time.perf_counter()
    model.fit(X, y, epochs=epochs, batch_size=BATCH, seed=0, comm=comm, **extra)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    per_update = {name: [] for name in CONFIGS}
    with threadpool_limits(1):
        for extra in CONFIGS.values():
            _fit_seconds(1, extra)  # untimed: JIT compilation, imports, page faults
        for _ in range(args.rounds):
            for name, extra in CONFIGS.items():
                t1 = _fit_seconds(1, extra)
                t3 = _fit_seconds(3, extra)
                per_update[name].append((t3 - t1) / (2 * BATCHES))
    base = statistics.median(per_update["one process"])
    results = {}
    print(f"{'configuration':24s} {'s/update':>9s} {'min':>7s} {'max':>7s} {'speed-up':>8s}")
    for name, values in per_update.items():
        med = statistics.median(values)
        results[name] = dict(median=med, min=min(values), max=max(values),
                             speedup=base / med if med > 0 else float("nan"))
        print(f"{name:24s} {med:9.4f} {min(values):7.4f} {max(values):7.4f} "
              f"{base / med:8.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
