"""Storage layout of one exported weight matrix: dense, bitmask or CSR, whichever is smallest.

Every exported layer stores ``W.T`` (shape ``(d_out, d_in)``, row-major), so that the weights
of one output unit are contiguous and the generated loop reads them in order. A pruned layer
stores only its nonzeros when that is smaller:

* ``dense``   all ``d_out * d_in`` values;
* ``bitmask`` ``ceil(d_out * d_in / 8)`` bytes of keep bits (bit ``t % 8`` of byte ``t // 8``
  for flat index ``t`` of ``W.T``), then the nonzero values in flat order;
* ``csr``     the nonzero values, their column (input) indices and ``d_out + 1`` row pointers,
  ``scipy.sparse.csr_array``'s three arrays of ``W.T``.

The byte counts follow :func:`minscale.prune.model_nbytes`'s formulas, with the index width
the generated C actually uses (:func:`index_dtype`) instead of scipy's int32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LAYOUTS", "index_dtype", "layout_nbytes", "choose_layout", "encode", "Encoded"]

LAYOUTS = ("dense", "bitmask", "csr")


def index_dtype(max_value):
    """Narrowest unsigned C integer type holding every value in ``[0, max_value]``.

    Parameters
    ----------
    max_value : int, >= 0

    Returns
    -------
    numpy.dtype
        uint8, uint16 or uint32.

    Raises
    ------
    ValueError
        If max_value is negative or beyond uint32.
    """
    max_value = int(max_value)
    if max_value < 0 or max_value > 2**32 - 1:
        raise ValueError(f"max_value must lie in [0, 2**32 - 1], got {max_value}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise AssertionError("unreachable")


def layout_nbytes(layout, shape, nnz, value_bytes, index_bytes):
    """Bytes of one weight matrix stored in `layout`.

    Parameters
    ----------
    layout : {"dense", "bitmask", "csr"}
    shape : (int, int)
        ``(d_out, d_in)`` of the stored ``W.T``.
    nnz : int
        Nonzero weights.
    value_bytes : int
        Bytes per stored value (1 for int8 codes, 4 for float32).
    index_bytes : int
        Bytes per CSR index and row pointer.

    Returns
    -------
    int

    Notes
    -----
    dense ``rows * cols * value_bytes``; bitmask ``ceil(rows * cols / 8) + nnz * value_bytes``;
    csr ``nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes``.
    """
    rows, cols = (int(v) for v in shape)
    if layout == "dense":
        return rows * cols * value_bytes
    if layout == "bitmask":
        return -(-rows * cols // 8) + nnz * value_bytes
    if layout == "csr":
        return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def choose_layout(Wt, value_bytes, index_bytes):
    """The smallest layout for `Wt` (ties: dense before bitmask before csr).

    Parameters
    ----------
    Wt : ndarray, shape (d_out, d_in)
    value_bytes, index_bytes : int

    Returns
    -------
    str
    """
    nnz = int(np.count_nonzero(Wt))
    sizes = [layout_nbytes(k, Wt.shape, nnz, value_bytes, index_bytes) for k in LAYOUTS]
    return LAYOUTS[int(np.argmin(sizes))]


@dataclass(frozen=True)
class Encoded:
    """One weight matrix in its layout.

    Attributes
    ----------
    layout : str
    values : ndarray
        All values (dense) or the nonzeros in flat order of ``W.T``.
    mask : uint8 ndarray or None
        bitmask: packed keep bits, little bit order.
    indices, indptr : ndarray or None
        csr: column indices (nnz,) and row pointers (d_out + 1,).
    """

    layout: str
    values: np.ndarray
    mask: np.ndarray | None = None
    indices: np.ndarray | None = None
    indptr: np.ndarray | None = None


def encode(Wt, layout, idx_dtype):
    """Encode `Wt` (shape (d_out, d_in)) in `layout`; see the module docstring.

    Returns
    -------
    Encoded
    """
    Wt = np.ascontiguousarray(Wt)
    if layout == "dense":
        return Encoded("dense", Wt.reshape(-1))
    keep = Wt.reshape(-1) != 0
    values = Wt.reshape(-1)[keep]
    if layout == "bitmask":
        return Encoded("bitmask", values, mask=np.packbits(keep, bitorder="little"))
    if layout == "csr":
        indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(Wt, axis=1))])
        indices = np.nonzero(Wt)[1]
        return Encoded("csr", values, indices=indices.astype(idx_dtype),
                       indptr=indptr.astype(idx_dtype))
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
