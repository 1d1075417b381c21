"""minscale.io.codecs: the registry API, every provider, and the round trip of every kind."""

import importlib
import re

import numpy as np
import pytest
from io_helpers import (
    equal_state,
    make_data,
    make_model,
    rewrite,
    same_model,
    save_trained,
    trained,
    write_raw,
)

import minscale as ms
from minscale import export, prune, quant
from minscale import io as msio
from minscale.io import ModelFileError, codecs, container
from minscale.optim import SGD, Adam
from minscale.schedules import InverseTimeDecay


@pytest.fixture
def saved(tmp_path):
    return save_trained(tmp_path)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(codecs, "_KINDS", {})
    monkeypatch.setattr(codecs, "_EXTENSIONS", {})
    monkeypatch.setattr(codecs, "_PROVIDERS", dict(codecs._PROVIDERS))
    monkeypatch.setattr(codecs, "_EXTENSION_PROVIDERS", {})
    return codecs


class Base:
    pass


class Child(Base):
    pass


def test_register_lookup_and_kind_of(registry):
    enc, dec, table = (lambda m: ({}, {})), (lambda f, a: Base()), (lambda m: [])
    codec = registry.register("Base", enc, dec, table)
    assert registry.lookup("Base") is codec
    assert codec == (enc, dec, table)
    assert registry.kind_of(Child()) == "Base"       # found through the MRO
    assert registry.kind_of(object()) is None
    ext = registry.register_extension("extra", lambda m, man, a: None, lambda m, man, a, p: None)
    assert registry.lookup_extension("extra") is ext
    assert registry.registered_extensions() == {"extra": ext}


def test_unknown_kind_names_the_file_and_the_known_kinds(registry):
    registry._PROVIDERS.pop("Sequential")  # no provider import for this check
    registry.register("Sequential", print, print, print)
    with pytest.raises(msio.ModelFileError,
                       match=r"^'m.npz': unknown model kind 'Nope'; expected 'SparseModel', "
                             r"'QuantizedModel', 'FixedPointModel' or 'Sequential'$"):
        registry.lookup("Nope", "m.npz")
    with pytest.raises(msio.ModelFileError, match=r"^unknown model kind 3;"):
        registry.lookup(3)


def test_a_provider_is_imported_on_first_lookup(registry):
    # a provider that registers nothing: the import happens and the kind stays unknown
    registry._PROVIDERS["Fake"] = "minscale.sizes"
    with pytest.raises(msio.ModelFileError, match=r"unknown model kind 'Fake'"):
        registry.lookup("Fake")


def test_bad_arguments(registry):
    with pytest.raises(ValueError, match=r"^kind must be an identifier string, got 'a b'$"):
        registry.register("a b", print, print, print)
    with pytest.raises(TypeError, match=r"^decode must be callable, got 1$"):
        registry.register("K", print, 1, print)
    with pytest.raises(KeyError):
        registry.lookup_extension("missing")


# ------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", [lambda: SGD(0.05, momentum=0.9, nesterov=True),
                                       lambda: Adam(InverseTimeDecay(0.05, decay_rate=0.1))])
def test_round_trip_is_exact_and_training_continues_identically(tmp_path, dtype, optimizer):
    model, X, y = trained(dtype, optimizer())
    model.state["note"] = {"tuple": (1, 2.5, None), "nan": float("nan"),
                           "codes": np.array([-3, 7], dtype=np.int8)}
    ms.save(model, tmp_path / "m.npz")
    loaded = ms.load(tmp_path / "m.npz")
    same_model(model, loaded)
    assert loaded.params.dtype == np.dtype(dtype)
    assert loaded.predict(X).tobytes() == model.predict(X).tobytes()
    assert equal_state(loaded.state, model.state)
    # optimizer counter and buffers came back: one more epoch gives the same bits
    model.fit(X, y, epochs=1, batch_size=4, seed=9)
    loaded.fit(X, y, epochs=1, batch_size=4, seed=9)
    same_model(model, loaded)


def test_untrained_uncompiled_and_metric_models_round_trip(tmp_path):
    bare = ms.Sequential([ms.Dense(2)], input_dim=4, seed=5)
    ms.save(bare, tmp_path / "bare.npz")
    loaded = ms.load(tmp_path / "bare.npz")
    assert loaded.optimizer is None and loaded.params.tobytes() == bare.params.tobytes()
    clf = ms.Sequential([ms.Dense(3)], input_dim=2).compile(
        optimizer="momentum", reduction="half_sum", metrics=["accuracy"])
    ms.save(clf, tmp_path / "clf.npz")
    loaded = ms.load(tmp_path / "clf.npz")
    assert loaded.reduction == "half_sum" and loaded.metrics == ["accuracy"]
    assert loaded.optimizer.get_config() == clf.optimizer.get_config()


