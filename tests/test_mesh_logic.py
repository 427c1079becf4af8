"""The mesh's pure decisions with a fake clock: popularity decay, the catalog,
membership states and backoff, where a peer lives, and the bandwidth cap."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.catalog import Catalog, slots_of
from sync.gossip import Popularity, decay, effective_url
from sync.membership import ALIVE, DEAD, SUSPECT, Membership, Timing, next_backoff
from sync.messages import MemberInfo, Popular
from sync.transfer import RateLimiter

# ---- popularity ----------------------------------------------------------------------


@given(st.floats(0, 1e9), st.floats(0, 1e6), st.floats(0, 1e6), st.floats(1, 1e5))
def test_decay_composes_and_halves(score: float, d1: float, d2: float, half: float) -> None:
    once = decay(score, 0, d1 + d2, half)
    twice = decay(decay(score, 0, d1, half), d1, d1 + d2, half)
    assert math.isclose(once, twice, rel_tol=1e-9, abs_tol=1e-12)
    assert once <= score
    assert math.isclose(decay(score, 5, 5 + half, half), score / 2, rel_tol=1e-9, abs_tol=1e-12)


def test_popularity_ranks_decays_and_sums_reports() -> None:
    p = Popularity(half_life=10)
    for _ in range(4):
        p.hit("m/a", "v1.0.0", 0)
    p.hit("m/b", "v1.0.0", 0)
    p.hit("m/b", "v1.0.0", 10)  # 0.5 left of the first hit + 1
    top = p.top(10, 10)
    assert [(x.module, round(x.score, 6)) for x in top] == [("m/a", 2.0), ("m/b", 1.5)]
    p.report("peer1", [Popular("m/c", "v2.0.0", 8.0)], now=10)
    p.report("peer1", [Popular("m/c", "v2.0.0", 4.0)], now=10)  # replaces, does not add
    p.report("peer2", [Popular("m/a", "v1.0.0", 1.0)], now=10)
    mesh = dict(p.mesh_top(0, 0.0, 20))
    assert math.isclose(mesh[("m/c", "v2.0.0")], 2.0) and math.isclose(mesh[("m/a", "v1.0.0")], 1.5)
    assert [k for k, _ in p.mesh_top(1, 0.0, 20)] == [("m/c", "v2.0.0")]
    assert ("m/b", "v1.0.0") not in dict(p.mesh_top(0, 1.0, 20))
    p.forget("peer1")
    assert ("m/c", "v2.0.0") not in dict(p.mesh_top(0, 0.0, 20))


def test_popularity_tables_are_bounded() -> None:
    p = Popularity(half_life=100, max_local=100, max_peers=3)
    for i in range(1000):
        p.hit("m/x", f"v1.0.{i}", float(i))
    assert len(p._local) <= 100
    assert p.local_score("m/x", "v1.0.999", 999) == 1.0  # the newest survive
    for i in range(10):
        p.report(f"peer{i}", [Popular("m", "v1.0.0", 1.0)] * 500, now=float(i))
    assert len(p._reports) == 3 and all(len(items) <= 128 for _, items in p._reports.values())


# ---- catalog -------------------------------------------------------------------------


def _sha(s: str) -> bytes:
    return hashlib.sha256(s.encode()).digest()


async def test_catalog_variants_holders_and_drops() -> None:
    c = Catalog()
    assert c.add(0, "m", "v1", "zip", _sha("a"), _sha("h"), 10)
    assert not c.add(0, "m", "v1", "zip", _sha("a"), _sha("h"), 10)  # not news
    assert c.add(3, "m", "v1", "zip", _sha("a"), _sha("h"), 10)
    assert c.add(5, "m", "v1", "zip", _sha("b"), _sha("h"), 11)  # other bytes, same h1
    hs = c.holdings("m@v1.zip")
    assert [(h.sha256, sorted(slots_of(h.holders))) for h in hs] == [(_sha("b").hex(), [5]), (_sha("a").hex(), [0, 3])]
    assert hs[1].size == 10 and hs[1].h1 is not None and hs[1].h1.startswith("h1:")
    assert sorted(slots_of(c.module_holders("m"))) == [0, 3, 5]
    c.discard(3, "m@v1.zip")
    assert [sorted(slots_of(h.holders)) for h in c.holdings("m@v1.zip")] == [[5], [0]]
    assert await c.drop_slot(5, chunk=1) == 1
    assert [sorted(slots_of(h.holders)) for h in c.holdings("m@v1.zip")] == [[0]]
    c.discard(0, "m@v1.zip")
    assert c.holdings("m@v1.zip") == [] and len(c) == 0
    await c.drop_slot(0)
    # The per-module mask is a hint (a superset after discards); drops clear it.
    assert not c.module_holders("m") & (1 << 0 | 1 << 5)


def test_catalog_is_capped() -> None:
    c = Catalog(max_entries=10)
    for i in range(20):
        c.add(0, "m", f"v{i}", "mod", _sha(str(i)), None, 1)
    assert len(c) == 10 and c.skipped == 10


def test_a_peer_holds_one_copy_of_a_file() -> None:
    c = Catalog()
    c.add(1, "m", "v1", "info", _sha("old"), None, 5)
    c.add(2, "m", "v1", "info", _sha("old"), None, 5)
    assert c.add(1, "m", "v1", "info", _sha("new"), None, 6)  # re-fetched after an eviction
    assert [(h.sha256, sorted(slots_of(h.holders))) for h in c.holdings("m@v1.info")] == [
        (_sha("new").hex(), [1]),
        (_sha("old").hex(), [2]),
    ]
    c.add(2, "m", "v1", "info", _sha("new"), None, 6)
    assert [(h.sha256, sorted(slots_of(h.holders))) for h in c.holdings("m@v1.info")] == [(_sha("new").hex(), [1, 2])]


def test_catalog_memory_per_file_is_small() -> None:
    """A million-blob mesh must fit: each distinct file costs one compact record,
    however many peers hold it."""
    c = Catalog()
    n = 5_000
    rows = [
        (f"github.com/org{i % 300}/repo{i}", f"v1.2.{i}", _sha(str(i)), os.urandom(32), 100_000 + i) for i in range(n)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for module, version, sha, h1, size in rows:
            for slot in range(3):
                c.add(slot, module, version, "zip", sha, h1, size)
        per_file = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_file < 400, per_file


# ---- membership ----------------------------------------------------------------------

T = Timing(suspect_after=10, dead_after=30, dead_failures=3, backoff=1, backoff_max=8, forget_after=100)


def _table() -> Membership:
    return Membership("me", T, random.Random(7))


def test_silence_makes_suspect_then_dead_and_a_heartbeat_rejoins() -> None:
    t = _table()
    m = t.heard("p", "http://p", 100, now=0, source="static")
    assert m is not None and m.state == ALIVE and t.heard("me", "http://me", 1, 0, "static") is None
    t.tick(5)
    assert m.state == ALIVE
    t.tick(11)
    assert m.state == SUSPECT
    t.tick(31)
    assert m.state == DEAD and m.next_retry > 31
    # A relayed, newer heartbeat is proof of life; an old one is not.
    t.merge([MemberInfo("p", "http://p", 100, "alive")], now=32)
    assert m.state == DEAD
    t.merge([MemberInfo("p", "http://p2", 101, "alive")], now=33)
    assert m.state == ALIVE and m.url == "http://p2" and m.last_seen == 33


def test_failed_requests_then_backoff_then_clean_rejoin() -> None:
    t = _table()
    m = t.heard("p", "http://p", 1, 0, "gossip")
    assert m is not None
    t.failed("p", 1)
    assert m.state == SUSPECT
    t.failed("p", 1.1)
    t.failed("p", 1.2)
    assert m.state == DEAD
    retries = []
    now = 1.2
    for _ in range(8):
        now = m.next_retry
        members, _ = t.targets(fanout=3, now=now)
        assert members == [m]  # due: retried
        assert t.targets(fanout=3, now=now)[0] == []  # not twice in a row
        t.failed("p", now)
        retries.append(m.backoff)
    assert retries[-1] <= T.backoff_max * 1.2 and retries[-1] > retries[0]
    t.heard("p", "http://p", 2, now + 1, "gossip")
    assert m.state == ALIVE and m.failures == 0 and m.backoff == 0


@given(st.floats(0, 100))
def test_backoff_doubles_with_bounded_jitter(current: float) -> None:
    b = next_backoff(current, T, random.Random(1))
    base = T.backoff if current <= 0 else min(T.backoff_max, current * 2)
    assert 0.8 * base <= b <= 1.2 * base


def test_gossip_learnt_members_are_forgotten_static_ones_kept() -> None:
    t = _table()
    t.heard("s", "http://s", 1, 0, "static")
    new = t.merge(
        [
            MemberInfo("g", "http://g", 5, "alive"),
            MemberInfo("x", "http://x", 5, "dead"),
            MemberInfo("me", "http://me", 9, "alive"),
        ],
        0,
    )
    assert [m.node_id for m in new] == ["g"] and set(t.members) == {"s", "g"}
    t.tick(31)
    assert {m.state for m in t.members.values()} == {DEAD}
    gone = t.tick(200)
    assert [m.node_id for m in gone] == ["g"] and set(t.members) == {"s"}
    slot = gone[0].slot
    t.release(slot)
    assert t.heard("n", "http://n", 1, 201, "gossip").slot == slot  # type: ignore[union-attr]


def test_seeds_are_retried_until_they_answer_and_self_is_skipped() -> None:
    t = _table()
    t.add_seed("http://a")
    t.add_seed("http://self")
    t.add_seed("http://a")
    assert len(t.seeds) == 2
    _, seeds = t.targets(3, 0)
    assert [s.url for s in seeds] == ["http://a", "http://self"]
    a, me = t.seeds
    t.seed_failed(a, 0)
    assert a.next_try > 0 and [s.url for s in t.targets(3, 0)[1]] == ["http://self"]
    t.seed_answered(me, "me")
    assert me.is_self and t.targets(3, 100)[1] == [a]
    t.seed_answered(a, "pa")
    t.heard("pa", "http://a", 1, 100, t.seed_source("pa", "http://a"))
    assert t.members["pa"].source == "static" and t.targets(3, 100)[1] == []


def test_mdns_seeds_and_quarantine() -> None:
    t = _table()
    t.add_seed("http://10.0.0.2:3000", "mdns", "peer")
    t.add_seed("http://10.0.0.3:3000", "mdns", "me")  # our own announcement
    assert [s.url for s in t.seeds] == ["http://10.0.0.2:3000"]
    t.drop_seeds("peer")
    assert t.seeds == []
    m = t.heard("q", "http://q", 1, 0, "mdns")
    assert m is not None
    t.quarantine("q", 0, 60, "lied")
    assert m.quarantined(30) and not m.usable(30) and m.usable(61) and m.quarantine_reason == "lied"
    t.lost("q", 1)
    assert m.state == SUSPECT


def test_targets_sample_fanout_of_live_members() -> None:
    t = _table()
    for i in range(20):
        t.heard(f"p{i}", f"http://p{i}", 1, 0, "gossip")
    members, _ = t.targets(3, 1)
    assert len(members) == 3 and len({m.node_id for m in members}) == 3
    assert len(t.sample(64, 1)) == 20 and len(t.sample(5, 1)) == 5


# ---- addresses and rates -------------------------------------------------------------


@pytest.mark.parametrize(
    "advertised, remote, want",
    [
        ("http://10.0.0.5:3000", "10.0.0.9", "http://10.0.0.5:3000"),
        ("http://0.0.0.0:3000/", "10.0.0.9", "http://10.0.0.9:3000"),
        ("http://[::]:3000", "fe80::1", "http://[fe80::1]:3000"),
        ("http://0.0.0.0:3000", None, ""),
        ("", "10.0.0.9", ""),
        ("https://node.lan/mirror/", "10.0.0.9", "https://node.lan/mirror"),
    ],
)
def test_effective_url(advertised: str, remote: str | None, want: str) -> None:
    assert effective_url(advertised, remote) == want


def test_rate_limiter_keeps_the_long_run_rate() -> None:
    now = [0.0]
    rl = RateLimiter(100_000, clock=lambda: now[0])
    waited = 0.0
    for _ in range(100):
        wait = rl.debt(50_000)
        waited += wait
        now[0] += wait
    # 5 MB at 100 kB/s: about 50 s, less the initial burst.
    assert 45 <= now[0] <= 51
    assert RateLimiter(0).debt(10**9) == 0.0


async def test_rate_limiter_sleeps() -> None:
    rl = RateLimiter(1_000_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await rl.take(1_000_000)  # the burst
    await rl.take(100_000)
    assert 0.05 <= loop.time() - start < 1.0


views = st.lists(
    st.builds(
        MemberInfo,
        st.sampled_from(["p1", "p2", "p3", "me"]),
        st.just("http://x"),
        st.integers(1, 50),
        st.sampled_from(["alive", "suspect"]),
    ),
    max_size=30,
)


@given(views, st.randoms(use_true_random=False))
def test_merging_views_is_order_independent(infos: list[MemberInfo], rnd: random.Random) -> None:
    """Gossip arrives in any order, duplicated or not: every table ends with the newest
    heartbeat of every node (and never lists itself)."""
    shuffled = list(infos)
    rnd.shuffle(shuffled)
    a, b = _table(), _table()
    a.merge(infos, 0)
    for info in shuffled:
        b.merge([info], 0)
        b.merge([info], 0)
    want = {}
    for i in infos:
        if i.node_id != "me":
            want[i.node_id] = max(want.get(i.node_id, 0), i.heartbeat)
    for t in (a, b):
        assert {n: m.heartbeat for n, m in t.members.items()} == want


def test_mdns_reannouncement_replaces_the_old_seed() -> None:
    m = Membership("me", T, random.Random(7))
    m.add_seed("http://10.0.0.5:3000", "static")
    m.add_seed("http://10.0.0.7:3000", "mdns", "node-b")
    m.add_seed("http://10.0.0.8:3000", "mdns", "node-b")  # node-b moved
    m.add_seed("http://10.0.0.7:3000", "mdns", "me")  # ourselves: ignored
    assert [(s.url, s.source) for s in m.seeds] == [
        ("http://10.0.0.5:3000", "static"),
        ("http://10.0.0.8:3000", "mdns"),
    ]
