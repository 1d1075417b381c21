"""Model files without pickle, atomic writes, and training checkpoints.

A model file is one ``.npz`` archive (a zip of ``.npy`` members, stored uncompressed) with:

``manifest.npy``
    uint8, the UTF-8 JSON manifest: format name ``"minscale-model"``, format version 1, the
    library version, the model kind, its architecture (``get_config()``), dtype, compile
    settings, the optimizer config and counter, ``model.state`` (arrays replaced by
    references), an optional checkpoint section, the name, shape and dtype of every other
    member, and a SHA-256 over the manifest and all buffers.
``params.npy``, ``mask.npy``
    The flat parameter buffer (P,) in the model's dtype and the bool pruning mask (P,).
``optimizer/<name>.npy``
    The optimizer's state buffers (``velocity``; ``m`` and ``v``).
``state/<i>.npy``
    Arrays found in ``model.state`` (pruning backups and the like).
``checkpoint/order.npy``, ``history/<i>.npy``
    Checkpoints only: the epoch's shuffled order and the history lists.

A :class:`minscale.prune.SparseModel` file holds ``layers/<i>/data``, ``indices``, ``indptr``
(CSR of each W) and ``layers/<i>/b`` instead of the flat buffers.

Loading never unpickles: every member is parsed with :mod:`numpy.lib.format` header readers,
object dtypes are refused before any byte of data is read, every array is checked against
the manifest's shape and dtype, and the digest is verified before a model is built. Before
any member is read, the zip directory is checked against the file (no overlapping members,
none beyond the file: :func:`minscale._npz.zip_members`), so what is read adds up to at most
the file's size. Parameters that are NaN or infinite are refused when a model is built.
Anything wrong with the file's content raises :class:`ModelFileError`, naming the file.

The container (npz, manifest, digest, atomic writes) is :mod:`minscale.io.container`; each
kind of model is written and read by the codec its own module registers
(:mod:`minscale.io.codecs`), so this package imports no model module. The checkpoint names
(:class:`TrainingProgress`, :func:`write_checkpoint`, :func:`read_checkpoint`,
:func:`restore_checkpoint`) are defined in :mod:`minscale.train.checkpoints` and load from
there on first use.

Writes are atomic (:func:`atomic_write`): a temporary file in the target folder, flushed and
fsynced, then ``os.replace``; the folder is fsynced after the rename. A failure at any point
removes the temporary file and leaves a previous file at the path untouched; the temporary
files of killed writers are removed by a later write in the folder
(:func:`remove_stale_temporaries`).

References
----------
NumPy ``.npy`` format (NEP 1) and ``numpy.savez`` (the container); the write-to-temporary,
fsync, rename pattern relies on POSIX ``rename(2)`` atomicity, as Git's lock files do.
Checkpoint contents follow ``torch.save`` /
``keras.callbacks.BackupAndRestore`` practice: parameters, optimizer state, step, RNG state
and history.
"""
from __future__ import annotations

import importlib
import os

from . import codecs
from .container import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_KEYS,
    STALE_TEMP_SECONDS,
    ModelFileError,
    atomic_write,
    buffers_digest,
    check_finite_parameters,
    data_digest,
    decode_state,
    encode_state,
    expected_param_count,
    header,
    name_the_file,
    plain,
    read_container,
    read_manifest,
    remove_stale_temporaries,
    write_container,
)

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "ModelFileError", "TrainingProgress",
    "save", "load", "load_with_manifest", "read_manifest", "atomic_write", "buffers_digest",
    "remove_stale_temporaries", "STALE_TEMP_SECONDS",
    "data_digest",
    "encode_state", "decode_state", "expected_param_count", "layer_table",
    "write_checkpoint", "read_checkpoint", "restore_checkpoint",
]

#: the pre-split name of read_container, kept for callers outside io (tests read files with it)
_read_container = read_container

#: public names defined in train.checkpoints (checkpoints are training; io sits below it)
_MOVED = {"TrainingProgress": "minscale.train.checkpoints",
          "write_checkpoint": "minscale.train.checkpoints",
          "read_checkpoint": "minscale.train.checkpoints",
          "restore_checkpoint": "minscale.train.checkpoints"}