def test_unbuilt_model_and_non_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        ms.save(ms.Sequential([ms.Dense(1)]), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="Sequential"):
        ms.save({"W": np.ones(2)}, tmp_path / "m.npz")


def test_custom_schedule_keeps_state_but_not_the_optimizer(tmp_path):
    model = make_model(optimizer=SGD(lambda step: 0.01, momentum=0.5))
    X, y = make_data()
    model.fit(X, y, epochs=1, batch_size=8, seed=0)
    manifest = ms.save(model, tmp_path / "m.npz")
    assert manifest["optimizer"]["config"] is None
    assert manifest["optimizer"]["iterations"] == 4  # ceil(29 / 8) updates
    loaded = ms.load(tmp_path / "m.npz")
    assert loaded.optimizer is None
    assert loaded.params.tobytes() == model.params.tobytes()


def test_pruned_model_round_trips_and_keeps_its_zeros_while_training(tmp_path):
    model, X, y = trained()
    prune.prune(model, 0.6, method="global")
    ms.save(model, tmp_path / "p.npz")
    loaded = ms.load(tmp_path / "p.npz")
    same_model(model, loaded)
    assert loaded.sparsity() == model.sparsity()
    # 0.6 of the 3*5 + 5*2 = 25 weights: round(15.0) = 15 pruned
    assert int((~loaded.mask[loaded.prunable]).sum()) == 15
    assert loaded.predict(X).tobytes() == model.predict(X).tobytes()
    pruned = ~loaded.mask
    loaded.fit(X, y, epochs=3, batch_size=4, seed=1)
    assert np.all(loaded.params[pruned] == 0.0)
    assert np.array_equal(loaded.mask, model.mask)
    assert not np.array_equal(loaded.params, model.params)  # it did train
    # the recovery backup survived the file: restore() gives back the pre-pruning values
    fresh = ms.load(tmp_path / "p.npz")
    prune.restore(fresh)
    prune.restore(model)
    assert fresh.params.tobytes() == model.params.tobytes()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sparse_model_round_trips(tmp_path, dtype):
    model, X, y = trained(dtype)
    prune.prune(model, 0.5)
    sparse = prune.to_sparse(model)
    ms.save(sparse, tmp_path / "s.npz")
    loaded = ms.load(tmp_path / "s.npz")
    assert type(loaded).__name__ == "SparseModel" and loaded.dtype == np.dtype(dtype)
    assert loaded.predict(X).tobytes() == sparse.predict(X).tobytes()
    assert loaded.nbytes == sparse.nbytes
    for a, b in zip(loaded.layers, sparse.layers):
        assert a.W.nnz == b.W.nnz and (a.W != b.W).nnz == 0
        assert (a.b is None) == (b.b is None)


def test_sparse_model_with_broken_csr_is_refused(tmp_path):
    model, X, y = trained()
    prune.prune(model, 0.5)
    ms.save(prune.to_sparse(model), tmp_path / "s.npz")

    def bad_index(arrays):
        arrays["layers/0/indices"][0] = 99  # column 99 of a 5-column W
    rewrite(tmp_path / "s.npz", tmp_path / "bad.npz", edit_arrays=bad_index)
    with pytest.raises(ModelFileError, match="column indices"):
        ms.load(tmp_path / "bad.npz")


QUANTIZATIONS = [
    dict(weights="int8", activations="int8"),
    dict(weights="int4", activations=None),
    dict(weights="int8/tensor", activations="uint8"),
    dict(weights="fixed", activations="int8"),
]


@pytest.mark.parametrize("kwargs", QUANTIZATIONS, ids=lambda k: f"{k['weights']}-{k['activations']}")
def test_quantized_model_round_trips(tmp_path, kwargs):
    from minscale import quant
    model = ms.Sequential([ms.Dense(6, activation="relu"), ms.Dense(2)], input_dim=3, seed=4)
    model.compile(optimizer="adam")
    X, y = make_data()
    model.fit(X, y, epochs=2, batch_size=8, seed=0)
    weights = {"int8/tensor": quant.WeightSpec(8, per_channel=False),
               "fixed": quant.QFormat(8, 5)}.get(kwargs["weights"], kwargs["weights"])
    qmodel = quant.quantize_model(model, weights=weights, activations=kwargs["activations"],
                                  calibration_data=X if kwargs["activations"] else None)
    qmodel.state["data"] = {"data": "diabetes", "seed": 3}
    ms.save(qmodel, tmp_path / "q.npz")
    loaded = ms.load(tmp_path / "q.npz")
    assert type(loaded) is quant.QuantizedModel
    assert loaded.predict(X).tobytes() == qmodel.predict(X).tobytes()
    if kwargs["activations"] is not None:
        assert np.array_equal(loaded.predict_codes(X), qmodel.predict_codes(X))
        assert loaded.input_qparams == qmodel.input_qparams
    for a, b in zip(loaded.layers, qmodel.layers):
        assert a.codes.dtype == b.codes.dtype and a.codes.dtype.kind in "iu"
        assert np.array_equal(a.codes, b.codes)
        assert a.weight_scale.dtype == np.float64
        assert a.weight_scale.tobytes() == b.weight_scale.tobytes()
        assert a.output_qparams == b.output_qparams and a.frac_bits == b.frac_bits
        if b.bias_codes is not None:
            assert a.bias_codes.dtype == np.int32 and np.array_equal(a.bias_codes, b.bias_codes)
    assert msio.layer_table(loaded) == msio.layer_table(qmodel)
    assert loaded.size_report() == qmodel.size_report()
    assert loaded.state == {"data": {"data": "diabetes", "seed": 3}}


