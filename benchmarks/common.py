"""Timing, thread control and machine limits shared by the workloads.

Rules (``shared/BENCHMARKING.md``): compare side by side, interleaved (A B A B ...), and report
the ratio per pair and its median; discard the first call of everything (JIT compilation, lazy
imports, page faults); report median, min and max of at least 5 samples; fix the thread count
of every library (threadpoolctl after NumPy and torch are imported, ``torch.set_num_threads``
with one inter-op thread, ``numba.set_num_threads``); record the core-to-core hand-off
latency beside 2-thread samples.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summary(samples):
    """Median, min, max and count of a list of numbers (seconds or ratios)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def time_once(fn):
    """Seconds one call of fn() takes (perf_counter)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(candidates, rounds, warmup=1):
    """Time several candidates in turn, round after round.

    Parameters
    ----------
    candidates : dict name -> callable
        Each is called with no argument; setup must happen outside.
    rounds : int
        Samples per candidate, taken A B C A B C ...
    warmup : int
        Untimed calls of each candidate first.

    Returns
    -------
    dict name -> list of seconds (one per round, in round order)
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            out[name].append(time_once(fn))
    return out


def ratios(times, numerator, denominator):
    """Per-round ratios times[numerator][i] / times[denominator][i], summarized."""
    r = [a / b for a, b in zip(times[numerator], times[denominator])]
    return summary(r)


_TORCH = None


def torch_module():
    """torch, or None when it is not installed."""
    global _TORCH
    if _TORCH is None:
        try:
            import torch
            torch.set_num_interop_threads(1)
            _TORCH = torch
        except ImportError:
            _TORCH = False
        except RuntimeError:  # interop threads already set
            import torch
            _TORCH = torch
    return _TORCH or None


@contextlib.contextmanager
def threads(n):
    """Limit BLAS (threadpoolctl), Numba and torch to n threads inside the block."""
    import numba
    from threadpoolctl import threadpool_limits

    torch = torch_module()
    old_numba = numba.get_num_threads()
    old_torch = torch.get_num_threads() if torch else None
    numba.set_num_threads(n)
    if torch:
        torch.set_num_threads(n)
    with threadpool_limits(limits=n):
        try:
            yield
        finally:
            numba.set_num_threads(old_numba)
            if torch:
                torch.set_num_threads(old_torch)


def threadpool_report():
    """What threadpoolctl sees: library, version, threads, kernel architecture."""
    from threadpoolctl import threadpool_info

    return [{k: info.get(k) for k in ("internal_api", "prefix", "version", "num_threads",
                                         "architecture", "threading_layer")}
            for info in threadpool_info()]


def gemm_gflops(n=2048, rounds=5):
    """float32 GEMM GFLOP/s of one n x n np.matmul (2 n**3 flops), median of `rounds`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    t = interleaved({"gemm": lambda: a @ b}, rounds)["gemm"]
    s = summary([2 * n ** 3 / x / 1e9 for x in t])
    return s


def memcpy_gbs(n_bytes=40_000_000, rounds=7):
    """np.copyto bandwidth in GB/s counting bytes read + written (2 * n_bytes per copy)."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = interleaved({"copy": lambda: np.copyto(dst, src)}, rounds)["copy"]
    return summary([2 * n_bytes / x / 1e9 for x in t])


class C2CProbe:
    """The core-to-core hand-off probe (shared/tools/c2c_probe.c), built with gcc if present."""

    def __init__(self):
        self.exe = None
        self.note = None
        # the project's shared folder beside the checkout (main) or two levels up (worktrees)
        candidates = [os.path.join(ROOT, *[".."] * up, "shared", "tools", "c2c_probe.c")
                      for up in (1, 2)]
        src = next((c for c in candidates if os.path.exists(c)), candidates[0])
        gcc = shutil.which("gcc")
        if not os.path.exists(src):
            self.note = f"no probe source at {src}"
            return
        if gcc is None:
            self.note = "gcc not found: no c2c probe"
            return
        self._dir = tempfile.mkdtemp(prefix="c2c_")
        exe = os.path.join(self._dir, "c2c_probe")
        res = subprocess.run([gcc, "-O2", "-pthread", "-o", exe, src], capture_output=True,
                             text=True)
        if res.returncode == 0:
            self.exe = exe
        else:
            self.note = "c2c probe did not build: " + res.stderr.strip()[:200]

    def sample(self):
        """One-way hand-off latency in ns (median of 3 rounds), or None."""
        if self.exe is None:
            return None
        res = subprocess.run([self.exe, "3"], capture_output=True, text=True, timeout=60)
        try:
            return statistics.median(float(v) for v in res.stdout.split())
        except ValueError:
            return None
