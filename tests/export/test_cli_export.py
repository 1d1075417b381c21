"""``minscale export`` and ``minscale info``: files written, sizes printed, one-line refusals."""
from __future__ import annotations

import os

import numpy as np
import pytest
from _models import trained

import minscale as ms
from minscale.cli import main
from minscale.export import c_size_report


@pytest.fixture
def files(tmp_path):
    model, X_tr, X_te, _ = trained("digits", 0.9)
    ms.save(model, tmp_path / "f.npz")
    q = ms.quant.quantize_model(model, calibration_data=X_tr)
    ms.save(q, tmp_path / "q.npz")
    tanh = ms.Sequential([ms.Dense(4, activation="tanh"), ms.Dense(1)], input_dim=64)
    ms.save(ms.quant.quantize_model(tanh, calibration_data=X_tr), tmp_path / "tanh.npz")
    ms.save(ms.quant.quantize_model(model, activations=None), tmp_path / "w.npz")
    return tmp_path, q


def test_export_c_prints_flash_and_ram(files, capsys):
    tmp, q = files
    assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out", str(tmp / "c"),
                 "--name", "digits", "--rounding", "single"]) == 0
    out = capsys.readouterr().out
    rep = c_size_report(q)
    assert f"flash {rep['flash']:,} bytes" in out and f"RAM {rep['ram']:,} bytes" in out
    assert sorted(os.listdir(tmp / "c")) == ["digits.c", "digits.h"]
    text = (tmp / "c" / "digits.c").read_text()
    assert "TFLite single rounding" in text
    assert main(["info", str(tmp / "q.npz")]) == 0
    assert f"C export    flash {rep['flash']:,} bytes" in capsys.readouterr().out


def test_export_onnx_modes(files, capsys):
    onnx = pytest.importorskip("onnx")
    tmp, q = files
    for mode in ("integer", "qdq"):
        path = tmp / f"{mode}.onnx"
        assert main(["export", str(tmp / "q.npz"), "--format", "onnx", "--out", str(path),
                     "--mode", mode]) == 0
        assert f"{mode} graph" in capsys.readouterr().out
        onnx.checker.check_model(onnx.load(path), full_check=True)
    assert main(["export", str(tmp / "f.npz"), "--format", "onnx", "--out",
                 str(tmp / "f.onnx")]) == 0
    assert "float graph" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["export", "{t}/f.npz", "--format", "c", "--out", "{t}/o", "--mode", "integer"],
     "integer export needs a QuantizedModel"),
    (["export", "{t}/f.npz", "--format", "onnx", "--out", "{t}/o.onnx", "--mode", "integer"],
     "integer export needs a QuantizedModel"),
    (["export", "{t}/f.npz", "--format", "onnx", "--out", "{t}/o.onnx", "--mode", "qdq"],
     "a qdq export needs a QuantizedModel"),
    (["export", "{t}/w.npz", "--format", "c", "--out", "{t}/o"], "quantized activations"),
    (["export", "{t}/q.npz", "--format", "c", "--out", "{t}/no/deeper/"],
     "creates only the last folder of --out"),
    (["export", "{t}/tanh.npz", "--format", "c", "--out", "{t}/o"], "activation 'tanh'"),
    (["export", "{t}/q.npz", "--format", "c", "--out", "{t}/o", "--name", "my-net"],
     "C identifier"),
    (["export", "{t}/q.npz", "--format", "c", "--out", "{t}/q.npz"], "is not a directory"),
    (["export", "{t}/q.npz", "--format", "onnx", "--out", "{t}/o.txt"], "expected a name"),
    (["export", "{t}/q.npz", "--format", "c", "--out", "{t}/o", "--mode", "qdq"],
     "--format onnx only"),
    (["export", "{t}/q.npz", "--format", "onnx", "--out", "{t}/o.onnx", "--name", "n"],
     "--name would be ignored"),
    (["export", "{t}/f.npz", "--format", "c", "--out", "{t}/o", "--rounding", "single"],
     "a float export does not requantize"),
    (["export", "{t}/f.npz", "--format", "c", "--out", "{t}/o", "--fixed", "fixed8",
      "--rounding", "single"], "use --fixed-rounding"),
])
def test_bad_input_one_line_exit_2_nothing_written(files, capsys, argv, message):
    tmp, _ = files
    before = sorted(os.listdir(tmp))
    assert main([a.format(t=tmp) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert sorted(os.listdir(tmp)) == before


def _stat_mode(path):
    return os.stat(path).st_mode & 0o777


def test_exported_files_get_the_mode_of_every_output(files, capsys):
    # through minscale.io.atomic_write: a new file is 0644 whatever the umask, a replaced
    # file keeps its mode, no temporary file is left behind
    tmp, _ = files
    old = os.umask(0o077)
    try:
        assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out", str(tmp / "c"),
                     "--name", "net"]) == 0
    finally:
        os.umask(old)
    assert _stat_mode(tmp / "c" / "net.c") == 0o644 and _stat_mode(tmp / "c" / "net.h") == 0o644
    os.chmod(tmp / "c" / "net.c", 0o640)
    assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out", str(tmp / "c"),
                 "--name", "net"]) == 0
    assert _stat_mode(tmp / "c" / "net.c") == 0o640 and _stat_mode(tmp / "c" / "net.h") == 0o644
    assert sorted(os.listdir(tmp / "c")) == ["net.c", "net.h"]
    capsys.readouterr()


