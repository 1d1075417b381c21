"""Model-level quantization: PTQ, integer-only inference, QAT through fit, sizes, files, CLI.

Data: the shipped diabetes and digits sets, standardized with the training split; models are
trained here with fixed seeds (a few seconds each).
"""

import numpy as np
import pytest

import minscale as ms
from minscale import io, kernels
from minscale import quant as Q
from minscale.cli import main
from minscale.data import one_hot, standardize, train_test_split
from minscale.datasets import load_diabetes, load_digits

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

# ---------------------------------------------------------------------------------- fixtures


def _digits():
    X, y = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    return X_tr, X_te, one_hot(y_tr, 10), one_hot(y_te, 10)


def _diabetes():
    X, y = load_diabetes()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    y_tr, y_te, _ = standardize(y_tr.reshape(-1, 1), y_te.reshape(-1, 1))
    return X_tr, X_te, y_tr, y_te


def _mlp(d_in, hidden, d_out, seed, lr=1e-3, classification=False):
    layers = [ms.Dense(h, activation="relu", kernel_initializer="he_normal") for h in hidden]
    model = ms.Sequential(layers + [ms.Dense(d_out)], input_dim=d_in, seed=seed)
    model.compile(optimizer=ms.optim.Adam(lr), metrics=["accuracy"] if classification else None)
    return model


@pytest.fixture(scope="module")
def digits():
    X_tr, X_te, y_tr, y_te = _digits()
    model = _mlp(64, [64], 10, seed=0, classification=True)
    model.fit(X_tr, y_tr, epochs=40, batch_size=32, seed=0)
    return model, X_tr, X_te, y_tr, y_te


@pytest.fixture(scope="module")
def diabetes():
    X_tr, X_te, y_tr, y_te = _diabetes()
    model = _mlp(10, [32, 32], 1, seed=0, lr=3e-3)
    model.fit(X_tr, y_tr, epochs=40, batch_size=32, seed=0)
    return model, X_tr, X_te, y_tr, y_te


@pytest.fixture(params=["digits", "diabetes"])
def trained(request, digits, diabetes):
    return {"digits": digits, "diabetes": diabetes}[request.param]


# ---------------------------------------------------------------------------------- specs


def test_weight_spec_forms():
    assert Q.weight_spec("int8") == Q.WeightSpec(8, "affine", per_channel=True)
    assert Q.weight_spec("int4").bits == 4
    fixed = Q.weight_spec(Q.QFormat(8, 4))
    assert (fixed.scheme, fixed.frac_bits, fixed.name) == ("fixed", 4, "Q3.4")
    assert Q.weight_spec({"bits": 6, "scheme": "fixed"}).name == "fixed6/auto"
    assert Q.WeightSpec(4, per_channel=False).name == "int4/tensor"
    for bad in ("int1", "int33", "float8", "int"):
        with pytest.raises(ValueError, match="weights must be 'intN'"):
            Q.weight_spec(bad)
    with pytest.raises(TypeError, match="weights must be"):
        Q.weight_spec(8)
    with pytest.raises(ValueError, match="scheme"):
        Q.WeightSpec(8, "log")
    with pytest.raises(ValueError, match="frac_bits applies to scheme='fixed'"):
        Q.WeightSpec(8, frac_bits=3)
    with pytest.raises(ValueError, match="signed"):
        Q.WeightSpec(8, "affine", signed=False)


def test_quantize_layer_weights_reference():
    # Column 0: max |w| = 1 -> scale 1/127, codes [127, -0.5*127 = -63.5 -> -64 (ties to even)].
    # Column 1: max 0.5 -> scale 0.5/127, codes [127, 0.25/(0.5/127) = 63.5 -> 64].
    W = np.array([[1.0, 0.5], [-0.5, 0.25]])
    codes, scale, frac = Q.quantize_layer_weights(W, "int8")
    assert codes.tolist() == [[127, 127], [-64, 64]] and frac is None
    assert scale.tolist() == [1 / 127, 0.5 / 127]
    # Per tensor: one scale 1/127: 0.5 -> 63.5 -> 64, 0.25 -> 31.75 -> 32.
    codes, scale, _ = Q.quantize_layer_weights(W, Q.WeightSpec(8, per_channel=False))
    assert codes.tolist() == [[127, 64], [-64, 32]] and scale.tolist() == [1 / 127, 1 / 127]
    # Fixed point, automatic: max |w| = 1 -> Q1.6 (1 * 2**7 = 128 > 127); codes W * 64.
    codes, scale, frac = Q.quantize_layer_weights(W, Q.WeightSpec(8, "fixed"))
    assert frac == 6 and codes.tolist() == [[64, 32], [-32, 16]] and scale.tolist() == [2.0**-6] * 2


