"""W1, the classic example: y = 2x + 1 + noise, 100 x 1, one Dense unit, Adam 0.1 with
inverse-time decay, MSE, 100 epochs of batch 10 (1000 updates). minscale-numba (the compiled
whole-epoch loop) vs minscale-numpy (the general loop) vs PyTorch eager doing the same updates
on the same batches (one shuffled order per epoch from a NumPy generator, like minscale), and
the limit: a plain hand-written Numba loop doing the same 1000 updates on the same batches
(two scalars w, b; the target is minscale-numba <= 3x it). The limit is timed twice: with its
shuffling (the same orders drawn from the same NumPy generator in one ``Generator.permuted``
call, work every shuffled fit must do) and without (orders drawn before the clock starts).
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


def _hand_loop():
    """The limit: the 1000 Adam updates of W1 written by hand for one unit, compiled."""
    from numba import njit

    @njit(cache=True)
    def loop(X, y, orders, w, b, lr0, decay, epochs, batch_size):
        mw = vw = mb = vb = 0.0
        t = 0
        n = X.shape[0]
        for e in range(epochs):
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                gw = gb = 0.0
                for r in range(lo, hi):
                    i = orders[e, r]
                    d = w * X[i, 0] + b - y[i, 0]
                    gw += d * X[i, 0]
                    gb += d
                scale = 2.0 / (hi - lo)
                gw *= scale
                gb *= scale
                lr = lr0 / (1.0 + decay * t)
                t += 1
                bc1 = 1.0 - 0.9 ** t
                bc2 = 1.0 - 0.999 ** t
                mw = 0.9 * mw + 0.1 * gw
                vw = 0.999 * vw + 0.001 * gw * gw
                w -= lr * (mw / bc1) / (np.sqrt(vw / bc2) + 1e-8)
                mb = 0.9 * mb + 0.1 * gb
                vb = 0.999 * vb + 0.001 * gb * gb
                b -= lr * (mb / bc1) / (np.sqrt(vb / bc2) + 1e-8)
        return w, b
    return loop


def _orders(seed, n, epochs):
    out = np.empty((epochs, n), dtype=np.int64)
    out[:] = np.arange(n)
    # the rows of successive rng.permutation(n) calls, drawn in one call
    return np.random.default_rng(seed).permuted(out, axis=1, out=out)


def _hand_fit(X, y, shuffle_inside):
    import minscale as ms

    loop = _hand_loop()
    m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
    w0, b0 = float(m.layers[0].W[0, 0]), float(m.layers[0].b[0])
    fixed = _orders(42, X.shape[0], 100)

    def fit():
        orders = _orders(42, X.shape[0], 100) if shuffle_inside else fixed
        return loop(X, y, orders, w0, b0, 0.1, 0.01, 100, 10)
    return fit


def _check_limit(X, y):
    """The hand loop trains the same line as minscale (rounding aside): relative gap."""
    import minscale as ms
    from minscale import optim, schedules

    ms.set_backend("numba")
    m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
    m.compile(loss="mse", optimizer=optim.Adam(schedules.InverseTimeDecay(0.1, decay_rate=0.01)))
    m.fit(X, y, epochs=100, batch_size=10, seed=42, verbose=0)
    w, b = _hand_fit(X, y, True)()
    got = np.array([m.layers[0].W[0, 0], m.layers[0].b[0]])
    return float(np.max(np.abs(got - [w, b]) / np.abs(got)))


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
    result = {"name": NAME, "unit": "s per 1000 updates", "threads": {},
              "hand loop vs minscale, max relative difference of w, b": _check_limit(X, y)}
    for n in ctx["threads"]:
        with common.threads(n):
            cands = {"minscale-numba": _minscale_fit("numba", X, y),
                     "minscale-numpy": _minscale_fit("numpy", X, y),
                     "hand-numba": _hand_fit(X, y, True),
                     "hand-numba loop only": _hand_fit(X, y, False)}
            if torch:
                cands["torch"] = _torch_fit(torch, X, y)
            c2c = ctx["probe"].sample() if n > 1 else None
            times = common.interleaved(cands, ctx["rounds"])
        entry = {"times": {k: common.summary(v) for k, v in times.items()},
                 "ratios": {"numpy/numba": common.ratios(times, "minscale-numpy",
                                                          "minscale-numba"),
                            "numba/hand": common.ratios(times, "minscale-numba", "hand-numba"),
                            "numba/hand loop only": common.ratios(
                                times, "minscale-numba", "hand-numba loop only")}}
        if torch:
            entry["ratios"]["torch/numba"] = common.ratios(times, "torch", "minscale-numba")
        if c2c is not None:
            entry["c2c_ns"] = c2c
        result["threads"][str(n)] = entry
    ms.set_backend(None)
    return result


def targets(result):
    """W1 targets: >= 100x faster than PyTorch eager; <= 3x the hand-written Numba loop, with
    its shuffling and without (each thread count)."""
    out = []
    for n, entry in result["threads"].items():
        for key in ("numba/hand", "numba/hand loop only"):
            r = entry["ratios"][key]["median"]
            out.append({"target": f"W1 minscale-numba <= 3x the hand-written loop, {key} (t{n})",
                        "value": r, "goal": 3.0, "met": r <= 3.0})
        r = entry["ratios"].get("torch/numba")
        if r is not None:
            out.append({"target": f"W1 >= 100x faster than torch eager (t{n})",
                        "value": r["median"], "goal": 100.0, "met": r["median"] >= 100.0})
    return out
