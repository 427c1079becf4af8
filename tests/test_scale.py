"""Cost that does not grow with the store (issue 18): running totals kept on write, the
periodic work reads no more of the index at 10x the files, scans run in batches.

Bounds, not timings: SQLite's own count of the instructions it ran (a progress handler
called every instruction), and Python's own count of the memory it allocated
(tracemalloc), each compared at two sizes of the same store.
"""

from __future__ import annotations

import asyncio
import builtins
import gc
import hashlib
import io
import os
import sqlite3
import threading
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.cache.index import ACCESS_FLUSH, ACCESS_KEYS, FLUSH_ROWS, Entry, Index
from node.cache.protocol import ModRequest
from node.server.dashboard import top_modules
from node.service import Node
from node.sumdb.cache import SumDBStore
from node.tools.bundle.export import plan_export, write_bundle
from node.tools.bundle.selection import Selection
from tests.modules import big_module, module_set
from tests.node_fixtures import NodeFactory
from tests.sumdb_fixture import FakeSumDB

# ---- running totals --------------------------------------------------------------------

modules = st.sampled_from(["a.example/m", "b.example/m", "c.example/x/v2"])
versions = st.sampled_from(["v1.0.0", "v1.1.0", "v2.0.0-pre"])
kinds = st.sampled_from(["info", "mod", "zip"])
bodies = st.integers(0, 5)  # few distinct bodies: rows share blobs, as .mod files do
steps = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "delete", "evict", "quarantine", "confirm", "hit"]),
        modules,
        versions,
        kinds,
        bodies,
        st.booleans(),
    ),
    max_size=40,
)


def _sha(body: int) -> str:
    return hashlib.sha256(b"body %d" % body).hexdigest()


def _size(body: int) -> int:
    return 100 + 37 * body


OLD_TOP = (
    "SELECT module, SUM(hits), COUNT(DISTINCT version), COUNT(*), SUM(size), MAX(COALESCE(last_access, fetched_at))"
    " FROM entries GROUP BY module ORDER BY SUM(hits) DESC, SUM(size) DESC, module"
)


@given(steps)
@settings(max_examples=60, deadline=None)
def test_running_totals_equal_a_recount_after_any_changes(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, str, str, int, bool]]
) -> None:
    asyncio.run(_totals_match(ops, tmp_path_factory.mktemp("idx")))


async def _totals_match(ops: list[tuple[str, str, str, str, int, bool]], tmp: Path) -> None:
    index = Index(tmp / "index.sqlite")
    await index.open()
    try:
        t = 1000.0
        for op, m, v, k, body, flag in ops:
            t += 1
            if op == "put":
                await index.put(Entry(m, v, k, _sha(body), _size(body), None, "up", t, unverified=flag))
            elif op == "delete":
                await index.delete(m, v, k)
            elif op == "evict":
                await index.delete_entries([(m, v, k), (m, "v1.1.0", "mod")])
            elif op == "quarantine":
                await index.remove_blob(_sha(body))
            elif op == "confirm":
                e = await index.get(m, v, k)
                if e is not None:
                    await index.mark_verified(e)
            else:
                index.touch(m, v, k, t)
                if flag:
                    await index.flush_access()
        await index.flush_access()
        rows = await index.changes_since(0, 10_000)
        totals = await index.totals()
        blobs = {e.sha256: e.size for e in rows}
        assert (totals.files, totals.blobs, totals.bytes) == (len(rows), len(blobs), sum(blobs.values()))
        async with index.db.execute(OLD_TOP) as cur:
            old = [(m, h, v, f, b, u) for m, h, v, f, b, u in await cur.fetchall()]
        new = await top_modules(index.db, 100)
        assert [(r["module"], r["hits"], r["versions"], r["files"], r["bytes"], r["last_used"]) for r in new] == old
        assert not await index.recount()  # nothing had drifted
    finally:
        await index.aclose()


async def test_a_flush_of_more_keys_than_one_transaction_writes_every_hit(tmp_path: Path) -> None:
    """Buffered hits are written FLUSH_ROWS per transaction: every key's hits and last
    access arrive, and the per-module figures agree with a recount."""
    index = Index(tmp_path / "index.sqlite")
    await index.open()
    try:
        n = 2 * FLUSH_ROWS + 7
        for i in range(n):
            await index.insert(Entry(f"a.example/m{i % 5}", f"v1.0.{i}", "info", _sha(i), 10, None, "up", 1.0), 1.0)
        for i in range(n):
            for _ in range(1 + i % 3):
                index.touch(f"a.example/m{i % 5}", f"v1.0.{i}", "info", 100.0 + i)
        await index.flush_access()
        async with index.db.execute("SELECT version, hits, last_access FROM entries") as cur:
            got = {v: (h, t) for v, h, t in await cur.fetchall()}
        assert got == {f"v1.0.{i}": (1 + i % 3, 100.0 + i) for i in range(n)}
        assert not await index.recount()
    finally:
        await index.aclose()


