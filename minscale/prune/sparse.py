"""Sparse (CSR) inference copies of pruned models and the bytes each storage format takes.

:func:`to_sparse` stores every Dense weight of a (pruned) Sequential as a
``scipy.sparse.csr_array``; :class:`SparseModel` predicts with it. :func:`model_nbytes`
counts the bytes of a model's parameters in a storage format, with the formulas of
:mod:`minscale.sizes`. SciPy is imported only when a CSR matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks, kernels, sizes
from ..model import check_X
from .masks import apply_mask
from .model import check_model

__all__ = [
    "FORMATS",
    "SparseDense",
    "SparseModel",
    "to_sparse",
    "model_nbytes",
]

#: storage formats accepted by :func:`model_nbytes`
FORMATS = ("dense", "csr", "bitmask")


@dataclass(frozen=True)
class SparseDense:
    """One Dense layer with its weights in CSR: ``a = act(x @ W + b)``.

    Attributes
    ----------
    W : scipy.sparse.csr_array, shape (d_in, d_out)
        The masked weights; only nonzeros are stored.
    b : ndarray, shape (d_out,), or None
    activation : str
        A name of :data:`minscale.kernels.ACTIVATION_CODES`.
    alpha : float
        leaky_relu slope.
    """

    W: object
    b: object
    activation: str
    alpha: float = 0.01

    def __post_init__(self):
        # (x @ W)^T = W^T @ x^T: W^T in CSR, built once here, multiplies a dense matrix in one
        # pass over the stored nonzeros; building it per call cost a third of a batch-1 predict
        object.__setattr__(self, "_Wt", self.W.T.tocsr())

    def forward(self, x):
        """Layer output for `x` (ndarray, shape (n, d_in), the weights' dtype): (n, d_out)."""
        z = np.ascontiguousarray(np.asarray(self._Wt @ x.T).T)
        b = self.b if self.b is not None else np.zeros(0, dtype=z.dtype)
        return kernels.bias_act(z, b, kernels.ACTIVATION_CODES[self.activation], self.alpha)


class SparseModel:
    """Inference-only model whose Dense weights are ``scipy.sparse`` CSR matrices.

    Built by :func:`to_sparse`; predictions equal the dense model's up to float rounding
    (the sums run over the nonzeros in another order).

    Parameters
    ----------
    layers : list of SparseDense
    input_dim : int
    dtype : numpy dtype

    Attributes
    ----------
    layers, input_dim, dtype
    nbytes : int
        Bytes of the stored arrays: CSR data, indices and indptr of every W, and the biases.
    """

    def __init__(self, layers, input_dim, dtype):
        self.layers = list(layers)
        self.input_dim = int(input_dim)
        self.dtype = np.dtype(dtype)

    @property
    def nbytes(self):
        """Bytes held by the weight and bias arrays."""
        total = 0
        for layer in self.layers:
            W = layer.W  # scipy gives indices and indptr one dtype
            total += sizes.csr_bytes(W.data.size, W.shape[0], 8 * W.data.itemsize,
                                     W.indices.itemsize)
            if layer.b is not None:
                total += sizes.packed_bytes(layer.b.size, 8 * layer.b.itemsize)
        return total

    def predict(self, X, batch_size=None):
        """Outputs for `X`.

        Parameters
        ----------
        X : array_like, shape (n, d_in)
        batch_size : int, optional
            Rows per pass (all at once by default).

        Returns
        -------
        ndarray, shape (n, d_out), the model's dtype

        Raises
        ------
        ValueError
            Bad `X` (see :func:`minscale.model.check_X`) or `batch_size`.
        """
        X = check_X(X, self.input_dim, self.dtype)
        n = X.shape[0]
        if batch_size is None:
            batch_size = n
        batch_size = _checks.check_int("batch_size", batch_size, lo=1)
        parts = []
        for start in range(0, n, batch_size):
            a = X[start:start + batch_size]
            for layer in self.layers:
                a = layer.forward(a)
            parts.append(a)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __repr__(self):
        shapes = ", ".join(f"{layer.W.shape} nnz={layer.W.nnz}" for layer in self.layers)
        return f"SparseModel([{shapes}], dtype={self.dtype.name!r})"


def _check_float_model(model):
    for i, layer in enumerate(model.layers):
        if layer.kernel_quantizer is not None or layer.output_quantizer is not None:
            raise ValueError(f"model.layers[{i}] has quantization hooks; sparse storage "
                             "supports float models only (quantize after pruning instead)")


def to_sparse(model):
    """Inference copy of a (pruned) model with every Dense weight stored as CSR.

    Parameters
    ----------
    model : Sequential, built, without quantization hooks

    Returns
    -------
    SparseModel
        Each W masked (``apply_mask``) and converted with ``scipy.sparse.csr_array``, which
        stores only its nonzeros; biases stay dense (masked).

    Raises
    ------
    TypeError, ValueError
        If `model` is not a built Sequential or a layer has quantization hooks.

    References
    ----------
    CSR (compressed sparse row) as in ``scipy.sparse.csr_array``; Han et al. 2016, "Deep
    Compression" (sparse storage of pruned weights).
    """
    from scipy import sparse  # noqa: PLC0415  (optional heavy package, loaded on use)

    model = check_model(model)
    _check_float_model(model)
    layers = []
    for layer in model.layers:
        W = sparse.csr_array(apply_mask(layer.W, layer.W_mask))
        b = apply_mask(layer.b, layer.b_mask) if layer.use_bias else None
        layers.append(SparseDense(W=W, b=b, activation=layer.activation, alpha=layer.alpha))
    return SparseModel(layers, model.input_dim, model.dtype)


def model_nbytes(model, format="dense", bits=32):
    """Exact bytes to store a model's parameters in a given format.

    Parameters
    ----------
    model : Sequential, built
    format : {"dense", "csr", "bitmask"}, default "dense"
    bits : int in [1, 64], default 32
        Bits per stored value (32 for float32, 64 for float64, 8 for int8 codes); values of a
        tensor are packed and the tensor rounded up to whole bytes.

    Returns
    -------
    nbytes : int

    Raises
    ------
    ValueError
        If `format` is unknown or `bits` outside [1, 64].
    TypeError
        If `model` is not a Sequential or `bits` not an int.

    Notes
    -----
    Per layer, with W of shape (d_in, d_out) after masking, nnz its nonzero count and
    V(c) = ceil(c * bits / 8) the bytes of c packed values:

    - dense:   V(d_in * d_out)
    - csr:     V(nnz) + nnz * index_bytes + (d_in + 1) * indptr_bytes, with the index dtypes
               scipy chooses for that matrix (``scipy.sparse.csr_array``: int32 while nnz and
               the shape fit, else int64); for bits multiples of 8 this is
               nnz * (value bytes + index bytes) + (rows + 1) * indptr bytes
    - bitmask: ceil(d_in * d_out / 8) + V(nnz)   (one bit per weight, then the nonzeros)

    plus V(d_out) for a bias in every format (biases are stored dense).

    References
    ----------
    ``scipy.sparse.csr_array`` storage (data, indices, indptr); Han et al. 2016, "Deep
    Compression" (sparse and bitmask encodings of pruned weights).

    Examples
    --------
    >>> import minscale as ms
    >>> model = ms.Sequential([ms.Dense(2)], input_dim=3, seed=0)
    >>> model_nbytes(model), model_nbytes(model, bits=8)  # 6 weights + 2 biases
    (32, 8)
    """
    from scipy import sparse  # noqa: PLC0415  (optional heavy package, loaded on use)

    model = check_model(model)
    _checks.check_choice("format", format, FORMATS)
    bits = _checks.check_int("bits", bits, lo=1)
    if bits > 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    total = 0
    for layer in model.layers:
        d_in, d_out = layer.W.shape
        if format == "dense":
            total += sizes.packed_bytes(d_in * d_out, bits)
        else:
            W = apply_mask(layer.W, layer.W_mask)
            if format == "csr":
                # the index dtype scipy chooses for this matrix (int32 while it fits)
                csr = sparse.csr_array(W)
                total += sizes.csr_bytes(csr.nnz, d_in, bits, csr.indices.itemsize)
            else:
                total += sizes.bitmask_bytes(W.size, int(np.count_nonzero(W)), bits)
        if layer.use_bias:
            total += sizes.packed_bytes(d_out, bits)
    return total
