"""Per-entry sha256 of a module zip while it downloads (`ZipStreamHasher`).

The proxy feeds each chunk as it arrives, so when the last byte lands the h1 is
ready and `modzip.check_zip` only has to cross-check the central directory
instead of reading a 500 MB zip a second time. Anything unusual makes it give
up (digests() returns None) and the caller falls back to reading the file.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from dataclasses import dataclass

from node.golang._zipformat import (
    CENTRAL,
    DEFLATED,
    EOCD,
    FLAG_DESCRIPTOR,
    FLAG_ENCRYPTED,
    LOCAL,
    MAX_ENTRIES,
    MAX_ZIP_FILE,
    OUT_BLOCK,
    SIG_CENTRAL,
    SIG_DESCRIPTOR,
    SIG_EOCD,
    SIG_LOCAL,
    STORED,
    U32,
)

__all__ = ["ZipStreamHasher"]

_log = logging.getLogger(__name__)


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

    _SIG, _DATA, _DESCRIPTOR, CENTRAL, _END, _FAILED = range(6)

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
            if sig == SIG_LOCAL:
                return self._local_header()
            if sig in (SIG_CENTRAL, SIG_EOCD):
                self._state, self._central_at = self.CENTRAL, self._pos
                return True
        elif self._state == self.CENTRAL:
            if sig == SIG_CENTRAL:
                return self._central_header()
            if sig == SIG_EOCD:
                return self._end_record()
        return self._give_up()

    def _local_header(self) -> bool:
        if len(self._buf) < LOCAL.size:
            return False
        _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = LOCAL.unpack_from(self._buf)
        end = LOCAL.size + name_len + extra_len
        if len(self._buf) < end:
            return False
        extra = bytes(self._buf[LOCAL.size + name_len : end])
        if (
            flags & FLAG_ENCRYPTED
            or method not in (STORED, DEFLATED)
            or (method == STORED and flags & FLAG_DESCRIPTOR)
            or U32 in (csize, usize)
            or _has_zip64_extra(extra)
        ):
            return self._give_up()
        if len(self._locals) >= MAX_ENTRIES:
            return self._give_up()
        self._cur = _Seen(bytes(self._buf[LOCAL.size : LOCAL.size + name_len]), flags, method)
        self._locals[self._pos] = self._cur
        self._hdr = (crc, csize, usize)
        self._consume(end)
        self._sha = hashlib.sha256()
        self._inflater = zlib.decompressobj(-15) if method == DEFLATED else None
        self._limit = -1 if flags & FLAG_DESCRIPTOR else csize
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
            out = inflater.decompress(data, OUT_BLOCK)
            if not self._emit(out):
                return False
            data = inflater.unconsumed_tail
            if inflater.eof or (not data and len(out) < OUT_BLOCK):
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
            if skip and buf[:4] != SIG_DESCRIPTOR:
                continue
            end = skip + struct.calcsize(fmt)
            fields, follows = struct.unpack_from(fmt, buf, skip), buf[end : end + 4]
            if fields == (cur.crc, cur.csize, cur.usize) and follows in (SIG_LOCAL, SIG_CENTRAL):
                self._consume(end)
                return self._close_entry()
        return self._give_up()

    def _central_header(self) -> bool:
        if len(self._buf) < CENTRAL.size:
            return False
        (
            _,
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
            disk_start,
            _,
            _,
            offset,
        ) = CENTRAL.unpack_from(self._buf)
        end = CENTRAL.size + name_len + extra_len + comment_len
        if len(self._buf) < end:
            return False
        name = bytes(self._buf[CENTRAL.size : CENTRAL.size + name_len])
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
        if len(self._buf) < EOCD.size:
            return False
        _, disk, cd_disk, n_disk, n, cd_size, cd_off, comment_len = EOCD.unpack_from(self._buf)
        end = EOCD.size + comment_len
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
            or SIG_EOCD in self._buf[1:end]  # Go takes the last signature it finds
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
