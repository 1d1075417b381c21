"""Optimizers against updates worked out by hand, and their properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale.optim import SGD, Adam, AdamW, adam_step, deserialize, get, serialize, sgd_step
from minscale.schedules import InverseTimeDecay

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


def one_unit(optimizer, w0=0.0):
    """y = w x, no bias, w = w0; data x = 1, y = 1; MSE mean: dL/dw = 2 (w - 1)."""
    model = ms.Sequential([ms.Dense(1, use_bias=False)], input_dim=1)
    model.params[...] = w0
    model.compile(optimizer=optimizer)
    return model


def weights_after(model, n_steps):
    X, y = np.ones((1, 1)), np.ones((1, 1))
    model.fit(X, y, epochs=n_steps, batch_size=1, shuffle=False)
    return float(model.params[0])


def test_sgd_with_inverse_time_decay_reference(backend):
    # eta(t) = 0.1 / (1 + t): 0.1, 0.05, 0.0333...; w: 0 -> 0.2 -> 0.28 -> 0.328 (issue 2)
    model = one_unit(SGD(InverseTimeDecay(0.1, decay_rate=1, decay_steps=1)))
    w = weights_after(model, 3)
    assert model.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3], rel=1e-15)
    assert w == pytest.approx(0.328, abs=1e-15)


def test_momentum_two_steps_by_hand(backend):
    # g0 = -2, v = -2, w = 0.2;  g1 = -1.6, v = 0.9 * -2 - 1.6 = -3.4, w = 0.2 + 0.34 = 0.54
    assert weights_after(one_unit(SGD(0.1, momentum=0.9)), 2) == pytest.approx(0.54, abs=1e-15)


def test_nesterov_two_steps_by_hand(backend):
    # g0 = -2, v = -2, w = 0 - 0.1 (-2 + 0.9 * -2) = 0.38
    # g1 = 2 (0.38 - 1) = -1.24, v = -1.8 - 1.24 = -3.04, w = 0.38 - 0.1 (-1.24 - 2.736) = 0.7776
    w = weights_after(one_unit(SGD(0.1, momentum=0.9, nesterov=True)), 2)
    assert w == pytest.approx(0.7776, abs=1e-14)


def test_adam_two_steps_by_hand(backend):
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    w, m, v = 0.0, 0.0, 0.0
    for t in (1, 2):  # Kingma & Ba Algorithm 1, eps added to sqrt(v_hat) as torch does
        g = 2 * (w - 1)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    # the first step of Adam moves by lr (times 1 / (1 + eps / |g|)): 0.0999999995
    assert w == pytest.approx(0.19958778, abs=1e-8)
    got = weights_after(one_unit(Adam(0.1)), 2)
    assert got == pytest.approx(w, rel=1e-14)


def test_adam_defaults_are_torch_defaults():
    opt = Adam()
    assert (opt.learning_rate(0), opt.beta_1, opt.beta_2, opt.epsilon) == (1e-3, 0.9, 0.999, 1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       nesterov=st.booleans(), use_adam=st.booleans())
def test_masked_entries_stay_exactly_zero(seed, momentum, nesterov, use_adam, backend):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=50)
    mask = rng.random(50) < 0.6
    theta *= mask
    velocity, m, v = np.zeros(50), np.zeros(50), np.zeros(50)
    for step in range(5):
        grad = rng.normal(size=50)
        if use_adam:
            adam_step(theta, grad, m, v, step, 0.1, mask=mask)
        else:
            sgd_step(theta, grad, 0.1, velocity, momentum, nesterov and momentum > 0, mask)
        assert np.all(theta[~mask] == 0)
        assert np.all(velocity[~mask] == 0) and np.all(m[~mask] == 0) and np.all(v[~mask] == 0)


def test_all_true_mask_changes_nothing(backend):
    rng = np.random.default_rng(0)
    theta, grad = rng.normal(size=20), rng.normal(size=20)
    a, b = theta.copy(), theta.copy()
    m1, v1, m2, v2 = (np.zeros(20) for _ in range(4))
    adam_step(a, grad.copy(), m1, v1, 0, 0.01, mask=None)
    adam_step(b, grad.copy(), m2, v2, 0, 0.01, mask=np.ones(20, bool))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, name", [
    (lambda: SGD(-0.1), "learning_rate"), (lambda: SGD(0.1, momentum=1.0), "momentum"),
    (lambda: SGD(0.1, nesterov=True), "nesterov"), (lambda: Adam(beta_1=1.5), "beta_1"),
    (lambda: Adam(epsilon=0), "epsilon"), (lambda: Adam(float("nan")), "learning_rate"),
    (lambda: SGD("fast"), "learning_rate"),
])
def test_bad_arguments(make, name):
    with pytest.raises((ValueError, TypeError), match=name):
        make()


def test_set_state_checks_iterations_and_copies_the_buffers():
    opt = Adam()
    with pytest.raises(ValueError, match=r"^iterations must be an integer >= 0, got -1$"):
        opt.set_state(-1, {})
    for bad in (1.5, True, "3"):
        with pytest.raises(ValueError, match=r"^iterations must be an integer"):
            opt.set_state(bad, {})
    m = np.ones(2)
    opt.set_state(np.int64(3), {"m": m})
    assert opt.iterations == 3 and type(opt.iterations) is int
    assert opt.buffer("m", np.zeros(2)) is not m          # copied, not shared
    np.testing.assert_array_equal(opt.state_arrays()["m"], [1.0, 1.0])


def test_serialize_round_trip():
    opt = Adam(InverseTimeDecay(0.1, 0.5))
    again = ms.optim.deserialize(ms.optim.serialize(opt))
    assert again.get_config() == opt.get_config()
    assert ms.optim.deserialize(ms.optim.serialize(SGD(0.1, 0.9, True))).nesterov


# --- weight decay: coupled (SGD, Adam) and decoupled (AdamW), torch semantics ---------------

def test_sgd_coupled_weight_decay_step_by_hand():
    # torch.optim.SGD: g' = g + wd * theta = [0.5 + 0.1 * 1, -1 + 0.1 * (-2)] = [0.6, -1.2]
    # v = g'; theta <- theta - 0.1 * v = [0.94, -1.88]
    theta, grad = np.array([1.0, -2.0]), np.array([0.5, -1.0])
    opt = SGD(0.1, momentum=0.9, weight_decay=0.1)
    opt.apply(theta, grad)
    np.testing.assert_allclose(theta, [0.94, -1.88], rtol=1e-15)
    np.testing.assert_allclose(opt.state_arrays()["velocity"], [0.6, -1.2], rtol=1e-15)


def test_adam_coupled_weight_decay_passes_through_the_denominator():
    theta, grad = np.array([1.0]), np.array([0.5])
    Adam(0.1, weight_decay=0.1).apply(theta, grad)
    # g' = 0.6; m_hat = 0.6, v_hat = 0.36: the step is 0.1 * 0.6 / (0.6 + 1e-8)
    np.testing.assert_allclose(theta, [1 - 0.1 * 0.6 / (0.6 + 1e-8)], rtol=1e-15)


def test_adamw_step_by_hand():
    theta, grad = np.array([1.0, 2.0]), np.array([0.5, 0.5])
    opt = AdamW(0.1, weight_decay=0.1, decay_bias=False)
    opt.apply(theta, grad, weights=np.array([True, False]))
    # kernel: 1 * (1 - 0.01) = 0.99, then Adam's first step 0.1 * 0.5 / (0.5 + 1e-8)
    step = 0.1 * 0.5 / (0.5 + 1e-8)
    np.testing.assert_allclose(theta, [0.99 - step, 2.0 - step], rtol=1e-15)
    assert opt.iterations == 1


def test_decay_bias_false_needs_the_weights_mask():
    with pytest.raises(ValueError, match="weights"):
        SGD(0.1, weight_decay=0.1, decay_bias=False).apply(np.ones(2), np.ones(2))


def test_weight_decay_configs_round_trip_and_stay_unchanged_without_decay():
    assert "weight_decay" not in SGD(0.1).get_config()
    assert "decay_bias" not in Adam().get_config()
    assert "weight_decay" not in AdamW().get_config()  # 0.01 is AdamW's default
    for opt in (SGD(0.1, momentum=0.5, weight_decay=0.2, decay_bias=False),
                Adam(weight_decay=0.3), AdamW(0.01, weight_decay=0.5),
                AdamW(weight_decay=0.0, decay_bias=False)):
        back = deserialize(serialize(opt))
        assert type(back) is type(opt)
        assert back.get_config() == opt.get_config()
        assert (back.weight_decay, back.decay_bias) == (opt.weight_decay, opt.decay_bias)
    assert type(get("adamw")) is AdamW
    with pytest.raises(ValueError, match="'adamw'"):
        deserialize({"name": "rmsprop", "learning_rate": 0.1})


def test_weight_decay_both_backends(backend):
    theta, grad = np.array([1.0, -2.0, 0.0]), np.array([0.5, -1.0, 0.3])
    mask = np.array([True, True, False])
    SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.1).apply(theta, grad, mask)
    # Nesterov: v = g' = [0.6, -1.2]; theta -= 0.1 * (g' + 0.9 v) = 0.1 * 1.9 * g'
    np.testing.assert_allclose(theta, [1 - 0.114, -2 + 0.228, 0.0], rtol=1e-14)
    theta = np.array([1.0, -2.0, 0.0])
    AdamW(0.1, weight_decay=0.1).apply(theta, np.array([0.5, -1.0, 0.3]), mask)
    # Adam's first step is lr * g / (|g| + eps) per entry
    step_0, step_1 = 0.1 * 0.5 / (0.5 + 1e-8), 0.1 * 1.0 / (1.0 + 1e-8)
    np.testing.assert_allclose(theta, [0.99 - step_0, -1.98 + step_1, 0.0], rtol=1e-14)
    assert theta[2] == 0.0
