"""Storage sizes: every byte count of minscale, as formulas on counts (no model in sight).

pruning (``prune.model_nbytes``, ``SparseModel.nbytes``), quantization
(``quant.quantized_nbytes``, ``quant.compression_ratio``, ``QuantizedModel.size_report``), the
study (``study.sparse_codes_nbytes``) and the model file (``io.expected_param_count``) count the
same things; these functions are the one statement of each formula. With ``V(c)`` the bytes of
``c`` values of ``bits`` bits packed back to back:

- packed values:   ``V(c) = ceil(c * bits / 8)``
- aligned values:  ``c * ceil(bits / 8)`` (one NumPy element of the smallest holding dtype each)
- CSR:             ``V(nnz) + nnz * index_bytes + (n_rows + 1) * index_bytes``
- bitmask:         ``ceil(n / 8) + V(nnz)`` (one bit per entry, then the nonzeros)

References: ``scipy.sparse.csr_array`` storage (data, indices, indptr); Han et al. 2016,
"Deep Compression" (sparse and bitmask encodings); TFLite's float32 per-tensor or
per-channel scales.
"""
from __future__ import annotations

from . import _checks

__all__ = [
    "packed_bytes",
    "aligned_bytes",
    "csr_bytes",
    "bitmask_bytes",
    "codes_bytes",
    "compression_ratio",
    "param_count",
]

SCALE_BYTES = 4  # a float32 scale


