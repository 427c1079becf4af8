"""The h1 hash of go.sum lines (port of x/mod/sumdb/dirhash's Hash1)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

from node.golang._zipformat import ZipError, name_bytes

__all__ = ["h1_from_digests", "h1_gomod"]

_HEX256 = re.compile(r"[0-9a-f]{64}")


def h1_from_digests(items: Iterable[tuple[str, str]]) -> str:
    """Hash1 over (name, lowercase hex SHA-256 of content) pairs."""
    lines = []
    for name, digest in items:
        raw = name_bytes(name)
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
