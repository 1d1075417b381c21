"""The study's pure definitions: loss target, first hit, Pareto set, sizes, summary.

Arrays and numbers in, numbers out; no model is trained here (the runs are in
:mod:`minscale.study.runs`). Losses are the study's held-out MSE, bytes exact storage sizes.
"""
from __future__ import annotations

import math

import numpy as np

from .. import sizes
from .._checks import check_int, check_real
from ..prune import PolynomialDecaySparsity
from ..quant import QFormat, choose_frac_bits, dequantize, quantize

__all__ = [
    "loss_target",
    "first_reached",
    "pareto_front",
    "smallest_within",
    "fixed_point_weights",
    "gradual_schedule",
    "sparse_codes_nbytes",
    "summarize",
]


# ----------------------------------------------------------------------------------------
# argument checks


def _as_1d_float(values, name):
    arr = np.asarray(values, dtype=float) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a sequence of real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(float)


# ----------------------------------------------------------------------------------------
# pure definitions


def loss_target(final_losses, factor=1.1):
    """The loss target of the learning-rate part: `factor` times the best final loss.

    Parameters
    ----------
    final_losses : sequence of float or None, length r
        Final held-out loss of each run; None or a non-finite value marks a run that
        diverged and is ignored.
    factor : float, >= 1, default 1.1
        Slack over the best final loss.

    Returns
    -------
    target : float
        ``factor * min(finite final_losses)``, in the loss's unit.

    Raises
    ------
    ValueError
        If no run has a finite final loss, or `factor` < 1 or NaN.
    TypeError
        If `factor` is not a real number.

    Notes
    -----
    target = factor * min_r L_r(T), L_r(T) the final loss of run r. Every run is then timed by
    the first update at which its loss is <= target (:func:`first_reached`); the best run
    reaches it by its last epoch at the latest, so at least one run has a finite time.

    Examples
    --------
    >>> loss_target([0.5, None, 0.4])
    0.44000000000000006
    """
    factor = check_real("factor", factor, lo=1.0)
    finite = [float(v) for v in final_losses if v is not None and math.isfinite(v)]
    if not finite:
        raise ValueError("final_losses must hold at least one finite loss; every run diverged")
    return factor * min(finite)


def first_reached(curve, target):
    """Index of the first entry of `curve` that is <= `target`, or None.

    Parameters
    ----------
    curve : sequence of float, length T
        Loss after each epoch (or update); NaN entries never count as reached.
    target : float

    Returns
    -------
    int or None
        0-based index i of the first ``curve[i] <= target``; None if no entry is.

    Raises
    ------
    ValueError
        If `target` is NaN or `curve` is not 1-D.

    Examples
    --------
    >>> first_reached([0.9, 0.5, 0.3, 0.6], 0.5)
    1
    >>> first_reached([0.9, 0.8], 0.5) is None
    True
    """
    target = check_real("target", target)
    arr = _as_1d_float(curve, "curve")
    hits = np.flatnonzero(arr <= target)  # NaN compares False
    return int(hits[0]) if hits.size else None


def pareto_front(nbytes, losses):
    """Indices of the points (bytes, loss) that no other point beats on both.

    Parameters
    ----------
    nbytes : sequence of int or float, length n
        Size of each variant (smaller is better).
    losses : sequence of float, length n
        Loss of each variant (smaller is better); NaN entries are never on the front.

    Returns
    -------
    list of int
        The non-dominated points, by increasing bytes (and decreasing loss). Point i is
        dominated when some j has ``nbytes[j] <= nbytes[i]`` and ``losses[j] <= losses[i]``
        with at least one strict; of identical points only the lowest index is kept.

    Raises
    ------
    ValueError
        If the lengths differ or an input is not 1-D.

    Notes
    -----
    Sort by (bytes, loss, index); sweep keeping the lowest loss seen so far; a point is on the
    front iff its loss is strictly below that running minimum. O(n log n).

    References
    ----------
    Kung, Luccio & Preparata 1975, "On finding the maxima of a set of vectors" (the sweep).

    Examples
    --------
    >>> pareto_front([100, 50, 50, 10], [0.1, 0.2, 0.3, 0.5])
    [3, 1, 0]
    """
    b = _as_1d_float(nbytes, "nbytes")
    loss = _as_1d_float(losses, "losses")
    if b.size != loss.size:
        raise ValueError(f"nbytes and losses must have the same length, got {b.size} and "
                         f"{loss.size}")
    order = np.lexsort((np.arange(b.size), loss, b))
    front, best = [], math.inf
    for i in order:
        if not math.isnan(loss[i]) and loss[i] < best:
            front.append(int(i))
            best = loss[i]
    return front


