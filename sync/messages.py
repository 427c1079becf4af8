"""Wire messages between nodes: msgpack bodies with hard size bounds.

Two messages, both bounded whatever the mesh or store size:

* `Gossip` (POST /_mesh/gossip, answered with the receiver's own): who the sender
  is, its inventory head (epoch + serial), a bounded sample of the member view,
  its most popular module versions (never a private one) and its own private
  module patterns (sync/privacy.py). Never the inventory itself.
* `InventoryPage` (GET /_mesh/inventory?epoch=&after=&limit=): up to 1000 of the
  sender's index entries after a serial (Syncthing's delta index, devpi's
  changelog); `reset` says the asker's epoch was stale and the page starts over.

Encoders trim lists until the message fits, decoders refuse anything oversized or
ill-typed with MessageError, so no peer can make another allocate without bound.
The private patterns are never trimmed (a node whose patterns exceed the bounds
does not start its mesh): dropping one would let members leak what it names.

Protocol 2 added the private patterns. Nodes of protocol 1 do not honour them, so
they and protocol-2 nodes ignore each other (409 to gossip, skipped in mDNS): a
mesh is upgraded as a whole. Decoding stays lenient (a message without patterns
declares none) so that the refusal is the protocol check's, with a clear log line.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

PROTOCOL = 2
MAX_GOSSIP_BYTES = 256 << 10
MAX_PAGE_BYTES = 1 << 20
MAX_MEMBERS = 64
MAX_POPULAR = 128
MAX_PAGE_ENTRIES = 1000
MAX_ID = 64
MAX_URL = 512
MAX_MODULE = 1024
MAX_VERSION = 1024
MAX_EPOCH = 64
#: A node's own private patterns in a gossip message: at most this many, this long.
MAX_PRIVATE = 128
MAX_PATTERN = 512
STATES = ("alive", "suspect", "dead")
KINDS = ("info", "mod", "zip")
MAX_SCORE = 1e12


class MessageError(ValueError):
    """A peer sent a body that is not a valid, bounded message."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: str
    url: str
    heartbeat: int
    state: str


@dataclass(frozen=True, slots=True)
class Popular:
    module: str
    version: str
    score: float


@dataclass(frozen=True, slots=True)
class Gossip:
    node_id: str
    mesh: str
    protocol: int
    url: str
    heartbeat: int
    epoch: str
    head: int
    count: int
    members: tuple[MemberInfo, ...] = ()
    popular: tuple[Popular, ...] = ()
    #: The sender's own private module patterns (GOPRIVATE syntax, one each).
    private: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InvEntry:
    serial: int
    module: str
    version: str
    kind: str
    sha256: bytes
    h1: bytes | None
    size: int


@dataclass(frozen=True, slots=True)
class InventoryPage:
    epoch: str
    #: The sender's newest serial (how far behind the asker is).
    head: int
    #: The asker's epoch was not ours: this page starts from the beginning.
    reset: bool
    more: bool
    entries: tuple[InvEntry, ...] = ()
    #: The serial this page covers up to (ask for `after=last` next); entries the
    #: sender could not put on the wire are skipped, not repeated forever.
    last: int = 0


