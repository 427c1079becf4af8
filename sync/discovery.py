"""mDNS / DNS-SD discovery of modmesh nodes on the LAN: register this node, browse
for the others, and report them found and lost.

What is announced and how it is read back is announcement.py; which interfaces and
addresses are used is addresses.py. Discovery only tells the mesh that a node
*exists* at a URL; the mesh decides whether to talk to it.

Why the shape below:

- zeroconf delivers browser events from inside its record processing, so the handler
  only enqueues `(name, change)`; resolving (which waits for the network) happens in
  our own tasks, one per service name, re-run when a newer event arrives meanwhile.
- `on_found` fires once per appearance of a node, and again only when what it
  announces changes (new port or address after a restart): it is an upsert keyed by
  node id. `on_lost` fires when the last service for a node id is withdrawn or expires.
- Records are registered with a short TTL (RECORD_TTL) so a node that crashed without
  sending its goodbye is reported lost within about two minutes, not zeroconf's
  default 75 minutes for PTR records.
- IPv4 only (see addresses.py).

`python -m sync.discovery` lists the nodes visible on the LAN (a diagnostic, and what
the network-namespace tests run inside each namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .addresses import Network, mdns_addresses
from .announcement import SERVICE_TYPE, Announcement, instance_name, parse_announcement, txt_properties

log = logging.getLogger(__name__)

#: TTL of every record we publish (seconds). Browsers re-query at ~80% of it, so a
#: crashed node (no goodbye) is reported lost after about this long.
RECORD_TTL = 120
#: How long one resolve of a service's SRV/TXT/A records may wait for answers.
RESOLVE_TIMEOUT_MS = 3000
#: Resolve attempts per event before giving up until the next event for that name.
RESOLVE_ATTEMPTS = 3
#: After a change, look once more when superseded records have left the cache: a
#: cache-flush (RFC 6762 10.2) keeps the old SRV/A records for one second.
SETTLE_SECONDS = 1.5


# ---- the component ----------------------------------------------------------------


class Discovery:
    """Registers this node and reports the other nodes of the same mesh.

    `interfaces`: interface names to use (default all); `addresses`: what to advertise
    (default the non-loopback IPv4 addresses of those interfaces). With nothing to
    advertise the node still browses, so it can find others without being found.
    Callbacks run on the event loop and must not block.
    """

    def __init__(
        self,
        node_id: str,
        mesh: str,
        port: int,
        protocol: int,
        on_found: Callable[[Announcement], None],
        on_lost: Callable[[str], None],
        interfaces: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node id must not be empty")
        if not 0 < port < 65536:
            raise ValueError(f"cannot advertise port {port}")
        self.node_id = node_id
        self.mesh = mesh
        self.port = port
        self.protocol = protocol
        self._on_found = on_found
        self._on_lost = on_lost
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._addresses = [str(ipaddress.ip_address(a)) for a in addresses] if addresses is not None else None
        txt_properties(node_id, mesh, protocol, port)  # fail fast on oversize fields
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._queue: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._networks: list[Network] = []
        self._by_name: dict[str, Announcement] = {}  # service name (lower) -> last resolved
        self._reported: dict[str, Announcement] = {}  # node id -> last passed to on_found
        self._ignored: set[str] = set()  # names already logged as foreign/self
        self._closed = False

    # -- lifecycle

    @property
    def advertised(self) -> list[str]:
        """The addresses announced (empty before start, or when nothing is advertised)."""
        return list(self._info.parsed_addresses()) if self._info is not None else []

    @property
    def service_name(self) -> str | None:
        """Our registered service name (zeroconf may have renamed it on a conflict)."""
        return self._info.name if self._info is not None else None

    async def start(self) -> None:
        """Open the mDNS sockets, register (probing takes ~1 s) and start browsing.

        Raises ValueError for an unknown interface and OSError when the sockets cannot
        be opened, which `modmesh serve` reports as a start-up failure."""
        self._loop = asyncio.get_running_loop()
        where = mdns_addresses(self._interfaces, self._addresses)
        self._networks = where.networks
        bind: list[str | int | tuple[tuple[str, int, int], int]] = list(where.bind)
        advertise = where.advertise
        # Created here, inside the running loop, so zeroconf uses it and starts no thread.
        self._aiozc = AsyncZeroconf(interfaces=bind, ip_version=IPVersion.V4Only)
        try:
            await self._aiozc.zeroconf.async_wait_for_start()
            if not self._aiozc.zeroconf.engine.senders:
                raise OSError(f"mDNS: cannot join the multicast group on any of {', '.join(map(str, bind))}")
            self._pump = asyncio.create_task(self._pump_events(), name="mdns-discovery")
            # Browse first: registration waits ~1 s for its probes, peers need not.
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
            )
            if advertise:
                await self._register(advertise)
            else:
                log.warning("mDNS: no address to advertise on %s; browsing only", ", ".join(where.interfaces) or "-")
        except BaseException:
            await self.aclose()
            raise
        log.info(
            "mDNS discovery on %s as %s (mesh %r, advertising %s)",
            ", ".join(where.interfaces),
            self.service_name or "-",
            self.mesh,
            ", ".join(advertise) or "nothing",
        )

    async def aclose(self) -> None:
        """Stop browsing, cancel resolves, send goodbyes and close the sockets. Idempotent."""
        self._closed = True
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        tasks = [t for t in (self._pump, *self._resolving.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._pump = None
        self._resolving.clear()
        if self._aiozc is not None:
            aiozc, self._aiozc = self._aiozc, None
            await aiozc.async_close()  # unregisters every service: goodbye packets (TTL 0)

    async def update(self, port: int | None = None, addresses: Sequence[str] | None = None) -> None:
        """Re-announce with a new port or addresses (e.g. after the listener moved).
        Peers see it as an update of this node, not as a new one."""
        if port is not None:
            self.port = port
        if addresses is not None:
            self._addresses = [str(ipaddress.ip_address(a)) for a in addresses]
        if self._aiozc is None:
            return  # start() will announce the new values
        if self._info is None:  # browsing only so far
            if self._addresses:
                await self._register(self._addresses)
            return
        addrs = self._addresses if self._addresses is not None else self._info.parsed_addresses()
        info = self._service_info(self._info.name, addrs)
        await self._aiozc.async_update_service(info)
        self._info = info

    # -- registration

    def _service_info(self, name: str, addresses: Sequence[str]) -> AsyncServiceInfo:
        instance = instance_name(self.node_id)
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=self.port,
            properties=txt_properties(self.node_id, self.mesh, self.protocol, self.port),
            server=f"{instance}.local.",
            host_ttl=RECORD_TTL,
            other_ttl=RECORD_TTL,
            parsed_addresses=list(addresses),
        )

    async def _register(self, addresses: Sequence[str]) -> None:
        assert self._aiozc is not None
        info = self._service_info(f"{instance_name(self.node_id)}.{SERVICE_TYPE}", addresses)
        # Probing (RFC 6762 8.1) runs here; the announcements continue in zeroconf's task.
        # A name taken by another responder gets a "-2" suffix rather than failing start-up.
        self._info = info  # before awaiting, so our own announcement is recognised by name
        try:
            await self._aiozc.async_register_service(info, allow_name_change=True)
        except BaseException:
            self._info = None
            raise

    # -- browsing

    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """zeroconf's handler: enqueue only; the work happens in `_pump_events`."""
        if self._closed or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (name, state_change))

    async def _pump_events(self) -> None:
        while True:
            name, change = await self._queue.get()
            key = name.lower()
            if self.service_name is not None and key == self.service_name.lower():
                continue
            if change is ServiceStateChange.Removed:
                task = self._resolving.pop(key, None)
                self._again.discard(key)
                if task is not None:
                    task.cancel()
                self._forget(key)
                continue
            if key in self._resolving:
                self._again.add(key)  # the running resolve will go round once more
                continue
            task = asyncio.create_task(self._resolve_loop(key, name), name=f"mdns-resolve {name}")
            self._resolving[key] = task
            task.add_done_callback(functools.partial(self._resolve_done, key))

    def _resolve_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(key) is task:
            del self._resolving[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS: resolving %s failed", key, exc_info=task.exception())

    async def _resolve_loop(self, key: str, name: str) -> None:
        """Resolve until no newer event arrived meanwhile, plus once after SETTLE_SECONDS."""
        settled = False
        while True:
            self._again.discard(key)
            await self._resolve(key, name)
            if key in self._again:
                settled = False
                continue
            if settled:
                return
            await asyncio.sleep(SETTLE_SECONDS)
            settled = True

    async def _resolve(self, key: str, name: str) -> None:
        assert self._aiozc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        for attempt in range(RESOLVE_ATTEMPTS):
            if await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_MS):
                break
            log.debug("mDNS: no answer resolving %s (attempt %d)", name, attempt + 1)
        else:
            log.info("mDNS: could not resolve %s; waiting for its next announcement", name)
            return
        ann = parse_announcement(info.properties, info.parsed_addresses(IPVersion.V4Only), info.port, self._networks)
        if ann is None or ann.mesh != self.mesh or ann.node_id == self.node_id:
            if key not in self._ignored:
                self._ignored.add(key)
                if ann is None:
                    log.info("mDNS: ignoring %s: not a usable modmesh announcement", name)
                elif ann.node_id == self.node_id:
                    log.warning("mDNS: %s announces our own node id %s (a copied data directory?)", name, self.node_id)
                else:
                    log.debug("mDNS: ignoring %s of mesh %r", name, ann.mesh)
            self._forget(key)  # it may have been one of ours before its update
            return
        self._ignored.discard(key)
        self._by_name[key] = ann
        self._report(ann)

    def _report(self, ann: Announcement) -> None:
        if self._reported.get(ann.node_id) == ann:
            return  # a re-announcement of what we already reported
        self._reported[ann.node_id] = ann
        log.info("mDNS: found node %s at %s (protocol %d)", ann.node_id, ann.url, ann.protocol)
        _call(self._on_found, ann)

    def _forget(self, key: str) -> None:
        ann = self._by_name.pop(key, None)
        if ann is None:
            return
        others = [a for a in self._by_name.values() if a.node_id == ann.node_id]
        if others:
            self._report(others[-1])  # the node is still announced under another name
            return
        if self._reported.pop(ann.node_id, None) is not None:
            log.info("mDNS: lost node %s", ann.node_id)
            _call(self._on_lost, ann.node_id)


