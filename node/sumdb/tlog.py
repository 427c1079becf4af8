"""Transparent-log math for the Go checksum database (a port of x/mod/sumdb/tlog).

The log is an RFC 6962 Merkle tree over go.sum records. Hashes are stored in
Crosby-Wallach order (`stored_hash_index`) and published as tiles of height H
(the go command uses H=8). A client trusts only a signed tree head
(`Tree`: size and root hash); every hash it reads from a tile must be
authenticated against that root, which is what `tiles.tile_hash_reader` does.

Everything here is a pure function of its arguments. Go's TileHashReader
fetches tiles itself; ours cannot block on the network, so it raises
`MissingTiles` naming every tile it still needs and the caller fetches them
and retries with a larger mapping.

Inputs that come from the network are bounded: tree sizes and record ids fit
Go's int64, tile heights are 1..30, tile coordinates must describe hashes a
tree of int64 size could hold, and every malformed input raises `TlogError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "EMPTY_TREE_HASH",
    "HASH_SIZE",
    "MAX_HEIGHT",
    "MAX_LOOKUP_SIZE",
    "MAX_TREE_SIZE",
    "HashReader",
    "TlogError",
    "check_record",
    "check_tree",
    "list_hash_reader",
    "node_hash",
    "prove_record",
    "prove_tree",
    "record_hash",
    "split_stored_hash_index",
    "stored_hash_count",
    "stored_hash_index",
    "stored_hashes",
    "stored_hashes_for_record_hash",
    "tree_hash",
]

HASH_SIZE = 32
#: Go keeps sizes and ids in int64; anything larger is not a tree Go can hold.
MAX_TREE_SIZE = (1 << 63) - 1
#: Go's bound on tile heights (Tile.H); the go command itself uses 8.
MAX_HEIGHT = 30
#: Cap on a lookup reply or tree text (Go's ParseTree refuses texts over 1e6 bytes).
MAX_LOOKUP_SIZE = 1_000_000
#: RFC 6962: the empty tree hashes to SHA-256 of the empty string.
EMPTY_TREE_HASH = hashlib.sha256(b"").digest()

MAX_LEVEL = 63


class TlogError(ValueError):
    """Malformed log data, a failed proof, or tiles that do not lead to the tree hash."""


class HashReader(Protocol):
    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        """The hashes at these stored-hash indexes, in order, or an exception."""
        ...


# --- hashing -------------------------------------------------------------------


def check_hash(value: object, what: str = "hash") -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != HASH_SIZE:
        raise TlogError(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def record_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the leaf hash of a record (RFC 6962 2.1)."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): an interior node."""
    return hashlib.sha256(b"\x01" + check_hash(left, "left") + check_hash(right, "right")).digest()


def _maxpow2(n: int) -> tuple[int, int]:
    """(k, log2 k) for the largest power of two k smaller than n (k=1 when n <= 2)."""
    level = max(0, (n - 1).bit_length() - 1)
    return 1 << level, level


def _trailing_zeros(x: int) -> int:
    return (x & -x).bit_length() - 1


# --- stored hash order -----------------------------------------------------------


def check_size(n: int, what: str = "tree size") -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_TREE_SIZE:
        raise TlogError(f"{what} {n!r} out of range")
    return n


def stored_hash_index(level: int, n: int) -> int:
    """The position of hash (level, n) in the dense order records are written in.

    Level ℓ's n-th hash is written right after level ℓ+1's (2n+1)-th, so it
    lands after leaf m = ((n+1)<<ℓ)-1, whose own position is
    m + m/2 + m/4 + ... = 2m - popcount(m).
    """
    if not (isinstance(level, int) and isinstance(n, int)) or not 0 <= level <= MAX_LEVEL or n < 0:
        raise TlogError(f"invalid hash coordinates ({level!r}, {n!r})")
    m = ((n + 1) << level) - 1  # the last leaf under this hash
    if m > MAX_TREE_SIZE:
        raise TlogError(f"hash ({level}, {n}) is beyond any int64-sized tree")
    return 2 * m - m.bit_count() + level


