"""The seam the mesh (package `sync`) plugs into; `node` never imports `sync`.

The node calls these hooks; the mesh implements them. Kept deliberately small:
each method is a fact the node knows first (a verified blob was stored, where it
listens), and nothing here can make the node serve unverified bytes. The mesh's
status record (`MeshStatus`) is typed here too, so that the dashboard can read it
without importing `sync`.

What `sync` may use from `node` -- the whole contract. A change to any of these is
a change to the mesh; anything not listed is node's to change freely.
tests/test_mesh_seam.py checks that sync imports nothing from node beyond this list.

- `node.hooks`: `HOP_HEADER` (a request with it is answered from the cache only, and
  is no local use); `Hooks` -- `observers` (StoreObserver), `access` (AccessObserver),
  `peers` (PeerSource, with `PeerCandidate`), `authenticators`, `listeners` (told
  the base URL by `Node.listen`), `mesh_status` (the dashboard's view of the mesh),
  `private` (the node's `PrivateModules`: the mesh reads `own_patterns()` to declare
  them, asks whether a module is private by calling it, and adds each member's
  patterns with `add()` / `discard()` / `sources()` under "mesh:<node id>"; every
  check of the node -- checksum databases, upstream choice -- honours them) -- and
  the status record `MeshStatus`, `MemberStatus`, `SeedStatus`, `CatalogStatus`,
  `PresyncStatus`.
- `node.service`: `Node`, between `start()` and `aclose()`, for these only:
  `config` (`data`, `host_port`, `sections`, `max_size`), `app` (routes and a
  middleware, added before `listen()`; `frozen`), `hooks`, `index`, `store.tmp_dir`,
  `proxy`, `metrics` (`registry`; and for `Upstream`), and `store_bytes` (the store's
  size as of the node's last stats tick). Not `url`: the `listening` hook says it.
- `node.config`: `ConfigError`, `load_config` (`modmesh peers --config`).
- `node.settings`: `Settings`, `setting`, `Flag`, `ConfigError`, `parse_size` (the
  `[mesh]` settings are declared like node's own: one declaration, TOML keys,
  `MODMESH_MESH_*` variables and serve flags derived from it).
- `node.cache.index`: `Entry` (`module`, `version`, `kind`, `serial`, `sha256`, `h1`,
  `size`, `source`, `unverified`), `Index` (`epoch`, `get()`, `changes_since()` -- the
  change log peers page through -- and `db`, for one read of the `entries` table's
  highest serial and row count).
- `node.cache.protocol`: `ModRequest` (`module`, `version`, `kind`, `key`,
  `versioned`, `upstream_path`), `parse_request`.
- `node.cache.proxy`: `ModuleProxy`, for `admit()` only (a blob pre-synced from a
  peer is verified and stored like one from any upstream).
- `node.cache.upstream`: `Upstream` (`base`, `label`), `Timeouts`, `CircuitBreaker`
  (a peer is asked like an upstream, through the node's own fetch-and-verify path).
- `node.errors`: `ModmeshError`, `IntegrityError`, `NotFound`.
- `node.golang.modzip`: `MAX_ZIP_FILE`.

Besides, `sync.plugin.MeshPlugin` meets `node.plugins.Plugin` (structurally, without
importing it): it is started after `Node.start()` and before `Node.listen()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

from aiohttp import web

from node.cache.index import Entry
from node.cache.protocol import ModRequest
from node.cache.upstream import Upstream
from node.golang.patterns import match_prefix_patterns

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


def split_patterns(globs: str) -> tuple[str, ...]:
    """GOPRIVATE-style `a,b,c` as its non-empty patterns, each once, in order."""
    return tuple(dict.fromkeys(p for p in globs.split(",") if p))


class PrivateModules:
    """Which module paths are private (GOPRIVATE syntax): never sent to a checksum
    database, and fetched only through what a node is configured with for them.

    `own` holds this node's patterns (`private`, `nosumdb` and every route's pattern),
    set by the node as it starts. Other parts add patterns by source: the mesh adds
    what each member declares as its own, so that no node of a mesh sends a module
    another member treats as private to a checksum database. A module that only
    another source's patterns match is *foreign*: this node has no route for it, so
    it fetches it from no upstream at all (`ModuleProxy.chain_for`).

    Answers are memoised (bounded, forgotten when a pattern changes): they sit on the
    request path."""

    MEMO = 1 << 16

    def __init__(self, own: str = "") -> None:
        self._own = own
        self._others: dict[str, tuple[str, ...]] = {}
        self._other_globs = ""
        self._memo: dict[str, tuple[bool, bool]] = {}

    @property
    def own(self) -> str:
        return self._own

    @own.setter
    def own(self, globs: str) -> None:
        self._own = globs
        self._memo.clear()

    def own_patterns(self) -> tuple[str, ...]:
        """This node's own patterns, one each (what the mesh tells other members)."""
        return split_patterns(self._own)

    def add(self, source: str, patterns: Iterable[str]) -> bool:
        """Set the patterns `source` declares, replacing its earlier ones (none: drop
        the source); True if they changed."""
        new = split_patterns(",".join(patterns))
        if self._others.get(source, ()) == new:
            return False
        if new:
            self._others[source] = new
        else:
            self._others.pop(source, None)
        self._other_globs = ",".join(dict.fromkeys(p for ps in self._others.values() for p in ps))
        self._memo.clear()
        return True

    def discard(self, source: str) -> None:
        self.add(source, ())

    def sources(self) -> dict[str, tuple[str, ...]]:
        """The patterns other parts added, by source."""
        return dict(self._others)

    @property
    def joined(self) -> str:
        """Every pattern this node honours, own first, as one GOPRIVATE-style string."""
        return ",".join(dict.fromkeys((*self.own_patterns(), *split_patterns(self._other_globs))))

    def _match(self, module: str) -> tuple[bool, bool]:
        hit = self._memo.get(module)
        if hit is None:
            hit = (
                bool(self._own) and match_prefix_patterns(self._own, module),
                bool(self._other_globs) and match_prefix_patterns(self._other_globs, module),
            )
            if len(self._memo) >= self.MEMO:
                self._memo.clear()
            self._memo[module] = hit
        return hit

    def __call__(self, module: str) -> bool:
        """Private by this node's patterns or any other source's."""
        own, other = self._match(module)
        return own or other

    def foreign(self, module: str) -> bool:
        """Private only by another source's patterns: not this node's to fetch."""
        own, other = self._match(module)
        return other and not own


