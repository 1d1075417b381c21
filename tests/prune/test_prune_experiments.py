"""The diabetes experiment (10-32-1): magnitude pruning against the random baseline, and
gradual pruning to 90 % sparsity through fit.
"""

import math

import numpy as np
import pytest

import minscale as ms
from minscale import prune as P


@pytest.fixture(scope="module")
def diabetes():
    from minscale.data import standardize, train_test_split

    X, y = ms.datasets.load_diabetes()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    y_tr, y_te, _ = standardize(y_tr.reshape(-1, 1), y_te.reshape(-1, 1))
    dense = ms.Sequential([ms.Dense(32, activation="relu", kernel_initializer="he_normal"),
                           ms.Dense(1)], input_dim=10, seed=0)
    dense.compile(optimizer=ms.optim.Adam(ms.schedules.InverseTimeDecay(0.01, 0.05)))
    dense.fit(X_tr, y_tr, epochs=60, batch_size=64, seed=0)
    return dense, X_tr, y_tr, X_te, y_te


def _iteratively_pruned(dense, X_tr, y_tr, method, levels=(0.5, 0.7, 0.8, 0.9)):
    """Iterative pruning (Han et al. 2015): prune, fine-tune 10 epochs, prune further, ...

    Each level keeps every earlier zero (the random baseline draws nested masks), and both
    methods get exactly the same fine-tuning. Returns {sparsity: model copy at that level}.
    """
    model, out = dense.copy(), {}
    for level in levels:
        P.prune(model, level, method=method, seed=0)
        model.compile(optimizer=ms.optim.Adam(ms.schedules.InverseTimeDecay(0.003, 0.05)))
        model.fit(X_tr, y_tr, epochs=10, batch_size=64, seed=1)
        out[level] = model.copy()
    return out


def test_diabetes_magnitude_beats_random_after_the_same_finetuning(diabetes):
    # standardized-target test MSE, split seed 0, dense 0.518; iterative pruning with the same
    # fine-tuning, measured: magnitude 0.492 / 0.595 / 0.641 against random 0.667 / 0.792 /
    # 0.886 at 0.5 / 0.8 / 0.9 (and magnitude wins at every level on split seeds 1..3 too).
    # One-shot pruning to 0.9 of this tiny net is no contest: the layer-wise rule leaves 3 of
    # 32 output weights whose hidden units have lost their inputs, and predictions go flat.
    dense, X_tr, y_tr, X_te, y_te = diabetes
    magnitude = _iteratively_pruned(dense, X_tr, y_tr, "magnitude")
    random = _iteratively_pruned(dense, X_tr, y_tr, "random")
    for level in (0.5, 0.8, 0.9):
        assert magnitude[level].sparsity()["total"] == pytest.approx(level, abs=0.01)
        assert magnitude[level].evaluate(X_te, y_te) < random[level].evaluate(X_te, y_te)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_diabetes_magnitude_beats_random_right_after_pruning_on_training_loss(diabetes,
                                                                              sparsity):
    # training MSE right after one-shot pruning (dense 0.410), magnitude vs random seeds 0..4:
    # 0.5 -> 0.516 vs min 0.734, mean 0.901; 0.8 -> 0.789 vs min 0.812, mean 1.000.
    # At 0.9 one-shot magnitude pruning flattens this tiny net (1.094 vs mean 0.991): see the
    # iterative protocol above, where magnitude wins at 0.9 too.
    dense, X_tr, y_tr, X_te, y_te = diabetes
    magnitude = P.prune(dense.copy(), sparsity).evaluate(X_tr, y_tr)
    random = [P.prune(dense.copy(), sparsity, "random", seed=s).evaluate(X_tr, y_tr)
              for s in range(5)]
    assert magnitude < np.mean(random)


def test_diabetes_gradual_pruning_to_90_percent_within_15_percent_of_dense(diabetes):
    dense, X_tr, y_tr, X_te, y_te = diabetes
    dense_mse = dense.evaluate(X_te, y_te)
    model = dense.copy()
    model.compile(optimizer=ms.optim.Adam(0.003))
    steps = math.ceil(X_tr.shape[0] / 32)  # 12 updates per epoch
    schedule = P.PolynomialDecaySparsity(0.0, 0.9, begin_step=0, end_step=50 * steps,
                                         frequency=steps)
    model.fit(X_tr, y_tr, epochs=100, batch_size=32, seed=1, pruning=schedule)
    assert model.sparsity()["layers"] == pytest.approx([0.9, round(0.9 * 32) / 32], rel=1e-14)
    assert model.evaluate(X_te, y_te) <= 1.15 * dense_mse
