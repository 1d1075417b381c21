"""Masks from arrays: the selection rules and the mask functions (no model in sight).

Conventions (``DESIGN.md``): a mask is a boolean array with ``True`` = kept; sparsity is the
fraction of zeros; asking for sparsity ``s`` of ``n`` entries prunes exactly ``round(s * n)``
of them (Python ``round``, half to even, as ``torch.nn.utils.prune`` does for a fractional
amount), and ties at the threshold are broken deterministically: the lower flat index is
pruned first.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _checks, kernels
from .._checks import plain

__all__ = [
    "n_to_prune",
    "magnitude_mask",
    "global_magnitude_masks",
    "random_mask",
    "structured_mask",
    "apply_mask",
    "sparsity_of",
]


# ----------------------------------------------------------------------------------------
# argument checks of arrays


def _check_weights(w, name, check_finite=True):
    """Return `w` as an ndarray of real numbers; non-finite entries raise ValueError."""
    arr = np.asarray(w)
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{name} must be an array of real numbers (float or int dtype), "
            f"got dtype {arr.dtype}"
        )
    if check_finite:
        _checks.check_finite_array(name, arr)
    return arr


def _check_mask(mask, shape, name="mask"):
    """Return `mask` as a bool ndarray of `shape`, else raise ValueError naming `name`."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must have dtype bool (True = kept), got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------------------
# selection rules on flat scores


def n_to_prune(sparsity, n):
    """Number of entries pruned when asking for `sparsity` of `n` entries.

    Parameters
    ----------
    sparsity : float in [0, 1]
        Fraction of zeros asked for.
    n : int, >= 0
        Number of prunable entries.

    Returns
    -------
    k : int
        ``round(sparsity * n)``, in [0, n].

    Raises
    ------
    ValueError
        If sparsity is NaN or outside [0, 1], or n < 0.
    TypeError
        If sparsity is not a real number or n not an int.

    Notes
    -----
    k = round(sparsity * n) with Python's ``round`` (half to even), the rule of
    ``torch.nn.utils.prune._compute_nparams_toprune`` for a fractional amount. Rounding
    rather than truncating matters: ``0.29 * 100`` is ``28.999999999999996`` in binary
    floating point, so ``int`` would prune 28 and ``round`` prunes the intended 29.

    Examples
    --------
    >>> n_to_prune(0.29, 100)
    29
    >>> n_to_prune(0.5, 5)  # 2.5 rounds half to even
    2
    """
    s = _checks.check_sparsity("sparsity", sparsity)
    n = _checks.check_int("n", n, lo=0)
    return min(max(round(s * n), 0), n)


def _keep_all_but_smallest(scores, k):
    """Keep-mask over 1-D `scores` pruning the `k` smallest; ties: lower index pruned first.

    O(n): one ``np.partition`` finds the k-th smallest score t; every score < t is pruned,
    every score > t is kept, and of the scores equal to t the first (lowest-index) ones are
    pruned until the count is exactly k. The work is the ``keep_all_but_smallest`` kernel of
    the active backend (:mod:`minscale.kernels`).
    """
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    scores = np.ascontiguousarray(scores)
    return kernels.keep_all_but_smallest(scores, int(k), np.empty(scores.size, dtype=bool))


def _keep_with_previous(scores, k, previous, select):
    """Apply `select(sub_scores, k_sub)` so that previously pruned entries rank first.

    `previous` is the flat previous keep-mask. If at least as many entries as were pruned
    before are asked for, all earlier zeros stay and ``k - p`` more are chosen among the kept
    ones; otherwise the k are chosen among the earlier zeros (the rest come back).
    """
    n_prev_pruned = previous.size - int(np.count_nonzero(previous))
    if k >= n_prev_pruned:
        keep = previous.copy()
        idx = np.flatnonzero(previous)
        keep[idx] = select(scores[idx], k - n_prev_pruned)
    else:
        keep = np.ones(previous.size, dtype=bool)
        idx = np.flatnonzero(~previous)
        keep[idx] = select(scores[idx], k)
    return keep


