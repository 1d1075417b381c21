"""ONNX export: an exact graph of integer operators, a standard QDQ graph, or a float graph.

``mode="integer"`` writes the integer-only path with integer ONNX operators only, so any
conforming runtime computes :meth:`QuantizedModel.predict_codes` bit for bit. Per layer::

    acc = MatMulInteger(x, W, x_zero_point)                     int32, exact
    v   = Cast(acc, int64) + bias                               int64
    double rounding (gemmlowp):
        s  = v * 2**left                                        (left = max(shift, 0))
        h  = floordiv(s * M0 + 2**30, 2**31)                    SaturatingRoundingDoublingHighMul
        r  = floordiv(h, 2**right)                              (right = max(-shift, 0))
             + (mod(h, 2**right) > (2**right - 1) // 2 + (h < 0))   RoundingDivideByPOT
    single rounding (TFLite): r = floordiv(v * M0 + 2**(30 - shift), 2**(31 - shift))
    y   = Cast(Clip(r + output_zero_point, lower, upper), int8)

``floordiv(u, d) = (u - Mod(u, d)) / d``: ONNX ``Mod`` with ``fmod=0`` takes the sign of the
divisor on integers (Python's ``%``), and ``Div`` then divides exactly, so the result does not
depend on how a runtime rounds an inexact integer division. ``h`` equals gemmlowp's
``trunc((ab + nudge) / 2**31)`` with ``nudge = 2**30`` or ``1 - 2**30``: for ``ab < 0``,
``ceil((ab + 1 - 2**30) / 2**31) = floor((ab + 2**30) / 2**31)``. Every int64 intermediate is
below ``2**63`` in magnitude (``|s| < 2**31``, ``M0 < 2**31``).

``mode="qdq"`` writes the standard ``DequantizeLinear -> MatMul -> Add -> (Relu) ->
QuantizeLinear`` graph (weights per channel along axis 1, int32 bias at ``s_in * s_w``) that
every ONNX runtime runs, fusing it to QLinearMatMul or not; runtimes requantize with a float
multiplier and round half to even, so their codes can differ from minscale's by one (measured
by :func:`qdq_disagreement`). Both modes read int8 ``input_codes`` (n, d_in) and write int8
``output_codes`` (n, d_out) (uint8 for uint8 activations).

A :class:`minscale.quant.FixedPointModel` (fixed8/fixed16) exports with ``mode="integer"`` to
the same kind of exact graph: ``MatMulInteger`` (fixed8) or an int64 ``MatMul`` (fixed16), the
bias, then :func:`minscale.quant.fixed_shift_round` written with ``Abs``/``Sign`` and a
floordiv (half away) or a floordiv, the remainder and the parity (half to even), a clamp, and
a ``Cast`` to int8/int16.

``mode="float"`` writes a float Sequential as ``MatMul -> Add -> activation`` in float32 with
input ``x`` and output ``y``.
"""
from __future__ import annotations

import os

import numpy as np

from .._version import __version__
from ..io import atomic_write
from ..quant import FixedPointModel
from .plan import fixed_plan, float_plan, integer_plan

__all__ = ["to_onnx", "onnx_model", "run_onnx", "MODES", "OPSET", "qdq_disagreement"]

MODES = ("integer", "qdq", "float")

#: the ONNX opset the graphs declare (DequantizeLinear per axis needs >= 13)
OPSET = 17


def _onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError as exc:  # optional dependency
        raise ImportError("ONNX export needs the onnx package: pip install onnx "
                          "(or the minscale[test] extra)") from exc
    return onnx


class _Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits, self._n = onnx, [], [], 0

    def const(self, name, value, dtype):
        arr = np.asarray(value, dtype=dtype)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type, inputs, name, **attrs):
        self._n += 1
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [name],
                                                     name=f"{op_type}_{self._n}", **attrs))
        return name

    def floordiv(self, u, d, prefix):
        """(floor(u / d), mod(u, d)) for int64 u and positive int64 d, via Mod and exact Div."""
        mod = self.op("Mod", [u, d], f"{prefix}_mod", fmod=0)
        q = self.op("Div", [self.op("Sub", [u, mod], f"{prefix}_sub"), d], f"{prefix}_div")
        return q, mod


