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

Writes are atomic (:func:`atomic_write`): a temporary file in the target folder, flushed and
fsynced, then ``os.replace``; the folder is fsynced after the rename. A failure at any point
removes the temporary file and leaves a previous file at the path untouched; the temporary
files of killed writers are removed by a later write in the folder
(:func:`remove_stale_temporaries`).

References
----------
NumPy ``.npy`` format (NEP 1) and ``numpy.savez`` (the container); the write-to-temporary,
fsync, rename pattern relies on POSIX ``rename(2)`` atomicity, as Git's lock files do. Checkpoint contents follow ``torch.save`` / ``keras.callbacks.BackupAndRestore``
practice: parameters, optimizer state, step, RNG state and history.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import numbers
import os
import re
import stat
import tempfile
import time
import zipfile

import numpy as np

from .. import _npz

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "ModelFileError", "TrainingProgress",
    "save", "load", "load_with_manifest", "read_manifest", "atomic_write", "buffers_digest",
    "remove_stale_temporaries", "STALE_TEMP_SECONDS",
    "data_digest",
    "encode_state", "decode_state", "expected_param_count", "layer_table",
    "write_checkpoint", "read_checkpoint", "restore_checkpoint",
]

FORMAT_NAME = "minscale-model"
FORMAT_VERSION = 1

#: member holding the JSON manifest
_MANIFEST = "manifest"
#: manifests larger than this are refused (a model's manifest is a few kB)
_MAX_MANIFEST_BYTES = 16 * 2**20
#: dtypes a member may have; anything else (objects, structured, big-endian) is refused
_ALLOWED_DTYPES = {np.dtype(t).str: np.dtype(t) for t in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float32", "float64")}
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*$")
#: bytes read per call when loading an array
_CHUNK_BYTES = 16 * 2**20
#: keys that mark encoded values in the JSON form of model.state
_MARKERS = ("__array__", "__tuple__", "__float__")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
#: the temporary file of atomic_write: "." target "." writer pid "." mkstemp's 8 characters ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>[0-9]{1,10})\.[a-z0-9_]{8}\.tmp$")
#: the same without a pid, as minscale wrote it before (recognised for the same target only)
_OLD_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
#: a temporary file whose writer is not running is removed once unchanged for this long (s)
STALE_TEMP_SECONDS = 600
#: an old-style temporary file (no pid to ask) is removed once unchanged for this long (s)
_OLD_TEMP_SECONDS = 86400


class ModelFileError(ValueError):
    """A model or checkpoint file is damaged, forged, of an unknown version, or not a model file.

    Raised by :func:`load`, :func:`read_manifest`, :func:`read_checkpoint` and
    :func:`restore_checkpoint` for every problem with a file's *content*: not a zip archive,
    truncated, a flipped bit (zip CRC or SHA-256 mismatch), a manifest that is not JSON or
    misses fields, shapes or dtypes that disagree with the manifest or the architecture, an
    unknown format name or version, a pickled object array, a compressed or encrypted member,
    members that overlap or lie beyond the file, NaN or infinite parameters. The message
    names the file. Problems with the *path* (missing, a folder, unreadable) raise the usual
    ``OSError`` subclasses instead. Subclass of ``ValueError``, so the CLI reports it in one
    line.
    """


# ------------------------------------------------------------------------------------------
# pure helpers: digests, state encoding, architecture arithmetic


def _canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def buffers_digest(manifest, arrays):
    """SHA-256 of a manifest (without its ``sha256`` field) and all buffers.

    Parameters
    ----------
    manifest : dict
        JSON-ready; its ``"sha256"`` entry, if any, is left out.
    arrays : dict of str -> ndarray
        The buffers; each contributes its name, dtype string, shape and raw bytes (C order).

    Returns
    -------
    str
        64 hexadecimal digits.

    Notes
    -----
    digest = SHA-256( "minscale-model\\0" || canonical_json(manifest - sha256) ||
    for name in sorted(arrays): name "\\0" dtype.str "\\0" json(shape) "\\0" bytes(C order) ).
    Canonical JSON sorts keys and uses no spaces, so the digest does not depend on key order.
    Covering names, dtypes and shapes means swapping or reshaping buffers changes the digest.

    References
    ----------
    FIPS 180-4 (SHA-256), via :mod:`hashlib`.
    """
    h = hashlib.sha256()
    h.update(FORMAT_NAME.encode() + b"\0")
    h.update(_canonical_json({k: v for k, v in manifest.items() if k != "sha256"}).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{arr.dtype.str}\0{json.dumps(list(arr.shape))}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def data_digest(X, y):
    """SHA-256 of a training set, to recognise the same data when a run resumes.

    Parameters
    ----------
    X : ndarray, shape (n, d_in)
    y : ndarray, shape (n, d_out)

    Returns
    -------
    str
        64 hexadecimal digits over both arrays' dtypes, shapes and bytes (C order).
    """
    h = hashlib.sha256()
    for arr in (X, y):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}\0{json.dumps(list(arr.shape))}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def encode_state(value, arrays, path="model.state"):
    """JSON-ready form of `value`, moving every ndarray into `arrays`.

    Parameters
    ----------
    value : None, bool, int, float, str, ndarray, list, tuple or dict with str keys, nested
        NumPy scalars are turned into Python ones; non-finite floats are kept as
        ``{"__float__": "nan" | "inf" | "-inf"}`` so the manifest stays strict JSON.
    arrays : dict
        Receives the arrays as ``"state/<i>"`` (i counts from ``len(arrays)`` entries already
        named ``state/...``); the JSON holds ``{"__array__": "state/<i>"}`` in their place.
    path : str
        Where `value` sits, for error messages.

    Returns
    -------
    JSON-ready object

    Raises
    ------
    TypeError
        A value of another type, a non-str dict key, a key of the form ``__name__``
        (reserved), or an array dtype a model file cannot hold; the message names the path.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (numbers.Integral, np.integer)):
        return int(value)
    if isinstance(value, (numbers.Real, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(value, np.ndarray):
        if value.dtype.str not in _ALLOWED_DTYPES:
            raise TypeError(f"{path} is an array of dtype {value.dtype}; a model file holds "
                            f"only {sorted(str(d) for d in _ALLOWED_DTYPES.values())}")
        name = f"state/{sum(1 for k in arrays if k.startswith('state/'))}"
        arrays[name] = np.ascontiguousarray(value)
        return {"__array__": name}
    if isinstance(value, (list, tuple)):
        items = [encode_state(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has the key {key!r}; a model file needs str keys")
            if key in _MARKERS:
                raise TypeError(f"{path} has the key {key!r}; the keys {_MARKERS} are "
                                "reserved by the model file format")
            out[key] = encode_state(item, arrays, f"{path}[{key!r}]")
        return out
    raise TypeError(f"{path} holds a {type(value).__name__}, which a model file cannot store; "
                    "allowed: None, bool, int, float, str, ndarray, list, tuple, dict")


def decode_state(obj, arrays, path="state"):
    """Inverse of :func:`encode_state`.

    Parameters
    ----------
    obj : JSON-ready object from :func:`encode_state`
    arrays : dict of str -> ndarray
    path : str
        For error messages.

    Returns
    -------
    The original value (tuples, non-finite floats and arrays restored).

    Raises
    ------
    ModelFileError
        A reference to a missing array or a malformed marker.
    """
    if isinstance(obj, list):
        return [decode_state(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if any(marker in obj for marker in _MARKERS):
            if len(obj) != 1:
                raise ModelFileError(f"{path}: a marker object must have one key, got "
                                     f"{sorted(obj)}")
            (marker, value), = obj.items()
            if marker == "__array__":
                if not isinstance(value, str) or value not in arrays:
                    raise ModelFileError(f"{path} refers to array {value!r}, which the file "
                                         "does not hold")
                return arrays[value]
            if marker == "__tuple__":
                if not isinstance(value, list):
                    raise ModelFileError(f"{path}: __tuple__ must hold a list, got {value!r}")
                return tuple(decode_state(v, arrays, f"{path}[{i}]") for i, v in enumerate(value))
            if value not in ("nan", "inf", "-inf"):
                raise ModelFileError(f"{path}: __float__ must be 'nan', 'inf' or '-inf', got "
                                     f"{value!r}")
            return float(value)
        return {k: decode_state(v, arrays, f"{path}[{k!r}]") for k, v in obj.items()}
    return obj


def expected_param_count(config):
    """P, the flat buffer length of a Sequential config, computed without allocating.

    Parameters
    ----------
    config : dict
        :meth:`minscale.model.Sequential.get_config` output.

    Returns
    -------
    int
        sum over layers of d_in * units (+ units with bias), d_in of layer k+1 = units of k.

    Raises
    ------
    ValueError
        Missing or non-positive ``input_dim`` or ``units``, or a malformed layer list.
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


# ------------------------------------------------------------------------------------------
# atomic writes and the container


def _pid_running(pid):
    """Whether a process `pid` exists on this machine (signal 0 asks without sending)."""
    if os.name != "posix" or pid == os.getpid():
        return True  # elsewhere os.kill would not just ask
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, ValueError, OSError):
        return False  # not a possible pid
    return True


