"""Pipeline schedules as data (minscale/parallel/schedule.py): order, memory, timing, deadlock.

The simulator works in exact rational arithmetic (costs given as ints or Fractions), so every
timing assertion here is an exact equality between Fractions, not a float comparison.
"""
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale.parallel import (
    PIPELINE_SCHEDULES,
    bubble_fraction,
    pipeline_schedule,
    predict_step_times,
    simulate_schedule,
)

p_values = st.integers(1, 8)
m_values = st.integers(1, 12)
kinds = st.sampled_from(PIPELINE_SCHEDULES)
costs = st.integers(1, 5).map(Fraction) | st.fractions(Fraction(1, 4), 4, max_denominator=6)


def F(i):
    return ("forward", i)


def B(i):
    return ("backward", i)


def cells(text):
    """A grid row written as 'F0 F1 .  B0' -> [("forward", 0), ("forward", 1), None, ...]."""
    out = []
    for token in text.split():
        out.append(None if token == "." else ({"F": "forward", "B": "backward"}[token[0]],
                                              int(token[1:])))
    return tuple(out)


# ---------------------------------------------------------------- hand-worked references

def test_gpipe_p2_m3_by_hand():
    schedule = pipeline_schedule(2, 3, "gpipe")
    assert schedule == [[F(0), F(1), F(2), B(0), B(1), B(2)]] * 2
    sim = simulate_schedule(schedule, 1, 1)
    # stage 1 gets F0 at t=1; B0 on stage 1 starts when its F2 ends (t=4); stage 0's B0
    # waits for it (t=5)
    assert sim.grid == (cells("F0 F1 F2 .  .  B0 B1 B2"),
                        cells(".  F0 F1 F2 B0 B1 B2 . "))
    assert sim.step_time == 8 and sim.busy == (6, 6)
    assert sim.bubble_fraction == Fraction(1, 4) == bubble_fraction(2, 3)
    assert sim.peak_stashed == (3, 3)


def test_1f1b_p2_m3_by_hand():
    schedule = pipeline_schedule(2, 3, "1f1b")
    # stage 0: one warm-up forward, then F B pairs, then one cool-down backward
    assert schedule[0] == [F(0), F(1), B(0), F(2), B(1), B(2)]
    assert schedule[1] == [F(0), B(0), F(1), B(1), F(2), B(2)]
    sim = simulate_schedule(schedule, 1, 1)
    assert sim.grid == (cells("F0 F1 .  B0 F2 B1 .  B2"),
                        cells(".  F0 B0 F1 B1 F2 B2 . "))
    assert sim.step_time == 8 and sim.bubble_fraction == Fraction(1, 4)
    assert sim.peak_stashed == (2, 1)


def test_1f1b_p4_m8_by_hand():
    sim = simulate_schedule(pipeline_schedule(4, 8, "1f1b"), 1, 1)
    # stage s warms up with 3 - s forwards; stage s's B_i follows stage s+1's by one slot;
    # T = (m + p - 1) * (f + b) = 22
    assert sim.grid == (
        cells("F0 F1 F2 F3 .  .  .  B0 F4 B1 F5 B2 F6 B3 F7 B4 .  B5 .  B6 .  B7"),
        cells(".  F0 F1 F2 .  .  B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 .  B6 .  B7 . "),
        cells(".  .  F0 F1 .  B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 .  B7 .  . "),
        cells(".  .  .  F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7 .  .  . "),
    )
    assert sim.step_time == 22 and sim.bubble_fraction == Fraction(3, 11)
    assert sim.peak_stashed == (4, 3, 2, 1)


def test_1f1b_p4_m8_backward_twice_forward():
    sim = simulate_schedule(pipeline_schedule(4, 8, "1f1b"))  # default costs 1 and 2
    assert sim.step_time == 33 == (8 + 4 - 1) * (1 + 2)
    assert sim.busy == (24,) * 4 and sim.bubble_fraction == Fraction(3, 11)
    # the last stage alternates F and B from t = 3 on without a gap
    assert sim.grid[3][:27] == cells(
        ".  .  .  F0 B0 B0 F1 B1 B1 F2 B2 B2 F3 B3 B3 F4 B4 B4 F5 B5 B5 F6 B6 B6 F7 B7 B7")