def _integer_layer(g, i, layer, x, rounding, code_np, last):
    p = f"l{i}"
    W = np.ascontiguousarray(layer.Wt.T)
    acc = g.op("MatMulInteger", [x, g.const(f"{p}_W", W, W.dtype),
                                 g.const(f"{p}_x_zero_point", layer.input_zero_point, code_np)],
               f"{p}_acc")
    v = g.op("Cast", [acc], f"{p}_acc64", to=g.onnx.TensorProto.INT64)
    if np.any(layer.bias != 0):
        v = g.op("Add", [v, g.const(f"{p}_bias", layer.bias, np.int64)], f"{p}_biased")
    m0 = g.const(f"{p}_M0", layer.multiplier, np.int64)
    shift = layer.shift
    if rounding == "double":
        left = np.maximum(shift, 0)
        right = np.maximum(-shift, 0)
        if np.any(left):
            v = g.op("Mul", [v, g.const(f"{p}_pow_left", 2**left, np.int64)], f"{p}_shifted")
        ab = g.op("Mul", [v, m0], f"{p}_ab")
        u = g.op("Add", [ab, g.const(f"{p}_half31", 2**30, np.int64)], f"{p}_nudged")
        h, _ = g.floordiv(u, g.const(f"{p}_pow31", 2**31, np.int64), f"{p}_high")
        fl, rem = g.floordiv(h, g.const(f"{p}_pow_right", 2**right, np.int64), f"{p}_pot")
        neg = g.op("Cast", [g.op("Less", [h, g.const(f"{p}_zero", 0, np.int64)], f"{p}_isneg")],
                   f"{p}_neg", to=g.onnx.TensorProto.INT64)
        thr = g.op("Add", [g.const(f"{p}_half_mask", (2**right - 1) >> 1, np.int64), neg],
                   f"{p}_threshold")
        up = g.op("Cast", [g.op("Greater", [rem, thr], f"{p}_above")], f"{p}_up",
                  to=g.onnx.TensorProto.INT64)
        r = g.op("Add", [fl, up], f"{p}_scaled")
    else:
        total = 31 - shift
        ab = g.op("Mul", [v, m0], f"{p}_ab")
        u = g.op("Add", [ab, g.const(f"{p}_half", 2 ** (total - 1), np.int64)], f"{p}_nudged")
        r, _ = g.floordiv(u, g.const(f"{p}_pow_total", 2**total, np.int64), f"{p}_single")
    y = g.op("Add", [r, g.const(f"{p}_y_zero_point", layer.output_zero_point, np.int64)],
             f"{p}_offset")
    y = g.op("Clip", [y, g.const(f"{p}_lower", layer.lower, np.int64),
                      g.const(f"{p}_upper", layer.upper, np.int64)], f"{p}_clamped")
    to = g.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(code_np))
    return g.op("Cast", [y], "output_codes" if last else f"{p}_codes", to=to)


def _fixed_layer(g, i, layer, x, rounding, code_np, bits, last):
    """Qm.n layer: exact int64 product, + bias, the rounding shift, clamp (see the C export)."""
    p = f"l{i}"
    TP = g.onnx.TensorProto
    W = np.ascontiguousarray(layer.Wt.T)
    if bits == 8:
        acc = g.op("MatMulInteger", [x, g.const(f"{p}_W", W, W.dtype)], f"{p}_acc")
        v = g.op("Cast", [acc], f"{p}_acc64", to=TP.INT64)
    else:
        x64 = g.op("Cast", [x], f"{p}_x64", to=TP.INT64)
        v = g.op("MatMul", [x64, g.const(f"{p}_W", W, np.int64)], f"{p}_acc64")
    if np.any(layer.bias != 0):
        v = g.op("Add", [v, g.const(f"{p}_bias", layer.bias, np.int64)], f"{p}_biased")
    if layer.shift <= 0:
        v = g.op("Clip", [v, g.const(f"{p}_lo16", -(2**16), np.int64),
                          g.const(f"{p}_hi16", 2**16, np.int64)], f"{p}_pre")
        r = g.op("Mul", [v, g.const(f"{p}_pow_left", 2 ** min(-layer.shift, 31), np.int64)],
                 f"{p}_scaled")
    else:
        s = min(layer.shift, 62)
        half = g.const(f"{p}_half", 2 ** (s - 1), np.int64)
        d = g.const(f"{p}_pow", 2**s, np.int64)
        if rounding == "half_away":
            mag = g.op("Add", [g.op("Abs", [v], f"{p}_abs"), half], f"{p}_mag_half")
            q, _ = g.floordiv(mag, d, f"{p}_shift")
            r = g.op("Mul", [q, g.op("Sign", [v], f"{p}_sign")], f"{p}_scaled")
        else:
            q, rem = g.floordiv(v, d, f"{p}_shift")
            two = g.const(f"{p}_two", 2, np.int64)
            odd = g.op("Equal", [g.op("Mod", [q, two], f"{p}_parity", fmod=0),
                                 g.const(f"{p}_one", 1, np.int64)], f"{p}_odd")
            tie_odd = g.op("And", [g.op("Equal", [rem, half], f"{p}_tie"), odd], f"{p}_tie_odd")
            up = g.op("Or", [g.op("Greater", [rem, half], f"{p}_above"), tie_odd], f"{p}_up")
            r = g.op("Add", [q, g.op("Cast", [up], f"{p}_up64", to=TP.INT64)], f"{p}_scaled")
    y = g.op("Clip", [r, g.const(f"{p}_lower", layer.lower, np.int64),
                      g.const(f"{p}_upper", layer.upper, np.int64)], f"{p}_clamped")
    to = g.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(code_np))
    return g.op("Cast", [y], "output_codes" if last else f"{p}_codes", to=to)


