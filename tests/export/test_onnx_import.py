"""ONNX import: MLPs in the forms other frameworks write (Gemm with transB as PyTorch, MatMul +
Add as tf2onnx) predict like onnxruntime; anything else is refused naming the node."""
from __future__ import annotations

import numpy as np
import pytest

import minscale as ms
from minscale.cli import main
from minscale.export import from_onnx
from minscale.export.onnx_export import onnx_model, run_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ACT_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu"}


def _graph(nodes, inits, d_in, d_out, extra_inputs=(), elem=TensorProto.FLOAT):
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", elem, ["batch", d_in]), *extra_inputs],
        [helper.make_tensor_value_info("output", elem, ["batch", d_out])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _mlp(widths, acts, style, rng, bias=True, gemm_alpha=1.0, gemm_beta=1.0):
    """An MLP graph as PyTorch ("gemm": Gemm transB=1) or tf2onnx ("matmul") writes it."""
    nodes, inits, cur = [], {}, "input"
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        W = (rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
        b = rng.normal(size=d_out).astype(np.float32)
        last = i == len(widths) - 2
        act = acts[i]
        out = "output" if last and act == "identity" else f"z{i}"
        if style == "gemm":
            inits[f"W{i}"] = np.ascontiguousarray(W.T)
            ins = [cur, f"W{i}"] + ([f"b{i}"] if bias else [])
            if bias:
                inits[f"b{i}"] = b
            nodes.append(helper.make_node("Gemm", ins, [out], name=f"gemm{i}", transB=1,
                                          alpha=gemm_alpha, beta=gemm_beta))
        else:
            inits[f"W{i}"] = W
            mm = out if not bias else f"mm{i}"
            nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [mm], name=f"matmul{i}"))
            if bias:
                inits[f"b{i}"] = b
                nodes.append(helper.make_node("Add", [mm, f"b{i}"], [out], name=f"add{i}"))
        cur = out
        if act != "identity":
            a_out = "output" if last else f"a{i}"
            attrs = {"alpha": 0.2} if act == "leaky_relu" else {}
            nodes.append(helper.make_node(ACT_OPS[act], [cur], [a_out], name=f"act{i}",
                                          **attrs))
            cur = a_out
    return _graph(nodes, inits, widths[0], widths[-1])


CASES = [
    ((5, 16, 3), ("relu", "identity"), "gemm", True),
    ((5, 8, 8, 2), ("tanh", "sigmoid", "identity"), "gemm", True),
    ((4, 12, 1), ("leaky_relu", "sigmoid"), "matmul", True),
    ((6, 7, 3), ("relu", "tanh"), "matmul", False),
]


@pytest.mark.parametrize("widths,acts,style,bias", CASES)
def test_imported_model_predicts_like_onnxruntime(widths, acts, style, bias, tmp_path):
    rng = np.random.default_rng(len(widths) + len(style))
    proto = _mlp(widths, acts, style, rng, bias=bias, gemm_alpha=0.5, gemm_beta=2.0)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = from_onnx(path)
    assert [layer.activation for layer in model.layers] == list(acts)
    assert model.dtype == np.float64
    X = rng.normal(size=(100, widths[0])).astype(np.float32)
    # float64 minscale against the float32 graph: within 1e-5 relative + 1e-5 absolute
    np.testing.assert_allclose(model.predict(X.astype(np.float64)), run_onnx(path, X),
                               rtol=1e-5, atol=1e-5)


def test_round_trip_prune_quantize_export(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "m.onnx"
    onnx.save(_mlp((8, 24, 4), ("relu", "identity"), "gemm", rng), path)
    model = from_onnx(path)
    X = rng.normal(size=(200, 8))
    ms.prune.prune(model, 0.8)
    q = ms.quant.quantize_model(model, calibration_data=X)
    got = run_onnx(onnx_model(q), q.quantize_input(X))
    np.testing.assert_array_equal(got, q.predict_codes(X))
    # and our own float graph reads back to the same weights
    back = tmp_path / "back.onnx"
    onnx.save(onnx_model(model, mode="float"), back)
    again = from_onnx(back)
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b.astype(np.float32))


def _bad(tmp_path, proto):
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    return path


def test_unsupported_node_named(tmp_path):
    rng = np.random.default_rng(0)
    proto = _mlp((4, 3), ("identity",), "gemm", rng)
    proto.graph.node[0].output[0] = "z"
    proto.graph.node.append(helper.make_node("Softmax", ["z"], ["output"], name="probs"))
    path = _bad(tmp_path, proto)
    with pytest.raises(ValueError, match=r"node 'probs' \(Softmax\) is not supported"):
        from_onnx(path)


