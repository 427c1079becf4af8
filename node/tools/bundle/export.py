"""`modmesh export`: choose what goes into a bundle, then stream it.

Planning reads only the index and the checksum-database cache: every blob's
sha256 and size are already in the index, so the manifest (the first member)
is complete before the first blob byte is read. Writing then streams each
blob from the store and checks its sha256 on the way; a blob that changed on
disk stops the export (the importer would refuse it anyway, loudly is better).

Database data: the records (lookups) of the selected public module versions,
the node's newest verified tree head, and exactly the tiles a client needs to
verify those records offline at that tree head's widths: the tree head's own
edge, each record's proof path, and the proof that each record's tree is a
prefix of the newest one (tiles_needed_for_record / _for_tree_proof). A
node serves narrower partial tiles as prefixes, so this set answers every
client whose newest tree is one of those carried. With `--since-bundle`, also
the proof that the earlier bundle's tree head is a prefix of this one, so an
importer that took the earlier bundle can check the new head offline.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from node.cache.index import Entry
from node.golang import semver
from node.golang.patterns import match_prefix_patterns
from node.sumdb import tlog
from node.sumdb.cache import SumDBStore
from node.sumdb.client import HEIGHT, SumDB
from node.sumdb.tiles import Tile, tiles_needed_for_record, tiles_needed_for_tree_proof
from node.tools.bundle.format import MANIFEST_NAME, BundleError, Manifest, ManifestEntry, lookup_member, module_member
from node.tools.bundle.tar import CHUNK, Sink, TarWriter, once, tar_size

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

#: Where a member's bytes come from: a store file, bytes in hand, or a re-read
#: of a (small, immutable) database cache file.
Source = Union[Path, bytes, Callable[[], "bytes | None"]]
_KIND_ORDER = {"info": 0, "mod": 1, "zip": 2, "list": 3, "latest": 4}


class SelectionError(ValueError):
    pass


# ---- selection -----------------------------------------------------------------


def parse_gosum(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(module, version) -> {"zip": h1, "mod": h1} from go.sum lines."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) != 3:
            raise SelectionError(f"go.sum line {n}: want 'module version hash', got {line[:80]!r}")
        module, version, h1 = f
        kind = "zip"
        if version.endswith("/go.mod"):
            version, kind = version.removesuffix("/go.mod"), "mod"
        out.setdefault((module, version), {})[kind] = h1
    return out


def parse_since(value: str) -> float:
    """An ISO 8601 date or time (UTC unless it says otherwise) as a Unix time."""
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SelectionError(
            f"--since {value!r} is not an ISO date (e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


@dataclass(frozen=True)
class Selection:
    """Filters combine with AND; repeated module patterns with OR. None of them: everything."""

    modules: tuple[str, ...] = ()
    gosum: Mapping[tuple[str, str], Mapping[str, str]] | None = None
    since: float | None = None
    previous: Manifest | None = None
    _gosum_modules: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.gosum is not None:
            object.__setattr__(self, "_gosum_modules", frozenset(m for m, _ in self.gosum))

    @property
    def everything(self) -> bool:
        return not self.modules and self.gosum is None and self.since is None and self.previous is None

    def in_scope(self, module: str) -> bool:
        if self.modules and not match_prefix_patterns(",".join(self.modules), module):
            return False
        return self.gosum is None or module in self._gosum_modules

    def describe(self) -> dict[str, Any]:
        return {
            "everything": self.everything,
            "modules": list(self.modules),
            "gosum_versions": None if self.gosum is None else len(self.gosum),
            "since": None if self.since is None else _iso(self.since),
            "since_bundle": None if self.previous is None else self.previous.created,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Selection:
        """The body of POST /_admin/export: modules, gosum (text), since (ISO), since_bundle (manifest)."""
        modules = obj.get("modules") or []
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise SelectionError("modules must be a list of patterns")
        gosum = obj.get("gosum")
        since = obj.get("since")
        prev = obj.get("since_bundle")
        return cls(
            tuple(modules),
            parse_gosum(str(gosum)) if gosum is not None else None,
            parse_since(str(since)) if since else None,
            Manifest.from_bytes(_json_bytes(prev)) if prev is not None else None,
        )


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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

    for meta in await node.index.all_meta():
        if not sel.in_scope(meta.module) or (sel.since is not None and meta.fetched_at <= sel.since):
            continue
        path = module_member(meta.module, "", meta.kind)
        sha = _sha(meta.body)
        if not unchanged(path, sha):
            chosen.append(
                (ManifestEntry(path, meta.kind, len(meta.body), sha, meta.module, "", None, meta.fetched_at), meta.body)
            )
    chosen.sort(key=lambda c: _module_order(c[0]))

    versions = sorted({(e.module, e.version) for e in scoped if e.kind in ("mod", "zip")})
    sumdb_members: list[tuple[ManifestEntry, Source]] = []
    sumdb_info: list[dict[str, Any]] = []
    for db in node.sumdbs.dbs:
        await _settle(db)
    for cache in await asyncio.to_thread(_database_caches, node):
        prev_tree = _previous_tree(sel.previous, cache.name)
        section, info = await asyncio.to_thread(_plan_sumdb, cache, versions, prev_tree, unchanged, warnings)
        sumdb_members += section
        if info:
            sumdb_info.append(info)

    members = sumdb_members + chosen
    manifest = Manifest(
        [m for m, _ in members],
        _iso(created),
        origin={"kind": "node", "epoch": node.index.epoch, "serial": max_serial, "node_version": _node_version()},
        selection=sel.describe(),
        sumdb=sumdb_info,
        warnings=warnings,
    )
    return ExportPlan(manifest, [s for _, s in members], created)


def _node_version() -> str:
    from node.service import VERSION

    return VERSION


def _module_order(e: ManifestEntry) -> tuple[str, bool, tuple[Any, ...], int]:
    """Per module: versions in semver order (info, mod, zip), then list and latest."""
    return (e.module, not e.version, semver.sort_key(e.version) if e.version else (), _KIND_ORDER[e.kind])


async def _settle(db: SumDB) -> None:
    """Let background tile prefetches and upgrades finish (bounded), so the cache
    holds every tile at the newest tree's widths."""
    try:
        await asyncio.wait_for(asyncio.shield(db.idle()), 30)
    except asyncio.TimeoutError:
        log.warning("checksum database %s: background tile work still running; exporting what is cached", db.name)


