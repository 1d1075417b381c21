"""Checkpoints and exact resume, and divergence handling, of minscale.train.fit.

The central property: a run interrupted at any point and resumed from its last checkpoint
ends bit-identical (parameters, masks, optimizer state, history) to an uninterrupted run.

"Uninterrupted run" means the same fit call, checkpointing included: checkpointing keeps a
run on the general loop of minscale.train, while an otherwise equal run may take the
compiled fast path (minscale.kernels._fastfit, numba backend), which sums in another order
and agrees only to rounding; test_checkpointing_does_not_change_the_numbers pins both facts.
"""
import math
import os

import numpy as np
import pytest

import minscale as ms
from minscale import io as msio
from minscale import prune
from minscale.io import ModelFileError
from minscale.optim import SGD, Adam
from minscale.schedules import InverseTimeDecay
from minscale.train import Callback, DivergenceError

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

N, BATCH, EPOCHS = 23, 4, 3          # ceil(23 / 4) = 6 batches per epoch, 18 updates in all
STEPS = EPOCHS * math.ceil(N / BATCH)


def data(dtype="float64"):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N, 3)).astype(dtype)
    y = (np.sin(X @ rng.normal(size=(3, 2)))).astype(dtype)
    return X, y


OPTIMIZERS = {
    "sgd_momentum": lambda: SGD(InverseTimeDecay(0.1, decay_rate=0.05), momentum=0.9),
    "nesterov": lambda: SGD(0.05, momentum=0.8, nesterov=True),
    "adam": lambda: Adam(InverseTimeDecay(0.02, decay_rate=0.2, decay_steps=5)),
}


def make(optimizer="adam", dtype="float64", metrics=None):
    model = ms.Sequential([ms.Dense(6, activation="tanh"), ms.Dense(2)], input_dim=3, seed=2,
                          dtype=dtype)
    return model.compile(optimizer=OPTIMIZERS[optimizer](), metrics=metrics)


class Interrupt(Exception):
    pass