def packed_bytes(count, bits):
    """Bytes of ``count`` values of ``bits`` bits packed back to back: ``ceil(count * bits / 8)``.

    Parameters
    ----------
    count : int >= 0
    bits : int >= 1

    Returns
    -------
    int

    Raises
    ------
    TypeError, ValueError
        A count that is not an integer >= 0, or bits < 1.

    Examples
    --------
    >>> packed_bytes(1000, 4), packed_bytes(3, 3)
    (500, 2)
    """
    count = _checks.check_int("count", count, 0)
    bits = _checks.check_int("bits", bits, 1)
    return -(-count * bits // 8)


def aligned_bytes(count, bits):
    """Bytes of ``count`` values, each in ``ceil(bits / 8)`` whole bytes (a NumPy array).

    Parameters
    ----------
    count : int >= 0
    bits : int >= 1

    Returns
    -------
    int
        ``count * ceil(bits / 8)``; a 4-bit code takes one byte, a 12-bit code two.

    Raises
    ------
    TypeError, ValueError
        As :func:`packed_bytes`.

    Examples
    --------
    >>> aligned_bytes(1000, 4), aligned_bytes(10, 12)
    (1000, 20)
    """
    count = _checks.check_int("count", count, 0)
    bits = _checks.check_int("bits", bits, 1)
    return count * -(-bits // 8)


def csr_bytes(nnz, n_rows, bits, index_bytes=4):
    """Bytes of a CSR matrix: packed values + one column index per value + row pointers.

    Parameters
    ----------
    nnz : int >= 0
        Stored (nonzero) values.
    n_rows : int >= 0
        Rows of the matrix (``d_in`` for a weight of shape (d_in, d_out)).
    bits : int >= 1
        Bits per value, packed.
    index_bytes : int >= 1, default 4
        Bytes of a column index and of a row pointer (int32, as ``scipy.sparse`` chooses
        while nnz and the shape fit; 8 for int64).

    Returns
    -------
    int
        ``V(nnz) + nnz * index_bytes + (n_rows + 1) * index_bytes``.

    Raises
    ------
    TypeError, ValueError
        A count that is not an integer >= 0, bits or index_bytes < 1.

    Examples
    --------
    >>> csr_bytes(2, 4, 8)  # 2 one-byte codes, 2 indices, 5 row pointers
    30
    """
    nnz = _checks.check_int("nnz", nnz, 0)
    n_rows = _checks.check_int("n_rows", n_rows, 0)
    index_bytes = _checks.check_int("index_bytes", index_bytes, 1)
    return packed_bytes(nnz, bits) + nnz * index_bytes + (n_rows + 1) * index_bytes


def bitmask_bytes(n, nnz, bits):
    """Bytes of a bitmask encoding: one bit per entry, then the nonzeros packed.

    Parameters
    ----------
    n : int >= 0
        Entries of the matrix (``d_in * d_out``).
    nnz : int in [0, n]
        Nonzero entries.
    bits : int >= 1

    Returns
    -------
    int
        ``ceil(n / 8) + V(nnz)``.

    Raises
    ------
    TypeError, ValueError
        Counts that are not integers, ``nnz > n``, or bits < 1.

    Examples
    --------
    >>> bitmask_bytes(8, 2, 8)
    3
    """
    n = _checks.check_int("n", n, 0)
    nnz = _checks.check_int("nnz", nnz, 0, n)
    return -(-n // 8) + packed_bytes(nnz, bits)


def codes_bytes(n_codes, bits, n_scales=0, n_zero_points=0, packed=False):
    """Bytes of a quantized tensor: codes + float32 scales + zero points.

    Parameters
    ----------
    n_codes : int >= 0
    bits : int >= 1
    n_scales : int >= 0, default 0
        Scales, 4 bytes each (float32, as TFLite stores them).
    n_zero_points : int >= 0, default 0
        Zero points, stored like the codes.
    packed : bool, default False
        True: codes (and zero points) packed back to back (:func:`packed_bytes`); False: one
        NumPy element each (:func:`aligned_bytes`).

    Returns
    -------
    int

    Raises
    ------
    TypeError, ValueError
        A count that is not an integer >= 0, bits < 1, or packed not a bool.

    Examples
    --------
    >>> codes_bytes(1000, 8, n_scales=10, n_zero_points=10)
    1050
    >>> codes_bytes(1000, 4), codes_bytes(1000, 4, packed=True)
    (1000, 500)
    """
    n_scales = _checks.check_int("n_scales", n_scales, 0)
    width = packed_bytes if _checks.check_bool("packed", packed) else aligned_bytes
    return width(n_codes, bits) + SCALE_BYTES * n_scales + width(n_zero_points, bits)


def compression_ratio(float_nbytes, quantized_nbytes):
    """Size of the float model over the size of the compressed one (> 1 means smaller).

    Parameters
    ----------
    float_nbytes : int >= 1
    quantized_nbytes : int >= 1

    Returns
    -------
    float
        ``float_nbytes / quantized_nbytes``.

    Raises
    ------
    TypeError, ValueError
        A size that is not a positive integer.

    Examples
    --------
    >>> compression_ratio(4000, 1000)
    4.0
    """
    f = _checks.check_int("float_nbytes", float_nbytes, 1)
    q = _checks.check_int("quantized_nbytes", quantized_nbytes, 1)
    return f / q


def param_count(config):
    """P, the flat parameter-buffer length of a Sequential config, without allocating.

    Parameters
    ----------
    config : dict
        :meth:`minscale.model.Sequential.get_config` output: ``input_dim`` and ``layers``
        (each with ``units`` and optionally ``use_bias``).

    Returns
    -------
    int
        ``sum_k d_k * units_k (+ units_k with bias)``, ``d_0 = input_dim``,
        ``d_{k+1} = units_k``.

    Raises
    ------
    ValueError
        Missing or non-positive ``input_dim`` or ``units``, or a malformed layer list (the
        messages name the config key, as a model file's reader reports them).

    Examples
    --------
    >>> param_count({"input_dim": 3, "layers": [{"units": 2}, {"units": 1, "use_bias": False}]})
    10
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    d = config.get("input_dim")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"config['input_dim'] must be a positive integer, got {d!r}")
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"config['layers'] must be a non-empty list, got {layers!r}")
    total = 0
    for i, lc in enumerate(layers):
        if not isinstance(lc, dict):
            raise ValueError(f"config['layers'][{i}] must be a dict, got {lc!r}")
        units, use_bias = lc.get("units"), lc.get("use_bias", True)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"config['layers'][{i}]['units'] must be a positive integer, got "
                             f"{units!r}")
        if not isinstance(use_bias, bool):
            raise ValueError(f"config['layers'][{i}]['use_bias'] must be a bool, got "
                             f"{use_bias!r}")
        total += d * units + (units if use_bias else 0)
        d = units
    return total