def smallest_within(nbytes, losses, reference_loss, tolerance=0.05):
    """Index of the smallest variant whose loss is within `tolerance` of a reference.

    Parameters
    ----------
    nbytes : sequence of int or float, length n
    losses : sequence of float, length n
        NaN entries never qualify.
    reference_loss : float, >= 0
        The baseline's loss.
    tolerance : float, >= 0, default 0.05
        Relative: a variant qualifies when ``loss <= (1 + tolerance) * reference_loss``.

    Returns
    -------
    int or None
        Among qualifying variants the one with the fewest bytes, then the lowest loss, then the
        lowest index; None when none qualifies.

    Raises
    ------
    ValueError
        Lengths differ, `reference_loss` or `tolerance` negative or NaN.

    Examples
    --------
    >>> smallest_within([100, 40, 10], [0.50, 0.52, 0.60], 0.50)
    1
    """
    b = _as_1d_float(nbytes, "nbytes")
    loss = _as_1d_float(losses, "losses")
    if b.size != loss.size:
        raise ValueError(f"nbytes and losses must have the same length, got {b.size} and "
                         f"{loss.size}")
    reference_loss = check_real("reference_loss", reference_loss, lo=0.0)
    tolerance = check_real("tolerance", tolerance, lo=0.0)
    ok = np.flatnonzero(loss <= (1.0 + tolerance) * reference_loss)
    if ok.size == 0:
        return None
    best = np.lexsort((ok, loss[ok], b[ok]))[0]
    return int(ok[best])



def fixed_point_weights(w, bits):
    """Fixed-point round trip of one tensor with its frac bits chosen to avoid saturation.

    Parameters
    ----------
    w : ndarray of float, any shape
        Finite weights.
    bits : int, 2..32
        Bits per code, sign included.

    Returns
    -------
    w_hat : float64 ndarray shaped like `w`
        ``dequantize(quantize(w, fmt), fmt)`` with ``fmt = QFormat(bits, frac_bits)``.
    frac_bits : int
        :func:`minscale.quant.choose_frac_bits` of `w`: the largest that does not saturate.

    Raises
    ------
    ValueError, TypeError
        As :func:`minscale.quant.choose_frac_bits` (NaN/inf, bits outside 2..32).

    Notes
    -----
    f = choose_frac_bits(w, bits);  w_hat = round_half_even(w * 2**f) * 2**-f, so
    |w - w_hat| <= 2**-(f + 1) for every entry.

    Examples
    --------
    >>> w_hat, f = fixed_point_weights(np.array([0.3, -0.9]), 4)
    >>> f, w_hat.tolist()
    (3, [0.25, -0.875])
    """
    f = choose_frac_bits(w, bits)
    fmt = QFormat(bits, f)
    return dequantize(quantize(w, fmt), fmt), f