def _previous_tree(prev: Manifest | None, name: str) -> tlog.Tree | None:
    for info in prev.sumdb if prev is not None else []:
        if info.get("name") == name:
            try:
                return tlog.Tree(int(info["tree_size"]), base64.b64decode(str(info["tree_hash"])))
            except (KeyError, ValueError, TypeError, tlog.TlogError):
                return None
    return None


def _tree_of(signed: bytes) -> tlog.Tree:
    """The tree in a signed note from our own cache (verified when it was stored)."""
    split = signed.rfind(b"\n\n")
    return tlog.parse_tree(signed[: split + 1].decode("utf-8"))


@dataclass(frozen=True)
class _DatabaseCache:
    name: str
    store: SumDBStore
    vkey: str | None  # None: found on disk, not configured (its bytes were verified when stored)


def _database_caches(node: Node) -> list[_DatabaseCache]:
    """The configured databases' caches, and any other under <data>/sumdb/ (a node run
    with another --sumdb, or --data without the node's configuration): all of them."""
    out = [_DatabaseCache(db.name, db.store, db.spec.vkey) for db in node.sumdbs.dbs]
    known = {c.name for c in out}
    root = node.config.data / "sumdb"
    for latest in sorted(root.rglob("latest")) if root.is_dir() else []:
        name = latest.parent.relative_to(root).as_posix()
        if latest.is_file() and not any(name == k or name.startswith(k + "/") for k in known):
            store = SumDBStore(latest.parent, node.store.tmp_dir)
            store.open()
            out.append(_DatabaseCache(name, store, None))
            known.add(name)
    return out


