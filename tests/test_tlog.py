"""Transparent-log math (node/tlog.py): properties, Go's examples, and the go command as oracle."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.golang import dirhash, modzip
from node.sumdb.note import Signer, Verifier, generate_key, open_note, parse_signer, parse_verifier, sign_note
from node.sumdb.records import Tree, format_record, format_tree, parse_record, parse_tree, split_lookup
from node.sumdb.tiles import (
    MissingTiles,
    Tile,
    hash_from_tile,
    new_tiles,
    parse_tile_path,
    read_tile_data,
    tile_for_index,
    tile_hash_reader,
    tiles_needed_for_record,
    tiles_needed_for_tree_proof,
)
from node.sumdb.tlog import (
    EMPTY_TREE_HASH,
    HASH_SIZE,
    MAX_TREE_SIZE,
    TlogError,
    check_record,
    check_tree,
    list_hash_reader,
    node_hash,
    prove_record,
    prove_tree,
    record_hash,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    stored_hashes,
    tree_hash,
)
from tests.goenv import go_env, run_go
from tests.modules import module_files

# --- reference implementations -------------------------------------------------------


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 2.1 Merkle Tree Hash, straight from the definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def go_stored_hash_index(level: int, n: int) -> int:
    """Go's loop, for checking our closed form."""
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def build(records: Sequence[bytes]) -> list[bytes]:
    hashes: list[bytes] = []
    for i, r in enumerate(records):
        hashes += stored_hashes(i, r, list_hash_reader(hashes))
    return hashes


@cache
def log_of(n: int, salt: str = "") -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    records = tuple(f"record {salt}{i}\n".encode() for i in range(n))
    return records, tuple(build(records))


def tree_of(n: int, salt: str = "") -> Tree:
    _, hashes = log_of(n, salt)
    return Tree(n, tree_hash(n, list_hash_reader(hashes)))


def all_tiles(n: int, h: int, salt: str = "") -> dict[Tile, bytes]:
    reader = list_hash_reader(log_of(n, salt)[1])
    return {t: read_tile_data(t, reader) for t in new_tiles(h, 0, n)}


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- hashing and stored-hash order ---------------------------------------------------------


def test_empty_tree_hash() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_TREE_HASH
    assert tree_hash(0, list_hash_reader([])) == EMPTY_TREE_HASH


def test_doc_single_record_tree() -> None:
    record = (
        b"example.com/hello v1.0.0 h1:RRYMUoTH0NuCZ6Uzn82AqTXx61N0Cv5l8QsjGVwQduo=\n"
        b"example.com/hello v1.0.0/go.mod h1:NnGvEkTHyKKlgPcQSue0skqyqiS1EfBSAh+0WaWZYmE=\n"
    )
    assert base64.b64encode(record_hash(record)).decode() == "PxgBmyr4Dpp5jiiLZg8AStvbeyMXPR817hsurHdOImk="


def test_stored_hash_index_known_values() -> None:
    # Crosby-Wallach order: leaf 0, leaf 1, (1,0), leaf 2, leaf 3, (1,1), (2,0), leaf 4 ...
    order = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4)]
    assert [stored_hash_index(lv, n) for lv, n in order] == list(range(8))
    for level in range(12):
        for n in range(300):
            assert stored_hash_index(level, n) == go_stored_hash_index(level, n)


def test_split_stored_hash_index_inverts() -> None:
    for index in range(5000):
        assert stored_hash_index(*split_stored_hash_index(index)) == index


@given(st.integers(0, 63), st.integers(0, MAX_TREE_SIZE))
@settings(max_examples=300)
def test_split_stored_hash_index_big(level: int, n: int) -> None:
    n = min(n, ((MAX_TREE_SIZE + 1) >> level) - 1)
    assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)
    for edge in (stored_hash_index(0, MAX_TREE_SIZE), stored_hash_index(63, 0)):
        assert stored_hash_index(*split_stored_hash_index(edge)) == edge
    with pytest.raises(TlogError):
        stored_hash_index(level, (MAX_TREE_SIZE + 1) >> level)


def test_stored_hash_count_matches_build() -> None:
    for n in range(200):
        assert stored_hash_count(n) == len(log_of(n)[1])


@given(st.lists(st.binary(max_size=40), max_size=70))
@_SETTINGS
def test_tree_hash_matches_rfc6962(records: list[bytes]) -> None:
    reader = list_hash_reader(build(records))
    for n in range(len(records) + 1):
        assert tree_hash(n, reader) == mth(records[:n])


# --- proofs ----------------------------------------------------------------------------


def test_record_proofs_small_trees() -> None:
    for t in range(1, 41):
        records, hashes = log_of(t)
        reader = list_hash_reader(hashes)
        th = mth(records)
        for n in range(t):
            proof = prove_record(t, n, reader)
            check_record(proof, t, th, n, record_hash(records[n]))
            with pytest.raises(TlogError):
                check_record(proof, t, th, n, record_hash(b"other\n"))
            if proof:
                with pytest.raises(TlogError):
                    check_record(proof[:-1], t, th, n, record_hash(records[n]))
                bad = [*proof]
                bad[0] = bytes(HASH_SIZE)
                with pytest.raises(TlogError):
                    check_record(bad, t, th, n, record_hash(records[n]))
            with pytest.raises(TlogError):
                check_record([*proof, th], t, th, n, record_hash(records[n]))
            if t > 1:
                other = (n + 1) % t
                with pytest.raises(TlogError):
                    check_record(proof, t, th, other, record_hash(records[n]))


