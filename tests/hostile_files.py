"""Small files that try to make a reader use far more memory than they hold.

Each generator writes a file of at most a few MB whose zip directory, .npy headers or deflate
streams claim much more: overlapping zip members, a deflate stream of zeros, a header
declaring 10**12 elements. The zip records are written by hand (PKWARE APPNOTE 4.3.7, 4.3.12,
4.3.16), so that the directory can say what a normal writer never would.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

import minscale

STORED, DEFLATED = 0, 8
#: the checkout whose minscale the tests imported; the child processes run the same one
ROOT = Path(minscale.__file__).resolve().parents[1]


def npy_header(shape, descr="<f8", fortran_order=False):
    """The bytes of a .npy version 1.0 header (magic included) for `shape` and `descr`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran_order,
                                               "shape": tuple(shape)})
    return buf.getvalue()


def _local_header(name, crc, csize, usize, method):
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, csize,
                       usize, len(name), 0) + name


def _central_entry(name, crc, csize, usize, method, offset):
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc,
                       csize, usize, len(name), 0, 0, 0, 0, 0, offset) + name


def _end_record(n, cd_size, cd_offset):
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, cd_size, cd_offset, 0)


def zip_bytes(members):
    """A zip archive of `members`, each laid out after the previous one.

    Parameters
    ----------
    members : list of dict
        ``name`` (str), ``data`` (the bytes as stored, compressed or not), and optionally
        ``method`` (0 stored, 8 deflated; default 0), ``usize`` (declared uncompressed size;
        default len(data)) and ``crc`` (default: CRC-32 of data, right for stored members).
    """
    body, central = bytearray(), bytearray()
    for m in members:
        name, data = m["name"].encode(), m["data"]
        method, usize = m.get("method", STORED), m.get("usize", len(data))
        crc = m.get("crc", zlib.crc32(data))
        central += _central_entry(name, crc, len(data), usize, method, len(body))
        body += _local_header(name, crc, len(data), usize, method) + data
    return bytes(body + central + _end_record(len(members), len(central), len(body)))


def deflate_zeros(nbytes, chunk=2**20):
    """A raw deflate stream of `nbytes` zero bytes, built without holding them in memory.

    A full flush ends a block on a byte boundary and resets the history, so one compressed
    chunk can be repeated; two bytes of an empty final block end the stream.
    """
    assert nbytes % chunk == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * (nbytes // chunk) + b"\x03\x00"


def deflated_member(name, header, n_zero_bytes, usize=None):
    """A deflated .npy member: `header` followed by `n_zero_bytes` zeros.

    `usize` is the uncompressed size the zip directory declares (default: the true one).
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    tail = deflate_zeros(n_zero_bytes)
    crc = zlib.crc32(header)
    zeros = bytes(2**20)
    for _ in range(n_zero_bytes // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    return {"name": name, "data": head + tail, "method": DEFLATED,
            "usize": len(header) + n_zero_bytes if usize is None else usize, "crc": crc}


def stored_npy(name, arr):
    """A stored member holding `arr` as numpy.save writes it."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return {"name": name, "data": buf.getvalue()}


# ------------------------------------------------------------------------------ model files

def overlapping_model(path, n_members=100, blob_bytes=3 * 2**20):
    """A model file whose `n_members` uint8 arrays all end in the same `blob_bytes` bytes.

    Layout: manifest, then local header k and .npy header k for each k, then the blob.
    Member k's data runs from its .npy header to the blob's end, so it contains the local
    headers of the members after it: every member is a valid stored array with a correct
    CRC-32, and together they claim about n_members * blob_bytes bytes. The SHA-256 in the
    manifest is wrong; a reader that reads every member before checking it holds them all.
    """
    names = [f"a{k}.npy".encode() for k in range(n_members)]
    # lengths from the back: member k's payload = everything after its .npy header
    payloads, headers, size = [], [], blob_bytes
    for name in reversed(names):
        header = npy_header((size,), "|u1")
        payloads.append(size)
        headers.append(header)
        size += len(header) + 30 + len(name)
    payloads.reverse()
    headers.reverse()
    buf = bytearray(size)  # local header 0 .. blob end; the blob stays zeros
    crcs, offsets, pos = [], [], 0
    for name, header in zip(names, headers):
        offsets.append(pos)
        pos += 30 + len(name) + len(header)
    view = memoryview(buf)
    crcs = [0] * n_members
    for k in reversed(range(n_members)):
        start = offsets[k] + 30 + len(names[k])
        buf[start:start + len(headers[k])] = headers[k]
        crcs[k] = zlib.crc32(view[start:])
        data_len = size - start
        buf[offsets[k]:start] = _local_header(names[k], crcs[k], data_len, data_len, STORED)
    view.release()
    manifest = {"format": "minscale-model", "format_version": 1, "kind": "Sequential",
                "arrays": {name[:-4].decode(): {"shape": [n], "dtype": "|u1"}
                           for name, n in zip(names, payloads)},
                "sha256": "0" * 64}
    man = stored_npy("manifest.npy",
                     np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8))["data"]
    crc = zlib.crc32(man)
    head = _local_header(b"manifest.npy", crc, len(man), len(man), STORED) + man
    central = _central_entry(b"manifest.npy", crc, len(man), len(man), STORED, 0)
    for k, name in enumerate(names):
        data_len = size - offsets[k] - 30 - len(name)
        central += _central_entry(name, crcs[k], data_len, data_len, STORED,
                                  len(head) + offsets[k])
    Path(path).write_bytes(head + bytes(buf) + central
                           + _end_record(n_members + 1, len(central), len(head) + size))
    return path