# ---------------------------------------------------------------------------------- sizes


def _tiny(seed=0):
    model = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=seed)
    X = np.random.default_rng(seed).normal(size=(64, 2))
    return model, X


def test_size_report_hand_count():
    model, X = _tiny()  # 2*3 + 3 + 3*1 + 1 = 13 parameters: 52 bytes as float32
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X)
    # Layer 0: 6 codes + 3 float32 scales + 3 int32 biases + output (scale, zp) = 6+12+12+5 = 35.
    # Layer 1: 3 + 4 + 4 + 5 = 16. Input (scale, zp): 5. Total 56.
    size = q.size_report()
    assert (size["float32_nbytes"], size["nbytes"]) == (52, 56)
    assert [row["nbytes"] for row in q.layer_table()] == [35, 16]
    # 4 bits per channel, packed: ceil(6*4/8) = 3 and ceil(3*4/8) = 2 code bytes: 32 + 15 + 5.
    q4 = Q.quantize_model(model, "int4", "int8", calibration_data=X)
    assert (q4.nbytes, q4.nbytes_packed) == (56, 52)
    # Weights only in Q3.4: codes 6 + 3, one frac_bits each (4 B), float32 biases 12 + 4 = 33.
    qf = Q.quantize_model(model, Q.QFormat(8, 4), None)
    assert qf.nbytes == 33 and qf.size_report()["ratio"] == 52 / 33


def test_digits_int8_compression_ratio(digits):
    model, X_tr, *_ = digits
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    # 64*64 + 64*10 = 4736 codes; 74 scales, 74 int32 biases: 296 + 296; 3 activation tensors.
    assert q.nbytes == 4736 + 4 * 74 + 4 * 74 + 3 * 5 == 5343
    assert q.size_report()["ratio"] == pytest.approx(4 * 4810 / 5343)


# ---------------------------------------------------------------------------------- simulation


def test_weights_on_the_grid_are_exact():
    # Weights that are multiples of 1/16 are exact in Q3.4, so weights-only quantization
    # leaves the model's predictions unchanged bit for bit.
    model, X = _tiny()
    model.set_weights(
        [
            np.array([[0.5, -0.25, 1.0], [0.125, 0.75, -0.5]]),
            np.array([0.0625, 0.0, -1.0]),
            np.array([[1.5], [-2.0], [0.25]]),
            np.array([0.1]),
        ]
    )
    q = Q.quantize_model(model, Q.QFormat(8, 4), None)
    assert np.array_equal(q.predict(X), model.predict(X))
    assert q.layers[0].codes.tolist() == [[8, -4, 16], [2, 12, -8]]


def test_simulation_is_fake_quant_of_every_tensor():
    model, X = _tiny(seed=3)
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X)
    x = Q.fake_quantize(X, *q.input_qparams)
    L0, L1 = q.layers
    h = Q.fake_quantize(
        np.maximum(x @ L0.W_dequantized + L0.bias_dequantized(), 0), *L0.output_qparams
    )
    y = Q.fake_quantize(h @ L1.W_dequantized + L1.bias_dequantized(), *L1.output_qparams)
    assert np.array_equal(q.predict(X), y)
    # Every simulated output lies on the output grid.
    codes = (q.predict(X) / L1.output_qparams[0]) + L1.output_qparams[1]
    assert np.allclose(codes, np.round(codes), atol=1e-6)


def test_int8_ptq_loses_at_most_one_point_on_digits(digits):
    model, X_tr, X_te, y_tr, y_te = digits
    float_acc = model.evaluate(X_te, y_te, return_dict=True)["accuracy"]
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    assert float_acc > 0.95
    assert q.evaluate(X_te, y_te)["accuracy"] >= float_acc - 0.01
    assert q.evaluate(X_te, y_te, integer=True)["accuracy"] >= float_acc - 0.01


