"""The data-parallel flags of ``minscale train``: --workers K, --mode sync|async, --comm mpi.

Each test runs the command in a fresh interpreter (as a user would), so worker processes,
stdout and exit codes are the real ones.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", "diabetes", "--epochs", "3", "--batch-size", "16", "--seed", "0", "--quiet"]
LOSS_LINE = re.compile(r"final train loss (\S+), test loss (\S+)")


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _minscale(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "minscale", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT)


def _losses(stdout):
    matches = LOSS_LINE.findall(stdout)
    assert len(matches) == 1, stdout
    return tuple(float(v) for v in matches[0])


def test_workers_2_sync_prints_the_single_process_losses():
    single = _minscale(*TRAIN)
    parallel = _minscale(*TRAIN, "--workers", "2")
    assert single.returncode == 0, single.stderr
    assert parallel.returncode == 0, parallel.stderr
    # Printed with 6 significant digits: sync equals single-process to far more than that.
    assert _losses(parallel.stdout) == _losses(single.stdout)


def test_workers_2_async_trains():
    proc = _minscale(*TRAIN, "--workers", "2", "--mode", "async")
    assert proc.returncode == 0, proc.stderr
    train_loss, test_loss = _losses(proc.stdout)
    # Standardized target: an untrained model scores about 1.
    assert 0 < train_loss < 1 and 0 < test_loss < 1


def test_bad_worker_count_is_one_line_and_exit_2():
    proc = _minscale(*TRAIN, "--workers", "0")
    assert proc.returncode == 2
    assert "workers must be an integer >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.mpi
def test_comm_mpi_under_mpiexec_prints_once_and_matches_single_process():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minscale[mpi]')")
    candidate = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found next to the interpreter or on PATH (pip install mpich)")
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "minscale", *TRAIN, "--comm", "mpi"],
                          capture_output=True, text=True, timeout=180, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("data diabetes:") == 1  # only rank 0 prints
    assert _losses(proc.stdout) == _losses(_minscale(*TRAIN).stdout)
