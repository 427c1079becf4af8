"""Acceptance: three nodes on loopback with static peers, driven by the real go command.

* A fetches from the upstream; B, whose upstream is down, serves the same module to
  go through a peer fetch (and resolves @latest from A's list).
* Clients use a set of modules at A; without anyone asking B or C, the modules
  appear there (pre-sync), and `go build` against C succeeds with every upstream
  (and A and B) gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.goenv import go_env, run_go
from tests.mesh_fixtures import MeshNode, wait_for
from tests.test_e2e_go import MAIN_GO, decode_stream

pytestmark = pytest.mark.e2e

QUOTE = "rsc.io/quote"


async def _dead_upstream(fake_proxy, corpus_modules) -> str:  # type: ignore[no-untyped-def]
    """A URL where an upstream used to be: connections are refused."""
    gone = await fake_proxy(corpus_modules)
    url = gone.url
    await gone.stop()
    return str(url)


def _metric(mn: MeshNode, name: str, **labels: str) -> float:
    value = mn.node.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_peer_fetch_serves_go_when_upstream_is_down(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    down = await _dead_upstream(fake_proxy, corpus_modules)
    a = await make_mesh_node(up.url)
    # Pre-sync off: what B serves must come from a peer fetch on the client's miss.
    b = await make_mesh_node(down, peers=[a.url], mesh={"presync": False})
    c = await make_mesh_node(down, peers=[a.url, b.url], mesh={"presync": False})

    env_a = go_env(tmp_path / "ga", a.url)
    res = (await run_go(["mod", "download", "-json", f"{QUOTE}@v1.5.2"], env_a, cwd=tmp_path)).check()
    want = decode_stream(res.stdout)[0]
    (await run_go(["list", "-m", "-json", f"{QUOTE}@latest"], env_a, cwd=tmp_path)).check()

    zip_key = f"{QUOTE}@v1.5.2.zip"
    await wait_for(lambda: bool(b.mesh.catalog.holdings(zip_key)), 10, "B learns that A holds the zip")
    assert await b.node.index.get(QUOTE, "v1.5.2", "zip") is None

    env_b = go_env(tmp_path / "gb", b.url)
    res = (await run_go(["mod", "download", "-json", f"{QUOTE}@v1.5.2"], env_b, cwd=tmp_path)).check()
    got = decode_stream(res.stdout)[0]
    assert "Error" not in got and got["Sum"] == want["Sum"] and got["GoModSum"] == want["GoModSum"]
    for kind in ("info", "mod", "zip"):
        entry = await b.node.index.get(QUOTE, "v1.5.2", kind)
        assert entry is not None and entry.source == f"peer:{a.mesh.node_id}", (kind, entry)
    assert _metric(b, "modmesh_mesh_peer_fetches_total", peer=a.mesh.node_id, path="miss", result="ok") >= 3
    assert up.count("quote/@v/v1.5.2.zip") == 1  # only A ever asked the upstream

    # @latest resolves at B with its upstream down: the list comes from A.
    res = (await run_go(["list", "-m", "-json", f"{QUOTE}@latest"], env_b, cwd=tmp_path)).check()
    assert json.loads(res.stdout)["Version"] == "v1.5.2"

    # Every node knows the others (C learnt B from its static peers, A from gossip).
    for mn in (a, b, c):
        others = {x.mesh.node_id for x in (a, b, c) if x is not mn}
        await wait_for(
            lambda mn=mn, others=others: (
                {  # type: ignore[misc]
                    m.node_id for m in mn.mesh.membership.members.values() if m.state == "alive"
                }
                == others
            ),
            5,
            f"{mn.url} sees the other two alive",
        )


async def test_popular_modules_presync_then_offline_build(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, go_build_cache, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    down = await _dead_upstream(fake_proxy, corpus_modules)
    a = await make_mesh_node(up.url)
    b = await make_mesh_node(down, peers=[a.url])
    c = await make_mesh_node(down, peers=[a.url, b.url])

    src = tmp_path / "hello"
    src.mkdir()
    (src / "go.mod").write_text(f"module example.com/hellomain\n\ngo 1.21\n\nrequire {QUOTE} v1.5.2\n")
    (src / "main.go").write_text(MAIN_GO)
    env_a = go_env(tmp_path / "ga", a.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "a.bin"), "."], env_a, cwd=src)).check()
    at_a = await a.node.index.changes_since(0)
    assert {e.module for e in at_a} >= {QUOTE, "rsc.io/sampler", "golang.org/x/text"}
    started = time.monotonic()

    async def has_all(mn: MeshNode) -> bool:
        for e in at_a:
            got = await mn.node.index.get(e.module, e.version, e.kind)
            if got is None or got.sha256 != e.sha256:
                return False
        return True

    await wait_for(lambda: has_all(b), 15, "A's modules pre-synced to B")
    await wait_for(lambda: has_all(c), 15, "A's modules pre-synced to C")
    took = time.monotonic() - started
    assert took < 15
    # Nobody asked B or C: no client access was counted there.
    for mn in (b, c):
        assert not mn.mesh.popularity.top(10, time.monotonic())
        assert (
            _metric(mn, "modmesh_mesh_synced_bytes_total", peer=a.mesh.node_id)
            + _metric(mn, "modmesh_mesh_synced_bytes_total", peer=(b if mn is c else c).mesh.node_id)
            > 0
        )

    # Every upstream gone, and A and B too: C alone serves a fresh machine's build.
    await up.stop()
    await a.close()
    await b.close()
    env_c = go_env(tmp_path / "gc", c.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "c.bin"), "."], env_c, cwd=src)).check()
