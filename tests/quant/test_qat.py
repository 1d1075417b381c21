"""Quantization-aware training: hooks, fake-quantized forward, observers, conversion.

Data: the shipped digits and diabetes sets; models are trained here with fixed seeds.
"""

import numpy as np
import pytest
from quant_model_helpers import diabetes_data, digits_data, mlp, tiny, train_digits

import minscale as ms
from minscale import quant as Q

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness


@pytest.fixture(scope="module")
def digits():
    return train_digits()

def test_prepare_qat_installs_hooks_and_keeps_them():
    model, X = tiny()
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
    X_tr, X_te, y_tr, _ = diabetes_data()
    model = mlp(10, [16], 1, seed=2, lr=3e-3)
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
    X_tr, X_te, y_tr, y_te = digits_data()
    spec = Q.WeightSpec(4, "fixed")
    for seed in (0, 1):
        base = mlp(64, [64], 10, seed=seed, classification=True)
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


@pytest.mark.parametrize("weights", ["int8", Q.WeightSpec(8, "fixed")], ids=["int8", "fixed"])
def test_qat_divergence_is_a_divergence_error(weights):
    from minscale.train import DivergenceError

    X = np.random.default_rng(0).normal(size=(64, 4))
    y = X @ np.ones((4, 1))
    m = mlp(4, [8], 1, seed=0, lr=1e300)
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
