"""Module zips: Go's rules for them (x/mod/zip) and their h1 hash (x/mod/sumdb/dirhash).

A caching proxy stores upstream zips byte for byte, so the one thing it must get
right is what it lets in. `check_zip` applies, before caching, every rule the go
command applies on download and extraction, and computes the h1 in the same
pass; `ZipStreamHasher` computes per-entry digests while the bytes arrive so the
check does not have to read a 500 MB zip twice. `create_zip` and
`create_zip_from_files` build zips the way Go's CreateFromDir/Create do (tests
and fixtures; a proxy never re-zips).

The zip reader is our own rather than `zipfile`: Go hashes raw name bytes
(zipfile decodes names as cp437), Go ignores the local header's name (zipfile
compares it), and a proxy must reject every layout Go might read differently
from us. So the reader accepts what Go's archive/zip reads, minus ambiguity:
the end record must end the file, the central directory must sit directly
before it with no prepended data, and local names must equal central names.
Go's own writer (and Python's, and Java's) always produce that layout.

Memory is bounded by the central directory (one small record per entry), never
by entry contents: entries are inflated in slices with a cap at the declared
size, and nothing is ever written to disk.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import IO, BinaryIO

from node import gomod
from node.modpath import check_file_path

__all__ = [
    "MAX_GO_MOD",
    "MAX_LICENSE",
    "MAX_ZIP_FILE",
    "CheckedZip",
    "ZipError",
    "ZipStreamHasher",
    "check_zip",
    "create_zip",
    "create_zip_from_files",
    "h1_from_digests",
    "h1_gomod",
    "h1_zip",
]

_log = logging.getLogger(__name__)

MAX_ZIP_FILE = 500 << 20
MAX_GO_MOD = 16 << 20
MAX_LICENSE = 16 << 20

_IO_BLOCK = 1 << 20  # compressed bytes read at a time
_OUT_BLOCK = 4 << 20  # most bytes one inflate call may produce
_EMPTY_SHA256 = hashlib.sha256().hexdigest()


class ZipError(ValueError):
    """A zip the go command would refuse (or that we refuse as ambiguous)."""

    def __init__(self, message: str) -> None:
        # Names keep undecodable bytes as surrogate escapes; show them as \xNN.
        try:
            message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            message = message.encode("utf-8", "backslashreplace").decode()
        super().__init__(message)


# --- h1 (dirhash.Hash1) --------------------------------------------------------

_HEX256 = re.compile(r"[0-9a-f]{64}")


def _name_bytes(name: str) -> bytes:
    """The bytes Go holds for a name; undecodable bytes were kept as surrogate escapes."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ZipError(f"file name {name!r} is not representable as bytes") from None


def h1_from_digests(items: Iterable[tuple[str, str]]) -> str:
    """Hash1 over (name, lowercase hex SHA-256 of content) pairs."""
    lines = []
    for name, digest in items:
        raw = _name_bytes(name)
        if b"\n" in raw:
            raise ZipError("dirhash: filenames with newlines are not supported")
        if not _HEX256.fullmatch(digest):
            raise ZipError(f"not a lowercase hex SHA-256 digest: {digest[:80]!r}")
        lines.append((raw, digest))
    lines.sort()
    summary = hashlib.sha256()
    for raw, digest in lines:
        summary.update(b"%s  %s\n" % (digest.encode(), raw))
    return "h1:" + base64.b64encode(summary.digest()).decode()


def h1_gomod(data: bytes) -> str:
    """The go.sum `/go.mod` hash of a .mod body."""
    return h1_from_digests([("go.mod", hashlib.sha256(data).hexdigest())])


# --- names ---------------------------------------------------------------------

def _clean(p: str) -> str:
    """Go's path.Clean."""
    rooted = p.startswith("/")
    out: list[str] = []
    for el in p.split("/"):
        if el in ("", "."):
            continue
        if el == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(el)
    cleaned = ("/" if rooted else "") + "/".join(out)
    return cleaned or "."


def _fold_ranges(*spec: tuple[int, int, int]) -> dict[str, str]:
    return {chr(first + i): chr(to + i) for first, last, to in spec for i in range(last - first + 1)}