_MAX_STORED_INDEX = 2 * MAX_TREE_SIZE  # stored_hash_index(63, 0), the largest defined


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The inverse of stored_hash_index: (level, n)."""
    if not isinstance(index, int) or not 0 <= index <= _MAX_STORED_INDEX:
        raise TlogError(f"stored hash index {index!r} out of range")
    # stored_hash_index(0, n) < 2n, so the leaf written just before index is
    # within log2(index) of index/2; each leaf n adds 1 + trailing_zeros(n+1) hashes.
    n = index // 2
    index_n = stored_hash_index(0, n)
    while True:
        x = index_n + 1 + _trailing_zeros(n + 1)
        if x > index:
            break
        n += 1
        index_n = x
    level = index - index_n
    return level, n >> level


def stored_hash_count(n: int) -> int:
    """How many stored hashes a tree of n records has."""
    check_size(n)
    if n == 0:
        return 0
    count = stored_hash_index(0, n - 1) + 1
    i = n - 1
    while i & 1:  # subtrees completed by the last leaf
        count += 1
        i >>= 1
    return count


def read_checked(reader: HashReader, indexes: list[int]) -> list[bytes]:
    """reader.read_hashes, checked: one well-formed hash per index."""
    hashes = reader.read_hashes(indexes)
    if len(hashes) != len(indexes):
        raise TlogError(f"read_hashes({len(indexes)} indexes) returned {len(hashes)} hashes")
    return [check_hash(h) for h in hashes]


def stored_hashes(n: int, data: bytes, reader: HashReader) -> list[bytes]:
    """The hashes to store, from stored_hash_index(0, n) on, when appending record n."""
    return stored_hashes_for_record_hash(n, record_hash(data), reader)


def stored_hashes_for_record_hash(n: int, h: bytes, reader: HashReader) -> list[bytes]:
    """Like stored_hashes, given record_hash(data)."""
    check_size(n, "record index")
    hashes = [check_hash(h)]
    # Each trailing 1 bit of n completes a subtree whose left sibling is already stored.
    m = _trailing_zeros(n + 1)
    indexes = [stored_hash_index(i, (n >> i) - 1) for i in reversed(range(m))]
    old = read_checked(reader, indexes)
    for i in range(m):
        h = node_hash(old[m - 1 - i], h)
        hashes.append(h)
    return hashes


@dataclass(frozen=True)
class _ListReader:
    hashes: Sequence[bytes]

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        out = []
        for x in indexes:
            if not 0 <= x < len(self.hashes):
                raise TlogError(f"stored hash {x} not available ({len(self.hashes)} stored)")
            out.append(self.hashes[x])
        return out


def list_hash_reader(hashes: Sequence[bytes]) -> HashReader:
    """A reader over stored hashes held in order (what a log built with stored_hashes has)."""
    return _ListReader(hashes)


# --- tree hashes and proofs --------------------------------------------------------


def sub_tree_index(lo: int, hi: int, need: list[int]) -> list[int]:
    """Append the stored indexes whose hashes make up the subtree over records [lo, hi)."""
    while lo < hi:
        k, level = _maxpow2(hi - lo + 1)
        need.append(stored_hash_index(level, lo >> level))
        lo += k
    return need


def _sub_tree_hash(lo: int, hi: int, hashes: Iterator[bytes]) -> bytes:
    """Hash of the subtree over [lo, hi) from the hashes sub_tree_index named (consumed)."""
    parts = []
    while lo < hi:
        k, _ = _maxpow2(hi - lo + 1)
        parts.append(next(hashes))
        lo += k
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def _drained(hashes: Iterator[bytes]) -> None:
    if next(hashes, None) is not None:  # pragma: no cover - index math bug
        raise AssertionError("tlog: bad index math")


def tree_hash(n: int, reader: HashReader) -> bytes:
    """Root hash of the tree of n records, from at most 1 + log2(n) stored hashes."""
    check_size(n)
    if n == 0:
        return EMPTY_TREE_HASH
    hashes = iter(read_checked(reader, sub_tree_index(0, n, [])))
    h = _sub_tree_hash(0, n, hashes)
    _drained(hashes)
    return h


def _leaf_proof_index(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if lo + 1 == hi:
        return need
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        _leaf_proof_index(lo, lo + k, n, need)
        sub_tree_index(lo + k, hi, need)
    else:
        sub_tree_index(lo, lo + k, need)
        _leaf_proof_index(lo + k, hi, n, need)
    return need


def _leaf_proof(lo: int, hi: int, n: int, hashes: Iterator[bytes]) -> list[bytes]:
    if lo + 1 == hi:
        return []  # the verifier knows the leaf
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        p = _leaf_proof(lo, lo + k, n, hashes)
        th = _sub_tree_hash(lo + k, hi, hashes)
    else:
        th = _sub_tree_hash(lo, lo + k, hashes)
        p = _leaf_proof(lo + k, hi, n, hashes)
    return [*p, th]


def prove_record(t: int, n: int, reader: HashReader) -> list[bytes]:
    """The audit path proving that the tree of size t contains record n."""
    check_size(t)
    check_size(n, "record index")
    if n >= t:
        raise TlogError(f"record {n} is not in a tree of size {t}")
    indexes = _leaf_proof_index(0, t, n, [])
    if not indexes:
        return []
    hashes = iter(read_checked(reader, indexes))
    proof = _leaf_proof(0, t, n, hashes)
    _drained(hashes)
    return proof


def _run_record_proof(p: Sequence[bytes], lo: int, hi: int, n: int, leaf: bytes) -> bytes:
    if lo + 1 == hi:
        if p:
            raise TlogError("invalid transparency proof")
        return leaf
    if not p:
        raise TlogError("invalid transparency proof")
    k, _ = _maxpow2(hi - lo)
    if n < lo + k:
        return node_hash(_run_record_proof(p[:-1], lo, lo + k, n, leaf), p[-1])
    return node_hash(p[-1], _run_record_proof(p[:-1], lo + k, hi, n, leaf))


def check_record(proof: Sequence[bytes], t: int, th: bytes, n: int, h: bytes) -> None:
    """Raise TlogError unless proof shows the tree (t, th) has record n with hash h."""
    check_size(t)
    check_size(n, "record index")
    if n >= t:
        raise TlogError(f"record {n} is not in a tree of size {t}")
    proof = [check_hash(x, "proof hash") for x in proof]
    if _run_record_proof(proof, 0, t, n, check_hash(h)) != check_hash(th, "tree hash"):
        raise TlogError("invalid transparency proof")


def _tree_proof_index(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if n == hi:
        return need if lo == 0 else sub_tree_index(lo, hi, need)
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        _tree_proof_index(lo, lo + k, n, need)
        sub_tree_index(lo + k, hi, need)
    else:
        sub_tree_index(lo, lo + k, need)
        _tree_proof_index(lo + k, hi, n, need)
    return need


def _tree_proof(lo: int, hi: int, n: int, hashes: Iterator[bytes]) -> list[bytes]:
    if n == hi:
        # The whole old tree needs no hash (the verifier has it); a fringe needs one.
        return [] if lo == 0 else [_sub_tree_hash(lo, hi, hashes)]
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        p = _tree_proof(lo, lo + k, n, hashes)
        th = _sub_tree_hash(lo + k, hi, hashes)
    else:
        th = _sub_tree_hash(lo, lo + k, hashes)
        p = _tree_proof(lo + k, hi, n, hashes)
    return [*p, th]


def _check_tree_sizes(t: int, n: int) -> None:
    check_size(t)
    check_size(n, "old tree size")
    if not 1 <= n <= t:
        raise TlogError(f"cannot prove tree of size {n} inside tree of size {t}")


def prove_tree(t: int, n: int, reader: HashReader) -> list[bytes]:
    """The consistency proof that the tree of size t extends the tree of size n."""
    _check_tree_sizes(t, n)
    indexes = _tree_proof_index(0, t, n, [])
    if not indexes:
        return []
    hashes = iter(read_checked(reader, indexes))
    proof = _tree_proof(0, t, n, hashes)
    _drained(hashes)
    return proof


def _run_tree_proof(p: Sequence[bytes], lo: int, hi: int, n: int, old: bytes) -> tuple[bytes, bytes]:
    """(implied hash of [lo, hi) in the old tree, in the new tree)."""
    if n == hi:
        if lo == 0:
            if p:
                raise TlogError("invalid transparency proof")
            return old, old
        if len(p) != 1:
            raise TlogError("invalid transparency proof")
        return p[0], p[0]
    if not p:
        raise TlogError("invalid transparency proof")
    k, _ = _maxpow2(hi - lo)
    if n <= lo + k:
        oh, th = _run_tree_proof(p[:-1], lo, lo + k, n, old)
        return oh, node_hash(th, p[-1])
    oh, th = _run_tree_proof(p[:-1], lo + k, hi, n, old)
    return node_hash(p[-1], oh), node_hash(p[-1], th)


def check_tree(proof: Sequence[bytes], t: int, th: bytes, n: int, h: bytes) -> None:
    """Raise TlogError unless proof shows the tree (t, th) extends the tree (n, h)."""
    _check_tree_sizes(t, n)
    proof = [check_hash(x, "proof hash") for x in proof]
    h = check_hash(h, "old tree hash")
    oh, nh = _run_tree_proof(proof, 0, t, n, h)
    if oh != h or nh != check_hash(th, "tree hash"):
        raise TlogError("invalid transparency proof")
