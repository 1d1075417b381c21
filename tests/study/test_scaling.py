"""study.scaling: counted FLOPs by hand, the power-law fit on known laws, bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale.study.scaling import fit_power_law, power_law, training_flops_per_sample


def test_training_flops_per_sample_by_hand():
    # 64-32-10: forward = (2*64*32 + 32) + 32 (ReLU) + (2*32*10 + 10) = 4810; x3
    assert training_flops_per_sample([64, 32, 10]) == 3 * 4810
    # linear model 3 -> 1: 2*3 + 1 = 7 forward, no activation
    assert training_flops_per_sample((3, 1)) == 21
    # two hidden layers 2-4-4-1: (16+4) + 4 + (32+4) + 4 + (8+1) = 73
    assert training_flops_per_sample([2, 4, 4, 1]) == 3 * 73


@pytest.mark.parametrize("bad, exc", [([5], ValueError), ([4, 0, 1], ValueError),
                                      ([4, 2.5, 1], TypeError), ("64,10", TypeError),
                                      (7, TypeError)])
def test_training_flops_bad_input(bad, exc):
    with pytest.raises(exc):
        training_flops_per_sample(bad)


@pytest.mark.parametrize("c, a, alpha", [(0.1, 2.0, 0.5), (0.0, 5.0, 0.3), (0.02, 30.0, 1.2)])
def test_noiseless_law_is_recovered_to_rounding(c, a, alpha):
    n = np.array([310, 610, 1210, 2410, 4810, 9610, 19210], dtype=float)
    fit = fit_power_law(n, power_law(n, c, a, alpha), n_bootstrap=50)
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-6)
    assert fit["a"] == pytest.approx(a, rel=1e-5)
    assert fit["c"] == pytest.approx(c, abs=1e-8)
    assert fit["rmse_log"] < 1e-8
    # every resample of the exact law gives the exact alpha back
    assert fit["alpha_ci95"] == pytest.approx([alpha, alpha], rel=1e-5)
    assert fit["bootstrap_used"] <= 50 and fit["n_points"] == 7


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.3, 0.8))
def test_alpha_within_10_percent_under_noise(seed, alpha):
    # 12 sizes over three decades, 2 % multiplicative noise, c a fifth of the smallest loss
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e2, 1e5, 12)
    c, a = 0.01, 3.0
    y = power_law(n, c, a, alpha) * np.exp(rng.normal(0.0, 0.02, n.size))
    fit = fit_power_law(n, y, n_bootstrap=0)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.10)


def test_outlier_pulls_less_than_least_squares_would():
    n = np.geomspace(1e2, 1e5, 10)
    y = power_law(n, 0.01, 3.0, 0.5)
    y[4] *= 3.0  # one wild point
    fit = fit_power_law(n, y, n_bootstrap=0)
    assert fit["alpha"] == pytest.approx(0.5, rel=0.05)


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(3)
    n = np.geomspace(300, 1e5, 7)
    y = power_law(n, 0.05, 5.0, 0.4) * np.exp(rng.normal(0.0, 0.02, n.size))
    f1 = fit_power_law(n, y, n_bootstrap=200, seed=7)
    f2 = fit_power_law(n, y, n_bootstrap=200, seed=7)
    assert f1 == f2
    lo, hi = f1["alpha_ci95"]
    assert lo <= f1["alpha"] <= hi and hi - lo > 0
    none = fit_power_law(n, y, n_bootstrap=0)
    assert none["alpha_ci95"] == [None, None] and none["bootstrap_used"] == 0


@pytest.mark.parametrize("n, y, match", [
    ([1, 2], [1.0, 0.5], "at least 3 distinct"),
    ([1, 1, 2, 2], [1.0, 1.0, 0.5, 0.5], "at least 3 distinct"),
    ([1, 2, 3], [1.0, 0.5], "same length"),
    ([1, 2, 3], [1.0, 0.0, 0.5], "> 0"),
    ([0, 2, 3], [1.0, 0.7, 0.5], "> 0"),
    ([1, 2, 3], [1.0, math.nan, 0.5], "finite"),
    ([[1, 2, 3]], [[1.0, 0.7, 0.5]], "1-D"),
])
def test_fit_bad_input(n, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(n, y)


def test_fit_bad_options():
    n, y = [1, 2, 3], [1.0, 0.7, 0.5]
    with pytest.raises(ValueError, match="n_bootstrap"):
        fit_power_law(n, y, n_bootstrap=-1)
    with pytest.raises(ValueError, match="delta"):
        fit_power_law(n, y, delta=0.0)
    with pytest.raises(TypeError):
        fit_power_law(["a", "b", "c"], y)
