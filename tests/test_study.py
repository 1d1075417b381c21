"""The scaling study: its definitions (loss target, Pareto set, ...), quick studies on the
shipped data sets checked against the JSON schema and the issue's claims, the report
renderers, and the command line's bad input."""
import argparse
import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale import report, study
from minscale.cli import main
from minscale.commands._common import load_task

# --------------------------------------------------------------------------------------------
# pure definitions: hand-worked values


def test_loss_target_is_factor_times_best_final_loss():
    # 1.1 * min(0.5, 0.4) = 0.44; the diverged run (None) and inf are ignored
    assert study.loss_target([0.5, None, 0.4, math.inf]) == pytest.approx(0.44, abs=1e-15)
    assert study.loss_target([2.0], factor=1.5) == 3.0


def test_loss_target_rejects_no_finite_loss_and_bad_factor():
    with pytest.raises(ValueError, match="diverged"):
        study.loss_target([None, math.nan])
    with pytest.raises(ValueError, match="factor"):
        study.loss_target([1.0], factor=0.9)


def test_first_reached_hand_worked():
    assert study.first_reached([0.9, 0.5, 0.3, 0.6], 0.5) == 1  # <= counts
    assert study.first_reached([0.9, 0.8], 0.5) is None
    assert study.first_reached([math.nan, 0.4], 0.5) == 1  # NaN never counts
    with pytest.raises(ValueError, match="target"):
        study.first_reached([1.0], math.nan)


def test_pareto_front_hand_worked():
    # (100, .1) (50, .2) (50, .3) (10, .5) (60, .25): (50, .3) is beaten by (50, .2), and
    # (60, .25) by (50, .2); the front by increasing bytes is 3, 1, 0
    assert study.pareto_front([100, 50, 50, 10, 60], [0.1, 0.2, 0.3, 0.5, 0.25]) == [3, 1, 0]
    # identical points: the lowest index stays; NaN never on the front
    assert study.pareto_front([5, 5, 1], [0.2, 0.2, math.nan]) == [0]
    with pytest.raises(ValueError, match="same length"):
        study.pareto_front([1, 2], [0.1])


def test_smallest_within_hand_worked():
    # budget 1.05 * 0.50 = 0.525: 0.52 at 40 bytes qualifies, 0.60 at 10 does not
    assert study.smallest_within([100, 40, 10], [0.50, 0.52, 0.60], 0.50) == 1
    # a tie on bytes goes to the lower loss
    assert study.smallest_within([40, 40], [0.51, 0.50], 0.5) == 1
    assert study.smallest_within([10], [0.9], 0.5) is None
    with pytest.raises(ValueError, match="tolerance"):
        study.smallest_within([1], [0.1], 0.1, tolerance=-1)


def test_fixed_point_weights_hand_worked():
    # 4 bits: codes -8..7. frac_bits 3 fits (0.3 * 8 = 2.4 <= 7, -0.9 * 8 = -7.2 >= -8),
    # 4 does not (-0.9 * 16 = -14.4 < -8); codes round(2.4) = 2 -> 0.25 and
    # round(-7.2) = -7 -> -0.875
    w_hat, f = study.fixed_point_weights(np.array([0.3, -0.9]), 4)
    assert f == 3 and w_hat.tolist() == [0.25, -0.875]


def test_gradual_schedule_ends_inside_the_budget_at_the_final_sparsity():
    # 120 updates, 0.75 * 120 = 90 -> frequency 9, end_step 90
    s = study.gradual_schedule(120, 0.95)
    assert (s.frequency, s.end_step, s.begin_step) == (9, 90, 0)
    assert s(90) == 0.95 and s.should_prune(90) and s(0) == 0.0
    # tiny budgets still end strictly before the last update
    s = study.gradual_schedule(2, 0.5)
    assert s.end_step < 2 and s.should_prune(s.end_step) and s(s.end_step) == 0.5


def test_median_seconds_counts_calls():
    calls = []
    t = study.median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t >= 0
    with pytest.raises(TypeError, match="fn"):
        study.median_seconds(3)


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="sparsities"):
        study.StudyConfig(sparsities=(0.5, 0.2))
    with pytest.raises(ValueError, match="epochs"):
        study.StudyConfig(epochs=0)
    with pytest.raises(ValueError, match="prune_methods"):
        study.StudyConfig(prune_methods=("nope",))
    with pytest.raises(ValueError, match="fixed_point_bits"):
        study.StudyConfig(fixed_point_bits=(64,))
    assert study.StudyConfig.preset(quick=True).epochs == 10
    assert study.StudyConfig.preset(quick=True, epochs=3).epochs == 3


# --------------------------------------------------------------------------------------------
# pure definitions: properties

finite = st.floats(0, 10, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), finite), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    b = [p[0] for p in points]
    loss = [p[1] for p in points]
    front = set(study.pareto_front(b, loss))
    for i in range(len(points)):
        dominated = any(b[j] <= b[i] and loss[j] <= loss[i] and (b[j] < b[i] or loss[j] < loss[i])
                        for j in range(len(points)))
        duplicate_earlier = any(b[j] == b[i] and loss[j] == loss[i] for j in range(i))
        assert (i in front) == (not dominated and not duplicate_earlier)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), finite), min_size=1, max_size=30), finite,
       st.floats(0, 1))
def test_smallest_within_is_on_the_front_and_minimal(points, ref, tol):
    b = [p[0] for p in points]
    loss = [p[1] for p in points]
    i = study.smallest_within(b, loss, ref, tol)
    ok = [j for j in range(len(points)) if loss[j] <= (1 + tol) * ref]
    if not ok:
        assert i is None
    else:
        assert i in ok and b[i] == min(b[j] for j in ok)
        assert i in study.pareto_front(b, loss)


# --------------------------------------------------------------------------------------------
# report formatting


def test_format_table_hand_worked():
    text = report.format_table(["a", "bb"], [["x", "1"], ["yy", "22"]], indent=0)
    assert text.splitlines() == ["a   bb", "--  --", "x    1", "yy  22"]
    with pytest.raises(ValueError, match="rows\\[0\\]"):
        report.format_table(["a"], [["x", "y"]])


def test_number_bytes_and_seconds_formats():
    assert report.format_number(0.123456) == "0.1235"
    assert report.format_bytes(5764) == "5,764"
    assert (report.format_seconds(0.000123), report.format_seconds(0.0456),
            report.format_seconds(2.5)) == ("123 us", "45.6 ms", "2.5 s")
    assert report.format_seconds(None) == report.format_number(None) == "-"


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


def test_schema_rejects_what_it_should():
    jsonschema = pytest.importorskip("jsonschema")
    schema = report.load_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1}, schema)  # required parts missing


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


def test_sparse_codes_nbytes_hand_worked():
    # 4 x 2 codes, 2 non-zero: bitmask ceil(8 / 8) + 2 = 3; CSR 2 + 2 * 4 + 5 * 4 = 30
    codes = np.array([[0, 3], [0, 0], [-1, 0], [0, 0]], dtype=np.int8)
    assert study.sparse_codes_nbytes(codes) == 3
    # a dense 1 x 1: bitmask 1 + 1 = 2, CSR 1 + 4 + 8 = 13
    assert study.sparse_codes_nbytes(np.array([[5]], dtype=np.int8)) == 2
    # 4-bit codes pack two per byte: 16 x 16 all non-zero -> 32 + 128 = 160
    assert study.sparse_codes_nbytes(np.ones((16, 16), np.int8), bits=4) == 160
    with pytest.raises(ValueError, match="codes"):
        study.sparse_codes_nbytes(np.ones(3))
