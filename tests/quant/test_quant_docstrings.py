"""The docstring examples of quant and of every quant module run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

from minscale import quant

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

MODULES = [quant] + [
    importlib.import_module(f"minscale.quant.{info.name}")
    for info in pkgutil.iter_modules(quant.__path__)
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_docstring_examples_cover_the_formulas():
    attempted = sum(
        doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE).attempted for m in MODULES
    )
    assert attempted > 30
