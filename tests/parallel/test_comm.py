"""Communicators: pure rules (shards, rank-order reduction), LocalComm, SharedMemoryComm under
spawn (allreduce, broadcast, timeouts, dead peers, Ctrl-C, no leftover segments) and MPIComm
under ``mpiexec -n 2``.

Worker functions are module level: the spawn start method pickles them by reference and the
worker imports this module to find them.
"""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minscale.parallel import (
    CommAbortedError,
    CommTimeoutError,
    Communicator,
    LocalComm,
    SharedArray,
    SharedMemoryComm,
    SharedMemoryGroup,
    WorkerError,
    reduce_in_rank_order,
    run_workers,
    shard_bounds,
)
from minscale.parallel.base import check_buffer, default_timeout
from minscale.parallel.shm import BoundedBarrier, check_not_bootstrapping, process_gone

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
SHM_DIR = Path("/dev/shm")


def _segment_exists(name):
    return (SHM_DIR / name.lstrip("/")).exists()


# ---------------------------------------------------------------------------------------------
# shard_bounds
# ---------------------------------------------------------------------------------------------

# Reference: numpy.array_split(np.arange(n), size) boundaries, written out by hand.
SHARD_REFERENCE = [
    (5, 2, [(0, 3), (3, 5)]),
    (5, 3, [(0, 2), (2, 4), (4, 5)]),
    (7, 3, [(0, 3), (3, 5), (5, 7)]),
    (2, 3, [(0, 1), (1, 2), (2, 2)]),
    (0, 2, [(0, 0), (0, 0)]),
    (6, 1, [(0, 6)]),
]


@pytest.mark.parametrize("n, size, expected", SHARD_REFERENCE)
def test_shard_bounds_reference(n, size, expected):
    assert [shard_bounds(n, r, size) for r in range(size)] == expected


@given(n=st.integers(0, 500), size=st.integers(1, 9))
@settings(max_examples=60)
def test_shard_bounds_tile_the_batch_and_differ_by_at_most_one(n, size):
    bounds = [shard_bounds(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)
    assert lengths == [len(s) for s in np.array_split(np.arange(n), size)]


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(n=-1, rank=0, size=2), ValueError, "n must be >= 0, got -1"),
        (dict(n=4, rank=0, size=0), ValueError, "size must be >= 1, got 0"),
        (dict(n=4, rank=2, size=2), ValueError, "rank must be in [0, 2), got 2"),
        (dict(n=4.0, rank=0, size=2), TypeError, "n must be an int, got float"),
    ],
)
def test_shard_bounds_rejects_bad_input(kwargs, exc, words):
    with pytest.raises(exc) as info:
        shard_bounds(**kwargs)
    assert words in str(info.value)


# ---------------------------------------------------------------------------------------------
# reduce_in_rank_order and buffer checks
# ---------------------------------------------------------------------------------------------


def test_reduce_in_rank_order_reference_values():
    # Worked by hand: rows [1, -2, 3], [4, 5, -6], [0.5, 0.5, 0.5].
    slots = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0], [0.5, 0.5, 0.5]])
    out = np.empty(3)
    np.testing.assert_array_equal(reduce_in_rank_order(slots, "sum", out), [5.5, 3.5, -2.5])
    np.testing.assert_array_equal(reduce_in_rank_order(slots, "max", out), [4.0, 5.0, 3.0])
    np.testing.assert_array_equal(reduce_in_rank_order(slots, "min", out), [0.5, -2.0, -6.0])


def test_reduce_in_rank_order_adds_left_to_right():
    # 1e16 + 1 + 1 loses both ones left to right (1e16 + 1 rounds back to 1e16 in float64);
    # adding the ones first would give 1e16 + 2. The order is part of the contract.
    slots = np.array([[1e16], [1.0], [1.0]])
    assert reduce_in_rank_order(slots, "sum", np.empty(1))[0] == 1e16
    assert reduce_in_rank_order(slots[::-1].copy(), "sum", np.empty(1))[0] == 1e16 + 2


