"""The study's time budget (issue 15): the digits study with 3 seeds under 3 minutes on the
2-core machine.

Run: ``python -m benchmarks.study_bench [--rounds 1] [--jobs 1,2] [--json out.json]``
(about 1 to 2 minutes per round on a quiet 2-core machine: one full digits study per jobs
value).

Each sample is the wall time of a fresh ``python -m minscale study --data digits --seeds 3
--jobs K --no-progress`` process (interpreter start-up, imports, JIT cache loads, data
loading and the workers part's process start-up included: what a user waits for), the
values of K interleaved within a round (K=1, K=2, K=1, ...). Reported per K: median, min and
max over the rounds, the study's own ``seconds_total`` (without interpreter start-up) and
whether the median is within the budget. The numbers of every K are the same (checked:
the JSON results, timings aside, must be equal).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BUDGET_SECONDS = 180.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if not (k.startswith("seconds") or k.startswith("predict_seconds")
                        # "text": report lines of registered parts, train times in them
                        or k in ("speedup", "jobs", "text"))}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _one(jobs, seeds, data, folder):
    out = os.path.join(folder, f"study_{jobs}.json")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minscale", "study", "--data", data, "--seeds",
                    str(seeds), "--jobs", str(jobs), "--no-progress", "--json", out],
                   check=True, stdout=subprocess.DEVNULL, env=env, cwd=folder)
    wall = time.perf_counter() - t0
    with open(out) as fh:
        result = json.load(fh)
    return wall, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    jobs = [int(j) for j in args.jobs.split(",")]
    walls = {j: [] for j in jobs}
    totals = {j: [] for j in jobs}
    reference = None
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for j in jobs:
                wall, result = _one(j, args.seeds, args.data, folder)
                walls[j].append(wall)
                totals[j].append(result["seconds_total"])
                stripped = _strip_times(result)
                if reference is None:
                    reference = stripped
                elif stripped != reference:
                    raise SystemExit(f"--jobs {j} gave other numbers than --jobs {jobs[0]}")
    report = {"data": args.data, "seeds": args.seeds, "budget_seconds": BUDGET_SECONDS,
              "load_average": os.getloadavg(), "cpus": os.cpu_count(), "jobs": {}}
    print(f"minscale study --data {args.data} --seeds {args.seeds}: wall time of a fresh "
          f"process, {args.rounds} round(s); budget {BUDGET_SECONDS:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for j in jobs:
        med = statistics.median(walls[j])
        report["jobs"][str(j)] = {"wall_median": med, "wall_min": min(walls[j]),
                                  "wall_max": max(walls[j]),
                                  "study_seconds_median": statistics.median(totals[j]),
                                  "within_budget": med <= BUDGET_SECONDS}
        print(f"  --jobs {j}: median {med:.1f} s (min {min(walls[j]):.1f}, max "
              f"{max(walls[j]):.1f}); study's own time {statistics.median(totals[j]):.1f} s; "
              f"{'within' if med <= BUDGET_SECONDS else 'OVER'} budget")
    print("  the numbers of every --jobs value are identical")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
