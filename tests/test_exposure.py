"""Issue 18: the dashboard, /metrics, /healthz and error bodies show no private module
name and no upstream address to a client without admin rights (the admin token, or
a loopback client when none is configured: the rule of /_admin/).

Real nodes, a private route to its own fake upstream, a public fake upstream that is
also the checksum database; a browser (headless Chromium) for the page itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from node.config import Route
from node.hooks import Hooks
from node.server import dashboard
from node.server.exposure import Exposure
from tests.mesh_fixtures import MeshNode, MeshNodeFactory, wait_for
from tests.modules import module_files, module_set
from tests.node_fixtures import NodeFactory
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.test_dashboard import CHROMIUM, out_dir, render
from tests.upstream_fixture import FakeProxy, Fault

DB = "sum.example.test"
TOKEN = "adm1n-t0ken"
PUBLIC = "example.com/alpha"
PRIVATE = "corp.example.com/secret"
PUBLIC_MODS = module_set((PUBLIC, "v1.0.0", module_files(PUBLIC, "v1.0.0")))
PRIVATE_MODS = module_set((PRIVATE, "v1.0.0", module_files(PRIVATE, "v1.0.0")))
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def public() -> AsyncIterator[FakeSumDB]:
    """The default upstream, and the checksum database."""
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))), modules=PUBLIC_MODS)
    db.add_corpus(PUBLIC_MODS)
    await db.start()
    yield db
    await db.stop()


@pytest.fixture
async def corp() -> AsyncIterator[FakeProxy]:
    """The private route's upstream."""
    up = FakeProxy(PRIVATE_MODS)
    await up.start()
    yield up
    await up.stop()


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        return r.status, (await r.read()).decode(errors="replace")


def named(text: str, *ups: FakeProxy) -> list[str]:
    """The upstreams whose address (host:port, which their URLs contain) `text` shows."""
    return [u.url for u in ups if re.search(rf"127\.0\.0\.1:{u.port}(?!\d)", text)]


async def test_public_view_hides_private_modules_and_upstream_addresses(  # type: ignore[no-untyped-def]
    make_node: NodeFactory, public: FakeSumDB, corp: FakeProxy, tmp_path: Path, request
) -> None:
    (tmp_path / "admin").write_text(TOKEN + "\n")
    node = await make_node(
        public.url,
        sumdb=(f"{public.vkey} {public.url}",),
        routes=(Route("corp.example.com", corp.url),),
        admin_token_file=tmp_path / "admin",
        breaker_threshold=1,
    )
    base = node.url
    for _ in range(3):
        for kind in ("info", "mod", "zip"):
            assert (await fetch(f"{base}/{PRIVATE}/@v/v1.0.0.{kind}"))[0] == 200
    assert (await fetch(f"{base}/{PUBLIC}/@v/v1.0.0.zip"))[0] == 200
    corp.inject("broken", Fault.status(500, b"internal error\n"))
    assert (await fetch(f"{base}/corp.example.com/broken/@v/v1.0.0.info"))[0] == 502  # route breaker opens

    # Loopback, but an admin token is configured: a client like any other.
    status, text = await fetch(base + dashboard.DATA_PATH)
    assert status == 200
    assert PRIVATE not in text and named(text, corp, public) == []
    data = json.loads(text)
    assert data["view"] == "public"
    assert [m["module"] for m in data["top_modules"]] == [PUBLIC]
    assert [u["name"] for u in data["upstreams"]] == ["upstream-1"]
    # The database is at the upstream's address: the same alias (a database of its own is `sumdb:<name>`).
    assert data["sumdb"][0]["base"] == "upstream-1" and data["sumdb"][0]["name"] == DB
    assert data["mesh"] == {"enabled": False, "restricted": True}
    assert data["errors"] == [] and data["errors_hidden"] >= 1

    # The admin sees it all: the private module on top, addresses, the log lines.
    status, text = await fetch(base + dashboard.DATA_PATH, ADMIN)
    data = json.loads(text)
    assert data["view"] == "admin" and data["top_modules"][0]["module"] == PRIVATE
    assert [u["name"] for u in data["upstreams"]] == [public.url]
    assert any("circuit open" in e["message"] and corp.url in e["message"] for e in data["errors"]), data["errors"]
    assert data["mesh"] == {"enabled": False}

    # /metrics and /healthz: upstreams by alias (the route's too), addresses for the admin.
    status, text = await fetch(base + "/metrics")
    assert status == 200 and 'upstream="route-1"' in text and 'upstream="upstream-1"' in text
    assert named(text, corp, public) == []
    assert corp.url in (await fetch(base + "/metrics", ADMIN))[1]
    status, text = await fetch(base + "/healthz")
    health = json.loads(text)
    assert [u["name"] for u in health["upstreams"]] == ["upstream-1"] and health["sumdb"][0]["base"] == "upstream-1"
    assert named(text, corp, public) == []
    assert json.loads((await fetch(base + "/healthz", ADMIN))[1])["upstreams"][0]["name"] == public.url

    # The page, in a browser: the public view says what is withheld; the admin token in
    # the address's fragment gives the admin view (and leaves the address bar).
    if not Path(CHROMIUM).exists():
        pytest.skip("headless Chromium is not installed (make test installs it as root)")
    dom = await render(str(CHROMIUM), base + "/", out_dir(request) / "public")
    assert dom.figure("mesh")[0] == "restricted" and "admin-token" in dom.figure("mesh")[1]
    assert int(dom.figure("errors_hidden")[0]) >= 1
    assert [e["attrs"]["data-module"] for e in dom.find("data-module")] == [PUBLIC]
    assert [e["attrs"]["data-upstream"] for e in dom.find("data-upstream")] == ["upstream-1"]
    dom = await render(str(CHROMIUM), f"{base}/#admin-token={TOKEN}", out_dir(request) / "admin")
    assert dom.find("data-module")[0]["attrs"]["data-module"] == PRIVATE
    assert "circuit open" in dom.text("id", "errors-list")
    assert dom.figure("mesh") == ("disabled", "mesh not enabled on this node")