@given(
    slots=arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 20)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
@settings(max_examples=50)
def test_reduce_in_rank_order_matches_a_python_fold(slots):
    expected = slots[0].copy()
    for row in slots[1:]:
        expected = expected + row
    np.testing.assert_array_equal(reduce_in_rank_order(slots, "sum", np.empty(slots.shape[1])), expected)
    np.testing.assert_array_equal(reduce_in_rank_order(slots, "max", np.empty(slots.shape[1])), slots.max(axis=0))


@pytest.mark.parametrize(
    "buf, exc, words",
    [
        ([1.0, 2.0], TypeError, "buf must be a numpy.ndarray, got list"),
        (np.arange(3), TypeError, "buf must have dtype float32 or float64, got int64"),
        (np.zeros((4, 4))[:, 0], ValueError, "buf must be C-contiguous"),
    ],
)
def test_check_buffer_rejects_bad_buffers(buf, exc, words):
    with pytest.raises(exc) as info:
        check_buffer(buf)
    assert words in str(info.value)


def test_check_buffer_rejects_read_only():
    buf = np.zeros(3)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="buf must be writeable"):
        check_buffer(buf)


# ---------------------------------------------------------------------------------------------
# LocalComm
# ---------------------------------------------------------------------------------------------


def test_local_comm_is_the_identity():
    comm = LocalComm()
    assert isinstance(comm, Communicator)
    assert (comm.rank, comm.size) == (0, 1)
    buf = np.array([1.5, -2.0, 3.25])
    assert comm.allreduce(buf) is buf
    assert comm.allreduce_in_rank_order(buf) is buf
    np.testing.assert_array_equal(buf, [1.5, -2.0, 3.25])
    assert comm.broadcast(buf, root=0) is buf
    comm.barrier()
    with pytest.raises(ValueError, match="root must be in \\[0, 1\\)"):
        comm.broadcast(buf, root=1)
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(buf, op="mean")


# ---------------------------------------------------------------------------------------------
# SharedArray
# ---------------------------------------------------------------------------------------------


def _read_shared(comm, spec):
    shared = SharedArray.attach(spec)
    out = shared.array.copy()
    shared.array[:] *= 2.0
    shared.close()
    return out


def test_shared_array_is_seen_and_written_by_workers_and_unlinked():
    shared = SharedArray.create((2, 3), dtype="float64")
    try:
        shared.array[:] = np.arange(6.0).reshape(2, 3)
        results = run_workers(_read_shared, 1, args=(shared.spec,), nbytes=8)
        np.testing.assert_array_equal(results[0], np.arange(6.0).reshape(2, 3))
        np.testing.assert_array_equal(shared.array, 2.0 * np.arange(6.0).reshape(2, 3))
    finally:
        name = shared.spec.name
        shared.close()
        shared.unlink()
    assert not _segment_exists(name)


# ---------------------------------------------------------------------------------------------
# SharedMemoryComm through run_workers (spawn)
# ---------------------------------------------------------------------------------------------


def _contribution(rank, step, n, dtype):
    return np.random.default_rng([rank, step]).standard_normal(n).astype(dtype)


def _allreduce_many(comm, n, steps, dtype, name_file):
    Path(name_file).write_text(comm.name)
    out = []
    for step in range(steps):
        buf = _contribution(comm.rank, step, n, dtype)
        # Uneven pacing: double-buffered slots must stay correct when ranks drift apart.
        if (step + comm.rank) % 3 == 0:
            time.sleep(0.002)
        comm.allreduce(buf)
        out.append(buf)
    return np.stack(out)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_allreduce_equals_rank_order_sum(size, tmp_path):
    n, steps = 1001, 12
    name_file = tmp_path / "name"
    results = run_workers(_allreduce_many, size, args=(n, steps, "float64", str(name_file)), nbytes=n * 8)
    expected = np.stack(
        [reduce_in_rank_order(np.stack([_contribution(r, s, n, "float64") for r in range(size)]), "sum", np.empty(n))
         for s in range(steps)]
    )
    for rank in range(size):
        np.testing.assert_array_equal(results[rank], expected)
    np.testing.assert_allclose(expected[0], sum(_contribution(r, 0, n, "float64") for r in range(size)), rtol=1e-12)
    assert not _segment_exists(name_file.read_text())


