"""The pickle-free container of a model file: npz members, a JSON manifest, a SHA-256.

Everything here is independent of what the file holds: writing (:func:`write_container`,
through :func:`atomic_write`, which also removes the temporary files of killed writers:
:func:`remove_stale_temporaries`), reading and verifying (:func:`read_container`: the zip
directory checked before any member is read, every ``.npy`` header parsed without unpickling,
shapes and dtypes against the manifest, the digest), the JSON form of ``model.state``
(:func:`encode_state`, :func:`decode_state`) and the checks a codec runs on manifest fields
(:func:`manifest_field`, :func:`manifest_array`). The layout of the file and the meaning of
each field are described in :mod:`minscale.io` and docs/model-format.md; the codecs that turn
models into fields and arrays live with the models (:mod:`minscale.io.codecs`).

References
----------
NumPy ``.npy`` format (NEP 1) and ``numpy.savez`` (the container); the write-to-temporary,
fsync, rename pattern relies on POSIX ``rename(2)`` atomicity, as Git's lock files do.
"""
from __future__ import annotations

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

from .. import _npz, sizes
from .._version import __version__

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "HEADER_KEYS", "ModelFileError", "STALE_TEMP_SECONDS",
    "atomic_write", "buffers_digest", "canonical_json", "check_finite_parameters",
    "data_digest", "decode_state", "encode_state", "expected_param_count", "header",
    "manifest_array", "manifest_dtype", "manifest_field", "name_the_file", "plain", "read_container",
    "read_manifest", "remove_stale_temporaries", "write_container",
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

#: the temporary file of atomic_write: "." target "." writer pid "." mkstemp's 8 characters ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>[0-9]{1,10})\.[a-z0-9_]{8}\.tmp$")

#: the same without a pid, as minscale wrote it before (recognised for the same target only)
_OLD_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")

#: a temporary file whose writer is not running is removed once unchanged for this long (s)
STALE_TEMP_SECONDS = 600

#: an old-style temporary file (no pid to ask) is removed once unchanged for this long (s)
_OLD_TEMP_SECONDS = 86400

#: manifest keys every kind shares; a codec's fields must not use them
HEADER_KEYS = ("format", "format_version", "library_version", "kind", "checkpoint", "arrays",
               "sha256")

#: P of a Sequential config (the old name of :func:`minscale.sizes.param_count`)
expected_param_count = sizes.param_count


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
# pure helpers: digests, state encoding, manifest fields


def canonical_json(obj):
    """`obj` as compact JSON with sorted keys, ASCII only, NaN refused (the digest's form).

    Raises
    ------
    TypeError, ValueError
        `obj` is not JSON-ready.
    """
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
    h.update(canonical_json({k: v for k, v in manifest.items() if k != "sha256"}).encode())
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


def plain(obj):
    """`obj` with NumPy scalars as Python scalars and tuples as lists (for JSON)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def header(kind):
    """The manifest fields every model file starts with.

    Parameters
    ----------
    kind : str
        The model's class name (its codec's key).

    Returns
    -------
    dict
        ``format``, ``format_version``, ``library_version``, ``kind`` and ``checkpoint``
        (None; a checkpoint writer fills it in).
    """
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "library_version": __version__, "kind": kind, "checkpoint": None}


def manifest_field(mapping, key, kind, where):
    """``mapping[key]``, checked to be of type `kind` (int excludes bool).

    Parameters
    ----------
    mapping : object
        A manifest (part); anything but a dict raises.
    key : str
    kind : type or tuple of types
    where : str
        How the message names `mapping` (``"manifest['compile']"``).

    Returns
    -------
    The value.

    Raises
    ------
    ModelFileError
        ``"<where> misses the field 'key'"`` or ``"<where>['key'] must be int, got ..."``.
    """
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


def manifest_dtype(manifest, path):
    """The float dtype a model file declares: ``manifest["dtype"]``, float32 or float64.

    Parameters
    ----------
    manifest : dict
    path : str
        Named in messages.

    Returns
    -------
    str
        ``"float32"`` or ``"float64"``.

    Raises
    ------
    ModelFileError
        The field is missing, not a string, or names another dtype.
    """
    dtype = manifest_field(manifest, "dtype", str, "manifest")
    if dtype not in ("float32", "float64"):
        raise ModelFileError(f"{path!r}: dtype {dtype!r}; expected 'float32' or 'float64'")
    return dtype


def manifest_array(arrays, name, shape, dtype, path):
    """``arrays[name]``, checked to have `shape` and `dtype`.

    Parameters
    ----------
    arrays : dict of str -> ndarray
    name : str
    shape : tuple of int
    dtype : dtype-like
    path : str
        The file, named in the message.

    Returns
    -------
    ndarray

    Raises
    ------
    ModelFileError
        The array is missing or its shape or dtype differ (what the architecture needs).
    """
    arr = arrays.get(name)
    if arr is None:
        raise ModelFileError(f"{path!r} misses the array {name!r}")
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ModelFileError(f"{path!r}: array {name!r} has shape {arr.shape} and dtype "
                             f"{arr.dtype}; the architecture needs {tuple(shape)} "
                             f"{np.dtype(dtype)}")
    return arr


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
    leaves ``.NAME.PID.<random>.tmp`` behind. Such a file is removed when it is a regular
    file of this user, its writer ``PID`` is not running on this machine, and it has not
    changed for ``STALE_TEMP_SECONDS`` (10 minutes; a writer that is still writing keeps
    touching it). A temporary file of a running writer is never removed. Files named as
    minscale named them before (``.NAME.<random>.tmp``, no pid) are removed for `target`'s
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
    ``.NAME.PID.<random>.tmp`` -> write -> flush -> fsync -> os.replace -> fsync of the
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


def write_container(path, manifest, arrays):
    """Complete `manifest` (``arrays``, ``sha256``) and write it with `arrays` atomically.

    Parameters
    ----------
    path : str or os.PathLike
    manifest : dict
        JSON-ready fields (a :func:`header` and a codec's fields).
    arrays : dict of str -> ndarray
        Members, named ``[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*``, of the dtypes a model file holds.

    Returns
    -------
    dict
        The manifest written (a copy of `manifest` with ``arrays`` and ``sha256``).

    Raises
    ------
    ValueError
        A bad member name.
    TypeError
        A dtype a model file cannot hold, or a manifest that is not JSON-ready.
    OSError
        As :func:`atomic_write`.
    """
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
        text = canonical_json(manifest).encode("utf-8")
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


def read_container(path):
    """Open, parse and verify a model file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    manifest : dict
    arrays : dict of str -> ndarray

    Raises
    ------
    ModelFileError
        Damaged, forged or unknown content (see :func:`minscale.io.load`).
    FileNotFoundError, IsADirectoryError, PermissionError
        Problems with the path.
    """
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
            raise name_the_file(exc, path) from exc.__cause__
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise ModelFileError(f"{path!r} is truncated or damaged: {exc}") from exc
        except Exception as exc:
            # untrusted bytes can upset zipfile/numpy/json in many ways; all mean a bad file
            raise ModelFileError(f"{path!r} is not a valid minscale model file: "
                                 f"{type(exc).__name__}: {exc}") from exc


def name_the_file(exc, path):
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
    return read_container(path)[0]


def check_finite_parameters(arrays, path):
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

