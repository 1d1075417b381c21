"""The command line under hostile input: one clear line on stderr, the right exit code, no
traceback, nothing printed or written before the options are known to be good.

Most tests call ``minscale.cli.main`` in-process on a 40-row CSV with a 4-unit hidden layer
and 1..2 epochs; two subprocess tests cover what needs a real process (SIGTERM to a
data-parallel run, a pipe closed early).
"""
import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import hostile_files
import numpy as np
import pytest

import minscale as ms
from minscale.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "4", "--epochs", "2", "--quiet"]


def _csv(path, n=40, target=lambda i: 2 * i + 1, x0=lambda i: i):
    path.write_text("a,b,c,t\n" + "\n".join(f"{x0(i)},{i % 3},{(i * 7) % 5},{target(i)}"
                                            for i in range(n)) + "\n")
    return path


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, err, *words, expected_code=2):
    assert code == expected_code, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and "[Errno" not in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with tiny.csv, as the current directory."""
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "tiny.csv")
    return tmp_path


@pytest.fixture
def saved(work, capsys):
    """A model trained on tiny.csv, saved as m.npz (data recorded as an absolute path)."""
    assert main(["train", "--data", "tiny.csv", *TINY, "--save", "m.npz"]) == 0
    capsys.readouterr()
    return work / "m.npz"


# ----------------------------------------------------------------------------- 1. divergence,
# huge values


def test_divergence_is_one_line_exit_2(work, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning on the way either
        code, out, err = _run(capsys, ["train", "--data", "tiny.csv", "--lr", "1e10",
                                       "--optimizer", "sgd", "--epochs", "5", "--hidden", "4",
                                       "--quiet"])
    _one_line(code, err, "training diverged", "lower the learning rate")
    assert out == ""


@pytest.mark.parametrize("target, x0, what", [
    (lambda i: 1e200 * (1 + i % 2), lambda i: i, "target (training split) column 0"),
    (lambda i: i, lambda i: (-1) ** i * 1e308, "features (training split) column 0"),
])
def test_huge_values_are_one_line_without_warnings(work, capsys, target, x0, what):
    _csv(work / "huge.csv", target=target, x0=x0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow is reported, not warned about
        code, out, err = _run(capsys, ["train", "--data", "huge.csv", *TINY])
    _one_line(code, err, "--data 'huge.csv'", what, "overflows float64", "rescale")
    assert out == ""


def test_mean_and_scale_overflow_names_the_argument():
    from minscale.data import Standardizer, mean_and_scale, standardize
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # var of [1e200, 2e200] is 2.5e399 > float64 max ~1.8e308: overflow, not "constant"
        with pytest.raises(ValueError, match=r"^X_big column 1: its mean or standard "
                                             r"deviation overflows float64 \(largest \|value\| "
                                             r"2e\+200\)"):
            mean_and_scale([[0.0, 1e200], [1.0, 2e200]], name="X_big")
        # the sum 1e308 + 1e308 overflows: the mean is inf
        with pytest.raises(ValueError, match="X_train column 0"):
            standardize(np.array([[1e308], [1e308], [0.0]]))
        # fitted on [0, 2]: mean 1, scale 1; (1.7e308 - 1) / 1 fits, but a scale of 0.5 does not
        s = Standardizer().fit([[0.0], [1.0]])
        with pytest.raises(ValueError, match=r"^X_test value 1\.7e\+308 at index \(0, 0\) "
                                             r"overflows float64 when standardized"):
            s.transform([[1.7e308]], name="X_test")
    # a constant column of huge values is fine: variance 0, scale 1 (unchanged behaviour)
    mean, scale = mean_and_scale([[1e200], [1e200]])
    assert mean.tolist() == [1e200] and scale.tolist() == [1.0]


# ----------------------------------------------------------------------------- 2., 3. prune


def test_prune_of_a_quantized_model_is_one_line(saved, capsys):
    assert main(["quantize", "m.npz", "--bits", "8", "--out", "q.npz"]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, ["prune", "q.npz", "--sparsity", "0.5"])
    _one_line(code, err, "'q.npz' holds a QuantizedModel; prune needs a float Sequential "
                         "model")
    assert out == ""


def test_prune_defaults_to_the_recorded_data_and_data_wins(saved, capsys):
    code, out, err = _run(capsys, ["prune", "m.npz", "--sparsity", "0.5"])
    assert code == 0, err
    # 40 rows, test_size 0.2: ceil(8) = 8 test rows, 32 train rows (the recorded split)
    assert "data tiny: 32 train / 8 test rows" in out and err == ""
    _csv(saved.parent / "other.csv", n=50)
    code, out, err = _run(capsys, ["prune", "m.npz", "--sparsity", "0.5", "--data",
                                   "other.csv"])
    assert code == 0, err
    assert "data other: 40 train / 10 test rows" in out
    assert "--data 'other.csv' (trained with" in err  # the split differs from training's


# ----------------------------------------------------------------------------- 4. output paths


BAD_OUTPUTS = [
    (["train", "--data", "tiny.csv", *TINY, "--save", "no/such/m.npz"], "--save",
     "does not exist"),
    (["train", "--data", "tiny.csv", *TINY, "--save", "."], "--save", "is a directory"),
    (["train", "--data", "tiny.csv", *TINY, "--save", "tiny.csv/m.npz"], "--save",
     "is not a directory"),
    (["prune", "m.npz", "--sparsity", "0.5", "--out", "no/such/p.npz"], "--out",
     "does not exist"),
    (["quantize", "m.npz", "--out", "sub"], "--out", "is a directory"),
    (["study", "--data", "tiny.csv", "--json", "no/such/s.json"], "--json", "does not exist"),
    (["study", "--data", "tiny.csv", "--csv", "sub"], "--csv", "is a directory"),
    (["study", "--data", "tiny.csv", "--plot", "p.jpg2"], "--plot",
     "expected a name ending in .png, .pdf, .svg"),
    (["study", "--data", "tiny.csv", "--plot", "p.pgf"], "--plot", "got extension '.pgf'"),
    # a name ending in a separator is a folder's, even when no such folder exists
    (["train", "--data", "tiny.csv", *TINY, "--save", "m2.npz/"], "--save",
     "'m2.npz/' ends in '/', which names a folder; expected a file name"),
    (["train", "--data", "tiny.csv", *TINY, "--save", "new/"], "--save", "ends in '/'"),
    (["prune", "m.npz", "--sparsity", "0.5", "--out", "p.npz/"], "--out", "ends in '/'"),
    (["quantize", "m.npz", "--out", "sub/"], "--out", "ends in '/'"),
    (["study", "--data", "tiny.csv", "--json", "s.json/"], "--json", "ends in '/'"),
    (["study", "--data", "tiny.csv", "--csv", "s.csv/"], "--csv", "ends in '/'"),
    (["study", "--data", "tiny.csv", "--plot", "p.png/"], "--plot", "ends in '/'"),
    (["study", "--data", "tiny.csv", "--plot", "p/"], "--plot", "ends in '/'"),
    # names the file system refuses (NAME_MAX 255 bytes; the atomic write's temporary file
    # adds up to 22), and a path beyond PATH_MAX (4096)
    (["train", "--data", "tiny.csv", *TINY, "--save", "m" * 300 + ".npz"], "--save",
     "the file name is 304 bytes long, more than the 233 this file system allows (NAME_MAX"),
    (["train", "--data", "tiny.csv", *TINY, "--save", "m" * 230 + ".npz"], "--save",
     "the file name is 234 bytes long, more than the 233"),
    (["prune", "m.npz", "--sparsity", "0.5", "--out", "é" * 200 + ".npz"], "--out",
     "the file name is 404 bytes long"),
    (["quantize", "m.npz", "--out", "q" * 300], "--out", "NAME_MAX"),
    (["study", "--data", "tiny.csv", "--json", "j" * 300], "--json", "NAME_MAX"),
    (["study", "--data", "tiny.csv", "--csv", "c" * 300], "--csv", "NAME_MAX"),
    (["study", "--data", "tiny.csv", "--plot", "p" * 300 + ".png"], "--plot", "NAME_MAX"),
    (["train", "--data", "tiny.csv", *TINY, "--save", ("d" * 200 + "/") * 21 + "m.npz"],
     "--save", "PATH_MAX"),
]


@pytest.mark.parametrize("argv, flag, words", BAD_OUTPUTS,
                         ids=[f"{a[0]} {a[-2]} {ascii(a[-1][:16])[1:-1]}"
                              + (f"...({len(a[-1])})" if len(a[-1]) > 16 else "")
                              for a, _, _ in BAD_OUTPUTS])
def test_unusable_output_paths_are_rejected_before_any_work(saved, capsys, argv, flag, words):
    (saved.parent / "sub").mkdir()
    before = sorted(p.name for p in saved.parent.iterdir())
    t0 = time.perf_counter()
    code, out, err = _run(capsys, argv)
    _one_line(code, err, flag, words)
    assert out == ""  # nothing trained, pruned or measured first
    assert sorted(p.name for p in saved.parent.iterdir()) == before  # nothing written
    assert time.perf_counter() - t0 < 30  # a generous bound: no study or training ran


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_folder_that_refuses_files_is_rejected_before_training_even_as_root(saved, capsys):
    # /proc passes os.access for root, yet no file can be created in it: the check creates
    # the write's temporary file for real before any work
    code, out, err = _run(capsys, ["train", "--data", "tiny.csv", *TINY, "--save",
                                   "/proc/m.npz"])
    _one_line(code, err, "--save '/proc/m.npz'", "cannot create a file in '/proc'")
    assert out == ""  # not trained first


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_rejected_up_front(saved, capsys):
    ro = saved.parent / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = _run(capsys, ["prune", "m.npz", "--sparsity", "0.5", "--out",
                                       "ro/p.npz"])
    finally:
        ro.chmod(0o700)
    _one_line(code, err, "--out 'ro/p.npz'", "is not writable")
    assert out == ""


def test_a_failing_final_write_is_one_line(saved, capsys, monkeypatch):
    # the up-front check's probe file succeeds, the write itself then fails
    import minscale.io as msio

    real_mkstemp = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if ".probe." in kwargs.get("prefix", ""):
            return real_mkstemp(*args, **kwargs)
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", refuse)
        code, out, err = _run(capsys, ["prune", "m.npz", "--sparsity", "0.5", "--out",
                                       "p.npz"])
    _one_line(code, err, "cannot write 'p.npz'", "Permission denied")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(msio.os, "fsync", disk_full)
        code, out, err = _run(capsys, ["prune", "m.npz", "--sparsity", "0.5", "--out",
                                       "p.npz"])
    # not a usage mistake: exit code 1, still one line
    _one_line(code, err, "No space left on device", expected_code=1)
    assert not (saved.parent / "p.npz").exists()
    assert [p.name for p in saved.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_plot_without_extension_gets_png_and_prints_the_real_name(work, capsys, monkeypatch):
    from minscale import report, study
    from minscale.commands.study import check_outputs
    args = argparse.Namespace(quick=True, epochs=None, batch_size=None, json=None, csv=None,
                              plot="noext")
    check_outputs(args)
    assert args.plot == "noext.png"
    # the whole command, with the study and the drawing replaced by stand-ins
    monkeypatch.setattr(study, "run_study", lambda task, config, progress=None: {})
    monkeypatch.setattr(report, "render_text", lambda result: "")
    monkeypatch.setattr(report, "plot", lambda result, path: Path(path).write_bytes(b"x"))
    code, out, err = _run(capsys, ["study", "--data", "tiny.csv", "--quick", "--plot",
                                   "noext"])
    assert code == 0, err
    assert out == "wrote noext.png\n" and (work / "noext.png").exists()


# ----------------------------------------------------------------------------- 5. broken pipe


class _ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_broken_pipe_in_process_exits_141_quietly(saved, capsys, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", _ClosedPipe())
        code = main(["info", "m.npz"])
    assert code == 141
    assert capsys.readouterr().err == ""


def test_broken_pipe_subprocess_exits_141_without_traceback(saved):
    proc = subprocess.Popen([sys.executable, "-m", "minscale", "info", "m.npz"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=saved.parent,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.close()  # like `| head -0`: no reader left when the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


# ----------------------------------------------------------------------------- 6. SIGTERM


def test_sigterm_in_process_is_handled_like_ctrl_c_and_the_handler_restored(monkeypatch,
                                                                            capsys):
    import minscale.commands.info as info
    seen = []

    def run(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler long before this ends
        seen.append("not interrupted")
        return 0

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(info, "run", run)
    code, out, err = _run(capsys, ["info", "whatever.npz"])
    assert code == 143 and err == "minscale: terminated\n" and seen == []
    assert signal.getsignal(signal.SIGTERM) is previous


def _shm_names():
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /dev/shm")
def test_sigterm_to_a_data_parallel_run_frees_shared_memory(work):
    before = _shm_names()
    # like `timeout`: the command in its own process group, SIGTERM to the whole group
    proc = subprocess.Popen([sys.executable, "-m", "minscale", "train", "--data", "tiny.csv",
                             "--hidden", "4", "--epochs", "100000", "--batch-size", "8",
                             "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=work, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (_shm_names() - before):
        time.sleep(0.1)  # until the parent has created the shared buffers
    assert _shm_names() - before, "the workers never started"
    time.sleep(3)  # let the spawned workers import and enter training
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.splitlines()[-1] == "minscale: terminated", err
    leaked = {n for n in _shm_names() - before if n.startswith(("minscale_", "psm_", "sem.mp-"))}
    assert leaked == set(), leaked


# ----------------------------------------------------------------------------- absurd sizes


HUGE = "1" + "0" * 30  # 31 digits, past int64

BIG_INTEGERS = [
    (["train", "--data", "tiny.csv", *TINY, "--batch-size", HUGE], "--batch-size"),
    (["train", "--data", "tiny.csv", "--hidden", "4", "--quiet", "--epochs", HUGE], "--epochs"),
    (["train", "--data", "tiny.csv", *TINY, "--workers", "-" + HUGE], "--workers"),
    (["train", "--data", "tiny.csv", *TINY, "--hidden", "4," + HUGE], "--hidden"),
    (["train", "--data", "tiny.csv", *TINY, "--hidden", "2147483648"], "--hidden"),
    (["prune", "m.npz", "--sparsity", "0.5", "--finetune-epochs", HUGE], "--finetune-epochs"),
    (["prune", "m.npz", "--sparsity", "0.5", "--finetune-epochs", "1", "--batch-size", HUGE],
     "--batch-size"),
    (["prune", "m.npz", "--sparsity", "0.5", "--bits", HUGE], "--bits"),
    (["quantize", "m.npz", "--qat-epochs", HUGE], "--qat-epochs"),
    (["quantize", "m.npz", "--qat-epochs", "1", "--batch-size", HUGE], "--batch-size"),
    (["quantize", "m.npz", "--calibrate", "--calibration-rows", HUGE], "--calibration-rows"),
    (["quantize", "m.npz", "--bits", "8", "--frac-bits", "-" + HUGE], "--frac-bits"),
    (["evaluate", "m.npz", "--batch-size", HUGE], "--batch-size"),
    (["study", "--data", "tiny.csv", "--batch-size", HUGE], "--batch-size"),
    (["study", "--data", "tiny.csv", "--epochs", HUGE], "--epochs"),
    (["study", "--data", "tiny.csv", "--hidden", HUGE], "--hidden"),
]


@pytest.mark.parametrize("argv, flag", BIG_INTEGERS,
                         ids=[f"{a[0]} {f}" for a, f in BIG_INTEGERS])
def test_integer_options_past_the_count_limit_are_one_line(saved, capsys, argv, flag):
    # past int64 these reached Numba (a typing traceback, exit 1) or numpy (OverflowError)
    t0 = time.perf_counter()
    code, out, err = _run(capsys, argv)
    _one_line(code, err, f"argument {flag}:", "2**31 - 1 = 2147483647")
    assert out == ""
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("argv", [
    ["train", "--data", "tiny.csv", *TINY, "--seed", HUGE],
    ["train", "--data", "tiny.csv", *TINY, "--seed", "-1"],
    ["evaluate", "m.npz", "--seed", str(2**63)],
    ["demo", "--no-study", "--seed", HUGE],
], ids=["train 31 digits", "train -1", "evaluate 2**63", "demo 31 digits"])
def test_seeds_outside_the_int64_range_are_one_line(saved, capsys, argv):
    code, out, err = _run(capsys, argv)
    _one_line(code, err, "argument --seed: must be an integer in [0, 2**63 - 1]")
    assert out == ""


def test_the_count_limit_itself_is_accepted_on_the_command_line(work, capsys):
    code, out, err = _run(capsys, ["train", "--data", "tiny.csv", *TINY, "--batch-size",
                                   "2147483647"])
    assert code == 0, err
    assert "final train loss" in out


@pytest.mark.parametrize("command", [["train", "--epochs", "1", "--quiet"],
                                     ["study", "--quick", "--no-progress"]])
def test_a_hidden_model_too_large_for_memory_is_one_line_before_training(work, capsys,
                                                                         monkeypatch, command):
    from minscale import data
    monkeypatch.setattr(data, "memory_limit", lambda: 2**30)
    # 3 features -> 10000 -> 10000 -> 1: 100,060,001 parameters of 18 bytes: 1.7 GiB
    code, out, err = _run(capsys, [*command, "--data", "tiny.csv", "--hidden", "10000,10000"])
    _one_line(code, err, "--hidden 10000,10000: 100,060,001 parameters (input_dim 3, units "
                         "[10000, 10000, 1], float64): their parameter, gradient and mask "
                         "buffers need 1.7 GiB (1,801,080,026 bytes), more than the 1.0 GiB "
                         "(1,073,741,824 bytes) of physical memory")
    assert out == ""


def test_too_many_updates_for_memory_are_one_line_before_training(saved, capsys,
                                                                  monkeypatch):
    from minscale import data
    from minscale.train import BYTES_PER_UPDATE
    monkeypatch.setattr(data, "memory_limit", lambda: 10**6)
    # tiny.csv: 32 training rows, batches of 32 (train) / 32 (prune, quantize): 1 per epoch
    n = 10**5
    for argv, flag in ((["train", "--data", "tiny.csv", "--hidden", "4", "--quiet"],
                        "--epochs"),
                       (["prune", "m.npz", "--sparsity", "0.5"], "--finetune-epochs"),
                       (["quantize", "m.npz"], "--qat-epochs")):
        code, out, err = _run(capsys, argv + [flag, str(n)])
        _one_line(code, err, f"{flag} 100000 of 1 batches (32 rows, --batch-size 32) make "
                             f"100,000 updates", f"({n * BYTES_PER_UPDATE:,} bytes), more than "
                             "the 976.6 KiB (1,000,000 bytes) of physical memory",
                  f"give fewer {flag} or a larger --batch-size")
        assert out == ""


# ----------------------------------------------------------------------------- 7. workers


@pytest.mark.parametrize("extra, words", [
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--workers", "33"], "--workers must be at most the number of training rows (32), got 33"),
    (["--mode", "async"], "--mode async needs --workers >= 2, got --workers 1"),
    (["--mode", "async", "--comm", "mpi"], "--mode async runs on worker processes of one "
                                           "machine (--workers N) and is not available with "
                                           "--comm mpi"),
])
def test_worker_options_are_checked(work, capsys, monkeypatch, extra, words):
    # a machine with many CPUs, so that the row limit, not the CPU limit, is the one hit
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    code, out, err = _run(capsys, ["train", "--data", "tiny.csv", *TINY, *extra])
    _one_line(code, err, words)
    assert out == ""


# ----------------------------------------------------------------------------- 8. ignored or
# out-of-range options (checked before the model file is even opened)


@pytest.mark.parametrize("extra, words", [
    (["--lr", "0.1"], "--lr applies to quantization-aware training only"),
    (["--batch-size", "8"], "--batch-size applies to quantization-aware training only"),
    (["--qat-epochs", "1", "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--qat-epochs", "1", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--qat-epochs", "1", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--calibration-rows", "5"], "--calibration-rows applies to calibrated activations"),
    (["--requantize-rounding", "single"], "--requantize-rounding applies to calibrated"),
    (["--bits", "8", "--frac-bits", "17"], "--frac-bits must be in [-8, 16]"),
    (["--bits", "4", "--frac-bits", "-5"], "--frac-bits must be in [-4, 8]"),
])
def test_quantize_rejects_ignored_and_out_of_range_options(work, capsys, extra, words):
    code, out, err = _run(capsys, ["quantize", "absent.npz", *extra])
    _one_line(code, err, words)
    assert out == ""


def test_frac_bits_range_ends_are_accepted():
    from minscale.commands.quantize import weight_spec_from_args
    for bits, f in ((8, -8), (8, 16), (2, -2), (2, 4)):
        args = argparse.Namespace(bits=bits, per_channel=False, affine=False, frac_bits=f)
        assert weight_spec_from_args(args).frac_bits == f


@pytest.mark.parametrize("extra, words", [
    (["--method", "structured", "--norm", "0.5"], "--norm must be >= 1"),
    (["--method", "structured", "--norm", "nan"], "--norm must be >= 1"),
    (["--norm", "3"], "--norm applies to --method structured only"),
    (["--finetune-epochs", "1", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["--finetune-epochs", "1", "--lr", "inf"], "--lr must be a finite number > 0"),
    (["--finetune-epochs", "1", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--lr", "0.01"], "--lr applies to fine-tuning only"),
    (["--batch-size", "4"], "--batch-size applies to fine-tuning only"),
    (["--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
])
def test_prune_validates_options_before_anything(work, capsys, extra, words):
    code, out, err = _run(capsys, ["prune", "absent.npz", "--sparsity", "0.5", *extra])
    _one_line(code, err, words)
    assert out == ""


def test_prune_structured_with_norm_and_finetuning_runs(saved, capsys):
    code, out, err = _run(capsys, ["prune", "m.npz", "--sparsity", "0.5", "--method",
                                   "structured", "--norm", "inf", "--finetune-epochs", "1",
                                   "--lr", "0.01", "--batch-size", "8"])
    assert code == 0, err
    assert "finetuned (1 epochs):" in out
    # structured at 0.5 of 4 hidden units removes 2 whole columns: half of W1 (3x4) is zero
    assert "0      (3, 4)            0.5000" in out


# ----------------------------------------------------------------------------- 9. recorded path


def test_recorded_data_path_is_absolute_and_missing_data_says_so(saved, capsys, tmp_path,
                                                                 monkeypatch):
    from minscale.io import load
    assert load(saved).state["data"]["data"] == str(saved.parent / "tiny.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = _run(capsys, ["evaluate", str(saved)])
    assert code == 0, err
    assert "on tiny: 8 held-out rows" in out
    (saved.parent / "tiny.csv").rename(saved.parent / "moved.csv")
    for argv in (["evaluate", str(saved)], ["prune", str(saved), "--sparsity", "0.5"],
                 ["quantize", str(saved)]):
        code, out, err = _run(capsys, argv)
        _one_line(code, err, f"the data file {str(saved.parent / 'tiny.csv')!r} recorded in "
                             f"the model file {str(saved)!r} does not exist", "--data")
        assert out == ""


def test_shipped_names_are_recorded_as_names(work, capsys):
    from minscale.io import load
    assert main(["train", "--data", "diabetes", "--hidden", "2", "--epochs", "1", "--quiet",
                 "--save", "d.npz"]) == 0
    assert load(work / "d.npz").state["data"]["data"] == "diabetes"


# ----------------------------------------------------------------------------- 10. messages


@pytest.mark.parametrize("argv, words", [
    (["info", "none.npz"], "path 'none.npz': no such file"),
    (["evaluate", "none.npz"], "path 'none.npz': no such file"),
    (["prune", "none.npz", "--sparsity", "0.5"], "model 'none.npz': no such file"),
    (["quantize", "none.npz"], "model 'none.npz': no such file"),
    (["info", "."], "path '.' is not a regular file"),
])
def test_missing_model_file_names_the_argument(work, capsys, argv, words):
    code, out, err = _run(capsys, argv)
    _one_line(code, err, words)
    assert out == ""


def test_non_utf8_csv_and_non_zip_npz_name_the_file(work, capsys):
    (work / "latin.csv").write_bytes("a,b\n\xe9,1\n".encode("latin-1"))
    code, _, err = _run(capsys, ["train", "--data", "latin.csv", *TINY])
    _one_line(code, err, "path='latin.csv' is not UTF-8 text (byte 0xe9")
    (work / "text.npz").write_text("not an archive\n")
    code, _, err = _run(capsys, ["train", "--data", "text.npz", *TINY])
    _one_line(code, err, "path='text.npz' is not a readable .npz archive: not a zip file")
    assert "pickle" not in err


# ----------------------------------------------------------------------------- 11. atomic writes


def test_write_json_and_csv_never_leave_a_truncated_file(tmp_path, monkeypatch):
    from minscale import report
    path_json, path_csv = tmp_path / "r.json", tmp_path / "r.csv"
    path_json.write_text("old json\n")
    path_csv.write_text("old csv\n")
    # a non-finite value: refused before the file is touched
    with pytest.raises(ValueError):
        report.write_json({"loss": float("nan")}, path_json)
    assert path_json.read_text() == "old json\n"
    # Ctrl-C during the write (here: at the fsync before the rename)

    def interrupted(fd):
        raise KeyboardInterrupt

    row = {k: None for k in report.CSV_COLUMNS}
    with monkeypatch.context() as m:
        m.setattr(report, "csv_rows", lambda result: [row, row])
        m.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            report.write_json({"loss": 1.0}, path_json)
        with pytest.raises(KeyboardInterrupt):
            report.write_csv({}, path_csv)
    assert path_json.read_text() == "old json\n" and path_csv.read_text() == "old csv\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temp file
    monkeypatch.setattr(report, "csv_rows", lambda result: [row])
    report.write_json({"loss": 1.0}, path_json)
    report.write_csv({}, path_csv)
    assert json.loads(path_json.read_text()) == {"loss": 1.0}
    # the csv module's row terminator, as before: \r\n
    assert path_csv.read_bytes() == (",".join(report.CSV_COLUMNS) + "\r\n"
                                     + "," * (len(report.CSV_COLUMNS) - 1) + "\r\n").encode()


# ----------------------------------------------------------------------------- 12. class labels


@pytest.mark.parametrize("y, words", [
    ([3, 3, 3, 3], "only one class (3)"),
    ([0, 10, 20, 10], "class labels 0..20 (21 classes) but only 3 distinct labels occur"),
    ([0, 1, 1500, 2], "0..1500 (1501 classes) but only 4 distinct"),
])
def test_implausible_integer_labels_are_rejected(tmp_path, y, words):
    from minscale.datasets import load
    path = tmp_path / "labels.npz"
    np.savez(path, X=np.ones((len(y), 2)), y=np.array(y))
    with pytest.raises(ValueError, match="array 'y'") as info:
        load(path)
    assert words in str(info.value) and "store it as floats" in str(info.value)


def test_labels_with_a_gap_under_half_are_accepted_and_the_cli_names_y(work, capsys):
    from minscale.datasets import load
    # labels 0, 1, 3: 4 classes, 3 distinct, 4 <= 2 * 3
    np.savez(work / "gap.npz", X=np.ones((6, 2)), y=np.array([0, 1, 3, 0, 1, 3]))
    assert load(work / "gap.npz")[2]["n_classes"] == 4
    np.savez(work / "one.npz", X=np.ones((6, 2)), y=np.zeros(6, dtype=int))
    code, out, err = _run(capsys, ["train", "--data", "one.npz", *TINY])
    _one_line(code, err, "one.npz: array 'y' holds integer class labels but only one class")


def test_output_paths_that_are_not_regular_files_are_refused(tmp_path, capsys):
    # os.replace would put a regular file in place of a FIFO, a device or the link itself
    import os

    from minscale.io import atomic_write

    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    link = tmp_path / "link.npz"
    link.symlink_to(tmp_path / "target.npz")
    for path in (fifo, link):
        with pytest.raises(ValueError, match="not a regular file"):
            atomic_write(path, lambda fh: fh.write(b"x"))
    assert main(["train", "--epochs", "1", "--save", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert main(["study", "--quick", "--json", str(link)]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert fifo.is_fifo() and link.is_symlink() and not (tmp_path / "target.npz").exists()


def test_prune_refuses_a_sparsity_below_the_current_one(tmp_path, capsys):
    model_path, pruned = tmp_path / "m.npz", tmp_path / "p.npz"
    assert main(["train", "--epochs", "1", "--hidden", "4", "--quiet", "--save",
                 str(model_path)]) == 0
    assert main(["prune", str(model_path), "--sparsity", "0.8", "--out", str(pruned)]) == 0
    capsys.readouterr()
    assert main(["prune", str(pruned), "--sparsity", "0.5"]) == 2
    assert "below the model's current sparsity" in capsys.readouterr().err


def test_workers_far_above_the_cpu_count_and_decay_options_without_a_rate(capsys):
    assert main(["train", "--workers", "10000"]) == 2
    assert "--workers must be at most" in capsys.readouterr().err
    assert main(["train", "--staircase"]) == 2
    assert "--decay-rate" in capsys.readouterr().err


def test_ctrl_c_during_worker_start_up_is_one_line(tmp_path):
    # SIGINT to the whole process group (as a terminal's Ctrl-C) while workers are starting:
    # workers start with SIGINT blocked, so only the parent reports, in one line
    proc = subprocess.Popen([sys.executable, "-m", "minscale", "train", "--data", "digits",
                             "--hidden", "64", "--epochs", "200", "--workers", "2", "--quiet"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["minscale: interrupted"]


@pytest.mark.parametrize("make, words", [
    # X claims 256 MiB in 266 kB of deflated zeros; y has 10 rows
    (lambda p: hostile_files.deflate_bomb_npz(p, x_rows=2**17, d=256, y_rows=10),
     "'X' has 131072 rows but 'y' has 10"),
    (lambda p: hostile_files.huge_shape_npz(p), "declares shape (1000000000000,)"),
    (lambda p: hostile_files.inflates_past_npz(p, extra_bytes=2**28),
     "inflates past its declared size"),
    (lambda p: hostile_files.oversized_member_npz(p, zero_bytes=2**28),
     "declares shape (8, 1) of float64 (64 bytes) but its member holds 268,435,456 bytes"),
    (lambda p: hostile_files.beyond_deflate_npz(p), "more than deflate's limit"),
], ids=["rows", "shape", "inflates-past", "oversized-member", "beyond-deflate"])
def test_hostile_data_files_are_one_line_within_200_mb(tmp_path, make, words):
    path = make(tmp_path / "hostile.npz")
    assert path.stat().st_size < 2**20
    code, err, peak_mb = hostile_files.peak_rss_mb(
        ["train", "--data", path, "--epochs", "1", "--hidden", "2", "--quiet"], cwd=tmp_path)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err and "hostile.npz" in err, err
    assert peak_mb < 200, peak_mb


def test_activation_without_hidden_layers_is_refused_and_no_hidden_is_a_linear_model(work,
                                                                                     capsys):
    code, out, err = _run(capsys, ["train", "--data", "tiny.csv", "--hidden",
                                   "", "--activation", "tanh", "--epochs", "1", "--quiet"])
    _one_line(code, err, "--activation tanh: --hidden '' builds no hidden layer")
    assert out == ""
    code, out, err = _run(capsys, ["train", "--data", "tiny.csv", "--hidden",
                                   "", "--epochs", "1", "--quiet", "--save", "lin.npz"])
    assert code == 0, err
    model = ms.load(work / "lin.npz")
    # three features, one output: W (3, 1) and b (1,), no hidden layer
    assert [layer.W.shape for layer in model.layers] == [(3, 1)] and model.params.size == 4
