"""``minscale export``: a saved model as C99 source or as an ONNX graph, with its size.

Examples::

    minscale export q.npz --format c --out build/ --name digits --rounding double
    minscale export q.npz --format onnx --out q.onnx --mode integer
    minscale export model.npz --format c --out build/          # a float model: float C

``--format c`` writes ``NAME.h`` and ``NAME.c`` into the directory ``--out`` and prints the
flash bytes (weights, sparse indices, biases, scales, layer table) and the RAM bytes (the one
scratch buffer) it generated. ``--format onnx`` writes one .onnx file: ``--mode integer`` (an
exact graph of integer operators, the default for a quantized model), ``qdq`` (a standard
QuantizeLinear/DequantizeLinear graph) or ``float`` (the default for a float model).

``--fixed fixed8|fixed16`` first quantizes a float model to integer-only Qm.n fixed point
(``minscale.quant.quantize_fixed_model``), calibrated on the training split of the data
options (``--data`` etc., default: what the model file records), then exports that; the data
options and ``--fixed-rounding`` are refused without ``--fixed``.
"""
from __future__ import annotations

import os

from ..export import c_size_report, to_c, to_onnx
from ..export.plan import check_name
from ..io import load
from ..model import Sequential
from ..quant import QuantizedModel, quantize_fixed_model
from ._common import add_recorded_data_arguments, check_input_path, check_output_path, load_task
from .evaluate import data_options

NAME = "export"
HELP = "export a saved model to C99 (header + source) or ONNX, and print its flash/RAM bytes"


def add_arguments(parser):
    """Register the export command's options on `parser`."""
    parser.add_argument("model", help="a model file written by minscale (.npz)")
    parser.add_argument("--format", choices=("c", "onnx"), required=True,
                        help="c: NAME.h + NAME.c in the directory --out; onnx: the file --out")
    parser.add_argument("--out", required=True,
                        help="output directory (c) or .onnx file (onnx)")
    parser.add_argument("--name", default=None,
                        help="c only: C identifier prefixing every generated symbol "
                        "(default: model)")
    parser.add_argument("--rounding", choices=("double", "single"), default=None,
                        help="int8/uint8 models: gemmlowp double rounding (default) or TFLite "
                        "single rounding")
    parser.add_argument("--mode", choices=("integer", "qdq", "float"), default=None,
                        help="integer (quantized models, default), qdq (onnx only) or float "
                        "(float models, default)")
    parser.add_argument("--fixed", choices=("fixed8", "fixed16"), default=None,
                        help="first quantize a float model to integer-only Qm.n fixed point, "
                        "calibrated on the training split of the data options")
    parser.add_argument("--fixed-rounding", choices=("half_away", "nearest_even"),
                        default=None, help="with --fixed: rounding of the requantizing shifts "
                        "(default: half_away)")
    add_recorded_data_arguments(parser)


def format_size(rep):
    """One line of flash and RAM bytes from :func:`minscale.export.c_size_report`."""
    return (f"flash {rep['flash']:,} bytes (weights {rep['weights']:,}, sparse index "
            f"{rep['index']:,}, biases {rep['biases']:,}, scales {rep['scales']:,}, layer table "
            f"{rep['table']:,}); RAM {rep['ram']:,} bytes (scratch buffer); layouts "
            f"{', '.join(rep['layouts'])}")


def _load_model(path):
    model = load(path)
    if not isinstance(model, (Sequential, QuantizedModel)):
        raise ValueError(f"model {path!r} holds a {type(model).__name__}; export reads a float "
                         "Sequential or a QuantizedModel")
    return model


def run(args):
    """Load, check, export; print what was written and its size."""
    given = [opt for opt, v in (("--data", args.data), ("--target", args.target),
                                ("--test-size", args.test_size), ("--seed", args.seed),
                                ("--fixed-rounding", args.fixed_rounding)) if v is not None]
    if given and args.fixed is None:
        raise ValueError(f"{', '.join(given)} would be ignored: they apply with --fixed only")
    if args.name is not None and args.format != "c":
        raise ValueError("--name would be ignored: it applies with --format c only")
    if args.rounding is not None and args.fixed is not None:
        raise ValueError("--rounding would be ignored with --fixed (use --fixed-rounding)")
    name, rounding = args.name or "model", args.rounding or "double"
    check_input_path(args.model, "model")
    # every output path is checked before the model is loaded: nothing is done, nothing written
    if args.format == "c":
        if args.mode == "qdq":
            raise ValueError("--mode qdq applies to --format onnx only")
        check_name(name)
        _check_c_directory(args.out, name)
    else:
        check_output_path(args.out, "--out", suffixes=(".onnx",))
    model = _load_model(args.model)
    if args.fixed is not None:
        model = _fixed(model, args)
    default = "float" if isinstance(model, Sequential) else "integer"
    mode = args.mode or default
    if args.rounding is not None and mode in ("float", "qdq"):
        raise ValueError(f"--rounding would be ignored: a {mode} export does not use it "
                         "(a float export does not requantize; a QDQ graph rounds as its "
                         "runtime does)")
    if args.format == "c":
        rep = c_size_report(model, kind=mode)
        paths = to_c(model, args.out, name=name, rounding=rounding, kind=mode)
        for p in paths:
            print(f"wrote {p} ({os.path.getsize(p):,} bytes)")
        print(format_size(rep))
        return 0
    path = to_onnx(model, args.out, mode=mode, rounding=rounding)
    print(f"wrote {path} ({os.path.getsize(path):,} bytes, {mode} graph)")
    if mode != "float":
        print(f"as C: {format_size(c_size_report(model))}")
    return 0


def _check_c_directory(out, name):
    """Refuse, before any work, a ``--out`` folder that ``--format c`` could not write into.

    ``--out`` is an existing folder, or a new one whose parent folder exists and is
    writable: minscale creates only the last folder of the path (as every output's folder
    must exist, ``build/c/`` with ``build`` missing is refused). ``NAME.h`` and ``NAME.c``
    are checked as every output file is (:func:`minscale.data.check_output_path`).

    Raises
    ------
    ValueError
        One line naming ``--out``.
    """
    seps = os.sep + (os.altsep or "")
    folder = out.rstrip(seps) or out
    if os.path.isdir(folder):
        for fname in (f"{name}.h", f"{name}.c"):
            check_output_path(os.path.join(folder, fname), "--out")
        return
    if os.path.lexists(folder):
        raise ValueError(f"--out {out!r} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise ValueError(f"--out {out!r}: directory {parent!r} does not exist (minscale "
                         "creates only the last folder of --out; create the others first)")
    # the new folder is created where a file of that name would be: check it as one
    check_output_path(folder, "--out")


def _fixed(model, args):
    """The float model quantized to fixed point, calibrated on its training split."""
    if not isinstance(model, Sequential):
        raise ValueError(f"--fixed needs a float Sequential model; {args.model!r} holds a "
                         f"{type(model).__name__}")
    options, _ = data_options(args, model.state.get("data"), args.model)
    X_tr = load_task(options, model.dtype.name)["X_train"]
    if X_tr.shape[1] != model.input_dim:
        raise ValueError(f"the model expects {model.input_dim} features but {options.data!r} "
                         f"has {X_tr.shape[1]}")
    fixed = quantize_fixed_model(model, args.fixed, args.fixed, X_tr,
                                 rounding=args.fixed_rounding or "half_away")
    print(f"quantized to {args.fixed} (shifts rounded {fixed.rounding}), calibrated on "
          f"{X_tr.shape[0]} training rows of {options.data}")
    return fixed

