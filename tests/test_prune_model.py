"""Tests of minscale.prune at the model level: masks in the flat buffer, masked training,
gradual pruning through fit, strip / restore, prune_to_tolerance, structured pruning + shrink,
CSR inference, byte counts, the ``minscale prune`` command and the diabetes experiment.

Reference values are worked out by hand in the comments beside them.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale import prune as P
from minscale.train import Callback


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


# ----------------------------------------------------------------------------------------
# masked training: the 2 x 2 case


@pytest.mark.parametrize("optimizer", [
    lambda: ms.optim.SGD(0.1),
    lambda: ms.optim.SGD(0.1, momentum=0.9),
    lambda: ms.optim.SGD(0.1, momentum=0.9, nesterov=True),
    lambda: ms.optim.Adam(0.1),
], ids=["sgd", "momentum", "nesterov", "adam"])
def test_pruned_weights_stay_zero_after_every_step_while_others_move(optimizer):
    model = ms.Sequential([ms.Dense(2, use_bias=False)], input_dim=2, seed=0)
    model.layers[0].W[...] = [[0.05, 1.0], [-2.0, 0.01]]
    P.prune(model, 0.5)  # |w| = .05, 1, 2, .01: k = 2 -> W[0,0] and W[1,1] pruned
    np.testing.assert_array_equal(model.layers[0].W_mask, [[False, True], [True, False]])
    model.compile(optimizer=optimizer())
    x, target = np.array([[1.0, 1.0]]), np.array([[5.0, 5.0]])
    W = model.layers[0].W
    previous = W.copy()
    for _ in range(10):
        model.fit(x, target, epochs=1, batch_size=1, shuffle=False)
        assert W[0, 0] == 0.0 and W[1, 1] == 0.0
        assert W[0, 1] != previous[0, 1] and W[1, 0] != previous[1, 0]
        previous = W.copy()


def test_masked_sgd_matches_the_closed_form():
    # y_hat = [W10, W01] (the pruned W00, W11 are 0); mean MSE over n * d_out = 2 entries,
    # so dL/dy_hat = y_hat - 5 and each kept weight follows w <- w + 0.1 (5 - w):
    # w_k = 5 - (5 - w_0) 0.9^k, i.e. W01 = 5 - 4 * 0.9^k and W10 = 5 - 7 * 0.9^k
    model = ms.Sequential([ms.Dense(2, use_bias=False)], input_dim=2, seed=0)
    model.layers[0].W[...] = [[0.05, 1.0], [-2.0, 0.01]]
    P.prune(model, 0.5)
    model.compile(optimizer=ms.optim.SGD(0.1))
    for k in range(1, 11):
        model.fit([[1.0, 1.0]], [[5.0, 5.0]], epochs=1, batch_size=1, shuffle=False)
        expected = [[0.0, 5 - 4 * 0.9**k], [5 - 7 * 0.9**k, 0.0]]
        np.testing.assert_allclose(model.layers[0].W, expected, rtol=1e-12, atol=0)


def test_pruned_weights_and_adam_moments_are_zero_after_100_adam_steps():
    X, y = regression_data(n=50, d_in=10)
    model = mlp((10, 32, 1))
    model.compile(optimizer=ms.optim.Adam(0.01))
    model.fit(X, y, epochs=5, batch_size=10, seed=0)  # moments are nonzero everywhere now
    P.prune(model, 0.8, method="global")
    mask, before = model.mask.copy(), model.params.copy()
    pruned = ~mask
    start = model.optimizer.iterations
    model.fit(X, y, epochs=20, batch_size=10, seed=1)
    assert model.optimizer.iterations - start == 100
    np.testing.assert_array_equal(model.mask, mask)
    assert np.all(model.params[pruned] == 0)
    state = model.optimizer.state_arrays()
    assert np.all(state["m"][pruned] == 0) and np.all(state["v"][pruned] == 0)
    kept_w = mask & model.prunable
    assert np.all(model.params[kept_w] != before[kept_w]), "a kept weight did not move"


def test_pruning_mid_training_zeroes_momentum_of_newly_pruned_weights():
    X, y = regression_data()
    model = mlp((6, 8, 1))
    model.compile(optimizer=ms.optim.SGD(0.05, momentum=0.9))
    model.fit(X, y, epochs=2, batch_size=16, seed=0)
    P.prune(model, 0.5)
    velocity = model.optimizer.state_arrays()["velocity"]
    assert np.all(velocity[~model.mask] == 0)
    model.fit(X, y, epochs=3, batch_size=16, seed=0)
    assert np.all(model.params[~model.mask] == 0)


# ----------------------------------------------------------------------------------------
# prune(): counts per method, sparsity report, nesting


def test_magnitude_prunes_each_layer_exactly():
    model = mlp((6, 16, 8, 1))  # W sizes 96, 128, 8
    P.prune(model, 0.3)
    counts = [pruned_count(layer.W_mask) for layer in model.layers]
    assert counts == [round(0.3 * 96), round(0.3 * 128), round(0.3 * 8)] == [29, 38, 2]
    assert model.sparsity()["layers"] == pytest.approx([29 / 96, 38 / 128, 2 / 8], rel=1e-14)
    assert all(layer.b_mask.all() for layer in model.layers)  # biases untouched by default
    for layer in model.layers:  # per layer, every kept |w| >= every pruned |w| (pre-pruning)
        assert np.all(layer.W[~layer.W_mask] == 0)


def test_global_prunes_exactly_over_all_weights_and_ranks_them_together():
    model = mlp((6, 16, 8, 1))
    weights = [layer.W.copy() for layer in model.layers]
    P.prune(model, 0.6, method="global")
    assert pruned_count(model.mask) == round(0.6 * 232) == 139
    assert model.sparsity()["total"] == pytest.approx(139 / 232, rel=1e-14)
    expected = P.global_magnitude_masks(weights, 0.6)
    for layer, m in zip(model.layers, expected):
        np.testing.assert_array_equal(layer.W_mask, m)


def test_include_bias_prunes_each_bias_vector_too():
    model = mlp((6, 16, 1))
    for layer in model.layers:
        layer.b[...] = np.linspace(-1, 1, layer.units)
    P.prune(model, 0.5, include_bias=True)
    assert [pruned_count(layer.b_mask) for layer in model.layers] == [8, 0]  # round(0.5) = 0
    assert model.sparsity()["total_with_bias"] == pytest.approx(
        pruned_count(model.mask) / model.params.size, rel=1e-14)


def test_random_is_exact_reproducible_and_nested():
    a, b = mlp((6, 16, 1)), mlp((6, 16, 1))
    P.prune(a, 0.4, method="random", seed=3)
    P.prune(b, 0.4, method="random", seed=3)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert [pruned_count(layer.W_mask) for layer in a.layers] == [38, 6]  # 0.4*96, 0.4*16
    first = a.mask.copy()
    P.prune(a, 0.7, method="random", seed=4)
    assert not np.any(~first & a.mask)


def test_structured_prunes_hidden_neurons_only():
    model = mlp((6, 10, 8, 2))
    P.prune(model, 0.5, method="structured", include_bias=True)
    for layer, units in zip(model.layers[:2], (10, 8)):
        dead = ~layer.W_mask.any(axis=0)
        assert dead.sum() == round(0.5 * units)
        assert np.all(layer.W_mask.all(axis=0) | dead), "a neuron is only partly pruned"
        np.testing.assert_array_equal(layer.b_mask, ~dead)
    assert model.layers[2].W_mask.all() and model.layers[2].b_mask.all()
    assert model.sparsity()["layers"] == pytest.approx([0.5, 0.5, 0.0], rel=1e-14)


def test_repruning_is_stable_and_higher_sparsity_keeps_earlier_zeros():
    model, X, y = trained()
    for method in ("magnitude", "global"):
        m = model.copy()
        P.prune(m, 0.5, method=method)
        mask, params = m.mask.copy(), m.params.copy()
        P.prune(m, 0.5, method=method)
        np.testing.assert_array_equal(m.mask, mask)
        np.testing.assert_array_equal(m.params, params)
        P.prune(m, 0.8, method=method)
        assert not np.any(~mask & m.mask)


def test_lower_sparsity_lets_weights_back_with_their_saved_values():
    model = mlp((6, 16, 1))
    original = model.params.copy()
    P.prune(model, 0.5)
    at_half = model.mask.copy()
    P.prune(model, 0.25)
    assert pruned_count(model.layers[0].W_mask) == 24  # round(0.25 * 96)
    back = ~at_half & model.mask
    assert back.sum() == (48 - 24) + (8 - 4)  # both layers: from 0.5 down to 0.25
    np.testing.assert_array_equal(model.params[back], original[back])
    assert np.all(model.params[back] != 0)
    # the ones let back are those that were largest before pruning: as pruning straight to 0.25
    np.testing.assert_array_equal(model.mask, P.prune(mlp((6, 16, 1)), 0.25).mask)


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0, 1), method=st.sampled_from(["magnitude", "global", "random"]),
       seed=st.integers(0, 10))
def test_prune_counts_and_zeros_for_any_sparsity(sparsity, method, seed):
    model = mlp((4, 7, 3), seed=seed)
    P.prune(model, sparsity, method=method, seed=seed)
    sizes = [layer.W.size for layer in model.layers]
    if method == "global":
        assert pruned_count(model.mask) == round(sparsity * sum(sizes))
    else:
        assert [pruned_count(layer.W_mask) for layer in model.layers] == \
            [round(sparsity * n) for n in sizes]
    assert np.all(model.params[~model.mask] == 0)


def test_float32_model():
    model, X, y = trained(dtype="float32", epochs=3)
    P.prune(model, 0.7, method="global")
    model.fit(X, y, epochs=3, batch_size=16, seed=0)
    assert model.params.dtype == np.float32
    assert np.all(model.params[~model.mask] == 0)
    assert model.sparsity()["total"] == pytest.approx(0.7, abs=1 / 232)


# ----------------------------------------------------------------------------------------
# gradual pruning through fit


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


# ----------------------------------------------------------------------------------------
# strip, restore


def test_strip_keeps_the_zeros_and_drops_masks_and_backup():
    model, X, y = trained()
    P.prune(model, 0.6)
    zeros = ~model.mask
    P.strip(model)
    assert model.mask.all() and P.BACKUP_KEY not in model.state
    assert np.all(model.params[zeros] == 0)
    assert model.sparsity()["total"] == 0.0
    assert P.sparsity_of(model.layers[0].W) == round(0.6 * 96) / 96
    with pytest.raises(ValueError, match="no pruning backup"):
        P.restore(model)


def test_restore_gives_back_the_values_from_just_before_each_pruning():
    model, X, y = trained()
    before_first = model.params.copy()
    P.prune(model, 0.3)
    first = ~model.mask
    model.fit(X, y, epochs=2, batch_size=16, seed=1)
    before_second = model.params.copy()
    P.prune(model, 0.6)
    second = ~model.mask & ~first
    model.fit(X, y, epochs=2, batch_size=16, seed=2)
    kept_values = model.params.copy()
    P.restore(model)
    assert model.mask.all() and P.BACKUP_KEY not in model.state
    np.testing.assert_array_equal(model.params[first], before_first[first])
    np.testing.assert_array_equal(model.params[second], before_second[second])
    kept = ~first & ~second
    np.testing.assert_array_equal(model.params[kept], kept_values[kept])
    assert np.any(model.params[first] != 0)


def test_restore_without_pruning_raises():
    with pytest.raises(ValueError, match="model has no pruning backup"):
        P.restore(mlp((3, 2)))


# ----------------------------------------------------------------------------------------
# prune_to_tolerance


def test_prune_to_tolerance_without_budget_takes_the_highest_level():
    model, X, y = trained()
    result = P.prune_to_tolerance(model, X, y, math.inf, sparsities=(0.9, 0.5, 0.7))
    assert result.sparsity == 0.9
    assert [t[0] for t in result.trials] == [0.5, 0.7, 0.9]
    assert all(t[2] for t in result.trials)
    assert result.loss == model.evaluate(X, y)


def test_prune_to_tolerance_restores_every_level_that_broke_the_budget():
    model, X, y = trained()
    original, original_mask = model.params.copy(), model.mask.copy()
    result = P.prune_to_tolerance(model, X, y, 0.0, sparsities=(0.5, 0.9))
    # pruning a trained model increases its training loss at both levels
    assert result.sparsity == 0.0 and not any(t[2] for t in result.trials)
    np.testing.assert_array_equal(model.params, original)
    np.testing.assert_array_equal(model.mask, original_mask)
    assert P.BACKUP_KEY not in model.state
    assert result.loss == result.base_loss == model.evaluate(X, y)


def test_prune_to_tolerance_picks_the_highest_level_within_budget():
    model, X, y = trained()
    base = model.evaluate(X, y)
    levels = (0.1, 0.3, 0.5, 0.7, 0.9)
    losses = [P.prune(model.copy(), s).evaluate(X, y) for s in levels]
    budget = (losses[2] + losses[3]) / 2 - base  # between the 0.5 and 0.7 losses
    assert losses[2] < losses[3], "the data no longer separates the levels; pick others"
    result = P.prune_to_tolerance(model, X, y, budget, sparsities=levels)
    accepted = [s for s, loss, ok in result.trials if ok]
    assert result.sparsity == max(accepted)
    assert result.sparsity >= 0.5 and 0.7 not in accepted
    # without fine-tuning, the model is left exactly as pruning straight to that level
    direct = P.prune(trained()[0], result.sparsity)
    np.testing.assert_array_equal(model.mask, direct.mask)
    np.testing.assert_array_equal(model.params, direct.params)
    assert all(ok == (loss - base <= budget) for _, loss, ok in result.trials)


def test_prune_to_tolerance_with_finetuning_rewinds_the_optimizer():
    model, X, y = trained()
    params, moments = model.params.copy(), model.optimizer.state_arrays()["m"].copy()
    result = P.prune_to_tolerance(model, X, y, 0.0, sparsities=(0.99,), finetune_epochs=2,
                                  batch_size=16)
    assert result.sparsity == 0.0 and result.trials[0][2] is False
    assert model.optimizer.iterations == 20 * 4  # the 20 epochs of 4 batches in trained()
    np.testing.assert_array_equal(model.params, params)
    np.testing.assert_array_equal(model.optimizer.state_arrays()["m"], moments)
    assert model.mask.all()
    ok = P.prune_to_tolerance(model, X, y, math.inf, sparsities=(0.5,), finetune_epochs=2,
                              batch_size=16)
    assert ok.sparsity == 0.5 and model.optimizer.iterations == 20 * 4 + 2 * 4


# ----------------------------------------------------------------------------------------
# structured pruning + shrink


@pytest.mark.parametrize("activations, include_bias", [
    (["relu", "relu"], False),
    (["sigmoid", "tanh"], False),  # sigmoid(b) != 0: constants folded into the next bias
    (["sigmoid", "leaky_relu"], True),  # sigmoid(0) = 0.5 still feeds the next layer
])
def test_shrink_removes_pruned_neurons_with_equal_predictions(activations, include_bias):
    model, X, y = trained((6, 16, 8, 1), activations)
    P.prune(model, 0.5, method="structured", include_bias=include_bias)
    small = P.shrink(model)
    assert [layer.W.shape for layer in small.layers] == [(6, 8), (8, 4), (4, 1)]
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12, atol=1e-14)
    assert P.model_nbytes(small) < P.model_nbytes(model)
    small.fit(X, y, epochs=1, batch_size=16, seed=0)  # the shrunken model trains
    assert np.isfinite(small.evaluate(X, y))


def test_shrink_keeps_a_neuron_that_cannot_be_folded():
    # next layer without bias: a dead sigmoid neuron's constant 0.5 has nowhere to go
    model = mlp((3, 4, 1), ["sigmoid"], use_bias=False)
    model.layers[0].W_mask[:, 1] = False
    model.layers[0].W[:, 1] = 0.0
    small = P.shrink(model)
    assert small.layers[0].W.shape == (3, 4)
    X = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12)


def test_shrink_keeps_one_unit_when_all_are_pruned():
    model, X, y = trained((6, 4, 1))
    P.prune(model, 1.0, method="structured")
    small = P.shrink(model)
    assert small.layers[0].W.shape == (6, 1)
    np.testing.assert_allclose(small.predict(X), model.predict(X), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------
# CSR inference and byte counts


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_csr_predictions_equal_dense(dtype, rtol):
    model, X, y = trained((6, 32, 16, 2), dtype=dtype, epochs=5)
    P.prune(model, 0.9, method="global")
    sparse = P.to_sparse(model)
    nnz = [layer.W.nnz for layer in sparse.layers]
    assert nnz == [int(np.count_nonzero(layer.W)) for layer in model.layers]
    assert sum(nnz) == round(0.1 * (6 * 32 + 32 * 16 + 16 * 2))
    dense_pred = model.predict(X)
    np.testing.assert_allclose(sparse.predict(X), dense_pred, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(sparse.predict(X, batch_size=7), dense_pred, rtol=rtol,
                               atol=rtol * 1e-2)
    np.testing.assert_allclose(sparse.predict(X[:1]), dense_pred[:1], rtol=rtol, atol=rtol * 1e-2)
    assert sparse.predict(X).dtype == np.dtype(dtype)


def test_model_nbytes_hand_counted():
    model = ms.Sequential([ms.Dense(2)], input_dim=3, seed=0)
    model.layers[0].W[...] = [[0.5, -1.0], [0.1, 0.2], [3.0, 0.05]]
    P.prune(model, 4 / 6)  # keeps -1.0 and 3.0: nnz = 2 of 6 weights, 2 biases
    # dense:   (6 + 2) values * 4 bytes                                    = 32
    # csr:     2 * (4 + 4) + (3 rows + 1) * 4 indptr + 2 * 4 bias           = 40
    # bitmask: ceil(6 / 8) = 1 + 2 * 4 values + 2 * 4 bias                  = 17
    assert [P.model_nbytes(model, f) for f in P.FORMATS] == [32, 40, 17]
    # 8 bits: dense 6 + 2; csr 2 + 2 * 4 + 4 * 4 + 2; bitmask 1 + 2 + 2
    assert [P.model_nbytes(model, f, bits=8) for f in P.FORMATS] == [8, 28, 5]
    # 4 bits: dense ceil(24 / 8) + ceil(8 / 8); csr 1 + 8 + 16 + 1; bitmask 1 + 1 + 1
    assert [P.model_nbytes(model, f, bits=4) for f in P.FORMATS] == [4, 26, 3]


def test_model_nbytes_csr_at_64_bits_equals_scipy_arrays():
    model, X, y = trained((6, 32, 16, 2), epochs=2)
    P.prune(model, 0.8, method="global")
    sparse = P.to_sparse(model)
    assert P.model_nbytes(model, "csr", bits=64) == sparse.nbytes
    assert P.model_nbytes(model, "dense", bits=64) == model.params.nbytes


# ----------------------------------------------------------------------------------------
# bad input


def test_bad_input_names_the_argument():
    model = mlp((3, 4, 1))
    with pytest.raises(ValueError, match="sparsity must be in"):
        P.prune(model, 1.5)
    with pytest.raises(ValueError, match="sparsity must be in"):
        P.prune(model, float("nan"))
    with pytest.raises(ValueError, match="method must be one of"):
        P.prune(model, 0.5, method="l1")
    with pytest.raises(TypeError, match="model must be a minscale Sequential, got ndarray"):
        P.prune(np.ones((2, 2)), 0.5)
    with pytest.raises(ValueError, match="model must be built"):
        P.prune(ms.Sequential([ms.Dense(2)]), 0.5)
    with pytest.raises(ValueError, match="model has no prunable neurons"):
        P.prune(ms.Sequential([ms.Dense(2)], input_dim=3), 0.5, method="structured")
    with pytest.raises(TypeError, match="include_bias must be True or False"):
        P.prune(model, 0.5, include_bias="yes")
    with pytest.raises(ValueError, match="format must be one of"):
        P.model_nbytes(model, "coo")
    with pytest.raises(ValueError, match="bits must be >= 1, got 0"):
        P.model_nbytes(model, bits=0)
    with pytest.raises(ValueError, match="bits must be in"):
        P.model_nbytes(model, bits=65)
    with pytest.raises(ValueError, match="max_loss_increase must be >= 0"):
        P.prune_to_tolerance(model, np.ones((2, 3)), np.ones((2, 1)), -0.1)
    with pytest.raises(ValueError, match="sparsities must hold at least one"):
        P.prune_to_tolerance(model, np.ones((2, 3)), np.ones((2, 1)), 0.1, sparsities=())
    with pytest.raises(ValueError, match=r"sparsities\[i\] must be in"):
        P.prune_to_tolerance(model, np.ones((2, 3)), np.ones((2, 1)), 0.1, sparsities=(2.0,))
    model.layers[0].kernel_quantizer = lambda w, training: (w, None)
    with pytest.raises(ValueError, match=r"model.layers\[0\] has quantization hooks"):
        P.to_sparse(model)


# ----------------------------------------------------------------------------------------
# save / load (minscale.io, issue 8)


def test_pruned_model_survives_save_and_load_and_more_adam_steps(tmp_path):
    io = pytest.importorskip("minscale.io")
    model, X, y = trained((6, 16, 1))
    P.prune(model, 0.8, method="global")
    path = tmp_path / "pruned.npz"
    io.save(model, path)
    loaded = io.load(path)
    np.testing.assert_array_equal(loaded.mask, model.mask)
    np.testing.assert_array_equal(loaded.params, model.params)
    assert np.all(loaded.params[~loaded.mask] == 0)
    if loaded.optimizer is None:
        loaded.compile(optimizer=ms.optim.Adam(0.01))
    loaded.fit(X, y, epochs=25, batch_size=16, seed=0)  # 100 Adam steps
    assert np.all(loaded.params[~loaded.mask] == 0)
    P.restore(loaded)  # the recovery backup travelled in model.state
    assert loaded.mask.all()


# ----------------------------------------------------------------------------------------
# the command line


def test_cli_rejects_bad_sparsity_with_one_line(capsys, tmp_path):
    from minscale.cli import main

    code = main(["prune", str(tmp_path / "none.npz"), "--sparsity", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--sparsity must be in [0, 1]" in err


def test_cli_prunes_finetunes_reports_and_saves(capsys, tmp_path):
    io = pytest.importorskip("minscale.io")
    from minscale.cli import main

    src, out = tmp_path / "model.npz", tmp_path / "pruned.npz"
    assert main(["train", "--hidden", "16", "--epochs", "3", "--quiet", "--save",
                 str(src)]) == 0
    capsys.readouterr()
    code = main(["prune", str(src), "--sparsity", "0.5", "--method", "structured",
                 "--finetune-epochs", "2", "--shrink", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for fragment in ("before:", "pruned:", "finetuned (2 epochs):", "total sparsity",
                     "bytes at 64 bits/value: dense", "shrunk to W shapes (10, 8) (8, 1)",
                     f"saved {out}"):
        assert fragment in text, fragment
    assert io.load(out).layers[0].W.shape == (10, 8)
    assert main(["prune", str(src), "--sparsity", "0.9", "--method", "global"]) == 0
    text = capsys.readouterr().out
    assert "total sparsity 0.8977" in text  # round(0.9 * 176) = 158 of 176 weights


# ----------------------------------------------------------------------------------------
# the diabetes experiment (10-32-1)


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
