"""What the mesh holds: for every versioned file some peer advertised, which peers.

Memory is the constraint (a site mesh can know a million blobs), so each distinct
blob is stored once however many peers hold it: one small slotted object per
file key with the sha256 and h1 packed into one bytes object and the holders as a
bitmask of peer slots. Peers that advertise different bytes for the same file
(two upstreams' zips differ byte-wise but share the h1; or a liar) get a second
variant chained behind the first. The table is capped; past the cap new keys are
ignored (and counted), never a crash or an unbounded allocation.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from .messages import bytes_to_h1


class Variant:
    """One set of bytes for a file key, and who holds it."""

    __slots__ = ("holders", "next", "record")

    def __init__(self, record: bytes, holders: int, next_: Variant | None = None) -> None:
        #: size (8 bytes) + sha256 (32) + h1 (32; absent for .info): one object, not three.
        self.record = record
        self.holders = holders
        self.next = next_

    @property
    def size(self) -> int:
        return int.from_bytes(self.record[:8], "big")

    @property
    def sha256(self) -> str:
        return self.record[8:40].hex()

    @property
    def h1(self) -> str | None:
        return bytes_to_h1(self.record[40:]) if len(self.record) > 40 else None


@dataclass(frozen=True, slots=True)
class Holding:
    sha256: str
    h1: str | None
    size: int
    holders: int  # bitmask of peer slots


def key_of(module: str, version: str, kind: str) -> str:
    """Same text as node.protocol.ModRequest.key for versioned files."""
    return f"{module}@{version}.{kind}"


def _digest(key: str) -> bytes:
    """Tables are keyed by a 16-byte hash of the file key: half the memory of the text."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def slots_of(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Catalog:
    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.skipped = 0
        self._keys: dict[bytes, Variant] = {}
        self._modules: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, slot: int, module: str, version: str, kind: str, sha256: bytes, h1: bytes | None, size: int) -> bool:
        """Record that peer `slot` holds these bytes; True if that is news. A peer holds
        one copy of a file: a new one (it re-fetched after an eviction) replaces the old."""
        bit = 1 << slot
        key = _digest(key_of(module, version, kind))
        head = self._keys.get(key)
        found = False
        prev: Variant | None = None
        v = head
        while v is not None:
            nxt = v.next
            if v.record[8:40] == sha256:
                found = True
                if v.holders & bit:
                    return False
                v.holders |= bit
            elif v.holders & bit:
                v.holders &= ~bit
                if not v.holders:
                    self._unlink(key, prev, v)
                    v = nxt
                    continue
            prev, v = v, nxt
        if not found:
            head = self._keys.get(key)
            if head is None and len(self._keys) >= self.max_entries:
                self.skipped += 1
                return False
            self._keys[key] = Variant(size.to_bytes(8, "big") + sha256 + (h1 or b""), bit, head)
        self._modules[module] = self._modules.get(module, 0) | bit
        return True

    def holdings(self, key: str) -> list[Holding]:
        out = []
        v = self._keys.get(_digest(key))
        while v is not None:
            out.append(Holding(v.sha256, v.h1, v.size, v.holders))
            v = v.next
        return out

    def module_holders(self, module: str) -> int:
        """Peers that hold some version of `module` (a hint for list/@latest: a
        superset after discards, exact again once a peer's slot is dropped)."""
        return self._modules.get(module, 0)

    def discard(self, slot: int, key: str) -> None:
        """Peer `slot` turned out not to hold `key` (it answered 404)."""
        bit = 1 << slot
        digest = _digest(key)
        prev: Variant | None = None
        v = self._keys.get(digest)
        while v is not None:
            if v.holders & bit:
                v.holders &= ~bit
                if not v.holders:
                    self._unlink(digest, prev, v)
                return
            prev, v = v, v.next

    def _unlink(self, key: bytes, prev: Variant | None, v: Variant) -> None:
        if prev is not None:
            prev.next = v.next
        elif v.next is not None:
            self._keys[key] = v.next
        else:
            del self._keys[key]

    async def drop_slot(self, slot: int, chunk: int = 20_000) -> int:
        """Forget everything peer `slot` held (its store was reset, or it left).
        Walks the table in chunks, yielding to the loop between them."""
        bit = 1 << slot
        keys = list(self._keys)
        dropped = 0
        for i in range(0, len(keys), chunk):
            for key in keys[i : i + chunk]:
                prev: Variant | None = None
                v = self._keys.get(key)
                while v is not None:
                    nxt = v.next
                    if v.holders & bit:
                        v.holders &= ~bit
                        dropped += 1
                        if not v.holders:
                            self._unlink(key, prev, v)
                            v = nxt
                            continue
                    prev, v = v, nxt
            await asyncio.sleep(0)
        for module in [m for m, mask in self._modules.items() if mask & bit]:
            mask = self._modules[module] & ~bit
            if mask:
                self._modules[module] = mask
            else:
                del self._modules[module]
        return dropped
