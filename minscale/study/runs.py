"""The study's runs: train, prune, quantize and scale copies of one model and measure them.

Every run here calls :mod:`minscale.study.metrics` for its definitions; :func:`run_study`
puts the five parts together (see :mod:`minscale.study`).
"""
from __future__ import annotations

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
from ..optim import Adam
from ..prune import model_nbytes, prune, to_sparse
from ..quant import QATConfig, WeightSpec, convert, quantize_model
from ..schedules import InverseTimeDecay
from ..train import DivergenceError
from .config import FLOAT_BITS, SCHEMA_VERSION, StudyConfig
from .metrics import (
    finite_or_none,
    first_reached,
    gradual_schedule,
    loss_target,
    sparse_codes_nbytes,
    summarize,
)

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
    y_hat = np.asarray(predict(task["X_test"]), dtype=task["y_test"].dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = mse(task["y_test"], y_hat)
    acc = None
    if task["info"]["task"] == "classification" and np.isfinite(y_hat).all():
        acc = float(accuracy(task["labels_test"], y_hat))
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
    if not hasattr(parallel, "fit_workers"):
        return {"available": False, "epochs": config.worker_epochs, "rows": [],
                "max_loss_difference": None, "max_param_difference": None,
                "note": "minscale.parallel.fit_workers is not available"}
    rows, params = [], []
    clock = EpochClock()
    for k in config.workers:
        model = new_model(task, config)
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
        row["speedup"] = finite_or_none(ref / row["seconds_per_epoch"])
    losses = [r["final_loss"] for r in rows]
    loss_diff = (max(abs(v - losses[0]) for v in losses)
                 if all(v is not None for v in losses) else None)
    param_diff = float(max(np.abs(p - params[0]).max() for p in params))
    return {"available": True, "epochs": config.worker_epochs, "rows": rows,
            "max_loss_difference": loss_diff, "max_param_difference": param_diff,
            "note": "sync data-parallel: same global batches as 1 worker; differences come "
                    "from float summation order only"}


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
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 (heavy, optional)
        limits = threadpool_limits(limits=config.blas_threads, user_api="blas")
    try:
        def make():
            model = new_model(task, config)
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