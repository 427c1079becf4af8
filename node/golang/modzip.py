"""Module zips: Go's rules for them (x/mod/zip) and their h1 hash (x/mod/sumdb/dirhash).

A caching proxy stores upstream zips byte for byte, so the one thing it must get
right is what it lets in. `check_zip` applies, before caching, every rule the go
command applies on download and extraction, and computes the h1 in the same
pass; `zipstream.ZipStreamHasher` computes per-entry digests while the bytes
arrive so the check does not have to read a 500 MB zip twice. `zipwriter`
builds zips the way Go's CreateFromDir/Create do.

The zip reader is our own rather than `zipfile`: Go hashes raw name bytes
(zipfile decodes names as cp437), Go ignores the local header's name (zipfile
compares it), and a proxy must reject every layout Go might read differently
from us. So the reader accepts what Go's archive/zip reads, minus ambiguity:
the end record must end the file, the central directory must sit directly
before it with no prepended data, and local names must equal central names.
Go's own writer (and Python's, and Java's) always produce that layout.

Memory is bounded by the central directory (one small record per entry, at
most MAX_ENTRIES), never by entry contents: entries are inflated in slices with
a cap at the declared size, and nothing is ever written to disk. Everything
here blocks on file I/O and CPU: run it in a worker thread for large zips.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from node.golang._zipformat import (
    CENTRAL,
    DEFLATED,
    EMPTY_SHA256,
    EOCD,
    EOCD64,
    FLAG_DESCRIPTOR,
    FLAG_ENCRYPTED,
    IO_BLOCK,
    LOC64,
    LOCAL,
    MAX_ENTRIES,
    MAX_GO_MOD,
    MAX_LICENSE,
    MAX_ZIP_FILE,
    OUT_BLOCK,
    SIG_CENTRAL,
    SIG_DESCRIPTOR,
    SIG_EOCD,
    SIG_EOCD64,
    SIG_LOC64,
    SIG_LOCAL,
    STORED,
    U32,
    Collisions,
    ZipError,
    clean,
    fold,
    name_bytes,
)
from node.golang.dirhash import h1_from_digests
from node.golang.modpath import check_file_path

__all__ = [
    "MAX_ENTRIES",
    "MAX_GO_MOD",
    "MAX_LICENSE",
    "MAX_ZIP_FILE",
    "CheckedZip",
    "ZipError",
    "check_zip",
    "h1_zip",
]

_log = logging.getLogger(__name__)

# --- reading zips -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str  # raw bytes decoded as UTF-8 with surrogate escapes
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    offset: int  # of the local header

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


def _bad(detail: str) -> ZipError:
    return ZipError(f"not a valid zip file: {detail}")


def _read_exact(f: IO[bytes], offset: int, n: int) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise _bad("unexpected end of file")
    return data


class _Blocks:
    """Sequential reads of a byte range in large blocks (central directories can be big)."""

    def __init__(self, f: IO[bytes], start: int, length: int) -> None:
        self._f, self._next, self._left = f, start, length
        self._buf, self._pos = b"", 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            want = n - (len(self._buf) - self._pos)
            if want > self._left:
                raise _bad("central directory overruns its declared size")
            grab = min(self._left, max(want, IO_BLOCK))
            more = _read_exact(self._f, self._next, grab)
            self._next += grab
            self._left -= grab
            self._buf, self._pos = self._buf[self._pos :] + more, 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    @property
    def exhausted(self) -> bool:
        return self._left == 0 and self._pos == len(self._buf)


def _read_directory(f: IO[bytes], size: int) -> tuple[list[_Entry], int]:
    """The entries in central-directory order, and where the central directory starts."""
    tail_len = min(size, EOCD.size + 0xFFFF)
    tail = _read_exact(f, size - tail_len, tail_len)
    # Go takes the last signature with room for the record after it.
    p = tail.rfind(SIG_EOCD, 0, len(tail) - EOCD.size + 4)
    if p < 0:
        raise _bad("end of central directory record not found")
    _, disk, cd_disk, n_disk, n, cd_size, cd_off, comment_len = EOCD.unpack_from(tail, p)
    if p + EOCD.size + comment_len != len(tail):
        raise _bad("data after the end of central directory record")
    eocd_at = size - tail_len + p
    dir_end = eocd_at
    # A zip64 file: the locator just before the end record leads to the zip64 record.
    if (n == 0xFFFF or cd_size == U32 or cd_off == U32) and eocd_at >= LOC64.size:
        loc_at = eocd_at - LOC64.size
        sig, loc_disk, rec_at, disks = LOC64.unpack(_read_exact(f, loc_at, LOC64.size))
        if sig == SIG_LOC64 and loc_disk == 0 and disks == 1:
            if rec_at > loc_at - EOCD64.size:
                raise _bad("zip64 end record out of place")
            rec = EOCD64.unpack(_read_exact(f, rec_at, EOCD64.size))
            sig64, rec_size, _, _, disk, cd_disk, n_disk, n, cd_size, cd_off = rec
            if sig64 != SIG_EOCD64 or rec_at + 12 + rec_size != loc_at:
                raise _bad("malformed zip64 end record")
            dir_end = rec_at
    if disk != 0 or cd_disk != 0 or n_disk != n:
        raise _bad("multi-disk archives are not supported")
    if cd_off + cd_size != dir_end:
        raise _bad("central directory is not where the end record says")

    if n > MAX_ENTRIES:
        raise ZipError(f"zip has too many entries ({n}; modmesh's limit is {MAX_ENTRIES})")
    entries: list[_Entry] = []
    blocks = _Blocks(f, cd_off, cd_size)
    while not blocks.exhausted and len(entries) <= n:
        (
            sig,
            _,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len,
            _disk_start,
            _,
            _,
            offset,
        ) = CENTRAL.unpack(blocks.take(CENTRAL.size))
        if sig != SIG_CENTRAL:
            raise _bad("bad central directory header")
        raw = blocks.take(name_len + extra_len + comment_len)
        csize, usize, offset = _zip64_extra(raw[name_len : name_len + extra_len], csize, usize, offset)
        if flags & FLAG_ENCRYPTED:
            raise ZipError("encrypted zip entries are not supported")
        if method not in (STORED, DEFLATED):
            raise ZipError(f"unsupported compression method {method}")
        if offset + LOCAL.size > cd_off:
            raise _bad("entry outside the archive")
        name = raw[:name_len].decode("utf-8", "surrogateescape")
        entries.append(_Entry(name, flags, method, crc, csize, usize, offset))
    if len(entries) != n:
        raise _bad(f"central directory holds {len(entries)} entries, end record says {n}")
    return entries, cd_off


def _zip64_extra(extra: bytes, csize: int, usize: int, offset: int) -> tuple[int, int, int]:
    """Apply zip64 extra fields the way archive/zip does (only saturated fields change)."""
    declared = (usize, csize, offset)  # the order of the zip64 fields
    values = list(declared)
    while len(extra) >= 4:
        tag, n = struct.unpack_from("<HH", extra)
        if len(extra) - 4 < n:
            break
        field, extra = extra[4 : 4 + n], extra[4 + n :]
        if tag != 1:
            continue
        for i, value in enumerate(declared):
            if value != U32:
                continue
            if len(field) < 8:
                raise _bad("short zip64 extra field")
            (values[i],), field = struct.unpack_from("<Q", field), field[8:]
    return values[1], values[0], values[2]


def _entry_sha256(f: IO[bytes], e: _Entry, dir_end: int) -> str:
    """Read one entry as Go's File.Open does, verifying size and CRC; its hex SHA-256."""
    sig, _, _, _, _, _, _, _, _, name_len, extra_len = LOCAL.unpack(_read_exact(f, e.offset, LOCAL.size))
    if sig != SIG_LOCAL:
        raise ZipError(f"{e.name}: bad local file header")
    if _read_exact(f, e.offset + LOCAL.size, name_len) != name_bytes(e.name):
        raise ZipError(f"{e.name}: local header names a different file")
    start = e.offset + LOCAL.size + name_len + extra_len
    if e.is_dir:
        if e.usize != 0:
            raise ZipError(f"{e.name}: directory entry has content")
        return EMPTY_SHA256
    if start + e.csize > dir_end:
        raise _bad(f"{e.name}: data runs into the central directory")
    if e.method == STORED and e.csize != e.usize:
        raise ZipError(f"{e.name}: stored entry with differing sizes")

    sha, crc, produced = hashlib.sha256(), 0, 0
    inflater = zlib.decompressobj(-15) if e.method == DEFLATED else None
    f.seek(start)
    left = e.csize
    pending = b""
    try:
        while True:
            if pending:
                data, pending = pending, b""
            elif left:
                data = f.read(min(left, IO_BLOCK))
                if not data:
                    raise _bad("unexpected end of file")
                left -= len(data)
            elif inflater is None or inflater.eof:
                break
            else:
                data = b""
            if inflater is None:
                out = data
            else:
                out = inflater.decompress(data, min(OUT_BLOCK, e.usize - produced + 1))
                pending = inflater.unconsumed_tail
                if not data and not out:
                    raise ZipError(f"{e.name}: unexpected end of compressed data")
            produced += len(out)
            if produced > e.usize:
                raise ZipError(f"{e.name}: uncompressed size is larger than declared size ({e.usize} bytes)")
            sha.update(out)
            crc = zlib.crc32(out, crc)
            if inflater is not None and inflater.eof:
                break
    except zlib.error as err:
        raise ZipError(f"{e.name}: corrupt deflate data: {err}") from None
    if produced != e.usize:
        raise ZipError(f"{e.name}: uncompressed size is smaller than declared size ({e.usize} bytes)")
    if e.flags & FLAG_DESCRIPTOR:
        desc = _read_exact(f, start + e.csize, 4)
        at = start + e.csize + (4 if desc == SIG_DESCRIPTOR else 0)
        (desc_crc,) = struct.unpack("<I", _read_exact(f, at, 4))
        if desc_crc != e.crc or crc != e.crc:
            raise ZipError(f"{e.name}: checksum error")
    elif e.crc != 0 and crc != e.crc:  # Go skips the check when the CRC field is 0
        raise ZipError(f"{e.name}: checksum error")
    return sha.hexdigest()