def remove_stale_temporaries(folder, target=None, now=None):
    """Delete the temporary files that killed writers of :func:`atomic_write` left in `folder`.

    A save killed between creating its temporary file and the rename (SIGKILL, power loss)
    leaves ``.NAME.PID.XXXXXXXX.tmp`` behind. Such a file is removed when it is a regular
    file of this user, its writer ``PID`` is not running on this machine, and it has not
    changed for ``STALE_TEMP_SECONDS`` (10 minutes; a writer that is still writing keeps
    touching it). A temporary file of a running writer is never removed. Files named as
    minscale named them before (``.NAME.XXXXXXXX.tmp``, no pid) are removed for `target`'s
    NAME only, once unchanged for a day.

    Parameters
    ----------
    folder : str
    target : str, optional
        Base name of the file about to be written (for the old-style names).
    now : float, optional
        The current time (``time.time()``), for tests.

    Returns
    -------
    list of str
        The names removed. Errors (a file gone meanwhile, no permission) are ignored: the
        cleanup never fails a save.

    Notes
    -----
    A folder shared between machines: a pid is only asked on this machine, so a writer
    elsewhere that has not written for 10 minutes could lose its temporary file; its
    rename then fails loudly and its target stays untouched.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is not None:
            stale = STALE_TEMP_SECONDS
            if _pid_running(int(match["pid"])):
                continue
        else:
            match = _OLD_TEMP_NAME.match(entry.name)
            if match is None or match["target"] != target:
                continue
            stale = _OLD_TEMP_SECONDS
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < stale \
                    or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def atomic_write(path, writer):
    """Write a file so that readers see either the old file or the complete new one.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; its folder must exist.
    writer : callable
        ``writer(f)`` writes the content to the binary file object ``f`` (seekable).

    Raises
    ------
    TypeError
        `path` is not a str or path-like.
    FileNotFoundError
        The folder does not exist.
    IsADirectoryError
        `path` is a folder.
    ValueError
        `path` exists and is not a regular file (a device, FIFO or symbolic link), which the
        final rename would replace.
    PermissionError, OSError
        The folder is read-only or the write fails (disk full, ...); the message names the
        path. In every failure the temporary file is removed and an existing file at `path`
        is unchanged. Exceptions raised by `writer` propagate after the same cleanup.

    Notes
    -----
    mkstemp in the target folder (same file system, so the rename is atomic), named
    ``.NAME.PID.XXXXXXXX.tmp`` -> write -> flush -> fsync -> os.replace -> fsync of the
    folder. A new file gets mode 0o644; a replaced file keeps its mode. Before writing, the
    temporary files that killed writers left in the folder are removed
    (:func:`remove_stale_temporaries`).
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path!r}: the folder {folder!r} "
                                "does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path!r}: it is a folder")
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        # os.replace would put a regular file in place of a device, FIFO or the link itself
        raise ValueError(f"cannot write {path!r}: it exists and is not a regular file "
                         "(a device, pipe or symbolic link); give a plain file name")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o644
    remove_stale_temporaries(folder, os.path.basename(path))
    try:
        # the pid in the name lets a later save tell a killed writer's leftover (see
        # remove_stale_temporaries) from a file another process is still writing
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.",
                                   suffix=".tmp", dir=folder)
    except OSError as exc:
        # OSError(errno, msg) builds the matching subclass (PermissionError for EACCES)
        raise OSError(exc.errno, f"cannot write {path!r}: cannot create a file in {folder!r} "
                      f"({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError,
                                                             IsADirectoryError)):
            exc.add_note(f"while writing {path!r}; the previous file, if any, is unchanged")
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    # makes the rename itself durable; not every platform/file system allows it
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _array_spec(arr):
    return {"shape": [int(s) for s in arr.shape], "dtype": arr.dtype.str}


