"""Pre-sync: copy what the mesh uses before anyone here asks (and before the WAN fails).

Each round takes the mesh-wide most popular module versions (top-K and/or a
minimum decayed score), and for every .mod/.info/.zip some live peer holds and
this node lacks, pulls it through `Puller` (resumable, verified, admitted like any
other blob), within a disk budget and a cap on concurrent transfers; the byte
rate is capped by the Puller's shared limiter. A file that failed is not tried
again for a while. Private modules (sync/privacy.py) are never pulled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from node.cache.index import Index
from node.cache.protocol import ModRequest, parse_request
from node.errors import ModmeshError

from .catalog import Catalog, Holding, key_of, slots_of
from .config import MeshConfig
from .gossip import Popularity
from .membership import ALIVE, Membership
from .transfer import Puller, Source

log = logging.getLogger(__name__)

KINDS = ("mod", "info", "zip")
Spawn = Callable[[Coroutine[Any, Any, None], str], object]


def valid_request(module: str, version: str, kind: str) -> ModRequest | None:
    """A peer's popularity report names module versions; only well-formed ones are fetched."""
    try:
        req = parse_request("/" + ModRequest(module, version, kind).upstream_path)  # type: ignore[arg-type]
    except (ValueError, ModmeshError):
        return None
    return req if (req.module, req.version) == (module, version) else None


class PreSync:
    def __init__(
        self,
        cfg: MeshConfig,
        popularity: Popularity,
        catalog: Catalog,
        membership: Membership,
        puller: Puller,
        index: Index,
        clock: Callable[[], float] = time.monotonic,
        private: Callable[[str], bool] = lambda module: False,
    ) -> None:
        self.cfg = cfg
        self.private = private
        self.popularity = popularity
        self.catalog = catalog
        self.membership = membership
        self.puller = puller
        self.index = index
        self.clock = clock
        self.store_bytes = 0
        self.backlog = 0
        self.active: set[str] = set()
        #: Keys found in the local index (bounded; saves an index query per round).
        self.have: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._over_budget_logged = False
        #: Pre-sync stays below the node's own cap on cached bytes (if it has one), so
        #: it never pulls what eviction would throw out again.
        self.budget = cfg.presync_budget
        self._measured: int | None = None

    async def round(self, spawn: Spawn, store_bytes: int | None = None) -> None:
        """Start transfers for what is popular, held by a peer, and missing here.
        `store_bytes`: the node's latest measure of its store (evictions shrink it)."""
        cfg = self.cfg
        now = self.clock()
        if store_bytes is not None and store_bytes != self._measured:
            # A new measurement (every few seconds) replaces our running count.
            self._measured = store_bytes
            self.store_bytes = store_bytes
        backlog = 0
        self._retry_at = {k: t for k, t in self._retry_at.items() if t > now}
        for (module, version), _score in self.popularity.mesh_top(cfg.presync_top_k, cfg.presync_min_score, now):
            if self.private(module):
                continue
            for kind in KINDS:
                key = key_of(module, version, kind)
                if key in self.have:
                    continue
                if key in self.active:
                    backlog += 1
                    continue
                holdings = self.catalog.holdings(key)
                if not holdings or key in self._retry_at:
                    continue
                best = self._sources(holdings, now)
                if best is None:
                    continue
                holding, sources = best
                if await self.index.get(module, version, kind) is not None:
                    self.stored(key)
                    continue
                req = valid_request(module, version, kind)
                if req is None:
                    continue
                backlog += 1
                if self.store_bytes + holding.size > self.budget:
                    if not self._over_budget_logged:
                        log.warning(
                            "pre-sync paused: the store holds %d bytes, budget %d", self.store_bytes, self.budget
                        )
                        self._over_budget_logged = True
                    continue
                if len(self.active) >= cfg.presync_concurrency:
                    continue
                self._over_budget_logged = False
                self.active.add(key)
                spawn(self._pull(req, holding, sources), f"mesh:presync:{key}")
        self.backlog = backlog

    def stored(self, key: str) -> None:
        if len(self.have) >= 100_000:
            self.have.clear()
        self.have.add(key)

    def _sources(self, holdings: list[Holding], now: float) -> tuple[Holding, list[Source]] | None:
        """The variant most live peers hold, and those peers (alive first)."""
        best: tuple[Holding, list[Source]] | None = None
        for h in holdings:
            members = [m for s in slots_of(h.holders) if (m := self.membership.by_slot(s)) and m.usable(now)]
            members.sort(key=lambda m: m.state != ALIVE)
            if members and (best is None or len(members) > len(best[1])):
                best = (h, [Source(m.node_id, m.url) for m in members])
        return best

    async def _pull(self, req: ModRequest, holding: Holding, sources: list[Source]) -> None:
        try:
            ok = await self.puller.pull(req, holding, sources)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pre-sync of %s failed", req.key)
            ok = False
        finally:
            self.active.discard(req.key)
        if not ok:
            self._retry_at[req.key] = self.clock() + 4 * self.cfg.presync_interval
