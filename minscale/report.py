"""Reports of a study: plain-text tables, CSV, JSON and a PNG plot.

Pure formatting functions first (numbers, bytes, times, one table), then the renderers of a
:func:`minscale.study.run_study` result. Only the plot needs an optional dependency
(matplotlib, the ``plot`` extra), imported when a plot is asked for.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
from importlib import resources

import numpy as np

from .data import plain
from .io import atomic_write

__all__ = [
    "format_number",
    "format_bytes",
    "format_seconds",
    "format_table",
    "format_interval",
    "render_text",
    "csv_rows",
    "write_csv",
    "write_json",
    "plot_formats",
    "load_schema",
    "plot",
    "CSV_COLUMNS",
    "PLOT_PANELS",
    "plot_width_depth",
]


# ----------------------------------------------------------------------------------------
# formatting


def format_number(x, digits=4):
    """`x` with `digits` significant digits; ``"-"`` for None, ``"nan"``/``"inf"`` kept.

    Parameters
    ----------
    x : float, int or None
    digits : int, >= 1, default 4

    Returns
    -------
    str

    Examples
    --------
    >>> format_number(0.123456), format_number(None), format_number(12345.6)
    ('0.1235', '-', '1.235e+04')
    """
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"x must be a real number or None, got {x!r}")
    return f"{float(x):.{int(digits)}g}"


def format_bytes(n):
    """Exact byte count with thousands separators (``"12,345"``); ``"-"`` for None.

    Examples
    --------
    >>> format_bytes(5764), format_bytes(None)
    ('5,764', '-')
    """
    if n is None:
        return "-"
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int number of bytes or None, got {plain(n)!r}")
    return f"{int(n):,}"


def format_seconds(s):
    """A duration in s, ms or us with 3 significant digits; ``"-"`` for None or NaN.

    Examples
    --------
    >>> format_seconds(0.000123), format_seconds(0.0456), format_seconds(2.5)
    ('123 us', '45.6 ms', '2.5 s')
    """
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    s = float(s)
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def format_table(headers, rows, align=None, indent=2):
    """A plain-text table: a header, a rule and one line per row, columns padded.

    Parameters
    ----------
    headers : sequence of str, length c
    rows : sequence of sequences of str, each of length c
    align : str of length c, optional
        ``"l"`` or ``"r"`` per column; default: first column left, the others right.
    indent : int, default 2
        Spaces before every line.

    Returns
    -------
    str
        Lines joined by newlines, no trailing newline.

    Raises
    ------
    ValueError
        A row or `align` whose length is not c, or an alignment other than l/r.

    Examples
    --------
    >>> print(format_table(["a", "bb"], [["x", "1"], ["yy", "22"]], indent=0))
    a   bb
    --  --
    x    1
    yy  22
    """
    c = len(headers)
    align = align or "l" + "r" * (c - 1)
    if len(align) != c or set(align) - {"l", "r"}:
        raise ValueError(f"align must be {c} characters of 'l'/'r', got {align!r}")
    cells = [list(map(str, headers))]
    for i, row in enumerate(rows):
        if len(row) != c:
            raise ValueError(f"rows[{i}] has {len(row)} cells, expected {c}")
        cells.append([str(x) for x in row])
    widths = [max(len(r[j]) for r in cells) for j in range(c)]
    pad = " " * indent

    def line(r):
        parts = [r[j].ljust(widths[j]) if align[j] == "l" else r[j].rjust(widths[j])
                 for j in range(c)]
        return (pad + "  ".join(parts)).rstrip()

    out = [line(cells[0]), line(["-" * w for w in widths])]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------
# text report


def _ratio(reference, nbytes):
    return None if not nbytes else reference / nbytes


def _acc(x):
    return "-" if x is None else f"{x:.4f}"


def _architecture(result):
    d = result["data"]
    hidden = result["config"]["hidden"]
    return "-".join(str(x) for x in [d["n_features"], *hidden, d["n_outputs"]])


def _few_seeds_warning(n):
    """One header line when 2 seeds make every 95 % interval very wide (t with 1 dof)."""
    if n != 2:
        return []
    from scipy import stats  # noqa: PLC0415  (optional; the study's intervals need it)
    return [f"warning: with fewer than 3 seeds the 95% intervals are very wide "
            f"(t_0.975,{n - 1} = {stats.t.ppf(0.975, n - 1):.1f}); use --seeds 3 or more"]


def format_interval(mean, ci, digits=4):
    """A mean and its 95 % interval as ``"0.03012 ± 0.0011"``; the mean alone without one.

    Parameters
    ----------
    mean : float or None
    ci : [low, high] of float or None, or None
        A t-interval (symmetric about the mean); None ends (one seed) print the mean only.
    digits : int, default 4
        Significant digits of the mean; the half-width gets 2.

    Returns
    -------
    str
        ``"-"`` for a None mean.

    Examples
    --------
    >>> format_interval(0.030123, [0.029, 0.031246]), format_interval(0.5, [None, None])
    ('0.03012 ± 0.0011', '0.5')
    """
    if mean is None:
        return "-"
    if not ci or ci[0] is None or ci[1] is None:
        return format_number(mean, digits)
    return f"{format_number(mean, digits)} ± {format_number((ci[1] - ci[0]) / 2, 2)}"


_VERDICT = {"better": "better", "worse": "worse", "no significant difference": "n.s.",
            "diverged": "diverged"}


def _effect(rec):
    return format_number(rec["effect"], 3)


def _verdict(rec):
    return _VERDICT.get(rec["verdict"], rec["verdict"])


def render_text(result):
    """The readable report of a study: one table per part and a closing summary.

    Parameters
    ----------
    result : dict
        A :func:`minscale.study.run_study` result (schema version 2).

    Returns
    -------
    str
        Ends with a newline. Losses are test-split means over the seeds ``± `` the
        half-width of their 95 % t-interval (:func:`format_interval`); "control" is the mean
        test loss of the variant's control, "effect" loss / control loss, "verdict" better,
        worse or n.s. (the paired interval includes 0).
    """
    d, base, cfg = result["data"], result.get("baseline"), result["config"]
    cls = d["task"] == "classification"
    seeds = result["seeds"]
    sp = d["splits"]
    out = []
    out.append(f"minscale study: {d['name']} ({d['task']}), {sp['train']} train / "
               f"{sp['validation']} validation / {sp['test']} test rows, {d['n_features']} "
               f"features -> {d['n_outputs']} output{'s' if d['n_outputs'] > 1 else ''}")
    kind = "ReLU hidden, linear output" if cfg["hidden"] else "linear"
    if base is None:
        # only parts that train their own models: no baseline, no sweep, no summary
        out.append(f"backend {result['backend']}; seeds {', '.join(map(str, seeds))}; "
                   f"{cfg['jobs']} job{'s' if cfg['jobs'] > 1 else ''}")
        out.extend(_few_seeds_warning(len(seeds)))
        for name in result.get("extra_parts", []):
            out.append("")
            out.extend(result[name].get("text") or [])
        out.append("")
        out.append(f"study time {result['seconds_total']:.1f} s")
        return "\n".join(out) + "\n"
    out.append(f"model {_architecture(result)} ({kind}), "
               f"{base['n_params']:,} parameters; backend {result['backend']}; "
               f"{cfg['blas_threads'] or 'default'} BLAS thread"
               f"{'' if cfg['blas_threads'] == 1 else 's'}; batch "
               f"{cfg['batch_size']}{'; --quick' if cfg['quick'] else ''}")
    out.append(f"seeds {', '.join(map(str, seeds))} ({len(seeds)}; initial weights, shuffling, "
               f"masks vary; the split is fixed), {cfg['jobs']} job"
               f"{'s' if cfg['jobs'] > 1 else ''}")
    out.extend(_few_seeds_warning(len(seeds)))
    out.append(f"loss = test-split {d['loss_unit']}, mean over seeds"
               + (" ± half-width of the 95% t-interval" if len(seeds) > 1 else
                  " (one seed: no interval)")
               + (f"; y_scale {d['y_scale']:.6g} (multiply a loss by y_scale**2 for the "
                  "target's unit)" if not cls and d["y_scale"] is not None else ""))
    out.append("choices (baseline rate, loss target, regularization strength) use the "
               "validation split only; the test split is only reported")
    out.append("control = the dense float model with the same extra updates from the same "
               "baseline (int8: clamped to the same ranges);")
    out.append("effect = loss / control loss; verdict: better / worse when the 95% interval of "
               "the paired differences excludes 0, else n.s.")
    out.append("bytes = exact storage with float32 values (4 bytes) for float models")

    # 1 -------------------------------------------------------------------------------------
    lr = result["learning_rate"]
    out.append("")
    out.append(f"1. Learning rate: Adam, eta(t) = eta0 / (1 + decay * t / {lr['decay_steps']}) "
               f"(decay per epoch of {lr['decay_steps']} updates), {cfg['epochs']} epochs each")
    out.append(f"   loss target = {lr['target_factor']:g} x best final validation loss = "
               f"{format_number(lr['target'])}, checked on the mean validation loss at the end "
               "of each epoch")
    headers = ["eta0", "decay", "final lr", "val loss"] + (["val acc"] if cls else []) + \
        ["test loss"] + (["test acc"] if cls else []) + ["target reached at"]
    rows = []
    for i, r in enumerate(lr["runs"]):
        reached = ("diverged" if r["diverged"] else "not reached" if r["target_update"] is None
                   else f"update {r['target_update']:,} (epoch {r['target_epoch']})")
        row = [f"{r['initial_learning_rate']:g}", f"{r['decay_rate']:g}",
               format_number(r["final_learning_rate"], 3),
               format_number(r["final_loss"]) + (" *" if i == base["run"] else "")]
        if cls:
            row.append(_acc(r["final_accuracy"]))
        row.append(format_interval(r["test_loss_mean"], r["test_loss_ci95"]))
        if cls:
            row.append(_acc(r["test_accuracy"]))
        rows.append(row + [reached])
    out.append(format_table(headers, rows, "r" * (len(headers) - 1) + "l"))
    out.append(f"   * baseline: eta0 {base['initial_learning_rate']:g}, decay "
               f"{base['decay_rate']:g} ({base['selection']}); test loss "
               f"{format_interval(base['loss_mean'], base['loss_ci95'])}")

    # 2 -------------------------------------------------------------------------------------
    if "pruning" in result:
        pr = result["pruning"]
        out.append("")
        out.append(f"2. Pruning, iterative: from a copy of the baseline, each level prunes "
                   f"further and fine-tunes {pr['finetune_epochs']} epochs (Adam at "
                   f"{pr['finetune_learning_rate']:.3g}),")
        out.append("   the same for every method; sparsity 0 is the baseline itself; control = "
                   "the same fine-tunings without pruning")
        headers = ["method", "sparsity", "loss", "control", "effect", "verdict"] + \
            (["accuracy"] if cls else []) + ["updates", "nnz", "CSR B", "bitmask B",
                                             "dense predict", "CSR predict"]
        rows = []
        for r in pr["rows"] + [pr["gradual"]]:
            row = [r["method"], f"{r['sparsity']:g}",
                   format_interval(r["loss_mean"], r["loss_ci95"]),
                   format_number(r["control"]["loss_mean"]), _effect(r), _verdict(r)]
            if cls:
                row.append(_acc(r["accuracy"]))
            rows.append(row + [f"{r['updates']:,}", f"{r['nnz']:,}",
                               format_bytes(r["nbytes_csr"]), format_bytes(r["nbytes_bitmask"]),
                               format_seconds(r["predict_seconds_dense"]),
                               format_seconds(r["predict_seconds_csr"])])
        out.append(format_table(headers, rows))
        g = pr["gradual"]["schedule"]
        out.append(f"   updates = optimizer updates since the baseline (its control had the same:"
                   f" {pr['gradual']['control']['name']} for gradual)")
        out.append(f"   nnz = non-zero weights of {pr['rows'][0]['n_weights']:,}; dense B = "
                   f"{pr['rows'][0]['nbytes_dense']:,}; B = bytes with float32 values (bitmask:"
                   " 1 bit per weight, then the non-zeros)")
        out.append(f"   predict = median time for the {d['n_test']} test rows (seed "
                   f"{seeds[0]}); gradual: polynomial 0 -> "
                   f"{g['final_sparsity']:g} over updates 0..{g['end_step']}, masks every "
                   f"{g['frequency']} updates, in the budget of the iterative path to that level")

    # 3 -------------------------------------------------------------------------------------
    if "quantization" in result:
        q = result["quantization"]
        out.append("")
        out.append("3. Quantization of the baseline's weights: PTQ = post-training, QAT = the "
                   "same fine-tuning budget with fake quantization")
        out.append("   control: PTQ the baseline, QAT the baseline fine-tuned alike without "
                   "quantization; int8 rows: clamped like int8 (input and every layer's "
                   "output)")
        headers = ["scheme", "bits", "frac bits", "mode", "inference", "loss", "control",
                   "effect", "verdict"] + (["accuracy"] if cls else []) + ["bytes", "ratio"]
        rows = []
        for r in q["rows"]:
            frac = "-" if r["frac_bits"] is None else ",".join(str(f) for f in r["frac_bits"])
            row = [r["scheme_label"], str(r["bits"]), frac, r["mode"].upper(), r["inference"],
                   format_interval(r["loss_mean"], r["loss_ci95"]),
                   format_number(r["control"]["loss_mean"])
                   + (" (clamped)" if r["control"]["clamped"] else ""),
                   _effect(r), _verdict(r)]
            if cls:
                row.append(_acc(r["accuracy"]))
            rows.append(row + [format_bytes(r["nbytes"]),
                               format_number(r["compression_ratio"], 3) + "x"])
        out.append(format_table(headers, rows))
        out.append(f"   {q['bytes_note']}")
        out.append(f"   ratio = float32 baseline bytes ({base['nbytes']:,}) / bytes")

    # 4 -------------------------------------------------------------------------------------
    if "combined" in result:
        c = result["combined"]
        out.append("")
        out.append(f"4. Combined: {c['description']}")
        out.append(f"   control: {c['control']['name']}")
        headers = ["model", "loss", "control", "effect", "verdict"] + \
            (["accuracy"] if cls else []) + ["bytes", "ratio"]
        rows = []
        row = ["baseline float32", format_interval(base["loss_mean"], base["loss_ci95"]),
               "-", "1", "-"]
        if cls:
            row.append(_acc(base["accuracy"]))
        rows.append(row + [format_bytes(base["nbytes"]), "1x"])
        row = [c["name"], format_interval(c["loss_mean"], c["loss_ci95"]),
               format_number(c["control"]["loss_mean"]) + " (clamped)", _effect(c),
               _verdict(c)]
        if cls:
            row.append(_acc(c["accuracy"]))
        rows.append(row + [format_bytes(c["nbytes"]),
                           format_number(_ratio(base["nbytes"], c["nbytes"]), 3) + "x"])
        out.append(format_table(headers, rows))
        out.append(f"   {c['bytes_note']}")

    # regularization ------------------------------------------------------------------------
    if "regularization" in result:
        rg = result["regularization"]
        out.append("")
        out.append(f"5. Regularization strength: the baseline's training ({rg['epochs']} epochs,"
                   " same initial weights, rate and shuffling) with L2 on the kernels (Keras: "
                   "loss + X * sum W**2)")
        out.append("   or decoupled weight decay (AdamW: theta *= 1 - lr * X); control = the "
                   "baseline; * = best strength of its kind on the validation split")
        headers = ["kind", "strength", "val loss", "test loss", "effect", "verdict"] + \
            (["accuracy"] if cls else [])
        rows = [["none (baseline)", "0", format_number(rg["baseline_val_loss_mean"]),
                 format_interval(base["loss_mean"], base["loss_ci95"]), "1", "-"]
                + ([_acc(base["accuracy"])] if cls else [])]
        for r in rg["rows"]:
            row = [r["kind"], f"{r['strength']:g}" + (" *" if r["best"] else ""),
                   format_number(r["val_loss_mean"]),
                   format_interval(r["loss_mean"], r["loss_ci95"]), _effect(r), _verdict(r)]
            if cls:
                row.append(_acc(r["accuracy"]))
            rows.append(row)
        out.append(format_table(headers, rows))
        by_name = {r["name"]: r for r in rg["rows"]}
        for kind, name in rg["best"].items():
            r = by_name[name]
            lo, hi = r["loss_ci95"]
            relation = {"better": "better than", "worse": "worse than"}.get(
                r["verdict"], f"{r['verdict']} from")
            out.append(f"   best {kind}: strength {r['strength']:g} (validation loss "
                       f"{format_number(r['val_loss_mean'])}), test loss "
                       f"{format_interval(r['loss_mean'], r['loss_ci95'])}, 95% interval "
                       f"[{format_number(lo)}, {format_number(hi)}], {relation} no "
                       "regularization")

    # workers -------------------------------------------------------------------------------
    if "workers" in result:
        w = result["workers"]
        out.append("")
        out.append(f"6. Workers: synchronous data-parallel training of the baseline "
                   f"configuration, {w['epochs']} epochs from the same initial weights (seed "
                   f"{seeds[0]})")
        if not w["available"]:
            out.append(f"   not measured: {w['note']}")
        else:
            headers = ["workers", "loop", "time / epoch", "speedup", "fit wall time",
                       "final loss"] + (["accuracy"] if cls else [])
            rows = []
            for r in w["rows"]:
                # results written before the loop was recorded have no "loop"
                row = [str(r["workers"]), r.get("loop") or "-",
                       format_seconds(r["seconds_per_epoch"]),
                       format_number(r["speedup"], 3) + "x", format_seconds(r["seconds_total"]),
                       format_number(r["final_loss"], 10)]
                if cls:
                    row.append(_acc(r["final_accuracy"]))
                rows.append(row)
            out.append(format_table(headers, rows))
            out.append(f"   final losses agree: max |difference| = "
                       f"{format_number(w['max_loss_difference'], 2)} (loss), "
                       f"{format_number(w['max_param_difference'], 2)} (parameters); "
                       "time / epoch is the median epoch inside rank 0, start-up and the first "
                       "epoch excluded; loop: compiled whole epochs or the general Python loop; "
                       "fit wall time includes process start-up")

    # registered parts ----------------------------------------------------------------------
    # their sections carry their own lines (report does not import the study)
    for name in result.get("extra_parts", []):
        lines = result[name].get("text")
        if lines:
            out.append("")
            out.extend(lines)

    # summary -------------------------------------------------------------------------------
    s = result["summary"]
    by_name = {v["name"]: v for v in s["variants"]}
    out.append("")
    out.append(f"Summary over {len(s['variants'])} measured variants, judged by their effect "
               "against their controls (not by raw loss)")
    out.append("  Pareto set of (bytes, effect), smallest first:")
    headers = ["variant", "bytes", "ratio", "effect", "verdict", "loss", "control"] + \
        (["accuracy"] if cls else [])
    rows = []
    for name in s["pareto"]:
        v = by_name[name]
        row = [name, format_bytes(v["nbytes"]),
               format_number(_ratio(base["nbytes"], v["nbytes"]), 3) + "x",
               format_number(v["effect"], 3), _VERDICT.get(v["verdict"], v["verdict"]),
               format_interval(v["loss"], v["loss_ci95"]), format_number(v["control_loss"])]
        if cls:
            row.append(_acc(v["accuracy"]))
        rows.append(row)
    out.append(format_table(headers, rows, indent=4))
    best = s["smallest_within_tolerance"]
    tol = f"{s['tolerance'] * 100:g}%"
    if best is None:
        out.append(f"  No variant's loss is within {tol} of its control's.")
    else:
        v = by_name[best]
        out.append(f"  Smallest model whose loss is within {tol} of its control's (effect <= "
                   f"{format_number(s['effect_budget'])}): {best}, {format_bytes(v['nbytes'])} "
                   f"bytes ({format_number(_ratio(base['nbytes'], v['nbytes']), 3)}x smaller), "
                   f"effect {format_number(v['effect'], 3)} ({v['verdict']}), loss "
                   f"{format_interval(v['loss'], v['loss_ci95'])} against "
                   f"{format_number(v['control_loss'])} ({v['control']})"
                   + (f", accuracy {_acc(v['accuracy'])}" if cls else ""))
    out.append(f"  study time {result['seconds_total']:.1f} s")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------
# CSV and JSON

#: columns of :func:`write_csv`, one row per measurement of any part
CSV_COLUMNS = ("part", "name", "method", "sparsity", "bits", "mode", "initial_learning_rate",
               "decay_rate", "strength", "workers", "seeds", "loss", "loss_mean",
               "loss_ci95_low", "loss_ci95_high", "validation_loss", "control",
               "control_loss_mean", "effect", "verdict", "accuracy", "updates", "nnz", "nbytes",
               "nbytes_dense", "nbytes_csr", "nbytes_bitmask", "compression_ratio",
               "target_update", "seconds")


def _seed_columns(rec):
    ci = rec.get("loss_ci95") or [None, None]
    control = rec.get("control") or {}
    return {"seeds": len(rec["seeds"]), "loss": rec["loss_mean"], "loss_mean": rec["loss_mean"],
            "loss_ci95_low": ci[0], "loss_ci95_high": ci[1], "control": control.get("name"),
            "control_loss_mean": control.get("loss_mean"), "effect": rec.get("effect"),
            "verdict": rec.get("verdict"), "accuracy": rec["accuracy"]}


def csv_rows(result):
    """One dict per measurement of every part, keyed by :data:`CSV_COLUMNS` (None = empty).

    Parameters
    ----------
    result : dict
        A :func:`minscale.study.run_study` result.

    Returns
    -------
    list of dict
        learning-rate runs (loss = mean test loss, validation_loss = mean final validation
        loss; seconds empty), the baseline, pruning rows and the gradual one (seconds = CSR
        predict time), quantization rows, the combined variant, regularization rows,
        workers rows (seconds = time per epoch; one seed), width/depth rows (nbytes = float32
        parameters, seconds = mean training time; no control) and recovery rows. ``loss`` equals ``loss_mean``
        (the mean test loss over ``seeds`` seeds); ``loss_ci95_low``/``high`` its 95 %
        interval; ``control``, ``control_loss_mean``, ``effect`` and ``verdict`` as in the
        JSON.
    """
    base = result.get("baseline")
    n_seeds = len(result["seeds"])
    rows = []

    def add(**kw):
        rows.append({k: kw.get(k) for k in CSV_COLUMNS})

    for r in result.get("learning_rate", {}).get("runs", []):
        ci = r["test_loss_ci95"]
        add(part="learning_rate",
            name=f"eta0 {r['initial_learning_rate']:g} decay {r['decay_rate']:g}",
            initial_learning_rate=r["initial_learning_rate"], decay_rate=r["decay_rate"],
            seeds=n_seeds, loss=r["test_loss_mean"], loss_mean=r["test_loss_mean"],
            loss_ci95_low=ci[0], loss_ci95_high=ci[1], validation_loss=r["final_loss"],
            accuracy=r["test_accuracy"], updates=r["updates"],
            target_update=r["target_update"])
    if base is not None:
        add(part="baseline", name="baseline float32", seeds=n_seeds, loss=base["loss_mean"],
            loss_mean=base["loss_mean"], loss_ci95_low=base["loss_ci95"][0],
            loss_ci95_high=base["loss_ci95"][1], validation_loss=base["val_loss_mean"],
            accuracy=base["accuracy"], updates=base["updates"], nbytes=base["nbytes"],
            compression_ratio=1.0)
    if "pruning" in result:
        pr = result["pruning"]
        for r in pr["rows"] + [pr["gradual"]]:
            add(part="pruning", name=r["name"], method=r["method"], sparsity=r["sparsity"],
                updates=r["updates"], nnz=r["nnz"], nbytes=r["nbytes"],
                nbytes_dense=r["nbytes_dense"], nbytes_csr=r["nbytes_csr"],
                nbytes_bitmask=r["nbytes_bitmask"],
                compression_ratio=_ratio(base["nbytes"], r["nbytes"]),
                seconds=r["predict_seconds_csr"], **_seed_columns(r))
    for r in result.get("quantization", {}).get("rows", []):
        add(part="quantization", name=r["name"], method=r["scheme"], bits=r["bits"],
            mode=r["mode"], updates=r["updates"], nbytes=r["nbytes"],
            compression_ratio=r["compression_ratio"], **_seed_columns(r))
    if "combined" in result:
        c = result["combined"]
        add(part="combined", name=c["name"], method="magnitude+int8", sparsity=c["sparsity"],
            bits=8, mode="ptq", nnz=c["nnz"], nbytes=c["nbytes"],
            compression_ratio=c["compression_ratio"], **_seed_columns(c))
    for r in result.get("regularization", {}).get("rows", []):
        add(part="regularization", name=r["name"], method=r["kind"], strength=r["strength"],
            validation_loss=r["val_loss_mean"], updates=r["updates"], **_seed_columns(r))
    for r in result.get("workers", {}).get("rows", []):
        add(part="workers", name=f"workers {r['workers']}", workers=r["workers"], seeds=1,
            loss=r["final_loss"], accuracy=r["final_accuracy"],
            seconds=r["seconds_per_epoch"])
    for r in result.get("width_depth", {}).get("rows", []):
        ci = r["loss_ci95"]
        add(part="width_depth", name=f"depth {r['depth']} width {r['width']}",
            method=f"depth {r['depth']}", seeds=len(r["seeds"]), loss=r["loss_mean"],
            loss_mean=r["loss_mean"], loss_ci95_low=ci[0], loss_ci95_high=ci[1],
            validation_loss=r["val_loss_mean"], accuracy=r["accuracy_mean"],
            updates=r["updates"], nbytes=4 * r["n_params"], seconds=r["seconds_mean"])
    for r in result.get("recovery", {}).get("rows", []):
        add(part="recovery", name=r["name"], method=r["method"], sparsity=r["sparsity"],
            updates=r["updates"], **_seed_columns(dict(r, accuracy=r["accuracy_mean"])))
    return rows


def write_csv(result, path):
    """Write :func:`csv_rows` to `path` with a header row (:data:`CSV_COLUMNS`).

    Floats are written with ``repr`` precision; None as an empty cell. The file is written
    atomically (:func:`minscale.io.atomic_write`): an interruption or error leaves either
    the previous file or none, never a truncated one.

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in csv_rows(result):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    data = buffer.getvalue().encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def write_json(result, path):
    """Write `result` as strict JSON (no NaN or Infinity), indented, to `path`.

    Written atomically (:func:`minscale.io.atomic_write`): an interruption or error leaves
    either the previous file or none, never a truncated one.

    Raises
    ------
    ValueError
        If `result` holds a non-finite float (the study writes None instead); nothing is
        written then.
    OSError
        If the file cannot be written.
    """
    data = (json.dumps(result, indent=1, allow_nan=False) + "\n").encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def load_schema():
    """The JSON Schema (draft 2020-12) of a study result, shipped as
    ``minscale/study_schema.json`` and documented in ``docs/study.md``.

    Returns
    -------
    dict
    """
    text = resources.files("minscale").joinpath("study_schema.json").read_text("utf-8")
    return json.loads(text)


