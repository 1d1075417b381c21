"""Tests for minscale.datasets (shipped data, loaders) and minscale.data (utilities)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minscale import data as msdata
from minscale import datasets
from minscale.data import (
    Standardizer,
    accuracy,
    check_Xy,
    mean_and_scale,
    one_hot,
    standardize,
    train_test_split,
)
from minscale.datasets import load, load_csv, load_diabetes, load_digits, load_npz, make_linear

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


# =========================================================================== shipped data

# Reference: Efron, Hastie, Johnstone & Tibshirani (2004), Table 1, patients 1, 2 and 442
# (S5 to 4 decimals as in the data file; the table prints it rounded to 1 decimal).
DIABETES_ROWS = {
    0: ([59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.8598, 87], 151),
    1: ([48, 1, 21.6, 87, 183, 103.2, 70, 3, 3.8918, 69], 75),
    441: ([36, 1, 19.6, 71, 250, 133.2, 97, 3, 4.5951, 92], 57),
}


def test_diabetes_shape_dtype_and_known_rows():
    X, y = load_diabetes()
    assert X.shape == (442, 10) and X.dtype == np.float64
    assert y.shape == (442,) and y.dtype == np.float64
    for i, (row, target) in DIABETES_ROWS.items():
        np.testing.assert_array_equal(X[i], row)
        assert y[i] == target


def test_diabetes_known_statistics():
    X, y = load_diabetes()
    # The target sums to 67243, so the mean is 67243 / 442 = 152.13348416289594.
    assert y.sum() == 67243
    assert y.mean() == pytest.approx(152.13348416289594, rel=1e-15)
    assert (y.min(), y.max()) == (25, 346)
    # Raw, not scikit-learn's scaled variant: SEX takes the codes 1 and 2 only.
    assert set(np.unique(X[:, 1])) == {1.0, 2.0}
    assert X[:, 0].mean() == pytest.approx(48.51809954751131, rel=1e-12)  # mean AGE


def test_digits_shape_dtype_label_counts_and_range():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    # Reference: scikit-learn's digits description / UCI optdigits.tes class distribution.
    np.testing.assert_array_equal(np.bincount(y),
                                  [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert X.min() == 0 and X.max() == 16
    np.testing.assert_array_equal(X, np.round(X))


def test_digits_first_image_is_a_zero():
    X, y = load_digits()
    # First record of digits.csv.gz (a "0"), row by row.
    first = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
             0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
             0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
    np.testing.assert_array_equal(X[0], first)
    assert y[0] == 0


def test_loaders_return_fresh_arrays():
    X1, y1 = load_diabetes()
    X1[:] = -1.0
    y1[:] = -1.0
    X2, y2 = load_diabetes()
    assert X2[0, 0] == 59 and y2[0] == 151
    D1, l1 = load_digits()
    l1[:] = 99
    assert load_digits()[1][0] == 0
    _, _, info = load("diabetes")
    info["feature_names"].append("junk")
    assert load("diabetes")[2]["feature_names"] == ["AGE", "SEX", "BMI", "BP", "S1", "S2",
                                                    "S3", "S4", "S5", "S6"]


# =========================================================================== make_linear

def _legacy_script(n, seed):
    """The classic script, run on the global NumPy state (saved and restored around it)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        X = np.random.rand(n, 1)
        y = 2 * X + 1 + np.random.randn(n, 1)
    finally:
        np.random.set_state(state)
    return X, y


def test_make_linear_equals_the_legacy_script():
    X, y = make_linear(100, 42)
    assert X.shape == (100, 1) and y.shape == (100, 1)
    assert X.dtype == np.float64 and y.dtype == np.float64
    # First values of np.random.seed(42); np.random.rand(...): well-known constants.
    np.testing.assert_array_equal(X[:3, 0], [0.3745401188473625, 0.9507143064099162,
                                            0.7319939418114051])
    np.testing.assert_array_equal(y[:3, 0], [1.8361273059328962, 2.602421262353965,
                                            2.5557486601583124])
    X_ref, y_ref = _legacy_script(100, 42)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_make_linear_leaves_global_state_alone():
    state = np.random.get_state()
    make_linear(10, 3)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2] == after[2]


def test_make_linear_least_squares_line():
    X, y = make_linear(100, 42)
    A = np.hstack([X, np.ones_like(X)])
    (w, b), *_ = np.linalg.lstsq(A, y[:, 0], rcond=None)
    # Actual numbers (NumPy 2.x lstsq): w = 1.5402267728769672, b = 1.2150961575467487.
    assert w == pytest.approx(1.5402267728769672, abs=1e-10)
    assert b == pytest.approx(1.2150961575467487, abs=1e-10)
    # Within three standard errors of the true line (SE of w ~ 0.31, of b ~ 0.17 here).
    resid = y[:, 0] - A @ np.array([w, b])
    cov = resid @ resid / (100 - 2) * np.linalg.inv(A.T @ A)
    se_w, se_b = np.sqrt(np.diag(cov))
    assert abs(w - 2) < 3 * se_w and abs(b - 1) < 3 * se_b


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"n_samples": 0}, ValueError, "n_samples must be >= 1, got 0"),
    ({"n_samples": 2.5}, TypeError, "n_samples must be an int"),
    ({"n_samples": True}, TypeError, "n_samples"),
    ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*32 - 1\].*got -1"),
    ({"seed": 2**32}, ValueError, "seed must be in"),
    ({"seed": "42"}, TypeError, "seed must be an int"),
])
def test_make_linear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_linear(**kwargs)


