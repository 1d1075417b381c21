"""The study's runs (minscale/study/runs.py): quick studies on the shipped data sets checked
against the JSON schema and the issue's claims, determinism, the text report and plot of a
result, and the command line's bad input."""
import argparse
import csv
import json
import math

import numpy as np
import pytest

from minscale import report, study
from minscale.cli import main
from minscale.commands._common import load_task


def test_median_seconds_counts_calls():
    calls = []
    t = study.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t >= 0
    with pytest.raises(TypeError, match="fn"):
        study.median_seconds(3)



# --------------------------------------------------------------------------------------------
# quick studies on both shipped data sets, through the command line


def _run_cli(argv):
    """main(argv) with stdout and stderr captured (stderr is not a terminal: no bar)."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", params=["diabetes", "digits"])
def quick(request, tmp_path_factory):
    """(data name, result dict, stdout, stderr, csv rows) of `minscale study --quick`."""
    d = tmp_path_factory.mktemp(f"study_{request.param}")
    argv = ["study", "--quick", "--data", request.param, "--json", str(d / "s.json"),
            "--csv", str(d / "s.csv")]
    code, out, err = _run_cli(argv)
    assert code == 0, err
    result = json.loads((d / "s.json").read_text())
    with open(d / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return request.param, result, out, err, rows


def test_quick_study_json_validates_against_the_shipped_schema(quick):
    jsonschema = pytest.importorskip("jsonschema")
    _, result, *_ = quick
    jsonschema.Draft202012Validator.check_schema(report.load_schema())
    jsonschema.validate(result, report.load_schema(), cls=jsonschema.Draft202012Validator)
    assert result["config"]["quick"] is True



def test_quick_study_loss_at_sparsity_zero_equals_the_baseline(quick):
    _, result, *_ = quick
    base = result["baseline"]
    zero = [r for r in result["pruning"]["rows"] if r["sparsity"] == 0]
    assert len(zero) == len(result["config"]["prune_methods"])
    for r in zero:
        assert r["loss"] == base["loss"] and r["accuracy"] == base["accuracy"]
        assert r["nnz"] == base["n_weights"] and r["finetune_epochs"] == 0
    # the baseline is the sweep's run with the lowest final held-out loss
    finals = [r["final_loss"] for r in result["learning_rate"]["runs"]]
    assert base["loss"] == min(f for f in finals if f is not None)
    assert finals[base["run"]] == base["loss"]


def test_quick_study_bytes_fall_with_sparsity_and_with_bits(quick):
    _, result, *_ = quick
    for method in result["config"]["prune_methods"]:
        rows = [r for r in result["pruning"]["rows"] if r["method"] == method]
        csr = [r["nbytes_csr"] for r in rows]
        nnz = [r["nnz"] for r in rows]
        assert all(a > b for a, b in zip(csr, csr[1:])), (method, csr)
        assert all(a > b for a, b in zip(nnz, nnz[1:])), (method, nnz)
        stored = [r["nbytes"] for r in rows]
        assert all(a >= b for a, b in zip(stored, stored[1:]))
        # the rules hit the asked sparsity exactly (each layer rounds its own count)
        for r in rows:
            assert r["achieved_sparsity"] == pytest.approx(r["sparsity"], abs=0.01)
    for mode in ("ptq", "qat"):
        fixed = sorted((r["bits"], r["nbytes"]) for r in result["quantization"]["rows"]
                       if r["scheme"] == "fixed" and r["mode"] == mode)
        assert [b for b, _ in fixed] == [4, 6, 8, 16]
        assert all(a < b for (_, a), (_, b) in zip(fixed, fixed[1:])), fixed
    for r in result["quantization"]["rows"]:
        assert r["nbytes"] < result["baseline"]["nbytes"]
        assert r["compression_ratio"] == pytest.approx(result["baseline"]["nbytes"] / r["nbytes"])
    assert result["combined"]["nbytes"] < min(
        r["nbytes"] for r in result["quantization"]["rows"] if r["scheme"] == "int8")


def test_quick_study_magnitude_beats_random_at_90_percent(quick):
    _, result, *_ = quick
    at = {r["method"]: r for r in result["pruning"]["rows"] if r["sparsity"] == 0.9}
    assert at["magnitude"]["loss"] <= at["random"]["loss"]


def test_quick_study_worker_losses_agree(quick):
    _, result, *_ = quick
    w = result["workers"]
    assert w["available"] and [r["workers"] for r in w["rows"]] == [1, 2]
    # sync data-parallel = one process up to float summation order
    assert w["max_loss_difference"] <= 1e-10 * w["rows"][0]["final_loss"]
    assert w["max_param_difference"] <= 1e-10
    assert all(r["seconds_per_epoch"] > 0 for r in w["rows"])


def test_quick_study_byte_counts_by_hand(quick):
    name, result, *_ = quick
    d, h = result["data"], result["config"]["hidden"]
    sizes = [d["n_features"], *h, d["n_outputs"]]
    layers = list(zip(sizes[:-1], sizes[1:]))
    n_params = sum(i * o + o for i, o in layers)
    assert result["baseline"]["n_params"] == n_params
    assert result["baseline"]["nbytes"] == 4 * n_params  # float32
    if name == "diabetes":
        # 10-32-1: (10*32 + 32 + 32*1 + 1) * 4 = 1540
        assert result["baseline"]["nbytes"] == 1540
    # dense CSR at sparsity 0 (no weight is exactly 0): per layer nnz * (4 + 4) + (rows+1) * 4
    # + bias 4 * d_out
    zero = result["pruning"]["rows"][0]
    assert zero["nbytes_csr"] == sum(8 * i * o + 4 * (i + 1) + 4 * o for i, o in layers)
    # fixed point, weights only: ceil(n * bits / 8) codes + one float32 scale + float32 biases
    for r in result["quantization"]["rows"]:
        if r["scheme"] == "fixed":
            assert r["nbytes"] == sum(-(-i * o * r["bits"] // 8) + 4 + 4 * o for i, o in layers)
            assert len(r["frac_bits"]) == len(layers)


def test_quick_study_summary_is_consistent(quick):
    _, result, *_ = quick
    s = result["summary"]
    v = {x["name"]: x for x in s["variants"]}
    assert len(v) == len(s["variants"])  # names are unique
    b = [x["nbytes"] for x in s["variants"]]
    loss = [math.nan if x["loss"] is None else x["loss"] for x in s["variants"]]
    assert s["pareto"] == [s["variants"][i]["name"] for i in study.pareto_front(b, loss)]
    assert s["loss_budget"] == pytest.approx(1.05 * result["baseline"]["loss"])
    best = s["smallest_within_tolerance"]
    if best is not None:
        assert v[best]["loss"] <= s["loss_budget"] and best in s["pareto"]
        assert v[best]["nbytes"] == min(x["nbytes"] for x in s["variants"]
                                        if x["loss"] is not None and x["loss"] <= s["loss_budget"])


def test_quick_study_learning_rate_target(quick):
    _, result, *_ = quick
    lr = result["learning_rate"]
    runs = lr["runs"]
    assert len(runs) == 9
    assert lr["target"] == pytest.approx(1.1 * min(r["final_loss"] for r in runs
                                                   if r["final_loss"] is not None))
    for r in runs:
        assert len(r["val_loss"]) == result["config"]["epochs"]
        if r["target_epoch"] is not None:
            e = r["target_epoch"]
            assert r["val_loss"][e - 1] <= lr["target"]
            assert all(x > lr["target"] for x in r["val_loss"][:e - 1])
            assert r["target_update"] == e * lr["decay_steps"]
        else:
            assert all(x > lr["target"] for x in r["val_loss"])
        # inverse-time decay per epoch of decay_steps updates: the last update is T - 1
        T = result["config"]["epochs"] * lr["decay_steps"]
        expect = r["initial_learning_rate"] / (1 + r["decay_rate"] * (T - 1) / lr["decay_steps"])
        assert r["final_learning_rate"] == pytest.approx(expect, rel=1e-12)


def test_quick_study_prints_every_part_and_no_bar_off_a_terminal(quick):
    name, result, out, err, _ = quick
    for heading in ("1. Learning rate", "2. Pruning", "3. Quantization", "4. Combined",
                    "5. Workers", "Pareto set", "Smallest model within 5%"):
        assert heading in out
    assert err == ""
    if name == "digits":
        assert "accuracy" in out
    else:
        assert "standardized target" in out


def test_quick_study_csv_has_one_row_per_measurement(quick):
    _, result, _, _, rows = quick
    parts = [r["part"] for r in rows]
    assert parts.count("learning_rate") == 9
    assert parts.count("pruning") == len(result["pruning"]["rows"]) + 1
    assert parts.count("quantization") == len(result["quantization"]["rows"])
    assert parts.count("combined") == 1 and parts.count("workers") == 2
    first = rows[parts.index("pruning")]
    assert float(first["loss"]) == result["pruning"]["rows"][0]["loss"]  # repr round-trips


def test_text_report_renders_a_result_without_workers(quick):
    _, result, *_ = quick
    r = json.loads(json.dumps(result))
    r["workers"] = {"available": False, "epochs": 1, "rows": [], "max_loss_difference": None,
                    "max_param_difference": None, "note": "not here"}
    assert "not measured: not here" in report.render_text(r)


def test_plot_writes_a_png(quick, tmp_path):
    pytest.importorskip("matplotlib")
    _, result, *_ = quick
    path = tmp_path / "s.png"
    report.plot(result, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


# --------------------------------------------------------------------------------------------
# determinism


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if not (k.startswith("seconds") or k.startswith("predict_seconds")
                        or k == "speedup")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_same_seed_same_numbers():
    task = load_task(argparse.Namespace(data="diabetes", target=None, test_size=0.2, seed=3))
    config = study.StudyConfig(hidden=(8,), epochs=2, finetune_epochs=1, worker_epochs=1,
                               learning_rates=(0.01,), decay_rates=(0.0, 1.0),
                               sparsities=(0.0, 0.9), fixed_point_bits=(8,), workers=(1,),
                               timing_repeats=1, seed=3)
    a = study.run_study(task, config, progress=False)
    b = study.run_study(task, config, progress=False)
    assert _strip_times(a) == _strip_times(b)
    assert a["config"]["seed"] == 3


# --------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2, before any training


def _bad_files(tmp_path):
    (tmp_path / "text.csv").write_text("a,b,y\n1,2,3\nx,5,6\n")
    (tmp_path / "empty.csv").write_text("a,b,y\n")
    (tmp_path / "blank.csv").write_text("")
    (tmp_path / "ok.csv").write_text("a,b,y\n" + "\n".join(f"{i},{i % 3},{i}" for i in range(30)))


BAD = [
    (["study", "--data", "nope"], "diabetes"),
    (["study", "--data", "missing.csv"], "missing.csv"),
    (["study", "--data", "diabetes", "--target", "NOPE"], "NOPE"),
    (["study", "--data", "ok.csv", "--target", "zz"], "zz"),
    (["study", "--data", "digits", "--target", "x"], "digits"),
    (["study", "--data", "text.csv"], "'x'"),
    (["study", "--data", "empty.csv"], "no data rows"),
    (["study", "--data", "blank.csv"], "empty"),
    (["study", "--quick", "--epochs", "3"], "conflicts with --quick"),
    (["study", "--json", "same.out", "--csv", "same.out"], "both name"),
    (["study", "--plot", "no/such/dir/p.png"], "does not exist"),
    (["study", "--epochs", "0"], "--epochs"),
    (["study", "--batch-size", "0"], "--batch-size"),
    (["study", "--hidden", "3,x"], "--hidden"),
    (["study", "--seed", "-1"], "seed"),
    (["study", "--bogus"], "unrecognized"),
]


@pytest.mark.parametrize("argv, word", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, word, tmp_path, monkeypatch):
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(argv)
    assert code == 2
    assert err.count("\n") == 1 and word in err, err
    assert "Traceback" not in err and out == ""


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(["study", "--quick", "--plot", "p.png"])
    assert code == 2 and err.count("\n") == 1 and "matplotlib" in err and out == ""


def test_quick_study_stored_bytes_are_the_smallest_format(quick):
    _, result, *_ = quick
    d, h = result["data"], result["config"]["hidden"]
    sizes = [d["n_features"], *h, d["n_outputs"]]
    layers = list(zip(sizes[:-1], sizes[1:]))
    for r in result["pruning"]["rows"] + [result["pruning"]["gradual"]]:
        assert r["nbytes"] == min(r["nbytes_dense"], r["nbytes_csr"], r["nbytes_bitmask"])
        assert r["nbytes_dense"] == result["baseline"]["nbytes"]
    # bitmask at sparsity 0: ceil(n / 8) mask bytes + 4 bytes per weight + 4 per bias
    zero = result["pruning"]["rows"][0]
    assert zero["nbytes_bitmask"] == sum(-(-i * o // 8) + 4 * i * o + 4 * o for i, o in layers)


# --------------------------------------------------------------------------------------------
# the study's model, and the layers it imports


def test_build_model_lives_in_the_study_and_the_train_command_re_exports_it():
    from minscale.commands import train as train_command
    from minscale.study import runs
    assert train_command.build_model is runs.build_model
    model = runs.build_model(3, 2, [4], activation="tanh", seed=1, dtype="float32")
    assert [(layer.units, layer.activation) for layer in model.layers] == [(4, "tanh"),
                                                                          (2, "identity")]
    assert model.count_params() == 3 * 4 + 4 + 4 * 2 + 2 and model.params.dtype == np.float32
    same = runs.build_model(3, 2, [4], activation="tanh", seed=1, dtype="float32")
    assert np.array_equal(model.params, same.params)


def test_new_model_is_build_model_with_the_config_and_the_data_dtype():
    from minscale.study import runs
    task = {"X_train": np.zeros((5, 3), np.float32), "y_train": np.zeros((5, 2), np.float32)}
    config = study.StudyConfig(hidden=(6, 4), seed=7)
    model = runs.new_model(task, config)
    ref = runs.build_model(3, 2, [6, 4], "relu", 7, "float32")
    assert [layer.units for layer in model.layers] == [6, 4, 2]
    assert np.array_equal(model.params, ref.params)


def test_the_study_imports_nothing_of_the_command_layer():
    # the study sits below the command line (docs/architecture.md): it may not import it,
    # not even inside a function
    import ast
    from pathlib import Path
    folder = Path(study.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if (node.level == 2 and module.split(".")[0] == "commands") \
                        or module.startswith("minscale.commands") \
                        or (node.level == 2 and not module
                            and any(a.name == "commands" for a in node.names)):
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []
