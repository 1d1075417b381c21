"""fit's argument checks: bad data and arguments name the argument, absurd sizes are refused
before any allocation or update, and a refused call leaves the model as it was."""
import numpy as np
import pytest

import minscale as ms
from minscale.optim import SGD
from minscale.parallel import LocalComm
from minscale.quant import QATConfig

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


BAD_FIT = [
    (lambda X, y: (X[:5], y), {}, "rows"),
    (lambda X, y: (np.hstack([X, X]), y), {}, "features"),
    (lambda X, y: (np.where(np.arange(10)[:, None] == 3, np.nan, X), y), {}, r"X must be finite, got nan"),
    (lambda X, y: (X, np.where(np.arange(10)[:, None] == 3, np.inf, y)), {}, r"y must be finite, got inf"),
    (lambda X, y: (X[:0], y[:0]), {}, "empty"),
    (lambda X, y: (X.astype(str), y), {}, "X must contain real numbers"),
    (lambda X, y: (X, y), {"batch_size": 0}, "batch_size"),
    (lambda X, y: (X, y), {"epochs": -1}, "epochs"),
    (lambda X, y: (X, y), {"seed": -1}, r"^seed must be an integer >= 0, got -1$"),
    (lambda X, y: (X, y), {"seed": "a"}, r"^seed must be an integer, got 'a' of type str$"),
    (lambda X, y: (X, y), {"seed": 2.5}, r"^seed must be an integer, got 2.5 of type float$"),
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


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="async", comm=LocalComm()), r"^mode='async' runs worker processes on one machine; "
                                           r"training over comm= is synchronous"),
    (dict(workers=2, comm=LocalComm()), r"^give either workers \(processes on this machine\) "
                                        r"or comm, not both$"),
    (dict(pruning=0.5), r"^pruning must be a sparsity schedule with should_prune\(step\) and "
                        r"sparsity\(step\), got 0\.5$"),
    (dict(mode="hogwild"), r"^mode must be 'sync' or 'async', got 'hogwild'$"),
], ids=["async-over-comm", "workers-and-comm", "pruning-not-a-schedule", "unknown-mode"])
def test_a_refused_call_leaves_the_model_uncompiled_and_without_quantizers(kwargs, match):
    # every check comes before fit changes the model: no default compile, no QAT hooks
    model, X, y = _tiny()
    before = model.params.copy()
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, quantization=QATConfig(), **kwargs)
    assert model.optimizer is None
    assert [(layer.kernel_quantizer, layer.output_quantizer) for layer in model.layers] == \
        [(None, None)]
    assert np.array_equal(model.params, before)


def test_a_bad_quantization_config_is_refused_before_the_model_is_compiled():
    model, X, y = _tiny()
    with pytest.raises(ValueError, match=r"^activations must be one of \('int8', 'uint8'\) or "
                                         r"None, got 'int7'$"):
        model.fit(X, y, quantization=dict(weights="int8", activations="int7"))
    assert model.optimizer is None
    assert "quantization" not in model.state
