"""The study's recovery part: after pruning, fine-tuning vs weight rewinding vs re-initialization.

At each sparsity the mask is the one magnitude pruning finds on the trained baseline; the
survivors then start from four places and train with the mask for the same number of
updates (:func:`recovery_part`):

- **fine-tune**: their trained values, at the study's constant fine-tuning rate (Han et al.
  2015);
- **rewind to 0**: their initial values (Frankle & Carbin 2019, "The Lottery Ticket
  Hypothesis"), with the baseline's learning-rate schedule replayed from update 0;
- **rewind to k**: their values after ``k`` updates of the baseline's training (Frankle et al.
  2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"), the schedule replayed
  from update k;
- **random re-init**: a fresh draw from the initializers (Frankle & Carbin's control), the
  schedule from update 0.

Every variant is compared with one **dense control**: the unpruned baseline trained for the
same number of updates, at the fine-tuning rate, with the same shuffling (the control of
every fine-tuned variant of the study). Renda, Frankle & Carbin 2020 ("Comparing Rewinding
and Fine-tuning in Neural Network Pruning") compare the same three kinds of retraining.
:func:`run_recovery` is the part's entry for :func:`minscale.study.runs.register_part`.
"""
from __future__ import annotations

import functools

import numpy as np

from .._checks import check_int, check_real
from ..data import plain
from ..optim import Adam
from ..prune import WeightSnapshots, prune, reinitialize, rewind
from ..schedules import InverseTimeDecay
from ..train import DivergenceError
from .runs import build_model, measure, register_part
from .seeds import map_seeds, variant_record

__all__ = ["RECOVERY_METHODS", "RECOVERY_PRESETS", "recovery_part", "recovery_text",
           "run_recovery"]

#: the variants at each sparsity, in the order of the result's rows
RECOVERY_METHODS = ("fine-tune", "rewind to 0", "rewind to k", "random re-init")

#: budgets of the part: the full study and ``--quick``
RECOVERY_PRESETS = {
    "full": {"sparsities": (0.5, 0.8, 0.9, 0.95), "epochs": 30, "retrain_epochs": 30},
    "quick": {"sparsities": (0.5, 0.8, 0.9, 0.95), "epochs": 8, "retrain_epochs": 8},
}

#: the spawn key of the re-initialization draw: numpy.random.default_rng([seed, REINIT_KEY])
REINIT_KEY = 1


def _shifted_schedule(learning_rate, decay_rate, n_batches, k):
    """Inverse-time decay as seen from update k: eta(t + k) = eta0' / (1 + d' t / n_batches)."""
    scale = 1.0 + decay_rate * k / n_batches
    return InverseTimeDecay(learning_rate / scale, decay_rate=decay_rate / scale,
                            decay_steps=n_batches)


def _train(model, task, schedule, epochs, batch_size, seed, callbacks=None):
    model.compile(optimizer=Adam(schedule))
    try:
        model.fit(task["X_train"], task["y_train"], epochs=epochs, batch_size=batch_size,
                  seed=seed, verbose=0, callbacks=callbacks)
    except DivergenceError:
        return None, int(model.optimizer.iterations)
    return measure(model.predict, task), int(model.optimizer.iterations)


