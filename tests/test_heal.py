"""A store that heals itself: a damaged blob is never served, a damaged index never
keeps the node down (node/cache/integrity.py, scrub.py, journal.py, recovery.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.cache.scrub import CHUNK
from node.service import Node
from tests.blobs import Blob, flip_byte
from tests.goenv import decode_stream, go_env, run_go
from tests.mesh_fixtures import wait_for
from tests.modules import big_module, module_files, module_set
from tests.node_process import free_port, serve_process
from tests.upstream_fixture import Fault

M = "example.com/heal"
KINDS = ("info", "mod", "zip")


async def blob(node: Node, module: str, version: str, kind: str) -> Blob:
    e = await node.index.get(module, version, kind)
    assert e is not None, (module, version, kind)
    return Blob(node.config.data, e.sha256)


def metric(node: Node, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


async def health(node: Node) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(node.url + "/healthz") as r:
        out: dict[str, Any] = await r.json()
        return out


async def doctor(node: Node) -> dict[str, dict[str, Any]]:
    """The node's doctor checks by name (GET /_admin/doctor, from loopback)."""
    async with aiohttp.ClientSession() as s, s.get(node.url + "/_admin/doctor", params={"timeout": "1"}) as r:
        assert r.status == 200
        return {c["name"]: c for c in (await r.json())["checks"]}


def quarantined(node: Node) -> list[Path]:
    q = node.config.data / "quarantine"
    return sorted(p for p in q.iterdir() if not p.name.endswith(".json")) if q.is_dir() else []


# ---- a damaged blob is never served ---------------------------------------------------


