"""The study's model-parallel part on a slice of digits: every form, the loss check, memory
per process against hand-worked byte counts, the study and CLI entries, bad input."""
import argparse
import contextlib
import io
import json

import pytest

import minscale as ms
from minscale import report, study
from minscale.cli import main
from minscale.commands._common import load_task
from minscale.study.model_parallel import (
    MODEL_PARALLEL_FORMS,
    model_parallel_memory,
    model_parallel_part,
)
from minscale.study.runs import build_model, default_parts, needs_baseline, part_names

pytestmark = pytest.mark.exactness


def _digits(n_train=192, n_test=120):
    task = load_task(argparse.Namespace(data="digits", target=None, test_size=0.2, seed=0),
                     validation_size=0.2)
    for key, n in (("train", n_train), ("val", n_test), ("test", n_test)):
        task[f"X_{key}"] = task[f"X_{key}"][:n]
        task[f"y_{key}"] = task[f"y_{key}"][:n]
        if key != "train":
            task[f"labels_{key}"] = task[f"labels_{key}"][:n]
    return task


@pytest.fixture(scope="module")
def result():
    """The part through run_study (as ``--part model_parallel``), numpy kernels: the workers
    then start without loading numba."""
    previous = ms.kernels._forced
    ms.set_backend("numpy")
    try:
        config = study.StudyConfig(hidden=(8,), worker_epochs=1, timing_repeats=1, seeds=1,
                                   parts=("model_parallel",))
        return study.run_study(_digits(), config, progress=False)
    finally:
        ms.set_backend(previous)


def test_registered_as_an_optional_part_without_baseline():
    assert "model_parallel" in part_names()
    assert "model_parallel" not in default_parts()
    assert not needs_baseline(["model_parallel"])


@pytest.mark.slow  # the module's fixture: 5 trainings in 9 fresh processes, ~10 s when idle
def test_every_form_trains_the_same_model(result):
    assert "baseline" not in result  # no learning-rate sweep for this part alone
    mp = result["model_parallel"]
    assert [f["key"] for f in mp["forms"]] == [k for k, _ in MODEL_PARALLEL_FORMS]
    assert [f["processes"] for f in mp["forms"]] == [1, 2, 2, 2, 2]
    # 192 rows, batch 32, one epoch
    assert mp["updates"] == 6 and mp["global_batch"] == 32 and mp["micro_batches"] == 4
    single = mp["forms"][0]
    assert single["loss_rel_difference"] == 0.0 and single["speedup"] == 1.0
    for form in mp["forms"]:
        assert form["loss_rel_difference"] <= 1e-10, form["name"]
        assert form["max_param_difference"] <= 1e-10, form["name"]
        assert form["step_seconds"] > 0 and form["speedup"] > 0
        assert form["step_seconds_min"] <= form["step_seconds"] <= form["step_seconds_max"]
    gpipe, f1b = mp["forms"][2], mp["forms"][3]
    # both schedules add the micro-batch gradients in the same order: the same floats
    assert gpipe["test_loss"] == f1b["test_loss"]
    assert gpipe["max_param_difference"] == f1b["max_param_difference"]
    assert mp["max_loss_rel_difference"] == max(f["loss_rel_difference"] for f in mp["forms"])


