"""MSE in its three reductions: values and gradients."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale.losses import mse, mse_grad
from minscale.testing import check_gradients

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

Y = np.array([[1.0, 2.0], [3.0, 4.0]])
P = np.array([[0.0, 2.0], [3.0, 6.0]])   # squared errors 1, 0, 0, 4 -> sum 5


def test_reference_values():
    assert mse(Y, P) == 5 / 4           # mean over n * d elements (Keras / PyTorch)
    assert mse(Y, P, "sum") == 5
    assert mse(Y, P, "half_sum") == 2.5  # the textbook J = 1/2 sum (y - y_hat)^2
    np.testing.assert_array_equal(mse_grad(Y, P), 2 * (P - Y) / 4)
    np.testing.assert_array_equal(mse_grad(Y, P, "sum"), 2 * (P - Y))
    np.testing.assert_array_equal(mse_grad(Y, P, "half_sum"), P - Y)


def test_shard_losses_add_up_to_the_batch_loss():
    # two shards of one batch, each divided by the global row count
    assert mse(Y[:1], P[:1], n_total=2) + mse(Y[1:], P[1:], n_total=2) == mse(Y, P)


shapes = st.tuples(st.integers(1, 6), st.integers(1, 4))
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@settings(max_examples=40)
@given(data=st.data(), shape=shapes, reduction=st.sampled_from(["mean", "sum", "half_sum"]))
def test_mse_gradient_matches_finite_differences(data, shape, reduction):
    y = data.draw(arrays(np.float64, shape, elements=finite))
    y_hat = data.draw(arrays(np.float64, shape, elements=finite))
    errors = check_gradients(lambda p: (mse(y, p, reduction), mse_grad(y, p, reduction)), y_hat,
                             rtol=1e-6)
    assert errors["input"] <= 1e-6


@given(shape=shapes, data=st.data())
def test_mse_is_nonnegative_and_zero_on_equal(shape, data):
    y = data.draw(arrays(np.float64, shape, elements=finite))
    assert mse(y, y) == 0
    assert mse(y, y + 1) == pytest.approx(1.0)


def test_errors():
    with pytest.raises(ValueError, match=r"^reduction must be one of \('mean', 'sum', "
                                         r"'half_sum'\), got 'avg'$"):
        mse(Y, P, "avg")
    with pytest.raises(ValueError, match="shape"):
        mse(Y, P[:1])