async def test_hits_are_written_once_a_minute_and_serve_checks_at_every_tick(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    """At the defaults: a stats tick writes the serve checks, and the buffered hits only
    once ACCESS_FLUSH has passed since they were last written (random keys meet most
    files again within a minute: one row each per minute, not per 5-second tick)."""
    node = await make_node("off", data=tmp_path / "n")
    await _fill(node, 10)
    e = await node.index.get("example.com/m1", "v1.0.1", "info")
    assert e is not None
    node.index.touch(e.module, e.version, e.kind, 5000.0)
    node.index.note_checked(e.sha256, 5000.0)
    await node.stats_tick()
    row = await node.index.get(e.module, e.version, e.kind)
    assert row is not None and row.checked_boot == node.index.boot  # the check is written
    async with node.index.db.execute("SELECT hits FROM entries WHERE serial = ?", (e.serial,)) as cur:
        assert (await cur.fetchone()) == (0,)  # the hit waits
    node.index._flushed -= ACCESS_FLUSH
    await node.stats_tick()
    async with node.index.db.execute("SELECT hits, last_access FROM entries WHERE serial = ?", (e.serial,)) as cur:
        assert (await cur.fetchone()) == (1, 5000.0)


async def test_hits_of_many_files_are_written_at_once() -> None:
    """The buffer is bounded: once ACCESS_KEYS files have hits waiting, they are due at
    the next tick (which then writes them: the test above), whenever they were last written."""
    index = Index(Path("/nonexistent/index.sqlite"))
    for i in range(ACCESS_KEYS - 1):
        index.touch(f"example.com/m{i}", "v1.0.0", "info", 1.0)
    assert not index.access_due()
    index.touch("example.com/last", "v1.0.0", "info", 1.0)
    assert index.access_due()


async def test_a_row_read_in_a_worker_thread_from_an_index_given_by_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`modmesh serve --data data`: the hit path's own read connection opens it too."""
    monkeypatch.chdir(tmp_path)
    index = Index(Path("index.sqlite"))
    await index.open()
    try:
        e = Entry("a.example/m", "v1.0.0", "info", _sha(1), 10, None, "up", 1.0)
        await index.insert(e, 1.0)
        got = await asyncio.to_thread(index.get_blocking, "a.example/m", "v1.0.0", "info")
        assert got is not None and got.sha256 == e.sha256
    finally:
        await index.aclose()


async def test_an_index_from_before_the_running_totals_is_counted_once(tmp_path: Path) -> None:
    """An upgraded node's index gets its totals, blob and module figures at the first open."""
    index = Index(tmp_path / "index.sqlite")
    await index.open()
    for i in range(20):
        await index.put(Entry(f"m{i % 3}.example/x", f"v1.{i}.0", "mod", _sha(i % 4), _size(i % 4), None, "up", 1.0))
    await index.aclose()
    with sqlite3.connect(tmp_path / "index.sqlite") as db:  # as an index written before them
        db.executescript(
            "DROP TRIGGER entries_added; DROP TRIGGER entries_removed; DROP TRIGGER entries_used;"
            " DROP TRIGGER blobs_added; DROP TRIGGER blobs_removed; DROP TABLE blobs; DROP TABLE totals;"
            " DROP TABLE modules;"
        )
    index = Index(tmp_path / "index.sqlite")
    await index.open()
    try:
        totals = await index.totals()
        assert (totals.files, totals.blobs, totals.bytes) == (20, 4, sum(_size(b) for b in range(4)))
        assert [r["module"] for r in await top_modules(index.db)] == ["m0.example/x", "m1.example/x", "m2.example/x"]
        await index.delete("m0.example/x", "v1.0.0", "mod")
        assert (await index.totals()).files == 19  # and kept from now on
        assert not await index.recount()
    finally:
        await index.aclose()


# ---- the periodic work reads the same whatever the store's size -------------------------


async def _fill(node: Node, n: int) -> None:
    """n index rows (no blobs: the periodic work reads only the index), through Index.put."""
    entries = [
        Entry(f"example.com/m{i % 97}", f"v1.0.{i}", "info", _sha(i), 60, None, "up", 1000.0 + i) for i in range(n)
    ]
    for i in range(0, n, 500):
        await asyncio.gather(*(node.index.put(e) for e in entries[i : i + 500]))


async def _instructions(node: Node, work: Callable[[], Awaitable[Any]]) -> int:
    """SQLite virtual-machine instructions the index ran during `work`."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    await node.index.db.set_progress_handler(tick, 1)
    try:
        await work()
    finally:
        await node.index.db.set_progress_handler(None, 1)
    return count


async def test_the_stats_tick_reads_the_same_at_ten_times_the_files(make_node: NodeFactory, tmp_path: Path) -> None:
    """The 5-second tick (totals for the metrics and the cap, buffered hits written) and the
    dashboard's top modules cost the same number of SQLite instructions at 300 and 3,000
    files: no statement scans the entries."""
    cost = {}
    for n in (300, 3000):
        node = await make_node("off", data=tmp_path / f"n{n}")
        await _fill(node, n)
        for i in range(5):  # the same few hits at both sizes
            node.index.touch(f"example.com/m{i}", f"v1.0.{i}", "info", 5000.0)
        node.index._flushed -= ACCESS_FLUSH  # due: this tick writes them
        ticks = await _instructions(node, node.stats_tick)
        assert not node.index._access
        top = await _instructions(node, lambda: top_modules(node.index.db))  # noqa: B023
        cost[n] = (ticks, top)
        assert node.store_bytes == 60 * n
    assert cost[3000][0] <= cost[300][0] * 1.2, cost
    assert cost[3000][1] <= cost[300][1] * 1.2, cost


# ---- export streams: its memory is the same at 4x the files ----------------------------


async def _fill_blobs(node: Node, n: int) -> None:
    """n cached 60-byte .info files, each its own blob on disk (written plainly: no fsync)."""
    entries = []
    for i in range(n):
        body = b"%059d\n" % i
        sha = hashlib.sha256(body).hexdigest()
        path = node.store.path_for(sha)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(body)
        entries.append(Entry(f"example.com/m{i % 97}", f"v1.0.{i}", "info", sha, 60, None, "up", 1000.0 + i))
    for i in range(0, n, 500):
        await asyncio.gather(*(node.index.put(e) for e in entries[i : i + 500]))


async def test_export_memory_is_the_same_at_four_times_the_files(make_node: NodeFactory, tmp_path: Path) -> None:
    """Planning and writing a bundle of everything allocate as much at 6,000 files as at
    1,500 (the plan and the manifest wait on disk, the index is read a page at a time),
    and leave no temp file behind."""
    peak = {}
    for n in (1500, 6000):
        node = await make_node("off", data=tmp_path / f"n{n}", scrub_period=0.0)  # no reads but the export's
        await _fill_blobs(node, n)
        gc.collect()
        gc.freeze()  # cyclic garbage is collected at the same pace whatever ran before
        sent = 0

        async def sink(data: bytes) -> None:
            nonlocal sent
            sent += len(data)

        tracemalloc.start()
        try:
            plan = await plan_export(node, Selection())
            try:
                assert plan.summary.entries == n and plan.summary.counts == {"info": n}
                assert await write_bundle(plan, sink) == sent == plan.tar_size()
            finally:
                plan.close()
            peak[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            gc.unfreeze()
        assert list(node.store.tmp_dir.iterdir()) == []
    assert peak[6000] <= peak[1500] * 1.25, peak


# ---- hits read the disk in a thread, never on the event loop ----------------------------


class LoopIO:
    """Records every open or stat of a file under `root` made on the event loop's thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root)
        self.loop_thread = threading.current_thread()
        self.seen: list[str] = []
        for owner, name in ((io, "open"), (builtins, "open"), (os, "stat")):
            monkeypatch.setattr(owner, name, self._watch(getattr(owner, name)))

    def _watch(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def watched(path: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is self.loop_thread and isinstance(path, (str, os.PathLike)):
                name = os.fspath(path)
                if isinstance(name, str) and name.startswith(self.root):
                    self.seen.append(name)
            return real(path, *args, **kwargs)

        return watched


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


M = "example.com/cold"


async def test_hits_not_in_memory_read_the_store_off_the_event_loop(
    fake_proxy: Any, make_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit whose bytes are not in memory (a store larger than the memory cache) reads
    and checks its file in a thread: the first hit of a run (hashed, check_on_serve at its
    default) and the later ones, small files and a zip."""
    files = big_module(M, "v1.0.0", 200 << 10)
    up = await fake_proxy(module_set((M, "v1.0.0", files)))
    node = await make_node(up.url, data=tmp_path / "data")
    for kind, want in zip(("info", "mod", "zip"), files):
        assert await _get(f"{node.url}/{M}/@v/v1.0.0.{kind}") == (200, want)
    await node.aclose()
    node = await make_node(up.url, data=tmp_path / "data")  # a new run: each blob is checked once
    on_loop = LoopIO(monkeypatch, node.store.blob_dir)
    for _ in range(2):
        for kind, want in zip(("info", "mod", "zip"), files):
            e = await node.index.get(M, "v1.0.0", kind)
            assert e is not None
            node.proxy.forget(ModRequest(M, "v1.0.0", kind))  # not in memory
            assert await _get(f"{node.url}/{M}/@v/v1.0.0.{kind}") == (200, want)
    assert node.metrics.registry.get_sample_value("modmesh_blobs_checked_total", {"by": "serve"}) == 3
    assert on_loop.seen == []
    assert up.count("/@v/v1.0.0.zip") == 1  # every request after the first was a hit


async def test_a_hit_read_off_the_loop_sees_files_stored_after_the_first(
    fake_proxy: Any, make_node: NodeFactory
) -> None:
    """Row and blob of a hit not in memory are read in one trip to a worker thread, on a
    connection of their own: it sees every file stored since it opened (no old snapshot),
    so a file just stored is a hit, not fetched again."""
    versions = [f"v1.0.{i}" for i in range(3)]
    up = await fake_proxy(module_set(*((M, v, big_module(M, v, 1 << 10)) for v in versions)))
    node = await make_node(up.url)
    for v in versions:
        assert (await _get(f"{node.url}/{M}/@v/{v}.mod"))[0] == 200  # stored
        e = await node.index.get(M, v, "mod")
        assert e is not None
        node.proxy.forget(ModRequest(M, v, "mod"))  # memory lost it: read from the store
        assert await _get(f"{node.url}/{M}/@v/{v}.mod") == (200, big_module(M, v, 1 << 10)[1])
        assert up.count(f"/@v/{v}.mod") == 1


async def test_checksum_database_lookups_are_read_and_written_off_the_event_loop(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached checksum-database lookup is read (and a new one written) in a thread."""
    loop_thread = threading.current_thread()
    on_loop: list[str] = []
    for name in ("lookup", "put_lookup"):
        real = getattr(SumDBStore, name)

        def spy(self: SumDBStore, *args: Any, _real: Any = real, _name: str = name) -> Any:
            if threading.current_thread() is loop_thread:
                on_loop.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(SumDBStore, name, spy)
    db = FakeSumDB("sum.example.test")
    db.add(M, "v1.0.0", "h1:" + "A" * 43 + "=", "h1:" + "B" * 43 + "=")
    await db.start()
    try:
        node = await make_node("off", sumdb=(f"{db.vkey} {db.url}",))
        url = f"{node.url}/sumdb/{db.name}/lookup/{M}@v1.0.0"
        first, second = await _get(url), await _get(url)
        assert first[0] == 200 and second == first
        assert db.count(f"/lookup/{M}@v1.0.0") == 1
        assert on_loop == []
    finally:
        await db.stop()


# ---- small files packed ----------------------------------------------------------------


def test_lookups_are_packed_and_lookup_files_from_before_move_in(tmp_path: Path) -> None:
    """One SQLite database holds a checksum database's lookups (not a file, a 4 KiB block
    and an fsync per version); a cache's lookup files from before are moved into it."""
    root = tmp_path / "sumdb" / "sum.example.test"
    old = root / "lookup" / "example.com" / "!upper@v1.0.0"  # example.com/Upper, escaped
    old.parent.mkdir(parents=True)
    old.write_bytes(b"reply from before")
    store = SumDBStore(root, tmp_path)
    store.open()
    try:
        assert store.lookup("example.com/Upper", "v1.0.0") == b"reply from before"
        for i in range(300):
            store.put_lookup("example.com/m", f"v1.0.{i}", b"reply %d" % i)
        assert store.lookup("example.com/m", "v1.0.7") == b"reply 7"
        assert store.lookup("example.com/m", "v9.0.0") is None
        assert {p.name for p in root.iterdir()} <= {"lookups.sqlite", "lookups.sqlite-wal", "lookups.sqlite-shm"}
        assert len(list(store.lookups())) == 301
    finally:
        store.close()
    store = SumDBStore(root, tmp_path)  # and kept
    store.open()
    try:
        assert store.lookup("example.com/m", "v1.0.299") == b"reply 299"
    finally:
        store.close()
