"""mDNS discovery (sync/discovery.py, with sync/announcement.py and sync/addresses.py).

Three levels: the pure TXT/address/name logic; two (or more) Discovery instances in
this process over the loopback interface, which proves found / lost / updated /
ignore-self / foreign announcements without leaving the machine; and the same
Discovery class in separate network namespaces joined by a bridge, which proves real
multicast between hosts independently of the rest of the mesh.

The in-process tests pass `interfaces=["lo"]`: mDNS packets then go out on loopback
only (never on the host's real interfaces). Service names are made unique per test
run, so concurrent runs on one machine cannot see each other's nodes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.addresses import advertised_for, best_address, interface_addresses, mdns_addresses
from sync.announcement import SERVICE_TYPE, Announcement, instance_name, parse_announcement, txt_properties
from sync.discovery import Discovery
from tests import netns

# ---- pure logic ----------------------------------------------------------------------

NETS = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("127.0.0.0/8")]


def props(**kv: str) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in kv.items()}


def test_txt_roundtrip() -> None:
    txt = txt_properties("n1", "lab", 3, 3000)
    assert txt == {"txtvers": "1", "id": "n1", "mesh": "lab", "proto": "3", "port": "3000"}
    ann = parse_announcement(props(**txt), ["10.77.0.5"], 3000, NETS)
    assert ann == Announcement("n1", "lab", 3, "http://10.77.0.5:3000")


def test_txt_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        txt_properties("n" * 300, "lab", 1, 3000)
    with pytest.raises(ValueError):
        Discovery("n1", "m" * 300, 3000, 1, lambda a: None, lambda n: None)


@pytest.mark.parametrize(
    "properties",
    [
        props(mesh="lab", proto="1"),  # no id
        props(id="", mesh="lab", proto="1"),
        props(id="n1", proto="1"),  # no mesh
        props(id="n1", mesh="lab"),  # no protocol
        props(id="n1", mesh="lab", proto="one"),
        {b"id": b"\xff\xfe", b"mesh": b"lab", b"proto": b"1"},  # not UTF-8
        {b"id": None, b"mesh": b"lab", b"proto": b"1"},  # boolean attribute, no value
    ],
)
def test_unusable_txt_is_ignored(properties: dict[bytes, bytes | None]) -> None:
    assert parse_announcement(properties, ["10.77.0.5"], 3000, NETS) is None


def test_port_srv_wins_txt_is_fallback() -> None:
    p = props(id="n1", mesh="lab", proto="1", port="4000")
    assert parse_announcement(p, ["10.77.0.5"], 3000).url == "http://10.77.0.5:3000"  # type: ignore[union-attr]
    assert parse_announcement(p, ["10.77.0.5"], 0).url == "http://10.77.0.5:4000"  # type: ignore[union-attr]
    assert parse_announcement(props(id="n1", mesh="lab", proto="1"), ["10.77.0.5"], None) is None
    assert parse_announcement(props(id="n1", mesh="lab", proto="1", port="x"), ["10.77.0.5"], 0) is None


def test_address_choice() -> None:
    p = props(id="n1", mesh="lab", proto="1")

    def url(addrs: list[str]) -> str | None:
        ann = parse_announcement(p, addrs, 3000, NETS)
        return ann.url if ann else None

    # our own network beats another routable address, which beats loopback
    assert url(["127.0.0.1", "192.168.9.9", "10.77.0.7"]) == "http://10.77.0.7:3000"
    assert url(["127.0.0.1", "192.168.9.9"]) == "http://192.168.9.9:3000"
    assert url(["127.0.0.1"]) == "http://127.0.0.1:3000"
    # zeroconf lists the newest address first: after a move, the new one wins a tie
    assert url(["10.77.0.9", "10.77.0.7"]) == "http://10.77.0.9:3000"
    assert url(["fd00::5"]) == "http://[fd00::5]:3000"
    assert url(["not-an-ip"]) is None
    assert url([]) is None


def test_instance_names() -> None:
    assert instance_name("0123abcd") == "modmesh-0123abcd"
    assert instance_name("a.b") != instance_name("a-b")  # rewritten ids get a hash
    long = "x" * 100
    assert len(instance_name(long)) <= 63
    assert instance_name(long) != instance_name(long + "y")


@given(st.text(min_size=1, max_size=200))
def test_instance_name_is_a_valid_label(node_id: str) -> None:
    label = instance_name(node_id)
    assert 0 < len(label.encode()) <= 63
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in label)


def test_interface_addresses() -> None:
    lo = interface_addresses(["lo"])
    assert ipaddress.IPv4Interface("127.0.0.1/8") in lo["lo"]
    with pytest.raises(ValueError, match="no-such-if0"):
        interface_addresses(["no-such-if0"])


def test_what_a_node_advertises_and_where_mdns_runs(caplog: pytest.LogCaptureFixture) -> None:
    assert advertised_for("0.0.0.0") is None and advertised_for("node.example") is None  # every interface
    assert advertised_for("10.77.0.5") == ["10.77.0.5"]
    assert advertised_for("127.0.0.1") == [] and "can find peers but not be found" in caplog.text
    lo = mdns_addresses(["lo"], None)
    assert lo.interfaces == ["lo"] and "127.0.0.1" in lo.bind and lo.advertise == []  # loopback: not announced
    assert ipaddress.ip_network("127.0.0.0/8") in lo.networks
    assert mdns_addresses(["lo"], ["127.0.0.1"]).advertise == ["127.0.0.1"]  # unless given explicitly
    assert best_address(["127.0.0.1", "10.77.0.7"], NETS) == "10.77.0.7" and best_address(["x"], NETS) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Discovery("", "m", 3000, 1, lambda a: None, lambda n: None)
    with pytest.raises(ValueError):
        Discovery("n", "m", 0, 1, lambda a: None, lambda n: None)
    with pytest.raises(ValueError):
        Discovery("n", "m", 3000, 1, lambda a: None, lambda n: None, addresses=["nope"])


async def test_unknown_interface_fails_start() -> None:
    d = Discovery("n", "m", 3000, 1, lambda a: None, lambda n: None, interfaces=["no-such-if0"])
    with pytest.raises(ValueError, match="no-such-if0"):
        await d.start()
    await d.aclose()


# ---- in one process, over loopback ----------------------------------------------------


@dataclass
class Recorder:
    """What one Discovery reported, with a way to wait for the next report."""

    found: list[Announcement] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_found(self, ann: Announcement) -> None:
        self.found.append(ann)
        self.changed.set()

    def on_lost(self, node_id: str) -> None:
        self.lost.append(node_id)
        self.changed.set()

    async def wait(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """The test's Discovery instances must leave no task and no thread behind."""
    threads = set(threading.enumerate())
    yield
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}
    assert not left, f"tasks left running: {left}"
    assert set(threading.enumerate()) <= threads, "threads left running"


