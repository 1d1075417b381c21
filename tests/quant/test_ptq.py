"""Post-training quantization: weight codes, float simulation, calibration, bad input.

Data: the shipped digits and diabetes sets; models are trained here with fixed seeds.
"""

import numpy as np
import pytest
from quant_model_helpers import tiny, train_digits

import minscale as ms
from minscale import quant as Q

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


@pytest.fixture(scope="module")
def digits():
    return train_digits()

ZERO_WEIGHT_SPECS = ["int8", Q.WeightSpec(8, per_channel=False), Q.WeightSpec(8, "fixed"), "int4"]


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


def test_weights_on_the_grid_are_exact():
    # Weights that are multiples of 1/16 are exact in Q3.4, so weights-only quantization
    # leaves the model's predictions unchanged bit for bit.
    model, X = tiny()
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
    model, X = tiny(seed=3)
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


def test_quantize_model_bad_input():
    model, X = tiny()
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
