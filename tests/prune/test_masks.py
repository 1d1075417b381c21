"""Tests of minscale.prune.masks: the mask rules and mask functions (pure functions).

Reference values are worked out by hand in the comments beside them.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from minscale.prune import (
    apply_mask,
    global_magnitude_masks,
    magnitude_mask,
    n_to_prune,
    random_mask,
    sparsity_of,
    structured_mask,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

# ----------------------------------------------------------------------------------------
# strategies: bounded finite floats, with a tie-heavy variant drawn from a few values

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
few_values = st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0])
elements = st.one_of(finite, few_values)
weights = arrays(np.float64, array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8),
                 elements=elements)
tie_weights = arrays(np.float64, array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
                     elements=few_values)
any_weights = st.one_of(weights, tie_weights)
sparsities = st.floats(0.0, 1.0, allow_nan=False)
PROPS = settings(max_examples=80, deadline=None)


def pruned_count(mask):
    return int(mask.size - np.count_nonzero(mask))


# ----------------------------------------------------------------------------------------
# n_to_prune: Python round, half to even


@pytest.mark.parametrize(
    "sparsity, n, expected",
    [
        (0.29, 100, 29),  # 0.29 * 100 = 28.999999999999996 -> round 29 (int() would give 28)
        (0.5, 5, 2),  # 2.5 -> 2 (half to even)
        (0.5, 7, 4),  # 3.5 -> 4 (half to even)
        (0.125, 4, 0),  # 0.5 -> 0
        (0.375, 4, 2),  # 1.5 -> 2
        (0.0, 10, 0),
        (1.0, 10, 10),
        (0.7, 0, 0),
    ],
)
def test_n_to_prune_rounds_half_to_even(sparsity, n, expected):
    assert n_to_prune(sparsity, n) == expected


# ----------------------------------------------------------------------------------------
# magnitude_mask: reference cases


def test_029_of_100_distinct_weights_prunes_29_and_repruning_is_stable():
    rng = np.random.default_rng(3)
    # magnitudes 0.01 .. 1.00, random signs and order: the 29 smallest are 0.01 .. 0.29
    w = rng.permutation(np.arange(1, 101) / 100.0) * rng.choice([-1.0, 1.0], size=100)
    w = w.reshape(10, 10)
    mask = magnitude_mask(w, 0.29)
    assert pruned_count(mask) == 29
    np.testing.assert_array_equal(np.sort(np.abs(w[~mask])), np.arange(1, 30) / 100.0)
    # again at the same sparsity: from the weights, from the masked weights, with the mask
    np.testing.assert_array_equal(magnitude_mask(w, 0.29), mask)
    np.testing.assert_array_equal(magnitude_mask(apply_mask(w, mask), 0.29), mask)
    np.testing.assert_array_equal(magnitude_mask(apply_mask(w, mask), 0.29, mask=mask), mask)


def test_ties_prune_lower_flat_index_first():
    # |w| = [1, .5, .5, .5, 2], k = round(0.4 * 5) = 2: both pruned entries are ties at 0.5,
    # so the two lowest indices (1, 2) go
    w = np.array([1.0, -0.5, 0.5, -0.5, 2.0])
    np.testing.assert_array_equal(magnitude_mask(w, 0.4), [True, False, False, True, True])


def test_all_equal_array_has_exact_count_in_index_order():
    mask = magnitude_mask(np.full((2, 5), 3.0), 0.3)  # k = 3 of 10: flat 0, 1, 2
    np.testing.assert_array_equal(mask.ravel(), [False] * 3 + [True] * 7)


def test_signed_zeros_tie():
    # -0.0 and 0.0 have the same magnitude, so the lower index is pruned first
    np.testing.assert_array_equal(magnitude_mask([5.0, 0.0, -0.0], 1 / 3), [True, False, True])


def test_integer_weights_rank_by_magnitude_without_overflow():
    w = np.array([-128, 1, 127, -2], dtype=np.int8)  # |-128| overflows in int8
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [True, False, True, False])


def test_float32_weights():
    w = np.array([0.3, -0.1, 0.2, 0.4], dtype=np.float32)
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [True, False, False, True])


def test_empty_array():
    assert magnitude_mask(np.zeros((0, 3)), 0.5).shape == (0, 3)


def test_previous_mask_zeros_stay_pruned_at_higher_sparsity():
    w = np.array([0.1, 0.2, 0.3, 9.0, 0.4])
    prev = np.array([True, True, True, False, True])  # 9.0 was pruned (say, by another rule)
    # k = round(0.4 * 5) = 2: the earlier zero (flat 3) counts, plus the smallest kept (0.1)
    np.testing.assert_array_equal(magnitude_mask(w, 0.4, mask=prev),
                                  [False, True, True, False, True])


def test_previous_mask_at_lower_sparsity_keeps_the_smallest_earlier_zeros():
    w = np.array([0.1, 5.0, 0.3, 9.0, 0.4])
    prev = np.array([True, False, True, False, True])  # 5.0 and 9.0 pruned
    # k = round(0.2 * 5) = 1 < 2 earlier zeros: the earlier zero with smaller |w| stays
    np.testing.assert_array_equal(magnitude_mask(w, 0.2, mask=prev),
                                  [True, False, True, True, True])


def test_global_issue_case_prunes_all_of_a_and_none_of_b():
    a = np.array([[0.1, 0.2], [0.3, 0.4]])
    b = np.array([[1.0, 2.0], [3.0, 4.0]])
    ma, mb = global_magnitude_masks([a, b], 0.5)
    np.testing.assert_array_equal(ma, np.zeros((2, 2), bool))
    np.testing.assert_array_equal(mb, np.ones((2, 2), bool))
    # layer-wise: 0.1, 0.2 and 1, 2 pruned
    np.testing.assert_array_equal(magnitude_mask(a, 0.5), [[False, False], [True, True]])
    np.testing.assert_array_equal(magnitude_mask(b, 0.5), [[False, False], [True, True]])


def test_global_ties_break_toward_earlier_tensor():
    ma, mb = global_magnitude_masks([np.array([1.0, 7.0]), np.array([1.0, 7.0])], 0.25)
    np.testing.assert_array_equal(ma, [False, True])
    np.testing.assert_array_equal(mb, [True, True])


def test_global_mixed_dtypes_and_previous_masks():
    a = np.array([0.5, 0.25], dtype=np.float32)
    b = np.array([3, -1, 2], dtype=np.int64)
    prev = [np.array([True, True]), np.array([False, True, True])]
    # k = round(0.6 * 5) = 3: earlier zero b[0], then |w| order 0.25 (a[1]), 0.5 (a[0])
    ma, mb = global_magnitude_masks([a, b], 0.6, masks=prev)
    np.testing.assert_array_equal(ma, [False, False])
    np.testing.assert_array_equal(mb, [False, True, True])


# ----------------------------------------------------------------------------------------
# magnitude_mask / global_magnitude_masks: properties


@PROPS
@given(w=any_weights, sparsity=sparsities)
def test_prunes_exactly_round_s_n(w, sparsity):
    assert pruned_count(magnitude_mask(w, sparsity)) == round(sparsity * w.size)


@PROPS
@given(w=any_weights, sparsity=sparsities)
def test_every_kept_magnitude_is_at_least_every_pruned_one(w, sparsity):
    mask = magnitude_mask(w, sparsity)
    assume(mask.any() and not mask.all())
    assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


@PROPS
@given(w=tie_weights, sparsity=sparsities)
def test_among_equal_magnitudes_lower_index_is_pruned_first(w, sparsity):
    flat_abs, flat_mask = np.abs(w).ravel(), magnitude_mask(w, sparsity).ravel()
    for value in np.unique(flat_abs):
        kept_flags = flat_mask[flat_abs == value]
        # in index order: a run of pruned entries, then a run of kept ones
        assert np.all(np.diff(kept_flags.astype(int)) >= 0)


@PROPS
@given(w=any_weights, s1=sparsities, s2=sparsities)
def test_masks_are_nested(w, s1, s2):
    lo, hi = min(s1, s2), max(s1, s2)
    m_lo = magnitude_mask(w, lo)
    # from scratch, and by re-pruning the pruned weights with the previous mask
    for m_hi in (magnitude_mask(w, hi), magnitude_mask(apply_mask(w, m_lo), hi, mask=m_lo)):
        assert not np.any(~m_lo & m_hi), "an earlier zero came back"
        assert pruned_count(m_hi) == round(hi * w.size)


@PROPS
@given(w=any_weights, sparsity=sparsities)
def test_repruning_masked_weights_at_same_sparsity_gives_same_mask(w, sparsity):
    mask = magnitude_mask(w, sparsity)
    np.testing.assert_array_equal(magnitude_mask(apply_mask(w, mask), sparsity), mask)
    np.testing.assert_array_equal(magnitude_mask(w, sparsity, mask=mask), mask)


@PROPS
@given(w=any_weights)
def test_sparsity_zero_keeps_all_and_one_prunes_all(w):
    assert magnitude_mask(w, 0.0).all()
    assert not magnitude_mask(w, 1.0).any()


@PROPS
@given(w=any_weights, sparsity=sparsities)
def test_global_on_one_layer_equals_layerwise(w, sparsity):
    (g,) = global_magnitude_masks([w], sparsity)
    np.testing.assert_array_equal(g, magnitude_mask(w, sparsity))


@PROPS
@given(ws=st.lists(any_weights, min_size=1, max_size=4), sparsity=sparsities)
def test_global_equals_magnitude_of_the_concatenation(ws, sparsity):
    masks = global_magnitude_masks(ws, sparsity)
    flat = magnitude_mask(np.concatenate([w.ravel() for w in ws]), sparsity)
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in masks]), flat)
    assert [m.shape for m in masks] == [w.shape for w in ws]


# ----------------------------------------------------------------------------------------
# random_mask


def test_random_mask_exact_count_and_reproducible():
    m1 = random_mask((7, 9), 0.4, seed=5)  # round(0.4 * 63) = round(25.2) = 25
    assert pruned_count(m1) == 25
    np.testing.assert_array_equal(random_mask((7, 9), 0.4, seed=5), m1)
    np.testing.assert_array_equal(random_mask((7, 9), 0.4, seed=np.random.default_rng(5)), m1)
    assert not np.array_equal(random_mask((7, 9), 0.4, seed=6), m1)
    assert random_mask(4, 0.5, seed=0).shape == (4,)


@PROPS
@given(shape=array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9), s1=sparsities,
       s2=sparsities, seed=st.integers(0, 2**32))
def test_random_mask_count_and_nesting_with_previous_mask(shape, s1, s2, seed):
    n = math.prod(shape)
    m1 = random_mask(shape, s1, seed=seed)
    assert m1.shape == shape and pruned_count(m1) == round(s1 * n)
    m2 = random_mask(shape, s2, seed=seed + 1, mask=m1)
    assert pruned_count(m2) == round(s2 * n)
    if s2 >= s1:
        assert not np.any(~m1 & m2)
    else:
        assert not np.any(~m2 & m1)  # drawn among the earlier zeros


# ----------------------------------------------------------------------------------------
# structured_mask


def test_structured_prunes_columns_by_l2_l1_and_max_norm():
    # column 0 = [3, 4]: L1 7, L2 5, Linf 4;  column 1 = [6, 0]: L1 6, L2 6, Linf 6;
    # column 2 = [10, 10] is the largest under every norm. k = round(1/3 * 3) = 1 column.
    w = np.array([[3.0, 6.0, 10.0], [4.0, 0.0, 10.0]])
    np.testing.assert_array_equal(structured_mask(w, 1 / 3, norm=2)[0], [False, True, True])
    np.testing.assert_array_equal(structured_mask(w, 1 / 3, norm=1)[0], [True, False, True])
    np.testing.assert_array_equal(structured_mask(w, 1 / 3, norm=np.inf)[0],
                                  [False, True, True])


def test_structured_axis_zero_prunes_rows():
    w = np.array([[1.0, 1.0], [0.1, 0.1], [2.0, 0.0]])  # row L2 norms: 1.414, 0.141, 2
    np.testing.assert_array_equal(structured_mask(w, 0.34, axis=0),  # round(1.02) = 1 row
                                  [[True, True], [False, False], [True, True]])


def test_structured_previous_mask_ranks_pruned_channels_first():
    w = np.array([[9.0, 1.0, 2.0], [9.0, 1.0, 2.0]])
    prev = np.array([[False, True, True], [False, True, True]])  # column 0 pruned before
    m = structured_mask(w, 2 / 3, mask=prev)  # 2 columns: column 0, then column 1
    np.testing.assert_array_equal(m[0], [False, False, True])


@PROPS
@given(w=any_weights, sparsity=sparsities, data=st.data())
def test_structured_exact_channel_count_and_norm_order(w, sparsity, data):
    axis = data.draw(st.integers(-w.ndim, w.ndim - 1))
    mask = structured_mask(w, sparsity, axis=axis)
    channels = np.moveaxis(mask, axis, 0).reshape(w.shape[axis], -1)
    assert np.all(channels.all(axis=1) | ~channels.any(axis=1)), "mask varies in a channel"
    kept = channels[:, 0]
    assert int((~kept).sum()) == round(sparsity * w.shape[axis])
    norms = np.linalg.norm(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1), axis=1)
    if kept.any() and not kept.all():
        assert norms[kept].min() >= norms[~kept].max()


# ----------------------------------------------------------------------------------------
# apply_mask, sparsity_of


def test_apply_mask_gives_positive_zeros_and_works_in_place():
    w = np.array([-1.5, 2.0, -3.0])
    mask = np.array([False, True, False])
    out = apply_mask(w, mask)
    np.testing.assert_array_equal(out, [0.0, 2.0, 0.0])
    assert not np.signbit(out).any(), "a pruned negative weight became -0.0"
    np.testing.assert_array_equal(w, [-1.5, 2.0, -3.0])  # input untouched
    res = apply_mask(w, mask, out=w)
    assert res is w and np.array_equal(w, [0.0, 2.0, 0.0])


@PROPS
@given(w=any_weights)
def test_all_true_mask_changes_nothing(w):
    np.testing.assert_array_equal(apply_mask(w, np.ones(w.shape, bool)), w)


def test_sparsity_of_weights_and_masks():
    assert sparsity_of([[0.0, 1.0], [0.0, -0.0]]) == 0.75
    assert sparsity_of(np.array([True, True, False, True, True])) == 0.2
    assert sparsity_of(magnitude_mask(np.arange(1.0, 101.0), 0.29)) == 0.29


# ----------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [-0.1, 1.0000001, float("nan"), float("inf")])
def test_sparsity_out_of_range_raises_naming_it(bad):
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask([1.0, 2.0], bad)
    with pytest.raises(ValueError, match="sparsity"):
        global_magnitude_masks([[1.0, 2.0]], bad)
    with pytest.raises(ValueError, match="sparsity"):
        random_mask(3, bad, seed=0)
    with pytest.raises(ValueError, match="sparsity"):
        structured_mask([[1.0, 2.0]], bad)


@pytest.mark.parametrize("bad", ["0.5", True, None])
def test_sparsity_of_wrong_type_raises_type_error(bad):
    with pytest.raises(TypeError, match="sparsity"):
        magnitude_mask([1.0, 2.0], bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_raises_naming_it(bad):
    with pytest.raises(ValueError, match=r"w must be finite.*index \(1, 0\)"):
        magnitude_mask([[1.0, 2.0], [bad, 3.0]], 0.5)
    with pytest.raises(ValueError, match=r"weights\[1\] must be finite"):
        global_magnitude_masks([np.ones(3), np.array([0.0, bad])], 0.5)
    with pytest.raises(ValueError, match="w must be finite"):
        structured_mask([[1.0, bad]], 0.5)


def test_non_finite_float32_weight_raises():
    with pytest.raises(ValueError, match="w must be finite"):
        magnitude_mask(np.array([1.0, np.nan], dtype=np.float32), 0.5)


def test_mask_of_wrong_shape_or_dtype_raises_naming_it():
    w = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\), got shape \(3, 2\)"):
        magnitude_mask(w, 0.5, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="mask must have dtype bool.*float64"):
        magnitude_mask(w, 0.5, mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"masks\[1\] must have dtype bool"):
        global_magnitude_masks([w, w], 0.5, masks=[np.ones((2, 3), bool), np.ones((2, 3), int)])
    with pytest.raises(ValueError, match="masks must be a list or tuple of 2"):
        global_magnitude_masks([w, w], 0.5, masks=[np.ones((2, 3), bool)])
    with pytest.raises(ValueError, match="mask must have shape"):
        apply_mask(w, np.ones(6, bool))
    with pytest.raises(ValueError, match="mask must have dtype bool"):
        apply_mask(w, np.ones((2, 3), np.uint8))
    with pytest.raises(ValueError, match="mask must have shape"):
        random_mask((2, 3), 0.5, seed=0, mask=np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        structured_mask(w, 0.5, mask=np.ones((2, 2), bool))


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="weights must hold at least one"):
        global_magnitude_masks([], 0.5)
    with pytest.raises(TypeError, match="weights must be a list or tuple"):
        global_magnitude_masks(np.ones((2, 2)), 0.5)
    with pytest.raises(TypeError, match="w must be an array of real numbers"):
        magnitude_mask(np.array(["a", "b"]), 0.5)
    with pytest.raises(TypeError, match="seed"):
        random_mask(3, 0.5, seed=None)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        random_mask(3, 0.5, seed=-1)
    with pytest.raises(ValueError, match="shape must have non-negative"):
        random_mask((2, -1), 0.5, seed=0)
    with pytest.raises(ValueError, match="norm must be >= 1"):
        structured_mask(np.ones((2, 2)), 0.5, norm=0.5)
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 1\].*got 2"):
        structured_mask(np.ones((2, 2)), 0.5, axis=2)
    with pytest.raises(ValueError, match="w must have at least 1 dimension"):
        structured_mask(np.float64(1.0), 0.5)
    with pytest.raises(ValueError, match="x must have at least one entry"):
        sparsity_of([])
    with pytest.raises(ValueError, match="out must be an ndarray of shape"):
        apply_mask(np.ones(3), np.ones(3, bool), out=np.ones(4))
