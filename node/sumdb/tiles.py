"""Tiles of the checksum database's log, and reading hashes through them with every
tile authenticated against a signed tree head (a port of x/mod/sumdb/tlog/tile.go).

Go's TileHashReader fetches tiles itself; ours cannot block on the network, so
`tile_hash_reader` raises `MissingTiles` naming every tile it still needs and the
caller fetches them and retries with a larger mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.sumdb.records import Tree
from node.sumdb.tlog import (
    EMPTY_TREE_HASH,
    HASH_SIZE,
    MAX_HEIGHT,
    MAX_LEVEL,
    MAX_TREE_SIZE,
    HashReader,
    TlogError,
    check_size,
    node_hash,
    read_checked,
    split_stored_hash_index,
    stored_hash_index,
    sub_tree_index,
)

__all__ = [
    "MissingTiles",
    "Tile",
    "hash_from_tile",
    "new_tiles",
    "parse_tile_path",
    "read_tile_data",
    "tile_for_index",
    "tile_hash_reader",
    "tiles_needed_for_record",
    "tiles_needed_for_tree_proof",
]


# --- tiles ---------------------------------------------------------------------------


def _check_height(h: int) -> int:
    if not isinstance(h, int) or isinstance(h, bool) or not 1 <= h <= MAX_HEIGHT:
        raise TlogError(f"invalid tile height {h!r}")
    return h


@dataclass(frozen=True, order=True)
class Tile:
    """W consecutive hashes at tree level L·H starting at index N·2^H (L = -1: record data).

    Construction checks the coordinates: 1 ≤ H ≤ 30, 1 ≤ W ≤ 2^H, and the
    tile must lie inside a tree of int64 size.
    """

    h: int
    l: int  # noqa: E741 - Go's name, and the path's
    n: int
    w: int

    def __post_init__(self) -> None:
        _check_height(self.h)
        ints = (self.l, self.n, self.w)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in ints):
            raise TlogError(f"invalid tile {self!r}")
        level = max(self.l, 0) * self.h
        if (
            not self.l >= -1
            or level > MAX_LEVEL
            or not 1 <= self.w <= 1 << self.h
            or self.n < 0
            or (self.n << self.h) << level > MAX_TREE_SIZE
        ):
            raise TlogError(f"invalid tile (H={self.h} L={self.l} N={self.n} W={self.w})")

    @property
    def full(self) -> bool:
        return self.w == 1 << self.h

    def path(self) -> str:
        """`tile/H/L/NNN[.p/W]`, N in 3-digit groups with all but the last prefixed `x`."""
        groups = [f"{self.n % 1000:03d}"]
        n = self.n // 1000
        while n:
            groups.append(f"x{n % 1000:03d}")
            n //= 1000
        level = "data" if self.l == -1 else str(self.l)
        suffix = "" if self.full else f".p/{self.w}"
        return f"tile/{self.h}/{level}/{'/'.join(reversed(groups))}{suffix}"


class MissingTiles(Exception):
    """A tile reader needs these tiles (in Go's fetch order) before it can answer."""

    def __init__(self, tiles: Sequence[Tile]) -> None:
        self.tiles: list[Tile] = list(tiles)
        super().__init__("missing tiles: " + " ".join(t.path() for t in self.tiles))


_TILE_PATH = re.compile(r"tile/([0-9]{1,2})/(data|[0-9]{1,2})/((?:x[0-9]{3}/){0,6}[0-9]{3})(?:\.p/([0-9]{1,10}))?")


def parse_tile_path(path: str) -> Tile:
    """Parse a tile path; only the canonical spelling (as Tile.path writes it) is accepted."""
    m = _TILE_PATH.fullmatch(path) if isinstance(path, str) and len(path) <= 64 else None
    if m is None:
        raise TlogError(f"malformed tile path {str(path)[:80]!r}")
    h_s, l_s, n_s, w_s = m.groups()
    h = int(h_s)
    n = 0
    for group in n_s.split("/"):
        n = n * 1000 + int(group.removeprefix("x"))
    try:
        tile = Tile(h, -1 if l_s == "data" else int(l_s), n, int(w_s) if w_s else 1 << h)
    except TlogError:
        raise TlogError(f"malformed tile path {path!r}") from None
    if tile.path() != path:  # leading zeros, `.p/2^H`, ...
        raise TlogError(f"malformed tile path {path!r}")
    return tile


def _tile_for_index(h: int, index: int) -> tuple[Tile, int, int]:
    """The least-width tile holding stored hash `index`, and the byte range whose tile hash it is."""
    level, n = split_stored_hash_index(index)
    tl = level // h
    level -= tl * h  # level within the tile
    tn = (n << level) >> h
    n -= (tn << h) >> level  # index within the tile at that level
    tile = Tile(h, tl, tn, (n + 1) << level)
    return tile, (n << level) * HASH_SIZE, ((n + 1) << level) * HASH_SIZE


def tile_for_index(h: int, index: int) -> Tile:
    """The tile of height h and least width that stores hash `index`."""
    return _tile_for_index(_check_height(h), index)[0]


def _tile_hash(data: bytes) -> bytes:
    """Root of the complete subtree whose leaves are the hashes in data (2^k of them)."""
    if len(data) == HASH_SIZE:
        return data
    half = len(data) // 2
    return node_hash(_tile_hash(data[:half]), _tile_hash(data[half:]))


def hash_from_tile(tile: Tile, data: bytes, index: int) -> bytes:
    """The hash at `index` from `tile`'s data (tile = tile_for_index(tile.h, index) or wider)."""
    if tile.l < 0:
        raise TlogError(f"{tile.path()} holds record data, not hashes")
    if len(data) < tile.w * HASH_SIZE:
        raise TlogError(f"data length {len(data)} too short for tile {tile.path()}")
    t1, start, end = _tile_for_index(tile.h, index)
    if (tile.l, tile.n) != (t1.l, t1.n) or tile.w < t1.w:
        raise TlogError(f"index {index} is in {t1.path()}, not {tile.path()}")
    return _tile_hash(bytes(data[start:end]))


def new_tiles(h: int, old_n: int, new_n: int) -> list[Tile]:
    """The tiles to publish when the tree grows from old_n to new_n records.

    The list is as long as the growth (about (new_n - old_n) / 2^h tiles), so
    pass sizes you trust (your own log), never a size straight off the network.
    """
    _check_height(h)
    check_size(old_n, "old tree size")
    check_size(new_n)
    if old_n > new_n:
        raise TlogError(f"tree cannot shrink from {old_n} to {new_n}")
    tiles = []
    level = 0
    while new_n >> (h * level) > 0:
        old_w = old_n >> (h * level)
        new_w = new_n >> (h * level)
        if old_w != new_w:
            for n in range(old_w >> h, new_w >> h):
                tiles.append(Tile(h, level, n, 1 << h))
            n = new_w >> h
            if w := new_w - (n << h):
                tiles.append(Tile(h, level, n, w))
        level += 1
    return tiles


def read_tile_data(tile: Tile, reader: HashReader) -> bytes:
    """The bytes of a hash tile, read from stored hashes."""
    if tile.l < 0:
        raise TlogError(f"{tile.path()} holds record data, not hashes")
    start = tile.n << tile.h
    indexes = [stored_hash_index(tile.h * tile.l, start + i) for i in range(tile.w)]
    return b"".join(read_checked(reader, indexes))


# --- authenticated reading through tiles ------------------------------------------------


def _tile_parent(t: Tile, k: int, n: int) -> Tile | None:
    """t's k-th ancestor tile as it exists in a tree of n records (None if beyond the tree)."""
    level = t.l + k
    index = t.n >> (k * t.h)
    have = n >> (level * t.h)  # hashes at the ancestor's bottom level
    start = index << t.h
    if start >= have:
        return None
    return Tile(t.h, level, index, min(1 << t.h, have - start))


@dataclass(frozen=True)
class _Plan:
    tiles: list[Tile]  # parents before children, tree-hash tiles first
    order: dict[Tile, int]
    stx: list[int]  # stored indexes making up the tree hash
    stx_tile: list[int]  # stx[i] lives in tiles[stx_tile[i]]
    index_tile: list[int]  # indexes[i] lives in tiles[index_tile[i]]


def _plan(tree: Tree, h: int, indexes: Sequence[int]) -> _Plan:
    """Go's TileHashReader plan: which tiles authenticate these indexes against tree.hash."""
    tiles: list[Tile] = []
    order: dict[Tile, int] = {}

    def add(tile: Tile) -> int:
        order[tile] = len(tiles)
        tiles.append(tile)
        return order[tile]

    stx = sub_tree_index(0, tree.n, [])
    stx_tile = []
    for x in stx:
        tile = _tile_parent(_tile_for_index(h, x)[0], 0, tree.n)
        assert tile is not None
        stx_tile.append(order[tile] if tile in order else add(tile))

    limit = stored_hash_index(0, tree.n)
    index_tile = []
    for x in indexes:
        if not isinstance(x, int) or not 0 <= x < limit:
            raise TlogError(f"stored hash index {x!r} is not in the tree of size {tree.n}")
        tile = _tile_for_index(h, x)[0]
        # Walk up to an ancestor already planned (the tree-hash tiles cover the top) ...
        k = 0
        while (parent := _tile_parent(tile, k, tree.n)) not in order:
            if parent is None or k > MAX_LEVEL:  # pragma: no cover - index math bug
                raise AssertionError(f"tlog: lost parent of {tile.path()} in tree {tree.n}")
            k += 1
        found = order[parent]
        # ... then plan the tiles back down, each authenticated by its parent.
        for j in reversed(range(k)):
            child = _tile_parent(tile, j, tree.n)
            if child is None or not child.full:  # pragma: no cover - index math bug
                raise AssertionError(f"tlog: tile with a parent is not full in tree {tree.n}")
            found = add(child)
        index_tile.append(found)
    return _Plan(tiles, order, stx, stx_tile, index_tile)


@dataclass(frozen=True)
class _TileHashReader:
    tree: Tree
    h: int
    tiles: Mapping[Tile, bytes]

    def _data(self, tile: Tile) -> bytes | None:
        """The tile's bytes: the tile itself, else the first W hashes of its full version."""
        data = self.tiles.get(tile)
        if data is not None:
            if len(data) != tile.w * HASH_SIZE:
                raise TlogError(f"tile {tile.path()} has {len(data)} bytes, want {tile.w * HASH_SIZE}")
            return bytes(data)
        if tile.full:
            return None
        full = Tile(tile.h, tile.l, tile.n, 1 << tile.h)
        data = self.tiles.get(full)
        if data is None:
            return None
        if len(data) != full.w * HASH_SIZE:
            raise TlogError(f"tile {full.path()} has {len(data)} bytes, want {full.w * HASH_SIZE}")
        return bytes(data[: tile.w * HASH_SIZE])

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        tree = self.tree
        plan = _plan(tree, self.h, indexes)
        if tree.n == 0:
            if tree.hash != EMPTY_TREE_HASH:
                raise TlogError("tree of size 0 does not have the empty tree hash")
            return []
        found = [self._data(t) for t in plan.tiles]
        missing = [t for t, d in zip(plan.tiles, found) if d is None]
        if missing:
            raise MissingTiles(missing)
        data = [d for d in found if d is not None]

        # The tree-hash tiles must reproduce the signed root ...
        th = b""
        for x, j in reversed(list(zip(plan.stx, plan.stx_tile))):
            hx = hash_from_tile(plan.tiles[j], data[j], x)
            th = hx if not th else node_hash(hx, th)
        if th != tree.hash:
            raise TlogError("downloaded inconsistent tile")
        # ... and every other tile must hash to the entry its parent holds for it.
        for i in range(plan.stx_tile[-1] + 1, len(plan.tiles)):
            tile = plan.tiles[i]
            parent = _tile_parent(tile, 1, tree.n)
            assert parent is not None
            j = plan.order[parent]
            want = hash_from_tile(parent, data[j], stored_hash_index(parent.l * parent.h, tile.n))
            if want != _tile_hash(data[i]):
                raise TlogError("downloaded inconsistent tile")

        return [hash_from_tile(plan.tiles[j], data[j], x) for x, j in zip(indexes, plan.index_tile)]


def tile_hash_reader(tree: Tree, h: int, tiles: Mapping[Tile, bytes]) -> HashReader:
    """A HashReader over tiles of height h, every hash authenticated against tree.hash.

    read_hashes raises MissingTiles (all of them, parents first) when `tiles`
    lacks one it needs, and TlogError when the tiles do not lead to the tree
    hash. A partial tile may be supplied as its full version (Go's fallback
    when a database no longer serves `.p/W` paths).
    """
    return _TileHashReader(tree, _check_height(h), tiles)


def tiles_needed_for_record(tree: Tree, h: int, record_index: int) -> list[Tile]:
    """The tiles Go's client fetches to authenticate record `record_index` in `tree`."""
    check_size(record_index, "record index")
    if record_index >= tree.n:
        raise TlogError(f"record {record_index} is not in the tree of size {tree.n}")
    return _plan(tree, _check_height(h), [stored_hash_index(0, record_index)]).tiles


def tiles_needed_for_tree_proof(old: Tree, new: Tree, h: int) -> list[Tile]:
    """The tiles Go's client fetches to check that `new` extends `old` (tree_hash(old.n) from new's tiles)."""
    _check_height(h)
    if old.n > new.n:
        raise TlogError(f"tree of size {old.n} cannot be a prefix of one of size {new.n}")
    if old.n == 0:
        return []
    return _plan(new, h, sub_tree_index(0, old.n, [])).tiles
