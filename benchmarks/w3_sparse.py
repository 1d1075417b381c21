"""W3 sparse, CSR vs dense inference of a magnitude-pruned 784-300-100-10 (ReLU) float32 model.

For each sparsity (90, 95, 99 %) one model (seed 0) is pruned layer-wise with
``minscale.prune.prune(model, s)`` (method "magnitude"), then converted with
``minscale.prune.to_sparse(model)``. Compared, interleaved: ``model.predict(X)`` (dense GEMMs
over the zeroed weights) and ``to_sparse(model).predict(X)`` (``scipy.sparse`` CSR weights), at
batch 1 and batch 256, on the numba backend. A sample is `REPS[batch]` calls in a row, so one
sample lasts milliseconds; times are reported per call. The ratio dense/CSR is taken per round
(> 1: CSR faster). Both outputs are compared once, untimed (max absolute difference recorded).
"""
from __future__ import annotations

import numpy as np

from . import common

NAME = "W3 sparse, CSR vs dense predict at 90/95/99% sparsity, batch 1 and 256"
WIDTHS = [784, 300, 100, 10]
SPARSITIES = (0.9, 0.95, 0.99)
BATCHES = (1, 256)
REPS = {1: 50, 256: 5}


def _calls(fn, X, reps):
    def f():
        for _ in range(reps):
            fn(X)
    return f


def run(ctx):
    import minscale as ms
    from minscale import prune

    ms.set_backend("numba")
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, WIDTHS[0]), dtype=np.float32) for b in BATCHES}
    models = {}
    for s in SPARSITIES:
        layers = [ms.Dense(w, "relu") for w in WIDTHS[1:-1]] + [ms.Dense(WIDTHS[-1])]
        model = ms.Sequential(layers, input_dim=WIDTHS[0], seed=0, dtype="float32")
        prune.prune(model, s)
        models[s] = (model, prune.to_sparse(model))
    result = {"name": NAME, "unit": "s per predict call", "backend": ms.get_backend(),
              "reps_per_sample": {str(b): r for b, r in REPS.items()}, "cases": {}}
    for s, (model, sparse) in models.items():
        dense_bytes = sum(layer.W.nbytes for layer in model.layers)
        csr_bytes = sum(layer.W.data.nbytes + layer.W.indices.nbytes + layer.W.indptr.nbytes
                        for layer in sparse.layers)
        for b, X in inputs.items():
            diff = float(np.max(np.abs(model.predict(X) - sparse.predict(X))))
            result["cases"][f"{round(s * 100)}% b{b}"] = {
                "sparsity": model.sparsity()["total"], "batch": b,
                "weight_bytes_dense": int(dense_bytes), "weight_bytes_csr": int(csr_bytes),
                "max_abs_diff": diff, "threads": {}}
    for nt in ctx["threads"]:
        with common.threads(nt):
            c2c = ctx["probe"].sample() if nt > 1 else None
            for s, (model, sparse) in models.items():
                for b, X in inputs.items():
                    reps = REPS[b]
                    times = common.interleaved({"dense": _calls(model.predict, X, reps),
                                                "csr": _calls(sparse.predict, X, reps)},
                                               ctx["rounds"])
                    entry = {"times": {k: common.summary([t / reps for t in v])
                                       for k, v in times.items()},
                             "ratios": {"dense/CSR": common.ratios(times, "dense", "csr")}}
                    if c2c is not None:
                        entry["c2c_ns"] = c2c
                    result["cases"][f"{round(s * 100)}% b{b}"]["threads"][str(nt)] = entry
    ms.set_backend(None)
    return result


def targets(result):
    """No numeric target in issue 3 (figures for the note); the ratios are in the table."""
    return []
