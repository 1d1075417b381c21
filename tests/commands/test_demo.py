"""``minscale demo``: the classic example beside least squares, then a quick study."""
import contextlib
import io
import re
import subprocess
import sys

import numpy as np
import pytest

from minscale.cli import main
from minscale.commands.demo import least_squares_line
from minscale.datasets import make_linear


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _row(text, label):
    """The numbers of the table row that starts with `label`."""
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(label))
    return [float(x) for x in re.findall(r"-?\d+\.\d+|(?<=\s)-?\d+(?=\s|$)", line[len(label) + 2:])]


def test_least_squares_line_of_the_classic_data():
    # make_linear(100, 42) is the legacy np.random.seed(42) script; its least-squares line
    # (numpy.linalg.lstsq on [x, 1]) is w = 1.5402, b = 1.2151 -- sampling noise of 100
    # points away from the generating (2, 1)
    X, y = make_linear(100, seed=42)
    w, b = least_squares_line(X, y)
    assert (round(w, 4), round(b, 4)) == (1.5402, 1.2151)
    # normal equations as an independent check: [sum x^2, sum x; sum x, n] [w, b] = [sum xy, sum y]
    x, t = X[:, 0], y[:, 0]
    A = np.array([[x @ x, x.sum()], [x.sum(), x.size]])
    assert np.allclose(np.linalg.solve(A, [x @ t, t.sum()]), [w, b], rtol=1e-12)


def test_demo_runs_end_to_end_and_prints_w_b_beside_least_squares():
    out = subprocess.run([sys.executable, "-m", "minscale", "demo"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    learned = _row(text, "learned (minscale)")
    ls = _row(text, "least squares")
    true = _row(text, "generating line")
    assert ls[:2] == [1.5402, 1.2151] and true[:2] == [2.0, 1.0]
    # constant-rate Adam 0.1, batch 10, file order: lands within 0.02 of least squares
    assert abs(learned[0] - ls[0]) < 0.02 and abs(learned[1] - ls[1]) < 0.02
    for heading in ("2. Learning rate", "3. Pruning", "4. 8-bit quantization",
                    "5. A quick study on real data", "minscale study: diabetes",
                    "Smallest model whose loss is within 5%", "demo finished in"):
        assert heading in text
    assert out.stderr == ""  # no progress bar off a terminal


def test_demo_same_seed_same_numbers_and_no_study_flag():
    code, a, _ = _run(["demo", "--no-study", "--seed", "1"])
    assert code == 0
    code, b, _ = _run(["demo", "--no-study", "--seed", "1"])
    drop = re.compile(r"demo finished in .*")
    assert drop.sub("", a) == drop.sub("", b)
    assert "minscale study" not in a and "initial weights seed 1" in a


def test_demo_pruning_section_counts_what_it_pruned():
    code, text, _ = _run(["demo", "--no-study"])
    assert code == 0
    # |b| = 1.22 < |w| = 1.56 after training: magnitude prunes b
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("magnitude "))
    assert line.split()[1] == "b"
    counts = re.search(r"w (\d+)x, b (\d+)x", text)
    assert int(counts.group(1)) + int(counts.group(2)) == 10


@pytest.mark.parametrize("argv, word", [(["demo", "--seed", "-1"], "--seed"),
                                        (["demo", "--nope"], "unrecognized")])
def test_demo_bad_input(argv, word):
    code, out, err = _run(argv)
    assert code == 2 and err.count("\n") == 1 and word in err and out == ""
