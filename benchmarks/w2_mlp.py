"""W2, MLP training steps, float32, MSE, plain SGD: 784-300-100-10 at batch 128 and
2048-2048-2048-2048 at batch 256 (ReLU hidden layers). minscale runs ``fit`` over a fixed set
of batches (no shuffling), so a step is batch gather + forward + backward + update; PyTorch
runs the same steps eagerly. Reported as steps/s, and for the wide shape as a fraction of the
measured float32 GEMM peak: a step is 2 n (forward) + 4 n (backward) flops per weight and row,
minus the first layer's unused input gradient.
"""
from __future__ import annotations

import numpy as np

from . import common

NAME = "W2 MLP training step, float32 SGD"
SHAPES = {"784-300-100-10 b128": ([784, 300, 100, 10], 128, 30),
          "2048x4 b256": ([2048, 2048, 2048, 2048], 256, 4)}


def flops_per_step(widths, batch):
    """Multiply-add flops of one SGD step: 6 B d_in d_out per layer, 4 for the first."""
    total = 0
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        total += (4 if i == 0 else 6) * batch * a * b
    return total


def _data(widths, batch, steps):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * steps, widths[0]), dtype=np.float32)
    y = rng.standard_normal((batch * steps, widths[-1]), dtype=np.float32)
    return X, y


def _minscale(backend, widths, batch, X, y):
    import minscale as ms

    ms.set_backend(backend)
    layers = [ms.Dense(w, "relu") for w in widths[1:-1]] + [ms.Dense(widths[-1])]
    model = ms.Sequential(layers, input_dim=widths[0], seed=0, dtype="float32")
    model.compile(loss="mse", optimizer=ms.optim.SGD(0.001))

    def steps():
        ms.set_backend(backend)
        model.fit(X, y, epochs=1, batch_size=batch, shuffle=False, verbose=0)
    return steps


def _torch(torch, widths, batch, X, y):
    nn = torch.nn
    torch.manual_seed(0)
    mods = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    loss_fn = nn.MSELoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n_steps = X.shape[0] // batch

    def steps():
        for s in range(n_steps):
            opt.zero_grad()
            loss = loss_fn(model(Xt[s * batch:(s + 1) * batch]), yt[s * batch:(s + 1) * batch])
            loss.backward()
            opt.step()
    return steps


def run(ctx):
    import minscale as ms

    torch = common.torch_module()
    result = {"name": NAME, "unit": "steps/s", "shapes": {}}
    for label, (widths, batch, n_steps) in SHAPES.items():
        X, y = _data(widths, batch, n_steps)
        shape = {"flops_per_step": flops_per_step(widths, batch), "steps": n_steps,
                 "threads": {}}
        for n in ctx["threads"]:
            with common.threads(n):
                cands = {"minscale-numba": _minscale("numba", widths, batch, X, y),
                         "minscale-numpy": _minscale("numpy", widths, batch, X, y)}
                if torch:
                    cands["torch"] = _torch(torch, widths, batch, X, y)
                c2c = ctx["probe"].sample() if n > 1 else None
                times = common.interleaved(cands, ctx["rounds"])
            rates = {k: common.summary([n_steps / t for t in v]) for k, v in times.items()}
            entry = {"steps_per_s": rates,
                     "ratios": {"numba/numpy speed": common.ratios(times, "minscale-numpy",
                                                                   "minscale-numba")}}
            if torch:
                entry["ratios"]["numba/torch speed"] = common.ratios(times, "torch",
                                                                     "minscale-numba")
            peak = ctx["limits"]["gemm_gflops"][str(n)]["median"]
            best = max(rates["minscale-numba"]["median"], rates["minscale-numpy"]["median"])
            entry["gflops_minscale_best"] = best * shape["flops_per_step"] / 1e9
            entry["fraction_of_gemm_peak"] = entry["gflops_minscale_best"] / peak
            if c2c is not None:
                entry["c2c_ns"] = c2c
            shape["threads"][str(n)] = entry
        result["shapes"][label] = shape
    ms.set_backend(None)
    return result


def targets(result):
    """W2 targets: minscale's best steps/s >= torch's best (over thread counts); wide shape at
    >= 85% of the GEMM peak (at its best thread count)."""
    out = []
    for label, shape in result["shapes"].items():
        th = shape["threads"]
        ms_best = max(max(e["steps_per_s"]["minscale-numba"]["median"],
                          e["steps_per_s"]["minscale-numpy"]["median"]) for e in th.values())
        if all("torch" in e["steps_per_s"] for e in th.values()):
            torch_best = max(e["steps_per_s"]["torch"]["median"] for e in th.values())
            out.append({"target": f"W2 {label}: steps/s >= torch at its best thread count",
                        "value": ms_best / torch_best, "goal": 1.0,
                        "met": ms_best >= torch_best})
        if label.startswith("2048"):
            frac = max(e["fraction_of_gemm_peak"] for e in th.values())
            out.append({"target": f"W2 {label}: >= 85% of measured float32 GEMM peak",
                        "value": frac, "goal": 0.85, "met": frac >= 0.85})
    return out