def _write_container(path, manifest, arrays):
    """Complete `manifest` (arrays, sha256) and write it with `arrays` atomically."""
    for name, arr in arrays.items():
        if not _MEMBER_NAME.match(name) or name == _MANIFEST:
            raise ValueError(f"array name {name!r} is not a valid member name")
        if arr.dtype.str not in _ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {arr.dtype}, which a model file cannot "
                            "hold")
    manifest = dict(manifest)
    manifest["arrays"] = {name: _array_spec(arr) for name, arr in sorted(arrays.items())}
    manifest.pop("sha256", None)
    try:
        manifest["sha256"] = buffers_digest(manifest, arrays)
        text = _canonical_json(manifest).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot save to {os.fspath(path)!r}: the manifest is not JSON-ready "
                        f"({exc})") from None
    manifest_array = np.frombuffer(text, dtype=np.uint8)

    def writer(f):
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            for name, arr in [(_MANIFEST, manifest_array), *sorted(arrays.items())]:
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arr),
                                              allow_pickle=False)

    atomic_write(path, writer)
    return manifest


def _check_spec(name, spec):
    if not isinstance(spec, dict) or set(spec) != {"shape", "dtype"}:
        raise ModelFileError(f"manifest entry arrays[{name!r}] must be {{'shape', 'dtype'}}, "
                             f"got {spec!r}")
    shape, dtype = spec["shape"], spec["dtype"]
    if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ModelFileError(f"manifest gives array {name!r} the shape {shape!r}; expected a "
                             "list of non-negative integers")
    if isinstance(dtype, str) and "O" in dtype:
        raise ModelFileError(f"manifest gives array {name!r} the dtype {dtype!r}: an object "
                             "array holds pickled Python objects, and minscale never loads "
                             "pickles")
    if dtype not in _ALLOWED_DTYPES:
        raise ModelFileError(f"manifest gives array {name!r} the dtype {dtype!r}; expected one "
                             f"of {sorted(_ALLOWED_DTYPES)}")
    return tuple(shape), _ALLOWED_DTYPES[dtype]


def _read_member(zf, name, shape, dtype, file_size):
    """Parse one .npy member without unpickling; refuse anything unexpected."""
    info = zf.getinfo(name + ".npy")
    if info.flag_bits & 0x1:
        raise ModelFileError(f"member {name!r} is encrypted; minscale does not write that")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ModelFileError(f"member {name!r} is compressed (method {info.compress_type}); "
                             "minscale model files store arrays uncompressed")
    if info.file_size > file_size:
        raise ModelFileError(f"member {name!r} claims {info.file_size} bytes, more than the "
                             f"whole file ({file_size} bytes): truncated or damaged")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ModelFileError(f"member {name!r} has .npy version {version}; expected 1.0 "
                                 "or 2.0")
        if got_dtype.hasobject:
            raise ModelFileError(f"member {name!r} is an object array (pickled Python "
                                 "objects); minscale never loads pickles")
        if fortran:
            raise ModelFileError(f"member {name!r} is stored in Fortran order; minscale "
                                 "writes C order")
        if got_dtype != dtype or got_dtype.str != dtype.str:
            raise ModelFileError(f"array {name!r} has dtype {got_dtype.str}, the manifest says "
                                 f"{dtype.str}")
        if tuple(got_shape) != shape:
            raise ModelFileError(f"array {name!r} has shape {tuple(got_shape)}, the manifest "
                                 f"says {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise ModelFileError(f"array {name!r} needs {nbytes} bytes but its member holds "
                                 f"{info.file_size}: truncated or damaged")
        arr = np.empty(shape, dtype=dtype)
        # read in chunks straight into the array: one copy of the data in memory, not two
        view = memoryview(arr.reshape(-1).view(np.uint8))
        pos = 0
        while pos < nbytes:
            got = f.readinto(view[pos:pos + _CHUNK_BYTES])
            if not got:
                raise ModelFileError(f"array {name!r} is truncated: {pos} of {nbytes} bytes")
            pos += got
        # reading to the member's end makes zipfile check its CRC-32
        if f.read():
            raise ModelFileError(f"member {name!r} has bytes after its array data")
    if dtype == np.bool_ and arr.size and arr.view(np.uint8).max() > 1:
        raise ModelFileError(f"bool array {name!r} holds bytes other than 0 and 1")
    return arr


def _sniff(head, path):
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return
    if head[:6] == b"\x93NUMPY":
        raise ModelFileError(f"{path!r} is a single .npy array, not a minscale .npz model file")
    if head[:1] == b"\x80":
        raise ModelFileError(f"{path!r} looks like a Python pickle; minscale never loads "
                             "pickles")
    raise ModelFileError(f"{path!r} is not a minscale model file: not an .npz (zip) archive "
                         f"(starts with {head[:8]!r})")


