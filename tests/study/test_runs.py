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


#: diabetes: every part, one seed; digits: two seeds (the issue's check of the int8 control),
#: every part but the workers (their process start-up is the slowest step of a quick study)
QUICK = {"diabetes": [],
         "digits": ["--seeds", "2", "--part",
                    "learning_rate,pruning,quantization,combined,regularization"]}


@pytest.fixture(scope="module", params=sorted(QUICK))
def quick(request, tmp_path_factory):
    """(data name, result dict, stdout, stderr, csv rows) of `minscale study --quick`."""
    d = tmp_path_factory.mktemp(f"study_{request.param}")
    argv = ["study", "--quick", "--data", request.param, "--json", str(d / "s.json"),
            "--csv", str(d / "s.csv"), *QUICK[request.param]]
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
        assert r["losses"] == base["losses"] and r["accuracy"] == base["accuracy"]
        assert r["nnz"] == base["n_weights"] and r["finetune_epochs"] == 0
        assert r["control"]["losses"] == base["losses"] and r["effect"] == 1.0
    # the baseline is the sweep's run with the lowest mean final VALIDATION loss; its
    # reported loss is the test loss of that run
    runs = result["learning_rate"]["runs"]
    finals = [r["final_loss"] for r in runs]
    assert finals[base["run"]] == min(f for f in finals if f is not None)
    assert base["losses"] == runs[base["run"]]["test_losses"]
    assert base["loss_mean"] == pytest.approx(np.mean(base["losses"]), rel=1e-12)


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
    if "workers" not in result["config"]["parts"]:
        assert "workers" not in result
        return
    w = result["workers"]
    assert w["available"] and [r["workers"] for r in w["rows"]] == [1, 2]
    # sync data-parallel = one process up to float summation order
    assert w["max_loss_difference"] <= 1e-10 * w["rows"][0]["final_loss"]
    assert w["max_param_difference"] <= 1e-10
    assert all(r["seconds_per_epoch"] > 0 for r in w["rows"])
    assert all(r["loop"] in ("compiled", "general") for r in w["rows"])


def test_workers_part_times_the_compiled_loop_on_numba():
    # the part times epochs with fit(..., timing=True), not with a callback, so the models the
    # compiled loops support are timed on them (issue 18: the callback forced the Python loop)
    pytest.importorskip("numba")
    from minscale import kernels

    task = _diabetes(0)
    config = study.StudyConfig(hidden=(8,), worker_epochs=3, workers=(1, 2), seed=1)
    previous = kernels._forced
    try:
        kernels.set_backend("numba")
        w = study.workers_part(task, config, 0.01)
    finally:
        kernels.set_backend(previous)
    assert w["available"] and [r["workers"] for r in w["rows"]] == [1, 2]
    assert [r["loop"] for r in w["rows"]] == ["compiled", "compiled"]
    # one process and 2 workers: the same global batches, equal up to summation order
    assert w["max_loss_difference"] <= 1e-10 * w["rows"][0]["final_loss"]
    assert w["max_param_difference"] <= 1e-10
    for r in w["rows"]:
        assert not r["diverged"] and r["final_loss"] > 0
        assert 0 < r["seconds_per_epoch"] < r["seconds_total"]
        assert r["speedup"] > 0
    assert w["rows"][0]["speedup"] == 1.0


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
    # the summary judges effects against controls, not raw losses
    for x in s["variants"]:
        if x["effect"] is not None and x["part"] != "baseline":
            assert x["effect"] == pytest.approx(x["loss"] / x["control_loss"], rel=1e-12)
    b = [x["nbytes"] for x in s["variants"]]
    eff = [math.nan if x["effect"] is None else x["effect"] for x in s["variants"]]
    assert s["pareto"] == [s["variants"][i]["name"] for i in study.pareto_front(b, eff)]
    assert s["effect_budget"] == pytest.approx(1.05)
    best = s["smallest_within_tolerance"]
    if best is not None:
        assert v[best]["effect"] <= s["effect_budget"] and best in s["pareto"]
        assert v[best]["nbytes"] == min(x["nbytes"] for x in s["variants"]
                                        if x["effect"] is not None
                                        and x["effect"] <= s["effect_budget"])


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
                    "5. Regularization", "Pareto set of (bytes, effect)", "control", "effect",
                    "validation"):
        assert heading in out
    assert ("6. Workers" in out) == ("workers" in result)
    assert err == ""
    if name == "digits":
        assert "accuracy" in out
    else:
        assert "standardized target" in out