# ------------------------------------------------------------------------------ data files

def deflate_bomb_npz(path, x_rows=2**17, d=256, y_rows=None):
    """An npz whose X, (x_rows, d) float64 zeros, is deflated to about 1/1000 of its size.

    y: float64 zeros of `y_rows` rows (default x_rows), stored. With the defaults X claims
    256 MiB in a file of about 260 kB.
    """
    header = npy_header((x_rows, d))
    members = [deflated_member("X.npy", header, x_rows * d * 8),
               stored_npy("y.npy", np.zeros(x_rows if y_rows is None else y_rows))]
    Path(path).write_bytes(zip_bytes(members))
    return path


def huge_shape_npz(path, shape=(10**12,), descr="<f8", key="X"):
    """An npz whose member `key` ("X" or "y") declares `shape` but holds 16 bytes of data."""
    fake = {"name": f"{key}.npy", "data": npy_header(shape, descr) + bytes(16)}
    members = [fake, stored_npy("y.npy", np.zeros(3))] if key == "X" else \
        [stored_npy("X.npy", np.zeros((3, 2))), fake]
    Path(path).write_bytes(zip_bytes(members))
    return path


def inflates_past_npz(path, extra_bytes=2**28):
    """An npz whose X declares (8, 1) float64 but whose deflate stream goes on for
    `extra_bytes` more zeros (default 256 MiB)."""
    header = npy_header((8, 1))
    x = deflated_member("X.npy", header, 2**20 + extra_bytes, usize=len(header) + 64)
    x["crc"] = zlib.crc32(header + bytes(64))  # right for the declared bytes
    Path(path).write_bytes(zip_bytes([x, stored_npy("y.npy", np.zeros(8))]))
    return path


def oversized_member_npz(path, zero_bytes=2**28):
    """An npz whose X header needs (8, 1) float64 (64 bytes) while its deflated member
    declares, and truly inflates to, the header plus `zero_bytes` zeros."""
    x = deflated_member("X.npy", npy_header((8, 1)), zero_bytes)
    Path(path).write_bytes(zip_bytes([x, stored_npy("y.npy", np.zeros(8))]))
    return path


def beyond_deflate_npz(path, rows=2**25):
    """An npz whose deflated X declares (rows, 8) float64 (2 GiB by default) in a member
    of a few hundred bytes: more than deflate's 1032:1 can produce."""
    header = npy_header((rows, 8))
    x = deflated_member("X.npy", header, 2**20, usize=len(header) + rows * 64)
    Path(path).write_bytes(zip_bytes([x, stored_npy("y.npy", np.zeros(8))]))
    return path


def overlapping_npz(path):
    """An npz whose y member lies inside X's data: X, a (1, m) uint8 array, holds y's local
    header and data among its bytes. Each member alone is valid."""
    y = stored_npy("y.npy", np.zeros(1))["data"]
    payload = _local_header(b"y.npy", zlib.crc32(y), len(y), len(y), STORED) + y
    x = npy_header((1, len(payload)), "|u1") + payload
    body = _local_header(b"X.npy", zlib.crc32(x), len(x), len(x), STORED) + x
    y_at = len(body) - len(payload)
    central = _central_entry(b"X.npy", zlib.crc32(x), len(x), len(x), STORED, 0) \
        + _central_entry(b"y.npy", zlib.crc32(y), len(y), len(y), STORED, y_at)
    Path(path).write_bytes(body + central + _end_record(2, len(central), len(body)))
    return path


def peak_rss_mb(argv, cwd=None, timeout=300):
    """Run ``python -m minscale *argv`` in a fresh process; (exit code, stderr, peak RSS MB).

    The peak is the child's ``ru_maxrss`` (kB on Linux), read in a second fresh interpreter
    so that earlier children of the test process do not count.
    """
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run([sys.executable, '-m', 'minscale', *sys.argv[1:]],\n"
             "                   capture_output=True, text=True)\n"
             "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
             " + '\\n' + str(r.returncode) + '\\n' + r.stderr)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", probe, *map(str, argv)], capture_output=True,
                         text=True, cwd=cwd, env=env, timeout=timeout, check=True).stdout
    rss_kb, code, stderr = out.split("\n", 2)
    return int(code), stderr, int(rss_kb) / 1024


__all__ = ["npy_header", "zip_bytes", "deflate_zeros", "deflated_member", "stored_npy",
           "overlapping_model", "deflate_bomb_npz", "huge_shape_npz", "inflates_past_npz",
           "oversized_member_npz", "beyond_deflate_npz", "overlapping_npz", "peak_rss_mb"]
