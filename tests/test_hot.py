"""Hot answers (node/cache/hot.py): one bytes object per small cached file, under its path."""

from __future__ import annotations

import hashlib
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from node.cache import hot
from node.cache.memory import LRU, MAX_ITEM_SHARE
from node.cache.rows import Entry
from node.server.responses import CONTENT_TYPES, blob_headers, hit_head


def _entry(body: bytes, h1: str | None = "h1:" + "A" * 43 + "=", unverified: bool = False) -> Entry:
    return Entry(
        "example.com/m", "v1.0.0", "info", hashlib.sha256(body).hexdigest(), len(body), h1, "up", 1.0, 0, unverified
    )


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.one_of(st.none(), st.text("abcXYZ0129+/=:", max_size=80)), st.booleans())
def test_a_record_gives_back_what_went_in(body: bytes, h1: str | None, unverified: bool) -> None:
    e = _entry(body, h1, unverified)
    record = hot.pack(e, body)
    assert record is not None
    assert hot.body(record) == body
    assert hot.sha256(record).hex() == e.sha256
    assert hot.h1(record) == (h1 or "").encode()
    assert hot.unverified(record) is unverified


def test_a_file_with_no_such_record_is_not_held() -> None:
    assert hot.pack(_entry(b"x", "h" * 300), b"x") is None


@settings(max_examples=200)
@given(st.binary(max_size=300), st.one_of(st.none(), st.just("h1:" + "b" * 43 + "=")), st.sampled_from(["info", "mod"]))
def test_the_fast_path_head_is_the_head_aiohttp_sends(body: bytes, h1: str | None, kind: str) -> None:
    """hit_head builds per answer what aiohttp sends for the same in-memory hit
    (blob_headers, in its order), so either path gives the same answer."""
    sha = hashlib.sha256(body).hexdigest()
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in blob_headers(sha, h1, kind, "hit", True).items()]
    want = ("\r\n".join(lines) + "\r\n").encode()
    assert hit_head(bytes.fromhex(sha), (h1 or "").encode(), kind, len(body)) == want
    assert CONTENT_TYPES[kind].encode() in want


def test_hot_answers_are_bounded_in_bytes() -> None:
    answers: LRU[str, bytes] = LRU(1 << 20, hot.size)
    for i in range(20_000):
        answers.put(f"/example.com/m{i}/@v/v1.0.0.info", bytes(100))
        assert answers.bytes <= answers.max_bytes
    assert 3000 < len(answers) < 20_000
    assert answers.get("/example.com/m19999/@v/v1.0.0.info") is not None
    assert answers.get("/example.com/m0/@v/v1.0.0.info") is None
    answers.put("/huge", bytes(answers.max_bytes // MAX_ITEM_SHARE))
    assert answers.get("/huge") is None  # one huge answer flushes nothing
    answers.pop("/example.com/m19999/@v/v1.0.0.info")
    assert answers.bytes == sum(hot.size(p, r) for p, r in answers._d.items())


def test_a_used_answer_is_kept_over_older_ones() -> None:
    answers: LRU[str, bytes] = LRU(20 * hot.size("/p10", bytes(100)), hot.size)
    for i in range(10, 30):
        answers.put(f"/p{i}", bytes(100))
    assert answers.get("/p10") is not None
    answers.put("/p30", bytes(100))
    assert answers.get("/p10") is not None and answers.get("/p11") is None


def test_the_size_of_an_answer_is_what_python_spends_on_it() -> None:
    """The byte budget holds: what 50,000 answers cost (tracemalloc) is within 20 % of
    the sizes the table counts."""
    paths = [f"/example.com/scale/m{i // 20}/@v/v1.{i % 20}.0.info" for i in range(50_000)]
    records = [
        hot.pack(_entry(b"%d" % i), b'{"Version":"v1.0.0","Time":"2026-01-01T00:00:00Z"}\n') for i in range(50_000)
    ]
    answers: LRU[str, bytes] = LRU(1 << 30, hot.size)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for path, record in zip(paths, records, strict=True):
            assert record is not None
            answers.put("" + path[:1] + path[1:], record)  # a path string of the table's own
        spent = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = answers.bytes - sum(len(r) + 33 for r in records if r is not None)  # the records existed before
    assert 0.8 < spent / counted < 1.2, (spent, counted)