# ---------------------------------------------------------------------------------- integer path


def _layer_codes_both_ways(q, X, rounding):
    """Per layer, from the SAME input codes: integer-path codes and simulation codes."""
    xq = Q.quantize_affine(X, *q.input_qparams)
    pairs = []
    for layer in q.layers:
        acc = Q.int_matmul(xq, layer.codes, a_zero_point=layer.input_qparams[1])
        integer = Q.requantize(
            acc,
            layer.multiplier,
            layer.shift,
            layer.output_qparams[1],
            relu=layer.activation == "relu",
            bias=layer.bias_codes,
            rounding=rounding,
        )
        x = Q.dequantize_affine(xq, *layer.input_qparams)
        a = Q._apply_activation(
            x @ layer.W_dequantized + layer.bias_dequantized(), layer.activation, layer.alpha
        )
        pairs.append((integer, Q.quantize_affine(a, *layer.output_qparams)))
        xq = integer
    return pairs


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_each_integer_layer_within_one_code_of_simulation(trained, rounding):
    # Proof (docstring of QuantizedModel.predict_codes): the integer result is within
    # 1/2 + 2**-(right+1) of x * M, the simulation within 1/2 of the same value, so two integers
    # less than 2 apart differ by at most 1.
    model, X_tr, X_te, *_ = trained
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    for X in (X_tr, X_te):
        for integer, simulated in _layer_codes_both_ways(q, X, rounding):
            assert np.abs(integer.astype(int) - simulated.astype(int)).max() <= 1


def test_integer_equals_simulation_within_one_lsb_with_single_rounding(trained):
    model, X_tr, X_te, *_ = trained
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    lsb = q.layers[-1].output_qparams[0]
    for X in (X_tr, X_te):
        y_int = q.predict(X, integer=True, requantize_rounding="single")
        assert np.abs(y_int - q.predict(X)).max() <= lsb * (1 + 1e-9)


def test_double_rounding_differs_more_often_than_single(digits):
    # gemmlowp's double rounding moves values within 2**-(right+1) of a tie: more 1-code
    # differences per layer than single rounding (measured on digits, hidden layer).
    model, X_tr, *_ = digits
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    counts = {}
    for rounding in ("double", "single"):
        integer, simulated = _layer_codes_both_ways(q, X_tr, rounding)[-1]
        counts[rounding] = int(np.sum(integer != simulated))
    assert counts["double"] > counts["single"]


def test_integer_path_runs_on_integers_only(digits, monkeypatch):
    # Between quantize_affine (input) and dequantize_affine (output) every array that flows is
    # an integer array: wrap the two integer stages and check what they receive and return.
    model, X_tr, X_te, *_ = digits
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    seen = []

    def wrap(fn):
        def inner(*args, **kwargs):
            arrays = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
            out = fn(*args, **kwargs)
            seen.extend(a.dtype for a in arrays + ([out] if isinstance(out, np.ndarray) else []))
            return out

        return inner

    # the general path (int_matmul, requantize) and the fused kernel with pre-packed weights
    # (whose float32 GEMM is exact: see kernels._numpy.int8_matmul_packed)
    monkeypatch.setattr(Q, "int_matmul", wrap(Q.int_matmul))
    monkeypatch.setattr(Q, "requantize", wrap(Q.requantize))
    monkeypatch.setattr(kernels, "int8_dense_packed", wrap(kernels.int8_dense_packed))
    for rounding in ("double", "single"):
        seen.clear()
        codes = q.predict_codes(X_te[:20], requantize_rounding=rounding)
        assert codes.dtype == np.int8 and len(seen) >= 4 * len(q.layers)
        assert all(np.issubdtype(dt, np.integer) for dt in seen)


def test_numpy_and_numba_give_bit_identical_integer_codes(trained):
    model, X_tr, X_te, *_ = trained
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    codes, previous = {}, kernels._forced
    try:
        for backend in ("numpy", "numba"):
            kernels.set_backend(backend)
            codes[backend] = (
                q.predict_codes(X_te),
                q.predict_codes(X_te, requantize_rounding="single"),
                Q.quantize_model(model, "int4", "int8", calibration_data=X_tr).predict_codes(X_te),
            )
    finally:
        kernels.set_backend(previous)
    for a, b in zip(codes["numpy"], codes["numba"]):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_uint8_activations(digits):
    model, X_tr, X_te, *_ = digits
    q = Q.quantize_model(model, "int8", "uint8", calibration_data=X_tr)
    assert q.predict_codes(X_te[:5]).dtype == np.uint8
    assert q.input_qparams[1] != 0  # asymmetric uint8 input range around the standardized mean
    for integer, simulated in _layer_codes_both_ways_uint8(q, X_te):
        assert np.abs(integer.astype(int) - simulated.astype(int)).max() <= 1


