"""Inventory as a delta (Syncthing's delta index, devpi's changelog).

Serving: our index's change log (`Index.changes_since`) in pages, tagged with the
store's epoch; an asker with another epoch gets `reset` and the log from the start.
Pulling: for each member, the epoch and last serial we applied; a gossip that
shows a newer head (or another epoch) makes us page through what is new, into the
catalog. A new epoch means the peer's store was reset: forget what it held and
resync in full, page by page.

Private modules (sync/privacy.py) are left out both ways: never served in a page,
never taken into the catalog from one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from node.cache.index import Entry, Index

from .catalog import Catalog
from .client import PeerClient
from .membership import Member, Membership
from .messages import InventoryPage, InvEntry, MessageError, fits, h1_to_bytes

log = logging.getLogger(__name__)


def inv_entry(e: Entry) -> InvEntry:
    return InvEntry(e.serial, e.module, e.version, e.kind, bytes.fromhex(e.sha256), h1_to_bytes(e.h1), e.size)


class Inventory:
    def __init__(
        self,
        index: Index,
        catalog: Catalog,
        membership: Membership,
        client: PeerClient,
        page_size: int,
        clock: Callable[[], float],
        private: Callable[[str], bool] = lambda module: False,
        concurrency: int = 4,
    ) -> None:
        self.index = index
        self.catalog = catalog
        self.membership = membership
        self.client = client
        self.page_size = page_size
        self.clock = clock
        self.private = private
        #: Our own change log: newest serial and number of entries.
        self.head = 0
        self.count = 0
        self._slots = asyncio.Semaphore(concurrency)

    async def open(self) -> None:
        async with self.index.db.execute("SELECT COALESCE(MAX(serial), 0), COUNT(*) FROM entries") as cur:
            row = await cur.fetchone()
        self.head, self.count = (int(row[0]), int(row[1])) if row else (0, 0)

    def stored(self, entry: Entry) -> None:
        self.head = max(self.head, entry.serial)
        self.count += 1

    async def page(self, epoch: str, after: int, limit: int) -> InventoryPage:
        mine = self.index.epoch
        reset = epoch != mine
        if reset:
            after = 0
        rows = await self.index.changes_since(after, limit, verified_only=True)
        entries = tuple(e for e in map(inv_entry, rows) if fits(e) and not self.private(e.module))
        last = rows[-1].serial if rows else after
        return InventoryPage(mine, max(self.head, last), reset, len(rows) == limit, entries, last)

    @staticmethod
    def behind(m: Member, epoch: str, head: int) -> bool:
        """Does a member's gossip show entries we have not pulled?"""
        if epoch == m.epoch:
            m.head = max(m.head, head)
        else:
            m.head = head
        return epoch != m.epoch or head > m.synced

    async def pull(self, m: Member) -> None:
        """Page through a member's change log from the last serial we applied."""
        try:
            async with self._slots:
                while self.membership.get(m.node_id) is m:
                    before = (m.epoch, m.synced)
                    page = await self.client.page(m.url, m.epoch, m.synced, self.page_size)
                    if self.membership.get(m.node_id) is not m:
                        return  # forgotten meanwhile: its slot may belong to someone else
                    if page.reset or page.epoch != m.epoch:
                        if m.epoch or m.count:
                            log.info("mesh peer %s has a new store epoch %s; full resync", m.node_id, page.epoch)
                            await self.catalog.drop_slot(m.slot)
                        m.epoch, m.synced, m.count = page.epoch, 0, 0
                    for e in page.entries:
                        if self.private(e.module):
                            continue  # a peer without our patterns offered it: not ours to take
                        if self.catalog.add(m.slot, e.module, e.version, e.kind, e.sha256, e.h1, e.size):
                            m.count += 1
                    m.synced = max(m.synced, page.last)
                    m.head = max(page.head, m.synced)
                    if not page.more or (m.epoch, m.synced) == before:
                        break  # done, or a page that made no progress: again after the next gossip
        except (TimeoutError, aiohttp.ClientError, MessageError, OSError) as e:
            log.debug("inventory sync with %s failed: %s", m.node_id, e)
            self.membership.failed(m.node_id, self.clock())
        finally:
            m.syncing = False
