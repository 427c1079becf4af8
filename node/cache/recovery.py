"""Opening the index so that a node always starts: check it, catch up with the
journal, and rebuild it from the journal and the blobs when SQLite finds it damaged.

    open_index
    ├── the index opens and `PRAGMA quick_check` says ok
    │   ├── replay the journal from where the index last caught up (a crash or a power
    │   │   cut may have lost the index's last transactions, never the journal's)
    │   └── if no other process uses the data directory (the journal is rewritten
    │       only then): an index from before the journal writes everything it holds
    │       to it; a journal grown well past the index is compacted
    └── SQLite reports damage (or the file is no database)
        └── move the index files aside to <data>/damaged/, open a new index, and insert
            every versioned file and pin the journal holds whose blob is in the store
            with its recorded size. Those rows are marked never checked: each blob is
            hashed before it is served (integrity.py) and the scrub hashes them all soon.

Lists, `@latest`, queries and popularity are not in the journal: they are fetched or
counted again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.cache import journal
from node.cache.index import Index, IndexDamaged
from node.cache.journal import Journal
from node.cache.store import BlobStore

log = logging.getLogger(__name__)

#: Compact the journal when it is this many times what the index would write, and
#: at least this big.
COMPACT_RATIO = 4
COMPACT_MIN = 4 << 20
_RECORD_GUESS = 300  # bytes of one Put line
#: Journal records replayed per transaction by a rebuild.
REPLAY_BATCH = 5000


@dataclass
class Recovery:
    """What opening the index took."""

    rebuilt: bool = False
    #: What SQLite said was wrong (rebuilt) or why a rebuild was asked for.
    damage: str = ""
    #: Where the damaged index files went.
    moved_to: str = ""
    #: Rows inserted from the journal (rebuilt), or journal records replayed (caught up).
    recovered: int = 0
    #: Files the journal names whose blob is gone or has the wrong size.
    missing: int = 0
    #: Journal lines skipped because their checksum or shape was wrong.
    damaged_lines: int = 0
    pins: int = 0
    at: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def open_index(index: Index, jrnl: Journal, store: BlobStore) -> Recovery:
    """Open `index` (with `jrnl` attached), repairing what can be repaired; raises only
    when the disk itself fails."""
    started = time.monotonic()
    jrnl.open()
    index.journal = jrnl
    try:
        await index.open()
    except IndexDamaged as e:
        log.error("index %s is damaged (%s): rebuilding it from the journal and the blobs", index.path, e)
        rec = await rebuild(index, jrnl, store, str(e))
    else:
        rec = Recovery()
        await _catch_up(index, jrnl, store, rec)
        # Rewriting the journal must not race another process's appends: only alone.
        with store.alone() as alone:
            if not alone:
                pass
            elif await index.state("journal_complete") != "1":
                # An index from before the journal: write everything it holds.
                await _write_journal(index, jrnl)
                await index.set_state("journal_complete", "1")
            else:
                await _maybe_compact(index, jrnl)
    await index.set_state("journal_pos", str(jrnl.size))
    await index.db.commit()
    rec.at = time.time()
    rec.seconds = round(time.monotonic() - started, 3)
    return rec


async def rebuild(index: Index, jrnl: Journal, store: BlobStore, why: str) -> Recovery:
    """Move the index aside and build a new one from the journal and the blobs (the
    index must not be open; the journal must be). The journal is replayed in order, a
    batch at a time: memory holds one batch and the files found missing."""
    await index.close_quietly()
    rec = Recovery(rebuilt=True, damage=why)
    rec.moved_to = str(move_aside(index.path))
    await index.open()  # a new file: a new epoch, so peers read its change log afresh
    stats = journal.ReadStats()
    records = jrnl.read(0, stats)
    #: Files whose last record admitted a blob that is gone or the wrong size (unless a
    #: later record deletes them or admits them again).
    lost: set[tuple[str, str, str]] = set()
    while batch := await asyncio.to_thread(lambda: list(itertools.islice(records, REPLAY_BATCH))):
        sizes = await asyncio.to_thread(store.sizes, {r.sha256 for r in batch if isinstance(r, journal.Put)})
        keep: list[journal.Record] = []
        for r in batch:
            if isinstance(r, journal.Put | journal.Delete):
                key = (r.module, r.version, r.kind)
                if isinstance(r, journal.Put) and sizes.get(r.sha256) != r.size:
                    lost.add(key)
                    continue
                lost.discard(key)
            keep.append(r)
        await index.apply_many(keep)
    rec.damaged_lines = stats.damaged_lines
    rec.missing = sum([await index.get(*key) is None for key in lost])
    rec.recovered, rec.pins = (await index.totals()).files, len(await index.pins())
    await index.set_state("journal_complete", "1")
    with store.alone() as alone:
        if alone:  # the journal now says exactly what the index holds
            await jrnl.rewrite_from(index.journal_batches())
    log.warning(
        "index rebuilt: %d files recovered, %d pins, %d files lost (blob missing or wrong size), "
        "%d damaged journal lines; the damaged index is in %s; every recovered blob is hashed "
        "before it is served",
        rec.recovered,
        rec.pins,
        rec.missing,
        rec.damaged_lines,
        rec.moved_to,
    )
    return rec


def move_aside(path: Path) -> Path:
    """Move the index and its WAL files to <data>/damaged/index-<time>/."""
    dest = path.parent / "damaged" / time.strftime("index-%Y%m%dT%H%M%SZ", time.gmtime())
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            shutil.move(src, dest / src.name)
    return dest


async def _write_journal(index: Index, jrnl: Journal) -> None:
    n = await jrnl.rewrite_from(index.journal_batches())
    log.info("journal %s written from the index (%d records)", jrnl.path, n)


async def _catch_up(index: Index, jrnl: Journal, store: BlobStore, rec: Recovery) -> None:
    """Apply the journal's records the index may have lost (from its last known
    position). Idempotent: a record already in the index changes nothing."""
    pos = int(await index.state("journal_pos") or 0)
    if pos > jrnl.size:
        pos = 0  # a journal replaced behind the index's back: read it all
    stats = journal.ReadStats()
    for r in jrnl.read(pos, stats):
        if isinstance(r, journal.Put):
            if await index.get(r.module, r.version, r.kind) is not None:
                continue
            if (await asyncio.to_thread(store.sizes, [r.sha256])).get(r.sha256) != r.size:
                rec.missing += 1
                continue
        rec.recovered += await index.apply(r)
    rec.damaged_lines = stats.damaged_lines
    if rec.recovered:
        log.warning("index caught up with the journal: %d changes it had lost were applied", rec.recovered)


async def _maybe_compact(index: Index, jrnl: Journal) -> None:
    rows = (await index.totals()).files
    if jrnl.size > max(COMPACT_MIN, COMPACT_RATIO * _RECORD_GUESS * rows):
        before = jrnl.size
        await jrnl.rewrite_from(index.journal_batches())
        log.info("journal compacted: %d -> %d bytes", before, jrnl.size)