def _layer_codes_both_ways_uint8(q, X):
    xq = Q.quantize_affine(X, *q.input_qparams, signed=False)
    pairs = []
    for layer in q.layers:
        acc = Q.int_matmul(xq, layer.codes, a_zero_point=layer.input_qparams[1])
        integer = Q.requantize(
            acc,
            layer.multiplier,
            layer.shift,
            layer.output_qparams[1],
            signed=False,
            relu=layer.activation == "relu",
            bias=layer.bias_codes,
        )
        x = Q.dequantize_affine(xq, *layer.input_qparams)
        a = Q._apply_activation(
            x @ layer.W_dequantized + layer.bias_dequantized(), layer.activation, layer.alpha
        )
        pairs.append((integer, Q.quantize_affine(a, *layer.output_qparams, signed=False)))
        xq = integer
    return pairs


def test_integer_path_refuses_what_it_cannot_run():
    model, X = _tiny()
    with pytest.raises(ValueError, match="activations are not quantized"):
        Q.quantize_model(model, "int8", None).predict(X, integer=True)
    with pytest.raises(ValueError, match="16-bit weights"):
        Q.quantize_model(model, "int16", "int8", calibration_data=X).predict_codes(X)
    tanh = ms.Sequential([ms.Dense(3, activation="tanh"), ms.Dense(1)], input_dim=2, seed=0)
    q = Q.quantize_model(tanh, "int8", "int8", calibration_data=X)
    assert not q.integer_supported
    with pytest.raises(ValueError, match="layer 0 has activation 'tanh'"):
        q.predict(X, integer=True)
    assert q.predict(X).shape == (64, 1)  # the simulation still runs
    with pytest.raises(ValueError, match="requantize_rounding"):
        Q.quantize_model(model, "int8", "int8", calibration_data=X).predict_codes(
            X, requantize_rounding="up"
        )


ZERO_WEIGHT_SPECS = ["int8", Q.WeightSpec(8, per_channel=False), Q.WeightSpec(8, "fixed"), "int4"]


@pytest.mark.parametrize("activations", ["int8", "uint8"])
@pytest.mark.parametrize("weights", ZERO_WEIGHT_SPECS, ids=lambda w: Q.weight_spec(w).name)
def test_all_zero_weights_keep_their_bias(weights, activations):
    # Layer 0 has all-zero weights (as after structured pruning), so its output is its bias: 5.0
    # through unit 0 and the identity layer 1. Its weight scale is the floor 2**-23, and the int32
    # bias at input_scale * 2**-23 used to saturate: 5.0 came out as 4.35 (2.2 with other data).
    X = np.random.default_rng(0).normal(size=(50, 2))
    m = ms.Sequential([ms.Dense(3, activation="relu"), ms.Dense(1)], input_dim=2, seed=0)
    m.layers[0].W[...] = 0.0
    m.layers[0].b[...] = [5.0, 0.0, 0.0]
    m.layers[1].W[...] = [[1.0], [0.0], [0.0]]
    m.layers[1].b[...] = 0.0
    assert np.all(m.predict(X) == 5.0)
    q = Q.quantize_model(m, weights, activations, calibration_data=X)
    # quantization steps of the two layer outputs (hidden [0, 5], output [0, 5]: 5 / 255 each)
    tol = q.layers[0].output_qparams[0] + q.layers[1].output_qparams[0]
    assert np.abs(q.predict(X) - 5.0).max() <= tol
    assert np.abs(q.predict(X, integer=True) - 5.0).max() <= tol
    assert np.abs(q.predict(X, integer=True, requantize_rounding="single") - 5.0).max() <= tol
    assert np.all(q.layers[0].codes == 0)


