"""Shared fixtures.

``backend``: runs a test once per kernel backend ("numpy", then "numba"), forcing it with
:func:`minscale.set_backend` and restoring the previous choice afterwards. The numba run is
skipped when Numba cannot be imported. Use it in any test whose result must hold under both
backends::

    def test_fit_converges(backend):
        ...

Test modules that use it run kernels or training: tests/test_layers.py, tests/test_optim.py,
tests/train/, tests/quant/, tests/prune/, tests/kernels/.
"""
from __future__ import annotations

import importlib.util

import pytest
from hypothesis import HealthCheck, settings

BACKENDS = ("numpy", "numba")

# `backend` is function-scoped and set once for all examples of a @given test, which is what
# those tests want (the backend must not change between examples); hypothesis warns about any
# function-scoped fixture, so that one health check is off for the whole suite.
settings.register_profile("minscale", suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("minscale")


def numba_available():
    """True if Numba can be imported (without importing it)."""
    return importlib.util.find_spec("numba") is not None


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Force one kernel backend for the test; yields its name; restores the previous choice."""
    from minscale import kernels

    name = request.param
    if name == "numba" and not numba_available():
        pytest.skip("numba is not installed")
    previous = kernels._forced
    kernels.set_backend(name)
    try:
        yield name
    finally:
        kernels.set_backend(previous)
