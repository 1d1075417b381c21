"""Tests of minscale.prune.schedules: the sparsity schedules (pure functions and classes).

Reference values are worked out by hand in the comments beside them; the sparsity-schedule
step rule is the one of TensorFlow Model Optimization's ``pruning_schedule.py``.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale.prune import (
    ConstantSparsity,
    PolynomialDecaySparsity,
    polynomial_decay_sparsity,
    should_prune_at,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

sparsities = st.floats(0.0, 1.0, allow_nan=False)
PROPS = settings(max_examples=80, deadline=None)


def test_should_prune_follows_tfmo_rule():
    # TFMO _should_prune_in_step: step >= begin, (end < 0 or step <= end),
    # (step - begin) % frequency == 0
    steps = range(0, 400)
    assert [t for t in steps if should_prune_at(t, 100, 300, 100)] == [100, 200, 300]
    assert [t for t in steps if should_prune_at(t, 5, -1, 150)] == [5, 155, 305]
    assert [t for t in steps if should_prune_at(t, 7, 7, 3)] == [7]
    np.testing.assert_array_equal(should_prune_at(np.arange(0, 6), 1, 4, 2),
                                  [False, True, False, True, False, False])


def test_constant_sparsity():
    sched = ConstantSparsity(0.75, begin_step=10, end_step=30, frequency=10)
    assert sched(0) == 0.75 and sched(1000) == 0.75
    assert [t for t in range(50) if sched.should_prune(t)] == [10, 20, 30]
    default = ConstantSparsity(0.5)
    assert (default.begin_step, default.end_step, default.frequency) == (0, -1, 100)
    assert default.should_prune(0) and default.should_prune(10**9) and not default.should_prune(1)
    assert ConstantSparsity.from_config(sched.get_config()) == sched
    assert sched.get_config() == {"target_sparsity": 0.75, "begin_step": 10, "end_step": 30,
                                  "frequency": 10}


def test_polynomial_reference_values():
    # s_i = 0, s_f = 0.5, t0 = 0, t_end = 100, power 3:
    #   t = 25: p = 0.25, (1 - p)^3 = 0.421875, s = 0.5 - 0.5 * 0.421875 = 0.2890625
    #   t = 50: p = 0.5,  (1 - p)^3 = 0.125,    s = 0.5 - 0.0625        = 0.4375
    sched = PolynomialDecaySparsity(0.0, 0.5, begin_step=0, end_step=100)
    assert [sched(t) for t in (0, 25, 50, 100, 150)] == [0.0, 0.2890625, 0.4375, 0.5, 0.5]
    # power 1 is linear: 0.1 + (0.9 - 0.1) * 0.5 midway between begin 10 and end 30
    assert polynomial_decay_sparsity(20, 0.1, 0.9, 10, 30, power=1) == pytest.approx(0.5,
                                                                                     abs=1e-15)
    assert polynomial_decay_sparsity(3, 0.1, 0.9, 10, 30) == 0.1  # before begin_step: s_i
    np.testing.assert_array_equal(sched(np.array([0, 50, 100])), [0.0, 0.4375, 0.5])
    assert [t for t in range(0, 301) if sched.should_prune(t)] == [0, 100]
    assert PolynomialDecaySparsity.from_config(sched.get_config()) == sched


@PROPS
@given(s_i=sparsities, s_f=sparsities, begin=st.integers(0, 10**6),
       length=st.integers(1, 10**6), power=st.floats(0.1, 10), data=st.data())
def test_polynomial_initial_final_and_monotone(s_i, s_f, begin, length, power, data):
    end = begin + length
    sched = PolynomialDecaySparsity(s_i, s_f, begin, end, power=power)
    assert sched(begin) == s_i
    assert sched(end) == s_f
    steps = np.sort(np.array(data.draw(st.lists(st.integers(0, end + 10), min_size=2,
                                                max_size=20))))
    values = sched(steps)
    diffs = np.diff(values) * (1 if s_f >= s_i else -1)
    assert np.all(diffs >= 0), "not monotone toward final_sparsity"
    assert np.all((values >= min(s_i, s_f)) & (values <= max(s_i, s_f)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(begin_step=10, end_step=10), "end_step must be > begin_step = 10, got 10"),
        (dict(begin_step=10, end_step=5), "end_step must be > begin_step"),
        (dict(begin_step=0, end_step=-1), "end_step must be > begin_step; -1"),
        (dict(begin_step=-1, end_step=5), "begin_step must be an integer >= 0, got -1"),
        (dict(begin_step=0, end_step=5, frequency=0), "frequency must be an integer >= 1, got 0"),
        (dict(begin_step=0, end_step=5, power=0), "power must be finite and > 0"),
    ],
)
def test_polynomial_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolynomialDecaySparsity(0.1, 0.9, **kwargs)


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="final_sparsity must be in"):
        PolynomialDecaySparsity(0.1, 1.5, 0, 10)
    with pytest.raises(ValueError, match="target_sparsity must be in"):
        ConstantSparsity(float("nan"))
    with pytest.raises(ValueError, match="end_step must be >= begin_step = 5"):
        ConstantSparsity(0.5, begin_step=5, end_step=4)
    with pytest.raises(ValueError, match="end_step must be -1 or >= 0"):
        ConstantSparsity(0.5, end_step=-2)
    with pytest.raises(ValueError, match="step must be >= 0"):
        ConstantSparsity(0.5).should_prune(-1)
    with pytest.raises(TypeError, match="step must be an int"):
        PolynomialDecaySparsity(0.1, 0.9, 0, 10)(1.5)
    with pytest.raises(TypeError, match="frequency must be an int"):
        ConstantSparsity(0.5, frequency=2.0)
