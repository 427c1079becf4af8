"""`modmesh export`: choose what goes into a bundle, then stream it.

Planning reads only the index and the checksum-database cache, a page at a time:
every blob's sha256 and size are already in the index, so the manifest (the first
member) is complete before the first blob byte is read. The plan is kept on disk
(export_plan.py), so an export's memory is the same for a store of any size.
Writing then streams each blob from the store and checks its sha256 on the way; a
blob that changed on disk stops the export (the importer would refuse it anyway,
loudly is better).

What is chosen is the `Selection` (selection.py); the checksum-database records,
tiles and tree heads that come with the modules are planned in export_sumdb.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node import __version__
from node.cache.index import Entry
from node.cache.store import BlobStore
from node.sumdb.cache import SumDBStore
from node.sumdb.tiles import parse_tile_path
from node.tools.bundle.export_plan import MODULES, PAGE, Member, PlanStore, Source, Written
from node.tools.bundle.export_sumdb import plan_databases
from node.tools.bundle.format import MANIFEST_NAME, BundleError, Manifest, ManifestEntry, module_member, utc_iso
from node.tools.bundle.selection import Selection
from node.tools.bundle.tar import CHUNK, Sink, TarWriter, file_chunks, once

if TYPE_CHECKING:
    from node.service import Node

#: Small blobs read ahead, per page of members, in one thread hop.
READ_AHEAD = 4 << 20


# ---- planning ------------------------------------------------------------------


@dataclass
class ExportSummary:
    """What a bundle holds, for the command's last line: counts, not the entries."""

    entries: int
    bytes: int
    counts: dict[str, int]
    sumdb: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, manifest: Manifest) -> ExportSummary:
        counts: dict[str, int] = {}
        for e in manifest.entries:
            counts[e.kind] = counts.get(e.kind, 0) + 1
        size = sum(e.size for e in manifest.entries)
        return cls(len(manifest.entries), size, counts, manifest.sumdb, manifest.warnings)


@dataclass
class ExportPlan:
    """A planned bundle: its members on disk in bundle order, its manifest in a temp
    file. `close()` removes both."""

    members: PlanStore
    written: Written
    created_at: float
    summary: ExportSummary
    blobs: BlobStore
    databases: dict[str, SumDBStore]
    #: Caches of databases found on disk, not configured: opened for this export.
    found: list[SumDBStore] = field(default_factory=list)

    def tar_size(self) -> int:
        """The exact size of the stream write_bundle writes (a Content-Length, a progress total)."""
        return self.written.tar_size

    @property
    def manifest(self) -> Manifest:
        """The whole manifest, parsed (all of it in memory: for tests and small bundles)."""
        return Manifest.from_bytes(self.written.path.read_bytes())

    def close(self) -> None:
        self.members.close()
        for db in self.found:
            db.close()

    async def chunks(self, entry: ManifestEntry, src: Source) -> AsyncIterator[bytes]:
        if src.kind == "blob":
            path = await asyncio.to_thread(self.blobs.file_of, src.ref)
            if path is not None:
                return file_chunks(path)
            with contextlib.suppress(OSError):  # missing: _checked says the blob changed
                return once(await asyncio.to_thread(self.blobs.read, src.ref))
            return once(b"")
        if src.kind == "bytes":
            return once(src.body or b"")
        db = self.databases[entry.db]
        if src.kind == "lookup":
            data = await asyncio.to_thread(db.lookup, entry.module, entry.version)
        else:
            data = await asyncio.to_thread(db.tile, parse_tile_path(src.ref))
        return once(data if data is not None else b"")


async def plan_export(node: Node, sel: Selection, clock: Callable[[], float] = time.time) -> ExportPlan:
    created = clock()
    plan = PlanStore(node.store.tmp_dir)
    try:
        return await _plan(node, sel, plan, created)
    except BaseException:
        plan.close()
        raise