# =========================================================================== load_csv

def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_csv_last_column_is_default_target(tmp_path):
    p = _write(tmp_path, "a,b,y\n1,2,3\n4,5.5,6\n")
    X, y, names = load_csv(p)
    np.testing.assert_array_equal(X, [[1, 2], [4, 5.5]])
    np.testing.assert_array_equal(y, [3, 6])
    assert names == ["a", "b"] and X.dtype == y.dtype == np.float64
    assert X.shape == (2, 2) and y.shape == (2,)


def test_load_csv_named_target_float32_bom_blank_lines_quotes(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b'\xef\xbb\xbf"t", a ,b\r\n\r\n 7 ,1,2\r\n8,"3",4\r\n\r\n')
    X, y, names = load_csv(str(p), target="t", dtype="float32")
    assert names == ["a", "b"]
    assert X.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [7, 8])


def test_load_csv_reads_the_shipped_diabetes_file_like_load_diabetes():
    from importlib import resources
    path = resources.files("minscale.datasets").joinpath("diabetes.csv")
    X, y, names = load_csv(str(path))
    X2, y2 = load_diabetes()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert names[:4] == ["AGE", "SEX", "BMI", "BP"]


@pytest.mark.parametrize("text, kwargs, match", [
    ("a,b\n1,2\n", {"target": "z"},
     r"target='z' is not a column of .*d\.csv; available columns: \['a', 'b'\]"),
    ("a,b\n1,2\n3,x\n", {}, r"column 'b' on line 3 must be a number, got 'x'"),
    ("a,b\n1,\n", {}, r"column 'b' on line 2 must be a number, got ''"),
    ("a,b\n", {}, r"no data rows after the header"),
    ("", {}, r"the file is empty; expected a header row"),
    ("a,b\n1,nan\n", {}, r"column 'b' on line 2 must be a finite number, got nan"),
    ("a,b\n1,2\n-inf,2\n", {}, r"column 'a' on line 3 must be a finite number, got -inf"),
    ("a\n1\n", {}, r"expected at least 2 columns .* got 1 column \['a'\] on line 1"),
    ("a,b,c\n1,2,3\n4,5\n", {}, r"line 3 has 2 fields but the header has 3"),
    ("a,b\n1,2,3\n", {}, r"line 2 has 3 fields but the header has 2"),
    ("1,2\n3,4\n", {}, r"line 1 must be a header row of column names, got only numbers"),
    ("a,,c\n1,2,3\n", {}, r"header column 2 on line 1 has an empty name"),
    ("a,a\n1,2\n", {}, r"column name 'a' appears more than once"),
    ("a,b\n1,1e39\n", {"dtype": "float32"},
     r"column 'b' on line 2 must be finite in float32, got 1e\+39"),
    ("a,b\n1,2\n", {"dtype": "int64"}, r"dtype must be float32 or float64, got 'int64'"),
])
def test_load_csv_errors(tmp_path, text, kwargs, match):
    p = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        load_csv(p, **kwargs)


def test_load_csv_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_csv(p)


def test_load_csv_type_errors(tmp_path):
    p = _write(tmp_path, "a,b\n1,2\n")
    with pytest.raises(TypeError, match="target must be a column name"):
        load_csv(p, target=0)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got 3"):
        load_csv(3)
    with pytest.raises(ValueError, match="is not a regular file"):
        load_csv(tmp_path)


# =========================================================================== load_npz

def test_load_npz_roundtrip_int_labels_and_names(tmp_path):
    p = tmp_path / "d.npz"
    X = np.arange(6, dtype=np.int32).reshape(3, 2)
    np.savez(p, X=X, y=np.array([0, 2, 1], dtype=np.uint8), feature_names=np.array(["p", "q"]))
    X2, y2, names = load_npz(p)
    assert X2.dtype == np.float64 and y2.dtype == np.int64
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, [0, 2, 1])
    assert names == ["p", "q"]


def test_load_npz_custom_keys_float32_default_names(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, feats=np.ones((4, 3)), out=np.linspace(0, 1, 8).reshape(4, 2))
    X, y, names = load_npz(p, x_key="feats", y_key="out", dtype="float32")
    assert X.dtype == np.float32 and y.dtype == np.float32 and y.shape == (4, 2)
    assert names == ["x0", "x1", "x2"]