def test_allreduce_float32_stays_float32(tmp_path):
    n = 257
    results = run_workers(_allreduce_many, 2, args=(n, 3, "float32", str(tmp_path / "name")), nbytes=n * 4)
    expected = _contribution(0, 2, n, "float32") + _contribution(1, 2, n, "float32")
    assert results[0].dtype == np.float32
    np.testing.assert_array_equal(results[0][2], expected)
    np.testing.assert_array_equal(results[1][2], expected)


def _broadcast_and_ops(comm):
    out = {}
    for root in range(comm.size):
        buf = np.full(4, 10.0 * comm.rank + 1.0)
        comm.broadcast(buf, root=root)
        out[f"bcast{root}"] = buf
    for op in ("max", "min"):
        buf = np.array([comm.rank, -comm.rank, 7.0])
        comm.allreduce(buf, op=op)
        out[op] = buf
    comm.barrier()
    matrix = np.full((2, 3), comm.rank + 1.0)
    comm.allreduce(matrix)
    out["matrix"] = matrix
    ordered = np.array([[1e16, 1.0], [1.0, 1.0], [1.0, 1e16]][comm.rank])
    comm.allreduce_in_rank_order(ordered)
    out["ordered"] = ordered
    return out


def test_broadcast_max_min_and_shapes_on_three_ranks():
    results = run_workers(_broadcast_and_ops, 3, nbytes=64)
    for res in results:
        for root in range(3):
            np.testing.assert_array_equal(res[f"bcast{root}"], np.full(4, 10.0 * root + 1.0))
        np.testing.assert_array_equal(res["max"], [2.0, 0.0, 7.0])
        np.testing.assert_array_equal(res["min"], [0.0, -2.0, 7.0])
        np.testing.assert_array_equal(res["matrix"], np.full((2, 3), 6.0))
        # rank order: 1e16 + 1 + 1 = 1e16 (each + 1 rounds back), 1 + 1 + 1e16 = 1e16 + 2
        assert res["ordered"].tolist() == [1e16, 1e16 + 2]


def _blas_threads(comm):
    from threadpoolctl import threadpool_info

    return [(info["internal_api"], info["num_threads"]) for info in threadpool_info()]


def test_workers_run_with_one_blas_thread_each():
    for infos in run_workers(_blas_threads, 2, nbytes=8, blas_threads=1):
        assert infos, "numpy's BLAS should be visible to threadpoolctl"
        assert all(num_threads == 1 for _, num_threads in infos), infos


def _too_big(comm):
    comm.allreduce(np.zeros(100))


def test_buffer_larger_than_capacity_is_a_clear_error():
    with pytest.raises(WorkerError) as info:
        run_workers(_too_big, 2, nbytes=64)
    assert "ValueError" in str(info.value)
    assert "buf has 800 bytes" in str(info.value)


def _rank1_raises(comm, name_file):
    Path(name_file).write_text(comm.name)
    buf = np.ones(3)
    comm.allreduce(buf)
    if comm.rank == 1:
        raise ValueError("rank 1 fails on purpose")
    comm.allreduce(buf)
    return buf


def test_worker_exception_names_the_root_cause_and_leaves_no_segment(tmp_path):
    name_file = tmp_path / "name"
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_workers(_rank1_raises, 3, args=(str(name_file),), nbytes=24)
    assert time.monotonic() - start < 30
    # rank 0 and 2 fail too (CommAbortedError), but the report is rank 1's ValueError.
    assert info.value.rank == 1
    assert "ValueError: rank 1 fails on purpose" in str(info.value)
    assert "_rank1_raises" in info.value.remote_traceback
    assert not _segment_exists(name_file.read_text())


