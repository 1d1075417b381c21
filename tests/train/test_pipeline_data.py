"""Data-parallel replicas of a pipeline: fit(..., workers=d, pipeline_stages=p, micro_batches=m).

d x p processes; replica r takes shard ``shard_bounds(n, r, d)`` of every global batch, its
stages accumulate the shard's m micro-batches in order, and each stage's gradient is then
allreduced over its d replicas in rank order. The single-process reference doing the same
float operations in the same order is ``loop.run(..., micro_batches=m, replicas=d)``
(``accumulate_micro_batches`` with replicas), so the parameters after 20 updates are compared
bit for bit; against plain full-batch training within rtol 1e-10 (float64). All grid runs share
one start of the 4 processes (tests/train/pipeline_cases.py).
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minscale as ms
from minscale.parallel import LocalComm, WorkerError
from minscale.train.loop import accumulate_micro_batches

pytestmark = pytest.mark.exactness

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
if "pipeline_cases" in sys.modules:
    cases = sys.modules["pipeline_cases"]
else:
    _spec = importlib.util.spec_from_file_location("pipeline_cases", TESTS / "pipeline_cases.py")
    cases = importlib.util.module_from_spec(_spec)
    sys.modules["pipeline_cases"] = cases  # spawned processes unpickle its functions by name
    _spec.loader.exec_module(cases)


@pytest.fixture
def numpy_kernels():
    previous = ms.kernels._forced
    ms.set_backend("numpy")
    yield
    ms.set_backend(previous)


# --- the reference ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows, replicas, micro_batches", [(7, 2, 3), (2, 2, 3), (5, 3, 1),
                                                           (1, 2, 2)])
def test_replica_micro_batch_gradients_add_up_to_the_batch_gradient(rows, replicas,
                                                                    micro_batches):
    # shards of shards, empty ones included (rows < replicas * micro_batches), each scaled
    # by the global row count: their sum is the batch gradient up to re-association
    model, X, y, _ = cases.build("regularized")
    X, y = X[:rows], y[:rows]
    model.compute_gradients(X, y, regularize=False)
    full = model.grads.copy()
    loss_full = ms.losses.mse(y, model.predict(X))
    loss = accumulate_micro_batches(model, X, y, rows, micro_batches, replicas)
    np.testing.assert_allclose(model.grads, full, rtol=1e-12, atol=1e-15)
    assert loss == pytest.approx(loss_full, rel=1e-12)
    # by hand for d = 2, m = 1: the two shard gradients added in replica order
    if replicas == 2 and rows >= 2:
        half = (rows + 1) // 2
        model.compute_gradients(X[:half], y[:half], n_total=rows, regularize=False)
        expected = model.grads.copy()
        model.compute_gradients(X[half:], y[half:], n_total=rows, regularize=False)
        expected += model.grads
        accumulate_micro_batches(model, X, y, rows, 1, 2)
        assert np.array_equal(model.grads, expected)


# --- shared memory: a 2 x 2 grid ----------------------------------------------------------------

GRID_RUNS = ([("plain", m, kind, "numpy") for m in (1, 3) for kind in ("gpipe", "1f1b")]
             + [("regularized", 3, "1f1b", "numpy"), ("momentum", 2, "gpipe", "numpy"),
                ("pruned", 3, "gpipe", "numpy"), ("float32", 3, "1f1b", "numpy")])


def test_two_replicas_of_two_stages_equal_the_reference_bit_for_bit():
    got = cases.run_grid_cases(2, 2, GRID_RUNS)
    fulls = {}
    for (name, m, kind, backend), params in zip(GRID_RUNS, got):
        reference = cases.replica_reference(name, m, 2, backend)
        assert np.array_equal(params, reference.params), (name, m, kind)
        if name not in fulls:
            fulls[name] = cases.reference(name, 1, backend).params  # plain full-batch
        if name == "float32":
            np.testing.assert_allclose(params, fulls[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(params, fulls[name], rtol=1e-10, atol=1e-13,
                                       err_msg=str((name, m, kind)))
        if name == "pruned":
            assert not params[~reference.mask].any()
            assert reference.sparsity()["total"] == pytest.approx(0.9, abs=0.01)
        # the two replicas did not train alike by accident: a one-replica pipeline differs
        if name == "plain" and m == 3:
            assert not np.array_equal(params, cases.reference(name, 3, backend).params)


def test_fit_with_workers_and_pipeline_stages_installs_the_reference_run(numpy_kernels):
    model, X, y, kwargs = cases.build("plain")
    history = model.fit(X, y, workers=2, pipeline_stages=2, micro_batches=3, schedule="1f1b",
                        validation_data=(X[:5], y[:5]), **kwargs)
    reference = cases.replica_reference("plain", 3, 2)
    ref_history = ms.train.loop.run(*cases.build("plain")[:3], validation_data=(X[:5], y[:5]),
                                    verbose=0, callbacks=[], pruning=None,
                                    pruning_method="magnitude", micro_batches=3, replicas=2,
                                    **kwargs)
    assert np.array_equal(model.params, reference.params)
    assert model.optimizer.iterations == reference.optimizer.iterations == 20
    for name, buf in reference.optimizer.state_arrays().items():
        assert np.array_equal(model.optimizer.state_arrays()[name], buf), name
    assert history.history["loss"] == ref_history.history["loss"]
    assert history.history["val_loss"] == ref_history.history["val_loss"]


def test_failing_process_of_the_grid_stops_all_naming_stage_and_replica(created_segments,
                                                                         numpy_kernels):
    model, X, y, kwargs = cases.build("plain")
    # world rank 3: stage 1 of replica 1
    kwargs.update(epochs=100_000, pruning=cases.FailingSchedule("kill", step=3, rank=3))
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        model.fit(X, y, workers=2, pipeline_stages=2, micro_batches=2, **kwargs)
    assert time.monotonic() - start < 30
    assert info.value.rank == 3 and info.value.exitcode == -signal.SIGKILL
    assert "pipeline stage 1 of 2 (layers 2..3) of replica 1 of 2 failed" in str(info.value)
    assert len(created_segments) >= 11  # X, y, 2 x 2 mailboxes of 2 arrays, the workspace
    assert not any(Path("/dev/shm", name.lstrip("/")).exists() for name in created_segments)


@pytest.mark.parametrize("extra, words", [
    (dict(pipeline_stages=2, workers=2, mode="async"), "mode='sync'"),
    (dict(micro_batches=2, workers=2), "only in pipeline training"),
    (dict(pipeline_stages=2, workers=2, quantization="int8"), "quantization"),
    (dict(pipeline_stages=2, comm=LocalComm()), "must divide the communicator's size 1"),
])
def test_refused_combinations_name_the_reason(extra, words):
    model, X, y, kwargs = cases.build("plain")
    before = model.params.copy()
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        model.fit(X, y, **extra, **kwargs)
    assert np.array_equal(model.params, before)


# --- MPI ---------------------------------------------------------------------------------------

@pytest.mark.mpi
def test_mpi_two_replicas_of_two_stages_equal_the_reference_bit_for_bit(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minscale[mpi]')")
    candidate = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found next to the interpreter or on PATH (pip install mpich)")
    runs = [("plain", 1, "gpipe"), ("plain", 3, "1f1b"), ("regularized", 2, "gpipe")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([mpiexec, "-n", "4", sys.executable, str(TESTS / "pipeline_cases.py"),
                           str(tmp_path), *[f"{n}:{m}:{k}:numpy:2" for n, m, k in runs]],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for name, m, kind in runs:
        got = np.load(tmp_path / f"{name}_{m}_{kind}_numpy_2.npy")
        assert np.array_equal(got, cases.replica_reference(name, m, 2).params), (name, m, kind)
