"""Pipeline training (fit(..., pipeline_stages=p, micro_batches=m, schedule=...)).

Exactness: a stage runs on its layers the float operations of the single-process run that
accumulates the same micro-batches in the same order (fit(micro_batches=m)), so the
parameters after 20 updates are compared bit for bit; against plain full-batch training, whose
gradient sums the rows in another association, within rtol 1e-12 (float64). The many
(case, m, schedule, backend) runs of one pipeline size share one start of the stage processes
(tests/train/pipeline_cases.py), so the module stays within seconds per process start.
"""
import importlib.util
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minscale as ms
from minscale.parallel import WorkerError
from minscale.train.loop import accumulate_micro_batches
from minscale.train.pipeline import stage_bounds

pytestmark = pytest.mark.exactness

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("pipeline_cases", TESTS / "pipeline_cases.py")
cases = importlib.util.module_from_spec(_spec)
sys.modules["pipeline_cases"] = cases  # spawned stages unpickle its functions by this name
_spec.loader.exec_module(cases)

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])


@pytest.fixture
def numpy_kernels():
    """The numpy backend for tests of the machinery: stage processes then skip Numba's compile."""
    previous = ms.kernels._forced
    ms.set_backend("numpy")
    yield
    ms.set_backend(previous)


def _exists(name):
    return Path("/dev/shm", name.lstrip("/")).exists()


# --- the stage split -------------------------------------------------------------------------

def _model(units, input_dim=3):
    return ms.Sequential([ms.Dense(u) for u in units], input_dim=input_dim)


def test_balanced_split_of_the_case_model_by_hand():
    # parameters per layer: 3*6+6 = 24, 6*5+5 = 35, 5*4+4 = 24, 4*2+2 = 10
    model, _, _, _ = cases.build("plain")
    # p = 2: cuts after 1, 2, 3 layers give largest stages 69, 59, 83
    assert stage_bounds(model, 2) == [(0, 2), (2, 4)]
    # p = 3: [24][35][34] has largest 35; every other split has 59 or more
    assert stage_bounds(model, 3) == [(0, 1), (1, 2), (2, 4)]
    assert stage_bounds(model, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert stage_bounds(model, 2, [0, 1, 4]) == [(0, 1), (1, 4)]


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(1, 6))
def test_balanced_split_minimizes_the_largest_stage(units, stages):
    model = _model(units)
    if stages > len(units):
        with pytest.raises(ValueError, match="pipeline_stages"):
            stage_bounds(model, stages)
        return
    counts = [b - a for a, b in model.layer_slices()]
    got = stage_bounds(model, stages)
    assert got[0][0] == 0 and got[-1][1] == len(units)
    assert all(b > a for a, b in got) and all(got[k][1] == got[k + 1][0] for k in range(stages - 1))
    largest = max(sum(counts[a:b]) for a, b in got)
    best = min(max(sum(counts[a:b]) for a, b in zip((0, *cuts), (*cuts, len(units))))
               for cuts in itertools.combinations(range(1, len(units)), stages - 1))
    assert largest == best


@pytest.mark.parametrize("bounds", [[0, 2], [0, 2, 2, 4], [1, 2, 4], [0, 3, 2], [0, 2, 5],
                                    "abc", [0, 1.5, 4]])
def test_bad_stage_bounds_are_refused_naming_the_argument(bounds):
    model, X, y, kwargs = cases.build("plain")
    with pytest.raises(ValueError, match="stage_bounds"):
        model.fit(X, y, pipeline_stages=2, stage_bounds=bounds, **kwargs)


# --- the single-process reference --------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rows", [7, 2])
def test_micro_batch_gradients_add_up_to_the_batch_gradient(backend, reduction, rows):
    model, X, y, _ = cases.build("plain")
    model.compile(reduction=reduction)
    Xb, yb = X[:rows], y[:rows]
    full_loss = model.compute_gradients(Xb, yb, regularize=False)
    full = model.grads.copy()
    for m in range(1, 9):  # m > rows: empty micro-batches
        loss = accumulate_micro_batches(model, Xb, yb, rows, m)
        np.testing.assert_allclose(model.grads, full, rtol=1e-12, atol=1e-15)
        assert loss == pytest.approx(full_loss, rel=1e-13)


# --- pipeline == micro-batch reference, bit for bit; == full batch within rtol 1e-12 ---------

