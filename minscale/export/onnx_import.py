"""ONNX import (placeholder)."""


def from_onnx(path):
    raise NotImplementedError