def _call(fn: Callable[..., None], *args: object) -> None:
    """A callback's bug must not stop discovery."""
    try:
        fn(*args)
    except Exception:
        log.exception("mDNS discovery callback %r failed", fn)


# ---- `python -m sync.discovery` ----------------------------------------------------


async def _watch(args: argparse.Namespace, stop: Callable[[], Awaitable[None]]) -> None:
    def emit(event: str, **fields: object) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    disc = Discovery(
        args.node_id,
        args.mesh,
        args.port,
        args.protocol,
        on_found=lambda a: emit("found", node_id=a.node_id, mesh=a.mesh, protocol=a.protocol, url=a.url),
        on_lost=lambda node_id: emit("lost", node_id=node_id),
        interfaces=args.interface or None,
        # Browse-only unless asked: a pseudo node would make real nodes try to gossip with it.
        addresses=(args.address or None) if args.announce else [],
    )
    await disc.start()
    try:
        emit("ready", service=disc.service_name, advertised=disc.advertised)
        await stop()
    finally:
        await disc.aclose()
        emit("closed")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the nodes of a mesh seen on the LAN as JSON lines (found / lost)."""
    p = argparse.ArgumentParser(prog="python -m sync.discovery", description=main.__doc__)
    p.add_argument("--mesh", default="default", help="mesh name (default: default)")
    p.add_argument("--interface", action="append", help="interface name (repeatable; default all)")
    p.add_argument(
        "--announce", action="store_true", help="also announce a pseudo node (tests; real nodes will try to reach it)"
    )
    p.add_argument("--node-id", default=f"probe-{uuid.uuid4().hex[:12]}", help="with --announce")
    p.add_argument("--port", type=int, default=3000, help="port to announce")
    p.add_argument("--protocol", type=int, default=1, help="protocol version to announce")
    p.add_argument("--address", action="append", help="address to announce (repeatable)")
    p.add_argument("--seconds", type=float, default=0, help="exit after this long (default: on SIGTERM)")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    async def run() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)

        async def stop() -> None:
            if args.seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), args.seconds)
            else:
                await done.wait()

        await _watch(args, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
