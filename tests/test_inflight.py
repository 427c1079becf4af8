"""The streaming core (node/inflight.py, node/spool.py) under random interleavings.

A hypothesis state machine drives a real Download over a real Spool (a temp file
in a real store, or memory after a "disk full" switch) and several readers
running the real `send` loop into sinks that take bytes only when the machine
lets them. Download progress, restarts, the move to memory, readers joining,
draining and stalling, verification and the finish all interleave at random.
Whatever happens, each reader ends with the whole file or an abort: never a
clean end of a short body, never a wait that cannot end.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node.cache import store as store_module
from node.cache.index import Entry
from node.cache.inflight import Aborted, Download, Transfer, send
from node.cache.protocol import ModRequest
from node.cache.spool import MemoryBudget, Spool
from node.cache.store import BlobStore
from node.errors import StorageFull, UpstreamError
from tests.disk import FillingDisk

HOLDBACK = 7
CHUNK = 5
REQ = ModRequest("example.com/m", "v1.0.0", "zip")


class GatedSink:
    """A client that takes bytes only as fast as the machine's `credit` allows."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.credit = 0
        self._more = asyncio.Event()

    def give(self, n: int) -> None:
        self.credit += n
        self._more.set()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while self.credit <= 0:
                self._more.clear()
                await self._more.wait()
            n = min(self.credit, len(view))
            self.got += view[:n]
            self.credit -= n
            view = view[n:]


@dataclass
class Reader:
    transfer: Transfer
    sink: GatedSink
    task: asyncio.Task[int]
    joined_at: int  # the download's attempt when it joined
    outcome: str = "running"  # running, whole, aborted, error
    error: BaseException | None = None


@dataclass
class Attempt:
    data: bytes
    written: int = 0


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    tmp: Path
    store: BlobStore
    dl: Download
    attempts: list[Attempt] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)


class StreamingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        loop = asyncio.new_event_loop()
        tmp = Path(tempfile.mkdtemp(prefix="inflight-"))
        store = BlobStore(tmp)
        store.open()

        async def make() -> Download:
            return Download(REQ, Spool(store, MemoryBudget(1 << 20)))

        dl = loop.run_until_complete(make())
        self.w = World(loop, tmp, store, dl)
        self.outcome: str | None = None  # "ok" or "failed" once finished
        self.disk = FillingDisk()
        store_module.os = self.disk  # type: ignore[attr-defined]  # the OS boundary only

    # ---- helpers ------------------------------------------------------------

    def settle(self) -> None:
        """Let every task run until each reader is done or waits (for credit or bytes)."""
        readers = self.w.readers

        async def spin() -> None:
            for _ in range(200):
                await asyncio.sleep(0)
                if all(r.task.done() or r.sink.credit <= 0 for r in readers):
                    break
            for _ in range(3):
                await asyncio.sleep(0)

        self.w.loop.run_until_complete(spin())
        for r in readers:
            if r.outcome == "running" and r.task.done():
                exc = r.task.exception()
                if exc is None:
                    r.outcome = "whole"
                elif isinstance(exc, Aborted):
                    r.outcome = "aborted"
                else:
                    r.outcome, r.error = "error", exc
                r.transfer.close()

    @property
    def attempt(self) -> Attempt | None:
        return self.w.attempts[-1] if self.w.attempts else None

    # ---- the download --------------------------------------------------------

    @initialize(data=st.binary(min_size=1, max_size=60))
    def first_source(self, data: bytes) -> None:
        self.begin(data)

    @initialize()
    def first_client(self) -> None:
        self.join()

    @precondition(lambda self: self.outcome is None and self.attempt is not None and not self.attempt.data)
    @rule(data=st.binary(min_size=1, max_size=60))
    def next_source(self, data: bytes) -> None:
        """The next source after an abandoned one starts sending."""
        self.begin(data)

    def begin(self, data: bytes) -> None:
        self.w.dl.begin(len(data))
        self.w.attempts.append(Attempt(data))
        self.settle()

    @precondition(lambda self: self.outcome is None and self.attempt is not None)
    @rule(n=st.integers(min_value=1, max_value=25))
    def progress(self, n: int) -> None:
        a = self.attempt
        assert a is not None
        piece = a.data[a.written : a.written + n]
        if not piece:
            return
        try:
            self.w.dl.write(piece)
        except StorageFull:
            return
        a.written += len(piece)
        self.settle()

    @precondition(lambda self: self.outcome is None and self.attempt is not None)
    @rule()
    def source_fails_midway(self) -> None:
        """The source broke: fall through if no client has bytes yet, else fail."""
        if self.w.dl.abandon():
            self.w.attempts.append(Attempt(b""))  # nothing until the next source begins
        else:
            self.finish(ok=False)
        self.settle()

    @precondition(lambda self: self.outcome is None and self.attempt is not None)
    @rule()
    def disk_fills(self) -> None:
        """The next write finds the disk full: the spool moves to memory."""
        self.disk.room = 0

    @precondition(
        lambda self: (
            self.outcome is None
            and self.attempt is not None
            and self.attempt.data
            and self.attempt.written == len(self.attempt.data)
        )
    )
    @rule()
    def verified(self) -> None:
        self.finish(ok=True)
        self.settle()

    @precondition(lambda self: self.outcome is None)
    @rule()
    def refused(self) -> None:
        """Verification failed, or the source broke with no other to ask."""
        self.finish(ok=False)
        self.settle()

    def finish(self, ok: bool) -> None:
        dl = self.w.dl
        if ok:
            self.w.loop.run_until_complete(dl.spool.commit())
            dl.result.set_result(Entry(REQ.module, REQ.version, REQ.kind, dl.spool.sha256, dl.written, None, "t", 0.0))
        else:
            dl.result.set_exception(UpstreamError("the download failed"))
            dl.result.exception()
        dl.spool.release()  # the download's own claim ends with it
        dl.notify()
        self.outcome = "ok" if ok else "failed"

    # ---- the clients ---------------------------------------------------------

    @precondition(lambda self: self.outcome is None and len(self.w.readers) < 4)
    @rule()
    def join(self) -> None:
        t = Transfer(self.w.dl)
        sink = GatedSink()
        task = self.w.loop.create_task(send(t, sink, holdback=HOLDBACK, chunk=CHUNK))
        self.w.readers.append(Reader(t, sink, task, len(self.w.attempts)))
        self.settle()

    @precondition(lambda self: bool(self.w.readers))
    @rule(i=st.integers(min_value=0, max_value=3), n=st.integers(min_value=1, max_value=40))
    def drain(self, i: int, n: int) -> None:
        r = self.w.readers[i % len(self.w.readers)]
        r.sink.give(n)
        self.settle()

    @rule()
    def time_passes(self) -> None:
        self.settle()

    # ---- what must always hold -----------------------------------------------

    @invariant()
    def readers_see_a_prefix_and_never_the_unverified_tail(self) -> None:
        a = self.attempt
        current = a.data[: a.written] if a is not None else b""
        for r in self.w.readers:
            assert r.outcome != "error", repr(r.error)
            got = bytes(r.sink.got)
            if got:
                assert current.startswith(got), "a reader got bytes that are not the file's"
            if self.outcome != "ok" and got:
                assert len(got) <= max(0, len(current) - HOLDBACK), "unverified tail sent"
            if r.outcome == "whole":
                assert self.outcome == "ok" and got == current, "a clean end without the whole file"
            if r.outcome == "aborted":
                assert self.outcome == "failed", "aborted although the download succeeded"

    def teardown(self) -> None:
        try:
            if self.outcome is None:
                a = self.attempt
                self.finish(ok=a is not None and a.written == len(a.data) and a.data != b"")
            for r in self.w.readers:
                r.sink.give(1 << 30)
            self.settle()
            for r in self.w.readers:
                assert r.outcome in ("whole", "aborted"), f"a reader is left {r.outcome}: {r.error!r}"
                if self.outcome == "ok":
                    a = self.attempt
                    assert a is not None and r.outcome == "whole" and bytes(r.sink.got) == a.data
                else:
                    assert r.outcome == "aborted"
            assert self.w.dl.spool._refs == 0, "a claim on the spool was never released"
            assert not any(self.w.store.tmp_dir.iterdir()), "a temp file outlived the download"
        finally:
            store_module.os = os  # type: ignore[attr-defined]
            for r in self.w.readers:
                r.task.cancel()
            self.w.loop.run_until_complete(asyncio.sleep(0))
            self.w.loop.close()
            self.w.store.close()
            shutil.rmtree(self.w.tmp, ignore_errors=True)


StreamingMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_streaming_state_machine = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")(
    StreamingMachine.TestCase
)


# ---- the spool's ways out of the store ------------------------------------------------


class NoSpaceFor:
    """`os` for node/store.py where the named calls fail with ENOSPC."""

    def __init__(self, *calls: str) -> None:
        self.calls = set(calls)

    def __getattr__(self, name: str) -> object:
        if name in self.calls:

            def fail(*args: object, **kwargs: object) -> object:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            return fail
        return getattr(os, name)


def _store(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path)
    store.open()
    return store


def test_spool_that_cannot_even_create_its_temp_file_keeps_bytes_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    monkeypatch.setattr(store_module, "os", NoSpaceFor("open"))  # no inode left
    causes: list[str] = []
    spool = Spool(store, MemoryBudget(100), causes.append)
    spool.write(b"abc")
    spool.write(b"defg")
    assert spool.in_memory and spool.read(0, 100) == b"abcdefg" and spool.read(2, 3) == b"cde"
    assert causes == ["disk full (ENOSPC)"] and spool.passthrough == causes[0]
    assert asyncio.run(spool.commit()) is None
    assert spool.sha256 == hashlib.sha256(b"abcdefg").hexdigest()
    spool.release()
    assert not any(store.tmp_dir.iterdir())


def test_spool_moves_to_memory_when_the_disk_fills_and_respects_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    budget = MemoryBudget(10)
    disk = FillingDisk()
    monkeypatch.setattr(store_module, "os", disk)
    spool = Spool(store, budget)
    spool.write(b"12345")
    disk.room = 2  # the next write lands 2 bytes, then the disk is full
    spool.write(b"6789")
    assert spool.in_memory and spool.read(0, 100) == b"123456789" and budget.used == 9
    assert not any(store.tmp_dir.iterdir()), "the temp file must go at once"
    with pytest.raises(StorageFull):
        spool.write(b"xx")  # over the pass-through budget: this download fails
    other = Spool(store, budget)
    with pytest.raises(StorageFull):
        other.write(b"yy")  # the budget is shared by every download
    other.release()
    spool.release()
    assert budget.used == 0


class _FullPack:
    """A pack connection on a full disk: every write fails as SQLite reports it."""

    def execute(self, *args: object) -> None:
        e = sqlite3.OperationalError("database or disk is full")
        e.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        raise e


@pytest.mark.parametrize("packed", [False, True], ids=["file", "packed"])
def test_spool_whose_commit_finds_the_disk_full_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packed: bool
) -> None:
    store = _store(tmp_path)
    spool = Spool(store, MemoryBudget(1 << 20), packable=packed)
    spool.write(b"all the bytes")
    if packed:
        monkeypatch.setattr(store.pack, "_write", _FullPack)
    else:
        monkeypatch.setattr(store_module, "os", NoSpaceFor("fsync"))
    assert asyncio.run(spool.commit()) is None
    assert spool.in_memory and spool.read(0, 100) == b"all the bytes" and spool.passthrough
    assert not any(store.tmp_dir.iterdir()) and not any(store.blob_dir.rglob("*"))
    spool.release()


def test_refused_spool_reads_from_a_removed_temp_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    spool = Spool(store, MemoryBudget(0))
    spool.write(b"x" * 1000)
    spool.acquire()  # a client
    spool.refuse("the file is larger than max_size")
    assert not any(store.tmp_dir.iterdir()) and not spool.in_memory
    assert asyncio.run(spool.commit()) is None
    spool.release()  # the download ends; the client still reads
    assert spool.read(990, 100) == b"x" * 10 and spool.sha256 == hashlib.sha256(b"x" * 1000).hexdigest()
    spool.release()
    assert spool.read(0, 10) == b""