def _read_container(path):
    """Open, parse and verify a model file; return (manifest, arrays)."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        _sniff(f.read(8), path)
        f.seek(0)
        try:
            return _parse(f, path, file_size)
        except ModelFileError as exc:
            raise _naming(exc, path) from exc.__cause__
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise ModelFileError(f"{path!r} is truncated or damaged: {exc}") from exc
        except Exception as exc:
            # untrusted bytes can upset zipfile/numpy/json in many ways; all mean a bad file
            raise ModelFileError(f"{path!r} is not a valid minscale model file: "
                                 f"{type(exc).__name__}: {exc}") from exc


def _naming(exc, path):
    """`exc` if its message names the file `path`, else a ModelFileError that starts with it.

    Errors raised deep in the parsing (a member, a manifest field) know only their part of
    the file; the user needs to know which file.
    """
    text = str(exc)
    if repr(path) in text or str(path) in text:
        return exc
    return ModelFileError(f"{path!r}: {text}")


def _parse(f, path, file_size):
    try:
        # the directory is checked before any member is read: members that overlap or lie
        # beyond the file could otherwise claim the same bytes many times over
        _npz.zip_members(f, file_size, repr(path))
    except _npz.ArchiveError as exc:
        raise ModelFileError(str(exc)) from None
    with zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        if len(names) != len(set(names)):
            raise ModelFileError(f"{path!r} holds the same member twice")
        if any(not n.endswith(".npy") for n in names):
            raise ModelFileError(f"{path!r} holds members that are not .npy arrays: "
                                 f"{[n for n in names if not n.endswith('.npy')][:5]}")
        members = {n[:-4] for n in names}
        if _MANIFEST not in members:
            raise ModelFileError(f"{path!r} has no manifest: not a minscale model file")
        info = zf.getinfo(_MANIFEST + ".npy")
        if info.file_size > _MAX_MANIFEST_BYTES:
            raise ModelFileError(f"{path!r}: the manifest claims {info.file_size} bytes, more "
                                 f"than the limit {_MAX_MANIFEST_BYTES}")
        with zf.open(info) as m:
            version = np.lib.format.read_magic(m)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise ModelFileError(f"{path!r}: manifest has .npy version {version}")
            shape, _, dtype = reader(m)
        if dtype != np.uint8 or len(shape) != 1:
            raise ModelFileError(f"{path!r}: the manifest must be a 1-D uint8 array, got "
                                 f"{dtype} {shape}")
        raw = _read_member(zf, _MANIFEST, tuple(shape), np.dtype(np.uint8), file_size)
        manifest = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_reject_constant)
        _check_header(manifest, path)
        specs = manifest["arrays"]
        if set(specs) != members - {_MANIFEST}:
            missing = sorted(set(specs) - members)
            extra = sorted(members - {_MANIFEST} - set(specs))
            raise ModelFileError(f"{path!r}: members disagree with the manifest (missing "
                                 f"{missing[:5]}, not listed {extra[:5]})")
        arrays = {}
        for name in sorted(specs):
            shape, dtype = _check_spec(name, specs[name])
            arrays[name] = _read_member(zf, name, shape, dtype, file_size)
    digest = buffers_digest(manifest, arrays)
    if digest != manifest["sha256"]:
        raise ModelFileError(f"{path!r} fails its SHA-256 check (stored "
                             f"{manifest['sha256'][:12]}..., computed {digest[:12]}...): the "
                             "file was altered or damaged")
    return manifest, arrays


def _reject_constant(name):
    raise ModelFileError(f"the manifest contains {name}, which strict JSON does not allow")


def _check_header(manifest, path):
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path!r}: the manifest must be a JSON object, got "
                             f"{type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path!r}: format is {manifest.get('format')!r}, expected "
                             f"{FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ModelFileError(f"{path!r} has format version {version!r}; this minscale reads "
                             f"version {FORMAT_VERSION} only (a newer minscale wrote it?)")
    if not isinstance(manifest.get("arrays"), dict):
        raise ModelFileError(f"{path!r}: manifest['arrays'] must be an object")
    sha = manifest.get("sha256")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ModelFileError(f"{path!r}: manifest['sha256'] must be 64 hex digits, got {sha!r}")


def read_manifest(path):
    """The verified manifest of a model or checkpoint file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        The JSON manifest (see the module docstring); the file's buffers are read and
        verified against it, then dropped.

    Raises
    ------
    ModelFileError
        Damaged, forged or unknown file content.
    FileNotFoundError, IsADirectoryError, PermissionError
        Problems with the path.
    """
    return _read_container(path)[0]


# ------------------------------------------------------------------------------------------
# Sequential <-> manifest + arrays


def _plain(obj):
    """`obj` with NumPy scalars as Python scalars and tuples as lists (for JSON)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _library_version():
    from .. import __version__
    return __version__


def _optimizer_payload(optimizer, arrays):
    if optimizer is None:
        return None
    from .. import optim
    try:
        config = _plain(optim.serialize(optimizer))
        _canonical_json(config)
    except (TypeError, ValueError, AttributeError):
        config = None  # e.g. a custom schedule: the state is kept, the config cannot be
    buffers = optimizer.state_arrays() if hasattr(optimizer, "state_arrays") else {}
    for name, buf in sorted(buffers.items()):
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"optimizer buffer name {name!r} cannot be stored")
        arrays[f"optimizer/{name}"] = np.ascontiguousarray(buf)
    return {"class": type(optimizer).__name__, "config": config,
            "iterations": int(getattr(optimizer, "iterations", 0)), "arrays": sorted(buffers)}


def _sequential_payload(model):
    from ..model import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a minscale Sequential, got {type(model).__name__}")
    if not model.built:
        raise ValueError("model is not built: give input_dim or train it before saving")
    arrays = {"params": model.params, "mask": model.mask}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "kind": "Sequential",
        "config": _plain(model.get_config()),
        "dtype": model.dtype.name,
        "compile": {"loss": model.loss, "reduction": model.reduction,
                    "metrics": list(model.metrics)},
        "optimizer": _optimizer_payload(model.optimizer, arrays),
        "state": encode_state(model.state, arrays),
        "summary": {"n_params": model.count_params(), "sparsity": model.sparsity()},
        "checkpoint": None,
    }
    observers = _qat_observers(model)
    manifest["qat_observers"] = None if observers is None else \
        encode_state(observers, arrays, "QAT observer ranges")
    return manifest, arrays


def _need(mapping, key, kind, where):
    if not isinstance(mapping, dict) or key not in mapping:
        raise ModelFileError(f"{where} misses the field {key!r}")
    value = mapping[key]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ModelFileError(f"{where}[{key!r}] must be {getattr(kind, '__name__', kind)}, got "
                             f"{value!r}")
    return value


def _check_array(arrays, name, shape, dtype, path):
    arr = arrays.get(name)
    if arr is None:
        raise ModelFileError(f"{path!r} misses the array {name!r}")
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ModelFileError(f"{path!r}: array {name!r} has shape {arr.shape} and dtype "
                             f"{arr.dtype}; the architecture needs {tuple(shape)} "
                             f"{np.dtype(dtype)}")
    return arr


