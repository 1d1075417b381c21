"""The examples in the export modules' docstrings run and print what they show."""
from __future__ import annotations

import doctest

import pytest

from minscale.export import c99, onnx_export


@pytest.mark.parametrize("module", [c99, onnx_export], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    if module is onnx_export:
        pytest.importorskip("onnx")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
