"""Models for the export tests: trained on the shipped data sets, or drawn by hypothesis.

``quantized_models()`` is a hypothesis strategy for integer-only QuantizedModels built directly
from drawn codes and quantization parameters (depth 1..4, widths 1..64, identity/relu, per
tensor or per channel, zero points at their extremes, pruned or dense), so every corner the
generated code must handle is reachable without training.
"""
from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st

import minscale as ms
from minscale.quant import QuantizedDense, QuantizedModel, WeightSpec

ZERO_POINTS = (-128, 127, 0)


@st.composite
def quantized_models(draw, max_depth=4, max_width=64, activations=("int8",)):
    """A (QuantizedModel, X) pair; X (n, d_in) float rows reaching the input's saturation."""
    act = draw(st.sampled_from(activations))
    signed = act == "int8"
    qmin, qmax = (-128, 127) if signed else (0, 255)
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    per_channel = draw(st.booleans())
    sparsity = draw(st.sampled_from([0.0, 0.0, 0.5, 0.9, 0.98]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)

    def zero_point():
        choice = draw(st.sampled_from(["min", "max", "mid", "random"]))
        return {"min": qmin, "max": qmax, "mid": (qmin + qmax + 1) // 2,
                "random": int(rng.integers(qmin, qmax + 1))}[choice]

    qparams = [(float(2.0 ** rng.uniform(-6, 0)), zero_point()) for _ in range(depth + 1)]
    spec = WeightSpec(8, per_channel=per_channel)
    layers = []
    for i in range(depth):
        d_in, d_out = widths[i], widths[i + 1]
        codes = rng.integers(-127, 128, size=(d_in, d_out)).astype(np.int8)
        codes[rng.random(codes.shape) < sparsity] = 0
        w_scale = (np.full(d_out, 2.0 ** rng.uniform(-8, -2)) if not per_channel
                   else 2.0 ** rng.uniform(-8, -2, size=d_out))
        # choose the output scale so that the multiplier s_in * s_w / s_out spreads around the
        # value that keeps outputs inside the code range, a few octaves either side
        s_in = qparams[i][0]
        target = 0.02 / np.sqrt(d_in) * 2.0 ** rng.uniform(-3, 3)
        s_out = float(s_in * w_scale.max() / target)
        qparams[i + 1] = (s_out, qparams[i + 1][1])
        has_bias = draw(st.booleans())
        bias_codes = (rng.integers(-40000, 40000, size=d_out).astype(np.int32) if has_bias
                      else None)
        activation = draw(st.sampled_from(["identity", "relu"]))
        layers.append(QuantizedDense(codes, w_scale, activation, 0.01, None, bias_codes,
                                     qparams[i], qparams[i + 1], spec, None))
    model = QuantizedModel(layers, widths[0], "float64", spec, act, qparams[0], 0)
    n = draw(st.integers(1, 6))
    s0, z0 = qparams[0]
    lo, hi = s0 * (qmin - z0), s0 * (qmax - z0)
    # rows inside the range, at its ends and beyond them (the input saturates)
    X = rng.uniform(lo, hi, size=(n, widths[0]))
    X[0] = np.where(rng.random(widths[0]) < 0.5, lo - 10 * s0, hi + 10 * s0)
    return model, X


def train_float(data, hidden=(32,), epochs=5, seed=0, dtype="float64", activation="relu"):
    """A small trained float model on a shipped data set, and its split (standardized)."""
    from minscale.data import one_hot, standardize, train_test_split
    X, y, info = ms.datasets.load(data)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    if info["task"] == "classification":
        y_tr = one_hot(y_tr, info["n_classes"])
        y_te = one_hot(y_te, info["n_classes"])
    else:
        y_tr, y_te, _ = standardize(y_tr.reshape(-1, 1), y_te.reshape(-1, 1))
    layers = [ms.Dense(h, activation=activation) for h in hidden] + [ms.Dense(y_tr.shape[1])]
    model = ms.Sequential(layers, input_dim=X_tr.shape[1], seed=seed, dtype=dtype)
    model.compile(loss="mse", optimizer="adam")
    model.fit(X_tr, y_tr, epochs=epochs, batch_size=32, seed=seed, verbose=0)
    return model, X_tr, X_te, y_te


@functools.lru_cache(maxsize=None)
def trained(data, pruned=0.0):
    """Cached (float model, X_train, X_test, y_test) for the data set, optionally pruned."""
    model, X_tr, X_te, y_te = train_float(data)
    if pruned:
        ms.prune.prune(model, pruned, method="global")
    return model, X_tr, X_te, y_te


@st.composite
def fixed_models(draw, max_depth=4, max_width=64):
    """A (FixedPointModel, X) pair from a drawn float model, calibrated on drawn rows; X
    reaches beyond the calibration range so that the input and hidden layers saturate."""
    from minscale.quant import quantize_fixed_model
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    acts = [draw(st.sampled_from(["identity", "relu"])) for _ in range(depth)]
    bits = draw(st.sampled_from(["fixed8", "fixed16"]))
    rounding = draw(st.sampled_from(["half_away", "nearest_even"]))
    sparsity = draw(st.sampled_from([0.0, 0.0, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    layers = [ms.Dense(w, activation=a) for w, a in zip(widths[1:], acts)]
    model = ms.Sequential(layers, input_dim=widths[0], seed=seed % 1000)
    scale = 2.0 ** rng.uniform(-4, 4)
    model.set_weights([rng.normal(size=w.shape) * scale / np.sqrt(w.shape[0])
                       for w in model.get_weights()])
    if sparsity:
        ms.prune.prune(model, sparsity)
    X_cal = rng.normal(size=(64, widths[0])) * 2.0 ** rng.uniform(-3, 3)
    q = quantize_fixed_model(model, bits, bits, X_cal, rounding=rounding)
    X = X_cal[: draw(st.integers(1, 6))] * 1.5
    return q, X
