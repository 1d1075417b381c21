"""Pipeline schedules as data, and a simulator that times them.

A pipeline of ``stages`` processes runs ``micro_batches`` micro-batches through the model
split into contiguous stages. A schedule says, for each stage, in which order it runs its
``2 * micro_batches`` actions: ``("forward", i)`` and ``("backward", i)``. The pipeline trainer
follows these lists; the simulator here times them under per-action costs and reports the
step time, the bubble (idle) fraction and the peak number of stashed activations.

Nothing here starts a process: the module is pure Python (integers and fractions), so the
tests check every property of the schedules exactly. The derivations are in
``docs/parallel.md`` ("Pipeline schedules").
"""
from __future__ import annotations

import collections
import dataclasses
import math
import numbers
import sys
from fractions import Fraction

import numpy as np

from .._checks import ArgumentTypeError, check_choice, check_int, plain

__all__ = [
    "PIPELINE_SCHEDULES",
    "ScheduleSimulation",
    "bubble_fraction",
    "pipeline_schedule",
    "predict_step_times",
    "simulate_schedule",
]

#: The schedule kinds :func:`pipeline_schedule` builds.
PIPELINE_SCHEDULES = ("gpipe", "1f1b")
_ACTIONS = ("forward", "backward")
#: Largest grid the simulator draws (stages x time slots); a larger one is left out (None).
_GRID_CELLS_MAX = 1_000_000


def pipeline_schedule(stages, micro_batches, kind="gpipe"):
    """The order in which each pipeline stage runs its forward and backward actions.

    Parameters
    ----------
    stages : int, >= 1
        p, the number of pipeline stages (one process each).
    micro_batches : int, >= 1
        m, the number of micro-batches one global batch is split into. m < p is allowed.
    kind : {"gpipe", "1f1b"}, default "gpipe"
        ``"gpipe"``: every stage runs its m forwards, then its m backwards, both in
        micro-batch order 0 .. m-1. ``"1f1b"`` (PipeDream-Flush): stage s runs
        ``w = min(p - s - 1, m)`` warm-up forwards, then alternates one forward and one
        backward until its forwards are done, then runs the remaining ``w`` backwards.

    Returns
    -------
    list of list of tuple (str, int)
        ``schedule[s]`` is stage s's ordered list of ``(action, micro_batch)`` pairs, action
        ``"forward"`` or ``"backward"``, micro_batch in [0, m). Each list holds every
        ``("forward", i)`` and ``("backward", i)`` exactly once; forwards and backwards each
        appear in increasing micro-batch order, so every stage accumulates its gradient
        over micro-batches 0, 1, ..., m-1 in that order under both kinds.

    Raises
    ------
    ValueError
        stages or micro_batches not an integer >= 1; kind not one of
        :data:`PIPELINE_SCHEDULES`.

    Notes
    -----
    GPipe keeps all m micro-batches' activations of a stage stashed between its forward and
    its backward; 1F1B keeps at most ``min(p - s, m)`` on stage s (at most p). With equal
    costs on every stage both have the bubble fraction ``(p - 1) / (m + p - 1)``
    (:func:`bubble_fraction`).

    The backwards run in micro-batch order 0 .. m-1 (not in reverse) as in PyTorch's
    ``ScheduleGPipe``: the step time is the same either way (every backward of the last
    stage is ready when its forwards end), and one accumulation order for both kinds
    makes their gradients equal bit for bit.

    References
    ----------
    Huang et al., "GPipe: Efficient Training of Giant Neural Networks using Pipeline
    Parallelism", NeurIPS 2019. Narayanan et al., "Memory-Efficient Pipeline-Parallel DNN
    Training" (PipeDream-2BW / PipeDream-Flush), ICML 2021, and "Efficient Large-Scale
    Language Model Training on GPU Clusters Using Megatron-LM", SC 2021 (the
    non-interleaved 1F1B schedule). PyTorch ``torch.distributed.pipelining.ScheduleGPipe``
    and ``Schedule1F1B``.

    Examples
    --------
    >>> pipeline_schedule(2, 2, "1f1b")[0]
    [('forward', 0), ('forward', 1), ('backward', 0), ('backward', 1)]
    >>> pipeline_schedule(2, 2, "1f1b")[1]
    [('forward', 0), ('backward', 0), ('forward', 1), ('backward', 1)]
    """
    p = check_int("stages", stages, 1)
    m = check_int("micro_batches", micro_batches, 1)
    check_choice("kind", kind, PIPELINE_SCHEDULES)
    forwards = [("forward", i) for i in range(m)]
    backwards = [("backward", i) for i in range(m)]
    if kind == "gpipe":
        return [forwards + backwards for _ in range(p)]
    schedule = []
    for s in range(p):
        warmup = min(p - s - 1, m)
        actions = forwards[:warmup]
        for i in range(m - warmup):
            actions += [forwards[warmup + i], backwards[i]]
        actions += backwards[m - warmup:]
        schedule.append(actions)
    return schedule


