"""Han et al. 2015 in miniature: iterative magnitude pruning with retraining of LeNet-300-100.

Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections for Efficient Neural
Networks" (NeurIPS), prune a trained network in rounds: in each round the smallest-magnitude
weights of every layer go, and the survivors are retrained with the mask held fixed. Their
LeNet-300-100 (784-300-100-10) on MNIST keeps 8 %, 9 % and 26 % of the weights of its three
layers: 267K -> 22K weights (12x) with the top-1 error going from 1.64 % to 1.59 % (Table 1,
Table 2).

:func:`han2015_part` runs that protocol from several seeds on a task with train, validation
and test splits (the shipped ``mnist5k``: 5000 images instead of 60,000), measures the error
of the dense model, of the pruned model after every round (before and after retraining), and
of a dense control that gets the same retraining updates from the same dense model, and picks
the highest sparsity reached without a significant loss *on the validation split*; the test
split is only reported. :func:`format_han2015` prints it beside the paper's row.
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np

from .._checks import check_int, check_real
from ..data import accuracy
from ..losses import mse
from ..optim import Adam
from ..prune import prune
from .runs import build_model, register_part
from .seeds import map_seeds, variant_record
from .stats import mean_ci95, paired_difference_ci95, verdict

__all__ = ["PAPER", "HAN_LAYER_SPARSITY", "han2015_schedule", "han2015_part", "format_han2015",
           "study_part"]

#: The paper's LeNet-300-100 row (Han et al. 2015, Tables 1 and 2; MNIST, Caffe).
PAPER = {
    "network": "LeNet-300-100",
    "data": "MNIST, 60,000 training and 10,000 test images",
    "weights_before": 267_000,
    "weights_after": 22_000,
    "compression": 12.0,
    "error_before_percent": 1.64,
    "error_after_percent": 1.59,
    "layer_density": [0.08, 0.09, 0.26],
    "source": "Han, Pool, Tran & Dally 2015, Learning both Weights and Connections for "
              "Efficient Neural Networks, Tables 1 and 2",
}

#: Fraction of zeros per layer at the end, from the paper's densities (fc1, fc2, fc3).
HAN_LAYER_SPARSITY = (0.92, 0.91, 0.74)


def han2015_schedule(final_sparsity, rounds):
    """Per-layer sparsity after each pruning round, geometric in the surviving fraction.

    Parameters
    ----------
    final_sparsity : sequence of float in [0, 1), one per layer
        The fraction of zeros every layer reaches in the last round.
    rounds : int, >= 1

    Returns
    -------
    list of list of float
        ``rounds`` rows; row r (1-based) is ``1 - (1 - s_l) ** (r / rounds)`` for every layer
        l: each round removes the same fraction of the weights that survived the previous
        one, so round ``rounds`` is exactly `final_sparsity`.

    Raises
    ------
    ValueError
        A sparsity outside [0, 1) or `rounds` < 1.

    Notes
    -----
    Han et al. prune iteratively ("Learning the right connections by iterative pruning",
    section 3.3) with a threshold per layer; the paper does not list the per-round levels,
    so equal surviving fractions per round are this reproduction's choice.

    Examples
    --------
    >>> [round(s, 4) for s in han2015_schedule([0.75], 2)[0]]
    [0.5]
    """
    rounds = check_int("rounds", rounds, 1)
    dens = [1.0 - check_real(f"final_sparsity[{i}]", s, 0.0, 1.0, hi_open=True)
            for i, s in enumerate(final_sparsity)]
    out = []
    for r in range(1, rounds + 1):
        out.append([1.0 if d == 0.0 else 1.0 - d ** (r / rounds) for d in dens])
    out[-1] = [1.0 - d for d in dens]  # exact at the end, whatever the float powers gave
    return out


def _measure(model, arrays, split):
    X, Y, labels = arrays[f"X_{split}"], arrays[f"y_{split}"], arrays[f"labels_{split}"]
    y_hat = model.predict(X)
    return {"error": 100.0 * (1.0 - float(accuracy(labels, y_hat))),
            "loss": float(mse(Y, y_hat))}


def _kept_per_layer(model):
    return [int(layer.W_mask.sum()) for layer in model.layers]


def _check_pruned_weights_are_zero(model):
    for i, layer in enumerate(model.layers):
        if np.any(layer.W[~layer.W_mask] != 0):
            raise RuntimeError(f"layer {i}: a pruned weight is not 0 after retraining")


def _han_seed(arrays, settings, seed):
    """One seed of the protocol; a top-level function so worker processes can run it."""
    t0 = time.perf_counter()
    dense = build_model(arrays["X_train"].shape[1], arrays["y_train"].shape[1],
                        list(settings["hidden"]), "relu", seed, arrays["X_train"].dtype.name)
    dense.compile(optimizer=Adam(settings["learning_rate"]))

    def fit(model, epochs):
        model.fit(arrays["X_train"], arrays["y_train"], epochs=epochs,
                  batch_size=settings["batch_size"], seed=seed, verbose=0)

    fit(dense, settings["epochs"])
    out = {"seed": seed, "dense": {s: _measure(dense, arrays, s) for s in ("val", "test")},
           "by_rate": []}
    for rate in settings["retrain_learning_rates"]:
        out["by_rate"].append(_prune_and_retrain(dense, rate, settings, arrays, fit))
    out["seconds"] = time.perf_counter() - t0
    return out


def _prune_and_retrain(dense, rate, settings, arrays, fit):
    """The rounds from copies of the dense model at one retraining rate, with the control."""
    pruned, control = dense.copy(), dense.copy()
    # the control gets the same optimizer, rate, epochs and data order, only without masks
    for m in (pruned, control):
        m.compile(optimizer=Adam(rate))
    rounds = []
    for level in settings["schedule"]:
        prune(pruned, list(level), method="magnitude")
        before = {s: _measure(pruned, arrays, s) for s in ("val", "test")}
        fit(pruned, settings["retrain_epochs"])
        fit(control, settings["retrain_epochs"])
        _check_pruned_weights_are_zero(pruned)
        rounds.append({
            "kept": _kept_per_layer(pruned),
            "zeros": [int(np.count_nonzero(layer.W == 0)) for layer in pruned.layers],
            "updates": [int(pruned.optimizer.iterations), int(control.optimizer.iterations)],
            "before_retraining": before,
            "pruned": {s: _measure(pruned, arrays, s) for s in ("val", "test")},
            "control": {s: _measure(control, arrays, s) for s in ("val", "test")},
        })
    return rounds


def _ci(values):
    m, lo, hi = mean_ci95(values)
    return m, [None if math.isnan(lo) else lo, None if math.isnan(hi) else hi]


def _diff(variant, control):
    m, lo, hi = paired_difference_ci95(variant, control)
    return {"mean": m, "ci95": [None if math.isnan(lo) else lo, None if math.isnan(hi) else hi],
            "verdict": verdict(variant, control)}


def _series(outs, path):
    vals = []
    for o in outs:
        v = o
        for key in path:
            v = v[key]
        vals.append(v)
    return vals


def _task_arrays(task, dtype):
    arrays = {}
    for split, key in (("train", "train"), ("val", "val"), ("test", "test")):
        arrays[f"X_{split}"] = np.ascontiguousarray(task[f"X_{key}"], dtype=dtype)
        arrays[f"y_{split}"] = np.ascontiguousarray(task[f"y_{key}"], dtype=dtype)
        labels = task.get(f"labels_{key}")
        arrays[f"labels_{split}"] = (np.argmax(task[f"y_{key}"], axis=1) if labels is None
                                     else np.asarray(labels))
    return arrays


def han2015_part(task, hidden=(300, 100), seeds=(0, 1, 2), jobs=1, epochs=20, rounds=5,
                 retrain_epochs=4, batch_size=64, learning_rate=1e-3,
                 retrain_factors=(1.0, 0.1), final_sparsity=None, dtype="float32",
                 blas_threads=1):
    """Han et al. 2015's iterative magnitude pruning with retraining, from several seeds.

    Per seed: train the dense MLP (ReLU hidden layers, linear outputs, MSE on one-hot
    targets, Adam at `learning_rate`, `epochs` epochs); then `rounds` times prune every layer
    by magnitude to its level of :func:`han2015_schedule` and retrain the survivors for
    `retrain_epochs` epochs with the mask held (Adam at ``factor * learning_rate``, one
    optimizer over all rounds). The dense control starts from the same dense model and gets
    the same retraining, epoch for epoch, without pruning. Every factor of
    `retrain_factors` is run from the same dense model; the one with the lowest mean
    *validation* error of the pruned model after the last round is reported.

    Parameters
    ----------
    task : dict
        As :func:`minscale.commands._common.load_task` with ``validation_size`` returns:
        X_train, y_train, X_val, y_val, X_test, y_test (one-hot targets), labels_val and
        labels_test (class labels; derived from the one-hot targets when absent), info.
    hidden : sequence of int, default (300, 100)
        Hidden widths: LeNet-300-100.
    seeds : sequence of int, default (0, 1, 2)
        Seed i sets the initial weights and the shuffling; the split is the task's.
    jobs : int, default 1
        Worker processes for the seeds (:func:`minscale.study.seeds.map_seeds`); the numbers
        do not depend on it.
    epochs, rounds, retrain_epochs, batch_size : int, >= 1
        Dense training epochs; pruning rounds; retraining epochs per round; rows per update.
    learning_rate : float > 0, default 1e-3
        Adam's rate for the dense training.
    retrain_factors : sequence of float > 0, default (1.0, 0.1)
        Retraining rates to choose from, as multiples of `learning_rate` (Han et al. retrain
        at a lower rate than the original one; with Adam the original rate recovers better
        on mnist5k, so both are tried and validation decides).
    final_sparsity : sequence of float, one per layer, optional
        Default :data:`HAN_LAYER_SPARSITY` for three layers (the paper's 92 %, 91 %, 74 %);
        for another depth, 0.92 for every layer but the last and 0.74 for the last.
    dtype : {"float32", "float64"}, default "float32"
        Arithmetic of the runs (Han et al. trained in float32 with Caffe).
    blas_threads : int or None, default 1
        BLAS threads per run (as :func:`map_seeds`).

    Returns
    -------
    dict
        JSON-ready: ``paper`` (:data:`PAPER`), ``settings``, ``data`` (split sizes),
        ``seeds``, ``n_weights`` (weights of the dense model), ``retraining`` (the chosen
        retraining ``learning_rate``, how, and every candidate's mean validation error after
        the last round), ``dense`` (test and
        validation error in %, mean and 95 % t-interval over the seeds), ``rounds`` (one
        record per round, at the chosen rate: per-layer and total ``sparsity``,
        ``weights_kept``, ``layer_zeros`` (weights exactly 0 after retraining, least over the
        seeds), ``retrain_updates`` and ``control_updates`` (Adam updates since the dense
        model), ``compression``, test error before retraining, after retraining and of the dense
        control, each a mean with interval; paired differences against the dense model and
        against the control on test, and against the dense model on validation, each
        ``{mean, ci95, verdict}``; and the fields of
        :func:`minscale.study.seeds.variant_record` on test MSE against the control:
        ``name``, ``seeds``, ``losses``, ``loss_mean``, ``loss_ci95``, ``control``,
        ``effect``, ``difference_ci95``, ``verdict``), ``reached`` (the round
        selected and its numbers, or None; always None with one seed, which then sets
        ``note``: no significance test is possible), ``what_differs`` (list of str) and
        ``seconds`` (wall time of the whole part and per seed).

    Raises
    ------
    ValueError
        A missing task key, a task that is not a classification, a bad size or rate, or a
        `final_sparsity` of the wrong length.

    Notes
    -----
    Errors are ``100 * (1 - accuracy)`` with accuracy the argmax rule of
    :func:`minscale.data.accuracy`. Intervals are Student-t over seeds
    (:mod:`minscale.study.stats`); with one seed they are None and every verdict is "no
    significant difference", and no sparsity is claimed as reached. The sparsity reached is that of the last round whose paired
    interval of validation error minus dense validation error is not wholly above 0 (no
    significant loss), only looking at rounds up to the first that fails; the test numbers
    of that round are then reported, never used to choose.
    """
    for key in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        if key not in task:
            raise ValueError(f"task must have the key {key!r} (load_task with validation_size)")
    if task.get("info", {}).get("task", "classification") != "classification":
        raise ValueError("the Han et al. 2015 part needs a classification task (accuracy), got "
                         f"{task['info']['task']!r} data")
    hidden = tuple(check_int("hidden[i]", h, 1) for h in hidden)
    n_layers = len(hidden) + 1
    if final_sparsity is None:
        final_sparsity = (HAN_LAYER_SPARSITY if n_layers == 3
                          else (0.92,) * (n_layers - 1) + (0.74,))
    final_sparsity = tuple(final_sparsity)
    if len(final_sparsity) != n_layers:
        raise ValueError(f"final_sparsity must give one value per layer ({n_layers}), got "
                         f"{len(final_sparsity)}")
    lr = check_real("learning_rate", learning_rate, 0.0, None, lo_open=True)
    factors = [check_real(f"retrain_factors[{i}]", f, 0.0, None, lo_open=True)
               for i, f in enumerate(retrain_factors)]
    if not factors:
        raise ValueError("retrain_factors must hold at least one factor, got none")
    settings = {
        "hidden": list(hidden),
        "epochs": check_int("epochs", epochs, 1),
        "rounds": check_int("rounds", rounds, 1),
        "retrain_epochs": check_int("retrain_epochs", retrain_epochs, 1),
        "batch_size": check_int("batch_size", batch_size, 1),
        "learning_rate": lr,
        "retrain_learning_rates": [lr * f for f in factors],
        "final_sparsity": list(final_sparsity),
        "schedule": han2015_schedule(final_sparsity, rounds),
        "optimizer": "Adam",
        "loss": "MSE on one-hot targets",
        "dtype": str(np.dtype(dtype)),
    }
    seeds = [check_int("seeds[i]", s, 0) for s in seeds]
    arrays = _task_arrays(task, np.dtype(dtype))
    t0 = time.perf_counter()
    outs = map_seeds(functools.partial(_han_seed, arrays, settings), seeds, jobs, blas_threads)
    seconds = time.perf_counter() - t0

    probe = build_model(arrays["X_train"].shape[1], arrays["y_train"].shape[1], list(hidden))
    layer_sizes = [int(layer.W.size) for layer in probe.layers]
    n_weights = sum(layer_sizes)
    dense_test = _series(outs, ("dense", "test", "error"))
    dense_val = _series(outs, ("dense", "val", "error"))
    m, ci = _ci(dense_test)
    vm, vci = _ci(dense_val)
    result = {
        "paper": dict(PAPER),
        "settings": settings,
        "data": {"name": task.get("info", {}).get("name"),
                 "feature_range": (None if task.get("info", {}).get("feature_range") is None
                                   else [float(v) for v in task["info"]["feature_range"]]),
                 "splits": {s: int(arrays[f"X_{k}"].shape[0])
                            for s, k in (("train", "train"), ("validation", "val"),
                                         ("test", "test"))}},
        "seeds": seeds,
        "n_weights": n_weights,
        "layer_weights": layer_sizes,
        "dense": {"test_error_mean": m, "test_error_ci95": ci, "test_errors": dense_test,
                  "val_error_mean": vm, "val_error_ci95": vci},
        "rounds": [],
    }
    last = settings["rounds"] - 1
    by_rate = []
    for i, rate in enumerate(settings["retrain_learning_rates"]):
        vals = [o["by_rate"][i][last]["pruned"]["val"]["error"] for o in outs]
        vm_i, vci_i = _ci(vals)
        by_rate.append({"learning_rate": rate, "final_val_error_mean": vm_i,
                        "final_val_error_ci95": vci_i})
    chosen = min(range(len(by_rate)), key=lambda i: by_rate[i]["final_val_error_mean"])
    result["retraining"] = {
        "learning_rate": settings["retrain_learning_rates"][chosen],
        "selection": "lowest mean validation error of the pruned model after the last round",
        "candidates": by_rate}
    for o in outs:
        o["rounds"] = o["by_rate"][chosen]
    selected, still_ok = None, True
    for r in range(settings["rounds"]):
        kept = outs[0]["rounds"][r]["kept"]  # the counts are exact: the same for every seed
        pruned_test = _series(outs, ("rounds", r, "pruned", "test", "error"))
        pruned_val = _series(outs, ("rounds", r, "pruned", "val", "error"))
        control_test = _series(outs, ("rounds", r, "control", "test", "error"))
        before_test = _series(outs, ("rounds", r, "before_retraining", "test", "error"))
        pm, pci = _ci(pruned_test)
        cm, cci = _ci(control_test)
        bm, bci = _ci(before_test)
        record = {
            "round": r + 1,
            "retrain_epochs_total": (r + 1) * settings["retrain_epochs"],
            "layer_sparsity": [1.0 - k / n for k, n in zip(kept, layer_sizes)],
            "sparsity": 1.0 - sum(kept) / n_weights,
            "weights_kept": int(sum(kept)),
            "layer_weights_kept": kept,
            "layer_zeros": [min(z) for z in zip(*_series(outs, ("rounds", r, "zeros")))],
            "retrain_updates": outs[0]["rounds"][r]["updates"][0],
            "control_updates": outs[0]["rounds"][r]["updates"][1],
            "compression": n_weights / sum(kept),
            "test_error_mean": pm, "test_error_ci95": pci, "test_errors": pruned_test,
            "before_retraining_test_error_mean": bm,
            "before_retraining_test_error_ci95": bci,
            "control_test_error_mean": cm, "control_test_error_ci95": cci,
            "vs_dense_test": _diff(pruned_test, dense_test),
            "vs_control_test": _diff(pruned_test, control_test),
            "vs_dense_val": _diff(pruned_val, dense_val),
        }
        record.update(_loss_record(outs, r, seeds))
        result["rounds"].append(record)
        if still_ok and record["vs_dense_val"]["verdict"] != "worse":
            selected = r
        else:
            still_ok = False
    if len(seeds) < 2:
        # one seed has no interval: "no significant loss" would hold for any error, so no
        # sparsity is claimed (the rounds are still reported)
        selected = None
        result["note"] = "one seed: no significance test; run --seeds 3 or more"
    result["reached"] = None if selected is None else {
        "round": selected + 1,
        "selection": "last round before any whose validation error is significantly above "
                     "the dense model's (paired 95 % t-interval over the seeds)",
        **{k: result["rounds"][selected][k]
           for k in ("sparsity", "weights_kept", "compression", "test_error_mean",
                     "test_error_ci95", "control_test_error_mean", "vs_dense_test",
                     "vs_control_test", "vs_dense_val")},
    }
    result["what_differs"] = _what_differs(result)
    result["seconds"] = {"total": seconds, "per_seed": [o["seconds"] for o in outs]}
    result["text"] = format_han2015(result).splitlines()
    return result


def _loss_record(outs, r, seeds):
    """The issue-15 variant fields on test MSE, against the dense control."""
    return variant_record(f"han2015 round {r + 1}",
                          _series(outs, ("rounds", r, "pruned", "test", "loss")),
                          "dense, same retraining",
                          _series(outs, ("rounds", r, "control", "test", "loss")), seeds)


def _what_differs(result):
    s = result["settings"]
    data = result["data"]
    sp = data["splits"]
    name = data["name"] or "the data"
    total = sp["train"] + sp["validation"] + sp["test"]
    if data.get("feature_range") is None:
        scaling = (f"{name}'s features standardized (mean and deviation of the training "
                   "split); the paper's pixels were scaled to [0, 1]")
    else:
        low, high = data["feature_range"]
        scaling = (f"{name}'s features scaled from [{low:g}, {high:g}] to [0, 1], as the "
                   "pixels in the paper's Caffe LeNet")
    n_layers = len(s["final_sparsity"])
    rates = ", ".join(f"{x:.0%}" for x in s["final_sparsity"])
    if n_layers == 3:
        mapping = f"the paper's final per-layer rates ({rates} zeros)"
    elif list(s["final_sparsity"]) != [0.92] * (n_layers - 1) + [0.74]:
        mapping = f"the given final per-layer rates ({rates} zeros; the paper's are for 3)"
    else:
        mapping = (f"final per-layer rates {rates} zeros: the paper's rates are for 3 layers, "
                   f"so each of the {n_layers - 1} hidden layer(s) gets its first-layer 92 % "
                   "and the output layer its 74 %")
    return [
        f"data: {name}, {sp['train']:,} training rows (of {total:,}; validation "
        f"{sp['validation']:,}, test {sp['test']:,}) instead of MNIST's 60,000 training and "
        "10,000 test images, so the dense error is not comparable to the paper's",
        "loss: mean squared error on one-hot targets (minscale's only loss), not softmax "
        "cross-entropy",
        f"optimizer: Adam at {s['learning_rate']:g} for {s['epochs']} epochs, retraining at "
        f"{result['retraining']['learning_rate']:g} (chosen on validation among "
        f"{', '.join(f'{x:g}' for x in s['retrain_learning_rates'])}), batch "
        f"{s['batch_size']}; the paper used Caffe's SGD with momentum and retrained at a "
        "lower rate than it trained",
        f"pruning: {s['rounds']} rounds to {mapping} by exact per-layer "
        f"counts, {s['retrain_epochs']} retraining epoch(s) each; the paper pruned below a "
        "threshold of a quality parameter times each layer's standard deviation",
        "no dropout and no L2 regularization (the paper retrained with L2); " + scaling,
        (f"{len(result['seeds'])} seeds with 95 % t-intervals; the paper reports one run"
         if len(result["seeds"]) > 1 else
         "1 seed: no interval, so no significance test and no sparsity is claimed as "
         "reached; the paper reports one run"),
    ]


def _pct(m, ci):
    if m is None:
        return "-"
    if ci[0] is None:
        return f"{m:.2f} %"
    return f"{m:.2f} % [{ci[0]:.2f}, {ci[1]:.2f}]"


def _signed(d):
    lo, hi = d["ci95"]
    if lo is None:
        return f"{d['mean']:+.2f}"
    return f"{d['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def format_han2015(result):
    """The Han et al. 2015 part as text: the paper's row, ours, and every round.

    Parameters
    ----------
    result : dict
        As :func:`han2015_part` returns.

    Returns
    -------
    str
        Lines separated by newlines, no trailing newline. Errors in %, with 95 %
        t-intervals over the seeds in brackets.
    """
    p, d = result["paper"], result["dense"]
    sp = result["data"]["splits"]
    n = len(result["seeds"])
    net = "MLP " + "-".join(str(h) for h in [*result["settings"]["hidden"], 10])
    if result["settings"]["hidden"] == [300, 100]:
        net = p["network"]
    lines = [f"Han et al. 2015 in miniature: {net}, iterative magnitude pruning with "
             "retraining",
             f"data {result['data']['name']}: train {sp['train']}, validation "
             f"{sp['validation']}, test {sp['test']}; {n} seed{'s' if n != 1 else ''}; test "
             "errors, 95 % t-interval over the seeds in brackets",
             "",
             f"{'':22}{'weights':>9}{'kept':>9}{'ratio':>7}  {'error dense':<25}"
             "error pruned"]
    lines.append(f"{'paper (MNIST 60k)':22}{p['weights_before']:>9,}{p['weights_after']:>9,}"
                 f"{p['compression']:>6.0f}x  {p['error_before_percent']:.2f} %{'':19}"
                 f"{p['error_after_percent']:.2f} %")
    r = result["reached"]
    here = f"here ({result['data']['name']})"
    dense = _pct(d["test_error_mean"], d["test_error_ci95"])
    if result.get("note"):
        last = result["rounds"][-1]
        lines.append(f"{here:22}{result['n_weights']:>9,}{last['weights_kept']:>9,}"
                     f"{last['compression']:>6.1f}x  {dense:<25}"
                     f"{_pct(last['test_error_mean'], last['test_error_ci95'])} (last round)")
        lines.append(f"sparsity reached: none claimed ({result['note']})")
    elif r is None:
        lines.append(f"{here:22}{result['n_weights']:>9,}  no round without a significant "
                     f"validation loss; dense {dense}")
    else:
        lines.append(f"{here:22}{result['n_weights']:>9,}{r['weights_kept']:>9,}"
                     f"{r['compression']:>6.1f}x  {dense:<25}"
                     f"{_pct(r['test_error_mean'], r['test_error_ci95'])}")
        lines.append(f"sparsity reached without a significant validation loss: "
                     f"{r['sparsity']:.1%} (round {r['round']})")
        lines.append(f"  pruned - dense on test {_signed(r['vs_dense_test'])} points: "
                     f"{r['vs_dense_test']['verdict']}; pruned - dense control "
                     f"{_signed(r['vs_control_test'])}: {r['vs_control_test']['verdict']}")
    cands = ", ".join(f"{c['learning_rate']:g}: {c['final_val_error_mean']:.2f} %"
                      for c in result["retraining"]["candidates"])
    lines.append(f"retraining rate {result['retraining']['learning_rate']:g}, chosen on the "
                 f"validation error after the last round ({cands})")
    lines += ["",
              f"{'round':>5}  {'zeros per layer':<16}{'total':>6}{'kept':>8}  "
              f"{'no retrain':<11}{'retrained':<25}{'dense control':<25}"
              f"{'pruned - dense':<25}on validation"]
    for rec in result["rounds"]:
        layers = "/".join(f"{s:.0%}" for s in rec["layer_sparsity"])
        lines.append(f"{rec['round']:>5}  {layers:<16}{rec['sparsity']:>6.1%}"
                     f"{rec['weights_kept']:>8,}  "
                     f"{rec['before_retraining_test_error_mean']:>6.2f} %   "
                     f"{_pct(rec['test_error_mean'], rec['test_error_ci95']):<25}"
                     f"{_pct(rec['control_test_error_mean'], rec['control_test_error_ci95']):<25}"
                     f"{_signed(rec['vs_dense_test']):<25}{rec['vs_dense_val']['verdict']}")
    lines += ["", "what differs from the paper:"]
    lines += [f"- {w}" for w in result["what_differs"]]
    secs = result["seconds"]
    per_seed = ", ".join(f"{s:.0f}" for s in secs["per_seed"])
    lines.append(f"wall time {secs['total']:.0f} s ({per_seed} s per seed)")
    return "\n".join(lines)


def study_part(task, config, context):
    """``minscale study --part han2015``: :func:`han2015_part` with the study's settings.

    Parameters
    ----------
    task : dict
        The study's task (train, validation and test splits).
    config : StudyConfig
        ``hidden`` (``--hidden 300,100`` for LeNet-300-100), ``blas_threads`` and ``quick``
        (``--quick``: 5 dense epochs, 3 rounds of 1 retraining epoch) are used; the
        part's own budgets otherwise (20 dense epochs, 5 rounds of 4).
    context : dict
        ``seeds`` and ``jobs`` (:func:`minscale.study.runs.register_part`).

    Returns
    -------
    dict
        As :func:`han2015_part`, whose ``text`` the study's text report prints.
    """
    budgets = dict(epochs=5, rounds=3, retrain_epochs=1) if config.quick else {}
    return han2015_part(task, hidden=config.hidden, seeds=context["seeds"],
                        jobs=context["jobs"], blas_threads=config.blas_threads, **budgets)


# the part trains its own dense model: the study's learning-rate sweep is not needed
register_part("han2015", study_part, needs_baseline=False)