@given(st.integers(1, 3000), st.data())
@_SETTINGS
def test_record_proofs_big_trees(t: int, data: st.DataObject) -> None:
    records, hashes = log_of(3000)
    reader = list_hash_reader(hashes)
    th = tree_hash(t, reader)
    n = data.draw(st.integers(0, t - 1))
    proof = prove_record(t, n, reader)
    check_record(proof, t, th, n, record_hash(records[n]))
    flip = data.draw(st.integers(0, max(0, len(proof) * HASH_SIZE - 1)))
    if proof:
        bad = [bytearray(p) for p in proof]
        bad[flip // HASH_SIZE][flip % HASH_SIZE] ^= 1
        with pytest.raises(TlogError):
            check_record([bytes(b) for b in bad], t, th, n, record_hash(records[n]))


def test_tree_proofs_small_trees() -> None:
    records, hashes = log_of(40)
    reader = list_hash_reader(hashes)
    for t in range(1, 41):
        th = mth(records[:t])
        for n in range(1, t + 1):
            h = mth(records[:n])
            proof = prove_tree(t, n, reader)
            check_tree(proof, t, th, n, h)
            with pytest.raises(TlogError):
                check_tree(proof, t, th, n, record_hash(b"x"))
            with pytest.raises(TlogError):
                check_tree(proof, t, record_hash(b"x"), n, h)
            with pytest.raises(TlogError):
                check_tree([*proof, h], t, th, n, h)
            if proof:
                with pytest.raises(TlogError):
                    check_tree(proof[1:], t, th, n, h)


@given(st.integers(1, 3000), st.data())
@_SETTINGS
def test_tree_proofs_big_trees(t: int, data: st.DataObject) -> None:
    _, hashes = log_of(3000)
    reader = list_hash_reader(hashes)
    n = data.draw(st.integers(1, t))
    th, h = tree_hash(t, reader), tree_hash(n, reader)
    proof = prove_tree(t, n, reader)
    check_tree(proof, t, th, n, h)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[i] = node_hash(bad[i], bad[i])
        with pytest.raises(TlogError):
            check_tree(bad, t, th, n, h)
    # A fork: the same size, another history.
    other = tree_hash(n, list_hash_reader(log_of(3000, "fork")[1]))
    with pytest.raises(TlogError):
        check_tree(proof, t, th, n, other)


@pytest.mark.parametrize(
    "call",
    [
        lambda r: prove_record(0, 0, r),
        lambda r: prove_record(5, 5, r),
        lambda r: prove_record(5, -1, r),
        lambda r: prove_record(MAX_TREE_SIZE + 1, 0, r),
        lambda r: prove_tree(5, 0, r),
        lambda r: prove_tree(5, 6, r),
        lambda r: check_record([], 1, bytes(32), 1, bytes(32)),
        lambda r: check_record([b"short"], 2, bytes(32), 0, bytes(32)),
        lambda r: check_record([], 1, b"short", 0, bytes(32)),
        lambda r: check_tree([], 2, bytes(32), 0, bytes(32)),
        lambda r: check_tree([bytes(31)], 2, bytes(32), 1, bytes(32)),
        lambda r: stored_hash_index(-1, 0),
        lambda r: stored_hash_index(0, -1),
        lambda r: stored_hash_index(64, 0),
        lambda r: stored_hash_index(1, MAX_TREE_SIZE),
        lambda r: split_stored_hash_index(-1),
        lambda r: split_stored_hash_index(1 << 70),
        lambda r: stored_hash_count(-1),
        lambda r: tree_hash(1 << 63, r),
        lambda r: tree_hash(3, r),  # the reader has too few hashes
        lambda r: Tree(-1, bytes(32)),
        lambda r: Tree(1 << 63, bytes(32)),
        lambda r: Tree(1, bytes(31)),
        lambda r: node_hash(b"", bytes(32)),
    ],
)
def test_bad_inputs_raise_tlog_error(call: Callable[[object], object]) -> None:
    with pytest.raises(TlogError):
        call(list_hash_reader(log_of(2)[1]))


def test_reader_returning_wrong_count_is_an_error() -> None:
    class Short:
        def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
            return []

    with pytest.raises(TlogError):
        tree_hash(5, Short())


# --- tree heads and records ---------------------------------------------------------------


def test_tree_format_parse() -> None:
    tree = tree_of(5)
    text = format_tree(tree)
    assert text == f"go.sum database tree\n5\n{base64.b64encode(tree.hash).decode()}\n"
    assert parse_tree(text) == tree
    assert parse_tree(text + "future line\n") == tree
    assert parse_tree(text + "more\nlines\n") == tree


@pytest.mark.parametrize(
    "text",
    [
        "",
        "go.sum database tree\n",
        "go.sum database tree\n5\n",
        "go.sum database tree v2\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n05\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n+5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n-0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n 5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n５\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        f"go.sum database tree\n{1 << 63}\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n" + "9" * 5000 + "\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "go.sum database tree\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n",  # 31 bytes
        "go.sum database tree\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",  # no padding
        "go.sum database tree\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        "go.sum database tree\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # unterminated
        "go.sum database tree\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" + "x" * 1_000_000,
    ],
)
def test_parse_tree_rejects(text: str) -> None:
    with pytest.raises(TlogError):
        parse_tree(text)


DOC_REPLY = (
    "0\n"
    "example.com/hello v1.0.0 h1:RRYMUoTH0NuCZ6Uzn82AqTXx61N0Cv5l8QsjGVwQduo=\n"
    "example.com/hello v1.0.0/go.mod h1:NnGvEkTHyKKlgPcQSue0skqyqiS1EfBSAh+0WaWZYmE=\n"
    "\n"
    "go.sum database tree\n1\nPxgBmyr4Dpp5jiiLZg8AStvbeyMXPR817hsurHdOImk=\n\n"
    "— sum.example.test Q2XEiRSF2Mt7AQoMs9NxUUnoPNy7Lt5ayURZMnNzPDdLXkHv/tOZQncCe89PgITUy7HXHy33Cfka/c6omLjRl5FI1gk=\n"
).encode()


def test_split_lookup_doc_reply() -> None:
    id, text, note = split_lookup(DOC_REPLY)
    assert id == 0
    assert text.startswith(b"example.com/hello v1.0.0 h1:") and text.endswith(b"=\n")
    _, vkey = generate_key("sum.example.test", bytes(range(32)))
    tree = parse_tree(open_note(note, [parse_verifier(vkey)]).text)
    assert tree.n == 1
    reader = tile_hash_reader(tree, 8, {Tile(8, 0, 0, 1): record_hash(text)})
    assert reader.read_hashes([0]) == [record_hash(text)]
    assert format_record(id, text) + note == DOC_REPLY


def test_record_round_trip() -> None:
    msg = format_record(7, b"a b c\nd e f\n")
    assert msg == b"7\na b c\nd e f\n\n"
    assert parse_record(msg + b"rest") == (7, b"a b c\nd e f\n", b"rest")
    assert parse_record(msg) == (7, b"a b c\nd e f\n", b"")


@pytest.mark.parametrize(
    "text", [b"", b"no newline", b"a\n\nb\n", b"\n", b"\na\n", b"tab\t\n", b"cr\r\n", b"\xff\n", b"\xed\xa0\x80\n"]
)
def test_format_record_rejects(text: bytes) -> None:
    with pytest.raises(TlogError):
        format_record(1, text)


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"0",
        b"0\n",
        b"0\na\n",  # no blank line
        b"0\na\n\n",  # no note
        b"+0\na\n\nnote\n",
        b"00\na\n\nnote\n",
        b"-1\na\n\nnote\n",
        b" 1\na\n\nnote\n",
        b"\xd9\xa1\na\n\nnote\n",  # Arabic-Indic digit one
        b"%d\na\n\nnote\n" % (1 << 63),
        b"1" * 5000 + b"\na\n\nnote\n",
        b"0\n\n\nnote\n",  # empty record
        b"0\na\x00\n\nnote\n",
        b"0\na\xff\n\nnote\n",
        b"0\n" + b"a" * 1_000_000 + b"\n\nnote\n",
    ],
)
def test_split_lookup_rejects(reply: bytes) -> None:
    with pytest.raises(TlogError):
        split_lookup(reply)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parsers_raise_only_tlog_errors(data: bytes) -> None:
    for call in (
        lambda: split_lookup(data),
        lambda: split_lookup(b"3\n" + data),
        lambda: parse_tree(data.decode("utf-8", "replace")),
        lambda: parse_tree("go.sum database tree\n" + data.decode("latin-1")),
        lambda: parse_tile_path(data.decode("latin-1")),
        lambda: parse_tile_path("tile/8/" + data.decode("latin-1")),
    ):
        try:
            call()
        except TlogError:
            pass


