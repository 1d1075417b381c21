"""Tensor parallelism (fit(..., tensor_parallel=k)): the Megatron split by hand, equality with
the single-process reference bit for bit and with plain training within rtol 1e-12, over
shared memory and under mpiexec, failures, bad input.

The reference (tests/train/tensor_case.py) runs the k ranks as threads of one process with a
rank-order allreduce: the same float operations in the same order as the k processes.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensor_case import (
    OPTIONS,
    FailOnRank,
    PoisonedSGD,
    PoisonOnRank,
    make_case,
    reference,
    run_ranks,
)

import minscale as ms
from minscale.parallel import WorkerError
from minscale.parallel.tensor import (
    ColumnParallelDense,
    RowParallelDense,
    SubgroupComm,
    check_tensor_parallel,
    grid_groups,
    shard_model,
    tensor_roles,
)
from minscale.prune import PolynomialDecaySparsity
from minscale.train.tensor import check_fit_arguments

pytestmark = pytest.mark.exactness

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent


def _segments():
    return sorted(p.name for p in Path("/dev/shm").glob(f"minscale_{os.getpid()}_*"))


def _plain(model, X, y, **options):
    plain = model.copy()  # same parameters, mask and (fresh) optimizer
    history = plain.fit(X, y, **dict(OPTIONS, **options))
    return plain, history


def _assert_same_training(report, model, history):
    np.testing.assert_array_equal(model.params, report["params"])
    np.testing.assert_array_equal(model.mask, report["mask"])
    assert history.history["loss"] == report["history"].history["loss"]
    assert model.optimizer.iterations == report["iterations"] == 20
    for name, arr in report["arrays"].items():
        np.testing.assert_array_equal(model.optimizer.state_arrays()[name], arr)


# ---------------------------------------------------------------------------------------------
# the split
# ---------------------------------------------------------------------------------------------

def test_roles_pair_layers_and_replicate_an_odd_last():
    assert tensor_roles(1) == ("replicated",)
    assert tensor_roles(2) == ("column", "row")
    assert tensor_roles(5) == ("column", "row", "column", "row", "replicated")


class _NoComm:
    """A rank of a group that shard_model may not call (building a shard is local)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("k", [2, 3])
def test_shards_tile_the_model_once_and_replicate_the_rest(k):
    model, _, _ = make_case(sparsity=0)
    P = model.params.size
    shards = [shard_model(model, _NoComm(r, k)) for r in range(k)]
    owned = np.concatenate([s.full_index[s.owned] for s in shards])
    np.testing.assert_array_equal(np.sort(owned), np.arange(P))  # every entry exactly once
    for s in shards:
        assert np.all(np.diff(s.full_index) > 0)
        np.testing.assert_array_equal(s.params, model.params[s.full_index])
    # uneven: 7 units over 3 ranks are 3, 2, 2 (shard_bounds)
    widths = [s.layers[0].units for s in shards]
    assert widths == {2: [4, 3], 3: [3, 2, 2]}[k]
    assert all(isinstance(s.layers[0], ColumnParallelDense) for s in shards)
    assert all(isinstance(s.layers[1], RowParallelDense) for s in shards)
    # the replicated last layer (4*2 + 2) and the row layers' biases (5 + 4) on every rank
    replicated = [s.full_index[~s.owned].size for s in shards]
    assert replicated == [0] + [10 + 9] * (k - 1)


