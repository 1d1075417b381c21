"""The study's pure definitions (minscale/study/metrics.py): loss target, first hit, Pareto
set, smallest good variant, fixed-point round trip, gradual schedule, sparse code bytes --
hand-worked values and properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale import study

# --------------------------------------------------------------------------------------------
# pure definitions: hand-worked values


def test_loss_target_is_factor_times_best_final_loss():
    # 1.1 * min(0.5, 0.4) = 0.44; the diverged run (None) and inf are ignored
    assert study.loss_target([0.5, None, 0.4, math.inf]) == pytest.approx(0.44, abs=1e-15)
    assert study.loss_target([2.0], factor=1.5) == 3.0


def test_loss_target_rejects_no_finite_loss_and_bad_factor():
    with pytest.raises(ValueError, match="diverged"):
        study.loss_target([None, math.nan])
    with pytest.raises(ValueError, match="factor"):
        study.loss_target([1.0], factor=0.9)


def test_first_reached_hand_worked():
    assert study.first_reached([0.9, 0.5, 0.3, 0.6], 0.5) == 1  # <= counts
    assert study.first_reached([0.9, 0.8], 0.5) is None
    assert study.first_reached([math.nan, 0.4], 0.5) == 1  # NaN never counts
    with pytest.raises(ValueError, match="target"):
        study.first_reached([1.0], math.nan)


def test_pareto_front_hand_worked():
    # (100, .1) (50, .2) (50, .3) (10, .5) (60, .25): (50, .3) is beaten by (50, .2), and
    # (60, .25) by (50, .2); the front by increasing bytes is 3, 1, 0
    assert study.pareto_front([100, 50, 50, 10, 60], [0.1, 0.2, 0.3, 0.5, 0.25]) == [3, 1, 0]
    # identical points: the lowest index stays; NaN never on the front
    assert study.pareto_front([5, 5, 1], [0.2, 0.2, math.nan]) == [0]
    with pytest.raises(ValueError, match="same length"):
        study.pareto_front([1, 2], [0.1])


def test_smallest_within_hand_worked():
    # budget 1.05 * 0.50 = 0.525: 0.52 at 40 bytes qualifies, 0.60 at 10 does not
    assert study.smallest_within([100, 40, 10], [0.50, 0.52, 0.60], 0.50) == 1
    # a tie on bytes goes to the lower loss
    assert study.smallest_within([40, 40], [0.51, 0.50], 0.5) == 1
    assert study.smallest_within([10], [0.9], 0.5) is None
    with pytest.raises(ValueError, match="tolerance"):
        study.smallest_within([1], [0.1], 0.1, tolerance=-1)


def test_fixed_point_weights_hand_worked():
    # 4 bits: codes -8..7. frac_bits 3 fits (0.3 * 8 = 2.4 <= 7, -0.9 * 8 = -7.2 >= -8),
    # 4 does not (-0.9 * 16 = -14.4 < -8); codes round(2.4) = 2 -> 0.25 and
    # round(-7.2) = -7 -> -0.875
    w_hat, f = study.fixed_point_weights(np.array([0.3, -0.9]), 4)
    assert f == 3 and w_hat.tolist() == [0.25, -0.875]


def test_gradual_schedule_ends_inside_the_budget_at_the_final_sparsity():
    # 120 updates, 0.75 * 120 = 90 -> frequency 9, end_step 90
    s = study.gradual_schedule(120, 0.95)
    assert (s.frequency, s.end_step, s.begin_step) == (9, 90, 0)
    assert s(90) == 0.95 and s.should_prune(90) and s(0) == 0.0
    # tiny budgets still end strictly before the last update
    s = study.gradual_schedule(2, 0.5)
    assert s.end_step < 2 and s.should_prune(s.end_step) and s(s.end_step) == 0.5



# --------------------------------------------------------------------------------------------
# pure definitions: properties

finite = st.floats(0, 10, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), finite), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    b = [p[0] for p in points]
    loss = [p[1] for p in points]
    front = set(study.pareto_front(b, loss))
    for i in range(len(points)):
        dominated = any(b[j] <= b[i] and loss[j] <= loss[i] and (b[j] < b[i] or loss[j] < loss[i])
                        for j in range(len(points)))
        duplicate_earlier = any(b[j] == b[i] and loss[j] == loss[i] for j in range(i))
        assert (i in front) == (not dominated and not duplicate_earlier)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), finite), min_size=1, max_size=30), finite,
       st.floats(0, 1))
def test_smallest_within_is_on_the_front_and_minimal(points, ref, tol):
    b = [p[0] for p in points]
    loss = [p[1] for p in points]
    i = study.smallest_within(b, loss, ref, tol)
    ok = [j for j in range(len(points)) if loss[j] <= (1 + tol) * ref]
    if not ok:
        assert i is None
    else:
        assert i in ok and b[i] == min(b[j] for j in ok)
        assert i in study.pareto_front(b, loss)


def test_sparse_codes_nbytes_hand_worked():
    # 4 x 2 codes, 2 non-zero: bitmask ceil(8 / 8) + 2 = 3; CSR 2 + 2 * 4 + 5 * 4 = 30
    codes = np.array([[0, 3], [0, 0], [-1, 0], [0, 0]], dtype=np.int8)
    assert study.sparse_codes_nbytes(codes) == 3
    # a dense 1 x 1: bitmask 1 + 1 = 2, CSR 1 + 4 + 8 = 13
    assert study.sparse_codes_nbytes(np.array([[5]], dtype=np.int8)) == 2
    # 4-bit codes pack two per byte: 16 x 16 all non-zero -> 32 + 128 = 160
    assert study.sparse_codes_nbytes(np.ones((16, 16), np.int8), bits=4) == 160
    with pytest.raises(ValueError, match="codes"):
        study.sparse_codes_nbytes(np.ones(3))