@pytest.mark.parametrize("case", ["two_inputs", "weight_not_constant", "shape", "add_first",
                                  "int_input", "not_onnx"])
def test_bad_graphs_refused(tmp_path, case):
    rng = np.random.default_rng(0)
    if case == "two_inputs":
        proto = _mlp((4, 3), ("identity",), "matmul", rng)
        proto.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT,
                                                               [1, 3]))
        match = "one input"
    elif case == "weight_not_constant":
        nodes = [helper.make_node("MatMul", ["input", "w"], ["output"], name="mm")]
        proto = _graph(nodes, {}, 4, 3, extra_inputs=[
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])])
        match = "one input"
    elif case == "shape":
        nodes = [helper.make_node("MatMul", ["input", "W0"], ["z"], name="mm0"),
                 helper.make_node("MatMul", ["z", "W1"], ["output"], name="mm1")]
        proto = _graph(nodes, {"W0": np.ones((4, 3), np.float32),
                               "W1": np.ones((5, 2), np.float32)}, 4, 2)
        match = "'mm1'"
    elif case == "add_first":
        nodes = [helper.make_node("Add", ["input", "b"], ["output"], name="early")]
        proto = _graph(nodes, {"b": np.ones(4, np.float32)}, 4, 4)
        match = "'early' \\(Add\\): an Add must directly follow a MatMul"
    elif case == "int_input":
        nodes = [helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")]
        proto = _graph(nodes, {"W": np.ones((4, 3), np.int32)}, 4, 3, elem=TensorProto.INT32)
        match = "float32 or float64"
    else:
        path = tmp_path / "x.onnx"
        path.write_bytes(b"not a protobuf at all \xff\xfe")
        with pytest.raises(ValueError, match="not a valid ONNX model"):
            from_onnx(path)
        return
    with pytest.raises(ValueError, match=match):
        from_onnx(_bad(tmp_path, proto))


def test_cli_import_one_line_and_nothing_written(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.onnx"
    onnx.save(_mlp((4, 6, 2), ("tanh", "identity"), "gemm", rng), good)
    out = tmp_path / "m.npz"
    assert main(["import-onnx", str(good), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 dense layers" in text and "max |difference|" in text
    np.testing.assert_allclose(ms.load(out).predict(np.ones((1, 4))),
                               from_onnx(good).predict(np.ones((1, 4))))
    proto = _mlp((4, 3), ("identity",), "gemm", rng)
    proto.graph.node[0].output[0] = "z"
    proto.graph.node.append(helper.make_node("Abs", ["z"], ["output"], name="odd"))
    bad = _bad(tmp_path, proto)
    out2 = tmp_path / "m2.npz"
    assert main(["import-onnx", str(bad), "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "node 'odd' (Abs) is not supported" in err
    assert not out2.exists()


@pytest.mark.parametrize("mode", ["integer", "qdq"])
def test_minscales_own_integer_graph_says_import_the_float_model(tmp_path, capsys, mode):
    m = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=0)
    q = ms.quant.quantize_model(m, calibration_data=np.random.default_rng(0).normal(size=(20, 2)))
    path = tmp_path / f"{mode}.onnx"
    onnx.save(onnx_model(q, mode=mode), path)
    with pytest.raises(ValueError, match="only float MLP graphs can be imported") as info:
        from_onnx(path)
    assert f"minscale's own {mode} graph" in str(info.value)
    assert "import the float model instead" in str(info.value)
    assert main(["import-onnx", str(path), "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "import the float model instead" in err
    assert not (tmp_path / "m.npz").exists()


def test_other_integer_graph_says_only_float_graphs(tmp_path):
    proto = _mlp((4, 3), ("identity",), "gemm", np.random.default_rng(0))
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.INT8
    with pytest.raises(ValueError, match="got INT8: only float MLP graphs can be imported; an "
                       "integer or QDQ graph"):
        from_onnx(_bad(tmp_path, proto))


@pytest.mark.crosscheck
def test_pytorch_exported_mlp(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
                              torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 6)
    path = tmp_path / "torch.onnx"
    try:
        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
    except Exception as exc:  # the TorchScript exporter is deprecated in recent torch
        pytest.skip(f"torch.onnx.export(dynamo=False) unavailable: {type(exc).__name__}")
    model = from_onnx(path)
    X = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.predict(X.astype(np.float64)), ref, rtol=1e-5, atol=1e-5)
