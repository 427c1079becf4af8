"""The operator's page at `/` and the live figures behind it.

`/healthz` and `/metrics` answer machines; someone walking up to a node on a
factory floor wants one page: is it healthy, which upstreams are failing, is the
checksum database verified, how full and how useful is the cache, what is being
fetched, what went wrong lately. The page is static HTML + a small script
(node/static, no build step, no CDN: nodes are often offline) that polls
`/_dashboard/data.json`.

The figures come from what the node already keeps (its Prometheus registry,
`Node.health()`, the index) plus three things only a page needs: a ring buffer of
samples for "over time", a logging handler keeping the last warnings and errors,
and the mesh's status record when a mesh runs on the node (`hooks.mesh_status`, the
same record `/_mesh/status` answers peers). The sampler and the handler live from
the app's startup to its cleanup (they are the only state), so several nodes in
one process each get their own. The figures themselves are pure functions, in
dashboard_view.py.

Registered in node/tools/registry.py, but not under `/_admin/`: it only reads, so it
is as open as the GOPROXY endpoints (node/access.py). What it shows depends on who asks:
everything to admins, no upstream address, private module or log line to anyone else
(exposure.py), the mesh panel to admins and signed peers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
from aiohttp import web

from node.cache.index import Index
from node.config import Config
from node.hooks import Hooks
from node.metrics import Metrics
from node.server.dashboard_view import (
    MeshView,
    Sample,
    collected,
    hit_ratio,
    mesh_unavailable,
    mesh_view,
    requests_by_cache,
    series,
)
from node.server.exposure import EXPOSURE

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DATA_PATH = "/_dashboard/data.json"
#: One sample every SAMPLE_INTERVAL seconds, SAMPLES of them: an hour of history.
SAMPLE_INTERVAL = 5.0
SAMPLES = 720
ERRORS = 50
TOP_MODULES = 10
#: Rows the query takes, so that a public view without private modules still has ten.
TOP_FETCH = 5 * TOP_MODULES
#: The top-modules query scans the index; viewers polling share one answer this long.
TOP_TTL = 5.0
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
# The page loads only its own files and talks only to this node.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"


class DashboardSource(Protocol):
    """What the page reads of a running node (node.service.Node is one): the server
    layer does not import the composition root."""

    config: Config
    app: web.Application
    hooks: Hooks
    index: Index
    metrics: Metrics
    url: str

    def health(self) -> dict[str, Any]: ...


def admin_routes(node: DashboardSource) -> list[web.RouteDef]:
    dash = Dashboard(node)
    # App signals, not Node, own the lifetime: they run at listen() and aclose().
    node.app.on_startup.append(dash.on_startup)
    node.app.on_cleanup.append(dash.on_cleanup)
    return dash.routes()


class ErrorLog(logging.Handler):
    """The last WARNING+ records, for "recent errors" (bounded, never blocks)."""

    def __init__(self, size: int = ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f": {type(exc).__name__}: {exc}"
            self.records.append(
                {
                    "t": record.created,
                    "level": record.levelname.lower(),
                    "logger": record.name,
                    "message": message[:500],
                }
            )
        except Exception:
            self.handleError(record)


async def top_modules(db: aiosqlite.Connection, limit: int = TOP_MODULES) -> list[dict[str, Any]]:
    """Modules by cache hits, then by bytes held: what this site actually builds with."""
    # The per-module figures are kept by the index's triggers (node/cache/rows.py) and
    # ordered by an index: this reads `limit` rows, whatever the size of the store.
    async with db.execute(
        "SELECT module, hits, versions, files, bytes, last_used FROM modules"
        " ORDER BY hits DESC, bytes DESC, module LIMIT ?",
        (limit,),
    ) as cur:
        rows = await cur.fetchall()
    return [
        {"module": m, "hits": int(h), "versions": int(v), "files": int(f), "bytes": int(b), "last_used": t}
        for m, h, v, f, b, t in rows
    ]


class Dashboard:
    """One per node: the routes, and the little state a page needs beyond the node's own.

    The files are read once here, so a missing static file fails the node's start,
    not a viewer's request."""

    def __init__(self, node: DashboardSource) -> None:
        self.node = node
        self.samples: deque[Sample] = deque(maxlen=SAMPLES)
        self.errors = ErrorLog()
        self._page = (STATIC / "dashboard.html").read_bytes()
        self._assets = {name: (STATIC / name).read_bytes() for name in ASSETS}
        self._sampler: asyncio.Task[None] | None = None
        self._top: tuple[float, list[dict[str, Any]]] | None = None  # (when, rows)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.get(DATA_PATH, self.data_json),
            web.get(r"/_dashboard/{name:dashboard\.(js|css)}", self.asset),
        ]

    # --- lifetime (the app's startup and cleanup signals) -------------------------

    async def on_startup(self, app: web.Application) -> None:
        logging.getLogger().addHandler(self.errors)
        self.samples.append(await self._sample())
        self._sampler = asyncio.create_task(self._sample_loop())

    async def on_cleanup(self, app: web.Application) -> None:
        logging.getLogger().removeHandler(self.errors)
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            try:
                self.samples.append(await self._sample())
            except Exception:
                log.exception("dashboard sample failed")

    async def _sample(self) -> Sample:
        totals = await self.node.index.totals()
        by_cache = requests_by_cache(collected(self.node.metrics.requests, "_total"))
        return Sample(time.time(), by_cache, totals.bytes, totals.files)

    # --- handlers ---------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        # The CSP makes a log line that slipped into the DOM inert: no inline script runs.
        return web.Response(
            body=self._page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP},
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(
            body=self._assets[name],
            content_type=ASSETS[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def data_json(self, request: web.Request) -> web.Response:
        exposure = request.app[EXPOSURE]
        admin = exposure.admin(request)
        peer = any(auth(request) for auth in self.node.hooks.authenticators)
        data = await self.data(self._mesh(admin or peer))
        if admin:
            data = {"view": "admin", **data, "errors_hidden": 0}
        else:
            data = {"view": "public", **exposure.public_data(data)}
        data["top_modules"] = data["top_modules"][:TOP_MODULES]  # fetched with room for private ones
        return web.json_response(data, headers={"Cache-Control": "no-store"})

    async def data(self, mesh: MeshView) -> dict[str, Any]:
        """Everything the page shows an admin, as of now (exposure.py: what others see)."""
        node = self.node
        health = node.health()
        now = await self._sample()
        history = [*self.samples, now]
        return {
            "generated_at": now.t,
            "sample_interval_s": SAMPLE_INTERVAL,
            "node": {
                "status": health["status"],
                "version": health["version"],
                "uptime_s": health["uptime_s"],
                "url": node.url,
                "epoch": health["store"]["epoch"],
                "offline": node.config.offline,
                "reasons": health["reasons"],
            },
            "requests": {
                "total": sum(now.by_cache.values()),
                "by_cache": now.by_cache,
                "hit_ratio": hit_ratio(now.by_cache),
            },
            "store": {
                "bytes": now.store_bytes,
                "blobs": now.blobs,
                "disk_free_bytes": health["store"]["disk_free_bytes"],
                "caching": health["store"]["caching"],
                "unverified": health["unverified"],
            },
            "series": series(history),
            "upstreams": self._upstreams(health["upstreams"]),
            "sumdb": self._sumdbs(health["sumdb"]),
            "top_modules": await self._top_modules(),
            "mesh": mesh,
            "errors": list(reversed(self.errors.records)),
        }

    # --- sections ---------------------------------------------------------------

    def _upstreams(self, ups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        m = self.node.metrics
        errors: dict[str, int] = {}
        for labels, v in collected(m.upstream_errors, "_total"):
            errors[labels["upstream"]] = errors.get(labels["upstream"], 0) + int(v)
        count = {lb["upstream"]: v for lb, v in collected(m.upstream_latency, "_count")}
        total = {lb["upstream"]: v for lb, v in collected(m.upstream_latency, "_sum")}
        out = []
        for u in ups:
            n = count.get(u["name"], 0.0)
            out.append(
                {
                    **u,
                    "requests": int(n),
                    "errors": errors.get(u["name"], 0),
                    "avg_latency_ms": round(1000 * total.get(u["name"], 0.0) / n, 1) if n else None,
                }
            )
        return out

    def _sumdbs(self, dbs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        m = self.node.metrics
        mismatches = {lb["db"]: int(v) for lb, v in collected(m.sumdb_mismatches, "_total")}
        errors: dict[str, int] = {}
        for lb, v in collected(m.sumdb_errors, "_total"):
            errors[lb["db"]] = errors.get(lb["db"], 0) + int(v)
        requests: dict[str, int] = {}
        for lb, v in collected(m.sumdb_requests, "_total"):
            requests[lb["db"]] = requests.get(lb["db"], 0) + int(v)
        return [
            {
                **db,
                "requests": requests.get(db["name"], 0),
                "mismatches": mismatches.get(db["name"], 0),
                "verify_errors": errors.get(db["name"], 0),
            }
            for db in dbs
        ]

    async def _top_modules(self) -> list[dict[str, Any]]:
        if self._top is not None and time.monotonic() - self._top[0] < TOP_TTL:
            return self._top[1]
        # Hits are buffered in memory; flush so the page shows the ones just served.
        await self.node.index.flush_access()
        rows = await top_modules(self.node.index.db, TOP_FETCH)
        self._top = (time.monotonic(), rows)
        return rows

    def _mesh(self, allowed: bool) -> MeshView:
        """The mesh's status record, when a mesh runs on this node (it set the hook), for
        whom `/_mesh/status` answers (signed peers) and admins; others learn only that
        there is a mesh.

        Taken in-process, not over HTTP: the mesh signs and checks every request under
        /_mesh/ (sync/auth.py) and this node has no business forging a peer's
        signature to ask itself."""
        status = self.node.hooks.mesh_status
        if not allowed:
            return {"enabled": status is not None, "restricted": True}
        if status is None:
            return {"enabled": False}
        try:
            return mesh_view(status())
        except Exception as e:  # another feature's bug must not take the page down
            log.warning("dashboard: the mesh status failed: %s: %s", type(e).__name__, e)
            return mesh_unavailable(f"mesh status failed: {type(e).__name__}")
