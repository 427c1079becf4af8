"""`modmesh export`: choose what goes into a bundle, then stream it.

Planning reads only the index and the checksum-database cache: every blob's
sha256 and size are already in the index, so the manifest (the first member)
is complete before the first blob byte is read. Writing then streams each
blob from the store and checks its sha256 on the way; a blob that changed on
disk stops the export (the importer would refuse it anyway, loudly is better).

What is chosen is the `Selection` (selection.py); the checksum-database records,
tiles and tree heads that come with the modules are planned in export_sumdb.py.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node import __version__
from node.cache.index import Entry, MetaEntry
from node.golang import semver
from node.tools.bundle.export_sumdb import plan_databases
from node.tools.bundle.format import (
    KIND_ORDER,
    MANIFEST_NAME,
    BundleError,
    Manifest,
    ManifestEntry,
    module_member,
    utc_iso,
)
from node.tools.bundle.selection import Selection
from node.tools.bundle.tar import Sink, TarWriter, file_chunks, once, tar_size

if TYPE_CHECKING:
    from node.service import Node

#: Where a member's bytes come from: a store file, bytes in hand, or a re-read
#: of a (small, immutable) database cache file.
Source = Path | bytes | Callable[[], bytes | None]


# ---- planning ------------------------------------------------------------------


@dataclass
class ExportPlan:
    manifest: Manifest
    sources: list[Source]
    created_at: float

    @functools.cached_property
    def manifest_bytes(self) -> bytes:
        return self.manifest.to_bytes()

    def tar_size(self) -> int:
        """The exact size of the stream write_bundle writes (a Content-Length, a progress total)."""
        members = [(MANIFEST_NAME, len(self.manifest_bytes), self.created_at)]
        members += [(e.path, e.size, e.fetched_at or self.created_at) for e in self.manifest.entries]
        return tar_size(members)


async def _all_entries(node: Node) -> tuple[list[Entry], int]:
    entries: list[Entry] = []
    serial = 0
    while page := await node.index.changes_since(serial, 1000):
        entries.extend(page)
        serial = page[-1].serial
    return entries, serial


async def plan_export(node: Node, sel: Selection, clock: Callable[[], float] = time.time) -> ExportPlan:
    created = clock()
    warnings: list[str] = []
    prev = sel.previous.by_path() if sel.previous is not None else {}

    def unchanged(path: str, sha256: str) -> bool:
        p = prev.get(path)
        return p is not None and p.sha256 == sha256

    entries, max_serial = await _all_entries(node)
    existing = {(e.module, e.version, e.kind) for e in entries}
    scoped: list[Entry] = []
    for e in entries:
        if not sel.in_scope(e.module) or (sel.since is not None and e.fetched_at <= sel.since):
            continue
        if e.unverified:
            warnings.append(
                f"{e.module}@{e.version} {e.kind}: not confirmed by the checksum database yet; not exported"
            )
            continue
        if sel.gosum is not None:
            want = sel.gosum.get((e.module, e.version))
            if want is None or (e.kind == "zip" and "zip" not in want):
                continue
            h1 = want.get(e.kind)
            if h1 is not None and e.h1 != h1:
                warnings.append(f"{e.module}@{e.version} {e.kind}: go.sum has {h1}, this node has {e.h1}; not exported")
                continue
        scoped.append(e)
    for (m, v), kinds in (sel.gosum or {}).items():
        for kind in kinds:
            if (m, v, kind) not in existing:
                warnings.append(f"{m}@{v} {kind} (in go.sum) is not cached on this node")

    chosen: list[tuple[ManifestEntry, Source]] = []
    for e in scoped:
        path = module_member(e.module, e.version, e.kind)
        if unchanged(path, e.sha256):
            continue
        blob = node.store.path_for(e.sha256)
        if not blob.is_file():
            warnings.append(f"{e.module}@{e.version}.{e.kind}: blob missing from the store; not exported")
            continue
        chosen.append((ManifestEntry(path, e.kind, e.size, e.sha256, e.module, e.version, e.h1, e.fetched_at), blob))

    metas: list[tuple[str, str, MetaEntry]] = []
    while page := await node.index.meta_page(metas[-1:][0][:2] if metas else ("", "")):
        metas += [(m.module, m.kind, m) for m in page]
    for _, _, meta in metas:
        if not sel.in_scope(meta.module) or (sel.since is not None and meta.fetched_at <= sel.since):
            continue
        path = module_member(meta.module, "", meta.kind)
        sha = hashlib.sha256(meta.body).hexdigest()
        if not unchanged(path, sha):
            chosen.append(
                (ManifestEntry(path, meta.kind, len(meta.body), sha, meta.module, "", None, meta.fetched_at), meta.body)
            )
    chosen.sort(key=lambda c: _module_order(c[0]))

    versions = sorted({(e.module, e.version) for e in scoped if e.kind in ("mod", "zip")})
    sumdb_members, sumdb_info = await plan_databases(node, versions, sel.previous, unchanged, warnings)

    members: list[tuple[ManifestEntry, Source]] = [*sumdb_members, *chosen]
    manifest = Manifest(
        [m for m, _ in members],
        utc_iso(created),
        origin={"kind": "node", "epoch": node.index.epoch, "serial": max_serial, "node_version": __version__},
        selection=sel.describe(),
        sumdb=sumdb_info,
        warnings=warnings,
    )
    return ExportPlan(manifest, [s for _, s in members], created)


def _module_order(e: ManifestEntry) -> tuple[str, bool, tuple[Any, ...], int]:
    """Per module: versions in semver order (info, mod, zip), then list and latest."""
    return (e.module, not e.version, semver.sort_key(e.version) if e.version else (), KIND_ORDER[e.kind])


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
    mbytes = plan.manifest_bytes
    await writer.add(MANIFEST_NAME, len(mbytes), plan.created_at, once(mbytes))
    for entry, src in zip(plan.manifest.entries, plan.sources, strict=True):
        if isinstance(src, Path):
            chunks = file_chunks(src)
        elif isinstance(src, bytes):
            chunks = once(src)
        else:
            data = src()
            chunks = once(data if data is not None else b"")
        await writer.add(entry.path, entry.size, entry.fetched_at or plan.created_at, _checked(entry, chunks))
    await writer.close()
    return writer.written
