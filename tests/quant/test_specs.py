"""Weight and activation specs: the forms weight_spec accepts.
"""

import pytest

from minscale import quant as Q

# compares computations for equality: run again by `make test-lane` with CPU vector code off
pytestmark = pytest.mark.exactness

def test_weight_spec_forms():
    assert Q.weight_spec("int8") == Q.WeightSpec(8, "affine", per_channel=True)
    assert Q.weight_spec("int4").bits == 4
    fixed = Q.weight_spec(Q.QFormat(8, 4))
    assert (fixed.scheme, fixed.frac_bits, fixed.name) == ("fixed", 4, "Q3.4")
    assert Q.weight_spec({"bits": 6, "scheme": "fixed"}).name == "fixed6/auto"
    assert Q.WeightSpec(4, per_channel=False).name == "int4/tensor"
    for bad in ("int1", "int33", "float8", "int"):
        with pytest.raises(ValueError, match="weights must be 'intN'"):
            Q.weight_spec(bad)
    with pytest.raises(TypeError, match="weights must be"):
        Q.weight_spec(8)
    with pytest.raises(ValueError, match="scheme"):
        Q.WeightSpec(8, "log")
    with pytest.raises(ValueError, match="frac_bits applies to scheme='fixed'"):
        Q.WeightSpec(8, frac_bits=3)
    with pytest.raises(ValueError, match="signed"):
        Q.WeightSpec(8, "affine", signed=False)