# ----------------------------------------------------------------------------------------
# masks


def magnitude_mask(w, sparsity, mask=None):
    """Keep-mask pruning exactly ``round(sparsity * w.size)`` smallest-magnitude entries.

    Parameters
    ----------
    w : array_like of float or int, any shape
        Weights, finite. Float32 input is ranked in float32 (no float64 copy).
    sparsity : float in [0, 1]
        Fraction of entries to prune (zeros), not a percent.
    mask : bool ndarray shaped like `w`, optional
        The previous mask (True = kept). Entries it prunes are ranked before all others,
        so they count toward the total and stay pruned whenever the new count is at least
        the old one; a higher sparsity therefore keeps every earlier zero. If fewer entries
        are asked for than the mask already prunes, the pruned ones with the smallest |w|
        (then lower index) stay pruned and the others are kept again.

    Returns
    -------
    mask : bool ndarray, shape ``w.shape``
        True = kept. Exactly ``round(sparsity * w.size)`` entries are False.

    Raises
    ------
    ValueError
        If sparsity is NaN or outside [0, 1], `w` has a non-finite entry, or `mask` has the
        wrong shape or a dtype other than bool; the message names the argument.
    TypeError
        If sparsity is not a real number or `w` not a real array.

    Notes
    -----
    Entries are ranked by the key (|w|, flat index) and the first k = round(sparsity * n)
    keys are pruned (with `mask`: by (mask, |w|, flat index)). The cut is found by one
    ``np.partition`` at k - 1 (threshold t), then ``|w| < t`` pruned, ``|w| > t`` kept and
    the ties ``|w| == t`` pruned in index order until exactly k are pruned: O(n) time.

    References
    ----------
    Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks";
    ``torch.nn.utils.prune.l1_unstructured`` (same count rule; torch breaks ties
    arbitrarily through ``topk``, here the lower flat index is pruned first).

    Examples
    --------
    >>> magnitude_mask([[0.3, -0.1], [0.2, 0.1]], 0.5)
    array([[ True, False],
           [ True, False]])
    """
    arr = _check_weights(w, "w", check_finite=False)
    s = _checks.check_sparsity("sparsity", sparsity)
    k = n_to_prune(s, arr.size)
    prev = None if mask is None else _check_mask(mask, arr.shape, "mask").ravel()
    if arr.dtype.kind != "f":
        # |int8(-128)| overflows in its own dtype; integer weights are ranked as float64
        arr = arr.astype(np.float64)
    scores = np.abs(arr).ravel()
    # max propagates NaN and sees +inf (after abs): one reduction instead of an isfinite pass
    if scores.size and not np.isfinite(scores.max()):
        _checks.check_finite_array("w", arr)
    if prev is None:
        keep = _keep_all_but_smallest(scores, k)
    else:
        keep = _keep_with_previous(scores, k, prev, _keep_all_but_smallest)
    return keep.reshape(arr.shape)