# Simple case folds Go 1.27 (Unicode 17) makes and Python 3.11 (Unicode 14)
# does not: newer letters, plus three "S" foldings that str.casefold() replaces
# by multi-character ones. Both members of a pair map to one representative, so
# the key stays consistent on a Python that knows some of them.
# tests/test_modzip.py checks the whole fold against the real go command.
_FOLD_EXTRA = _fold_ranges(
    (0xA7CB, 0xA7CB, 0x0264), (0xA7DC, 0xA7DC, 0x019B),
    (0xA7CC, 0xA7CC, 0xA7CD), (0xA7CD, 0xA7CD, 0xA7CD),
    (0xA7CE, 0xA7CE, 0xA7CF), (0xA7CF, 0xA7CF, 0xA7CF),
    (0xA7D2, 0xA7D2, 0xA7D3), (0xA7D3, 0xA7D3, 0xA7D3),
    (0xA7D4, 0xA7D4, 0xA7D5), (0xA7D5, 0xA7D5, 0xA7D5),
    (0xA7DA, 0xA7DA, 0xA7DB), (0xA7DB, 0xA7DB, 0xA7DB),
    (0x1C89, 0x1C89, 0x1C8A), (0x1C8A, 0x1C8A, 0x1C8A),
    (0x10D50, 0x10D65, 0x10D70), (0x10D70, 0x10D85, 0x10D70),
    (0x16EA0, 0x16EB8, 0x16EBB), (0x16EBB, 0x16ED3, 0x16EBB),
    (0xFB05, 0xFB06, 0xFB05), (0x1FD3, 0x1FD3, 0x0390), (0x1FE3, 0x1FE3, 0x03B0),
)


@lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    if (extra := _FOLD_EXTRA.get(c)) is not None:
        return extra
    folded = c.casefold()
    if len(folded) == 1:
        return folded
    lower = c.lower()  # a full folding (ß -> ss); the simple one is lower() or nothing
    return lower if len(lower) == 1 else c


def _fold(s: str) -> str:
    """A key with _fold(s) == _fold(t) iff Go's strings.EqualFold(s, t)."""
    if s.isascii():
        return s.lower()
    return "".join(map(_fold_char, s))


