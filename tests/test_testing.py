"""minscale.testing: the strategies draw what they promise, the checkers catch what they must."""
import math

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale import testing as mt
from minscale.quant import QFormat

# --- weight_arrays ---------------------------------------------------------------------------

@settings(max_examples=60)
@given(w=mt.weight_arrays())
def test_weight_arrays_are_finite_bounded_float64(w):
    assert w.dtype == np.float64 and w.flags.c_contiguous
    assert 1 <= w.ndim <= 2 and np.all(np.isfinite(w)) and np.all(np.abs(w) <= 10.0)


@settings(max_examples=60)
@given(w=mt.weight_arrays(ties=False, dtype="float32", max_magnitude=3.0))
def test_weight_arrays_without_ties_have_distinct_magnitudes(w):
    magnitudes = np.abs(w.ravel())
    assert w.dtype == np.float32
    assert np.unique(magnitudes).size == w.size
    assert magnitudes.min() >= 2.0**-10 and magnitudes.max() <= 3.0


@settings(max_examples=60)
@given(w=mt.weight_arrays(ties=True, max_magnitude=2.0))
def test_weight_arrays_with_ties_always_hold_a_tie_on_the_grid(w):
    magnitudes = np.abs(w.ravel())
    assert w.size >= 2 and np.unique(magnitudes).size < w.size
    assert set(magnitudes.tolist()) <= {0.0, 0.5, 1.0, 1.5, 2.0}


@settings(max_examples=30)
@given(w=mt.weight_arrays((3, 4), ties=True))
def test_weight_arrays_keep_a_fixed_shape(w):
    assert w.shape == (3, 4)


def test_weight_arrays_with_ties_reach_the_magnitude_tie_breaking_case():
    # the tie rule of minscale.prune.magnitude_mask is exercised: equal |w|, opposite signs
    w = find(mt.weight_arrays(4, ties=True),
             lambda a: np.any(a.reshape(-1, 1) == -a.reshape(1, -1)) and np.any(a != 0))
    assert np.unique(np.abs(w)).size < w.size