def bubble_fraction(stages, micro_batches):
    """The GPipe bubble fraction ``(p - 1) / (m + p - 1)``, exactly.

    The fraction of the stage-time ``p * T`` (T the step time) that the stages spend idle,
    when every stage's forward costs the same f and every backward the same b and
    communication is free. It holds for the 1F1B schedule too.

    Parameters
    ----------
    stages : int, >= 1
        p.
    micro_batches : int, >= 1
        m.

    Returns
    -------
    fractions.Fraction
        In [0, 1); 0 for one stage.

    Raises
    ------
    ValueError
        stages or micro_batches not an integer >= 1.

    Notes
    -----
    T = (m + p - 1) * (f + b) and each stage is busy m * (f + b), so the idle fraction is
    1 - m / (m + p - 1) = (p - 1) / (m + p - 1). Derivation in ``docs/parallel.md``.

    References
    ----------
    Huang et al., "GPipe", NeurIPS 2019, section 2.2 (bubble overhead O((K - 1) / (M + K - 1))).

    Examples
    --------
    >>> bubble_fraction(4, 8)
    Fraction(3, 11)
    """
    p = check_int("stages", stages, 1)
    m = check_int("micro_batches", micro_batches, 1)
    return Fraction(p - 1, m + p - 1)


@dataclasses.dataclass(frozen=True)
class ScheduleSimulation:
    """What :func:`simulate_schedule` found. Times are in the unit of the costs given.

    Attributes
    ----------
    step_time : Fraction or float
        T: when the last action of any stage ends (the first starts at 0). A Fraction when
        every cost was an int or a Fraction, else a float.
    busy : tuple of (Fraction or float), one per stage
        The sum of the costs of the stage's actions (communication is not counted as busy).
    bubble_fraction : Fraction or float
        ``1 - sum(busy) / (p * T)``: the fraction of stage-time spent idle.
    peak_stashed : tuple of int, one per stage
        The most micro-batches whose activations the stage holds at once: a forward stashes
        one, its backward frees it.
    timeline : tuple of tuple of (start, end, action, micro_batch), one per stage
        Every action with its start and end time, in the stage's order.
    slot : Fraction or None
        The width of one grid time slot: the greatest common divisor of the costs (every
        start and end is a multiple of it). None when a cost was a float.
    grid : tuple of tuple of (tuple (str, int) or None), or None
        ``grid[s][t]`` is the action stage s runs during slot t (``[t * slot, (t + 1) *
        slot)``), None when idle; every row has ``T / slot`` cells. None when a cost was a
        float or the grid would exceed a million cells.
    """

    step_time: object
    busy: tuple
    bubble_fraction: object
    peak_stashed: tuple
    timeline: tuple
    slot: object
    grid: object

    def render(self):
        """The grid as text: one row per stage, cells ``F3`` / ``B3`` and ``.`` when idle.

        Every cell is as wide as the longest label.

        Returns
        -------
        str
            Rows ``"stage s | F0 F1 .  B0"`` (``F3``: forward of micro-batch 3, ``B3``: its
            backward, ``.``: idle), under a header numbering every fifth slot; each line
            ends in a newline.

        Raises
        ------
        ValueError
            If the simulation has no grid (a float cost, or too many cells).
        """
        if self.grid is None:
            raise ValueError("this simulation has no grid (a float cost, or more than "
                             f"{_GRID_CELLS_MAX} cells)")
        labels = [["." if c is None else f"{c[0][0].upper()}{c[1]}" for c in row]
                  for row in self.grid]
        w = max((len(x) for row in labels for x in row), default=1)
        name_w = len(f"stage {len(labels) - 1}")
        slots = len(labels[0]) if labels else 0
        head = [" "] * (slots * (w + 1))
        for t in range(0, slots, 5):  # 5 cells are wide enough for any slot number's label
            head[t * (w + 1):t * (w + 1) + len(str(t))] = str(t)
        head = "".join(head)
        lines = [f"{'slot'.ljust(name_w)} | {head}".rstrip()]
        for s, row in enumerate(labels):
            cells = " ".join(x.ljust(w) for x in row)
            lines.append(f"{f'stage {s}'.ljust(name_w)} | {cells}".rstrip())
        return "\n".join(lines) + "\n"


