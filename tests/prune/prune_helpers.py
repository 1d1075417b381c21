"""Helpers shared by the model-level pruning tests of this folder (imported by basename)."""

import numpy as np

import minscale as ms


def mlp(sizes, activations=None, seed=0, dtype="float64", use_bias=True):
    """Sequential with layer widths sizes[1:], input width sizes[0], last layer linear."""
    hidden = sizes[1:-1]
    activations = activations or ["relu"] * len(hidden)
    layers = [ms.Dense(h, activation=a, use_bias=use_bias) for h, a in zip(hidden, activations)]
    layers.append(ms.Dense(sizes[-1], use_bias=use_bias))
    return ms.Sequential(layers, input_dim=sizes[0], seed=seed, dtype=dtype)


def regression_data(n=64, d_in=6, d_out=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d_in))
    y = np.tanh(X @ rng.standard_normal((d_in, d_out))) + 0.1 * rng.standard_normal((n, d_out))
    return X, y


def trained(sizes=(6, 16, 8, 1), activations=None, epochs=20, seed=0, dtype="float64",
            use_bias=True):
    X, y = regression_data(d_in=sizes[0], d_out=sizes[-1], seed=seed)
    model = mlp(sizes, activations, seed=seed, dtype=dtype, use_bias=use_bias)
    model.compile(optimizer=ms.optim.Adam(0.01))
    model.fit(X, y, epochs=epochs, batch_size=16, seed=seed)
    return model, X, y


def pruned_count(mask):
    return int(mask.size - np.count_nonzero(mask))
