"""HTTP/1.1 request heads as the fast path reads them, and how long it waits for one.

Pure code, no I/O, so each rule is tested on its own. aiohttp's request parser
(llhttp, strict for requests) is the reference: a head it would refuse is never
answered or held here, but handed to it at once, and it answers 400
(tests/test_http1.py holds generated heads against that parser).

- `read_head`: what a complete head is: a plain GET the fast path may answer, a
  request aiohttp answers whose end the fast path knows (no body, or Content-Length),
  or one aiohttp must read alone (malformed, chunked, an upgrade).
- `broken_line`: a CR or LF that is not part of a CRLF, found while a head is still
  arriving (aiohttp refuses bare LF line endings; waiting for a CRLF CRLF that never
  comes would hold the connection until a timer).
- `ReadDeadline`: when a connection waiting for a request is closed: `keepalive`
  after the last answer while nothing arrives; `head_timeout` after the first byte of
  a head, however the rest trickles in (a total deadline, never extended per byte;
  nginx's `client_header_timeout`).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

#: Longest head read here: aiohttp's longest request line (max_line_size 8190) and
#: its CRLF. A longer head goes to aiohttp, which refuses a line over its limits
#: (8190 bytes) with 400 and reads anything else (up to 128 fields).
MAX_HEAD = 8192

_LONE = re.compile(rb"\r[^\n]|(?<!\r)\n")
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
#: A whole head in one match: a request line, then fields of printable ASCII (and HTAB)
#: only, so no control character, DEL, bare CR or LF, non-ASCII byte or folded line.
_HEAD = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/1\.[01])(?:\r\n" + _TOKEN + rb":[\t\x20-\x7e]*)*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
#: Fields aiohttp refuses to see twice in a request (RFC 9110 singletons).
_SINGLETONS = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)


class Head(NamedTuple):
    """A well-formed head: `target` when the fast path may answer it (a plain GET), the
    body's length, whether the client asked to close, whether a peer sent it."""

    target: str | None
    body: int
    close: bool
    from_peer: bool


def broken_line(buf: bytes | bytearray, start: int = 0) -> bool:
    """Whether `buf[start:]` holds a bare CR or LF (a CR at the very end may still get its LF)."""
    return _LONE.search(buf, max(0, start - 1)) is not None


def read_head(head: bytes | bytearray, hop: str) -> Head | None:
    """`head` (up to, without, its CRLF CRLF) read by aiohttp's rules, or None when
    aiohttp must read it alone: malformed (it answers 400: a bad token or character, a
    bare CR or LF, a repeated singleton field, HTTP/1.1 without Host), a body of unknown
    length, an upgrade, CONNECT, anything not ASCII. `hop` is the peer header, lower-case."""
    whole = _HEAD.fullmatch(head)
    if whole is None or whole[1] == b"CONNECT":
        return None
    target = whole[2].decode("ascii")
    version = whole[3]
    answerable = (
        whole[1] == b"GET"
        and version == b"HTTP/1.1"
        and target[:1] == "/"
        and "?" not in target
        and "#" not in target
        and not target.startswith(("/_", "/sumdb/"))
    )
    body = 0
    close = from_peer = False
    seen: set[bytes] = set()
    peer = hop.encode()
    for raw_name, raw_value in _fields(hop).findall(head, whole.end(3)):
        name = raw_name.lower()
        value = raw_value.strip(b" \t")
        if name in _SINGLETONS:
            if name in seen:
                return None
            seen.add(name)
        if name == b"content-length":
            if not _DIGITS.fullmatch(value):
                return None  # not a number: aiohttp judges
            body = int(value)
        elif name in (b"transfer-encoding", b"upgrade"):
            return None
        elif name == b"connection":
            tokens = {t.strip(b" \t") for t in value.lower().split(b",")}
            if b"upgrade" in tokens:
                return None
            close = close or b"close" in tokens
        elif name == peer:
            from_peer = True
        elif name in (b"expect", b"authorization"):
            answerable = False
    if version == b"HTTP/1.1" and b"host" not in seen:
        return None  # aiohttp answers 400
    if body > 0:
        answerable = False
    return Head(target if answerable else None, body, close, from_peer)


@functools.lru_cache(maxsize=4)
def _fields(hop: str) -> re.Pattern[bytes]:
    """The fields `read_head` looks at, found in one pass (a head is whole and valid by then)."""
    names = sorted(_SINGLETONS | {b"upgrade", b"connection", b"expect", b"authorization", hop.encode()})
    return re.compile(rb"\r\n(" + b"|".join(map(re.escape, names)) + rb"):([^\r]*)", re.IGNORECASE)


class ReadDeadline:
    """When a connection that waits for a request is closed (times from the caller's
    clock: the event loop's, or a test's)."""

    def __init__(self, keepalive: float, head_timeout: float, now: float) -> None:
        self.keepalive = keepalive
        self.head_timeout = head_timeout
        self._idle_since = now
        self._head_since: float | None = None

    @property
    def in_head(self) -> bool:
        """Whether part of a head has arrived (an expiry then is a 408, not an idle close)."""
        return self._head_since is not None

    def answered(self, now: float) -> None:
        """An answer went out: the connection is idle again, from `now`."""
        self._idle_since = now
        self._head_since = None

    def waiting(self, now: float, partial: bool) -> float:
        """The deadline while waiting, with (`partial`) or without part of a head. A head's
        deadline runs from its first byte: later bytes never move it."""
        if not partial:
            self._head_since = None
            return self._idle_since + self.keepalive
        if self._head_since is None:
            self._head_since = now
        return self._head_since + self.head_timeout
