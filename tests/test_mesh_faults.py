"""Acceptance under faults: a lying peer, a node with the wrong secret, a peer killed
mid-transfer, a lossy link, and a peer that dies and comes back with a reset store."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from node.hooks import HOP_HEADER
from tests.goenv import go_env, run_go
from tests.mesh_fixtures import MeshNode, wait_for, write_secret
from tests.modules import big_module
from tests.test_e2e_go import decode_stream

QUOTE = "rsc.io/quote"
ZIP_KEY = f"{QUOTE}@v1.5.2.zip"


async def _dead_upstream(fake_proxy, corpus_modules) -> str:  # type: ignore[no-untyped-def]
    gone = await fake_proxy(corpus_modules)
    url = gone.url
    await gone.stop()
    return str(url)


def _metric(mn: MeshNode, name: str, **labels: str) -> float:
    return mn.node.metrics.registry.get_sample_value(name, labels) or 0.0


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers) as r:
            return r.status, await r.read()


async def _fetch_all(mn: MeshNode, module: str, version: str) -> None:
    for kind in ("info", "mod", "zip"):
        status, _ = await _get(f"{mn.url}/{module}/@v/{version}.{kind}")
        assert status == 200, (module, version, kind)


@pytest.mark.e2e
async def test_lying_peer_is_rejected_and_quarantined(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up = await fake_proxy(corpus_modules)
    down = await _dead_upstream(fake_proxy, corpus_modules)
    liar_data = tmp_path / "liar"
    first = await make_mesh_node(up.url, data=liar_data, mesh={"presync": False})
    for v in ("v1.5.2", "v1.5.1"):
        await _fetch_all(first, QUOTE, v)
    await first.close()
    # The liar keeps advertising the right hashes but its zip on disk is now other bytes.
    entry = await _index_entry(liar_data, QUOTE, "v1.5.2", "zip")
    blob = liar_data / "blobs" / entry[:2] / entry
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    # Its own serve check is off (a user may turn it off): with it, the liar would find
    # the damage itself and never offer the bytes (tests/test_heal.py). The mesh must
    # hold the line anyway.
    liar = await make_mesh_node(up.url, data=liar_data, mesh={"presync": False}, check_on_serve=False)

    # A client miss at V asks the liar first (peer-first), refuses its bytes, and the
    # go command still gets the right ones, from the upstream.
    victim = await make_mesh_node(up.url, peers=[liar.url], mesh={"presync": False})
    await wait_for(lambda: bool(victim.mesh.catalog.holdings(ZIP_KEY)), 10, "V learns the liar's inventory")
    caplog.set_level(logging.WARNING, logger="sync")
    res = (
        await run_go(["mod", "download", "-json", f"{QUOTE}@v1.5.2"], go_env(tmp_path / "gv", victim.url), cwd=tmp_path)
    ).check()
    got = decode_stream(res.stdout)[0]
    zip_entry = await victim.node.index.get(QUOTE, "v1.5.2", "zip")
    assert zip_entry is not None and zip_entry.source == up.url and got["Sum"] == zip_entry.h1
    assert hashlib.sha256(Path(got["Zip"]).read_bytes()).hexdigest() == zip_entry.sha256
    liar_id = liar.mesh.node_id
    member = victim.mesh.membership.get(liar_id)
    assert member is not None and member.quarantined(time.monotonic())
    assert _metric(victim, "modmesh_mesh_rejected_blobs_total", peer=liar_id) == 1
    assert any("served bad bytes" in r.getMessage() for r in caplog.records)
    status = victim.mesh.status()
    (row,) = [m for m in status["members"] if m["node_id"] == liar_id]
    assert row["quarantined_s"] > 0 and row["quarantine_reason"].startswith(ZIP_KEY)
    # Quarantined: not asked again, even for files it holds soundly.
    asked = _metric(victim, "modmesh_mesh_peer_fetches_total", peer=liar_id, path="miss", result="ok")
    await _fetch_all(victim, QUOTE, "v1.5.1")
    assert _metric(victim, "modmesh_mesh_peer_fetches_total", peer=liar_id, path="miss", result="ok") == asked

    # Pre-sync from the liar (upstream down): refused, quarantined, nothing stored.
    puller = await make_mesh_node(down, peers=[liar.url])
    await _get(f"{liar.url}/{QUOTE}/@v/v1.5.2.zip")  # a client at the liar makes it popular
    await wait_for(lambda: victim_quarantined(puller, liar_id), 10, "pre-sync rejects the liar's zip")
    assert await puller.node.index.get(QUOTE, "v1.5.2", "zip") is None
    await wait_for(lambda: not puller.mesh.presync.active, 5, "pre-sync idle (the liar is not asked again)")
    assert not list((puller.node.store.tmp_dir).glob("mesh-*"))


def victim_quarantined(mn: MeshNode, node_id: str) -> bool:
    m = mn.mesh.membership.get(node_id)
    return m is not None and m.quarantined(time.monotonic())


async def _index_entry(data: Path, module: str, version: str, kind: str) -> str:
    import aiosqlite

    async with aiosqlite.connect(data / "index.sqlite") as db:
        async with db.execute(
            "SELECT sha256 FROM entries WHERE module=? AND version=? AND kind=?", (module, version, kind)
        ) as cur:
            row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def test_wrong_secret_gets_nothing_and_changes_nothing(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sync")
    up = await fake_proxy(corpus_modules)
    down = await _dead_upstream(fake_proxy, corpus_modules)
    a = await make_mesh_node(up.url)
    await _fetch_all(a, QUOTE, "v1.5.2")
    stranger = write_secret(tmp_path / "other.secret")
    w = await make_mesh_node(down, peers=[a.url], secret=stranger)
    a.mesh.membership.add_seed(w.url)  # A tries to talk to W too
    # W's clients make something popular at W; were W's gossip accepted, A would know.
    status, _ = await _get(f"{w.url}/rsc.io/sampler/@v/v1.3.0.zip")
    assert status == 502
    await asyncio.sleep(1.0)  # ten gossip rounds each way

    assert a.mesh.membership.members == {} and w.mesh.membership.members == {}
    assert len(w.mesh.catalog) == 0
    assert ("rsc.io/sampler", "v1.3.0") not in a.mesh.popularity.mesh_scores(time.monotonic())
    assert _metric(a, "modmesh_mesh_auth_failures_total", reason="bad-signature") >= 1
    assert _metric(w, "modmesh_mesh_auth_failures_total", reason="bad-signature") >= 1
    assert any("refused mesh request" in r.getMessage() for r in caplog.records)
    # W's client miss cannot be served by A: W's upstream is down and it has no peers.
    status, body = await _get(f"{w.url}/{QUOTE}/@v/v1.5.2.zip")
    assert status == 502, body


async def test_presync_resumes_from_another_peer_when_one_dies(  # type: ignore[no-untyped-def]
    fake_proxy, make_mesh_node, make_link, corpus_modules
) -> None:
    big = big_module("example.com/big", "v1.0.0", 2 << 20)
    up = await fake_proxy()
    up.add_module("example.com/big", "v1.0.0", *big)
    down = await _dead_upstream(fake_proxy, corpus_modules)
    links = [await make_link(rate=700_000) for _ in range(2)]
    holders = []
    for link in links:
        h = await make_mesh_node(up.url, mesh={"advertise": link.url, "presync": False})
        link.target_port = h.port
        await _fetch_all(h, "example.com/big", "v1.0.0")
        holders.append(h)
    b = await make_mesh_node(down, peers=[link.url for link in links])
    key = "example.com/big@v1.0.0.zip"
    sha = hashlib.sha256(big[2]).hexdigest()

    await wait_for(lambda: any(link.bytes_down > 400_000 for link in links), 10, "a pre-sync transfer under way")
    (victim,) = [i for i, link in enumerate(links) if link.bytes_down > 400_000]
    # Mid-transfer nothing is visible: not in the index, not in the store, not served.
    assert await b.node.index.get("example.com/big", "v1.0.0", "zip") is None
    assert not b.node.store.path_for(sha).exists()
    status, _ = await _get(f"{b.url}/example.com/big/@v/v1.0.0.zip", {HOP_HEADER: "test"})
    assert status == 404
    await links[victim].stop()  # the peer dies: its connections are cut
    await holders[victim].close()

    await wait_for(lambda: b.mesh.presync.active == set() and _has(b, key), 15, "transfer completes elsewhere")
    entry = await b.node.index.get("example.com/big", "v1.0.0", "zip")
    assert entry is not None and entry.sha256 == sha
    assert b.node.store.path_for(sha).read_bytes() == big[2]
    assert _metric(b, "modmesh_mesh_resumed_transfers_total") >= 1
    assert links[1 - victim].bytes_down < len(big[2])  # the rest came by Range, not all over again
    assert not list(b.node.store.tmp_dir.glob("mesh-*"))


def _has(mn: MeshNode, key: str) -> bool:
    return key in mn.mesh.presync.have


async def test_client_miss_survives_peer_killed_mid_transfer(  # type: ignore[no-untyped-def]
    fake_proxy, make_mesh_node, make_link
) -> None:
    big = big_module("example.com/big", "v1.0.0", 1 << 20)
    up = await fake_proxy()
    up.add_module("example.com/big", "v1.0.0", *big)
    link = await make_link(rate=300_000)
    holder = await make_mesh_node(up.url, mesh={"advertise": link.url, "presync": False})
    link.target_port = holder.port
    await _fetch_all(holder, "example.com/big", "v1.0.0")
    v = await make_mesh_node(up.url, peers=[link.url], mesh={"presync": False}, stream_threshold=64 << 20)
    await wait_for(lambda: bool(v.mesh.catalog.holdings("example.com/big@v1.0.0.zip")), 10, "V learns the holder")
    up.reset_counts()

    fetch = asyncio.create_task(_get(f"{v.url}/example.com/big/@v/v1.0.0.zip"))
    await wait_for(lambda: link.bytes_down > 200_000, 10, "the peer transfer under way")
    await link.stop()
    await holder.close()
    status, body = await fetch
    assert status == 200 and body == big[2]
    entry = await v.node.index.get("example.com/big", "v1.0.0", "zip")
    assert entry is not None and entry.source == up.url
    assert up.count("big/@v/v1.0.0.zip") == 1


async def test_mesh_converges_over_a_link_dropping_a_third_of_connections(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, make_link
) -> None:
    up = await fake_proxy(corpus_modules)
    down = await _dead_upstream(fake_proxy, corpus_modules)
    links = [await make_link(drop=1 / 3, max_life=0.15, seed=i) for i in range(3)]
    nodes = []
    for i, link in enumerate(links):
        peers = [other.url for j, other in enumerate(links) if j != i]
        mn = await make_mesh_node(up.url if i == 0 else down, peers=peers, mesh={"advertise": link.url})
        link.target_port = mn.port
        nodes.append(mn)
    a, b, c = nodes
    wanted = [
        (QUOTE, "v1.5.2"),
        ("rsc.io/sampler", "v1.3.0"),
        ("rsc.io/quote", "v1.5.1"),
        ("golang.org/x/text", "v0.0.0-20170915032832-14c0d48ead0c"),
        ("rsc.io/quote", "v1.4.0"),
    ]
    for module, version in wanted:
        await _fetch_all(a, module, version)
    at_a = await a.node.index.changes_since(0)
    started = time.monotonic()

    async def converged() -> bool:
        for mn in (b, c):
            for e in at_a:
                if await mn.node.index.get(e.module, e.version, e.kind) is None:
                    return False
        return True

    took = await wait_for(converged, 20, "B and C hold everything A holds", interval=0.1)
    print(
        f"converged in {took:.1f}s; dropped {[link.dropped for link in links]} of "
        f"{[link.accepted for link in links]} connections"
    )
    assert time.monotonic() - started < 20
    assert sum(link.dropped for link in links) >= sum(link.accepted for link in links) / 5


async def test_dead_peer_rejoins_and_a_reset_store_resyncs(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    a = await make_mesh_node(up.url, mesh={"presync": False, "inventory_page": 2})
    b_data = tmp_path / "b"
    b = await make_mesh_node(up.url, peers=[a.url], data=b_data, mesh={"presync": False})
    for v in ("v1.5.2", "v1.5.1"):
        await _fetch_all(b, QUOTE, v)
    b_id, port = b.mesh.node_id, b.port
    await wait_for(
        lambda: _member(a, b_id, "alive") and a.mesh.membership.members[b_id].count == 6,
        10,
        "A pulled B's six entries, two per page",
    )
    old_epoch = a.mesh.membership.members[b_id].epoch

    await b.close()
    await wait_for(lambda: _member(a, b_id, "dead"), 10, "A marks B dead")
    # B comes back on the same address with the same id but an empty store (new epoch):
    # index, journal and blobs gone (without the journal's loss the index would be rebuilt).
    for p in [*b_data.glob("index.*"), b_data / "blobs"]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    b2 = await make_mesh_node(up.url, peers=[a.url], data=b_data, port=port, mesh={"presync": False})
    assert b2.mesh.node_id == b_id and b2.node.index.epoch != old_epoch
    await wait_for(lambda: _member(a, b_id, "alive"), 10, "B rejoins")
    await wait_for(lambda: a.mesh.membership.members[b_id].epoch == b2.node.index.epoch, 10, "A sees the new epoch")
    await wait_for(lambda: not a.mesh.catalog.holdings(ZIP_KEY), 10, "A forgets what B no longer holds")
    await _fetch_all(b2, QUOTE, "v1.4.0")
    await wait_for(lambda: bool(a.mesh.catalog.holdings(f"{QUOTE}@v1.4.0.zip")), 10, "A learns B's new entries")
    assert a.mesh.membership.members[b_id].count == 3


def _member(mn: MeshNode, node_id: str, state: str) -> bool:
    m = mn.mesh.membership.get(node_id)
    return m is not None and m.state == state