def _qdq_layer(g, i, qlayer, layer, x, code_np, last):
    p = f"l{i}"
    s_in, z_in = qlayer.input_qparams
    s_out, z_out = qlayer.output_qparams
    xf = g.op("DequantizeLinear", [x, g.const(f"{p}_x_scale", s_in, np.float32),
                                   g.const(f"{p}_x_zero_point", z_in, code_np)], f"{p}_x")
    W = np.ascontiguousarray(layer.Wt.T)
    d_out = W.shape[1]
    w_scale = qlayer.weight_scale.astype(np.float32)
    wf = g.op("DequantizeLinear", [g.const(f"{p}_W", W, W.dtype),
                                   g.const(f"{p}_W_scale", w_scale, np.float32),
                                   g.const(f"{p}_W_zero_point", np.zeros(d_out), W.dtype)],
              f"{p}_Wf", axis=1)
    z = g.op("MatMul", [xf, wf], f"{p}_z")
    if np.any(layer.bias != 0):
        b_scale = (np.float64(s_in) * qlayer.weight_scale).astype(np.float32)
        bf = g.op("DequantizeLinear", [g.const(f"{p}_bias", layer.bias, np.int32),
                                       g.const(f"{p}_bias_scale", b_scale, np.float32),
                                       g.const(f"{p}_bias_zero_point", np.zeros(d_out),
                                               np.int32)],
                  f"{p}_bf", axis=0)
        z = g.op("Add", [z, bf], f"{p}_zb")
    if layer.activation == "relu":
        z = g.op("Relu", [z], f"{p}_relu")
    return g.op("QuantizeLinear", [z, g.const(f"{p}_y_scale", s_out, np.float32),
                                   g.const(f"{p}_y_zero_point", z_out, code_np)],
                "output_codes" if last else f"{p}_codes")


_FLOAT_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu"}


def _float_layer(g, i, layer, x, last):
    p = f"l{i}"
    z = g.op("MatMul", [x, g.const(f"{p}_W", layer.Wt.T, np.float32)], f"{p}_xW")
    out = "y" if last else f"{p}_a"
    if layer.activation == "identity":
        return g.op("Add", [z, g.const(f"{p}_b", layer.bias, np.float32)], out)
    z = g.op("Add", [z, g.const(f"{p}_b", layer.bias, np.float32)], f"{p}_z")
    attrs = {"alpha": layer.alpha} if layer.activation == "leaky_relu" else {}
    return g.op(_FLOAT_OPS[layer.activation], [z], out, **attrs)


