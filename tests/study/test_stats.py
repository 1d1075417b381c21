"""Seeds and intervals: Student-t values from tables, and properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale.study.stats import mean_ci95, paired_difference_ci95, verdict


def test_mean_ci95_matches_the_t_table():
    # n = 3: t_{0.975, 2} = 4.302653 (tables), s = 1, half width 4.302653 / sqrt(3)
    m, lo, hi = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0
    assert hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert m - lo == pytest.approx(hi - m, rel=1e-12)
    # n = 5: t_{0.975, 4} = 2.776445
    vals = [2.0, 4.0, 4.0, 5.0, 5.0]  # mean 4, s = sqrt(1.5)
    m, lo, hi = mean_ci95(vals)
    assert m == 4.0
    assert hi - m == pytest.approx(2.776445 * math.sqrt(1.5) / math.sqrt(5), rel=1e-6)


def test_one_seed_has_no_interval_and_no_verdict():
    m, lo, hi = mean_ci95([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)
    assert verdict([0.1], [0.9]) == "no significant difference"


def test_verdict_uses_paired_differences():
    control = [1.0, 2.0, 3.0, 4.0]
    better = [c - 0.1 + d for c, d in zip(control, [0.0, 0.01, -0.01, 0.0])]
    assert verdict(better, control) == "better"
    assert verdict(control, better) == "worse"
    # the unpaired intervals overlap widely, the paired one does not
    assert mean_ci95(better)[2] > mean_ci95(control)[1]
    assert verdict([1.0, 2.0, 3.0], [1.1, 1.9, 3.0]) == "no significant difference"


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="at least one"):
        mean_ci95([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci95([1.0, math.nan])
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference_ci95([1.0, 2.0], [1.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=20).filter(lambda v: np.ptp(v) > 1e-3))
def test_the_same_spread_over_more_seeds_gives_a_narrower_interval(values):
    # seeing the sample twice keeps its spread (s shrinks by sqrt(2(n-1)/(2n-1)) < 1) while
    # t falls and sqrt(n) grows: the interval must narrow
    narrow = mean_ci95(values + values)
    wide = mean_ci95(values)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_intervals_shrink_as_seeds_grow_on_average(seed):
    # synthetic per-seed losses from one normal law; the expected half width falls like
    # t_{n-1} / sqrt(n) (2.26 s at n = 2 ... 0.72 s at n = 8), so the mean width over 400
    # repetitions falls with n far beyond its own noise
    rng = np.random.default_rng(seed)
    draws = rng.normal(1.0, 0.2, size=(400, 8))
    widths = [np.mean([np.subtract(*mean_ci95(row[:n])[2:0:-1]) for row in draws])
              for n in (2, 3, 5, 8)]
    assert all(a > b for a, b in zip(widths, widths[1:]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=20))
def test_interval_contains_the_mean(values):
    m, lo, hi = mean_ci95(values)
    assert lo <= m + 1e-9 * (1 + abs(m)) and m - 1e-9 * (1 + abs(m)) <= hi
