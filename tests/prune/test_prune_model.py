"""Tests of minscale.prune.model: masks in the flat buffer, masked training, strip / restore,
prune_to_tolerance, structured pruning + shrink, bad input, save / load of a pruned model.

Reference values are worked out by hand in the comments beside them.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prune_helpers import mlp, pruned_count, regression_data, trained

import minscale as ms
from minscale import prune as P

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
    with pytest.raises(TypeError, match="include_bias must be a bool, got "):
        P.prune(model, 0.5, include_bias="yes")
    with pytest.raises(ValueError, match="format must be one of"):
        P.model_nbytes(model, "coo")
    with pytest.raises(ValueError, match="bits must be an integer >= 1, got 0"):
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