def _recovery_seed(task, hidden, sparsities, method, epochs, retrain_epochs, batch_size,
                   learning_rate, decay_rate, finetune_learning_rate, rewind_updates, progress,
                   seed):
    """One seed: the baseline (with its snapshots), the dense control, every variant."""
    n_batches = -(-task["X_train"].shape[0] // batch_size)
    k = n_batches if rewind_updates is None else rewind_updates
    baseline = build_model(task["X_train"].shape[1], task["y_train"].shape[1], list(hidden),
                           "relu", seed, task["X_train"].dtype.name)
    snaps = WeightSnapshots([0, k])
    base, _ = _train(baseline, task, _shifted_schedule(learning_rate, decay_rate, n_batches, 0),
                     epochs, batch_size, seed, [snaps])
    if base is None or k not in snaps.weights:
        raise ValueError(f"the recovery baseline diverged or trained fewer than "
                         f"rewind_updates = {k} updates")
    control_model = baseline.copy()
    control, control_updates = _train(control_model, task, finetune_learning_rate,
                                      retrain_epochs, batch_size, seed)
    out = {"baseline": base["loss"], "baseline_updates": int(baseline.optimizer.iterations),
           "control": None if control is None else control["loss"],
           "control_updates": control_updates, "k": k, "rows": []}
    for s in sparsities:
        pruned = prune(baseline.copy(), s, method=method, seed=seed)
        achieved = float(pruned.sparsity()["total"])
        for name in RECOVERY_METHODS:
            model = pruned.copy()
            if name == "fine-tune":
                schedule = finetune_learning_rate
            elif name == "rewind to 0":
                rewind(model, snaps.weights[0])
                schedule = _shifted_schedule(learning_rate, decay_rate, n_batches, 0)
            elif name == "rewind to k":
                rewind(model, snaps.weights[k])
                schedule = _shifted_schedule(learning_rate, decay_rate, n_batches, k)
            else:
                reinitialize(model, np.random.default_rng([seed, REINIT_KEY]))
                schedule = _shifted_schedule(learning_rate, decay_rate, n_batches, 0)
            m, updates = _train(model, task, schedule, retrain_epochs, batch_size, seed)
            kept = bool((model.params[~model.mask] == 0).all())
            out["rows"].append({"sparsity": float(s), "method": name,
                                "achieved_sparsity": achieved,
                                "loss": None if m is None else m["loss"],
                                "accuracy": None if m is None else m["accuracy"],
                                "updates": updates, "mask_kept": kept})
            if progress is not None:
                progress(f"{name} {s:g}")
    return out


def recovery_part(task, seeds, *, hidden=(32,), sparsities=(0.5, 0.8, 0.9, 0.95),
                  method="magnitude", epochs=30, retrain_epochs=30, batch_size=32,
                  learning_rate=0.01, decay_rate=0.0, finetune_learning_rate=None,
                  rewind_updates=None, jobs=1, pool=None, blas_threads=1, progress=None):
    """Recovery after pruning: fine-tuning, rewinding to 0 and to k, re-initialization.

    Parameters
    ----------
    task : dict
        As :func:`minscale.commands._common.load_task` returns (``X_train``, ``y_train``,
        ``X_test``, ``y_test``, ``info``, ``labels_test``); only the test split is measured.
    seeds : sequence of int, length n >= 1
        Seed i: initial weights and shuffling of every run, the random re-initialization
        draw (``numpy.random.default_rng([seed, 1])``) and ``method="random"``'s masks.
    hidden : sequence of int, default (32,)
        Hidden widths of the MLP (ReLU).
    sparsities : sequence of float in (0, 1], default (0.5, 0.8, 0.9, 0.95)
        Distinct and increasing.
    method : {"magnitude", "global", "random"}, default "magnitude"
        Mask rule (:func:`minscale.prune.prune`), one-shot from the trained baseline.
    epochs : int, >= 1, default 30
        The baseline's training (Adam, `learning_rate`, `decay_rate`).
    retrain_epochs : int, >= 1, default 30
        Training of every variant and of the control: all get the same number of updates,
        ``retrain_epochs * ceil(n_train / batch_size)``.
    batch_size : int, >= 1, default 32
    learning_rate : float, > 0, default 0.01
        eta0 of the baseline's inverse-time decay schedule (the study passes its baseline's).
    decay_rate : float, >= 0, default 0.0
        Per epoch: eta(t) = eta0 / (1 + decay_rate * t / updates_per_epoch).
    finetune_learning_rate : float, > 0, optional
        Constant rate of fine-tuning and of the dense control; default ``0.1 *
        learning_rate`` (the study's ``finetune_factor``).
    rewind_updates : int, >= 1, optional
        k, the update whose weights "rewind to k" restores; default one epoch's updates.
        At most the baseline's updates.
    jobs : int, >= 1, default 1
    pool : ProcessPoolExecutor, optional
    blas_threads : int or None, default 1
    progress : callable, optional

    Returns
    -------
    dict
        JSON-ready: ``method``, ``sparsities``, ``epochs``, ``retrain_epochs``,
        ``learning_rate``, ``decay_rate``, ``finetune_learning_rate``, ``rewind_updates``
        (k), ``updates`` (of every variant and of the control), ``seeds``, ``baseline``
        (``losses``, ``loss_mean``, ``loss_ci95``, ``updates``), ``control_name``, ``rows``
        and ``text``. A row per (sparsity, method) is a
        :func:`minscale.study.seeds.variant_record` (``name``, ``seeds``, ``losses``,
        ``loss_mean``, ``loss_ci95``, ``control`` {name, losses, loss_mean, loss_ci95},
        ``effect`` = loss_mean / control loss_mean, ``difference_ci95``, ``verdict``) plus
        ``sparsity``, ``method``, ``achieved_sparsity``, ``accuracy_mean``, ``updates``,
        ``control_updates`` and ``mask_kept`` (pruned weights were exactly 0 after training
        in every seed).

    Raises
    ------
    ValueError, TypeError
        An argument out of range (naming it), or a baseline that diverged or trained fewer
        than k updates.

    Notes
    -----
    The part trains its own baseline per seed (same initial weights, schedule, epochs and
    shuffling as asked) because rewinding needs the weights it had after k updates
    (:class:`minscale.prune.recovery.WeightSnapshots`). The schedule replayed from update k
    is ``eta(t + k)``: for inverse-time decay, ``eta0 / s / (1 + (d / s) t / n_b)`` with
    ``s = 1 + d k / n_b``. Every retraining starts a fresh Adam (no moments), the mask held:
    pruned weights stay exactly 0.
    """
    hidden = tuple(check_int(f"hidden[{i}]", h, 1) for i, h in enumerate(hidden))
    sparsities = tuple(check_real(f"sparsities[{i}]", s, 0.0, 1.0, lo_open=True)
                       for i, s in enumerate(sparsities))
    if not sparsities or list(sparsities) != sorted(set(sparsities)):
        raise ValueError(f"sparsities must be distinct and increasing, got "
                         f"{plain(sparsities)!r}")
    if method not in ("magnitude", "global", "random"):
        raise ValueError(f"method must be 'magnitude', 'global' or 'random', got {method!r}")
    epochs = check_int("epochs", epochs, 1)
    retrain_epochs = check_int("retrain_epochs", retrain_epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    learning_rate = check_real("learning_rate", learning_rate, lo=0.0, lo_open=True)
    decay_rate = check_real("decay_rate", decay_rate, lo=0.0)
    finetune_learning_rate = (0.1 * learning_rate if finetune_learning_rate is None else
                              check_real("finetune_learning_rate", finetune_learning_rate,
                                         lo=0.0, lo_open=True))
    n_batches = -(-task["X_train"].shape[0] // batch_size)
    if rewind_updates is not None:
        rewind_updates = check_int("rewind_updates", rewind_updates, 1, epochs * n_batches)
    seeds = [check_int(f"seeds[{i}]", s, 0) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    fn = functools.partial(_recovery_seed, task, hidden, sparsities, method, epochs,
                           retrain_epochs, batch_size, learning_rate, decay_rate,
                           finetune_learning_rate, rewind_updates,
                           progress if jobs == 1 else None)
    outs = map_seeds(fn, seeds, jobs, blas_threads, pool)
    k = outs[0]["k"]
    control_name = (f"dense, {retrain_epochs} more epochs at {finetune_learning_rate:g} "
                    f"from the baseline")
    control_losses = [o["control"] for o in outs]
    rows = []
    for i, first in enumerate(outs[0]["rows"]):
        runs = [o["rows"][i] for o in outs]
        acc = [r["accuracy"] for r in runs]
        name = first["method"].replace(" k", f" k={k}")
        rows.append(variant_record(
            f"{name}, sparsity {first['sparsity']:g}", [r["loss"] for r in runs],
            control_name, control_losses, seeds,
            sparsity=first["sparsity"], method=first["method"],
            achieved_sparsity=first["achieved_sparsity"],
            accuracy_mean=(None if any(a is None for a in acc) else float(np.mean(acc))),
            updates=first["updates"], control_updates=outs[0]["control_updates"],
            mask_kept=all(r["mask_kept"] for r in runs)))
    base = variant_record("baseline", [o["baseline"] for o in outs], control_name,
                          control_losses, seeds)
    result = {"method": method, "sparsities": list(sparsities), "hidden": list(hidden),
              "epochs": epochs, "retrain_epochs": retrain_epochs,
              "learning_rate": learning_rate, "decay_rate": decay_rate,
              "finetune_learning_rate": finetune_learning_rate, "rewind_updates": k,
              "updates": outs[0]["control_updates"], "seeds": list(seeds),
              "baseline": {"losses": base["losses"], "loss_mean": base["loss_mean"],
                           "loss_ci95": base["loss_ci95"],
                           "updates": outs[0]["baseline_updates"]},
              "control_name": control_name,
              "control": {k_: base["control"][k_] for k_ in ("losses", "loss_mean",
                                                              "loss_ci95")},
              "rows": rows}
    result["text"] = recovery_text(result)
    return result


def recovery_text(result):
    """The part's lines of the text report.

    Parameters
    ----------
    result : dict
        As :func:`recovery_part` returns it.

    Returns
    -------
    list of str
    """
    def num(x, fmt=".4g"):
        return "n/a" if x is None else format(x, fmt)

    def ci(pair):
        return f"[{num(pair[0])}, {num(pair[1])}]"

    c = result["control"]
    lines = [f"Recovery after pruning ({result['method']} masks from the trained baseline; "
             f"every variant and the control: {result['updates']:,} updates; k = "
             f"{result['rewind_updates']} updates)",
             f"  baseline {num(result['baseline']['loss_mean'])} "
             f"{ci(result['baseline']['loss_ci95'])}; control ({result['control_name']}) "
             f"{num(c['loss_mean'])} {ci(c['loss_ci95'])}",
             f"  {'sparsity':>8} {'method':<15} {'loss':>8}  {'loss 95 % interval':<19} "
             f"{'effect':>6}  {'verdict vs control'}"]
    for r in result["rows"]:
        method = r["method"].replace(" k", f" k={result['rewind_updates']}")
        lines.append(f"  {r['sparsity']:>8g} {method:<15} {num(r['loss_mean']):>8}  "
                     f"{ci(r['loss_ci95']):<19} {num(r['effect'], '.3f'):>6}  {r['verdict']}")
    return lines


def run_recovery(task, config, context):
    """The part as :func:`minscale.study.runs.register_part` calls it.

    Parameters
    ----------
    task : dict
    config : StudyConfig
        ``quick`` picks :data:`RECOVERY_PRESETS`; ``hidden``, ``batch_size`` and
        ``blas_threads`` are used; an optional ``recovery_sparsities`` field overrides the
        preset's sparsities.
    context : dict
        ``seeds``, ``jobs``, ``pool``, ``finetune_learning_rate`` and ``baseline`` (its
        ``initial_learning_rate``, ``decay_rate`` and ``epochs``: the baseline retrained here).

    Returns
    -------
    dict
        As :func:`recovery_part`.
    """
    preset = dict(RECOVERY_PRESETS["quick" if config.quick else "full"])
    if getattr(config, "recovery_sparsities", None) is not None:
        preset["sparsities"] = config.recovery_sparsities
    base = context["baseline"]
    preset["epochs"] = base.get("epochs", preset["epochs"])
    preset["retrain_epochs"] = preset["epochs"]
    return recovery_part(task, context["seeds"], hidden=config.hidden,
                         batch_size=config.batch_size,
                         learning_rate=base["initial_learning_rate"],
                         decay_rate=base["decay_rate"],
                         finetune_learning_rate=context["finetune_learning_rate"],
                         jobs=context.get("jobs", 1), pool=context.get("pool"),
                         blas_threads=config.blas_threads, **preset)


register_part("recovery", run_recovery, default=True)