_TOTAL_TOO_LARGE = f"total uncompressed size of module contents too large (max size is {MAX_ZIP_FILE} bytes)"


def _check_zip_size(size: int) -> None:
    if size > MAX_ZIP_FILE:
        raise ZipError(f"module zip file is too large ({size} bytes; limit is {MAX_ZIP_FILE} bytes)")


def h1_zip(path: str | os.PathLike[str]) -> str:
    """The h1 of a zip file: every entry, directories included, as dirhash.HashZip.

    Refuses (where Go would hash, then fail to extract) zips beyond the
    MAX_ZIP_FILE limits, so overlapping entries cannot make the work unbounded.
    """
    with open(path, "rb") as f:
        return h1_zip_file(f)


def h1_zip_file(f: IO[bytes]) -> str:
    """h1_zip of an open, seekable binary file (a blob may live in a file or in memory)."""
    size = f.seek(0, os.SEEK_END)
    _check_zip_size(size)
    entries, dir_end = _read_directory(f, size)
    if sum(e.usize for e in entries) > MAX_ZIP_FILE:
        raise ZipError(_TOTAL_TOO_LARGE)
    last = {e.name: e for e in entries}  # Go looks names up in a map: the last one wins
    digest = {name: _entry_sha256(f, e, dir_end) for name, e in last.items()}
    return h1_from_digests((e.name, digest[e.name]) for e in entries)


