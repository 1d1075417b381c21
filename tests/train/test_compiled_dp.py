"""The compiled data-parallel path (minscale/train/compiled_dp.py, kernels/_fastfit_dp.py):
it is the one the workers take for the models the compiled loop supports, it equals the
general data-parallel loop and one process, every rank ends bit-identical, and a dead or silent
peer ends the run within its bounds with no shared-memory segment left.

Worker-side helpers are module level so spawn can import them.
"""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import minscale as ms
from minscale.parallel import WorkerError, run_workers
from minscale.train import Callback

pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def _numba():
    previous = ms.get_backend()
    ms.set_backend("numba")
    yield
    ms.set_backend(previous)


class NoOp(Callback):
    """Any callback keeps a run on the general loop (the compiled loops take none)."""

    def on_step_begin(self, model, step):
        pass


def _case(dtype="float64", regularized=False):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((41, 4)).astype(dtype)
    y = np.column_stack([np.tanh(X[:, 0] - X[:, 1]), X[:, 2] * X[:, 3]]).astype(dtype)
    reg = ms.regularizers.L2(1e-3) if regularized else None
    model = ms.Sequential([ms.Dense(8, "relu", kernel_regularizer=reg), ms.Dense(2)],
                          input_dim=4, seed=5, dtype=dtype)
    model.compile(optimizer=ms.optim.Adam(ms.schedules.InverseTimeDecay(0.02, decay_rate=0.2)))
    model.mask[[1, 6]] = False
    model.params[~model.mask] = 0.0
    return model, X, y


@pytest.mark.parametrize("workers, batch_size, regularized", [(2, 8, False), (3, 5, True)])
def test_compiled_workers_equal_general_workers_and_one_process(workers, batch_size,
                                                                regularized):
    # 41 rows: the last batch has 1 row, so with 2 or 3 workers some shards are empty
    kwargs = dict(epochs=4, batch_size=batch_size, seed=9)
    one, X, y = _case(regularized=regularized)
    h_one = one.fit(X, y, **kwargs)
    fast, _, _ = _case(regularized=regularized)
    h_fast = fast.fit(X, y, workers=workers, **kwargs)
    general, _, _ = _case(regularized=regularized)
    h_general = general.fit(X, y, workers=workers, callbacks=[NoOp()], **kwargs)
    assert fast.optimizer.iterations == one.optimizer.iterations == 4 * -(-41 // batch_size)
    for other, history in ((one, h_one), (general, h_general)):
        np.testing.assert_allclose(fast.params, other.params, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(h_fast["loss"], history["loss"], rtol=1e-10)
        np.testing.assert_array_equal(h_fast["lr"], history["lr"])
        for name, buf in other.optimizer.state_arrays().items():
            np.testing.assert_allclose(fast.optimizer.state_arrays()[name], buf, rtol=1e-10,
                                       atol=1e-15)
    assert np.all(fast.params[~fast.mask] == 0.0)


@pytest.mark.exactness
def test_timed_workers_stay_compiled_with_the_same_bits():
    # fit(..., timing=True) splits the compiled data-parallel run into one call (and one
    # optimizer-state gather) per epoch on every rank: same operations, same bits as one call
    kwargs = dict(epochs=3, batch_size=8, seed=9, workers=2)
    plain, X, y = _case()
    h_plain = plain.fit(X, y, **kwargs)
    timed, _, _ = _case()
    h_timed = timed.fit(X, y, timing=True, **kwargs)
    assert h_plain.loop == h_timed.loop == "compiled"
    assert timed.params.tobytes() == plain.params.tobytes()
    assert h_timed.history == h_plain.history
    for name, buf in plain.optimizer.state_arrays().items():
        assert timed.optimizer.state_arrays()[name].tobytes() == buf.tobytes()
    # rank 0's clock, read inside the worker: one positive span per epoch
    assert h_plain.epoch_seconds == []
    assert len(h_timed.epoch_seconds) == 3 and all(s > 0 for s in h_timed.epoch_seconds)


def _run_compiled(comm, epochs):
    from minscale.train import compiled_dp

    ms.set_backend("numba")
    model, X, y = _case("float32")
    options = dict(epochs=epochs, batch_size=6, shuffle=True, seed=2, validation_data=None,
                   verbose=0, callbacks=[], pruning=None, pruning_method="magnitude")
    assert compiled_dp.supports(model, options, comm)
    history = compiled_dp.run(model, X, y, comm, **options)
    return model.params.copy(), history["loss"]


def test_the_workers_take_the_compiled_path_and_ranks_are_bit_identical():
    model, X, y = _case("float32")
    results = run_workers(_run_compiled, 3, args=(3,), nbytes=(model.params.size + 1) * 8)
    for params, loss in results[1:]:
        assert params.dtype == np.float32
        np.testing.assert_array_equal(params, results[0][0])
        assert loss == results[0][1]
    one, X, y = _case("float32")
    one.fit(X, y, epochs=3, batch_size=6, seed=2)
    np.testing.assert_allclose(results[0][0], one.params, rtol=1e-4, atol=1e-6)


def _die_or_stall(comm, how):
    if comm.rank == 1:
        if how == "die":
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
    return _run_compiled(comm, 100000)


@pytest.mark.parametrize("how", ["die", "stall"])
def test_a_dead_or_silent_peer_ends_the_compiled_run_and_leaves_no_segment(how,
                                                                           created_segments):
    model, _, _ = _case("float32")
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_workers(_die_or_stall, 2, args=(how,), nbytes=(model.params.size + 1) * 8,
                    timeout=2.0)
    elapsed = time.monotonic() - start
    assert info.value.rank == 1
    if how == "die":
        assert info.value.exitcode == -signal.SIGKILL and elapsed < 30
    else:
        assert "stopped responding" in str(info.value) and elapsed < 2.0 + 30
    assert created_segments
    assert not any(Path("/dev/shm", n).exists() for n in created_segments)