def test_structured_prune_to_one_unit_then_quantize_keeps_predictions():
    # prune(sparsity=1, method="structured") + shrink leaves one hidden unit with all-zero
    # weights and a bias of 5; the quantized model must keep what that unit carries.
    from minscale import prune as P

    X = np.random.default_rng(0).normal(size=(64, 3))
    m = ms.Sequential([ms.Dense(4, activation="relu"), ms.Dense(2)], input_dim=3, seed=1)
    m.layers[0].b[...] = [5.0, 1.0, 2.0, 3.0]
    m.layers[1].b[...] = [0.5, -5.0]
    P.prune(m, 1.0, method="structured")
    s = P.shrink(m)
    assert s.layers[0].W.shape == (3, 1) and np.all(s.layers[0].W == 0)
    expected = s.predict(X[:4])
    for weights in ZERO_WEIGHT_SPECS:
        q = Q.quantize_model(s, weights, "int8", calibration_data=X)
        tol = q.layers[-1].output_qparams[0] + abs(s.layers[1].W).max() * (
            q.layers[0].output_qparams[0]
        )
        assert np.abs(q.predict(X[:4], integer=True) - expected).max() <= tol, weights
        assert np.abs(q.predict(X[:4]) - expected).max() <= tol, weights


def test_a_bias_no_int32_holds_under_a_given_fixed_format_is_refused():
    # A user-given fixed-point format keeps its step 2**-8; 1e9 / (s_in * 2**-8) is far beyond
    # int32, and the bias is refused instead of saturated.
    X = np.random.default_rng(0).normal(size=(20, 2))
    m = ms.Sequential([ms.Dense(1)], input_dim=2, seed=0)
    m.layers[0].b[...] = 1e9
    with pytest.raises(ValueError, match=r"b\[0\] = 1000000000.0 is beyond the int32 range"):
        Q.quantize_model(m, Q.QFormat(8, 8), "int8", calibration_data=X)


def test_a_multiplier_beyond_2_30_disables_the_integer_path_with_its_reason():
    # A dead ReLU layer has output range [0, 0] and the floor scale 2**-23; with inputs and
    # weights of magnitude ~1000, M = s_in * s_w / 2**-23 ~ 1.1e9 >= 2**30 needs a 31-bit left
    # shift. The simulation runs; the integer path says why it cannot (it used to accept the
    # model and then fail on "shift must lie in [-31, 30]").
    X = np.random.default_rng(0).normal(size=(50, 2)) * 1000
    m = ms.Sequential([ms.Dense(1, activation="relu")], input_dim=2, seed=0)
    m.layers[0].W[...] = -1000.0
    m.layers[0].b[...] = -1e9
    q = Q.quantize_model(m, "int8", "int8", calibration_data=X)
    assert np.all(q.predict(X) == 0.0)
    assert not q.integer_supported and q.layers[0].multiplier is None
    with pytest.raises(ValueError, match=r"layer 0: its requantization multiplier .* not below "
                                         r"2\*\*30"):
        q.predict(X, integer=True)


def test_quantize_model_bad_input():
    model, X = _tiny()
    with pytest.raises(ValueError, match="calibration_data is required"):
        Q.quantize_model(model, "int8", "int8")
    with pytest.raises(ValueError, match="activations must be one of"):
        Q.quantize_model(model, "int8", "int16", calibration_data=X)
    with pytest.raises(TypeError, match="model must be a minscale Sequential"):
        Q.quantize_model("model.npz")
    with pytest.raises(ValueError, match="calibration_data"):
        Q.quantize_model(model, "int8", "int8", calibration_data=np.ones((4, 3)))
    with pytest.raises(ValueError, match="calibration_data"):
        Q.quantize_model(model, "int8", "int8", calibration_data=np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="X"):
        Q.quantize_model(model, "int8", None).predict(np.ones((2, 5)))


def test_float32_model_predicts_float32():
    model = ms.Sequential(
        [ms.Dense(4, activation="relu"), ms.Dense(2)], input_dim=3, seed=1, dtype="float32"
    )
    X = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X)
    assert q.predict(X).dtype == np.float32 and q.predict(X, integer=True).dtype == np.float32


# ---------------------------------------------------------------------------------- files


