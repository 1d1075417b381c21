"""The study's width and depth part: test loss against model size, and a fitted power law.

:func:`width_depth_part` trains the study's MLP at every hidden width of a doubling grid and
every depth, from several seeds, and reports per (depth, width) the parameter count, the
counted training FLOPs per sample (:func:`minscale.study.scaling.training_flops_per_sample`),
the wall time of training and the test loss with its 95 % interval; per depth, the law
``L(N) = c + a * N**(-alpha)`` fitted to the mean test losses
(:func:`minscale.study.scaling.fit_power_law`). :func:`run_width_depth` is its entry for
:func:`minscale.study.runs.register_part`.
"""
from __future__ import annotations

import functools
import time

from .._checks import check_int, check_real
from ..data import plain
from ..optim import Adam
from ..schedules import InverseTimeDecay
from ..train import DivergenceError
from .runs import build_model, measure, register_part
from .scaling import fit_power_law, training_flops_per_sample
from .seeds import map_seeds
from .stats import mean_ci95

__all__ = ["WIDTHS", "WIDTH_DEPTH_PRESETS", "width_depth_part", "width_depth_text",
           "run_width_depth"]

#: the default grid of hidden widths: 4 .. 256, doubling
WIDTHS = (4, 8, 16, 32, 64, 128, 256)

#: budgets of the part: the full study and ``--quick`` (epochs per run, bootstrap resamples)
WIDTH_DEPTH_PRESETS = {
    "full": {"widths": WIDTHS, "depths": (1, 2), "epochs": 20, "n_bootstrap": 1000},
    "quick": {"widths": WIDTHS, "depths": (1, 2), "epochs": 5, "n_bootstrap": 200},
}


def _finite_or_none(x):
    return None if x is None or x != x or x in (float("inf"), float("-inf")) else float(x)


