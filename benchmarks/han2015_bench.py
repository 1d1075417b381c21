"""Wall time of the Han et al. 2015 part on mnist5k (issue 15 budget: under 10 minutes with 3
seeds on a 2-core machine).

    PYTHONPATH=$PWD python -m benchmarks.han2015_bench [--seeds 3] [--jobs 1] [--out FILE]

Loads mnist5k as ``minscale study`` does (test 0.2, validation 0.2 of the rest, seed 0:
3200 / 800 / 1000 rows), runs :func:`minscale.study.han2015.han2015_part` with its defaults
(LeNet-300-100, 20 dense epochs, 5 rounds of 4 retraining epochs, float32) once, prints the
table and the wall time, and writes the result as JSON with ``--out``. One run, not a ratio:
the budget is an absolute time, so run it when the machine is quiet. Expected: about 2-4
minutes with ``--jobs 1`` on a quiet 2-core machine (the dense control doubles the retraining).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    from minscale.commands._common import load_task
    from minscale.study.han2015 import format_han2015, han2015_part

    t0 = time.perf_counter()
    task = load_task(argparse.Namespace(data="mnist5k", target=None, test_size=0.2, seed=0),
                     validation_size=0.2)
    result = han2015_part(task, seeds=tuple(range(args.seeds)), jobs=args.jobs)
    wall = time.perf_counter() - t0
    print(format_han2015(result))
    print(f"wall time including loading: {wall:.1f} s (seeds {args.seeds}, jobs {args.jobs}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if args.out:
        result["benchmark"] = {"wall_seconds": wall, "seeds": args.seeds, "jobs": args.jobs,
                               "load_average_1min": os.getloadavg()[0],
                               "cpu_count": os.cpu_count(), "machine": platform.machine()}
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return wall


if __name__ == "__main__":
    main()