class _Collisions:
    """Go's collisionChecker: case-fold collisions, duplicates, file-vs-directory."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool]] = {}

    def check(self, p: str, is_dir: bool) -> str | None:
        while True:
            key = _fold(p)
            other = self._seen.get(key)
            if other is None:
                self._seen[key] = (p, is_dir)
            elif other[0] != p:
                return f'case-insensitive file name collision: "{other[0]}" and "{p}"'
            elif other[1] != is_dir:
                return f'entry "{p}" is both a file and a directory'
            elif not is_dir:
                return f'multiple entries for file "{p}"'
            parent = p.rpartition("/")[0]
            if not parent:
                return None
            p, is_dir = parent, True


# --- reading zips -------------------------------------------------------------

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory header, 46 bytes
_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory, 56 bytes
_LOC64 = struct.Struct("<4sIQI")  # zip64 end locator, 20 bytes
_SIG_LOCAL, _SIG_CENTRAL, _SIG_EOCD = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
_SIG_EOCD64, _SIG_LOC64, _SIG_DESCRIPTOR = b"PK\x06\x06", b"PK\x06\x07", b"PK\x07\x08"
_STORED, _DEFLATED = 0, 8
_FLAG_ENCRYPTED = 0x0041  # traditional or strong encryption
_FLAG_DESCRIPTOR = 0x0008
_U32 = 0xFFFFFFFF


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
            grab = min(self._left, max(want, _IO_BLOCK))
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
    tail_len = min(size, _EOCD.size + 0xFFFF)
    tail = _read_exact(f, size - tail_len, tail_len)
    # Go takes the last signature with room for the record after it.
    p = tail.rfind(_SIG_EOCD, 0, len(tail) - _EOCD.size + 4)
    if p < 0:
        raise _bad("end of central directory record not found")
    _, disk, cd_disk, n_disk, n, cd_size, cd_off, comment_len = _EOCD.unpack_from(tail, p)
    if p + _EOCD.size + comment_len != len(tail):
        raise _bad("data after the end of central directory record")
    eocd_at = size - tail_len + p
    dir_end = eocd_at
    if n == 0xFFFF or cd_size == _U32 or cd_off == _U32:
        if eocd_at >= _LOC64.size:
            loc_at = eocd_at - _LOC64.size
            sig, loc_disk, rec_at, disks = _LOC64.unpack(_read_exact(f, loc_at, _LOC64.size))
            if sig == _SIG_LOC64 and loc_disk == 0 and disks == 1:
                if rec_at > loc_at - _EOCD64.size:
                    raise _bad("zip64 end record out of place")
                rec = _EOCD64.unpack(_read_exact(f, rec_at, _EOCD64.size))
                sig64, rec_size, _, _, disk, cd_disk, n_disk, n, cd_size, cd_off = rec
                if sig64 != _SIG_EOCD64 or rec_at + 12 + rec_size != loc_at:
                    raise _bad("malformed zip64 end record")
                dir_end = rec_at
    if disk != 0 or cd_disk != 0 or n_disk != n:
        raise _bad("multi-disk archives are not supported")
    if cd_off + cd_size != dir_end:
        raise _bad("central directory is not where the end record says")

    entries: list[_Entry] = []
    blocks = _Blocks(f, cd_off, cd_size)
    while not blocks.exhausted:
        (sig, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         disk_start, _, _, offset) = _CENTRAL.unpack(blocks.take(_CENTRAL.size))
        if sig != _SIG_CENTRAL:
            raise _bad("bad central directory header")
        raw = blocks.take(name_len + extra_len + comment_len)
        csize, usize, offset = _zip64_extra(raw[name_len : name_len + extra_len], csize, usize, offset)
        if flags & _FLAG_ENCRYPTED:
            raise ZipError("encrypted zip entries are not supported")
        if method not in (_STORED, _DEFLATED):
            raise ZipError(f"unsupported compression method {method}")
        if offset + _LOCAL.size > cd_off:
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
            if value != _U32:
                continue
            if len(field) < 8:
                raise _bad("short zip64 extra field")
            (values[i],), field = struct.unpack_from("<Q", field), field[8:]
    return values[1], values[0], values[2]


def _entry_sha256(f: IO[bytes], e: _Entry, dir_end: int) -> str:
    """Read one entry as Go's File.Open does, verifying size and CRC; its hex SHA-256."""
    sig, _, _, _, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack(_read_exact(f, e.offset, _LOCAL.size))
    if sig != _SIG_LOCAL:
        raise ZipError(f"{e.name}: bad local file header")
    if _read_exact(f, e.offset + _LOCAL.size, name_len) != _name_bytes(e.name):
        raise ZipError(f"{e.name}: local header names a different file")
    start = e.offset + _LOCAL.size + name_len + extra_len
    if e.is_dir:
        if e.usize != 0:
            raise ZipError(f"{e.name}: directory entry has content")
        return _EMPTY_SHA256
    if start + e.csize > dir_end:
        raise _bad(f"{e.name}: data runs into the central directory")
    if e.method == _STORED and e.csize != e.usize:
        raise ZipError(f"{e.name}: stored entry with differing sizes")

    sha, crc, produced = hashlib.sha256(), 0, 0
    inflater = zlib.decompressobj(-15) if e.method == _DEFLATED else None
    f.seek(start)
    left = e.csize
    pending = b""
    try:
        while True:
            if pending:
                data, pending = pending, b""
            elif left:
                data = f.read(min(left, _IO_BLOCK))
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
                out = inflater.decompress(data, min(_OUT_BLOCK, e.usize - produced + 1))
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
    if e.flags & _FLAG_DESCRIPTOR:
        desc = _read_exact(f, start + e.csize, 4)
        at = start + e.csize + (4 if desc == _SIG_DESCRIPTOR else 0)
        (desc_crc,) = struct.unpack("<I", _read_exact(f, at, 4))
        if desc_crc != e.crc or crc != e.crc:
            raise ZipError(f"{e.name}: checksum error")
    elif e.crc != 0 and crc != e.crc:  # Go skips the check when the CRC field is 0
        raise ZipError(f"{e.name}: checksum error")
    return sha.hexdigest()


