"""The public interfaces the parallel refactor builds on: Sequential.grad_buffer,
Sequential.relink(), _Optimizer.buffer(), kernels.compiled_epochs()."""
import pickle

import numpy as np
import pytest

import minscale as ms
from minscale import kernels
from minscale.optim import SGD, Adam


def _model():
    model = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=0)
    model.compile(optimizer=SGD(0.1))
    return model


def test_grad_buffer_is_grads_plus_the_loss_slot():
    model = _model()
    P = model.params.size
    assert model.grad_buffer.shape == (P + 1,)
    loss = model.compute_gradients(np.ones((4, 2)), np.zeros((4, 1)))
    assert np.shares_memory(model.grad_buffer, model.grads)
    np.testing.assert_array_equal(model.grad_buffer[:P], model.grads)
    model.grad_buffer[P] = loss
    assert model.grad_buffer[-1] == loss
    assert ms.Sequential([ms.Dense(1)]).grad_buffer is None


def test_relink_restores_the_views_after_pickling():
    model = pickle.loads(pickle.dumps(_model()))
    assert not np.shares_memory(model.grad_buffer, model.grads)   # pickling broke the views
    assert model.relink() is model
    assert np.shares_memory(model.grad_buffer, model.grads)
    assert np.shares_memory(model.grads, model.layers[0].dW)
    assert np.shares_memory(model.params, model.layers[1].W)
    with pytest.raises(ValueError, match=r"model must be built"):
        ms.Sequential([ms.Dense(1)]).relink()


def test_optimizer_buffer_is_the_stored_state():
    opt = Adam(0.01)
    like = np.ones(5)
    m = opt.buffer("m", like)
    assert m.shape == (5,) and not m.any()
    m[0] = 2.0
    assert opt.buffer("m", like) is m
    assert opt.state_arrays()["m"][0] == 2.0
    assert opt.buffer("m", np.ones(3, np.float32)).dtype == np.float32   # replaced


def test_compiled_epochs_only_on_numba(monkeypatch):
    monkeypatch.setattr(kernels, "_forced", kernels._forced)
    monkeypatch.setattr(kernels, "_active", kernels._active)
    monkeypatch.setattr(kernels, "_module", kernels._module)
    kernels.set_backend("numpy")
    assert kernels.compiled_epochs() is None
    try:
        kernels.set_backend("numba")
    except ImportError:
        pytest.skip("numba is not installed")
    fastfit = kernels.compiled_epochs()
    assert fastfit.__name__ == "minscale.kernels._fastfit"
    assert callable(fastfit.train_epochs)
