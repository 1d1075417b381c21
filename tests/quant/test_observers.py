"""Range observers: running min/max, per channel, moving average, bad input.
"""

import numpy as np
import pytest

from minscale.quant import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    affine_qparams,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

def test_minmax_observer_running_range():
    obs = MinMaxObserver(signed=False)
    x = np.array([-1.0, 0.5])
    assert obs.observe(x) is x
    obs(np.array([[0.25, 1.0]]))
    obs(np.zeros(0))  # ignored, as torch
    assert (obs.min_val, obs.max_val) == (-1.0, 1.0)
    assert obs.calculate_qparams() == affine_qparams(-1.0, 1.0, signed=False) == (2 / 255, 128)
    obs.reset()
    with pytest.raises(ValueError, match="seen no data"):
        obs.calculate_qparams()


def test_per_channel_observer():
    obs = MinMaxObserver(symmetric=True, narrow_range=True, axis=1)
    obs.observe(np.array([[1.0, -2.0], [0.5, 0.0]]))
    obs.observe(np.array([[-3.0, 1.0]]))
    assert obs.min_val.tolist() == [-3.0, -2.0] and obs.max_val.tolist() == [1.0, 1.0]
    scale, zp = obs.calculate_qparams()
    assert scale.tolist() == [3 / 127, 2 / 127] and zp.tolist() == [0, 0]
    with pytest.raises(ValueError, match="channels"):
        obs.observe(np.ones((2, 3)))


def test_moving_average_observer_reference():
    # torch's rule with c = 0.01: first batch sets [0, 2]; then min 0 + 0.01(-1 - 0) = -0.01,
    # max 2 + 0.01(4 - 2) = 2.02.
    obs = MovingAverageMinMaxObserver()
    obs.observe([0.0, 2.0])
    obs.observe([-1.0, 4.0])
    assert obs.min_val == pytest.approx(-0.01, abs=1e-17)
    assert obs.max_val == pytest.approx(2.02, rel=1e-15)
    assert obs.averaging_constant == 0.01


def test_observer_bad_input():
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0.0)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=1.5)
    with pytest.raises(ValueError, match="bits"):
        MinMaxObserver(bits=64)
    with pytest.raises(ValueError, match="x contains NaN"):
        MinMaxObserver().observe([np.nan])