def _open_zip(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as err:
        raise ZipError(f"cannot open zip: {err.strerror or err}") from None


def h1_zip(path: str | os.PathLike[str]) -> str:
    """The h1 of a zip file: every entry, directories included, as dirhash.HashZip."""
    with _open_zip(path) as f:
        size = os.fstat(f.fileno()).st_size
        entries, dir_end = _read_directory(f, size)
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
    collisions = _Collisions()
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
                    size_error = (
                        "total uncompressed size of module contents too large "
                        f"(max size is {MAX_ZIP_FILE} bytes)"
                    )
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


def _name_problem(name: str, e: _Entry, collisions: _Collisions) -> str | None:
    if _clean(name) != name:
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
    if _fold(base) == "go.mod":
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
    router checks them).
    """
    with _open_zip(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_ZIP_FILE:
            raise ZipError(f"module zip file is too large ({size} bytes; limit is {MAX_ZIP_FILE} bytes)")
        entries, dir_end = _read_directory(f, size)
        _check_layout(entries, module, version)
        if digests is not None and all(digests.get(e.name, ("", -1))[1] == e.usize for e in entries):
            shas = {e.name: _EMPTY_SHA256 if e.is_dir else digests[e.name][0] for e in entries}
        else:
            shas = {e.name: _entry_sha256(f, e, dir_end) for e in entries}
    files = [e for e in entries if not e.is_dir]
    return CheckedZip(
        h1=h1_from_digests(shas.items()), files=len(files), size=sum(e.usize for e in files)
    )


# --- hashing while downloading ------------------------------------------------------

@dataclass(slots=True)
class _Seen:
    """A local entry as the stream showed it: header fields and what we computed."""

    name: bytes
    flags: int
    method: int
    sha256: str = ""
    crc: int = 0
    csize: int = 0
    usize: int = 0


class ZipStreamHasher:
    """Per-entry SHA-256 of a zip computed chunk by chunk while it downloads.

    Feed every chunk in order, then call digests(): name -> (hex sha256, size),
    or None if the stream was not a zip this parser can vouch for (stored
    entries with data descriptors, zip64, encryption, other methods, trailing or
    prepended data, a central directory that disagrees with the local headers,
    anything malformed). None is not a verdict: check_zip then reads the file.
    Never raises; buffers at most a header plus one chunk.
    """

    _SIG, _DATA, _DESCRIPTOR, _CENTRAL, _END, _FAILED = range(6)

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # stream offset of _buf[0]
        self._state = self._SIG
        self._fed = 0
        self._produced = 0  # uncompressed bytes over all entries
        self._locals: dict[int, _Seen] = {}  # by header offset, until the central directory claims them
        self._cur = _Seen(b"", 0, 0)
        self._limit = 0  # declared compressed size left (no descriptor) / uncompressed cap
        self._hdr: tuple[int, int, int] = (0, 0, 0)  # crc, csize, usize from the local header
        self._sha = hashlib.sha256()
        self._inflater: zlib._Decompress | None = None
        self._central_at = 0
        self._result: dict[str, tuple[str, int]] = {}

    def feed(self, data: bytes) -> None:
        if self._state == self._FAILED or not data:
            return
        self._fed += len(data)
        if self._fed > MAX_ZIP_FILE or self._state == self._END:
            self._state = self._FAILED
            return
        self._buf += data
        try:
            while self._state != self._FAILED and self._step():
                pass
        except zlib.error:
            self._give_up()
        except Exception:  # a parser bug must not fail the download; check_zip reads instead
            _log.warning("zip stream hasher failed; falling back to reading the zip", exc_info=True)
            self._give_up()

    def digests(self) -> dict[str, tuple[str, int]] | None:
        return dict(self._result) if self._state == self._END else None

    # Each step consumes input or changes state and returns True, or returns False for more input.

    def _give_up(self) -> bool:
        self._state = self._FAILED
        self._buf = bytearray()
        self._inflater = None
        return False

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._pos += n

    def _step(self) -> bool:
        if self._state == self._DATA:
            return self._data()
        if self._state == self._DESCRIPTOR:
            return self._descriptor()
        if len(self._buf) < 4:
            return False
        sig = bytes(self._buf[:4])
        if self._state == self._SIG:
            if sig == _SIG_LOCAL:
                return self._local_header()
            if sig in (_SIG_CENTRAL, _SIG_EOCD):
                self._state, self._central_at = self._CENTRAL, self._pos
                return True
        elif self._state == self._CENTRAL:
            if sig == _SIG_CENTRAL:
                return self._central_header()
            if sig == _SIG_EOCD:
                return self._end_record()
        return self._give_up()

    def _local_header(self) -> bool:
        if len(self._buf) < _LOCAL.size:
            return False
        _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL.unpack_from(self._buf)
        end = _LOCAL.size + name_len + extra_len
        if len(self._buf) < end:
            return False
        extra = bytes(self._buf[_LOCAL.size + name_len : end])
        if (
            flags & _FLAG_ENCRYPTED
            or method not in (_STORED, _DEFLATED)
            or (method == _STORED and flags & _FLAG_DESCRIPTOR)
            or _U32 in (csize, usize)
            or _has_zip64_extra(extra)
        ):
            return self._give_up()
        self._cur = _Seen(bytes(self._buf[_LOCAL.size : _LOCAL.size + name_len]), flags, method)
        self._locals[self._pos] = self._cur
        self._hdr = (crc, csize, usize)
        self._consume(end)
        self._sha = hashlib.sha256()
        self._inflater = zlib.decompressobj(-15) if method == _DEFLATED else None
        self._limit = -1 if flags & _FLAG_DESCRIPTOR else csize
        self._state = self._DATA
        return True

    def _emit(self, out: bytes | memoryview) -> bool:
        cur = self._cur
        cur.usize += len(out)
        self._produced += len(out)
        cap = MAX_ZIP_FILE if self._limit < 0 else self._hdr[2]
        if cur.usize > cap or self._produced > MAX_ZIP_FILE:
            return False
        self._sha.update(out)
        cur.crc = zlib.crc32(out, cur.crc)
        return True

    def _data(self) -> bool:
        cur, inflater = self._cur, self._inflater
        known = self._limit >= 0
        if known and self._limit == 0 and inflater is None:
            return self._finish_entry()
        avail = min(len(self._buf), self._limit) if known else len(self._buf)
        if avail == 0 and (not known or self._limit > 0):
            return False
        with memoryview(self._buf) as mv, mv[:avail] as chunk:
            ok = self._emit(chunk) if inflater is None else self._inflate(inflater, chunk)
        if not ok:
            return self._give_up()
        self._consume(avail)
        cur.csize += avail
        if known:
            self._limit -= avail
        if inflater is None:
            return self._limit > 0 or self._finish_entry()
        if not inflater.eof:
            if known and self._limit == 0:
                return self._give_up()  # the declared compressed data ended mid-stream
            return avail > 0
        unused = inflater.unused_data
        if unused:
            if known:
                return self._give_up()  # junk after the deflate stream inside the entry
            self._buf[:0] = unused
            self._pos -= len(unused)
            cur.csize -= len(unused)
        if known:
            return self._finish_entry() if self._limit == 0 else self._give_up()
        self._state = self._DESCRIPTOR
        return True

    def _inflate(self, inflater: zlib._Decompress, data: bytes | memoryview) -> bool:
        while True:
            out = inflater.decompress(data, _OUT_BLOCK)
            if not self._emit(out):
                return False
            data = inflater.unconsumed_tail
            if inflater.eof or (not data and len(out) < _OUT_BLOCK):
                return True

    def _finish_entry(self) -> bool:
        cur = self._cur
        if (cur.crc, cur.csize, cur.usize) != self._hdr:
            return self._give_up()
        return self._close_entry()

    def _close_entry(self) -> bool:
        self._cur.sha256 = self._sha.hexdigest()
        self._inflater = None
        self._state = self._SIG
        return True

    def _descriptor(self) -> bool:
        # [signature] crc32, then 32- or 64-bit sizes; the next record's signature
        # must follow. Every field is matched against what we computed.
        if len(self._buf) < 28:
            return False
        cur = self._cur
        buf = bytes(self._buf[:28])
        for skip, fmt in ((4, "<IQQ"), (4, "<III"), (0, "<IQQ"), (0, "<III")):
            if skip and buf[:4] != _SIG_DESCRIPTOR:
                continue
            end = skip + struct.calcsize(fmt)
            if struct.unpack_from(fmt, buf, skip) == (cur.crc, cur.csize, cur.usize) and buf[
                end : end + 4
            ] in (_SIG_LOCAL, _SIG_CENTRAL):
                self._consume(end)
                return self._close_entry()
        return self._give_up()

    def _central_header(self) -> bool:
        if len(self._buf) < _CENTRAL.size:
            return False
        (_, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         disk_start, _, _, offset) = _CENTRAL.unpack_from(self._buf)
        end = _CENTRAL.size + name_len + extra_len + comment_len
        if len(self._buf) < end:
            return False
        name = bytes(self._buf[_CENTRAL.size : _CENTRAL.size + name_len])
        seen = self._locals.pop(offset, None)
        if (
            seen is None
            or disk_start != 0
            or (name, flags, method, crc, csize, usize)
            != (seen.name, seen.flags, seen.method, seen.crc, seen.csize, seen.usize)
        ):
            return self._give_up()
        key = name.decode("utf-8", "surrogateescape")
        if key in self._result or (key.endswith("/") and usize != 0):
            return self._give_up()
        self._result[key] = (seen.sha256, usize)
        self._consume(end)
        return True

    def _end_record(self) -> bool:
        if len(self._buf) < _EOCD.size:
            return False
        _, disk, cd_disk, n_disk, n, cd_size, cd_off, comment_len = _EOCD.unpack_from(self._buf)
        end = _EOCD.size + comment_len
        if len(self._buf) < end:
            return False
        if (
            self._locals
            or (disk, cd_disk) != (0, 0)
            or n_disk != n
            or n != len(self._result)
            or n == 0xFFFF
            or (cd_off, cd_size) != (self._central_at, self._pos - self._central_at)
            or len(self._buf) != end
            or _SIG_EOCD in self._buf[1:end]  # Go takes the last signature it finds
        ):
            return self._give_up()
        self._consume(end)
        self._state = self._END
        return False


def _has_zip64_extra(extra: bytes) -> bool:
    while len(extra) >= 4:
        tag, n = struct.unpack_from("<HH", extra)
        if tag == 1:
            return True
        extra = extra[4 + n :]
    return False


# --- creating zips -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Source:
    path: str  # slash-separated, relative to the module root
    size: int
    open: Callable[[], IO[bytes]]


_VCS_DIRS = frozenset({".bzr", ".git", ".hg", ".svn"})
_GO_LANG = re.compile(r"(0|[1-9]\d*)(?:\.(0|[1-9]\d*)(?:\.(?:0|[1-9]\d*)|[a-z]+(?:0|[1-9]\d*)?)?)?")


def _go_at_least_1_24(go_directive: str | None) -> bool:
    """go/version.Compare(version.Lang("go"+v), "go1.24") >= 0."""
    m = _GO_LANG.fullmatch(go_directive or "")
    return m is not None and (int(m[1]), int(m[2] or 0)) >= (1, 24)


def _is_vendored(name: str, go124: bool) -> bool:
    """x/mod/zip's isVendoredPackage, including the pre-1.24 offset bug it keeps for old modules."""
    if go124 and name == "vendor/modules.txt":
        return True
    if name.startswith("vendor/"):
        i = len("vendor/")
    elif (j := name.find("/vendor/")) >= 0:
        i = j + len("/vendor/") if go124 else len("/vendor/")
    else:
        return False
    return "/" in name[i:]


