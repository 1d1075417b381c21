"""Bounded reading of untrusted ``.npz`` archives: the zip directory and ``.npy`` headers first.

A zip archive's central directory says where each member lies and how big it is; nothing
makes it tell the truth. Two members may share bytes (each then claims the whole overlap, so
a few MB of file claim gigabytes), a member may claim more bytes than the file holds, and a
deflated member may declare any uncompressed size or inflate past it. The readers here look
at the directory, the local headers and the ``.npy`` headers before any array data:

- :func:`zip_members` checks the layout: every member's local header where the directory
  says, its data inside the file and before the central directory, no two members
  overlapping, a stored member's two sizes equal, and a deflated member declaring at most
  ``DEFLATE_MAX_RATIO`` times its compressed size (deflate cannot expand more, RFC 1951).
- :class:`MemberReader` streams one member, never producing more than its declared size;
  :meth:`MemberReader.finish` refuses a member that is short, inflates past its declared
  size, or fails its CRC-32.
- :func:`read_npy_header` parses a ``.npy`` header with NumPy's header readers (never
  ``numpy.load``, so never a pickle) and refuses an object dtype and a header whose shape
  needs a different number of bytes than the member declares.
- :func:`read_npy_data` then reads the array in chunks straight into its buffer.

So the memory a reader allocates is what the headers declare, and the declarations agree
with the file: for stored members at most the file's size in total.

References
----------
PKWARE APPNOTE.TXT 6.3 (zip: 4.3.7 local header, 4.3.12 central directory); RFC 1951
(deflate; the 1032:1 limit: a 258-byte match coded in 2 bits, see the zlib FAQ); NumPy NEP 1
(the ``.npy`` format). CPython 3.12 added a similar overlap check to :mod:`zipfile`
(``Overlapped entries``); 3.11 has none.
"""
from __future__ import annotations

import dataclasses
import math
import struct
import zipfile
import zlib

import numpy as np

__all__ = ["ArchiveError", "ObjectArrayError", "Member", "DEFLATE_MAX_RATIO", "zip_members",
           "MemberReader", "read_npy_header", "read_npy_data", "npy_nbytes"]

#: most bytes a deflate stream can inflate to per compressed byte (zlib FAQ: 1032:1)
DEFLATE_MAX_RATIO = 1032
#: bytes inflated or copied per step
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes, APPNOTE 4.3.7


class ArchiveError(ValueError):
    """An ``.npz`` archive whose directory or headers disagree with its bytes.

    The message starts with the archive's name as the caller gave it (``source``).
    """


class ObjectArrayError(ArchiveError):
    """A ``.npy`` header declares an object dtype: its data would be a pickle."""


@dataclasses.dataclass(frozen=True, slots=True)  # an archive may list 100k members
class Member:
    """Where one zip member's bytes are, as the directory declares and the layout confirms.

    Attributes
    ----------
    name : str
        As in the central directory, e.g. ``"X.npy"``.
    method : int
        Compression method: 0 stored, 8 deflated (others are listed, never read).
    flags : int
        General purpose bit flags (bit 0: encrypted).
    offset : int
        Byte offset of the member's data in the file.
    size : int
        Bytes of data in the file (the compressed size).
    declared_size : int
        The uncompressed size the directory declares.
    crc : int
        The CRC-32 the directory declares.
    """

    name: str
    method: int
    flags: int
    offset: int
    size: int
    declared_size: int
    crc: int