def test_payload_round_trip_through_a_model_file(digits, tmp_path):
    model, X_tr, X_te, *_ = digits
    model.state["data"] = {"data": "digits", "target": None, "test_size": 0.2, "seed": 0}
    try:
        q = Q.quantize_model(model, "int4", "int8", calibration_data=X_tr)
    finally:
        model.state.pop("data")
    path = tmp_path / "q.npz"
    io.save(q, path)
    manifest, arrays = io._read_container(path)
    assert manifest["kind"] == "QuantizedModel"
    back = Q.QuantizedModel.from_payload(manifest, arrays)
    assert np.array_equal(back.predict_codes(X_te), q.predict_codes(X_te))
    assert np.array_equal(back.predict(X_te), q.predict(X_te))
    assert back.nbytes == q.nbytes and back.state["data"]["data"] == "digits"
    fields, arrays = q.to_payload()
    arrays["layers/0/weight_scale"] = arrays["layers/0/weight_scale"][:3]
    with pytest.raises(ValueError, match="layer 0"):
        Q.QuantizedModel.from_payload(fields, arrays)


def test_weights_only_payload_round_trip():
    model, X = _tiny()
    q = Q.quantize_model(model, Q.QFormat(6, 3), None)
    back = Q.QuantizedModel.from_payload(*q.to_payload())
    assert np.array_equal(back.predict(X), q.predict(X)) and back.layers[0].frac_bits == 3


# ---------------------------------------------------------------------------------- QAT


def test_prepare_qat_installs_hooks_and_keeps_them():
    model, X = _tiny()
    Q.prepare_qat(model, "int4")
    layer = model.layers[0]
    assert isinstance(layer.kernel_quantizer, Q.WeightFakeQuantizer)
    assert isinstance(layer.output_quantizer, Q.ActivationFakeQuantizer)
    assert model.state["quantization"]["weights"]["bits"] == 4
    before = layer.output_quantizer
    Q.prepare_qat(model, Q.QATConfig("int4", "int8"))
    assert layer.output_quantizer is before  # same config: observers keep their ranges
    Q.prepare_qat(model, {"weights": "int8", "activations": None})
    assert layer.output_quantizer is None and layer.kernel_quantizer.spec.bits == 8
    Q.strip_qat(model)
    assert layer.kernel_quantizer is None and "quantization" not in model.state
    with pytest.raises(ValueError, match="no QAT config"):
        Q.convert(model, X)
    with pytest.raises(ValueError, match="averaging_constant"):
        Q.QATConfig("int8", "int8", averaging_constant=0.0)


def test_qat_forward_equals_converted_model_for_weight_only_qat():
    # Weights-only QAT: the training forward pass and the converted model compute the same
    # float64 products from the same dequantized weights, so predictions agree bit for bit.
    X_tr, X_te, y_tr, _ = _diabetes()
    model = _mlp(10, [16], 1, seed=2, lr=3e-3)
    model.fit(X_tr, y_tr, epochs=5, batch_size=32, seed=0, quantization=Q.QATConfig("int4", None))
    q = Q.convert(model)
    assert np.array_equal(model.predict(X_te), q.predict(X_te))


def test_qat_clipped_weights_get_no_gradient():
    # Fixed point Q1.2 (4 bits, step 1/4) holds [-2, 1.75]: weights 3.0 and -2.5 are clipped,
    # so the straight-through estimator gives them dW = 0; the others keep their gradient.
    model = ms.Sequential([ms.Dense(2)], input_dim=2, seed=0)
    model.set_weights([np.array([[3.0, 0.5], [-2.5, 1.0]]), np.zeros(2)])
    X = np.array([[1.0, 2.0], [-1.0, 0.5]])
    y = np.array([[0.0, 1.0], [1.0, 0.0]])
    Q.prepare_qat(model, Q.QATConfig(Q.QFormat(4, 2), None))
    model.compute_gradients(X, y)
    dW = model.layers[0].dW
    assert dW[0, 0] == 0 and dW[1, 0] == 0 and dW[0, 1] != 0 and dW[1, 1] != 0
    # The forward pass used the fake-quantized kernel [[1.75, 0.5], [-2, 1]].
    assert np.array_equal(model.predict(X), X @ np.array([[1.75, 0.5], [-2.0, 1.0]]))


