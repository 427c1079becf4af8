from __future__ import annotations

import hashlib
from pathlib import Path

from node.store import BlobStore


def test_atomic_put_and_orphan_cleanup(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.open()
    w = store.writer()
    w.write(b"partial")
    # A crash now leaves only a temp file: no blob is visible under blobs/.
    assert not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))
    blob = store.put_bytes(b"hello")
    assert blob.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert store.path_for(blob.sha256).read_bytes() == b"hello"
    assert BlobStore(tmp_path).open() == 1  # the writer's temp file was an orphan
    assert list((tmp_path / "tmp").iterdir()) == []
    w.abort()  # idempotent even when the file is gone


def test_truncate_restarts_hash(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.open()
    w = store.writer()
    w.write(b"bad bytes from upstream A")
    w.truncate()
    w.write(b"good")
    blob = w.commit()
    assert blob.sha256 == hashlib.sha256(b"good").hexdigest() and blob.size == 4
    assert store.path_for(blob.sha256).read_bytes() == b"good"