# ----------------------------------------------------------------------------------------
# plot

_PART_STYLE = {"baseline": ("*", "black"), "pruning": ("o", "tab:blue"),
               "quantization": ("s", "tab:orange"), "combined": ("D", "tab:red")}


#: image formats :func:`plot` may write, by extension (see :func:`plot_formats`)
PLOT_FORMATS = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif",
                ".tiff")


def plot(result, path):
    """Save the study's figure: effect against bytes, learning-rate curves, regularization.

    Parameters
    ----------
    result : dict
        A :func:`minscale.study.run_study` result.
    path : str or os.PathLike
        Output file; the format follows the extension (``.png`` for a PNG), which must be
        one matplotlib writes (:func:`plot_formats`). Written atomically, like
        :func:`write_json`.

    Raises
    ------
    ImportError
        If matplotlib is not installed (the ``plot`` extra), with a one-line message.
    ValueError
        If `path` has no extension or one matplotlib cannot write (before any drawing).

    Notes
    -----
    Every mean over seeds carries its 95 % interval (with one seed there is none to draw).
    Top left: every variant of the summary, effect (loss / control loss) against bytes on a
    log x axis, markers by part, error bars = 1 + (95 % interval of the paired differences)
    / control loss, the Pareto front as a step line, 1 and the tolerance dashed. Top right:
    mean validation loss per epoch of every learning-rate run (colour: eta0, line style:
    decay rate), log y, its 95 % band shaded, the loss target dotted. Bottom left: test loss
    against regularization strength (log x) with error bars, the baseline's band, the best
    strength of each kind circled. Bottom right: the panels registered in
    :data:`PLOT_PANELS` for the parts the result holds, else left empty.
    """
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import FuncFormatter  # noqa: PLC0415
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'minscale[plot]'") from None
    fmt = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if "." + fmt not in plot_formats():
        raise ValueError(f"path {os.fspath(path)!r}: expected an extension among "
                         f"{', '.join(plot_formats())} (the image format), got "
                         f"{'.' + fmt if fmt else 'none'}")
    extra = [name for name in PLOT_PANELS if name in result]
    if "summary" not in result:
        # only parts without a baseline were run: their panel, or a note that there is none
        fig, ax = plt.subplots(figsize=(8, 6), constrained_layout=True)
        if extra:
            PLOT_PANELS[extra[0]](ax, result[extra[0]], result)
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "the parts run (" + ", ".join(result.get("extra_parts", []))
                    + ") have no plot; see the text report", ha="center", va="center")
        try:
            atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=100))
        finally:
            plt.close(fig)
        return
    s, base, d = result["summary"], result["baseline"], result["data"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 11.5), constrained_layout=True)
    (ax, ax2), (ax3, ax4) = axes
    plain_bytes = FuncFormatter(lambda x, _: f"{x:,.0f}")
    plain_loss = FuncFormatter(lambda x, _: f"{x:.3g}")
    n_seeds = len(result["seeds"])

    def minor_labels(axis, limits, fmt):
        # as many minor-tick labels as fit: all of them up to 0.7 decades, the 2x, 3x and
        # 5x ones up to about a decade, the 2x and 5x ones beyond
        lo, hi = limits
        decades = math.log10(hi / lo) if lo > 0 else math.inf
        keep = None if decades <= 0.7 else (2.0, 3.0, 5.0) if decades <= 1.2 else (2.0, 5.0)

        def label(x, _):
            lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6) if x > 0 else 0
            return fmt(x, _) if keep is None or lead in keep else ""
        axis.set_minor_formatter(FuncFormatter(label))

    def effect_bar(v):
        # the paired interval of the differences, as a ratio to the control's mean loss
        rec = _record_of(result, v)
        c = v["control_loss"]
        if rec is None or not c or rec["difference_ci95"][0] is None:
            return 0.0, 0.0
        lo, hi = rec["difference_ci95"]
        return max(v["effect"] - (1 + lo / c), 0.0), max(1 + hi / c - v["effect"], 0.0)

    # effect against bytes ------------------------------------------------------------------
    for part, (marker, colour) in _PART_STYLE.items():
        pts = [v for v in s["variants"] if v["part"] == part and v["effect"] is not None]
        if pts:
            bars = np.array([effect_bar(v) for v in pts]).T
            ax.errorbar([v["nbytes"] for v in pts], [v["effect"] for v in pts], yerr=bars,
                        fmt=marker, ms=11 if part == "baseline" else 6, color=colour,
                        label=part, zorder=3, alpha=0.85, capsize=3, elinewidth=1)
    by_name = {v["name"]: v for v in s["variants"]}
    front = [by_name[n] for n in s["pareto"]]
    fx, fy = [v["nbytes"] for v in front], [v["effect"] for v in front]
    ax.step(fx, fy, where="post", color="tab:green", lw=1.5, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="tab:green", lw=1.5, zorder=4)
    for k, v in enumerate(front):
        # alternate above/below so that neighbouring labels do not overprint each other
        ax.annotate(v["name"], (v["nbytes"], v["effect"]), textcoords="offset points",
                    xytext=(4, 10 if k % 2 == 0 else -16), fontsize=8, color="darkgreen")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(s["effect_budget"], color="grey", ls="--", lw=1,
               label=f"effect 1 + {s['tolerance'] * 100:g}%")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plain_bytes)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("bytes (log scale)")
    ax.set_ylabel("effect = test loss / test loss of its control")
    effects = [v["effect"] for v in s["variants"] if v["effect"] is not None]
    ax.set_ylim(max(0.0, min(effects) - 0.15), min(max(effects), 3.0) + 0.15)
    ax.set_title(f"{d['name']}: effect against size of every variant "
                 f"({n_seeds} seed{'s' if n_seeds > 1 else ''}, 95% intervals)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    minor_labels(ax.xaxis, ax.get_xlim(), plain_bytes)

    # learning-rate curves ------------------------------------------------------------------
    runs = result["learning_rate"]["runs"]
    rates = sorted({r["initial_learning_rate"] for r in runs}, reverse=True)
    decays = sorted({r["decay_rate"] for r in runs})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for r in runs:
        curve = np.array([math.nan if v is None else v for v in r["val_loss"]], dtype=float)
        if not curve.size:
            continue
        c = colours[rates.index(r["initial_learning_rate"]) % len(colours)]
        ls = styles[decays.index(r["decay_rate"]) % len(styles)]
        epochs = np.arange(1, curve.size + 1)
        ax2.plot(epochs, curve, color=c, ls=ls, lw=1.4,
                 label=f"eta0 {r['initial_learning_rate']:g}, decay {r['decay_rate']:g}")
        band = np.array([[math.nan if x is None else x for x in b]
                         for b in r["val_loss_ci95"]], dtype=float)
        if band.size and np.isfinite(band).any():
            ax2.fill_between(epochs, band[:, 0], band[:, 1], color=c, alpha=0.15, lw=0)
    ax2.axhline(result["learning_rate"]["target"], color="black", ls=":", lw=1.2,
                label=f"loss target {result['learning_rate']['target']:.3g}")
    ax2.set_yscale("log")
    # limits from the mean curves: a 95% band of few seeds can reach 0 or far above
    means = [v for r in runs for v in r["val_loss"] if v is not None and v > 0]
    if means:
        ax2.set_ylim(min(means) / 1.5, max(means) * 1.5)
    ax2.yaxis.set_major_formatter(plain_loss)
    ax2.tick_params(axis="y", which="minor", labelsize=7)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation loss (MSE, log scale), mean and 95% band")
    ax2.set_title("learning-rate sweep: Adam, eta0 / (1 + decay * epochs)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)
    minor_labels(ax2.yaxis, ax2.get_ylim(), plain_loss)

    # regularization ------------------------------------------------------------------------
    if "regularization" in result:
        rg = result["regularization"]
        lo, hi = base["loss_ci95"]
        ax3.axhline(base["loss_mean"], color="black", lw=1.2,
                    label="no regularization (baseline)")
        if lo is not None:
            ax3.axhspan(lo, hi, color="black", alpha=0.1, lw=0)
        for kind, colour, label in (("l2", "tab:blue", "L2 (Keras, kernels)"),
                                    ("decoupled", "tab:orange", "decoupled decay (AdamW)")):
            pts = [r for r in rg["rows"] if r["kind"] == kind and r["loss_mean"] is not None]
            if not pts:
                continue
            err = np.array([[0.0, 0.0] if r["loss_ci95"][0] is None else
                            [r["loss_mean"] - r["loss_ci95"][0],
                             r["loss_ci95"][1] - r["loss_mean"]] for r in pts]).T
            ax3.errorbar([r["strength"] for r in pts], [r["loss_mean"] for r in pts],
                         yerr=err, fmt="o-", color=colour, capsize=3, label=label)
            for r in pts:
                if r["best"]:
                    ax3.scatter([r["strength"]], [r["loss_mean"]], s=220, facecolors="none",
                                edgecolors=colour, lw=2, zorder=4,
                                label=f"best {kind} on validation: {r['strength']:g}")
        ax3.set_xscale("log")
        ax3.set_ylim(bottom=0)
        ax3.set_xlabel("strength (log scale)")
        ax3.set_ylabel("test loss (MSE), mean and 95% interval")
        ax3.set_title("regularization strength (chosen on the validation split)")
        ax3.grid(True, which="both", alpha=0.3)
        ax3.legend(fontsize=8)
    else:
        ax3.set_axis_off()
    if extra:
        PLOT_PANELS[extra[0]](ax4, result[extra[0]], result)
    else:
        ax4.set_axis_off()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=100))
    finally:
        plt.close(fig)


