"""W3, global magnitude mask at 90% sparsity over ten float32 tensors of 1000 x 1000 weights.

Compared: ``minscale.prune.global_magnitude_masks`` under each backend (numba: radix/sampling
selection, numpy: ``np.partition``), the kernel alone on a prepared magnitude buffer
(``kernels.keep_all_but_smallest``), the floor -- ONE ``np.partition`` of the 10 M magnitudes
(prepared once, not timed) -- and ``torch.nn.utils.prune.global_unstructured`` with
``L1Unstructured`` on ten ``nn.Linear(1000, 1000)`` (fresh modules each round, built untimed).
"""
from __future__ import annotations

import numpy as np

from . import common

NAME = "W3 global magnitude mask, 90% of 10 x 1M float32"
K_SPARSITY = 0.9


def run(ctx):
    import minscale as ms
    from minscale import kernels, prune

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((1000, 1000), dtype=np.float32) for _ in range(10)]
    scores = np.abs(np.concatenate([w.ravel() for w in weights]))
    n = scores.size
    k = round(K_SPARSITY * n)
    torch = common.torch_module()

    def masks(backend):
        def f():
            ms.set_backend(backend)
            prune.global_magnitude_masks(weights, K_SPARSITY)
        return f

    def kernel(backend):
        keep = np.empty(n, dtype=bool)

        def f():
            ms.set_backend(backend)
            kernels.keep_all_but_smallest(scores, k, keep)
        return f

    def floor():
        np.partition(scores, k - 1)

    if torch:
        import torch.nn.utils.prune as tprune
        torch.manual_seed(0)
        state = {}

        def torch_setup():
            mods = [torch.nn.Linear(1000, 1000, bias=False) for _ in range(10)]
            with torch.no_grad():
                for mod, w in zip(mods, weights):
                    mod.weight.copy_(torch.from_numpy(w.T.copy()))
            state["params"] = [(mod, "weight") for mod in mods]

        def torch_prune():
            tprune.global_unstructured(state["params"], pruning_method=tprune.L1Unstructured,
                                       amount=K_SPARSITY)
    result = {"name": NAME, "unit": "s", "n": n, "threads": {}}
    for nt in ctx["threads"]:
        with common.threads(nt):
            cands = {"minscale-numba": masks("numba"), "minscale-numpy": masks("numpy"),
                     "kernel-numba": kernel("numba"), "np.partition floor": floor}
            c2c = ctx["probe"].sample() if nt > 1 else None
            times = common.interleaved(cands, ctx["rounds"])
            if torch:
                ttimes = []
                torch_setup()
                torch_prune()  # warm-up
                for _ in range(max(3, ctx["rounds"] // 2)):
                    torch_setup()
                    ttimes.append(common.time_once(torch_prune))
                times["torch"] = ttimes
        entry = {"times": {k_: common.summary(v) for k_, v in times.items()},
                 "ratios": {"numba/floor": common.ratios(times, "minscale-numba",
                                                         "np.partition floor"),
                            "kernel/floor": common.ratios(times, "kernel-numba",
                                                          "np.partition floor"),
                            "numpy/floor": common.ratios(times, "minscale-numpy",
                                                         "np.partition floor")}}
        if torch:
            tmed = common.summary(times["torch"])["median"]
            entry["ratios"]["torch/numba"] = {
                "median": tmed / entry["times"]["minscale-numba"]["median"],
                "note": "torch timed in its own rounds (fresh modules each), ratio of medians"}
        if c2c is not None:
            entry["c2c_ns"] = c2c
        result["threads"][str(nt)] = entry
    ms.set_backend(None)
    return result


def targets(result):
    """W3 targets: <= 1.3x the np.partition floor; >= 15x faster than torch."""
    out = []
    for nt, e in result["threads"].items():
        r = e["ratios"]["numba/floor"]["median"]
        out.append({"target": f"W3 global_magnitude_masks <= 1.3x np.partition (t{nt})",
                    "value": r, "goal": 1.3, "met": r <= 1.3})
        if "torch/numba" in e["ratios"]:
            r = e["ratios"]["torch/numba"]["median"]
            out.append({"target": f"W3 >= 15x faster than torch global pruning (t{nt})",
                        "value": r, "goal": 15.0, "met": r >= 15.0})
    return out