def _killed_mid_training(comm, name_file):
    Path(name_file).write_text(comm.name)
    buf = np.ones(1000)
    for step in range(10_000):
        if comm.rank == 1 and step == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        comm.allreduce(buf)
        buf /= comm.size
    return buf


def test_sigkilled_worker_makes_parent_raise_within_30s(tmp_path):
    name_file = tmp_path / "name"
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_workers(_killed_mid_training, 2, args=(str(name_file),), nbytes=8000, timeout=60.0)
    elapsed = time.monotonic() - start
    assert elapsed < 30, elapsed
    assert info.value.rank == 1
    assert info.value.exitcode == -signal.SIGKILL
    assert "killed by signal SIGKILL" in str(info.value)
    assert not _segment_exists(name_file.read_text())


def _exits_silently(comm):
    if comm.rank == 0:
        os._exit(3)
    comm.barrier()


def test_worker_exiting_without_result_is_reported_with_its_exit_code():
    with pytest.raises(WorkerError) as info:
        run_workers(_exits_silently, 2, nbytes=8)
    assert info.value.rank == 0 and info.value.exitcode == 3
    assert "exited with code 3 before returning a result" in str(info.value)


def test_run_workers_rejects_unpicklable_fn():
    with pytest.raises(TypeError, match="fn must be picklable"):
        run_workers(lambda comm: None, 2, nbytes=8)


# ---------------------------------------------------------------------------------------------
# Timeouts and abort without a monitoring parent
# ---------------------------------------------------------------------------------------------


def _peer(spec, rank, behaviour, result_queue):
    comm = SharedMemoryComm(spec, rank)
    try:
        if behaviour == "die":
            os._exit(0)
        start = time.monotonic()
        try:
            comm.allreduce(np.ones(4))
            outcome = "ok"
        except (CommTimeoutError, CommAbortedError) as exc:
            outcome = type(exc).__name__
        result_queue.put((rank, outcome, time.monotonic() - start))
    finally:
        comm.close()


def _run_peers(behaviours, timeout, abort_after=None):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with SharedMemoryGroup(len(behaviours), 32, timeout=timeout, context=ctx) as group:
        name = group.spec.workspace.name
        procs = [ctx.Process(target=_peer, args=(group.spec, r, b, queue)) for r, b in enumerate(behaviours)]
        for p in procs:
            p.start()
        if abort_after is not None:
            time.sleep(abort_after)
            group.abort()
        waiting = sum(b == "wait" for b in behaviours)
        outcomes = sorted(queue.get(timeout=60) for _ in range(waiting))
        for p in procs:
            p.join(10)
    return outcomes, name


def test_allreduce_times_out_when_a_peer_died():
    outcomes, name = _run_peers(["wait", "die"], timeout=1.0)
    [(rank, outcome, waited)] = outcomes
    assert (rank, outcome) == (0, "CommTimeoutError")
    assert 0.9 <= waited < 20
    assert not _segment_exists(name)


def test_parent_abort_releases_waiting_ranks_before_the_timeout():
    # Rank 2 never arrives; the parent aborts after 2 s, far before the 100 s timeout.
    outcomes, _ = _run_peers(["wait", "wait", "die"], timeout=100.0, abort_after=2.0)
    assert [(r, o) for r, o, _ in outcomes] == [(0, "CommAbortedError"), (1, "CommAbortedError")]
    assert all(waited < 30 for _, _, waited in outcomes)


def test_barrier_passes_threads_in_step_for_many_generations():
    barrier = BoundedBarrier(3, multiprocessing.get_context("spawn"))
    statuses = []

    def run():
        statuses.extend(barrier.wait(10.0) for _ in range(200))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [None] * 600
    assert not barrier.broken and not barrier.aborted


