"""The request path's records: its settings, the answers it gives, and the seam to
the checksum database (`BlobVerifier`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.cache.index import Entry


class BlobVerifier(Protocol):
    """Checks a verified-sound blob against an outside authority (the checksum database)."""

    def start_lookup(self, module: str, version: str) -> None: ...

    async def verify(self, module: str, version: str, kind: str, h1: str, require: bool = False) -> bool:
        """True if confirmed (or not checked), False if the authority could not say;
        IntegrityError if it disagrees (or could not say, with `require`)."""


@dataclass(frozen=True)
class ProxySettings:
    meta_ttl: float = 300.0
    #: After the TTL, serve the cached list/latest while refreshing in the
    #: background for this long; after that, refresh before answering.
    meta_stale_window: float = 300.0
    negative_ttl: float = 60.0
    #: Zips up to this size are verified whole before the first byte goes out;
    #: larger ones stream to waiting clients while they download.
    stream_threshold: int = 4 << 20
    #: Serve only what is cached; list/latest of any age.
    offline: bool = False
    #: Bytes of files the store cannot take (disk full) held in memory at once to
    #: pass them through to clients uncached.
    passthrough_memory: int = 512 << 20
    #: Bytes the in-memory caches (bodies and rows of hits, list/latest answers,
    #: "not found" answers) hold at most, together (memory.CacheSizes.split).
    memory_cache: int = 64 << 20
    #: Hash each blob before its first serve in a run of the node.
    check_on_serve: bool = True


@dataclass(frozen=True, slots=True)
class Served:
    """A versioned file ready to send: from memory (`body`) or from `path`."""

    entry: Entry
    path: Path | None  # None when `body` holds the bytes
    body: bytes | None
    cache: str  # "hit" or "miss"


@dataclass(frozen=True, slots=True)
class MetaAnswer:
    body: bytes
    cache: str  # hit, miss, revalidated, stale
    age: float
    source: str
    stale_reason: str | None = None
