"""Gradual pruning through fit: the masks follow the sparsity schedule step by step.
"""

import numpy as np
import pytest

import minscale as ms
from minscale import prune as P
from minscale.train import Callback


def mlp(sizes, seed=0):
    """Sequential with layer widths sizes[1:], input width sizes[0], relu hidden, linear last."""
    layers = [ms.Dense(h, activation="relu") for h in sizes[1:-1]] + [ms.Dense(sizes[-1])]
    return ms.Sequential(layers, input_dim=sizes[0], seed=seed, dtype="float64")


def regression_data(n=64, d_in=6, d_out=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d_in))
    y = np.tanh(X @ rng.standard_normal((d_in, d_out))) + 0.1 * rng.standard_normal((n, d_out))
    return X, y


def pruned_count(mask):
    return int(mask.size - np.count_nonzero(mask))


class _Recorder(Callback):
    """Mask and step at every step begin (after fit's own pruning callback ran)."""

    def __init__(self):
        self.steps, self.masks = [], []

    def on_step_begin(self, model, step):
        self.steps.append(step)
        self.masks.append(model.mask.copy())


def test_fit_prunes_gradually_on_the_schedule():
    X, y = regression_data(n=40)
    model = mlp((6, 16, 1))
    model.compile(optimizer=ms.optim.Adam(0.01))
    sched = P.PolynomialDecaySparsity(0.0, 0.8, begin_step=0, end_step=20, frequency=5)
    rec = _Recorder()
    history = model.fit(X, y, epochs=6, batch_size=8, seed=0, pruning=sched, callbacks=[rec])
    assert rec.steps == list(range(30))
    sizes = [96, 16]
    for step, mask in zip(rec.steps, rec.masks):
        last_update = min(step - step % 5, 20)  # masks change at 0, 5, 10, 15, 20 only
        expected = [round(sched(last_update) * n) for n in sizes]
        got = [pruned_count(mask[lo:lo + n]) for (lo, _), n in zip(model.layer_slices(), sizes)]
        assert got == expected, f"step {step}"
    for earlier, later in zip(rec.masks, rec.masks[1:]):
        assert not np.any(~earlier & later), "a pruned weight came back"
    assert model.sparsity()["layers"] == pytest.approx([round(0.8 * 96) / 96, round(0.8 * 16) / 16],
                                                     rel=1e-14)
    assert np.all(model.params[~model.mask] == 0)
    assert len(history.history["sparsity"]) == 6
    assert history.history["sparsity"][-1] == model.sparsity()["total"]


def test_fit_with_constant_sparsity_and_global_method():
    X, y = regression_data(n=40)
    model = mlp((6, 16, 1))
    model.compile(optimizer=ms.optim.SGD(0.05, momentum=0.9))
    model.fit(X, y, epochs=4, batch_size=8, seed=0, pruning=P.ConstantSparsity(0.9, 3, frequency=7),
              pruning_method="global")
    assert pruned_count(model.mask) == round(0.9 * 112)
    assert np.all(model.params[~model.mask] == 0)
