"""``minscale evaluate``: held-out metrics of a saved model, bad data."""
import sys
from pathlib import Path

import pytest

import minscale as ms
from minscale.cli import main
from minscale.optim import Adam

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from io_helpers import make_model, save_trained  # noqa: E402


@pytest.fixture
def saved(tmp_path):
    return save_trained(tmp_path)


def test_evaluate_matches_the_model_on_the_held_out_split(tmp_path, capsys):
    from argparse import Namespace

    from minscale.commands._common import load_task
    from minscale.commands.train import build_model
    task = load_task(Namespace(data="diabetes", target=None, test_size=0.25, seed=4))
    model = build_model(10, 1, [6], seed=4)
    model.compile(optimizer=Adam(0.01))
    model.fit(task["X_train"], task["y_train"], epochs=3, batch_size=32, seed=4)
    model.state["data"] = {"data": "diabetes", "target": None, "test_size": 0.25, "seed": 4}
    ms.save(model, tmp_path / "m.npz")
    assert main(["evaluate", str(tmp_path / "m.npz")]) == 0
    captured = capsys.readouterr()
    expected = model.evaluate(task["X_test"], task["y_test"])
    assert f"loss {expected:.6g} (mse of the standardized target" in captured.out
    assert "111 held-out rows (test_size 0.25, seed 4)" in captured.out  # 442 * 0.25 -> 111
    assert captured.err == ""
    # a different split on the command line is allowed but noted
    assert main(["evaluate", str(tmp_path / "m.npz"), "--seed", "5"]) == 0
    assert "--seed 5 (trained with 4)" in capsys.readouterr().err


def test_evaluate_classification_reports_accuracy(tmp_path, capsys):
    from argparse import Namespace

    from minscale.commands._common import load_task
    from minscale.commands.train import build_model
    from minscale.data import accuracy
    task = load_task(Namespace(data="digits", target=None, test_size=0.2, seed=0))
    model = build_model(64, 10, [], seed=0)
    model.compile(optimizer=Adam(0.01), metrics=["accuracy"])
    model.fit(task["X_train"], task["y_train"], epochs=2, batch_size=64, seed=0)
    ms.save(model, tmp_path / "d.npz")
    assert main(["evaluate", str(tmp_path / "d.npz"), "--data", "digits"]) == 0
    captured = capsys.readouterr()
    acc = accuracy(task["y_test"], model.predict(task["X_test"]))
    assert f"accuracy {acc:.4f}" in captured.out
    assert "records no training data settings" in captured.err


def test_evaluate_a_quantized_model_on_the_integer_path(tmp_path, capsys):
    from argparse import Namespace

    from minscale import quant
    from minscale.commands._common import load_task
    from minscale.commands.train import build_model
    task = load_task(Namespace(data="diabetes", target=None, test_size=0.2, seed=1))
    model = build_model(10, 1, [8], seed=1)
    model.compile(optimizer=Adam(0.01))
    model.fit(task["X_train"], task["y_train"], epochs=3, batch_size=32, seed=1)
    model.state["data"] = {"data": "diabetes", "target": None, "test_size": 0.2, "seed": 1}
    qmodel = quant.quantize_model(model, "int8", "int8", calibration_data=task["X_train"])
    ms.save(qmodel, tmp_path / "q.npz")
    assert main(["evaluate", str(tmp_path / "q.npz"), "--integer"]) == 0
    out = capsys.readouterr().out
    expected = qmodel.evaluate(task["X_test"], task["y_test"], integer=True)["loss"]
    assert "(QuantizedModel, integer-only inference)" in out
    assert f"loss {expected:.6g} (mse" in out
    assert main(["evaluate", str(tmp_path / "q.npz")]) == 0
    expected = qmodel.evaluate(task["X_test"], task["y_test"])["loss"]
    assert f"loss {expected:.6g} (mse" in capsys.readouterr().out
    ms.save(model, tmp_path / "f.npz")
    assert main(["evaluate", str(tmp_path / "f.npz"), "--integer"]) == 2
    assert "--integer needs a quantized model" in capsys.readouterr().err


def test_evaluate_on_data_of_the_wrong_width(tmp_path, capsys):
    ms.save(make_model(), tmp_path / "m.npz")
    assert main(["evaluate", str(tmp_path / "m.npz"), "--data", "diabetes"]) == 2
    assert "expects 3 features but 'diabetes' has 10" in capsys.readouterr().err


