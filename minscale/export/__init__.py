"""Out of Python: C99 and ONNX export of minscale models, and import of ONNX MLPs.

* :func:`to_c` -- a header and a C99 source file (no malloc, no libm on the integer path)
  whose ``name_predict`` equals :meth:`minscale.quant.QuantizedModel.predict_codes` bit for bit
  (:mod:`minscale.export.c99`);
* :func:`to_onnx` -- an ONNX graph, exact from integer operators (``mode="integer"``) or a
  standard QDQ graph (``mode="qdq"``) (:mod:`minscale.export.onnx_export`);
* :func:`from_onnx` -- a float Sequential from an ONNX MLP (:mod:`minscale.export.onnx_import`).

onnx and onnxruntime are optional (the ``test`` extra); they are imported on first use.
"""
from __future__ import annotations

from .c99 import c_size_report, c_sources, to_c
from .onnx_export import to_onnx
from .onnx_import import from_onnx

__all__ = ["to_c", "c_sources", "c_size_report", "to_onnx", "from_onnx"]
