"""The running mesh on one node: the composition root of package `sync`.

`Mesh.start()` runs between `Node.start()` and `Node.listen()`: it adds the
/_mesh/ routes and their auth middleware to the node's app and sets its hooks
(store and access observers, the peer source, the authenticator, the status
record for the dashboard, and `listening`). When the node has listened (the port
is known only then) the `listening` hook starts one owned task that starts mDNS
and then runs the gossip and pre-sync loops. `aclose()` undoes all of it; no task
survives it.

Per round: apply timeouts, pick `fanout` random live members plus due retries
and static peers, exchange Gossip with each (push-pull), and for every member
whose inventory head moved, page through its change log. Pre-sync runs on its
own interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from node.cache.index import Entry
from node.cache.protocol import ModRequest
from node.cache.upstream import CircuitBreaker, Timeouts, Upstream
from node.hooks import MeshStatus
from node.service import Node

from . import peerapi
from .auth import HOP_HEADER, AuthError, RateLimitedLog, Signer, Verifier, auth_middleware
from .catalog import Catalog, key_of
from .client import PeerClient, Refused
from .config import MeshConfig, load_secrets
from .gossip import Popularity, effective_url, self_url
from .inventory import Inventory
from .mdns import MeshDiscovery
from .membership import Member, Membership, Seed, Timing
from .messages import MAX_MEMBERS, PROTOCOL, Gossip, InventoryPage, MessageError, encode_gossip
from .metrics import MeshMetrics
from .presync import PreSync
from .privacy import MeshPrivacy
from .status import mesh_status
from .tasks import TaskSet
from .transfer import MeshPeers, Puller, RateLimiter

log = logging.getLogger(__name__)


def load_node_id(data: Path) -> str:
    """A node keeps its id across restarts (its data directory is its identity)."""
    path = data / "mesh" / "node_id"
    try:
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    node_id = secrets.token_hex(8)
    path.write_text(node_id + "\n")
    return node_id


class Mesh:
    def __init__(self, node: Node, cfg: MeshConfig, clock: Callable[[], float] = time.monotonic) -> None:
        assert cfg.secret_file is not None
        self.node = node
        self.cfg = cfg
        self.clock = clock
        keys = load_secrets(cfg.secret_file)
        self.node_id = load_node_id(node.config.data)
        self.signer = Signer(keys[0], self.node_id)
        self.verifier = Verifier(keys, cfg.auth_window)
        self.metrics = MeshMetrics(node.metrics.registry)
        self.membership = Membership(
            self.node_id,
            Timing(
                cfg.suspect_after,
                cfg.dead_after,
                cfg.dead_failures,
                cfg.retry_backoff,
                cfg.retry_backoff_max,
                cfg.forget_after,
            ),
        )
        for url in cfg.peers:
            self.membership.add_seed(url)
        #: Private modules: never offered to peers; every member's patterns honoured.
        self.privacy = MeshPrivacy(node.hooks.private, node.config.data)
        self.catalog = Catalog(cfg.max_catalog)
        self.popularity = Popularity(cfg.half_life)
        self.tasks = TaskSet()
        self.url = ""
        self.heartbeat = 0
        self.mdns = MeshDiscovery(self.node_id, cfg, self.membership, clock)
        self._session: aiohttp.ClientSession | None = None
        self._upstreams: dict[str, Upstream] = {}
        self._logs = RateLimitedLog()
        self.peers: MeshPeers
        self.presync: PreSync
        self.client: PeerClient
        self.inventory: Inventory

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Mesh.start() first"
        return self._session

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        node = self.node
        if node.app.frozen:
            raise RuntimeError("the mesh must start before the node listens (its routes go first)")
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self.client = PeerClient(self.session, self.signer, self.cfg.request_timeout)
        self.privacy.load(until=self.clock() + self.cfg.forget_after)
        self.inventory = Inventory(
            node.index, self.catalog, self.membership, self.client, self.cfg.inventory_page, self.clock, self.privacy
        )
        await self.inventory.open()
        node.app.middlewares.append(
            auth_middleware(self.verifier, lambda reason: self.metrics.auth_failures.labels(reason).inc())
        )
        peerapi.add_routes(node.app, self)
        self.peers = MeshPeers(
            self.membership,
            self.catalog,
            self.upstream_for,
            self.metrics,
            self.quarantine,
            clock=self.clock,
            private=self.privacy,
        )
        puller = Puller(
            self.session,
            self._peer_headers,
            node.store.tmp_dir,
            node.proxy,
            self.cfg.peer_timeout * 2,
            RateLimiter(self.cfg.presync_bandwidth),
            self.metrics,
            self.quarantine,
            self._missing,
            lambda node_id: self.membership.failed(node_id, self.clock()),
        )
        self.presync = PreSync(
            self.cfg, self.popularity, self.catalog, self.membership, puller, node.index, self.clock, self.privacy
        )
        self.presync.store_bytes = node.store_bytes
        max_size = getattr(node.config, "max_size", None)  # storage limits, where the node has them
        if max_size:
            self.presync.budget = min(self.presync.budget, int(max_size * 0.9))
        node.hooks.peers = self.peers
        node.hooks.observers.append(self)
        node.hooks.access.append(self)
        node.hooks.authenticators.append(self.authenticate)
        node.hooks.listeners.append(self.listening)
        node.hooks.mesh_status = self.status
        host, port = node.config.host_port
        if self.cfg.mdns and port:
            # The port is known before listening: a discovery failure stops start-up.
            await self.mdns.start(host, port)
        log.info(
            "mesh %r on: node id %s, %d static peers, mDNS %s",
            self.cfg.name,
            self.node_id,
            len(self.cfg.peers),
            "on" if self.cfg.mdns else "off",
        )

    async def aclose(self) -> None:
        hooks = self.node.hooks
        if hooks.peers is getattr(self, "peers", None):
            hooks.peers = None
        hooks.observers[:] = [o for o in hooks.observers if o is not self]
        hooks.access[:] = [o for o in hooks.access if o is not self]
        hooks.authenticators[:] = [a for a in hooks.authenticators if a != self.authenticate]
        hooks.listeners[:] = [f for f in hooks.listeners if f != self.listening]
        if hooks.mesh_status == self.status:
            hooks.mesh_status = None
        self.privacy.close()
        await self.tasks.aclose()
        await self.mdns.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def listening(self, url: str) -> None:
        """node.hooks.listening: the node listens at `url`; announce it, and start the rounds."""
        self.url = self_url(url, self.cfg.advertise)
        self.tasks.spawn(self._run(url), "run")

    async def _run(self, listen_url: str) -> None:
        if self.cfg.mdns and not self.mdns.started:
            parts = urlsplit(listen_url)
            try:
                await self.mdns.start(parts.hostname or "", parts.port or 0)
            except (OSError, ValueError) as e:
                log.error("mDNS discovery failed to start: %s; static peers only", e)
        self.tasks.spawn(self._loop(self.cfg.gossip_interval, self._round), "gossip")
        if self.cfg.presync:
            self.tasks.spawn(self._loop(self.cfg.presync_interval, self._presync_round), "presync")

    async def _loop(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        rng = random.Random()
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mesh round failed")
            await asyncio.sleep(interval * rng.uniform(0.8, 1.2))

    async def _presync_round(self) -> None:
        await self.presync.round(lambda coro, name: self.tasks.spawn(coro, name), self.node.store_bytes)

    # ---- observers (node.hooks) ------------------------------------------------------

    def stored(self, entry: Entry) -> None:
        if entry.unverified:  # offered to peers once the checksum database confirms it
            return
        self.inventory.stored(entry)
        self.presync.store_bytes += entry.size
        self.presync.stored(key_of(entry.module, entry.version, entry.kind))
        if entry.source.startswith("peer:"):
            self.metrics.synced_bytes.labels(entry.source[5:]).inc(entry.size)

    def accessed(self, req: ModRequest, cache: str) -> None:
        if not self.privacy(req.module):  # a private module's name is never gossiped
            self.popularity.hit(req.module, req.version, self.clock())

    # ---- peers -------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> bool:
        """A peer's signed GOPROXY request passes client access control (tokens, basic
        auth) like a client's credentials would: peers do not hold client tokens."""
        if HOP_HEADER not in request.headers or request.method not in ("GET", "HEAD"):
            return False
        try:
            self.verifier.verify(request.method, request.raw_path, request.headers, b"")
        except AuthError:
            return False
        return True

    def _peer_headers(self, raw_path: str, node_id: str) -> dict[str, str]:
        return {**self.signer.headers("GET", raw_path), HOP_HEADER: self.node_id}

    def upstream_for(self, m: Member) -> Upstream:
        """An Upstream per peer, for the node's own fetch-and-verify machinery."""
        up = self._upstreams.get(m.node_id)
        if up is None or up.base != m.url:
            budget = self.cfg.peer_timeout
            base_path = urlsplit(m.url).path.rstrip("/")
            up = Upstream(
                m.url,
                self.session,
                Timeouts(budget, budget, budget),
                self.node.metrics,
                fallthrough_on_error=True,
                breaker=CircuitBreaker(3, max(1.0, self.cfg.retry_backoff_max / 4)),
                headers=lambda path: self._peer_headers(f"{base_path}/{path}", m.node_id),
                label=f"peer:{m.node_id}",
            )
            self._upstreams[m.node_id] = up
        return up

    def quarantine(self, node_id: str, why: str) -> None:
        self.membership.quarantine(node_id, self.clock(), self.cfg.quarantine, why[:300])
        self.metrics.rejected.labels(node_id).inc()
        log.warning("mesh peer %s served bad bytes (%s); quarantined for %.0fs", node_id, why, self.cfg.quarantine)

    def _missing(self, node_id: str, key: str) -> None:
        m = self.membership.get(node_id)
        if m is not None:
            self.catalog.discard(m.slot, key)

    # ---- gossip ------------------------------------------------------------------

    def _message(self, now: float) -> Gossip:
        self.heartbeat = max(self.heartbeat + 1, time.time_ns() // 1_000_000)
        return Gossip(
            self.node_id,
            self.cfg.name,
            PROTOCOL,
            self.url,
            self.heartbeat,
            self.node.index.epoch,
            self.inventory.head,
            self.inventory.count,
            tuple(self.membership.sample(MAX_MEMBERS, now)),
            tuple(p for p in self.popularity.top(self.cfg.popular_top_n, now) if not self.privacy(p.module)),
            self.privacy.own,
        )

    async def _round(self) -> None:
        now = self.clock()
        self.privacy.expire(now)
        for gone in self.membership.tick(now):
            self.privacy.forget(gone.node_id)
            self.popularity.forget(gone.node_id)
            self._upstreams.pop(gone.node_id, None)
            await self.catalog.drop_slot(gone.slot)
            self.membership.release(gone.slot)
        members, seeds = self.membership.targets(self.cfg.fanout, now)
        if members or seeds:
            body = encode_gossip(self._message(now))
            await asyncio.gather(
                *(self._exchange(m.url, body, member=m) for m in members),
                *(self._exchange(s.url, body, seed=s) for s in seeds),
            )
        self._gauges()

    async def _exchange(self, url: str, body: bytes, member: Member | None = None, seed: Seed | None = None) -> None:
        try:
            reply = await self.client.gossip(url, body)
        except (TimeoutError, aiohttp.ClientError, MessageError, Refused, OSError) as e:
            self.metrics.gossip_rounds.labels("error").inc()
            now = self.clock()
            if isinstance(e, Refused):
                ok, n = self._logs.should_log(f"refused {url}")
                if ok:
                    log.warning(
                        "mesh peer at %s refused our gossip: %s (same --mesh-secret-file and --mesh-name?)%s",
                        url,
                        e,
                        f" ({n} similar suppressed)" if n else "",
                    )
            if member is not None:
                self.membership.failed(member.node_id, now)
            if seed is not None:
                self.membership.seed_failed(seed, now)
            return
        self.metrics.gossip_rounds.labels("ok").inc()
        if seed is not None:
            self.membership.seed_answered(seed, reply.node_id)
        if member is not None and reply.node_id != member.node_id:
            self.membership.failed(member.node_id, self.clock())  # someone else lives there now
        self.on_gossip(reply, urlsplit(url).hostname)

    def on_gossip(self, msg: Gossip, remote: str | None) -> Gossip | None:
        """Absorb a peer's gossip (sent to us, or its answer to ours)."""
        if msg.mesh != self.cfg.name or msg.protocol != PROTOCOL:
            ok, _ = self._logs.should_log(f"mesh {msg.node_id}")
            if ok:
                log.info(
                    "ignoring node %s of mesh %r protocol %d (we are %r protocol %d)",
                    msg.node_id,
                    msg.mesh,
                    msg.protocol,
                    self.cfg.name,
                    PROTOCOL,
                )
            return None
        now = self.clock()
        if msg.node_id != self.node_id:
            url = effective_url(msg.url, remote)
            m = self.membership.heard(
                msg.node_id, url, msg.heartbeat, now, self.membership.seed_source(msg.node_id, url)
            )
            if m is not None:
                self.privacy.heard(msg.node_id, msg.private)  # before anything it names is taken in
                self.membership.merge(msg.members, now)
                self.popularity.report(msg.node_id, [p for p in msg.popular if not self.privacy(p.module)], now)
                if self.inventory.behind(m, msg.epoch, msg.head) and not m.syncing:
                    m.syncing = True
                    self.tasks.spawn(self.inventory.pull(m), f"inventory:{m.node_id}")
        return self._message(now)

    async def inventory_page(self, epoch: str, after: int, limit: int) -> InventoryPage:
        return await self.inventory.page(epoch, after, limit)

    # ---- visibility ----------------------------------------------------------------

    def _gauges(self) -> None:
        now = self.clock()
        for state, n in self.membership.counts().items():
            self.metrics.members.labels(state).set(n)
        self.metrics.quarantined.set(sum(m.quarantined(now) for m in self.membership.members.values()))
        self.metrics.catalog.set(len(self.catalog))
        self.metrics.backlog.set(self.backlog())

    def backlog(self) -> int:
        return sum(m.backlog for m in self.membership.members.values()) + self.presync.backlog

    def status(self) -> MeshStatus:
        """`/_mesh/status`, `modmesh peers` and the dashboard (node.hooks.mesh_status)."""
        return mesh_status(
            node_id=self.node_id,
            mesh=self.cfg.name,
            url=self.url,
            epoch=self.node.index.epoch,
            head_serial=self.inventory.head,
            inventory=self.inventory.count,
            members=self.membership.members.values(),
            seeds=self.membership.seeds,
            catalog=self.catalog,
            presync=self.presync,
            presync_enabled=self.cfg.presync,
            sync_backlog=self.backlog(),
            now=self.clock(),
            private=self.privacy,
        )
