"""``minscale schedule``: the grid, bubble fraction and stash peaks it prints; bad input."""
import contextlib
import io
import re
from pathlib import Path

import pytest

from minscale.cli import main

ROOT = Path(__file__).resolve().parents[2]


def minscale(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_1f1b_p4_m8():
    code, out, err = minscale("schedule", "--stages", "4", "--micro-batches", "8", "--kind",
                              "1f1b", "--backward-cost", "1")
    assert code == 0 and err == ""
    # the hand-worked grid of tests/parallel/test_schedule.py::test_1f1b_p4_m8_by_hand
    assert "stage 0 | F0 F1 F2 F3 .  .  .  B0 F4 B1 F5 B2 F6 B3 F7 B4 .  B5 .  B6 .  B7\n" in out
    assert "stage 3 | .  .  .  F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7 .  .  .\n" in out
    assert "step time           22  (busy per stage: 16)" in out
    assert "bubble fraction     3/11 = 0.272727 simulated; formula (p - 1) / (m + p - 1) = 3/11" in out
    assert "peak stashed        4 3 2 1 micro-batches per stage" in out


def test_gpipe_default_costs_and_per_stage_costs():
    code, out, _ = minscale("schedule", "--stages", "2", "--micro-batches", "3")
    assert code == 0
    # T = (m + p - 1)(f + b) = 12; stage 0's B0 waits for stage 1's, which ends at t = 6
    assert "stage 0 | F0 F1 F2 .  .  .  B0 B0 B1 B1 B2 B2\n" in out
    assert "stage 1 | .  F0 F1 F2 B0 B0 B1 B1 B2 B2 .  .\n" in out
    assert "peak stashed        3 3 micro-batches" in out
    # stage 1 three times slower, half a time unit per message: the values of
    # test_per_stage_costs_slowest_stage_sets_the_pace plus 2 hops of 1/2
    code, out, _ = minscale("schedule", "--stages", "2", "--micro-batches", "4",
                            "--forward-cost", "1,3", "--backward-cost", "2,6",
                            "--comm-cost", "1/2")
    assert code == 0
    assert "one slot = 1/2" in out and "step time           40  (busy per stage: 12, 36)" in out


def test_docs_grids_are_the_cli_output():
    """docs/parallel.md shows the p=4, m=8 grids as this command prints them."""
    text = (ROOT / "docs" / "parallel.md").read_text(encoding="utf-8")
    for kind in ("gpipe", "1f1b"):
        code, out, _ = minscale("schedule", "--stages", "4", "--micro-batches", "8", "--kind",
                                kind)
        assert code == 0
        block = f"$ minscale schedule --stages 4 --micro-batches 8 --kind {kind}\n{out}```"
        assert block in text, f"docs/parallel.md lacks the current {kind} output"


@pytest.mark.parametrize("argv, message", [
    (["--stages", "0"], "--stages must be >= 1, got 0"),
    (["--micro-batches", "0"], "--micro-batches must be >= 1, got 0"),
    (["--micro-batches", "-3"], "--micro-batches must be >= 1, got -3"),
    (["--kind", "zb"], "argument --kind: invalid choice: 'zb'"),
    (["--forward-cost", "0"], "argument --forward-cost: must be > 0, got '0'"),
    (["--backward-cost", "x"], "argument --backward-cost: must be numbers such as"),
    (["--comm-cost", "-1"], "argument --comm-cost: must be >= 0, got '-1'"),
    (["--comm-cost", "1,2"], "argument --comm-cost: must be one number >= 0"),
    # beyond a float's range: exact Fractions, but float(...) of them overflowed
    (["--forward-cost", "1e400"], "argument --forward-cost: must be at most 1.79769e+308, "
                                  "got '1e400'"),
    (["--backward-cost", "1,9e999,1,1"], "argument --backward-cost: must be at most"),
    (["--comm-cost", "1e309"], "argument --comm-cost: must be at most 1.79769e+308"),
    (["--forward-cost", "1,2"], "--forward-cost must give one cost or one per stage (4), got 2"),
    (["--stages", "1000", "--micro-batches", "1000"], "--stages x --micro-batches must be at "
                                                      "most 50,000"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    code, out, err = minscale("schedule", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_wide_grid_is_not_printed():
    code, out, _ = minscale("schedule", "--stages", "2", "--micro-batches", "200")
    assert code == 0
    assert re.search(r"\(grid not shown: 603 time slots, more than 300;", out)
    assert "bubble fraction     1/201" in out
