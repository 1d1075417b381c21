"""Import time: ``import minscale`` (which imports NumPy, not Numba) against ``import numpy``,
each in a fresh interpreter, interleaved; the figure is the wall time of the import statement."""
from __future__ import annotations

import subprocess
import sys

from . import common

NAME = "import time: minscale vs numpy"
_CODE = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def _once(mod):
    out = subprocess.run([sys.executable, "-c", _CODE.format(mod=mod)], capture_output=True,
                         text=True, cwd=common.ROOT, check=True)
    return float(out.stdout.strip())


def run(ctx):
    rounds = max(7, ctx["rounds"])
    _once("numpy")
    _once("minscale")
    t_np, t_ms = [], []
    for _ in range(rounds):
        t_np.append(_once("numpy"))
        t_ms.append(_once("minscale"))
    r = [b / a for a, b in zip(t_np, t_ms)]
    return {"name": NAME, "unit": "s", "numpy": common.summary(t_np),
            "minscale": common.summary(t_ms), "ratio minscale/numpy": common.summary(r)}


def targets(result):
    """Import target: import minscale within 3x import numpy."""
    r = result["ratio minscale/numpy"]["median"]
    return [{"target": "import minscale <= 3x import numpy", "value": r, "goal": 3.0,
             "met": r <= 3.0}]
