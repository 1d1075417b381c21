"""Start-up: ``minscale demo`` in a fresh interpreter with an EMPTY Numba cache (every compiled
function the demo needs is compiled: what a fresh environment pays), then again reusing that
cache (loading), and the first W1 fit alone the same two ways.

Each round gets its own new cache directory (``NUMBA_CACHE_DIR``, a temporary directory, so
neither the cache beside the sources in ``minscale/kernels/__pycache__`` nor an earlier round
is reused); the demo's worker processes inherit it. Rounds alternate the demo and the first
fit. Figures are wall seconds of the whole process (interpreter start and imports included)
and its CPU seconds (user + system, children included): the CPU figure moves less on a loaded
machine, since compilation is single-threaded.

Run alone: ``python -m benchmarks.run --only startup --rounds 3`` (about 1.5 min on a quiet
2-vCPU machine: 3 rounds of two demos and two fits).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from . import common

NAME = "start-up: minscale demo and the first fit, empty Numba cache vs reused"
#: the issue's target for the first demo in a fresh environment, wall seconds
DEMO_TARGET_S = 8.0

_FIRST_FIT = """
import numpy as np
import minscale as ms
from minscale import optim, schedules
ms.set_backend("numba")
X, y = ms.datasets.make_linear(n_samples=100, seed=42)
X = np.asarray(X, float).reshape(-1, 1); y = np.asarray(y, float).reshape(-1, 1)
m = ms.Sequential([ms.Dense(1)], input_dim=1, seed=0)
m.compile(optimizer=optim.Adam(schedules.InverseTimeDecay(0.1, decay_rate=0.01)))
m.fit(X, y, epochs=100, batch_size=10, seed=42)
"""


def _process(args, cache):
    """(wall s, CPU s of the process and its children) of one fresh interpreter."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env.pop("MINSCALE_BACKEND", None)
    before = os.times()
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=common.ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    wall = time.perf_counter() - t
    after = os.times()
    return wall, (after.children_user - before.children_user) + \
        (after.children_system - before.children_system)


def run(ctx):
    rounds = max(2, min(ctx["rounds"], 3))  # each round compiles everything: keep it short
    cases = {"demo": ["-m", "minscale", "demo"], "first fit": ["-c", _FIRST_FIT]}
    out = {key: {"empty cache wall s": [], "empty cache cpu s": [], "reused cache wall s": [],
                 "reused cache cpu s": []} for key in cases}
    for _ in range(rounds):
        for key, args in cases.items():
            with tempfile.TemporaryDirectory(prefix="numba_cold_") as cache:
                for label in ("empty cache", "reused cache"):
                    wall, cpu = _process(args, cache)
                    out[key][f"{label} wall s"].append(wall)
                    out[key][f"{label} cpu s"].append(cpu)
    result = {"name": NAME, "unit": "s", "rounds": rounds}
    for key, figures in out.items():
        result[key] = {k: common.summary(v) for k, v in figures.items()}
    return result


def targets(result):
    """Start-up target: the first demo with an empty Numba cache within 8 s (wall)."""
    v = result["demo"]["empty cache wall s"]["median"]
    return [{"target": f"minscale demo, empty Numba cache <= {DEMO_TARGET_S:g} s wall",
             "value": v, "goal": DEMO_TARGET_S, "met": v <= DEMO_TARGET_S}]
