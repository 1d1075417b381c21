"""W5, data-parallel training on one machine: samples/s of ``fit(..., workers=k)``, k = 1, 2.

Model 784-300-100-10 (ReLU), float32, plain SGD, MSE, global batch 256, synthetic data of
40 batches. ``workers=1`` trains in this process with one BLAS thread (the compiled loop on the
numba backend); ``workers=2`` starts two spawned processes with one BLAS thread each that
allreduce through shared memory every step (sync mode). Process start-up (spawn, imports, JIT
cache loading) is a fixed cost, so each configuration runs 2 and 6 epochs and the steady-state
rate is the marginal one: 4 epochs of samples / (t6 - t2). Both totals are reported too.
"""
from __future__ import annotations

import numpy as np

from . import common

NAME = "W5 data-parallel samples/s, 1 vs 2 workers"
WIDTHS = [784, 300, 100, 10]
BATCH = 256
STEPS = 40


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
    with common.threads(1):
        c2c = ctx["probe"].sample()
        times = common.interleaved({"w1 e2": fit(1, 2), "w1 e6": fit(1, 6),
                                    "w2 e2": fit(2, 2), "w2 e6": fit(2, 6)}, rounds)
    result = {"name": NAME, "unit": "samples/s", "samples_per_epoch": n, "c2c_ns": c2c,
              "times": {k: common.summary(v) for k, v in times.items()}}
    for w in (1, 2):
        marg = [4 * n / (b - a) for a, b in zip(times[f"w{w} e2"], times[f"w{w} e6"])]
        total = [6 * n / t for t in times[f"w{w} e6"]]
        result[f"workers_{w}"] = {"marginal_samples_per_s": common.summary(marg),
                                  "samples_per_s_incl_startup_6_epochs": common.summary(total)}
    result["scaling_marginal"] = result["workers_2"]["marginal_samples_per_s"]["median"] / \
        result["workers_1"]["marginal_samples_per_s"]["median"]
    ms.set_backend(None)
    return result


def targets(result):
    """No numeric target in the issue; the scaling is reported."""
    return []