def _width_depth_seed(task, widths, depths, epochs, batch_size, learning_rate, decay_rate,
                      progress, seed):
    """Every (depth, width) from one seed: test loss and accuracy, validation loss, seconds."""
    n_batches = -(-task["X_train"].shape[0] // batch_size)
    out = []
    for depth in depths:
        for width in widths:
            model = build_model(task["X_train"].shape[1], task["y_train"].shape[1],
                                [width] * depth, "relu", seed, task["X_train"].dtype.name)
            model.compile(optimizer=Adam(InverseTimeDecay(learning_rate, decay_rate=decay_rate,
                                                          decay_steps=n_batches)))
            t0 = time.perf_counter()
            try:
                model.fit(task["X_train"], task["y_train"], epochs=epochs,
                          batch_size=batch_size, seed=seed, verbose=0)
                diverged = False
            except DivergenceError:
                diverged = True
            seconds = time.perf_counter() - t0
            test = measure(model.predict, task) if not diverged else {"loss": None,
                                                                      "accuracy": None}
            val = (measure(model.predict, task, "val")["loss"]
                   if not diverged and "X_val" in task else None)
            out.append({"depth": depth, "width": width, "loss": test["loss"],
                        "accuracy": test["accuracy"], "val_loss": val, "seconds": seconds,
                        "updates": int(model.optimizer.iterations),
                        "n_params": model.count_params()})
            if progress is not None:
                progress(f"depth {depth}, width {width}")
    return out


def _interval(values):
    if any(v is None for v in values):
        return None, [None, None]
    m, lo, hi = mean_ci95(values)
    return m, [_finite_or_none(lo), _finite_or_none(hi)]


def width_depth_part(task, seeds, *, widths=WIDTHS, depths=(1, 2), epochs=20, batch_size=32,
                     learning_rate=0.01, decay_rate=0.0, n_bootstrap=1000, jobs=1, pool=None,
                     blas_threads=1, progress=None):
    """Test loss against hidden width and depth, from several seeds, with a power law per depth.

    Parameters
    ----------
    task : dict
        As :func:`minscale.commands._common.load_task` returns: ``X_train``, ``y_train``,
        ``X_test``, ``y_test``, ``info``, ``labels_test`` (and ``X_val`` ... when present:
        the validation loss is recorded beside the test loss).
    seeds : sequence of int, length n >= 1
        Seed i gives run i its initial weights and shuffling.
    widths : sequence of int, each >= 1, default :data:`WIDTHS` (4 .. 256, doubling)
        Hidden widths; every hidden layer of a model has the same width.
    depths : sequence of int, each >= 1, default (1, 2)
        Numbers of hidden layers.
    epochs : int, >= 1, default 20
    batch_size : int, >= 1, default 32
    learning_rate : float, > 0, default 0.01
        eta0 of Adam with inverse-time decay (the study passes its baseline's).
    decay_rate : float, >= 0, default 0.0
        Per epoch: eta(t) = eta0 / (1 + decay_rate * t / updates_per_epoch).
    n_bootstrap : int, >= 0, default 1000
        Resamples of the bootstrap interval of alpha.
    jobs : int, >= 1, default 1
        Worker processes for the seeds (:func:`minscale.study.seeds.map_seeds`); the losses
        do not depend on it, the times do (the workers share the cores).
    pool : ProcessPoolExecutor, optional
        A :func:`minscale.study.seeds.seed_pool` to run in.
    blas_threads : int or None, default 1
    progress : callable, optional
        Called with a label after each run (with ``jobs == 1`` only).

    Returns
    -------
    dict
        JSON-ready: ``widths``, ``depths``, ``epochs``, ``batch_size``, ``learning_rate``,
        ``decay_rate``, ``seeds``, ``flops_note`` (what is counted), ``rows`` and ``fits``.
        A row per (depth, width): ``depth``, ``width``, ``hidden`` (list), ``n_params``,
        ``flops_per_sample`` (training, counted), ``training_flops`` (flops_per_sample x
        training rows x epochs), ``updates``, ``seconds_mean`` and ``seconds_ci95`` (wall
        time of ``fit``), ``losses`` (test, per seed), ``loss_mean``, ``loss_ci95``,
        ``accuracy_mean`` (classification, else None), ``val_loss_mean`` (or None),
        ``diverged`` (in any seed). ``fits``: one per depth, ``{"depth", **fit_power_law
        result}`` over (n_params, loss_mean) of its rows, or ``{"depth", "error"}`` when the
        fit is impossible (fewer than 3 widths with a finite loss).

    Raises
    ------
    ValueError, TypeError
        A grid value or budget out of range, naming it (``widths[i]`` ...).

    Notes
    -----
    The power law is fitted to the mean test loss over seeds at each width; the test split
    only reports here (nothing is chosen). Every run starts from the initial weights of its
    seed and shuffles with it; the learning rate is the same for every size, so the curve
    is the size's effect at a fixed recipe.
    """
    widths = tuple(check_int(f"widths[{i}]", w, 1) for i, w in enumerate(widths))
    depths = tuple(check_int(f"depths[{i}]", d, 1) for i, d in enumerate(depths))
    if not widths or not depths:
        raise ValueError(f"widths and depths must each hold at least one value, got "
                         f"{plain(widths)!r} and {plain(depths)!r}")
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    learning_rate = check_real("learning_rate", learning_rate, lo=0.0, lo_open=True)
    decay_rate = check_real("decay_rate", decay_rate, lo=0.0)
    n_bootstrap = check_int("n_bootstrap", n_bootstrap, 0)
    seeds = [check_int(f"seeds[{i}]", s, 0) for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    fn = functools.partial(_width_depth_seed, task, widths, depths, epochs, batch_size,
                           learning_rate, decay_rate, progress if jobs == 1 else None)
    per_seed = map_seeds(fn, seeds, jobs, blas_threads, pool)
    n_in, n_out = task["X_train"].shape[1], task["y_train"].shape[1]
    n_train = int(task["X_train"].shape[0])
    rows = []
    for i, first in enumerate(per_seed[0]):
        runs = [runs_of_seed[i] for runs_of_seed in per_seed]
        sizes = [n_in] + [first["width"]] * first["depth"] + [n_out]
        flops = training_flops_per_sample(sizes)
        loss_mean, loss_ci = _interval([r["loss"] for r in runs])
        sec_mean, sec_ci = _interval([r["seconds"] for r in runs])
        acc = [r["accuracy"] for r in runs]
        val = [r["val_loss"] for r in runs]
        rows.append({
            "depth": first["depth"], "width": first["width"], "hidden": sizes[1:-1],
            "n_params": first["n_params"], "flops_per_sample": flops,
            "training_flops": flops * n_train * epochs, "updates": first["updates"],
            "seconds_mean": sec_mean, "seconds_ci95": sec_ci,
            "seeds": list(seeds), "losses": [r["loss"] for r in runs],
            "loss_mean": loss_mean, "loss_ci95": loss_ci,
            "accuracy_mean": (None if any(a is None for a in acc) else
                              float(sum(acc) / len(acc))),
            "val_loss_mean": None if any(v is None for v in val) else float(sum(val) / len(val)),
            "diverged": any(r["loss"] is None for r in runs)})
    fits = []
    for depth in depths:
        pts = [(r["n_params"], r["loss_mean"]) for r in rows
               if r["depth"] == depth and r["loss_mean"] is not None]
        try:
            fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts],
                                n_bootstrap=n_bootstrap, seed=0)
        except ValueError as exc:
            fit = {"error": str(exc)}
        fits.append({"depth": depth, **fit})
    return {"widths": list(widths), "depths": list(depths), "epochs": epochs,
            "batch_size": batch_size, "learning_rate": learning_rate,
            "decay_rate": decay_rate, "seeds": list(seeds),
            "flops_note": ("training FLOPs per sample = 3 x forward, forward = sum over Dense "
                           "layers of 2*in*out + out, + one per hidden unit (ReLU); loss, "
                           "optimizer and data movement not counted"),
            "rows": rows, "fits": fits, "text": width_depth_text(rows, fits)}