async def test_mesh_panel_needs_admin_rights(  # type: ignore[no-untyped-def]
    make_mesh_node: MeshNodeFactory, public: FakeSumDB, tmp_path: Path
) -> None:
    """The dashboard's mesh panel answers who /_mesh/status answers (signed peers) and
    admins; a client without admin rights gets no mesh summary."""
    (tmp_path / "admin").write_text(TOKEN + "\n")
    a = await make_mesh_node(public.url, mesh={"presync": False})
    b = await make_mesh_node(public.url, peers=[a.url], mesh={"presync": False}, admin_token_file=tmp_path / "admin")

    def alive(mn: MeshNode, other: str) -> bool:
        m = mn.mesh.membership.get(other)
        return m is not None and m.state == "alive"

    await wait_for(lambda: alive(b, a.mesh.node_id), 10, "B sees A")
    assert (await fetch(b.url + "/_mesh/status"))[0] == 401
    status, text = await fetch(b.url + dashboard.DATA_PATH)
    assert status == 200 and json.loads(text)["mesh"] == {"enabled": True, "restricted": True}
    for secret in (a.mesh.node_id, b.mesh.node_id, a.url):
        assert secret not in text
    mesh = json.loads((await fetch(b.url + dashboard.DATA_PATH, ADMIN))[1])["mesh"]
    assert [p["id"] for p in mesh["peers"]] == [a.mesh.node_id] and mesh["summary"]["node_id"] == b.mesh.node_id
    # No admin token on A: its own machine (loopback) is the admin, as for /_admin/.
    mesh = json.loads((await fetch(a.url + dashboard.DATA_PATH))[1])["mesh"]
    assert [p["id"] for p in mesh["peers"]] == [b.mesh.node_id]


