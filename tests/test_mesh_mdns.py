"""Acceptance: nodes in separate network namespaces find each other by mDNS alone
(no `--peer`) and sync.

Three hosts on one bridged segment (tests/netns.py), each running the real
`modmesh serve` as a subprocess. Only node A has an upstream: a fake GOPROXY serving
Go's test corpus, itself a subprocess inside A's namespace. A client fetches a module
through A; B and C, whose upstream is `off`, must then list A as a peer (learnt from
mDNS: their logs say so) and end up holding the same verified bytes, which they can
only have got from the mesh.

Everything is probed from inside the lab (the addresses exist nowhere else) through
one long-lived HTTP prober process. Mesh timings are shrunk through the mesh's
MODMESH_MESH_* variables so the whole test stays well under a minute on two cores.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

import pytest

from node.hooks import HOP_HEADER
from sync.auth import Signer
from tests import netns

ROOT = Path(__file__).resolve().parent.parent
MODULE, VERSION = "rsc.io/quote", "v1.5.2"
PORT = 3000
UPSTREAM_PORT = 8411
KINDS = ("info", "mod", "zip")
#: Mesh settings for a fast test (see sync/config.py for their meaning).
MESH_ENV = {
    "MODMESH_MESH_GOSSIP_INTERVAL": "0.5",
    "MODMESH_MESH_PRESYNC_INTERVAL": "1",
    "MODMESH_MESH_PRESYNC_MIN_SCORE": "0.1",
    "MODMESH_MESH_RETRY_BACKOFF": "0.5",
}


def _mesh_plugin_or_skip() -> None:
    """The mesh plugin is written separately; until it exists this test cannot run.
    Once it exists, its flags are part of the fixed interface, so their absence fails."""
    if not (ROOT / "sync" / "plugin.py").exists():
        pytest.skip("the mesh plugin (sync/plugin.py) does not exist yet")
    from node.cli import build_parser
    from node.plugins import load_plugins

    flags = [
        "--mesh-secret-file",
        "s",
        "--no-mdns",
        "--peer",
        "http://x:1",
        "--mdns-interface",
        "lo",
        "--mesh-name",
        "m",
    ]
    try:
        build_parser(load_plugins()).parse_args(["serve", *flags])
    except SystemExit:
        pytest.fail(f"`modmesh serve` does not take the mesh flags {flags} (is the mesh plugin loaded?)")


async def test_nodes_find_each_other_by_mdns_and_sync(go_bin: str, tmp_path: Path) -> None:
    _mesh_plugin_or_skip()
    t0 = time.monotonic()
    secret = tmp_path / "mesh.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    secret.chmod(0o600)
    logs = {name: tmp_path / f"{name}.log" for name in ("upstream", "a", "b", "c")}

    async with netns.lab(3) as lab:
        a, b, c = lab.hosts
        url = {h: f"http://{h.address}:{PORT}" for h in lab.hosts}
        upstream_url = f"http://{a.address}:{UPSTREAM_PORT}"
        await a.spawn(
            sys.executable,
            "-m",
            "tests.upstream_fixture",
            "--listen",
            f"{a.address}:{UPSTREAM_PORT}",
            "--corpus",
            log=logs["upstream"],
        )

        async def serve(host: netns.Netns, name: str, upstream: str, *extra: str) -> None:
            await host.spawn(
                sys.executable,
                "-m",
                "node.cli",
                "serve",
                "--listen",
                f"{host.address}:{PORT}",
                "--data",
                str(tmp_path / name),
                "--upstream",
                upstream,
                "--sumdb",
                "off",
                "--mesh-secret-file",
                str(secret),
                "--mesh-name",
                "acceptance",
                "--log-format",
                "text",
                "--log-level",
                "info",
                *extra,
                log=logs[name],
                env=MESH_ENV,
            )

        # No --peer anywhere. C names its interface; A and B use the default (all).
        await serve(a, "a", upstream_url)
        await serve(b, "b", "off")
        await serve(c, "c", "off", "--mdns-interface", netns.IFACE)
        probe = await a.prober()

        def context() -> str:
            return "\n".join(f"--- {n} log:\n{netns.tail(p)}" for n, p in logs.items())

        async def ready() -> bool:
            answers = [await probe.get(f"{url[h]}/readyz", timeout=2) for h in lab.hosts]
            answers.append(await probe.get(f"{upstream_url}/{MODULE}/@v/list", timeout=2))
            return all(r.status == 200 for r in answers)

        try:
            await netns.poll(ready, 20, what="nodes and upstream ready")

            # A client fetches the module through A (which asks its upstream).
            at_a = {}
            for kind in KINDS:
                r = await probe.get(f"{url[a]}/{MODULE}/@v/{VERSION}.{kind}")
                assert r.status == 200, (kind, r)
                at_a[kind] = r.body

            # B and C find A by mDNS alone, and A finds them. The status endpoint is a
            # mesh endpoint: signed with the mesh secret, as `modmesh peers` does.
            signer = Signer(secret.read_text().strip().encode(), "acceptance-test")

            async def knows(host: netns.Netns, *others: netns.Netns) -> bool:
                r = await probe.get(
                    f"{url[host]}/_mesh/status", headers=signer.headers("GET", "/_mesh/status"), timeout=2
                )
                assert r.status in (200, 0), f"/_mesh/status at {host.name}: {r.status} {r.body!r}"
                if r.status != 200:
                    return False
                alive = {m["url"] for m in r.json()["members"] if m["state"] == "alive"}
                return all(url[o] in alive for o in others)

            await netns.poll(lambda: knows(b, a), 20, what="B lists A as a peer")
            await netns.poll(lambda: knows(c, a), 20, what="C lists A as a peer")
            await netns.poll(lambda: knows(a, b, c), 20, what="A lists B and C as peers")
            discovered_in = time.monotonic() - t0
            for name in ("b", "c"):
                assert "mDNS: found node" in logs[name].read_text() and url[a] in logs[name].read_text(), (
                    f"{name} did not learn of A from mDNS"
                )

            # The module reaches B and C through the mesh (their upstream is off). The
            # hop header asks for local bytes only, so polling cannot itself fetch them.
            for host in (b, c):
                for kind in KINDS:

                    async def synced(host: netns.Netns = host, kind: str = kind) -> bool:
                        r = await probe.get(
                            f"{url[host]}/{MODULE}/@v/{VERSION}.{kind}", headers={HOP_HEADER: "1"}, timeout=5
                        )
                        return r.status == 200 and r.body == at_a[kind]

                    await netns.poll(synced, 30, interval=0.5, what=f"{kind} synced to {host.name}")
            synced_in = time.monotonic() - t0

            # And an ordinary client at B or C gets exactly the bytes A verified.
            for host in (b, c):
                r = await probe.get(f"{url[host]}/{MODULE}/@v/{VERSION}.zip")
                assert r.status == 200 and r.body == at_a["zip"]
                assert r.headers.get("X-Modmesh-Cache") == "hit", r.headers
        except (AssertionError, TimeoutError) as e:
            raise AssertionError(f"{e}\n{context()}") from e
        print(f"discovered in {discovered_in:.1f}s, synced in {synced_in:.1f}s")
    assert lab.existing() == [], "namespaces left behind"
    assert all(p.returncode is not None for p in lab.processes), "processes left running"
    assert time.monotonic() - t0 < 60
