"""The Numba backend's quantizers (fixed point and affine; not fake_quantize) hand arrays
below ``QUANT_TWIN_MAX`` elements to the NumPy twin (no compile for a small model's one-off
quantization); the tests here compare the compiled kernels themselves, so every test of this
folder lowers the threshold to 0."""
from __future__ import annotations

import importlib
import importlib.util

import pytest


@pytest.fixture(autouse=True)
def compiled_affine_kernels(monkeypatch):
    if importlib.util.find_spec("numba") is not None:
        numba_kernels = importlib.import_module("minscale.kernels._numba")
        monkeypatch.setattr(numba_kernels, "QUANT_TWIN_MAX", 0)
