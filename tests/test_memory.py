"""Bounded memory on the request path: byte-sized caches, small "not found" entries
(node/cache/memory.py), and a real node under 50,000 distinct misses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
import tracemalloc
from pathlib import Path

import aiohttp
import pytest

from node.cache.memory import LRU, MAX_ITEM_SHARE, CacheSizes, Negative, NegativeCache, approx_size, entry_size
from node.cache.rows import Entry
from node.errors import Gone, LookupDisabled, NotFound
from tests.conftest import FakeProxyFactory
from tests.node_process import free_port, serve_process

MISSES = 50_000
#: Requests in flight at once: enough to keep both processes busy on two cores.
CONCURRENCY = 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _raised() -> NotFound:
    try:
        raise NotFound("example.com/m@v1.0.0: not found", body="not found: upstream text\n\n")
    except NotFound as e:
        return e


def test_negative_keeps_no_exception() -> None:
    clock = Clock()
    neg = NegativeCache(60, clock)
    err = _raised()
    assert err.__traceback__ is not None
    neg.remember("k", err)
    kept = neg._entries["k"]
    assert isinstance(kept, Negative)
    assert not any(isinstance(getattr(kept, f), BaseException) for f in kept.__slots__)
    with pytest.raises(NotFound) as first:
        neg.check("k")
    assert first.value is not err
    assert (first.value.message, first.value.body, first.value.status) == (err.message, err.body, 404)
    with pytest.raises(NotFound) as second:
        neg.check("k")
    assert second.value is not first.value  # a fresh one: no traceback chain grows on it


@pytest.mark.parametrize("err", [Gone("gone"), LookupDisabled("off")])
def test_negative_keeps_the_kind(err: NotFound) -> None:
    neg = NegativeCache(60, Clock())
    neg.remember("k", err)
    with pytest.raises(NotFound) as got:
        neg.check("k")
    assert type(got.value) is type(err) and got.value.status == err.status


def test_negative_is_bounded_in_bytes_and_expires_by_sweep() -> None:
    clock = Clock()
    neg = NegativeCache(60, clock, max_bytes=64 << 10)
    for i in range(10_000):
        neg.remember(f"example.com/missing{i}/@v/v1.0.0.info", NotFound(f"missing{i}: not found", body="x" * 100))
        assert neg.bytes <= neg.max_bytes
    assert 0 < len(neg) < 10_000
    newest = "example.com/missing9999/@v/v1.0.0.info"
    with pytest.raises(NotFound):
        neg.check(newest)  # the oldest went first
    neg.check("example.com/missing0/@v/v1.0.0.info")
    clock.now += 61
    assert neg.sweep() > 0
    assert len(neg) == 0 and neg.bytes == 0


def test_negative_ttl_zero_keeps_nothing() -> None:
    neg = NegativeCache(0, Clock())
    neg.remember("k", NotFound("x"))
    assert len(neg) == 0
    neg.check("k")


def test_lru_is_bounded_in_bytes() -> None:
    lru: LRU[str, bytes] = LRU(1 << 20, lambda k, v: approx_size(k, v))
    for i in range(1000):
        lru.put(f"k{i}", bytes(10_000))
        assert lru.bytes <= lru.max_bytes
    assert 50 < len(lru) < 1000
    assert lru.get("k999") is not None and lru.get("k0") is None
    lru.put("huge", bytes(lru.max_bytes // MAX_ITEM_SHARE + 1))
    assert lru.get("huge") is None and lru.get("k999") is not None  # one huge item flushes nothing
    lru.put("k999", b"small")
    lru.pop("k999")
    assert lru.bytes == sum(approx_size(k, v) for k, v in lru._d.items())


def test_memory_cache_split_adds_up() -> None:
    s = CacheSizes.split(64 << 20)
    assert s.hot + s.entries + s.meta + s.negative == 64 << 20


# ---- a real node -------------------------------------------------------------------------


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _miss_all(base: str, prefix: str, n: int) -> None:
    """`n` distinct missing modules, each asked once; every answer must be a 404."""
    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=conn) as s:
        queue = iter(range(n))

        async def worker() -> None:
            for i in queue:
                async with s.get(f"{base}/example.com/{prefix}{i}/@v/v1.0.0.info") as r:
                    await r.read()
                    assert r.status == 404, (r.status, i)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _gauge(base: str, cache: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f'modmesh_memory_cache_bytes{{cache="{cache}"}}'):
            return float(line.split()[-1])
    return 0.0  # not reported yet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_distinct_misses_leave_memory_flat(fake_proxy: FakeProxyFactory, tmp_path: Path) -> None:
    """50,000 distinct missing modules at the default settings: the node's RSS grows by
    less than 20 MB (it kept each NotFound with its traceback: 15-17 KB apiece)."""
    up = await fake_proxy({})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with serve_process(tmp_path / "data", up.url, port) as proc:
        await _miss_all(base, "warm", 2_000)  # code paths, pools and allocator warm
        before = _rss(proc.pid)
        t0 = time.monotonic()
        await _miss_all(base, "missing", MISSES)
        took = time.monotonic() - t0
        grown = _rss(proc.pid) - before
        print(f"{MISSES} misses in {took:.1f}s; RSS +{grown / 1e6:.1f} MB")
        assert grown < 20e6, f"RSS grew {grown / 1e6:.1f} MB over {MISSES} distinct misses"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_missing_answers_leave_memory_when_they_expire(
    fake_proxy: FakeProxyFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expired "not found" answers are swept on the stats tick (every 5 s), asked again
    or not (a short negative_ttl; the default is a minute)."""
    monkeypatch.setenv("MODMESH_NEGATIVE_TTL", "1s")
    up = await fake_proxy({})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with serve_process(tmp_path / "data", up.url, port) as proc:
        await _miss_all(base, "warm", 1_000)
        before = _rss(proc.pid)
        misses = asyncio.create_task(_miss_all(base, "missing", MISSES))  # until a stats tick reports them
        try:
            for _ in range(300):  # a stats tick comes every 5 s
                if await _gauge(base, "negative") > 0:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the remembered misses were never reported")
        finally:
            misses.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await misses
        for _ in range(150):  # no more misses: the next tick sweeps what expired
            if await _gauge(base, "negative") == 0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("expired negative entries were never swept")
        assert _rss(proc.pid) - before < 20e6


def test_counted_sizes_are_what_python_spends_and_never_less() -> None:
    """An index row costs what the cache counts (within 10 %); a "not found" answer no
    more than counted: the byte budgets hold (tracemalloc, 20,000 items each)."""
    n = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rows: LRU[str, Entry] = LRU(1 << 30, entry_size)
        for i in range(n):
            sha = hashlib.sha256(b"%d" % i).hexdigest()
            e = Entry(f"example.com/m{i // 20}", f"v1.{i % 20}.0", "info", sha, 60, "h1:" + "x" * 44, "up", 1e9, i)
            rows.put(f"example.com/m{i // 20}@v1.{i % 20}.0.info", e)
        spent_rows = tracemalloc.get_traced_memory()[0] - before
        before = tracemalloc.get_traced_memory()[0]
        neg = NegativeCache(600, lambda: 0.0, 1 << 30)
        for i in range(n):
            neg.remember(f"example.com/missing{i}/@v/v1.0.0.info", NotFound(f"missing{i}: not found", body="x" * 100))
        spent_neg = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.9 < spent_rows / rows.bytes < 1.1, (spent_rows, rows.bytes)
    assert spent_neg <= neg.bytes, (spent_neg, neg.bytes)
