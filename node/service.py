"""The composition root: build a node from a Config and run it.

Everything with a lifetime (the store's temp directory, the index, the HTTP session,
the checksum databases, the proxy's tasks, the maintenance loops, the listening site)
is entered into one `AsyncExitStack` as `Node.start()` and `Node.listen()` build it,
and `Node.aclose()` unwinds it in reverse order; a start that fails half-way unwinds
what it built. Admin routes come from the providers the caller passes (the operator
tools and the dashboard, node/tools/__init__.py). Tests and the CLI use the same object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import web

from node import __version__
from node.cache.credentials import route_credentials
from node.cache.direct import Direct
from node.cache.index import Index
from node.cache.journal import Journal
from node.cache.model import ProxySettings
from node.cache.protocol import Kind, ModRequest
from node.cache.proxy import ModuleProxy
from node.cache.recovery import Recovery, open_index
from node.cache.scrub import Scrubber
from node.cache.spool import storage_error_cause
from node.cache.storage import StorageManager
from node.cache.store import BlobStore
from node.cache.upstream import CircuitBreaker, Off, Timeouts, Upstream, UpstreamChain, build_chain
from node.config import Config
from node.hooks import Hooks
from node.metrics import Metrics
from node.server.access import load_policy
from node.server.accesslog import RequestRecorder, access_logger
from node.server.aiohttp_adapter import FastPathRunner
from node.server.app import add_goproxy_route, build_app
from node.server.fastpath import KEEPALIVE
from node.sumdb.cache import SumDBStore
from node.sumdb.client import SumDB
from node.sumdb.databases import ChecksumDatabases
from node.sumdb.reverify import Reverifier
from node.sumdb.spec import parse_sumdb_spec

log = logging.getLogger(__name__)

STATS_INTERVAL = 5.0


class AdminRoutes(Protocol):
    """A module that serves some of the node's admin endpoints (or its pages)."""

    def admin_routes(self, node: Node) -> list[web.RouteDef]: ...


