"""Wall time of the study's width/depth and recovery parts on digits (issue 15 budget).

    PYTHONPATH=$PWD python -m benchmarks.study_scaling_parts [--quick] [--seeds 3] [--jobs 1]
        [--plot out.png] [--json out.json]

Runs the two parts as the study runs them (:func:`minscale.study.width_depth.run_width_depth`,
:func:`minscale.study.recovery.run_recovery`) with the digits baseline the study selects
(Adam eta0 0.01, no decay, 50 epochs; fine-tuning rate 0.001), prints their tables and the
wall time of each. Expected on a quiet 2-core machine, 3 seeds: well under a minute for both
at full budget, a few seconds with --quick. Part of the full digits study's 3-minute budget.
"""
from __future__ import annotations

import argparse
import json
import time

from minscale.commands._common import load_task
from minscale.report import plot_width_depth
from minscale.study.config import StudyConfig
from minscale.study.recovery import run_recovery
from minscale.study.seeds import seed_pool, study_seeds
from minscale.study.width_depth import run_width_depth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    config = StudyConfig.preset(quick=args.quick, seeds=args.seeds, jobs=args.jobs)
    task = load_task(argparse.Namespace(data="digits", target=None, test_size=0.2, seed=0),
                     validation_size=config.validation_size)
    seeds = study_seeds(config.seed, config.seeds)
    out = {}
    with seed_pool(min(args.jobs, len(seeds))) as pool:
        context = {"seeds": seeds, "jobs": args.jobs, "pool": pool,
                   "baseline": {"initial_learning_rate": 0.01, "decay_rate": 0.0,
                                "epochs": config.epochs},
                   "finetune_learning_rate": config.finetune_factor * 0.01}
        for name, run in (("width_depth", run_width_depth), ("recovery", run_recovery)):
            t0 = time.perf_counter()
            out[name] = run(task, config, context)
            out[name]["seconds_wall"] = time.perf_counter() - t0
            print("\n".join(out[name]["text"]))
            print(f"  {name}: {out[name]['seconds_wall']:.1f} s wall "
                  f"({'quick' if args.quick else 'full'}, {len(seeds)} seeds, jobs {args.jobs})\n",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    if args.plot:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        fig, ax = plt.subplots(figsize=(7.5, 5.75), constrained_layout=True)
        plot_width_depth(ax, out["width_depth"])
        fig.savefig(args.plot, dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
