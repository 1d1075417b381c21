"""Seeds (minscale/study/seeds.py): worker processes give the same numbers as one process,
errors name their seed, and the variant record's fields by hand."""
import functools
import math

import numpy as np
import pytest

from minscale.study.runs import build_model
from minscale.study.seeds import map_seeds, seed_pool, study_seeds, variant_record
from minscale.study.stats import mean_ci95

pytestmark = pytest.mark.exactness


def _train_seed(X, y, seed):
    """A small model trained from seed `seed`: its parameters and final loss."""
    model = build_model(X.shape[1], y.shape[1], [16], seed=seed)
    model.compile(optimizer="adam")
    history = model.fit(X, y, epochs=3, batch_size=16, seed=seed, verbose=0)
    return model.params.copy(), history.history["loss"][-1]


def _fail_on_odd(seed):
    if seed % 2:
        raise ValueError("odd seeds are refused")
    return seed


@pytest.mark.slow  # spawned workers start in seconds each on a busy machine
def test_jobs_2_gives_exactly_the_numbers_of_jobs_1_and_errors_name_their_seed():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8))
    y = X @ rng.normal(size=(8, 2)) + 0.1 * rng.normal(size=(200, 2))
    fn = functools.partial(_train_seed, X, y)
    one = map_seeds(fn, [3, 4, 5], jobs=1)
    # one pool of 2 spawned workers for every call (a worker's start-up costs seconds)
    with seed_pool(2) as pool:
        two = map_seeds(fn, [3, 4, 5], jobs=2, pool=pool)
        with pytest.raises(ValueError, match=r"^seed 1: odd seeds are refused$"):
            map_seeds(_fail_on_odd, [0, 1, 2], pool=pool)
        assert map_seeds(_fail_on_odd, [0, 2, 4], pool=pool) == [0, 2, 4]
    assert len(one) == len(two) == 3
    for (p1, l1), (p2, l2) in zip(one, two):
        np.testing.assert_array_equal(p1, p2)
        assert l1 == l2
    # the seeds matter: different seeds, different parameters
    assert not np.array_equal(one[0][0], one[1][0])


def test_an_error_names_its_seed_and_keeps_its_type():
    with pytest.raises(ValueError, match=r"^seed 1: odd seeds are refused$"):
        map_seeds(_fail_on_odd, [0, 1, 2])
    assert map_seeds(_fail_on_odd, [0, 2, 4]) == [0, 2, 4]
    assert seed_pool(1).__enter__() is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="jobs"):
        map_seeds(_fail_on_odd, [0], jobs=0)
    with pytest.raises(ValueError, match="seeds"):
        map_seeds(_fail_on_odd, [])
    with pytest.raises(TypeError, match="fn"):
        map_seeds(3, [0])
    assert study_seeds(5, 3) == [5, 6, 7]
    with pytest.raises(ValueError, match="n"):
        study_seeds(0, 0)


def test_variant_record_by_hand():
    r = variant_record("v", [0.30, 0.32, 0.34], "c", [0.20, 0.21, 0.22], [0, 1, 2],
                       nbytes=100)
    assert r["seeds"] == [0, 1, 2] and r["nbytes"] == 100
    assert r["loss_mean"] == pytest.approx(0.32)
    # s = 0.02, t_{0.975,2} = 4.302653, half = 4.302653 * 0.02 / sqrt(3)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert r["loss_ci95"] == pytest.approx([0.32 - half, 0.32 + half], rel=1e-6)
    assert r["control"]["name"] == "c" and r["control"]["loss_mean"] == pytest.approx(0.21)
    assert r["effect"] == pytest.approx(0.32 / 0.21)
    # differences 0.10, 0.11, 0.12: interval 0.11 +- half / 2, wholly above 0
    assert r["difference_ci95"] == pytest.approx([0.11 - half / 2, 0.11 + half / 2], rel=1e-6)
    assert r["verdict"] == "worse"


def test_variant_record_one_seed_and_divergence():
    r = variant_record("v", [0.5], "c", [0.25], [7])
    assert r["loss_ci95"] == [None, None] and r["effect"] == 2.0
    assert r["verdict"] == "no significant difference"
    d = variant_record("v", [None, 0.5], "c", [0.2, 0.3], [0, 1])
    assert d["loss_mean"] is None and d["effect"] is None and d["verdict"] == "diverged"
    m, lo, hi = mean_ci95([0.2, 0.3])
    assert d["control"]["loss_ci95"] == pytest.approx([lo, hi])
    with pytest.raises(ValueError, match="one value per seed"):
        variant_record("v", [0.1], "c", [0.1, 0.2], [0, 1])
    with pytest.raises(ValueError, match="replace"):
        variant_record("v", [0.1], "c", [0.1], [0], effect=3)
