"""``minscale schedule``: a pipeline schedule's grid, bubble fraction and stashed activations.

Example::

    minscale schedule --stages 4 --micro-batches 8 --kind 1f1b
    minscale schedule --stages 2 --micro-batches 4 --forward-cost 1,3 --backward-cost 2,6

Nothing is trained: the schedule (:func:`minscale.parallel.pipeline_schedule`) is timed by
:func:`minscale.parallel.simulate_schedule` under the given per-action costs, in exact
rational arithmetic (a cost is an integer, a decimal or a fraction such as ``3/2``).
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction

from ..parallel import PIPELINE_SCHEDULES, bubble_fraction, pipeline_schedule, simulate_schedule
from ._common import integer

NAME = "schedule"
HELP = ("show a pipeline schedule (GPipe or 1F1B): its stages x time grid, bubble fraction and "
        "peak stashed activations per stage")

#: Largest stages x micro-batches the command simulates (2 actions each): about a second.
ACTIONS_MAX = 50_000
#: Widest grid printed, in time slots.
SLOTS_MAX = 300


def _rationals(text, allow_zero=False):
    values = []
    for part in text.split(","):
        try:
            value = Fraction(part.strip())
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"must be numbers such as 2, 0.5 or 3/2 (one, or one per stage, "
                f"comma-separated), got {text[:40]!r}") from None
        if abs(value) > sys.float_info.max:
            # exact here, but the printed figures go through float
            raise argparse.ArgumentTypeError(
                f"must be at most {sys.float_info.max:.6g}, got {part.strip()[:40]!r}")
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(
                f"must be {'>= 0' if allow_zero else '> 0'}, got {part.strip()!r}")
        values.append(value)
    return values[0] if len(values) == 1 else values


def _costs(text):
    """argparse type: one cost, or one per stage, comma-separated; each a positive rational."""
    return _rationals(text)


def _comm(text):
    """argparse type: one rational >= 0."""
    value = _rationals(text, allow_zero=True)
    if isinstance(value, list):
        raise argparse.ArgumentTypeError(f"must be one number >= 0, got {text[:40]!r}")
    return value


def add_arguments(parser):
    """Register the schedule command's options on `parser`."""
    parser.add_argument("--stages", type=integer, default=4,
                        help="pipeline stages p (default: %(default)s)")
    parser.add_argument("--micro-batches", type=integer, default=8,
                        help="micro-batches m per global batch (default: %(default)s)")
    parser.add_argument("--kind", choices=PIPELINE_SCHEDULES, default="gpipe",
                        help="the schedule (default: %(default)s)")
    parser.add_argument("--forward-cost", type=_costs, default=Fraction(1),
                        help="time of one forward of one micro-batch: one number, or one per "
                             "stage comma-separated (default: 1)")
    parser.add_argument("--backward-cost", type=_costs, default=Fraction(2),
                        help="time of one backward, likewise (default: 2)")
    parser.add_argument("--comm-cost", type=_comm, default=Fraction(0),
                        help="time to pass an activation or its gradient to the neighbouring "
                             "stage (default: 0)")


def _count(n, noun):
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("h") else f"{n} {noun}s"


def _number(x):
    text = str(x)
    return text if "/" not in text else f"{text} = {float(x):.6g}"


def format_schedule(kind, stages, micro_batches, sim, costs):
    """The text ``minscale schedule`` prints.

    Parameters
    ----------
    kind : str
    stages, micro_batches : int
    sim : minscale.parallel.ScheduleSimulation
    costs : tuple (forward, backward, comm) as given

    Returns
    -------
    str
        A header line, the grid (``F3`` forward and ``B3`` backward of micro-batch 3, ``.``
        idle; one column per time slot of width ``sim.slot``), the step time, the simulated
        bubble fraction beside the formula ``(p - 1) / (m + p - 1)`` (exact for both kinds
        when every stage has the same costs and communication is free), and the peak number
        of stashed activations per stage.
    """
    p, m = stages, micro_batches
    forward, backward, comm = (",".join(map(str, c)) if isinstance(c, list) else str(c)
                               for c in costs)
    lines = [f"{kind} schedule: {_count(p, 'stage')}, {_count(m, 'micro-batch')}; costs: forward {forward}, "
             f"backward {backward}, communication {comm}; one slot = {sim.slot}", ""]
    if sim.grid is None or len(sim.grid[0]) > SLOTS_MAX:
        slots = "too many" if sim.grid is None else len(sim.grid[0])
        lines.append(f"(grid not shown: {slots} time slots, more than {SLOTS_MAX}; costs with "
                     "a larger common divisor, or fewer micro-batches, give a shorter one)")
    else:
        lines.append(sim.render().rstrip("\n"))
    lines.append("")
    busy = sorted(set(sim.busy))
    lines.append(f"step time           {_number(sim.step_time)}  (busy per stage: "
                 f"{', '.join(_number(b) for b in sim.busy) if len(busy) > 1 else _number(busy[0])})")
    lines.append(f"bubble fraction     {_number(sim.bubble_fraction)} simulated; formula "
                 f"(p - 1) / (m + p - 1) = {_number(bubble_fraction(p, m))}")
    peaks = sim.peak_stashed
    shown = " ".join(map(str, peaks)) if p <= 16 else \
        f"{' '.join(map(str, peaks[:8]))} ... {' '.join(map(str, peaks[-4:]))}"
    lines.append(f"peak stashed        {shown} micro-batches per stage (GPipe: m = {m} each; "
                 "1F1B: min(p - s, m))")
    return "\n".join(lines) + "\n"


def run(args):
    """Build, simulate and print the schedule."""
    for flag in ("stages", "micro_batches"):
        value = getattr(args, flag)
        if value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.stages * args.micro_batches > ACTIONS_MAX:
        raise ValueError(f"--stages x --micro-batches must be at most {ACTIONS_MAX:,}, got "
                         f"{args.stages} x {args.micro_batches}")
    for flag in ("forward_cost", "backward_cost"):
        value = getattr(args, flag)
        if isinstance(value, list) and len(value) != args.stages:
            raise ValueError(f"--{flag.replace('_', '-')} must give one cost or one per stage "
                             f"({args.stages}), got {len(value)}")
    schedule = pipeline_schedule(args.stages, args.micro_batches, args.kind)
    sim = simulate_schedule(schedule, args.forward_cost, args.backward_cost, args.comm_cost)
    costs = (args.forward_cost, args.backward_cost, args.comm_cost)
    print(format_schedule(args.kind, args.stages, args.micro_batches, sim, costs), end="")
    return 0
