"""prune.recovery: snapshots at exact update counts, rewinding and re-initialization keep
the mask and copy the survivors exactly."""
import numpy as np
import pytest

import minscale as ms
from minscale.prune import WeightSnapshots, prune, reinitialize, rewind

pytestmark = pytest.mark.exactness


def _model(seed=0):
    return ms.Sequential([ms.Dense(6, activation="relu"), ms.Dense(2)], input_dim=3, seed=seed)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 3)), rng.normal(size=(20, 2))


def test_snapshots_are_the_weights_after_k_updates():
    X, y = _data()
    model = _model()
    start = model.params.copy()
    snaps = WeightSnapshots([0, 3, 10])  # 20 rows, batch 4: 5 updates per epoch
    model.fit(X, y, epochs=2, batch_size=4, seed=0, callbacks=[snaps])
    assert sorted(snaps.weights) == [0, 3, 10]
    np.testing.assert_array_equal(snaps.weights[0], start)
    np.testing.assert_array_equal(snaps.weights[10], model.params)  # taken at the end
    # the copies change nothing: the same run with an empty snapshot list (the same,
    # general loop: without any callback fit may take the compiled one) ends identically
    again = _model()
    again.fit(X, y, epochs=2, batch_size=4, seed=0, callbacks=[WeightSnapshots([])])
    np.testing.assert_array_equal(again.params, model.params)
    # a step the training never reaches is missing, not invented
    short = WeightSnapshots([99])
    _model().fit(X, y, epochs=1, batch_size=4, seed=0, callbacks=[short])
    assert short.weights == {}


def test_snapshot_after_k_updates_equals_a_run_of_k_updates():
    X, y = _data()
    snaps = WeightSnapshots([5])
    _model().fit(X, y, epochs=3, batch_size=4, seed=0, callbacks=[snaps])
    one_epoch = _model()
    one_epoch.fit(X, y, epochs=1, batch_size=4, seed=0, callbacks=[WeightSnapshots([])])
    np.testing.assert_array_equal(snaps.weights[5], one_epoch.params)


def test_rewind_keeps_the_mask_and_copies_survivors_exactly():
    X, y = _data()
    model = _model()
    start = model.params.copy()
    model.fit(X, y, epochs=2, batch_size=4, seed=0)
    prune(model, 0.5)
    mask = model.mask.copy()
    rewind(model, start)
    np.testing.assert_array_equal(model.mask, mask)
    assert (model.params[~mask] == 0).all()
    np.testing.assert_array_equal(model.params[mask], start[mask])
    assert model.optimizer.iterations == 0 and model.optimizer.state_arrays() == {}
    # retraining keeps pruned weights at exactly 0
    model.fit(X, y, epochs=2, batch_size=4, seed=1)
    assert (model.params[~mask] == 0).all()
    assert (model.params[mask] != start[mask]).any()


def test_reinitialize_draws_like_build():
    model = prune(_model(seed=0), 0.5)
    mask = model.mask.copy()
    reinitialize(model, seed=7)
    fresh = _model(seed=7).params
    np.testing.assert_array_equal(model.params[mask], fresh[mask])
    assert (model.params[~mask] == 0).all()
    np.testing.assert_array_equal(model.mask, mask)
    # the model's own seed gives its initial survivors back
    own = prune(_model(seed=0), 0.5)
    reinitialize(own, seed=0)
    np.testing.assert_array_equal(own.params[own.mask], _model(seed=0).params[own.mask])


def test_bad_input():
    model = _model()
    with pytest.raises(ValueError, match="shape"):
        rewind(model, np.zeros(3))
    with pytest.raises(TypeError, match="float"):
        rewind(model, np.zeros(model.params.shape, dtype=int))
    with pytest.raises(ValueError, match="finite"):
        rewind(model, np.full(model.params.shape, np.nan))
    with pytest.raises(TypeError, match="Sequential"):
        rewind("model", np.zeros(3))
    with pytest.raises(ValueError, match=r"steps\[1\]"):
        WeightSnapshots([0, -1])
    with pytest.raises(TypeError):
        WeightSnapshots(3)
    with pytest.raises(ValueError):
        reinitialize(model, seed=-1)
