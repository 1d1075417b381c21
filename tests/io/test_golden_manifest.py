"""Model files keep their bytes' structure while the code moves: the manifests of four fixed
models (a trained, pruned float64 Sequential with Adam and a schedule; a QAT model; a
SparseModel; a QuantizedModel) equal the golden copies recorded before the package split.

Compared: every key in its order (so ``"qat_observers": null`` and the field order of the
JSON stay), every string, int, bool and null exactly, every float to 1e-9 relative (they come
out of matrix products, whose summation order is the BLAS's business), and the array list of
each file (name, dtype, shape). Not compared: ``library_version`` and ``sha256`` (the digest
of the float buffers). To record again after a deliberate format change:
``MINSCALE_WRITE_GOLDEN=1 pytest tests/io/test_golden_manifest.py``.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import minscale as ms
from minscale import io as msio
from minscale import prune, quant
from minscale.optim import Adam
from minscale.schedules import InverseTimeDecay

GOLDEN = Path(__file__).parent / "golden"
VOLATILE = ("library_version", "sha256")


def _data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(16, 3))
    y = X @ np.array([[0.5], [-1.0], [2.0]]) + 0.25
    return X, y


def _float_model():
    model = ms.Sequential([ms.Dense(4, activation="relu"), ms.Dense(1)], input_dim=3,
                          dtype="float64", seed=3)
    model.compile(optimizer=Adam(InverseTimeDecay(0.05, decay_rate=0.1)))
    X, y = _data()
    model.fit(X, y, epochs=1, batch_size=16, seed=1, verbose=0)  # one step
    prune.prune(model, 0.5)
    return model


def _qat_model():
    model = ms.Sequential([ms.Dense(4, activation="relu"), ms.Dense(1)], input_dim=3, seed=3)
    model.compile(optimizer="sgd", learning_rate=0.01)
    X, y = _data()
    model.fit(X.astype(np.float32), y.astype(np.float32), epochs=1, batch_size=8, seed=1,
              quantization="int8", verbose=0)
    return model


def _sparse_model():
    return prune.to_sparse(_float_model())


def _quantized_model():
    X, _ = _data()
    return quant.quantize_model(_float_model(), "int8", "int8", calibration_data=X)


MODELS = {"sequential": _float_model, "qat": _qat_model, "sparse": _sparse_model,
          "quantized": _quantized_model}


def _stable(manifest):
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


def _assert_same(got, want, where="manifest"):
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float), f"{where}: {got!r} is not a float"
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-300), f"{where}: {got} != {want}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_manifest_equals_the_golden_copy(name, tmp_path):
    path = tmp_path / f"{name}.npz"
    ms.save(MODELS[name](), path)
    manifest = _stable(msio.read_manifest(path))
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("MINSCALE_WRITE_GOLDEN"):
        golden.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    want = json.loads(golden.read_text(encoding="utf-8"))
    _assert_same(manifest, want)
    arrays = [[k, v["dtype"], v["shape"]] for k, v in manifest["arrays"].items()]
    assert arrays == [[k, v["dtype"], v["shape"]] for k, v in want["arrays"].items()]
    # and the file loads back to the same kind
    assert type(ms.load(path)).__name__ == manifest["kind"]