def _decode_sequential(manifest, arrays, path):
    """Build a Sequential from a verified manifest; return (model, optimizer_state)."""
    from .. import optim
    from ..model import Sequential
    config = _need(manifest, "config", dict, "manifest")
    dtype = _need(manifest, "dtype", str, "manifest")
    if dtype not in ("float32", "float64") or config.get("dtype") != dtype:
        raise ModelFileError(f"{path!r}: dtype {dtype!r} (config says "
                             f"{config.get('dtype')!r}); expected 'float32' or 'float64'")
    try:
        n_params = expected_param_count(config)
    except ValueError as exc:
        raise ModelFileError(f"{path!r}: bad architecture: {exc}") from None
    params = _check_array(arrays, "params", (n_params,), dtype, path)
    mask = _check_array(arrays, "mask", (n_params,), np.bool_, path)
    for i, lc in enumerate(config["layers"]):
        allowed = {"units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
                   "alpha"}
        if set(lc) - allowed:
            raise ModelFileError(f"{path!r}: config['layers'][{i}] has unknown fields "
                                 f"{sorted(set(lc) - allowed)}")
    seed = config.get("seed", 0)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ModelFileError(f"{path!r}: config['seed'] must be a non-negative int or null, "
                             f"got {seed!r}")
    try:
        model = Sequential.from_config(config)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path!r}: bad architecture: {exc}") from None
    model.params[...] = params
    model.mask[...] = mask
    compiled = _need(manifest, "compile", dict, "manifest")
    reduction = _need(compiled, "reduction", str, "manifest['compile']")
    metrics = _need(compiled, "metrics", list, "manifest['compile']")
    loss = _need(compiled, "loss", str, "manifest['compile']")
    opt = manifest.get("optimizer")
    opt_state = None
    optimizer = "adam"
    if opt is not None:
        if not isinstance(opt, dict):
            raise ModelFileError(f"{path!r}: manifest['optimizer'] must be an object or null")
        iterations = _need(opt, "iterations", int, "manifest['optimizer']")
        names = _need(opt, "arrays", list, "manifest['optimizer']")
        cls = _need(opt, "class", str, "manifest['optimizer']")
        if iterations < 0 or not all(isinstance(n, str) for n in names):
            raise ModelFileError(f"{path!r}: bad optimizer state {opt!r}")
        buffers = {n: _check_array(arrays, f"optimizer/{n}", (n_params,), dtype, path)
                   for n in names}
        config_opt = opt.get("config")
        if config_opt is not None:
            optimizer = optim.deserialize(config_opt)
        opt_state = {"class": cls, "config": config_opt, "iterations": iterations,
                     "arrays": buffers}
    try:
        model.compile(loss=loss, optimizer=optimizer, reduction=reduction, metrics=metrics)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path!r}: bad compile settings: {exc}") from None
    if opt is None or opt.get("config") is None:
        # never compiled, or its class could not be rebuilt from the file
        model.optimizer = None
    if opt_state is not None and model.optimizer is not None:
        _set_optimizer_state(model.optimizer, model.params, opt_state)
    state = decode_state(manifest.get("state", {}), arrays)
    if not isinstance(state, dict):
        raise ModelFileError(f"{path!r}: manifest['state'] must be an object")
    model.state = state
    if "quantization" in state:
        _install_qat(model, decode_state(manifest.get("qat_observers"), arrays), path)
    return model, opt_state


def _set_optimizer_state(optimizer, params, opt_state):
    optimizer.set_state(opt_state["iterations"],
                        {name: np.asarray(arr, dtype=params.dtype)
                         for name, arr in opt_state["arrays"].items()})


def save(model, path):
    """Save a model to one ``.npz`` file, atomically, without pickle.

    Parameters
    ----------
    model : Sequential, prune.SparseModel or quant.QuantizedModel
        A Sequential must be built; its architecture, parameters, masks, compile settings,
        optimizer config and state (counter and buffers) and ``model.state`` are saved, and
        ``model.state`` may hold None, bool, int, float, str, ndarrays, lists, tuples and
        dicts with str keys. A SparseModel is saved as its CSR arrays and biases.
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
    quant_cls = _quantized_model_class()
    if quant_cls is not None and isinstance(model, quant_cls):
        manifest, arrays = _quantized_payload(model)
    elif type(model).__name__ == "SparseModel" and _is_sparse_model(model):
        manifest, arrays = _sparse_payload(model)
    else:
        manifest, arrays = _sequential_payload(model)
    return _write_container(path, manifest, arrays)


def load(path):
    """Load a model (or the model inside a checkpoint) saved by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Sequential, prune.SparseModel or quant.QuantizedModel
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
    manifest, arrays = _read_container(path)
    return _decode_model(manifest, arrays, os.fspath(path))


def load_with_manifest(path):
    """Load a model and return it with its verified manifest (one read of the file).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model : Sequential, prune.SparseModel or quant.QuantizedModel
    manifest : dict

    Raises
    ------
    As :func:`load`.
    """
    manifest, arrays = _read_container(path)
    return _decode_model(manifest, arrays, os.fspath(path)), manifest


def _check_finite_parameters(arrays, path):
    """Refuse NaN or infinite values in a model's parameters (``params``, ``layers/...``,
    ``qparams/...``): such a model predicts NaN, and evaluating it would report ``loss nan``
    as if it were a result. Optimizer buffers, state and history are not checked."""
    for name in sorted(arrays):
        arr = arrays[name]
        if arr.dtype.kind != "f" or not (name == "params" or name.startswith(("layers/",
                                                                               "qparams/"))):
            continue
        finite = np.isfinite(arr.reshape(-1))
        if not finite.all():
            i = int(np.argmin(finite))
            value = float(arr.reshape(-1)[i])
            raise ModelFileError(f"{path!r}: array {name!r} holds {value!r} at index {i} "
                                 f"({arr.size - int(finite.sum())} non-finite values): "
                                 "a model with non-finite parameters predicts only NaN (did "
                                 "the training that wrote it diverge?)")


def _decode_model(manifest, arrays, path):
    _check_finite_parameters(arrays, path)
    try:
        kind = manifest.get("kind")
        if kind == "Sequential":
            model, _ = _decode_sequential(manifest, arrays, path)
            if manifest.get("checkpoint") is not None:
                model.history = _decode_progress(manifest, arrays, path).history
            return model
        if kind == "SparseModel":
            return _decode_sparse(manifest, arrays, path)
        if kind == "QuantizedModel":
            return _decode_quantized(manifest, arrays, path)
        raise ModelFileError(f"{path!r}: unknown model kind {kind!r}; expected 'Sequential', "
                             "'SparseModel' or 'QuantizedModel'")
    except ModelFileError as exc:
        raise _naming(exc, path) from exc.__cause__
    except Exception as exc:
        raise ModelFileError(f"{path!r}: the manifest does not describe a valid model: "
                             f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------
# sparse (CSR) models


def _is_sparse_model(model):
    from ..prune import SparseModel
    return isinstance(model, SparseModel)


def _header(kind):
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "library_version": _library_version(), "kind": kind, "checkpoint": None}


def _sparse_payload(model):
    """Manifest and arrays of a :class:`minscale.prune.SparseModel` (CSR per layer)."""
    arrays, layers = {}, []
    for i, layer in enumerate(model.layers):
        W = layer.W
        arrays[f"layers/{i}/data"] = np.ascontiguousarray(W.data)
        # CSR index arrays may be int32 or int64 (scipy picks); stored as they are
        arrays[f"layers/{i}/indices"] = np.ascontiguousarray(W.indices)
        arrays[f"layers/{i}/indptr"] = np.ascontiguousarray(W.indptr)
        if layer.b is not None:
            arrays[f"layers/{i}/b"] = np.ascontiguousarray(layer.b)
        layers.append({"shape": [int(s) for s in W.shape], "nnz": int(W.nnz),
                       "use_bias": layer.b is not None, "activation": layer.activation,
                       "alpha": float(layer.alpha)})
    manifest = _header("SparseModel")
    manifest.update({"dtype": model.dtype.name, "input_dim": int(model.input_dim),
                     "layers": layers})
    return manifest, arrays