def global_magnitude_masks(weights, sparsity, masks=None):
    """Keep-masks from ONE magnitude ranking over all entries of several tensors.

    Parameters
    ----------
    weights : sequence of array_like of float or int
        The tensors, any shapes; together n = sum of their sizes entries.
    sparsity : float in [0, 1]
        Fraction of all n entries to prune.
    masks : sequence of bool ndarray, optional
        Previous masks, one per tensor with its shape; their zeros rank first, as in
        :func:`magnitude_mask`.

    Returns
    -------
    masks : list of bool ndarray
        One per tensor, with its shape; exactly ``round(sparsity * n)`` False in total.

    Raises
    ------
    ValueError
        If `weights` is empty, sparsity is NaN or outside [0, 1], a tensor has a non-finite
        entry (named as ``weights[i]``), or `masks` has the wrong length or a mask the wrong
        shape or dtype (named as ``masks[i]``).
    TypeError
        If `weights` is not a sequence of real arrays or sparsity not a real number.

    Notes
    -----
    Equal to :func:`magnitude_mask` on the concatenation of the flattened tensors, split
    back: the key is (|w|, position in that concatenation), so ties break toward the earlier
    tensor, then the lower flat index. The scores are written once into one buffer of the
    tensors' common float dtype, and the rest is one ``np.partition`` plus O(n) passes.

    References
    ----------
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` (same count rule);
    Frankle & Carbin 2019 (global magnitude pruning).

    Examples
    --------
    >>> a, b = global_magnitude_masks([[[0.1, 0.2], [0.3, 0.4]], [[1.0, 2.0], [3.0, 4.0]]], 0.5)
    >>> bool(a.any()), bool(b.all())
    (False, True)
    """
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"weights must be a list or tuple of arrays, got {type(weights).__name__}"
        )
    if len(weights) == 0:
        raise ValueError("weights must hold at least one array, got an empty sequence")
    arrays = []
    for i, w in enumerate(weights):
        arr = np.asarray(w)
        if arr.dtype.kind not in "fiu":
            raise TypeError(
                f"weights[{i}] must be an array of real numbers, got dtype {arr.dtype}"
            )
        arrays.append(arr)
    s = _checks.check_sparsity("sparsity", sparsity)
    prev = None
    if masks is not None:
        if not isinstance(masks, (list, tuple)) or len(masks) != len(arrays):
            got = len(masks) if isinstance(masks, (list, tuple)) else type(masks).__name__
            raise ValueError(
                f"masks must be a list or tuple of {len(arrays)} bool arrays (one per "
                f"weight), got {got}"
            )
        prev = [_check_mask(m, a.shape, f"masks[{i}]")
                for i, (m, a) in enumerate(zip(masks, arrays))]

    # float32 ranks float32 (and small ints) exactly; anything wider goes to float64
    dtype = np.result_type(np.float32, *[a.dtype for a in arrays])
    sizes = [a.size for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    scores = np.empty(n, dtype=dtype)
    for arr, lo, hi in zip(arrays, offsets[:-1], offsets[1:]):
        seg = scores[lo:hi]
        seg[...] = arr.ravel()
        np.abs(seg, out=seg)
    # max propagates NaN and sees +inf (after abs): one reduction instead of an isfinite pass
    if n and not np.isfinite(scores.max()):
        for i, arr in enumerate(arrays):
            _checks.check_finite_array(f"weights[{i}]", arr)
    k = n_to_prune(s, n)
    if prev is None:
        keep = _keep_all_but_smallest(scores, k)
    else:
        prev_flat = np.concatenate([m.ravel() for m in prev]) if n else np.ones(0, bool)
        keep = _keep_with_previous(scores, k, prev_flat, _keep_all_but_smallest)
    return [keep[lo:hi].reshape(a.shape) for a, lo, hi in zip(arrays, offsets[:-1], offsets[1:])]


def random_mask(shape, sparsity, seed, mask=None):
    """Keep-mask pruning exactly ``round(sparsity * n)`` entries chosen uniformly at random.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the mask; n = product of it.
    sparsity : float in [0, 1]
        Fraction of entries to prune.
    seed : int >= 0 or numpy.random.Generator
        Source of randomness; the same int gives the same mask.
    mask : bool ndarray of `shape`, optional
        Previous mask. Its zeros rank first: if at least as many entries are asked for,
        they all stay pruned and the extra ones are drawn among the kept entries; otherwise
        the pruned set is drawn among the earlier zeros.

    Returns
    -------
    mask : bool ndarray of `shape`
        True = kept; exactly ``round(sparsity * n)`` False.

    Raises
    ------
    ValueError
        If sparsity is NaN or outside [0, 1], a dimension of `shape` is negative, the seed is
        negative, or `mask` has the wrong shape or dtype.
    TypeError
        If shape, sparsity or seed has the wrong type.

    Notes
    -----
    The pruned set is ``rng.choice(n, k, replace=False)`` with ``rng =
    numpy.random.default_rng(seed)``: every k-subset is equally likely. The random baseline
    of pruning studies (e.g. Frankle & Carbin 2019; ``torch.nn.utils.prune
    .random_unstructured`` has the same count rule).

    Examples
    --------
    >>> int((~random_mask((4, 5), 0.25, seed=0)).sum())
    5
    """
    if isinstance(shape, numbers.Integral) and not isinstance(shape, (bool, np.bool_)):
        shape = (int(shape),)
    if not isinstance(shape, tuple) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_)) for d in shape
    ):
        raise TypeError(f"shape must be an int or a tuple of ints, got {plain(shape)!r}")
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must have non-negative dimensions, got {plain(shape)!r}")
    shape = tuple(int(d) for d in shape)
    s = _checks.check_sparsity("sparsity", sparsity)
    rng = _checks.as_rng("seed", seed)
    n = math.prod(shape)
    k = n_to_prune(s, n)

    def select(sub_scores, k_sub):
        keep = np.ones(sub_scores.size, dtype=bool)
        keep[rng.choice(sub_scores.size, size=k_sub, replace=False)] = False
        return keep

    placeholder = np.zeros(n, dtype=np.int8)  # the random rule ignores scores
    if mask is None:
        keep = select(placeholder, k)
    else:
        prev = _check_mask(mask, shape, "mask").ravel()
        keep = _keep_with_previous(placeholder, k, prev, select)
    return keep.reshape(shape)