def test_quick_study_csv_has_one_row_per_measurement(quick):
    _, result, _, _, rows = quick
    parts = [r["part"] for r in rows]
    assert parts.count("learning_rate") == 9 and parts.count("baseline") == 1
    assert parts.count("pruning") == len(result["pruning"]["rows"]) + 1
    assert parts.count("quantization") == len(result["quantization"]["rows"])
    assert parts.count("regularization") == len(result["regularization"]["rows"])
    assert parts.count("combined") == 1
    assert parts.count("workers") == (2 if "workers" in result else 0)
    first = rows[parts.index("pruning") + 1]
    rec = result["pruning"]["rows"][1]
    assert float(first["loss_mean"]) == rec["loss_mean"]  # repr round-trips
    assert float(first["effect"]) == rec["effect"] and first["verdict"] == rec["verdict"]
    assert first["control"] == rec["control"]["name"]
    assert int(first["seeds"]) == len(result["seeds"])
    if len(result["seeds"]) > 1:
        assert float(first["loss_ci95_low"]) == rec["loss_ci95"][0]
    else:
        assert first["loss_ci95_low"] == ""


def test_text_report_renders_a_result_without_workers(quick):
    _, result, *_ = quick
    r = json.loads(json.dumps(result))
    r["workers"] = {"available": False, "epochs": 1, "rows": [], "max_loss_difference": None,
                    "max_param_difference": None, "note": "not here"}
    assert "not measured: not here" in report.render_text(r)
    del r["workers"], r["regularization"]
    text = report.render_text(r)
    assert "Workers" not in text and "Regularization" not in text


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


def _tiny(**kw):
    return study.StudyConfig(hidden=(8,), epochs=2, finetune_epochs=1, worker_epochs=1,
                             learning_rates=(0.01,), decay_rates=(0.0, 1.0),
                             sparsities=(0.0, 0.9), fixed_point_bits=(8,), workers=(1,),
                             l2_strengths=(1e-3,), decay_strengths=(0.1,), timing_repeats=1,
                             **kw)


def _diabetes(seed):
    return load_task(argparse.Namespace(data="diabetes", target=None, test_size=0.2,
                                        seed=seed), validation_size=0.2)


def test_same_seed_same_numbers():
    task = _diabetes(3)
    config = _tiny(seed=3, seeds=2)
    a = study.run_study(task, config, progress=False)
    b = study.run_study(task, config, progress=False)
    assert _strip_times(a) == _strip_times(b)
    assert a["config"]["seed"] == 3 and a["seeds"] == [3, 4]
    # the seeds differ in initial weights, not in the split
    assert a["baseline"]["losses"][0] != a["baseline"]["losses"][1]


@pytest.mark.slow  # spawned workers start in seconds each on a busy machine
def test_jobs_2_gives_the_numbers_of_jobs_1():
    task = _diabetes(0)
    parts = ("learning_rate", "pruning", "quantization", "combined")
    one = study.run_study(task, _tiny(seeds=2, jobs=1, parts=parts), progress=False)
    two = study.run_study(task, _tiny(seeds=2, jobs=2, parts=parts), progress=False)
    one["config"].pop("jobs")
    two["config"].pop("jobs")
    assert _strip_times(one) == _strip_times(two)


def test_unknown_part_in_the_config_is_refused():
    with pytest.raises(ValueError, match="parts must be among"):
        study.run_study(_diabetes(0), _tiny(parts=("learning_rate", "nope")))
    with pytest.raises(ValueError, match="X_val"):
        task = _diabetes(0)
        del task["X_val"]
        study.run_study(task, _tiny())


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
    (["study", "--seeds", "0"], "--seeds"),
    (["study", "--seeds", "x"], "--seeds"),
    (["study", "--jobs", "0"], "--jobs"),
    (["study", "--depth", "0"], "--depth"),
    (["study", "--seeds", "100000000"], "--seeds must be at most 1000"),
    (["study", "--depth", "100000"], "--depth must be at most 8"),
    (["study", "--jobs", "100000"], "--jobs must be at most"),
    (["study", "--hidden", "0"], "--hidden"),
    (["study", "--hidden", "-4"], "--hidden"),
    (["study", "--hidden", "1.5"], "--hidden"),
    (["study", "--hidden", "8,,8"], "--hidden"),
    (["study", "--part", "nope"], "--part 'nope'"),
    (["study", "--part", "pruning,"], "--part ''"),
    (["study", "--bogus"], "unrecognized"),
]