def test_two_rank_forward_by_hand():
    # x = [1, 2]; W1 = [[1, 2, 3], [4, 5, 6]], b1 = 1: h = [10, 13, 16]
    # W2 = [1, 2, 3]^T, b2 = 10: y = 10 + 26 + 48 + 10 = 94
    # rank 0 holds units 0, 1 (partial 10 + 26 = 36), rank 1 unit 2 (partial 48): 36 + 48 + 10
    model = ms.Sequential([ms.Dense(3), ms.Dense(1)], input_dim=2)
    model.set_weights([np.array([[1.0, 2, 3], [4, 5, 6]]), np.ones(3),
                       np.array([[1.0], [2], [3]]), np.array([10.0])])
    def rank_main(comm):
        shard = shard_model(model, comm)
        h = shard.layers[0].forward(np.array([[1.0, 2.0]]))
        return (h @ shard.layers[1].W).item(), shard.forward(np.array([[1.0, 2.0]])).item()

    (partial0, out0), (partial1, out1) = run_ranks(2, rank_main)
    assert (partial0, partial1) == (36.0, 48.0)
    assert out0 == out1 == 94.0


# ---------------------------------------------------------------------------------------------
# equivalence
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3])
def test_shared_memory_equals_the_reference_bit_for_bit_and_plain_within_1e_12(k, backend):
    model, X, y = make_case()
    report = reference(model, X, y, k)
    plain, plain_history = _plain(model, X, y)
    pruned = ~model.mask
    history = model.fit(X, y, tensor_parallel=k, **OPTIONS)
    _assert_same_training(report, model, history)
    np.testing.assert_allclose(model.params, plain.params, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(history.history["loss"], plain_history.history["loss"],
                               rtol=1e-12)
    assert np.all(model.params[pruned] == 0) and not model.mask[pruned].any()
    assert _segments() == []


OPTIMIZERS = {
    "sgd": lambda: ms.optim.SGD(0.05),
    "momentum": lambda: ms.optim.SGD(0.05, momentum=0.9),
    "nesterov": lambda: ms.optim.SGD(0.05, momentum=0.9, nesterov=True),
    "adam-coupled-decay": lambda: ms.optim.Adam(0.01, weight_decay=1e-2, decay_bias=False),
    "adamw": lambda: ms.optim.AdamW(0.01, weight_decay=1e-2),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("k", [2, 3])
def test_every_optimizer_matches_plain_training_within_1e_12(name, k):
    model, X, y = make_case(optimizer=OPTIMIZERS[name]())
    report = reference(model, X, y, k, chunk=7)  # the gather in chunks, as shared memory does
    plain, history = _plain(model, X, y)
    np.testing.assert_allclose(report["params"], plain.params, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(report["history"].history["loss"], history.history["loss"],
                               rtol=1e-12)
    for buf, arr in plain.optimizer.state_arrays().items():
        np.testing.assert_allclose(report["arrays"][buf], arr, rtol=1e-12, atol=1e-15)


def test_float32_stays_float32_and_matches_plain_training():
    model, X, y = make_case(dtype="float32")
    report = reference(model, X, y, 2)
    plain, _ = _plain(model, X, y)
    assert report["params"].dtype == np.float32
    np.testing.assert_allclose(report["params"], plain.params, rtol=1e-5, atol=1e-6)


def test_gradual_pruning_prunes_the_whole_model_and_matches_plain_training():
    schedule = PolynomialDecaySparsity(0.0, 0.8, begin_step=0, end_step=15, frequency=5)
    model, X, y = make_case(sparsity=0)
    report = reference(model, X, y, 2, pruning=schedule)
    plain, history = _plain(model, X, y, pruning=schedule)
    assert report["history"].history["sparsity"] == history.history["sparsity"]
    np.testing.assert_array_equal(report["mask"], plain.mask)
    np.testing.assert_allclose(report["params"], plain.params, rtol=1e-12, atol=1e-15)


QAT_SPECS = {
    "affine-per-tensor": dict(weights=ms.quant.WeightSpec(8, per_channel=False)),
    "affine-per-channel": dict(weights=ms.quant.WeightSpec(8, per_channel=True)),
    "fixed-auto-weights-only": dict(weights=ms.quant.WeightSpec(8, "fixed"), activations=None),
    "fixed-q5": dict(weights=ms.quant.WeightSpec(8, "fixed", frac_bits=5)),
}


def _qat_case(name):
    model, X, y = make_case()
    ms.quant.prepare_qat(model, QAT_SPECS[name])
    return model, X, y


def _plain_qat(model, X, y, name):
    plain = model.copy()
    ms.quant.prepare_qat(plain, QAT_SPECS[name])
    return plain, plain.fit(X, y, quantization=QAT_SPECS[name], **OPTIONS)


@pytest.mark.parametrize("name", sorted(QAT_SPECS))
@pytest.mark.parametrize("k", [2, 3])
def test_qat_uses_the_whole_kernels_range_and_matches_plain_qat_within_1e_12(name, k):
    # a shard's own range would give other scales: the per-tensor and the row-split
    # per-channel ranges must be the whole kernel's
    model, X, y = _qat_case(name)
    report = reference(model, X, y, k)
    plain, history = _plain_qat(model, X, y, name)
    np.testing.assert_allclose(report["params"], plain.params, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(report["history"].history["loss"], history.history["loss"],
                               rtol=1e-12)
    for ours, theirs in zip(report["output_quantizers"], plain.layers):
        if ours is not None:
            obs = theirs.output_quantizer.observer
            np.testing.assert_allclose([ours.observer.min_val, ours.observer.max_val],
                                       [obs.min_val, obs.max_val], rtol=1e-12)


def test_qat_in_shared_memory_equals_the_reference_bit_for_bit():
    model, X, y = _qat_case("affine-per-tensor")
    report = reference(model, X, y, 2)
    plain, _ = _plain_qat(model, X, y, "affine-per-tensor")
    history = model.fit(X, y, tensor_parallel=2, quantization=QAT_SPECS["affine-per-tensor"],
                        **OPTIONS)
    _assert_same_training(report, model, history)
    np.testing.assert_allclose(model.params, plain.params, rtol=1e-12, atol=1e-15)
    # the caller's model holds the synchronized observers and converts like a plain one
    for layer, theirs in zip(model.layers, plain.layers):
        assert layer.output_quantizer.observer.max_val == pytest.approx(
            theirs.output_quantizer.observer.max_val, rel=1e-12)
    np.testing.assert_allclose(ms.quant.convert(model, X).predict(X),
                               ms.quant.convert(plain, X).predict(X), rtol=1e-9, atol=1e-9)


def test_validation_loss_is_the_whole_models():
    model, X, y = make_case()
    report = reference(model, X, y, 3, validation_data=(X[:9], y[:9]))
    _, history = _plain(model, X, y, validation_data=(X[:9], y[:9]))
    np.testing.assert_allclose(report["history"].history["val_loss"],
                               history.history["val_loss"], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# combined with data parallelism: workers=d x tensor_parallel=k
# ---------------------------------------------------------------------------------------------

def test_grid_groups_by_hand():
    assert grid_groups(2, 3) == ([[0, 1, 2], [3, 4, 5]], [[0, 3], [1, 4], [2, 5]])
    assert grid_groups(1, 2) == ([[0, 1]], [[0], [1]])


def test_subgroup_allreduce_and_broadcast_reduce_each_group_alone():
    # 4 ranks in groups {0, 2} and {1, 3}; rank r contributes r + 1 (group {1, 3}: 2 values)
    def rank_main(world):
        sub = SubgroupComm(world, [[0, 2], [1, 3]])
        buf = np.full(1 + world.rank % 2, world.rank + 1.0)
        sub.allreduce(buf)
        peak = np.array([-world.rank - 1.0])
        sub.allreduce(peak, op="max")
        seen = np.array([10.0 * world.rank])
        sub.broadcast(seen, root=1)
        return sub.rank, sub.size, buf.tolist(), peak.tolist(), seen.tolist()

    assert run_ranks(4, rank_main) == [
        (0, 2, [4.0], [-1.0], [20.0]), (0, 2, [6.0, 6.0], [-2.0], [30.0]),
        (1, 2, [4.0], [-1.0], [20.0]), (1, 2, [6.0, 6.0], [-2.0], [30.0])]
    with pytest.raises(ValueError, match="groups must partition the 4 world ranks"):
        SubgroupComm(_NoComm(0, 4), [[0, 1], [1, 2, 3]])


def test_three_replicas_of_two_ranks_match_plain_training_within_1e_12():
    # batch 8 over 3 replicas: shards of 3, 3 and 2 rows
    model, X, y = make_case()
    report = reference(model, X, y, 2, workers=3)
    plain, history = _plain(model, X, y)
    np.testing.assert_allclose(report["params"], plain.params, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(report["history"].history["loss"], history.history["loss"],
                               rtol=1e-12)


def test_two_replicas_of_two_ranks_in_shared_memory_equal_the_reference_bit_for_bit():
    model, X, y = make_case()
    report = reference(model, X, y, 2, workers=2)
    plain, _ = _plain(model, X, y)
    history = model.fit(X, y, tensor_parallel=2, workers=2, **OPTIONS)
    _assert_same_training(report, model, history)
    np.testing.assert_allclose(model.params, plain.params, rtol=1e-12, atol=1e-15)
    assert _segments() == []


# ---------------------------------------------------------------------------------------------
# failures and bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_rank_raising_stops_every_rank_names_it_and_leaves_no_segment():
    model, X, y = make_case()
    start = time.monotonic()
    with pytest.raises(ArithmeticError, match="rank 1 fails on purpose") as info:
        model.fit(X, y, tensor_parallel=2, callbacks=[FailOnRank(1, 3)], **OPTIONS)
    assert time.monotonic() - start < 30
    assert isinstance(info.value.__cause__, WorkerError) and info.value.__cause__.rank == 1
    assert _segments() == []


@pytest.mark.timeout(60)
def test_a_killed_rank_is_a_worker_error_naming_it_within_30s():
    model, X, y = make_case()
    start = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1") as info:
        model.fit(X, y, tensor_parallel=2, callbacks=[FailOnRank(1, 3, "kill")], **OPTIONS)
    assert time.monotonic() - start < 30
    assert info.value.rank == 1 and info.value.exitcode == -9
    assert _segments() == []


def test_an_update_overflowing_on_one_rank_stops_every_rank_with_the_divergence_error():
    # update 4 ends epoch 0 and leaves inf on rank 1 only: the epoch-end check must fire on
    # every rank (not leave rank 0 waiting in its validation pass's allreduce)
    model, X, y = make_case(optimizer=PoisonedSGD(0.01))
    start = time.monotonic()
    report = reference(model, X, y, 2, callbacks=[PoisonOnRank(1, 4)],
                       validation_data=(X[:5], y[:5]))
    assert time.monotonic() - start < 30
    assert isinstance(report["error"], ms.train.DivergenceError)
    assert "epoch 0, step 5" in str(report["error"])
    assert np.isfinite(report["params"]).all() and report["iterations"] == 5


@pytest.mark.parametrize("kwargs, words", [
    (dict(tensor_parallel=0), "tensor_parallel must be"),
    (dict(tensor_parallel=2.5), "tensor_parallel must be"),
    (dict(tensor_parallel=8), "tensor_parallel=8 is more than the 7 units of layer 0"),
    (dict(tensor_parallel=2, mode="async"), "tensor_parallel=2 does not work with mode='async'"),
    (dict(tensor_parallel=2, checkpoint="x.npz"), "does not work with checkpoint/resume"),
])
def test_bad_arguments_are_value_errors_naming_them_and_leave_the_model(kwargs, words):
    model, X, y = make_case()
    before = model.params.copy()
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        model.fit(X, y, epochs=1, **kwargs)
    np.testing.assert_array_equal(model.params, before)
    assert model.optimizer.iterations == 0


def test_pipeline_stages_and_a_single_layer_are_refused():
    with pytest.raises(ValueError, match="tensor_parallel=2 does not work with pipeline_stages=2"):
        check_fit_arguments(2, pipeline_stages=2)
    with pytest.raises(ValueError, match="tensor_parallel=2 does not work with micro_batches=4"):
        check_fit_arguments(2, micro_batches=4)
    assert check_fit_arguments(1, micro_batches=4) == 1
    one = ms.Sequential([ms.Dense(4)], input_dim=3)
    with pytest.raises(ValueError, match="tensor_parallel=2 splits pairs of Dense layers"):
        check_tensor_parallel(one, 2)
    assert check_tensor_parallel(one, 1) == 1


def _minscale(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "minscale", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


TRAIN = ["train", "--data", "diabetes", "--epochs", "2", "--quiet"]


@pytest.mark.parametrize("args, words", [
    (["--tensor-parallel", "0"], "--tensor-parallel must be an integer >= 1, got 0"),
    (["--tensor-parallel", "2", "--workers", "2", "--mode", "async"],
     "--tensor-parallel 2 does not combine with --mode async"),
    (["--tensor-parallel", "4", "--workers", "5"], "--workers 5 x --tensor-parallel 4 = 20"),
    (["--tensor-parallel", "2", "--hidden", ""], "splits pairs of Dense layers"),
    (["--tensor-parallel", "5", "--hidden", "4"], "is more than the 4 units of layer 0"),
])
def test_cli_bad_tensor_parallel_is_one_line_exit_2(args, words):
    proc = _minscale(*TRAIN, *args)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


@pytest.mark.slow
def test_cli_tensor_parallel_prints_the_single_process_losses():
    single, split = _minscale(*TRAIN), _minscale(*TRAIN, "--tensor-parallel", "2")
    assert split.returncode == 0, split.stderr
    assert split.stdout == single.stdout


# ---------------------------------------------------------------------------------------------
# MPI
# ---------------------------------------------------------------------------------------------

def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minscale[mpi]')")
    candidate = Path(sys.executable).parent / "mpiexec"
    if not candidate.exists():
        pytest.skip("mpiexec not found next to the interpreter")
    return str(candidate)


#: MPICH's ring Iallreduce adds 3 ranks' buffers in another order than rank order (its
#: default for 3 ranks happens not to): under it, an activation sum left to MPI would miss
#: the reference's bits, so the test can tell (other MPI libraries ignore the variable).
RING = {"MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM": "tsp_ring"}


def _run_mpi(n, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **RING)
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(TESTS / "mpi_tensor.py"),
                           *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def _same_bits(a, b):
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()  # signed zeros too


@pytest.mark.mpi
@pytest.mark.parametrize("n, k", [(2, 2), (3, 3), (4, 2)])
def test_mpi_equals_the_reference_bit_for_bit_on_every_rank(n, k, tmp_path):
    # the activation and gradient sums go through MPIComm.allreduce_in_rank_order (the
    # reference's order), the d x k grid's through SubgroupComm over it
    proc = _run_mpi(n, tmp_path, k)
    assert proc.returncode == 0, proc.stderr
    for sparsity in (0.9, 0.0):  # dense: sums of 3 nonzero partials, order-sensitive
        model, X, y = make_case(sparsity=sparsity)
        report = reference(model, X, y, k, workers=n // k)
        plain, _ = _plain(model, X, y)
        results = [np.load(tmp_path / f"rank{r}_sparsity{sparsity:g}.npz") for r in range(n)]
        for res in results:
            _same_bits(res["params"], report["params"])
            _same_bits(res["loss"], np.array(report["history"].history["loss"]))
            # the rank's own shard, replicated layers included, as the reference's whole model
            _same_bits(res["shard_params"], report["params"][res["shard_index"]])
        np.testing.assert_allclose(results[0]["params"], plain.params, rtol=1e-12, atol=1e-15)


@pytest.mark.mpi
def test_mpi_rank_failing_aborts_the_job_nonzero(tmp_path):
    start = time.monotonic()
    proc = _run_mpi(2, tmp_path, 2, "fail")
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert time.monotonic() - start < 60
