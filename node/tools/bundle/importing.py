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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from node.cache import verify
from node.errors import IntegrityError, ModmeshError
from node.golang import dirhash
from node.tools.bundle.format import (
    BundleError,
    Manifest,
    ManifestEntry,
    Status,
    entry_label,
    parse_module_member,
    parse_sumdb_member,
)
from node.tools.bundle.import_sumdb import DatabaseImport
from node.tools.bundle.tar import TarReader, read_manifest

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

MAX_SMALL = verify.MAX_MOD  # .info, .mod, list, latest, lookups, tree heads, tiles


@dataclass(frozen=True, slots=True)
class Outcome:
    path: str
    kind: str
    status: Status
    module: str = ""
    version: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @property
    def label(self) -> str:
        return entry_label(self.path, self.kind, self.module, self.version)


@dataclass
class Report:
    source: str
    outcomes: list[Outcome] = field(default_factory=list)
    #: Problems with the source as a whole (an unreadable stream, a bad manifest).
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(o.status == "refused" for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        out = {"admitted": 0, "present": 0, "refused": 0, "skipped": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "counts": self.counts(),
            "errors": self.errors,
            "entries": [o.to_json() for o in self.outcomes],
        }

    def to_json_bytes(self) -> bytes:
        """`to_json` encoded a thousand entries at a time: in a thread, it gives the GIL up
        between them (a large report must not stall a node's event loop)."""
        head = json.dumps({"source": self.source, "counts": self.counts(), "errors": self.errors})
        parts = [head[:-1].encode(), b', "entries": [']
        for i in range(0, len(self.outcomes), 1000):
            batch = json.dumps([o.to_json() for o in self.outcomes[i : i + 1000]])[1:-1]
            parts.append((", " if i else "").encode() + batch.encode())
        parts.append(b"]}")
        return b"".join(parts)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Report:
        return cls(
            str(obj.get("source", "")),
            [Outcome(**o) for o in obj.get("entries", [])],
            [str(e) for e in obj.get("errors", [])],
        )


@dataclass
class Member:
    """One entry to import: what the manifest says (None: not listed) and its bytes (once)."""

    name: str
    size: int
    entry: ManifestEntry | None
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
    def __init__(self, node: Node, origin: str, on_entry: Callable[[str], None] | None = None) -> None:
        self.node = node
        self.origin = origin
        self.on_entry = on_entry or (lambda _: None)
        self.report = Report(origin)
        self._sections: dict[str, DatabaseImport] = {}
        self._unknown_dbs: set[str] = set()
        self._modules_started = False
        self._meta_if_missing = False
        #: Called at each step of a long run: gc.freeze inside `_gc_frozen`.
        self.freeze: Callable[[], None] = lambda: None

    def outcome(self, e: ManifestEntry | Member, status: Status, reason: str = "") -> None:
        if isinstance(e, Member):
            self.report.outcomes.append(Outcome(e.name, "unknown", status, reason=reason))
            return
        self.report.outcomes.append(Outcome(e.path, e.kind, status, e.module, e.version, reason))

    # ---- the run -----------------------------------------------------------------

    async def run(self, manifest: Manifest, members: AsyncIterator[Member]) -> Report:
        # A GOMODCACHE's list is the client's own (cached versions only): never over the node's.
        self._meta_if_missing = manifest.origin.get("kind") == "gomodcache"
        expected = manifest.by_path()
        seen: set[str] = set()
        self.freeze()
        try:
            async for m in members:
                self.on_entry(m.name)
                if m.entry is None:
                    self.outcome(m, "refused", "not listed in the bundle's manifest")
                elif m.name in seen:
                    self.outcome(m.entry, "refused", "a second copy of an entry")
                elif m.size != m.entry.size:
                    seen.add(m.name)
                    self.outcome(m.entry, "refused", f"{m.size} bytes, the manifest says {m.entry.size}")
                else:
                    seen.add(m.name)
                    before = len(self.report.outcomes)
                    try:
                        await self._one(m.entry, m.chunks())
                    except BundleError:
                        if len(self.report.outcomes) == before:
                            self.outcome(m.entry, "refused", "the bundle ends inside this entry")
                        raise
        except BundleError as e:
            self.report.errors.append(str(e))
        finally:
            await self._finish_sections()
        for n, (path, missing) in enumerate(expected.items()):
            if path not in seen:
                self.outcome(missing, "refused", "missing from the bundle")
            if n % 1000 == 999:
                self.freeze()
                await asyncio.sleep(0)  # a node importing a large manifest keeps answering
        self._warn_refused()
        return self.report

    def _warn_refused(self) -> None:
        """One line for all refusals, however many (the report names each)."""
        refused = [o for o in self.report.outcomes if o.status == "refused"]
        if refused:
            first = refused[0]
            more = f" (and {len(refused) - 1} more, see the report)" if len(refused) > 1 else ""
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


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """While an import runs, what it has built so far (the manifest's entries, the
    report) is moved out of the garbage collector's way (`gc.freeze`, again at every
    step): it lives as long as the import, and a full collection over 100,000 entries
    holds the GIL for ~0.1 s, stalling a node's event loop. Back to normal afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def import_stream(
    node: Node, reader: TarReader, origin: str, on_entry: Callable[[str], None] | None = None
) -> Report:
    """Import a bundle read from a tar stream."""
    imp = Importer(node, origin, on_entry)
    with _gc_frozen():
        imp.freeze = gc.freeze
        try:
            manifest = await read_manifest(reader, each_chunk=gc.freeze)
        except BundleError as e:
            imp.report.errors.append(str(e))
            return imp.report
        expected = manifest.by_path()

        async def members() -> AsyncIterator[Member]:
            while (m := await reader.next()) is not None:
                yield Member(m.name, m.size, expected.get(m.name), reader.chunks)

        return await imp.run(manifest, members())


async def import_members(
    node: Node,
    manifest: Manifest,
    members: AsyncIterator[Member],
    origin: str,
    on_entry: Callable[[str], None] | None = None,
) -> Report:
    """Import a manifest and its members from elsewhere (a directory)."""
    imp = Importer(node, origin, on_entry)
    with _gc_frozen():
        imp.freeze = gc.freeze
        return await imp.run(manifest, members)
