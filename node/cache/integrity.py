"""A damaged blob is never served: each blob's bytes are hashed before its first
serve in a run of the node (and by the scrub, scrub.py), and a blob whose bytes no
longer hash to its name goes to quarantine and is fetched again.

Why the sha256 alone at serve time: a blob's name is the sha256 of the bytes that
were verified when it was admitted (zip rules, h1, the checksum database), so bytes
that hash to the name are those bytes. The scrub also recomputes a zip's h1, which
catches an index row that no longer describes its blob.

A check's result is kept in the index (`checked_boot`: the run it happened in), so a
hot file costs one integer comparison per request, and nothing is kept in memory per
blob. Checks of one blob are single-flight.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from node.cache.index import Entry, Index
from node.cache.protocol import Kind, ModRequest
from node.cache.store import BlobStore
from node.errors import ModmeshError
from node.flights import Flights
from node.metrics import Metrics

log = logging.getLogger(__name__)

E = TypeVar("E", bound=ModmeshError)


@dataclass
class Damage:
    """One quarantined blob."""

    sha256: str
    #: What the bytes on disk hash to, or why they could not be read ("missing", ...).
    found: str
    by: str  # serve, scrub, verify
    at: float
    keys: list[str] = field(default_factory=list)
    moved_to: str = ""


def blob_digest(store: BlobStore, sha256: str) -> tuple[str, int]:
    """(sha256, size) of what the store holds as the blob; OSError if it cannot be read."""
    h, size = hashlib.sha256(), 0
    with store.open_blob(sha256) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def read_problem(e: OSError) -> str:
    return "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({e.strerror or e})"


class Integrity:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        check_on_serve: bool = True,
    ) -> None:
        self.store = store
        self.index = index
        self.metrics = metrics
        self.clock = clock
        self.check_on_serve = check_on_serve
        self.quarantine_dir = store.root / "quarantine"
        #: Drops a request's in-memory copies: set by the proxy.
        self.forget: Callable[[ModRequest], None] = lambda req: None
        self._checks: Flights[str, bool] = Flights()
        #: Request key -> the damage that took its file, until a good copy is stored.
        self.repairing: dict[str, Damage] = {}
        self.quarantined = 0
        self.repaired = 0
        self.last: Damage | None = None

    def needs_check(self, entry: Entry) -> bool:
        return (
            self.check_on_serve and entry.checked_boot != self.index.boot and not self.index.checked_now(entry.sha256)
        )

    async def check(self, entry: Entry, body: bytes | None = None) -> bool:
        """True if the blob's bytes hash to its name (recorded for this run); False if
        not: the blob is in quarantine and its rows are out of the index. `body`: the
        bytes already read (small files)."""
        return await self._checks.run(entry.sha256, functools.partial(self._check, entry, body))

    async def aclose(self) -> None:
        await self._checks.aclose()

    async def _check(self, entry: Entry, body: bytes | None) -> bool:
        try:
            if body is not None:
                found, size = hashlib.sha256(body).hexdigest(), len(body)
            else:
                found, size = await asyncio.to_thread(blob_digest, self.store, entry.sha256)
        except OSError as e:
            found, size = read_problem(e), -1
        self.metrics.blobs_checked.labels("serve").inc()
        if found == entry.sha256 and size == entry.size:
            self.index.note_checked(entry.sha256, self.clock())  # written with the next flush
            return True
        await self.quarantine(entry.sha256, found if size == -1 or found != entry.sha256 else "wrong size", "serve")
        return False

    async def quarantine(self, sha256: str, found: str, by: str) -> Damage:
        """Take a damaged blob out of service: move it to <data>/quarantine/ with a note
        of what it was, drop its rows (and memory copies), count and log it. Its files
        are fetched again by the next request for them (or by the caller)."""
        damage = Damage(sha256, found, by, self.clock())
        rows = await self.index.rows_of(sha256)
        dest = self.quarantine_dir / f"{sha256}.{int(damage.at)}"
        try:
            if await asyncio.to_thread(self._take_out, sha256, dest):
                damage.moved_to = str(dest)
        except OSError as err:  # cannot move it: delete it, never leave it to be served
            log.warning("cannot move damaged blob %s to quarantine (%s): deleting it", sha256, err)
            await asyncio.to_thread(self.store.remove, sha256)
        await self.index.remove_blob(sha256)
        reqs = [_request(row) for row in rows]
        damage.keys = [req.key for req in reqs]
        for req in reqs:
            self.forget(req)
            self.repairing[req.key] = damage
        note = {**asdict(damage), "rows": [asdict(row) for row in rows]}
        try:
            (self.quarantine_dir / f"{dest.name}.json").write_text(json.dumps(note, indent=1) + "\n")
        except OSError:
            pass
        self.quarantined += 1
        self.last = damage
        self.metrics.blobs_quarantined.labels(by).inc()
        log.warning(
            "damaged blob quarantined (found by %s): %s; expected sha256 %s, found %s; moved to %s; "
            "fetching it again from peers or upstreams",
            by,
            ", ".join(damage.keys) or "no index rows",
            sha256,
            found,
            damage.moved_to or "(nothing on disk)",
        )
        return damage

    def _take_out(self, sha256: str, dest: Path) -> bool:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        return self.store.take_out(sha256, dest)

    def stored(self, entry: Entry) -> None:
        """A good copy of a file was stored: if it replaces a quarantined one, a repair."""
        damage = self.repairing.pop(_request(entry).key, None)
        if damage is None:
            return
        self.repaired += 1
        self.metrics.blobs_repaired.inc()
        log.info("repaired %s@%s .%s from %s", entry.module, entry.version, entry.kind, entry.source)

    def explain(self, key: str, e: E) -> E:
        """The error a client gets for a file whose damaged copy could not be replaced."""
        damage = self.repairing.get(key)
        if damage is None:
            return e
        copy = type(e).__new__(type(e))
        copy.__dict__.update(e.__dict__)
        what = ", ".join(damage.keys) or key
        copy.args = (f"the node's copy of {what} was damaged on disk and no source has it: {e.message}",)
        copy.body = None
        return copy

    def health(self) -> dict[str, Any]:
        return {
            "quarantined": self.quarantined,
            "repaired": self.repaired,
            "repairing": len(self.repairing),
            "last_damage": asdict(self.last) if self.last else None,
        }


def _request(e: Entry) -> ModRequest:
    return ModRequest(e.module, e.version, cast(Kind, e.kind))
