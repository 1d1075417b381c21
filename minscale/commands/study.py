"""``minscale study``: measure what learning rate, pruning, quantization and workers do."""
from __future__ import annotations

import dataclasses
import os
import sys

from .. import report, study
from ..study.runs import default_parts, needs_baseline, new_model, part_names
from ._common import add_data_arguments, check_output_path, hidden_sizes, integer, load_task

NAME = "study"
# sane tops: beyond them a study runs for days (seeds) or trains networks the width/depth
# part was not meant for (depth); the error says so at once instead of running until killed
MAX_SEEDS = 1000
MAX_DEPTH = 8

HELP = ("measure learning rate, pruning, quantization and data-parallel workers on one data "
        "set: tables, JSON, CSV, plot")


def add_arguments(parser):
    """Register the study command's options on `parser`."""
    add_data_arguments(parser)
    parser.add_argument("--hidden", type=hidden_sizes, default=None,
                        help="hidden layer sizes, e.g. 32,32 (default: 32)")
    parser.add_argument("--epochs", type=integer, default=None,
                        help="epochs of each learning-rate run (default: 50; --quick: 10)")
    parser.add_argument("--batch-size", type=integer, default=None,
                        help="rows per update (default: 32)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    parser.add_argument("--csv", default=None, metavar="PATH",
                        help="write one row per measurement as CSV")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="write loss-vs-bytes and learning-rate curves (matplotlib); the "
                             "extension picks the format: .png, .pdf, .svg, ... (none: .png "
                             "is appended)")
    parser.add_argument("--seeds", type=integer, default=None, metavar="N",
                        help="run every measurement from N seeds (--seed, --seed + 1, ...; the "
                             "data split stays fixed) and print means with 95%% intervals "
                             "(default: 3; --quick: 1; at most 1000)")
    parser.add_argument("--jobs", type=integer, default=1, metavar="K",
                        help="worker processes running the seeds; the numbers do not depend "
                             "on it; at most 8 x the CPUs, capped at the number of seeds (default: %(default)s)")
    parser.add_argument("--depth", type=integer, default=None, metavar="N",
                        help="the width/depth part trains depths 1 .. N, N <= 8 (default: 2)")
    parser.add_argument("--part", default=None, metavar="NAME[,NAME...]",
                        help="run only these parts (the learning-rate part runs whenever one "
                             "of them needs its baseline): " + ", ".join(part_names()) +
                             " (default: " + ",".join(default_parts()) + ")")
    parser.add_argument("--quick", action="store_true",
                        help="small budgets (10 epochs, 2 fine-tuning epochs, 1 seed): a "
                             "minute or less")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is shown only when stderr is a terminal)")


def check_outputs(args):
    """Reject conflicting or unusable output flags before any training.

    A --plot name without an extension gets ``.png`` appended (as matplotlib itself does);
    ``args.plot`` is updated, so the name printed after writing is the real one.

    Raises
    ------
    ValueError
        Two of --json/--csv/--plot name the same file; a file that cannot be written (see
        :func:`minscale.commands._common.check_output_path`); a --plot extension that
        matplotlib cannot write; --epochs combined with --quick (which fixes the budgets);
        a size, --seeds, --jobs or --depth < 1; --seeds above :data:`MAX_SEEDS`, --depth above
        :data:`MAX_DEPTH`, --jobs above 8 x the CPU count (``train``'s process cap); an
        unknown --part. A --jobs above the number of seeds is not an error: :func:`run` caps
        it at the number of seeds (a worker per seed at most).
    ImportError
        --plot without matplotlib.
    """
    if args.quick and args.epochs is not None:
        raise ValueError(f"--epochs {args.epochs} conflicts with --quick, which fixes the "
                         "budgets; give one of them")
    for flag in ("epochs", "batch_size", "seeds", "jobs", "depth"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    limit = 8 * (os.cpu_count() or 1)
    for flag, top, why in (("seeds", MAX_SEEDS, ""), ("depth", MAX_DEPTH, ""),
                           ("jobs", limit, f" (8 x the {os.cpu_count()} CPUs)")):
        value = getattr(args, flag, None)
        if value is not None and value > top:
            raise ValueError(f"--{flag} must be at most {top}{why}, got {value}")
    args.parts = parse_parts(getattr(args, "part", None))
    suffixes = {"json": None, "csv": None, "plot": None}
    if args.plot is not None:
        suffixes["plot"] = report.plot_formats()  # ImportError without matplotlib
        # a name ending in a separator is a folder: check_output_path says so below
        if args.plot and not os.path.splitext(args.plot)[1] \
                and not args.plot.endswith((os.sep, os.altsep or os.sep)):
            args.plot += ".png"
    seen = {}
    for flag in ("json", "csv", "plot"):
        path = getattr(args, flag)
        if path is None:
            continue
        check_output_path(path, f"--{flag}", suffixes[flag])
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"--{flag} and --{seen[real]} both name {path!r}; give different "
                             "files")
        seen[real] = flag


def parse_parts(text):
    """The parts named by ``--part`` (comma-separated), in the study's order.

    Parameters
    ----------
    text : str or None
        None: :func:`minscale.study.runs.default_parts`.

    Returns
    -------
    tuple of str
        With ``learning_rate`` when one of them needs its baseline
        (:func:`minscale.study.runs.needs_baseline`).

    Raises
    ------
    ValueError
        An empty or unknown name (the message lists the known ones).
    """
    if text is None:
        return default_parts()
    names = [t.strip() for t in text.split(",")]
    known = part_names()
    for name in names:
        if name not in known:
            raise ValueError(f"--part {name!r} is not a part of the study; choose among "
                             f"{', '.join(known)}")
    with_baseline = needs_baseline(names)
    return tuple(p for p in known if p in names or (p == "learning_rate" and with_baseline))


def run(args):
    """Run the study, print its tables and write the asked-for files."""
    check_outputs(args)
    config = study.StudyConfig.preset(quick=args.quick, epochs=args.epochs,
                                      batch_size=args.batch_size, seed=args.seed,
                                      seeds=args.seeds, jobs=args.jobs, parts=args.parts,
                                      depths=(None if getattr(args, "depth", None) is None
                                              else tuple(range(1, args.depth + 1))),
                                      hidden=None if args.hidden is None else tuple(args.hidden))
    # more workers than seeds would sit idle: cap, so the header shows the jobs really used
    config = dataclasses.replace(config, jobs=min(config.jobs, config.seeds))
    task = load_task(args, validation_size=config.validation_size)
    try:
        # the study's model, built once here: one too large for the memory is refused now,
        # under the option's name, not in the middle of the study
        new_model(task, config)
    except ValueError as exc:
        raise ValueError(f"--hidden {','.join(map(str, config.hidden))}: {exc}") from None
    result = study.run_study(task, config, progress=False if args.no_progress else None)
    sys.stdout.write(report.render_text(result))
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.csv:
        report.write_csv(result, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