def test_m_below_p_1f1b_is_all_forwards_then_all_backwards():
    # m = 2 < p = 4: stages 0 and 1 have more warm-up slots than micro-batches
    schedule = pipeline_schedule(4, 2, "1f1b")
    assert schedule[0] == schedule[1] == [F(0), F(1), B(0), B(1)]
    assert schedule[3] == [F(0), B(0), F(1), B(1)]
    sim = simulate_schedule(schedule, 1, 1)
    assert sim.step_time == 10 and sim.bubble_fraction == Fraction(3, 5)


def test_one_stage_has_no_bubble():
    for kind in PIPELINE_SCHEDULES:
        sim = simulate_schedule(pipeline_schedule(1, 5, kind), 1, 2)
        assert sim.step_time == 15 and sim.bubble_fraction == 0


def test_communication_adds_one_hop_per_stage_boundary():
    # GPipe p=2, m=1, f=b=1, comm=1/2: F0 [0,1) on stage 0, [1.5,2.5) on 1, B0 [2.5,3.5) on
    # 1, [4,5) on 0
    sim = simulate_schedule(pipeline_schedule(2, 1), 1, 1, Fraction(1, 2))
    assert sim.step_time == 5 and sim.slot == Fraction(1, 2)
    assert sim.timeline[1] == ((Fraction(3, 2), Fraction(5, 2), "forward", 0),
                               (Fraction(5, 2), Fraction(7, 2), "backward", 0))
    assert sim.bubble_fraction == Fraction(3, 5)


@settings(max_examples=100, deadline=None)
@given(p=p_values, m=m_values, f=costs, b=costs, c=costs)
def test_communication_costs_gpipe_2_p_minus_1_hops(p, m, f, b, c):
    gpipe = simulate_schedule(pipeline_schedule(p, m, "gpipe"), f, b, c)
    assert gpipe.step_time == (m + p - 1) * (f + b) + 2 * (p - 1) * c
    # 1F1B waits for round trips in its steady state: never faster, here slower
    assert simulate_schedule(pipeline_schedule(p, m, "1f1b"), f, b, c).step_time >= \
        gpipe.step_time


def test_communication_slows_1f1b_more_than_gpipe():
    half = Fraction(1, 2)
    assert simulate_schedule(pipeline_schedule(4, 8, "gpipe"), 1, 2, half).step_time == 36
    assert simulate_schedule(pipeline_schedule(4, 8, "1f1b"), 1, 2, half).step_time == 41


def test_per_stage_costs_slowest_stage_sets_the_pace():
    # stage 1 three times slower: GPipe T = f0 + m f1 + m b1 + b0 = 1 + 12 + 24 + 2
    sim = simulate_schedule(pipeline_schedule(2, 4), [1, 3], [2, 6])
    assert sim.step_time == 39 and sim.busy == (12, 36)
    assert sim.bubble_fraction == 1 - Fraction(48, 78)


def test_float_costs_give_floats_and_no_grid():
    sim = simulate_schedule(pipeline_schedule(3, 4), 1.0, 2.0)
    assert isinstance(sim.step_time, float) and sim.grid is None and sim.slot is None
    assert sim.step_time == 18.0  # (m + p - 1) * 3, small integers: exact in binary
    assert abs(sim.bubble_fraction - 2 / 6) < 1e-15
    with pytest.raises(ValueError, match="no grid"):
        sim.render()


def test_render():
    text = simulate_schedule(pipeline_schedule(2, 3, "1f1b"), 1, 1).render()
    assert text == ("slot    | 0              5\n"
                    "stage 0 | F0 F1 .  B0 F2 B1 .  B2\n"
                    "stage 1 | .  F0 B0 F1 B1 F2 B2 .\n")


# ---------------------------------------------------------------- properties

def _order_ok(schedule, sim):
    p = len(schedule)
    end = {}
    start = {}
    for s, row in enumerate(sim.timeline):
        for a, b, action, i in row:
            start[(s, action, i)], end[(s, action, i)] = a, b
    for (s, action, i), t in start.items():
        if action == "forward" and s > 0:
            assert t >= end[(s - 1, "forward", i)]
        if action == "backward":
            assert t >= end[(s, "forward", i)]
            if s < p - 1:
                assert t >= end[(s + 1, "backward", i)]
    # one action at a time per stage, in list order
    for s, row in enumerate(sim.timeline):
        assert [(action, i) for _, _, action, i in row] == schedule[s]
        for (a0, b0, *_), (a1, *_) in zip(row, row[1:]):
            assert a0 < b0 <= a1