def _cost(name, value, allow_zero=False):
    """A cost as a Fraction (int or Fraction given) or a float (any other real); finite, > 0
    (>= 0 if `allow_zero`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {plain(value)!r}")
    bound = ">= 0" if allow_zero else "> 0"
    try:
        float(value)
    except OverflowError:
        # an exact int or Fraction beyond a float's range: the bubble fraction and the
        # printed figures go through float, so refuse it here rather than deep inside
        raise ValueError(f"{name} must be at most {sys.float_info.max:.6g} in magnitude, got "
                         f"one of {len(str(int(abs(value))))} digits") from None
    if not (math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        raise ValueError(f"{name} must be a finite number {bound}, got {plain(value)!r}")
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    if isinstance(value, Fraction):
        return value
    return float(value)


def _per_stage(name, value, p):
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return [_cost(name, value)] * p
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"{name} must be a positive real number or a sequence of "
                                f"{p} of them (one per stage), got {plain(value)!r}")
    values = list(value)
    if len(values) != p:
        raise ValueError(f"{name} must hold one cost per stage ({p}), got {len(values)}")
    return [_cost(f"{name}[{s}]", v) for s, v in enumerate(values)]


def _check_schedule(schedule):
    """Validate a schedule's shape; return (p, m)."""
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__len__"):
        raise ArgumentTypeError(f"schedule must be a list of per-stage action lists, got "
                                f"{type(schedule).__name__}")
    p = len(schedule)
    if p < 1:
        raise ValueError("schedule must have at least one stage, got 0")
    for s, actions in enumerate(schedule):
        if not isinstance(actions, (list, tuple)):
            raise ArgumentTypeError(f"schedule[{s}] must be a list of (action, micro_batch) "
                                    f"pairs, got {type(actions).__name__}")
    m = len(schedule[0]) // 2
    if m < 1:
        raise ValueError(f"schedule[0] must hold at least one forward and one backward, got "
                         f"{len(schedule[0])} actions")
    expected = {(a, i) for a in _ACTIONS for i in range(m)}
    for s, actions in enumerate(schedule):
        seen = set()
        for entry in actions:
            ok = (isinstance(entry, tuple) and len(entry) == 2 and entry[0] in _ACTIONS
                  and isinstance(entry[1], numbers.Integral)
                  and not isinstance(entry[1], bool))
            if not ok:
                raise ValueError(f"schedule[{s}] holds {plain(entry)!r}; each entry must be "
                                 "(\"forward\" or \"backward\", micro-batch index)")
            key = (entry[0], int(entry[1]))
            if key in seen:
                raise ValueError(f"schedule[{s}] runs {key} twice")
            seen.add(key)
        if seen != expected:
            missing = sorted(expected - seen)
            extra = sorted(seen - expected)
            raise ValueError(
                f"schedule[{s}] must run forward and backward of micro-batches 0 .. {m - 1} "
                f"once each (as stage 0 has {len(schedule[0])} actions)"
                + (f"; missing {missing[:3]}" if missing else "")
                + (f"; unexpected {extra[:3]}" if extra else ""))
    return p, m


