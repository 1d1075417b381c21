"""ONNX import: a float :class:`minscale.Sequential` from an MLP another framework exported.

Accepted graphs are one chain from the one input to the one output, made of dense layers --
``Gemm`` (``transA = 0``; any ``alpha``, ``beta``, ``transB``), or ``MatMul`` optionally followed
by ``Add`` of a constant -- each optionally followed by one of ``Relu``, ``Tanh``, ``Sigmoid``,
``LeakyRelu``. Weights and biases must be initializers (or ``Constant`` nodes). Anything else
is refused with one line naming the node. Only float graphs are read (a float32 or float64
input): an integer or QDQ graph -- minscale's own export of a quantized model included --
cannot be read back; import the float model instead. The result is float64 and predicts like
the ONNX model up to float32 rounding (the ONNX graph computes in float32).
"""
from __future__ import annotations

import os

import numpy as np

from ..layers import Dense
from ..model import Sequential

__all__ = ["from_onnx", "ACTIVATION_OPS"]

#: ONNX activation operator -> minscale activation
ACTIVATION_OPS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyRelu": "leaky_relu"}

_HINT = ("from_onnx reads MLPs: Gemm, or MatMul + Add, with Relu, Tanh, Sigmoid, LeakyRelu or "
         "nothing between")


def _attrs(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _describe(node):
    return f"node {node.name or '(unnamed)'!r} ({node.op_type})"


def _dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def from_onnx(path):
    """Read an ONNX MLP into a float64 Sequential; see the module docstring.

    Parameters
    ----------
    path : str or path
        An .onnx file.

    Returns
    -------
    Sequential
        Built, float64, one Dense layer per Gemm or MatMul(+Add), activations from the
        following node; layers without an Add have ``use_bias=False``.

    Raises
    ------
    ValueError
        If the file is not a valid ONNX model, the graph has a node outside the accepted set
        (the message names it), weights that are not constants, shapes that do not chain,
        more than one input or output, or an input that is not float32/float64 (an integer or
        QDQ graph, such as minscale's own export of a quantized model: only float MLPs are
        read; the message says so).
    ImportError
        If onnx is missing.
    FileNotFoundError
        If path does not exist.

    Notes
    -----
    Gemm: ``y = alpha * x @ B' + beta * C`` with ``B' = B.T`` when ``transB``, so
    ``W = alpha * B'`` and ``b = beta * C`` (broadcast to ``(d_out,)``).
    """
    try:
        import onnx  # noqa: PLC0415
        from onnx import numpy_helper  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("ONNX import needs the onnx package: pip install onnx") from exc
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises protobuf DecodeError, ValidationError, ...
        raise ValueError(f"{path!r} is not a valid ONNX model: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    graph = proto.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"the graph must have one input and one output, got "
                         f"{len(inputs)} inputs and {len(graph.output)} outputs; {_HINT}")
    dims = _dims(inputs[0])
    elem = inputs[0].type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        props = {p.key: p.value for p in proto.metadata_props}
        mode = props.get("minscale.mode") if proto.producer_name == "minscale" else None
        source = (f"this is minscale's own {mode} graph, which cannot be read back"
                  if mode in ("integer", "qdq") else
                  "an integer or QDQ graph (as minscale exports a quantized model) cannot be "
                  "read back")
        raise ValueError(f"input {inputs[0].name!r} must be float32 or float64, got "
                         f"{onnx.TensorProto.DataType.Name(elem)}: only float MLP graphs can "
                         f"be imported; {source}: import the float model instead (its .npz, "
                         "or its ONNX export with --mode float)")
    if len(dims) != 2 or dims[1] is None:
        raise ValueError(f"input {inputs[0].name!r} must have shape (n, d_in) with a fixed "
                         f"d_in, got {dims}")
    d_in = dims[1]
    cur = inputs[0].name
    layers = []  # dicts: W, b, activation, alpha, node
    for node in graph.node:
        op, attrs = node.op_type, _attrs(onnx, node)
        if op == "Constant":
            if "value" not in attrs:
                raise ValueError(f"{_describe(node)}: only tensor constants are supported")
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            continue
        data = [name for name in node.input if name and name not in consts]
        if data != [cur]:
            raise ValueError(f"{_describe(node)} does not continue the one chain from the "
                             f"input (its inputs {list(node.input)}); {_HINT}")
        if op in ("Gemm", "MatMul"):
            if op == "Gemm":
                if attrs.get("transA", 0):
                    raise ValueError(f"{_describe(node)}: transA=1 is not supported")
                if node.input[0] != cur:
                    raise ValueError(f"{_describe(node)}: the data must be input A")
                B = np.asarray(consts[node.input[1]], dtype=np.float64)
                if B.ndim != 2:
                    raise ValueError(f"{_describe(node)}: B must be 2-D, got shape {B.shape}")
                W = float(attrs.get("alpha", 1.0)) * (B.T if attrs.get("transB", 0) else B)
                b = None
                if len(node.input) > 2 and node.input[2]:
                    b = float(attrs.get("beta", 1.0)) * np.asarray(consts[node.input[2]],
                                                                    dtype=np.float64)
            else:
                if node.input[0] != cur:
                    raise ValueError(f"{_describe(node)}: the data must be the first input "
                                     "(x @ W)")
                W = np.asarray(consts[node.input[1]], dtype=np.float64)
                if W.ndim != 2:
                    raise ValueError(f"{_describe(node)}: W must be 2-D, got shape {W.shape}")
                b = None
            layers.append({"W": W, "b": b, "activation": "identity", "alpha": 0.01,
                           "node": node, "can_add": op == "MatMul"})
        elif op == "Add":
            if not layers or not layers[-1]["can_add"]:
                raise ValueError(f"{_describe(node)}: an Add must directly follow a MatMul; "
                                 f"{_HINT}")
            other = [name for name in node.input if name != cur]
            if len(other) != 1:
                raise ValueError(f"{_describe(node)}: must add one constant")
            layers[-1]["b"] = np.asarray(consts[other[0]], dtype=np.float64)
            layers[-1]["can_add"] = False
        elif op in ACTIVATION_OPS:
            if not layers or layers[-1]["activation"] != "identity":
                raise ValueError(f"{_describe(node)}: an activation must follow a dense "
                                 f"layer; {_HINT}")
            layers[-1]["activation"] = ACTIVATION_OPS[op]
            layers[-1]["alpha"] = float(attrs.get("alpha", 0.01))
            layers[-1]["can_add"] = False
        else:
            raise ValueError(f"{_describe(node)} is not supported; {_HINT}")
        cur = node.output[0]
    if not layers:
        raise ValueError(f"the graph has no dense layer; {_HINT}")
    if cur != graph.output[0].name:
        raise ValueError(f"the chain ends at {cur!r}, not at the output "
                         f"{graph.output[0].name!r}")
    weights, dense, d = [], [], d_in
    for L in layers:
        W, b = L["W"], L["b"]
        if W.shape[0] != d:
            raise ValueError(f"{_describe(L['node'])}: W has shape {W.shape}, the layer input "
                             f"has {d} features")
        d_out = W.shape[1]
        if b is not None:
            if b.size not in (1, d_out) or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
                raise ValueError(f"{_describe(L['node'])}: bias of shape {b.shape} does not "
                                 f"broadcast to ({d_out},)")
            b = np.broadcast_to(b.reshape(-1), (d_out,))
        if not np.all(np.isfinite(W)) or (b is not None and not np.all(np.isfinite(b))):
            raise ValueError(f"{_describe(L['node'])}: weights hold NaN or inf")
        dense.append(Dense(d_out, activation=L["activation"], use_bias=b is not None,
                           alpha=L["alpha"]))
        weights.append(W)
        if b is not None:
            weights.append(b)
        d = d_out
    model = Sequential(dense, input_dim=d_in, dtype="float64")
    model.set_weights(weights)
    return model