def _plan_sumdb(
    db: _DatabaseCache,
    versions: list[tuple[str, str]],
    prev_tree: tlog.Tree | None,
    unchanged: Callable[[str, str], bool],
    warnings: list[str],
) -> tuple[list[tuple[ManifestEntry, Source]], dict[str, Any]]:
    """Lookups, tiles and tree head of one database (in a thread: file reads, tile planning)."""
    store = db.store
    note = store.latest()
    try:
        latest = _tree_of(note) if note is not None else None
    except (tlog.TlogError, UnicodeDecodeError):
        latest = None
    lookups: list[tuple[ManifestEntry, Source]] = []
    needed: set[Tile] = set()
    done_trees: set[int] = set()
    done_leaves: set[int] = set()
    for module, version in versions:
        reply = store.lookup(module, version)
        if reply is None:
            continue
        what = f"{module}@{version}"
        if latest is None or note is None:
            warnings.append(
                f"checksum database {db.name} has no verified tree head here; record of {what} not exported"
            )
            continue
        try:
            rid, _text, signed = tlog.split_lookup(reply)
            tree = _tree_of(signed)
            if tree.n > latest.n or rid >= tree.n:
                raise tlog.TlogError(f"record {rid} / tree {tree.n} do not fit the newest tree {latest.n}")
            tiles: set[Tile] = set()
            if rid >> HEIGHT not in done_leaves:
                tiles.update(tiles_needed_for_record(latest, HEIGHT, rid))
            if tree.n not in done_trees:
                tiles.update(tiles_needed_for_tree_proof(tree, latest, HEIGHT))
        except (tlog.TlogError, UnicodeDecodeError) as e:
            warnings.append(f"checksum database {db.name}: cached record of {what} is unreadable ({e}); not exported")
            continue
        missing = sorted(t.path() for t in tiles - needed if store.tile(t) is None)
        if missing:
            warnings.append(
                f"checksum database {db.name}: tiles {', '.join(missing[:3])} are not cached, so {what} "
                "could not be verified offline from this bundle; its record is left out"
            )
            continue
        done_leaves.add(rid >> HEIGHT)
        done_trees.add(tree.n)
        needed |= tiles
        path = lookup_member(db.name, module, version)
        sha = _sha(reply)
        if not unchanged(path, sha):
            lookups.append(
                (
                    ManifestEntry(path, "sumdb-lookup", len(reply), sha, module, version, db=db.name),
                    _loader(store.lookup, module, version),
                )
            )
    if latest is None or note is None or not lookups:
        return [], {}
    if prev_tree is not None and prev_tree.n <= latest.n:
        proof = set(tiles_needed_for_tree_proof(prev_tree, latest, HEIGHT))
        if any(store.tile(t) is None for t in proof - needed):
            warnings.append(
                f"checksum database {db.name}: tiles proving the earlier bundle's tree is a prefix of this one are not cached"
            )
        else:
            needed |= proof
    tiles_out: list[tuple[ManifestEntry, Source]] = []
    for t in sorted(needed, key=lambda t: (-t.l, t.n, t.w)):
        data = store.tile(t)
        assert data is not None  # checked above; cached tiles are never removed
        path = f"sumdb/{db.name}/{t.path()}"
        sha = _sha(data)
        if not unchanged(path, sha):
            tiles_out.append((ManifestEntry(path, "sumdb-tile", len(data), sha, db=db.name), _loader(store.tile, t)))
    head = [
        (ManifestEntry(f"sumdb/{db.name}/supported", "sumdb-supported", 0, _sha(b""), db=db.name), b""),
        (ManifestEntry(f"sumdb/{db.name}/latest", "sumdb-latest", len(note), _sha(note), db=db.name), note),
    ]
    info = {
        "name": db.name,
        "vkey": db.vkey,
        "tree_size": latest.n,
        "tree_hash": base64.b64encode(latest.hash).decode(),
    }
    return head + tiles_out + lookups, info


def _loader(fn: Callable[..., bytes | None], *args: Any) -> Callable[[], bytes | None]:
    return lambda: fn(*args)


# ---- writing -------------------------------------------------------------------


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


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
    for entry, src in zip(plan.manifest.entries, plan.sources):
        if isinstance(src, Path):
            chunks = _file_chunks(src)
        elif isinstance(src, bytes):
            chunks = once(src)
        else:
            data = src()
            chunks = once(data if data is not None else b"")
        await writer.add(entry.path, entry.size, entry.fetched_at or plan.created_at, _checked(entry, chunks))
    await writer.close()
    return writer.written
