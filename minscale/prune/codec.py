"""Model-file codec of :class:`minscale.prune.SparseModel` (CSR weights per layer).

Imported by :mod:`minscale.io.codecs` the first time a SparseModel is saved or loaded, so
:mod:`minscale.io` never imports prune. Fields: ``dtype``, ``input_dim`` and per layer
``shape``, ``nnz``, ``use_bias``, ``activation``, ``alpha``; arrays ``layers/<i>/data``,
``indices``, ``indptr`` (the CSR of W, index arrays int32 or int64 as scipy chose them) and
``layers/<i>/b``.
"""
from __future__ import annotations

import numpy as np

from ..io import codecs
from ..io.container import ModelFileError, manifest_array, manifest_dtype, manifest_field
from ..kernels import ACTIVATION_CODES
from ..prune import SparseDense, SparseModel

__all__ = ["encode_sparse", "decode_sparse", "sparse_layer_table"]


def encode_sparse(model):
    """Manifest fields and arrays of a :class:`minscale.prune.SparseModel`.

    Parameters
    ----------
    model : SparseModel

    Returns
    -------
    fields : dict
    arrays : dict of str -> ndarray
        ``layers/<i>/data`` (nnz,), ``indices`` (nnz,), ``indptr`` (d_in + 1,), ``b``
        (d_out,).
    """
    arrays, layers = {}, []
    for i, layer in enumerate(model.layers):
        W = layer.W
        arrays[f"layers/{i}/data"] = np.ascontiguousarray(W.data)
        # CSR index arrays may be int32 or int64 (scipy picks); stored as they are
        arrays[f"layers/{i}/indices"] = np.ascontiguousarray(W.indices)
        arrays[f"layers/{i}/indptr"] = np.ascontiguousarray(W.indptr)
        if layer.b is not None:
            arrays[f"layers/{i}/b"] = np.ascontiguousarray(layer.b)
        layers.append({"shape": [int(s) for s in W.shape], "nnz": int(W.nnz),
                       "use_bias": layer.b is not None, "activation": layer.activation,
                       "alpha": float(layer.alpha)})
    return {"dtype": model.dtype.name, "input_dim": int(model.input_dim), "layers": layers}, \
        arrays


def _check_csr(i, shape, nnz, data, indices, indptr, path):
    d_in, d_out = shape
    if data.shape != (nnz,) or indices.shape != (nnz,) or indptr.shape != (d_in + 1,):
        raise ModelFileError(f"{path!r}: layer {i} CSR arrays have shapes {data.shape}, "
                             f"{indices.shape}, {indptr.shape}; expected ({nnz},), ({nnz},), "
                             f"({d_in + 1},)")
    if indices.dtype.kind != "i" or indptr.dtype.kind != "i":
        raise ModelFileError(f"{path!r}: layer {i} CSR indices must be signed integers")
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise ModelFileError(f"{path!r}: layer {i} CSR indptr is not a non-decreasing "
                             f"0..{nnz} offset vector")
    if nnz and (indices.min() < 0 or indices.max() >= d_out):
        raise ModelFileError(f"{path!r}: layer {i} CSR column indices leave [0, {d_out})")


def decode_sparse(manifest, arrays, path):
    """Rebuild a :class:`minscale.prune.SparseModel` from a verified file.

    Parameters
    ----------
    manifest : dict
    arrays : dict of str -> ndarray
    path : str
        Named in messages.

    Returns
    -------
    SparseModel

    Raises
    ------
    minscale.io.ModelFileError
        Missing fields, an unknown activation, or CSR arrays that are not a valid CSR of the
        layer's shape (offsets not non-decreasing from 0 to nnz, column indices out of range).
    """
    from scipy import sparse  # noqa: PLC0415 (optional: only sparse models need scipy)

    dtype = manifest_dtype(manifest, path)
    d = manifest_field(manifest, "input_dim", int, "manifest")
    specs = manifest_field(manifest, "layers", list, "manifest")
    if d < 1 or not specs:
        raise ModelFileError(f"{path!r}: a sparse model needs input_dim >= 1 and layers")
    layers = []
    for i, spec in enumerate(specs):
        where = f"manifest['layers'][{i}]"
        shape = manifest_field(spec, "shape", list, where)
        nnz = manifest_field(spec, "nnz", int, where)
        use_bias = manifest_field(spec, "use_bias", bool, where)
        activation = manifest_field(spec, "activation", str, where)
        alpha = manifest_field(spec, "alpha", (int, float), where)
        if len(shape) != 2 or shape[0] != d or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ModelFileError(f"{path!r}: layer {i} shape {shape!r}; expected [{d}, d_out]")
        if activation not in ACTIVATION_CODES or not alpha > 0:
            raise ModelFileError(f"{path!r}: layer {i} activation {activation!r} / alpha "
                                 f"{alpha!r} not supported")
        data = arrays.get(f"layers/{i}/data")
        indices = arrays.get(f"layers/{i}/indices")
        indptr = arrays.get(f"layers/{i}/indptr")
        if data is None or indices is None or indptr is None or data.dtype != np.dtype(dtype):
            raise ModelFileError(f"{path!r}: layer {i} misses its CSR arrays or has the wrong "
                                 "dtype")
        _check_csr(i, shape, nnz, data, indices, indptr, path)
        b = None
        if use_bias:
            b = manifest_array(arrays, f"layers/{i}/b", (shape[1],), dtype, path)
        W = sparse.csr_array((data, indices, indptr), shape=tuple(shape))
        layers.append(SparseDense(W=W, b=b, activation=activation, alpha=float(alpha)))
        d = shape[1]
    return SparseModel(layers, manifest["input_dim"], dtype)


def sparse_layer_table(model):
    """Per-layer rows of a SparseModel for ``minscale info``.

    Returns
    -------
    list of dict
        The keys of :func:`minscale.io.layer_table`; ``n_params`` counts stored values
        (nnz + bias), ``sparsity`` is ``1 - nnz / (d_in * d_out)``, ``nbytes`` the CSR arrays'
        and the bias's bytes.
    """
    rows = []
    for i, layer in enumerate(model.layers):
        W = layer.W
        n_b = 0 if layer.b is None else layer.b.size
        rows.append({"index": i, "W_shape": tuple(W.shape),
                     "b_shape": None if layer.b is None else tuple(layer.b.shape),
                     "activation": layer.activation, "n_params": int(W.nnz) + n_b,
                     "sparsity": 1.0 - W.nnz / (W.shape[0] * W.shape[1]),
                     "bits": W.data.dtype.itemsize * 8,
                     "nbytes": int(W.data.nbytes + W.indices.nbytes + W.indptr.nbytes
                                   + (0 if layer.b is None else layer.b.nbytes))})
    return rows


codecs.register("SparseModel", encode_sparse, decode_sparse, sparse_layer_table)
