"""`modmesh doctor`: pure checks fed hand-made observations, then real set-ups
(nodes, fake upstreams, a fake checksum database, the real go command)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from node.cache.direct import Direct
from node.cache.index import MetaEntry
from node.config import Route
from node.tools.doctor.check import Check
from node.tools.doctor.client import auth_checks, goflags_checks, gosumdb_checks, gotoolchain_checks, private_checks
from node.tools.doctor.consistency import View, consistency_checks
from node.tools.doctor.goenv import env_file_value, read_go_env
from node.tools.doctor.goproxy import goproxy_checks, match_node, parse_client_goproxy, redact_list
from node.tools.doctor.node import disk_checks
from node.tools.doctor.probe import Probe
from node.tools.doctor.report import diagnose, render
from node.tools.doctor.upstreams import direct_check
from tests.goenv import go_env
from tests.mesh_fixtures import MeshNode, wait_for
from tests.modules import module_files
from tests.node_fixtures import node_config
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.upstream_fixture import Fault

ROOT = Path(__file__).resolve().parent.parent
NODE = "http://127.0.0.1:3000"
M = "example.com/m"


def codes(checks: list[Check], status: str | None = None) -> set[str]:
    return {c.code for c in checks if c.code and (status is None or c.status == status)}


# ---- client settings ---------------------------------------------------------------------


def test_goproxy_is_parsed_like_go() -> None:
    entries, ignored = parse_client_goproxy(" http://a:1 |127.0.0.1:3000,, direct,https://never")
    assert [(e.url, e.sep, e.prefixed) for e in entries] == [
        ("http://a:1", "|", False),
        ("https://127.0.0.1:3000", ",", True),
        ("direct", ",", False),
    ]
    assert ignored == ["https://never"]
    assert parse_client_goproxy(",")[0] == []
    assert parse_client_goproxy("localhost")[0][0].problem is not None  # one word, no dot or colon: no scheme
    assert "scheme" in (parse_client_goproxy("ftp://x")[0][0].problem or "")
    assert "credentials" in (parse_client_goproxy("http://u:p@x")[0][0].problem or "")
    assert parse_client_goproxy("file:///srv/mods")[0][0].problem is None
    shown = redact_list("https://u:s3cret@corp.example|http://127.0.0.1:3000,direct")
    assert shown == "https://***@corp.example|http://127.0.0.1:3000,direct"
    assert "s3cret" not in str(goproxy_checks(redact_list("http://u:s3cret@127.0.0.1:3000"), NODE, None))


@pytest.mark.parametrize(
    ("goproxy", "status", "code"),
    [
        ("http://127.0.0.1:3000", "ok", ""),
        ("http://localhost:3000/,direct", "ok", ""),
        ("127.0.0.1:3000", "fail", "goproxy-no-scheme"),
        ("https://127.0.0.1:3000", "fail", "goproxy-scheme"),
        ("off", "fail", "goproxy-off"),
        (",", "fail", "goproxy-no-entries"),
        ("localhost", "fail", "goproxy-invalid"),
        ("https://proxy.golang.org,direct", "fail", "goproxy-misses-node"),
        ("https://corp.example,http://127.0.0.1:3000", "warn", "goproxy-node-not-first"),
        ("http://127.0.0.1:3000|direct", "warn", "goproxy-pipe-fallback"),
        ("http://127.0.0.1:3000,direct,https://ignored", "warn", "goproxy-ignored-entries"),
    ],
)
def test_goproxy_pitfalls_are_named(goproxy: str, status: str, code: str) -> None:
    found = match_node(parse_client_goproxy(goproxy)[0], NODE)
    checks = goproxy_checks(goproxy, NODE, found)
    assert max(checks, key=lambda c: {"ok": 0, "info": 0, "warn": 1, "fail": 2}[c.status]).status == status
    if code:
        assert code in codes(checks), checks
    else:
        assert "fallback" in checks[-1].detail or "falls back" in checks[-1].detail


def test_private_module_settings() -> None:
    ok = {"GOPRIVATE": "corp.example", "GONOPROXY": "corp.example", "GONOSUMDB": "corp.example"}
    assert codes(private_checks(ok, "", True)) == set()
    leak = {**ok, "GONOSUMDB": "other.example"}
    assert "private-sumdb-leak" in codes(private_checks(leak, None, True), "fail")
    through = {**ok, "GONOPROXY": "none"}
    assert "private-node-sumdb" in codes(private_checks(through, "", True))
    assert codes(private_checks(through, "corp.example", True)) == set()  # the node knows them
    everything = {"GOPRIVATE": "*", "GONOPROXY": "*", "GONOSUMDB": "*"}
    assert {"gonoproxy-public", "nosumdb-public"} <= codes(private_checks(everything, "", False))


def test_sumdb_flags_and_toolchain_settings() -> None:
    assert "gosumdb-off" in codes(gosumdb_checks({"GOSUMDB": "off"}, ["sum.golang.org"], {}), "warn")
    assert "gosumdb-url" in codes(gosumdb_checks({"GOSUMDB": "sum.golang.org https://sum.golang.org"}, [], {}))
    assert "gosumdb-not-proxied" in codes(gosumdb_checks({"GOSUMDB": "sum.golang.org"}, ["sum.example"], {}))
    assert codes(gosumdb_checks({"GOSUMDB": "sum.golang.org+033de0ae+Ac4z"}, ["sum.golang.org"], {})) == set()
    assert "goflags-insecure" in codes(goflags_checks({"GOFLAGS": "-mod=mod -insecure"}), "fail")
    assert "goflags-invalid" in codes(goflags_checks({"GOFLAGS": "mod=mod"}))
    assert codes(goflags_checks({"GOFLAGS": "-mod=mod -modcacherw"})) == set()
    assert "gotoolchain-invalid" in codes(gotoolchain_checks({"GOTOOLCHAIN": "banana"}), "fail")
    assert codes(gotoolchain_checks({"GOTOOLCHAIN": "local"})) == set()
    assert codes(gotoolchain_checks({"GOTOOLCHAIN": "auto", "GOSUMDB": "sum.golang.org"})) == set()
    assert "gotoolchain-sumdb-off" in codes(gotoolchain_checks({"GOTOOLCHAIN": "auto", "GOSUMDB": "off"}), "warn")
    pinned = gotoolchain_checks({"GOTOOLCHAIN": "go1.99.0", "GOOS": "linux", "GOARCH": "arm64"})
    assert "gotoolchain-pinned" in codes(pinned)
    assert "golang.org/toolchain@v0.0.1-go1.99.0.linux-arm64" in pinned[0].detail
    assert codes(gotoolchain_checks({"GOTOOLCHAIN": "go1.27.3", "GOVERSION": "go1.27.3"})) == set()
    assert "gotoolchain-sumdb-off" in codes(gotoolchain_checks({"GOTOOLCHAIN": "go1.99.0+auto", "GOSUMDB": "off"}))
    assert env_file_value("# c\nGOTOOLCHAIN=go1.21.0+auto\nGOPROXY=x\n", "GOTOOLCHAIN") == "go1.21.0+auto"


def test_credentials_go_will_not_send(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    env = {"NETRC": str(netrc)}
    assert "auth-over-http" in codes(auth_checks({}, env, "http://node.example:3000"), "fail")
    assert "goauth-off" in codes(auth_checks({"GOAUTH": "off"}, env, "https://node.example:3000"), "fail")
    assert "netrc-missing" in codes(auth_checks({}, env, "https://node.example:3000"), "fail")
    netrc.write_text("machine node.example login builder password t0ken\n")
    assert "netrc-no-port" in codes(auth_checks({}, env, "https://node.example:3000"), "fail")
    netrc.write_text("machine other.example login x password y\nmachine node.example:3000\n  login b password t\n")
    assert [c.status for c in auth_checks({"GOAUTH": "netrc"}, env, "https://node.example:3000")] == ["ok"]
    assert [c.status for c in auth_checks({"GOAUTH": "git /src"}, env, "https://node.example:3000")] == ["info"]


def test_direct_needs_go_and_git(tmp_path: Path) -> None:
    check = direct_check(Direct(tmp_path, go=None), "corp.example.com")
    assert check.code == "direct-tools-missing" and check.name == "direct (route corp.example.com)"


def test_disk_thresholds() -> None:
    gib = 1 << 30
    assert codes(disk_checks(Path("/d"), 50 * gib, 100 * gib, 500, 1000)) == set()
    assert "disk-low" in codes(disk_checks(Path("/d"), 3 * gib, 100 * gib, 500, 1000), "warn")
    assert "disk-full" in codes(disk_checks(Path("/d"), gib // 2, 100 * gib, 500, 1000), "fail")
    assert "disk-low" in codes(disk_checks(Path("/d"), 8 * gib, 1000 * gib, 500, 1000), "warn")  # under 10%
    assert "disk-full" in codes(disk_checks(Path("/d"), gib // 2, 2 * gib, 500, 1000), "fail")  # 25%, but tiny
    assert "inodes-low" in codes(disk_checks(Path("/d"), 50 * gib, 100 * gib, 5, 1000), "fail")
    assert [c.status for c in disk_checks(Path("/d"), 50 * gib, 100 * gib, 0, 0)] == ["ok", "info"]


# ---- consistency, from observations ------------------------------------------------------------


def ok(body: bytes) -> Probe:
    return Probe(200, body)


def view(name: str, versions: list[str], latest: bytes | None = None, **files: Probe) -> View:
    body = "".join(v + "\n" for v in versions).encode()
    lat = ok(latest if latest is not None else json.dumps({"Version": versions[-1]}).encode())
    return View(name, ok(body), lat, {f"@v/{k.replace('_', '.')}": p for k, p in files.items()})


def test_consistency_names_each_problem() -> None:
    a = view("A", ["v1.0.0", "v1.1.0"], latest=b"", **{"v1.1.0_info": ok(b""), "v1.1.0_zip": ok(b"P")})
    b = view("B", ["v1.0.0"])
    c = View("C", Probe(404, b"not found"), Probe(404), {})
    checks = consistency_checks(M, [a, b, c], None, None, 300, 1000.0)
    details = {c.code: [x.detail for x in checks if x.code == c.code] for c in checks}
    assert any("upstream A" in d and "@latest" in d for d in details["empty-200"])
    assert any("upstream A" in d and "v1.1.0.info" in d for d in details["empty-200"])
    lags = " ".join(details["list-lags"])
    assert "upstream B's @v/list lags: it lacks v1.1.0" in lags and "upstream C" in lags and "answers 404" in lags
    assert all(x.status == "fail" for x in checks)


def test_consistency_drift_cache_and_agreement() -> None:
    a = view("A", ["v1.0.0", "v1.1.0"])
    b = view("B", ["v1.0.0", "v1.1.0"], latest=b'{"Version":"v1.0.0"}')
    cached = MetaEntry(M, "list", b"v1.0.0\n", "A", fetched_at=0.0)
    checks = consistency_checks(M, [a, b], cached, None, 300, 1000.0)
    assert codes(checks) == {"latest-drift", "cache-stale", "cache-lags"}
    assert all(c.status == "warn" for c in checks)
    fresh = MetaEntry(M, "list", b"v1.0.0\nv1.1.0\n", "A", fetched_at=900.0)
    good = consistency_checks(M, [a, view("B", ["v1.0.0", "v1.1.0"])], fresh, None, 300, 1000.0)
    assert [(c.status, c.detail) for c in good] == [
        ("ok", "2 upstreams and the cache agree: 2 versions, newest v1.1.0")
    ]
    missing = View("A", ok(b"v1.0.0\n"), ok(b'{"Version":"v1.0.0"}'), {"@v/v1.0.0.zip": Probe(404)})
    assert "file-missing" in codes(consistency_checks(M, [missing], None, None, 300, 0))


# ---- real set-ups ------------------------------------------------------------------------------


async def _upstreams(fake_proxy):  # type: ignore[no-untyped-def]
    a, b = await fake_proxy(), await fake_proxy()
    for v in ("v1.0.0", "v1.1.0"):
        a.add_module(M, v, *module_files(M, v))
    b.add_module(M, "v1.0.0", *module_files(M, "v1.0.0"))  # b has not seen v1.1.0 yet
    return a, b


async def doctor_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """`python -m node.cli doctor ...` as a user runs it, with the real go on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "doctor",
        *args,
        cwd=ROOT,
        env={**env, "PATH": path, "PYTHONPATH": str(ROOT), "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    if proc.returncode not in (0, 1):
        raise AssertionError(err.decode()[-3000:])
    return proc.returncode, out.decode()


async def test_broken_setup_reports_each_problem_and_exits_nonzero(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    a, b = await _upstreams(fake_proxy)
    a.inject(f"/{M}/@latest", Fault.empty_200())
    a.inject(r"\.info$", Fault.empty_200())
    node = await make_node(f"{a.url}|{b.url}")
    bare = node.url.removeprefix("http://")  # GOPROXY without a scheme: go uses https://
    env = go_env(tmp_path, bare)
    code, out = await doctor_cli("--node", node.url, "--module", M, "--json", env=env)
    assert code == 1
    report = json.loads(out)
    checks = [Check.from_json(c) for c in report["checks"]]
    failed = {c.code: c.detail for c in checks if c.status == "fail"}
    assert "goproxy-no-scheme" in failed and f"https://{bare}" in failed["goproxy-no-scheme"]
    assert any(c.code == "empty-200" and a.url in c.detail and "@latest" in c.detail for c in checks)
    assert "list-lags" in failed and b.url in failed["list-lags"] and "v1.1.0" in failed["list-lags"]
    assert report["status"] == "fail" and report["go_env"]["source"].startswith("go env")


async def test_healthy_setup_exits_zero(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    up = await fake_proxy()
    db = FakeSumDB("sum.doctor.test", generate_keys("sum.doctor.test", seed=bytes(32)))
    for v in ("v1.0.0", "v1.1.0"):
        up.add_module(M, v, *module_files(M, v))
    await db.start()
    try:
        node = await make_node(up.url, sumdb=(f"{db.vkey} {db.url}",))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{node.url}/{M}/@v/list") as r:
                assert r.status == 200
        env = go_env(tmp_path, node.url, gosumdb=db.vkey)
        code, out = await doctor_cli("--node", node.url, "--module", M, env=env)
        assert code == 0, out
        assert "all checks passed" in out and "1 upstreams and the cache agree" in out
        code, out = await doctor_cli("--node", node.url, "--json", env=env)
        report = json.loads(out)
        assert code == 0 and report["status"] == "ok", out
        assert {c["name"] for c in report["checks"]} >= {
            "GOPROXY",
            "disk",
            "cache",
            "mesh",
            f"sumdb {db.name}",
            f"upstream {up.url}",
            f"node {node.url}",
        }
        assert report["node"]["sumdb"] == [db.name]
    finally:
        await db.stop()


async def test_data_dir_in_process_with_and_without_a_node(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    a, b = await _upstreams(fake_proxy)
    data = tmp_path / "data"
    running = await make_node(f"{a.url},{b.url}", data=data)
    cfg = node_config(data, f"{a.url},{b.url}", listen=running.url.removeprefix("http://"))
    env = go_env(tmp_path, running.url)
    rep = await diagnose(env, None, config=cfg, modules=[M])
    by = {c.code or c.name: c for c in rep.checks}
    assert by[f"node {running.url}"].status == "ok"  # the node on this directory answers
    assert by["list-lags"].status == "fail" and b.url in by["list-lags"].detail
    assert by["mesh"].status == "info" and by["disk"].status == "ok"
    await running.aclose()
    rep = await diagnose(env, None, config=cfg)
    assert "node-unreachable" in codes(rep.checks, "warn")  # --data works without a node
    assert rep.status == "warn" and rep.facts is not None and rep.facts["upstreams"] == [a.url, b.url]
    missing = node_config(tmp_path / "nothing", a.url)
    rep = await diagnose(env, None, config=missing)
    assert "no-data" in codes(rep.checks, "fail") and not (tmp_path / "nothing").exists()


async def test_go_env_is_read_without_switching_toolchains(go_bin: str, tmp_path: Path) -> None:
    env = go_env(
        tmp_path,
        NODE,
        GOTOOLCHAIN="go1.99.0",
        GOFLAGS="-insecure",
        GOPRIVATE="corp.example.com",
        GONOSUMDB="other.example.com",
    )
    goenv = await read_go_env(env, go_bin, timeout=20)
    assert goenv.error is None and goenv.source.startswith("go env (go1.")
    assert goenv.values["GOTOOLCHAIN"] == "go1.99.0" and goenv.values["GONOPROXY"] == "corp.example.com"
    rep = await diagnose(env, go_bin, node=NODE.replace("3000", "9"), timeout=1)
    want = {"gotoolchain-sumdb-off", "goflags-insecure", "private-sumdb-leak", "node-unreachable"}
    assert want <= codes(rep.checks, "fail")
    buf = io.StringIO()
    render(Console(file=buf, width=300), rep)
    assert "GOTOOLCHAIN=go1.99.0" in buf.getvalue() and "failed" in buf.getvalue()


async def test_node_side_failures(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy()
    db = FakeSumDB("sum.down.test", generate_keys("sum.down.test", seed=bytes(32)))
    await db.start()
    spec = (f"{db.vkey} {db.url}",)
    await db.stop()  # the database is down
    node = await make_node(f"{up.url}|http://127.0.0.1:9", sumdb=spec)
    ups = node.chain.upstreams
    for _ in range(3):
        ups[0].breaker.failure()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{node.url}/_admin/doctor", params={"timeout": "1"}) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            report: dict[str, Any] = await r.json()
        async with s.get(f"{node.url}/_admin/doctor", params={"module": "Bad..Path"}) as r:
            assert r.status == 400
    by = {c["name"]: c for c in report["checks"]}
    assert by[f"upstream {up.url}"]["code"] == "upstream-breaker-open"
    assert by["upstream http://127.0.0.1:9"]["code"] == "upstream-unreachable"
    assert by["sumdb sum.down.test"]["code"] == "sumdb-unreachable"
    assert report["facts"]["epoch"] == node.index.epoch


async def test_tokens_and_routes(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Admin token for node-side checks, client credentials go would not send over
    http, and a [[route]]: its upstream probed, its module compared only there."""
    public, corp = await fake_proxy(), await fake_proxy()
    public.add_module(M, "v1.0.0", *module_files(M, "v1.0.0"))
    corp.add_module("corp.example.com/lib", "v1.0.0", *module_files("corp.example.com/lib", "v1.0.0"))
    (tmp_path / "admin").write_text("adm1n\n")
    (tmp_path / "clients").write_text("c1ient\n")
    node = await make_node(
        public.url,
        admin_token_file=tmp_path / "admin",
        client_tokens_file=tmp_path / "clients",
        routes=(Route("corp.example.com", corp.url),),
        private="corp.example.com",
    )
    env = go_env(tmp_path, node.url, GOPRIVATE="corp.example.com", GONOPROXY="none")
    rep = await diagnose(env, None, node=node.url)
    assert "admin-token" in codes(rep.checks, "warn") and rep.facts is None
    assert "auth-over-http" in codes(rep.checks, "fail")  # detected without the admin endpoint
    rep = await diagnose(env, None, node=node.url, modules=["corp.example.com/lib"], admin_token="adm1n")
    by = {c.name: c for c in rep.checks}
    assert by[f"upstream {corp.url} (route corp.example.com)"].status == "ok"
    assert "200 for corp.example.com/lib/@v/list" in by[f"upstream {corp.url} (route corp.example.com)"].detail
    assert by["module corp.example.com/lib"].detail.startswith("1 upstreams agree")  # the route only
    assert rep.facts is not None and rep.facts["clients_need_auth"] is True
    assert "private-node-sumdb" not in codes(rep.checks)  # the node treats corp.example.com as private


async def test_node_report_reads_the_real_mesh(fake_proxy, make_mesh_node) -> None:  # type: ignore[no-untyped-def]
    """Doctor's mesh line comes from the mesh's own status record: /_mesh/status takes
    signed requests only, and its members are under "members" (not "peers")."""
    up = await fake_proxy()
    a = await make_mesh_node(up.url, mesh={"presync": False})
    b = await make_mesh_node(up.url, peers=[a.url], mesh={"presync": False})

    def alive(mn: MeshNode, other: str) -> bool:
        m = mn.mesh.membership.get(other)
        return m is not None and m.state == "alive"

    await wait_for(lambda: alive(b, a.mesh.node_id), 10, "B sees A alive")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{b.url}/_mesh/status") as r:
            assert r.status == 401  # what an HTTP probe of the endpoint gets
        async with s.get(f"{b.url}/_admin/doctor", params={"timeout": "1"}) as r:
            assert r.status == 200
            report: dict[str, Any] = await r.json()
    (mesh,) = [c for c in report["checks"] if c["name"] == "mesh"]
    assert mesh["status"] == "ok" and mesh["detail"].startswith("1 peers (1 alive)"), mesh

    b.node.hooks.mesh_status = lambda: {**b.mesh.status(), "members": []}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{b.url}/_admin/doctor", params={"timeout": "1"}) as r:
            (mesh,) = [c for c in (await r.json())["checks"] if c["name"] == "mesh"]
    assert mesh["status"] == "info" and "no peers yet" in mesh["detail"], mesh
