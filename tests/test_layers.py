"""Dense layers and activations: formulas, reference values, finite-difference checks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import minscale as ms
from minscale import kernels
from minscale.layers import (
    ACTIVATIONS,
    Dense,
    activation_derivative,
    dense_backward,
    dense_forward,
    glorot_uniform,
    he_normal,
    leaky_relu,
    relu,
    sigmoid,
    tanh,
)
from minscale.testing import check_gradients

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

FORMULAS = {"identity": lambda z: z.copy(), "relu": relu, "leaky_relu": leaky_relu,
            "tanh": tanh, "sigmoid": sigmoid}


def test_activation_reference_values():
    z = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(relu(z), [0, 0, 0, 0.5, 2])
    np.testing.assert_allclose(leaky_relu(z), [-0.02, -0.005, 0, 0.5, 2])
    np.testing.assert_allclose(sigmoid(np.array([0.0, np.log(3)])), [0.5, 0.75])
    np.testing.assert_allclose(tanh(np.array([np.log(2)])), [0.6])  # (4 - 1) / (4 + 1)
    assert np.all(np.isfinite(sigmoid(np.array([-1000.0, 1000.0]))))
    np.testing.assert_array_equal(sigmoid(np.array([-1000.0, 1000.0])), [0.0, 1.0])


def test_dense_forward_backward_reference():
    # x = [[1, 2]], W = [[1, 0, 2], [0, 1, -1]], b = [1, 1, 1] -> z = [[2, 3, 1]]
    x = np.array([[1.0, 2.0]])
    W = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    b = np.ones(3)
    np.testing.assert_array_equal(dense_forward(x, W, b), [[2, 3, 1]])
    dx, dW, db = dense_backward(x, W, np.array([[1.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(dx, [[3, -1]])           # dz @ W.T
    np.testing.assert_array_equal(dW, [[1, 0, 1], [2, 0, 2]])  # x.T @ dz
    np.testing.assert_array_equal(db, [1, 0, 1])


def test_dense_formulas_write_into_given_buffers():
    # the same reference as above, written in place: Dense passes views of its flat buffers
    x = np.array([[1.0, 2.0]])
    W = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    out = np.full((1, 3), np.nan)
    assert dense_forward(x, W, np.ones(3), out=out) is out
    np.testing.assert_array_equal(out, [[2, 3, 1]])
    grads = np.zeros(9)
    dW, db = grads[:6].reshape(2, 3), grads[6:]
    dx, dW_got, db_got = dense_backward(x, W, np.array([[1.0, 0.0, 1.0]]), dW=dW, db=db,
                                        need_dx=False)
    assert dx is None and dW_got is dW and db_got is db
    np.testing.assert_array_equal(grads, [1, 0, 1, 2, 0, 2, 1, 0, 1])


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4),
       st.sampled_from(["identity", "relu", "leaky_relu", "tanh", "sigmoid"]),
       st.integers(0, 2**16))
def test_dense_layer_equals_its_formulas_bit_for_bit(n, d_in, d_out, activation, seed):
    # Dense.forward/backward are dense_forward/dense_backward plus the activation kernels
    model = ms.Sequential([ms.Dense(d_out, activation=activation)], input_dim=d_in, seed=seed)
    layer = model.layers[0]
    x = np.random.default_rng(seed).normal(size=(n, d_in))
    a = layer.forward(x)
    z = dense_forward(x, layer.W, layer.b)
    assert a.tobytes() == kernels.bias_act(z, np.zeros(0), kernels.ACTIVATION_CODES[activation],
                                           layer.alpha).tobytes()
    da = np.random.default_rng(seed + 1).normal(size=(n, d_out))
    dz = kernels.act_backward(a, da.copy(), kernels.ACTIVATION_CODES[activation], layer.alpha,
                              np.empty_like(da))
    dx, dW, db = dense_backward(x, layer.W, dz)
    dx_layer = layer.backward(da.copy())
    assert dx_layer.tobytes() == dx.tobytes()
    assert layer.dW.tobytes() == dW.tobytes() and layer.db.tobytes() == db.tobytes()


finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), act=st.sampled_from(ACTIVATIONS), n=st.integers(1, 5),
       d=st.integers(1, 5))
def test_activation_gradients_match_finite_differences(data, act, n, d):
    z0 = data.draw(arrays(np.float64, (n, d), elements=finite))
    # keep the kinked activations away from their kink, where the derivative is undefined
    if act in ("relu", "leaky_relu"):
        z0 = np.where(np.abs(z0) < 1e-3, 0.5, z0)
    upstream = data.draw(arrays(np.float64, (n, d), elements=finite))

    def fn(z):
        a = FORMULAS[act](z)
        return float(np.sum(a * upstream)), upstream * activation_derivative(a, act)

    check_gradients(fn, z0, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), act=st.sampled_from(ACTIVATIONS))
def test_fused_kernels_equal_the_formulas(data, act, backend):
    z = data.draw(arrays(np.float64, (4, 3), elements=finite))
    b = data.draw(arrays(np.float64, (3,), elements=finite))
    da = data.draw(arrays(np.float64, (4, 3), elements=finite))
    code = kernels.ACTIVATION_CODES[act]
    a = kernels.bias_act(z.copy(), b, code, 0.01)
    np.testing.assert_allclose(a, FORMULAS[act](z + b), rtol=1e-12, atol=1e-15)
    dz = kernels.act_backward(a, da.copy(), code, 0.01, np.empty_like(da))
    np.testing.assert_allclose(dz, da * activation_derivative(a, act), rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d_in=st.integers(1, 4), d_out=st.integers(1, 4),
       act=st.sampled_from(["identity", "tanh", "sigmoid"]), use_bias=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "half_sum"]), seed=st.integers(0, 2**16))
def test_dense_gradients_match_finite_differences(n, d_in, d_out, act, use_bias, reduction,
                                                   seed, backend):
    rng = np.random.default_rng(seed)
    model = ms.Sequential([Dense(d_out, activation=act, use_bias=use_bias)], input_dim=d_in,
                          seed=seed)
    model.compile(reduction=reduction)
    errors = check_gradients(model, rng.normal(size=(n, d_in)), rng.normal(size=(n, d_out)),
                             rtol=1e-5)
    assert set(errors) == {"layer0.W", "input"} | ({"layer0.b"} if use_bias else set())


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 5), widths=st.lists(st.integers(1, 5), min_size=3, max_size=3),
       acts=st.lists(st.sampled_from(ACTIVATIONS), min_size=2, max_size=2),
       seed=st.integers(0, 2**16))
def test_three_layer_sequential_gradients(n, widths, acts, seed, backend):
    rng = np.random.default_rng(seed)
    d_in, h1, h2 = widths
    model = ms.Sequential([Dense(h1, acts[0]), Dense(h2, acts[1]), Dense(2)], input_dim=d_in,
                          seed=seed)
    X, y = rng.normal(size=(n, d_in)), rng.normal(size=(n, 2))
    # move kinked units off their kink: finite differences are undefined there
    for _ in range(3):
        z_small = False
        a = X
        for layer in model.layers:
            z = dense_forward(a, layer.W, layer.b)
            if layer.activation in ("relu", "leaky_relu") and np.any(np.abs(z) < 1e-4):
                z_small = True
            a = FORMULAS[layer.activation](z)
        if not z_small:
            break
        model.params[...] = rng.normal(size=model.params.size)
    check_gradients(model, X, y, rtol=1e-4)


def test_initializers_have_the_stated_distributions():
    rng = np.random.default_rng(0)
    w = glorot_uniform((300, 200), rng)
    limit = np.sqrt(6 / 500)
    assert w.min() >= -limit and w.max() <= limit
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.02)   # var of U(-l, l) = l^2 / 3
    h = he_normal((400, 300), rng)
    assert h.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)


def test_initialization_is_seeded():
    a = ms.Sequential([Dense(4), Dense(2)], input_dim=3, seed=7)
    b = ms.Sequential([Dense(4), Dense(2)], input_dim=3, seed=7)
    c = ms.Sequential([Dense(4), Dense(2)], input_dim=3, seed=8)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_flat_buffer_views():
    model = ms.Sequential([Dense(3), Dense(2, use_bias=False)], input_dim=2)
    assert model.count_params() == 2 * 3 + 3 + 3 * 2
    model.layers[0].W[0, 0] = 42.0
    assert model.params[0] == 42.0
    assert np.shares_memory(model.layers[1].W, model.params)
    assert model.prunable.sum() == 12 and not model.prunable[6:9].any()


@pytest.mark.parametrize("kwargs, name", [
    (dict(units=0), "units"), (dict(units=2.5), "units"),
    (dict(units=2, activation="softmax"), "activation"),
    (dict(units=2, kernel_initializer="ones"), "kernel_initializer"),
    (dict(units=2, activation="leaky_relu", alpha=-1), "alpha"),
])
def test_dense_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Dense(**kwargs)
