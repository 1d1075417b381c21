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
"""
from __future__ import annotations

import os

NAME = "export"
HELP = "export a saved model to C99 (header + source) or ONNX, and print its flash/RAM bytes"


def add_arguments(parser):
    """Register the export command's options on `parser`."""
    parser.add_argument("model", help="a model file written by minscale (.npz)")
    parser.add_argument("--format", choices=("c", "onnx"), required=True,
                        help="c: NAME.h + NAME.c in the directory --out; onnx: the file --out")
    parser.add_argument("--out", required=True,
                        help="output directory (c) or .onnx file (onnx)")
    parser.add_argument("--name", default="model",
                        help="C identifier prefixing every generated symbol (default: model)")
    parser.add_argument("--rounding", choices=("double", "single"), default="double",
                        help="integer requantization: gemmlowp double rounding (default) or "
                        "TFLite single rounding")
    parser.add_argument("--mode", choices=("integer", "qdq", "float"), default=None,
                        help="integer (quantized models, default), qdq (onnx only) or float "
                        "(float models, default)")


def format_size(rep):
    """One line of flash and RAM bytes from :func:`minscale.export.c_size_report`."""
    return (f"flash {rep['flash']:,} bytes (weights {rep['weights']:,}, sparse index "
            f"{rep['index']:,}, biases {rep['biases']:,}, scales {rep['scales']:,}, layer table "
            f"{rep['table']:,}); RAM {rep['ram']:,} bytes (scratch buffer); layouts "
            f"{', '.join(rep['layouts'])}")


def _load_model(path):
    from ..io import load
    from ..model import Sequential
    from ..quant import QuantizedModel
    model = load(path)
    if not isinstance(model, (Sequential, QuantizedModel)):
        raise ValueError(f"model {path!r} holds a {type(model).__name__}; export reads a float "
                         "Sequential or a QuantizedModel")
    return model


def run(args):
    """Load, check, export; print what was written and its size."""
    from ..export import c_size_report, to_c, to_onnx
    from ..export.plan import check_name
    from ..model import Sequential
    from ._common import check_input_path, check_output_path
    model = _load_model(check_input_path(args.model, "model"))
    default = "float" if isinstance(model, Sequential) else "integer"
    mode = args.mode or default
    if args.format == "c":
        if mode == "qdq":
            raise ValueError("--mode qdq applies to --format onnx only")
        check_name(args.name)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r} exists and is not a directory")
        rep = c_size_report(model, kind=mode)
        paths = to_c(model, args.out, name=args.name, rounding=args.rounding, kind=mode)
        for p in paths:
            print(f"wrote {p} ({os.path.getsize(p):,} bytes)")
        print(format_size(rep))
        return 0
    check_output_path(args.out, "--out", suffixes=(".onnx",))
    path = to_onnx(model, args.out, mode=mode, rounding=args.rounding)
    print(f"wrote {path} ({os.path.getsize(path):,} bytes, {mode} graph)")
    if mode != "float":
        print(f"as C: {format_size(c_size_report(model))}")
    return 0