@pytest.mark.parametrize("argv, word", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, word, tmp_path, monkeypatch):
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    outputs = [] if "--json" in argv else ["--json", "r.json", "--csv", "r.csv"]
    code, out, err = _run_cli(argv + outputs)
    assert code == 2
    assert err.count("\n") == 1 and word in err, err
    assert "Traceback" not in err and out == ""
    # no partial output file
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.csv").exists()


def test_quick_study_warns_of_wide_intervals_only_with_two_seeds(quick):
    name, result, out, *_ = quick
    warning = ("warning: with fewer than 3 seeds the 95% intervals are very wide "
               "(t_0.975,1 = 12.7); use --seeds 3 or more")
    assert (warning in out.splitlines()) == (len(result["seeds"]) == 2)
    assert name != "digits" or len(result["seeds"]) == 2


def test_jobs_above_the_seeds_are_capped_at_the_seeds(monkeypatch):
    seen = {}

    def stop(task, config, progress=None):
        seen["jobs"], seen["seeds"] = config.jobs, config.seeds
        raise ValueError("stopped before training")

    monkeypatch.setattr(study, "run_study", stop)
    code, _, err = _run_cli(["study", "--data", "diabetes", "--seeds", "2", "--jobs", "5"])
    assert code == 2 and "stopped before training" in err
    assert seen == {"jobs": 2, "seeds": 2}


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


# --------------------------------------------------------------------------------------------
# issue 15: controls, splits, seeds, regularization