def _check_csr(i, shape, nnz, data, indices, indptr, path):
    d_in, d_out = shape
    if data.shape != (nnz,) or indices.shape != (nnz,) or indptr.shape != (d_in + 1,):
        raise ModelFileError(f"{path!r}: layer {i} CSR arrays have shapes {data.shape}, "
                             f"{indices.shape}, {indptr.shape}; expected ({nnz},), ({nnz},), "
                             f"({d_in + 1},)")
    if indices.dtype.kind != "i" or indptr.dtype.kind != "i":
        raise ModelFileError(f"{path!r}: layer {i} CSR indices must be signed integers")
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise ModelFileError(f"{path!r}: layer {i} CSR indptr is not a non-decreasing "
                             f"0..{nnz} offset vector")
    if nnz and (indices.min() < 0 or indices.max() >= d_out):
        raise ModelFileError(f"{path!r}: layer {i} CSR column indices leave [0, {d_out})")


def _decode_sparse(manifest, arrays, path):
    from scipy import sparse

    from ..kernels import ACTIVATION_CODES
    from ..prune import SparseDense, SparseModel
    dtype = _need(manifest, "dtype", str, "manifest")
    if dtype not in ("float32", "float64"):
        raise ModelFileError(f"{path!r}: dtype {dtype!r}; expected 'float32' or 'float64'")
    d = _need(manifest, "input_dim", int, "manifest")
    specs = _need(manifest, "layers", list, "manifest")
    if d < 1 or not specs:
        raise ModelFileError(f"{path!r}: a sparse model needs input_dim >= 1 and layers")
    layers = []
    for i, spec in enumerate(specs):
        where = f"manifest['layers'][{i}]"
        shape = _need(spec, "shape", list, where)
        nnz = _need(spec, "nnz", int, where)
        use_bias = _need(spec, "use_bias", bool, where)
        activation = _need(spec, "activation", str, where)
        alpha = _need(spec, "alpha", (int, float), where)
        if len(shape) != 2 or shape[0] != d or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ModelFileError(f"{path!r}: layer {i} shape {shape!r}; expected [{d}, d_out]")
        if activation not in ACTIVATION_CODES or not alpha > 0:
            raise ModelFileError(f"{path!r}: layer {i} activation {activation!r} / alpha "
                                 f"{alpha!r} not supported")
        data = arrays.get(f"layers/{i}/data")
        indices = arrays.get(f"layers/{i}/indices")
        indptr = arrays.get(f"layers/{i}/indptr")
        if data is None or indices is None or indptr is None or data.dtype != np.dtype(dtype):
            raise ModelFileError(f"{path!r}: layer {i} misses its CSR arrays or has the wrong "
                                 "dtype")
        _check_csr(i, shape, nnz, data, indices, indptr, path)
        b = None
        if use_bias:
            b = _check_array(arrays, f"layers/{i}/b", (shape[1],), dtype, path)
        W = sparse.csr_array((data, indices, indptr), shape=tuple(shape))
        layers.append(SparseDense(W=W, b=b, activation=activation, alpha=float(alpha)))
        d = shape[1]
    return SparseModel(layers, manifest["input_dim"], dtype)


# ------------------------------------------------------------------------------------------
# quantized models


def _quantized_model_class():
    try:
        from .. import quant
    except ImportError:
        return None
    return getattr(quant, "QuantizedModel", None)


_HEADER_KEYS = ("format", "format_version", "library_version", "kind", "checkpoint", "arrays",
                "sha256")


