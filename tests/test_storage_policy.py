"""The eviction policy as pure functions: scores and plans, property-tested."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from node.cache.eviction import BlobCandidate, candidates, plan_eviction, score
from node.cache.index import Usage

NOW = 1_700_000_000.0
hits = st.integers(0, 10**6)
ages = st.floats(0, 10 * 365 * 86400, allow_nan=False)
sizes = st.integers(0, 1 << 31)


@given(hits, ages, sizes)
def test_pinned_outranks_everything(h: int, age: float, size: int) -> None:
    assert score(h, NOW - age, size, True, NOW) == math.inf
    s = score(h, NOW - age, size, False, NOW)
    assert 0 <= s < math.inf


@given(hits, hits, ages, sizes)
def test_more_hits_never_lower(a: int, b: int, age: float, size: int) -> None:
    lo, hi = sorted((a, b))
    assert score(lo, NOW - age, size, False, NOW) <= score(hi, NOW - age, size, False, NOW)


@given(hits, ages, ages, sizes)
def test_more_recent_never_lower(h: int, a: float, b: float, size: int) -> None:
    old, recent = sorted((a, b), reverse=True)
    assert score(h, NOW - old, size, False, NOW) <= score(h, NOW - recent, size, False, NOW)


@given(hits, ages, sizes, sizes)
def test_bigger_never_higher(h: int, age: float, a: int, b: int) -> None:
    small, big = sorted((a, b))
    assert score(h, NOW - age, big, False, NOW) <= score(h, NOW - age, small, False, NOW)


def test_the_site_keeps_what_it_uses() -> None:
    """Hand-picked cases the properties do not pin down."""
    day = 86400.0
    # A small file fetched once does not beat a bigger one used daily.
    assert score(0, NOW, 2_000, False, NOW) < score(5, NOW, 200_000, False, NOW)
    assert score(0, NOW, 2_000, False, NOW) < score(5, NOW, 10_000_000, False, NOW)
    # Among files used alike, the big one goes first.
    assert score(2, NOW, 50_000_000, False, NOW) < score(2, NOW, 50_000, False, NOW)
    # A burst long ago fades below one use today.
    assert score(1000, NOW - 60 * day, 10_000, False, NOW) < score(1, NOW, 10_000, False, NOW)
    # A future access time (clock skew) counts as now, not as a bonus.
    assert score(3, NOW + day, 10, False, NOW) == score(3, NOW, 10, False, NOW)


blob = st.builds(
    BlobCandidate,
    sha256=st.text("0123456789abcdef", min_size=4, max_size=4),
    size=st.integers(1, 10_000),
    score=st.one_of(st.floats(0, 100, allow_nan=False), st.just(math.inf)),
    files=st.just((("m", "v1.0.0", "zip"),)),
)


@settings(max_examples=300)
@given(st.lists(blob, max_size=40, unique_by=lambda b: b.sha256), st.integers(0, 200_000))
def test_plan_frees_just_enough_and_never_pinned(blobs: list[BlobCandidate], target: int) -> None:
    plan = plan_eviction(blobs, target)
    used = sum(b.size for b in blobs)
    assert plan.used_before == used
    assert plan.used_after == used - sum(b.size for b in plan.victims)
    assert all(not math.isinf(b.score) for b in plan.victims)
    kept = [b for b in blobs if b not in plan.victims]
    if plan.victims:
        # Lowest scores go first: nothing kept (and evictable) scores below a victim.
        worst_kept = min((b.score for b in kept if not math.isinf(b.score)), default=math.inf)
        assert max(b.score for b in plan.victims) <= worst_kept
        # No more than needed: without the last victim the store would still be over.
        assert plan.used_after + plan.victims[-1].size > target
    if plan.used_after > target:
        assert all(math.isinf(b.score) for b in kept)  # only pins are left
    if used <= target:
        assert plan.victims == ()


def _row(module: str, version: str, kind: str, sha: str, size: int, hits: int, at: float) -> Usage:
    return Usage(module, version, kind, sha, size, hits, at, at)


def test_candidates_group_shared_blobs_by_their_best_row() -> None:
    """A .mod body shared by a cold and a hot version is worth what the hot one is worth,
    and one shared with a pinned module cannot be evicted at all."""
    rows = [
        _row("example.com/a", "v1.0.0", "mod", "s1", 30, 0, NOW - 86400 * 30),
        _row("example.com/a", "v1.1.0", "mod", "s1", 30, 50, NOW),
        _row("example.com/a", "v1.0.0", "zip", "z1", 5000, 0, NOW - 86400 * 30),
        _row("example.com/b", "v1.0.0", "mod", "s2", 30, 0, NOW),
        _row("pinned.example/p", "v1.0.0", "mod", "s2", 30, 0, NOW),
    ]
    got = {c.sha256: c for c in candidates(rows, lambda m: m.startswith("pinned."), NOW)}
    assert set(got) == {"s1", "z1", "s2"}
    assert len(got["s1"].files) == 2 and got["s1"].score == score(50, NOW, 30, False, NOW)
    assert math.isinf(got["s2"].score)
    plan = plan_eviction(list(got.values()), 0)
    assert [v.sha256 for v in plan.victims] == ["z1", "s1"] and plan.used_after == 30
