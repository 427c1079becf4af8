"""The dashboard at `/`: its live figures, and the page as headless Chromium renders it.

Chromium is Debian's `chromium` package, installed by the test set-up (`make test`
runs apt-get for it as root); where it is missing the browser tests are skipped and
say why. The browser runs as an asyncio subprocess: the node it loads is served by
this test's event loop.

The rendered test writes `test-output/<test name>/dashboard.png` (and the DOM next
to it) at the repository root; test-output/ is git-ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from node.hooks import MemberStatus, MeshStatus
from node.server import dashboard, dashboard_view
from tests.mesh_fixtures import MeshNode, MeshNodeFactory, wait_for
from tests.modules import module_files, module_set
from tests.node_fixtures import NodeFactory
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.upstream_fixture import Fault

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
DB = "sum.example.test"
ALPHA, BETA, GAMMA = "example.com/alpha", "example.com/beta", "example.com/gamma"
MODS = module_set(
    (ALPHA, "v1.0.0", module_files(ALPHA, "v1.0.0")),
    (ALPHA, "v1.1.0", module_files(ALPHA, "v1.1.0")),
    (BETA, "v0.3.0", module_files(BETA, "v0.3.0")),
    (GAMMA, "v1.2.0", module_files(GAMMA, "v1.2.0")),
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--virtual-time-budget=5000",
)


# --- chromium ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """/usr/bin/chromium (the test set-up, `make test`, installs it as root)."""
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium is not installed (make test installs it as root: apt-get install chromium)")
    return str(CHROMIUM)


async def run_chromium(binary: str, *args: str, timeout: float = 60.0) -> bytes:
    """Run headless Chromium without blocking the loop that serves the page."""
    with tempfile.TemporaryDirectory(prefix="modmesh-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        finally:
            # Its helpers (zygote, renderers) share its process group; none may outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out


async def render(binary: str, url: str, out_dir: Path, screenshot: bool = False) -> Dom:
    """The DOM after the page's script ran (and a screenshot of it, if asked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html = await run_chromium(binary, "--dump-dom", url)
    (out_dir / "dashboard.dom.html").write_bytes(html)
    if screenshot:
        png = out_dir / "dashboard.png"
        png.unlink(missing_ok=True)
        await run_chromium(binary, f"--screenshot={png}", "--window-size=1280,900", url)
        assert png.stat().st_size > 10_000, "screenshot is (nearly) empty"
        print(f"dashboard screenshot: {png}")
    dom = Dom()
    dom.feed(html.decode())
    return dom


class Dom(HTMLParser):
    """Elements with their attributes and text, enough to find the live figures."""

    VOID: ClassVar[frozenset[str]] = frozenset({"meta", "link", "br", "hr", "img", "input", "polyline", "polygon"})

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = {"tag": tag, "attrs": {k: v or "" for k, v in attrs}, "text": ""}
        self.elements.append(el)
        if tag not in self.VOID:
            self._open.append(el)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data: str) -> None:
        for el in self._open:
            el["text"] += data

    def find(self, attr: str, value: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.elements if attr in e["attrs"] and value in (None, e["attrs"][attr])]

    def figure(self, name: str) -> tuple[str, str]:
        """(data-value, shown text) of the figure `name`."""
        (el,) = self.find("data-figure", name)
        return el["attrs"].get("data-value", ""), el["text"].strip()

    def text(self, attr: str, value: str) -> str:
        (el,) = self.find(attr, value)
        return str(el["text"])


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sumdb() -> AsyncIterator[FakeSumDB]:
    """A checksum database that is also the working GOPROXY for MODS."""
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))), modules=MODS)
    db.add_corpus(MODS)
    await db.start()
    yield db
    await db.stop()