def test_barrier_wait_is_bounded_even_when_a_peer_holds_its_lock():
    # a peer stopped (SIGSTOP) or killed while inside the barrier keeps its lock; taking the
    # lock of multiprocessing.Barrier has no timeout, so the others would wait forever
    barrier = BoundedBarrier(2, multiprocessing.get_context("spawn"))
    barrier._lock.acquire()
    start = time.monotonic()
    assert barrier.wait(0.5) == "timeout"
    assert 0.45 <= time.monotonic() - start < 10
    # the peers that come later give up at once instead of waiting out their own timeout
    assert barrier.broken and barrier.wait(100.0) == "broken"


def test_barrier_abort_and_interrupt_end_a_wait_within_a_second():
    barrier = BoundedBarrier(2, multiprocessing.get_context("spawn"))
    start = time.monotonic()
    assert barrier.wait(100.0, interrupt=lambda: "the parent died") == "the parent died"
    assert time.monotonic() - start < 1
    barrier = BoundedBarrier(2, multiprocessing.get_context("spawn"))
    threading.Timer(0.3, barrier.abort).start()
    start = time.monotonic()
    assert barrier.wait(100.0) == "aborted"
    assert time.monotonic() - start < 1.3


@pytest.mark.parametrize("text, expected", [(None, 120.0), ("", 120.0), ("2.5", 2.5), (" 30 ", 30.0)])
def test_default_timeout_reads_minscale_comm_timeout(monkeypatch, text, expected):
    if text is None:
        monkeypatch.delenv("MINSCALE_COMM_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("MINSCALE_COMM_TIMEOUT", text)
    assert default_timeout() == expected
    with SharedMemoryGroup(2, 8) as group:
        assert group.spec.timeout == expected


@pytest.mark.parametrize("text", ["abc", "0", "-1", "inf", "nan"])
def test_bad_minscale_comm_timeout_is_a_value_error_naming_it(monkeypatch, text):
    monkeypatch.setenv("MINSCALE_COMM_TIMEOUT", text)
    with pytest.raises(ValueError, match="MINSCALE_COMM_TIMEOUT must be a finite number of seconds > 0"):
        default_timeout()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are told apart through /proc")
def test_process_gone_sees_an_exited_child_zombie_or_reaped():
    assert not process_gone(os.getpid()) and not process_gone(os.getppid())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + 10
    while b") Z " not in Path(f"/proc/{pid}/stat").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_gone(pid)  # a zombie still answers signal 0
    os.waitpid(pid, 0)
    assert process_gone(pid)


def test_group_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        SharedMemoryGroup(0, 8)
    with pytest.raises(TypeError, match="nbytes must be an int, got float"):
        SharedMemoryGroup(2, 8.0)
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0, got 0"):
        SharedMemoryGroup(2, 8, timeout=0)


# ---------------------------------------------------------------------------------------------
# Whole-process behaviour: tracker warnings and Ctrl-C, in a fresh interpreter
# ---------------------------------------------------------------------------------------------

_CHILD_PRELUDE = textwrap.dedent(
    f"""
    import os, sys, time, signal
    import numpy as np
    sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]
    from minscale.parallel import run_workers, WorkerError
    """
)


def _run_child(body, timeout=120, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(body)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs,
    )


def _run_child_or_fail(body, timeout):
    """Run `body` in its own process group; on a hang kill the whole group and fail."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(body)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, stopped ones included
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


_SEGMENT_SPY = """
import minscale.parallel.shm as shm
original = shm.SharedArray.create.__func__
def spy(cls, *a, **k):
    out = original(cls, *a, **k)
    print("segment", out.spec.name, flush=True)
    return out
shm.SharedArray.create = classmethod(spy)
"""


def test_no_resource_tracker_warnings_after_success_and_failure(tmp_path):
    body = f"""
    from test_comm import _allreduce_many, _killed_mid_training
    if __name__ == "__main__":
        run_workers(_allreduce_many, 2, args=(10, 2, "float64", {str(tmp_path / 'a')!r}), nbytes=80)
        try:
            run_workers(_killed_mid_training, 2, args=({str(tmp_path / 'b')!r},), nbytes=8000)
        except WorkerError:
            print("worker error seen")
    """
    proc = _run_child(body)
    assert proc.returncode == 0, proc.stderr
    assert "worker error seen" in proc.stdout
    assert "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    for f in ("a", "b"):
        assert not _segment_exists((tmp_path / f).read_text())


def _loop_until_stopped(comm, pid_dir):
    Path(pid_dir, f"{comm.rank}.pid").write_text(str(os.getpid()))
    buf = np.ones(16)
    while True:
        comm.allreduce(buf)
        buf /= comm.size
        time.sleep(0.01)


def _pid_alive(pid):
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


def test_ctrl_c_in_parent_stops_workers_and_unlinks(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    body = f"""
    from test_comm import _loop_until_stopped
    import minscale.parallel.shm as shm
    created = []
    original = shm.SharedArray.create.__func__
    def spy(cls, *a, **k):
        out = original(cls, *a, **k)
        created.append(out.spec.name)
        print("segment", out.spec.name, flush=True)
        return out
    shm.SharedArray.create = classmethod(spy)
    if __name__ == "__main__":
        try:
            run_workers(_loop_until_stopped, 2, args=({str(pid_dir)!r},), nbytes=128)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(body)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(pid_dir.glob("*.pid"))) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        worker_pids = [int(p.read_text()) for p in pid_dir.glob("*.pid")]
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    segments = [line.split()[1] for line in out.splitlines() if line.startswith("segment")]
    assert len(segments) == 2  # the workspace and the pickled fn and args
    assert not any(_segment_exists(name) for name in segments)
    assert not any(_pid_alive(pid) for pid in worker_pids)
    assert "leaked" not in err, err