def _root_go_version(sources: Iterable[_Source]) -> str | None:
    for src in sources:
        if src.path == "go.mod" and src.size <= MAX_GO_MOD:
            with src.open() as fh:
                return gomod.go_version(fh.read(MAX_GO_MOD + 1))
    return None


def _select(sources: list[_Source]) -> list[_Source]:
    """x/mod/zip's checkFiles: the files that belong in the zip, or ZipError."""
    go124 = _go_at_least_1_24(_root_go_version(sources))
    module_dirs = set()
    for src in sources:
        head, _, base = src.path.rpartition("/")
        if _fold(base) == "go.mod":
            module_dirs.add(head)

    def in_submodule(p: str) -> bool:
        while "/" in p:
            p = p.rpartition("/")[0]
            if p in module_dirs:
                return True
        return False

    collisions = _Collisions()
    budget = MAX_ZIP_FILE
    size_error: str | None = None
    first_error: str | None = None
    chosen = []
    for src in sorted(sources, key=lambda s: _name_bytes(s.path)):
        p = src.path
        problem: str | None = None
        if _clean(p) != p:
            problem = "file path is not clean"
        elif p.startswith("/"):
            problem = "file path is not relative"
        elif _is_vendored(p, go124) or in_submodule(p) or p == ".hg_archival.txt":
            continue
        else:
            try:
                check_file_path(p)
            except ValueError as err:
                problem = str(err)
        if problem is None and p.lower() == "go.mod" and p != "go.mod":
            problem = "go.mod files must have lowercase names"
        problem = problem or collisions.check(p, False)
        if problem is None:
            if src.size <= budget:
                budget -= src.size
            elif size_error is None:
                size_error = f"module source tree too large (max size is {MAX_ZIP_FILE} bytes)"
            if p == "go.mod" and src.size > MAX_GO_MOD:
                problem = f"go.mod file too large (max size is {MAX_GO_MOD} bytes)"
            elif p == "LICENSE" and src.size > MAX_LICENSE:
                problem = f"LICENSE file too large (max size is {MAX_LICENSE} bytes)"
        if problem is None:
            chosen.append(src)
        elif first_error is None:
            first_error = f"{p}: {problem}"
    if size_error is not None:
        raise ZipError(size_error)
    if first_error is not None:
        raise ZipError(first_error)
    return chosen