def _runs(stages):
    ms_all = range(1, 9)
    runs = [("plain", m, kind, b) for m in ms_all for kind in ("gpipe", "1f1b") for b in BACKENDS]
    other = [1, stages - 1, 3] if stages > 2 else [1, 3, 8]  # m < p on p = 3
    for name in ("pruned", "qat", "regularized", "momentum", "float32"):
        for m, kind in zip(other, ("1f1b", "gpipe", "1f1b")):
            runs += [(name, m, kind, b) for b in BACKENDS]
    return runs


@pytest.mark.parametrize("stages", [2, 3])
def test_pipeline_equals_the_micro_batch_reference_bit_for_bit(stages):
    runs = _runs(stages)
    got = cases.run_stage_cases(stages, runs)
    fulls = {}
    for (name, m, kind, backend), params in zip(runs, got):
        reference = cases.reference(name, m, backend)
        assert np.array_equal(params, reference.params), (name, m, kind, backend)
        if (name, backend) not in fulls:
            fulls[name, backend] = cases.reference(name, 1, backend).params
        if name == "float32":
            np.testing.assert_allclose(params, fulls[name, backend], rtol=1e-5, atol=1e-6,
                                       err_msg=str((name, m, kind, backend)))
        elif name != "qat" or m == 1:
            # QAT observers update once per micro-batch: full-batch equality needs m = 1
            np.testing.assert_allclose(params, fulls[name, backend], rtol=1e-12, atol=1e-15,
                                       err_msg=str((name, m, kind, backend)))
        if name == "pruned":
            mask = reference.mask
            assert not params[~mask].any()  # pruned weights stay exactly 0
            assert reference.sparsity()["total"] == pytest.approx(0.9, abs=0.01)


def test_fit_pipeline_installs_everything_a_single_process_run_has(tmp_path, numpy_kernels):
    # public API: QAT ranges, optimizer state, history with validation, and a checkpoint
    model, X, y, kwargs = cases.build("qat")
    reference, _, _, _ = cases.build("qat")
    val = (X[:5], y[:5])
    reference.fit(X, y, micro_batches=4, validation_data=val, **kwargs)
    path = tmp_path / "pipe.msc"
    history = model.fit(X, y, pipeline_stages=3, micro_batches=4, schedule="1f1b",
                        validation_data=val, checkpoint=path, **kwargs)
    assert np.array_equal(model.params, reference.params)
    assert history.history == reference.history.history
    assert model.optimizer.iterations == reference.optimizer.iterations == 20
    for name, buf in reference.optimizer.state_arrays().items():
        assert np.array_equal(model.optimizer.state_arrays()[name], buf)
    for layer, ref_layer in zip(model.layers, reference.layers):
        obs, ref_obs = layer.output_quantizer.observer, ref_layer.output_quantizer.observer
        assert (obs.min_val, obs.max_val) == (ref_obs.min_val, ref_obs.max_val)
    assert np.array_equal(model.predict(X), reference.predict(X))
    saved = ms.load(path)
    assert np.array_equal(saved.params, model.params)


def test_pipeline_resumes_a_checkpoint_and_ends_as_the_uninterrupted_run(tmp_path, numpy_kernels):
    model, X, y, kwargs = cases.build("pruned")
    uninterrupted, _, _, _ = cases.build("pruned")
    uninterrupted.fit(X, y, micro_batches=3, **kwargs)
    path = tmp_path / "ckpt.msc"
    first = dict(kwargs, epochs=2)
    # 8 updates by a pipeline, checkpoints after 3, 6 and 8
    model.fit(X, y, pipeline_stages=2, micro_batches=3, checkpoint=path, checkpoint_every=3,
              **first)
    resumed, _, _, _ = cases.build("pruned")
    resumed.fit(X, y, pipeline_stages=2, micro_batches=3, schedule="1f1b", resume=path,
                **kwargs)
    assert np.array_equal(resumed.params, uninterrupted.params)
    assert np.array_equal(resumed.mask, uninterrupted.mask)
    assert resumed.history.history["loss"] == uninterrupted.history.history["loss"]