def test_exported_onnx_file_gets_the_mode_of_every_output(files, capsys):
    pytest.importorskip("onnx")
    tmp, _ = files
    old = os.umask(0o077)
    try:
        assert main(["export", str(tmp / "q.npz"), "--format", "onnx", "--out",
                     str(tmp / "q.onnx")]) == 0
    finally:
        os.umask(old)
    assert _stat_mode(tmp / "q.onnx") == 0o644
    assert not [f for f in os.listdir(tmp) if f.startswith(".")]
    capsys.readouterr()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("fmt,out", [("onnx", "/proc/x.onnx"), ("c", "/proc/newdir"),
                                     ("c", "/proc/self")])
def test_output_paths_checked_before_any_work(files, capsys, monkeypatch, fmt, out):
    # /proc refuses new files whatever os.access says (even to root): the check says so in
    # one line naming --out, before the model is even loaded
    from minscale.commands import export as command

    def no_work(path):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(command, "_load_model", no_work)
    tmp, _ = files
    assert main(["export", str(tmp / "q.npz"), "--format", fmt, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"minscale: error: --out '{out}")
    assert ".minscale-" not in err and ".tmp" not in err


def test_c_out_creates_at_most_the_last_folder(files, capsys):
    tmp, _ = files
    assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out",
                 str(tmp / "new" / "deeper") + os.sep]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "does not exist" in err
    assert not (tmp / "new").exists()
    assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out",
                 str(tmp / "new") + os.sep]) == 0
    assert sorted(os.listdir(tmp / "new")) == ["model.c", "model.h"]


def test_info_says_why_no_c_export(files, capsys):
    tmp, _ = files
    assert main(["info", str(tmp / "w.npz")]) == 0
    out = capsys.readouterr().out
    assert "C export    not available: an integer export needs quantized activations" in out


def test_export_fixed_point_from_the_command_line(files, capsys):
    from minscale.export.harness import find_compiler, run_c
    from minscale.quant import quantize_fixed_model
    tmp, _ = files
    assert main(["export", str(tmp / "f.npz"), "--format", "c", "--out", str(tmp / "fx"),
                 "--name", "dfx", "--fixed", "fixed16", "--fixed-rounding", "nearest_even",
                 "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "quantized to fixed16 (shifts rounded nearest_even)" in out
    assert "int16_t *input_codes" in (tmp / "fx" / "dfx.h").read_text()
    # the same model as quantize_fixed_model on the same training split
    model, X_tr, X_te, _ = trained("digits", 0.9)
    q = quantize_fixed_model(ms.load(tmp / "f.npz"), "fixed16", "fixed16", X_tr,
                             rounding="nearest_even")
    from minscale.export import c_sources
    assert c_sources(q, name="dfx")["dfx.c"] == (tmp / "fx" / "dfx.c").read_text()
    if find_compiler():
        res = run_c([{"model": q, "inputs": q.quantize_input(X_te), "name": "dfx"}])
        np.testing.assert_array_equal(res[0]["outputs"], q.predict_codes(X_te))
    assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out", str(tmp / "z"),
                 "--data", "digits"]) == 2
    assert "apply with --fixed only" in capsys.readouterr().err
    assert main(["export", str(tmp / "q.npz"), "--format", "c", "--out", str(tmp / "z"),
                 "--fixed", "fixed8", "--data", "digits"]) == 2
    assert "--fixed needs a float Sequential" in capsys.readouterr().err
    assert not (tmp / "z").exists()
