"""The width/depth and recovery parts on digits with tiny budgets: layout, counts, controls."""
import argparse

import pytest

from minscale.commands._common import load_task
from minscale.optim import Adam
from minscale.report import csv_rows
from minscale.schedules import InverseTimeDecay
from minscale.study.config import StudyConfig
from minscale.study.recovery import RECOVERY_METHODS, RECOVERY_PRESETS, recovery_part, run_recovery
from minscale.study.runs import build_model, measure
from minscale.study.scaling import training_flops_per_sample
from minscale.study.width_depth import WIDTH_DEPTH_PRESETS, run_width_depth, width_depth_part

pytestmark = pytest.mark.exactness


@pytest.fixture(scope="module")
def digits():
    return load_task(argparse.Namespace(data="digits", target=None, test_size=0.2, seed=0),
                     validation_size=0.2)


def test_width_depth_rows_fits_and_reproduction(digits):
    out = width_depth_part(digits, [0, 1], widths=(4, 8, 16), depths=(1, 2), epochs=1,
                           n_bootstrap=20)
    assert [(r["depth"], r["width"]) for r in out["rows"]] == [
        (1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (2, 16)]
    n_train = digits["X_train"].shape[0]
    for r in out["rows"]:
        sizes = [64] + [r["width"]] * r["depth"] + [10]
        assert r["n_params"] == sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
        assert r["flops_per_sample"] == training_flops_per_sample(sizes)
        assert r["training_flops"] == r["flops_per_sample"] * n_train
        assert r["updates"] == -(-n_train // 32)
        assert len(r["losses"]) == 2 and r["loss_ci95"][0] <= r["loss_mean"] <= r["loss_ci95"][1]
    assert [f["depth"] for f in out["fits"]] == [1, 2]
    assert all("alpha" in f and f["n_points"] == 3 for f in out["fits"])
    # one run reproduced outside the part: same code path, same numbers
    model = build_model(64, 10, [8, 8], "relu", 1)
    model.compile(optimizer=Adam(InverseTimeDecay(0.01, decay_rate=0.0, decay_steps=36)))
    model.fit(digits["X_train"], digits["y_train"], epochs=1, batch_size=32, seed=1)
    assert out["rows"][4]["losses"][1] == measure(model.predict, digits)["loss"]
    text = "\n".join(out["text"])
    assert "Power law" in text and "depth 2: alpha" in text


def test_recovery_same_updates_mask_kept_and_effects(digits):
    out = recovery_part(digits, [0, 1], hidden=(8,), sparsities=(0.5, 0.9), epochs=2,
                        retrain_epochs=2, rewind_updates=10)
    n_batches = -(-digits["X_train"].shape[0] // 32)
    assert out["updates"] == 2 * n_batches and out["rewind_updates"] == 10
    assert [(r["sparsity"], r["method"]) for r in out["rows"]] == [
        (s, m) for s in (0.5, 0.9) for m in RECOVERY_METHODS]
    for r in out["rows"]:
        # every variant and its dense control got exactly the same number of updates
        assert r["updates"] == r["control_updates"] == out["updates"]
        assert r["mask_kept"] and r["achieved_sparsity"] == pytest.approx(r["sparsity"],
                                                                           abs=0.01)
        assert r["effect"] == pytest.approx(r["loss_mean"] / r["control"]["loss_mean"],
                                            rel=1e-12)
        assert r["verdict"] in ("better", "worse", "no significant difference")
        assert r["control"]["losses"] == out["control"]["losses"]
    assert "rewind to k=10" in "\n".join(out["text"])
    # the loss interval is labelled as such: the verdict beside it is the paired interval's
    header = next(line for line in out["text"] if "verdict vs control" in line)
    assert "loss 95 % interval" in header


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=(4, 0)), r"widths\[1\]"),
    (dict(widths=(4, 2.5)), r"widths\[1\]"),
    (dict(depths=()), "at least one"),
    (dict(epochs=0), "epochs"),
])
def test_width_depth_bad_input(digits, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        width_depth_part(digits, [0], **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsities=(0.9, 0.5)), "increasing"),
    (dict(sparsities=(0.0,)), r"sparsities\[0\]"),
    (dict(method="structured"), "method"),
    (dict(rewind_updates=10**6), "rewind_updates"),
])
def test_recovery_bad_input(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        recovery_part(digits, [0], epochs=1, retrain_epochs=1, **kwargs)


def test_register_part_entries_take_the_quick_preset(digits):
    config = StudyConfig.preset(quick=True, hidden=(8,))
    context = {"seeds": [0], "jobs": 1, "pool": None, "finetune_learning_rate": 0.001,
               "baseline": {"initial_learning_rate": 0.01, "decay_rate": 0.0, "epochs": 2}}
    wd = run_width_depth(digits, config, context)
    quick = WIDTH_DEPTH_PRESETS["quick"]
    assert wd["epochs"] == quick["epochs"] and wd["widths"] == list(quick["widths"])
    assert len(wd["rows"]) == len(quick["widths"]) * len(quick["depths"])
    assert all(f["n_bootstrap"] == quick["n_bootstrap"] for f in wd["fits"])
    # one seed: no interval, printed as n/a
    assert wd["rows"][0]["loss_ci95"] == [None, None] and "n/a" in "\n".join(wd["text"])
    rec = run_recovery(digits, config, context)
    assert rec["epochs"] == rec["retrain_epochs"] == 2  # the baseline's epochs
    assert rec["sparsities"] == list(RECOVERY_PRESETS["quick"]["sparsities"])
    assert rec["finetune_learning_rate"] == 0.001 and rec["hidden"] == [8]


def test_csv_rows_of_both_parts(digits):
    wd = width_depth_part(digits, [0, 1], widths=(4, 8, 16), depths=(1,), epochs=1,
                          n_bootstrap=0)
    rec = recovery_part(digits, [0, 1], hidden=(8,), sparsities=(0.9,), epochs=1,
                        retrain_epochs=1)
    base = {"loss_mean": 0.1, "loss_ci95": [0.0, 0.2], "val_loss_mean": 0.1, "accuracy": 0.9,
            "updates": 1, "nbytes": 4}
    result = {"baseline": base, "seeds": [0, 1], "learning_rate": {"runs": []},
              "width_depth": wd, "recovery": rec}
    rows = [r for r in csv_rows(result) if r["part"] in ("width_depth", "recovery")]
    assert [r["name"] for r in rows[:3]] == ["depth 1 width 4", "depth 1 width 8",
                                             "depth 1 width 16"]
    assert rows[1]["loss"] == wd["rows"][1]["loss_mean"]
    assert rows[1]["nbytes"] == 4 * wd["rows"][1]["n_params"]
    assert rows[1]["loss_ci95_low"] == wd["rows"][1]["loss_ci95"][0]
    rec_rows = rows[3:]
    assert len(rec_rows) == len(RECOVERY_METHODS)
    for row, r in zip(rec_rows, rec["rows"]):
        assert row["effect"] == r["effect"] and row["verdict"] == r["verdict"]
        assert row["control_loss_mean"] == r["control"]["loss_mean"]
        assert row["updates"] == r["updates"] and row["sparsity"] == 0.9
