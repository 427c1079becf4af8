"""The admissions journal (node/cache/journal.py) and the scrub's pacing: pure
properties, and the journal against the real index it mirrors."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.cache import journal
from node.cache.index import Entry, Index
from node.cache.journal import Confirmed, Delete, Journal, Pin, Put, Unpin, decode, encode, fold
from node.cache.scrub import Pacer
from node.errors import StorageFull
from tests.disk import FillingDisk

text = st.text(min_size=1, max_size=40)
sha = st.text("0123456789abcdef", min_size=64, max_size=64)
kinds = st.sampled_from(["info", "mod", "zip"])
puts = st.builds(
    Put,
    text,
    text,
    kinds,
    sha,
    st.integers(0, 1 << 40),
    st.none() | text,
    text,
    st.floats(0, 2e9, allow_nan=False),
    st.booleans(),
)
records = st.one_of(
    puts,
    st.builds(Delete, text, text, kinds),
    st.builds(Confirmed, text, text, kinds, sha),
    st.builds(Pin, text, st.floats(0, 2e9, allow_nan=False)),
    st.builds(Unpin, text),
)


@given(records)
def test_a_record_reads_back_as_written(r: journal.Record) -> None:
    line = encode(r)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line[:-1]) == r


@given(records, st.data())
def test_any_changed_byte_makes_the_line_unreadable_not_wrong(r: journal.Record, data: st.DataObject) -> None:
    line = bytearray(encode(r)[:-1])
    i = data.draw(st.integers(0, len(line) - 1))
    line[i] ^= data.draw(st.integers(1, 255))
    assert decode(bytes(line)) is None  # CRC-32 catches every error of up to 32 bits


@given(st.lists(records, max_size=30), st.lists(st.binary(max_size=60), max_size=5), st.randoms())
@settings(max_examples=100, deadline=None)
def test_damaged_lines_cost_only_themselves(
    tmp_path_factory: pytest.TempPathFactory, rs: list[journal.Record], junk: list[bytes], rnd: random.Random
) -> None:
    lines = [encode(r) for r in rs]
    for j in junk:  # a bad block: garbage where lines were, ended by a newline
        lines.insert(rnd.randint(0, len(lines)), j.replace(b"\n", b"") + b"\n")
    path = tmp_path_factory.mktemp("j") / "index.journal"
    path.write_bytes(b"".join(lines))
    stats = journal.ReadStats()
    assert list(Journal(path).read(0, stats)) == rs
    assert stats.records == len(rs) and stats.damaged_lines <= len(junk)


async def test_a_torn_last_line_is_cut_and_appends_go_on(tmp_path: Path) -> None:
    path = tmp_path / "index.journal"
    a, b = Pin("a/*", 1.0), Pin("b/*", 2.0)
    path.write_bytes(encode(a) + encode(b)[:17])  # the power went mid-write
    j = Journal(path)
    j.open()
    await j.append(Unpin("a/*"))
    j.close()
    assert list(Journal(path).read()) == [a, Unpin("a/*")]


async def test_concurrent_appends_share_fsyncs_and_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(tmp_path / "index.journal")
    j.open()
    writes = []
    real = j._write
    monkeypatch.setattr(j, "_write", lambda data: (writes.append(len(data)), real(data))[1])
    want = [Pin(f"p{i}", float(i)) for i in range(200)]
    await asyncio.gather(*(j.append(r) for r in want))
    await j.aclose()
    assert sorted(Journal(j.path).read(), key=lambda r: r.created_at) == want  # type: ignore[union-attr]
    assert len(writes) < 200  # group commit: one write and one fsync per batch


async def test_a_full_disk_refuses_the_record_and_leaves_no_half_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FillingDisk()
    monkeypatch.setattr(journal, "os", disk)
    j = Journal(tmp_path / "index.journal")
    j.open()
    await j.append(Pin("a", 1.0))
    disk.room = 10
    with pytest.raises(StorageFull):
        await j.append(Pin("b", 2.0))
    disk.room = None
    await j.append(Pin("c", 3.0))
    j.close()
    stats = journal.ReadStats()
    assert list(Journal(j.path).read(0, stats)) == [Pin("a", 1.0), Pin("c", 3.0)] and stats.damaged_lines == 0


# ---- the journal says what the index holds ----------------------------------------------

MODULES = ["example.com/a", "example.com/b"]
ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "confirm", "evict", "pin", "unpin", "remove_blob"]),
        st.sampled_from(MODULES),
        st.sampled_from(["v1.0.0", "v1.1.0"]),
        st.sampled_from(["info", "mod", "zip"]),
        st.sampled_from(["aa" * 32, "bb" * 32, "cc" * 32]),
        st.booleans(),
    ),
    max_size=40,
)


@given(ops)
@settings(max_examples=60, deadline=None)
def test_the_journal_folds_to_exactly_the_index(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, str, str, str, bool]]
) -> None:
    asyncio.run(_fold_matches_index(steps, tmp_path_factory.mktemp("idx")))


async def _fold_matches_index(steps: list[tuple[str, str, str, str, str, bool]], tmp: Path) -> None:
    j = Journal(tmp / "index.journal")
    j.open()
    index = Index(tmp / "index.sqlite", j)
    await index.open()
    try:
        for op, m, v, k, digest, flag in steps:
            if op == "put":
                await index.put(Entry(m, v, k, digest, 10, "h1:x", "up", 1.0, unverified=flag))
            elif op == "delete":
                await index.delete(m, v, k)
            elif op == "confirm":
                e = await index.get(m, v, k)
                if e is not None:
                    await index.mark_verified(e)
            elif op == "evict":
                await index.delete_entries([(m, v, k), (m, "v1.1.0", "zip")])
            elif op == "pin":
                await index.add_pin(m, 1.0)
            elif op == "unpin":
                await index.remove_pin(m)
            else:
                await index.remove_blob(digest)
        state = fold(j.read())
        rows = await index.changes_since(0, 1000)
        assert {(e.module, e.version, e.kind): (e.sha256, e.unverified) for e in rows} == {
            key: (p.sha256, p.unverified) for key, p in state.entries.items()
        }
        assert {p for p, _ in await index.pins()} == set(state.pins)
    finally:
        await index.aclose()
        j.close()


# ---- the scrub's pace -------------------------------------------------------------------


@given(st.lists(st.integers(1, 4 << 20), max_size=50), st.integers(1 << 10, 64 << 20))
@settings(max_examples=200)
def test_the_pacer_never_lets_reads_outrun_the_rate(reads: list[int], rate: int) -> None:
    """Reading `n` bytes then spending them: by every read, bytes read so far are at most
    rate * elapsed + the read itself."""
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def run() -> None:
        pacer = Pacer(rate, clock=lambda: now[0], sleep=sleep)
        total = 0
        for n in reads:
            total += n  # the read happened at now[0]
            assert total <= rate * now[0] + n + 1e-6 * rate
            await pacer.spend(n)

    asyncio.run(run())


def test_two_processes_append_to_one_journal(tmp_path: Path) -> None:
    """A node and `modmesh warm --data` on one data directory both append: every record
    of both lands whole (each write holds the file's flock)."""
    path = tmp_path / "index.journal"

    def writer(tag: str) -> None:
        async def run() -> None:
            j = Journal(path)
            j.open()
            for i in range(100):
                await asyncio.gather(*(j.append(Pin(f"{tag}{i}-{k}", float(i))) for k in range(3)))
            await j.aclose()

        asyncio.run(run())

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = journal.ReadStats()
    got = {r.pattern for r in Journal(path).read(0, stats)}  # type: ignore[union-attr]
    assert stats.damaged_lines == 0 and len(got) == 600
