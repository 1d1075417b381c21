"""Regularization in every training path: general loop, compiled loop, workers, pruning, QAT,
checkpoints and the model file, with every form (L2, coupled SGD / Adam decay, AdamW)."""
import math

import numpy as np
import pytest

import minscale as ms
from minscale import prune
from minscale.optim import SGD, Adam, AdamW
from minscale.schedules import InverseTimeDecay
from minscale.train import Callback

pytestmark = pytest.mark.exactness

N, BATCH, EPOCHS = 23, 4, 3
STEPS = EPOCHS * math.ceil(N / BATCH)

#: form -> (kernel regularizer strength or None, optimizer factory)
FORMS = {
    "l2_momentum": (0.01, lambda: SGD(InverseTimeDecay(0.1, decay_rate=0.05), momentum=0.9)),
    "sgd_nesterov_wd": (None, lambda: SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    "sgd_wd_no_bias": (None, lambda: SGD(0.05, weight_decay=0.02, decay_bias=False)),
    "adam_wd": (None, lambda: Adam(InverseTimeDecay(0.02, decay_rate=0.2), weight_decay=0.01)),
    "adamw": (None, lambda: AdamW(InverseTimeDecay(0.02, decay_rate=0.2), weight_decay=0.1)),
    "adamw_no_bias_l2": (0.005, lambda: AdamW(0.01, weight_decay=0.05, decay_bias=False)),
}


def data(dtype="float64"):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(N, 3)).astype(dtype)
    y = (np.sin(X @ rng.normal(size=(3, 2)))).astype(dtype)
    return X, y


def make(form, dtype="float64"):
    l2, opt = FORMS[form]
    reg = None if l2 is None else ms.regularizers.L2(l2)
    model = ms.Sequential([ms.Dense(6, "tanh", kernel_regularizer=reg),
                           ms.Dense(2, kernel_regularizer=reg)], input_dim=3, seed=2, dtype=dtype)
    return model.compile(optimizer=opt())


class NoOp(Callback):
    """Any callback keeps fit on the general loop."""


class Interrupt(Exception):
    pass


class InterruptAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, model, step):
        if step == self.step:
            raise Interrupt


def assert_identical(a, b, ha, hb):
    assert a.params.tobytes() == b.params.tobytes()
    assert a.optimizer.iterations == b.optimizer.iterations
    sa, sb = a.optimizer.state_arrays(), b.optimizer.state_arrays()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].tobytes() == sb[key].tobytes()
    assert ha.history == hb.history


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_changes_the_result(form):
    # the decay is really applied: the same run without it ends elsewhere
    X, y = data()
    model = make(form)
    model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, callbacks=[NoOp()])
    plain = ms.Sequential([ms.Dense(6, "tanh"), ms.Dense(2)], input_dim=3, seed=2)
    plain.compile(optimizer=_without_decay(FORMS[form][1]()))
    plain.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, callbacks=[NoOp()])
    assert np.max(np.abs(model.params - plain.params)) > 1e-6


@pytest.mark.parametrize("form", sorted(FORMS))
def test_compiled_loop_equals_general_loop(form, backend):
    X, y = data()
    loop_model = make(form)
    loop_history = loop_model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5,
                                  callbacks=[NoOp()])
    fast = make(form)
    fast_history = fast.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5)
    if backend == "numba":
        assert ms.train.compiled.supports(fast, {"callbacks": [], "pruning": None})
    np.testing.assert_allclose(fast.params, loop_model.params, rtol=1e-12, atol=1e-14)
    for name, buf in loop_model.optimizer.state_arrays().items():
        np.testing.assert_allclose(fast.optimizer.state_arrays()[name], buf, rtol=1e-12,
                                   atol=1e-14)
    np.testing.assert_allclose(fast_history["loss"], loop_history["loss"], rtol=1e-12)
    assert fast_history["lr"] == loop_history["lr"]


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("fast", [False, True])
def test_pruned_weights_and_their_state_stay_exactly_zero_after_100_steps(form, fast, backend):
    X, y = data()
    model = make(form)
    model.params[...] += 0.5  # nonzero biases, so bias decay has something to act on
    prune.prune(model, 0.5)
    pruned = ~model.mask
    assert pruned.sum() > 0
    callbacks = None if fast else [NoOp()]
    model.fit(X, y, epochs=17, batch_size=BATCH, seed=5, callbacks=callbacks)  # 102 steps
    assert model.optimizer.iterations >= 100
    assert np.all(model.params[pruned] == 0.0)
    for name, buf in model.optimizer.state_arrays().items():
        assert np.all(buf[pruned] == 0.0), name
    assert np.all(model.params[model.mask] != 0.0)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_resume_mid_run_is_bit_identical(tmp_path, form):
    X, y = data()
    ref = make(form)
    ref_history = ref.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, callbacks=[NoOp()])
    path = tmp_path / "ck.npz"
    for stop_at in (4, 7, 13):
        if path.exists():
            path.unlink()
        first = make(form)
        with pytest.raises(Interrupt):
            first.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, checkpoint=path,
                      checkpoint_every=2, callbacks=[InterruptAt(stop_at)])
        # the optimizer and regularizers come back from the checkpoint's model file
        loaded = ms.load(path)
        assert loaded.optimizer.get_config() == first.optimizer.get_config()
        assert [la.get_config() for la in loaded.layers] == [la.get_config() for la in first.layers]
        second = make(form)
        history = second.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, checkpoint=path,
                             checkpoint_every=2, resume=path)
        assert_identical(second, ref, history, ref_history)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_model_file_keeps_regularizer_and_optimizer(tmp_path, form):
    X, y = data()
    model = make(form)
    model.fit(X, y, epochs=1, batch_size=BATCH, seed=5)
    ms.save(model, tmp_path / "m.npz")
    loaded = ms.load(tmp_path / "m.npz")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.weight_decay == model.optimizer.weight_decay
    assert loaded.optimizer.decay_bias == model.optimizer.decay_bias
    for a, b in zip(loaded.layers, model.layers):
        assert a.kernel_regularizer == b.kernel_regularizer
    # both continue identically
    model.fit(X, y, epochs=1, batch_size=BATCH, seed=6, callbacks=[NoOp()])
    loaded.fit(X, y, epochs=1, batch_size=BATCH, seed=6, callbacks=[NoOp()])
    assert loaded.params.tobytes() == model.params.tobytes()


