"""Mesh wire messages: round trips, hard size bounds whatever the mesh or store size,
delta paging without gaps, and nothing but MessageError for hostile bytes."""

from __future__ import annotations

import base64
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.messages import (
    MAX_GOSSIP_BYTES,
    MAX_MEMBERS,
    MAX_MODULE,
    MAX_PAGE_BYTES,
    MAX_PAGE_ENTRIES,
    MAX_PATTERN,
    MAX_POPULAR,
    MAX_PRIVATE,
    MAX_URL,
    PROTOCOL,
    Gossip,
    InventoryPage,
    InvEntry,
    MemberInfo,
    MessageError,
    Popular,
    bytes_to_h1,
    decode_gossip,
    decode_page,
    encode_gossip,
    encode_page,
    h1_to_bytes,
)

ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
urls = st.text(max_size=80).map(lambda s: "http://h/" + s)
u63 = st.integers(0, (1 << 63) - 1)
members = st.builds(MemberInfo, ids, urls, u63, st.sampled_from(["alive", "suspect", "dead"]))
popular = st.builds(
    Popular, st.text(min_size=1, max_size=100), st.text(min_size=1, max_size=40), st.floats(0, 1e12, allow_nan=False)
)
patterns = st.text(min_size=1, max_size=60).filter(lambda p: "," not in p)
gossips = st.builds(
    Gossip,
    ids,
    ids,
    st.just(PROTOCOL),
    urls,
    u63,
    st.text(max_size=16),
    u63,
    u63,
    st.lists(members, max_size=MAX_MEMBERS).map(tuple),
    st.lists(popular, max_size=MAX_POPULAR).map(tuple),
    st.lists(patterns, max_size=MAX_PRIVATE).map(tuple),
)


@given(gossips)
def test_gossip_round_trips(g: Gossip) -> None:
    assert decode_gossip(encode_gossip(g)) == g


def _huge_gossip(n: int) -> Gossip:
    long_url = "http://" + "h" * (MAX_URL - 7)
    return Gossip(
        "n" * 64,
        "mesh",
        PROTOCOL,
        long_url,
        1,
        "e" * 16,
        10**9,
        10**9,
        tuple(MemberInfo(f"{i:064d}", long_url, i, "alive") for i in range(n)),
        tuple(Popular("m" * MAX_MODULE, "v1.0.0-" + "x" * 900, float(i)) for i in range(n)),
        tuple(f"{i:03d}" + "p" * (MAX_PATTERN - 3) for i in range(MAX_PRIVATE)),
    )


def test_gossip_of_a_thousand_peer_mesh_stays_bounded() -> None:
    data = encode_gossip(_huge_gossip(1000))
    assert len(data) <= MAX_GOSSIP_BYTES
    g = decode_gossip(data)
    assert 0 < len(g.members) <= MAX_MEMBERS and len(g.popular) <= MAX_POPULAR
    assert g.members == _huge_gossip(1000).members[: len(g.members)]
    # Members and popular versions are trimmed to fit; the private patterns never are.
    assert g.private == _huge_gossip(1000).private


def test_private_patterns_are_bounded_both_ways() -> None:
    g = Gossip("n1", "mesh", PROTOCOL, "http://h", 1, "e", 0, 0, private=("corp.example.com", "*.internal.test"))
    assert decode_gossip(encode_gossip(g)).private == g.private
    for bad in (("a,b",), ("",), ("p" * (MAX_PATTERN + 1),), tuple(f"p{i}" for i in range(MAX_PRIVATE + 1))):
        with pytest.raises(MessageError):
            encode_gossip(Gossip("n1", "mesh", PROTOCOL, "http://h", 1, "e", 0, 0, private=bad))
        raw = msgpack.packb({"n": "n1", "m": "mesh", "p": PROTOCOL, "hb": 1, "h": 0, "pv": list(bad)})
        with pytest.raises(MessageError):
            decode_gossip(raw)
    # A protocol-1 message carries no patterns: it decodes as declaring none (the mesh
    # then refuses it for its protocol, tests/test_mesh_auth.py).
    old = msgpack.packb({"n": "n1", "m": "mesh", "p": 1, "u": "", "hb": 1, "e": "", "h": 0, "c": 0})
    assert decode_gossip(old).private == () and decode_gossip(old).protocol == 1 != PROTOCOL


