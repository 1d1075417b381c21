"""The regularization options of the command line: ``train --l2 / --weight-decay /
--decoupled``, the decay kept by ``prune --finetune-epochs`` and ``quantize --qat-epochs``, and
``info`` showing it."""
import numpy as np
import pytest

import minscale as ms
from minscale.cli import main
from minscale.commands._common import finetune_optimizer
from minscale.optim import SGD, Adam, AdamW

TRAIN = ["train", "--data", "diabetes", "--epochs", "2", "--hidden", "8", "--batch-size", "64",
         "--seed", "0", "--quiet"]


@pytest.mark.parametrize("extra, opt_class, wd", [
    (["--l2", "0.001"], Adam, 0.0),
    (["--weight-decay", "0.01"], Adam, 0.01),
    (["--weight-decay", "0.01", "--optimizer", "momentum"], SGD, 0.01),
    (["--weight-decay", "0.02", "--decoupled"], AdamW, 0.02),
])
def test_train_saves_the_regularization_and_info_shows_it(extra, opt_class, wd, tmp_path,
                                                          capsys):
    path = str(tmp_path / "m.npz")
    assert main(TRAIN + extra + ["--save", path]) == 0
    model = ms.load(path)
    assert type(model.optimizer) is opt_class
    assert model.optimizer.weight_decay == wd
    l2 = float(extra[1]) if extra[0] == "--l2" else None
    for layer in model.layers:
        assert (layer.kernel_regularizer is None) == (l2 is None)
        if l2 is not None:
            assert layer.kernel_regularizer.l2 == l2
    capsys.readouterr()
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    if wd:
        kind = "decoupled (AdamW)" if opt_class is AdamW else "coupled"
        assert f"weight_decay {wd:g}, {kind}, biases included" in out
    else:
        assert "decay       none" in out
    if l2 is not None:
        assert "regularizer layer 0: L2 0.001, layer 1: L2 0.001" in out


def test_prune_finetune_and_qat_keep_the_decay(tmp_path, capsys):
    path = str(tmp_path / "m.npz")
    assert main(TRAIN + ["--l2", "0.001", "--weight-decay", "0.05", "--decoupled",
                         "--save", path]) == 0
    pruned = str(tmp_path / "p.npz")
    assert main(["prune", path, "--sparsity", "0.5", "--finetune-epochs", "1",
                 "--out", pruned]) == 0
    model = ms.load(pruned)
    assert type(model.optimizer) is AdamW and model.optimizer.weight_decay == 0.05
    assert model.layers[0].kernel_regularizer == ms.regularizers.L2(0.001)
    assert np.all(model.params[~model.mask] == 0.0)
    assert main(["quantize", path, "--bits", "8", "--qat-epochs", "1"]) == 0
    assert "QAT (1 epochs)" in capsys.readouterr().out


def test_finetune_optimizer_keeps_the_saved_decay():
    opt = finetune_optimizer(AdamW(0.1, weight_decay=0.3, decay_bias=False), 0.002)
    assert type(opt) is AdamW
    assert (opt.weight_decay, opt.decay_bias, opt.current_learning_rate()) == (0.3, False, 0.002)
    opt = finetune_optimizer(SGD(0.1, weight_decay=0.2), 0.001)
    assert type(opt) is Adam and opt.weight_decay == 0.2
    assert finetune_optimizer(None, 0.001).weight_decay == 0.0


BAD = [
    (["--l2", "-1"], "--l2 must be a finite number >= 0, got -1.0"),
    (["--l2", "nan"], "--l2 must be a finite number >= 0, got nan"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
    (["--weight-decay", "abc"], "--weight-decay"),
    (["--l2", "x"], "--l2"),
    (["--decoupled"], "--decoupled needs --weight-decay"),
    (["--decoupled", "--weight-decay", "0.1", "--optimizer", "sgd"], "--optimizer adam"),
]


@pytest.mark.parametrize("extra, words", BAD)
def test_bad_regularization_options_are_one_line_and_exit_2(extra, words, capsys, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN + extra) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and words in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""  # refused before any training


def test_prune_and_quantize_take_the_regularization_options_for_their_training(tmp_path,
                                                                              capsys):
    path, pruned = str(tmp_path / "m.npz"), str(tmp_path / "p.npz")
    assert main(TRAIN + ["--weight-decay", "0.01", "--save", path]) == 0
    # the options replace the saved coupled decay for the fine-tuning, and add L2 kernels
    assert main(["prune", path, "--sparsity", "0.5", "--finetune-epochs", "2", "--weight-decay",
                 "0.03", "--decoupled", "--l2", "0.001", "--out", pruned]) == 0
    model = ms.load(pruned)
    assert type(model.optimizer) is AdamW and model.optimizer.weight_decay == 0.03
    assert all(layer.kernel_regularizer.l2 == 0.001 for layer in model.layers)
    capsys.readouterr()
    assert main(["quantize", path, "--qat-epochs", "1", "--weight-decay", "0.02", "--l2",
                 "0.001"]) == 0
    assert "QAT (1 epochs):" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["prune", "m.npz", "--sparsity", "0.5", "--weight-decay", "0.1"],
     "--weight-decay applies to fine-tuning only"),
    (["prune", "m.npz", "--sparsity", "0.5", "--finetune-epochs", "1", "--decoupled"],
     "--decoupled needs --weight-decay"),
    (["quantize", "m.npz", "--l2", "0.1"],
     "--l2 applies to quantization-aware training only"),
    (["quantize", "m.npz", "--qat-epochs", "1", "--weight-decay", "-1"],
     "--weight-decay"),
])
def test_prune_and_quantize_refuse_regularization_they_would_not_use(argv, words, tmp_path,
                                                                     capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN + ["--save", "m.npz"]) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