# --- tiles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (Tile(3, 4, 1234067, 1), "tile/3/4/x001/x234/067.p/1"),
        (Tile(3, 4, 1234067, 8), "tile/3/4/x001/x234/067"),
        (Tile(3, -1, 1234067, 1), "tile/3/data/x001/x234/067.p/1"),
        (Tile(3, -1, 1234067, 8), "tile/3/data/x001/x234/067"),
        (Tile(8, 0, 1234, 5), "tile/8/0/x001/234.p/5"),
        (Tile(8, 0, 0, 256), "tile/8/0/000"),
        (Tile(8, 1, 0, 1), "tile/8/1/000.p/1"),
        (Tile(1, 0, 1000, 1), "tile/1/0/x001/000.p/1"),
        (Tile(30, 0, 0, 1 << 30), "tile/30/0/000"),
        (Tile(8, 6, 0, 255), "tile/8/6/000.p/255"),
    ],
)
def test_tile_paths(tile: Tile, path: str) -> None:
    assert tile.path() == path
    assert parse_tile_path(path) == tile


@st.composite
def tile_params(draw: st.DrawFn) -> Tile:
    h = draw(st.integers(1, 30))
    l = draw(st.integers(-1, 62 // h))  # noqa: E741
    level = max(l, 0) * h
    n = draw(st.integers(0, MAX_TREE_SIZE >> (h + level)))
    w = draw(st.integers(1, 1 << h))
    return Tile(h, l, n, w)


@given(tile_params())
@settings(max_examples=500)
def test_tile_path_round_trip(tile: Tile) -> None:
    assert parse_tile_path(tile.path()) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/3/4/x001/x234/067.p/8",  # full width spelled as partial
        "tile/8/0/000.p/256",
        "tile/8/0/000.p/0",
        "tile/8/0/000.p/257",
        "tile/8/0/000.p/05",
        "tile/8/0/000.p/",
        "tile/8/0/000.p/-1",
        "tile/8/0/000.p/5/6",
        "tile/3/4/x001/x234/67",  # short group
        "tile/3/4/001/x234/067",  # missing x
        "tile/3/4/x001/x234/x067",  # x on the last group
        "tile/3/4/x000/x234/067",  # leading zero group
        "tile/8/0/1000",
        "tile/8/0/x1000/000",
        "tile/8/0/00a",
        "tile/8/0/０00",
        "tile/08/0/000",
        "tile/8/00/000",
        "tile/0/0/000",
        "tile/31/0/000",
        "tile/8/-1/000",
        "tile/8/8/000",  # level 64
        "tile/8/7/x001/000",  # beyond any int64 tree
        "tile/8/0/x999/x999/x999/x999/x999/x999/999",
        "/tile/8/0/000",
        "tile/8/0/000/",
        "tile/8/0",
        "tile/8/0/",
        "tile/8/data",
        "tiles/8/0/000",
        "tile/8/0/000\n",
        " tile/8/0/000",
        "tile/8/0/" + "x001/" * 1000 + "000",
    ],
)
def test_parse_tile_path_rejects(path: str) -> None:
    with pytest.raises(TlogError):
        parse_tile_path(path)


