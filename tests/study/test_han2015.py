"""Han et al. 2015 in miniature: the schedule, and the part on a small slice of mnist5k."""
import argparse
import json
import math

import pytest

from minscale.commands._common import load_task
from minscale.study.han2015 import (
    HAN_LAYER_SPARSITY,
    PAPER,
    format_han2015,
    han2015_part,
    han2015_schedule,
)
from minscale.study.stats import mean_ci95


def test_schedule_is_geometric_in_the_survivors_and_exact_at_the_end():
    sched = han2015_schedule(HAN_LAYER_SPARSITY, 5)
    assert sched[-1] == [0.92, 0.91, 0.74]
    # round 1 keeps 0.08 ** (1/5) of fc1: every round removes the same share of survivors
    assert sched[0][0] == pytest.approx(1 - 0.08 ** 0.2, rel=1e-15)
    for a, b in zip(sched, sched[1:]):
        assert all(x < y for x, y in zip(a, b))
    assert han2015_schedule([0.75, 0.0], 2) == [[0.5, 0.0], [0.75, 0.0]]
    with pytest.raises(ValueError, match=r"final_sparsity\[0\]"):
        han2015_schedule([1.0], 2)


@pytest.fixture(scope="module")
def small_task():
    task = load_task(argparse.Namespace(data="mnist5k", target=None, test_size=0.2, seed=0),
                     validation_size=0.2)
    for key, n in (("train", 320), ("val", 200), ("test", 200)):
        task[f"X_{key}"] = task[f"X_{key}"][:n]
        task[f"y_{key}"] = task[f"y_{key}"][:n]
        if key != "train":
            task[f"labels_{key}"] = task[f"labels_{key}"][:n]
    return task


@pytest.fixture(scope="module")
def small_result(small_task):
    return han2015_part(small_task, seeds=(0, 1), epochs=1, rounds=2, retrain_epochs=1)


def test_han_counts_on_lenet_300_100(small_result):
    r = small_result
    assert r["n_weights"] == 266_200 and r["layer_weights"] == [235_200, 30_000, 1_000]
    last = r["rounds"][-1]
    # 8 %, 9 % and 26 % of each layer's weights survive, as in the paper's Table 2
    assert last["layer_weights_kept"] == [18_816, 2_700, 260]
    assert last["weights_kept"] == 21_776
    assert last["sparsity"] == 1 - 21_776 / 266_200
    assert last["compression"] == pytest.approx(12.224, abs=1e-3)
    # every pruned weight is exactly 0 after retraining (the part also checks it per seed)
    pruned = [n - k for n, k in zip(r["layer_weights"], last["layer_weights_kept"])]
    assert all(z >= p for z, p in zip(last["layer_zeros"], pruned))
    first = r["rounds"][0]
    assert first["layer_weights_kept"] == [
        n - round((1 - (1 - s) ** 0.5) * n) for n, s in zip(r["layer_weights"],
                                                             HAN_LAYER_SPARSITY)]


def test_control_gets_exactly_the_retraining_updates(small_result):
    per_round = math.ceil(320 / 64)  # one epoch of 320 rows at batch 64
    for i, rec in enumerate(small_result["rounds"]):
        assert rec["retrain_updates"] == rec["control_updates"] == (i + 1) * per_round


def test_reported_errors_intervals_and_selection(small_result):
    r = small_result
    errs = r["dense"]["test_errors"]
    assert len(errs) == 2 and all(0 <= e <= 100 for e in errs)
    # 200 test images: an error is a multiple of 0.5 %
    assert all(abs(e * 2 - round(e * 2)) < 1e-9 for e in errs)
    m, lo, hi = mean_ci95(errs)
    assert r["dense"]["test_error_mean"] == m and r["dense"]["test_error_ci95"] == [lo, hi]
    for rec in r["rounds"]:
        d = rec["vs_dense_test"]
        assert d["mean"] == pytest.approx(rec["test_error_mean"] - m, abs=1e-12)
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert d["verdict"] in ("better", "worse", "no significant difference")
        assert rec["control"]["name"] == "dense, same retraining" and rec["seeds"] == [0, 1]
        assert rec["effect"] == pytest.approx(rec["loss_mean"] / rec["control"]["loss_mean"])
    verdicts = [rec["vs_dense_val"]["verdict"] for rec in r["rounds"]]
    ok = 0
    while ok < len(verdicts) and verdicts[ok] != "worse":
        ok += 1
    if ok == 0:
        assert r["reached"] is None
    else:
        assert r["reached"]["round"] == ok
        assert r["reached"]["sparsity"] == r["rounds"][ok - 1]["sparsity"]
    assert r["data"]["splits"] == {"train": 320, "validation": 200, "test": 200}
    json.dumps(r, allow_nan=False)


