"""The training loop: the classic example, epoch loss weighting, float32, validation, divergence."""
import math

import numpy as np
import pytest

import minscale as ms
from minscale.datasets import make_linear
from minscale.optim import SGD, Adam
from minscale.train import DivergenceError, shard_bounds

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


def classic(shuffle=False, seed=42, **fit_kwargs):
    X, y = make_linear(100, seed=42)
    model = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
    model.compile(loss="mse", optimizer=Adam(learning_rate=0.1))
    history = model.fit(X, y, epochs=100, batch_size=10, shuffle=shuffle, seed=seed,
                        **fit_kwargs)
    return model, history, X, y


def test_classic_example_matches_least_squares(backend):
    model, history, X, y = classic()
    A = np.hstack([X, np.ones_like(X)])
    (w_ls, b_ls), *_ = np.linalg.lstsq(A, y.ravel(), rcond=None)
    assert abs(model.layers[0].W[0, 0] - w_ls) < 0.05
    assert abs(model.layers[0].b[0] - b_ls) < 0.05
    assert len(history["lr"]) == 1000 and len(history["loss"]) == 100
    # the final training loss is close to the least-squares residual
    assert history["loss"][-1] == pytest.approx(np.mean((A @ [w_ls, b_ls] - y.ravel())**2),
                                                rel=0.05)


def test_epoch_loss_weights_samples_not_batches(backend):
    # x = 1..5, y = 2x, w = 0: squared errors 4, 16, 36, 64, 100; per-sample mean 44.0,
    # while the mean of the batch means (10, 50, 100) would be 53.33.
    X = np.arange(1.0, 6.0).reshape(-1, 1)
    y = 2 * X
    model = ms.Sequential([ms.Dense(1, use_bias=False)], input_dim=1)
    model.params[...] = 0.0
    model.compile(optimizer=SGD(0.0))
    assert model.evaluate(X, y, batch_size=2) == 44.0
    history = model.fit(X, y, epochs=1, batch_size=2, shuffle=False)
    assert history["loss"] == [44.0]


def test_sum_reductions_report_totals(backend):
    X = np.arange(1.0, 6.0).reshape(-1, 1)
    model = ms.Sequential([ms.Dense(1, use_bias=False)], input_dim=1)
    model.params[...] = 0.0
    model.compile(optimizer=SGD(0.0), reduction="half_sum")
    assert model.fit(X, 2 * X, batch_size=2, shuffle=False)["loss"] == [110.0]


def test_same_seed_same_result(backend):
    a, *_ = classic(shuffle=True, seed=3)
    b, *_ = classic(shuffle=True, seed=3)
    np.testing.assert_array_equal(a.params, b.params)


@pytest.mark.parametrize("optimizer", [lambda: SGD(np.float64(0.05), momentum=0.9),
                                       lambda: Adam(np.float64(0.01))])
def test_float32_stays_float32(optimizer, backend):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 2))
    model = ms.Sequential([ms.Dense(8, "tanh"), ms.Dense(8, "relu"), ms.Dense(2)], input_dim=4,
                          dtype="float32")
    model.compile(optimizer=optimizer())
    model.fit(X, y, epochs=2, batch_size=16, seed=0)
    assert model.params.dtype == np.float32 and model.grads.dtype == np.float32
    assert model.predict(X).dtype == np.float32
    assert all(a.dtype == np.float32 for a in model.optimizer.state_arrays().values())
    assert all(layer.W.dtype == np.float32 for layer in model.layers)


def test_validation_history_and_lr_per_step(backend):
    X, y = make_linear(100, seed=1)
    model = ms.Sequential([ms.Dense(1)], input_dim=1)
    model.compile(optimizer=SGD(ms.schedules.InverseTimeDecay(0.1, 0.5, decay_steps=4)))
    h = model.fit(X, y, epochs=3, batch_size=30, validation_data=(X[:20], y[:20]), seed=0)
    assert len(h["val_loss"]) == 3 and len(h["lr"]) == 12
    assert h["lr"][:5] == pytest.approx([0.1 / (1 + 0.5 * t / 4) for t in range(5)])
    assert h["val_loss"][-1] == pytest.approx(model.evaluate(X[:20], y[:20]))