@pytest.fixture
async def loopback_mdns() -> None:
    """Skip when this host cannot do multicast over `lo` (zeroconf then opens no socket)."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    try:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    except OSError as e:
        pytest.skip(f"cannot open mDNS sockets on loopback: {e}")
    try:
        await zc.zeroconf.async_wait_for_start()
        ok = bool(zc.zeroconf.engine.senders)
    finally:
        await zc.async_close()
    if not ok:
        pytest.skip("zeroconf cannot join the mDNS group on loopback here")


async def test_two_nodes_over_loopback(loopback_mdns: None, no_leaks: None) -> None:
    run = uuid.uuid4().hex[:8]
    mesh = f"test-{run}"
    ra, rb, rc = Recorder(), Recorder(), Recorder()

    def make(rec: Recorder, node: str, port: int, mesh: str = mesh) -> Discovery:
        return Discovery(
            f"{node}-{run}", mesh, port, 1, rec.on_found, rec.on_lost, interfaces=["lo"], addresses=["127.0.0.1"]
        )

    a, b = make(ra, "a", 3001), make(rb, "b", 3002)
    other = make(rc, "c", 3003, mesh=f"other-{run}")
    t0 = time.monotonic()
    try:
        await asyncio.gather(a.start(), b.start(), other.start())
        assert a.advertised == ["127.0.0.1"]
        await ra.wait(lambda: bool(ra.found))
        await rb.wait(lambda: bool(rb.found))
        found_in = time.monotonic() - t0
        assert ra.found == [Announcement(f"b-{run}", mesh, 1, "http://127.0.0.1:3002")]
        assert rb.found == [Announcement(f"a-{run}", mesh, 1, "http://127.0.0.1:3001")]

        # a re-announcement that changes the port is an update of the same node
        await a.update(port=3011)
        await rb.wait(lambda: len(rb.found) == 2)
        assert rb.found[-1] == Announcement(f"a-{run}", mesh, 1, "http://127.0.0.1:3011")
        # ... and so is one that moves it to another address (the old A record is flushed)
        await a.update(addresses=["127.0.0.2"])
        await rb.wait(lambda: rb.found[-1].url == "http://127.0.0.2:3011")

        # goodbye packets: b reports a lost; nothing was reported twice, nor ourselves,
        # nor the node of another mesh
        await a.aclose()
        await rb.wait(lambda: bool(rb.lost))
        assert rb.lost == [f"a-{run}"]
        await asyncio.sleep(SETTLE)  # room for any duplicate or stray report to show up
        assert [x.node_id for x in ra.found] == [f"b-{run}"]
        assert [x.url for x in rb.found] == ["http://127.0.0.1:3001", "http://127.0.0.1:3011", "http://127.0.0.2:3011"]
        assert rc.found == [] and ra.lost == [] and rc.lost == []
    finally:
        for d in (a, b, other):
            await d.aclose()
    assert found_in < 5, f"discovery over loopback took {found_in:.1f}s"


SETTLE = 2.0


async def test_foreign_announcements_are_ignored(loopback_mdns: None, no_leaks: None) -> None:
    """Garbled TXT records and our own node id under another name are never reported."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    run = uuid.uuid4().hex[:8]
    mesh = f"test-{run}"
    rec = Recorder()
    d = Discovery(f"me-{run}", mesh, 3001, 1, rec.on_found, rec.on_lost, interfaces=["lo"], addresses=["127.0.0.1"])
    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    infos = [
        AsyncServiceInfo(
            SERVICE_TYPE,
            f"garbled-{run}.{SERVICE_TYPE}",
            port=3002,
            properties={"id": f"g-{run}", "mesh": mesh},
            server=f"g-{run}.local.",
            parsed_addresses=["127.0.0.1"],
        ),
        AsyncServiceInfo(
            SERVICE_TYPE,
            f"clone-{run}.{SERVICE_TYPE}",
            port=3003,
            properties=txt_properties(f"me-{run}", mesh, 1, 3003),
            server=f"c-{run}.local.",
            parsed_addresses=["127.0.0.1"],
        ),
        AsyncServiceInfo(
            SERVICE_TYPE,
            f"good-{run}.{SERVICE_TYPE}",
            port=3004,
            properties=txt_properties(f"good-{run}", mesh, 7, 3004),
            server=f"ok-{run}.local.",
            parsed_addresses=["127.0.0.1"],
        ),
    ]
    try:
        await asyncio.gather(d.start(), *(zc.async_register_service(i) for i in infos))
        await rec.wait(lambda: bool(rec.found))
        await asyncio.sleep(SETTLE)
        # protocol is passed through: whether 7 is compatible is the mesh's decision
        assert rec.found == [Announcement(f"good-{run}", mesh, 7, "http://127.0.0.1:3004")]
    finally:
        await zc.async_close()
        await d.aclose()


