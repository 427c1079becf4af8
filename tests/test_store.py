from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from node.cache.store import BlobStore


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_atomic_put_and_orphan_cleanup(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.open()
    w = store.writer()
    w.write(b"partial")
    # A crash now leaves only a temp file: no blob is visible under blobs/.
    assert not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))
    blob = store.put_bytes(b"hello")
    assert blob.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert store.read(blob.sha256) == b"hello" and blob.path is None  # small: packed
    # Another live store on the same directory (a second process) keeps its temp files...
    other = BlobStore(tmp_path)
    assert other.open() == 0 and w.tmp_path.exists()
    # ...while those of a process that is gone are orphans, removed at the next start.
    crashed = tmp_path / "tmp" / f"{dead_pid()}-0000"
    store.tmp_dir.rename(crashed)
    assert BlobStore(tmp_path).open() == 1
    assert not crashed.exists()
    w.abort()  # idempotent even when the file is gone
    other.close()
    assert not other.tmp_dir.exists()


def test_truncate_restarts_hash(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.open()
    w = store.writer()
    w.write(b"bad bytes from upstream A")
    w.truncate()
    w.write(b"good")
    blob = w.commit()
    assert blob.sha256 == hashlib.sha256(b"good").hexdigest() and blob.size == 4
    assert store.read(blob.sha256) == b"good"
