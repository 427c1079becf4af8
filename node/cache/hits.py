"""Hits: a cached versioned file's index row and, for a small file, its bytes.

From memory when they are there: rows in an LRU sized in bytes (memory.py), small
files as hot answers under their request path (hot.py), which the fast path answers
from alone. Else read from the index and the store in one trip to a worker thread
(`Index.get_blocking`, then the blob; reads.py batches the trips), never on the event
loop. Every blob is hashed before its first serve in a run (integrity.py): bytes
already in memory were checked on their way in.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from node.cache import hot
from node.cache.index import Entry, Index
from node.cache.integrity import Integrity
from node.cache.memory import LRU, CacheSizes, entry_size
from node.cache.model import Served
from node.cache.protocol import ModRequest
from node.cache.reads import Reads
from node.cache.store import BlobStore

log = logging.getLogger(__name__)

#: Small blobs kept in memory so hot .info/.mod hits skip the file system.
SMALL_BLOB = 64 * 1024


class Hits:
    def __init__(self, store: BlobStore, index: Index, integrity: Integrity, sizes: CacheSizes) -> None:
        self.store = store
        self.index = index
        self.integrity = integrity
        self.entries: LRU[str, Entry] = LRU(sizes.entries, entry_size)
        #: Small files by request path, as hot answers (hot.py).
        self.hot: LRU[str, bytes] = LRU(sizes.hot, hot.size)
        self.reads = Reads()

    def in_memory(self, req: ModRequest) -> tuple[Entry, bytes] | None:
        """The row and bytes of a file memory holds whole, without waiting on anything."""
        entry = self.entries.get(req.key)
        if entry is None:
            return None
        body = self.body(req)
        return None if body is None else (entry, body)

    def body(self, req: ModRequest) -> bytes | None:
        """A small file's bytes, if memory holds them."""
        record = self.hot.get(req.path)
        return None if record is None else bytes(hot.body(record))

    def remember(self, req: ModRequest, entry: Entry, body: bytes | None, row: bool = True) -> None:
        """A file just stored or read (its bytes, if small, checked on their way in); its
        row too unless not `row` and the hot answer holds the file."""
        record = None if body is None else hot.pack(entry, body)
        if record is not None:
            self.hot.put(req.path, record)
        if row or record is None:
            self.entries.put(req.key, entry)

    def forget(self, req: ModRequest) -> None:
        self.entries.pop(req.key)
        self.hot.pop(req.path)

    async def lookup(self, req: ModRequest, row: bool = True) -> Served | None:
        """A hit from memory or the store; None if the store does not hold the file, or
        held it damaged (then it is in quarantine, and the caller fetches it again).
        Not `row`: for the fast path, which answers a small file from its hot answer
        alone (its row would only take memory, and a collector's time, from others)."""
        entry = self.entries.get(req.key)
        if entry is None:
            entry, body, present = await self.reads.run(functools.partial(self._read, req))
            if entry is None:
                return None
        else:
            body, present = self.body(req), True
            if body is None and self._read_now(entry):
                body, present = await self.reads.run(
                    functools.partial(self.store.probe, entry.sha256, entry.size, entry.size <= SMALL_BLOB)
                )
        path = None if body is not None else self.store.path_for(entry.sha256)  # a large blob is a file
        if self.integrity.needs_check(entry):
            if not await self.integrity.check(entry, body):
                return None
            entry = dataclasses.replace(entry, checked_boot=self.index.boot)
        elif not present:
            log.warning("blob for %s missing from the store; refetching", req.key)
            self.entries.pop(req.key)
            await self.index.delete(req.module, req.version, req.kind)
            return None
        self.remember(req, entry, body, row)
        return Served(entry, path, body, "hit")

    def _read_now(self, entry: Entry) -> bool:
        """Read (or look for) the blob with its row: a small one's bytes are served from
        memory; a large one is looked for unless the check before its first serve will."""
        return entry.size <= SMALL_BLOB or not self.integrity.needs_check(entry)

    def _read(self, req: ModRequest) -> tuple[Entry | None, bytes | None, bool]:
        """(row, a small blob's bytes, whether the blob is there), in a worker thread."""
        entry = self.index.get_blocking(req.module, req.version, req.kind)
        if entry is None:
            return None, None, False
        if not self._read_now(entry):
            return entry, None, True
        body, present = self.store.probe(entry.sha256, entry.size, entry.size <= SMALL_BLOB)
        return entry, body, present
