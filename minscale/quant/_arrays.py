"""Array coercions and constants shared by the quant modules (public names, private module).

Every function here turns an argument into the array the formulas and kernels expect, or
raises naming the argument: TypeError for non-real data, ValueError for NaN (or inf where a
finite number is needed). ``FLOAT32_EPS``, ``INT32_MIN`` and ``INT32_MAX`` are re-exported by
:mod:`minscale.quant`.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_int

__all__ = [
    "FLOAT32_EPS",
    "INT32_MIN",
    "INT32_MAX",
    "as_float64",
    "as_real_array",
    "as_channels",
    "as_int_array",
    "channel_shape",
    "normalize_axis",
]

# torch.ao.quantization observers clamp scales from below at float32 machine epsilon (2**-23).
FLOAT32_EPS = float(np.finfo(np.float32).eps)


INT32_MIN = -(2**31)


INT32_MAX = 2**31 - 1


def as_float64(name, x, allow_inf=True):
    """``x`` as a float64 ndarray (exact for every float32, float16 and int32 input).

    Raises TypeError for non-real data and ValueError for NaN (or inf when not allowed).
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        idx = np.unravel_index(int(np.argmax(np.isnan(arr))), arr.shape) if arr.ndim else ()
        raise ValueError(f"{name} contains NaN (first at index {idx}); NaN cannot be quantized")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name} contains an infinite value; a finite number is needed")
    return arr


def as_real_array(name, x, check_nan=True):
    """``x`` as a C-contiguous float32 or float64 array for the kernels (ints become float64).

    Kept in float32 when it is float32, so no float64 temporary is made; the kernels convert
    each element exactly. Raises like :func:`as_float64`; ``check_nan=False`` leaves the NaN
    test to a kernel that does it in its own pass (``quantize_affine_checked``).
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    if arr.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    if check_nan and np.isnan(arr).any():
        idx = np.unravel_index(int(np.argmax(np.isnan(arr))), arr.shape) if arr.ndim else ()
        raise ValueError(f"{name} contains NaN (first at index {idx}); NaN cannot be quantized")
    return arr


def as_channels(arr, axis):
    """View of a C-contiguous array as (n_outer, C, n_inner), channels on axis 1 (kernel layout)."""
    if axis is None:
        return arr.reshape(1, 1, -1)
    outer = int(np.prod(arr.shape[:axis], dtype=np.int64))
    inner = int(np.prod(arr.shape[axis + 1 :], dtype=np.int64))
    return arr.reshape(outer, arr.shape[axis], inner)


def as_int_array(name, q):
    """``q`` as an integer ndarray of codes, unchanged; TypeError naming `name` otherwise."""
    arr = np.asarray(q)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of codes, got dtype {arr.dtype}")
    return arr


def channel_shape(ndim, axis):
    """Shape that broadcasts a per-channel vector along `axis` of an `ndim`-D array."""
    shape = [1] * ndim
    shape[axis] = -1
    return tuple(shape)


def normalize_axis(axis, ndim, name="axis"):
    """`axis` in [0, ndim) (negative counts from the end), None unchanged; raises naming `name`."""
    if axis is None:
        return None
    axis = check_int(name, axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D array, got {axis}"
        )
    return axis % ndim
