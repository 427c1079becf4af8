"""Visibility: /_mesh/status, `modmesh peers` (the real command), and the metrics."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from node.service import Node, running_node
from sync.auth import Signer
from sync.cli import render, run
from sync.plugin import MeshPlugin
from tests.mesh_fixtures import FAST, MeshNode, serve_args, wait_for, write_secret
from tests.node_fixtures import node_config

ROOT = Path(__file__).resolve().parent.parent


async def _peers_cmd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "peers",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_peers_command_and_metrics(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, mesh_secret: Path, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    a: MeshNode = await make_mesh_node(up.url, mesh={"presync": False})
    b: MeshNode = await make_mesh_node(up.url, peers=[a.url], mesh={"presync": False})
    async with aiohttp.ClientSession() as s:
        for kind in ("info", "mod", "zip"):
            async with s.get(f"{a.url}/rsc.io/quote/@v/v1.5.2.{kind}") as r:
                assert r.status == 200
    b_member = lambda: b.mesh.membership.get(a.mesh.node_id)  # noqa: E731
    await wait_for(
        lambda: (m := b_member()) is not None and m.count == 3 and m.backlog == 0, 10, "B synced A's inventory"
    )

    key = mesh_secret.read_text().strip().encode()
    async with aiohttp.ClientSession() as s:
        async with s.get(b.url + "/_mesh/status", headers=Signer(key, "t").headers("GET", "/_mesh/status")) as r:
            status = await r.json()
        async with s.get(b.url + "/metrics") as r:
            metrics = await r.text()
    assert status["node_id"] == b.mesh.node_id and status["url"] == b.url and status["mesh"] == "default"
    (row,) = status["members"]
    assert row["node_id"] == a.mesh.node_id and row["url"] == a.url and row["state"] == "alive"
    assert row["inventory"] == 3 and row["backlog"] == 0 and row["last_seen_s"] < 2 and row["source"] == "static"
    assert status["catalog"]["entries"] == 3 and status["seeds"][0]["url"] == a.url
    for name in (
        "modmesh_mesh_gossip_rounds_total",
        "modmesh_mesh_members",
        "modmesh_mesh_catalog_entries",
        "modmesh_mesh_sync_backlog",
        "modmesh_mesh_auth_failures_total",
        "modmesh_mesh_peer_fetches_total",
        "modmesh_mesh_synced_bytes_total",
        "modmesh_mesh_rejected_blobs_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in metrics, name
    assert 'modmesh_mesh_members{state="alive"} 1.0' in metrics
    assert 'modmesh_mesh_gossip_rounds_total{result="ok"}' in metrics

    code, out, err = await _peers_cmd("--node", b.url, "--mesh-secret-file", str(mesh_secret))
    assert code == 0, err
    assert a.mesh.node_id in out and "alive" in out and a.url in out and "catalog 3 files" in out
    config = tmp_path / "modmesh.toml"
    config.write_text(f'[mesh]\nsecret_file = "{mesh_secret}"\n')
    code, out, err = await _peers_cmd("--node", b.url, "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["members"][0]["node_id"] == a.mesh.node_id

    code, out, err = await _peers_cmd("--node", b.url, "--mesh-secret-file", str(write_secret(tmp_path / "x")))
    assert code == 1 and "refused the signature" in err


def test_peers_without_a_secret(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MODMESH_CONFIG", raising=False)
    monkeypatch.delenv("MODMESH_MESH_SECRET_FILE", raising=False)
    args = argparse.Namespace(node="http://127.0.0.1:1", mesh_secret_file=None, config=None, json=False)
    assert run(args) == 2
    assert "--mesh-secret-file" in capsys.readouterr().err


def test_render_marks_quarantine() -> None:
    status = {
        "mesh": "lab",
        "node_id": "me",
        "url": "http://me:3000",
        "inventory": 5,
        "head_serial": 9,
        "catalog": {"entries": 7, "skipped": 0},
        "sync_backlog": 2,
        "presync": {"enabled": True, "active": ["m@v1.zip"], "backlog": 1},
        "members": [
            {
                "node_id": "p1",
                "url": "http://p1:3000",
                "state": "alive",
                "last_seen_s": 1.2,
                "inventory": 4,
                "backlog": 0,
                "quarantined_s": 0,
                "source": "mdns",
            },
            {
                "node_id": "p2",
                "url": "http://p2:3000",
                "state": "dead",
                "last_seen_s": 4000,
                "inventory": 3,
                "backlog": 2,
                "quarantined_s": 300,
                "source": "gossip",
            },
        ],
    }
    text = render(status)
    assert "p1" in text and "mdns" in text and "quarantined 300s" in text and "1.1h ago" in text
    assert "sync backlog 2" in text and "1 active" in text


async def test_the_mesh_plugs_into_the_node_hooks(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, tmp_path: Path
) -> None:
    """The mesh learns where the node listens from `hooks.listening` (it does not poll
    `node.url`), reads the store's size from `Node.store_bytes`, serves its status record
    to the dashboard through `hooks.mesh_status`, and takes every hook back on close."""
    up = await fake_proxy(corpus_modules)
    async with (  # first, a store with a file in it
        running_node(node_config(tmp_path / "n", up.url)) as first,
        aiohttp.ClientSession() as s,
        s.get(f"{first.url}/rsc.io/quote/@v/v1.5.2.mod") as r,
    ):
        assert r.status == 200
    node = Node(node_config(tmp_path / "n", up.url, sections={"mesh": dict(FAST)}))
    plugin = MeshPlugin(env={})
    await node.start()
    try:
        assert node.store_bytes > 0
        await plugin.start(node, serve_args(secret=write_secret(tmp_path / "secret"), mdns=False))
        mesh = plugin.mesh
        assert mesh is not None
        assert node.hooks.listeners == [mesh.listening] and node.hooks.mesh_status == mesh.status
        assert mesh.presync.store_bytes == node.store_bytes == (await node.index.totals()).bytes
        assert mesh.url == "" and len(mesh.tasks) == 0  # nothing runs before the node listens
        url = await node.listen("127.0.0.1", 0)
        assert mesh.url == url and len(mesh.tasks) >= 1
        status = node.hooks.mesh_status()
        assert status["url"] == url and status["node_id"] == mesh.node_id and status["members"] == []
        await plugin.aclose()
        assert node.hooks.listeners == [] and node.hooks.mesh_status is None and node.hooks.peers is None
        assert mesh not in node.hooks.observers and mesh not in node.hooks.access
    finally:
        await plugin.aclose()
        await node.aclose()
