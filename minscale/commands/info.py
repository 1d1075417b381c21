"""``minscale info``: what a model or checkpoint file holds, verified before it is shown."""
from __future__ import annotations

import json
import os

from ..export import c_size_report
from ..io import layer_table, load_with_manifest
from ._common import check_input_path
from .export import format_size

NAME = "info"
HELP = "show a model file's manifest and per-layer shapes, sparsity, bits and bytes"


def add_arguments(parser):
    """Register the info command's options on `parser`."""
    parser.add_argument("path", help="a model or checkpoint file written by minscale (.npz)")
    parser.add_argument("--json", action="store_true",
                        help="print the whole manifest as JSON instead of the summary")


def format_info(path, model, manifest):
    """The text ``minscale info`` prints.

    Parameters
    ----------
    path : str
    model : Sequential, prune.SparseModel or quant.QuantizedModel
        As :func:`minscale.io.load_with_manifest` returns it.
    manifest : dict

    Returns
    -------
    str
        Header lines (file, format, kind, compile settings, optimizer and its weight decay,
        the layers' L2 regularizers, checkpoint position,
        state keys, digest, the C export's flash and RAM bytes or why there is none), then one table row per layer and a total row. ``sparsity`` is
        the fraction of zero (masked, or not stored) weights of W; ``bits`` the bits per
        stored weight; ``bytes`` the bytes of the layer's stored parameters.
    """
    rows = layer_table(model)
    n_params = sum(r["n_params"] for r in rows)
    lines = [
        f"file        {path} ({os.path.getsize(path):,} bytes)",
        f"format      {manifest['format']} version {manifest['format_version']} (written by "
        f"minscale {manifest.get('library_version', '?')})",
        f"kind        {manifest['kind']}, dtype {manifest.get('dtype', '?')}, "
        f"{n_params:,} stored parameters",
    ]
    compiled = manifest.get("compile")
    if isinstance(compiled, dict):
        metrics = ", ".join(compiled.get("metrics") or []) or "none"
        lines.append(f"compile     loss {compiled.get('loss')}, reduction "
                     f"{compiled.get('reduction')}, metrics {metrics}")
    opt = manifest.get("optimizer")
    if isinstance(opt, dict):
        config = opt.get("config")
        described = json.dumps(config, sort_keys=True) if config is not None else \
            "(config not serializable: custom schedule)"
        lines.append(f"optimizer   {opt.get('class')} {described}, {opt.get('iterations')} "
                     "updates applied")
        if isinstance(config, dict):
            lines.append(f"decay       {_decay_text(config)}")
    regularizers = _regularizer_text(manifest.get("config"))
    if regularizers:
        lines.append(f"regularizer {regularizers}")
    ck = manifest.get("checkpoint")
    if isinstance(ck, dict):
        lines.append(f"checkpoint  epoch {ck.get('epoch')}, next batch {ck.get('batch')}, "
                     f"step {ck.get('step')}; run: seed {ck.get('seed')}, batch_size "
                     f"{ck.get('batch_size')}, shuffle {ck.get('shuffle')}, "
                     f"{ck.get('n_samples')} rows")
    state = manifest.get("state")
    if isinstance(state, dict) and state:
        lines.append(f"state       {', '.join(sorted(state))}")
    lines.append(f"sha256      {manifest['sha256']}")
    lines.append(_c_export_line(model))
    lines.append("")
    header = f"{'layer':<6}{'W shape':<14}{'b shape':<10}{'activation':<12}{'params':>10}" \
             f"{'sparsity':>10}{'bits':>6}{'bytes':>12}"
    lines.append(header)
    total_w = zero_w = total_bytes = 0
    for r in rows:
        n_w = r["W_shape"][0] * r["W_shape"][1]
        total_w += n_w
        zero_w += r["sparsity"] * n_w
        total_bytes += r["nbytes"]
        b_shape = "-" if r["b_shape"] is None else str(r["b_shape"])
        lines.append(f"{r['index']:<6}{str(r['W_shape']):<14}{b_shape:<10}"
                     f"{r['activation']:<12}{r['n_params']:>10,}{r['sparsity']:>10.4f}"
                     f"{r['bits']:>6}{r['nbytes']:>12,}")
    extra = getattr(model, "nbytes", total_bytes) - total_bytes \
        if hasattr(model, "size_report") else 0
    if extra:
        # a quantized model also stores its input's scale and zero point, outside every layer
        lines.append(f"{'input':<6}{'activation scale + zero point':<56}{'':>4}{extra:>12,}")
        total_bytes += extra
    lines.append(f"{'total':<42}{n_params:>10,}{zero_w / total_w:>10.4f}{'':>6}"
                 f"{total_bytes:>12,}")
    return "\n".join(lines)


def _decay_text(config):
    """The optimizer's weight decay in words, defaults included (AdamW's 0.01)."""
    decoupled = config.get("name") == "adamw"
    wd = config.get("weight_decay", 0.01 if decoupled else 0.0)
    if not wd:
        return "none"
    kind = "decoupled (AdamW)" if decoupled else "coupled"
    biases = "kernels only" if config.get("decay_bias") is False else "biases included"
    return f"weight_decay {wd:g}, {kind}, {biases}"


def _regularizer_text(config):
    """Each regularized layer's L2 strength, or '' (none, or not a Sequential's config)."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        return ""
    parts = [f"layer {i}: L2 {lc['kernel_regularizer'].get('l2'):g}"
             for i, lc in enumerate(config["layers"])
             if isinstance(lc, dict) and isinstance(lc.get("kernel_regularizer"), dict)]
    return ", ".join(parts)


def _c_export_line(model):
    """What ``minscale export --format c`` would generate for `model`, or why it cannot."""
    try:
        return f"C export    {format_size(c_size_report(model))}"
    except (TypeError, ValueError) as exc:
        return f"C export    not available: {exc}"


def run(args):
    """Load and verify the file, then print its summary (or manifest with --json)."""
    model, manifest = load_with_manifest(check_input_path(args.path, "path"))
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print(format_info(args.path, model, manifest))
    return 0
