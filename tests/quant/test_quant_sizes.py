"""quant.quantized_nbytes and compression_ratio: hand counts and the packed bound.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minscale.quant import (
    compression_ratio,
    quantized_nbytes,
)

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

def test_quantized_nbytes_reference():
    # 1000 int8 codes + 10 float32 scales (40 B) + 10 int8 zero points (10 B) = 1050 B.
    assert quantized_nbytes(1000, 8, n_scales=10, n_zero_points=10) == 1050
    # 4-bit codes take a whole byte each unpacked, half a byte packed.
    assert quantized_nbytes(1000, 4) == 1000 and quantized_nbytes(1000, 4, packed=True) == 500
    # 3 codes of 4 bits = 12 bits -> 2 bytes packed; 10 codes of 12 bits: 20 B vs 15 B.
    assert quantized_nbytes(3, 4, packed=True) == 2
    assert quantized_nbytes(10, 12) == 20 and quantized_nbytes(10, 12, packed=True) == 15
    assert quantized_nbytes(5, 32, n_scales=1) == 24
    assert compression_ratio(4000, 1050) == 4000 / 1050
    with pytest.raises(ValueError, match="n_codes"):
        quantized_nbytes(-1, 8)
    with pytest.raises(ValueError, match="quantized_nbytes"):
        compression_ratio(10, 0)


@settings(deadline=None)
@given(n=st.integers(0, 10**6), bits=st.integers(2, 32))
def test_packed_never_larger_than_byte_aligned(n, bits):
    packed = quantized_nbytes(n, bits, packed=True)
    aligned = quantized_nbytes(n, bits)
    assert packed <= aligned and packed * 8 >= n * bits and (packed - 1) * 8 < n * bits or n == 0
