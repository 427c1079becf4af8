"""`modmesh import`: verify every entry of a bundle (or tree), admit what is sound.

Versioned files go through `ModuleProxy.admit`, the one door into the store:
zip rules and h1, `.mod` parse and module path, `.info` version, and the
checksum-database check when the node verifies. Before that door, each entry
must match the manifest: size and sha256 (a zip's checked as it streams, raised
before admit commits), and a `.mod`'s h1. `@v/list` / `@latest` are vetted like
an upstream's and kept with their original fetch time (the newer answer wins).

Database data is never taken on trust (import_sumdb.py); it is verified and
stored before the first module file is admitted, so a node that verifies needs
no reachable database.

One bad entry is refused and named; the rest still import. Importing the same
thing twice changes nothing: everything is "present" the second time.

Memory does not grow with the bundle: the manifest's entries wait in a temporary
database in the store's temp directory (import_temp.Expected), each looked up and
marked when its member arrives, the unseen ones read back a page at a time at the
end; the report keeps its counts, the first refusals and a few outcomes in memory and
the rest in another (import_report.py). Both are removed when the import ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node.cache import verify
from node.errors import IntegrityError, ModmeshError
from node.golang import dirhash
from node.tools.bundle.format import (
    BundleError,
    Manifest,
    ManifestEntry,
    Status,
    parse_module_member,
    parse_sumdb_member,
)
from node.tools.bundle.import_report import Outcome, Report
from node.tools.bundle.import_sumdb import DatabaseImport
from node.tools.bundle.import_temp import Expected
from node.tools.bundle.tar import TarReader, read_manifest

if TYPE_CHECKING:
    from node.service import Node

__all__ = ["Importer", "Member", "Outcome", "Report", "import_members", "import_stream"]

log = logging.getLogger(__name__)

MAX_SMALL = verify.MAX_MOD  # .info, .mod, list, latest, lookups, tree heads, tiles


@dataclass
class Member:
    """One member to import: its name, size and bytes (once)."""

    name: str
    size: int
    chunks: Callable[[], AsyncIterator[bytes]]


async def _read_all(chunks: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    parts: list[bytes] = []
    n = 0
    async for c in chunks:
        n += len(c)
        if n > limit:
            raise IntegrityError(f"{what} is larger than {limit} bytes")
        parts.append(c)
    return b"".join(parts)


def _mismatch(e: ManifestEntry, size: int, sha256: str) -> str | None:
    if size != e.size:
        return f"{size} bytes, the manifest says {e.size}"
    if e.sha256 is not None and sha256 != e.sha256:
        return f"sha256 {sha256[:16]}… does not match the manifest's {e.sha256[:16]}…"
    return None


class Importer:
    """One import: the manifest's entries are in `expected` (a temporary database in the
    store's temp directory), the outcomes in `report`; `close` removes the former."""

    def __init__(self, node: Node, origin: str, on_entry: Callable[[str], None] | None = None) -> None:
        self.node = node
        self.origin = origin
        self.on_entry = on_entry or (lambda _: None)
        self.report = Report(origin, spill=node.store.tmp_dir)
        self.expected = Expected(node.store.tmp_dir)
        self._sections: dict[str, DatabaseImport] = {}
        self._unknown_dbs: set[str] = set()
        self._modules_started = False
        self._meta_if_missing = False

    def close(self) -> None:
        self.expected.close()

    def outcome(self, e: ManifestEntry | Member, status: Status, reason: str = "") -> None:
        if isinstance(e, Member):
            self.report.add(Outcome(e.name, "unknown", status, reason=reason))
            return
        self.report.add(Outcome(e.path, e.kind, status, e.module, e.version, reason))

    async def _spill(self) -> None:
        if self.report.pending:
            await asyncio.to_thread(self.report.spill)

    # ---- the run -----------------------------------------------------------------

    async def run(self, manifest: Manifest, members: AsyncIterator[Member]) -> Report:
        """Import `members` against the manifest whose entries are in `expected`."""
        # A GOMODCACHE's list is the client's own (cached versions only): never over the node's.
        self._meta_if_missing = manifest.origin.get("kind") == "gomodcache"
        try:
            async for m in members:
                self.on_entry(m.name)
                entry, again = await asyncio.to_thread(self.expected.claim, m.name)
                if entry is None:
                    self.outcome(m, "refused", "not listed in the bundle's manifest")
                elif again:
                    self.outcome(entry, "refused", "a second copy of an entry")
                elif m.size != entry.size:
                    self.outcome(entry, "refused", f"{m.size} bytes, the manifest says {entry.size}")
                else:
                    before = sum(self.report.counts().values())
                    try:
                        await self._one(entry, m.chunks())
                    except BundleError:
                        if sum(self.report.counts().values()) == before:
                            self.outcome(entry, "refused", "the bundle ends inside this entry")
                        raise
                await self._spill()
        except BundleError as e:
            self.report.errors.append(str(e))
        finally:
            await self._finish_sections()
        pages = self.expected.unseen()
        while page := await asyncio.to_thread(next, pages, None):
            for missing in page:
                self.outcome(missing, "refused", "missing from the bundle")
            await self._spill()
        self._warn_refused()
        return self.report

    def _warn_refused(self) -> None:
        """One line for all refusals, however many (the report names each)."""
        n = self.report.counts()["refused"]
        if n:
            first = self.report.refusals[0]
            more = f" (and {n - 1} more, see the report)" if n > 1 else ""
            log.warning("import %s: refused %s: %s%s", self.origin, first.label, first.reason, more)

    async def _one(self, e: ManifestEntry, chunks: AsyncIterator[bytes]) -> None:
        if e.kind.startswith("sumdb-"):
            await self._sumdb(e, chunks)
            return
        if not self._modules_started:
            self._modules_started = True
            await self._finish_sections()  # records in place before the first blob is checked
        try:
            req = parse_module_member(e.path)
        except ValueError as err:
            self.outcome(e, "refused", f"bad path: {err}")
            return
        if (req.module, req.version, req.kind) != (e.module, e.version, e.kind):
            self.outcome(e, "refused", f"the manifest names {e.module}@{e.version} {e.kind} for this path")
            return
        if req.versioned:
            await self._versioned(e, req, chunks)
        else:
            await self._meta(e, req, chunks)

    # ---- module files ------------------------------------------------------------

    async def _versioned(self, e: ManifestEntry, req: Any, chunks: AsyncIterator[bytes]) -> None:
        node = self.node
        have = await node.index.get(req.module, req.version, req.kind)
        if have is not None and await asyncio.to_thread(node.store.has, have.sha256):
            if e.h1 and have.h1 and e.h1 != have.h1:
                self.outcome(e, "refused", f"this node already has {have.h1}; the bundle's copy has {e.h1}")
            else:
                self.outcome(e, "present")
            return
        try:
            entry, new = await node.proxy.admit(req, self.origin, self._checked(e, chunks), e.size)
        except ModmeshError as err:
            self.outcome(e, "refused", str(err))
            return
        note_ = ""
        if e.h1 and entry.h1 != e.h1:
            note_ = f"the manifest says {e.h1}; the node computed {entry.h1} from the (matching) bytes"
        self.outcome(e, "admitted" if new else "present", note_)

    async def _checked(self, e: ManifestEntry, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The entry's bytes; IntegrityError (before admit can commit) if they are not
        the manifest's. Small files are checked whole, zips when the last byte passed."""
        if e.kind != "zip":
            body = await _read_all(chunks, MAX_SMALL, e.label)
            problem = _mismatch(e, len(body), hashlib.sha256(body).hexdigest())
            if problem is None and e.kind == "mod" and e.h1 and dirhash.h1_gomod(body) != e.h1:
                problem = f"h1 {dirhash.h1_gomod(body)} does not match the manifest's {e.h1}"
            if problem is not None:
                raise IntegrityError(f"{problem}; not admitted")
            yield body
            return
        h = hashlib.sha256()
        n = 0
        async for c in chunks:
            n += len(c)
            h.update(c)
            yield c
        problem = _mismatch(e, n, h.hexdigest())
        if problem is not None:
            raise IntegrityError(f"{problem}; not admitted")

    async def _meta(self, e: ManifestEntry, req: Any, chunks: AsyncIterator[bytes]) -> None:
        try:
            body = await _read_all(chunks, verify.MAX_LIST, e.label)
            problem = _mismatch(e, len(body), hashlib.sha256(body).hexdigest())
            if problem is not None:
                raise IntegrityError(f"{e.label}: {problem}")
            if self._meta_if_missing and await self.node.index.get_meta(req.module, req.kind) is not None:
                self.outcome(e, "present", "the node's own answer is kept")
                return
            _, new = await self.node.proxy.admit_meta(req, self.origin, body, e.fetched_at or time.time())
        except ModmeshError as err:
            self.outcome(e, "refused", str(err))
            return
        self.outcome(e, "admitted" if new else "present")

    # ---- checksum databases ------------------------------------------------------

    async def _sumdb(self, e: ManifestEntry, chunks: AsyncIterator[bytes]) -> None:
        sec = self._sections.get(e.db)
        if sec is None and e.db not in self._unknown_dbs:
            db = next((d for d in self.node.sumdbs.dbs if d.name == e.db), None)
            if db is None:
                self._unknown_dbs.add(e.db)
            else:
                sec = self._sections[e.db] = DatabaseImport(db, self.node.store.tmp_dir, self.origin, self.outcome)
        if sec is None:
            self.outcome(e, "skipped", f"checksum database {e.db} is not configured on this node")
            return
        try:
            target = parse_sumdb_member(e)
            data = await _read_all(chunks, MAX_SMALL, e.path)
        except (ValueError, ModmeshError) as err:
            self.outcome(e, "refused", str(err))
            return
        problem = _mismatch(e, len(data), hashlib.sha256(data).hexdigest())
        if problem is not None:
            self.outcome(e, "refused", problem)
            return
        await sec.add(e, target, data)

    async def _finish_sections(self) -> None:
        for sec in self._sections.values():
            await sec.finish()


# ---- sources -----------------------------------------------------------------------


async def import_stream(
    node: Node, reader: TarReader, origin: str, on_entry: Callable[[str], None] | None = None
) -> Report:
    """Import a bundle read from a tar stream. The report's outcomes may be in a temp
    database in the store's temp directory: read them before the node stops, then
    `close` the report."""
    imp = Importer(node, origin, on_entry)
    try:
        try:
            room = (await asyncio.to_thread(shutil.disk_usage, node.store.tmp_dir)).free
            manifest = await read_manifest(reader, imp.expected.add, room)
        except (BundleError, OSError) as e:
            imp.report.errors.append(str(e))
            return imp.report

        async def members() -> AsyncIterator[Member]:
            while (m := await reader.next()) is not None:
                yield Member(m.name, m.size, reader.chunks)

        return await imp.run(manifest, members())
    except BaseException:
        imp.report.close()
        raise
    finally:
        imp.close()


async def import_members(
    node: Node,
    manifest: Manifest,
    members: AsyncIterator[Member],
    origin: str,
    on_entry: Callable[[str], None] | None = None,
) -> Report:
    """Import a manifest and its members from elsewhere (a directory); as import_stream."""
    imp = Importer(node, origin, on_entry)
    try:
        await asyncio.to_thread(imp.expected.add, manifest.entries)
        return await imp.run(manifest, members)
    except BaseException:
        imp.report.close()
        raise
    finally:
        imp.close()
