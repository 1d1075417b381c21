"""The fit loop: the classic example, epoch loss weighting, float32, errors, divergence."""
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


BAD_FIT = [
    (lambda X, y: (X[:5], y), {}, "rows"),
    (lambda X, y: (np.hstack([X, X]), y), {}, "features"),
    (lambda X, y: (np.where(np.arange(10)[:, None] == 3, np.nan, X), y), {}, r"X must be finite, got nan"),
    (lambda X, y: (X, np.where(np.arange(10)[:, None] == 3, np.inf, y)), {}, r"y must be finite, got inf"),
    (lambda X, y: (X[:0], y[:0]), {}, "empty"),
    (lambda X, y: (X.astype(str), y), {}, "X must contain real numbers"),
    (lambda X, y: (X, y), {"batch_size": 0}, "batch_size"),
    (lambda X, y: (X, y), {"epochs": -1}, "epochs"),
]


@pytest.mark.parametrize("make, kwargs, match", BAD_FIT)
def test_bad_input_names_the_argument(make, kwargs, match):
    X, y = np.ones((10, 1)), np.ones((10, 1))
    model = ms.Sequential([ms.Dense(1)], input_dim=1)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=match):
        model.fit(*make(X, y), **kwargs)


def test_bad_model_and_compile_arguments():
    with pytest.raises(ValueError, match="dtype"):
        ms.Sequential([ms.Dense(1)], dtype="int32")
    with pytest.raises(ValueError, match="layers"):
        ms.Sequential([])
    model = ms.Sequential([ms.Dense(1)], input_dim=1)
    with pytest.raises(ValueError, match="reduction"):
        model.compile(reduction="avg")
    with pytest.raises(ValueError, match="optimizer"):
        model.compile(optimizer="rmsprop")
    with pytest.raises(ValueError, match="learning_rate"):
        model.compile(optimizer="sgd", learning_rate=-1)


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


# ----------------------------------------------------------------------------- absurd sizes


def _tiny():
    X = np.arange(8.0).reshape(4, 2)
    return ms.Sequential([ms.Dense(1)], input_dim=2, seed=0), X, X.sum(axis=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=10**31), r"^batch_size must be an integer <= 2\*\*31 - 1 = 2147483647, "
                              r"got 100000000000\.\.\. \(32 digits\)$"),
    (dict(epochs=2**63), r"^epochs must be an integer <= 2\*\*31 - 1 = 2147483647, "
                         r"got 9223372036854775808$"),
    (dict(batch_size=np.uint64(2**64 - 1)), r"^batch_size must be an integer <= 2\*\*31 - 1"),
    (dict(workers=10**40), r"^workers must be an integer <= 2\*\*31 - 1"),
    (dict(checkpoint="c.npz", checkpoint_every=2**62), r"^checkpoint_every must be an integer "
                                                       r"<= 2\*\*31 - 1"),
], ids=["batch_size-10**31", "epochs-2**63", "batch_size-uint64", "workers-10**40",
        "checkpoint_every-2**62"])
def test_integer_arguments_past_the_count_limit_name_the_argument(kwargs, match, backend,
                                                                 tmp_path, monkeypatch):
    # an int past int64 used to reach Numba (an untyped error) or numpy (OverflowError)
    monkeypatch.chdir(tmp_path)
    model, X, y = _tiny()
    before = model.params.copy()
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, **kwargs)
    assert np.array_equal(model.params, before)  # refused before any update
    with pytest.raises(ValueError, match=r"^batch_size must be an integer <= 2\*\*31 - 1"):
        model.predict(X, batch_size=10**31)


def test_the_count_limit_itself_is_accepted(backend):
    model, X, y = _tiny()
    model.compile(optimizer=SGD(0.01))
    # one batch of all 4 rows: the same update as batch_size=4
    ref, _, _ = _tiny()
    ref.compile(optimizer=SGD(0.01))
    ref.fit(X, y, epochs=2, batch_size=4, shuffle=False)
    model.fit(X, y, epochs=2, batch_size=2**31 - 1, shuffle=False)
    assert np.array_equal(model.params, ref.params)
    assert model.predict(X, batch_size=2**31 - 1).shape == (4, 1)


