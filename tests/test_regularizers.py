"""The regularization formulas (minscale.regularizers) and the L2 kernel regularizer in a model.

References: Keras ``tf.keras.regularizers.L2`` (loss + l2 * sum(W**2), kernels only), torch
``weight_decay`` (grad + wd * theta), torch ``AdamW`` (theta * (1 - lr * wd)).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale import regularizers


def test_l2_penalty_and_gradient_are_the_keras_formulas():
    W = np.array([[0.5], [-1.0]])
    assert regularizers.l2_penalty(W, 0.1) == pytest.approx(0.1 * (0.25 + 1.0), rel=1e-15)
    np.testing.assert_array_equal(regularizers.l2_gradient(W, 0.1), [[0.1], [-0.2]])
    out = np.ones_like(W)
    regularizers.l2_gradient(W, 0.1, out=out)
    np.testing.assert_array_equal(out, [[1.1], [0.8]])
    assert regularizers.L2(0.1)(W) == regularizers.l2_penalty(W, 0.1)


def test_coupled_and_decoupled_decay_by_hand():
    theta = np.array([1.0, -2.0, 0.0])
    grad = np.array([0.5, 0.5, 0.5])
    regularizers.coupled_weight_decay(grad, theta, 0.1, where=np.array([True, False, True]))
    np.testing.assert_array_equal(grad, [0.6, 0.5, 0.5])
    regularizers.decoupled_weight_decay(theta, 0.1, 0.01)
    np.testing.assert_array_equal(theta, [1.0 * (1 - 0.001), -2.0 * (1 - 0.001), 0.0])


def test_one_sgd_step_with_l2_equals_the_keras_formula_by_hand():
    # y_hat = 1 * 0.5 + 2 * (-1) + 0 = -1.5; mean MSE 2.25; dL/dy_hat = 2 * (-1.5) = -3
    # dW = x^T (-3) + 2 * l2 * W = [-3, -6] + [0.1, -0.2] = [-2.9, -6.2]; db = -3 (no penalty)
    # W <- W - 0.1 * dW = [0.79, -0.38]; b <- 0.3; training loss 2.25 + 0.1 * 1.25 = 2.375
    model = ms.Sequential([ms.Dense(1, kernel_regularizer=ms.regularizers.L2(0.1))],
                          input_dim=2)
    model.set_weights([np.array([[0.5], [-1.0]]), np.array([0.0])])
    model.compile(optimizer=ms.optim.SGD(0.1))
    history = model.fit([[1.0, 2.0]], [[0.0]], epochs=1, batch_size=1, shuffle=False)
    W, b = model.get_weights()
    np.testing.assert_allclose(W, [[0.79], [-0.38]], rtol=1e-15)
    np.testing.assert_allclose(b, [0.3], rtol=1e-15)
    assert history.history["loss"] == [pytest.approx(2.375, rel=1e-15)]


def test_fit_reports_the_penalty_and_evaluate_excludes_it():
    model = ms.Sequential([ms.Dense(1, kernel_regularizer=ms.regularizers.L2(0.1))],
                          input_dim=2)
    model.set_weights([np.array([[0.5], [-1.0]]), np.array([0.0])])
    model.compile(optimizer=ms.optim.SGD(0.0))
    X, y = np.array([[1.0, 2.0]]), np.array([[0.0]])
    history = model.fit(X, y, epochs=1, batch_size=1)
    assert model.evaluate(X, y) == pytest.approx(2.25, rel=1e-15)
    assert history.history["loss"][0] == pytest.approx(2.375, rel=1e-15)


@settings(deadline=None, max_examples=40)
@given(wd=st.floats(1e-4, 1.0), lr=st.floats(1e-4, 0.5), momentum=st.sampled_from([0.0, 0.9]),
       seed=st.integers(0, 2**16))
def test_sgd_coupled_decay_equals_l2_of_half_the_strength(wd, lr, momentum, seed):
    # mean reduction: d/dW [l2 * sum(W**2)] = 2 * l2 * W = wd * W when l2 = wd / 2
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))

    def run(l2, weight_decay):
        reg = ms.regularizers.L2(l2) if l2 else None
        model = ms.Sequential([ms.Dense(4, "tanh", kernel_regularizer=reg),
                               ms.Dense(2, kernel_regularizer=reg)], input_dim=3, seed=seed)
        model.compile(optimizer=ms.optim.SGD(lr, momentum=momentum, weight_decay=weight_decay,
                                             decay_bias=False))
        model.fit(X, y, epochs=2, batch_size=5, seed=1, callbacks=[ms.train.Callback()])
        return model.params

    np.testing.assert_allclose(run(wd / 2, 0.0), run(0.0, wd), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "0.1", None, True])
def test_bad_strengths_name_the_argument(bad):
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        ms.regularizers.L2(bad)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        ms.optim.SGD(0.1, weight_decay=bad)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        ms.optim.AdamW(weight_decay=bad)


def test_wrong_kernel_regularizer_type_names_the_argument():
    with pytest.raises(TypeError, match="kernel_regularizer must be None or"):
        ms.Dense(3, kernel_regularizer=0.01)
    with pytest.raises(TypeError, match="decay_bias must be True or False"):
        ms.optim.Adam(decay_bias="no")


def test_config_round_trip():
    layer = ms.Dense(3, "relu", kernel_regularizer=ms.regularizers.L2(0.5))
    config = layer.get_config()
    assert config["kernel_regularizer"] == {"name": "l2", "l2": 0.5}
    assert ms.Dense(**config).kernel_regularizer == ms.regularizers.L2(0.5)
    assert "kernel_regularizer" not in ms.Dense(3).get_config()
    with pytest.raises(ValueError, match="kernel_regularizer config"):
        regularizers.deserialize({"name": "l1", "l1": 0.1})


def test_gradient_check_of_a_regularized_model():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    model = ms.Sequential([ms.Dense(4, "tanh", kernel_regularizer=ms.regularizers.L2(0.3)),
                           ms.Dense(2, kernel_regularizer=ms.regularizers.L2(0.1))],
                          input_dim=3, seed=1)
    errors = ms.testing.check_gradients(model, X, y, rtol=1e-6)
    assert max(errors.values()) < 1e-6
    assert model.penalty() == pytest.approx(
        0.3 * np.sum(model.layers[0].W ** 2) + 0.1 * np.sum(model.layers[1].W ** 2), rel=1e-14)
