"""Weight layouts of the export: every layout decodes to the same matrix, the smallest is
chosen, and the byte counts follow prune.model_nbytes's formulas."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale.export.layout import LAYOUTS, choose_layout, encode, index_dtype, layout_nbytes


def _decode(enc, shape):
    rows, cols = shape
    if enc.layout == "dense":
        return enc.values.reshape(shape)
    out = np.zeros(rows * cols, dtype=enc.values.dtype)
    if enc.layout == "bitmask":
        keep = np.unpackbits(enc.mask, bitorder="little")[: rows * cols].astype(bool)
        out[keep] = enc.values
        return out.reshape(shape)
    out = out.reshape(shape)
    for j in range(rows):
        for p in range(int(enc.indptr[j]), int(enc.indptr[j + 1])):
            out[j, int(enc.indices[p])] = enc.values[p]
    return out


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 20), sparsity=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1))
def test_every_layout_round_trips_and_the_smallest_is_chosen(rows, cols, sparsity, seed):
    rng = np.random.default_rng(seed)
    Wt = rng.integers(-127, 128, size=(rows, cols)).astype(np.int8)
    Wt[rng.random(Wt.shape) < sparsity] = 0
    nnz = int(np.count_nonzero(Wt))
    idx = index_dtype(max(cols - 1, nnz))
    sizes = {}
    for layout in LAYOUTS:
        enc = encode(Wt, layout, idx)
        np.testing.assert_array_equal(_decode(enc, Wt.shape), Wt)
        stored = enc.values.nbytes + sum(a.nbytes for a in (enc.mask, enc.indices, enc.indptr)
                                         if a is not None)
        sizes[layout] = layout_nbytes(layout, Wt.shape, nnz, 1, idx.itemsize)
        assert stored == sizes[layout]
    assert sizes[choose_layout(Wt, 1, idx.itemsize)] == min(sizes.values())


def test_dense_and_bitmask_bytes_equal_model_nbytes():
    m = ms.Sequential([ms.Dense(7, use_bias=False)], input_dim=13, seed=0)
    ms.prune.prune(m, 0.7)
    W = m.layers[0].W
    nnz = int(np.count_nonzero(W))
    for fmt in ("dense", "bitmask"):
        assert layout_nbytes(fmt, W.T.shape, nnz, 1, 1) == ms.prune.model_nbytes(m, fmt, bits=8)


@pytest.mark.parametrize("value,expected", [(0, np.uint8), (255, np.uint8), (256, np.uint16),
                                            (65535, np.uint16), (65536, np.uint32)])
def test_index_dtype(value, expected):
    assert index_dtype(value) == np.dtype(expected)