def onnx_model(model, mode="integer", rounding="double"):
    """The ONNX ModelProto of `model` (nothing is written); see the module docstring.

    Parameters
    ----------
    model : QuantizedModel (modes integer, qdq), FixedPointModel (mode integer) or
        Sequential (mode float)
    mode : {"integer", "qdq", "float"}, default "integer"
    rounding : {"double", "single"}, default "double"
        Integer mode of a QuantizedModel: which requantization the graph computes (a
        FixedPointModel's graph uses the model's own shift rounding).

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker.check_model(..., full_check=True)``.

    Raises
    ------
    ValueError
        Unknown mode or rounding, or a model the mode cannot export (a float model for
        integer/qdq, weights-only quantization, an unsupported activation).
    ImportError
        If onnx is missing.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if rounding not in ("double", "single"):
        raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")
    fixed = isinstance(model, FixedPointModel)
    if fixed and mode != "integer":
        raise ValueError(f"a fixed-point model exports with mode='integer' only, got {mode!r}")
    if fixed:
        plan = fixed_plan(model)
    else:
        plan = float_plan(model) if mode == "float" else integer_plan(model, mode)
    onnx = _onnx()
    g = _Graph(onnx)
    helper, TP = onnx.helper, onnx.TensorProto
    if mode == "float":
        elem, in_name, out_name, code_np = TP.FLOAT, "x", "y", None
    else:
        code_np = {8: np.int8, 16: np.int16}[plan.bits] if fixed else (
            np.int8 if plan.signed else np.uint8)
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(code_np))
        in_name, out_name = "input_codes", "output_codes"
    x = in_name
    n = len(plan.layers)
    for i, layer in enumerate(plan.layers):
        last = i == n - 1
        if fixed:
            x = _fixed_layer(g, i, layer, x, plan.rounding, code_np, plan.bits, last)
        elif mode == "integer":
            x = _integer_layer(g, i, layer, x, rounding, code_np, last)
        elif mode == "qdq":
            x = _qdq_layer(g, i, model.layers[i], layer, x, code_np, last)
        else:
            x = _float_layer(g, i, layer, x, last)
    graph = helper.make_graph(
        g.nodes, f"minscale_{mode}",
        [helper.make_tensor_value_info(in_name, elem, ["n", plan.input_dim])],
        [helper.make_tensor_value_info(out_name, elem, ["n", plan.output_dim])],
        initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="minscale", producer_version=__version__)
    proto.ir_version = 8
    what = {"integer": f"exact integer graph, {rounding} rounding", "qdq": "QDQ graph",
            "float": "float32 graph"}[mode]
    if fixed:
        what = f"exact Q{plan.bits} fixed-point graph, shifts rounded {plan.rounding}"
    helper.set_model_props(proto, {"minscale.mode": mode, "minscale.description": what})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(model, path, mode="integer", rounding="double"):
    """Write `model` as an ONNX file; see :func:`onnx_model` and the module docstring.

    Parameters
    ----------
    model : QuantizedModel or Sequential
    path : str or path
        The .onnx file; its folder must exist. Written by :func:`minscale.io.atomic_write`
        (a temporary file beside it, fsynced, then renamed: never half written; a new file
        gets mode 0o644, a replaced one keeps its mode).
    mode : {"integer", "qdq", "float"}, default "integer"
    rounding : {"double", "single"}, default "double"

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError, ImportError
        As :func:`onnx_model`; also if path is an existing directory.
    FileNotFoundError, PermissionError, OSError
        The folder is missing or cannot be written (the message names `path`); a previous
        file at `path` is unchanged.

    Examples
    --------
    >>> import minscale as ms, numpy as np, tempfile, os
    >>> m = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=0)
    >>> q = ms.quant.quantize_model(m, calibration_data=np.ones((4, 2)))
    >>> os.path.basename(to_onnx(q, os.path.join(tempfile.mkdtemp(), "m.onnx")))
    'm.onnx'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory; give the .onnx file to write")
    data = onnx_model(model, mode=mode, rounding=rounding).SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return path


def run_onnx(model_or_path, inputs):
    """Run a model on onnxruntime's CPU provider; return its one output.

    Parameters
    ----------
    model_or_path : onnx.ModelProto or str
    inputs : ndarray
        The graph's one input.
    """
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("running ONNX graphs needs onnxruntime: pip install onnxruntime") \
            from exc
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") \
        else os.fspath(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    first = sess.get_inputs()[0]
    inputs = np.asarray(inputs)
    if first.type in _ORT_FLOATS:
        inputs = inputs.astype(_ORT_FLOATS[first.type])
    return sess.run(None, {first.name: inputs})[0]


_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def qdq_disagreement(model, X, rounding="double"):
    """How the QDQ graph on onnxruntime differs from minscale's integer codes on `X`.

    Parameters
    ----------
    model : QuantizedModel
    X : array_like, shape (n, d_in)
    rounding : {"double", "single"}
        The minscale reference (``predict_codes(X, requantize_rounding=rounding)``).

    Returns
    -------
    dict
        ``fraction`` (of output codes that differ), ``max_abs`` (largest code difference),
        ``n`` (output codes compared), ``rows_fraction`` (rows with any difference).
    """
    ref = model.predict_codes(X, requantize_rounding=rounding).astype(np.int64)
    got = run_onnx(onnx_model(model, mode="qdq"), model.quantize_input(X)).astype(np.int64)
    diff = np.abs(got - ref)
    return {"fraction": float(np.mean(diff != 0)), "max_abs": int(diff.max(initial=0)),
            "n": int(diff.size), "rows_fraction": float(np.mean((diff != 0).any(axis=1)))}