@pytest.mark.parametrize(
    "args", [(0, 0, 0, 1), (31, 0, 0, 1), (8, -2, 0, 1), (8, 0, -1, 1), (8, 0, 0, 0), (8, 0, 0, 257), (8, 8, 0, 1)]
)
def test_invalid_tiles(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(TlogError):
        Tile(*args)


@given(st.integers(1, 2000), st.sampled_from([1, 2, 3, 5, 8]), st.data())
@_SETTINGS
def test_tile_for_index_and_hash_from_tile(n: int, h: int, data: st.DataObject) -> None:
    _, hashes = log_of(2000)
    reader = list_hash_reader(hashes)
    index = data.draw(st.integers(0, stored_hash_index(0, n) - 1))
    tile = tile_for_index(h, index)
    tdata = read_tile_data(tile, reader)
    assert hash_from_tile(tile, tdata, index) == hashes[index]
    # A wider tile at the same place works too; another place does not.
    if not tile.full:
        full = Tile(tile.h, tile.l, tile.n, 1 << h)
        if (full.n + 1) << (h * (full.l + 1)) <= 2000:
            assert hash_from_tile(full, read_tile_data(full, reader), index) == hashes[index]
    with pytest.raises(TlogError):
        hash_from_tile(Tile(h, tile.l, tile.n + 1, tile.w), tdata, index)
    with pytest.raises(TlogError):
        hash_from_tile(tile, tdata[:-1], index)


def _expected_tiles(h: int, n: int) -> set[Tile]:
    """Every tile of a tree of n records, at its width in that tree."""
    out = set()
    level = 0
    while n >> (h * level):
        have = n >> (h * level)
        for i in range((have + (1 << h) - 1) >> h):
            out.add(Tile(h, level, i, min(1 << h, have - (i << h))))
        level += 1
    return out


@given(st.sampled_from([1, 2, 3, 8]), st.integers(0, 3000), st.integers(0, 3000))
@settings(max_examples=200)
def test_new_tiles(h: int, a: int, b: int) -> None:
    old, new = sorted((a, b))
    published = new_tiles(h, old, new)
    assert len(set(published)) == len(published)
    assert set(new_tiles(h, 0, new)) == _expected_tiles(h, new)
    # Old tiles plus the new ones give the new tree's tiles (newest width wins).
    merged = {(t.l, t.n): t for t in [*new_tiles(h, 0, old), *published]}
    assert set(merged.values()) == _expected_tiles(h, new)
    with pytest.raises(TlogError):
        new_tiles(h, new + 1, new)


def test_tiles_seen_by_go_in_the_protocol_notes() -> None:
    # Notes 4.5: 301 records, record 300 -> 0/001.p/45 and 1/000.p/1; with 302, record 0 adds 0/000.
    paths = [t.path() for t in tiles_needed_for_record(tree_of(301), 8, 300)]
    assert sorted(paths) == ["tile/8/0/001.p/45", "tile/8/1/000.p/1"]
    paths = [t.path() for t in tiles_needed_for_record(tree_of(302), 8, 0)]
    assert sorted(paths) == ["tile/8/0/000", "tile/8/0/001.p/46", "tile/8/1/000.p/1"]


# --- reading through tiles ------------------------------------------------------------


@given(st.integers(1, 1500), st.sampled_from([1, 2, 3, 8]), st.data())
@_SETTINGS
def test_tile_hash_reader_matches_direct_reader(n: int, h: int, data: st.DataObject) -> None:
    _, hashes = log_of(n)
    tree = tree_of(n)
    tiles = all_tiles(n, h)
    limit = stored_hash_index(0, n)
    indexes = data.draw(st.lists(st.integers(0, limit - 1), min_size=1, max_size=6))
    assert tile_hash_reader(tree, h, tiles).read_hashes(indexes) == [hashes[i] for i in indexes]
    # Go's uses: tree_hash of any prefix, record proofs.
    m = data.draw(st.integers(1, n))
    assert tree_hash(m, tile_hash_reader(tree, h, tiles)) == tree_hash(m, list_hash_reader(hashes))
    r = data.draw(st.integers(0, n - 1))
    proof = prove_record(n, r, tile_hash_reader(tree, h, tiles))
    check_record(proof, n, tree.hash, r, hashes[stored_hash_index(0, r)])


@given(st.integers(1, 1500), st.sampled_from([2, 3, 8]), st.data())
@_SETTINGS
def test_tile_hash_reader_names_exactly_the_missing_tiles(n: int, h: int, data: st.DataObject) -> None:
    tree = tree_of(n)
    tiles = all_tiles(n, h)
    record = data.draw(st.integers(0, n - 1))
    index = stored_hash_index(0, record)
    needed = tiles_needed_for_record(tree, h, record)
    assert set(needed) <= set(tiles)
    with pytest.raises(MissingTiles) as info:
        tile_hash_reader(tree, h, {}).read_hashes([index])
    assert info.value.tiles == needed
    # Exactly the needed tiles are enough.
    subset = {t: tiles[t] for t in needed}
    assert tile_hash_reader(tree, h, subset).read_hashes([index]) == [log_of(n)[1][index]]
    # Drop some: exactly those are named, in plan order.
    dropped = data.draw(st.lists(st.sampled_from(needed), min_size=1, unique=True))
    partial = {t: d for t, d in subset.items() if t not in dropped}
    with pytest.raises(MissingTiles) as info:
        tile_hash_reader(tree, h, partial).read_hashes([index])
    assert info.value.tiles == [t for t in needed if t in dropped]


@given(st.integers(1, 1500), st.sampled_from([2, 3, 8]), st.data())
@_SETTINGS
def test_tile_hash_reader_rejects_any_flipped_byte(n: int, h: int, data: st.DataObject) -> None:
    tree = tree_of(n)
    record = data.draw(st.integers(0, n - 1))
    needed = tiles_needed_for_record(tree, h, record)
    tiles = {t: all_tiles(n, h)[t] for t in needed}
    victim = data.draw(st.sampled_from(needed))
    pos = data.draw(st.integers(0, len(tiles[victim]) - 1))
    bad = bytearray(tiles[victim])
    bad[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(TlogError):
        tile_hash_reader(tree, h, {**tiles, victim: bytes(bad)}).read_hashes([stored_hash_index(0, record)])
    with pytest.raises(TlogError):
        tile_hash_reader(tree, h, {**tiles, victim: tiles[victim] + b"x"}).read_hashes([stored_hash_index(0, record)])


def test_tile_hash_reader_ignores_bad_tiles_it_does_not_use() -> None:
    tree = tree_of(700)
    tiles = all_tiles(700, 8)
    needed = tiles_needed_for_record(tree, 8, 699)
    unused = next(t for t in tiles if t not in needed)
    tiles[unused] = bytes(len(tiles[unused]))
    assert tile_hash_reader(tree, 8, tiles).read_hashes([stored_hash_index(0, 699)])


def test_tile_hash_reader_wrong_tree() -> None:
    tiles = all_tiles(300, 8)
    for tree in (Tree(300, record_hash(b"x")), tree_of(300, "fork"), Tree(299, tree_of(300).hash)):
        with pytest.raises((TlogError, MissingTiles)):
            tile_hash_reader(tree, 8, tiles).read_hashes([0])
    # Tiles of another log with the same size are refused, not just missing.
    with pytest.raises(TlogError):
        tile_hash_reader(tree_of(300, "fork"), 8, tiles).read_hashes([0])


def test_tile_hash_reader_index_bounds() -> None:
    tree = tree_of(10)
    reader = tile_hash_reader(tree, 8, all_tiles(10, 8))
    limit = stored_hash_index(0, 10)
    assert len(reader.read_hashes([limit - 1])) == 1
    for bad in (limit, -1, 1 << 80):
        with pytest.raises(TlogError):
            reader.read_hashes([bad])
    with pytest.raises(TlogError):
        tile_hash_reader(tree, 0, {})
    with pytest.raises(TlogError):
        tile_hash_reader(tree, 31, {})
    empty = tile_hash_reader(Tree(0, EMPTY_TREE_HASH), 8, {})
    assert empty.read_hashes([]) == []
    with pytest.raises(TlogError):
        empty.read_hashes([0])


@given(st.integers(1, 1200), st.integers(0, 1200), st.data())
@_SETTINGS
def test_full_tiles_stand_in_for_partial_ones(n: int, extra: int, data: st.DataObject) -> None:
    # A database that has moved on serves only full tiles where they exist (Go's fallback).
    big = n + extra
    tree = tree_of(n)
    newer = all_tiles(big, 8)
    tiles = {t: d for t, d in newer.items() if t.full}
    for t in tiles_needed_for_record(tree, 8, n - 1):
        if Tile(t.h, t.l, t.n, 256) not in tiles:
            tiles[t] = read_tile_data(t, list_hash_reader(log_of(big)[1]))
    record = data.draw(st.integers(0, n - 1))
    got = tile_hash_reader(tree, 8, tiles).read_hashes([stored_hash_index(0, record)])
    assert got == [record_hash(log_of(big)[0][record])]


@given(st.integers(1, 1500), st.integers(0, 1500), st.sampled_from([2, 8]))
@_SETTINGS
def test_tree_consistency_through_tiles(old_n: int, grow: int, h: int) -> None:
    new_n = old_n + grow
    old, new = tree_of(old_n), tree_of(new_n)
    needed = tiles_needed_for_tree_proof(old, new, h)
    with pytest.raises(MissingTiles) as info:
        tree_hash(old_n, tile_hash_reader(new, h, {}))
    assert info.value.tiles == needed
    tiles = {t: all_tiles(new_n, h)[t] for t in needed}
    assert tree_hash(old_n, tile_hash_reader(new, h, tiles)) == old.hash
    # A fork of the old tree is detected with the same tiles.
    assert tree_hash(old_n, tile_hash_reader(new, h, tiles)) != tree_of(old_n, "fork").hash
    assert tiles_needed_for_tree_proof(Tree(0, EMPTY_TREE_HASH), new, h) == []
    if grow:
        with pytest.raises(TlogError):
            tiles_needed_for_tree_proof(new, old, h)


# --- the go command as oracle -----------------------------------------------------------
#
# A tiny checksum database (lookup + hash tiles, from this module's code) on 127.0.0.1,
# a file:// module proxy, and `go mod download` with GOSUMDB="<vkey> http://127.0.0.1:PORT".

MODULE, VERSION = "example.com/hello", "v1.0.0"
DB_NAME = "sum.example.test"


@dataclass
class Module:
    proxy_dir: Path
    zip_h1: str
    mod_h1: str

    def record(self, zip_h1: str | None = None) -> bytes:
        return (f"{MODULE} {VERSION} {zip_h1 or self.zip_h1}\n{MODULE} {VERSION}/go.mod {self.mod_h1}\n").encode()


def make_module(root: Path) -> Module:
    info, mod, zdata = module_files(MODULE, VERSION)
    vdir = root / MODULE / "@v"
    vdir.mkdir(parents=True)
    (vdir / "list").write_text(VERSION + "\n")
    (vdir / f"{VERSION}.info").write_bytes(info)
    (vdir / f"{VERSION}.mod").write_bytes(mod)
    (vdir / f"{VERSION}.zip").write_bytes(zdata)
    return Module(root, modzip.h1_zip(vdir / f"{VERSION}.zip"), dirhash.h1_gomod(mod))


def filler(i: int) -> bytes:
    fake = base64.b64encode(hashlib.sha256(b"%d" % i).digest()).decode()
    return f"example.com/filler{i} v1.0.{i} h1:{fake}\nexample.com/filler{i} v1.0.{i}/go.mod h1:{fake}\n".encode()


@dataclass
class FakeSumDB:
    """A checksum database over `records`; it signs a head of size `head` (default: all)."""

    signer: Signer
    records: list[bytes]
    head: int | None = None
    hide_partial_tiles: bool = False  # 404 a .p/W when its full tile exists
    corrupt_tile: str | None = None  # flip a byte in this tile path
    record_text: dict[int, bytes] = field(default_factory=dict)  # serve other record text
    tile_overrides: dict[str, bytes] = field(default_factory=dict)  # serve other tile bytes
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hashes = build(self.records)

    @property
    def tree(self) -> Tree:
        n = len(self.records) if self.head is None else self.head
        return Tree(n, tree_hash(n, list_hash_reader(self.hashes)))

    def lookup(self, key: str) -> bytes | None:
        for i, r in enumerate(self.records[: self.tree.n]):
            if r.startswith(f"{key.replace('@', ' ')} ".encode()):
                text = self.record_text.get(i, r)
                return format_record(i, text) + sign_note(format_tree(self.tree), [self.signer])
        return None

    def tile(self, path: str) -> bytes | None:
        try:
            tile = parse_tile_path(path)
        except TlogError:
            return None
        n = len(self.records)
        if tile.l < 0 or (tile.n << tile.h) + tile.w > n >> (tile.l * tile.h):
            return None
        if self.hide_partial_tiles and not tile.full and ((tile.n + 1) << tile.h) <= n >> (tile.l * tile.h):
            return None
        data = self.tile_overrides.get(path) or read_tile_data(tile, list_hash_reader(self.hashes))
        if path == self.corrupt_tile:
            data = bytes([data[0] ^ 1]) + data[1:]
        return data

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["tail"]
        self.requests.append(path)
        body = None
        if path == "supported":
            body = b""
        elif path.startswith("lookup/"):
            body = self.lookup(path.removeprefix("lookup/"))
        elif path.startswith("tile/"):
            body = self.tile(path)
        if body is None:
            return web.Response(status=404, text="not found\n")
        return web.Response(body=body, content_type="text/plain")

    def tiles_fetched(self) -> set[str]:
        return {p for p in self.requests if p.startswith("tile/")}


class Harness:
    def __init__(self, tmp: Path, module: Module, db: FakeSumDB) -> None:
        self.tmp, self.module, self.db = tmp, module, db
        self.url = ""
        self.work = tmp / "work"
        self.work.mkdir(exist_ok=True)
        self.runner: web.AppRunner | None = None

    async def start(self, prefix: str = "") -> None:
        app = web.Application()
        app.router.add_get(prefix + "/{tail:.*}", self.db.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def env(self, **extra: str) -> dict[str, str]:
        vkey = self.db.signer.verifier().encode()
        proxy = self.module.proxy_dir.as_uri()
        return go_env(self.tmp, proxy, gosumdb=f"{vkey} {self.url}", **extra)

    async def download(self, **extra: str) -> tuple[bool, dict[str, str], str]:
        res = await run_go(["mod", "download", "-json", f"{MODULE}@{VERSION}"], self.env(**extra), self.work, 60)
        out = json.loads(res.stdout) if res.stdout.strip() else {}
        return res.ok, out, res.stderr + out.get("Error", "")


def our_verdict(db: FakeSumDB, verifier: Verifier) -> bytes:
    """The node's pipeline over the same bytes go saw: returns the authenticated record."""
    reply = db.lookup(f"{MODULE}@{VERSION}")
    assert reply is not None
    id, text, note = split_lookup(reply)
    tree = parse_tree(open_note(note, [verifier]).text)
    tiles: dict[Tile, bytes] = {}
    while True:
        try:
            (h,) = tile_hash_reader(tree, 8, tiles).read_hashes([stored_hash_index(0, id)])
            break
        except MissingTiles as missing:
            for t in missing.tiles:
                data = db.tile(t.path())
                if data is None and not t.full:
                    t = Tile(t.h, t.l, t.n, 1 << t.h)
                    data = db.tile(t.path())
                assert data is not None, t
                tiles[t] = data
    if h != record_hash(text):
        raise TlogError("cannot authenticate record data")
    return text


@pytest.fixture(scope="module")
def signer() -> Signer:
    return parse_signer(generate_key(DB_NAME)[0])


class Harnesses:
    """Starts databases over one module proxy; every server is stopped at teardown."""

    def __init__(self, tmp: Path, signer: Signer) -> None:
        self.tmp, self.signer = tmp, signer
        self.module = make_module(tmp / "proxy")
        self.made: list[Harness] = []

    async def __call__(
        self,
        records: list[bytes],
        prefix: str = "",
        head: int | None = None,
        hide_partial_tiles: bool = False,
        corrupt_tile: str | None = None,
        record_text: dict[int, bytes] | None = None,
        tile_overrides: dict[str, bytes] | None = None,
    ) -> Harness:
        db = FakeSumDB(
            self.signer, records, head, hide_partial_tiles, corrupt_tile, record_text or {}, tile_overrides or {}
        )
        h = Harness(self.tmp, self.module, db)
        self.made.append(h)
        await h.start(prefix)
        return h


@pytest.fixture
async def harness(tmp_path: Path, signer: Signer, go_bin: str) -> AsyncIterator[Harnesses]:
    made = Harnesses(tmp_path, signer)
    yield made
    for h in made.made:
        await h.stop()


def records_with_module(module: Module, n: int, at: int, record: bytes | None = None) -> list[bytes]:
    records = [filler(i) for i in range(n)]
    records[at] = record or module.record()
    return records


@pytest.mark.e2e
@pytest.mark.parametrize(("n", "at"), [(1, 0), (301, 300), (302, 0), (600, 517)])
async def test_go_accepts_our_database(harness: Harnesses, signer: Signer, n: int, at: int) -> None:
    module = harness.module
    h = await harness(records_with_module(module, n, at))
    ok, out, err = await h.download()
    assert ok, err
    assert out["Sum"] == module.zip_h1 and out["GoModSum"] == module.mod_h1
    # go fetched one lookup and exactly the tiles our planner names (no data tiles, no /latest).
    assert [p for p in h.db.requests if not p.startswith("tile/")] == [f"lookup/{MODULE}@{VERSION}"]
    assert h.db.tiles_fetched() == {t.path() for t in tiles_needed_for_record(h.db.tree, 8, at)}
    assert our_verdict(h.db, signer.verifier()) == module.record()


@pytest.mark.e2e
async def test_go_falls_back_to_full_tiles(harness: Harnesses, signer: Signer) -> None:
    module = harness.module
    h = await harness(records_with_module(module, 600, 300), head=301, hide_partial_tiles=True)
    ok, _, err = await h.download()
    assert ok, err
    assert {"tile/8/0/001.p/45", "tile/8/0/001", "tile/8/1/000.p/1"} <= set(h.db.requests)
    assert our_verdict(h.db, signer.verifier()) == module.record()


@pytest.mark.e2e
async def test_go_rejects_wrong_hash_in_consistent_log(harness: Harnesses, signer: Signer) -> None:
    module = harness.module
    wrong = module.record(zip_h1="h1:" + base64.b64encode(bytes(32)).decode())
    h = await harness(records_with_module(module, 5, 2, wrong))
    ok, _, err = await h.download()
    assert not ok
    assert "SECURITY ERROR" in err and "checksum mismatch" in err
    assert our_verdict(h.db, signer.verifier()) == wrong  # authentic, and wrong: the log proves it


@pytest.mark.e2e
async def test_go_rejects_record_not_in_tree(harness: Harnesses, signer: Signer) -> None:
    module = harness.module
    records = records_with_module(module, 5, 2, module.record(zip_h1="h1:" + base64.b64encode(bytes(32)).decode()))
    h = await harness(records, record_text={2: module.record()})
    ok, _, err = await h.download()
    assert not ok and "cannot authenticate record data" in err
    with pytest.raises(TlogError, match="authenticate"):
        our_verdict(h.db, signer.verifier())


@pytest.mark.e2e
async def test_go_rejects_tampered_tile(harness: Harnesses, signer: Signer) -> None:
    module = harness.module
    h = await harness(records_with_module(module, 301, 300), corrupt_tile="tile/8/0/001.p/45")
    ok, _, err = await h.download()
    assert not ok and "downloaded inconsistent tile" in err
    with pytest.raises(TlogError, match="inconsistent tile"):
        our_verdict(h.db, signer.verifier())


@pytest.mark.e2e
@pytest.mark.parametrize("fork", [False, True])
async def test_go_checks_new_head_against_old(harness: Harnesses, tmp_path: Path, fork: bool) -> None:
    module = harness.module
    first = await harness(records_with_module(module, 3, 0))
    ok, _, err = await first.download()
    assert ok, err
    old = first.db.tree
    later = records_with_module(module, 300, 0)
    overrides = {}
    if fork:
        # A split view: history rewritten at record 1, but the old head's own tile still
        # served as before (go re-checks its stored head against it at start-up).
        later[1] = filler(1000)
        overrides = {p: first.db.tile(p) or b"" for p in ["tile/8/0/000.p/3"]}
    second = await harness(later, tile_overrides=overrides)
    ok, _, err = await second.download(GOMODCACHE=str(tmp_path / "modcache2"))  # same GOPATH: same latest
    new = second.db.tree
    # go's client starts by merging GOPATH/pkg/sumdb/<db>/latest into an empty state and then
    # re-reads it: merging a head with itself checks it against its own tiles (old, old).
    # The new head is then checked against the old one, and the record against the new head.
    needed = {
        t.path()
        for t in [
            *tiles_needed_for_tree_proof(old, old, 8),
            *tiles_needed_for_tree_proof(old, new, 8),
            *tiles_needed_for_record(new, 8, 0),
        ]
    }
    consistent = tree_hash(old.n, tile_hash_reader(new, 8, all_tiles_of(second.db))) == old.hash
    assert consistent is not fork
    if fork:
        assert not ok
        assert "SECURITY ERROR" in err and "go.sum database server misbehavior detected" in err
    else:
        assert ok, err
    assert second.db.tiles_fetched() == needed


def all_tiles_of(db: FakeSumDB) -> dict[Tile, bytes]:
    reader = list_hash_reader(db.hashes)
    return {t: read_tile_data(t, reader) for t in new_tiles(8, 0, len(db.records))}


@pytest.mark.e2e
async def test_go_finds_database_through_proxy(harness: Harnesses, signer: Signer, tmp_path: Path) -> None:
    # Without a URL in GOSUMDB, go asks $GOPROXY/sumdb/<name>/supported and, on 200, uses
    # that base for every lookup and tile (the route a node's sumdb proxy will take).
    module = harness.module
    h = await harness(records_with_module(module, 10, 4), prefix=f"/modules/sumdb/{DB_NAME}")
    proxy = f"{h.url}/modules,{module.proxy_dir.as_uri()}"  # module files 404 here, then file://
    env = go_env(tmp_path, proxy, gosumdb=signer.verifier().encode())
    res = await run_go(["mod", "download", "-json", f"{MODULE}@{VERSION}"], env, h.work, 60)
    assert res.ok, res.stderr + res.stdout
    assert h.db.requests[:2] == ["supported", f"lookup/{MODULE}@{VERSION}"]
    assert h.db.tiles_fetched() == {t.path() for t in tiles_needed_for_record(h.db.tree, 8, 4)}