def test_script_without_main_guard_gets_the_hint(tmp_path):
    # each spawned worker re-runs the unguarded top level, whose run_workers call then fails
    script = tmp_path / "unguarded.py"
    script.write_text(_CHILD_PRELUDE + textwrap.dedent("""
    from test_comm import _exits_silently
    try:
        run_workers(_exits_silently, 2, nbytes=8)
    except WorkerError as exc:
        print(str(exc).splitlines()[0], flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("worker rank")]
    assert "exited with code 1 before returning a result, while starting up" in line, line
    assert 'guard its entry point with `if __name__ == "__main__":`' in line, line


def _size_of(comm, array):
    return array.size


def test_unguarded_script_with_large_args_gets_the_hint_within_30s(tmp_path):
    # 1 MB of args: they once went into each worker's start-up pipe, whose read end the parent
    # holds until the write ends, so a worker that died before reading them all (here: while
    # re-running this top level) left Process.start() blocked forever, SIGINT blocked too
    script = tmp_path / "unguarded_large_args.py"
    script.write_text(_CHILD_PRELUDE + textwrap.dedent("""
    from test_comm import _size_of
    run_workers(_size_of, 2, args=(np.zeros(125_000),), nbytes=8)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True)
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        for path in SHM_DIR.glob(f"minscale_{proc.pid}_*"):
            path.unlink(missing_ok=True)
        pytest.fail(f"still running after 30 s:\n{out}\n{err[-3000:]}")
    assert time.monotonic() - start < 30
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("minscale.parallel.base.WorkerError: worker rank"), err[-3000:]
    assert "exited with code 1 before returning a result, while starting up" in last
    assert 'guard its entry point with `if __name__ == "__main__":`' in last
    # each worker refused to start workers of its own before creating anything
    assert err.count("RuntimeError: this process is a worker still starting up") == 2, err
    assert not list(SHM_DIR.glob(f"minscale_{proc.pid}_*"))
    assert "leaked" not in err, err


def test_check_not_bootstrapping_passes_in_an_ordinary_process():
    check_not_bootstrapping()


def test_sigstopped_worker_ends_the_run_within_the_timeout_plus_10s(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    body = _SEGMENT_SPY + textwrap.dedent(f"""
    import threading
    from pathlib import Path
    from test_comm import _loop_until_stopped
    def stop_rank_1():
        while True:
            try:
                pids = [int(Path({str(pid_dir)!r}, f"{{r}}.pid").read_text()) for r in (0, 1)]
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        print("workers", *pids, flush=True)
        time.sleep(0.5)  # well inside the allreduce loop
        os.kill(pids[1], signal.SIGSTOP)
        print("stopped", time.monotonic(), flush=True)
    if __name__ == "__main__":
        threading.Thread(target=stop_rank_1, daemon=True).start()
        try:
            run_workers(_loop_until_stopped, 2, args=({str(pid_dir)!r},), nbytes=128, timeout=8.0)
        except WorkerError as exc:
            print("ended", time.monotonic(), exc.rank, str(exc).splitlines()[0], flush=True)
    """)
    code, out, err = _run_child_or_fail(body, timeout=90)
    assert code == 0, err
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in out.splitlines()}
    stopped_at = float(lines["stopped"])
    ended_at, rank, message = lines["ended"].split(maxsplit=2)
    assert float(ended_at) - stopped_at < 8.0 + 10, out
    assert rank == "1" and "stopped responding" in message and "timeout=8 s" in message, message
    assert not any(_pid_alive(int(pid)) for pid in lines["workers"].split())
    segments = [line.split()[1] for line in out.splitlines() if line.startswith("segment")]
    assert segments and not any(_segment_exists(name) for name in segments)


# ---------------------------------------------------------------------------------------------
# MPIComm under mpiexec
# ---------------------------------------------------------------------------------------------


def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minscale[mpi]')")
    candidate = Path(sys.executable).parent / "mpiexec"
    found = str(candidate) if candidate.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("mpiexec not found next to the interpreter or on PATH (pip install mpich)")
    return found


def _run_mpi(script, *script_args, n=2, timeout=120, env=None):
    """Run ``mpiexec -n n python tests/<script> *script_args`` (extra `env` variables); on a
    timeout kill its whole process group, ranks included, and raise TimeoutExpired."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(env or {}))
    proc = subprocess.Popen(
        [_mpiexec(), "-n", str(n), sys.executable, str(TESTS / script), *map(str, script_args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _mapped_shm_files():
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        mapped.update(line.split()[-1] for line in text.splitlines() if "/dev/shm/" in line)
    return mapped


def _remove_orphaned_mpich_segments(before):
    """MPI_Abort kills ranks before MPICH unlinks its own /dev/shm segment (an MPICH limitation,
    not minscale's). Remove segments that appeared during the job and no live process maps."""
    deadline = time.monotonic() + 5  # aborted ranks may take a moment to go
    while True:
        new = {path for path in set(SHM_DIR.glob("mpich_shm_*")) - before if path.exists()}
        mapped = _mapped_shm_files()
        for path in new:
            if str(path) not in mapped:
                path.unlink(missing_ok=True)
        if not new & {Path(m) for m in mapped} or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def test_abort_mpi_job_is_a_no_op_outside_an_mpi_job():
    # Under pytest mpi4py.MPI is either not imported or a single-rank world: nothing to abort.
    from minscale.parallel import abort_mpi_job

    assert abort_mpi_job(2) is False


@pytest.mark.mpi
def test_mpi_allreduce_broadcast_under_mpiexec(tmp_path):
    proc = _run_mpi("mpi_allreduce.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["size"] == 2
        # rank r contributes (r + 1) * [0, 1, 2, 3]: sum = 3 * [0, 1, 2, 3]
        assert r["sum"] == [0.0, 3.0, 6.0, 9.0]
        assert r["sum32"] == [0.0, 3.0, 6.0, 9.0] and r["dtype32"] == "float32"
        assert r["max"] == [2.0, 2.0] and r["min"] == [1.0, 1.0]
        assert r["bcast"] == [11.0, 11.0, 11.0]


#: MPICH's ring Iallreduce: with 3 ranks it adds in another order than rank 0 + 1 + 2 (the
#: default does not, for 3 ranks), so a rank-order result cannot come from MPI's own sum.
RING = {"MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM": "tsp_ring"}


@pytest.mark.mpi
@pytest.mark.exactness
def test_mpi_allreduce_in_rank_order_adds_left_to_right_on_every_rank(tmp_path):
    proc = _run_mpi("mpi_ordered.py", tmp_path, n=3, env=RING)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    # ranks contribute the columns of mpi_ordered.COLUMNS64, summed left to right:
    # 1e16 + 1 rounds back to 1e16 (a tie, to even), so the ones count only when added first;
    # 1e16 - 1e16 + 1 = 1 but 1 + 1e16 - 1e16 = 0; -0.0 stays -0.0 (+0.0 would not)
    sums = np.array([1e16, 1e16 + 2, 1e16, 1.0, 0.0, 0.0, -0.0] * 1000)
    sums32 = np.array([1e8, 1e8 + 8], dtype=np.float32)  # float32: 1e8 + 4 rounds to 1e8
    for r in reports:  # bytes: every rank the same bits, signed zeros included
        assert r["size"] == 3
        assert r["sum"] == sums.tobytes().hex()
        assert r["sum32"] == sums32.tobytes().hex()
        assert r["max"] == [[5.0, 2.0]]


@pytest.mark.mpi
def test_mpi_allreduce_in_rank_order_aborts_when_a_rank_never_joins():
    before = set(SHM_DIR.glob("mpich_shm_*"))
    start = time.monotonic()
    try:
        proc = _run_mpi("mpi_ordered.py", "unused", "skip", n=3, timeout=60,
                        env={"MINSCALE_COMM_TIMEOUT": "3"})
    except subprocess.TimeoutExpired:
        pytest.fail("the MPI job hung instead of aborting when rank 1 skipped the collective")
    finally:
        _remove_orphaned_mpich_segments(before)
    assert time.monotonic() - start < 30
    assert proc.returncode != 0
    assert "allreduce_in_rank_order #1 did not complete within timeout=3 s" in proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("how", ["raise", "exit-code"])
def test_mpi_rank_raising_before_first_allreduce_ends_job_nonzero(how):
    before = set(SHM_DIR.glob("mpich_shm_*"))
    start = time.monotonic()
    try:
        proc = _run_mpi("mpi_raise.py", how, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the MPI job hung instead of aborting when rank 1 raised")
    finally:
        _remove_orphaned_mpich_segments(before)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert "rank 0 passed the allreduce" not in proc.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("how", ["stop", "exit", "stop single"])
def test_mpi_stopped_or_vanished_rank_aborts_the_job_nonzero_within_30s(how):
    # rank 1 stops itself (SIGSTOP) or leaves with exit status 0 at update 5 of its training;
    # "single": MPI_THREAD_SINGLE, where MPIComm polls instead of using its watchdog thread
    before = set(SHM_DIR.glob("mpich_shm_*"))
    start = time.monotonic()
    try:
        proc = _run_mpi("mpi_stall.py", *how.split(), timeout=60, env={"MINSCALE_COMM_TIMEOUT": "5"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"the MPI job hung instead of aborting when rank 1 did {how!r}")
    finally:
        _remove_orphaned_mpich_segments(before)
    assert time.monotonic() - start < 30
    assert proc.returncode != 0
    assert "MPI rank 0 of 2: allreduce #" in proc.stderr
    assert "did not complete within timeout=5 s" in proc.stderr
    assert "finished training" not in proc.stdout