def structured_mask(w, sparsity, norm=2, axis=-1, mask=None):
    """Keep-mask pruning whole channels (output neurons by default) with the smallest norm.

    Parameters
    ----------
    w : array_like of float or int, ndim >= 1
        Weights, finite. For a Dense kernel of shape ``(d_in, d_out)`` the default
        ``axis=-1`` makes each of the d_out columns (one output neuron) a channel.
    sparsity : float in [0, 1]
        Fraction of channels to prune: exactly ``round(sparsity * w.shape[axis])``.
    norm : float >= 1 or numpy.inf, default 2
        p of the L_p norm computed over all axes except `axis`.
    axis : int, default -1
        The axis that indexes channels (torch's ``dim``).
    mask : bool ndarray shaped like `w`, optional
        Previous mask. Norms are taken of the masked weights, and channels it prunes
        entirely rank first (as in :func:`magnitude_mask`).

    Returns
    -------
    mask : bool ndarray, shape ``w.shape``
        True = kept, constant along every channel.

    Raises
    ------
    ValueError
        If sparsity is NaN or outside [0, 1], `w` is 0-d or not finite, `norm` < 1 or NaN,
        `axis` is out of range, or `mask` has the wrong shape or dtype.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    score_c = ||w[..., c, ...]||_norm over all other axes; channels ranked by
    (score_c, c), the first round(sparsity * C) pruned. Same ranking as
    ``torch.nn.utils.prune.ln_structured(module, "weight", amount, n=norm, dim=0)`` on a
    ``torch.nn.Linear`` whose weight is this W transposed, up to tie-breaking.

    References
    ----------
    Li et al. 2017, "Pruning Filters for Efficient ConvNets" (norm-based channel pruning);
    ``torch.nn.utils.prune.ln_structured``.

    Examples
    --------
    >>> structured_mask([[3.0, 0.1, 1.0], [4.0, 0.1, 1.0]], 1 / 3)
    array([[ True, False,  True],
           [ True, False,  True]])
    """
    arr = _check_weights(w, "w")
    if arr.ndim < 1:
        raise ValueError(f"w must have at least 1 dimension, got a 0-d array {arr!r}")
    s = _checks.check_sparsity("sparsity", sparsity)
    if isinstance(norm, (bool, np.bool_)) or not isinstance(norm, numbers.Real):
        raise TypeError(f"norm must be a real number >= 1 or numpy.inf, got {plain(norm)!r}")
    if math.isnan(norm) or norm < 1:
        raise ValueError(f"norm must be >= 1 (an L_p norm) or numpy.inf, got {plain(norm)!r}")
    axis = _checks.check_int("axis", plain(axis))
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis must be in [{-arr.ndim}, {arr.ndim - 1}] for w.ndim = "
                         f"{arr.ndim}, got {axis}")
    axis %= arr.ndim
    prev = None if mask is None else _check_mask(mask, arr.shape, "mask")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if prev is not None:
        arr = np.where(prev, arr, 0)
    n_channels = arr.shape[axis]
    rows = np.moveaxis(arr, axis, 0).reshape(n_channels, -1)
    if rows.shape[1] == 0:
        scores = np.zeros(n_channels, dtype=arr.dtype)
    elif norm == np.inf:
        scores = np.abs(rows).max(axis=1)
    else:
        scores = np.linalg.norm(rows, ord=norm, axis=1)
    k = n_to_prune(s, n_channels)
    if prev is None:
        keep_c = _keep_all_but_smallest(scores, k)
    else:
        prev_c = np.moveaxis(prev, axis, 0).reshape(n_channels, -1).any(axis=1)
        keep_c = _keep_with_previous(scores, k, prev_c, _keep_all_but_smallest)
    view_shape = [1] * arr.ndim
    view_shape[axis] = n_channels
    return np.broadcast_to(keep_c.reshape(view_shape), arr.shape).copy()


