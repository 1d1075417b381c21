"""QuantizedModel: sizes, the integer-only path, float32 predictions, payloads.

Data: the shipped digits and diabetes sets; models are trained here with fixed seeds.
"""

import numpy as np
import pytest
from quant_model_helpers import diabetes_data, mlp, tiny, train_digits

import minscale as ms
from minscale import io, kernels, layers
from minscale import quant as Q

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


@pytest.fixture(scope="module")
def digits():
    return train_digits()


@pytest.fixture(scope="module")
def diabetes():
    X_tr, X_te, y_tr, y_te = diabetes_data()
    model = mlp(10, [32, 32], 1, seed=0, lr=3e-3)
    model.fit(X_tr, y_tr, epochs=40, batch_size=32, seed=0)
    return model, X_tr, X_te, y_tr, y_te


@pytest.fixture(params=["digits", "diabetes"])
def trained(request, digits, diabetes):
    return {"digits": digits, "diabetes": diabetes}[request.param]


def float_activation(z, layer):
    """The float model's activation of `layer` on `z` (the pure functions of minscale.layers)."""
    if layer.activation == "leaky_relu":
        return layers.leaky_relu(z, layer.alpha)
    return getattr(layers, layer.activation)(z)


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
        a = float_activation(x @ layer.W_dequantized + layer.bias_dequantized(), layer)
        pairs.append((integer, Q.quantize_affine(a, *layer.output_qparams)))
        xq = integer
    return pairs


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
        a = float_activation(x @ layer.W_dequantized + layer.bias_dequantized(), layer)
        pairs.append((integer, Q.quantize_affine(a, *layer.output_qparams, signed=False)))
        xq = integer
    return pairs


def test_size_report_hand_count():
    model, X = tiny()  # 2*3 + 3 + 3*1 + 1 = 13 parameters: 52 bytes as float32
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
    monkeypatch.setattr(Q.integer, "int_matmul", wrap(Q.integer.int_matmul))
    monkeypatch.setattr(Q.integer, "requantize", wrap(Q.integer.requantize))
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


def test_integer_path_refuses_what_it_cannot_run():
    model, X = tiny()
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


def test_float32_model_predicts_float32():
    model = ms.Sequential(
        [ms.Dense(4, activation="relu"), ms.Dense(2)], input_dim=3, seed=1, dtype="float32"
    )
    X = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    q = Q.quantize_model(model, "int8", "int8", calibration_data=X)
    assert q.predict(X).dtype == np.float32 and q.predict(X, integer=True).dtype == np.float32


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
    model, X = tiny()
    q = Q.quantize_model(model, Q.QFormat(6, 3), None)
    back = Q.QuantizedModel.from_payload(*q.to_payload())
    assert np.array_equal(back.predict(X), q.predict(X)) and back.layers[0].frac_bits == 3


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