def test_quick_study_splits_are_train_validation_test(quick):
    name, result, *_ = quick
    sp = result["data"]["splits"]
    total = {"diabetes": 442, "digits": 1797}[name]
    assert sp["train"] + sp["validation"] + sp["test"] == total
    assert sp["test"] == result["data"]["n_test"] and sp["train"] == result["data"]["n_train"]
    # validation = 20 % of the training part, rounded (minscale.data.train_test_split)
    assert abs(sp["validation"] - 0.2 * (sp["train"] + sp["validation"])) <= 1
    # every update of the baseline came from the training rows only
    n_batches = -(-sp["train"] // result["config"]["batch_size"])
    assert result["baseline"]["updates"] == result["config"]["epochs"] * n_batches


def test_quick_study_every_control_got_exactly_the_same_updates(quick):
    _, result, *_ = quick
    cfg = result["config"]
    n_batches = -(-result["data"]["splits"]["train"] // cfg["batch_size"])
    per_finetuning = cfg["finetune_epochs"] * n_batches
    levels = [s for s in cfg["sparsities"] if s > 0]
    pr = result["pruning"]
    for r in pr["rows"]:
        k = levels.index(r["sparsity"]) + 1 if r["sparsity"] > 0 else 0
        assert r["updates"] == r["control"]["updates"] == k * per_finetuning, r["name"]
        assert r["control"]["finetunings"] == k
    g = pr["gradual"]
    assert g["updates"] == g["control"]["updates"] == len(levels) * per_finetuning
    for r in result["quantization"]["rows"]:
        expect = 0 if r["mode"] == "ptq" else per_finetuning
        assert r["updates"] == r["control"]["updates"] == expect, r["name"]
        assert r["control"]["clamped"] == (r["scheme"] == "int8")
    c = result["combined"]
    assert c["control"]["updates"] == c["finetunings"] * per_finetuning
    assert c["finetunings"] == levels.index(cfg["combined_sparsity"]) + 1
    for r in result["regularization"]["rows"]:
        assert r["updates"] == result["baseline"]["updates"]


def test_quick_study_int8_ptq_effect_against_its_clamped_control(quick):
    name, result, out, *_ = quick
    (row,) = [r for r in result["quantization"]["rows"] if r["name"] == "int8 PTQ"]
    assert row["control"]["clamped"] and len(row["seeds"]) == len(result["seeds"])
    assert row["effect"] == pytest.approx(row["loss_mean"] / row["control"]["loss_mean"])
    if name == "digits":
        # issue 15: without the clamped control int8 PTQ "beat" the float baseline 3x
        assert len(row["seeds"]) == 2
        assert 0.8 <= row["effect"] <= 1.25, row["effect"]
        assert row["loss_ci95"][0] < row["loss_mean"] < row["loss_ci95"][1]
        # the unclamped float baseline is much worse than either: the clamp did that
        assert result["baseline"]["loss_mean"] > 1.25 * row["control"]["loss_mean"]
    (line,) = [x for x in out.splitlines() if "int8 affine" in x and "PTQ" in x]
    assert f"{row['effect']:.3g}" in line and "(clamped)" in line


def test_quick_study_regularization_best_strength_has_its_interval(quick):
    _, result, out, *_ = quick
    rg = result["regularization"]
    cfg = result["config"]
    assert [r["strength"] for r in rg["rows"]] == cfg["l2_strengths"] + cfg["decay_strengths"]
    for kind in ("l2", "decoupled"):
        rows = [r for r in rg["rows"] if r["kind"] == kind]
        best = [r for r in rows if r["best"]]
        assert len(best) == 1 and rg["best"][kind] == best[0]["name"]
        # chosen on validation, not on test
        assert best[0]["val_loss_mean"] == min(r["val_loss_mean"] for r in rows)
        b = best[0]
        assert b["control"]["losses"] == result["baseline"]["losses"]
        if len(result["seeds"]) > 1:
            lo, hi = b["loss_ci95"]
            assert lo < b["loss_mean"] < hi
            assert f"best {kind}: strength {b['strength']:g}" in out
            assert f"[{report.format_number(lo)}, {report.format_number(hi)}]" in out


def test_quick_study_records_carry_the_issue_fields(quick):
    _, result, *_ = quick
    seeds = result["seeds"]
    recs = (result["pruning"]["rows"] + [result["pruning"]["gradual"]]
            + result["quantization"]["rows"] + [result["combined"]]
            + result["regularization"]["rows"])
    for r in recs:
        assert r["seeds"] == seeds and len(r["losses"]) == len(seeds)
        assert r["loss_mean"] == pytest.approx(np.mean(r["losses"]), rel=1e-12)
        assert set(r["control"]) >= {"name", "loss_mean"}
        assert r["effect"] == pytest.approx(r["loss_mean"] / r["control"]["loss_mean"])
        assert r["verdict"] == study.stats.verdict(r["losses"], r["control"]["losses"])
        if len(seeds) == 1:
            assert r["loss_ci95"] == [None, None]


def test_parts_that_need_no_baseline_skip_the_learning_rate_sweep(monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    from minscale.commands.study import parse_parts
    from minscale.study import runs
    monkeypatch.setattr(runs, "EXTRA_PARTS", dict(runs.EXTRA_PARTS))
    calls = []

    def own_models(task, config, context):
        calls.append(context)
        return {"n_train": int(task["X_train"].shape[0]), "text": ["Own part", "  done"]}

    runs.register_part("own_models", own_models, needs_baseline=False)
    with pytest.raises(ValueError, match="exists already"):
        runs.register_part("own_models", own_models)
    assert parse_parts("own_models") == ("own_models",)
    assert parse_parts("own_models,pruning") == ("learning_rate", "pruning", "own_models")
    assert "own_models" not in runs.default_parts()
    result = study.run_study(_diabetes(0), _tiny(parts=("own_models",), seeds=2),
                             progress=False)
    assert "baseline" not in result and "learning_rate" not in result
    assert "summary" not in result and result["extra_parts"] == ["own_models"]
    assert calls[0]["baseline"] is None and calls[0]["seeds"] == [0, 1]
    assert result["own_models"]["n_train"] == result["data"]["splits"]["train"]
    jsonschema.validate(json.loads(json.dumps(result)), report.load_schema(),
                        cls=jsonschema.Draft202012Validator)
    text = report.render_text(result)
    assert "Own part\n  done" in text and "Learning rate" not in text
    assert report.csv_rows(result) == []
