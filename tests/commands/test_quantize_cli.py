"""`minscale quantize`: PTQ and QAT from the command line, bad input, sizes shown by info.

Data: the shipped digits set; models are trained here with fixed seeds.
"""

import pytest

import minscale as ms
from minscale import io
from minscale import quant as Q
from minscale.cli import main
from minscale.data import one_hot, standardize, train_test_split
from minscale.datasets import load_digits

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

def _digits():
    X, y = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    X_tr, X_te, _ = standardize(X_tr, X_te)
    return X_tr, X_te, one_hot(y_tr, 10), one_hot(y_te, 10)


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
def saved_digits_model(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("q") / "digits.npz"
    ms.save(digits[0], path)
    return path


CLI_BAD = [
    (["--bits", "1"], "--bits must be in 2..32"),
    (["--bits", "40"], "--bits must be in 2..32"),
    (["--per-channel"], "--per-channel applies to --affine"),
    (["--frac-bits", "2000"], "--frac-bits"),
    (["--affine", "--auto-frac"], "not allowed with"),
    (["--qat-epochs", "-1"], "--qat-epochs"),
    (["--data", "diabetes"], "expects 64 features"),
]


QAT_DIVERGING = [[], ["--affine", "--calibrate"], ["--affine", "--per-channel", "--calibrate"],
                 ["--bits", "4", "--calibrate"]]


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


@pytest.mark.parametrize("extra, words", CLI_BAD)
def test_cli_bad_input_is_one_line(saved_digits_model, extra, words, capsys):
    args = ["quantize", str(saved_digits_model)] + extra
    if "--data" not in extra:
        args += ["--data", "digits"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


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


def test_cli_missing_model_file(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "none.npz"), "--data", "digits"]) == 2
    assert "none.npz" in capsys.readouterr().err


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
