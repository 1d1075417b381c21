"""C99 export: every generated file compiles with -std=c99 -pedantic -Wall -Wextra -Werror -O2
and its outputs equal ``QuantizedModel.predict_codes`` bit for bit.

Many models are compiled into one program per test (``run_c``), so the default run costs a few
compiler invocations; the wider sweep and the ARM runs are marked ``crosscheck``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from _models import fixed_models, quantized_models, trained
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale.export import c_size_report, c_sources, to_c
from minscale.export.harness import find_compiler, run_c
from minscale.export.layout import layout_nbytes

pytestmark = pytest.mark.skipif(find_compiler() is None, reason="no C compiler")

ROUNDINGS = ("double", "single")


def _assert_exact(jobs, results):
    for job, res in zip(jobs, results):
        ref = job["model"].predict_codes(job["X"], requantize_rounding=job["rounding"])
        assert res["outputs"].shape == ref.shape
        diff = np.flatnonzero(res["outputs"] != ref)
        assert diff.size == 0, (f"{job['name']}: {diff.size} of {ref.size} codes differ, "
                                f"first at flat index {diff[:5]}")


def _jobs(models, roundings=ROUNDINGS):
    jobs = []
    for i, (model, X) in enumerate(models):
        for rounding in roundings:
            jobs.append({"model": model, "X": X, "inputs": model.quantize_input(X),
                         "rounding": rounding, "name": f"m{i}_{rounding}"})
    return jobs


def _real_models():
    out = {}
    for data in ("diabetes", "digits"):
        for pruned in (0.0, 0.9):
            model, X_tr, X_te, _ = trained(data, pruned)
            for per_channel in (True, False):
                q = ms.quant.quantize_model(model, weights={"bits": 8, "per_channel": per_channel},
                                            activations="int8", calibration_data=X_tr)
                out[(data, pruned, per_channel)] = (q, X_te)
    return out


def test_real_data_held_out_rows_bit_exact():
    # diabetes and digits, dense and 90 %-pruned, per channel and per tensor, both roundings:
    # 16 generated files in one program, every held-out row
    models = _real_models()
    jobs = _jobs(list(models.values()))
    _assert_exact(jobs, run_c(jobs))
    # the pruned digits model really uses a sparse layout
    rep = c_size_report(models[("digits", 0.9, True)][0])
    assert set(rep["layouts"]) & {"bitmask", "csr"}


@settings(max_examples=3, deadline=None)
@given(st.lists(quantized_models(activations=("int8", "uint8")), min_size=8, max_size=8))
def test_drawn_models_bit_exact(models):
    jobs = _jobs(models)
    _assert_exact(jobs, run_c(jobs))


@pytest.mark.crosscheck
@settings(max_examples=25, deadline=None)
@given(st.lists(quantized_models(activations=("int8", "uint8")), min_size=12, max_size=12))
def test_drawn_models_bit_exact_sweep(models):
    jobs = _jobs(models)
    _assert_exact(jobs, run_c(jobs))


def _fixed_jobs(models):
    return [{"model": q, "X": X, "inputs": q.quantize_input(X), "name": f"fx{i}"}
            for i, (q, X) in enumerate(models)]


def _assert_fixed_exact(jobs, results):
    for job, res in zip(jobs, results):
        np.testing.assert_array_equal(res["outputs"], job["model"].predict_codes(job["X"]))


def test_fixed_point_real_data_bit_exact():
    from minscale.quant import quantize_fixed_model
    models = []
    for data in ("diabetes", "digits"):
        for pruned in (0.0, 0.9):
            model, X_tr, X_te, _ = trained(data, pruned)
            for bits in ("fixed8", "fixed16"):
                for rounding in ("half_away", "nearest_even"):
                    q = quantize_fixed_model(model, bits, bits, X_tr, rounding=rounding)
                    models.append((q, X_te))
    jobs = _fixed_jobs(models)
    _assert_fixed_exact(jobs, run_c(jobs))


@settings(max_examples=2, deadline=None)
@given(st.lists(fixed_models(), min_size=8, max_size=8))
def test_fixed_point_drawn_models_bit_exact(models):
    jobs = _fixed_jobs(models)
    _assert_fixed_exact(jobs, run_c(jobs))


@pytest.mark.crosscheck
@settings(max_examples=20, deadline=None)
@given(st.lists(fixed_models(), min_size=12, max_size=12))
def test_fixed_point_drawn_models_bit_exact_sweep(models):
    jobs = _fixed_jobs(models)
    _assert_fixed_exact(jobs, run_c(jobs))


def test_every_layout_bit_exact():
    # the same codes stored dense, as a bitmask and as CSR (forced by the sparsity) agree
    rng = np.random.default_rng(3)
    model, X_tr, X_te, _ = trained("digits")
    models = []
    for sparsity in (0.0, 0.6, 0.97):
        q = ms.quant.quantize_model(model, calibration_data=X_tr)
        for layer in q.layers:
            layer.codes[rng.random(layer.codes.shape) < sparsity] = 0
        models.append((q, X_te[:40]))
    layouts = [c_size_report(q)["layouts"] for q, _ in models]
    assert layouts[0] == ["dense", "dense"]
    assert "bitmask" in layouts[1] and "csr" in layouts[2]
    jobs = _jobs(models)
    _assert_exact(jobs, run_c(jobs))


def test_float_export_matches_numpy_float32():
    # tolerance: float32 sums in another order and libm's tanhf/expf against NumPy's; with
    # widths <= 64 the difference stays below 1e-5 absolute + 1e-5 relative
    rng = np.random.default_rng(0)
    jobs, refs = [], []
    for i, acts in enumerate([("relu", "tanh"), ("sigmoid", "leaky_relu"), ("identity",)]):
        layers = [ms.Dense(int(rng.integers(1, 40)), activation=a) for a in acts]
        layers.append(ms.Dense(3))
        m = ms.Sequential(layers, input_dim=7, seed=i, dtype="float32")
        w = m.get_weights()
        m.set_weights([rng.normal(size=a.shape) for a in w])
        if i == 1:
            ms.prune.prune(m, 0.9)
        X = rng.normal(size=(30, 7)).astype(np.float32)
        jobs.append({"model": m, "inputs": X, "name": f"f{i}"})
        refs.append(m.predict(X))
    model, X_tr, X_te, _ = trained("digits", 0.9)
    jobs.append({"model": model, "inputs": X_te.astype(np.float32), "name": "digits"})
    m32 = ms.Sequential([ms.Dense(32, activation="relu"), ms.Dense(10)], input_dim=64,
                        dtype="float32")
    m32.set_weights(model.get_weights())
    refs.append(m32.predict(X_te.astype(np.float32)))
    for res, ref in zip(run_c(jobs), refs):
        np.testing.assert_allclose(res["outputs"], ref, rtol=1e-5, atol=1e-5)


def test_size_report_counts_the_generated_arrays():
    model, X_tr, X_te, _ = trained("digits")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    rep = c_size_report(q)
    # 64 x 32 and 32 x 10 int8 weights; bias int32; M0 int32 + shift int8 per channel
    assert rep["weights"] == 64 * 32 + 32 * 10
    assert rep["index"] == 0
    assert rep["biases"] == 4 * (32 + 10)
    assert rep["scales"] == 5 * (32 + 10)
    assert rep["table"] == 2 * 60
    assert rep["ram"] == 32
    assert rep["flash"] == sum(rep[k] for k in ("weights", "index", "biases", "scales",
                                                "table"))
    qt = ms.quant.quantize_model(model, weights={"bits": 8, "per_channel": False},
                                 calibration_data=X_tr)
    assert c_size_report(qt)["scales"] == 5 * 2
    pruned, X_tr, _, _ = trained("digits", 0.9)
    qp = ms.quant.quantize_model(pruned, calibration_data=X_tr)
    rp = c_size_report(qp)
    assert rp["weights"] + rp["index"] < rep["weights"] / 2
    nnz = int(np.count_nonzero(qp.layers[0].codes))
    assert rp["layouts"][0] == "csr" or rp["layouts"][0] == "bitmask"
    ib = rp["index_bytes"]
    expected = min(layout_nbytes(k, (32, 64), nnz, 1, ib) for k in ("dense", "bitmask", "csr"))
    first = layout_nbytes(rp["layouts"][0], (32, 64), nnz, 1, ib)
    assert first == expected


def test_header_macros_and_prototype():
    model, X_tr, _, _ = trained("diabetes")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    files = c_sources(q, name="dia")
    h = files["dia.h"]
    assert "#define DIA_INPUT_SIZE 10" in h
    assert "#define DIA_OUTPUT_SIZE 1" in h
    assert "#define DIA_SCRATCH_SIZE 32" in h
    assert "void dia_predict(const int8_t *input_codes, int8_t *output_codes);" in h
    c = files["dia.c"]
    assert "malloc" not in c and "math.h" not in c and "static int8_t dia_scratch[" in c
    f = c_sources(model, name="dia")["dia.h"]
    assert "void dia_predict(const float *x, float *y);" in f


@pytest.mark.parametrize("name", ["1abc", "a-b", "int", "", "_x", "a" * 32, "é"])
def test_bad_names_refused(tmp_path, name):
    model, X_tr, _, _ = trained("diabetes")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    with pytest.raises(ValueError, match="C identifier"):
        to_c(q, tmp_path / "out", name=name)
    assert not (tmp_path / "out").exists()


def test_bad_models_and_directories_refused(tmp_path):
    model, X_tr, _, _ = trained("diabetes")
    with pytest.raises(ValueError, match="integer export needs a QuantizedModel"):
        to_c(model, tmp_path / "a", kind="integer")
    weights_only = ms.quant.quantize_model(model, activations=None)
    with pytest.raises(ValueError, match="quantized activations"):
        to_c(weights_only, tmp_path / "b")
    tanh = ms.Sequential([ms.Dense(4, activation="tanh"), ms.Dense(1)], input_dim=10)
    qt = ms.quant.quantize_model(tanh, calibration_data=X_tr)
    with pytest.raises(ValueError, match="activation 'tanh'"):
        to_c(qt, tmp_path / "c")
    afile = tmp_path / "file"
    afile.write_text("x")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    with pytest.raises(ValueError, match="not a directory"):
        to_c(q, afile)
    with pytest.raises(ValueError, match="rounding"):
        to_c(q, tmp_path / "d", rounding="half")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert afile.read_text() == "x"


def test_to_c_writes_both_files(tmp_path):
    model, X_tr, _, _ = trained("diabetes")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    # only the last folder is created: its parent must exist
    with pytest.raises(FileNotFoundError, match="only the last folder"):
        to_c(q, tmp_path / "new" / "dir", name="net")
    assert os.listdir(tmp_path) == []
    old = os.umask(0o077)
    try:
        paths = to_c(q, tmp_path / "new", name="net")
    finally:
        os.umask(old)
    assert [os.path.basename(p) for p in paths] == ["net.h", "net.c"]
    assert sorted(os.listdir(tmp_path / "new")) == ["net.c", "net.h"]
    # written by minscale.io.atomic_write: 0644 like every other output, whatever the umask
    assert all(os.stat(p).st_mode & 0o777 == 0o644 for p in paths)


def test_to_c_all_or_nothing(tmp_path, monkeypatch):
    from minscale.export import c99
    model, X_tr, _, _ = trained("diabetes")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    real = c99.atomic_write

    def failing(path, writer):
        if str(path).endswith(".c"):
            raise OSError(28, "No space left on device")
        return real(path, writer)

    monkeypatch.setattr(c99, "atomic_write", failing)
    with pytest.raises(OSError, match="No space"):
        to_c(q, tmp_path / "new", name="net")
    assert os.listdir(tmp_path) == []  # the header removed, the folder it made removed
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "net.h").write_text("previous")
    with pytest.raises(OSError, match="No space"):
        to_c(q, tmp_path / "old", name="net")
    assert os.listdir(tmp_path / "old") == ["net.h"]
    assert (tmp_path / "old" / "net.h").read_text() == "previous"


@pytest.mark.crosscheck
@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 2**31 - 1)), min_size=6,
                max_size=6))
def test_float_export_drawn_models(specs):
    # depth 1..4, widths 1..64, every float activation, pruned or dense
    jobs, refs = [], []
    for i, (depth, seed) in enumerate(specs):
        rng = np.random.default_rng(seed)
        acts = rng.choice(["identity", "relu", "leaky_relu", "tanh", "sigmoid"], size=depth)
        widths = rng.integers(1, 65, size=depth + 1)
        m = ms.Sequential([ms.Dense(int(w), activation=str(a))
                           for w, a in zip(widths[1:], acts)],
                          input_dim=int(widths[0]), seed=i, dtype="float32")
        m.set_weights([rng.normal(size=a.shape) / np.sqrt(a.shape[0]) for a in m.get_weights()])
        if seed % 2:
            ms.prune.prune(m, 0.9)
        X = rng.normal(size=(5, int(widths[0]))).astype(np.float32)
        jobs.append({"model": m, "inputs": X, "name": f"f{i}"})
        refs.append(m.predict(X))
    for res, ref in zip(run_c(jobs), refs):
        np.testing.assert_allclose(res["outputs"], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.crosscheck
@settings(max_examples=3, deadline=None)
@given(st.lists(quantized_models(activations=("int8", "uint8")), min_size=8, max_size=8),
       st.lists(fixed_models(), min_size=8, max_size=8))
def test_no_undefined_behaviour_under_ubsan(ints, fixed):
    # the generated arithmetic (shifts of negative values, 64-bit products, conversions) is
    # defined C99: gcc's undefined-behaviour sanitizer aborts the program on any violation
    from minscale.export.harness import STRICT_FLAGS
    flags = (*STRICT_FLAGS, "-fsanitize=undefined", "-fno-sanitize-recover=all")
    jobs = _jobs(ints)
    fjobs = _fixed_jobs(fixed)
    try:
        results = run_c(jobs + fjobs, flags=flags)
    except RuntimeError as exc:
        if "compilation failed" in str(exc) and "sanitize" in str(exc) and "ubsan" in str(exc):
            pytest.skip("the compiler has no undefined-behaviour sanitizer here")
        raise
    _assert_exact(jobs, results[:len(jobs)])
    _assert_fixed_exact(fjobs, results[len(jobs):])