def test_quantized_model_with_a_foreign_activation_name_is_refused(tmp_path):
    from minscale import quant
    model, X, y = trained()
    ms.save(quant.quantize_model(model, "int8", None), tmp_path / "q.npz")

    def rename(manifest):
        manifest["layers"][0]["activation"] = "glorot_uniform"  # a function of layers.py
    rewrite(tmp_path / "q.npz", tmp_path / "bad.npz", edit_manifest=rename)
    with pytest.raises(ModelFileError, match="activation 'glorot_uniform'"):
        ms.load(tmp_path / "bad.npz")

    def recode(arrays):
        arrays["layers/0/codes"] = arrays["layers/0/codes"].astype(np.int16)
    rewrite(tmp_path / "q.npz", tmp_path / "bad2.npz", edit_arrays=recode)
    with pytest.raises(ModelFileError, match="does not fit"):
        ms.load(tmp_path / "bad2.npz")


def test_qat_model_round_trips_with_hooks_and_observer_ranges(tmp_path):
    model = make_model()
    X, y = make_data()
    model.fit(X, y, epochs=2, batch_size=4, seed=1, quantization="int8")
    ms.save(model, tmp_path / "qat.npz")
    loaded = ms.load(tmp_path / "qat.npz")
    assert loaded.state["quantization"] == model.state["quantization"]
    for a, b in zip(loaded.layers, model.layers):
        assert (a.output_quantizer.observer.min_val, a.output_quantizer.observer.max_val) == \
            (b.output_quantizer.observer.min_val, b.output_quantizer.observer.max_val)
    # the fake-quantized forward pass is the same, so predictions are identical
    assert loaded.predict(X).tobytes() == model.predict(X).tobytes()




# ------------------------------------------------------------------------------------------
# every provider registers the key it is listed for


def test_every_provider_registers_its_key():
    for kind, module in codecs._PROVIDERS.items():
        importlib.import_module(module)
        codec = codecs.lookup(kind)
        assert codec.encode.__module__ == module, (kind, module)
        assert codec.decode.__module__ == module, (kind, module)
    for name, module in codecs._EXTENSION_PROVIDERS.items():
        importlib.import_module(module)
        assert codecs.lookup_extension(name).decode.__module__ == module, (name, module)