class InterruptAt(Callback):
    """Stops the run before the forward pass of update `step`, like a kill would."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, model, step):
        if step == self.step:
            raise Interrupt


def assert_identical(a, b, ha, hb):
    assert a.params.tobytes() == b.params.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert a.optimizer.iterations == b.optimizer.iterations
    sa, sb = a.optimizer.state_arrays(), b.optimizer.state_arrays()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].tobytes() == sb[key].tobytes()
    assert ha.history == hb.history
    assert ha.epoch == hb.epoch


class NoOp(Callback):
    """Any callback keeps fit on the general loop (the fast path takes none)."""


def reference(optimizer="adam", dtype="float64", **fit_kwargs):
    """The uninterrupted run on the general loop."""
    X, y = data(dtype)
    model = make(optimizer, dtype, fit_kwargs.pop("metrics", None))
    history = model.fit(X, y, epochs=fit_kwargs.pop("epochs", EPOCHS), batch_size=BATCH,
                        seed=5, callbacks=[NoOp()], **fit_kwargs)
    return model, history


def interrupted_and_resumed(tmp_path, stop_at, optimizer="adam", dtype="float64", every=2,
                            **fit_kwargs):
    X, y = data(dtype)
    path = tmp_path / "ck.npz"
    if path.exists():
        path.unlink()
    first = make(optimizer, dtype, fit_kwargs.pop("metrics", None))
    with pytest.raises(Interrupt):
        first.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, checkpoint=path,
                  checkpoint_every=every, callbacks=[InterruptAt(stop_at)], **fit_kwargs)
    second = make(optimizer, dtype, first.metrics)
    history = second.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, checkpoint=path,
                         checkpoint_every=every, resume=path, **fit_kwargs)
    return second, history


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_resume_from_every_checkpoint_is_bit_identical(tmp_path, optimizer):
    ref, ref_history = reference(optimizer)
    # every=2 writes after updates 2, 4, ..., 18; stopping before update k >= 2 resumes from
    # update 2 * floor(k / 2): mid-epoch (k = 2, 4, 8, ...) and at epoch ends (k = 6, 12)
    for stop_at in range(2, STEPS):
        model, history = interrupted_and_resumed(tmp_path, stop_at, optimizer)
        assert_identical(model, ref, history, ref_history)


def test_checkpointing_does_not_change_the_numbers(tmp_path):
    # checkpointing is bit-identical to the general loop without it ...
    X, y = data()
    ref, ref_history = reference("adam")
    checkpointed = make("adam")
    history = checkpointed.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5,
                               checkpoint=tmp_path / "ck.npz", checkpoint_every=3)
    assert_identical(checkpointed, ref, history, ref_history)
    # ... and agrees to rounding with a plain fit, which may take the compiled fast path
    plain = make("adam")
    plain_history = plain.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5)
    np.testing.assert_allclose(plain.params, ref.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(plain_history["loss"], ref_history["loss"], rtol=1e-12)
    assert plain_history["lr"] == ref_history["lr"]


@pytest.mark.parametrize("every", [1, 5, 7])
def test_resume_with_other_intervals_float32_and_validation(tmp_path, every):
    X, y = data("float32")
    Xv, yv = X[:5] + 0.5, y[:5]
    ref, ref_history = reference("sgd_momentum", "float32", validation_data=(Xv, yv))
    assert "val_loss" in ref_history.history
    for stop_at in (every, STEPS - 1):
        model, history = interrupted_and_resumed(tmp_path, stop_at, "sgd_momentum", "float32",
                                                 every=every, validation_data=(Xv, yv))
        assert model.params.dtype == np.float32
        assert_identical(model, ref, history, ref_history)


def test_resume_without_shuffling(tmp_path):
    ref, ref_history = reference("nesterov", shuffle=False)
    model, history = interrupted_and_resumed(tmp_path, 9, "nesterov", shuffle=False)
    assert_identical(model, ref, history, ref_history)


def test_resume_under_gradual_pruning_keeps_masks_and_backup(tmp_path):
    X, y = data()
    schedule = prune.PolynomialDecaySparsity(0.0, 0.6, begin_step=2, end_step=14, frequency=3)
    ref = make("adam")
    ref_history = ref.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, pruning=schedule)
    assert ref.sparsity()["total"] > 0.5
    for stop_at in (4, 7, 11, 15):
        model, history = interrupted_and_resumed(tmp_path, stop_at, "adam", every=3,
                                                 pruning=schedule)
        assert_identical(model, ref, history, ref_history)
        assert model.state["prune_backup"].tobytes() == ref.state["prune_backup"].tobytes()
        assert np.all(model.params[~model.mask] == 0.0)


def test_resume_of_quantization_aware_training_restores_observer_ranges(tmp_path):
    # the activation observers' moving averages are part of the state of a QAT run
    ref, ref_history = reference("adam", quantization="int8")
    for stop_at in (3, 8, 13):
        model, history = interrupted_and_resumed(tmp_path, stop_at, "adam", every=2,
                                                 quantization="int8")
        assert_identical(model, ref, history, ref_history)
        for a, b in zip(model.layers, ref.layers):
            assert a.output_quantizer.observer.max_val == b.output_quantizer.observer.max_val
    X, y = data()
    plain = make("adam")
    with pytest.raises(ValueError, match="trained with quantization"):
        plain.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, resume=tmp_path / "ck.npz")


def test_epoch_checkpoints_by_default_and_continuing_to_more_epochs(tmp_path):
    X, y = data()
    ref, ref_history = reference("sgd_momentum", epochs=5)
    path = tmp_path / "ck.npz"
    short = make("sgd_momentum")
    short.fit(X, y, epochs=2, batch_size=BATCH, seed=5, checkpoint=path)
    model, progress, _ = msio.read_checkpoint(path)
    assert (progress.epoch, progress.batch, progress.order) == (2, 0, None)
    longer = make("sgd_momentum")
    history = longer.fit(X, y, epochs=5, batch_size=BATCH, seed=5, resume=path)
    assert_identical(longer, ref, history, ref_history)
    # resuming a finished run to the same total does nothing and returns its history
    done = make("sgd_momentum")
    again = done.fit(X, y, epochs=2, batch_size=BATCH, seed=5, resume=path)
    assert again.history == model.history.history and done.params.tobytes() == \
        short.params.tobytes()


def test_checkpoint_contents_reference(tmp_path):
    # After update 3 of epoch 0 (batches 0..2 done) the file holds: next batch 3, the order
    # default_rng(5).permutation(23), the generator state right after drawing it, 3 rates.
    X, y = data()
    path = tmp_path / "ck.npz"
    model = make("sgd_momentum")
    with pytest.raises(Interrupt):
        model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, checkpoint=path,
                  checkpoint_every=3, callbacks=[InterruptAt(4)])
    ck_model, progress, opt_state = msio.read_checkpoint(path)
    rng = np.random.default_rng(5)
    order = rng.permutation(N)
    assert (progress.epoch, progress.batch) == (0, 3)
    assert np.array_equal(progress.order, order)
    assert progress.rng_state == rng.bit_generator.state
    assert opt_state["iterations"] == 3 and sorted(opt_state["arrays"]) == ["velocity"]
    # InverseTimeDecay(0.1, decay_rate=0.05): 0.1 / (1 + 0.05 t) for t = 0, 1, 2
    assert progress.history.history["lr"] == [0.1, 0.1 / 1.05, 0.1 / 1.1]
    assert progress.history.history["loss"] == []
    assert (progress.seed, progress.batch_size, progress.n_samples) == (5, BATCH, N)
    assert progress.data_sha256 == msio.data_digest(X, y)
    assert ms.load(path).history.history == progress.history.history
    # the parameters are those after 3 updates of an uninterrupted run
    ref = make("sgd_momentum")
    with pytest.raises(Interrupt):
        ref.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, callbacks=[InterruptAt(3)])
    assert ck_model.params.tobytes() == ref.params.tobytes()


@pytest.mark.parametrize("change, match", [
    (dict(batch_size=5), "batch_size is 5 but the checkpointed run used 4"),
    (dict(seed=6), "seed is 6 but the checkpointed run used 5"),
    (dict(shuffle=False), "shuffle is False"),
    (dict(rows=N - 1), "number of training rows is 22"),
    (dict(data_shift=1e-9), "training data .* differ"),
    (dict(epochs=0), "epochs is 0 but the checkpoint .*ck.npz' is already in epoch 1"),
    (dict(optimizer="nesterov"), "optimizer .* differs"),
    (dict(reduction="sum"), "reduction 'mean'"),
    (dict(units=7), "architecture"),
])
def test_resume_refuses_a_different_run(tmp_path, change, match):
    X, y = data()
    path = tmp_path / "ck.npz"
    make("sgd_momentum").fit(X, y, epochs=1, batch_size=BATCH, seed=5, checkpoint=path,
                             checkpoint_every=4)
    # the last write is the end-of-training one: epoch 1, batch 0
    model = make(change.get("optimizer", "sgd_momentum"))
    if "reduction" in change:
        model.compile(optimizer=OPTIMIZERS["sgd_momentum"](), reduction=change["reduction"])
    if "units" in change:
        model = ms.Sequential([ms.Dense(change["units"], activation="tanh"), ms.Dense(2)],
                              input_dim=3).compile(optimizer=OPTIMIZERS["sgd_momentum"]())
    rows = change.get("rows", N)
    Xr = X[:rows] + change.get("data_shift", 0.0)
    kwargs = dict(epochs=change.get("epochs", 2), batch_size=change.get("batch_size", BATCH),
                  seed=change.get("seed", 5), shuffle=change.get("shuffle", True))
    before = model.params.copy()
    with pytest.raises(ValueError, match=match):
        model.fit(Xr, y[:rows], resume=path, **kwargs)
    assert np.array_equal(model.params, before)  # refused before touching the model
    assert model.optimizer.iterations == 0


def test_resume_from_a_damaged_or_plain_file(tmp_path):
    X, y = data()
    path = tmp_path / "ck.npz"
    make().fit(X, y, epochs=1, batch_size=BATCH, seed=5, checkpoint=path)
    data_bytes = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data_bytes[:len(data_bytes) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        make().fit(X, y, epochs=2, batch_size=BATCH, seed=5, resume=tmp_path / "cut.npz")
    ms.save(make(), tmp_path / "plain.npz")
    with pytest.raises(ModelFileError, match="without a checkpoint section"):
        make().fit(X, y, epochs=2, batch_size=BATCH, seed=5, resume=tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        make().fit(X, y, epochs=2, batch_size=BATCH, seed=5, resume=tmp_path / "none.npz")


@pytest.mark.parametrize("kwargs, match", [
    (dict(checkpoint_every=3), "checkpoint_every needs a checkpoint path"),
    (dict(checkpoint="c.npz", checkpoint_every=0), "checkpoint_every must be an integer >= 1"),
    (dict(checkpoint="c.npz", checkpoint_every=2.0), "checkpoint_every must be an integer"),
    (dict(checkpoint=3), "checkpoint must be a file path"),
    (dict(resume=["c.npz"]), "resume must be a file path"),
    (dict(checkpoint="c.npz", workers=2), "not with workers=2"),
])
def test_bad_checkpoint_arguments(tmp_path, kwargs, match):
    X, y = data()
    with pytest.raises(ValueError, match=match):
        make().fit(X, y, epochs=1, batch_size=BATCH, **kwargs)
    assert not os.path.exists("c.npz")


class FakeComm:
    """A communicator of size 2 whose other rank mirrors this one (numbers don't matter)."""

    def __init__(self, rank):
        self.rank, self.size = rank, 2

    def allreduce(self, buf, op="sum"):
        buf *= 2
        return buf

    def broadcast(self, buf, root=0):
        return buf


@pytest.mark.parametrize("rank, writes", [(0, True), (1, False)])
def test_only_rank_0_writes_checkpoints(tmp_path, rank, writes):
    X, y = data()
    path = tmp_path / "ck.npz"
    make().fit(X, y, epochs=1, batch_size=BATCH, seed=5, comm=FakeComm(rank), checkpoint=path,
               checkpoint_every=2)
    assert path.exists() == writes


# ------------------------------------------------------------------------------------------
# divergence


def one_weight_model(w0, lr):
    model = ms.Sequential([ms.Dense(1, use_bias=False)], input_dim=1)
    model.params[...] = w0
    return model.compile(optimizer=SGD(lr))


def test_divergence_step_and_message_match_the_hand_worked_recurrence():
    # x = 10, y = 0, one weight w, mean MSE: L = (10 w)^2, dL/dw = 200 w, so SGD with lr = 1
    # gives w <- w - 200 w = -199 w, and L grows 199**2 = 39601-fold a step from L0 = 25.
    # The run stops at the first batch whose loss exceeds BLOWUP_FACTOR * L0 = 2.5e11: found
    # by running the recurrence in Python floats (step 3: L = 25 * 39601**3 = 1.55e15).
    w, step = 0.5, 0
    while (10 * w) * (10 * w) <= 1e10 * 25:
        w, step = w - 1.0 * (2 * 10 * (10 * w)), step + 1
    assert step == 3
    model = one_weight_model(0.5, 1.0)
    with pytest.raises(DivergenceError) as info:
        model.fit(np.array([[10.0]]), np.array([[0.0]]), epochs=500, batch_size=1, seed=0)
    err = info.value
    assert err.step == step and err.epoch == step and err.learning_rate == 1.0
    assert (f"epoch {step}, step {step}: loss 1.55e+15 is over 1e+10 times the first batch's "
            "(25) at learning rate 1;") in str(err)
    # the parameters are those the last update produced (only the loss blew up)
    assert model.params[0] == w and np.isfinite(model.params).all()


def test_divergence_with_non_finite_parameters_restores_the_last_finite_ones():
    # lr = 1e308: update 0 sends w to -inf; the loss of step 1 is inf and the parameters
    # before update 0 come back
    X, y = np.array([[10.0], [10.0]]), np.array([[0.0], [0.0]])
    model = one_weight_model(0.5, 1e308)
    with pytest.raises(DivergenceError, match=r"epoch 0, step 1: loss is (inf|nan) at "
                                              r"learning rate 1e\+308") as info:
        model.fit(X, y, epochs=3, batch_size=1, shuffle=False)
    assert info.value.step == 1 and model.params[0] == 0.5


def test_checkpoints_stay_finite_when_training_diverges(tmp_path):
    # rate 1e-3 for updates 0..2, then 1e308: update 3 makes w infinite. The check before the
    # checkpoint of update 3 stops the run (step 4), restores w after update 2, and the file
    # keeps the finite checkpoint of update 2.
    X, y = np.array([[10.0], [10.0]]), np.array([[0.0], [0.0]])
    model = one_weight_model(0.5, lambda t: 1e-3 if t < 3 else 1e308)
    path = tmp_path / "c.npz"
    with pytest.raises(DivergenceError, match=r"epoch 1, step 4: loss is nan at learning "
                                              r"rate 1e\+308") as info:
        model.fit(X, y, epochs=3, batch_size=1, shuffle=False, checkpoint=path,
                  checkpoint_every=1)
    assert info.value.step == 4
    # w <- w - 1e-3 * 200 w = 0.8 w, three times: 0.5 * 0.8**3 = 0.256 (to rounding)
    assert model.params[0] == pytest.approx(0.256, rel=1e-12)
    ck, progress, _ = msio.read_checkpoint(path)
    assert ck.optimizer is None  # a lambda schedule is not serializable
    assert (progress.epoch, progress.batch) == (1, 1)
    assert ck.params.tobytes() == model.params.tobytes()


def test_divergence_in_the_last_update_of_an_epoch_is_caught_at_epoch_end():
    # one batch per epoch and one epoch: the single update overflows, no later loss sees it
    model = one_weight_model(0.5, 1e308)
    with pytest.raises(DivergenceError, match=r"epoch 0, step 1: loss is nan") as info:
        model.fit(np.array([[10.0]]), np.array([[0.0]]), epochs=1, batch_size=1)
    assert info.value.epoch == 0 and model.params[0] == 0.5


def test_divergence_of_a_resumed_run_keeps_finite_parameters(tmp_path):
    X, y = np.array([[10.0]]), np.array([[0.0]])
    path = tmp_path / "c.npz"
    first = one_weight_model(0.5, 1.0)
    first.fit(X, y, epochs=3, batch_size=1, seed=0, checkpoint=path)
    second = one_weight_model(0.5, 1.0)
    with pytest.raises(DivergenceError) as info:
        second.fit(X, y, epochs=500, batch_size=1, seed=0, resume=path)
    assert info.value.step > 3 and np.isfinite(second.params).all()
