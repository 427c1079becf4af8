"""The seam the mesh (package `sync`) plugs into; `node` never imports `sync`.

The node calls these hooks; the mesh implements them. Kept deliberately small:
each method is a fact the node knows first (a verified blob was stored), and
nothing here can make the node serve unverified bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from node.cache.index import Entry
from node.cache.protocol import ModRequest
from node.cache.upstream import Upstream

log = logging.getLogger(__name__)

#: The header a node puts on a request it forwards to another node: the answer comes
#: from the cache only (no forwarding loops), and it never counts as local use.
HOP_HEADER = "X-Modmesh-Hop"


class StoreObserver(Protocol):
    def stored(self, entry: Entry) -> None:
        """A versioned file was verified and committed. Must not block."""


class AccessObserver(Protocol):
    def accessed(self, req: ModRequest, cache: str) -> None:
        """A versioned file was served ("hit") or fetched ("miss"). Must not block."""


@dataclass(frozen=True)
class PeerCandidate:
    """A peer to ask, and what it advertised for the file (checked after download)."""

    upstream: Upstream
    sha256: str | None = None
    h1: str | None = None


class PeerSource(Protocol):
    """Other nodes to ask on a miss, before any upstream (the mesh)."""

    def peers_for(self, req: ModRequest) -> list[PeerCandidate]:
        """Live peers likely to hold this file, best first; empty when none."""

    def report(self, peer: Upstream, req: ModRequest, error: Exception | None) -> None:
        """How asking `peer` went: None, or the error (IntegrityError: it lied)."""


@dataclass
class Hooks:
    observers: list[StoreObserver] = field(default_factory=list)
    access: list[AccessObserver] = field(default_factory=list)
    peers: PeerSource | None = None
    #: Accept a request without client credentials (the mesh's signed peer requests).
    authenticators: list[Callable[[web.Request], bool]] = field(default_factory=list)

    def accessed(self, req: ModRequest, cache: str) -> None:
        for obs in self.access:
            try:
                obs.accessed(req, cache)
            except Exception:
                log.exception("access observer %r failed", obs)

    def stored(self, entry: Entry) -> None:
        for obs in self.observers:
            try:
                obs.stored(entry)
            except Exception:  # an observer's bug must not fail a client request
                log.exception("store observer %r failed", obs)
