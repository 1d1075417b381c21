"""The study's configuration (minscale/study/config.py): bad values are refused by name."""
import pytest

from minscale import study


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="sparsities"):
        study.StudyConfig(sparsities=(0.5, 0.2))
    with pytest.raises(ValueError, match="epochs"):
        study.StudyConfig(epochs=0)
    with pytest.raises(ValueError, match="prune_methods"):
        study.StudyConfig(prune_methods=("nope",))
    with pytest.raises(ValueError, match="fixed_point_bits"):
        study.StudyConfig(fixed_point_bits=(64,))
    assert study.StudyConfig.preset(quick=True).epochs == 10
    assert study.StudyConfig.preset(quick=True, epochs=3).epochs == 3