def __getattr__(name):
    if name in _MOVED:
        value = getattr(importlib.import_module(_MOVED[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minscale.io' has no attribute {name!r}")


def save(model, path):
    """Save a model to one ``.npz`` file, atomically, without pickle.

    Parameters
    ----------
    model : Sequential, prune.SparseModel, quant.QuantizedModel or quant.FixedPointModel
        A Sequential must be built; its architecture, parameters, masks, compile settings,
        optimizer config and state (counter and buffers) and ``model.state`` are saved, and
        ``model.state`` may hold None, bool, int, float, str, ndarrays, lists, tuples and
        dicts with str keys. A SparseModel is saved as its CSR arrays and biases, a
        QuantizedModel or FixedPointModel as its integer codes and scales.
    path : str or os.PathLike
        Conventionally ending in ``.npz``; the folder must exist.

    Returns
    -------
    dict
        The manifest written (with its ``sha256``).

    Raises
    ------
    TypeError
        Not a model, or ``model.state`` holds something a file cannot store (naming where).
    ValueError
        The model is not built.
    FileNotFoundError, IsADirectoryError, PermissionError, OSError
        The folder is missing or read-only, or the write fails; a previous file at `path`
        is unchanged (see :func:`atomic_write`).

    References
    ----------
    Keras ``model.save`` (architecture + weights + optimizer state in one file);
    ``numpy.savez`` container, written without pickle.

    Examples
    --------
    >>> import minscale as ms, tempfile, os
    >>> m = ms.Sequential([ms.Dense(1)], input_dim=2, seed=0)
    >>> p = os.path.join(tempfile.mkdtemp(), "m.npz")
    >>> _ = ms.save(m, p)
    >>> bool((ms.load(p).params == m.params).all())
    True
    """
    kind = codecs.kind_of(model)
    if kind is None:
        raise TypeError(f"model must be a minscale Sequential, got {type(model).__name__}")
    fields, arrays = codecs.lookup(kind).encode(model)
    clash = set(fields) & set(HEADER_KEYS)
    if clash:
        raise ValueError(f"the {kind} codec's fields {sorted(clash)} collide with the manifest "
                         "header")
    manifest = header(kind)
    manifest.update(plain(fields))
    return write_container(path, manifest, arrays)


def load(path):
    """Load a model (or the model inside a checkpoint) saved by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Sequential, prune.SparseModel, quant.QuantizedModel or quant.FixedPointModel
        Same architecture, parameters, masks, compile settings, optimizer state and
        ``model.state``; a checkpoint also sets ``model.history``. An optimizer whose config
        could not be saved (a custom schedule) is not rebuilt: ``model.optimizer`` is None.

    Raises
    ------
    ModelFileError
        The file is not an .npz, is truncated, has a flipped bit (zip CRC or SHA-256), holds
        a pickled object array, a manifest of an unknown format or version, shapes and
        dtypes that disagree with the manifest or the architecture, zip members that overlap
        or lie beyond the file (refused before any is read), or parameters that are NaN or
        infinite. Never unpickles.
    FileNotFoundError, IsADirectoryError, PermissionError
        Problems with the path.
    """
    manifest, arrays = read_container(path)
    return _decode_model(manifest, arrays, os.fspath(path))


def load_with_manifest(path):
    """Load a model and return it with its verified manifest (one read of the file).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model : Sequential, prune.SparseModel, quant.QuantizedModel or quant.FixedPointModel
    manifest : dict

    Raises
    ------
    As :func:`load`.
    """
    manifest, arrays = read_container(path)
    return _decode_model(manifest, arrays, os.fspath(path)), manifest


def _decode_model(manifest, arrays, path):
    check_finite_parameters(arrays, path)
    try:
        model = codecs.lookup(manifest.get("kind"), path).decode(manifest, arrays, path)
        if manifest.get("checkpoint") is not None:
            codecs.lookup_extension("checkpoint").decode(model, manifest, arrays, path)
        return model
    except ModelFileError as exc:
        raise name_the_file(exc, path) from exc.__cause__
    except Exception as exc:
        raise ModelFileError(f"{path!r}: the manifest does not describe a valid model: "
                             f"{type(exc).__name__}: {exc}") from exc


def layer_table(model):
    """Per-layer facts for ``minscale info``: shapes, parameters, sparsity, bits and bytes.

    Parameters
    ----------
    model : Sequential, prune.SparseModel, quant.QuantizedModel or quant.FixedPointModel

    Returns
    -------
    list of dict
        One per layer: ``index``, ``W_shape``, ``b_shape`` (or None), ``activation``,
        ``n_params``, ``sparsity`` (fraction of masked weights of W; for a quantized model
        the fraction of zero weight codes), ``bits`` (bits per stored weight) and
        ``nbytes`` (bytes of the layer's stored parameters: weights, bias and, when
        quantized, scales and zero points; masks not included).

    Raises
    ------
    TypeError
        Not a model of a registered kind.
    """
    kind = codecs.kind_of(model)
    if kind is None:
        raise TypeError(f"model must be a minscale Sequential, got {type(model).__name__}")
    return codecs.lookup(kind).layer_table(model)