@settings(max_examples=150, deadline=None)
@given(p=p_values, m=m_values, kind=kinds)
def test_each_micro_batch_forward_and_backward_once_per_stage(p, m, kind):
    schedule = pipeline_schedule(p, m, kind)
    assert len(schedule) == p
    for actions in schedule:
        assert sorted(actions) == sorted([F(i) for i in range(m)] + [B(i) for i in range(m)])
        # forwards and backwards each in micro-batch order: one accumulation order
        assert [i for a, i in actions if a == "forward"] == list(range(m))
        assert [i for a, i in actions if a == "backward"] == list(range(m))


@settings(max_examples=150, deadline=None)
@given(p=p_values, m=m_values, kind=kinds, f=costs, b=costs, c=st.sampled_from([0, 1, 2]))
def test_dependencies_hold_and_no_deadlock(p, m, kind, f, b, c):
    schedule = pipeline_schedule(p, m, kind)
    sim = simulate_schedule(schedule, f, b, Fraction(c, 3))
    _order_ok(schedule, sim)


@settings(max_examples=150, deadline=None)
@given(p=p_values, m=m_values)
def test_stashed_activations(p, m):
    assert simulate_schedule(pipeline_schedule(p, m, "gpipe")).peak_stashed == (m,) * p
    peak = simulate_schedule(pipeline_schedule(p, m, "1f1b")).peak_stashed
    assert peak == tuple(min(p - s, m) for s in range(p))
    assert max(peak) <= p


@settings(max_examples=150, deadline=None)
@given(p=p_values, m=m_values, kind=kinds, f=costs, b=costs)
def test_equal_costs_bubble_is_the_gpipe_formula(p, m, kind, f, b):
    sim = simulate_schedule(pipeline_schedule(p, m, kind), f, b)
    assert sim.step_time == (m + p - 1) * (f + b)
    assert sim.bubble_fraction == Fraction(p - 1, m + p - 1) == bubble_fraction(p, m)


@settings(max_examples=100, deadline=None)
@given(p=p_values, m=m_values, kind=kinds, data=st.data())
def test_grid_matches_timeline(p, m, kind, data):
    small = st.integers(1, 4) | st.sampled_from([Fraction(1, 2), Fraction(3, 2)])
    f = data.draw(st.lists(small, min_size=p, max_size=p))
    b = data.draw(st.lists(small, min_size=p, max_size=p))
    sim = simulate_schedule(pipeline_schedule(p, m, kind), f, b)
    for s, row in enumerate(sim.grid):
        assert len(row) * sim.slot == sim.step_time
        busy_cells = sum(cell is not None for cell in row)
        assert busy_cells * sim.slot == sim.busy[s] == m * (f[s] + b[s])
    assert sim.bubble_fraction == 1 - sum(sim.busy) / (p * sim.step_time)


def test_no_deadlock_on_a_full_range():
    for p in range(1, 13):
        for m in range(1, 17):
            for kind in PIPELINE_SCHEDULES:
                sim = simulate_schedule(pipeline_schedule(p, m, kind), 1, 1)
                assert sim.step_time == 2 * (m + p - 1)


def test_long_pipeline():
    # the work list retries only a stage whose neighbour advanced: 2000 stages take well under
    # a second (retrying every stage after each step took seconds at this size)
    for kind in PIPELINE_SCHEDULES:
        sim = simulate_schedule(pipeline_schedule(2000, 2, kind), 1, 2)
        assert sim.step_time == (2 + 2000 - 1) * 3
        last = 2 if kind == "gpipe" else 1
        assert sim.peak_stashed[:3] == (2, 2, 2) and sim.peak_stashed[-1] == last


# ---------------------------------------------------------------- bad input