# --- checking zips ----------------------------------------------------------------


@dataclass(frozen=True)
class CheckedZip:
    """A zip that passed check_zip: its h1, its file count (directory entries not
    counted) and the total uncompressed size of its files."""

    h1: str
    files: int
    size: int


def _check_layout(entries: list[_Entry], module: str, version: str) -> None:
    """The name and size rules of modfetch's download check and x/mod/zip's checkZip."""
    prefix = f"{module}@{version}/"
    for e in entries:
        if not e.name.startswith(prefix):
            raise ZipError(f"zip for {module}@{version} has unexpected file {e.name}")
    collisions = Collisions()
    total = 0
    size_error: str | None = None
    first_error: str | None = None
    for e in entries:
        name = e.name[len(prefix) :]
        if e.is_dir and e.usize != 0:
            problem: str | None = "directory entry has content"
        elif not name:
            continue
        else:
            problem = _name_problem(name.removesuffix("/"), e, collisions)
            if problem is None and not e.is_dir:
                if total + e.usize <= MAX_ZIP_FILE:
                    total += e.usize
                elif size_error is None:
                    size_error = _TOTAL_TOO_LARGE
                if name == "go.mod" and e.usize > MAX_GO_MOD:
                    problem = f"go.mod file too large (max size is {MAX_GO_MOD} bytes)"
                elif name == "LICENSE" and e.usize > MAX_LICENSE:
                    problem = f"LICENSE file too large (max size is {MAX_LICENSE} bytes)"
        if problem is not None and first_error is None:
            first_error = f"{e.name}: {problem}"
    if size_error is not None:  # Go reports the size error in preference to bad names
        raise ZipError(size_error)
    if first_error is not None:
        raise ZipError(first_error)


