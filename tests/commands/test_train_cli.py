"""The data-parallel flags of ``minscale train``: --workers K, --mode sync|async, --comm mpi.

Each test runs the command in a fresh interpreter (as a user would), so worker processes,
stdout and exit codes are the real ones.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--data", "diabetes", "--epochs", "3", "--batch-size", "16", "--seed", "0", "--quiet"]
LOSS_LINE = re.compile(r"final train loss (\S+), test loss (\S+)")
# long enough to be still training when the test intervenes
ENDLESS = ["train", "--data", "diabetes", "--epochs", "100000", "--batch-size", "16", "--quiet",
           "--workers", "2"]


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


# ------------------------------------------------------------------ failures of the worker group


def _children(pid):
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid, state = stat.read_text().rsplit(")", 1)[1].split()[1::-1]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _shm_files_mapped_by(pids):
    """The /dev/shm files (segments and semaphores) that processes `pids` have mapped."""
    found = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if "/dev/shm/" in line and not line.endswith("(deleted)"):
                found.add(Path(line.split(maxsplit=5)[5]))
    return found


def _start_training(mode):
    """`minscale train --workers 2` in its own session; returns it and its 2 worker pids."""
    proc = subprocess.Popen([sys.executable, "-m", "minscale", *ENDLESS, "--mode", mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        workers = [pid for pid in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if len(workers) == 2:
            break
        assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    time.sleep(3)  # into the training loop
    return proc, workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_workers_exit_within_seconds_of_a_sigkilled_parent_and_leave_no_segment(mode):
    proc, workers = _start_training(mode)
    try:
        # the run's segments and the barrier's semaphores (sem.mp-*), as the workers see them
        ours = _shm_files_mapped_by(workers)
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while any(_alive(pid) for pid in workers) and time.monotonic() - killed < 30:
            time.sleep(0.1)
        exited_after = time.monotonic() - killed
        # the dead parent's resource tracker unlinks them once the last worker is gone
        while any(path.exists() for path in ours) and time.monotonic() - killed < 30:
            time.sleep(0.1)
        left = [path for path in ours if path.exists()]
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not any(_alive(pid) for pid in workers) and exited_after < 30, exited_after
    assert any(path.name.startswith(f"minscale_{proc.pid}_") for path in ours), ours
    assert any(path.name.startswith("sem.") for path in ours), ours
    assert left == [], left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_killed_worker_is_one_line_without_the_main_guard_hint():
    proc, workers = _start_training("sync")
    try:
        os.kill(workers[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("minscale: error: worker rank ") and "was killed by signal SIGKILL" in line, line
    # the hint is for scripts without `if __name__ == "__main__":`, not for the command line
    assert "__main__" not in line, line