def test_deadlock_names_the_stages_and_actions():
    bad = [[B(0), F(0)], [F(0), B(0)]]  # stage 0 lists a backward before its own forward
    with pytest.raises(ValueError, match=r"deadlocks: stage 0 waits at \('backward', 0\) for "
                                         r"forward 0 on stage 0, backward 0 on stage 1; "
                                         r"stage 1 waits at \('forward', 0\)"):
        simulate_schedule(bad)
    crossed = [[F(0), F(1), B(1), B(0)], [F(0), F(1), B(0), B(1)]]  # legal, just slower
    assert simulate_schedule(crossed, 1, 1).step_time == 7
    # a cycle across stages: stage 1 waits for F1 before its B0, stage 0 for B0 before F1
    cycle = [[F(0), B(0), F(1), B(1)], [F(0), F(1), B(0), B(1)]]
    with pytest.raises(ValueError, match=r"stage 0 waits at \('backward', 0\) for backward 0 "
                                         r"on stage 1; stage 1 waits at \('forward', 1\)"):
        simulate_schedule(cycle)


@pytest.mark.parametrize("args, pattern", [
    ((0, 4), "stages must be an integer >= 1, got 0"),
    ((2, 0), "micro_batches must be an integer >= 1, got 0"),
    ((2, 2, "zero-bubble"), r"kind must be one of \('gpipe', '1f1b'\), got 'zero-bubble'"),
    ((2.0, 2), "stages must be an integer"),
    ((True, 2), "stages must be an integer"),
])
def test_pipeline_schedule_bad_input(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        pipeline_schedule(*args)


@pytest.mark.parametrize("schedule, kwargs, pattern", [
    ([], {}, "at least one stage"),
    ([[]], {}, r"schedule\[0\] must hold at least one forward and one backward, got 0"),
    ([[F(0), B(0)], None], {}, r"schedule\[1\] must be a list of \(action, micro_batch\) pairs"),
    ("FB", {}, "list of per-stage action lists"),
    ([[F(0), B(0)], [F(0)]], {}, r"schedule\[1\] must run .* missing \[\('backward', 0\)\]"),
    ([[F(0), B(0)], [F(0), B(0), F(1), B(1)]], {}, r"schedule\[1\] .* unexpected"),
    ([[F(0), F(0)]], {}, r"schedule\[0\] runs \('forward', 0\) twice"),
    ([[("fwd", 0), B(0)]], {}, r"schedule\[0\] holds \('fwd', 0\)"),
    ([[F(0), B(0)]], {"forward_cost": 0}, "forward_cost must be a finite number > 0, got 0"),
    ([[F(0), B(0)]], {"backward_cost": float("inf")}, "backward_cost must be a finite number > 0, got inf"),
    ([[F(0), B(0)]], {"forward_cost": Fraction(10**400)},
     "forward_cost must be at most 1.79769e.308 in magnitude, got one of 401 digits"),
    ([[F(0), B(0)]], {"backward_cost": [10**309]}, r"backward_cost\[0\] must be at most"),
    ([[F(0), B(0)]], {"comm_cost": -1}, "comm_cost must be a finite number >= 0, got -1"),
    ([[F(0), B(0)]], {"forward_cost": [1, 2]}, r"one cost per stage \(1\), got 2"),
    ([[F(0), B(0)]], {"forward_cost": "1"}, "forward_cost must be a positive real number or"),
])
def test_simulate_bad_input(schedule, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        simulate_schedule(schedule, **kwargs)


# ---------------------------------------------------------------- prediction

def test_predict_step_times_scales_costs_by_micro_batch():
    # whole-batch costs f = 1, b = 2 per stage, p = 2: T(m) = (m + 1) * 3 / m
    rows = predict_step_times(2, [1, 2, 4], Fraction(1), Fraction(2))
    assert [r["step_time"] for r in rows] == [6.0, 4.5, 3.75]
    assert [r["formula"] for r in rows] == [0.5, 1 / 3, 0.2]
    assert [r["bubble_fraction"] for r in rows] == [r["formula"] for r in rows]
    # a fixed latency per send does not shrink with m: it adds 2 hops per micro-batch path
    with_comm = predict_step_times(2, [1, 4], 1, 2, comm_cost=Fraction(1, 10), kind="1f1b")
    assert with_comm[0]["step_time"] == pytest.approx(6.2, abs=1e-12)