@pytest.mark.e2e
async def test_damaged_zip_is_repaired_for_the_go_command(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One byte changed in a cached 2 MB zip while the node is stopped: after a restart
    the go command downloads and verifies the module through the node."""
    files = big_module(M, "v1.0.0", 2 << 20)
    up = await fake_proxy(module_set((M, "v1.0.0", files)))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    res = (await run_go(["mod", "download", "-json", f"{M}@v1.0.0"], go_env(tmp_path / "g1", node.url))).check()
    want = decode_stream(res.stdout)[0]
    path = await blob(node, M, "v1.0.0", "zip")
    await node.aclose()
    flip_byte(path)

    node = await make_node(up.url, data=data)
    up.reset_counts()
    res = await run_go(["mod", "download", "-json", f"{M}@v1.0.0"], go_env(tmp_path / "g2", node.url))
    got = decode_stream(res.stdout)[0]
    assert res.returncode == 0 and "Error" not in got, res.stdout + res.stderr
    assert got["Sum"] == want["Sum"]
    assert up.count("/@v/v1.0.0.zip") == 1  # fetched again, once
    (moved,) = quarantined(node)
    assert moved.name.startswith(path.name) and moved.read_bytes() != files[2]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name  # the store holds good bytes again
    assert metric(node, "modmesh_blobs_quarantined_total", by="serve") == 1
    assert metric(node, "modmesh_blobs_repaired_total") == 1
    h = await health(node)
    assert h["status"] == "ok" and h["store"]["integrity"]["repaired"] == 1, h


async def test_damaged_small_files_never_served(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """.info and .mod (read into memory, then answered by the fast path) get the same
    check, and a blob that vanished is fetched again too."""
    files = module_files(M, "v1.0.0")
    up = await fake_proxy(module_set((M, "v1.0.0", files)))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    for kind in KINDS:
        assert (await fetch(f"{node.url}/{M}/@v/v1.0.0.{kind}"))[0] == 200
    mod, info = await blob(node, M, "v1.0.0", "mod"), await blob(node, M, "v1.0.0", "info")
    await node.aclose()
    mod.write_bytes(b"module evil.example/x\n")
    info.unlink()

    node = await make_node(up.url, data=data)
    for _ in range(3):  # the second and third come from memory
        for kind, want in zip(KINDS, files):
            assert await fetch(f"{node.url}/{M}/@v/v1.0.0.{kind}") == (200, want)
    assert up.count("/@v/v1.0.0.mod") == 2 and up.count("/@v/v1.0.0.info") == 2
    assert up.count("/@v/v1.0.0.zip") == 1  # its blob was sound: checked, not fetched
    assert metric(node, "modmesh_blobs_repaired_total") == 2
    assert metric(node, "modmesh_blobs_checked_total", by="serve") == 3


async def test_repaired_from_a_peer_then_a_clear_error_without_any_source(  # type: ignore[no-untyped-def]
    fake_proxy, make_mesh_node, tmp_path: Path
) -> None:
    files = big_module(M, "v1.0.0", 2 << 20)
    up = await fake_proxy(module_set((M, "v1.0.0", files)))
    data = tmp_path / "a"
    a = await make_mesh_node(up.url, data=data, mesh={"presync": False})
    b = await make_mesh_node(up.url, mesh={"presync": False})
    for mn in (a, b):
        for kind in KINDS:
            assert (await fetch(f"{mn.url}/{M}/@v/v1.0.0.{kind}"))[0] == 200
    zip_path, mod_path = await blob(a.node, M, "v1.0.0", "zip"), await blob(a.node, M, "v1.0.0", "mod")
    await a.close()
    flip_byte(zip_path)
    await up.stop()  # the upstream is unreachable from now on

    a = await make_mesh_node(up.url, data=data, peers=[b.url], mesh={"presync": False})
    await wait_for(lambda: bool(a.mesh.catalog.holdings(f"{M}@v1.0.0.zip")), 10, "A learns that B holds the zip")
    assert await fetch(f"{a.url}/{M}/@v/v1.0.0.zip") == (200, files[2])
    entry = await a.node.index.get(M, "v1.0.0", "zip")
    assert entry is not None and entry.source == f"peer:{b.mesh.node_id}"
    assert metric(a.node, "modmesh_blobs_repaired_total") == 1

    # No source at all: the peer is gone, the upstream too. A clear error, not the bytes.
    await b.close()
    flip_byte(mod_path)  # damaged while the node runs, before its first serve
    status, body = await fetch(f"{a.url}/{M}/@v/v1.0.0.mod")
    assert status >= 500 and body != files[1]
    assert f"the node's copy of {M}@v1.0.0.mod was damaged on disk and no source has it" in body.decode(), body
    h = await health(a.node)
    assert h["status"] == "degraded" and any("not repaired yet" in r for r in h["reasons"]), h
    checks = await doctor(a.node)
    assert checks["integrity"]["code"] == "blobs-damaged" and f"{M}@v1.0.0.mod" in checks["integrity"]["detail"]
    assert checks["quarantine"]["status"] == "info" and "2 damaged blobs" in checks["quarantine"]["detail"]
    assert (await fetch(f"{a.url}/{M}/@v/v1.0.0.info"))[0] == 200  # the sound files still serve


# ---- the scrub ------------------------------------------------------------------------


async def test_scrub_finds_damage_while_the_node_runs(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    files = big_module(M, "v1.0.0", 1 << 20)
    up = await fake_proxy(module_set((M, "v1.0.0", files)))
    node = await make_node(up.url, scrub_period=1.0)  # every blob is due a second after its check
    for kind in KINDS:
        assert (await fetch(f"{node.url}/{M}/@v/v1.0.0.{kind}"))[0] == 200
    path = await blob(node, M, "v1.0.0", "zip")
    flip_byte(path)  # already served in this run: only the scrub can find it

    await wait_for(lambda: metric(node, "modmesh_blobs_quarantined_total", by="scrub") == 1, 15, "the scrub finds it")
    await wait_for(lambda: metric(node, "modmesh_blobs_repaired_total") == 1, 10, "the scrub fetches it again")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert await fetch(f"{node.url}/{M}/@v/v1.0.0.zip") == (200, files[2])
    assert metric(node, "modmesh_blobs_quarantined_total", by="scrub") == 1  # the sound ones stay


async def test_scrub_keeps_to_its_default_read_rate(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    """At the default `scrub_rate` (8 MiB/s) the scrub reads no faster, whatever is due."""
    mods = [(f"example.com/rate{i}", "v1.0.0", big_module(f"example.com/rate{i}", "v1.0.0", 6 << 20)) for i in range(6)]
    up = await fake_proxy(module_set(*mods))
    node = await make_node(up.url, scrub_period=1.0)
    assert node.config.scrub_rate == 8 << 20
    for m, v, _ in mods:
        assert (await fetch(f"{node.url}/{m}/@v/{v}.zip"))[0] == 200

    def read() -> float:
        return metric(node, "modmesh_scrub_bytes_total")

    await wait_for(lambda: read() > 0, 10, "the scrub starts")
    t0, b0 = time.monotonic(), read()
    await asyncio.sleep(2.5)
    t1, b1 = time.monotonic(), read()
    rate = node.config.scrub_rate
    assert 0 < b1 - b0 <= rate * (t1 - t0) + 2 * CHUNK, (b1 - b0, rate * (t1 - t0))
    assert b1 < 36 << 20  # not done yet: 36 MiB take 4.5 s at this rate


# ---- the index can always be rebuilt --------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "4KiB"])
async def test_damaged_index_is_rebuilt_and_serves_offline(fake_proxy, make_node, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    mods = [(f"example.com/ix{i}", "v1.0.0", module_files(f"example.com/ix{i}", "v1.0.0")) for i in range(40)]
    mods.append(("example.com/big", "v1.0.0", big_module("example.com/big", "v1.0.0", 5 << 20)))
    up = await fake_proxy(module_set(*mods))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    for m, v, _ in mods:
        for kind in KINDS:
            assert (await fetch(f"{node.url}/{m}/@v/{v}.{kind}"))[0] == 200
    await node.storage.pin("example.com/big")
    epoch = node.index.epoch
    await node.aclose()
    index = data / "index.sqlite"
    if damage == "garbage":
        index.write_bytes(os.urandom(index.stat().st_size))
    else:  # a torn write or a bad block: 4 KiB in the middle of the file
        with open(index, "r+b") as f:
            f.seek(index.stat().st_size // 2 // 4096 * 4096)
            f.write(os.urandom(4096))
        with pytest.raises(sqlite3.DatabaseError):  # SQLite itself sees the damage
            with sqlite3.connect(index) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    await up.stop()

    node = await make_node(up.url, data=data)  # starts; nothing upstream
    assert node.recovery.rebuilt and node.recovery.recovered == 3 * len(mods) and node.recovery.missing == 0
    assert node.index.epoch != epoch  # peers read the new index's change log afresh
    assert metric(node, "modmesh_index_rebuilds_total") == 1
    moved = list((data / "damaged").glob("index-*/index.sqlite"))
    assert len(moved) == 1
    h = await health(node)
    assert h["status"] == "degraded" and any("the index was rebuilt" in r for r in h["reasons"]), h
    assert (await doctor(node))["index"]["code"] == "index-rebuilt"
    for m, v, want in mods:
        for kind, body in zip(KINDS, want):
            assert await fetch(f"{node.url}/{m}/@v/{v}.{kind}") == (200, body), (m, kind)
    assert [p for p, _ in await node.index.pins()] == ["example.com/big"]
    # Every recovered blob was hashed (by its first serve, or the scrub): healthy again.
    await wait_for(_healthy(node), 15, "health says ok once every rebuilt blob is checked")
    index_line = (await doctor(node))["index"]
    assert index_line["status"] == "info" and "every recovered blob re-hashed" in index_line["detail"]


def _healthy(node: Node) -> Any:
    async def check() -> bool:
        return (await health(node))["status"] == "ok"

    return check


async def test_index_that_lost_its_last_transactions_catches_up(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A power cut may cost the index (synchronous=NORMAL) its last transactions, never
    the fsynced journal: an older index file plus the journal loses nothing."""
    mods = [(f"example.com/pc{i}", "v1.0.0", module_files(f"example.com/pc{i}", "v1.0.0")) for i in range(6)]
    up = await fake_proxy(module_set(*mods))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    for m, v, _ in mods[:3]:
        assert (await fetch(f"{node.url}/{m}/@v/{v}.zip"))[0] == 200
    await node.aclose()
    old = (data / "index.sqlite").read_bytes()  # the index as of here (WAL checkpointed at close)
    node = await make_node(up.url, data=data)
    for m, v, _ in mods[3:]:
        assert (await fetch(f"{node.url}/{m}/@v/{v}.zip"))[0] == 200
    await node.aclose()
    (data / "index.sqlite").write_bytes(old)
    await up.stop()

    node = await make_node(up.url, data=data)
    assert not node.recovery.rebuilt and node.recovery.recovered == 3
    for m, v, files in mods:
        assert await fetch(f"{node.url}/{m}/@v/{v}.zip") == (200, files[2])


async def test_kill_9_while_downloads_commit_keeps_every_acknowledged_file(fake_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of a real `modmesh serve` while 20 downloads commit; the index rebuilt
    from the journal (`modmesh verify --rebuild-index`) holds everything the node had
    acknowledged to a client."""
    mods = [
        (f"example.com/ack{i}", "v1.0.0", big_module(f"example.com/ack{i}", "v1.0.0", (i + 1) * 60_000))
        for i in range(20)
    ]
    up = await fake_proxy(module_set(*mods))
    up.inject(r"\.zip$", Fault.slow_body(256 << 10))  # 0.25 s to 4.7 s: they finish one after another
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acknowledged: dict[str, bytes] = {}

    async with aiohttp.ClientSession() as s:

        async def get(path: str, want: bytes) -> None:
            async with s.get(url + path) as r:
                body = await r.read()
            if r.status == 200 and body == want:
                acknowledged[path] = body

        async with serve_process(data, up.url, port) as proc:
            tasks = [
                asyncio.ensure_future(get(f"/{m}/@v/{v}.{kind}", body))
                for m, v, files in mods
                for kind, body in zip(KINDS, files)
            ]
            await wait_for(lambda: sum(p.endswith(".zip") for p in acknowledged) >= 8, 30, "8 zips acknowledged")
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            await asyncio.gather(*tasks, return_exceptions=True)
    zips = sum(p.endswith(".zip") for p in acknowledged)
    assert 8 <= zips < 20, zips  # some were mid-commit when the node died

    rc, out = await modmesh("verify", "--rebuild-index", "--data", str(data))
    assert rc == 0, out
    assert "damaged journal lines: 0" in out or "0 damaged journal lines" in out, out
    up.clear_faults()
    await up.stop()
    async with serve_process(data, "off", port, "--offline"):
        async with aiohttp.ClientSession() as s:
            for path, body in acknowledged.items():
                async with s.get(url + path) as r:
                    assert (r.status, await r.read()) == (200, body), path


async def modmesh(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_rebuild_index_command_refuses_a_running_node(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(module_set((M, "v1.0.0", module_files(M, "v1.0.0"))))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    assert (await fetch(f"{node.url}/{M}/@v/v1.0.0.zip"))[0] == 200
    rc, out = await modmesh("verify", "--rebuild-index", "--data", str(data))
    assert rc != 0 and "in use" in out, out
    assert not (data / "damaged").exists()
    await node.aclose()
    rc, out = await modmesh("verify", "--rebuild-index", "--data", str(data), "--json")
    assert rc == 0, out
    assert '"recovered": 1' in out, out
    node = await make_node("off", data=data)
    assert (await fetch(f"{node.url}/{M}/@v/v1.0.0.zip"))[0] == 200


async def test_an_index_from_before_the_journal_gets_one(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Upgrading: an index that never had a journal writes everything it holds to a new
    one at its first start, so it can be rebuilt from then on."""
    mods = [(f"example.com/old{i}", "v1.0.0", module_files(f"example.com/old{i}", "v1.0.0")) for i in range(5)]
    up = await fake_proxy(module_set(*mods))
    data = tmp_path / "data"
    node = await make_node(up.url, data=data)
    for m, v, _ in mods:
        assert (await fetch(f"{node.url}/{m}/@v/{v}.zip"))[0] == 200
    await node.aclose()
    (data / "index.journal").unlink()  # as an index written before the journal existed
    with sqlite3.connect(data / "index.sqlite") as db:
        db.execute("DELETE FROM node_state WHERE key IN ('journal_complete', 'journal_pos')")
    node = await make_node(up.url, data=data)
    await node.aclose()
    (data / "index.sqlite").write_bytes(b"not a database" * 100)
    await up.stop()
    node = await make_node(up.url, data=data)
    assert node.recovery.rebuilt and node.recovery.recovered == len(mods)
    for m, v, files in mods:
        assert await fetch(f"{node.url}/{m}/@v/{v}.zip") == (200, files[2])