@pytest.mark.parametrize("kwargs, words", [
    (dict(dtype="int8"), "dtype"), (dict(max_magnitude=0.0), "max_magnitude"),
    (dict(min_magnitude=20.0), "min_magnitude"), (dict(shape=(1,), ties=True), "shape"),
    (dict(shape="3"), "shape"), (dict(ties="yes"), "ties"),
])
def test_weight_arrays_bad_arguments_name_them(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        mt.weight_arrays(**kwargs)


# --- qformats, sparsities ------------------------------------------------------------------------

@settings(max_examples=60)
@given(fmt=mt.qformats())
def test_qformats_are_valid_formats_in_the_default_ranges(fmt):
    assert isinstance(fmt, QFormat)
    assert 2 <= fmt.bits <= 16 and -2 <= fmt.frac_bits <= fmt.bits + 2


@settings(max_examples=40)
@given(fmt=mt.qformats(bits=(4, 8), signed=False, frac_bits=(0, 3)))
def test_qformats_honour_their_arguments(fmt):
    assert 4 <= fmt.bits <= 8 and not fmt.signed and 0 <= fmt.frac_bits <= 3
    assert (fmt.qmin, fmt.qmax) == (0, 2**fmt.bits - 1)


@pytest.mark.parametrize("kwargs, words", [
    (dict(bits=1), "bits"), (dict(bits=(8, 40)), "bits"), (dict(signed=1), "signed"),
    (dict(frac_bits=(5, 2)), "frac_bits"), (dict(frac_bits="2"), "frac_bits"),
])
def test_qformats_bad_arguments_name_them(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        mt.qformats(**kwargs)


@settings(max_examples=80)
@given(s=mt.sparsities(0.2, 0.7))
def test_sparsities_stay_in_range(s):
    assert 0.2 <= s <= 0.7 and not math.isnan(s)


def test_sparsities_reach_the_end_points_and_the_half_way_tie():
    for target in (0.0, 0.5, 1.0):
        assert find(mt.sparsities(), lambda s, t=target: s == t) == target


@pytest.mark.parametrize("args", [(-0.1, 1.0), (0.0, 90.0), (0.8, 0.2)])
def test_sparsities_reject_percent_and_reversed_bounds(args):
    with pytest.raises(ValueError, match="min_value|max_value"):
        mt.sparsities(*args)


# --- architectures, models, data -----------------------------------------------------------------

@settings(max_examples=40)
@given(config=mt.architectures(hidden_layers=(1, 2), activations=["tanh"], use_bias=False))
def test_architectures_are_sequential_configs(config):
    assert 1 <= config["input_dim"] <= 4 and config["dtype"] == "float64"
    layers = config["layers"]
    assert 2 <= len(layers) <= 3 and 1 <= layers[-1]["units"] <= 3
    assert [lc["activation"] for lc in layers] == ["tanh"] * (len(layers) - 1) + ["identity"]
    assert not any(lc["use_bias"] for lc in layers)
    # the dict is exactly what Sequential.get_config() gives back
    assert ms.Sequential.from_config(config).get_config() == config


@settings(max_examples=25, deadline=None)
@given(model=mt.models(input_dim=3, output_dim=2, dtype="float32"))
def test_models_are_built_and_unpruned(model):
    assert model.built and model.input_dim == 3 and model.output_dim == 2
    assert model.dtype == np.float32 and model.mask.all()


@settings(max_examples=40)
@given(data=mt.data_sets(n_samples=(2, 5), n_features=3, n_outputs=(1, 2), max_magnitude=2.0))
def test_data_sets_have_the_asked_shapes_and_bounds(data):
    X, y = data
    assert 2 <= X.shape[0] <= 5 and X.shape[1] == 3 and y.shape[0] == X.shape[0]
    assert y.shape[1] in (1, 2)
    assert np.abs(X).max() <= 2.0 and np.abs(y).max() <= 2.0


@settings(max_examples=20, deadline=None)
@given(case=mt.models_and_data(activations=["tanh", "sigmoid", "identity"], max_magnitude=1.0))
def test_drawn_models_pass_the_gradient_check(case):
    # check_gradients on every drawn (model, data) pair: the strategies feed the checker.
    # Inputs within [-1, 1] keep tanh/sigmoid units off saturation, where a gradient of ~1e-5
    # has central differences dominated by rounding (x = 5 into tanh gave 1.4e-5 relative).
    model, X, y = case
    errors = mt.check_gradients(model, X, y, rtol=1e-4)
    assert max(errors.values()) <= 1e-4


# --- assert_masks_preserved ----------------------------------------------------------------------

def two_by_two():
    # W = [[1, -2], [3, -0.5]], b = [0.25, 0.25]; magnitude pruning at 0.5 removes the two
    # smallest |w|: 0.5 (flat 3, W[1, 1]) and 1 (flat 0, W[0, 0]) -- worked by hand
    model = ms.Sequential([ms.Dense(2)], input_dim=2, seed=0)
    model.set_weights([np.array([[1.0, -2.0], [3.0, -0.5]]), np.array([0.25, 0.25])])
    ms.prune.prune(model, 0.5)
    return model


def test_masks_preserved_counts_the_pruned_weights():
    model = two_by_two()
    assert model.mask.tolist() == [False, True, True, False, True, True]
    assert mt.assert_masks_preserved(model) == 2
    assert mt.assert_masks_preserved(ms.Sequential([ms.Dense(1)], input_dim=1)) == 0


def test_masks_preserved_names_a_nonzero_pruned_weight():
    model = two_by_two()
    model.params[3] = 0.125
    with pytest.raises(AssertionError, match=r"layer 0 W\[1, 1\] \(flat index 3\), is 0.125"):
        mt.assert_masks_preserved(model)


def test_masks_preserved_catches_a_revived_weight_and_with_exact_a_new_zero():
    model = two_by_two()
    before = model.mask.copy()
    model.mask[0] = True
    with pytest.raises(AssertionError, match=r"kept again.*layer 0 W\[0, 0\]"):
        mt.assert_masks_preserved(model, before)
    model.mask[0] = False
    model.mask[1] = False
    model.params[1] = 0.0
    assert mt.assert_masks_preserved(model, before) == 3  # more pruning is allowed ...
    with pytest.raises(AssertionError, match=r"mask changed at 1 entry.*W\[0, 1\]"):
        mt.assert_masks_preserved(model, before, exact=True)  # ... unless exact


def test_masks_preserved_checks_optimizer_state():
    model = two_by_two()
    model.compile(optimizer=ms.optim.Adam(0.01))
    model.fit(np.ones((4, 2)), np.ones((4, 2)), epochs=1, batch_size=2, shuffle=False)
    assert mt.assert_masks_preserved(model) == 2
    model.optimizer.state_arrays()["m"][0] = 1e-3
    with pytest.raises(AssertionError, match=r"optimizer state 'm'.*layer 0 W\[0, 0\]"):
        mt.assert_masks_preserved(model)
    assert mt.assert_masks_preserved(model, check_optimizer=False) == 2


def test_masks_preserved_detects_layers_unbound_from_the_flat_buffers():
    model = two_by_two()
    model.layers[0].W = model.layers[0].W.copy()
    with pytest.raises(AssertionError, match="not a view"):
        mt.assert_masks_preserved(model)


@settings(max_examples=15, deadline=None)
@given(case=mt.models_and_data(hidden_layers=1, n_samples=(4, 8)), sparsity=mt.sparsities(),
       momentum=st.sampled_from([0.0, 0.9]))
def test_training_a_pruned_model_preserves_its_masks(case, sparsity, momentum):
    model, X, y = case
    model.compile(optimizer=ms.optim.SGD(0.01, momentum=momentum))
    ms.prune.prune(model, sparsity, method="global")
    before = model.mask.copy()
    model.fit(X, y, epochs=2, batch_size=3, seed=0)
    n_pruned = mt.assert_masks_preserved(model, before, exact=True)
    assert n_pruned == ms.prune.n_to_prune(sparsity, int(model.prunable.sum()))


def test_masks_preserved_bad_arguments():
    model = two_by_two()
    with pytest.raises(TypeError, match="Sequential"):
        mt.assert_masks_preserved(model.params)
    with pytest.raises(ValueError, match="mask must be a bool array"):
        mt.assert_masks_preserved(model, model.mask.astype(int))
    with pytest.raises(ValueError, match="exact=True needs"):
        mt.assert_masks_preserved(model, exact=True)
    with pytest.raises(ValueError, match="built"):
        mt.assert_masks_preserved(ms.Sequential([ms.Dense(1)]))


# --- the gradient checker ------------------------------------------------------------------------

def test_relative_error_hand_values():
    # ||(1, -1)|| / (||(1, 0)|| + ||(0, 1)||) = sqrt(2) / 2
    assert mt.relative_error([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.sqrt(2) / 2)
    assert mt.relative_error([3.0, 4.0], [3.0, 4.0]) == 0.0
    assert mt.relative_error([0.0], [1e-12]) == pytest.approx(1e-12 / 1e-8)  # floor 1e-8
    assert mt.relative_error([], []) == 0.0


def test_numeric_gradient_of_a_quadratic():
    # f(x) = sum(c * x**2): central differences are exact up to rounding, grad = 2 c x
    c = np.array([1.0, -3.0, 0.5])
    x = np.array([0.2, -1.0, 4.0])
    grad = mt.numeric_gradient(lambda: float(np.sum(c * x**2)), x)
    np.testing.assert_allclose(grad, 2 * c * x, rtol=1e-8)
    assert x.tolist() == [0.2, -1.0, 4.0]  # perturbed in place and restored


def test_check_gradients_catches_a_wrong_gradient():
    x = np.array([[0.3, -1.2], [2.0, 0.7]])
    right = mt.check_gradients(lambda v: (float(np.sum(v**3)), 3 * v**2), x)
    assert right["input"] < 1e-8
    with pytest.raises(AssertionError, match="gradient check failed"):
        mt.check_gradients(lambda v: (float(np.sum(v**3)), 2 * v**2), x)
    wrong = mt.check_gradients(lambda v: (float(np.sum(v**3)), 2 * v**2), x, rtol=None)
    assert wrong["input"] == pytest.approx(0.2, abs=1e-6)  # (3 - 2) / (3 + 2)


def test_check_gradients_on_a_model_reports_each_tensor_and_leaves_grads():
    rng = np.random.default_rng(0)
    model = ms.Sequential([ms.Dense(3, "tanh"), ms.Dense(2, use_bias=False)], input_dim=2)
    X, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    errors = mt.check_gradients(model, X, y)
    assert set(errors) == {"layer0.W", "layer0.b", "layer1.W", "input"}
    grads = model.grads.copy()
    model.compute_gradients(X, y)
    np.testing.assert_array_equal(grads, model.grads)
    with pytest.raises(ValueError, match="y is required"):
        mt.check_gradients(model, X)
    with pytest.raises(ValueError, match="float64"):
        mt.check_gradients(ms.Sequential([ms.Dense(1)], input_dim=2, dtype="float32"), X, y)


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(mt, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0
