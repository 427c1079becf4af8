"""The binary layout and naming rules of module zips, shared by the reader (modzip),
the streaming hasher (zipstream) and the writer (zipwriter). Package-private: other
packages use modzip's public names (ZipError, the MAX_* limits)."""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

MAX_ZIP_FILE = 500 << 20
MAX_GO_MOD = 16 << 20
MAX_LICENSE = 16 << 20

# Not a Go rule: a cap on entries so a hostile central directory (up to ~10M
# tiny records in 500 MiB) cannot cost gigabytes; ~300 bytes of state per entry.
# The largest real module zips hold tens of thousands of files.
MAX_ENTRIES = 1 << 20

IO_BLOCK = 1 << 20  # compressed bytes read at a time
OUT_BLOCK = 4 << 20  # most bytes one inflate call may produce
EMPTY_SHA256 = hashlib.sha256().hexdigest()


class ZipError(ValueError):
    """A zip the go command would refuse (or that we refuse as ambiguous)."""

    def __init__(self, message: str) -> None:
        # Hostile names must not break the one-line error an HTTP body carries:
        # undecodable bytes (kept as surrogate escapes) and controls become \xNN.
        try:
            message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            message = message.encode("utf-8", "backslashreplace").decode()
        super().__init__(message.translate(_CONTROLS))


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


# --- names ---------------------------------------------------------------------


def name_bytes(name: str) -> bytes:
    """The bytes Go holds for a name; undecodable bytes were kept as surrogate escapes."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ZipError(f"file name {name!r} is not representable as bytes") from None


def clean(p: str) -> str:
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
    (0xA7CB, 0xA7CB, 0x0264),
    (0xA7DC, 0xA7DC, 0x019B),
    (0xA7CC, 0xA7CC, 0xA7CD),
    (0xA7CD, 0xA7CD, 0xA7CD),
    (0xA7CE, 0xA7CE, 0xA7CF),
    (0xA7CF, 0xA7CF, 0xA7CF),
    (0xA7D2, 0xA7D2, 0xA7D3),
    (0xA7D3, 0xA7D3, 0xA7D3),
    (0xA7D4, 0xA7D4, 0xA7D5),
    (0xA7D5, 0xA7D5, 0xA7D5),
    (0xA7DA, 0xA7DA, 0xA7DB),
    (0xA7DB, 0xA7DB, 0xA7DB),
    (0x1C89, 0x1C89, 0x1C8A),
    (0x1C8A, 0x1C8A, 0x1C8A),
    (0x10D50, 0x10D65, 0x10D70),
    (0x10D70, 0x10D85, 0x10D70),
    (0x16EA0, 0x16EB8, 0x16EBB),
    (0x16EBB, 0x16ED3, 0x16EBB),
    (0xFB05, 0xFB05, 0xFB05),
    (0xFB06, 0xFB06, 0xFB05),
    (0x1FD3, 0x1FD3, 0x0390),
    (0x1FE3, 0x1FE3, 0x03B0),
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


def fold(s: str) -> str:
    """A key with fold(s) == fold(t) iff Go's strings.EqualFold(s, t)."""
    if s.isascii():
        return s.lower()
    return "".join(map(_fold_char, s))


class Collisions:
    """Go's collisionChecker: case-fold collisions, duplicates, file-vs-directory."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool]] = {}

    def check(self, p: str, is_dir: bool) -> str | None:
        while True:
            key = fold(p)
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


# --- layout --------------------------------------------------------------------

LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory header, 46 bytes
EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory, 56 bytes
LOC64 = struct.Struct("<4sIQI")  # zip64 end locator, 20 bytes
SIG_LOCAL, SIG_CENTRAL, SIG_EOCD = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
SIG_EOCD64, SIG_LOC64, SIG_DESCRIPTOR = b"PK\x06\x06", b"PK\x06\x07", b"PK\x07\x08"
STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED = 0x0041  # traditional or strong encryption
FLAG_DESCRIPTOR = 0x0008
U32 = 0xFFFFFFFF