def zip_members(f, file_size, source):
    """The members of the zip archive open as `f`, after checking the layout; reads no data.

    Parameters
    ----------
    f : binary file object, seekable
    file_size : int
        Bytes in the file.
    source : str
        How messages name the archive.

    Returns
    -------
    list of Member
        In directory order (duplicated names are kept: the caller decides).

    Raises
    ------
    zipfile.BadZipFile
        No readable central directory (from :class:`zipfile.ZipFile`).
    ArchiveError
        A local header missing or naming another member; data beyond the file or into the
        central directory; two members whose byte ranges overlap; a stored member whose
        sizes differ; a deflated member declaring more than ``DEFLATE_MAX_RATIO`` times
        its compressed size.

    Notes
    -----
    span of member i = [header_offset, data_offset + compress_size), data_offset =
    header_offset + 30 + len(name) + len(extra) from the local header; spans sorted by start
    must satisfy start[i] >= end[i - 1] and end <= start of the central directory.
    """
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        # where the central directory starts; zipfile keeps it after reading the end record
        directory = getattr(zf, "start_dir", file_size)
    members, spans = [], []
    for info in infos:
        where = f"{source}: member {info.filename!r}"
        f.seek(info.header_offset)
        head = f.read(_LOCAL_HEADER.size)
        if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            raise ArchiveError(f"{where} has no local header at offset {info.header_offset}: "
                               "damaged or not a zip archive")
        name_len, extra_len = _LOCAL_HEADER.unpack(head)[-2:]
        raw_name = f.read(name_len)
        name = raw_name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        if name != info.orig_filename:
            raise ArchiveError(f"{where}: its local header names {name!r}: damaged or forged")
        offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        end = offset + info.compress_size
        if end > min(directory, file_size):
            raise ArchiveError(f"{where} claims {info.compress_size} bytes from offset "
                               f"{offset}, beyond the {min(directory, file_size)} bytes of "
                               "member data the file holds: truncated or forged")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1 \
                and info.file_size != info.compress_size:
            raise ArchiveError(f"{where} is stored (not compressed) but declares "
                               f"{info.file_size} bytes and holds {info.compress_size}: damaged "
                               "or forged")
        if info.compress_type == zipfile.ZIP_DEFLATED \
                and info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise ArchiveError(f"{where} declares {info.file_size} bytes inflated from "
                               f"{info.compress_size}: more than deflate's limit of "
                               f"{DEFLATE_MAX_RATIO}:1, so forged")
        spans.append((info.header_offset, end, info.filename))
        members.append(Member(info.filename, info.compress_type, info.flag_bits, offset,
                              info.compress_size, info.file_size, info.CRC))
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise ArchiveError(f"{source}: members {a!r} and {b!r} overlap (bytes {start_b} to "
                               f"{end_a}): a forged archive whose members claim the same "
                               "bytes more than once")
    return members


