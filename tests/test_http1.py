"""node/server/http1.py against aiohttp's own request parser (the one aiohttp's server
uses): the fast path may answer a head only when aiohttp would read it the same way."""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from hypothesis import example, given, settings
from hypothesis import strategies as st

from node.config import Config
from node.server.fastpath import HOP, KEEPALIVE
from node.server.http1 import ReadDeadline, broken_line, read_head


def aiohttp_reads(head: bytes) -> RawRequestMessage | None:
    """What aiohttp's server makes of `head` + CRLF CRLF: the message, or None (400)."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            messages, _, _ = parser.feed_data(head + b"\r\n\r\n")
        except HttpProcessingError:
            return None
    finally:
        loop.close()
    assert len(messages) == 1
    message = messages[0][0]
    return message if isinstance(message, RawRequestMessage) else None


TOKENS = st.sampled_from(["GET", "GET", "HEAD", "POST", "get", "G(T", "CONNECT"])
TARGETS = st.one_of(
    st.sampled_from(["/a/@v/v1.0.0.info", "/_admin/x", "*", "http://h/x", "//x", "/a%zz", '/a"{b']),
    st.text(alphabet=' \t/%?#!"{}<>|\\^`\x7f\x80\x01azAZ09.-_~@', min_size=1, max_size=12).map(lambda t: "/" + t),
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2"])
NAMES = st.one_of(
    st.sampled_from(
        [
            *("Host", "host", "HOST", "Content-Length", "Connection", "Transfer-Encoding", "Upgrade"),
            *("User-Agent", "Content-Type", "Expect", "Authorization", "X-A", "Ho(st", "X A", " X", "X ", "", HOP),
        ]
    ),
    st.text(alphabet="!#$%&'*+-.^_`|~aZ09(),/:;<=>?@[]{}\" \t", min_size=1, max_size=6),
)
VALUES = st.one_of(
    st.sampled_from(["x", "", "close", "Close", "closed", "keep-alive, close", "upgrade", "0", "5", "01", "+1"]),
    st.sampled_from([" x ", "\tx\t", "a\tb", "chunked", "h2c", "x\x01", "x\x80", "100-continue"]),
    st.text(alphabet=' \t!azAZ09,;="\x7f\x80\x00', max_size=8),
)
FIELDS = st.lists(st.tuples(NAMES, st.sampled_from([":", ": ", " :", ""]), VALUES), max_size=5)
ENDINGS = st.sampled_from(["\r\n"] * 12 + ["\n", "\r", "\r\r\n"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from([" "] * 6 + ["  ", "\t"])).join((draw(TOKENS), draw(TARGETS), draw(VERSIONS)))
    fields = [f"{n}{s}{v}" for n, s, v in draw(FIELDS)]
    if draw(st.booleans()) or not fields:
        fields.insert(draw(st.integers(0, len(fields))), "Host: x")
    text = line
    for f in fields:
        text += draw(ENDINGS) + f
    return text.encode("latin-1")


@settings(max_examples=600, deadline=None)
@given(heads())
@example(b"GET /a HTTP/1.1")  # no Host
@example(b"GET /a HTTP/1.1\r\nHost: x\r\nhost: y")
@example(b"GET /a\tb HTTP/1.1\r\nHost: x")
@example(b"GET /a HTTP/1.1\r\nHost: x\r\nHo(st: y")
@example(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: closed")
@example(b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: a\r\nUser-Agent: b")
@example(b"GET /a HTTP/1.1\nHost: x")
def test_a_head_read_here_is_read_the_same_by_aiohttp(head: bytes) -> None:
    ours = read_head(head, HOP)
    if ours is None:
        return  # aiohttp reads it alone (and answers 400 for what it refuses)
    theirs = aiohttp_reads(head)
    if ours.target is None:
        # Handed to aiohttp with the body length read here: if aiohttp takes the head, the same length.
        if theirs is not None:
            assert int(theirs.headers.get("Content-Length", "0")) == ours.body
        return
    assert theirs is not None, "answered here, refused by aiohttp"
    assert (theirs.method, theirs.path, theirs.version) == ("GET", ours.target, (1, 1))
    assert theirs.should_close == ours.close and not theirs.upgrade and not theirs.chunked
    assert ours.body == 0 and ours.from_peer == (HOP in theirs.headers)


@settings(max_examples=300, deadline=None)
@given(heads(), st.integers(1, 40))
def test_a_bare_line_ending_is_seen_however_the_head_is_cut(head: bytes, cut: int) -> None:
    """Fed in two pieces (checked up to the cut, then from it): a bare CR or LF is found,
    and only one that aiohttp would refuse."""
    whole = head + b"\r\n"
    cut = min(cut, len(whole))
    found = broken_line(whole[:cut]) or broken_line(whole, cut)
    alone = whole.replace(b"\r\n", b"")
    assert found == (b"\r" in alone or b"\n" in alone)
    if found:
        assert aiohttp_reads(head) is None


def test_the_default_head_deadline_is_total_not_per_byte() -> None:
    """ReadDeadline with a fake clock and the shipped defaults: a head trickling in one
    byte a second, or one every 20 s, is still due 60 s after its first byte."""
    assert Config().head_timeout == 60.0
    d = ReadDeadline(KEEPALIVE, Config().head_timeout, now=0.0)
    assert d.waiting(0.0, partial=False) == KEEPALIVE
    d.answered(10.0)
    assert d.waiting(10.0, partial=False) == 10.0 + KEEPALIVE and not d.in_head
    assert d.waiting(11.0, partial=True) == 71.0 and d.in_head
    assert all(d.waiting(float(t), partial=True) == 71.0 for t in range(12, 200))  # a byte a second
    assert all(d.waiting(11.0 + 20 * k, partial=True) == 71.0 for k in range(1, 10))  # one every 20 s
    d.answered(80.0)  # a head completed and was answered: the next one has its own deadline
    assert d.waiting(80.5, partial=True) == 140.5
    assert d.waiting(81.0, partial=False) == 80.0 + KEEPALIVE
