"""Hot answers: every small cached file memory holds, as one bytes object under the
request path that asks for it.

A hit on the fast path then costs one dictionary lookup: no request parse, no index
row, no header block cached per file. Per-file caches of those (650-900 bytes of
Python objects per file) stopped hitting once a store held more files than they did,
and a random-key hit at 100k cached versions cost four times one at 1k. A record is
about 350 bytes with its path, so the default `memory_cache` holds ~130,000 of them.

A record is `flags (1) | sha256 (32, raw) | len(h1) (1) | h1 (ASCII) | body`: all the
answer's headers need (server/responses.py builds them) and the bytes. Only files
whose bytes were checked go in (stored, or hashed before their first serve).
"""

from __future__ import annotations

from node.cache.memory import OBJECT_OVERHEAD
from node.cache.rows import Entry

#: The file is not confirmed by the checksum database yet: peers are not given it.
UNVERIFIED = 1
_SHA_END = 33
#: Bytes a record costs besides its path's and its own characters: the OrderedDict's
#: slot and link, 70-140 with the table's fill (tracemalloc, CPython 3.11), and the
#: bytes object's header (33).
HOT_OVERHEAD = 100 + 33


def pack(entry: Entry, body: bytes) -> bytes | None:
    """The record of a stored file and its (checked) bytes; None if it has no such form."""
    h1 = (entry.h1 or "").encode("ascii", "replace")
    if len(h1) > 255 or len(entry.sha256) != 64:
        return None
    flags = UNVERIFIED if entry.unverified else 0
    return bytes((flags,)) + bytes.fromhex(entry.sha256) + bytes((len(h1),)) + h1 + body


def unverified(record: bytes) -> bool:
    return bool(record[0] & UNVERIFIED)


def sha256(record: bytes) -> bytes:
    """The body's SHA-256, 32 raw bytes."""
    return record[1:_SHA_END]


def h1(record: bytes) -> bytes:
    """The file's `h1:` hash as ASCII, or b"" (none)."""
    return record[_SHA_END + 1 : _SHA_END + 1 + record[_SHA_END]]


def body(record: bytes) -> memoryview:
    return memoryview(record)[_SHA_END + 1 + record[_SHA_END] :]


def size(path: str, record: bytes) -> int:
    """What a record under `path` costs in memory (memory.LRU's size of an item)."""
    return HOT_OVERHEAD + OBJECT_OVERHEAD + len(path) + len(record)