def _quantized_payload(model):
    """Manifest and arrays of a :class:`minscale.quant.QuantizedModel`.

    The model's own ``to_payload()`` gives the fields (weight spec, activations, per-layer
    shapes, activations, frac_bits, bias kind, state) and the arrays (integer weight codes in
    their code dtype, float64 scales, int32 or float64 biases, activation scales and zero
    points); they are stored as they are, so codes keep their integer dtypes and scales stay
    float.
    """
    fields, arrays = model.to_payload()
    clash = set(fields) & set(_HEADER_KEYS)
    if clash:
        raise ValueError(f"QuantizedModel.to_payload() fields {sorted(clash)} collide with the "
                         "manifest header")
    manifest = _header("QuantizedModel")
    manifest.update(_plain(fields))
    return manifest, {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def _decode_quantized(manifest, arrays, path):
    from ..kernels import ACTIVATION_CODES
    quant_cls = _quantized_model_class()
    if quant_cls is None:
        raise ModelFileError(f"{path!r} holds a quantized model, which this minscale cannot "
                             "read (no minscale.quant.QuantizedModel)")
    layers = _need(manifest, "layers", list, "manifest")
    _need(manifest, "input_dim", int, "manifest")
    dtype = _need(manifest, "dtype", str, "manifest")
    if dtype not in ("float32", "float64"):
        raise ModelFileError(f"{path!r}: dtype {dtype!r}; expected 'float32' or 'float64'")
    for i, lf in enumerate(layers):
        where = f"manifest['layers'][{i}]"
        activation = _need(lf, "activation", str, where)
        alpha = _need(lf, "alpha", (int, float), where)
        # the activation name picks a function by name: only the known ones are allowed
        if activation not in ACTIVATION_CODES or isinstance(alpha, bool) or not alpha > 0:
            raise ModelFileError(f"{path!r}: layer {i} activation {activation!r} / alpha "
                                 f"{alpha!r} not supported")
    fields = {k: v for k, v in manifest.items() if k not in _HEADER_KEYS}
    try:
        return quant_cls.from_payload(fields, arrays)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ModelFileError(f"{path!r}: the quantized model does not fit its manifest: "
                             f"{type(exc).__name__}: {exc}") from None


def _qat_observers(model):
    """Ranges of the QAT activation observers, per layer (None where a layer has none)."""
    out = []
    for layer in model.layers:
        obs = getattr(layer.output_quantizer, "observer", None)
        out.append(None if obs is None else [obs.min_val, obs.max_val])
    return out if any(o is not None for o in out) else None


def _install_qat(model, observers, path):
    """Re-install QAT hooks from ``model.state["quantization"]`` and set observer ranges."""
    from ..quant import prepare_qat
    prepare_qat(model, model.state["quantization"])
    if observers is None:
        return
    if not isinstance(observers, list) or len(observers) != len(model.layers):
        raise ModelFileError(f"{path!r}: qat_observers must list one entry per layer")
    for i, (layer, rng) in enumerate(zip(model.layers, observers)):
        obs = getattr(layer.output_quantizer, "observer", None)
        if rng is None:
            continue
        if obs is None or not (isinstance(rng, list) and len(rng) == 2):
            raise ModelFileError(f"{path!r}: qat_observers[{i}] does not fit the QAT config")
        obs.min_val, obs.max_val = rng


# ------------------------------------------------------------------------------------------
# checkpoints


@dataclasses.dataclass
class TrainingProgress:
    """Where a training run stands, so that it can continue exactly.

    Attributes
    ----------
    epoch : int
        0-based epoch to continue in (== epochs when training finished).
    batch : int
        Index of the next batch of that epoch (0: the epoch has not begun; its order is
        drawn from the generator).
    loss_total : float
        The epoch's loss sum so far (see :func:`minscale.train.run`).
    order : ndarray of int64, shape (n,), or None
        The epoch's shuffled order when ``batch > 0`` and shuffling.
    rng_state : dict
        ``bit_generator.state`` of the shuffling generator after the epoch's order was drawn.
    history : train.History
    seed : int or None
        The ``seed`` argument of the run.
    batch_size : int
    shuffle : bool
    n_samples : int
    data_sha256 : str
        :func:`data_digest` of the training data.
    """

    epoch: int
    batch: int
    loss_total: float
    order: np.ndarray | None
    rng_state: dict
    history: object
    seed: int | None
    batch_size: int
    shuffle: bool
    n_samples: int
    data_sha256: str


def write_checkpoint(path, model, progress):
    """Save `model` and the run's `progress` atomically (one file, see :func:`save`).

    Parameters
    ----------
    path : str or os.PathLike
    model : Sequential
    progress : TrainingProgress

    Returns
    -------
    dict
        The manifest written.

    Raises
    ------
    As :func:`save`.
    """
    manifest, arrays = _sequential_payload(model)
    history = progress.history
    keys = list(history.history)
    for i, key in enumerate(keys):
        arrays[f"history/{i}"] = np.asarray(history.history[key], dtype=np.float64)
    if progress.order is not None:
        arrays["checkpoint/order"] = np.ascontiguousarray(progress.order, dtype=np.int64)
    manifest["checkpoint"] = {
        "epoch": int(progress.epoch), "batch": int(progress.batch),
        "step": int(model.optimizer.iterations) if model.optimizer is not None else 0,
        "loss_total": float(progress.loss_total), "rng_state": progress.rng_state,
        "seed": None if progress.seed is None else int(progress.seed),
        "batch_size": int(progress.batch_size), "shuffle": bool(progress.shuffle),
        "n_samples": int(progress.n_samples), "data_sha256": progress.data_sha256,
        "history_keys": keys, "history_epoch": [int(e) for e in history.epoch],
    }
    return _write_container(path, manifest, arrays)


def _check_rng_state(state, path):
    if not isinstance(state, dict) or state.get("bit_generator") not in _BIT_GENERATORS:
        raise ModelFileError(f"{path!r}: checkpoint rng_state must name one of "
                             f"{_BIT_GENERATORS}, got {state!r:.80}")
    try:
        getattr(np.random, state["bit_generator"])().state = state
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ModelFileError(f"{path!r}: bad checkpoint rng_state: {exc}") from None
    return state


def _decode_progress(manifest, arrays, path):
    from ..train import History
    ck = _need(manifest, "checkpoint", dict, "manifest")
    where = "manifest['checkpoint']"
    epoch = _need(ck, "epoch", int, where)
    batch = _need(ck, "batch", int, where)
    batch_size = _need(ck, "batch_size", int, where)
    n_samples = _need(ck, "n_samples", int, where)
    loss_total = _need(ck, "loss_total", (int, float), where)
    shuffle = _need(ck, "shuffle", bool, where)
    data_sha = _need(ck, "data_sha256", str, where)
    keys = _need(ck, "history_keys", list, where)
    epochs_done = _need(ck, "history_epoch", list, where)
    seed = ck.get("seed")
    if epoch < 0 or batch < 0 or batch_size < 1 or n_samples < 1 \
            or batch > math.ceil(n_samples / batch_size):
        raise ModelFileError(f"{path!r}: inconsistent checkpoint position epoch {epoch}, batch "
                             f"{batch}, batch_size {batch_size}, n_samples {n_samples}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ModelFileError(f"{path!r}: checkpoint seed must be an int or null, got {seed!r}")
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys) \
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in epochs_done):
        raise ModelFileError(f"{path!r}: bad checkpoint history fields")
    rng_state = _check_rng_state(ck.get("rng_state"), path)
    history = History()
    history.history = {}
    for i, key in enumerate(keys):
        arr = arrays.get(f"history/{i}")
        if arr is None or arr.ndim != 1 or arr.dtype != np.float64:
            raise ModelFileError(f"{path!r}: history entry {key!r} is missing or not a float64 "
                                 "vector")
        history.history[key] = arr.tolist()
    history.epoch = list(epochs_done)
    order = arrays.get("checkpoint/order")
    if order is not None:
        if order.shape != (n_samples,) or order.dtype != np.int64 \
                or not np.array_equal(np.sort(order), np.arange(n_samples)):
            raise ModelFileError(f"{path!r}: checkpoint order is not a permutation of "
                                 f"{n_samples} rows")
    elif shuffle and batch > 0:
        raise ModelFileError(f"{path!r}: a mid-epoch checkpoint of a shuffled run needs its "
                             "order")
    return TrainingProgress(epoch=epoch, batch=batch, loss_total=float(loss_total), order=order,
                            rng_state=rng_state, history=history, seed=seed,
                            batch_size=batch_size, shuffle=shuffle, n_samples=n_samples,
                            data_sha256=data_sha)


def read_checkpoint(path):
    """Read a checkpoint written by :func:`write_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    model : Sequential
        As :func:`load` returns it.
    progress : TrainingProgress
    optimizer_state : dict or None
        ``{"class", "config", "iterations", "arrays"}`` as stored (kept apart because an
        optimizer with a custom schedule cannot be rebuilt from its config).

    Raises
    ------
    ModelFileError
        Everything :func:`load` raises it for, and a file without a checkpoint section.
    FileNotFoundError, IsADirectoryError, PermissionError
    """
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    manifest, arrays = _read_container(path)
    if manifest.get("checkpoint") is None:
        raise ModelFileError(f"{path!r} is a model file without a checkpoint section: nothing "
                             "to resume (save it from fit(..., checkpoint=...))")
    _check_finite_parameters(arrays, path)
    try:
        if manifest.get("kind") != "Sequential":
            raise ModelFileError(f"{path!r}: checkpoints hold Sequential models, got "
                                 f"{manifest.get('kind')!r}")
        model, opt_state = _decode_sequential(manifest, arrays, path)
        progress = _decode_progress(manifest, arrays, path)
    except ModelFileError as exc:
        raise _naming(exc, path) from exc.__cause__
    except Exception as exc:
        raise ModelFileError(f"{path!r}: the manifest does not describe a valid checkpoint: "
                             f"{type(exc).__name__}: {exc}") from exc
    model.history = progress.history
    return model, progress, opt_state


