"""Data utilities: validation, train/test split, standardization, one-hot labels, accuracy.

Pure functions own the formulas; `Standardizer` only keeps the statistics that `fit` measured
on the training data so that the same affine map can be applied to held-out data later.

Conventions (see ``DESIGN.md``): batch first, ``X`` has shape ``(n, d)``; float64 unless the
caller hands in float32; every random choice takes a ``seed``.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile

import numpy as np

from . import _checks
from ._checks import COUNT_MAX, SEED_MAX, integer_text, plain  # noqa: F401  (re-exported)

__all__ = [
    "check_array",
    "check_Xy",
    "train_test_split",
    "mean_and_scale",
    "Standardizer",
    "standardize",
    "one_hot",
    "accuracy",
]
# Argument checks shared by the package (not in __all__: internal helpers, to move into one
# checks module): plain, check_int, COUNT_MAX, SEED_MAX, memory_limit, check_nbytes,
# format_nbytes, check_output_path, integer_text.

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- helpers

def _describe(value):
    """Short repr for error messages, so a huge array does not flood the message."""
    text = repr(plain(value))
    return text if len(text) <= 80 else text[:77] + "..."


#: Bytes a file name gains in the temporary name of an atomic write: ``"." + NAME + "." + PID
#: + "." + 8 random characters + ".tmp"`` (:func:`minscale.io.atomic_write`), with a PID of up
#: to 7 digits (Linux's largest pid_max is 4194304); output names are checked with room for them.
TEMP_NAME_EXTRA = 22


def check_int(name, value, low=None, high=COUNT_MAX):
    """Check that `value` is an integer in ``[low, high]``; return it as a Python int.

    :func:`minscale._checks.check_int` with the upper bound of a count argument by default.

    Parameters
    ----------
    name : str
        How the caller names the argument (``"batch_size"``, ``"--epochs"``); every message
        starts with it.
    value : int or numpy integer
        bool is refused.
    low : int, optional
        Smallest accepted value (None: no lower bound).
    high : int, optional, default COUNT_MAX
        Largest accepted value (None: no upper bound).

    Returns
    -------
    int

    Raises
    ------
    ValueError
        `value` lies outside ``[low, high]``, or is not an integer
        (:class:`minscale._checks.ArgumentTypeError`, a ValueError and a TypeError); the
        message names `name`, the value (a plain number, also for NumPy integers) and the
        accepted range.
    """
    return _checks.check_int(name, value, low, high)


def memory_limit():
    """The largest allocation minscale attempts: the machine's physical memory, in bytes.

    ``os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")`` (POSIX). A model or a run
    whose buffers need more would be swapped to death or killed by the OOM killer, so it is
    refused up front instead. Where the value is not available (Windows), 2**40 bytes (1 TiB).

    Returns
    -------
    int
        Bytes.
    """
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2**40
    if pages <= 0 or size <= 0:
        return 2**40
    return int(pages) * int(size)


def format_nbytes(n):
    """``"186.3 GiB (200,026,000,040 bytes)"``: binary units, then the exact count."""
    value, unit = float(n), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    head = f"{value:.1f} {unit}" if unit != "bytes" else f"{int(n)} bytes"
    return head if unit == "bytes" else f"{head} ({int(n):,} bytes)"


def check_nbytes(nbytes, what, advice=""):
    """Refuse an allocation of `nbytes` bytes above :func:`memory_limit`, before it is made.

    Parameters
    ----------
    nbytes : int
        Bytes the caller is about to allocate (a Python int: no overflow).
    what : str
        What needs them, e.g. ``"the parameter, gradient and mask buffers of 10,001,300,002
        parameters"``; the message starts with it.
    advice : str, optional
        Appended after a semicolon: what to change.

    Returns
    -------
    int
        `nbytes`.

    Raises
    ------
    ValueError
        ``nbytes > memory_limit()``; the message names both sizes.
    """
    limit = memory_limit()
    if nbytes > limit:
        raise ValueError(f"{what} need {format_nbytes(nbytes)}, more than the "
                         f"{format_nbytes(limit)} of physical memory of this machine"
                         + (f"; {advice}" if advice else ""))
    return nbytes


def check_output_path(path, name, suffixes=None):
    """Check, before any work, that a file can be written at `path`.

    Parameters
    ----------
    path : str or os.PathLike
        The file the caller will write (atomically: a temporary file in the same folder,
        then a rename, so only the folder needs to be writable).
    name : str
        The argument that named it, e.g. ``"--out"`` or ``"checkpoint"``; every message
        starts with it.
    suffixes : sequence of str, optional
        Accepted extensions, lower case with the dot (``(".png", ".pdf")``); compared case
        insensitively. None accepts any name.

    Returns
    -------
    path
        Unchanged.

    Raises
    ------
    ValueError
        `path` is empty or not a path; it ends in a path separator (a folder's name); its
        file name is longer than the file system accepts (``os.pathconf(folder,
        "PC_NAME_MAX")`` bytes in the file-system encoding, 255 on most, less
        :data:`TEMP_NAME_EXTRA` for the temporary file) or the absolute path longer than
        ``PC_PATH_MAX`` (4096 on Linux, with the same allowance); its extension is not one of
        `suffixes`; its folder does not exist or is not a folder; `path` is a folder or an
        existing non-regular file (device, FIFO, symbolic link); or the folder is not
        writable (``os.access``; root passes this check whatever the permission bits, so
        the final write can still fail -- :func:`minscale.cli.main` reports that OSError as
        one line too).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or path == "":
        raise ValueError(f"{name} must be a file name, got {_describe(path)}")
    seps = (os.sep,) + ((os.altsep,) if os.altsep else ())
    if path.endswith(seps):
        raise ValueError(f"{name} {path!r} ends in {path[-1]!r}, which names a folder; "
                         "expected a file name")
    if suffixes is not None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in suffixes:
            got = f"extension {ext!r}" if ext else "no extension"
            raise ValueError(f"{name} {path!r}: expected a name ending in "
                             f"{', '.join(suffixes)}, got {got}")
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if base in (".", ".."):
        raise ValueError(f"{name} {path!r} is a directory, expected a file name")
    encoded = os.fsencode(base)
    # the atomic write goes through a temporary ".NAME.PID.<random>.tmp" beside the file
    limit = _pathconf(folder, "PC_NAME_MAX", 255) - TEMP_NAME_EXTRA
    if len(encoded) > limit:
        raise ValueError(f"{name} {base[:24]!r}...: the file name is {len(encoded)} bytes long, "
                         f"more than the {limit} this file system allows (NAME_MAX less "
                         f"{TEMP_NAME_EXTRA} for the temporary file of the atomic write); "
                         "give a shorter name")
    full = os.fsencode(os.path.abspath(path))
    limit = _pathconf(folder, "PC_PATH_MAX", 4096) - 1 - TEMP_NAME_EXTRA
    if len(full) > limit:
        raise ValueError(f"{name} {path[:24]!r}...: the absolute path is {len(full)} bytes "
                         f"long, more than the {limit} the system allows (PATH_MAX less the "
                         "terminating byte and the temporary file's extra characters); give a "
                         "shorter path")
    if not os.path.exists(folder):
        raise ValueError(f"{name} {path!r}: directory {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"{name} {path!r}: {folder!r} is not a directory")
    if os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is a directory, expected a file name")
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        raise ValueError(f"{name} {path!r} exists and is not a regular file (a device, "
                         "pipe or symbolic link); give a plain file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path!r}: directory {folder!r} is not writable")
    # os.access says yes to root everywhere, and a read-only mount or a pseudo file system
    # (/proc, /sys) refuses files whatever the mode bits say: create the write's temporary
    # file for real, then remove it
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{base}.probe.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ValueError(f"{name} {path!r}: cannot create a file in {folder!r} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _pathconf(folder, key, default):
    """``os.pathconf`` of the nearest existing ancestor of `folder`, else `default`."""
    probe = folder
    while probe and not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        value = os.pathconf(probe or os.sep, key)
    except (AttributeError, ValueError, OSError):
        return default
    return value if value and value > 0 else default


def _as_numeric_array(value, name):
    """`value` as an ndarray of a real numeric dtype (bool, int, uint or float), else ValueError."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        # Ragged nested lists end up here on NumPy >= 1.24.
        raise ValueError(
            f"{name} must be a rectangular numeric array, got {_describe(value)} ({exc})"
        ) from None
    if arr.dtype == object:
        # astype(float) would turn None into NaN and parse strings; accept real numbers only.
        for idx, item in np.ndenumerate(arr):
            if not isinstance(item, numbers.Real):
                raise ValueError(f"{name} must contain only real numbers, got {item!r} at index "
                                 f"{idx if len(idx) != 1 else idx[0]} of an object array")
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must contain real numbers (bool, int or float), got dtype {arr.dtype} "
            f"from {_describe(value)}"
        )
    return arr


def _float_dtype(dtype, name="dtype"):
    """Parse a float dtype request; only float32 and float64 are supported."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _first_nonfinite(arr):
    """Index tuple of the first NaN or +-inf in `arr` (C order), or None if all are finite."""
    if arr.dtype.kind != "f":
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))


def _check_finite(arr, name):
    idx = _first_nonfinite(arr)
    if idx is not None:
        raise ValueError(
            f"{name} must be finite, got {float(arr[idx])!r} at index "
            f"{idx if len(idx) != 1 else idx[0]}"
        )


def _check_seed(seed):
    """Generator from an int seed >= 0 or an existing Generator (used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"seed must be an int >= 0 or a numpy.random.Generator, got {plain(seed)!r}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {plain(seed)!r}")
    return np.random.default_rng(int(seed))


def _labels_1d(labels, name):
    """Integer class labels as an int64 vector of shape (n,).

    Accepts shape (n,) or (n, 1); integer, bool or integral-valued float dtypes (CSV loaders
    return floats). Negative or fractional labels raise ValueError.
    """
    arr = _as_numeric_array(labels, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be class labels of shape (n,) or (n, 1), "
                         f"got shape {arr.shape}")
    _check_finite(arr, name)
    if arr.dtype.kind == "f":
        frac = arr != np.round(arr)
        if frac.any():
            i = int(np.argmax(frac))
            raise ValueError(f"{name} must be integer class labels, got {float(arr[i])!r} "
                             f"at index {i}")
    out = arr.astype(np.int64)
    if out.size and out.min() < 0:
        i = int(np.argmin(out))
        raise ValueError(f"{name} must be class labels >= 0, got {out[i]} at index {i}")
    return out


# --------------------------------------------------------------------------- validation

def check_array(value, name="X", *, dtype=None):
    """Validate one batch-first numeric array and return it 2-D, float and C-contiguous.

    Parameters
    ----------
    value : array_like, shape (n, d) or (n,)
        A 1-D array is read as n samples of one feature.
    name : str
        Argument name used in error messages.
    dtype : {None, "float32", "float64"}, keyword-only
        None keeps float32/float64 and turns bool and integer input into float64.

    Returns
    -------
    ndarray, shape (n, d), float32 or float64, C-contiguous (no copy when already so)

    Raises
    ------
    ValueError
        Non-numeric input, ndim other than 1 or 2, no samples or columns, NaN or inf (naming
        `name` and the first bad index), an unsupported `dtype`.
    TypeError
        `dtype` is not a dtype at all.
    """
    want = None if dtype is None else _float_dtype(dtype)
    arr = _as_numeric_array(value, name)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D (n,) or (n, d), got ndim {arr.ndim} "
                         f"with shape {arr.shape}")
    if arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    _check_finite(arr, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    target = want if want is not None else (
        arr.dtype if arr.dtype in _FLOAT_DTYPES else np.dtype(np.float64))
    with np.errstate(over="ignore"):  # a float32 overflow is reported just below
        arr = np.ascontiguousarray(arr, dtype=target)
    # A float64 value beyond float32's range becomes inf when cast down.
    _check_finite(arr, name)
    return arr


def check_Xy(X, y, name_X="X", name_y="y", *, dtype=None):
    """Validate a feature matrix and its targets; return both as 2-D float arrays.

    Parameters
    ----------
    X : array_like, shape (n, d) or (n,)
        Features, batch first. A 1-D array is read as n samples of one feature.
    y : array_like, shape (n, k) or (n,)
        Targets. A 1-D array becomes a column of shape (n, 1).
    name_X, name_y : str, default "X", "y"
        Names used in error messages (so a caller can say ``X_val``, ``y_val``).
    dtype : {None, "float32", "float64"}, keyword-only, default None
        Target dtype for both. None keeps float32 and float64 inputs as they are and turns
        bool and integer inputs into float64.

    Returns
    -------
    X2d : ndarray, shape (n, d), float32 or float64, C-contiguous
    y2d : ndarray, shape (n, k), float32 or float64, C-contiguous
        No copy is made when the input already has the right dtype and layout, so the
        results may share memory with `X` and `y`.

    Raises
    ------
    ValueError
        Non-numeric input (strings, complex, objects that are not numbers, ragged lists);
        ndim other than 1 or 2; no samples or no columns; NaN or inf (naming the argument and
        the index of the first bad value, in the input's own shape); row counts that differ
        (giving both counts); an unsupported `dtype`.
    TypeError
        `dtype` is not a dtype at all.

    Notes
    -----
    Reading 1-D inputs as a single column follows Keras (``standardize_single_array`` expands
    rank-1 arrays to ``(n, 1)``), so ``fit(x, y)`` works on the classic one-feature example.

    Examples
    --------
    >>> X2, y2 = check_Xy([[1, 2], [3, 4]], [5, 6])
    >>> X2.dtype, X2.shape, y2.shape
    (dtype('float64'), (2, 2), (2, 1))
    """
    X2d = check_array(X, name_X, dtype=dtype)
    y2d = check_array(y, name_y, dtype=dtype)
    if X2d.shape[0] != y2d.shape[0]:
        raise ValueError(
            f"{name_X} and {name_y} must have the same number of rows, got {name_X} with "
            f"{X2d.shape[0]} rows and {name_y} with {y2d.shape[0]} rows"
        )
    return X2d, y2d


# --------------------------------------------------------------------------- split

def train_test_split(X, y, test_size=0.2, seed=0):
    """Split samples into a training part and a test part by one seeded permutation.

    Parameters
    ----------
    X : array_like, shape (n, ...)
    y : array_like, shape (n, ...)
        Rows are split together; dtypes and trailing shapes are kept (labels stay integers).
    test_size : float, 0 < test_size < 1, default 0.2
        Fraction of the samples in the test part (a fraction only, never a count).
    seed : int >= 0 or numpy.random.Generator, default 0
        Passed to ``numpy.random.default_rng``; a Generator is used (and advanced) as is.

    Returns
    -------
    X_train : ndarray, shape (n - n_test, ...)
    X_test : ndarray, shape (n_test, ...)
    y_train : ndarray, shape (n - n_test, ...)
    y_test : ndarray, shape (n_test, ...)
        Fresh copies in the order of the permutation.

    Raises
    ------
    TypeError
        `test_size` is not a real number (bool included), or `seed` is not an int/Generator.
    ValueError
        `test_size` outside (0, 1); `X` or `y` is a scalar; their row counts differ; a part
        would be empty.

    Notes
    -----
    perm = default_rng(seed).permutation(n);  n_test = ceil(test_size * n);
    test = perm[:n_test];  train = perm[n_test:]

    References
    ----------
    scikit-learn ``ShuffleSplit`` / ``train_test_split``: ``n_test = ceil(test_size * n)`` for a
    float test_size, the test indices first in the permutation. The permutation itself comes
    from NumPy's ``Generator`` here, so the rows chosen differ from scikit-learn's.

    Examples
    --------
    >>> X_tr, X_te, y_tr, y_te = train_test_split(np.arange(10.0)[:, None], np.arange(10), 0.25)
    >>> X_tr.shape, X_te.shape
    ((7, 1), (3, 1))
    """
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size must be a float in (0, 1), got {plain(test_size)!r}")
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be a float in (0, 1), got {plain(test_size)!r}")
    rng = _check_seed(seed)
    X = np.asarray(X)
    y = np.asarray(y)
    for arr, name in ((X, "X"), (y, "y")):
        if arr.ndim == 0:
            raise ValueError(f"{name} must have a sample axis, got a scalar {_describe(arr)}")
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"X and y must have the same number of rows, got X with {n} rows "
                         f"and y with {y.shape[0]} rows")
    n_test = math.ceil(float(test_size) * n)
    n_train = n - n_test
    if n_test == 0 or n_train == 0:
        raise ValueError(
            f"test_size={plain(test_size)!r} with n={n} samples gives {n_train} training and "
            f"{n_test} test samples; both parts must be non-empty"
        )
    perm = rng.permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return X[train], X[test], y[train], y[test]


# --------------------------------------------------------------------------- standardization

def _as_2d_float(X, name):
    arr = _as_numeric_array(X, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    _check_finite(arr, name)
    if arr.dtype not in _FLOAT_DTYPES:
        arr = arr.astype(np.float64)
    return arr


def mean_and_scale(X, name="X"):
    """Column means and standard deviations, with scale 1 for constant columns.

    Parameters
    ----------
    X : array_like, shape (n, d), n >= 1
        Training features. float32 stays float32; bool/int become float64.
    name : str, default "X"
        How error messages name `X` (a caller's argument name, e.g. ``"X_train"``).

    Returns
    -------
    mean : ndarray, shape (d,), dtype of X (float)
    scale : ndarray, shape (d,), dtype of X (float), all > 0
        Population standard deviation (ddof = 0); 1 where the column is constant.

    Raises
    ------
    ValueError
        `X` not 2-D, empty, non-numeric, or containing NaN/inf; a column whose mean or
        standard deviation overflows (values near the float64 limit, or a deviation beyond
        ~1e154 whose variance overflows), or overflows X's float32 dtype.

    Notes
    -----
    mean = X.mean(0);  var = X.var(0);  scale = sqrt(var), or 1 where
    var <= n * eps * var + (n * mean * eps) ** 2   (eps = float64 machine epsilon)

    Both are accumulated in float64 and then cast to X's dtype.

    The bound treats the rounding error of a constant column's variance as zero, so a column
    of identical values gets scale 1 even when its computed variance is ~1e-35 instead of 0.

    References
    ----------
    scikit-learn ``StandardScaler`` (ddof = 0) and its ``_is_constant_feature`` bound
    (Chan, Golub & LeVeque 1983, error of the two-pass variance).
    """
    X = _as_2d_float(X, name)
    n = X.shape[0]
    # float64 accumulation for float32 input too: fit runs once, and the constant-column
    # bound below is stated for float64 rounding. Overflow (huge values) is not warned
    # about but reported below as a ValueError naming the column.
    with np.errstate(over="ignore", invalid="ignore"):
        mean = X.mean(axis=0, dtype=np.float64)
        var = X.var(axis=0, dtype=np.float64)
        eps = np.finfo(np.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        scale = np.sqrt(var)
        scale[constant] = 1.0
        mean = mean.astype(X.dtype)
        scale = scale.astype(X.dtype)
    # an overflowed variance would also pass the constant-column test (inf <= inf)
    bad = ~(np.isfinite(mean) & np.isfinite(var) & np.isfinite(scale))
    if bad.any():
        j = int(np.argmax(bad))
        largest = float(np.max(np.abs(X[:, j])))
        raise ValueError(f"{name} column {j}: its mean or standard deviation overflows "
                         f"{X.dtype.name} (largest |value| {largest:.3g}); expected values "
                         "small enough to standardize (|value| up to ~1e150): rescale the data")
    # A tiny float64 scale can underflow to 0 in float32; never divide by zero.
    scale[scale == 0] = 1
    return mean, scale


class Standardizer:
    """Zero-mean, unit-variance scaling whose statistics come from training data only.

    Attributes
    ----------
    mean_ : ndarray, shape (d,), float
    scale_ : ndarray, shape (d,), float, > 0
        Set by `fit`; the map is ``Z = (X - mean_) / scale_``.
    n_features : int
        d, the number of columns seen by `fit`.

    Notes
    -----
    Fit on the training part only; the test part is then scaled with the training
    statistics, so no information leaks from test to train. Outputs keep the input's float
    dtype (float32 in, float32 out; bool/int in, float64 out). Inputs are never modified.

    Examples
    --------
    >>> s = Standardizer().fit([[1.0], [3.0]])
    >>> s.mean_, s.scale_
    (array([2.]), array([1.]))
    >>> s.transform([[5.0]])
    array([[3.]])
    """

    def __init__(self):
        self.mean_ = None
        self.scale_ = None
        self.n_features = None

    def fit(self, X, name="X"):
        """Measure column means and scales on `X` (n, d); return self. See `mean_and_scale`.

        `name` is how error messages name `X`.
        """
        mean, scale = mean_and_scale(X, name)
        self.mean_, self.scale_, self.n_features = mean, scale, mean.shape[0]
        return self

    def _check(self, X, name):
        if self.mean_ is None:
            raise ValueError("this Standardizer is not fitted yet; call fit(X_train) first")
        arr = _as_2d_float(X, name)
        if arr.shape[1] != self.n_features:
            raise ValueError(f"{name} must have {self.n_features} columns (as in fit), "
                             f"got shape {arr.shape}")
        return arr

    def transform(self, X, name="X"):
        """Scale `X` (m, d): ``(X - mean_) / scale_``; shape (m, d), X's float dtype.

        Raises ValueError (naming `X` as `name`) when a scaled value overflows: a value far
        beyond the fitted data's range.
        """
        arr = self._check(X, name)
        with np.errstate(over="ignore", invalid="ignore"):
            out = (arr - self.mean_.astype(arr.dtype)) / self.scale_.astype(arr.dtype)
        bad = ~np.isfinite(out)
        if bad.any():
            i, j = (int(k) for k in np.unravel_index(int(np.argmax(bad)), bad.shape))
            raise ValueError(f"{name} value {float(arr[i, j]):.3g} at index ({i}, {j}) "
                             f"overflows {arr.dtype.name} when standardized (mean "
                             f"{float(self.mean_[j]):.3g}, scale {float(self.scale_[j]):.3g}); "
                             "expected values within the fitted data's range: rescale the data")
        return out

    def inverse_transform(self, Z):
        """Undo `transform` on `Z` (m, d): ``Z * scale_ + mean_``; shape (m, d), Z's float dtype."""
        arr = self._check(Z, "Z")
        return arr * self.scale_.astype(arr.dtype) + self.mean_.astype(arr.dtype)

    def fit_transform(self, X):
        """`fit` on `X`, then return ``transform(X)``."""
        return self.fit(X).transform(X)

    def __repr__(self):
        state = "unfitted" if self.mean_ is None else f"n_features={self.n_features}"
        return f"Standardizer({state})"


def standardize(X_train, X_test=None, names=("X_train", "X_test")):
    """Fit a `Standardizer` on `X_train` and scale both parts with it.

    Parameters
    ----------
    X_train : array_like, shape (n, d)
    X_test : array_like, shape (m, d), or None
    names : (str, str), default ("X_train", "X_test")
        How error messages name the two parts (a command line names its option here).

    Returns
    -------
    X_train_s : ndarray, shape (n, d)
    X_test_s : ndarray, shape (m, d), or None when `X_test` is None
    standardizer : Standardizer
        Fitted on `X_train` alone.

    Raises
    ------
    ValueError
        As `Standardizer.fit` / `transform` (bad values, column count of `X_test`, a
        statistic or scaled value that overflows).
    """
    standardizer = Standardizer().fit(X_train, names[0])
    X_train_s = standardizer.transform(X_train, names[0])
    X_test_s = None if X_test is None else standardizer.transform(X_test, names[1])
    return X_train_s, X_test_s, standardizer


# --------------------------------------------------------------------------- labels

def one_hot(labels, n_classes=None, dtype="float64"):
    """One-hot encode integer class labels.

    Parameters
    ----------
    labels : array_like of int, shape (n,) or (n, 1)
        Class indices >= 0. Integral-valued floats are accepted (CSV loaders give floats).
    n_classes : int >= 1 or None, default None
        Number of columns k; None means ``max(labels) + 1``.
    dtype : dtype, default "float64"
        Any bool, integer or float dtype.

    Returns
    -------
    Y : ndarray, shape (n, k), `dtype`
        ``Y[i, labels[i]] = 1`` and 0 elsewhere.

    Raises
    ------
    ValueError
        Labels negative, fractional, NaN/inf or not 1-D; a label >= `n_classes`; `n_classes`
        < 1; `n_classes` None with no labels to infer it from; a non-numeric `dtype`.
    TypeError
        `n_classes` not an int.

    Examples
    --------
    >>> one_hot([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]])
    """
    lab = _labels_1d(labels, "labels")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a numeric dtype, got {dtype!r}") from None
    if dt.kind not in "biuf":
        raise ValueError(f"dtype must be a bool, integer or float dtype, got {dtype!r}")
    if n_classes is None:
        if lab.size == 0:
            raise ValueError("n_classes must be given when labels is empty, got None")
        k = int(lab.max()) + 1
    else:
        if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral):
            raise TypeError(f"n_classes must be an int >= 1 or None, got {plain(n_classes)!r}")
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {plain(n_classes)!r}")
        k = int(n_classes)
        if lab.size and lab.max() >= k:
            i = int(np.argmax(lab))
            raise ValueError(f"labels must be < n_classes={k}, got {lab[i]} at index {i}")
    Y = np.zeros((lab.shape[0], k), dtype=dt)
    Y[np.arange(lab.shape[0]), lab] = 1
    return Y


def accuracy(y_true, y_pred):
    """Fraction of samples whose highest-scoring class is the true class.

    Parameters
    ----------
    y_true : array_like, shape (n,) or (n, 1) labels, or (n, k) one-hot / scores
        True classes; a (n, k) array with k >= 2 is reduced with argmax over axis 1.
    y_pred : array_like, shape (n, k), k >= 2
        Scores (logits, probabilities or regression outputs against one-hot targets); the
        predicted class is the argmax over axis 1 (first index on ties, as ``numpy.argmax``).

    Returns
    -------
    acc : float in [0, 1]
        ``mean(argmax(y_pred, 1) == labels)``; unit: fraction, not percent.

    Raises
    ------
    ValueError
        `y_pred` not (n, k) with k >= 2, or containing NaN/inf; `y_true` labels negative or
        fractional; a one-hot `y_true` whose k differs from `y_pred`'s; row counts differ;
        n = 0; non-numeric input.

    Notes
    -----
    acc = mean(argmax(y_pred, axis=1) == y_true_labels)

    References
    ----------
    Keras ``categorical_accuracy`` (one-hot targets) and ``sparse_categorical_accuracy``
    (integer targets).

    Examples
    --------
    >>> accuracy([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    0.6666666666666666
    """
    pred = _as_numeric_array(y_pred, "y_pred")
    if pred.ndim != 2 or pred.shape[1] < 2:
        raise ValueError(f"y_pred must be scores of shape (n, k) with k >= 2, "
                         f"got shape {pred.shape}")
    if pred.shape[0] == 0:
        raise ValueError(f"y_pred must not be empty, got shape {pred.shape}")
    _check_finite(pred, "y_pred")
    true = _as_numeric_array(y_true, "y_true")
    if true.ndim == 2 and true.shape[1] >= 2:
        if true.shape[1] != pred.shape[1]:
            raise ValueError(f"y_true one-hot has {true.shape[1]} columns but y_pred has "
                             f"{pred.shape[1]}; expected the same k")
        _check_finite(true, "y_true")
        labels = np.argmax(true, axis=1)
    else:
        labels = _labels_1d(true, "y_true")
    if labels.shape[0] != pred.shape[0]:
        raise ValueError(f"y_true and y_pred must have the same number of rows, got y_true with "
                         f"{labels.shape[0]} rows and y_pred with {pred.shape[0]} rows")
    return float(np.mean(np.argmax(pred, axis=1) == labels))
