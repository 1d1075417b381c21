"""ONNX export (placeholder, filled in below)."""


def to_onnx(model, path, mode="integer"):
    raise NotImplementedError
