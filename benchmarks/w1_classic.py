"""W1, the classic example: y = 2x + 1 + noise, 100 x 1, one Dense unit, Adam 0.1 with
inverse-time decay, MSE, 100 epochs of batch 10 (1000 updates). minscale-numba (the compiled
whole-epoch loop) vs minscale-numpy (the general loop) vs PyTorch eager doing the same updates
on the same batches (one shuffled order per epoch from a NumPy generator, like minscale).
"""
from __future__ import annotations

import numpy as np

from . import common

NAME = "W1 classic 1-unit fit (1000 Adam updates)"


def _minscale_fit(backend, X, y):
    import minscale as ms
    from minscale import optim, schedules

    def fit():
        ms.set_backend(backend)
        m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
        m.compile(loss="mse", optimizer=optim.Adam(schedules.InverseTimeDecay(0.1,
                                                                                decay_rate=0.01)))
        m.fit(X, y, epochs=100, batch_size=10, seed=42, verbose=0)
    return fit


def _torch_fit(torch, X, y):
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y)

    def fit():
        torch.manual_seed(0)
        model = torch.nn.Linear(1, 1).double()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.01 * t))
        loss_fn = torch.nn.MSELoss()
        rng = np.random.default_rng(42)
        for _ in range(100):
            order = torch.from_numpy(rng.permutation(100))
            for b in range(10):
                idx = order[b * 10:(b + 1) * 10]
                opt.zero_grad()
                loss = loss_fn(model(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sched.step()
    return fit


def run(ctx):
    """Times per thread count; ratios torch / numba and numpy / numba (per round, median)."""
    import minscale as ms

    X, y = ms.datasets.make_linear(n_samples=100, seed=42)
    X = np.asarray(X, dtype=np.float64).reshape(-1, 1)
    y = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    torch = common.torch_module()
    result = {"name": NAME, "unit": "s per 1000 updates", "threads": {}}
    for n in ctx["threads"]:
        with common.threads(n):
            cands = {"minscale-numba": _minscale_fit("numba", X, y),
                     "minscale-numpy": _minscale_fit("numpy", X, y)}
            if torch:
                cands["torch"] = _torch_fit(torch, X, y)
            c2c = ctx["probe"].sample() if n > 1 else None
            times = common.interleaved(cands, ctx["rounds"])
        entry = {"times": {k: common.summary(v) for k, v in times.items()},
                 "ratios": {"numpy/numba": common.ratios(times, "minscale-numpy",
                                                          "minscale-numba")}}
        if torch:
            entry["ratios"]["torch/numba"] = common.ratios(times, "torch", "minscale-numba")
        if c2c is not None:
            entry["c2c_ns"] = c2c
        result["threads"][str(n)] = entry
    ms.set_backend(None)
    return result


def targets(result):
    """W1 target: >= 100x faster than PyTorch eager (each thread count)."""
    out = []
    for n, entry in result["threads"].items():
        r = entry["ratios"].get("torch/numba")
        if r is not None:
            out.append({"target": f"W1 >= 100x faster than torch eager (t{n})",
                        "value": r["median"], "goal": 100.0, "met": r["median"] >= 100.0})
    return out