def test_qat_observers_follow_training(digits):
    model, X_tr, X_te, y_tr, y_te = digits
    qat = model.copy()
    qat.compile(optimizer=ms.optim.Adam(1e-3), metrics=["accuracy"])
    qat.fit(X_tr, y_tr, epochs=1, batch_size=64, seed=0, quantization="int8")
    obs = qat.layers[0].output_quantizer.observer
    assert obs.min_val == 0.0 and obs.max_val > 0  # ReLU outputs: range [0, EMA of batch maxima]
    q = Q.convert(qat, calibration_data=X_tr)
    assert q.layers[0].output_qparams == Q.affine_qparams(obs.min_val, obs.max_val)
    assert q.evaluate(X_te, y_te, integer=True)["accuracy"] > 0.95


def test_four_bit_qat_recovers_what_four_bit_ptq_loses_on_digits():
    # Protocol (same training budget for every arm): a 64-64-10 MLP trained 40 epochs; then
    # 20 more epochs either in float (PTQ is applied to that model) or with 4-bit fixed-point
    # fake-quant weights and int8 activations (QAT, then convert). Accuracy of the integer-only
    # path on the 360 held-out digits.
    X_tr, X_te, y_tr, y_te = _digits()
    spec = Q.WeightSpec(4, "fixed")
    for seed in (0, 1):
        base = _mlp(64, [64], 10, seed=seed, classification=True)
        base.fit(X_tr, y_tr, epochs=40, batch_size=32, seed=seed)
        flt = base.copy()
        flt.compile(optimizer=ms.optim.Adam(1e-3), metrics=["accuracy"])
        flt.fit(X_tr, y_tr, epochs=20, batch_size=32, seed=100 + seed)
        float_acc = flt.evaluate(X_te, y_te, return_dict=True)["accuracy"]
        ptq = Q.quantize_model(flt, spec, "int8", calibration_data=X_tr).evaluate(
            X_te, y_te, integer=True
        )
        qat = base.copy()
        qat.compile(optimizer=ms.optim.Adam(1e-3), metrics=["accuracy"])
        qat.fit(
            X_tr,
            y_tr,
            epochs=20,
            batch_size=32,
            seed=100 + seed,
            quantization=Q.QATConfig(spec, "int8"),
        )
        qat_acc = Q.convert(qat, calibration_data=X_tr).evaluate(X_te, y_te, integer=True)[
            "accuracy"
        ]
        assert qat_acc >= float_acc - 0.02, (seed, float_acc, qat_acc)
        assert ptq["accuracy"] < qat_acc, (seed, ptq, qat_acc)


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved_digits_model(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("q") / "digits.npz"
    ms.save(digits[0], path)
    return path


def test_cli_quantize_affine_calibrated(saved_digits_model, tmp_path, capsys):
    out_path = tmp_path / "q.npz"
    assert (
        main(
            [
                "quantize",
                str(saved_digits_model),
                "--bits",
                "8",
                "--affine",
                "--per-channel",
                "--calibrate",
                "--data",
                "digits",
                "--out",
                str(out_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "weights int8 (affine, per channel), activations int8" in out
    assert "float:" in out and "post-training:" in out and "integer-only: test loss" in out
    assert "bytes: float32 19240, quantized 5343 (ratio 3.60)" in out
    manifest, arrays = io._read_container(out_path)
    assert Q.QuantizedModel.from_payload(manifest, arrays).nbytes == 5343


def test_cli_quantize_fixed_point_and_qat(saved_digits_model, capsys):
    assert (
        main(
            [
                "quantize",
                str(saved_digits_model),
                "--bits",
                "8",
                "--frac-bits",
                "5",
                "--data",
                "digits",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "weights Q2.5" in out and "activations float" in out and "integer-only" not in out
    assert (
        main(
            [
                "quantize",
                str(saved_digits_model),
                "--bits",
                "4",
                "--auto-frac",
                "--calibrate",
                "--qat-epochs",
                "1",
                "--data",
                "digits",
                "--requantize-rounding",
                "single",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "weights fixed4/auto" in out and "QAT (1 epochs):" in out and "packed" in out


CLI_BAD = [
    (["--bits", "1"], "--bits must be in 2..32"),
    (["--bits", "40"], "--bits must be in 2..32"),
    (["--per-channel"], "--per-channel applies to --affine"),
    (["--frac-bits", "2000"], "--frac-bits"),
    (["--affine", "--auto-frac"], "not allowed with"),
    (["--qat-epochs", "-1"], "--qat-epochs"),
    (["--data", "diabetes"], "expects 64 features"),
]


@pytest.mark.parametrize("extra, words", CLI_BAD)
def test_cli_bad_input_is_one_line(saved_digits_model, extra, words, capsys):
    args = ["quantize", str(saved_digits_model)] + extra
    if "--data" not in extra:
        args += ["--data", "digits"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


QAT_DIVERGING = [[], ["--affine", "--calibrate"], ["--affine", "--per-channel", "--calibrate"],
                 ["--bits", "4", "--calibrate"]]


@pytest.mark.parametrize("extra", QAT_DIVERGING, ids=lambda e: " ".join(e) or "auto-frac")
def test_cli_qat_with_an_absurd_rate_blames_the_rate(saved_digits_model, extra, capsys):
    # lr 1e300 sends the weights to ~1e300 in one step: the error is the divergence at that rate,
    # not "too large for any 8-bit format" nor "NaN cannot be quantized"
    args = ["quantize", str(saved_digits_model), "--data", "digits", "--qat-epochs", "3",
            "--lr", "1e300"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "training diverged in epoch 0" in err and "at learning rate 1e+300" in err
    assert "format" not in err and "cannot be quantized" not in err


@pytest.mark.parametrize("weights", ["int8", Q.WeightSpec(8, "fixed")], ids=["int8", "fixed"])
def test_qat_divergence_is_a_divergence_error(weights):
    from minscale.train import DivergenceError

    X = np.random.default_rng(0).normal(size=(64, 4))
    y = X @ np.ones((4, 1))
    m = _mlp(4, [8], 1, seed=0, lr=1e300)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(DivergenceError, match="learning rate 1e\\+300") as info:
            m.fit(X, y, epochs=2, batch_size=16, quantization=Q.QATConfig(weights, "int8"))
    assert info.value.learning_rate == 1e300
    # a non-finite batch was not folded into any activation range
    for layer in m.layers:
        obs = layer.output_quantizer.observer
        assert obs.min_val is None or (np.isfinite(obs.min_val) and np.isfinite(obs.max_val))


def test_qat_hooks_outside_training_still_refuse_what_they_cannot_quantize():
    hook = Q.WeightFakeQuantizer(Q.WeightSpec(8, "fixed"))
    with pytest.raises(ValueError, match="too large for any 8-bit format"):
        hook(np.full((2, 2), 1e300))
    assert np.isnan(hook(np.full((2, 2), 1e300), training=True)[0]).all()
    assert np.isnan(Q.WeightFakeQuantizer("int8")(np.full((2, 2), np.inf), True)[0]).all()
    act = Q.ActivationFakeQuantizer("int8")
    out, mask = act(np.array([[np.nan, 1.0]]), training=True)
    assert np.isnan(out[0, 0]) and mask is None and act.observer.min_val is None


def test_cli_missing_model_file(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "none.npz"), "--data", "digits"]) == 2
    assert "none.npz" in capsys.readouterr().err


def test_fused_packed_path_equals_the_general_integer_path(digits):
    # predict_codes runs each 8-bit layer through kernels.int8_dense_packed (weights packed
    # once); the same layers through int_matmul + requantize must give the same codes
    model, X_tr, X_te, *_ = digits
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    fused = q.predict_codes(X_te)
    assert set(q._packed) == set(range(len(q.layers)))
    xq = Q.quantize_affine(X_te, *q.input_qparams)
    for layer in q.layers:
        acc = Q.int_matmul(xq, layer.codes, a_zero_point=layer.input_qparams[1])
        xq = Q.requantize(acc, layer.multiplier, layer.shift, layer.output_qparams[1],
                          relu=layer.activation == "relu", bias=layer.bias_codes)
    assert fused.dtype == xq.dtype and np.array_equal(fused, xq)


def test_info_total_bytes_equal_the_quantized_model_nbytes(digits, tmp_path, capsys):
    # the per-layer rows leave out the input's scale and zero point; info adds them as a row
    from minscale.cli import main

    model, X_tr, *_ = digits
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X_tr)
    path = tmp_path / "q.npz"
    io.save(q, path)
    assert main(["info", str(path)]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1]
    assert total.startswith("total") and total.split()[-1] == f"{q.nbytes:,}"