async def _plan(node: Node, sel: Selection, plan: PlanStore, created: float) -> ExportPlan:
    warnings: list[str] = []
    prev = sel.previous.by_path() if sel.previous is not None else {}

    def unchanged(path: str, sha256: str) -> bool:
        p = prev.get(path)
        return p is not None and p.sha256 == sha256

    gosum = sel.gosum or {}
    cached: set[tuple[str, str, str]] = set()  # of the go.sum's files: as many as it has lines
    serial = 0
    while page := await node.index.changes_since(serial, PAGE):
        serial = page[-1].serial
        cached.update((e.module, e.version, e.kind) for e in page if (e.module, e.version) in gosum)
        scoped = [e for e in page if _in_scope(e, sel, warnings)]
        await asyncio.to_thread(_add_files, plan, node.store, scoped, unchanged, warnings)
    for (m, v), kinds in gosum.items():
        for kind in kinds:
            if (m, v, kind) not in cached:
                warnings.append(f"{m}@{v} {kind} (in go.sum) is not cached on this node")

    after = ("", "")
    while metas := await node.index.meta_page(after):
        after = (metas[-1].module, metas[-1].kind)
        members: list[tuple[int, ManifestEntry, Source]] = []
        for meta in metas:
            if not sel.in_scope(meta.module) or (sel.since is not None and meta.fetched_at <= sel.since):
                continue
            path = module_member(meta.module, "", meta.kind)
            sha = hashlib.sha256(meta.body).hexdigest()
            if not unchanged(path, sha):
                e = ManifestEntry(path, meta.kind, len(meta.body), sha, meta.module, "", None, meta.fetched_at)
                members.append((MODULES, e, Source("bytes", body=meta.body)))
        await asyncio.to_thread(plan.add, members)

    sumdb_info, databases = await plan_databases(node, plan, sel.previous, unchanged, warnings)
    header = {
        "created": utc_iso(created),
        "origin": {"kind": "node", "epoch": node.index.epoch, "serial": serial, "node_version": __version__},
        "selection": sel.describe(),
        "sumdb": sumdb_info,
        "warnings": warnings,
    }
    written = await asyncio.to_thread(plan.write_manifest, header, created)
    summary = ExportSummary(written.entries, written.bytes, written.counts, sumdb_info, warnings)
    configured = {db.name for db in node.sumdbs.dbs}
    found = [db for name, db in databases.items() if name not in configured]
    return ExportPlan(plan, written, created, summary, node.store, databases, found)


def _in_scope(e: Entry, sel: Selection, warnings: list[str]) -> bool:
    if not sel.in_scope(e.module) or (sel.since is not None and e.fetched_at <= sel.since):
        return False
    if e.unverified:
        warnings.append(f"{e.module}@{e.version} {e.kind}: not confirmed by the checksum database yet; not exported")
        return False
    if sel.gosum is not None:
        want = sel.gosum.get((e.module, e.version))
        if want is None or (e.kind == "zip" and "zip" not in want):
            return False
        h1 = want.get(e.kind)
        if h1 is not None and e.h1 != h1:
            warnings.append(f"{e.module}@{e.version} {e.kind}: go.sum has {h1}, this node has {e.h1}; not exported")
            return False
    return True


def _add_files(
    plan: PlanStore,
    store: BlobStore,
    scoped: list[Entry],
    unchanged: Callable[[str, str], bool],
    warnings: list[str],
) -> None:
    """One page of the index's files into the plan (in a thread: it looks at the store)."""
    plan.add_versions((e.module, e.version) for e in scoped if e.kind in ("mod", "zip"))
    members: list[tuple[int, ManifestEntry, Source]] = []
    for e in scoped:
        path = module_member(e.module, e.version, e.kind)
        if unchanged(path, e.sha256):
            continue
        if not store.has(e.sha256):
            warnings.append(f"{e.module}@{e.version}.{e.kind}: blob missing from the store; not exported")
            continue
        entry = ManifestEntry(path, e.kind, e.size, e.sha256, e.module, e.version, e.h1, e.fetched_at)
        members.append((MODULES, entry, Source("blob", e.sha256)))
    plan.add(members)


# ---- writing -------------------------------------------------------------------


async def _checked(entry: ManifestEntry, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    h = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > entry.size:
            break
        h.update(chunk)
        yield chunk
    if size != entry.size or h.hexdigest() != entry.sha256:
        raise BundleError(
            f"{entry.label} changed on disk since the index recorded it (sha256 or size differs); "
            "export stopped: check the store (modmesh doctor)"
        )


async def write_bundle(plan: ExportPlan, sink: Sink) -> int:
    """Stream the bundle to `sink`; returns the bytes written (== plan.tar_size())."""
    writer = TarWriter(sink)
    await writer.add(MANIFEST_NAME, plan.written.size, plan.created_at, file_chunks(plan.written.path))
    members = plan.members.ordered()
    while batch := await asyncio.to_thread(_next_page, members, plan.blobs):
        for entry, src, body in batch:
            chunks = once(body) if body is not None else await plan.chunks(entry, src)
            await writer.add(entry.path, entry.size, entry.fetched_at or plan.created_at, _checked(entry, chunks))
    await writer.close()
    return writer.written


def _next_page(
    groups: Iterator[tuple[Member, ...]], blobs: BlobStore
) -> list[tuple[ManifestEntry, Source, bytes | None]]:
    """The next PAGE or so members (whole modules), read from the plan in a thread, with
    the bytes of small blobs (up to READ_AHEAD in all) read in the same thread."""
    out: list[tuple[ManifestEntry, Source, bytes | None]] = []
    budget = READ_AHEAD
    for group in itertools.islice(groups, PAGE):
        for entry, src in group:
            body = None
            if src.kind == "blob" and entry.size <= min(CHUNK, budget):
                with contextlib.suppress(OSError):  # streamed instead, and the error is the stream's
                    body = blobs.read(src.ref)
                    budget -= len(body)
            out.append((entry, src, body))
        if len(out) >= PAGE:
            break
    return out
