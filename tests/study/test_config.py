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


def test_config_seeds_jobs_splits_parts_and_grids():
    assert study.StudyConfig().seeds == 3 and study.StudyConfig.preset(quick=True).seeds == 1
    assert study.StudyConfig.preset(quick=True, seeds=2).seeds == 2
    assert study.StudyConfig().parts == ("learning_rate", "pruning", "quantization", "combined",
                                         "regularization", "workers")
    for field, value in (("seeds", 0), ("jobs", 0), ("validation_size", 0.0),
                         ("validation_size", 1.0), ("parts", ()), ("l2_strengths", (0.0,)),
                         ("decay_strengths", ()), ("l2_strengths", (-1e-3,))):
        with pytest.raises(ValueError, match=field):
            study.StudyConfig(**{field: value})
    assert study.SCHEMA_VERSION == 2
    d = study.StudyConfig(parts=["learning_rate"]).to_dict()
    assert d["parts"] == ["learning_rate"] and d["validation_size"] == 0.2