#: extra plot panels for registered study parts: section name -> ``draw(ax, section,
#: result)``, drawn in the bottom-right panel of :func:`plot` when the result has the section
PLOT_PANELS = {}


def plot_width_depth(ax, section, result=None):
    """Draw the width and depth part on a matplotlib Axes: test loss against parameters.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    section : dict
        The part's section of a study result (:func:`minscale.study.width_depth.
        width_depth_part`): ``rows`` (``depth``, ``width``, ``n_params``, ``loss_mean``,
        ``loss_ci95``) and ``fits`` (per depth ``c``, ``a``, ``alpha``, ``alpha_ci95``, or
        ``error``).
    result : dict, optional
        The whole result (unused; the signature of :data:`PLOT_PANELS`).

    Notes
    -----
    Log-log axes; per depth one colour: the mean test loss at each width with its 95 %
    interval over seeds as error bars (none with one seed; an interval reaching 0 or below
    runs off the bottom), each point labelled with its width, and the fitted ``c + a * N**(-alpha)`` as a line over the measured range, with
    alpha and its bootstrap interval in the legend.
    """
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    fits = {f["depth"]: f for f in section.get("fits", [])}
    drawn = []
    for i, depth in enumerate(sorted({r["depth"] for r in section["rows"]})):
        colour = colours[i % len(colours)]
        rows = [r for r in section["rows"] if r["depth"] == depth and r["loss_mean"] is not None]
        if not rows:
            continue
        n = [r["n_params"] for r in rows]
        y = [r["loss_mean"] for r in rows]
        low = [r["loss_mean"] - r["loss_ci95"][0] if r["loss_ci95"][0] is not None else 0.0
               for r in rows]
        high = [r["loss_ci95"][1] - r["loss_mean"] if r["loss_ci95"][1] is not None else 0.0
                for r in rows]
        drawn.extend(y)
        drawn.extend(v - lo for v, lo in zip(y, low) if v - lo > 0)
        drawn.extend(v + hi for v, hi in zip(y, high))
        # a lower end at or below 0 cannot be drawn on a log axis: the bar runs off the
        # bottom of the panel instead (its limits come from the drawable values)
        low = [min(lo, 0.9999 * v) for lo, v in zip(low, y)]
        ax.errorbar(n, y, yerr=[low, high], fmt="o", color=colour, capsize=3, ms=5,
                    label=f"depth {depth}: mean test loss, 95 % interval", zorder=3)
        for r in rows:
            ax.annotate(str(r["width"]), (r["n_params"], r["loss_mean"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points", color=colour)
        fit = fits.get(depth)
        if fit is not None and "alpha" in fit:
            lo_n, hi_n = math.log(min(n)), math.log(max(n))
            grid = [math.exp(lo_n + (hi_n - lo_n) * k / 99) for k in range(100)]
            curve = [fit["c"] + fit["a"] * v ** (-fit["alpha"]) for v in grid]
            lo, hi = fit["alpha_ci95"]
            ci = "" if lo is None else f" [{lo:.2g}, {hi:.2g}]"
            ax.plot(grid, curve, "-", color=colour, lw=1.5, alpha=0.8,
                    label=(f"depth {depth} fit: c + a N^-alpha, alpha = "
                           f"{fit['alpha']:.2g}{ci}, c = {fit['c']:.2g}"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    if drawn:
        ax.set_ylim(min(drawn) / 1.3, max(drawn) * 1.3)
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415 (optional, only when drawing)

    def two_five(x, _):
        # label the 2x and 5x minor ticks too: the panel spans one or two decades of loss
        lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6) if x > 0 else 0
        return f"{x:.3g}" if lead in (2.0, 5.0) else ""
    ax.yaxis.set_minor_formatter(FuncFormatter(two_five))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    ax.set_xlabel("parameters N (labels: hidden width)")
    ax.set_ylabel("test loss (MSE)")
    ax.set_title("Width and depth: test loss against size, power law per depth")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


PLOT_PANELS["width_depth"] = plot_width_depth


def _record_of(result, variant):
    """The part record behind a summary variant (None for the baseline)."""
    part = variant["part"]
    if part == "pruning":
        pr = result["pruning"]
        for r in pr["rows"] + [pr["gradual"]]:
            if r["name"] == variant["name"]:
                return r
    elif part == "quantization":
        for r in result["quantization"]["rows"]:
            if r["name"] == variant["name"]:
                return r
    elif part == "combined":
        return result["combined"]
    return None


def plot_formats():
    """The file extensions :func:`plot` writes.

    Those of :data:`PLOT_FORMATS` that matplotlib's Agg canvas supports. Formats that need
    more than matplotlib and Pillow (``.pgf`` needs LaTeX; ``.avif``/``.webp`` need optional
    Pillow codecs) are left out.

    Returns
    -------
    tuple of str
        Lower case with the dot, in :data:`PLOT_FORMATS` order (``".png"`` first).

    Raises
    ------
    ImportError
        If matplotlib is not installed, with a one-line message.
    """
    try:
        # matplotlib first, so that a blocked matplotlib fails here
        import matplotlib  # noqa: F401, PLC0415
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'minscale[plot]'") from None
    supported = {"." + ext for ext in FigureCanvasAgg.get_supported_filetypes()}
    return tuple(ext for ext in PLOT_FORMATS if ext in supported)
