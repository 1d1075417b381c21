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

from .data import plain
from .io import atomic_write

__all__ = [
    "format_number",
    "format_bytes",
    "format_seconds",
    "format_table",
    "render_text",
    "csv_rows",
    "write_csv",
    "write_json",
    "plot_formats",
    "load_schema",
    "plot",
    "CSV_COLUMNS",
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


def render_text(result):
    """The readable report of a study: one table per part and a closing summary.

    Parameters
    ----------
    result : dict
        A :func:`minscale.study.run_study` result.

    Returns
    -------
    str
        Ends with a newline.
    """
    d, base, cfg = result["data"], result["baseline"], result["config"]
    cls = d["task"] == "classification"
    out = []
    out.append(f"minscale study: {d['name']} ({d['task']}), {d['n_train']} train / "
               f"{d['n_test']} held-out rows, {d['n_features']} features -> "
               f"{d['n_outputs']} output{'s' if d['n_outputs'] > 1 else ''}")
    kind = "ReLU hidden, linear output" if cfg["hidden"] else "linear"
    out.append(f"model {_architecture(result)} ({kind}), "
               f"{base['n_params']:,} parameters; backend {result['backend']}; "
               f"{cfg['blas_threads'] or 'default'} BLAS thread"
               f"{'' if cfg['blas_threads'] == 1 else 's'}; seed {cfg['seed']}; batch "
               f"{cfg['batch_size']}{'; --quick' if cfg['quick'] else ''}")
    out.append(f"loss = held-out {d['loss_unit']}" + (
        f"; y_scale {d['y_scale']:.6g} (multiply a loss by y_scale**2 for the target's unit)"
        if not cls and d["y_scale"] is not None else ""))
    out.append("bytes = exact storage with float32 values (4 bytes) for float models")

    # 1 -------------------------------------------------------------------------------------
    lr = result["learning_rate"]
    out.append("")
    out.append(f"1. Learning rate: Adam, eta(t) = eta0 / (1 + decay * t / {lr['decay_steps']}) "
               f"(decay per epoch of {lr['decay_steps']} updates), {cfg['epochs']} epochs each")
    out.append(f"   loss target = {lr['target_factor']:g} x best final loss = "
               f"{format_number(lr['target'])}, checked on the held-out split at the end of "
               "each epoch")
    headers = ["eta0", "decay", "final lr", "final loss"] + (["accuracy"] if cls else []) + \
        ["target reached at"]
    rows = []
    for i, r in enumerate(lr["runs"]):
        reached = ("diverged" if r["diverged"] else "not reached" if r["target_update"] is None
                   else f"update {r['target_update']:,} (epoch {r['target_epoch']})")
        row = [f"{r['initial_learning_rate']:g}", f"{r['decay_rate']:g}",
               format_number(r["final_learning_rate"], 3),
               format_number(r["final_loss"]) + (" *" if i == base["run"] else "")]
        if cls:
            row.append(_acc(r["final_accuracy"]))
        rows.append(row + [reached])
    out.append(format_table(headers, rows, "r" * (len(headers) - 1) + "l"))
    out.append(f"   * baseline: eta0 {base['initial_learning_rate']:g}, decay "
               f"{base['decay_rate']:g} ({base['selection']})")

    # 2 -------------------------------------------------------------------------------------
    pr = result["pruning"]
    out.append("")
    out.append(f"2. Pruning, iterative: from a copy of the baseline, each level prunes further "
               f"and fine-tunes {pr['finetune_epochs']} epochs (Adam at "
               f"{pr['finetune_learning_rate']:.3g}),")
    out.append("   the same for every method; sparsity 0 is the baseline itself; ft epochs = "
               "fine-tuning so far")
    headers = ["method", "sparsity", "loss"] + (["accuracy"] if cls else []) + \
        ["ft epochs", "nnz", "dense B", "CSR B", "bitmask B", "dense predict", "CSR predict"]
    rows = []
    for r in pr["rows"] + [pr["gradual"]]:
        row = [r["method"], f"{r['sparsity']:g}", format_number(r["loss"])]
        if cls:
            row.append(_acc(r["accuracy"]))
        rows.append(row + [str(r["finetune_epochs"]), f"{r['nnz']:,}",
                           format_bytes(r["nbytes_dense"]),
                           format_bytes(r["nbytes_csr"]), format_bytes(r["nbytes_bitmask"]),
                           format_seconds(r["predict_seconds_dense"]),
                           format_seconds(r["predict_seconds_csr"])])
    out.append(format_table(headers, rows))
    g = pr["gradual"]["schedule"]
    out.append(f"   nnz = non-zero weights of {pr['rows'][0]['n_weights']:,}; B = bytes with "
               "float32 values (bitmask: 1 bit per weight, then the non-zeros)")
    out.append(f"   predict = median time for the {d['n_test']} held-out rows; gradual: "
               "polynomial 0 -> "
               f"{g['final_sparsity']:g} over updates 0..{g['end_step']}, masks every "
               f"{g['frequency']} updates, in the budget of the iterative path to that level")

    # 3 -------------------------------------------------------------------------------------
    q = result["quantization"]
    out.append("")
    out.append("3. Quantization of the baseline's weights: PTQ = post-training, QAT = the same "
               "fine-tuning budget with fake quantization")
    headers = ["scheme", "bits", "frac bits", "mode", "inference", "loss"] + \
        (["accuracy"] if cls else []) + ["bytes", "ratio"]
    rows = []
    for r in q["rows"]:
        frac = "-" if r["frac_bits"] is None else ",".join(str(f) for f in r["frac_bits"])
        row = [r["scheme_label"], str(r["bits"]), frac, r["mode"].upper(), r["inference"],
               format_number(r["loss"])]
        if cls:
            row.append(_acc(r["accuracy"]))
        rows.append(row + [format_bytes(r["nbytes"]),
                           format_number(r["compression_ratio"], 3) + "x"])
    out.append(format_table(headers, rows))
    out.append(f"   {q['bytes_note']}")
    out.append(f"   ratio = float32 baseline bytes ({base['nbytes']:,}) / bytes")

    # 4 -------------------------------------------------------------------------------------
    c = result["combined"]
    out.append("")
    out.append(f"4. Combined: {c['description']}")
    headers = ["model", "loss"] + (["accuracy"] if cls else []) + \
        ["loss / baseline", "bytes", "ratio"]
    rows = []
    for name, loss, acc, nbytes in (("baseline float32", base["loss"], base["accuracy"],
                                     base["nbytes"]),
                                    (c["name"], c["loss"], c["accuracy"], c["nbytes"])):
        row = [name, format_number(loss)]
        if cls:
            row.append(_acc(acc))
        rel = None if loss is None or not base["loss"] else loss / base["loss"]
        rows.append(row + [format_number(rel, 3), format_bytes(nbytes),
                           format_number(_ratio(base["nbytes"], nbytes), 3) + "x"])
    out.append(format_table(headers, rows))
    out.append(f"   {c['bytes_note']}")

    # 5 -------------------------------------------------------------------------------------
    w = result["workers"]
    out.append("")
    out.append(f"5. Workers: synchronous data-parallel training of the baseline configuration, "
               f"{w['epochs']} epochs from the same initial weights")
    if not w["available"]:
        out.append(f"   not measured: {w['note']}")
    else:
        headers = ["workers", "time / epoch", "speedup", "fit wall time", "final loss"] + \
            (["accuracy"] if cls else [])
        rows = []
        for r in w["rows"]:
            row = [str(r["workers"]), format_seconds(r["seconds_per_epoch"]),
                   format_number(r["speedup"], 3) + "x", format_seconds(r["seconds_total"]),
                   format_number(r["final_loss"], 10)]
            if cls:
                row.append(_acc(r["final_accuracy"]))
            rows.append(row)
        out.append(format_table(headers, rows))
        out.append(f"   final losses agree: max |difference| = "
                   f"{format_number(w['max_loss_difference'], 2)} (loss), "
                   f"{format_number(w['max_param_difference'], 2)} (parameters); "
                   "time / epoch is the median epoch inside rank 0, start-up excluded; "
                   "fit wall time includes process start-up")

    # summary -------------------------------------------------------------------------------
    s = result["summary"]
    by_name = {v["name"]: v for v in s["variants"]}
    out.append("")
    out.append(f"Summary over {len(s['variants'])} measured variants")
    out.append("  Pareto set of (bytes, loss), smallest first:")
    headers = ["variant", "bytes", "ratio", "loss"] + (["accuracy"] if cls else [])
    rows = []
    for name in s["pareto"]:
        v = by_name[name]
        row = [name, format_bytes(v["nbytes"]),
               format_number(_ratio(base["nbytes"], v["nbytes"]), 3) + "x",
               format_number(v["loss"])]
        if cls:
            row.append(_acc(v["accuracy"]))
        rows.append(row)
    out.append(format_table(headers, rows, indent=4))
    best = s["smallest_within_tolerance"]
    tol = f"{s['tolerance'] * 100:g}%"
    if best is None:
        out.append(f"  No variant is within {tol} of the baseline loss "
                   f"({format_number(base['loss'])}).")
    else:
        v = by_name[best]
        out.append(f"  Smallest model within {tol} of the baseline loss (<= "
                   f"{format_number(s['loss_budget'])}): {best}, {format_bytes(v['nbytes'])} "
                   f"bytes ({format_number(_ratio(base['nbytes'], v['nbytes']), 3)}x smaller), "
                   f"loss {format_number(v['loss'])}"
                   + (f", accuracy {_acc(v['accuracy'])}" if cls else ""))
    out.append(f"  study time {result['seconds_total']:.1f} s")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------
# CSV and JSON

#: columns of :func:`write_csv`, one row per measurement of any part
CSV_COLUMNS = ("part", "name", "method", "sparsity", "bits", "mode", "initial_learning_rate",
               "decay_rate", "workers", "loss", "accuracy", "nnz", "nbytes", "nbytes_dense",
               "nbytes_csr", "nbytes_bitmask", "compression_ratio", "target_update", "seconds")


def csv_rows(result):
    """One dict per measurement of every part, keyed by :data:`CSV_COLUMNS` (None = empty).

    Parameters
    ----------
    result : dict
        A :func:`minscale.study.run_study` result.

    Returns
    -------
    list of dict
        learning-rate runs (seconds empty), pruning rows and the gradual one (seconds = CSR
        predict time), quantization rows, the combined variant, workers rows (seconds = time
        per epoch).
    """
    base = result["baseline"]
    rows = []

    def add(**kw):
        rows.append({k: kw.get(k) for k in CSV_COLUMNS})

    for r in result["learning_rate"]["runs"]:
        add(part="learning_rate",
            name=f"eta0 {r['initial_learning_rate']:g} decay {r['decay_rate']:g}",
            initial_learning_rate=r["initial_learning_rate"], decay_rate=r["decay_rate"],
            loss=r["final_loss"], accuracy=r["final_accuracy"],
            target_update=r["target_update"])
    pr = result["pruning"]
    for r in pr["rows"] + [pr["gradual"]]:
        add(part="pruning", name=f"prune {r['method']} {r['sparsity']:g}", method=r["method"],
            sparsity=r["sparsity"], loss=r["loss"], accuracy=r["accuracy"], nnz=r["nnz"],
            nbytes=r["nbytes"], nbytes_dense=r["nbytes_dense"], nbytes_csr=r["nbytes_csr"],
            nbytes_bitmask=r["nbytes_bitmask"],
            compression_ratio=_ratio(base["nbytes"], r["nbytes"]),
            seconds=r["predict_seconds_csr"])
    for r in result["quantization"]["rows"]:
        add(part="quantization", name=r["name"], method=r["scheme"], bits=r["bits"],
            mode=r["mode"], loss=r["loss"], accuracy=r["accuracy"], nbytes=r["nbytes"],
            compression_ratio=r["compression_ratio"])
    c = result["combined"]
    add(part="combined", name=c["name"], method="magnitude+int8", sparsity=c["sparsity"],
        bits=8, mode="ptq", loss=c["loss"], accuracy=c["accuracy"], nnz=c["nnz"],
        nbytes=c["nbytes"], compression_ratio=c["compression_ratio"])
    for r in result["workers"]["rows"]:
        add(part="workers", name=f"workers {r['workers']}", workers=r["workers"],
            loss=r["final_loss"], accuracy=r["final_accuracy"],
            seconds=r["seconds_per_epoch"])
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
    """Save a two-panel figure: loss vs bytes with the Pareto front, and learning-rate curves.

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
    Left: every variant of the summary, held-out loss against bytes on a log x axis, markers
    by part, the Pareto front as a step line, the loss budget of the summary dashed. Right:
    held-out loss per epoch of every learning-rate run (colour: eta0, line style: decay
    rate), log y, with the loss target dotted.
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
    s, base, d = result["summary"], result["baseline"], result["data"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 6.4), constrained_layout=True)
    plain_bytes = FuncFormatter(lambda x, _: f"{x:,.0f}")
    plain_loss = FuncFormatter(lambda x, _: f"{x:.3g}")

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

    for part, (marker, colour) in _PART_STYLE.items():
        pts = [v for v in s["variants"] if v["part"] == part and v["loss"] is not None]
        if pts:
            ax.scatter([v["nbytes"] for v in pts], [v["loss"] for v in pts], marker=marker,
                       s=110 if part == "baseline" else 36, color=colour, label=part, zorder=3,
                       alpha=0.85)
    by_name = {v["name"]: v for v in s["variants"]}
    front = [by_name[n] for n in s["pareto"]]
    fx, fy = [v["nbytes"] for v in front], [v["loss"] for v in front]
    ax.step(fx, fy, where="post", color="tab:green", lw=1.5, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="tab:green", lw=1.5, zorder=4)
    for k, v in enumerate(front):
        # alternate above/below so that neighbouring labels do not overprint each other
        ax.annotate(v["name"], (v["nbytes"], v["loss"]), textcoords="offset points",
                    xytext=(4, 10 if k % 2 == 0 else -16), fontsize=8, color="darkgreen")
    ax.annotate("baseline", (base["nbytes"], base["loss"]), textcoords="offset points",
                xytext=(-10, 10), fontsize=8, ha="right")
    ax.axhline(s["loss_budget"], color="grey", ls="--", lw=1,
               label=f"baseline loss + {s['tolerance'] * 100:g}%")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plain_bytes)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("bytes (log scale)")
    ax.set_ylabel("held-out loss (MSE)" + ("" if d["task"] == "classification"
                                           else ", standardized target"))
    losses = [v["loss"] for v in s["variants"] if v["loss"] is not None]
    top = min(max(losses), 4 * base["loss"]) if losses else 1.0
    ax.set_ylim(0, top * 1.08)
    ax.set_title(f"{d['name']}: held-out loss against size of every variant")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    minor_labels(ax.xaxis, ax.get_xlim(), plain_bytes)

    runs = result["learning_rate"]["runs"]
    rates = sorted({r["initial_learning_rate"] for r in runs}, reverse=True)
    decays = sorted({r["decay_rate"] for r in runs})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for r in runs:
        curve = [math.nan if v is None else v for v in r["val_loss"]]
        if not curve:
            continue
        c = colours[rates.index(r["initial_learning_rate"]) % len(colours)]
        ls = styles[decays.index(r["decay_rate"]) % len(styles)]
        ax2.plot(range(1, len(curve) + 1), curve, color=c, ls=ls, lw=1.4,
                 label=f"eta0 {r['initial_learning_rate']:g}, decay {r['decay_rate']:g}")
    ax2.axhline(result["learning_rate"]["target"], color="black", ls=":", lw=1.2,
                label=f"loss target {result['learning_rate']['target']:.3g}")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(plain_loss)
    ax2.tick_params(axis="y", which="minor", labelsize=7)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("held-out loss (MSE, log scale)")
    ax2.set_title("learning-rate sweep: Adam, eta0 / (1 + decay * epochs)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4)
    minor_labels(ax2.yaxis, ax2.get_ylim(), plain_loss)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=110))
    finally:
        plt.close(fig)


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