def dead_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def get(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as r:
        await r.read()
        return r.status


def out_dir(request: pytest.FixtureRequest) -> Path:
    return ROOT / "test-output" / request.node.name


def fmt_bytes(n: int) -> str:
    """The page's byte formatting (dashboard.js fmtBytes)."""
    units, x, i = ["B", "KiB", "MiB", "GiB", "TiB"], float(n), 0
    while x >= 1024 and i < len(units) - 1:
        x, i = x / 1024, i + 1
    return f"{n} B" if i == 0 else f"{x:.1f} {units[i]}"


# --- tests ------------------------------------------------------------------------


@pytest.mark.timeout(900)  # includes installing chromium on a fresh machine
async def test_dashboard_renders_live_figures(  # type: ignore[no-untyped-def]
    chromium: str, sumdb: FakeSumDB, make_node: NodeFactory, client, request
) -> None:
    dead = dead_url()
    node = await make_node(
        f"{dead}|{sumdb.url}",
        sumdb=(f"{sumdb.vkey} {sumdb.url}",),
        breaker_threshold=1,
        breaker_reset=600,
    )
    sumdb.inject(f"{GAMMA}/@v/v1.2.0.zip", Fault.wrong_body(b"<html>not a zip</html>"))
    base = node.url
    statuses = [
        await get(client, f"{base}/{ALPHA}/@v/v1.0.0.zip"),  # miss; the dead upstream's breaker opens
        *[await get(client, f"{base}/{ALPHA}/@v/v1.0.0.zip") for _ in range(3)],  # hits
        await get(client, f"{base}/{ALPHA}/@v/v1.0.0.mod"),  # miss
        await get(client, f"{base}/{ALPHA}/@v/v1.0.0.mod"),  # hit
        await get(client, f"{base}/{ALPHA}/@v/v1.1.0.info"),  # miss
        await get(client, f"{base}/{BETA}/@v/v0.3.0.zip"),  # miss
        await get(client, f"{base}/{BETA}/@v/v0.3.0.zip"),  # hit
        await get(client, f"{base}/{GAMMA}/@v/v1.2.0.zip"),  # refused: not a zip
        await get(client, f"{base}/example.com/nope/@v/v1.0.0.info"),  # error
    ]
    assert statuses[:9] == [200] * 9 and statuses[9] >= 400 and statuses[10] >= 400
    totals = await node.index.totals()
    blobs, store_bytes = totals.files, totals.bytes

    async with client.get(base + dashboard.DATA_PATH) as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        data = await r.json()
    assert data["requests"]["by_cache"] == {"hit": 5, "stale": 0, "miss": 4, "revalidated": 0, "error": 2}
    assert data["requests"]["total"] == 11
    assert data["requests"]["hit_ratio"] == pytest.approx(5 / 9)
    assert data["store"]["bytes"] == store_bytes and data["store"]["blobs"] == blobs
    assert [(u["name"], u["breaker"]) for u in data["upstreams"]] == [(dead, "open"), (sumdb.url, "closed")]
    assert [(m["module"], m["hits"]) for m in data["top_modules"]] == [(ALPHA, 4), (BETA, 1)]
    assert data["sumdb"][0]["name"] == DB and data["sumdb"][0]["tree_size"] == sumdb.size
    assert data["mesh"] == {"enabled": False}
    messages = [e["message"] for e in data["errors"]]
    assert any("circuit open" in m and dead in m for m in messages), messages
    assert any(m.startswith(f"refused {GAMMA}@v1.2.0.zip") for m in messages), messages
    assert len(data["series"]) >= 2 and data["series"][-1]["store_bytes"] == store_bytes

    dom = await render(chromium, base + "/", out_dir(request), screenshot=True)
    assert dom.figure("status") == ("ok", "ok")
    assert dom.figure("requests_total") == ("11", "11")
    value, shown = dom.figure("hit_ratio")
    assert float(value) == pytest.approx(5 / 9) and shown == "55.6 %"
    assert dom.figure("store_bytes") == (str(store_bytes), fmt_bytes(store_bytes))
    assert dom.figure("store_blobs") == (str(blobs), str(blobs))
    assert dom.figure("by_cache.hit")[0] == "5" and dom.figure("by_cache.miss")[0] == "4"
    assert dom.figure("by_cache.error") == ("2", "error 2")
    breakers = {e["attrs"]["data-upstream"]: e["attrs"]["data-breaker"] for e in dom.find("data-upstream")}
    assert breakers == {dead: "open", sumdb.url: "closed"}
    assert "open" in dom.text("data-upstream", dead)
    top = [(e["attrs"]["data-module"], e["attrs"]["data-hits"]) for e in dom.find("data-module")]
    assert top[:2] == [(ALPHA, "4"), (BETA, "1")]
    assert str(sumdb.size) in dom.text("data-sumdb", DB) and "verified" in dom.text("data-sumdb", DB)
    assert dom.figure("mesh") == ("disabled", "mesh not enabled on this node")
    errors = dom.text("id", "errors-list")
    assert f"refused {GAMMA}@v1.2.0.zip" in errors and "circuit open" in errors
    assert len(dom.find("points")) >= 3 * 2  # three sparklines: line and area each


async def test_mesh_panel_lists_the_real_peers(  # type: ignore[no-untyped-def]
    chromium: str, sumdb: FakeSumDB, make_mesh_node: MeshNodeFactory, client, request
) -> None:
    """Two nodes running the real mesh plugin: each one's page lists the other as a peer
    (from the mesh's own status record, not over HTTP: /_mesh/ is peer-only); the error
    handler and the sampler live exactly as long as each node's app."""
    a = await make_mesh_node(sumdb.url, mesh={"presync": False})
    b = await make_mesh_node(sumdb.url, peers=[a.url], mesh={"presync": False})
    a_id, b_id = a.mesh.node_id, b.mesh.node_id

    def alive(mn: MeshNode, other: str) -> bool:
        m = mn.mesh.membership.get(other)
        return m is not None and m.state == "alive" and bool(m.url)

    await wait_for(lambda: alive(b, a_id) and alive(a, b_id), 10, "A and B see each other alive")
    assert await get(client, b.url + "/_mesh/status") == 401  # unsigned: the page does not ask over HTTP
    assert sum(isinstance(h, dashboard.ErrorLog) for h in logging.getLogger().handlers) == 2  # one per node
    async with client.get(b.url + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert await get(client, f"{b.url}/{BETA}/@v/v0.3.0.info") == 200  # the catch-all still wins elsewhere

    async with client.get(b.url + dashboard.DATA_PATH) as r:
        assert r.status == 200
        data = await r.json()
    mesh = data["mesh"]
    assert mesh["enabled"] is True and "error" not in mesh, mesh
    assert [(p["id"], p["url"], p["state"], p["source"]) for p in mesh["peers"]] == [(a_id, a.url, "alive", "static")]
    assert mesh["backlog"] == 0
    assert mesh["summary"]["node_id"] == b_id and mesh["summary"]["url"] == b.url
    assert data["requests"]["total"] == 1  # the page's own requests are not traffic
    async with client.get(a.url + dashboard.DATA_PATH) as r:
        peers_of_a = (await r.json())["mesh"]["peers"]
    assert [(p["id"], p["url"], p["source"]) for p in peers_of_a] == [(b_id, b.url, "gossip")]

    dom = await render(chromium, b.url + "/", out_dir(request), screenshot=True)
    assert dom.figure("mesh_peers") == ("1", "1")
    assert dom.figure("mesh_backlog") == ("0", "0")
    (row,) = dom.find("data-peer")
    assert row["attrs"]["data-peer"] == a_id and row["attrs"]["data-state"] == "alive"
    panel = dom.text("id", "mesh-body")
    assert a_id in panel and a.url in panel and "alive" in panel and f"node_id {b_id}" in panel

    def broken() -> MeshStatus:
        raise RuntimeError("a bug in the mesh")

    b.node.hooks.mesh_status, status = broken, b.node.hooks.mesh_status
    async with client.get(b.url + dashboard.DATA_PATH) as r:
        assert r.status == 200  # the page stays up and says why the panel is empty
        assert (await r.json())["mesh"] == {"enabled": True, "error": "mesh status failed: RuntimeError"}
    b.node.hooks.mesh_status = status

    await b.close()
    await a.close()
    assert not any(isinstance(h, dashboard.ErrorLog) for h in logging.getLogger().handlers)
    assert not [t for t in asyncio.all_tasks() if "_sample_loop" in repr(t.get_coro())]


def test_series_and_mesh_view() -> None:
    s = [
        dashboard_view.Sample(1.0, {"hit": 0, "miss": 2}, 100, 2),
        dashboard_view.Sample(6.0, {"hit": 3, "miss": 3}, 150, 3),
        dashboard_view.Sample(11.0, {"hit": 3, "miss": 3}, 150, 3),
    ]
    assert dashboard_view.series(s) == [
        {"t": 1.0, "requests": 2, "hit_ratio": 0.0, "store_bytes": 100},
        {"t": 6.0, "requests": 4, "hit_ratio": 0.75, "store_bytes": 150},
        {"t": 11.0, "requests": 0, "hit_ratio": None, "store_bytes": 150},
    ]
    member: MemberStatus = {
        "node_id": "p1",
        "url": "http://10.0.0.2:3000",
        "state": "suspect",
        "source": "mdns",
        "last_seen_s": 4.5,
        "inventory": 12,
        "synced_serial": 9,
        "head_serial": 12,
        "backlog": 3,
        "failures": 1,
        "quarantined_s": 0.0,
        "quarantine_reason": "",
    }
    status: MeshStatus = {
        "node_id": "me",
        "mesh": "lab",
        "url": "http://10.0.0.1:3000",
        "epoch": "e1",
        "head_serial": 20,
        "inventory": 20,
        "members": [member],
        "seeds": [{"url": "http://10.0.0.2:3000", "source": "mdns", "node_id": "p1", "self": False}],
        "catalog": {"entries": 12, "skipped": 0},
        "presync": {"enabled": True, "active": [], "backlog": 2, "store_bytes": 1, "budget_bytes": 9},
        "sync_backlog": 5,
    }
    v = dashboard_view.mesh_view(status)
    assert v["peers"] == [
        {
            "id": "p1",
            "url": "http://10.0.0.2:3000",
            "state": "suspect",
            "source": "mdns",
            "last_seen_s": 4.5,
            "inventory": 12,
            "backlog": 3,
            "quarantined_s": 0.0,
        }
    ]
    assert v["backlog"] == 5 and v["enabled"] is True
    assert v["summary"] == {
        "node_id": "me",
        "mesh": "lab",
        "url": "http://10.0.0.1:3000",
        "epoch": "e1",
        "head_serial": 20,
        "inventory": 20,
    }
