"""The scaling study: what learning rate, pruning, quantization and more workers do to one
model's held-out loss, size and speed, measured on real data.

:func:`run_study` runs five parts on one split of one data set and returns a JSON-ready dict
(schema: ``docs/study.md`` and ``minscale/study_schema.json``):

1. learning rate: Adam with inverse-time decay over a grid of initial rates and decay rates,
   each run from the same initial weights; final held-out loss and the first update at which a
   loss target is reached. The run with the lowest final held-out loss becomes the baseline.
2. pruning: magnitude (layer-wise), global and random masks at each sparsity, each applied to a
   copy of the baseline and fine-tuned with the same budget, plus gradual (polynomial) pruning
   to the top level with the same budget.
3. quantization: fixed point at several bit widths (frac bits chosen per tensor) and int8
   affine per channel, post-training (PTQ) and quantization-aware (QAT, same budget).
4. combined: pruning and int8 together against the float baseline.
5. workers: the baseline's training with 1 and 2 synchronous data-parallel workers.

Units. Every loss is the held-out MSE (:func:`minscale.losses.mse`, mean over rows, summed
over outputs). Regression targets are standardized with the training split's mean and
deviation, so a loss is a fraction of the target's variance (1.0 = predicting the mean);
classification targets are one-hot and accuracy is reported beside the loss. Bytes are exact
storage sizes, with float32 (4 bytes per value) as the reference for every float model, so
compression ratios compare against a float32 deployment. Times are in seconds.

The module opens with the pure functions that own the study's definitions (loss target,
Pareto set, ...); the parts and :func:`run_study` come after them.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import statistics
import sys
import time

import numpy as np

from ..data import plain
from ..prune import _check_int

__all__ = [
    "StudyConfig",
    "loss_target",
    "first_reached",
    "pareto_front",
    "smallest_within",
    "median_seconds",
    "fixed_point_weights",
    "gradual_schedule",
    "sparse_codes_nbytes",
    "int8_model",
    "quantization_part",
    "combined_part",
    "pruning_part",
    "workers_part",
    "EpochClock",
    "summarize",
    "measure",
    "learning_rate_sweep",
    "run_study",
    "SCHEMA_VERSION",
]

#: version of the result layout (``docs/study.md``); bumped on incompatible changes
SCHEMA_VERSION = 1

#: bits per stored value of a float model in every byte count of the study (float32)
FLOAT_BITS = 32


# ----------------------------------------------------------------------------------------
# argument checks


def _check_real(value, name, low=None, high=None, low_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {plain(value)!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {plain(value)!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {plain(value)!r}")
    return value


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
    factor = _check_real(factor, "factor", low=1.0)
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
    target = _check_real(target, "target")
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
    reference_loss = _check_real(reference_loss, "reference_loss", low=0.0)
    tolerance = _check_real(tolerance, "tolerance", low=0.0)
    ok = np.flatnonzero(loss <= (1.0 + tolerance) * reference_loss)
    if ok.size == 0:
        return None
    best = np.lexsort((ok, loss[ok], b[ok]))[0]
    return int(ok[best])


def median_seconds(fn, repeats=5, warmup=1):
    """Median wall time of ``fn()`` over `repeats` calls, after `warmup` untimed calls.

    Parameters
    ----------
    fn : callable taking no argument
    repeats : int, >= 1, default 5
    warmup : int, >= 0, default 1
        Calls made first and not timed (first-call costs: caches, JIT loading).

    Returns
    -------
    float
        Seconds (``time.perf_counter``).

    Raises
    ------
    TypeError, ValueError
        If `fn` is not callable or a count is out of range.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    repeats = _check_int(repeats, "repeats", 1)
    for _ in range(_check_int(warmup, "warmup", 0)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


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
    from ..quant import QFormat, choose_frac_bits, dequantize, quantize
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
    from ..prune import PolynomialDecaySparsity
    total_steps = _check_int(total_steps, "total_steps", 2)
    fraction = _check_real(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    n_updates = _check_int(n_updates, "n_updates", 1)
    ramp = fraction * total_steps
    frequency = max(1, int(ramp // n_updates))
    end_step = frequency * max(1, int(ramp // frequency))
    while end_step >= total_steps and end_step > frequency:
        end_step -= frequency
    if end_step >= total_steps:  # frequency itself too long: prune every step instead
        frequency, end_step = 1, total_steps - 1
    return PolynomialDecaySparsity(0.0, final_sparsity, begin_step=0, end_step=end_step,
                                   power=3, frequency=frequency)


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


# ----------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study measures and with which budgets.

    Parameters
    ----------
    hidden : tuple of int, default (32,)
        Hidden layer widths (ReLU, He-normal init); the output layer is linear.
    epochs : int, >= 1, default 50
        Epochs of every learning-rate run (the baseline is one of them).
    finetune_epochs : int, >= 1, default 10
        The same fine-tuning budget for every pruned and QAT variant.
    finetune_factor : float, > 0, default 0.1
        Fine-tuning runs Adam at the constant rate finetune_factor * (the baseline's initial
        rate): large enough to recover from pruning within the budget, small enough not to
        undo the training (the baseline's last rate can be orders of magnitude smaller).
    worker_epochs : int, >= 1, default 5
        Epochs of each run of the workers part.
    batch_size : int, >= 1, default 32
    seed : int, >= 0, default 0
        Seeds the split (through the caller), the initial weights, shuffling and random masks.
    learning_rates : tuple of float, default (0.1, 0.01, 0.001)
        Initial rates eta0 of Adam.
    decay_rates : tuple of float, default (0.0, 0.1, 1.0)
        Inverse-time decay rates with ``decay_steps`` = one epoch of updates:
        eta(t) = eta0 / (1 + decay_rate * t / updates_per_epoch).
    target_factor : float, default 1.1
        Loss target = target_factor * best final held-out loss of the sweep.
    sparsities : tuple of float, default (0, 0.5, 0.7, 0.8, 0.9, 0.95)
    prune_methods : tuple of str, default ("magnitude", "global", "random")
    fixed_point_bits : tuple of int, default (16, 8, 6, 4)
    combined_sparsity : float, default 0.9
    workers : tuple of int, default (1, 2)
    timing_repeats : int, >= 1, default 5
        Repeats of each timed prediction (the median is reported).
    blas_threads : int or None, default 1
        BLAS threads while the study runs (threadpoolctl), so that dense and CSR predictions
        and 1 vs k workers (each worker gets 1) compare like with like; the study's small
        matrices gain nothing from more, and on a busy machine a multi-threaded GEMM of a few
        hundred rows can take 100x longer while its threads wait for each other. None keeps
        the library default.
    tolerance : float, default 0.05
        "Within 5% of the baseline loss" of the summary.
    quick : bool, default False
        Recorded in the result; :meth:`preset` sets the small budgets.

    Raises
    ------
    ValueError, TypeError
        An argument out of range, naming it.
    """

    hidden: tuple = (32,)
    epochs: int = 50
    finetune_epochs: int = 10
    finetune_factor: float = 0.1
    worker_epochs: int = 5
    batch_size: int = 32
    seed: int = 0
    learning_rates: tuple = (0.1, 0.01, 0.001)
    decay_rates: tuple = (0.0, 0.1, 1.0)
    target_factor: float = 1.1
    sparsities: tuple = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
    prune_methods: tuple = ("magnitude", "global", "random")
    fixed_point_bits: tuple = (16, 8, 6, 4)
    combined_sparsity: float = 0.9
    workers: tuple = (1, 2)
    timing_repeats: int = 5
    blas_threads: int | None = 1
    tolerance: float = 0.05
    quick: bool = False

    def __post_init__(self):
        from ..prune import METHODS
        object.__setattr__(self, "hidden", tuple(_check_int(h, "hidden[i]", 1)
                                                 for h in self.hidden))
        for name in ("epochs", "finetune_epochs", "worker_epochs", "batch_size",
                     "timing_repeats"):
            object.__setattr__(self, name, _check_int(getattr(self, name), name, 1))
        object.__setattr__(self, "seed", _check_int(self.seed, "seed", 0))
        lrs = tuple(_check_real(v, "learning_rates[i]", low=0.0, low_open=True)
                    for v in self.learning_rates)
        decays = tuple(_check_real(v, "decay_rates[i]", low=0.0) for v in self.decay_rates)
        if not lrs or not decays:
            raise ValueError("learning_rates and decay_rates must each hold at least one value")
        object.__setattr__(self, "learning_rates", lrs)
        object.__setattr__(self, "decay_rates", decays)
        object.__setattr__(self, "finetune_factor",
                           _check_real(self.finetune_factor, "finetune_factor", low=0.0,
                                       low_open=True))
        object.__setattr__(self, "target_factor",
                           _check_real(self.target_factor, "target_factor", low=1.0))
        sp = tuple(_check_real(s, "sparsities[i]", 0.0, 1.0) for s in self.sparsities)
        if not sp or list(sp) != sorted(set(sp)):
            raise ValueError("sparsities must be distinct and increasing,"
                             f" got {plain(self.sparsities)!r}")
        object.__setattr__(self, "sparsities", sp)
        for m in self.prune_methods:
            if m not in METHODS:
                raise ValueError(f"prune_methods must hold names of {METHODS}, got {m!r}")
        object.__setattr__(self, "prune_methods", tuple(self.prune_methods))
        bits = tuple(_check_int(b, "fixed_point_bits[i]", 2) for b in self.fixed_point_bits)
        if any(b > 32 for b in bits):
            raise ValueError("fixed_point_bits must be in 2..32,"
                             f" got {plain(self.fixed_point_bits)!r}")
        object.__setattr__(self, "fixed_point_bits", bits)
        object.__setattr__(self, "combined_sparsity",
                           _check_real(self.combined_sparsity, "combined_sparsity", 0.0, 1.0))
        object.__setattr__(self, "workers", tuple(_check_int(k, "workers[i]", 1)
                                                  for k in self.workers))
        if self.blas_threads is not None:
            object.__setattr__(self, "blas_threads",
                               _check_int(self.blas_threads, "blas_threads", 1))
        object.__setattr__(self, "tolerance", _check_real(self.tolerance, "tolerance", low=0.0))
        object.__setattr__(self, "quick", bool(self.quick))

    @classmethod
    def preset(cls, quick=False, **overrides):
        """The full (default) or ``--quick`` budgets, with `overrides` on top.

        Quick: 10 epochs per learning-rate run, 2 fine-tuning epochs, 2 epochs per workers
        run, 3 timing repeats; every part and grid point is still measured.

        Returns
        -------
        StudyConfig
        """
        base = dict(epochs=10, finetune_epochs=2, worker_epochs=3, timing_repeats=3,
                    quick=True) if quick else {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self):
        """JSON-ready dict of the fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------
# measuring


def measure(predict, task):
    """Held-out loss (and accuracy on classification) of a predictor.

    Parameters
    ----------
    predict : callable
        ``predict(X_test) -> y_hat`` of shape (n_test, d_out).
    task : dict
        As :func:`minscale.commands._common.load_task` returns: ``X_test``, ``y_test``,
        ``info["task"]`` and ``labels_test``.

    Returns
    -------
    dict
        ``{"loss": float MSE (mean over rows, summed over outputs), "accuracy": float in
        [0, 1] or None}``; a non-finite loss becomes None.
    """
    from ..data import accuracy
    from ..losses import mse
    y_hat = np.asarray(predict(task["X_test"]), dtype=task["y_test"].dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = mse(task["y_test"], y_hat)
    acc = None
    if task["info"]["task"] == "classification" and np.isfinite(y_hat).all():
        acc = float(accuracy(task["labels_test"], y_hat))
    return {"loss": _finite_or_none(loss), "accuracy": acc}


def _is_classification(task):
    return task["info"]["task"] == "classification"


def _new_model(task, config):
    from ..commands.train import build_model
    return build_model(task["X_train"].shape[1], task["y_train"].shape[1], list(config.hidden),
                       "relu", config.seed, task["X_train"].dtype.name)


def _compile(model, learning_rate, task):
    from ..optim import Adam
    model.compile(optimizer=Adam(learning_rate),
                  metrics=["accuracy"] if _is_classification(task) else None)
    return model


def _n_batches(task, config):
    return -(-task["X_train"].shape[0] // config.batch_size)


def _fit(model, task, config, epochs, **kwargs):
    """Fit on the training split; None on divergence (the caller records it)."""
    from ..train import DivergenceError
    try:
        return model.fit(task["X_train"], task["y_train"], epochs=epochs,
                         batch_size=config.batch_size, seed=config.seed, verbose=0, **kwargs)
    except DivergenceError:
        return None


class _Progress:
    """A tqdm bar on stderr when stderr is a terminal; silent otherwise."""

    def __init__(self, total, enabled=None):
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, file=sys.stderr, leave=False, unit="run",
                            dynamic_ncols=True)

    def part(self, name):
        """Name the part now running."""
        if self.bar is not None:
            self.bar.set_description(name)

    def step(self, label, n=1):
        """Count `n` finished measurements; show the last one's label."""
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------
# part 1: learning rate


def learning_rate_sweep(make_model, X_train, y_train, validation_data, learning_rates,
                        decay_rates, epochs, batch_size, seed=0, shuffle=True, target=None,
                        target_factor=1.1, progress=None):
    """Adam over a grid of initial and inverse-time decay rates, from the same initial weights.

    Parameters
    ----------
    make_model : callable
        ``make_model() -> Sequential``, built, the same initial weights on every call; its
        ``metrics`` (e.g. ``["accuracy"]``) are kept when the sweep compiles it with Adam.
    X_train, y_train : ndarray, shapes (n, d_in), (n, d_out)
    validation_data : (X_val, y_val)
        Where the loss is measured after each epoch.
    learning_rates, decay_rates : sequence of float
        eta0 > 0 and decay_rate >= 0; every pair is one run.
    epochs, batch_size : int
    seed : int, default 0
        Shuffling seed of every run.
    shuffle : bool, default True
        Reshuffle the rows every epoch (False: the file order, as in the classic example).
    target : float, optional
        Loss target; default ``target_factor * best final loss`` (:func:`loss_target`).
    target_factor : float, default 1.1
    progress : callable, optional
        Called with a label after each run.

    Returns
    -------
    runs : list of dict
        Per run: initial_learning_rate, decay_rate, final_learning_rate, final_loss,
        final_accuracy, diverged, val_loss (per epoch), loss (training, per epoch, averaged over
        the epoch's batches), target_epoch (1-based) and target_update (updates applied by the
        end of that epoch), or None when never reached.
    target : float
    models : list of Sequential
        The trained models, in the order of `runs` (None where a run diverged).

    Raises
    ------
    ValueError
        If every run diverged and no `target` was given (see :func:`loss_target`).

    Notes
    -----
    decay_steps = updates per epoch, so eta(t) = eta0 / (1 + decay_rate * t / n_batches):
    decay_rate 1.0 halves the rate after the first epoch. The held-out loss is evaluated
    once per epoch, so the target is located to the end of an epoch:
    target_update = (first epoch e with val_loss[e] <= target, 1-based) * n_batches.
    """
    from ..optim import Adam
    from ..schedules import InverseTimeDecay
    from ..train import DivergenceError
    n_batches = -(-X_train.shape[0] // batch_size)
    runs, models = [], []
    for lr0 in learning_rates:
        for decay in decay_rates:
            model = make_model()
            metrics = list(model.metrics)
            model.compile(optimizer=Adam(InverseTimeDecay(lr0, decay_rate=decay,
                                                          decay_steps=n_batches)),
                          metrics=metrics)
            history = None
            try:
                history = model.fit(X_train, y_train, epochs=epochs, batch_size=batch_size,
                                    shuffle=shuffle, seed=seed,
                                    validation_data=validation_data, verbose=0)
            except DivergenceError:
                pass
            run = {"initial_learning_rate": float(lr0), "decay_rate": float(decay),
                   "diverged": history is None}
            if history is None:
                run.update(final_learning_rate=None, final_loss=None, final_accuracy=None,
                           val_loss=[], loss=[])
                models.append(None)
            else:
                h = history.history
                run.update(final_learning_rate=float(h["lr"][-1]),
                           final_loss=_finite_or_none(h["val_loss"][-1]),
                           final_accuracy=(float(h["val_accuracy"][-1])
                                           if "val_accuracy" in h else None),
                           val_loss=[_finite_or_none(v) for v in h["val_loss"]],
                           loss=[_finite_or_none(v) for v in h["loss"]])
                models.append(model)
            runs.append(run)
            if progress is not None:
                progress(f"eta0 {lr0:g}, decay {decay:g}")
    if target is None:
        target = loss_target([r["final_loss"] for r in runs], target_factor)
    for run in runs:
        curve = [math.nan if v is None else v for v in run["val_loss"]]
        e = first_reached(curve, target) if curve else None
        run["target_epoch"] = None if e is None else e + 1
        run["target_update"] = None if e is None else (e + 1) * n_batches
    return runs, float(target), models


# ----------------------------------------------------------------------------------------
# part 2: pruning


def _weight_nnz(model):
    return int(np.count_nonzero(model.params[model.prunable]))


def _pruning_row(model, method, sparsity, task, config, diverged=False):
    from ..prune import model_nbytes, to_sparse
    row = {"method": method, "sparsity": float(sparsity), "diverged": bool(diverged)}
    row.update(measure(model.predict, task) if not diverged else
               {"loss": None, "accuracy": None})
    sparse = to_sparse(model)
    X = task["X_test"]
    row.update(
        achieved_sparsity=float(model.sparsity()["total"]),
        nnz=_weight_nnz(model),
        n_weights=int(model.prunable.sum()),
        nbytes_dense=model_nbytes(model, "dense", bits=FLOAT_BITS),
        nbytes_csr=model_nbytes(model, "csr", bits=FLOAT_BITS),
        nbytes_bitmask=model_nbytes(model, "bitmask", bits=FLOAT_BITS),
        predict_seconds_dense=median_seconds(lambda: model.predict(X), config.timing_repeats),
        predict_seconds_csr=median_seconds(lambda: sparse.predict(X), config.timing_repeats),
    )
    row["nbytes"] = min(row["nbytes_dense"], row["nbytes_csr"], row["nbytes_bitmask"])
    return row


def pruning_part(baseline, task, config, finetune_lr, progress=None):
    """Prune copies of the baseline step by step with each method, fine-tune, measure.

    Parameters
    ----------
    baseline : Sequential
        Trained; never modified.
    task : dict
        See :func:`measure`.
    config : StudyConfig
    finetune_lr : float
        Constant Adam rate of every fine-tuning (``config.finetune_factor`` times the
        baseline's initial rate).
    progress : callable, optional

    Returns
    -------
    result : dict
        ``{"protocol", "finetune_epochs", "finetune_learning_rate", "rows": [...],
        "gradual": {...}}``; one row per (method, sparsity) with loss, accuracy, nnz
        (non-zero weights), n_weights, achieved_sparsity, finetune_epochs (cumulative),
        nbytes_dense, nbytes_csr and nbytes_bitmask (float32 values; see
        :func:`minscale.prune.model_nbytes`), nbytes (the smallest of the three),
        predict_seconds_dense and predict_seconds_csr (medians).
    models : dict
        ``(method, sparsity) -> Sequential`` of the fine-tuned variants.

    Notes
    -----
    Iterative pruning (Han et al. 2015): each method starts from a copy of the baseline and
    walks the sparsities in increasing order; at each level it prunes further (the earlier
    zeros stay: the rules rank them first) and fine-tunes ``config.finetune_epochs`` epochs
    of Adam at `finetune_lr` (fresh optimizer state, shuffling seed ``config.seed``, masks
    held). Every method gets exactly the same fine-tuning, so the row of level k has had k
    fine-tunings whatever the rule. One-shot pruning of a small ReLU network to 0.9 tends to
    leave a few output weights whose hidden units lost their inputs, and the predictions go
    flat; stepping there keeps them alive. Sparsity 0 prunes nothing, so its row is the
    baseline itself, not fine-tuned: its loss equals the baseline's exactly. Random masks use
    ``seed=config.seed``. The gradual variant starts from the baseline and prunes with
    :func:`gradual_schedule` to the highest sparsity within the same total budget as the
    iterative path to that level (``finetune_epochs`` times the number of levels above 0).
    """
    from ..prune import prune
    rows, models = [], {}
    levels = [s for s in config.sparsities if s > 0]
    for method in config.prune_methods:
        model = baseline.copy()
        diverged, done = False, 0
        for s in config.sparsities:
            if s > 0 and not diverged:
                prune(model, s, method=method, seed=config.seed)
                _compile(model, finetune_lr, task)
                diverged = _fit(model, task, config, config.finetune_epochs) is None
                done += config.finetune_epochs
            elif s > 0:  # a diverged model stays diverged; prune it for the byte counts
                prune(model, s, method=method, seed=config.seed)
            row = _pruning_row(model, method, s, task, config, diverged)
            row["finetune_epochs"] = done
            rows.append(row)
            models[(method, s)] = model.copy()
            if progress is not None:
                progress(f"{method} {s:g}")
    top = config.sparsities[-1]
    model = _compile(baseline.copy(), finetune_lr, task)
    epochs = config.finetune_epochs * max(1, len(levels))
    schedule = gradual_schedule(max(epochs * _n_batches(task, config), 2), top)
    diverged = _fit(model, task, config, epochs, pruning=schedule,
                    pruning_method="magnitude") is None
    gradual = _pruning_row(model, "gradual", top, task, config, diverged)
    gradual["finetune_epochs"] = epochs
    gradual["schedule"] = schedule.get_config()
    models[("gradual", top)] = model
    if progress is not None:
        progress("gradual")
    return ({"protocol": "iterative: prune further, then fine-tune, at each level in turn",
             "finetune_epochs": config.finetune_epochs,
             "finetune_learning_rate": float(finetune_lr), "rows": rows, "gradual": gradual},
            models)


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
    applied to the codes instead of the float weights.

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
    bits = _check_int(bits, "bits", 1)
    nnz = int(np.count_nonzero(codes))
    values = -(-nnz * bits // 8)
    bitmask = -(-codes.size // 8) + values
    csr = values + nnz * index_bytes + (codes.shape[0] + 1) * index_bytes
    return int(min(bitmask, csr))


def _quantized_measure(qmodel, task):
    integer = qmodel.integer_supported
    m = measure(lambda X: qmodel.predict(X, integer=integer), task)
    m["inference"] = "integer" if integer else "simulated"
    return m


def int8_model(model, calibration_data):
    """int8 post-training quantization as deployed: per-channel weights, int8 activations.

    Parameters
    ----------
    model : Sequential, built
    calibration_data : ndarray, shape (n, d_in)
        Rows that set the activation ranges (the training split).

    Returns
    -------
    qmodel : QuantizedModel
        :func:`minscale.quant.quantize_model` with ``weights="int8"`` (symmetric, narrow
        range, one scale per output unit), ``activations="int8"`` (asymmetric per tensor),
        int32 biases at ``s_in * s_w``.
    description : str
        The codes of a one-unit model, else the layer count.
    """
    from ..quant import quantize_model
    qmodel = quantize_model(model, weights="int8", activations="int8",
                            calibration_data=calibration_data)
    layer = qmodel.layers[0]
    if len(qmodel.layers) == 1 and layer.codes.size == 1:
        desc = f"w code {int(layer.codes.ravel()[0])} x {float(layer.weight_scale[0]):.6g}"
        if layer.bias_codes is not None:
            desc += f", b code {int(layer.bias_codes[0])} (int32)"
        return qmodel, desc
    return qmodel, f"{len(qmodel.layers)} layers of int8 codes"


def quantization_part(baseline, task, config, finetune_lr, progress=None):
    """Fixed-point and int8 quantization of the baseline, post-training and QAT.

    Parameters
    ----------
    baseline : Sequential
        Trained; never modified.
    task : dict
    config : StudyConfig
        ``fixed_point_bits``, ``finetune_epochs``, ``seed``.
    finetune_lr : float
        Constant Adam rate of QAT (the same budget as the pruning fine-tuning).
    progress : callable, optional

    Returns
    -------
    dict
        ``{"finetune_epochs", "bytes_note", "rows": [...]}``, one row per (scheme, bits, mode):
        name, scheme ("fixed" or "int8"), scheme_label, bits, mode ("ptq" or "qat"),
        frac_bits (per layer, fixed point only), inference ("integer" or "simulated"),
        diverged, loss, accuracy, nbytes, compression_ratio.

    Notes
    -----
    Fixed point: weights only, ``WeightSpec(bits, "fixed")`` with frac_bits chosen per layer
    by :func:`minscale.quant.choose_frac_bits` (the finest format that does not saturate);
    biases and activations stay float; predictions float-simulated. int8: weights symmetric
    per output channel, activations int8 from calibration on the training split, int32
    biases, integer-only inference. QAT fine-tunes a copy of the baseline for
    ``config.finetune_epochs`` epochs at `finetune_lr` with fake quantization
    (``fit(..., quantization=QATConfig(...))``) and converts it
    (:func:`minscale.quant.convert`). Bytes: ``QuantizedModel.nbytes_packed`` (codes packed
    at `bits` bits, float32 scales, 4-byte biases, activation scales and zero points); the
    ratio is float32 baseline bytes over them.
    """
    from ..prune import model_nbytes
    from ..quant import QATConfig, WeightSpec, convert, quantize_model
    reference = model_nbytes(baseline, "dense", bits=FLOAT_BITS)
    X_cal = task["X_train"]
    variants = [("fixed", b, WeightSpec(b, "fixed"), None) for b in config.fixed_point_bits]
    variants.append(("int8", 8, WeightSpec(8, "affine", per_channel=True), "int8"))
    rows = []
    for mode in ("ptq", "qat"):
        for scheme, bits, spec, activations in variants:
            diverged = False
            if mode == "ptq":
                qmodel = quantize_model(baseline, weights=spec, activations=activations,
                                        calibration_data=X_cal if activations else None)
            else:
                model = _compile(baseline.copy(), finetune_lr, task)
                diverged = _fit(model, task, config, config.finetune_epochs,
                                quantization=QATConfig(weights=spec,
                                                       activations=activations)) is None
                qmodel = convert(model, calibration_data=X_cal if activations else None)
            m = ({"loss": None, "accuracy": None,
                  "inference": "integer" if qmodel.integer_supported else "simulated"}
                 if diverged else _quantized_measure(qmodel, task))
            nbytes = int(qmodel.nbytes_packed)
            label = "fixed point" if scheme == "fixed" else "int8 affine"
            rows.append({
                "name": (f"fixed {bits}-bit {mode.upper()}" if scheme == "fixed"
                         else f"int8 {mode.upper()}"),
                "scheme": scheme, "scheme_label": label, "bits": bits, "mode": mode,
                "frac_bits": ([int(layer.frac_bits) for layer in qmodel.layers]
                              if scheme == "fixed" else None),
                "inference": m["inference"], "diverged": diverged, "loss": m["loss"],
                "accuracy": m["accuracy"], "nbytes": nbytes,
                "compression_ratio": reference / nbytes})
            if progress is not None:
                progress(rows[-1]["name"])
    return {"finetune_epochs": config.finetune_epochs,
            "bytes_note": ("bytes = weight codes packed at `bits` bits + float32 scales (one "
                           "per output unit for int8, one per layer for fixed point) + 4-byte "
                           "biases (+ int8 activation scales and zero points); fixed point: "
                           "weights only, float-simulated; int8: int8 activations, "
                           "integer-only inference"),
            "rows": rows}


def combined_part(baseline, pruned, task, config, finetune_lr, progress=None):
    """Magnitude pruning to ``config.combined_sparsity`` and int8 PTQ together.

    Parameters
    ----------
    baseline : Sequential
        Trained; never modified.
    pruned : Sequential or None
        The fine-tuned magnitude-pruned variant of the pruning part at that sparsity; None
        prunes and fine-tunes a copy of the baseline here with the same budget.
    task : dict
    config : StudyConfig
    finetune_lr : float
    progress : callable, optional

    Returns
    -------
    dict
        name, description, method, sparsity, bits (8), loss, accuracy, loss_ratio (loss over
        the baseline's), nnz (non-zero weight codes), nbytes, compression_ratio (float32
        baseline bytes over nbytes), bytes_note.

    Notes
    -----
    nbytes = QuantizedModel.nbytes - (dense int8 weight codes) + sum over layers of
    :func:`sparse_codes_nbytes` (bitmask or CSR of the codes, whichever is smaller): the
    scales, int32 biases and activation parameters are counted as in the dense int8 model.
    A weight kept by the mask can still round to code 0; it is then not stored either.
    """
    from ..prune import model_nbytes, prune
    s = config.combined_sparsity
    if pruned is None:
        pruned = baseline.copy()
        prune(pruned, s, method="magnitude", seed=config.seed)
        _compile(pruned, finetune_lr, task)
        _fit(pruned, task, config, config.finetune_epochs)
    qmodel, _ = int8_model(pruned, task["X_train"])
    m = _quantized_measure(qmodel, task)
    dense_codes = sum(layer.codes.size for layer in qmodel.layers)
    sparse_codes = sum(sparse_codes_nbytes(layer.codes, 8) for layer in qmodel.layers)
    nbytes = int(qmodel.nbytes - dense_codes + sparse_codes)
    base_loss = measure(baseline.predict, task)["loss"]
    reference = model_nbytes(baseline, "dense", bits=FLOAT_BITS)
    if progress is not None:
        progress(f"prune {s:g} + int8")
    return {"name": f"prune {s:g} + int8", "method": "magnitude", "sparsity": float(s),
            "bits": 8,
            "description": (f"magnitude pruning to sparsity {s:g} (fine-tuned as in part 2), "
                            "then int8 PTQ (per-channel weights, int8 activations, "
                            "integer-only inference)"),
            "loss": m["loss"], "accuracy": m["accuracy"],
            "loss_ratio": (None if m["loss"] is None or not base_loss else m["loss"] / base_loss),
            "nnz": int(sum(np.count_nonzero(layer.codes) for layer in qmodel.layers)),
            "nbytes": nbytes, "compression_ratio": reference / nbytes,
            "bytes_note": ("bytes = non-zero int8 weight codes behind a bitmask (1 bit per "
                           "weight) or in CSR, whichever is smaller, + the dense int8 model's "
                           "scales, int32 biases and activation parameters")}


# ----------------------------------------------------------------------------------------
# part 5: workers


class EpochClock:
    """Training callback that records the wall-clock end of every epoch in ``model.state``.

    In data-parallel training the callback runs inside every worker and rank 0's
    ``model.state`` comes back to the parent (:func:`minscale.parallel.fit_workers`), so the
    durations it yields exclude process start-up and data sharing.

    Parameters
    ----------
    key : str, default "epoch_clock"
        Key in ``model.state`` of the list of ``time.perf_counter()`` readings: one at the
        start of training, then one per finished epoch (all taken in the same process).
    """

    def __init__(self, key="epoch_clock"):
        self.key = key

    def on_train_begin(self, model):
        """Start a new list with the current time."""
        model.state[self.key] = [time.perf_counter()]

    def on_step_begin(self, model, step):
        """Nothing per step."""

    def on_epoch_end(self, model, epoch, logs):
        """Append the time at the end of the epoch."""
        model.state[self.key].append(time.perf_counter())

    def on_train_end(self, model, history):
        """Nothing at the end."""


def workers_part(task, config, learning_rate, progress=None):
    """Train the baseline configuration with 1, 2, ... synchronous workers and compare.

    Parameters
    ----------
    task : dict
    config : StudyConfig
        ``workers`` (counts), ``worker_epochs``, ``batch_size``, ``seed``.
    learning_rate : schedule or float
        The baseline's learning-rate schedule (Adam).
    progress : callable, optional

    Returns
    -------
    dict
        ``{"available": bool, "epochs", "rows": [{"workers", "seconds_per_epoch",
        "seconds_total", "speedup", "final_loss", "final_accuracy"}], "max_loss_difference",
        "max_param_difference", "note"}``.

    Notes
    -----
    Every run starts from the same initial weights (``config.seed``) and shuffles with the
    same seed. Synchronous data-parallel training splits each global batch into contiguous
    shards and allreduces the shard gradients, so its parameters equal one process's up to
    float summation order; the differences are reported against the 1-worker run.
    seconds_per_epoch is the median duration of the epochs measured inside rank 0 by
    :class:`EpochClock`, the first epoch left out as warm-up (process start-up, imports and
    JIT cache loads excluded); seconds_total is the wall time of the
    whole ``fit`` call, start-up included; speedup = seconds_per_epoch(1 worker) /
    seconds_per_epoch(k workers).
    """
    from .. import parallel
    from ..optim import Adam
    if not hasattr(parallel, "fit_workers"):
        return {"available": False, "epochs": config.worker_epochs, "rows": [],
                "max_loss_difference": None, "max_param_difference": None,
                "note": "minscale.parallel.fit_workers is not available"}
    rows, params = [], []
    clock = EpochClock()
    for k in config.workers:
        model = _new_model(task, config)
        model.compile(optimizer=Adam(learning_rate),
                      metrics=["accuracy"] if _is_classification(task) else None)
        t0 = time.perf_counter()
        history = _fit(model, task, config, config.worker_epochs, workers=k, callbacks=[clock])
        total = time.perf_counter() - t0
        ticks = model.state.pop(clock.key, [])
        durations = np.diff(ticks) if len(ticks) > 1 else np.array([math.nan])
        if durations.size > 1:
            # the first epoch of a fresh worker pays imports, JIT cache loads and page faults
            durations = durations[1:]
        row = {"workers": k, "seconds_per_epoch": float(np.median(durations)),
               "seconds_total": float(total), "diverged": history is None}
        m = measure(model.predict, task) if history is not None else \
            {"loss": None, "accuracy": None}
        row.update(final_loss=m["loss"], final_accuracy=m["accuracy"])
        rows.append(row)
        params.append(model.params.copy())
        if progress is not None:
            progress(f"{k} worker{'s' if k > 1 else ''}")
    ref = rows[0]["seconds_per_epoch"]
    for row in rows:
        row["speedup"] = _finite_or_none(ref / row["seconds_per_epoch"])
    losses = [r["final_loss"] for r in rows]
    loss_diff = (max(abs(v - losses[0]) for v in losses)
                 if all(v is not None for v in losses) else None)
    param_diff = float(max(np.abs(p - params[0]).max() for p in params))
    return {"available": True, "epochs": config.worker_epochs, "rows": rows,
            "max_loss_difference": loss_diff, "max_param_difference": param_diff,
            "note": "sync data-parallel: same global batches as 1 worker; differences come "
                    "from float summation order only"}


# ----------------------------------------------------------------------------------------
# summary and the whole study


def summarize(result, tolerance=0.05):
    """Every measured variant as (bytes, loss), its Pareto set and the smallest good one.

    Parameters
    ----------
    result : dict
        A study result with ``baseline``, ``pruning``, ``quantization`` and ``combined``.
    tolerance : float, default 0.05
        Relative loss budget against the baseline for ``smallest_within_tolerance``.

    Returns
    -------
    dict
        ``{"variants": [{"name", "part", "nbytes", "loss", "accuracy"}], "pareto": [names by
        increasing bytes], "tolerance", "loss_budget", "smallest_within_tolerance": name or
        None}``. Variants: the float32 baseline, every pruned variant with sparsity > 0
        (bytes: the smallest of dense, CSR and bitmask), the gradual one, every quantized
        variant and the combined one; variants whose loss is None (diverged) are listed but
        never chosen.
    """
    base = result["baseline"]
    variants = [{"name": "baseline float32", "part": "baseline", "nbytes": base["nbytes"],
                 "loss": base["loss"], "accuracy": base["accuracy"]}]
    pr = result["pruning"]
    for row in pr["rows"] + [pr["gradual"]]:
        if row["sparsity"] > 0:
            variants.append({"name": f"prune {row['method']} {row['sparsity']:g}",
                             "part": "pruning", "nbytes": row["nbytes"], "loss": row["loss"],
                             "accuracy": row["accuracy"]})
    for row in result["quantization"]["rows"]:
        variants.append({"name": row["name"], "part": "quantization", "nbytes": row["nbytes"],
                         "loss": row["loss"], "accuracy": row["accuracy"]})
    comb = result["combined"]
    variants.append({"name": comb["name"], "part": "combined", "nbytes": comb["nbytes"],
                     "loss": comb["loss"], "accuracy": comb["accuracy"]})
    nbytes = [v["nbytes"] for v in variants]
    losses = [math.nan if v["loss"] is None else v["loss"] for v in variants]
    front = pareto_front(nbytes, losses)
    best = smallest_within(nbytes, losses, base["loss"], tolerance)
    return {"variants": variants, "pareto": [variants[i]["name"] for i in front],
            "tolerance": float(tolerance), "loss_budget": (1.0 + tolerance) * base["loss"],
            "smallest_within_tolerance": None if best is None else variants[best]["name"]}


def _task_info(task):
    info = task["info"]
    classification = _is_classification(task)
    return {"name": info["name"], "task": info["task"], "n_classes": info.get("n_classes"),
            "n_train": int(task["X_train"].shape[0]), "n_test": int(task["X_test"].shape[0]),
            "n_features": int(task["X_train"].shape[1]),
            "n_outputs": int(task["y_train"].shape[1]), "y_scale": task["y_scale"],
            "loss_unit": ("MSE against one-hot targets" if classification else
                          "MSE of the standardized target (fraction of its variance; "
                          "1.0 = predicting the mean)")}


def _n_tasks(config):
    n_lr = len(config.learning_rates) * len(config.decay_rates)
    n_prune = len(config.prune_methods) * len(config.sparsities) + 1
    n_quant = 2 * (len(config.fixed_point_bits) + 1)
    return n_lr + n_prune + n_quant + 1 + len(config.workers)


def run_study(task, config=None, progress=None):
    """Run the whole study on one split of one data set.

    Parameters
    ----------
    task : dict
        As :func:`minscale.commands._common.load_task` returns: X_train, X_test, y_train,
        y_test (2-D, the model's dtype; one-hot targets for classification; standardized
        targets for regression), info, labels_test, y_scale.
    config : StudyConfig, optional
        Defaults to ``StudyConfig()`` (the full budgets).
    progress : bool, optional
        Show a tqdm bar on stderr; default: only when stderr is a terminal.

    Returns
    -------
    dict
        JSON-ready (finite floats or None, ints, strings, lists, dicts), laid out as
        ``docs/study.md`` documents: schema_version, minscale_version, backend, data, config,
        baseline, learning_rate, pruning, quantization, combined, workers, summary,
        seconds_total.

    Raises
    ------
    ValueError
        If every learning-rate run diverges, or `task` lacks a key.
    TypeError
        If `config` is not a StudyConfig.

    Notes
    -----
    One baseline, every variant from copies of it: the learning-rate run with the lowest
    final held-out loss is the baseline (the split has no separate validation part, so the
    choice is made on the held-out split the study reports; say so when quoting its loss).
    Pruned and QAT variants are fine-tuned with the same budget, at a constant rate equal to
    ``config.finetune_factor`` times the baseline's initial rate. Same seed, same numbers,
    timings aside.
    """
    from .. import __version__
    from ..kernels import get_backend
    from ..prune import model_nbytes
    config = StudyConfig() if config is None else config
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    for key in ("X_train", "X_test", "y_train", "y_test", "info", "labels_test", "y_scale"):
        if key not in task:
            raise ValueError(f"task must have the key {key!r} (see load_task)")
    t_start = time.perf_counter()
    bar = _Progress(_n_tasks(config), progress)
    limits = None
    if config.blas_threads is not None:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=config.blas_threads, user_api="blas")
    try:
        def make():
            model = _new_model(task, config)
            model.metrics = ["accuracy"] if _is_classification(task) else []
            return model

        bar.part("1/5 learning rate")
        runs, target, models = learning_rate_sweep(
            make, task["X_train"], task["y_train"], (task["X_test"], task["y_test"]),
            config.learning_rates, config.decay_rates, config.epochs, config.batch_size,
            seed=config.seed, target_factor=config.target_factor, progress=bar.step)
        finals = [math.inf if r["final_loss"] is None else r["final_loss"] for r in runs]
        best = int(np.argmin(finals))
        baseline = models[best]
        base_run = runs[best]
        finetune_lr = config.finetune_factor * base_run["initial_learning_rate"]
        base_measure = measure(baseline.predict, task)
        result = {
            "schema_version": SCHEMA_VERSION,
            "minscale_version": __version__,
            "backend": get_backend(),
            "data": _task_info(task),
            "config": config.to_dict(),
            "baseline": {
                "run": best,
                "initial_learning_rate": base_run["initial_learning_rate"],
                "decay_rate": base_run["decay_rate"],
                "epochs": config.epochs,
                "n_params": baseline.count_params(),
                "n_weights": int(baseline.prunable.sum()),
                "nbytes": model_nbytes(baseline, "dense", bits=FLOAT_BITS),
                "loss": base_measure["loss"],
                "accuracy": base_measure["accuracy"],
                "selection": "lowest final held-out loss of the learning-rate sweep",
            },
            "learning_rate": {"decay_steps": _n_batches(task, config),
                              "target_factor": config.target_factor, "target": target,
                              "target_measured": "held-out loss at the end of each epoch",
                              "runs": runs},
        }
        del models
        bar.part("2/5 pruning")
        result["pruning"], pruned = pruning_part(baseline, task, config, finetune_lr, bar.step)
        bar.part("3/5 quantization")
        result["quantization"] = quantization_part(baseline, task, config, finetune_lr,
                                                   bar.step)
        bar.part("4/5 combined")
        combined_source = pruned.get(("magnitude", config.combined_sparsity))
        result["combined"] = combined_part(baseline, combined_source, task, config, finetune_lr,
                                           bar.step)
        del pruned
        schedule = baseline.optimizer.learning_rate
        bar.part("5/5 workers")
        result["workers"] = workers_part(task, config, schedule, bar.step)
        result["summary"] = summarize(result, config.tolerance)
        result["seconds_total"] = time.perf_counter() - t_start
        return result
    finally:
        bar.close()
        if limits is not None:
            limits.restore_original_limits()