def h1_to_bytes(h1: str | None) -> bytes | None:
    """`h1:<base64 sha256>` as its 32 raw bytes (half the size on the wire and in memory)."""
    if not h1 or not h1.startswith("h1:"):
        return None
    try:
        raw = base64.b64decode(h1[3:], validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def bytes_to_h1(raw: bytes | None) -> str | None:
    return None if raw is None else "h1:" + base64.b64encode(raw).decode()


# ---- encoding ---------------------------------------------------------------------


def _pack(obj: object) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def encode_gossip(g: Gossip, limit: int = MAX_GOSSIP_BYTES) -> bytes:
    """Pack `g`, dropping members and popular entries from the end until it fits.
    The private patterns always go whole (MessageError if they are out of bounds)."""
    if not patterns_fit(g.private):
        raise MessageError(f"at most {MAX_PRIVATE} private patterns of at most {MAX_PATTERN} characters")
    g = replace(g, members=g.members[:MAX_MEMBERS], popular=g.popular[:MAX_POPULAR])
    while True:
        data = _pack(
            {
                "n": g.node_id,
                "m": g.mesh,
                "p": g.protocol,
                "u": g.url,
                "hb": g.heartbeat,
                "e": g.epoch,
                "h": g.head,
                "c": g.count,
                "mb": [[m.node_id, m.url, m.heartbeat, m.state] for m in g.members],
                "pop": [[p.module, p.version, p.score] for p in g.popular],
                "pv": list(g.private),
            }
        )
        if len(data) <= limit:
            return data
        if not g.members and not g.popular:
            raise MessageError("gossip header alone exceeds the message bound")
        g = replace(g, members=g.members[: len(g.members) // 2], popular=g.popular[: len(g.popular) // 2])


def encode_page(page: InventoryPage, limit: int = MAX_PAGE_BYTES) -> bytes:
    """Pack a page; entries that would not fit are left for the next page (`more`).
    A single entry too large for any page is skipped (`last` moves past it), so an
    asker can never be stuck re-asking for it."""
    entries = page.entries[:MAX_PAGE_ENTRIES]
    while True:
        if len(entries) == len(page.entries):
            more, last = page.more, page.last
        elif entries:
            more, last = True, entries[-1].serial
        else:
            more, last = True, page.entries[0].serial
        data = _pack(
            {
                "e": page.epoch,
                "h": page.head,
                "r": page.reset,
                "more": more,
                "l": last,
                "es": [[x.serial, x.module, x.version, x.kind, x.sha256, x.h1, x.size] for x in entries],
            }
        )
        if len(data) <= limit or not entries:
            return data
        entries = entries[: len(entries) // 2]


def patterns_fit(patterns: Sequence[str]) -> bool:
    """Whether a node's private patterns can travel in gossip (decoders refuse more)."""
    return len(patterns) <= MAX_PRIVATE and all(0 < len(p) <= MAX_PATTERN and "," not in p for p in patterns)


def fits(e: InvEntry) -> bool:
    """Whether an index entry can go on the wire (decoders refuse longer strings)."""
    return len(e.module) <= MAX_MODULE and len(e.version) <= MAX_VERSION and 0 <= e.size < 1 << 63


# ---- decoding ---------------------------------------------------------------------


def _unpack(data: bytes, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise MessageError(f"message of {len(data)} bytes exceeds the {limit}-byte bound")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=4 * MAX_PAGE_ENTRIES,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises a zoo of types for malformed input
        raise MessageError(f"not a msgpack message: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise MessageError("message is not a map")
    return obj


def _str(v: object, what: str, limit: int, empty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > limit or (not empty and not v):
        raise MessageError(f"{what} must be a string of at most {limit} characters")
    return v


def _int(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
        raise MessageError(f"{what} must be a non-negative integer")
    return v


def _list(v: object, what: str, limit: int) -> list[Any]:
    if not isinstance(v, list) or len(v) > limit:
        raise MessageError(f"{what} must be a list of at most {limit} items")
    return v


def _row(v: object, what: str, n: int) -> Sequence[Any]:
    if not isinstance(v, list) or len(v) != n:
        raise MessageError(f"{what} must be a list of {n} fields")
    return v


def decode_gossip(data: bytes) -> Gossip:
    o = _unpack(data, MAX_GOSSIP_BYTES)
    members = []
    for raw in _list(o.get("mb", []), "members", MAX_MEMBERS):
        node_id, url, hb, state = _row(raw, "member", 4)
        if state not in STATES:
            raise MessageError("member state must be alive, suspect or dead")
        members.append(
            MemberInfo(
                _str(node_id, "member id", MAX_ID),
                _str(url, "member url", MAX_URL, True),
                _int(hb, "member heartbeat"),
                state,
            )
        )
    popular = []
    for raw in _list(o.get("pop", []), "popular", MAX_POPULAR):
        module, version, score = _row(raw, "popular entry", 3)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise MessageError("popularity score must be a finite number")
        popular.append(
            Popular(
                _str(module, "module", MAX_MODULE),
                _str(version, "version", MAX_VERSION),
                min(max(float(score), 0.0), MAX_SCORE),
            )
        )
    private = []
    for raw in _list(o.get("pv", []), "private patterns", MAX_PRIVATE):
        pattern = _str(raw, "private pattern", MAX_PATTERN)
        if "," in pattern:
            raise MessageError("a private pattern is one pattern, without ','")
        private.append(pattern)
    protocol = o.get("p")
    return Gossip(
        node_id=_str(o.get("n"), "node id", MAX_ID),
        mesh=_str(o.get("m"), "mesh name", MAX_ID),
        protocol=_int(protocol, "protocol"),
        url=_str(o.get("u", ""), "url", MAX_URL, empty=True),
        heartbeat=_int(o.get("hb"), "heartbeat"),
        epoch=_str(o.get("e", ""), "epoch", MAX_EPOCH, empty=True),
        head=_int(o.get("h"), "head"),
        count=_int(o.get("c", 0), "count"),
        members=tuple(members),
        popular=tuple(popular),
        private=tuple(private),
    )


def decode_page(data: bytes) -> InventoryPage:
    o = _unpack(data, MAX_PAGE_BYTES)
    entries = []
    prev = -1
    for raw in _list(o.get("es", []), "entries", MAX_PAGE_ENTRIES):
        serial, module, version, kind, sha, h1, size = _row(raw, "entry", 7)
        serial = _int(serial, "serial")
        if serial <= prev:
            raise MessageError("inventory entries must be in increasing serial order")
        prev = serial
        if kind not in KINDS:
            raise MessageError("entry kind must be info, mod or zip")
        if not isinstance(sha, bytes) or len(sha) != 32:
            raise MessageError("entry sha256 must be 32 bytes")
        if h1 is not None and (not isinstance(h1, bytes) or len(h1) != 32):
            raise MessageError("entry h1 must be 32 bytes or nil")
        entries.append(
            InvEntry(
                serial,
                _str(module, "module", MAX_MODULE),
                _str(version, "version", MAX_VERSION),
                kind,
                sha,
                h1,
                _int(size, "size"),
            )
        )
    reset, more = o.get("r", False), o.get("more", False)
    if not isinstance(reset, bool) or not isinstance(more, bool):
        raise MessageError("reset and more must be booleans")
    last = _int(o.get("l", prev if prev >= 0 else 0), "last")
    if entries and last < entries[-1].serial:
        raise MessageError("page's last serial is before its entries")
    return InventoryPage(
        epoch=_str(o.get("e"), "epoch", MAX_EPOCH),
        head=_int(o.get("h"), "head"),
        reset=reset,
        more=more,
        entries=tuple(entries),
        last=last,
    )