def _name_problem(name: str, e: _Entry, collisions: Collisions) -> str | None:
    if clean(name) != name:
        return "file path is not clean"
    try:
        check_file_path(name)
    except ValueError as err:
        return str(err)
    if problem := collisions.check(name, e.is_dir):
        return problem
    if e.is_dir:
        return None
    base = name.rpartition("/")[2]
    if fold(base) == "go.mod":
        if base != name:
            return "go.mod file not in module root directory"
        if name != "go.mod":
            return "go.mod files must have lowercase names"
    return None


def check_zip(
    path: str | os.PathLike[str],
    module: str,
    version: str,
    digests: Mapping[str, tuple[str, int]] | None = None,
) -> CheckedZip:
    """Vet an upstream zip for `module@version` (unescaped) before caching it.

    Raises ZipError on anything the go command would refuse on download or
    extraction, and on layouts we refuse as ambiguous. With `digests` from a
    ZipStreamHasher over the same bytes, entry contents are not read again;
    digests that do not cover every entry with the central directory's size
    are ignored. Module path and version must already be valid (the request
    router checks them). I/O errors on `path` itself propagate as OSError.
    """
    with open(path, "rb") as f:
        return check_zip_file(f, module, version, digests)


def check_zip_file(
    f: IO[bytes],
    module: str,
    version: str,
    digests: Mapping[str, tuple[str, int]] | None = None,
) -> CheckedZip:
    """`check_zip` over an open, seekable binary file (or an in-memory one)."""
    size = f.seek(0, os.SEEK_END)
    _check_zip_size(size)
    entries, dir_end = _read_directory(f, size)
    _check_layout(entries, module, version)
    if digests is not None and all(digests.get(e.name, ("", -1))[1] == e.usize for e in entries):
        shas = {e.name: EMPTY_SHA256 if e.is_dir else digests[e.name][0] for e in entries}
    else:
        shas = {e.name: _entry_sha256(f, e, dir_end) for e in entries}
    files = [e for e in entries if not e.is_dir]
    # One line per entry: a repeated directory entry is legal and hashed twice.
    h1 = h1_from_digests((e.name, shas[e.name]) for e in entries)
    return CheckedZip(h1=h1, files=len(files), size=sum(e.usize for e in files))
