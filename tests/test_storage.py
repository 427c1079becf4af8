"""Storage limits on real nodes: eviction under a cap, pins, gc, verify and repair,
a full disk, and the pin/gc/verify commands."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from node.cache import store as store_module
from node.cache.protocol import ModRequest
from node.cache.upstream import Timeouts, Upstream
from node.cli import build_parser
from node.config import ConfigError, load_config
from node.hooks import PeerCandidate
from node.service import Node
from tests.blobs import Blob, blob, on_disk
from tests.disk import FillingDisk
from tests.modules import big_module, module_files, module_set
from tests.upstream_fixture import Fault

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("info", "mod", "zip")


@pytest.fixture
async def client():  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        yield s


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with client.get(url) as r:
        return r.status, await r.read(), r.headers.get("X-Modmesh-Cache", "")


async def cached(node: Node, module: str, version: str, kind: str) -> bool:
    e = await node.index.get(module, version, kind)
    return e is not None and blob(node.config.data, e.sha256).exists()


# ---- eviction ------------------------------------------------------------------------


async def test_eviction_keeps_hot_and_pinned_under_cap(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    size = 20_000
    hot = ("example.com/hot", "v1.0.0", big_module("example.com/hot", "v1.0.0", size))
    # Same go.mod body as v1.0.0: the two .mod rows share one blob. Its zip is the
    # biggest of the unused ones, so it goes first.
    sibling = ("example.com/hot", "v1.1.0", big_module("example.com/hot", "v1.1.0", size + 5000))
    pinned = ("example.com/pinned", "v1.0.0", big_module("example.com/pinned", "v1.0.0", size))
    cold = [(f"example.com/cold{i}", "v1.0.0", big_module(f"example.com/cold{i}", "v1.0.0", size)) for i in range(10)]
    up = await fake_proxy(module_set(hot, sibling, pinned, *cold))
    cap = 100_000
    node = await make_node(up.url, max_size=cap)
    async with client.post(node.url + "/_admin/pin", json={"pattern": "example.com/pinned"}) as r:
        assert r.status == 200 and (await r.json())["added"] is True

    async def fetch(m: str, v: str) -> None:
        for kind in KINDS:
            status, _, _ = await get(client, f"{node.url}/{m}/@v/{v}.{kind}")
            assert status == 200

    for _ in range(4):
        await fetch(hot[0], hot[1])
    await fetch(pinned[0], pinned[1])
    await fetch(sibling[0], sibling[1])
    for m, v, _ in cold:
        await fetch(m, v)
    await node.storage.idle()

    used = (await node.index.totals()).bytes
    assert used <= cap
    assert sum(on_disk(node.config.data).values()) == used  # no blob left behind unreferenced
    for kind in KINDS:
        assert await cached(node, hot[0], hot[1], kind)
        assert await cached(node, pinned[0], pinned[1], kind)
    assert await cached(node, sibling[0], sibling[1], "mod")  # its blob is the hot one's
    assert not await cached(node, sibling[0], sibling[1], "zip")
    # Among the equal cold zips the oldest went, the newest stayed.
    assert not await cached(node, cold[0][0], cold[0][1], "zip")
    assert await cached(node, cold[-1][0], cold[-1][1], "zip")

    # An evicted file is fetched again, not served from a stale memory copy; its
    # small .info and .mod were worth keeping.
    m, v, files = cold[0]
    for kind, want, cache in zip(KINDS, files, ("hit", "hit", "miss")):
        assert await get(client, f"{node.url}/{m}/@v/{v}.{kind}") == (200, want, cache)
    assert f"modmesh_store_max_bytes {float(cap)}" in (await (await client.get(node.url + "/metrics")).text())


async def test_pin_endpoints(make_node, client) -> None:  # type: ignore[no-untyped-def]
    node = await make_node("off", max_size=10**9)
    url = node.url + "/_admin/pin"
    for want in (True, False):
        async with client.post(url, json={"pattern": "rsc.io/*"}) as r:
            assert r.status == 200 and await r.json() == {"pattern": "rsc.io/*", "added": want}
    for bad in (
        {"pattern": "a b"},
        {"pattern": ""},
        {"pattern": "x,y"},
        {"pattern": "rsc.io/quote@v1.5.2"},
        {"nope": 1},
    ):
        async with client.post(url, json=bad) as r:
            assert r.status == 400, bad
    async with client.post(url, data=b"{not json") as r:
        assert r.status == 400
    async with client.get(url) as r:
        body = await r.json()
        assert [p["pattern"] for p in body["pins"]] == ["rsc.io/*"]
        assert body["max_size"] == 10**9 and body["used"] == 0
    for want in (True, False):
        async with client.delete(url, params={"pattern": "rsc.io/*"}) as r:
            assert (await r.json())["removed"] is want


# ---- gc --------------------------------------------------------------------------------


async def test_gc(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    m, other = "example.com/kept", "example.com/listed"
    up = await fake_proxy(
        module_set((m, "v1.0.0", module_files(m, "v1.0.0")), (other, "v1.0.0", module_files(other, "v1.0.0")))
    )
    node = await make_node(up.url, meta_ttl=0.05, meta_stale_window=0)
    for path in (
        f"/{m}/@v/v1.0.0.info",
        f"/{m}/@v/v1.0.0.mod",
        f"/{m}/@v/v1.0.0.zip",
        f"/{m}/@v/list",
        f"/{other}/@v/list",
    ):
        assert (await get(client, node.url + path))[0] == 200
    data = node.config.data
    old = time.time() - 3600
    old_orphan = node.store.put_bytes(b"left by a crash before indexing")
    blob(data, old_orphan.sha256).age(old)
    young_orphan = node.store.put_bytes(b"about to be indexed by a running node")
    tmp = node.store.tmp_dir
    (tmp / "stale.part").write_bytes(b"x" * 10)
    os.utime(tmp / "stale.part", (old, old))
    (tmp / "inflight.part").write_bytes(b"y")
    info = await node.index.get(m, "v1.0.0", "info")
    assert info is not None
    blob(data, info.sha256).unlink()  # a row whose blob is gone
    await asyncio.sleep(0.1)  # both lists expire

    async with client.post(node.url + "/_admin/gc") as r:
        assert r.status == 200
        rep = await r.json()
    assert rep["dangling_rows"] == 1 and rep["orphan_blobs"] == 1 and rep["young_orphans"] == 1
    assert rep["orphan_bytes"] == len(b"left by a crash before indexing")
    assert rep["tmp_files"] == 1 and rep["tmp_bytes"] == 10
    assert rep["meta_rows"] == 1  # `other` has nothing cached; `m` still has files
    assert rep["evict"]["max_size"] is None
    assert not blob(data, old_orphan.sha256).exists() and blob(data, young_orphan.sha256).exists()
    assert sorted(p.name for p in (data / "tmp").rglob("*") if p.is_file()) == ["inflight.part"]
    assert await node.index.get(m, "v1.0.0", "info") is None
    assert await node.index.get_meta(other, "list") is None and await node.index.get_meta(m, "list") is not None
    status, _body, cache = await get(client, f"{node.url}/{m}/@v/v1.0.0.info")
    assert status == 200 and cache == "miss"


# ---- verify ----------------------------------------------------------------------------


def corrupt(path: Path | Blob) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_verify_finds_and_repairs_from_upstream(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    m, big = "example.com/small", "example.com/big"
    files = module_files(m, "v1.0.0")
    big_files = big_module(big, "v1.0.0", 200_000)
    up = await fake_proxy(module_set((m, "v1.0.0", files), (big, "v1.0.0", big_files)))
    # A low threshold: the big zip's repair takes the streaming (Download) path.
    node = await make_node(up.url, stream_threshold=4096)
    for kind in KINDS:
        assert (await get(client, f"{node.url}/{m}/@v/v1.0.0.{kind}"))[0] == 200
    assert (await get(client, f"{node.url}/{big}/@v/v1.0.0.zip"))[0] == 200

    async def path_of(module: str, kind: str) -> Blob:
        e = await node.index.get(module, "v1.0.0", kind)
        assert e is not None
        return blob(node.config.data, e.sha256)

    corrupt(await path_of(big, "zip"))
    (await path_of(m, "mod")).write_bytes(b"module evil.example\n")
    (await path_of(m, "info")).unlink()
    up.reset_counts()

    async with client.post(node.url + "/_admin/verify", params={"repair": "0"}) as r:
        rep = await r.json()
    assert rep["files"] == 4 and rep["unrepaired"] == 3
    assert sorted((p["module"], p["kind"], p["reason"].split(":")[0], p["status"]) for p in rep["problems"]) == [
        (big, "zip", "sha256 mismatch", "found"),
        (m, "info", "missing", "found"),
        (m, "mod", "sha256 mismatch", "found"),
    ]
    assert sum(up.requests.values()) == 0

    async with client.post(node.url + "/_admin/verify") as r:
        rep = await r.json()
    assert rep["repaired"] == 3 and rep["unrepaired"] == 0, rep
    assert all(p["detail"] == f"refetched from {up.url}" for p in rep["problems"])
    assert up.count("/@v/v1.0.0.zip") == 1 and up.count("/@v/v1.0.0.mod") == 1
    assert up.count("/@v/v1.0.0.info") == 1
    for kind, want in zip(KINDS, files):
        assert (await get(client, f"{node.url}/{m}/@v/v1.0.0.{kind}"))[1] == want
    assert (await get(client, f"{node.url}/{big}/@v/v1.0.0.zip"))[1] == big_files[2]
    for name in on_disk(node.config.data):
        assert hashlib.sha256(blob(node.config.data, name).read_bytes()).hexdigest() == name
    async with client.post(node.url + "/_admin/verify") as r:
        assert (await r.json())["problems"] == []


class StaticPeers:
    """The mesh's seam, with one fixed peer."""

    def __init__(self, peer: Upstream) -> None:
        self.peer = peer
        self.reports: list[Exception | None] = []

    def peers_for(self, req: ModRequest) -> list[PeerCandidate]:
        return [PeerCandidate(self.peer)]

    def report(self, peer: Upstream, req: ModRequest, error: Exception | None) -> None:
        self.reports.append(error)