# --- failures --------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["kill", "raise"])
def test_failing_stage_stops_the_pipeline_within_30s_naming_it(how, created_segments,
                                                                numpy_kernels):
    model, X, y, kwargs = cases.build("plain")
    kwargs.update(epochs=100_000, pruning=cases.FailingSchedule(how, step=3, rank=1))
    start = time.monotonic()
    with pytest.raises((WorkerError, RuntimeError)) as info:
        model.fit(X, y, pipeline_stages=2, micro_batches=3, **kwargs)
    assert time.monotonic() - start < 30
    if how == "kill":
        assert isinstance(info.value, WorkerError)
        assert info.value.rank == 1 and info.value.exitcode == -signal.SIGKILL
        assert "pipeline stage 1 of 2 (layers 2..3)" in str(info.value)
    else:
        assert "failed on purpose" in str(info.value)
        assert any("pipeline stage 1 of 2 (layers 2..3)" in note
                   for note in getattr(info.value, "__notes__", []))
    assert len(created_segments) >= 5  # X, y, 2 mailboxes of 2 arrays, the workspace
    assert not any(_exists(name) for name in created_segments)


def test_diverging_pipeline_raises_and_keeps_the_last_finite_parameters(numpy_kernels):
    model, X, y, kwargs = cases.build("plain")
    reference, _, _, _ = cases.build("plain")
    for m in (model, reference):
        m.compile(optimizer=ms.optim.SGD(50.0))
    with pytest.raises(ms.train.DivergenceError) as expected:
        reference.fit(X, y, micro_batches=2, **kwargs)
    with pytest.raises(ms.train.DivergenceError) as info:
        model.fit(X, y, pipeline_stages=2, micro_batches=2, schedule="1f1b", **kwargs)
    assert str(info.value) == str(expected.value)
    assert np.isfinite(model.params).all()
    assert np.array_equal(model.params, reference.params)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, name", [
    (dict(pipeline_stages=5), "pipeline_stages"),
    (dict(pipeline_stages=0), "pipeline_stages"),
    (dict(pipeline_stages=2, micro_batches=0), "micro_batches"),
    (dict(micro_batches=1.5), "micro_batches"),
    (dict(pipeline_stages=2, mode="async"), "mode='sync'"),
    (dict(micro_batches=2, workers=2), "workers=2"),
    (dict(pipeline_stages=2, workers=2, mode="async"), "mode='sync'"),
    (dict(pipeline_stages=2, schedule="zigzag"), "schedule"),
    (dict(stage_bounds=[0, 2, 4]), "stage_bounds"),
    (dict(pipeline_stages=2, callbacks=[ms.train.Callback()]), "callbacks"),
])
def test_bad_pipeline_arguments_raise_naming_them(extra, name):
    model, X, y, kwargs = cases.build("plain")
    before = model.params.copy()
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        model.fit(X, y, **extra, **kwargs)
    assert np.array_equal(model.params, before)


# --- MPI ---------------------------------------------------------------------------------------

def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minscale[mpi]')")
    candidate = Path(sys.executable).parent / "mpiexec"
    found = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpiexec not found next to the interpreter or on PATH (pip install mpich)")
    return found


def _run_mpi(n, out_dir, specs, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(TESTS / "pipeline_cases.py"),
                           str(out_dir), *specs], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_mpi_pipeline_equals_the_micro_batch_reference_bit_for_bit(n, tmp_path):
    runs = [("plain", m, kind, b) for m, kind in ((1, "gpipe"), (2, "1f1b"), (5, "gpipe"),
                                                   (8, "1f1b")) for b in BACKENDS]
    runs += [("pruned", 3, "1f1b", "numpy"), ("qat", n - 1, "gpipe", "numpy"),
             ("regularized", 4, "1f1b", "numpy"), ("float32", 3, "gpipe", "numpy")]
    proc = _run_mpi(n, tmp_path, [":".join(map(str, r)) for r in runs])
    assert proc.returncode == 0, proc.stderr
    for name, m, kind, backend in runs:
        got = np.load(tmp_path / f"{name}_{m}_{kind}_{backend}.npy")
        assert np.array_equal(got, cases.reference(name, m, backend).params), (name, m, kind)


@pytest.mark.mpi
def test_mpi_stage_raising_aborts_the_job_nonzero_naming_the_stage(tmp_path):
    start = time.monotonic()
    proc = _run_mpi(2, tmp_path, ["fail:2:1f1b:numpy"], timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    assert "failed on purpose" in proc.stderr
    assert "pipeline stage 1 of 2" in proc.stderr