def test_text_puts_the_paper_row_beside_ours(small_result):
    text = format_han2015(small_result)
    lines = text.splitlines()
    assert lines[0].startswith("Han et al. 2015 in miniature: LeNet-300-100")
    paper = next(line for line in lines if line.startswith("paper (MNIST 60k)"))
    assert "267,000" in paper and "22,000" in paper and "1.64 %" in paper and "1.59 %" in paper
    here = next(line for line in lines if line.startswith("here (mnist5k)"))
    assert "266,200" in here
    assert "what differs from the paper:" in lines
    differs = " ".join(small_result["what_differs"])
    assert "data: mnist5k, 320 training rows (of 720;" in differs
    assert "mnist5k's features scaled from [0, 255] to [0, 1]" in differs
    assert small_result["text"] == lines
    assert PAPER["compression"] == 12.0


def test_refuses_regression_and_wrong_layer_count(small_task):
    with pytest.raises(ValueError, match="one value per layer \\(3\\), got 2"):
        han2015_part(small_task, final_sparsity=(0.9, 0.9), seeds=(0,))
    reg = dict(small_task, info=dict(small_task["info"], task="regression"))
    with pytest.raises(ValueError, match="needs a classification task"):
        han2015_part(reg, seeds=(0,))
    missing = {k: v for k, v in small_task.items() if k != "X_val"}
    with pytest.raises(ValueError, match="'X_val'"):
        han2015_part(missing, seeds=(0,))


def test_retraining_rate_is_the_one_with_the_lowest_validation_error(small_result):
    ret = small_result["retraining"]
    assert [c["learning_rate"] for c in ret["candidates"]] == [1e-3, 1e-4]
    best = min(ret["candidates"], key=lambda c: c["final_val_error_mean"])
    assert ret["learning_rate"] == best["learning_rate"]
    assert any(line.startswith("retraining rate ") for line in small_result["text"])


def test_one_seed_claims_no_sparsity_and_what_differs_describes_the_data():
    task = load_task(argparse.Namespace(data="digits", target=None, test_size=0.2, seed=0),
                     validation_size=0.2)
    r = han2015_part(task, hidden=(16,), seeds=(0,), epochs=1, rounds=2, retrain_epochs=1)
    # one seed: no interval, so no sparsity may be claimed as reached
    assert r["reached"] is None
    assert r["note"] == "one seed: no significance test; run --seeds 3 or more"
    assert not any(line.startswith("sparsity reached without") for line in r["text"])
    assert "sparsity reached: none claimed (one seed: no significance test; run --seeds 3 " \
           "or more)" in r["text"]
    sp = r["data"]["splits"]
    total = sp["train"] + sp["validation"] + sp["test"]
    assert total == 1797  # scikit-learn's digits
    differs = " ".join(r["what_differs"])
    assert "mnist5k" not in differs
    assert f"data: digits, {sp['train']:,} training rows (of 1,797;" in differs
    assert r["data"]["feature_range"] is None  # digits are standardized, not range-scaled
    assert "digits's features standardized (mean and deviation of the training split)" \
        in differs and "pixels scaled to [0, 1], as" not in differs
    # two layers: the paper's three per-layer rates had to be mapped, and the text says how
    assert r["settings"]["final_sparsity"] == [0.92, 0.74]
    assert "the paper's rates are for 3 layers, so each of the 1 hidden layer(s) gets its " \
           "first-layer 92 % and the output layer its 74 %" in differs
    json.dumps(r, allow_nan=False)