class MemberReader:
    """A file-like view of one member's uncompressed bytes, bounded by its declared size.

    Parameters
    ----------
    f : binary file object, seekable
        The archive; read with explicit seeks, so several readers may share it in turn.
    member : Member
        From :func:`zip_members`; stored or deflated, not encrypted.
    source : str
        How messages name the archive.

    Raises
    ------
    ArchiveError
        `member` is encrypted or compressed with another method than deflate.

    Notes
    -----
    read(n) gives at most min(n, declared_size - tell()) bytes; a deflated member is
    inflated with ``zlib.decompressobj(-15).decompress(data, max_length)``, so at most one
    chunk more than was asked for is ever produced.
    """

    def __init__(self, f, member, source):
        self._where = f"{source}: member {member.name!r}"
        if member.flags & 0x1:
            raise ArchiveError(f"{self._where} is encrypted")
        if member.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(f"{self._where} is compressed with method {member.method}; "
                               "expected stored (0) or deflated (8), as numpy.savez and "
                               "numpy.savez_compressed write")
        self._f, self._member = f, member
        self._raw_pos, self._raw_left = member.offset, member.size
        self._produced, self._crc, self._tail = 0, 0, b""
        self._inflate = zlib.decompressobj(-15) if member.method == zipfile.ZIP_DEFLATED \
            else None

    def tell(self):
        """Uncompressed bytes read so far."""
        return self._produced

    def remaining(self):
        """Uncompressed bytes the member still declares."""
        return self._member.declared_size - self._produced

    def _raw(self, n):
        n = min(n, self._raw_left)
        self._f.seek(self._raw_pos)
        data = self._f.read(n)
        if len(data) < n:
            raise ArchiveError(f"{self._where} is truncated")
        self._raw_pos += n
        self._raw_left -= n
        return data

    def _inflated(self, n):
        out = []
        while n > 0 and not self._inflate.eof:
            if not self._tail:
                if not self._raw_left:
                    break
                self._tail = self._raw(_CHUNK)
            try:
                data = self._inflate.decompress(self._tail, n)
            except zlib.error as exc:
                raise ArchiveError(f"{self._where} is not a valid deflate stream "
                                   f"({exc})") from None
            self._tail = self._inflate.unconsumed_tail
            out.append(data)
            n -= len(data)
        return b"".join(out)

    def read(self, n=-1):
        """Up to `n` bytes (all that is left if `n` < 0), never past the declared size."""
        left = self._member.declared_size - self._produced
        n = left if n is None or n < 0 else min(n, left)
        data = self._raw(n) if self._inflate is None else self._inflated(n)
        self._produced += len(data)
        self._crc = zlib.crc32(data, self._crc)
        return data

    def readinto(self, buffer):
        """Fill `buffer` (a writable bytes-like) as far as the member goes; the count read."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def finish(self):
        """Check the member was read to its declared end and nothing follows; CRC-32 it.

        Raises
        ------
        ArchiveError
            Fewer bytes than declared, a deflate stream that would inflate past the declared
            size (checked by asking for one byte more) or does not end, a CRC-32 mismatch.
        """
        declared = self._member.declared_size
        if self._produced < declared:
            self.read(declared - self._produced)
        if self._produced < declared:
            raise ArchiveError(f"{self._where} is truncated: {self._produced} of {declared} "
                               "bytes")
        if self._inflate is not None:
            if self._inflated(1):
                raise ArchiveError(f"{self._where} inflates past its declared size of "
                                   f"{declared} bytes: damaged or forged")
            if not self._inflate.eof:
                raise ArchiveError(f"{self._where}: its deflate stream does not end where "
                                   "the member does: truncated or damaged")
        if self._crc != self._member.crc:
            raise ArchiveError(f"{self._where} fails its CRC-32 check: damaged")


def npy_nbytes(shape, dtype):
    """Bytes of an array of `shape` and `dtype`, as a Python int (no overflow)."""
    return math.prod(shape) * dtype.itemsize


def read_npy_header(reader, key, source):
    """Parse the ``.npy`` header at the start of `reader`, without reading any data.

    Parameters
    ----------
    reader : MemberReader
        Positioned at the member's start.
    key : str
        The array's name, for messages.
    source : str

    Returns
    -------
    shape : tuple of int
    dtype : numpy.dtype
    fortran_order : bool

    Raises
    ------
    ObjectArrayError
        An object dtype (it would need pickle; refused before reading anything of it).
    ArchiveError
        Not a ``.npy`` 1.0 or 2.0 header (NumPy's readers refuse headers over 10000 bytes); a
        zero-size dtype; a shape whose bytes plus the header differ from the member's
        declared size.
    """
    where = f"{source}: array {key!r}"
    try:
        version = np.lib.format.read_magic(reader)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(reader)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(reader)
        else:
            raise ArchiveError(f"{where} has .npy version {version}; expected 1.0 or 2.0")
    except ArchiveError:
        raise
    except Exception as exc:  # NumPy's header parser also raises tokenize.TokenError
        raise ArchiveError(f"{where} has no valid .npy header ({type(exc).__name__}: "
                           f"{exc})") from None
    if dtype.hasobject:
        raise ObjectArrayError(f"{where} is an object array; object arrays are refused (they "
                           "need pickle); store a numeric array")
    if dtype.itemsize == 0:
        raise ArchiveError(f"{where} has the zero-size dtype {dtype}")
    nbytes = npy_nbytes(shape, dtype)
    declared = reader.remaining()
    if nbytes != declared:
        raise ArchiveError(f"{where} declares shape {tuple(shape)} of {dtype} ({nbytes:,} "
                           f"bytes) but its member holds {declared:,} bytes of data: damaged "
                           "or forged")
    return tuple(shape), dtype, bool(fortran_order)


def read_npy_data(reader, shape, dtype, fortran_order):
    """The array after the header :func:`read_npy_header` returned; checks the member's end.

    Returns
    -------
    ndarray of `shape` and `dtype`
        Read in chunks straight into its buffer: one copy of the data in memory.

    Raises
    ------
    ArchiveError
        As :meth:`MemberReader.finish`.
    """
    flat = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(flat.view(np.uint8))
    pos = 0
    while pos < len(view):
        got = reader.readinto(view[pos:pos + _CHUNK])
        if not got:
            break
        pos += got
    reader.finish()
    return flat.reshape(shape, order="F" if fortran_order else "C")