# ---- across network namespaces --------------------------------------------------------


async def test_discovery_across_namespaces() -> None:
    """Three hosts on one segment; two of mesh M, one of another mesh. Each M node finds
    the other by multicast alone; when one stops, the other reports it lost."""
    run = uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    async with netns.lab(3) as lab:
        a, b, c = lab.hosts

        async def agent(host: netns.Netns, node: str, mesh: str) -> asyncio.subprocess.Process:
            return await host.spawn(
                sys.executable,
                "-m",
                "sync.discovery",
                "--node-id",
                node,
                "--mesh",
                mesh,
                "--port",
                "3000",
                "--interface",
                netns.IFACE,
                "--announce",
                "--log-level",
                "info",
            )

        pa = await agent(a, f"a-{run}", "M")
        pb = await agent(b, f"b-{run}", "M")
        pc = await agent(c, f"c-{run}", "other")
        assert pa.stdout and pb.stdout and pc.stdout

        def found(node: str) -> Callable[[dict[str, object]], bool]:
            return lambda ev: ev.get("event") == "found" and ev.get("node_id") == node

        seen_a, seen_b = await asyncio.gather(
            netns.read_json_lines(pa.stdout, found(f"b-{run}"), 20),
            netns.read_json_lines(pb.stdout, found(f"a-{run}"), 20),
        )
        found_in = time.monotonic() - t0
        ready = [ev for ev in seen_a if ev["event"] == "ready"]
        if not ready:
            ready = await netns.read_json_lines(pa.stdout, lambda ev: ev["event"] == "ready", 10)
        assert ready[-1]["advertised"] == [a.address]  # only mm0's address, never loopback
        assert seen_a[-1]["url"] == f"http://{b.address}:3000"
        assert seen_b[-1]["url"] == f"http://{a.address}:3000"

        pb.terminate()  # graceful: goodbye packets
        lost = await netns.read_json_lines(pa.stdout, lambda ev: ev.get("event") == "lost", 10)
        assert lost[-1]["node_id"] == f"b-{run}"
        assert await pb.wait() == 0

        pc.terminate()
        await pc.wait()
        rest = (await pc.stdout.read()).decode()
        assert f"a-{run}" not in rest and f"b-{run}" not in rest, "a node of another mesh was reported"
        for ev in seen_a + seen_b:
            assert ev.get("node_id") != f"c-{run}", "a node of another mesh was reported"
        names = lab.existing()
        assert len(names) == 4  # three hosts and the hub
    assert lab.existing() == [], "namespaces left behind"
    assert all(p.returncode is not None for p in lab.processes), "processes left running"
    assert found_in < 15, f"discovery across namespaces took {found_in:.1f}s"


async def test_lab_teardown_on_failure() -> None:
    """Teardown runs when the test body fails, and kills what is still running."""
    with pytest.raises(RuntimeError, match="boom"):
        async with netns.lab(2) as lab:
            proc = await lab.hosts[0].spawn("sleep", "600")
            assert proc.returncode is None
            raise RuntimeError("boom")
    assert lab.existing() == []
    assert proc.returncode is not None


def test_skip_reason_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (netns.unavailable_reason() or "")
