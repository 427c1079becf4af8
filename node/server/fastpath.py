"""Hot cache hits answered below aiohttp: a tiny HTTP/1.1 front on each connection.

The go command asks for the same small files (`.info`, `.mod`, lists) over and over
on keep-alive connections. Answering those from memory is a dictionary lookup, but
aiohttp's per-request objects cost several times that. So every connection is a
`FastConnection`, which reads each request head itself, by aiohttp's rules (http1.py):

- a plain GET of an in-memory hit is answered right here; one of a small file the
  store holds but memory does not is looked up and read off the event loop
  (`Front.answer_later`) and answered here too, the connection's later requests
  waiting in the buffer meanwhile;
- any other well-formed request whose end is known (no body, or a Content-Length)
  is handed, head and body, to a fresh aiohttp protocol on the same transport. Once
  its answer is out and the connection stays open, that protocol is detached and the
  connection is back here: a miss costs aiohttp one request, not the connection.
  Pipelined requests wait in the buffer meanwhile, so answers keep their order;
- anything else (malformed, a bare CR or LF, a head over MAX_HEAD, chunked, an
  upgrade, a body aiohttp answered before it had all arrived) goes to aiohttp for
  good, with every unread byte, at once: aiohttp answers it (400 for what it refuses).

While it waits for a request a connection has one deadline (http1.ReadDeadline):
`KEEPALIVE` after the last answer, or `head_timeout` after the first byte of a head
however the rest trickles in (then 408, closed). Used only while client access is
open: no credentials or rate limits are checked here. aiohttp's side of the hand-over
is in aiohttp_adapter.py.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Protocol
from urllib.parse import unquote

from node.hooks import HOP_HEADER
from node.server.http1 import MAX_HEAD, Head, ReadDeadline, broken_line, read_head

__all__ = ["KEEPALIVE", "MAX_HEAD", "Answer", "Answered", "Delegate", "FastConnection", "Front", "HttpDate", "Later"]

#: Seconds an idle keep-alive connection stays open (also given to aiohttp).
KEEPALIVE = 75.0

#: Status line + headers without Date, body, and how to log it.
Answered = tuple[bytes, bytes | memoryview, Callable[[float, str | None], None]]
#: (path, from a peer?) -> the answer from memory, or None.
Answer = Callable[[str, bool], Answered | None]
#: (path, from a peer?) -> the answer from the store, or None (aiohttp answers: a miss,
#: a large file, an error). Runs off the event loop's hot path; never raises.
Later = Callable[[str, bool], Coroutine[object, object, Answered | None]]
HOP = HOP_HEADER.lower()
_TIMEOUT_BODY = b"request head not received in time\n\n"
TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
    + str(len(_TIMEOUT_BODY)).encode()
    + b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    + _TIMEOUT_BODY
)


class Delegate(Protocol):
    """aiohttp's protocol for one connection, as the fast path drives it (the adapter's
    `ReturningHandler`): it calls `FastConnection.answered` after each answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def detach(self) -> None:
        """Stop without closing the transport: the connection is the fast path's again."""


class HttpDate:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


@dataclass
class Front:
    """What the connections of one server share."""

    answer: Answer
    #: A new aiohttp protocol for this connection.
    delegate: Callable[[FastConnection], Delegate]
    write_idle: float = 60.0
    head_timeout: float = 60.0
    on_head_timeout: Callable[[], None] = lambda: None
    date: HttpDate = field(default_factory=HttpDate)
    answer_later: Later | None = None
    #: Connections on the fast path right now (between requests, by construction).
    live: set[FastConnection] = field(default_factory=set)
    #: The server is shutting down: connections aiohttp answers stay with it (it closes them).
    closing: bool = False


