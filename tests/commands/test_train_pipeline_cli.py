"""The pipeline flags of ``minscale train``: --pipeline-stages P, --micro-batches M,
--schedule gpipe|1f1b, with --comm mpi under ``mpiexec -n P``."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minscale.cli import main

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--data", "diabetes", "--epochs", "2", "--batch-size", "30", "--seed", "0",
         "--hidden", "16,8", "--quiet"]
LOSS_LINE = re.compile(r"final train loss (\S+), test loss (\S+)")


def _env():
    return dict(os.environ, MINSCALE_BACKEND="numpy",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _run(*argv, launcher=(), timeout=180):
    return subprocess.run([*launcher, sys.executable, "-m", "minscale", *argv],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def _losses(stdout):
    matches = LOSS_LINE.findall(stdout)
    assert len(matches) == 1, stdout
    return matches[0]


@pytest.mark.parametrize("argv, words", [
    (["--pipeline-stages", "4"], ["--pipeline-stages 4", "3 layers"]),
    (["--pipeline-stages", "0"], ["--pipeline-stages must be an integer >= 1"]),
    (["--micro-batches", "0"], ["--micro-batches must be an integer >= 1"]),
    (["--pipeline-stages", "2", "--mode", "async", "--workers", "2"], ["--mode sync"]),
    (["--micro-batches", "2", "--workers", "2"], ["--workers 2"]),
    (["--pipeline-stages", "2", "--tensor-parallel", "2"], ["--tensor-parallel 2"]),
    (["--micro-batches", "2", "--tensor-parallel", "2"], ["--tensor-parallel 2"]),
    # an explicit --schedule without a pipeline would be ignored, so it is refused
    (["--schedule", "1f1b"], ["--schedule 1f1b needs --pipeline-stages > 1"]),
    (["--schedule", "gpipe", "--micro-batches", "2"], ["--schedule gpipe needs"]),
])
def test_bad_pipeline_options_are_one_line_and_exit_2(capsys, tmp_path, argv, words):
    save = tmp_path / "m.npz"
    code = main([*TRAIN, "--save", str(save), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not save.exists()


def test_unknown_schedule_is_refused_by_argparse(capsys):
    assert main([*TRAIN, "--schedule", "zigzag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--schedule: invalid choice: 'zigzag'" in err, err


def test_pipeline_prints_the_losses_of_the_micro_batch_run():
    single = _run(*TRAIN, "--micro-batches", "3")
    piped = _run(*TRAIN, "--pipeline-stages", "3", "--micro-batches", "3", "--schedule", "1f1b")
    assert single.returncode == 0, single.stderr
    assert piped.returncode == 0, piped.stderr
    # bit-equal parameters, so the printed losses agree in every digit
    assert _losses(piped.stdout) == _losses(single.stdout)


@pytest.mark.mpi
def test_mpi_pipeline_prints_the_losses_of_the_micro_batch_run():
    pytest.importorskip("mpi4py")
    candidate = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found")
    single = _run(*TRAIN, "--micro-batches", "4")
    piped = _run(*TRAIN, "--pipeline-stages", "2", "--micro-batches", "4", "--comm", "mpi",
                 launcher=(mpiexec, "-n", "2"))
    assert single.returncode == 0, single.stderr
    assert piped.returncode == 0, piped.stderr
    assert _losses(piped.stdout) == _losses(single.stdout)
    wrong = _run(*TRAIN, "--pipeline-stages", "3", "--micro-batches", "4", "--comm", "mpi",
                 launcher=(mpiexec, "-n", "2"))
    assert wrong.returncode != 0
    assert "--pipeline-stages 3 must divide the number of MPI ranks (mpiexec -n 2)" in wrong.stderr


def test_workers_times_pipeline_stages_prints_the_full_batch_losses():
    # 2 data-parallel replicas of a 2-stage pipeline: 4 processes; equal to plain training up
    # to the rounding of the re-associated gradient sums (bit equality is tested against the
    # replica reference in tests/train/test_pipeline_data.py)
    plain = _run(*TRAIN)
    grid = _run(*TRAIN, "--workers", "2", "--pipeline-stages", "2", "--micro-batches", "2")
    assert plain.returncode == 0, plain.stderr
    assert grid.returncode == 0, grid.stderr
    for a, b in zip(_losses(grid.stdout), _losses(plain.stdout)):
        assert float(a) == pytest.approx(float(b), rel=1e-5)  # printed to 6 digits