@pytest.mark.parametrize("form", ["l2_momentum", "adam_wd", "adamw_no_bias_l2"])
def test_workers_2_equals_one_process(form):
    # the L2 gradient is added once, after the allreduce: per shard it would count twice
    X, y = data()
    ref = make(form)
    ref_history = ref.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, callbacks=[NoOp()])
    model = make(form)
    history = model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, workers=2)
    np.testing.assert_allclose(model.params, ref.params, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-10)
    for name, buf in ref.optimizer.state_arrays().items():
        np.testing.assert_allclose(model.optimizer.state_arrays()[name], buf, rtol=1e-10,
                                   atol=1e-15)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_qat_applies_every_form(form):
    X, y = data()
    model = make(form)
    model.fit(X, y, epochs=2, batch_size=BATCH, seed=5, quantization="int8")
    assert np.all(np.isfinite(model.params))
    plain = ms.Sequential([ms.Dense(6, "tanh"), ms.Dense(2)], input_dim=3, seed=2)
    opt = FORMS[form][1]()
    plain.compile(optimizer=_without_decay(opt))
    plain.fit(X, y, epochs=2, batch_size=BATCH, seed=5, quantization="int8")
    assert np.max(np.abs(model.params - plain.params)) > 1e-6


def _without_decay(opt):
    opt.weight_decay = 0.0
    return opt if not isinstance(opt, AdamW) else Adam(opt.learning_rate)


def test_qat_l2_equals_coupled_sgd_decay_of_twice_the_strength():
    X, y = data()
    reg = ms.regularizers.L2(0.02)
    a = ms.Sequential([ms.Dense(6, "tanh", kernel_regularizer=reg),
                       ms.Dense(2, kernel_regularizer=reg)], input_dim=3, seed=2)
    a.compile(optimizer=SGD(0.05, momentum=0.9))
    b = ms.Sequential([ms.Dense(6, "tanh"), ms.Dense(2)], input_dim=3, seed=2)
    b.compile(optimizer=SGD(0.05, momentum=0.9, weight_decay=0.04, decay_bias=False))
    for model in (a, b):
        model.fit(X, y, epochs=2, batch_size=BATCH, seed=5, quantization="int8")
    np.testing.assert_allclose(a.params, b.params, rtol=1e-13, atol=1e-15)


def test_decay_bias_false_leaves_biases_undecayed_by_hand():
    # zero gradient (lr 0 on the data is not possible, so: a zero-loss batch): only decay acts
    model = ms.Sequential([ms.Dense(1)], input_dim=1)
    model.set_weights([np.array([[2.0]]), np.array([3.0])])
    model.compile(optimizer=AdamW(0.1, weight_decay=0.5, decay_bias=False))
    model.fit([[0.0]], [[3.0]], epochs=1, batch_size=1)  # y_hat = 3 = y: gradient 0
    W, b = model.get_weights()
    assert W[0, 0] == 2.0 * (1 - 0.1 * 0.5)
    assert b[0] == 3.0


@pytest.mark.parametrize("form", sorted(FORMS))
def test_gradual_pruning_keeps_pruned_weights_and_state_zero_with_every_form(form):
    X, y = data()
    model = make(form)
    schedule = prune.PolynomialDecaySparsity(0.0, 0.6, begin_step=0, end_step=60, frequency=10)
    model.fit(X, y, epochs=17, batch_size=BATCH, seed=5, pruning=schedule)  # 102 steps
    pruned = ~model.mask
    assert pruned[model.prunable].mean() == pytest.approx(0.6, abs=0.05)
    assert np.all(model.params[pruned] == 0.0)
    for name, buf in model.optimizer.state_arrays().items():
        assert np.all(buf[pruned] == 0.0), name


def test_float32_compiled_loop_agrees_with_the_general_loop(backend):
    X, y = data("float32")
    for form in sorted(FORMS):
        loop_model, fast = make(form, "float32"), make(form, "float32")
        loop_model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5, callbacks=[NoOp()])
        fast.fit(X, y, epochs=EPOCHS, batch_size=BATCH, seed=5)
        assert fast.params.dtype == np.float32
        np.testing.assert_allclose(fast.params, loop_model.params, rtol=1e-5, atol=1e-6)