@pytest.mark.slow
def test_memory_per_process_by_hand(result):
    # 64-8-10, float64: layer 0 has 64*8 + 8 = 520 parameters, layer 1 8*10 + 10 = 90
    mp = result["model_parallel"]
    assert mp["n_params"] == 610 and mp["stage_layers"] == [[0, 0], [1, 1]]
    mem = {f["key"]: f["memory"] for f in mp["forms"]}
    B = 8 * 610
    assert mem["single"] == [{"params_held": B, "params_owned": B, "optimizer": 2 * B,
                              "activations": 8 * 32 * (64 + 8 + 10),
                              "total": 2 * B + 2 * B + 8 * 32 * 82}]
    for rec in mem["data"]:  # 16 rows each, everything else replicated
        assert rec["params_owned"] == B and rec["optimizer"] == 2 * B
        assert rec["activations"] == 8 * 16 * 82
    # stage 0 updates layer 0 (Adam's two moments for 520 values), stage 1 layer 1
    for kind in ("gpipe", "1f1b"):
        assert [r["params_held"] for r in mem[kind]] == [B, B]
        assert [r["params_owned"] for r in mem[kind]] == [8 * 520, 8 * 90]
        assert [r["optimizer"] for r in mem[kind]] == [16 * 520, 16 * 90]
    # micro-batches of 8 rows; stage 0 keeps input and output (64 + 8 values a row), stage 1
    # (8 + 10); GPipe holds all 4 micro-batches, 1F1B at most p - s of them
    assert [r["activations"] for r in mem["gpipe"]] == [8 * 32 * 72, 8 * 32 * 18]
    assert [r["activations"] for r in mem["1f1b"]] == [8 * 16 * 72, 8 * 8 * 18]
    for f in mp["forms"][2:4]:
        assert f["stash_bytes_measured"] == [r["activations"] for r in f["memory"]]
    # tensor: rank r holds 4 columns of W1 (256) and of b1 (4), 4 rows of W2 (40) and all
    # of b2 (10), which rank 0 owns; the whole batch, 4 of layer 0's 8 outputs
    assert [r["params_held"] for r in mem["tensor"]] == [8 * 310, 8 * 310]
    assert [r["params_owned"] for r in mem["tensor"]] == [8 * 310, 8 * 300]
    assert [r["optimizer"] for r in mem["tensor"]] == [16 * 310, 16 * 300]
    assert [r["activations"] for r in mem["tensor"]] == [8 * 32 * (64 + 4 + 10)] * 2


def test_memory_of_uneven_micro_batches():
    # 24 + 20 + 15 parameters: balanced stages are layer 0 (24) and layers 1, 2 (35)
    model = build_model(5, 3, [4, 4])
    mem = model_parallel_memory(model, 7, 3, 0)
    # 7 rows in micro-batches of 3, 2, 2; stage 0 keeps 5 + 4 values a row, stage 1
    # 4 + 4 + 3; 1F1B: stage 0 keeps 2 in flight (5 rows), stage 1 one (3 rows at most)
    assert [r["activations"] for r in mem["gpipe"]] == [8 * 7 * 9, 8 * 7 * 11]
    assert [r["activations"] for r in mem["1f1b"]] == [8 * 5 * 9, 8 * 3 * 11]
    assert [r["params_owned"] for r in mem["1f1b"]] == [8 * 24, 8 * 35]
    assert all(r["optimizer"] == 0 for r in mem["single"])
    with pytest.raises(ValueError, match="micro_batches"):
        model_parallel_memory(model, 7, 0, 0)


@pytest.mark.slow
def test_text_and_report(result):
    mp = result["model_parallel"]
    text = "\n".join(mp["text"])
    for _, label in MODEL_PARALLEL_FORMS:
        assert label in text
    assert "shared cores" in text and "relative test-loss difference" in text
    assert mp["text"][0] in report.render_text(result)
    json.dumps(result, allow_nan=False)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(json.dumps(result)), report.load_schema(),
                        cls=jsonschema.Draft202012Validator)


def test_bad_input():
    task = _digits(64, 40)
    with pytest.raises(ValueError, match="hidden widths must be >= 2"):
        model_parallel_part(task, hidden=(1,))
    with pytest.raises(ValueError, match="at least one width"):
        model_parallel_part(task, hidden=())
    with pytest.raises(ValueError, match="timing needs more than 3"):
        model_parallel_part(task, hidden=(4,), epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="micro_batches"):
        model_parallel_part(task, hidden=(4,), micro_batches=0)
    with pytest.raises(ValueError, match="X_test"):
        model_parallel_part({k: v for k, v in task.items() if k != "X_test"})


def test_cli_refuses_a_width_below_2(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "s.json"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["study", "--quick", "--data", "digits", "--part", "model_parallel",
                     "--hidden", "1", "--json", str(path)])
    assert code == 2
    assert len(err.getvalue().strip().splitlines()) == 1 and "hidden" in err.getvalue()
    assert not path.exists()
