"""``minscale info``: the manifest, the layer table of every kind, damaged files."""
import json
import sys
from pathlib import Path

import pytest

import minscale as ms
from minscale import prune
from minscale.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from io_helpers import make_data, make_model, save_trained  # noqa: E402


@pytest.fixture
def saved(tmp_path):
    return save_trained(tmp_path)


# ------------------------------------------------------------------------------------------
# the CLI


def test_info_prints_manifest_and_layer_table(tmp_path, capsys):
    model = make_model(dtype="float32")
    prune.prune(model, 0.4)  # W0: round(0.4 * 15) = 6 of 15; W1: round(0.4 * 10) = 4 of 10
    ms.save(model, tmp_path / "m.npz")
    assert main(["info", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert "format      minscale-model version 1" in out
    assert "kind        Sequential, dtype float32, 30 stored parameters" in out
    assert "state       prune_backup" in out
    lines = out.splitlines()
    # layer 0: 3*5 + 5 = 20 float32 parameters = 80 bytes, sparsity 6/15 = 0.4
    assert lines[-3].split() == ["0", "(3,", "5)", "(5,)", "tanh", "20", "0.4000", "32", "80"]
    # layer 1: 5*2 = 10 parameters, no bias = 40 bytes, sparsity 4/10
    assert lines[-2].split() == ["1", "(5,", "2)", "-", "identity", "10", "0.4000", "32", "40"]
    assert lines[-1].split() == ["total", "30", "0.4000", "120"]


def test_info_json_and_checkpoint_lines(tmp_path, capsys):
    model = make_model()
    X, y = make_data()
    model.fit(X, y, epochs=1, batch_size=4, seed=3, checkpoint=tmp_path / "ck.npz",
              checkpoint_every=5)
    assert main(["info", str(tmp_path / "ck.npz")]) == 0
    out = capsys.readouterr().out
    # 29 rows / 4 = 8 batches: the last write is the end-of-training one, epoch 1 batch 0
    assert "checkpoint  epoch 1, next batch 0, step 8; run: seed 3, batch_size 4" in out
    assert main(["info", "--json", str(tmp_path / "ck.npz")]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["checkpoint"]["step"] == 8 and manifest["format_version"] == 1


def test_info_on_a_sparse_model(tmp_path, capsys):
    model = make_model()
    prune.prune(model, 0.4)
    ms.save(prune.to_sparse(model), tmp_path / "s.npz")
    assert main(["info", str(tmp_path / "s.npz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    # layer 0: 9 nonzero weights: data 9*8 + indices 9*4 + indptr 4*4 + bias 5*8 = 164 bytes
    assert lines[-3].split() == ["0", "(3,", "5)", "(5,)", "tanh", "14", "0.4000", "64", "164"]


def test_info_on_a_quantized_model(tmp_path, capsys):
    from minscale import quant
    model = make_model()
    X, _ = make_data()
    ms.save(quant.quantize_model(model, "int4", None), tmp_path / "q.npz")
    assert main(["info", str(tmp_path / "q.npz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    # layer 0: 15 int4 codes at 1 byte + 5 float32 scales + 5 float32 biases = 55 bytes
    row = lines[-3].split()
    assert row[:6] == ["0", "(3,", "5)", "(5,)", "tanh", "20"] and row[7:] == ["4", "55"]
    # layer 1: 10 codes + 2 scales, no bias = 18 bytes
    assert lines[-2].split()[7:] == ["4", "18"]


def test_info_on_a_fixed_point_model(tmp_path, capsys):
    from minscale import quant
    X, y = make_data()
    model = ms.Sequential([ms.Dense(5, activation="relu"), ms.Dense(2)], input_dim=3, seed=1)
    model.compile(optimizer="sgd", learning_rate=0.05)
    model.fit(X, y, epochs=2, batch_size=4, seed=3, verbose=0)
    ms.save(quant.quantize_fixed_model(model, "fixed16", calibration_data=X), tmp_path / "f.npz")
    assert main(["info", str(tmp_path / "f.npz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "kind        FixedPointModel, dtype float64, 32 stored parameters" in lines
    # layer 0: 15 int16 codes at 2 bytes + 5 bias codes at 8 bytes = 70 bytes
    row = lines[-3].split()
    assert row[:6] == ["0", "(3,", "5)", "(5,)", "relu", "20"] and row[7:] == ["16", "70"]
    # layer 1: 10 codes at 2 bytes + 2 biases at 8 bytes = 36 bytes; total 106
    assert lines[-2].split()[7:] == ["16", "36"]
    assert lines[-1].split()[1] == "32" and lines[-1].split()[-1] == "106"


def test_info_on_a_damaged_file_is_one_line_and_exit_2(saved, tmp_path, capsys):
    _, path, _, _ = saved
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])
    assert main(["info", str(tmp_path / "cut.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or damaged" in err