def gradual_schedule(total_steps, final_sparsity, fraction=0.75, n_updates=10):
    """The polynomial (Zhu & Gupta) schedule of the gradual-pruning variant.

    Parameters
    ----------
    total_steps : int, >= 2
        Optimizer updates of the fine-tuning budget.
    final_sparsity : float in [0, 1]
    fraction : float in (0, 1], default 0.75
        Share of the budget over which the sparsity ramps up; the rest fine-tunes at the final
        sparsity.
    n_updates : int, >= 1, default 10
        About how many times the masks are updated on the way.

    Returns
    -------
    PolynomialDecaySparsity
        From 0 at step 0 to `final_sparsity` at ``end_step``, masks updated every
        ``frequency`` steps, power 3; ``end_step`` is a multiple of ``frequency`` so the
        final sparsity is applied exactly, and ``end_step < total_steps``.

    Raises
    ------
    ValueError, TypeError
        If an argument is out of range.

    Notes
    -----
    frequency = max(1, floor(fraction * total_steps / n_updates));
    end_step = frequency * max(1, floor(fraction * total_steps / frequency)), then reduced by
    frequency while end_step >= total_steps.

    References
    ----------
    Zhu & Gupta 2017, "To prune, or not to prune"; TensorFlow Model Optimization
    ``PolynomialDecay``.
    """
    total_steps = check_int("total_steps", total_steps, 2)
    fraction = check_real("fraction", fraction, lo=0.0, hi=1.0, lo_open=True)
    n_updates = check_int("n_updates", n_updates, 1)
    ramp = fraction * total_steps
    frequency = max(1, int(ramp // n_updates))
    end_step = frequency * max(1, int(ramp // frequency))
    while end_step >= total_steps and end_step > frequency:
        end_step -= frequency
    if end_step >= total_steps:  # frequency itself too long: prune every step instead
        frequency, end_step = 1, total_steps - 1
    return PolynomialDecaySparsity(0.0, final_sparsity, begin_step=0, end_step=end_step,
                                   power=3, frequency=frequency)


def finite_or_none(x):
    """`x` as a float when it is a finite number, else None (a diverged run's entry)."""
    return float(x) if x is not None and math.isfinite(x) else None


# ----------------------------------------------------------------------------------------
# parts 3 and 4: quantization, and pruning + quantization


def sparse_codes_nbytes(codes, bits=8, index_bytes=4):
    """Bytes of one weight-code matrix stored sparse: the smaller of bitmask and CSR.

    Parameters
    ----------
    codes : integer ndarray, shape (d_in, d_out)
        Quantized weights; zero codes are not stored.
    bits : int, >= 1, default 8
        Bits per stored code, packed: ``V(c) = ceil(c * bits / 8)`` bytes for c codes.
    index_bytes : int, default 4
        Bytes of a CSR column index and row pointer (int32, as ``scipy.sparse`` uses for
        matrices of this size).

    Returns
    -------
    nbytes : int
        ``min(bitmask, csr)`` with nnz the non-zero codes:
        bitmask = ceil(d_in * d_out / 8) + V(nnz)  (one bit per weight, then the codes);
        csr = V(nnz) + nnz * index_bytes + (d_in + 1) * index_bytes.

    Raises
    ------
    ValueError
        If `codes` is not 2-D.

    Notes
    -----
    The same formulas as :func:`minscale.prune.model_nbytes` (``"bitmask"`` and ``"csr"``)
    applied to the codes instead of the float weights: :func:`minscale.sizes.bitmask_bytes`
    and :func:`minscale.sizes.csr_bytes`.

    References
    ----------
    Han et al. 2016, "Deep Compression" (sparse storage of pruned, quantized weights).

    Examples
    --------
    >>> sparse_codes_nbytes(np.array([[0, 3], [0, 0], [-1, 0], [0, 0]], dtype=np.int8))
    3
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (d_in, d_out), got shape {codes.shape}")
    bits = check_int("bits", bits, 1)
    nnz = int(np.count_nonzero(codes))
    return int(min(sizes.bitmask_bytes(codes.size, nnz, bits),
                   sizes.csr_bytes(nnz, codes.shape[0], bits, index_bytes)))


# ----------------------------------------------------------------------------------------
# summary and the whole study


def summarize(result, tolerance=0.05):
    """Every measured variant as (bytes, effect against its control), its Pareto set and the
    smallest one whose effect is within tolerance.

    Parameters
    ----------
    result : dict
        A study result with ``baseline`` and any of ``pruning``, ``quantization`` and
        ``combined`` (version-2 records: ``loss_mean``, ``loss_ci95``, ``control``,
        ``effect``, ``verdict``).
    tolerance : float, default 0.05
        Relative budget on the effect for ``smallest_within_tolerance``.

    Returns
    -------
    dict
        ``{"measure", "variants": [{"name", "part", "nbytes", "loss", "loss_ci95",
        "control", "control_loss", "effect", "verdict", "accuracy"}], "pareto": [names by
        increasing bytes], "tolerance", "effect_budget", "smallest_within_tolerance": name or
        None}``. Variants: the float32 baseline (its own control, effect 1), every pruned
        variant with sparsity > 0 (bytes: the smallest of dense, CSR and bitmask), the
        gradual one, every quantized variant and the combined one; variants whose effect is
        None (diverged) are listed but never chosen.

    Notes
    -----
    effect = mean test loss of the variant / mean test loss of its control (the dense float
    model with the same extra updates from the same baseline, clamped to the int8 output
    range for int8 variants). The Pareto set is over (bytes, effect); the smallest within
    tolerance is the fewest bytes with ``effect <= 1 + tolerance``
    (:func:`smallest_within` with reference 1). Effects, not raw losses: the extra
    fine-tuning and the output clamp of a variant are credited to its control, not to
    pruning or quantization.
    """
    base = result["baseline"]
    variants = [{"name": "baseline float32", "part": "baseline", "nbytes": base["nbytes"],
                 "loss": base["loss_mean"], "loss_ci95": base["loss_ci95"],
                 "control": "baseline float32", "control_loss": base["loss_mean"],
                 "effect": 1.0, "verdict": "no significant difference",
                 "accuracy": base["accuracy"]}]

    def add(rec, part):
        variants.append({"name": rec["name"], "part": part, "nbytes": rec["nbytes"],
                         "loss": rec["loss_mean"], "loss_ci95": rec["loss_ci95"],
                         "control": rec["control"]["name"],
                         "control_loss": rec["control"]["loss_mean"],
                         "effect": rec["effect"], "verdict": rec["verdict"],
                         "accuracy": rec["accuracy"]})

    if "pruning" in result:
        pr = result["pruning"]
        for row in pr["rows"] + [pr["gradual"]]:
            if row["sparsity"] > 0:
                add(row, "pruning")
    for row in result.get("quantization", {}).get("rows", []):
        add(row, "quantization")
    if "combined" in result:
        add(result["combined"], "combined")
    nbytes = [v["nbytes"] for v in variants]
    effects = [math.nan if v["effect"] is None else v["effect"] for v in variants]
    front = pareto_front(nbytes, effects)
    best = smallest_within(nbytes, effects, 1.0, tolerance)
    return {"measure": "effect = mean test loss / mean test loss of the variant's control",
            "variants": variants, "pareto": [variants[i]["name"] for i in front],
            "tolerance": float(tolerance), "effect_budget": 1.0 + tolerance,
            "smallest_within_tolerance": None if best is None else variants[best]["name"]}