def simulate_schedule(schedule, forward_cost=1, backward_cost=2, comm_cost=0):
    """Time a pipeline schedule: step time, busy time, bubble fraction, grid and stash peaks.

    Every stage runs its actions one at a time in list order, each as early as its
    dependencies allow:

    - ``("forward", i)`` on stage s > 0 after ``("forward", i)`` on stage s - 1 ended,
      plus `comm_cost` (the activation is sent);
    - ``("backward", i)`` on stage s after ``("forward", i)`` on stage s and, for s < p - 1,
      after ``("backward", i)`` on stage s + 1 ended, plus `comm_cost` (the gradient is
      sent back).

    Parameters
    ----------
    schedule : list of list of (str, int)
        As :func:`pipeline_schedule` returns (or any order of the same actions).
    forward_cost, backward_cost : real > 0, or sequence of p of them, default 1 and 2
        The duration of one forward / backward of one micro-batch on each stage (a scalar:
        the same on every stage). Any time unit; ints and Fractions keep every result exact.
        The defaults follow the usual estimate that a backward costs twice a forward.
    comm_cost : real >= 0, default 0
        The time from one stage's end of an action to its neighbour's being able to start
        the dependent one.

    Returns
    -------
    ScheduleSimulation

    Raises
    ------
    ValueError
        A malformed schedule (a stage missing or repeating an action, a bad entry, stages
        with different micro-batch counts); a cost not finite and > 0 (comm_cost: >= 0), or an
        exact one beyond a float's range (above ``sys.float_info.max``); a
        per-stage cost sequence of the wrong length. A schedule that deadlocks (some stage
        waits for an action that can never run, e.g. a backward listed before its own
        forward): the message names each blocked stage, the action it waits at and what
        that action waits for.

    Notes
    -----
    start(s, a) = max(end of the stage's previous action, end(dependency) + comm_cost);
    end = start + cost. The start times do not depend on the order in which ready actions
    are processed, so the simulation is deterministic. With equal costs and comm_cost = 0,
    GPipe and 1F1B both take T = (m + p - 1)(f + b): see :func:`bubble_fraction`.

    References
    ----------
    The dependency rules are those of GPipe (Huang et al., 2019) and PipeDream-Flush
    (Narayanan et al., 2021); the grid drawing follows the figures of both papers.

    Examples
    --------
    >>> sim = simulate_schedule(pipeline_schedule(2, 3, "gpipe"), 1, 1)
    >>> sim.step_time, sim.bubble_fraction, sim.peak_stashed
    (Fraction(8, 1), Fraction(1, 4), (3, 3))
    """
    p, m = _check_schedule(schedule)
    fwd = _per_stage("forward_cost", forward_cost, p)
    bwd = _per_stage("backward_cost", backward_cost, p)
    comm = _cost("comm_cost", comm_cost, allow_zero=True)
    exact = all(isinstance(x, Fraction) for x in [*fwd, *bwd, comm])
    if exact:
        # exact and fast: count time in integer units of 1 / (common denominator)
        unit = math.lcm(*(x.denominator for x in [*fwd, *bwd, comm]))
        fwd, bwd = [int(x * unit) for x in fwd], [int(x * unit) for x in bwd]
        comm = int(comm * unit)
    free_at, timeline = _run(schedule, p, fwd, bwd, comm)

    step_time = max(free_at)
    busy = [m * (fwd[s] + bwd[s]) for s in range(p)]
    idle = p * step_time - sum(busy)
    peaks = tuple(_peak_stashed(actions) for actions in schedule)
    if not exact:
        return ScheduleSimulation(
            step_time=float(step_time), busy=tuple(float(x) for x in busy),
            bubble_fraction=float(idle) / float(p * step_time), peak_stashed=peaks,
            timeline=tuple(tuple((float(a), float(b), act, i) for a, b, act, i in row)
                           for row in timeline), slot=None, grid=None)
    slot = math.gcd(*fwd, *bwd, comm)
    grid = None
    if step_time // slot * p <= _GRID_CELLS_MAX:
        grid = []
        for row in timeline:
            cells = [None] * (step_time // slot)
            for start, finish, action, i in row:
                cells[start // slot:finish // slot] = [(action, i)] * ((finish - start) // slot)
            grid.append(tuple(cells))
        grid = tuple(grid)
    return ScheduleSimulation(
        step_time=Fraction(step_time, unit), busy=tuple(Fraction(x, unit) for x in busy),
        bubble_fraction=Fraction(idle, p * step_time), peak_stashed=peaks,
        timeline=tuple(tuple((Fraction(a, unit), Fraction(b, unit), act, i)
                             for a, b, act, i in row) for row in timeline),
        slot=Fraction(slot, unit), grid=grid)


def _run(schedule, p, fwd, bwd, comm):
    """Start and end every action as early as allowed; return (free_at, timeline)."""
    end = {}  # (stage, action, micro_batch) -> end time
    position = [0] * p
    free_at = [0] * p
    timeline = [[] for _ in range(p)]
    # a stage's next action can only become ready when it or a neighbour advances: a work
    # list of stages to retry keeps the simulation linear in the number of actions
    pending = collections.deque(range(p))
    queued = [True] * p
    while pending:
        s = pending.popleft()
        queued[s] = False
        advanced = False
        actions = schedule[s]
        while position[s] < len(actions):
            action, i = actions[position[s]]
            i = int(i)
            deps = _dependencies(s, action, i, p)
            if any(d not in end for d in deps):
                break
            start = max([free_at[s], *(end[d] + (comm if d[0] != s else 0) for d in deps)])
            finish = start + (fwd[s] if action == "forward" else bwd[s])
            end[(s, action, i)] = free_at[s] = finish
            timeline[s].append((start, finish, action, i))
            position[s] += 1
            advanced = True
        if advanced:
            for t in (s - 1, s + 1):
                if 0 <= t < p and not queued[t]:
                    pending.append(t)
                    queued[t] = True
    if any(position[s] < len(schedule[s]) for s in range(p)):
        raise ValueError("schedule deadlocks: " + "; ".join(
            _blocked(s, schedule[s][position[s]], p, end)
            for s in range(p) if position[s] < len(schedule[s])))
    return free_at, timeline


def _dependencies(s, action, i, p):
    if action == "forward":
        return [(s - 1, "forward", i)] if s > 0 else []
    deps = [(s, "forward", i)]
    if s < p - 1:
        deps.append((s + 1, "backward", i))
    return deps


def _blocked(s, head, p, end):
    action, i = head
    waits = [d for d in _dependencies(s, action, int(i), p) if d not in end]
    what = ", ".join(f"{a} {j} on stage {t}" for t, a, j in waits)
    return f"stage {s} waits at ({action!r}, {int(i)}) for {what}"


def _peak_stashed(actions):
    held = peak = 0
    for action, _ in actions:
        held += 1 if action == "forward" else -1
        peak = max(peak, held)
    return peak


def predict_step_times(stages, micro_batches, forward_cost, backward_cost, comm_cost=0,
                       kind="gpipe"):
    """Predicted pipeline step time for each micro-batch count, from measured action costs.

    The global batch is fixed; m micro-batches each carry 1/m of it, so one action's cost is
    taken proportional to its micro-batch size: ``forward_cost / m`` per forward (the cost
    given is that of the whole global batch through the stage), likewise backward. The
    per-message `comm_cost` is not scaled (a latency).

    Parameters
    ----------
    stages : int, >= 1
    micro_batches : iterable of int, each >= 1
        The m values to predict.
    forward_cost, backward_cost : real > 0, or sequence of p of them
        Seconds (or any unit) for one forward / backward of the **whole global batch**
        through each stage, e.g. measured with one micro-batch on each stage alone.
    comm_cost : real >= 0, default 0
        Seconds per send between neighbours.
    kind : {"gpipe", "1f1b"}

    Returns
    -------
    list of dict
        One per m: ``{"micro_batches": m, "step_time": T, "bubble_fraction": simulated,
        "formula": (p - 1) / (m + p - 1) as a float}``; floats.

    Raises
    ------
    ValueError
        As :func:`pipeline_schedule` and :func:`simulate_schedule`.

    Notes
    -----
    The proportional model ignores per-call overhead, which grows relative to the work as
    micro-batches shrink; a measured step time above the prediction at large m shows it.
    """
    p = check_int("stages", stages, 1)
    fwd = _per_stage("forward_cost", forward_cost, p)
    bwd = _per_stage("backward_cost", backward_cost, p)
    rows = []
    for m in micro_batches:
        m = check_int("micro_batches", m, 1)
        sim = simulate_schedule(pipeline_schedule(p, m, kind), [f / m for f in fwd],
                                [b / m for b in bwd], comm_cost)
        rows.append({"micro_batches": m, "step_time": float(sim.step_time),
                     "bubble_fraction": float(sim.bubble_fraction),
                     "formula": float(bubble_fraction(p, m))})
    return rows
