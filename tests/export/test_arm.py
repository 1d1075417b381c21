"""The generated C on a 32-bit ARM target: cross-compiled with arm-linux-gnueabihf-gcc, run
under qemu-arm, bit-exact there too; and built for a Cortex-M4 (arm-none-eabi-gcc,
-mcpu=cortex-m4 -mthumb -Os) with its text/data/bss printed. Marked crosscheck (``make
crosscheck`` installs the packages when it can); each part skips with one line when its tools
are missing."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from _models import fixed_models, quantized_models, trained
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale.export import c_size_report
from minscale.export.harness import STRICT_FLAGS, cortex_m4_size, run_c
from minscale.quant import quantize_fixed_model

pytestmark = pytest.mark.crosscheck

ARM_CC, QEMU, M4_CC = "arm-linux-gnueabihf-gcc", "qemu-arm", "arm-none-eabi-gcc"


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make crosscheck installs "
                    "gcc-arm-linux-gnueabihf, qemu-user, gcc-arm-none-eabi when it can)")


def _run_arm(jobs):
    return run_c(jobs, compiler=ARM_CC, flags=(*STRICT_FLAGS, "-static"), runner=[QEMU])


def _check(jobs, results):
    for job, res in zip(jobs, results):
        kw = {} if job.get("fixed") else {"requantize_rounding": job["rounding"]}
        np.testing.assert_array_equal(res["outputs"], job["model"].predict_codes(job["X"], **kw),
                                      err_msg=job["name"])


def _int_jobs(models, prefix):
    return [{"model": q, "X": X, "inputs": q.quantize_input(X), "rounding": r,
             "name": f"{prefix}{i}_{r}"}
            for i, (q, X) in enumerate(models) for r in ("double", "single")]


def _fixed_jobs(models, prefix):
    return [{"model": q, "X": X, "inputs": q.quantize_input(X), "fixed": True,
             "name": f"{prefix}{i}"} for i, (q, X) in enumerate(models)]


def test_real_data_bit_exact_under_qemu_arm():
    _need(ARM_CC, QEMU)
    ints, fixed = [], []
    for data in ("diabetes", "digits"):
        for pruned in (0.0, 0.9):
            model, X_tr, X_te, _ = trained(data, pruned)
            for pc in (True, False):
                ints.append((ms.quant.quantize_model(
                    model, weights={"bits": 8, "per_channel": pc}, calibration_data=X_tr), X_te))
            for bits in ("fixed8", "fixed16"):
                for rounding in ("half_away", "nearest_even"):
                    fixed.append((quantize_fixed_model(model, bits, bits, X_tr,
                                                       rounding=rounding), X_te))
    jobs = _int_jobs(ints, "q") + _fixed_jobs(fixed, "f")
    _check(jobs, _run_arm(jobs))


@settings(max_examples=4, deadline=None)
@given(st.lists(quantized_models(activations=("int8", "uint8")), min_size=10, max_size=10),
       st.lists(fixed_models(), min_size=10, max_size=10))
def test_drawn_models_bit_exact_under_qemu_arm(ints, fixed):
    _need(ARM_CC, QEMU)
    jobs = _int_jobs(ints, "q") + _fixed_jobs(fixed, "f")
    _check(jobs, _run_arm(jobs))


def test_cortex_m4_sizes(capsys):
    _need(M4_CC, "arm-none-eabi-size")
    model, X_tr, _, _ = trained("digits")
    pruned, X_trp, _, _ = trained("digits", 0.9)
    models = {
        "digits int8": ms.quant.quantize_model(model, calibration_data=X_tr),
        "digits fixed8": quantize_fixed_model(model, "fixed8", "fixed8", X_tr),
        "digits int8, 90 % pruned": ms.quant.quantize_model(pruned, calibration_data=X_trp),
    }
    lines = []
    for label, q in models.items():
        size = cortex_m4_size(q, name="digits")
        rep = c_size_report(q)
        # every generated const byte is in text; the scratch buffer is the only RAM
        assert size["text"] >= rep["flash"] - rep["table"]
        assert size["data"] == 0 and size["bss"] == rep["ram"]
        lines.append(f"Cortex-M4 (-mcpu=cortex-m4 -mthumb -Os) {label}: text {size['text']:,} "
                     f"data {size['data']} bss {size['bss']} bytes (generated flash "
                     f"{rep['flash']:,}, RAM {rep['ram']})")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