def _entry(serial: int, module_len: int = 20, version_len: int = 6) -> InvEntry:
    sha = hashlib.sha256(str(serial).encode()).digest()
    return InvEntry(serial, "m" * module_len, "v" * version_len, "zip", sha, sha, serial * 7)


@given(
    st.lists(st.tuples(st.integers(1, MAX_MODULE), st.integers(1, 1024)), min_size=1, max_size=60), st.integers(1, 2000)
)
@settings(max_examples=40, deadline=None)
def test_paging_covers_every_entry_once_within_bounds(sizes: list[tuple[int, int]], limit_bytes: int) -> None:
    """A sender trimming pages to fit its byte bound never skips or repeats an entry
    the asker can receive (the delta index invariant)."""
    log = [_entry(i + 1, m, v) for i, (m, v) in enumerate(sizes)]
    got: list[int] = []
    after = 0
    bound = 4096 + limit_bytes * 4
    for _ in range(len(log) + 1):
        rows = [e for e in log if e.serial > after][:MAX_PAGE_ENTRIES]
        page = InventoryPage("ep", len(log), False, False, tuple(rows), rows[-1].serial if rows else after)
        data = encode_page(page, bound)
        decoded = decode_page(data)
        got.extend(e.serial for e in decoded.entries)
        assert decoded.last > after or not rows
        after = decoded.last
        if not decoded.more:
            break
    assert got == sorted(set(got))
    too_big = {
        e.serial for e in log if len(encode_page(InventoryPage("ep", 0, False, False, (e,), e.serial), bound)) > bound
    }
    assert set(got) == {e.serial for e in log} - too_big


def test_page_of_a_million_blob_store_is_bounded() -> None:
    """Worst-case entries (longest module paths and versions): a page still fits."""
    rows = tuple(_entry(1_000_000 + i, MAX_MODULE, 1024) for i in range(MAX_PAGE_ENTRIES))
    data = encode_page(InventoryPage("ep", 2_000_000, False, True, rows, rows[-1].serial))
    assert len(data) <= MAX_PAGE_BYTES
    page = decode_page(data)
    assert page.more and page.entries and page.last == page.entries[-1].serial < rows[-1].serial


def test_typical_page_holds_a_thousand_entries() -> None:
    rows = tuple(_entry(i + 1, 40, 20) for i in range(MAX_PAGE_ENTRIES))
    page = decode_page(encode_page(InventoryPage("ep", 5000, True, True, rows, 1000)))
    assert len(page.entries) == 1000 and page.reset and page.more and page.last == 1000
    assert page.entries[3] == rows[3]


@given(st.binary(max_size=2048))
def test_garbage_bytes_are_refused_cleanly(data: bytes) -> None:
    for decode in (decode_gossip, decode_page):
        try:
            decode(data)
        except MessageError:
            pass


msgpackable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=6), children, max_size=8),
    max_leaves=30,
)


@given(
    st.dictionaries(
        st.sampled_from(["n", "m", "p", "u", "hb", "e", "h", "c", "mb", "pop", "pv", "r", "more", "l", "es"]),
        msgpackable,
        max_size=15,
    )
)
@settings(max_examples=50)
def test_ill_typed_messages_raise_message_error_only(obj: dict[str, object]) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    for decode in (decode_gossip, decode_page):
        try:
            decode(data)
        except MessageError:
            pass


def test_oversized_and_out_of_order_are_refused() -> None:
    with pytest.raises(MessageError, match="exceeds"):
        decode_gossip(b"\x00" * (MAX_GOSSIP_BYTES + 1))
    rows = (_entry(5), _entry(3))
    data = msgpack.packb(
        {
            "e": "x",
            "h": 5,
            "r": False,
            "more": False,
            "l": 5,
            "es": [[e.serial, e.module, e.version, e.kind, e.sha256, e.h1, e.size] for e in rows],
        }
    )
    with pytest.raises(MessageError, match="increasing"):
        decode_page(data)


@given(st.binary(min_size=32, max_size=32))
def test_h1_packs_to_32_bytes(raw: bytes) -> None:
    h1 = "h1:" + base64.b64encode(raw).decode()
    assert h1_to_bytes(h1) == raw and bytes_to_h1(raw) == h1
    assert h1_to_bytes("h1:notbase64!") is None and h1_to_bytes(None) is None
