"""Learning-rate schedules: reference values and properties."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minscale import schedules
from minscale.schedules import (
    ExponentialDecay,
    InverseTimeDecay,
    PolynomialDecay,
    exponential_decay,
    inverse_time_decay,
    polynomial_decay,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

# Reference: the worked textbook example eta0 = 0.1, alpha = 0.01, t = 1 -> 0.1 / 1.01.
def test_inverse_time_decay_textbook_value():
    assert inverse_time_decay(1, 0.1, 0.01) == pytest.approx(0.1 / 1.01, rel=1e-15)
    assert inverse_time_decay(1, 0.1, 0.01) == pytest.approx(0.0990099, abs=1e-7)


# Reference: eta0 0.1, decay_rate 0.5, decay_steps 2, steps 0..4 (arithmetic in issue 2):
# continuous 0.1 / (1 + 0.5 * t / 2); staircase 0.1 / (1 + 0.5 * floor(t / 2)).
def test_inverse_time_decay_continuous_and_staircase():
    steps = np.arange(5)
    cont = inverse_time_decay(steps, 0.1, 0.5, decay_steps=2)
    stair = inverse_time_decay(steps, 0.1, 0.5, decay_steps=2, staircase=True)
    np.testing.assert_allclose(cont, [0.1, 0.08, 0.0666667, 0.0571429, 0.05], atol=5e-8)
    np.testing.assert_allclose(stair, [0.1, 0.1, 0.0666667, 0.0666667, 0.05], atol=5e-8)


# Reference: Keras InverseTimeDecayTest (eta0 = 0.1, decay_steps = 10, decay_rate = 0.96).
@pytest.mark.parametrize("step, expected", [(0, 0.1), (5, 0.1 / 1.48), (10, 0.1 / 1.96)])
def test_inverse_time_decay_keras_reference(step, expected):
    assert InverseTimeDecay(0.1, decay_rate=0.96, decay_steps=10)(step) == pytest.approx(expected)


def test_docstring_example():
    assert inverse_time_decay(10, 0.1, decay_rate=0.5, decay_steps=10) == 0.1 / 1.5


# Reference: Keras ExponentialDecay and PolynomialDecay definitions, worked by hand.
def test_exponential_and_polynomial_reference():
    assert exponential_decay(20, 0.1, 10, 0.5) == pytest.approx(0.025)
    assert exponential_decay(15, 0.1, 10, 0.5, staircase=True) == pytest.approx(0.05)
    # (0.1 - 0.01) * (1 - 5/10)^2 + 0.01 = 0.0325; clamps after decay_steps
    assert polynomial_decay(5, 0.1, 10, 0.01, power=2) == pytest.approx(0.0325)
    assert polynomial_decay(50, 0.1, 10, 0.01, power=2) == pytest.approx(0.01)


rates = st.floats(0, 10, allow_nan=False)
eta0s = st.floats(1e-6, 10, allow_nan=False)
decay_steps = st.integers(1, 10**4)
steps = st.integers(0, 10**6)


def _all_schedules(eta0, rate, ds, staircase):
    yield InverseTimeDecay(eta0, rate, ds, staircase)
    yield ExponentialDecay(eta0, ds, min(1.0, 1 / (1 + rate)), staircase)
    yield PolynomialDecay(eta0, ds, eta0 / (1 + rate))


@given(eta0=eta0s, rate=rates, ds=decay_steps, staircase=st.booleans())
def test_every_schedule_starts_at_eta0(eta0, rate, ds, staircase):
    for schedule in _all_schedules(eta0, rate, ds, staircase):
        assert schedule(0) == pytest.approx(eta0, rel=1e-12)


@given(eta0=eta0s, rate=rates, ds=decay_steps, staircase=st.booleans(), t=steps,
       dt=st.integers(1, 10**5))
def test_every_schedule_is_nonincreasing(eta0, rate, ds, staircase, t, dt):
    for schedule in _all_schedules(eta0, rate, ds, staircase):
        assert schedule(t + dt) <= schedule(t) * (1 + 1e-12)


@given(eta0=eta0s, rate=rates, ds=decay_steps, t=steps)
def test_staircase_never_below_continuous_and_equal_at_multiples(eta0, rate, ds, t):
    for cls_args in ((InverseTimeDecay, (eta0, rate, ds)),
                     (ExponentialDecay, (eta0, ds, 1 / (1 + rate)))):
        cls, args = cls_args
        cont, stair = cls(*args, staircase=False), cls(*args, staircase=True)
        assert stair(t) >= cont(t) * (1 - 1e-12)
        k = t // ds
        assert stair(k * ds) == pytest.approx(cont(k * ds), rel=1e-12)


@given(eta0=eta0s, rate=rates, ds=decay_steps)
def test_array_steps_match_scalar_steps(eta0, rate, ds):
    t = np.array([0, 1, 7, 1000])
    out = inverse_time_decay(t, eta0, rate, ds)
    assert out.dtype == np.float64
    assert [inverse_time_decay(int(s), eta0, rate, ds) for s in t] == pytest.approx(out.tolist())


@pytest.mark.parametrize("kwargs, name", [
    (dict(step=-1, initial_learning_rate=0.1, decay_rate=0.5), "step"),
    (dict(step=0, initial_learning_rate=-0.1, decay_rate=0.5), "initial_learning_rate"),
    (dict(step=0, initial_learning_rate=0.1, decay_rate=-0.5), "decay_rate"),
    (dict(step=0, initial_learning_rate=0.1, decay_rate=0.5, decay_steps=0), "decay_steps"),
    (dict(step=0, initial_learning_rate=0.1, decay_rate=0.5, decay_steps=-3), "decay_steps"),
    (dict(step=0, initial_learning_rate=0.1, decay_rate=math.nan), "decay_rate"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        inverse_time_decay(**kwargs)
    if "step" in kwargs and kwargs["step"] == 0:
        args = {k: v for k, v in kwargs.items() if k != "step"}
        with pytest.raises(ValueError, match=name):
            InverseTimeDecay(**args)


def test_serialize_round_trip():
    s = InverseTimeDecay(0.1, 0.5, 2, True)
    assert schedules.deserialize(schedules.serialize(s)) == s
    with pytest.raises(ValueError):
        schedules.deserialize({"class_name": "Nope", "config": {}})
