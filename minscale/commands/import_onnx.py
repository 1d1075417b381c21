"""``minscale import-onnx``: an ONNX MLP (Gemm or MatMul + Add, with Relu, Tanh, Sigmoid,
LeakyRelu or nothing between) as a minscale model file, checked against onnxruntime.

Example::

    minscale import-onnx mlp.onnx --out model.npz
    minscale prune model.npz --sparsity 0.9 --data digits --out pruned.npz

Any other node is refused with one line naming it. When onnxruntime is installed the imported
model is compared with the ONNX graph on 256 random standard-normal rows and the largest
difference printed (float32 graph against the float64 model).
"""
from __future__ import annotations

import numpy as np

from ..export import from_onnx
from ..export.onnx_export import run_onnx
from ..io import save
from ._common import check_input_path, check_output_path

NAME = "import-onnx"
HELP = "read an ONNX MLP into a minscale model file (.npz)"


def add_arguments(parser):
    """Register the import-onnx command's options on `parser`."""
    parser.add_argument("onnx_file", metavar="MODEL.onnx", help="the ONNX model to read")
    parser.add_argument("--out", required=True, help="the minscale model file to write (.npz)")


def run(args):
    """Read, verify against onnxruntime when present, save."""
    check_input_path(args.onnx_file, "MODEL.onnx")
    check_output_path(args.out, "--out", suffixes=(".npz",))
    model = from_onnx(args.onnx_file)
    shapes = " -> ".join([str(model.input_dim)] + [f"{layer.units} ({layer.activation})"
                                                    for layer in model.layers])
    print(f"read {args.onnx_file}: {len(model.layers)} dense layers, {shapes}")
    try:
        X = np.random.default_rng(0).standard_normal((256, model.input_dim))
        ref = run_onnx(args.onnx_file, X.astype(np.float32)).astype(np.float64)
        diff = float(np.abs(model.predict(X.astype(np.float32).astype(np.float64)) - ref).max())
        print(f"checked against onnxruntime on 256 random rows: max |difference| {diff:.3g}")
    except ImportError:
        print("onnxruntime is not installed: the import was not checked against it")
    save(model, args.out)
    print(f"saved {args.out}")
    return 0