def apply_mask(w, mask, out=None):
    """Weights with the pruned entries set to exactly +0.0.

    Parameters
    ----------
    w : array_like of float or int
        Weights, any shape.
    mask : bool ndarray shaped like `w`
        True = kept.
    out : ndarray shaped like `w`, optional
        Where to write the result; ``out=w`` masks in place (e.g. a view into a flat buffer).

    Returns
    -------
    w_masked : ndarray, shape and dtype of `w` (or `out`)
        ``w`` where `mask`, +0.0 elsewhere.

    Raises
    ------
    ValueError
        If `mask` has the wrong shape or a dtype other than bool, or `out` the wrong shape.

    Notes
    -----
    w_masked = where(mask, w, 0). Written with ``copyto`` rather than ``w * mask`` so that a
    pruned negative weight gives +0.0, not -0.0.

    Examples
    --------
    >>> apply_mask([-1.0, 2.0], np.array([False, True]))
    array([0., 2.])
    """
    arr = np.asarray(w)
    m = _check_mask(mask, arr.shape, "mask")
    if out is None:
        out = np.array(arr, copy=True)
    else:
        if not isinstance(out, np.ndarray) or out.shape != arr.shape:
            got = out.shape if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out must be an ndarray of shape {arr.shape}, got {got}")
        if out is not arr:
            np.copyto(out, arr)
    np.copyto(out, 0, where=~m)
    return out


def sparsity_of(x):
    """Fraction of zeros of a weight array, or of False entries of a mask.

    Parameters
    ----------
    x : array_like
        A bool mask (True = kept) or numeric weights, non-empty.

    Returns
    -------
    sparsity : float in [0, 1]
        For a bool mask: count(False) / size; else count(x == 0) / size.

    Raises
    ------
    ValueError
        If `x` is empty.
    TypeError
        If `x` is neither bool nor numeric.

    Examples
    --------
    >>> sparsity_of([0.0, 1.5, 0.0, 2.0])
    0.5
    >>> sparsity_of(np.array([True, False, True, True]))
    0.25
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"x must be a bool mask or a numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError("x must have at least one entry, got an empty array")
    zeros = arr.size - np.count_nonzero(arr)
    return float(zeros) / float(arr.size)