def test_io_imports_no_model_module():
    # a fresh interpreter: importing minscale.io.container and .codecs loads no model code
    import subprocess
    import sys
    code = ("import sys; import minscale.io.container, minscale.io.codecs; "
            "print(sorted(m for m in sys.modules if m.startswith(('minscale.prune', "
            "'minscale.quant', 'minscale.train'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------
# FixedPointModel


def _fixed_model(bits, rounding, use_bias=True):
    X, y = make_data(n=40, d_in=3, d_out=2, seed=5)
    model = ms.Sequential([ms.Dense(6, activation="relu", use_bias=use_bias),
                           ms.Dense(2, use_bias=use_bias)], input_dim=3, seed=2)
    model.compile(optimizer="sgd", learning_rate=0.05)
    model.fit(X, y, epochs=3, batch_size=8, seed=1, verbose=0)
    return quant.quantize_fixed_model(model, f"fixed{bits}", calibration_data=X,
                                      rounding=rounding), X


@pytest.mark.parametrize("bits, rounding, use_bias", [(8, "half_away", True),
                                                      (16, "nearest_even", True),
                                                      (8, "nearest_even", False)])
def test_fixed_point_model_round_trips_exactly(tmp_path, bits, rounding, use_bias):
    model, X = _fixed_model(bits, rounding, use_bias)
    manifest = ms.save(model, tmp_path / "f.npz")
    assert manifest["kind"] == "FixedPointModel" and manifest["bits"] == bits
    loaded = ms.load(tmp_path / "f.npz")
    assert isinstance(loaded, quant.FixedPointModel)
    assert (loaded.bits, loaded.rounding, loaded.input_frac, loaded.input_dim, loaded.dtype) \
        == (model.bits, model.rounding, model.input_frac, model.input_dim, model.dtype)
    for a, b in zip(loaded.layers, model.layers):
        assert (a.frac_w, a.frac_in, a.frac_out, a.shift, a.activation) \
            == (b.frac_w, b.frac_in, b.frac_out, b.shift, b.activation)
        assert a.codes.dtype == b.codes.dtype == np.dtype(f"int{bits}")
        assert np.array_equal(a.codes, b.codes)
        assert (a.bias_codes is None) == (not use_bias)
        if use_bias:
            assert a.bias_codes.dtype == np.int64 and np.array_equal(a.bias_codes, b.bias_codes)
    codes = loaded.predict_codes(X)
    assert codes.dtype == np.dtype(f"int{bits}") and np.array_equal(codes, model.predict_codes(X))
    assert loaded.predict(X).tobytes() == model.predict(X).tobytes()
    # the C export of the loaded model is the same text
    a = export.to_c(model, tmp_path / "a")
    b = export.to_c(loaded, tmp_path / "b")
    for pa, pb in zip(a, b):
        assert open(pa, encoding="utf-8").read() == open(pb, encoding="utf-8").read()
    # the layer table: 3*6 + 6 and 6*2 + 2 parameters; bytes = codes + 4 (fixed8) or 8 B bias
    rows = msio.layer_table(loaded)
    assert [r["n_params"] for r in rows] == ([24, 14] if use_bias else [18, 12])
    bias_bytes = (4 if bits == 8 else 8) if use_bias else 0
    assert [r["nbytes"] for r in rows] == [18 * bits // 8 + 6 * bias_bytes,
                                           12 * bits // 8 + 2 * bias_bytes]
    assert [r["bits"] for r in rows] == [bits, bits]


def _edit_layer(key, value, layer=1):
    def edit(manifest):
        manifest["layers"][layer][key] = value
    return edit


@pytest.mark.parametrize("edit_manifest, edit_arrays, match", [
    (_edit_layer("frac_in", 3), None, r"layer 1 frac_in is 3, the previous output has frac"),
    (_edit_layer("frac_w", 99), None, r"layer 1 frac_w is 99; fixed8 frac bits lie in \[-8, 16\]"),
    (_edit_layer("activation", "tanh"), None, r"layer 1 activation 'tanh'"),
    (lambda m: m.update(bits=12), None, r"bits is 12; a fixed-point model has 8 or 16"),
    (lambda m: m.update(rounding="floor"), None, r"rounding 'floor'"),
    (None, lambda a: a.update({"layers/0/codes": a["layers/0/codes"].astype(np.int16)}),
     r"array 'layers/0/codes' has shape \(3, 6\) and dtype int16"),
    (None, lambda a: a["layers/1/bias"].__setitem__(0, 2**31), r"layer 1 bias codes leave"),
])
def test_malformed_fixed_point_files_are_refused(tmp_path, edit_manifest, edit_arrays, match):
    model, _ = _fixed_model(8, "half_away")
    ms.save(model, tmp_path / "f.npz")
    rewrite(tmp_path / "f.npz", tmp_path / "bad.npz", edit_manifest=edit_manifest,
            edit_arrays=edit_arrays)
    with pytest.raises(ModelFileError, match=r"^'[^']*bad.npz': .*" + match):
        ms.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("edit, words", [
    # int8 codes up to +-127 under a manifest that declares 4-bit weights
    (lambda m, a: m["weights"].update(bits=4), "outside [-7, 7] of 4-bit weights"),
    (lambda m, a: a["qparams/zero_point"].__setitem__(0, 300),
     "qparams/zero_point must lie in [-128, 127]"),
    (lambda m, a: a.__setitem__("layers/0/bias", np.full(6, 2**31, dtype=np.int64)),
     "bias codes leave the int32 range"),
], ids=["codes-beyond-bits", "zero-point", "bias-int32"])
def test_quantized_codes_outside_their_declared_format_are_refused_at_load(tmp_path, edit,
                                                                           words):
    from minscale import quant
    model = ms.Sequential([ms.Dense(6, activation="relu"), ms.Dense(2)], input_dim=3, seed=4)
    X, _ = make_data()
    qmodel = quant.quantize_model(model, weights="int8", activations="int8", calibration_data=X)
    ms.save(qmodel, tmp_path / "q.npz")
    manifest, arrays = container.read_container(tmp_path / "q.npz")
    arrays = {k: v.copy() for k, v in arrays.items()}
    edit(manifest, arrays)
    manifest["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.str}
                          for k, v in arrays.items()}
    manifest["sha256"] = msio.buffers_digest(manifest, arrays)
    write_raw(tmp_path / "bad.npz", manifest, arrays)
    with pytest.raises(msio.ModelFileError, match=re.escape(words)):
        ms.load(tmp_path / "bad.npz")