@pytest.mark.parametrize("arrays, kwargs, match", [
    ({"X": np.ones((2, 2)), "z": np.ones(2)}, {},
     r"y_key='y' is not an array in .*; available keys: \['X', 'z'\]"),
    ({"A": np.ones((2, 2)), "y": np.ones(2)}, {}, r"x_key='X' is not an array .* \['A', 'y'\]"),
    ({"X": np.array([[1, "a"]], dtype=object), "y": np.ones(1)}, {},
     r"array 'X' is an object array; object arrays are refused"),
    ({"X": np.array([["a", "b"]]), "y": np.ones(1)}, {}, r"array 'X' must be numeric .* dtype <U1"),
    ({"X": np.ones((0, 2)), "y": np.ones(0)}, {}, r"array 'X' must hold at least one sample"),
    ({"X": np.array([[1.0, np.nan]]), "y": np.ones(1)}, {},
     r"array 'X' must be finite, got nan at index \(0, 1\)"),
    ({"X": np.ones((2, 2)), "y": np.array([1.0, np.inf])}, {},
     r"array 'y' must be finite, got inf at index 1"),
    ({"X": np.ones(3), "y": np.ones(3)}, {}, r"array 'X' must be 2-D \(n, d\), got shape \(3,\)"),
    ({"X": np.ones((3, 1)), "y": np.ones((3, 1, 1))}, {}, r"array 'y' must be \(n,\) or \(n, k\)"),
    ({"X": np.ones((3, 1)), "y": np.ones(2)}, {}, r"'X' has 3 rows but 'y' has 2"),
    ({"X": np.full((1, 1), 1e300), "y": np.ones(1)}, {"dtype": "float32"},
     r"array 'X' has values beyond the range of float32"),
    ({"X": np.ones((2, 2)), "y": np.ones(2), "feature_names": np.array(["a"])}, {},
     r"feature_names must be 2 strings"),
])
def test_load_npz_errors(tmp_path, arrays, kwargs, match):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(p, **kwargs)


def test_load_npz_not_an_archive(tmp_path):
    bad = _write(tmp_path, "hello", name="bad.npz")
    with pytest.raises(ValueError, match=r"path='.*bad\.npz' is not a readable .npz archive"):
        load_npz(bad)
    single = tmp_path / "one.npy"
    np.save(single, np.ones(3))
    with pytest.raises(ValueError, match="holds a single .npy array"):
        load_npz(single)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="x_key must be a str, got 0"):
        load_npz(single, x_key=0)