async def test_verify_repairs_from_a_peer_when_upstream_is_down(fake_proxy, make_node, client) -> None:  # type: ignore[no-untyped-def]
    m = "example.com/peered"
    mods = module_set((m, "v1.0.0", module_files(m, "v1.0.0")))
    up_a, up_b = await fake_proxy(mods), await fake_proxy(mods)
    a, b = await make_node(up_a.url), await make_node(up_b.url)
    zip_path = f"/{m}/@v/v1.0.0.zip"
    for n in (a, b):
        assert (await get(client, n.url + zip_path))[0] == 200
    await up_a.stop()
    e = await a.index.get(m, "v1.0.0", "zip")
    assert e is not None
    corrupt(blob(a.config.data, e.sha256))
    peers = StaticPeers(Upstream(b.url, client, Timeouts(), a.metrics, label="peer:b"))
    a.hooks.peers = peers
    rep = await a.storage.verify()
    assert [(p.status, p.detail) for p in rep.problems] == [("repaired", "refetched from peer:b")]
    assert peers.reports == [None]
    assert hashlib.sha256(blob(a.config.data, e.sha256).read_bytes()).hexdigest() == e.sha256


# ---- a full disk -------------------------------------------------------------------------


async def test_full_disk_passes_files_through_and_corrupts_nothing(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, client, monkeypatch
) -> None:
    m, big = "example.com/full", "example.com/fullbig"
    files, big_files = module_files(m, "v1.0.0"), big_module(big, "v1.0.0", 1 << 20)
    up = await fake_proxy(module_set((m, "v1.0.0", files), (big, "v1.0.0", big_files)))
    node = await make_node(up.url, stream_threshold=256 << 10)
    assert (await get(client, f"{node.url}/{m}/@v/v1.0.0.info"))[0] == 200
    data = node.config.data
    before = {n: hashlib.sha256(blob(data, n).read_bytes()).hexdigest() for n in on_disk(data)}
    disk = FillingDisk()
    monkeypatch.setattr(store_module, "os", disk)  # the OS boundary, not our code

    disk.room = 0
    for kind, want in (("mod", files[1]), ("zip", files[2])):
        assert (await get(client, f"{node.url}/{m}/@v/v1.0.0.{kind}"))[:2] == (200, want)
    # A big zip streams to the client while it downloads; the disk fills halfway.
    disk.room = 512 << 10
    assert (await get(client, f"{node.url}/{big}/@v/v1.0.0.zip"))[:2] == (200, big_files[2])
    # Nothing half-written is visible, and what was there is intact.
    assert {n: hashlib.sha256(blob(data, n).read_bytes()).hexdigest() for n in on_disk(data)} == before
    assert all(n == s for n, s in before.items())
    assert not [p for p in (data / "tmp").rglob("*") if p.is_file()]
    for mod, kind in ((m, "mod"), (m, "zip"), (big, "zip")):
        assert await node.index.get(mod, "v1.0.0", kind) is None
    health = await (await client.get(f"{node.url}/healthz")).json()
    assert health["status"] == "degraded" and health["store"]["files_passed"] == 3
    assert health["store"]["reason"] == "disk full (ENOSPC)" and health["store"]["first"] == f"{m}@v1.0.0"
    metrics = (await get(client, f"{node.url}/metrics"))[1].decode()
    assert 'modmesh_passthrough_files_total{cause="disk full (ENOSPC)"} 3.0' in metrics
    assert node.metrics.passthrough_bytes._value.get() == len(files[1]) + len(files[2]) + len(big_files[2])

    disk.room = None  # space is back
    for kind, want in zip(KINDS, files):
        assert (await get(client, f"{node.url}/{m}/@v/v1.0.0.{kind}"))[:2] == (200, want)
    assert (await get(client, f"{node.url}/{big}/@v/v1.0.0.zip"))[:2] == (200, big_files[2])
    for mod, kind in ((m, "mod"), (m, "zip"), (big, "zip")):
        assert await node.index.get(mod, "v1.0.0", kind) is not None
    assert (await (await client.get(f"{node.url}/healthz")).json())["status"] == "ok"