def width_depth_text(rows, fits):
    """The part's lines of the text report: one table row per (depth, width), then the fits.

    Parameters
    ----------
    rows, fits : list of dict
        As :func:`width_depth_part` returns them.

    Returns
    -------
    list of str
    """
    def num(x, fmt=".4g"):
        return "n/a" if x is None else format(x, fmt)

    lines = ["Width and depth (test loss: mean and 95 % interval over seeds)",
             f"  {'depth':>5} {'width':>5} {'params':>7} {'FLOPs/sample':>12} "
             f"{'train s':>8} {'loss':>8}  {'95 % interval':<19} {'accuracy':>8}"]
    for r in rows:
        lo, hi = r["loss_ci95"]
        ci = f"[{num(lo)}, {num(hi)}]"
        lines.append(f"  {r['depth']:>5} {r['width']:>5} {r['n_params']:>7,} "
                     f"{r['flops_per_sample']:>12,} {num(r['seconds_mean'], '.3f'):>8} "
                     f"{num(r['loss_mean']):>8}  {ci:<19} {num(r['accuracy_mean'], '.3f'):>8}")
    lines.append("  Power law L(N) = c + a * N**(-alpha) over parameters N (robust fit in "
                 "log space, percentile bootstrap for alpha):")
    for f in fits:
        if "error" in f:
            lines.append(f"    depth {f['depth']}: no fit ({f['error']})")
            continue
        lo, hi = f["alpha_ci95"]
        lines.append(f"    depth {f['depth']}: alpha = {f['alpha']:.3g} [{num(lo, '.3g')}, "
                     f"{num(hi, '.3g')}], c = {f['c']:.3g}, a = {f['a']:.3g}, "
                     f"rms log residual {f['rmse_log']:.3g}")
    return lines


def run_width_depth(task, config, context):
    """The part as :func:`minscale.study.runs.register_part` calls it.

    Parameters
    ----------
    task : dict
    config : StudyConfig
        ``quick`` picks :data:`WIDTH_DEPTH_PRESETS` (``"quick"`` or ``"full"``); ``batch_size``
        and ``blas_threads`` are used; optional fields ``widths``, ``depths`` and
        ``width_epochs`` override the preset when the config has them.
    context : dict
        ``seeds``, ``jobs``, ``pool`` and ``baseline`` (its ``initial_learning_rate`` and
        ``decay_rate`` are the rate of every run).

    Returns
    -------
    dict
        As :func:`width_depth_part`.
    """
    preset = dict(WIDTH_DEPTH_PRESETS["quick" if config.quick else "full"])
    for field, key in (("widths", "widths"), ("depths", "depths"), ("width_epochs", "epochs")):
        value = getattr(config, field, None)
        if value is not None:
            preset[key] = value
    base = context["baseline"]
    return width_depth_part(task, context["seeds"], batch_size=config.batch_size,
                            learning_rate=base["initial_learning_rate"],
                            decay_rate=base["decay_rate"], jobs=context.get("jobs", 1),
                            pool=context.get("pool"),
                            blas_threads=config.blas_threads, **preset)


register_part("width_depth", run_width_depth, default=True)
