"""minscale.sizes: one hand-worked reference value per formula, and agreement with the public
size functions that state the same counts (prune, quant, study, io)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minscale as ms
from minscale import io as msio
from minscale import prune, quant, sizes, study


def test_reference_values():
    # V(c) = ceil(c * bits / 8)
    assert sizes.packed_bytes(1000, 4) == 500
    assert sizes.packed_bytes(3, 3) == 2          # 9 bits -> 2 bytes
    assert sizes.aligned_bytes(10, 12) == 20      # 12-bit codes in int16
    assert sizes.aligned_bytes(1000, 4) == 1000   # 4-bit codes in int8
    # 2 int8 values, 2 int32 column indices, 4 + 1 int32 row pointers
    assert sizes.csr_bytes(2, 4, 8) == 2 + 8 + 20
    assert sizes.csr_bytes(3, 2, 32, index_bytes=8) == 12 + 24 + 24
    # 10 bits of mask -> 2 bytes, then 3 float32 values
    assert sizes.bitmask_bytes(10, 3, 32) == 2 + 12
    # 1000 int8 codes + 10 float32 scales + 10 int8 zero points
    assert sizes.codes_bytes(1000, 8, n_scales=10, n_zero_points=10) == 1050
    assert sizes.codes_bytes(1000, 4, n_scales=1, packed=True) == 504
    assert sizes.compression_ratio(4000, 1000) == 4.0
    # 3*4 + 4 + 4*2 (no bias)
    assert sizes.param_count(
        {"input_dim": 3, "layers": [{"units": 4}, {"units": 2, "use_bias": False}]}) == 24


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"count must be an integer >= 0, got -1"):
        sizes.packed_bytes(-1, 8)
    with pytest.raises(TypeError, match=r"bits must be an integer, got 8.0"):
        sizes.aligned_bytes(3, 8.0)
    with pytest.raises(ValueError, match=r"nnz must be an integer in \[0, 4\], got 5"):
        sizes.bitmask_bytes(4, 5, 8)
    with pytest.raises(ValueError, match=r"quantized_nbytes must be an integer >= 1, got 0"):
        sizes.compression_ratio(10, 0)
    with pytest.raises(ValueError, match=r"config\['layers'\]\[0\]\['units'\]"):
        sizes.param_count({"input_dim": 3, "layers": [{"units": 0}]})


@settings(deadline=None, max_examples=40)
@given(n=st.integers(0, 5000), bits=st.integers(2, 32), scales=st.integers(0, 50),
       zps=st.integers(0, 50), packed=st.booleans())
def test_codes_bytes_equals_quantized_nbytes(n, bits, scales, zps, packed):
    assert sizes.codes_bytes(n, bits, scales, zps, packed) == quant.quantized_nbytes(
        n, bits, scales, zps, packed)


def test_sparse_formulas_equal_prune_and_study():
    rng = np.random.default_rng(0)
    codes = (rng.integers(-2, 3, size=(7, 5)) * (rng.random((7, 5)) < 0.3)).astype(np.int8)
    nnz = int(np.count_nonzero(codes))
    assert study.sparse_codes_nbytes(codes, bits=8) == min(
        sizes.bitmask_bytes(codes.size, nnz, 8), sizes.csr_bytes(nnz, 7, 8))
    model = ms.Sequential([ms.Dense(5, use_bias=False)], input_dim=7, seed=0)
    prune.prune(model, 0.6)
    W = prune.apply_mask(model.layers[0].W, model.layers[0].W_mask)
    nnz = int(np.count_nonzero(W))
    assert prune.model_nbytes(model, "csr", bits=32) == sizes.csr_bytes(nnz, 7, 32)
    assert prune.model_nbytes(model, "bitmask", bits=32) == sizes.bitmask_bytes(35, nnz, 32)
    assert prune.model_nbytes(model, "dense", bits=8) == sizes.packed_bytes(35, 8)


def test_param_count_equals_io_and_the_built_model():
    model = ms.Sequential([ms.Dense(4), ms.Dense(3, use_bias=False), ms.Dense(1)],
                          input_dim=6, seed=0)
    config = model.get_config()
    assert sizes.param_count(config) == msio.expected_param_count(config) == model.params.size
