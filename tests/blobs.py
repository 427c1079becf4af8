"""A store's blobs wherever they are (a file under `<data>/blobs/`, or a row of
`<data>/blobs/pack.sqlite`), for tests that read, damage, age or delete them behind
the node's back: the file operations those tests use, on either."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from node.cache.pack import decode

PACK = "pack.sqlite"


def _pack(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(data / "blobs" / PACK, timeout=10.0, isolation_level=None)


class Blob:
    def __init__(self, data: Path, sha256: str) -> None:
        self.data = data
        self.name = sha256
        self.file = data / "blobs" / sha256[:2] / sha256

    def __repr__(self) -> str:
        return f"<Blob {self.name} {'file' if self.file.is_file() else 'packed' if self.packed() else 'missing'}>"

    def _row(self) -> tuple[bytes, int | None] | None:
        """The pack's row as it is: (data, size), data deflated when size is not None."""
        if not (self.data / "blobs" / PACK).is_file():
            return None
        with _pack(self.data) as db:
            row = db.execute("SELECT data, size FROM blobs WHERE sha256 = ?", (bytes.fromhex(self.name),)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def packed(self) -> bool:
        return self._row() is not None

    def deflated(self) -> bool:
        row = self._row()
        return row is not None and row[1] is not None

    def exists(self) -> bool:
        return self.file.is_file() or self.packed()

    is_file = exists

    def read_bytes(self) -> bytes:
        if self.file.is_file():
            return self.file.read_bytes()
        row = self._row()
        if row is None:
            raise FileNotFoundError(self.name)
        return decode(*row)

    def write_bytes(self, data: bytes) -> None:
        """Replace the blob's bytes where they are (a new blob is a file; a packed one
        becomes a row holding them as they are, not deflated)."""
        if not self.file.is_file() and self.packed():
            with _pack(self.data) as db:
                db.execute("UPDATE blobs SET data = ?, size = NULL WHERE sha256 = ?", (data, bytes.fromhex(self.name)))
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_bytes(data)

    def unlink(self, missing_ok: bool = False) -> None:
        if self.file.is_file():
            self.file.unlink()
            return
        if self.packed():
            with _pack(self.data) as db:
                db.execute("DELETE FROM blobs WHERE sha256 = ?", (bytes.fromhex(self.name),))
            return
        if not missing_ok:
            raise FileNotFoundError(self.name)

    def age(self, when: float) -> None:
        """Set when the blob was written (a file's mtime)."""
        if self.file.is_file():
            os.utime(self.file, (when, when))
            return
        with _pack(self.data) as db:
            db.execute("UPDATE blobs SET written = ? WHERE sha256 = ?", (int(when * 1000), bytes.fromhex(self.name)))


def blob(store_root: Path, sha256: str) -> Blob:
    return Blob(store_root, sha256)


def on_disk(data: Path) -> dict[str, int]:
    """sha256 -> size of every blob the store holds, files and packed."""
    out = {p.name: p.stat().st_size for p in (data / "blobs").rglob("*") if p.is_file() and not p.name.startswith(PACK)}
    if (data / "blobs" / PACK).is_file():
        with _pack(data) as db:
            out.update(
                (bytes(k).hex(), n) for k, n in db.execute("SELECT sha256, coalesce(size, length(data)) FROM blobs")
            )
    return out


def flip_byte(b: Blob | Path) -> None:
    """One byte changed in place, as bit rot or a bad sector would."""
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0x01
    b.write_bytes(bytes(data))