# ---- configuration and the commands ---------------------------------------------------------


def test_max_size_config(tmp_path: Path) -> None:
    assert load_config(env={}, flags={"max_size": "50GB"}).max_size == 50 * 10**9
    assert load_config(env={"MODMESH_MAX_SIZE": "2GiB"}).max_size == 2 << 30
    (tmp_path / "c.toml").write_text('max_size = "4MiB"\n')
    assert load_config(tmp_path / "c.toml", env={}).max_size == 4 << 20
    assert load_config(env={}).max_size is None
    for bad in ("0", "lots"):
        with pytest.raises(ConfigError):
            load_config(env={}, flags={"max_size": bad})
    args = build_parser().parse_args(["serve", "--max-size", "50GB"])
    assert args.max_size == "50GB"
    args = build_parser().parse_args(["pin", "--node", "http://127.0.0.1:1", "rsc.io/*"])
    assert args.patterns == ["rsc.io/*"]


async def modmesh(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real command line in a subprocess (the node runs in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_commands_on_node_and_data(fake_proxy, make_node, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    m = "example.com/cli"
    files = module_files(m, "v1.0.0")
    up = await fake_proxy(module_set((m, "v1.0.0", files), (m, "v1.1.0", module_files(m, "v1.1.0"))))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    for v in ("v1.0.0", "v1.1.0"):
        assert (await get(client, f"{node.url}/{m}/@v/{v}.zip"))[0] == 200

    rc, out, err = await modmesh("pin", "--node", node.url, "example.com/*")
    assert rc == 0 and "example.com/*: pinned" in out, err
    rc, out, err = await modmesh("pin", "--list", "--json", env={"MODMESH_NODE": node.url})
    assert rc == 0, err
    pins = json.loads(out)["pins"]
    assert [(p["pattern"], p["blobs"]) for p in pins] == [("example.com/*", 2)]
    rc, out, err = await modmesh("pin", "--remove", "--node", node.url, "nothing.example")
    assert rc == 1 and "was not pinned" in out
    await node.aclose()

    e0 = await _entry(data, m, "v1.0.0")
    e1 = await _entry(data, m, "v1.1.0")
    corrupt(blob(data, e0))
    corrupt(blob(data, e1))
    rc, out, err = await modmesh("verify", "--data", str(data), "--sumdb", "off", "--no-repair", "--json")
    assert rc == 1, err
    assert [p["status"] for p in json.loads(out)["problems"]] == ["found", "found"]
    # Repairs one from the upstream; one the upstream no longer has is dropped, not kept bad.
    up.inject(r"/v1\.1\.0\.zip$", Fault.status(404))
    rc, out, err = await modmesh("verify", "--data", str(data), "--upstream", up.url, "--sumdb", "off")
    assert rc == 1, err
    assert "1 repaired, 1 not repaired" in " ".join(out.split()), out + err
    assert "unrepairable" in out and "v1.1.0" in out
    rc, out, err = await modmesh("verify", "--data", str(data), "--upstream", "off", "--sumdb", "off", "--json")
    assert rc == 0 and json.loads(out)["problems"] == [] and json.loads(out)["files"] == 1, out + err
    assert await _entry(data, m, "v1.0.0") == e0
    rc, out, err = await modmesh("gc", "--data", str(data), "--sumdb", "off", "--max-size", "100B", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["evict"]["max_size"] == 100 and rep["evict"]["evicted_files"] == 0, rep  # all pinned
    assert rep["evict"]["pinned_over_cap"] is True, json.dumps(rep)
    rc, out, err = await modmesh("gc", "--node", "http://127.0.0.1:9", "--json")
    assert rc == 2 and "cannot reach" in err
    rc, out, err = await modmesh("gc", "--node", node.url, "--upstream", "x")
    assert rc == 2


async def _entry(data: Path, module: str, version: str) -> str:
    from node.cache.index import Index

    idx = Index(data / "index.sqlite")
    await idx.open()
    try:
        e = await idx.get(module, version, "zip")
        assert e is not None
        return e.sha256
    finally:
        await idx.aclose()


@pytest.fixture
def restore_logging():  # type: ignore[no-untyped-def]
    """The commands set up CLI logging on the root logger; give it back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_tables_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    from node.cli import main

    data = ["--data", str(tmp_path / "data"), "--sumdb", "off", "--upstream", "off"]
    assert main(["pin", *data, "corp.example.com", "rsc.io/*"]) == 0
    out = capsys.readouterr().out
    assert "corp.example.com: pinned" in out and "rsc.io/*: pinned" in out and "no max_size" in out
    assert main(["pin", "--list", *data]) == 0
    out = capsys.readouterr().out
    assert "corp.example.com" in out and "Pattern" in out
    assert main(["gc", *data, "--max-size", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "orphan blobs" in out and "stale temp files" in out and "1.0 GB" in out
    assert main(["verify", *data]) == 0
    assert "verified 0 blobs" in capsys.readouterr().out
    assert main(["pin", "--remove", *data]) == 2
    assert main(["gc", "--max-size", "1GB"]) == 2  # a running node enforces its own cap
    assert "--max-size goes with --data" in capsys.readouterr().err
