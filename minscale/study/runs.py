"""The study's runs: train, prune, quantize and scale copies of one model and measure them.

Every run here calls :mod:`minscale.study.metrics` for its definitions; :func:`run_study`
puts the five parts together (see :mod:`minscale.study`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import sys
import time

import numpy as np

from .. import parallel
from .._checks import check_int
from .._version import __version__
from ..data import accuracy
from ..kernels import get_backend
from ..layers import Dense
from ..losses import mse
from ..model import Sequential
from ..optim import Adam, AdamW
from ..prune import model_nbytes, prune, to_sparse
from ..quant import QATConfig, WeightSpec, convert, integer_range, quantize_model
from ..regularizers import L2
from ..schedules import InverseTimeDecay
from ..train import DivergenceError
from .config import FLOAT_BITS, PARTS, SCHEMA_VERSION, StudyConfig
from .metrics import (
    finite_or_none,
    first_reached,
    gradual_schedule,
    loss_target,
    sparse_codes_nbytes,
    summarize,
)
from .seeds import map_seeds, seed_pool, study_seeds, variant_record
from .stats import mean_ci95

__all__ = [
    "build_model",
    "new_model",
    "measure",
    "median_seconds",
    "learning_rate_sweep",
    "pruning_part",
    "int8_model",
    "quantization_part",
    "combined_part",
    "EpochClock",
    "workers_part",
    "clamp_ranges",
    "clamped_predict",
    "regularization_runs",
    "register_part",
    "part_names",
    "default_parts",
    "needs_baseline",
    "EXTRA_PARTS",
    "run_study",
]


def build_model(n_features, n_outputs, hidden, activation="relu", seed=0, dtype="float64"):
    """A Sequential MLP: hidden Dense layers with `activation`, a linear output layer.

    The model of ``minscale train`` and of the study.

    Parameters
    ----------
    n_features : int, >= 1
        Input width d_in.
    n_outputs : int, >= 1
        Output width d_out (linear).
    hidden : sequence of int
        Widths of the hidden layers, in order (empty: a linear model).
    activation : str, default "relu"
        Activation of every hidden layer; He-normal initialization when it contains "relu",
        Glorot-uniform otherwise.
    seed : int, default 0
        Seed of the initial weights.
    dtype : {"float64", "float32"}, default "float64"

    Returns
    -------
    Sequential
        Built (parameters allocated and initialized), not compiled.

    Raises
    ------
    ValueError
        A size or the activation out of range, or parameters too large for the memory
        (:meth:`minscale.model.Sequential.build`).
    """
    layers = [Dense(h, activation=activation,
                    kernel_initializer="he_normal" if "relu" in activation else "glorot_uniform")
              for h in hidden]
    layers.append(Dense(n_outputs))
    return Sequential(layers, input_dim=n_features, seed=seed, dtype=dtype)


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
    repeats = check_int("repeats", repeats, 1)
    for _ in range(check_int("warmup", warmup, 0)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


# ----------------------------------------------------------------------------------------
# measuring


def measure(predict, task, split="test"):
    """Loss (and accuracy on classification) of a predictor on one split of a task.

    Parameters
    ----------
    predict : callable
        ``predict(X) -> y_hat`` of shape (n, d_out).
    task : dict
        As :func:`minscale.commands._common.load_task` returns: ``X_test``, ``y_test``,
        ``labels_test`` (and ``X_val``, ``y_val``, ``labels_val`` for ``split="val"``),
        ``info["task"]``.
    split : {"test", "val"}, default "test"
        The test split (reported) or the validation split (used for choices).

    Returns
    -------
    dict
        ``{"loss": float MSE (mean over rows, summed over outputs), "accuracy": float in
        [0, 1] or None}``; a non-finite loss becomes None.

    Raises
    ------
    ValueError
        `split` is neither "test" nor "val".
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    y = task[f"y_{split}"]
    y_hat = np.asarray(predict(task[f"X_{split}"]), dtype=y.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = mse(y, y_hat)
    acc = None
    if task["info"]["task"] == "classification" and np.isfinite(y_hat).all():
        acc = float(accuracy(task[f"labels_{split}"], y_hat))
    return {"loss": finite_or_none(loss), "accuracy": acc}


def _is_classification(task):
    return task["info"]["task"] == "classification"


def new_model(task, config):
    """The study's model for `task`: :func:`build_model` with ``config.hidden`` (ReLU),
    ``config.seed`` and the data's dtype; built, so one too large for the memory raises here.

    Parameters
    ----------
    task : dict
        See :func:`measure`; ``X_train`` and ``y_train`` give the sizes and the dtype.
    config : StudyConfig

    Returns
    -------
    Sequential

    Raises
    ------
    ValueError
        The parameters do not fit in memory (:meth:`minscale.model.Sequential.build`).
    """
    return build_model(task["X_train"].shape[1], task["y_train"].shape[1], list(config.hidden),
                       "relu", config.seed, task["X_train"].dtype.name)


def _compile(model, learning_rate, task):
    model.compile(optimizer=Adam(learning_rate),
                  metrics=["accuracy"] if _is_classification(task) else None)
    return model


def _n_batches(task, config):
    return -(-task["X_train"].shape[0] // config.batch_size)


def _fit(model, task, config, epochs, **kwargs):
    """Fit on the training split; None on divergence (the caller records it)."""
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
            from tqdm import tqdm  # noqa: PLC0415 (optional, loaded only for a terminal)
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
                           final_loss=finite_or_none(h["val_loss"][-1]),
                           final_accuracy=(float(h["val_accuracy"][-1])
                                           if "val_accuracy" in h else None),
                           val_loss=[finite_or_none(v) for v in h["val_loss"]],
                           loss=[finite_or_none(v) for v in h["loss"]])
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
        updates (optimizer updates applied since the baseline, counted by the optimizer),
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
    rows, models = [], {}
    levels = [s for s in config.sparsities if s > 0]
    for method in config.prune_methods:
        model = baseline.copy()
        diverged, done, updates = False, 0, 0
        for s in config.sparsities:
            if s > 0 and not diverged:
                prune(model, s, method=method, seed=config.seed)
                _compile(model, finetune_lr, task)
                diverged = _fit(model, task, config, config.finetune_epochs) is None
                done += config.finetune_epochs
                updates += model.optimizer.iterations
            elif s > 0:  # a diverged model stays diverged; prune it for the byte counts
                prune(model, s, method=method, seed=config.seed)
            row = _pruning_row(model, method, s, task, config, diverged)
            row["finetune_epochs"] = done
            row["updates"] = int(updates)
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
    gradual["updates"] = int(model.optimizer.iterations)
    gradual["schedule"] = schedule.get_config()
    models[("gradual", top)] = model
    if progress is not None:
        progress("gradual")
    return ({"protocol": "iterative: prune further, then fine-tune, at each level in turn",
             "finetune_epochs": config.finetune_epochs,
             "finetune_learning_rate": float(finetune_lr), "rows": rows, "gradual": gradual},
            models)


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
    qmodel = quantize_model(model, weights="int8", activations="int8",
                            calibration_data=calibration_data)
    layer = qmodel.layers[0]
    if len(qmodel.layers) == 1 and layer.codes.size == 1:
        desc = f"w code {int(layer.codes.ravel()[0])} x {float(layer.weight_scale[0]):.6g}"
        if layer.bias_codes is not None:
            desc += f", b code {int(layer.bias_codes[0])} (int32)"
        return qmodel, desc
    return qmodel, f"{len(qmodel.layers)} layers of int8 codes"


def clamp_ranges(qmodel):
    """The intervals an int8 model clamps its input and every layer's output to, or None.

    Parameters
    ----------
    qmodel : QuantizedModel

    Returns
    -------
    list of [low, high], or None
        First the input's, then one per layer: ``scale * (qmin - zero_point)`` and
        ``scale * (qmax - zero_point)`` of that tensor's 8-bit quantization (qmin, qmax =
        -128, 127 signed, 0, 255 uint8); None when activations are not quantized (fixed
        point: weights only, nothing is clamped).

    Notes
    -----
    Quantizing an activation saturates it at the ends of its calibrated range (Jacob et al.
    2018, eq. 1 with saturation). The study's clamped float control clamps the float model
    at the same places to the same ranges (:func:`clamped_predict`), so that what the clamps
    do to the loss is not credited to quantization: on digits the float model's held-out
    outputs reach -4.3 .. 5.3 on one-hot targets, and clamping alone cuts its MSE by more
    than half.
    """
    if qmodel.input_qparams is None:
        return None
    qmin, qmax = integer_range(8, qmodel.activations != "uint8")

    def bounds(qparams):
        scale, zero_point = float(qparams[0]), int(qparams[1])
        return [scale * (qmin - zero_point), scale * (qmax - zero_point)]

    return [bounds(qmodel.input_qparams)] + [bounds(layer.output_qparams)
                                             for layer in qmodel.layers]


def clamped_predict(model, ranges):
    """The float model's predictions with the input and every layer's output clamped.

    Parameters
    ----------
    model : Sequential
    ranges : list of [low, high] or None
        As :func:`clamp_ranges` returns (None: ``model.predict`` unchanged).

    Returns
    -------
    callable
        ``predict(X) -> ndarray (n, d_out)``.
    """
    if ranges is None:
        return model.predict

    def predict(X):
        a = np.clip(np.asarray(X, dtype=model.dtype), *ranges[0])
        for layer, (lo, hi) in zip(model.layers, ranges[1:]):
            a = np.clip(layer.forward(a, False), lo, hi)
        return a

    return predict


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
        diverged, loss, accuracy, nbytes, compression_ratio, updates (QAT: optimizer updates
        of the fine-tuning; PTQ: 0), clamp_ranges (:func:`clamp_ranges`: the intervals int8
        clamps the input and each layer's output to; None for fixed point).

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
    reference = model_nbytes(baseline, "dense", bits=FLOAT_BITS)
    X_cal = task["X_train"]
    variants = [("fixed", b, WeightSpec(b, "fixed"), None) for b in config.fixed_point_bits]
    variants.append(("int8", 8, WeightSpec(8, "affine", per_channel=True), "int8"))
    rows = []
    for mode in ("ptq", "qat"):
        for scheme, bits, spec, activations in variants:
            diverged, updates = False, 0
            if mode == "ptq":
                qmodel = quantize_model(baseline, weights=spec, activations=activations,
                                        calibration_data=X_cal if activations else None)
            else:
                model = _compile(baseline.copy(), finetune_lr, task)
                diverged = _fit(model, task, config, config.finetune_epochs,
                                quantization=QATConfig(weights=spec,
                                                       activations=activations)) is None
                updates = int(model.optimizer.iterations)
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
                "compression_ratio": reference / nbytes, "updates": updates,
                "clamp_ranges": clamp_ranges(qmodel)})
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
        baseline bytes over nbytes), finetunings (fine-tunings of the pruned model: its level
        in the pruning walk), clamp_ranges (:func:`clamp_ranges`), bytes_note.

    Notes
    -----
    nbytes = QuantizedModel.nbytes - (dense int8 weight codes) + sum over layers of
    :func:`sparse_codes_nbytes` (bitmask or CSR of the codes, whichever is smaller): the
    scales, int32 biases and activation parameters are counted as in the dense int8 model.
    A weight kept by the mask can still round to code 0; it is then not stored either.
    """
    s = config.combined_sparsity
    levels = [x for x in config.sparsities if x > 0]
    finetunings = levels.index(s) + 1 if s in levels else 1
    if pruned is None:
        finetunings = 1
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
            "finetunings": finetunings, "clamp_ranges": clamp_ranges(qmodel),
            "bytes_note": ("bytes = non-zero int8 weight codes behind a bitmask (1 bit per "
                           "weight) or in CSR, whichever is smaller, + the dense int8 model's "
                           "scales, int32 biases and activation parameters")}


# ----------------------------------------------------------------------------------------
# part 5: workers


class EpochClock:
    """Training callback that records the wall-clock end of every epoch in ``model.state``.

    In data-parallel training the callback runs inside every worker and rank 0's
    ``model.state`` comes back to the parent (:func:`minscale.parallel.fit_workers`), so the
    durations it yields exclude process start-up and data sharing. Like any callback it keeps
    ``fit`` on the general Python loop (the compiled loops take none); ``fit(..., timing=True)``
    records the same durations in ``History.epoch_seconds`` on whichever loop runs, and is
    what :func:`workers_part` uses.

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
        ``{"available": bool, "epochs", "rows": [{"workers", "loop", "seconds_per_epoch",
        "seconds_total", "speedup", "final_loss", "final_accuracy"}], "max_loss_difference",
        "max_param_difference", "note"}``; ``loop`` is the training loop that ran
        (``"compiled"`` or ``"general"``, ``History.loop``; None when the run diverged).

    Notes
    -----
    Every run starts from the same initial weights (``config.seed``) and shuffles with the
    same seed. Synchronous data-parallel training splits each global batch into contiguous
    shards and allreduces the shard gradients, so its parameters equal one process's up to
    float summation order; the differences are reported against the 1-worker run.
    seconds_per_epoch is the median duration of the epochs measured inside rank 0 by the
    training loop itself (``fit(..., timing=True)``, ``History.epoch_seconds``: no callback, so
    the run takes the loop a user's ``fit`` takes, compiled where it applies), the first epoch
    left out as warm-up (process start-up, imports and JIT cache loads excluded);
    seconds_total is the wall time of the
    whole ``fit`` call, start-up included; speedup = seconds_per_epoch(1 worker) /
    seconds_per_epoch(k workers).
    """
    if not hasattr(parallel, "fit_workers"):
        return {"available": False, "epochs": config.worker_epochs, "rows": [],
                "max_loss_difference": None, "max_param_difference": None,
                "note": "minscale.parallel.fit_workers is not available"}
    rows, params = [], []
    for k in config.workers:
        model = new_model(task, config)
        model.compile(optimizer=Adam(learning_rate),
                      metrics=["accuracy"] if _is_classification(task) else None)
        t0 = time.perf_counter()
        history = _fit(model, task, config, config.worker_epochs, workers=k, timing=True)
        total = time.perf_counter() - t0
        durations = np.array(history.epoch_seconds if history is not None else [math.nan])
        if durations.size > 1:
            # the first epoch of a fresh worker pays imports, JIT cache loads and page faults
            durations = durations[1:]
        row = {"workers": k, "loop": history.loop if history is not None else None,
               "seconds_per_epoch": float(np.median(durations)) if durations.size else math.nan,
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
        row["speedup"] = finite_or_none(ref / row["seconds_per_epoch"])
    losses = [r["final_loss"] for r in rows]
    loss_diff = (max(abs(v - losses[0]) for v in losses)
                 if all(v is not None for v in losses) else None)
    param_diff = float(max(np.abs(p - params[0]).max() for p in params))
    return {"available": True, "epochs": config.worker_epochs, "rows": rows,
            "max_loss_difference": loss_diff, "max_param_difference": param_diff,
            "note": "sync data-parallel: same global batches as 1 worker; differences come "
                    "from float summation order only"}


# ----------------------------------------------------------------------------------------
# the regularization part


def regularization_runs(task, config, learning_rate, progress=None):
    """Train the baseline's configuration with L2 and with decoupled weight decay, one seed.

    Parameters
    ----------
    task : dict
        With the validation split (``X_val``, ``y_val``).
    config : StudyConfig
        ``l2_strengths``, ``decay_strengths``, ``epochs``, ``batch_size``, ``seed``.
    learning_rate : schedule or float
        The baseline's rate (Adam, or AdamW for the decoupled decay).
    progress : callable, optional

    Returns
    -------
    list of dict
        Per (kind, strength): ``kind`` ("l2" or "decoupled"), ``strength``, ``val_loss``,
        ``loss`` and ``accuracy`` (test), ``updates``, ``diverged``.

    Notes
    -----
    Every run starts from the baseline's initial weights (``config.seed``) and shuffles as
    the baseline did, for the baseline's epochs at its rate: the only difference from the
    baseline is the regularization, so the baseline is the control. L2 (Keras): every
    kernel gets ``regularizers.L2(strength)``, the training loss gains
    ``strength * sum(W**2)``. Decoupled decay (Loshchilov & Hutter 2019): ``optim.AdamW``,
    ``theta <- theta * (1 - lr * strength)`` at every update, biases included.
    """
    rows = []
    for kind, grid in (("l2", config.l2_strengths), ("decoupled", config.decay_strengths)):
        for strength in grid:
            model = new_model(task, config)
            if kind == "l2":
                for layer in model.layers:
                    layer.kernel_regularizer = L2(strength)
                optimizer = Adam(learning_rate)
            else:
                optimizer = AdamW(learning_rate, weight_decay=strength)
            model.compile(optimizer=optimizer,
                          metrics=["accuracy"] if _is_classification(task) else None)
            diverged = _fit(model, task, config, config.epochs) is None
            test = measure(model.predict, task)
            rows.append({"kind": kind, "strength": float(strength), "diverged": diverged,
                         "val_loss": measure(model.predict, task, "val")["loss"],
                         "loss": test["loss"], "accuracy": test["accuracy"],
                         "updates": int(model.optimizer.iterations)})
            if progress is not None:
                progress(f"{kind} {strength:g}")
    return rows


# ----------------------------------------------------------------------------------------
# one seed: the learning-rate sweep, then every variant and its control


def _seed_config(config, seed):
    return dataclasses.replace(config, seed=seed)


def _schedule(run, n_batches):
    return InverseTimeDecay(run["initial_learning_rate"], decay_rate=run["decay_rate"],
                            decay_steps=n_batches)


def _metrics(task):
    return ["accuracy"] if _is_classification(task) else []


def _lr_seed(task, config, progress, seed):
    """Part 1 from one seed: the runs (validation curves, test loss) and their weights."""
    cfg = _seed_config(config, seed)

    def make():
        model = new_model(task, cfg)
        model.metrics = _metrics(task)
        return model

    runs, _, models = learning_rate_sweep(
        make, task["X_train"], task["y_train"], (task["X_val"], task["y_val"]),
        cfg.learning_rates, cfg.decay_rates, cfg.epochs, cfg.batch_size, seed=seed,
        target=math.inf, progress=progress)
    for run, model in zip(runs, models):
        m = measure(model.predict, task) if model is not None else {"loss": None,
                                                                     "accuracy": None}
        run["test_loss"], run["test_accuracy"] = m["loss"], m["accuracy"]
        run["updates"] = None if model is None else int(model.optimizer.iterations)
        del run["target_epoch"], run["target_update"]
    return runs, [None if m is None else m.get_weights() for m in models]


def _control(model, task, ranges, updates):
    m = measure(clamped_predict(model, ranges), task)
    return {"loss": m["loss"], "accuracy": m["accuracy"], "updates": int(updates),
            "clamped": ranges is not None}


def _variants_seed(task, config, base_run, weights, progress, seed):
    """Parts 2 to 4 and regularization from one seed's baseline, with their controls."""
    cfg = _seed_config(config, seed)
    n_batches = _n_batches(task, cfg)
    baseline = new_model(task, cfg)
    baseline.set_weights(weights[seed])
    baseline.compile(optimizer=Adam(_schedule(base_run, n_batches)), metrics=_metrics(task))
    finetune_lr = cfg.finetune_factor * base_run["initial_learning_rate"]
    parts = cfg.parts
    out = {"baseline": {"test": measure(baseline.predict, task),
                        "val": measure(baseline.predict, task, "val")}}
    levels = [s for s in cfg.sparsities if s > 0]
    # the dense control chain: the fine-tunings of the pruning walk without pruning, from
    # the baseline, each with a fresh optimizer at the same rate and the same shuffling
    chain = [(baseline, 0)]
    # as long as the deepest control asked for: QAT needs 1 fine-tuning, the pruning walk one
    # per level, the combined variant that of its level
    depth = max(1 if "quantization" in parts else 0,
                len(levels) if "pruning" in parts else 0,
                max(1, len(levels)) if "combined" in parts else 0)
    if depth:
        model, updates = baseline, 0
        for _ in range(depth):
            model = _compile(model.copy(), finetune_lr, task)
            _fit(model, task, cfg, cfg.finetune_epochs)
            updates += model.optimizer.iterations
            chain.append((model, updates))
    pruned = {}
    if "pruning" in parts:
        pr, pruned = pruning_part(baseline, task, cfg, finetune_lr, progress)
        for row in pr["rows"]:
            k = levels.index(row["sparsity"]) + 1 if row["sparsity"] > 0 else 0
            row["control"] = _control(chain[k][0], task, None, chain[k][1])
            row["control"]["finetunings"] = k
        # the gradual variant's control: one dense fit of the same length, one optimizer
        g = pr["gradual"]
        model = _compile(baseline.copy(), finetune_lr, task)
        _fit(model, task, cfg, g["finetune_epochs"])
        g["control"] = _control(model, task, None, model.optimizer.iterations)
        out["pruning"] = pr
    if "quantization" in parts:
        q = quantization_part(baseline, task, cfg, finetune_lr, progress)
        for row in q["rows"]:
            k = 0 if row["mode"] == "ptq" else 1
            row["control"] = _control(chain[k][0], task, row["clamp_ranges"], chain[k][1])
        out["quantization"] = q
    if "combined" in parts:
        c = combined_part(baseline, pruned.get(("magnitude", cfg.combined_sparsity)), task,
                          cfg, finetune_lr, progress)
        k = c["finetunings"]
        c["control"] = _control(chain[k][0], task, c["clamp_ranges"], chain[k][1])
        out["combined"] = c
    if "regularization" in parts:
        out["regularization"] = regularization_runs(task, cfg, _schedule(base_run, n_batches),
                                                    progress)
    return out


# ----------------------------------------------------------------------------------------
# aggregation over seeds


def _mean(values):
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _interval(values):
    if not values or any(v is None for v in values):
        return None, [None, None]
    m, lo, hi = mean_ci95(values)
    return m, [finite_or_none(lo), finite_or_none(hi)]


def _mean_curve(curves):
    """Mean and 95 % interval per epoch of per-seed curves (None where any seed has None)."""
    if any(not c for c in curves):
        return [], []
    means, bands = [], []
    for values in zip(*curves):
        m, ci = _interval(list(values))
        means.append(m)
        bands.append(ci)
    return means, bands


def _aggregate_learning_rate(per_seed, config, n_batches):
    runs = []
    for i in range(len(per_seed[0][0])):
        rs = [runs_of_seed[i] for runs_of_seed, _ in per_seed]
        r0 = rs[0]
        val_loss, val_band = _mean_curve([r["val_loss"] for r in rs])
        test_mean, test_ci = _interval([r["test_loss"] for r in rs])
        runs.append({
            "initial_learning_rate": r0["initial_learning_rate"],
            "decay_rate": r0["decay_rate"],
            "diverged": any(r["diverged"] for r in rs),
            "final_learning_rate": r0["final_learning_rate"],
            "final_loss": _mean([r["final_loss"] for r in rs]),
            "final_accuracy": _mean([r["final_accuracy"] for r in rs]),
            "val_loss": val_loss, "val_loss_ci95": val_band,
            "loss": _mean_curve([r["loss"] for r in rs])[0],
            "test_losses": [r["test_loss"] for r in rs],
            "test_loss_mean": test_mean, "test_loss_ci95": test_ci,
            "test_accuracy": _mean([r["test_accuracy"] for r in rs]),
            "updates": r0["updates"]})
    finals = [math.inf if r["final_loss"] is None else r["final_loss"] for r in runs]
    if not any(math.isfinite(f) for f in finals):
        raise ValueError("every learning-rate run diverged in at least one seed; try smaller "
                         "learning rates or standardized data")
    best = int(np.argmin(finals))
    target = loss_target([r["final_loss"] for r in runs], config.target_factor)
    for run in runs:
        curve = [math.nan if v is None else v for v in run["val_loss"]]
        e = first_reached(curve, target) if curve else None
        run["target_epoch"] = None if e is None else e + 1
        run["target_update"] = None if e is None else (e + 1) * n_batches
    return runs, best, target


def _per_seed_fields(rows_by_seed, keys):
    return {k: [r[k] for r in rows_by_seed] for k in keys}


def _record(rows_by_seed, seeds, name, control_name, **extra):
    """One variant's record: seed 0's row, its loss fields replaced by the seed statistics."""
    row = dict(rows_by_seed[0])
    control0 = row.pop("control")
    losses = [r["loss"] for r in rows_by_seed]
    c_losses = [r["control"]["loss"] for r in rows_by_seed]
    rec = variant_record(name, losses, control_name, c_losses, seeds)
    rec["control"].update(updates=control0["updates"], clamped=control0["clamped"],
                          accuracy=_mean([r["control"]["accuracy"] for r in rows_by_seed]))
    for key in ("loss", "accuracy", "name"):
        row.pop(key, None)
    rec.update(row)
    if "diverged" in row:
        rec["diverged"] = any(r["diverged"] for r in rows_by_seed)
    rec["loss"] = rec["loss_mean"]
    rec["accuracy"] = _mean([r["accuracy"] for r in rows_by_seed])
    rec.update(extra)
    return rec


def _chain_name(k, config):
    if k == 0:
        return "baseline float32"
    return f"dense, {k} x {config.finetune_epochs} epochs fine-tuned"


def _aggregate_pruning(outs, seeds, config):
    prs = [o["pruning"] for o in outs]
    rows = []
    for i, row0 in enumerate(prs[0]["rows"]):
        by_seed = [pr["rows"][i] for pr in prs]
        k = row0["control"]["finetunings"]
        rec = _record(by_seed, seeds, f"prune {row0['method']} {row0['sparsity']:g}",
                      _chain_name(k, config))
        rec["control"]["finetunings"] = k
        rows.append(rec)
    g0 = prs[0]["gradual"]
    gradual = _record([pr["gradual"] for pr in prs], seeds,
                      f"prune gradual {g0['sparsity']:g}",
                      f"dense, {g0['finetune_epochs']} epochs fine-tuned in one run")
    result = dict(prs[0])
    result.update(rows=rows, gradual=gradual)
    return result


def _aggregate_quantization(outs, seeds, config):
    qs = [o["quantization"] for o in outs]
    rows = []
    for i, row0 in enumerate(qs[0]["rows"]):
        k = 0 if row0["mode"] == "ptq" else 1
        name = _chain_name(k, config)
        if row0["clamp_ranges"] is not None:
            name += ", clamped to the int8 ranges"
        rows.append(_record([q["rows"][i] for q in qs], seeds, row0["name"], name))
    result = dict(qs[0])
    result["rows"] = rows
    return result


def _aggregate_combined(outs, seeds, config):
    cs = [o["combined"] for o in outs]
    c0 = cs[0]
    rec = _record(cs, seeds, c0["name"], _chain_name(c0["finetunings"], config)
                  + ", clamped to the int8 ranges")
    rec.pop("loss_ratio", None)
    return rec


def _aggregate_regularization(outs, seeds, base_val, base_test, config):
    rows = []
    n = len(outs[0]["regularization"])
    for i in range(n):
        by_seed = [o["regularization"][i] for o in outs]
        r0 = by_seed[0]
        rec = variant_record(f"{r0['kind']} {r0['strength']:g}",
                             [r["loss"] for r in by_seed], "baseline float32 (no "
                             "regularization)", base_test, seeds)
        rec.update(kind=r0["kind"], strength=r0["strength"],
                   diverged=any(r["diverged"] for r in by_seed),
                   val_loss_mean=_mean([r["val_loss"] for r in by_seed]),
                   accuracy=_mean([r["accuracy"] for r in by_seed]),
                   updates=r0["updates"], best=False)
        rec["loss"] = rec["loss_mean"]
        rows.append(rec)
    best = {}
    for kind in ("l2", "decoupled"):
        cands = [r for r in rows if r["kind"] == kind and r["val_loss_mean"] is not None]
        if cands:
            b = min(cands, key=lambda r: r["val_loss_mean"])
            b["best"] = True
            best[kind] = b["name"]
    return {"epochs": config.epochs,
            "selection": "per kind, the strength with the lowest mean validation loss",
            "control": "the baseline: same initial weights, rate, epochs and shuffling, "
                       "no regularization",
            "baseline_val_loss_mean": _mean(base_val),
            "rows": rows, "best": best}


# ----------------------------------------------------------------------------------------
# the whole study

#: parts registered by other modules: name -> (run, default, needs_baseline); see
#: :func:`register_part`
EXTRA_PARTS = {}


def register_part(name, run, default=False, needs_baseline=True):
    """Add a part to the study under `name` (``--part NAME``).

    Parameters
    ----------
    name : str
        Also the key of its section in the result.
    run : callable
        ``run(task, config, context) -> dict`` (JSON-ready). `context` holds ``seeds``
        (list of int), ``baseline`` (the result's baseline section, with the chosen
        ``initial_learning_rate`` and ``decay_rate``), ``finetune_learning_rate`` and
        ``jobs``; the part runs its seeds itself (:func:`minscale.study.seeds.map_seeds`),
        chooses on ``task["X_val"]`` and reports on ``task["X_test"]``. An optional
        ``"text"`` entry (list of str) holds its lines of the text report
        (:func:`minscale.report.render_text` prints them after the built-in parts).
    default : bool, default False
        Run it when ``--part`` is not given (:func:`default_parts`).
    needs_baseline : bool, default True
        It reads ``context["baseline"]``: the learning-rate part runs before it. When every
        part asked needs no baseline, the study skips the learning-rate sweep (and the
        result has no ``baseline``, ``learning_rate`` or ``summary``).

    Raises
    ------
    ValueError
        `name` is already taken.
    """
    if name in PARTS or name in EXTRA_PARTS:
        raise ValueError(f"a study part named {name!r} exists already")
    EXTRA_PARTS[name] = (run, bool(default), bool(needs_baseline))


def part_names():
    """Every ``--part`` name: the built-in :data:`PARTS`, then the registered ones.

    Returns
    -------
    tuple of str
    """
    return PARTS + tuple(EXTRA_PARTS)


def default_parts():
    """The parts run without ``--part``: every built-in one and the registered defaults.

    Returns
    -------
    tuple of str
    """
    return PARTS + tuple(n for n, (_, default, _) in EXTRA_PARTS.items() if default)


def needs_baseline(parts):
    """Whether the learning-rate part must run for `parts`: asked, or needed by one of them.

    Parameters
    ----------
    parts : sequence of str

    Returns
    -------
    bool
        Every built-in part needs the baseline; a registered one unless it was registered
        with ``needs_baseline=False``.
    """
    return any(p in PARTS or EXTRA_PARTS.get(p, (None, False, True))[2] for p in parts)


def _task_info(task):
    info = task["info"]
    classification = _is_classification(task)
    n_train, n_val, n_test = (int(task[k].shape[0]) for k in ("X_train", "X_val", "X_test"))
    return {"name": info["name"], "task": info["task"], "n_classes": info.get("n_classes"),
            "n_train": n_train, "n_test": n_test,
            "splits": {"train": n_train, "validation": n_val, "test": n_test},
            "n_features": int(task["X_train"].shape[1]),
            "n_outputs": int(task["y_train"].shape[1]), "y_scale": task["y_scale"],
            "loss_unit": ("MSE against one-hot targets" if classification else
                          "MSE of the standardized target (fraction of its variance; "
                          "1.0 = predicting the mean)")}


def _n_tasks(config):
    n_lr = len(config.learning_rates) * len(config.decay_rates)
    n = n_lr
    if "pruning" in config.parts:
        n += len(config.prune_methods) * len(config.sparsities) + 1
    if "quantization" in config.parts:
        n += 2 * (len(config.fixed_point_bits) + 1)
    if "combined" in config.parts:
        n += 1
    if "regularization" in config.parts:
        n += len(config.l2_strengths) + len(config.decay_strengths)
    return n * config.seeds + (len(config.workers) if "workers" in config.parts else 0)


def run_study(task, config=None, progress=None):
    """Run the study on one split of one data set, from ``config.seeds`` seeds.

    Parameters
    ----------
    task : dict
        As :func:`minscale.commands._common.load_task` with ``validation_size`` returns:
        X_train, X_val, X_test, y_train, y_val, y_test (2-D, the model's dtype; one-hot
        targets for classification; standardized targets for regression), info,
        labels_val, labels_test, y_scale.
    config : StudyConfig, optional
        Defaults to ``StudyConfig()`` (the full budgets, 3 seeds).
    progress : bool, optional
        Show a tqdm bar on stderr; default: only when stderr is a terminal (and only with
        ``config.jobs == 1``: workers cannot report to it).

    Returns
    -------
    dict
        JSON-ready (finite floats or None, ints, strings, lists, dicts), laid out as
        ``docs/study.md`` documents: schema_version, minscale_version, backend, data, config,
        seeds, baseline, learning_rate, the sections of the parts run (pruning, quantization,
        combined, regularization, workers, registered parts), summary, seconds_total.

    Raises
    ------
    ValueError
        If every learning-rate run diverges in some seed, `task` lacks a key, or
        ``config.parts`` names an unknown part.
    TypeError
        If `config` is not a StudyConfig.

    Notes
    -----
    Selection apart from reporting: the baseline is the learning-rate run with the lowest
    mean final *validation* loss over the seeds, the loss target comes from the validation
    curves, the regularization strength is chosen on validation loss and PTQ calibrates on
    the training split; the test split is only reported. Every variant trained after the
    baseline has a dense float control with the same extra updates from the same baseline
    (same optimizer, rate and shuffling); every variant whose outputs the int8 output layer
    clamps has the float control clamped to the same range. Each seed i (``config.seed +
    i``) sets the initial weights, shuffling, random masks; the split is the caller's.
    Same seeds, same numbers, timings aside, whatever ``config.jobs``.
    """
    config = StudyConfig() if config is None else config
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig, got {type(config).__name__}")
    for key in ("X_train", "X_val", "X_test", "y_train", "y_val", "y_test", "info",
                "labels_val", "labels_test", "y_scale"):
        if key not in task:
            raise ValueError(f"task must have the key {key!r} (see load_task with "
                             "validation_size)")
    unknown = [p for p in config.parts if p not in part_names()]
    if unknown:
        raise ValueError(f"parts must be among {', '.join(part_names())}; got "
                         f"{unknown[0]!r}")
    t_start = time.perf_counter()
    seeds = study_seeds(config.seed, config.seeds)
    jobs = min(config.jobs, len(seeds))
    bar = _Progress(_n_tasks(config), progress if jobs == 1 else False)
    step = bar.step if jobs == 1 else None
    limits = None
    if config.blas_threads is not None:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 (heavy, optional)
        limits = threadpool_limits(limits=config.blas_threads, user_api="blas")
    try:
        with seed_pool(jobs) as pool:
            return _run_study(task, config, bar, step, seeds, jobs, pool, t_start)
    finally:
        bar.close()
        if limits is not None:
            limits.restore_original_limits()


def _run_study(task, config, bar, step, seeds, jobs, pool, t_start):
    """The body of :func:`run_study`, its resources (BLAS limits, bar, pool) held."""
    n_batches = _n_batches(task, config)
    result = {"schema_version": SCHEMA_VERSION, "minscale_version": __version__,
              "backend": get_backend(), "data": _task_info(task), "config": config.to_dict(),
              "seeds": seeds}
    finetune_lr = None
    if "learning_rate" in config.parts or needs_baseline(config.parts):
        bar.part("learning rate")
        per_seed = map_seeds(functools.partial(_lr_seed, task, config, step), seeds, jobs,
                             config.blas_threads, pool)
        runs, best, target = _aggregate_learning_rate(per_seed, config, n_batches)
        base_run = runs[best]
        weights = {s: w[best] for s, (_, w) in zip(seeds, per_seed)}
        del per_seed
        finetune_lr = config.finetune_factor * base_run["initial_learning_rate"]
        probe = new_model(task, config)
        result.update({
            "baseline": {
                "run": best,
                "initial_learning_rate": base_run["initial_learning_rate"],
                "decay_rate": base_run["decay_rate"],
                "epochs": config.epochs,
                "updates": base_run["updates"],
                "n_params": probe.count_params(),
                "n_weights": int(probe.prunable.sum()),
                "nbytes": model_nbytes(probe, "dense", bits=FLOAT_BITS),
                "seeds": seeds,
                "losses": base_run["test_losses"],
                "loss_mean": base_run["test_loss_mean"],
                "loss_ci95": base_run["test_loss_ci95"],
                "loss": base_run["test_loss_mean"],
                "accuracy": base_run["test_accuracy"],
                "val_loss_mean": base_run["final_loss"],
                "selection": "lowest mean final validation loss of the learning-rate sweep "
                             "over the seeds",
            },
            "learning_rate": {"decay_steps": n_batches,
                              "target_factor": config.target_factor, "target": target,
                              "target_measured": "mean validation loss over the seeds at "
                                                 "the end of each epoch",
                              "runs": runs},
        })
        variant_parts = [p for p in ("pruning", "quantization", "combined", "regularization")
                         if p in config.parts]
        if variant_parts:
            bar.part(", ".join(variant_parts))
            outs = map_seeds(functools.partial(_variants_seed, task, config, base_run,
                                               weights, step),
                             seeds, jobs, config.blas_threads, pool)
            base_test = [o["baseline"]["test"]["loss"] for o in outs]
            base_val = [o["baseline"]["val"]["loss"] for o in outs]
            if "pruning" in config.parts:
                result["pruning"] = _aggregate_pruning(outs, seeds, config)
            if "quantization" in config.parts:
                result["quantization"] = _aggregate_quantization(outs, seeds, config)
            if "combined" in config.parts:
                result["combined"] = _aggregate_combined(outs, seeds, config)
            if "regularization" in config.parts:
                result["regularization"] = _aggregate_regularization(outs, seeds, base_val,
                                                                     base_test, config)
            del outs
        if "workers" in config.parts:
            bar.part("workers")
            result["workers"] = workers_part(task, _seed_config(config, seeds[0]),
                                             _schedule(base_run, n_batches), step)
    context = {"seeds": seeds, "baseline": result.get("baseline"),
               "finetune_learning_rate": finetune_lr, "jobs": jobs, "pool": pool}
    result["extra_parts"] = []
    for name, (run, _, _) in EXTRA_PARTS.items():
        if name in config.parts:
            bar.part(name)
            result[name] = run(task, config, context)
            result["extra_parts"].append(name)
    if "baseline" in result:
        result["summary"] = summarize(result, config.tolerance)
    result["seconds_total"] = time.perf_counter() - t_start
    return result