# ---- the mesh's status record --------------------------------------------------------
#
# What `GET /_mesh/status` answers as JSON and `modmesh peers` prints; the dashboard
# reads the same record through `Hooks.mesh_status`. sync/status.py builds it. The
# keys are a public format (other tooling reads the JSON): add keys, never rename.


class MemberStatus(TypedDict):
    """One member of the mesh as this node sees it."""

    node_id: str
    url: str
    state: str  # alive, suspect, dead
    source: str  # static, mdns, gossip
    last_seen_s: float
    inventory: int  # files it holds (as far as we synced its change log)
    synced_serial: int
    head_serial: int
    backlog: int  # change-log entries not synced yet
    failures: int
    quarantined_s: float  # seconds of quarantine left; 0 when not quarantined
    quarantine_reason: str
    private: list[str]  # the module patterns it declares private (honoured by this node)


class SeedStatus(TypedDict):
    """A URL the mesh tries: a static peer, or one mDNS announced."""

    url: str
    source: str
    node_id: str | None
    self: bool  # the URL turned out to be this node


class CatalogStatus(TypedDict):
    entries: int
    skipped: int


class PresyncStatus(TypedDict):
    enabled: bool
    active: list[str]
    backlog: int
    store_bytes: int
    budget_bytes: int


class MeshStatus(TypedDict):
    """This node in its mesh: who it is, its members and seeds, sync and pre-sync."""

    node_id: str
    mesh: str
    url: str
    epoch: str
    head_serial: int
    inventory: int
    members: list[MemberStatus]
    seeds: list[SeedStatus]
    catalog: CatalogStatus
    presync: PresyncStatus
    sync_backlog: int
    private: list[str]  # this node's own private patterns, as it declares them to members


@dataclass
class Hooks:
    observers: list[StoreObserver] = field(default_factory=list)
    access: list[AccessObserver] = field(default_factory=list)
    peers: PeerSource | None = None
    #: Accept a request without client credentials (the mesh's signed peer requests).
    authenticators: list[Callable[[web.Request], bool]] = field(default_factory=list)
    #: Told the node's base URL once `Node.listen` has bound it (the port may have
    #: been 0 until then). Called on the event loop; must not block.
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    #: The mesh's status record, for the dashboard; None when no mesh runs.
    mesh_status: Callable[[], MeshStatus] | None = None
    #: Private module patterns: the node's own, and those the mesh adds (its members').
    private: PrivateModules = field(default_factory=PrivateModules)

    def listening(self, url: str) -> None:
        for cb in self.listeners:
            try:
                cb(url)
            except Exception:
                log.exception("listening hook %r failed", cb)

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