class _WriteOnly:
    """Hide seek/tell so zipfile always streams with data descriptors: the output
    bytes then depend only on the files, not on what kind of stream `out` is."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def _write(sources: list[_Source], module: str, version: str, out: IO[bytes]) -> None:
    chosen = _select(sources)
    prefix = f"{module}@{version}/"
    with zipfile.ZipFile(_WriteOnly(out), "w", zipfile.ZIP_DEFLATED) as zf:  # type: ignore[arg-type]
        for src in chosen:
            info = zipfile.ZipInfo(prefix + src.path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            left = src.size + 1  # like Go: notice a file that grew since it was listed
            with src.open() as fh, zf.open(info, "w") as dst:
                while left > 0 and (block := fh.read(min(left, _IO_BLOCK))):
                    dst.write(block)
                    left -= len(block)
            if left <= 0:
                raise ZipError(f"file {src.path!r} is larger than declared size")


def create_zip_from_files(
    files: Iterable[tuple[str, bytes]], module: str, version: str, out: BinaryIO
) -> None:
    """x/mod/zip.Create over (slash-separated relative name, content) pairs."""
    _write([_Source(name, len(data), partial(io.BytesIO, data)) for name, data in files], module, version, out)


def _walk(root: Path) -> list[_Source]:
    """x/mod/zip's listFilesInDir: regular files, minus VCS dirs, nested modules, vendored packages."""
    go_mod = root / "go.mod"
    go124 = False
    if go_mod.is_file() and go_mod.stat().st_size <= MAX_GO_MOD:
        go124 = _go_at_least_1_24(gomod.go_version(go_mod.read_bytes()))
    out: list[_Source] = []

    def visit(directory: Path, rel: str) -> None:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda d: os.fsencode(d.name))
        for child in children:
            slash = f"{rel}{child.name}"
            if _is_vendored(slash, go124):
                continue  # everything below a vendored path is vendored too
            if child.is_dir(follow_symlinks=False):
                if child.name in _VCS_DIRS:
                    continue
                try:
                    if not stat.S_ISDIR(os.lstat(os.path.join(child.path, "go.mod")).st_mode):
                        continue  # another module
                except FileNotFoundError:
                    pass
                visit(Path(child.path), slash + "/")
            elif child.is_file(follow_symlinks=False):
                size = child.stat(follow_symlinks=False).st_size
                out.append(_Source(slash, size, partial(open, child.path, "rb")))
            # symlinks and other irregular files are left out

    visit(root, "")
    return out


def create_zip(src_dir: str | os.PathLike[str], module: str, version: str, out: BinaryIO) -> None:
    """x/mod/zip.CreateFromDir: the canonical zip of a module tree, written to `out`.

    Deterministic: entries sorted by name, fixed timestamps and modes, deflate.
    """
    _write(_walk(Path(src_dir)), module, version, out)
