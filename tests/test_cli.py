"""The command line: a real run, and bad input as one line on stderr with exit code 2."""
import subprocess
import sys

import pytest

from minscale.cli import main


def test_python_dash_m_trains_and_reports(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minscale", "train", "--data", "diabetes",
                          "--hidden", "8", "--epochs", "3", "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "final train loss" in out.stdout and "test loss" in out.stdout


def test_train_digits_reports_accuracy(capsys):
    assert main(["train", "--data", "digits", "--hidden", "16", "--epochs", "2", "--quiet",
                 "--lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out


def test_train_csv_with_target(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("a,b,t\n" + "\n".join(f"{i},{i % 3},{2 * i + 1}" for i in range(40)))
    assert main(["train", "--data", str(path), "--target", "t", "--hidden", "4", "--epochs",
                 "2", "--quiet", "--optimizer", "sgd", "--lr", "0.01", "--decay-rate", "0.1",
                 "--staircase", "--decay-steps", "5", "--dtype", "float32"]) == 0


BAD = [
    (["train", "--data", "nope"], "data"),
    (["train", "--data", "missing.csv"], "missing.csv"),
    (["train", "--data", "diabetes", "--target", "NOPE"], "NOPE"),
    (["train", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["train", "--lr", "-1"], "learning_rate"),
    (["train", "--decay-rate", "-1"], "decay_rate"),
    (["train", "--decay-rate", "0.5", "--decay-steps", "0"], "decay_steps"),
    (["train", "--hidden", "3,x"], "--hidden"),
    (["train", "--epochs", "many"], "--epochs"),
    (["train", "--nonsense"], "unrecognized"),
    ([], "command"),
]


@pytest.mark.parametrize("argv, word", BAD)
def test_bad_input_is_one_line_and_exit_2(argv, word, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["study", "--hidden", "x"], "minscale: error: argument --hidden: "),
    (["schedule", "--kind", "zb"], "minscale: error: argument --kind: invalid choice: 'zb'"),
    (["train", "--no-such-option"], "minscale: error: unrecognized arguments: --no-such-option"),
    (["no-such-command"], "minscale: error: argument COMMAND: invalid choice: 'no-such-command'"),
])
def test_argparse_errors_have_the_same_prefix_as_the_others(argv, message, capsys):
    # a sub-command's argparse error used to start "minscale study: error:"
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(message), err


def test_non_numeric_csv_column(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\nx,3\n")
    assert main(["train", "--data", str(path)]) == 2
    assert "a" in capsys.readouterr().err
