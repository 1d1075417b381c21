"""Helpers shared by the model-file tests (tests/io and the info/evaluate CLI tests)."""
import json
import zipfile

import numpy as np
from hypothesis import HealthCheck, settings

import minscale as ms
from minscale import io as msio
from minscale.io import container
from minscale.optim import Adam
from minscale.schedules import InverseTimeDecay

FUZZ = settings(deadline=None, max_examples=60,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------
# helpers


def make_data(n=29, d_in=3, d_out=2, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in)).astype(dtype)
    y = (np.tanh(X @ rng.normal(size=(d_in, d_out))) + 0.1).astype(dtype)
    return X, y


def make_model(dtype="float64", optimizer=None, seed=1):
    model = ms.Sequential([ms.Dense(5, activation="tanh"), ms.Dense(2, use_bias=False)],
                          input_dim=3, seed=seed, dtype=dtype)
    model.compile(optimizer=optimizer or Adam(InverseTimeDecay(0.05, decay_rate=0.1)))
    return model


def trained(dtype="float64", optimizer=None, epochs=2):
    model = make_model(dtype, optimizer)
    X, y = make_data(dtype=dtype)
    model.fit(X, y, epochs=epochs, batch_size=4, seed=3)
    return model, X, y


def write_raw(path, manifest, arrays, manifest_bytes=None, compression=zipfile.ZIP_STORED):
    """An .npz written member by member, bypassing every check of minscale.io."""
    text = manifest_bytes if manifest_bytes is not None else json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        members = [("manifest", np.frombuffer(text, dtype=np.uint8)), *arrays.items()]
        for name, arr in members:
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=True)


def rewrite(path, out, edit_manifest=None, edit_arrays=None, rehash=True):
    """Copy a model file with edited arrays (the manifest's specs follow them) and/or an
    edited manifest, optionally re-hashed."""
    manifest, arrays = container.read_container(path)
    arrays = {k: v.copy() for k, v in arrays.items()}
    if edit_arrays:
        edit_arrays(arrays)
        manifest["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.str}
                              for k, v in arrays.items()}
    if edit_manifest:
        edit_manifest(manifest)
    if rehash:
        manifest["sha256"] = msio.buffers_digest(manifest, arrays)
    write_raw(out, manifest, arrays)
    return out


def same_model(a, b):
    assert a.get_config() == b.get_config()
    assert a.params.dtype == b.params.dtype
    assert a.params.tobytes() == b.params.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert (a.reduction, a.metrics) == (b.reduction, b.metrics)
    assert a.optimizer.get_config() == b.optimizer.get_config()
    assert a.optimizer.iterations == b.optimizer.iterations
    sa, sb = a.optimizer.state_arrays(), b.optimizer.state_arrays()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].tobytes() == sb[k].tobytes()


def save_trained(tmp_path):
    """A trained model saved as tmp_path / "model.npz": (model, path, X, y)."""
    model, X, y = trained()
    path = tmp_path / "model.npz"
    ms.save(model, path)
    return model, path, X, y




def equal_state(a, b):
    """Deep equality of decoded states: array dtypes and NaN positions count."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal_state, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_state(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