class FastConnection(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self._front = front
        self._buf = bytearray()
        self._checked = 0  # bytes of a partial head already checked for a bare CR or LF
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._loop = asyncio.get_running_loop()
        self._reads = ReadDeadline(KEEPALIVE, front.head_timeout, self._loop.time())
        self._due = math.inf  # close when still waiting for a request then
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        #: aiohttp's protocol while it answers a request (`_raw`: for good).
        self._app: Delegate | None = None
        self._raw = False
        self._body_left = 0  # body bytes of the handed-over request still to pass on
        self._held = False  # reading paused here while aiohttp answers (pipelined bytes pile up)
        self._head_open = False  # raw: the head aiohttp got is not complete yet (its deadline runs)
        self._tail = b""
        #: A request being answered from the store (`answer_later`); the client half-closed meanwhile.
        self._later: asyncio.Task[Answered | None] | None = None
        self._eof = False
        #: The client is not reading our answers: stop reading its requests (so answers
        #: cannot pile up in memory) and cut it if it takes nothing for `write_idle`.
        self._paused = False
        self._stall: asyncio.TimerHandle | None = None
        self._stall_pending = 0

    # ---- transport events ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None
        self._front.live.add(self)
        self._wait(partial=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.live.discard(self)
        self._disarm_timer()
        self._disarm_stall()
        # A lookup under way runs to its end (it may be hashing or quarantining a blob,
        # as aiohttp's handlers run on after a client has gone); its answer is dropped.
        app, self._app = self._app, None
        if app is not None:
            app.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._app is not None:
            return self._app.eof_received()
        if self._later is not None:
            self._eof = True  # answer first, then close
            return True
        return None

    def pause_writing(self) -> None:
        self._paused = True
        if self._app is not None:
            self._app.pause_writing()
        else:
            self._hold_reads()

    def resume_writing(self) -> None:
        self._paused = False
        self._disarm_stall()
        if self._app is not None:
            self._app.resume_writing()
            return
        t = self._transport
        if t is not None and not t.is_closing() and self._later is None:
            t.resume_reading()
            self._process()  # answer what arrived while we waited

    def data_received(self, data: bytes) -> None:
        app = self._app
        if app is None:
            self._buf += data
            if self._later is not None:
                if len(self._buf) > MAX_HEAD and not self._held and self._transport is not None:
                    self._held = True  # pipelined requests pile up: read on once answered
                    self._transport.pause_reading()
                return
            self._process()
            return
        if self._raw:
            if self._head_open:
                self._track_head(data)
            app.data_received(data)
            return
        if self._body_left:
            if len(data) <= self._body_left:
                self._body_left -= len(data)
                app.data_received(data)
                return
            app.data_received(data[: self._body_left])
            data = data[self._body_left :]
            self._body_left = 0
        self._buf += data  # the next request, pipelined: read once aiohttp has answered
        if len(self._buf) > MAX_HEAD and not self._held and self._transport is not None:
            self._held = True
            self._transport.pause_reading()

    # ---- reading requests ------------------------------------------------------------

    def _process(self) -> None:
        buf = self._buf
        t = self._transport
        while buf and not self._paused and self._app is None and self._later is None and t is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD or broken_line(buf, self._checked):
                    self._hand_over()
                    return
                self._checked = len(buf)
                self._wait(partial=True)
                return
            self._checked = 0
            head = read_head(buf[:end], HOP) if end <= MAX_HEAD else None
            if head is None:
                self._hand_over()
                return
            if head.target is not None:
                started = time.perf_counter()
                path = unquote(head.target)
                answered = self._front.answer(path, head.from_peer)
                if answered is not None:
                    if not self._send(end, head, answered, started):
                        return
                    continue
                later = self._front.answer_later
                if later is not None:
                    task = self._later = self._loop.create_task(later(path, head.from_peer))
                    task.add_done_callback(functools.partial(self._answered_later, end=end, head=head, started=started))
                    return
            self._delegate(end + 4, head.body)
            return
        if not buf and self._app is None and t is not None:
            self._wait(partial=False)

    def _send(self, end: int, head: Head, answered: Answered, started: float) -> bool:
        """Write an answer to the head ending at `end`; False if that closed the connection."""
        t = self._transport
        assert t is not None
        del self._buf[: end + 4]
        head_bytes, body, record = answered
        if head.close:
            head_bytes += b"Connection: close\r\n"
        t.write(head_bytes + self._front.date.line() + b"\r\n" + body)
        record(time.perf_counter() - started, self._peer)
        if head.close:
            t.close()
            return False
        self._reads.answered(self._loop.time())
        return True

    def _answered_later(self, task: asyncio.Task[Answered | None], end: int, head: Head, started: float) -> None:
        self._later = None
        t = self._transport
        if task.cancelled() or t is None or t.is_closing():
            return
        answered = task.result() if task.exception() is None else None
        if answered is None:
            self._delegate(end + 4, head.body)  # aiohttp answers it, from scratch
            return
        if not self._send(end, head, answered, started):
            return
        if self._eof:
            t.close()
            return
        self._held = False
        if self._paused:
            self._hold_reads()
        else:
            t.resume_reading()  # held here, or by a client that since read on
            self._process()

    def _delegate(self, head_end: int, body: int) -> None:
        """Hand one request (head and body) to a fresh aiohttp protocol; `answered` and
        `_take_back` bring the connection back."""
        assert self._transport is not None
        app = self._app = self._front.delegate(self)
        self._front.live.discard(self)
        app.connection_made(self._transport)
        buf = self._buf
        n = min(head_end + body, len(buf))
        self._body_left = head_end + body - n
        chunk = bytes(buf[:n])
        del buf[:n]
        app.data_received(chunk)

    def answered(self, keep_alive: bool) -> None:
        """aiohttp's answer to the request it was handed is out (its last byte written)."""
        if keep_alive and not self._raw:
            # After aiohttp's own bookkeeping for the request, which follows this call.
            self._loop.call_soon(self._take_back)

    def _take_back(self) -> None:
        app, t = self._app, self._transport
        if app is None or self._raw or t is None or t.is_closing() or self._front.closing:
            return  # gone, aiohttp's for good, or closing: aiohttp closes it
        if self._body_left:  # answered before its body was all here: aiohttp reads the rest
            self._raw = True
            if self._held:
                t.resume_reading()
            return
        self._app = None
        app.detach()
        self._front.live.add(self)
        self._held = False
        self._reads.answered(self._loop.time())
        t.resume_reading()  # aiohttp may have paused it for its own buffers
        if self._paused:
            self._hold_reads()
        else:
            self._process()

    def _hand_over(self) -> None:
        """Give the connection (and what it already sent) to aiohttp for good."""
        t = self._transport
        self._front.live.discard(self)
        self._disarm_stall()
        if t is None or t.is_closing():
            return
        data = bytes(self._buf)
        self._buf = bytearray()
        app = self._app = self._front.delegate(self)
        self._raw = True
        if b"\r\n\r\n" not in data and b"\n\n" not in data:
            self._head_open = True  # over MAX_HEAD: its deadline still runs (`_on_timer`)
            self._tail = data[-3:]
            self._wait(partial=True)
        app.connection_made(t)
        if data:
            app.data_received(data)

    def _track_head(self, data: bytes) -> None:
        probe = self._tail + data
        if b"\r\n\r\n" in probe or b"\n\n" in probe:
            self._head_open = False
        else:
            self._tail = probe[-3:]

    # ---- timers ----------------------------------------------------------------------

    def _wait(self, partial: bool) -> None:
        """Waiting for a request: arm the one timer (re-armed only to move it earlier;
        when it fires early it looks at `_due` and sleeps again)."""
        due = self._due = self._reads.waiting(self._loop.time(), partial)
        if due < self._timer_at:
            self._disarm_timer()
            self._timer = self._loop.call_at(due, self._on_timer)
            self._timer_at = due

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        t = self._transport
        if t is None or t.is_closing():
            return
        if (self._app is None and self._paused) or (self._app is not None and not self._head_open):
            return  # a client not reading (`_check_stall` rules), or aiohttp answering (its timers do)
        if self._later is not None:
            return  # answering; the deadline starts again after the answer
        if self._loop.time() < self._due:
            self._timer = self._loop.call_at(self._due, self._on_timer)
            self._timer_at = self._due
            return
        if self._head_open or self._reads.in_head:
            self._front.on_head_timeout()
            t.write(TIMEOUT_408)
        self.close()

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def close(self) -> None:
        t = self._transport
        if t is None:
            return
        if t.get_write_buffer_size():
            t.abort()  # a client that stopped reading: close() would wait for it forever
        else:
            t.close()

    # ---- a client that does not read -------------------------------------------------

    def _hold_reads(self) -> None:
        t = self._transport
        if t is None:
            return
        t.pause_reading()
        self._stall_pending = t.get_write_buffer_size()
        self._disarm_stall()
        self._stall = self._loop.call_later(self._front.write_idle, self._check_stall)

    def _check_stall(self) -> None:
        t = self._transport
        if t is None or not self._paused:
            return
        now = t.get_write_buffer_size()
        if now < self._stall_pending:  # slow, but reading
            self._stall_pending = now
            self._stall = self._loop.call_later(self._front.write_idle, self._check_stall)
            return
        t.abort()

    def _disarm_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
