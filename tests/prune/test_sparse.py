"""Tests of minscale.prune.sparse: CSR inference equals the dense model, and byte counts.

Reference values are worked out by hand in the comments beside them.
"""

import numpy as np
import pytest
from prune_helpers import trained

import minscale as ms
from minscale import prune as P


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_csr_predictions_equal_dense(dtype, rtol):
    model, X, y = trained((6, 32, 16, 2), dtype=dtype, epochs=5)
    P.prune(model, 0.9, method="global")
    sparse = P.to_sparse(model)
    nnz = [layer.W.nnz for layer in sparse.layers]
    assert nnz == [int(np.count_nonzero(layer.W)) for layer in model.layers]
    assert sum(nnz) == round(0.1 * (6 * 32 + 32 * 16 + 16 * 2))
    dense_pred = model.predict(X)
    np.testing.assert_allclose(sparse.predict(X), dense_pred, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(sparse.predict(X, batch_size=7), dense_pred, rtol=rtol,
                               atol=rtol * 1e-2)
    np.testing.assert_allclose(sparse.predict(X[:1]), dense_pred[:1], rtol=rtol, atol=rtol * 1e-2)
    assert sparse.predict(X).dtype == np.dtype(dtype)


def test_model_nbytes_hand_counted():
    model = ms.Sequential([ms.Dense(2)], input_dim=3, seed=0)
    model.layers[0].W[...] = [[0.5, -1.0], [0.1, 0.2], [3.0, 0.05]]
    P.prune(model, 4 / 6)  # keeps -1.0 and 3.0: nnz = 2 of 6 weights, 2 biases
    # dense:   (6 + 2) values * 4 bytes                                    = 32
    # csr:     2 * (4 + 4) + (3 rows + 1) * 4 indptr + 2 * 4 bias           = 40
    # bitmask: ceil(6 / 8) = 1 + 2 * 4 values + 2 * 4 bias                  = 17
    assert [P.model_nbytes(model, f) for f in P.FORMATS] == [32, 40, 17]
    # 8 bits: dense 6 + 2; csr 2 + 2 * 4 + 4 * 4 + 2; bitmask 1 + 2 + 2
    assert [P.model_nbytes(model, f, bits=8) for f in P.FORMATS] == [8, 28, 5]
    # 4 bits: dense ceil(24 / 8) + ceil(8 / 8); csr 1 + 8 + 16 + 1; bitmask 1 + 1 + 1
    assert [P.model_nbytes(model, f, bits=4) for f in P.FORMATS] == [4, 26, 3]


def test_model_nbytes_csr_at_64_bits_equals_scipy_arrays():
    model, X, y = trained((6, 32, 16, 2), epochs=2)
    P.prune(model, 0.8, method="global")
    sparse = P.to_sparse(model)
    assert P.model_nbytes(model, "csr", bits=64) == sparse.nbytes
    assert P.model_nbytes(model, "dense", bits=64) == model.params.nbytes


def test_sparse_model_nbytes_is_the_bytes_its_arrays_hold():
    # SparseModel.nbytes is the minscale.sizes CSR formula; it must equal what the arrays hold,
    # for scipy's int32 indices and for int64 ones (a large matrix or a file written so)
    from scipy import sparse

    model, X, y = trained((6, 16, 1), epochs=1)
    P.prune(model, 0.7, method="global")
    small = P.to_sparse(model)
    W64 = sparse.csr_array((np.array([1.0, -2.0]), np.array([0, 2], np.int64),
                            np.array([0, 1, 1, 2], np.int64)), shape=(3, 4))
    assert W64.indices.dtype == np.int64
    wide = P.SparseModel([P.SparseDense(W=W64, b=None, activation="identity")], 3, "float64")
    for sm in (small, wide):
        held = sum(layer.W.data.nbytes + layer.W.indices.nbytes + layer.W.indptr.nbytes
                   + (0 if layer.b is None else layer.b.nbytes) for layer in sm.layers)
        assert sm.nbytes == held
    # wide: 2 values * 8 + 2 indices * 8 + 4 row pointers * 8, no bias
    assert wide.nbytes == 64
