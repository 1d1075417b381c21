"""Tests of the ``minscale prune`` command: one-line refusals, prune + fine-tune + report + save.
"""

import pytest


def test_cli_rejects_bad_sparsity_with_one_line(capsys, tmp_path):
    from minscale.cli import main

    code = main(["prune", str(tmp_path / "none.npz"), "--sparsity", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--sparsity must be in [0, 1]" in err


def test_cli_prunes_finetunes_reports_and_saves(capsys, tmp_path):
    io = pytest.importorskip("minscale.io")
    from minscale.cli import main

    src, out = tmp_path / "model.npz", tmp_path / "pruned.npz"
    assert main(["train", "--hidden", "16", "--epochs", "3", "--quiet", "--save",
                 str(src)]) == 0
    capsys.readouterr()
    code = main(["prune", str(src), "--sparsity", "0.5", "--method", "structured",
                 "--finetune-epochs", "2", "--shrink", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for fragment in ("before:", "pruned:", "finetuned (2 epochs):", "total sparsity",
                     "bytes at 64 bits/value: dense", "shrunk to W shapes (10, 8) (8, 1)",
                     f"saved {out}"):
        assert fragment in text, fragment
    assert io.load(out).layers[0].W.shape == (10, 8)
    assert main(["prune", str(src), "--sparsity", "0.9", "--method", "global"]) == 0
    text = capsys.readouterr().out
    assert "total sparsity 0.8977" in text  # round(0.9 * 176) = 158 of 176 weights
