"""The compiled epoch loop (minscale.train.compiled + minscale.kernels._fastfit) against the
general loop.

The compiled loop must reproduce the general loop (numpy backend) within 1e-12 in float64:
parameters, gradients, the last batch loss, per-epoch loss, per-step learning rate (bit for
bit), optimizer state; and raise the same DivergenceError at the same step.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from minscale.train import compiled

pytest.importorskip("numba")
from minscale.kernels import _fastfit  # noqa: E402

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


def _options(**kw):
    """fit's options as compiled.supports takes them (fit's defaults filled in)."""
    options = dict(epochs=1, batch_size=32, shuffle=True, seed=None, validation_data=None,
                   verbose=0, callbacks=[], pruning=None, pruning_method="magnitude")
    options.update(kw)
    return options


@contextlib.contextmanager
def _counting_calls():
    """Record the number of epochs of every compiled call made inside the block."""
    calls, original = [], _fastfit.train_epochs

    def counting(*args):
        calls.append(args[5])
        return original(*args)
    _fastfit.train_epochs = counting
    try:
        yield calls
    finally:
        _fastfit.train_epochs = original


def _classic_data(n=100):
    # y = 2x + 1 + N(0, 1), the classic one-unit example
    rng = np.random.default_rng(42)
    X = rng.uniform(-1, 1, (n, 1))
    return X, 2 * X + 1 + rng.standard_normal((n, 1))


def _fit_both(make, X, y, **kw):
    import minscale as ms
    from minscale import kernels

    previous = kernels._forced
    try:
        ms.set_backend("numpy")
        m_ref = make()
        h_ref = m_ref.fit(X, y, **kw)
        ms.set_backend("numba")
        m_jit = make()
        assert compiled.supports(m_jit, _options(**kw))
        with _counting_calls() as calls:
            h_jit = m_jit.fit(X, y, **kw)
        assert calls, "fit did not take the compiled path"
    finally:
        kernels.set_backend(previous)
    return m_ref, h_ref, m_jit, h_jit


def _assert_same_training(m_ref, h_ref, m_jit, h_jit, tol=1e-12):
    np.testing.assert_allclose(m_jit.params, m_ref.params, rtol=tol, atol=tol)
    np.testing.assert_allclose(m_jit.grads, m_ref.grads, rtol=tol, atol=tol)
    # the last batch loss rides in the gradient buffer's last slot, as in the general loop
    np.testing.assert_allclose(m_jit.grad_buffer[-1], m_ref.grad_buffer[-1], rtol=tol, atol=tol)
    assert sorted(h_jit.history) == sorted(h_ref.history)
    for key in h_ref.history:
        np.testing.assert_allclose(h_jit.history[key], h_ref.history[key], rtol=tol, atol=tol)
    assert h_jit.history["lr"] == h_ref.history["lr"]
    assert h_jit.epoch == h_ref.epoch
    assert m_jit.optimizer.iterations == m_ref.optimizer.iterations
    s_ref, s_jit = m_ref.optimizer.state_arrays(), m_jit.optimizer.state_arrays()
    assert sorted(s_ref) == sorted(s_jit)
    for key in s_ref:
        np.testing.assert_allclose(s_jit[key], s_ref[key], rtol=tol, atol=tol)


def _model(optimizer, layers=None, input_dim=1, dtype="float64", reduction="mean"):
    import minscale as ms

    def make():
        m = ms.Sequential(layers() if layers else [ms.Dense(1)], input_dim=input_dim, seed=0,
                          dtype=dtype)
        m.compile(loss="mse", optimizer=optimizer(), reduction=reduction)
        return m
    return make


def test_fast_fit_classic_example_equals_general_loop():
    from minscale import optim, schedules

    X, y = _classic_data()
    make = _model(lambda: optim.Adam(schedules.InverseTimeDecay(0.1, decay_rate=0.01)))
    result = _fit_both(make, X, y, epochs=100, batch_size=10, seed=42)
    _assert_same_training(*result)
    assert result[2].optimizer.iterations == 1000
    # the fit recovers y = 2x + 1 (weights near 2 and 1 on this noisy sample)
    np.testing.assert_allclose(result[2].params, [2.0, 1.0], atol=0.35)


@pytest.mark.parametrize("case", ["sgd", "momentum", "nesterov", "adam_exp", "sum", "half_sum",
                                  "deep", "no_shuffle", "validation"])
def test_fast_fit_equals_general_loop(case):
    import minscale as ms
    from minscale import optim, schedules

    rng = np.random.default_rng(5)
    X = rng.standard_normal((53, 4))
    y = np.tanh(X @ rng.standard_normal((4, 2))) + 0.1 * rng.standard_normal((53, 2))

    def deep():
        return [ms.Dense(16, "tanh"), ms.Dense(9, "relu"), ms.Dense(7, "sigmoid"),
                ms.Dense(5, "leaky_relu", use_bias=False), ms.Dense(2)]

    def mlp():
        return [ms.Dense(6, "relu"), ms.Dense(2)]

    kw = dict(epochs=7, batch_size=8, seed=11)
    opt, layers, reduction = (lambda: optim.SGD(0.05)), mlp, "mean"
    if case == "momentum":
        opt = lambda: optim.SGD(schedules.PolynomialDecay(0.05, 30), momentum=0.9)  # noqa: E731
    elif case == "nesterov":
        opt = lambda: optim.SGD(0.02, momentum=0.8, nesterov=True)  # noqa: E731
    elif case == "adam_exp":
        opt = lambda: optim.Adam(schedules.ExponentialDecay(0.01, 10, 0.9, staircase=True))  # noqa
    elif case in ("sum", "half_sum"):
        reduction = case
        opt = lambda: optim.SGD(0.002)  # noqa: E731
    elif case == "deep":
        opt, layers = (lambda: optim.Adam(0.003)), deep
    elif case == "no_shuffle":
        kw["shuffle"] = False
    elif case == "validation":
        kw["validation_data"] = (X[:10], y[:10])
    make = _model(opt, layers, input_dim=4, reduction=reduction)
    _assert_same_training(*_fit_both(make, X, y, **kw))


def test_fast_fit_respects_masks_and_continues_training():
    from minscale import optim

    X, y = _classic_data()

    def make():
        import minscale as ms
        m = ms.Sequential([ms.Dense(5, "tanh"), ms.Dense(1)], input_dim=1, seed=0)
        m.compile(optimizer=optim.Adam(0.01))
        m.mask[[0, 3, 7]] = False
        m.params[~m.mask] = 0.0
        m.fit(X, y, epochs=2, batch_size=16, seed=1)  # a second fit starts from iterations > 0
        return m
    result = _fit_both(make, X, y, epochs=3, batch_size=16, seed=2)
    _assert_same_training(*result)
    assert np.all(result[2].params[[0, 3, 7]] == 0)


def test_fast_fit_float32_close_to_general_loop():
    import minscale as ms
    from minscale import optim

    X, y = _classic_data()
    make = _model(lambda: optim.Adam(0.01),
                  lambda: [ms.Dense(8, "tanh"), ms.Dense(1)], dtype="float32")
    m_ref, h_ref, m_jit, h_jit = _fit_both(make, X, y, epochs=5, batch_size=16, seed=3)
    assert m_jit.params.dtype == np.float32
    np.testing.assert_allclose(m_jit.params, m_ref.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_jit["loss"], h_ref["loss"], rtol=1e-4)


@pytest.mark.parametrize("lr", [1e3, 1e30])
def test_fast_fit_divergence_same_as_general_loop(lr):
    import minscale as ms
    from minscale import kernels, optim
    from minscale.train import DivergenceError

    X, y = _classic_data()
    errors, params = [], []
    previous = kernels._forced
    try:
        for name in ("numpy", "numba"):
            ms.set_backend(name)
            m = ms.Sequential([ms.Dense(4, "relu"), ms.Dense(1)], input_dim=1, seed=0)
            m.compile(optimizer=optim.SGD(lr))
            with pytest.raises(DivergenceError) as info:
                m.fit(X * 1e3, y * 1e3, epochs=50, batch_size=10, seed=0)
            errors.append(info.value)
            params.append(m.params.copy())
            assert m.optimizer.iterations == info.value.step
    finally:
        kernels.set_backend(previous)
    ref, jit = errors
    assert str(ref) == str(jit)
    assert (ref.epoch, ref.step, ref.learning_rate) == (jit.epoch, jit.step, jit.learning_rate)
    np.testing.assert_allclose(params[1], params[0], rtol=1e-12)
    assert np.isfinite(params[1]).all()


def test_fast_fit_not_used_where_unsupported():
    import minscale as ms
    from minscale import kernels, optim, train

    previous = kernels._forced
    try:
        ms.set_backend("numba")
        m = ms.Sequential([ms.Dense(1)], input_dim=1)
        m.compile(optimizer=optim.Adam(lambda step: 0.1))  # a user schedule: general loop
        assert not compiled.supports(m, _options())
        m.compile(optimizer=optim.Adam(0.1))
        assert compiled.supports(m, _options())
        assert not compiled.supports(m, _options(callbacks=[train.Callback()]))
        assert not compiled.supports(m, _options(pruning=object()))
        m.compile(optimizer=optim.Adam(0.1), loss="mse", reduction="sum")
        assert compiled.supports(m, _options())
        m.layers[0].kernel_quantizer = lambda w, training: (w, None)
        assert not compiled.supports(m, _options())
        m.layers[0].kernel_quantizer = None
        m.compile(optimizer=optim.SGD(0.1, momentum=0.5))
        assert compiled.supports(m, _options())
        ms.set_backend("numpy")
        assert not compiled.supports(m, _options())
    finally:
        kernels.set_backend(previous)


@pytest.mark.parametrize("schedule", [
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_rate=0.01)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.3, decay_rate=0.5, decay_steps=7,
                              staircase=True)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=13, decay_rate=0.96)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=300, power=2.0)),
    ("Constant", dict(learning_rate=0.05)),
])
def test_vectorized_learning_rates_equal_scalar_calls(schedule):
    from minscale import schedules

    sched = getattr(schedules, schedule[0])(**schedule[1])
    rates = compiled.learning_rates(sched, 17, 700)
    assert rates.tolist() == [float(sched(t)) for t in range(17, 717)]


def test_training_converges_under_both_backends(backend):
    # the `backend` fixture: the same fit under numpy and numba reaches the same loss
    import minscale as ms
    from minscale import optim, schedules

    X, y = _classic_data()
    m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
    m.compile(optimizer=optim.Adam(schedules.InverseTimeDecay(0.1, decay_rate=0.01)))
    h = m.fit(X, y, epochs=100, batch_size=10, seed=42)
    assert ms.get_backend() == backend
    # the least-squares line of this sample has MSE about 0.8 (noise variance 1)
    assert h["loss"][-1] < 1.2
    assert len(h["lr"]) == 1000


def test_fast_fit_in_chunks_of_epochs_is_bit_identical(monkeypatch):
    # a long run goes to the compiled loop a few epochs at a time (at most ORDER_ENTRIES
    # shuffled indices per call) instead of one (epochs, n) order array up front
    import minscale as ms
    from minscale import kernels, optim

    X, y = _classic_data(50)

    def train(entries):
        monkeypatch.setattr(compiled, "ORDER_ENTRIES", entries)
        m = ms.Sequential([ms.Dense(3, "tanh"), ms.Dense(1)], input_dim=1, seed=1)
        m.compile(optimizer=optim.Adam(ms.schedules.InverseTimeDecay(0.05, decay_rate=0.1)))
        h = m.fit(X, y, epochs=7, batch_size=8, seed=3)
        return m, h

    previous = kernels._forced
    try:
        ms.set_backend("numba")
        calls = []
        original = _fastfit.train_epochs
        # train_epochs(batches, net, buf, update, scratch, n_epochs, ...)
        monkeypatch.setattr(_fastfit, "train_epochs",
                            lambda *a: calls.append(a[5]) or original(*a))
        m_one, h_one = train(2**22)
        assert calls == [7]  # all seven epochs in one call
        calls.clear()
        m_chunks, h_chunks = train(3 * 50)  # three epochs of 50 rows per call
        assert calls == [3, 3, 1]
    finally:
        kernels.set_backend(previous)
    assert m_chunks.params.tobytes() == m_one.params.tobytes()
    assert h_chunks.history == h_one.history and h_chunks.epoch == h_one.epoch
    assert m_chunks.optimizer.iterations == m_one.optimizer.iterations == 7 * 7


@pytest.mark.parametrize("n, count", [(1, 3), (2, 5), (7, 4), (100, 100), (1000, 2)])
def test_orders_equal_successive_permutations(n, count):
    # the compiled path draws a chunk's orders in one Generator.permuted call; the general loop
    # calls rng.permutation(n) once per epoch: same rows, and the generator ends in the same state
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    got = compiled._orders(rng_a, n, count)
    want = np.stack([rng_b.permutation(n) for _ in range(count)])
    assert got.dtype == np.int64 and got.shape == (count, n)
    assert (got == want).all()
    assert rng_a.bit_generator.state == rng_b.bit_generator.state


def test_loss_limit_comes_from_the_first_batch_with_its_penalty(monkeypatch):
    # the compiled loop sets the divergence limit from the run's first batch loss, regularizer
    # penalty included (as the general loop does): BLOWUP_FACTOR * (mse + l2 * sum(W**2))
    import minscale as ms
    from minscale import kernels, optim
    from minscale.train.history import BLOWUP_FACTOR

    X, y = _classic_data(30)
    limits = []
    original = _fastfit.train_epochs

    def recording(*args):
        steps, limit = original(*args)
        limits.append(limit)
        return steps, limit
    previous = kernels._forced
    try:
        ms.set_backend("numba")
        monkeypatch.setattr(_fastfit, "train_epochs", recording)
        m = ms.Sequential([ms.Dense(1, kernel_regularizer=ms.regularizers.L2(0.5))],
                          input_dim=1, seed=0)
        m.compile(optimizer=optim.SGD(0.01))
        W, b = m.layers[0].W.copy(), m.layers[0].b.copy()
        m.fit(X, y, epochs=2, batch_size=10, shuffle=False)
    finally:
        kernels.set_backend(previous)
    first = np.mean((X[:10] @ W + b - y[:10]) ** 2) + 0.5 * np.sum(W ** 2)
    assert limits and limits[0] == pytest.approx(BLOWUP_FACTOR * first, rel=1e-12)


@pytest.mark.parametrize("m, k, n", [(3, 4, 5), (1, 1, 1), (40, 30, 20)])  # last: BLAS
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True)])
def test_flat_matmul_equals_small_matmul(m, k, n, ta, tb):
    # the loop's products on flat buffers: the same index-order sums as small_matmul on 2-D
    # views (bit for bit), BLAS above SMALL_MATMUL multiply-adds (to rounding)
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    A = rng.standard_normal((m, k))
    B = rng.standard_normal((k, n))
    a = np.concatenate([[9.0], (A.T if ta else A).ravel()])  # one element before, offset 1
    b = np.concatenate([[9.0, 9.0], (B.T if tb else B).ravel()])
    c = np.full(m * n + 3, 7.0)
    _fastfit._matmul_flat(a, 1, ta, b, 2, tb, c, 3, m, k, n, 1.0)
    want = np.empty((m, n))
    _fastfit.small_matmul(A, B, want, 1.0)
    assert (c[:3] == 7.0).all()
    if m * n * k <= _fastfit.SMALL_MATMUL:
        assert c[3:].tobytes() == want.ravel().tobytes()
    else:
        np.testing.assert_allclose(c[3:].reshape(m, n), A @ B, rtol=1e-12, atol=1e-12)


def test_timing_splits_epochs_without_changing_results():
    # fit(..., timing=True) runs one compiled call per epoch (as verbose does) and times it:
    # the same float operations in the same order, so the same bits as one call for all epochs
    import minscale as ms
    from minscale import kernels, optim

    X, y = _classic_data(50)

    def train(**kw):
        m = ms.Sequential([ms.Dense(3, "tanh"), ms.Dense(1)], input_dim=1, seed=1)
        m.compile(optimizer=optim.Adam(ms.schedules.InverseTimeDecay(0.05, decay_rate=0.1)))
        with _counting_calls() as calls:
            h = m.fit(X, y, epochs=7, batch_size=8, seed=3, **kw)
        return m, h, calls

    previous = kernels._forced
    try:
        ms.set_backend("numba")
        m_one, h_one, calls_one = train()
        m_timed, h_timed, calls_timed = train(timing=True)
    finally:
        kernels.set_backend(previous)
    assert calls_one == [7] and calls_timed == [1] * 7
    assert h_one.loop == h_timed.loop == "compiled"
    assert m_timed.params.tobytes() == m_one.params.tobytes()
    assert h_timed.history == h_one.history and h_timed.epoch == h_one.epoch
    for name, buf in m_one.optimizer.state_arrays().items():
        assert m_timed.optimizer.state_arrays()[name].tobytes() == buf.tobytes()
    assert h_one.epoch_seconds == []
    assert len(h_timed.epoch_seconds) == 7 and all(s > 0 for s in h_timed.epoch_seconds)