def test_a_model_too_large_for_memory_is_refused_before_allocation(monkeypatch):
    from minscale import data
    # three layers of 2**31 - 1 units: ~1.4e19 parameters, beyond even numpy's index range
    with pytest.raises(ValueError, match=r"^13,835,058,048,839,712,768 parameters \(input_dim "
                                         r"2147483647, units \[2147483647, 2147483647, "
                                         r"2147483647\], float64\): their parameter, gradient "
                                         r"and mask buffers need 216\.0 EiB \(249,031,044,879,"):
        ms.Sequential([ms.Dense(2**31 - 1) for _ in range(3)], input_dim=2**31 - 1)
    # a realistic size against a small limit: 1000 x 1000 + 1000 parameters, 18 bytes each
    monkeypatch.setattr(data, "memory_limit", lambda: 2**20)
    allocated = []
    monkeypatch.setattr(np, "zeros", lambda *a, **k: allocated.append(a) or 1 / 0)
    with pytest.raises(ValueError, match=r"^1,001,000 parameters \(input_dim 1000, units \[1000\]"
                                         r", float64\): their parameter, gradient and mask "
                                         r"buffers need 17\.2 MiB \(18,018,008 bytes\), more "
                                         r"than the 1\.0 MiB \(1,048,576 bytes\) of physical "
                                         r"memory of this machine; use fewer or narrower"):
        ms.Sequential([ms.Dense(1000)], input_dim=1000)
    assert allocated == []  # refused before numpy was asked for anything
    with pytest.raises(ValueError, match=r"^units must be an integer <= 2\*\*31 - 1"):
        ms.Dense(10**31)
    with pytest.raises(ValueError, match=r"^input_dim must be an integer <= 2\*\*31 - 1"):
        ms.Sequential([ms.Dense(1)], input_dim=2**31)


def test_memory_limit_is_the_physical_memory():
    import os

    from minscale.data import memory_limit
    expected = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory_limit() == expected > 0


def test_a_run_whose_update_records_exceed_memory_is_refused_before_training(monkeypatch,
                                                                             backend):
    from minscale import data
    from minscale.train import BYTES_PER_UPDATE
    model, X, y = _tiny()
    before = model.params.copy()
    monkeypatch.setattr(data, "memory_limit", lambda: 10**6)
    # 4 rows in batches of 3: 2 updates per epoch; 10**4 epochs fit, 10**5 do not
    model.fit(X, y, epochs=10**4 // 2, batch_size=3, shuffle=False)
    n = 2 * 10**5
    model2, _, _ = _tiny()
    with pytest.raises(ValueError, match=rf"^epochs 100000 of 2 batches \(4 rows, batch_size 3\)"
                                         rf" make 200,000 updates, whose records .* need "
                                         rf"{n * BYTES_PER_UPDATE / 2**20:.1f} MiB "
                                         rf"\({n * BYTES_PER_UPDATE:,} bytes\), more than the "
                                         r"976\.6 KiB \(1,000,000 bytes\)"):
        model2.fit(X, y, epochs=10**5, batch_size=3)
    assert np.array_equal(model2.params, before)
    assert model2.optimizer is None  # refused before fit even compiled it


@pytest.mark.parametrize("name, words", [
    ("sub/", "checkpoint 'sub/' ends in '/', which names a folder"),
    ("c" * 250 + ".npz", "the file name is 254 bytes long, more than the 233"),
    ("no/such/c.npz", "does not exist"),
], ids=["trailing-slash", "name-too-long", "no-folder"])
def test_a_checkpoint_path_that_cannot_be_a_file_is_refused_before_training(tmp_path,
                                                                           monkeypatch, name,
                                                                           words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir(exist_ok=True)
    model, X, y = _tiny()
    before = model.params.copy()
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        model.fit(X, y, epochs=3, batch_size=2, checkpoint=name)
    assert np.array_equal(model.params, before)  # not one update: checked first
    assert model.optimizer is None or model.optimizer.iterations == 0