def test_shard_bounds_cover_the_batch():
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [shard_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_divergence_stops_with_message_and_finite_parameters(backend):
    X, y = make_linear(100, seed=0)
    X = X * 1e3
    model = ms.Sequential([ms.Dense(16, "relu"), ms.Dense(1)], input_dim=1)
    model.compile(optimizer=SGD(10.0))
    with pytest.raises(DivergenceError, match=r"epoch \d+, step \d+.*learning rate 10"):
        model.fit(X, y, epochs=50, batch_size=10, seed=0)
    assert np.isfinite(model.params).all()


def test_divergence_limit_is_the_blowup_factor_times_the_first_loss():
    from minscale.train import BLOWUP_FACTOR, divergence_limit

    assert BLOWUP_FACTOR == 1e10
    assert divergence_limit(2.5) == 2.5e10
    # no scale to compare with: only NaN and inf count then
    assert divergence_limit(0.0) == math.inf
    assert divergence_limit(float("nan")) == math.inf
    assert divergence_limit(float("inf")) == math.inf


def test_adam_at_an_absurd_rate_stops_instead_of_ending_with_a_huge_loss(backend):
    # Adam's step is about lr whatever the gradient, so at lr = 1e15 the parameters grow
    # ~1e15 a step and stay finite: the loss reaches ~1e30 without overflowing. The first
    # batch loss is ~5 (y = 2x + 1 + noise, w = b = 0 at most), so the run stops at the first
    # batch over 1e10 times it, with the rate in the message.
    X, y = make_linear(100, seed=0)
    model = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
    model.compile(optimizer=ms.optim.Adam(1e15))
    with pytest.raises(DivergenceError, match=r"over 1e\+10 times the first batch's .* at "
                                              r"learning rate 1e\+15") as info:
        model.fit(X, y, epochs=100, batch_size=10, seed=0)
    assert 1 <= info.value.step <= 3
    assert np.isfinite(model.params).all()


def test_copy_is_independent():
    model = ms.Sequential([ms.Dense(3), ms.Dense(1)], input_dim=2, seed=1)
    twin = model.copy()
    np.testing.assert_array_equal(twin.params, model.params)
    twin.params[...] = 0
    assert not np.all(model.params == 0)


def test_classic_example_with_decay_is_within_0_05_for_every_shuffling_seed(backend):
    # With shuffling, constant-rate Adam 0.1 ends anywhere within about 0.1 of least squares
    # (batch noise: measured 0.009 .. 0.108 over seeds 0..9); inverse-time decay 0.01 damps
    # that noise (measured 0.002 .. 0.008), which is the point of decaying the rate.
    X, y = make_linear(100, seed=42)
    (w_ls, b_ls), *_ = np.linalg.lstsq(np.hstack([X, np.ones_like(X)]), y.ravel(), rcond=None)
    for seed in range(5):
        model = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
        model.compile(optimizer=Adam(ms.schedules.InverseTimeDecay(0.1, decay_rate=0.01)))
        model.fit(X, y, epochs=100, batch_size=10, seed=seed)
        assert abs(model.layers[0].W[0, 0] - w_ls) < 0.05
        assert abs(model.layers[0].b[0] - b_ls) < 0.05


def test_timing_records_every_epoch_on_the_general_loop(backend):
    # a callback keeps fit on the general loop; timing is taken by the loop itself there too
    X, y = make_linear(60, seed=1)

    def train(**kw):
        m = ms.Sequential([ms.Dense(4, "relu"), ms.Dense(1)], input_dim=1, seed=2)
        m.compile(optimizer=Adam(0.01))
        return m, m.fit(X, y, epochs=3, batch_size=16, seed=4,
                        callbacks=[ms.train.Callback()], **kw)

    m_plain, h_plain = train()
    m_timed, h_timed = train(timing=True)
    assert h_plain.loop == h_timed.loop == "general"
    assert m_timed.params.tobytes() == m_plain.params.tobytes()
    assert h_timed.history == h_plain.history
    assert h_plain.epoch_seconds == []
    assert len(h_timed.epoch_seconds) == 3 and all(s > 0 for s in h_timed.epoch_seconds)


def test_timing_is_refused_where_no_loop_records_it():
    X, y = make_linear(20, seed=1)
    m = ms.Sequential([ms.Dense(4, "relu"), ms.Dense(1)], input_dim=1, seed=2)
    with pytest.raises(ValueError, match="timing must be a bool"):
        m.fit(X, y, timing=1)
    with pytest.raises(ValueError, match="timing is recorded by the single-process"):
        m.fit(X, y, timing=True, pipeline_stages=2)
    assert m.optimizer is None  # refused before fit compiled the model
