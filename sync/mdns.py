"""The mesh's use of mDNS: announce where this node listens, and turn what discovery
reports into seeds. A node found is only a URL to try (signed gossip makes it a
member); a node lost is dropped from the seeds and marked lost.

Optional: without the discovery stack (discovery.py, announcement.py, addresses.py
and their zeroconf and ifaddr) the mesh runs on static peers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import MeshConfig
from .membership import Membership
from .messages import PROTOCOL

if TYPE_CHECKING:  # imported when mDNS starts
    from .announcement import Announcement
    from .discovery import Discovery

log = logging.getLogger(__name__)


class MeshDiscovery:
    def __init__(self, node_id: str, cfg: MeshConfig, membership: Membership, clock: Callable[[], float]) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.membership = membership
        self.clock = clock
        self.discovery: Discovery | None = None

    @property
    def started(self) -> bool:
        """start() got as far as starting zeroconf (whether or not that worked)."""
        return self.discovery is not None

    async def start(self, host: str, port: int) -> None:
        """mDNS announces where we listen; a node listening on loopback only browses.
        Raises OSError or ValueError when discovery cannot start."""
        try:
            from .addresses import advertised_for
            from .discovery import Discovery
        except ImportError:
            log.warning("mDNS discovery is not available in this build; use --peer URL")
            return
        addresses = advertised_for(host)
        loop = asyncio.get_running_loop()

        # zeroconf may call from its own thread: only hand the event to our loop.
        def found(ann: Announcement) -> None:
            loop.call_soon_threadsafe(self.found, ann)

        def lost(node_id: str) -> None:
            loop.call_soon_threadsafe(self.lost, node_id)

        self.discovery = Discovery(
            self.node_id,
            self.cfg.name,
            port,
            PROTOCOL,
            on_found=found,
            on_lost=lost,
            interfaces=list(self.cfg.mdns_interfaces) or None,
            addresses=addresses,
        )
        await self.discovery.start()

    def found(self, ann: Announcement) -> None:
        if ann.mesh != self.cfg.name or ann.protocol != PROTOCOL or ann.node_id == self.node_id:
            return
        self.membership.add_seed(str(ann.url).rstrip("/"), "mdns", ann.node_id)

    def lost(self, node_id: str) -> None:
        self.membership.drop_seeds(node_id)
        self.membership.lost(node_id, self.clock())

    async def aclose(self) -> None:
        if self.discovery is not None:
            try:
                await self.discovery.aclose()
            except Exception:
                log.exception("closing mDNS discovery failed")
            self.discovery = None