async def _storage(host: str) -> tuple[web.AppRunner, str]:
    """Where the private upstream redirects downloads: answers 404 naming itself."""

    async def blob(request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"no such blob: http://{request.host}{request.path}\n")

    app = web.Application()
    app.router.add_get("/{tail:.*}", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


async def test_error_bodies_name_no_upstream(  # type: ignore[no-untyped-def]
    make_node: NodeFactory, public: FakeSumDB, tmp_path: Path
) -> None:
    """An upstream's 404 text reaches the go command, but no address of ours in it:
    not the address a private upstream redirected to, not another upstream's."""
    storage, storage_url = await _storage("127.0.0.2")

    async def corp_proxy(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{storage_url}/blobs{request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", corp_proxy)
    corp = web.AppRunner(app)
    await corp.setup()
    await web.TCPSite(corp, "127.0.0.1", 0).start()
    corp_port = corp.addresses[0][1]
    route = f"http://localhost:{corp_port}"  # the route names its upstream by host name
    try:
        node = await make_node(public.url, routes=(Route("corp.example.com", route),))
        status, body = await fetch(f"{node.url}/{PRIVATE}/@v/v1.0.0.info")
        assert status == 404 and body.startswith("no such blob: <upstream>"), body
        assert storage_url not in body and "127.0.0.2" not in body and str(corp_port) not in body

        # The public upstream's text names the private route's upstream (any letter case).
        public.inject(
            "example.com/gone", Fault.status(404, f"gone: mirrored from {route.upper()}/x and {route}/y\n".encode())
        )
        status, body = await fetch(f"{node.url}/example.com/gone/@v/v1.0.0.mod")
        assert status == 404 and body.startswith("gone: mirrored from <upstream>/x and <upstream>/y"), body
        assert "localhost" not in body.lower() and str(corp_port) not in body
    finally:
        await corp.cleanup()
        await storage.cleanup()


async def test_admin_token_opens_the_admin_view_where_clients_need_credentials(  # type: ignore[no-untyped-def]
    make_node: NodeFactory, public: FakeSumDB, tmp_path: Path
) -> None:
    """With client tokens configured, the admin token alone (what the page sends) is enough
    for the dashboard's admin view; a client token gets the public view."""
    (tmp_path / "admin").write_text(TOKEN + "\n")
    (tmp_path / "clients").write_text("client-t0ken\n")
    node = await make_node(public.url, admin_token_file=tmp_path / "admin", client_tokens_file=tmp_path / "clients")
    assert (await fetch(node.url + dashboard.DATA_PATH))[0] == 401
    status, text = await fetch(node.url + dashboard.DATA_PATH, {"Authorization": "Bearer client-t0ken"})
    assert status == 200 and json.loads(text)["view"] == "public"
    status, text = await fetch(node.url + dashboard.DATA_PATH, ADMIN)
    assert status == 200 and json.loads(text)["view"] == "admin"
    assert json.loads(text)["upstreams"][0]["name"] == public.url


def test_health_texts_name_no_private_module() -> None:
    """Reasons and other health texts name damaged or refused files by key: a private
    module's key (or module@version) is masked for non-admins, a public one kept."""
    hooks = Hooks()
    hooks.private.own = "corp.example.com"
    hooks.private.add("mesh:n1", ["rsc.io/sampler"])
    chain = type("Chain", (), {"upstreams": []})()
    proxy = type("Proxy", (), {"hooks": hooks, "chain": chain, "routes": []})()
    exposure = Exposure(lambda r: False, proxy, None)  # type: ignore[arg-type]
    health = {
        "reasons": [
            "3 files were damaged on disk (quarantined) and are not repaired yet: "
            f"{PRIVATE}/@v/v1.0.0.zip, {PUBLIC}/@v/v1.0.0.mod, rsc.io/sampler/@latest",
        ],
        "store": {"first": f"{PRIVATE}@v1.0.0", "integrity": {"last_damage": {"keys": [f"{PUBLIC}/@v/list"]}}},
        "upstreams": [],
        "sumdb": [],
    }
    out = exposure.public_health(health)
    assert out["reasons"] == [
        "3 files were damaged on disk (quarantined) and are not repaired yet: "
        f"<private module>, {PUBLIC}/@v/v1.0.0.mod, <private module>"
    ]
    assert out["store"] == {"first": "<private module>", "integrity": {"last_damage": {"keys": [f"{PUBLIC}/@v/list"]}}}