def test_load_npz_reads_compressed_fortran_and_big_endian_arrays(tmp_path):
    X = np.asfortranarray(np.arange(12, dtype=">f4").reshape(4, 3))
    y = np.array([1, 0, 1, 0], dtype=">i2")
    np.savez_compressed(tmp_path / "c.npz", X=X, y=y, feature_names=np.array(["a", "b", "c"]))
    X2, y2, names = load_npz(tmp_path / "c.npz")
    np.testing.assert_array_equal(X2, np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(y2, [1, 0, 1, 0])
    assert X2.dtype == np.float64 and y2.dtype == np.int64 and names == ["a", "b", "c"]


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail the test if any array data is read: the refusal must come from the headers."""
    from minscale import _npz

    def refuse(*args):
        raise AssertionError("array data was read before the headers were checked")
    monkeypatch.setattr(_npz, "read_npy_data", refuse)


def test_load_npz_refuses_disagreeing_rows_before_inflating(tmp_path, no_data_read):
    from hostile_files import deflate_bomb_npz
    path = deflate_bomb_npz(tmp_path / "bomb.npz", x_rows=2**14, d=64, y_rows=10)  # 8 MiB in X
    with pytest.raises(ValueError, match=r"bomb.npz: 'X' has 16384 rows but 'y' has 10"):
        load_npz(path)


@pytest.mark.parametrize("key", ["X", "y"])
def test_load_npz_refuses_a_huge_declared_shape_in_one_line(tmp_path, no_data_read, key):
    from hostile_files import huge_shape_npz
    path = huge_shape_npz(tmp_path / "huge.npz", key=key)
    with pytest.raises(ValueError, match=rf"huge.npz: array '{key}' declares shape "
                                         r"\(1000000000000,\) of float64 \(8,000,000,000,000 "
                                         r"bytes\) but its member holds 16 bytes"):
        load_npz(path)


def test_load_npz_refuses_a_member_that_inflates_past_its_declared_size(tmp_path):
    from hostile_files import inflates_past_npz
    path = inflates_past_npz(tmp_path / "past.npz", extra_bytes=2**24)
    with pytest.raises(ValueError, match=r"past.npz: member 'X.npy' inflates past its declared "
                                         r"size of 192 bytes"):
        load_npz(path)


def test_load_npz_refuses_a_member_larger_than_its_array(tmp_path, no_data_read):
    from hostile_files import oversized_member_npz
    path = oversized_member_npz(tmp_path / "big.npz", zero_bytes=2**24)
    with pytest.raises(ValueError, match=r"big.npz: array 'X' declares shape \(8, 1\) of "
                                         r"float64 \(64 bytes\) but its member holds 16,777,216"):
        load_npz(path)


def test_load_npz_refuses_a_size_deflate_cannot_produce(tmp_path, no_data_read):
    from hostile_files import beyond_deflate_npz
    path = beyond_deflate_npz(tmp_path / "beyond.npz")
    with pytest.raises(ValueError, match=r"beyond.npz: member 'X.npy' declares 2147483776 bytes "
                                         r"inflated from \d+: more than deflate's limit"):
        load_npz(path)


def test_load_npz_refuses_overlapping_and_duplicated_members(tmp_path, no_data_read):
    import zipfile

    from hostile_files import overlapping_npz, stored_npy, zip_bytes
    path = overlapping_npz(tmp_path / "o.npz")
    with zipfile.ZipFile(path) as zf:  # each member alone reads fine
        assert zf.read("y.npy") in zf.read("X.npy")
    with pytest.raises(ValueError, match=r"o.npz: members 'X.npy' and 'y.npy' overlap"):
        load_npz(path)
    (tmp_path / "d.npz").write_bytes(zip_bytes([stored_npy("X.npy", np.ones((2, 2))),
                                                stored_npy("y.npy", np.ones(2)),
                                                stored_npy("y.npy", np.ones(2))]))
    with pytest.raises(ValueError, match=r"d.npz: the archive holds the array 'y' twice"):
        load_npz(tmp_path / "d.npz")


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npz")
    X, y = np.arange(60.0).reshape(20, 3), np.arange(20) % 3
    np.savez(folder / "stored.npz", X=X, y=y, feature_names=np.array(["a", "b", "c"]))
    np.savez_compressed(folder / "deflated.npz", X=X, y=y)
    return {name: (folder / f"{name}.npz").read_bytes() for name in ("stored", "deflated")}


@settings(deadline=None, max_examples=150)
@given(which=st.sampled_from(["stored", "deflated"]), data=st.data())
def test_load_npz_fuzz_damaged_files_raise_only_value_error(tmp_path_factory, npz_files,
                                                            which, data):
    raw = bytearray(npz_files[which])
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(len(raw) // 2, len(raw)), label="cut")
    path = tmp_path_factory.mktemp("fuzz") / "f.npz"
    path.write_bytes(bytes(raw[:cut]))
    try:
        X, y, names = load_npz(path)
    except ValueError:
        return
    assert X.shape[0] == y.shape[0] and X.shape[1] == len(names)


def test_load_npz_lists_at_most_20_keys(tmp_path):
    np.savez(tmp_path / "many.npz", **{f"k{i:02d}": np.ones(1) for i in range(30)})
    with pytest.raises(ValueError, match=r"x_key='X' is not an array in .*many.npz; available "
                                         r"keys: \['k00', .*'k19'\] and 10 more$"):
        load_npz(tmp_path / "many.npz")


def test_load_npz_refuses_a_member_claiming_more_than_the_file(tmp_path, no_data_read):
    from hostile_files import stored_npy, zip_bytes
    data = bytearray(zip_bytes([stored_npy("X.npy", np.ones((2, 2))),
                                stored_npy("y.npy", np.ones(2))]))
    at = data.index(b"PK\x01\x02")  # X's central entry: compressed and uncompressed size
    data[at + 20:at + 28] = (10**9).to_bytes(4, "little") * 2
    (tmp_path / "long.npz").write_bytes(data)
    with pytest.raises(ValueError, match=r"long.npz: member 'X.npy' claims 1000000000 bytes "
                                         r"from offset 35, beyond the \d+ bytes"):
        load_npz(tmp_path / "long.npz")


def test_load_npz_refuses_arrays_beyond_half_the_memory(tmp_path, monkeypatch):
    np.savez(tmp_path / "m.npz", X=np.ones((40, 2), dtype=np.int8), y=np.ones(40))
    # X: 80 bytes as int8 + 640 as float64; y: 320 + 320 (its float64 copy is not made, but
    # counted): 1360 bytes
    monkeypatch.setattr(datasets, "_memory_cap", lambda: 1359)
    with pytest.raises(ValueError, match=r"m.npz: 'X' \(40, 2\) and 'y' \(40,\) need 0.0 GiB "
                                         r"to load, more than half of this machine's memory"):
        load_npz(tmp_path / "m.npz")
    monkeypatch.setattr(datasets, "_memory_cap", lambda: 1360)
    assert load_npz(tmp_path / "m.npz")[0].shape == (40, 2)


def test_load_npz_refuses_a_damaged_member_after_reading_it(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", X=np.arange(400.0).reshape(200, 2), y=np.ones(200))
    data = bytearray((tmp_path / "c.npz").read_bytes())
    data[100] ^= 0x01  # inside X's deflate stream
    (tmp_path / "bad.npz").write_bytes(data)
    with pytest.raises(ValueError, match=r"bad.npz: member 'X.npy' (fails its CRC-32 check|"
                                         r"is not a valid deflate stream|inflates past|"
                                         r"is truncated)|bad.npz: array 'X'"):
        load_npz(tmp_path / "bad.npz")


# =========================================================================== load dispatcher

def test_load_builtin_info():
    X, y, info = load("diabetes")
    assert X.shape == (442, 10) and y.shape == (442,)
    assert info == {"name": "diabetes", "task": "regression", "n_classes": None,
                    "feature_names": ["AGE", "SEX", "BMI", "BP", "S1", "S2", "S3", "S4",
                                      "S5", "S6"]}
    X, y, info = load("digits")
    assert X.shape == (1797, 64) and y.dtype == np.int64
    assert info["task"] == "classification" and info["n_classes"] == 10
    assert info["name"] == "digits" and info["feature_names"][:2] == ["pixel_0_0", "pixel_0_1"]
    assert len(info["feature_names"]) == 64 and info["feature_names"][-1] == "pixel_7_7"
    assert load("digits", target="label")[0].shape == (1797, 64)


def test_load_diabetes_with_another_target_column():
    X, y, info = load("diabetes", target="BMI")
    assert y[0] == 32.1 and X.shape == (442, 10)
    assert info["feature_names"][-1] == "Y" and "BMI" not in info["feature_names"]


def test_load_files(tmp_path):
    p = _write(tmp_path, "a,b,y\n1,2,3\n4,5,6\n", name="House.CSV")
    X, y, info = load(p)
    assert info == {"name": "House", "task": "regression", "n_classes": None,
                    "feature_names": ["a", "b"]}
    X, y, info = load(str(p), target="a")
    np.testing.assert_array_equal(y, [1, 4])
    q = tmp_path / "cls.npz"
    np.savez(q, X=np.ones((3, 2)), y=np.array([0, 3, 1]))
    X, y, info = load(q)
    assert info["task"] == "classification" and info["n_classes"] == 4 and info["name"] == "cls"
    r = tmp_path / "reg.npz"
    np.savez(r, X=np.ones((3, 2)), target=np.array([0.5, 3, 1]))
    X, y, info = load(r, target="target")
    assert info["task"] == "regression" and info["n_classes"] is None
    np.testing.assert_array_equal(y, [0.5, 3, 1])
    neg = tmp_path / "neg.npz"
    np.savez(neg, X=np.ones((2, 1)), y=np.array([0, -1]))
    with pytest.raises(ValueError, match="must be >= 0, got -1 at index 1"):
        load(neg)


@pytest.mark.parametrize("data", ["iris", "Diabetes", "data.txt", "x.npy", ""])
def test_load_rejects_unknown_names(data):
    with pytest.raises(ValueError, match=r"data must be 'diabetes', 'digits', 'mnist5k', or a "
                                         r"path ending in \.csv or \.npz, got '"):
        load(data)


def test_load_other_errors(tmp_path):
    with pytest.raises(TypeError, match="data must be"):
        load(3)
    with pytest.raises(ValueError,
                       match="target must be None or 'label' for data='digits', got 'x'"):
        load("digits", target="x")
    with pytest.raises(ValueError, match=r"target='nope' is not a column .* available columns"):
        load("diabetes", target="nope")
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        load(tmp_path / "absent.csv")


# =========================================================================== check_Xy

def test_check_Xy_shapes_and_dtypes():
    X, y = check_Xy([[1, 2], [3, 4]], [5, 6])
    assert X.dtype == y.dtype == np.float64 and X.shape == (2, 2) and y.shape == (2, 1)
    X, y = check_Xy(np.arange(3, dtype=np.float32), np.ones((3, 2), dtype=np.float32))
    assert X.shape == (3, 1) and X.dtype == np.float32 and y.shape == (3, 2)
    X, y = check_Xy(np.ones((2, 1)), [True, False], dtype="float32")
    assert X.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(y, [[1], [0]])
    src = np.ones((4, 2))
    X, _ = check_Xy(src, np.ones(4))
    assert np.shares_memory(X, src)  # no copy when nothing needs converting
    X, _ = check_Xy(np.array([[1, 2]], dtype=object), [1])
    assert X.dtype == np.float64


@pytest.mark.parametrize("X, y, kwargs, match", [
    (np.ones((3, 2)), np.ones(2), {}, r"X and y must have the same number of rows, got X with 3 "
                                      r"rows and y with 2 rows"),
    (np.ones((0, 2)), np.ones(0), {}, r"X must not be empty, got shape \(0, 2\)"),
    (np.ones((2, 0)), np.ones(2), {}, r"X must not be empty, got shape \(2, 0\)"),
    (np.ones((2, 2)), np.ones((2, 0)), {}, r"y must not be empty"),
    ([[1.0, 2.0], [3.0, np.nan]], [1, 2], {}, r"X must be finite, got nan at index \(1, 1\)"),
    ([[1.0], [2.0]], [1.0, -np.inf], {}, r"y must be finite, got -inf at index 1"),
    ([["a", "b"]], [1], {}, r"X must contain real numbers .* dtype <U1"),
    ([[1 + 2j]], [1], {}, r"X must contain real numbers .* dtype complex128"),
    (np.array([[None]], dtype=object), [1], {},
     r"X must contain only real numbers, got None at index \(0, 0\)"),
    ([[1, 2], [3]], [1, 2], {}, r"X must be a rectangular numeric array"),
    (np.ones((2, 2, 2)), np.ones(2), {}, r"X must be 1-D or 2-D .* got ndim 3"),
    (np.ones((2, 1)), 5.0, {}, r"y must be 1-D or 2-D .* got ndim 0"),
    # 1e300 is finite in float64 but overflows to inf when float32 is requested.
    ([[1e300]], [1.0], {"dtype": "float32"}, r"X must be finite, got inf at index \(0, 0\)"),
])
def test_check_Xy_errors(X, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_Xy(X, y, **kwargs)


def test_check_Xy_uses_the_given_names():
    with pytest.raises(ValueError, match=r"X_val and y_val must have .* X_val with 2 rows"):
        check_Xy(np.ones((2, 1)), np.ones(3), name_X="X_val", name_y="y_val")
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64', got 'int8'"):
        check_Xy(np.ones((2, 1)), np.ones(2), dtype="int8")


# =========================================================================== split

def test_split_sizes_follow_sklearn_ceil_rule():
    X, y = load_diabetes()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0)
    # ceil(0.2 * 442) = ceil(88.4) = 89 test samples, 353 training samples.
    assert X_te.shape == (89, 10) and X_tr.shape == (353, 10)
    assert y_te.shape == (89,) and y_tr.shape == (353,)
    X10 = np.arange(10.0)[:, None]
    X_tr, X_te, _, _ = train_test_split(X10, np.arange(10), test_size=0.25, seed=0)
    assert len(X_te) == 3 and len(X_tr) == 7  # ceil(2.5) = 3


def test_split_is_the_documented_permutation():
    X = np.arange(10.0)[:, None]
    y = np.arange(10) * 10
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, seed=0)
    perm = np.random.default_rng(0).permutation(10)  # [4 6 2 7 3 5 9 0 8 1] on NumPy 2.x
    np.testing.assert_array_equal(X_te[:, 0], perm[:3])
    np.testing.assert_array_equal(X_tr[:, 0], perm[3:])
    np.testing.assert_array_equal(y_te, perm[:3] * 10)
    assert y_tr.dtype == y.dtype  # labels keep their dtype


@settings(max_examples=40)
@given(n=st.integers(2, 200), test_size=st.floats(0.01, 0.99), seed=st.integers(0, 2**32))
def test_split_partitions_the_rows_deterministically(n, test_size, seed):
    n_test = math.ceil(test_size * n)
    X = np.arange(n, dtype=np.float64)[:, None]
    y = np.arange(n)
    if n_test in (0, n):
        with pytest.raises(ValueError, match="both parts must be non-empty"):
            train_test_split(X, y, test_size, seed)
        return
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size, seed)
    assert len(X_te) == n_test and len(X_tr) == n - n_test
    assert set(y_tr).isdisjoint(y_te) and set(y_tr) | set(y_te) == set(range(n))
    np.testing.assert_array_equal(X_tr[:, 0], y_tr)  # rows stay paired
    again = train_test_split(X, y, test_size, seed)
    for a, b in zip((X_tr, X_te, y_tr, y_te), again):
        np.testing.assert_array_equal(a, b)


def test_split_seed_changes_the_split_and_accepts_a_generator():
    X = np.arange(100.0)[:, None]
    a = train_test_split(X, X, 0.5, seed=1)[1]
    b = train_test_split(X, X, 0.5, seed=2)[1]
    assert not np.array_equal(a, b)
    c = train_test_split(X, X, 0.5, seed=np.random.default_rng(1))[1]
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"test_size": 0.0}, ValueError, r"test_size must be a float in \(0, 1\), got 0.0"),
    ({"test_size": 1.0}, ValueError, r"test_size must be a float in \(0, 1\), got 1.0"),
    ({"test_size": 3}, ValueError, r"test_size must be a float in \(0, 1\), got 3"),
    ({"test_size": True}, TypeError, r"test_size must be a float in \(0, 1\), got True"),
    ({"test_size": "0.2"}, TypeError, r"test_size must be a float in \(0, 1\), got '0.2'"),
    ({"seed": -1}, ValueError, r"seed must be >= 0, got -1"),
    ({"seed": None}, TypeError, r"seed must be an int >= 0 or a numpy.random.Generator, got None"),
    # ceil(0.99 * 4) = 4 test samples leaves no training sample.
    ({"test_size": 0.99}, ValueError,
     r"test_size=0.99 with n=4 samples gives 0 training and 4 test samples; both parts"),
])
def test_split_errors(kwargs, exc, match):
    X = np.ones((4, 1))
    with pytest.raises(exc, match=match):
        train_test_split(X, X, **kwargs)


def test_split_shape_errors():
    with pytest.raises(ValueError, match="X and y must have the same number of rows, got X with 3 "
                                         "rows and y with 2 rows"):
        train_test_split(np.ones((3, 1)), np.ones(2))
    with pytest.raises(ValueError, match="X must have a sample axis"):
        train_test_split(np.float64(1.0), np.ones(2))


# =========================================================================== standardization

def test_standardizer_fits_on_train_only_hand_values():
    # Train column 0: [1, 3] -> mean 2, population std 1; column 1: [10, 30] -> mean 20, std 10.
    X_train = np.array([[1.0, 10.0], [3.0, 30.0]])
    X_test = np.array([[5.0, 0.0]])
    X_tr_s, X_te_s, s = standardize(X_train, X_test)
    np.testing.assert_array_equal(s.mean_, [2, 20])
    np.testing.assert_array_equal(s.scale_, [1, 10])
    np.testing.assert_array_equal(X_tr_s, [[-1, -1], [1, 1]])
    # (5 - 2) / 1 = 3 and (0 - 20) / 10 = -2: the test part uses the training statistics.
    np.testing.assert_array_equal(X_te_s, [[3, -2]])
    np.testing.assert_array_equal(X_test, [[5, 0]])  # input untouched
    assert standardize(X_train)[1] is None


def test_standardizer_constant_column_gets_scale_one():
    X = np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 3.0]])
    mean, scale = mean_and_scale(X)
    assert scale[0] == 1.0 and mean[0] == pytest.approx(0.1, abs=1e-16)
    Z = Standardizer().fit_transform(X)
    assert np.all(np.isfinite(Z)) and np.all(np.abs(Z[:, 0]) < 1e-15)
    # Why the eps bound is needed: 0.1 + 0.1 + 0.1 rounds, so the naive variance is 1.9e-34,
    # not 0, and dividing by its sqrt (1.4e-17) would blow the column up to ~1.
    assert 0 < X[:, 0].var() < 1e-33


def test_standardizer_float32_preserved_and_ints_promoted():
    X = np.array([[1, 2], [3, 6]], dtype=np.float32)
    s = Standardizer().fit(X)
    assert s.mean_.dtype == s.scale_.dtype == np.float32
    Z = s.transform(X)
    assert Z.dtype == np.float32
    assert s.inverse_transform(Z).dtype == np.float32
    Zi = Standardizer().fit_transform(np.array([[1, 2], [3, 6]]))
    assert Zi.dtype == np.float64
    np.testing.assert_array_equal(Zi, [[-1, -1], [1, 1]])


@settings(max_examples=50, deadline=None)
@given(X=hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 5)), elements=finite),
       const=finite)
def test_standardizer_inverse_transform_is_identity(X, const):
    X = X.copy()
    X[:, 0] = const  # always one constant column
    s = Standardizer().fit(X)
    assert s.scale_[0] == 1.0 and np.all(s.scale_ > 0)
    Z = s.transform(X)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(s.inverse_transform(Z), X, rtol=1e-9,
                               atol=1e-9 * (1 + np.abs(X).max()))
    # Well-spread columns come out with mean 0 and population std 1. Nearly constant ones are
    # left out: there X - mean cancels and loses the digits this check would need.
    varying = X.std(axis=0) > 1e-3 * (1 + np.abs(X).max(axis=0))
    if varying.any():
        np.testing.assert_allclose(Z[:, varying].mean(0), 0, atol=1e-9)
        np.testing.assert_allclose(Z[:, varying].std(0), 1, rtol=1e-6)


def test_standardizer_errors():
    s = Standardizer()
    assert repr(s) == "Standardizer(unfitted)"
    with pytest.raises(ValueError, match="not fitted yet"):
        s.transform(np.ones((2, 2)))
    s.fit(np.ones((3, 2)))
    assert repr(s) == "Standardizer(n_features=2)"
    with pytest.raises(ValueError,
                       match=r"X must have 2 columns \(as in fit\), got shape \(1, 3\)"):
        s.transform(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"Z must have 2 columns"):
        s.inverse_transform(np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"X must be 2-D \(n, d\), got shape \(3,\)"):
        Standardizer().fit(np.ones(3))
    with pytest.raises(ValueError, match=r"X must be finite, got nan at index \(1, 0\)"):
        Standardizer().fit([[1.0], [np.nan]])
    with pytest.raises(ValueError, match=r"X must not be empty"):
        Standardizer().fit(np.ones((0, 2)))


# =========================================================================== one_hot, accuracy

def test_one_hot_values():
    np.testing.assert_array_equal(one_hot([0, 2, 1]), [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    Y = one_hot(np.array([[1.0], [0.0]]), n_classes=3, dtype="int8")
    assert Y.dtype == np.int8
    np.testing.assert_array_equal(Y, [[0, 1, 0], [1, 0, 0]])
    assert one_hot([], n_classes=4).shape == (0, 4)
    assert one_hot([1, 1]).dtype == np.float64


@settings(max_examples=40)
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=30))
def test_one_hot_rows_sum_to_one_and_argmax_recovers_labels(labels):
    Y = one_hot(labels, n_classes=10)
    np.testing.assert_array_equal(Y.sum(1), 1)
    np.testing.assert_array_equal(Y.argmax(1), labels)
    assert accuracy(labels, Y) == 1.0


@pytest.mark.parametrize("labels, kwargs, exc, match", [
    ([0, -1], {}, ValueError, r"labels must be class labels >= 0, got -1 at index 1"),
    ([0.5], {}, ValueError, r"labels must be integer class labels, got 0.5 at index 0"),
    ([0, 3], {"n_classes": 3}, ValueError, r"labels must be < n_classes=3, got 3 at index 1"),
    ([0], {"n_classes": 0}, ValueError, r"n_classes must be >= 1, got 0"),
    ([0], {"n_classes": 2.0}, TypeError, r"n_classes must be an int >= 1 or None, got 2.0"),
    ([], {}, ValueError, r"n_classes must be given when labels is empty"),
    ([[0, 1]], {}, ValueError,
     r"labels must be class labels of shape \(n,\) or \(n, 1\), got shape \(1, 2\)"),
    (["a"], {}, ValueError, r"labels must contain real numbers"),
    ([0], {"dtype": "U3"}, ValueError, r"dtype must be a bool, integer or float dtype, got 'U3'"),
    ([np.nan], {}, ValueError, r"labels must be finite"),
])
def test_one_hot_errors(labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        one_hot(labels, **kwargs)


def test_accuracy_values():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    # argmax rows: 0, 1, 0 against labels 0, 1, 1 -> 2 of 3 right.
    assert accuracy([0, 1, 1], scores) == 2 / 3
    assert accuracy(one_hot([0, 1, 1]), scores) == 2 / 3
    assert accuracy(np.array([[0.0], [1.0], [0.0]]), scores) == 1.0
    # Ties go to the first index, as numpy.argmax.
    assert accuracy([0], [[0.5, 0.5]]) == 1.0
    assert isinstance(accuracy([1], [[0.0, 1.0]]), float)


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1], [[1, 0]], r"y_true and y_pred must have the same number of rows, got y_true with 2 "
                       r"rows and y_pred with 1 rows"),
    ([0], [0.3], r"y_pred must be scores of shape \(n, k\) with k >= 2, got shape \(1,\)"),
    ([0], [[0.3]], r"y_pred must be scores of shape \(n, k\) with k >= 2, got shape \(1, 1\)"),
    ([], np.ones((0, 2)), r"y_pred must not be empty"),
    ([0], [[np.nan, 1.0]], r"y_pred must be finite, got nan at index \(0, 0\)"),
    ([[1, 0, 0]], [[1.0, 0.0]], r"y_true one-hot has 3 columns but y_pred has 2"),
    ([1.5], [[1.0, 0.0]], r"y_true must be integer class labels"),
    (["a"], [[1.0, 0.0]], r"y_true must contain real numbers"),
])
def test_accuracy_errors(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        accuracy(y_true, y_pred)


def test_module_exports():
    assert set(msdata.__all__) == {"check_array", "check_Xy", "train_test_split", "mean_and_scale", "Standardizer",
                                   "standardize", "one_hot", "accuracy"}
    assert datasets.NAMES == ("diabetes", "digits", "mnist5k")


# ----------------------------------------------------------------------------- messages


def _numpy_scalar_calls():
    import minscale as ms
    from minscale import optim, prune, quant, report, schedules, study
    return [
        (lambda: prune.magnitude_mask(np.ones(4), np.float64(1.5)), "got 1.5"),
        (lambda: prune.n_to_prune(0.5, np.int64(-1)), "n must be an integer >= 0, got -1"),
        (lambda: schedules.InverseTimeDecay(np.float64(-1.0), 0.1), "got -1.0"),
        (lambda: schedules.InverseTimeDecay(0.1, 0.1, decay_steps=np.int64(0)), "got 0"),
        (lambda: schedules.inverse_time_decay(np.int64(-1), 0.1, 0.1), "got -1"),
        (lambda: optim.Adam(np.float64(-1)), "got -1.0"),
        (lambda: optim.SGD(0.1, momentum=np.float64(2)), "got 2.0"),
        (lambda: ms.Dense(2, alpha=np.float64(-1)), "got -1.0"),
        (lambda: ms.Dense(np.int64(0)), "units must be an integer >= 1, got 0"),
        (lambda: train_test_split(np.ones((4, 1)), np.ones(4), test_size=np.float64(2)),
         "got 2.0"),
        (lambda: train_test_split(np.ones((4, 1)), np.ones(4), seed=np.int64(-1)), "got -1"),
        (lambda: one_hot([0, 1], np.int64(-1)), "n_classes must be >= 1, got -1"),
        (lambda: report.format_bytes(np.float64(1.5)), "got 1.5"),
        (lambda: study.StudyConfig(hidden=(np.int64(0),)), "got 0"),
        (lambda: study.StudyConfig(sparsities=(np.float64(0.5), np.float64(0.2))),
         "got (0.5, 0.2)"),
        (lambda: prune.structured_mask(np.ones((2, 2)), 0.5, norm=np.float64(0.5)), "got 0.5"),
        (lambda: make_linear(np.int64(0)), "n_samples must be >= 1, got 0"),
        (lambda: ms.Sequential([ms.Dense(1)], input_dim=1).fit(
            np.ones((2, 1)), np.ones(2), epochs=np.int64(-1)), "epochs must be an integer >= 0, "
                                                               "got -1"),
        (lambda: quant.quantize_multiplier(np.float64(-1)), "got -1.0"),
        (lambda: quant.affine_qparams(0.0, 1.0, eps=np.float64(-1)), "got -1.0"),
        (lambda: quant.MovingAverageMinMaxObserver(averaging_constant=np.float64(2)), "got 2.0"),
        (lambda: quant.choose_frac_bits(np.array([-1.0, 0.5]), 8, signed=False), "min -1.0"),
    ]


def test_messages_show_numpy_scalars_as_plain_numbers():
    # on NumPy >= 2, repr(np.int64(0)) is 'np.int64(0)'; a message shows the number only
    for call, words in _numpy_scalar_calls():
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        text = str(info.value)
        assert "np." not in text and words in text, text


def test_plain_converts_numpy_scalars_and_sequences_of_them():
    from minscale.data import plain
    assert repr(plain(np.int64(0))) == "0"
    assert repr(plain(np.float32(0.5))) == "0.5"
    assert repr(plain((np.int64(1), [np.float64(2.5)]))) == "(1, [2.5])"
    arr = np.arange(3)
    assert plain(arr) is arr and plain("x") == "x"