class Node:
    def __init__(self, config: Config, hooks: Hooks | None = None, admin: Sequence[AdminRoutes] = ()) -> None:
        self.config = config
        self.hooks = hooks or Hooks()
        self.admin = list(admin)
        self.metrics = Metrics()
        self.store = BlobStore(config.data)
        self.journal = Journal(config.data / "index.journal")
        self.index = Index(config.data / "index.sqlite", self.journal)
        #: What opening the index took (a rebuild, a catch-up with the journal).
        self.recovery = Recovery()
        self.started_at = time.time()
        self._stack = contextlib.AsyncExitStack()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._ready = False
        self.chain: UpstreamChain
        self.proxy: ModuleProxy
        self.app: web.Application
        self.url = ""
        #: Bytes the index references, as of the last stats tick (every STATS_INTERVAL).
        self.store_bytes = 0
        #: Rows rebuilt from the journal whose blob is not re-hashed yet (stats tick).
        self._unchecked = -1

    async def start(self) -> None:
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()  # what was built so far, in reverse
            raise
        self._ready = True

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        cfg.data.mkdir(parents=True, exist_ok=True)
        self.store.open()
        stack.callback(self.store.close)
        stack.push_async_callback(self.journal.aclose)
        self.recovery = await open_index(self.index, self.journal, self.store)
        stack.push_async_callback(self.index.aclose)
        if self.recovery.rebuilt:
            self.metrics.index_rebuilds.inc()
        self._session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                headers={"User-Agent": f"modmesh/{__version__} (+https://go.dev/ref/mod#goproxy-protocol)"},
                trust_env=cfg.trust_env,
            )
        )
        timeouts = Timeouts(cfg.connect_timeout, cfg.read_timeout, cfg.small_timeout)
        self.direct = Direct(cfg.data / "direct", cfg.direct_timeout, cfg.direct_jobs)
        self.chain, routes = self._chains(timeouts)
        # Routed modules are private too: never sent to a checksum database. The mesh adds
        # its members' patterns to the same object (hooks.PrivateModules).
        self.hooks.private.own = ",".join(p for p in (cfg.private, cfg.nosumdb, *(r.pattern for r in cfg.routes)) if p)
        self.sumdbs = self._checksum_databases(timeouts)
        self.sumdbs.open()
        stack.push_async_callback(self.sumdbs.aclose)
        self.hooks.observers.append(self.sumdbs)
        settings = ProxySettings(
            meta_ttl=cfg.meta_ttl,
            meta_stale_window=cfg.meta_stale_window,
            negative_ttl=cfg.negative_ttl,
            stream_threshold=cfg.stream_threshold,
            offline=cfg.offline,
            passthrough_memory=cfg.passthrough_memory,
            memory_cache=cfg.memory_cache,
            check_on_serve=cfg.check_on_serve,
        )
        self.proxy = ModuleProxy(
            self.store, self.index, self.chain, self.metrics, settings, self.hooks, self.sumdbs, routes=routes
        )
        stack.push_async_callback(self.proxy.aclose)
        # Storage limits: evicts after writes (a store observer) and on the periodic tick.
        self.storage = StorageManager(self.store, self.index, self.proxy, self.metrics, cfg.max_size)
        stack.push_async_callback(self.storage.aclose)
        self.hooks.observers.append(self.storage)
        self.proxy.refuse_store = self.storage.refusal
        self.scrubber = Scrubber(
            self.index,
            self.store,
            self.proxy.integrity,
            self.metrics,
            cfg.scrub_period,
            cfg.scrub_rate,
            lambda e: self.proxy.fetch(ModRequest(e.module, e.version, cast(Kind, e.kind))),
        )
        self.scrubber.start()
        stack.push_async_callback(self.scrubber.aclose)
        self.reverifier = Reverifier(self.index, self.sumdbs, self.proxy, self.store, self.hooks, self.metrics.registry)
        self.hooks.observers.append(self.reverifier)
        await self.reverifier.start()
        stack.push_async_callback(self.reverifier.aclose)
        self.access = load_policy(cfg)
        self.access.authenticators = self.hooks.authenticators
        self.app = build_app(
            self.proxy,
            self.metrics,
            self.health,
            lambda: self._ready,
            self.sumdbs,
            [self.access.middleware()],
            cfg.write_idle_timeout,
            admin=self.access.admin_ok,
        )
        self.app.router.add_routes([route for provider in self.admin for route in provider.admin_routes(self)])
        await self._update_stats()
        stats = asyncio.create_task(self._stats_loop())
        stack.push_async_callback(_cancel, stats)

    def _chains(self, timeouts: Timeouts) -> tuple[UpstreamChain, list[tuple[str, UpstreamChain]]]:
        """The default upstream chain and one per [[route]]; `off` for all when offline."""
        cfg = self.config
        assert self._session is not None
        limits = (cfg.breaker_threshold, cfg.breaker_reset)
        chain = build_chain(cfg.upstream, self._session, timeouts, self.metrics, *limits, self.direct)
        routes = [
            (
                r.pattern,
                build_chain(
                    r.upstream, self._session, timeouts, self.metrics, *limits, self.direct, route_credentials(r)
                ),
            )
            for r in cfg.routes
        ]
        if cfg.offline:
            # Configured upstreams stay visible (health, doctor) but are never asked.
            off = UpstreamChain([Off("offline", "offline mode: not cached on this node")])
            return off, [(pattern, off) for pattern, _ in routes]
        return chain, routes

    def _checksum_databases(self, timeouts: Timeouts) -> ChecksumDatabases:
        cfg = self.config
        assert self._session is not None
        session = self._session

        def make_upstream(base: str) -> Upstream:
            breaker = CircuitBreaker(cfg.breaker_threshold, cfg.breaker_reset)
            return Upstream(base, session, timeouts, self.metrics, False, breaker)

        dbs = [
            SumDB(
                spec,
                SumDBStore(cfg.data / "sumdb" / spec.name, self.store.tmp_dir),
                make_upstream,
                self.chain.upstreams,
                self.metrics,
                cfg.sumdb_latest_ttl,
                offline=cfg.offline,
            )
            for spec in map(parse_sumdb_spec, cfg.sumdb)
        ]
        return ChecksumDatabases(dbs, cfg.sumdb_verify, self.hooks.private, self.metrics)

    async def listen(self, host: str | None = None, port: int | None = None) -> str:
        """Start serving HTTP; returns the base URL (port 0 picks a free one).

        Plugins add their routes between start() and listen(); the GOPROXY
        catch-all route is added here, last."""
        add_goproxy_route(self.app)
        h, p = self.config.host_port
        host = h if host is None else host
        port = p if port is None else port
        recorder = RequestRecorder(self.metrics, logging.getLogger("modmesh.access"))
        runner_args: dict[str, Any] = {
            "access_log_class": access_logger(recorder),
            "access_log": recorder.logger,
            "handler_cancellation": True,
            "shutdown_timeout": 5.0,
            "keepalive_timeout": KEEPALIVE,  # aiohttp's default is an hour
        }
        if self.access.open_to_clients:
            self._runner = FastPathRunner(
                self.app,
                self.proxy,
                recorder,
                self.config.write_idle_timeout,
                self.config.head_timeout,
                self.metrics.head_timeouts.inc,
                **runner_args,
            )
        else:
            self._runner = web.AppRunner(self.app, **runner_args)
        await self._runner.setup()
        self._stack.push_async_callback(self._runner.cleanup)  # first to go: stop accepting
        ssl_context = None
        if self.config.tls_cert_file is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        sock_port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{sock_port}"
        log.info(
            "modmesh node listening on %s, upstream %s, data %s",
            self.url,
            ",".join(u.name for u in self.chain.upstreams) or "off",
            self.config.data,
        )
        self.hooks.listening(self.url)
        return self.url

    async def aclose(self) -> None:
        """Stop accepting, let in-flight requests finish, then release every part."""
        self._ready = False
        await self._stack.aclose()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def health(self) -> dict[str, Any]:
        ups = [
            {"name": u.name, "breaker": u.breaker.state, "consecutive_failures": u.breaker.failures}
            for u in self.chain.upstreams
        ]
        reasons = []
        if ups and all(u["breaker"] != "closed" for u in ups):
            reasons.append("every upstream is failing")
        if self.sumdbs.forked:
            reasons.append("a checksum database presented a forked tree")
        if self.reverifier.pending:
            reasons.append(
                f"{self.reverifier.pending} cached files are not confirmed by the checksum database "
                "yet (it did not answer); they are checked again in the background"
            )
        reasons += self._integrity_reasons()
        refusal = self.store.status.refusal
        if refusal is not None:
            reasons.append(
                f"the store cannot take files ({refusal.cause}): {refusal.files} passed through "
                f"uncached since {_iso(refusal.since)}, first {refusal.first}"
            )
        disk = shutil.disk_usage(self.config.data)
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "upstreams": ups,
            "sumdb": self.sumdbs.health(),
            "unverified": self.reverifier.pending,
            "store": {
                "epoch": self.index.epoch,
                "disk_free_bytes": disk.free,
                **self.store.status.health(),
                "integrity": {**self.proxy.integrity.health(), "unchecked": max(self._unchecked, 0)},
                "scrub": self.scrubber.health(),
                "index": self.recovery.to_json(),
            },
        }

    def _integrity_reasons(self) -> list[str]:
        out = []
        integrity = self.proxy.integrity
        if integrity.repairing:
            keys = sorted(integrity.repairing)
            out.append(
                f"{len(keys)} files were damaged on disk (quarantined) and are not repaired yet: "
                + ", ".join(keys[:3])
                + (", ..." if len(keys) > 3 else "")
            )
        if self.recovery.rebuilt and self._unchecked > 0:
            out.append(
                f"the index was rebuilt at start-up ({self.recovery.recovered} files recovered, "
                f"{self.recovery.missing} lost); {self._unchecked} files are not re-hashed yet "
                "(each is hashed before it is served)"
            )
        return out

    async def _update_stats(self) -> None:
        if self.recovery.rebuilt and self._unchecked != 0:
            self._unchecked = await self.index.count_never_checked()
            self.metrics.blobs_unchecked.set(self._unchecked)
        totals = await self.index.totals()  # kept on write: one row, never a scan
        self.metrics.store_blobs.set(totals.files)
        self.metrics.store_bytes.set(totals.bytes)
        self.store_bytes = totals.bytes
        self.storage.observe(totals.bytes)  # over max_size: an eviction pass starts in the background

    async def stats_tick(self) -> None:
        """What the node does every STATS_INTERVAL: write the buffered serve checks, and
        the buffered hits when due (index.ACCESS_FLUSH); read the store's running totals
        (no scan); start eviction if over the cap."""
        await self.index.flush_access(checks_only=not self.index.access_due())
        await self._update_stats()

    async def _stats_loop(self) -> None:
        full = False
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.proxy.sweep_memory()
            try:
                await self.stats_tick()
            except Exception as e:
                cause = storage_error_cause(e)
                if cause is None:
                    log.exception("periodic index maintenance failed")
                elif not full:  # once per incident, not every few seconds
                    log.warning("periodic index maintenance paused: %s", cause)
                full = cause is not None
            else:
                full = False


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@contextlib.asynccontextmanager
async def running_node(
    config: Config, host: str = "127.0.0.1", port: int = 0, admin: Sequence[AdminRoutes] = ()
) -> AsyncIterator[Node]:
    node = Node(config, admin=admin)
    await node.start()
    try:
        await node.listen(host, port)
        yield node
    finally:
        await node.aclose()