def _architecture(config):
    return {k: v for k, v in config.items() if k != "seed"}


def restore_checkpoint(model, path, X, y, batch_size, shuffle, seed, epochs=None):
    """Load a checkpoint into `model` for :func:`minscale.train.run` to continue from.

    Parameters
    ----------
    model : Sequential
        Built and compiled like the checkpointed one: same architecture and dtype, same
        reduction and metrics, an optimizer of the same config (compared when both configs
        are serializable, else by class).
    path : str or os.PathLike
    X, y : ndarray
        The training data, validated; must be the checkpointed run's (SHA-256 compared).
    batch_size : int
    shuffle : bool
    seed : int or None
        Must equal the checkpointed run's arguments: otherwise the continued run could not
        equal an uninterrupted one.
    epochs : int, optional
        The total number of epochs the continued run reaches; must not lie before the
        checkpoint's position.

    Returns
    -------
    TrainingProgress

    Raises
    ------
    ModelFileError
        A damaged or foreign file (see :func:`load`).
    ValueError
        The model, data or arguments differ from the checkpointed run, naming what differs;
        `model` is then left untouched.
    """
    from .. import optim
    ck_model, progress, opt_state = read_checkpoint(path)
    if _architecture(ck_model.get_config()) != _architecture(model.get_config()):
        raise ValueError(f"resume={os.fspath(path)!r} holds the architecture "
                         f"{_architecture(ck_model.get_config())}, the model is "
                         f"{_architecture(model.get_config())}")
    if (ck_model.reduction, list(ck_model.metrics)) != (model.reduction, list(model.metrics)):
        raise ValueError(f"resume: the checkpoint was compiled with reduction "
                         f"{ck_model.reduction!r} and metrics {ck_model.metrics}, the model "
                         f"with {model.reduction!r} and {model.metrics}")
    for name, ours, theirs in (("batch_size", batch_size, progress.batch_size),
                               ("shuffle", bool(shuffle), progress.shuffle),
                               ("seed", seed, progress.seed),
                               ("the number of training rows", X.shape[0], progress.n_samples)):
        if ours != theirs:
            raise ValueError(f"resume: {name} is {ours!r} but the checkpointed run used "
                             f"{theirs!r}; an exact continuation needs the same value")
    if epochs is not None and (progress.epoch > epochs
                               or (progress.epoch == epochs and progress.batch > 0)):
        raise ValueError(f"resume: epochs is {epochs} but the checkpoint {os.fspath(path)!r} "
                         f"is already in epoch {progress.epoch}; epochs counts the total to "
                         "reach")
    if data_digest(X, y) != progress.data_sha256:
        raise ValueError("resume: the training data (X, y) differ from the checkpointed run's "
                         "(SHA-256 mismatch)")
    if opt_state is None:
        raise ValueError("resume: the checkpoint holds no optimizer state")
    try:
        ours = optim.serialize(model.optimizer)
    except (TypeError, AttributeError):
        ours = None
    if opt_state["config"] is not None and ours is not None:
        if _canonical_json(ours) != _canonical_json(opt_state["config"]):
            raise ValueError(f"resume: the model's optimizer {ours} differs from the "
                             f"checkpoint's {opt_state['config']}")
    elif type(model.optimizer).__name__ != opt_state["class"]:
        raise ValueError(f"resume: the model's optimizer is a {type(model.optimizer).__name__}, "
                         f"the checkpoint's a {opt_state['class']}")
    ck_qat, our_qat = ck_model.state.get("quantization"), model.state.get("quantization")
    if ck_qat != our_qat:
        raise ValueError(f"resume: the checkpoint was trained with quantization {ck_qat}, this "
                         f"run has {our_qat}; pass the same quantization to fit")
    np.copyto(model.params, ck_model.params)
    np.copyto(model.mask, ck_model.mask)
    model.state = ck_model.state
    for ours, theirs in zip(model.layers, ck_model.layers):
        src = getattr(theirs.output_quantizer, "observer", None)
        dst = getattr(ours.output_quantizer, "observer", None)
        if src is not None and dst is not None:
            dst.min_val, dst.max_val = src.min_val, src.max_val
    _set_optimizer_state(model.optimizer, model.params, opt_state)
    return progress


# ------------------------------------------------------------------------------------------
# inspection


def layer_table(model):
    """Per-layer facts for ``minscale info``: shapes, parameters, sparsity, bits and bytes.

    Parameters
    ----------
    model : Sequential or quant.QuantizedModel

    Returns
    -------
    list of dict
        One per layer: ``index``, ``W_shape``, ``b_shape`` (or None), ``activation``,
        ``n_params``, ``sparsity`` (fraction of masked weights of W; for a quantized model
        the fraction of zero weight codes), ``bits`` (bits per stored weight) and
        ``nbytes`` (bytes of the layer's stored parameters: weights, bias and, when
        quantized, scales and zero points; masks not included).
    """
    quant_cls = _quantized_model_class()
    if quant_cls is not None and isinstance(model, quant_cls):
        return _quantized_layer_table(model)
    if _is_sparse_model(model):
        return _sparse_layer_table(model)
    rows = []
    sparsity = model.sparsity()["layers"]
    for i, (layer, (a, b)) in enumerate(zip(model.layers, model.layer_slices())):
        rows.append({"index": i, "W_shape": tuple(layer.W.shape),
                     "b_shape": None if layer.b is None else tuple(layer.b.shape),
                     "activation": layer.activation, "n_params": b - a,
                     "sparsity": sparsity[i], "bits": model.dtype.itemsize * 8,
                     "nbytes": (b - a) * model.dtype.itemsize})
    return rows


def _sparse_layer_table(model):
    rows = []
    for i, layer in enumerate(model.layers):
        W = layer.W
        n_b = 0 if layer.b is None else layer.b.size
        rows.append({"index": i, "W_shape": tuple(W.shape),
                     "b_shape": None if layer.b is None else tuple(layer.b.shape),
                     "activation": layer.activation, "n_params": int(W.nnz) + n_b,
                     "sparsity": 1.0 - W.nnz / (W.shape[0] * W.shape[1]),
                     "bits": W.data.dtype.itemsize * 8,
                     "nbytes": int(W.data.nbytes + W.indices.nbytes + W.indptr.nbytes
                                   + (0 if layer.b is None else layer.b.nbytes))})
    return rows


def _quantized_layer_table(model):
    return model.layer_table()
