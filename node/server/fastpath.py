"""Hot cache hits answered below aiohttp: a tiny HTTP/1.1 front on each connection.

The go command asks for the same small files (`.info`, `.mod`, lists) over and over
on keep-alive connections. Answering those from memory is a dictionary lookup, but
aiohttp's per-request objects cost several times that. So every connection starts
with `FastConnection`: while requests are plain `GET`s of in-memory hits it writes
the answer itself; at the first request that is anything else (a miss, HEAD, a body,
an admin path, a malformed head) it hands the connection, with every unread byte,
to aiohttp for good. Used only while client access is open: no credentials or rate
limits are checked here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import unquote

from node.hooks import HOP_HEADER

#: Longest request head answered here; anything larger goes to aiohttp.
MAX_HEAD = 8192
#: Seconds an idle keep-alive connection stays open (aiohttp's default too).
KEEPALIVE = 75.0

#: (path, from a peer?) -> (status line + headers without Date, body, log record) or None.
Answer = Callable[[str, bool], "tuple[bytes, bytes, Callable[[float, str | None], None]] | None"]
HOP = HOP_HEADER.lower()


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


class FastConnection(asyncio.Protocol):
    def __init__(
        self,
        answer: Answer,
        fallback: Callable[[], asyncio.Protocol],
        date: HttpDate,
        live: set[FastConnection],
        write_idle: float = 60.0,
    ) -> None:
        self._answer = answer
        self._fallback = fallback
        self._date = date
        self._live = live
        self._write_idle = write_idle
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._idle: asyncio.TimerHandle | None = None
        #: The client is not reading our answers: stop reading its requests (so answers
        #: cannot pile up in memory) and cut it if it takes nothing for `write_idle`.
        self._paused = False
        self._stall: asyncio.TimerHandle | None = None
        self._stall_pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None
        self._live.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self._disarm_idle()
        self._disarm_stall()

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()
            self._stall_pending = self._transport.get_write_buffer_size()
        self._disarm_stall()
        self._stall = asyncio.get_running_loop().call_later(self._write_idle, self._check_stall)

    def resume_writing(self) -> None:
        self._paused = False
        self._disarm_stall()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self.data_received(b"")  # answer what arrived while we waited

    def _check_stall(self) -> None:
        t = self._transport
        if t is None or not self._paused:
            return
        now = t.get_write_buffer_size()
        if now < self._stall_pending:  # slow, but reading
            self._stall_pending = now
            self._stall = asyncio.get_running_loop().call_later(self._write_idle, self._check_stall)
            return
        t.abort()

    def _disarm_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _arm_idle(self) -> None:
        self._disarm_idle()
        self._idle = asyncio.get_running_loop().call_later(KEEPALIVE, self.close)

    def _disarm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def close(self) -> None:
        t = self._transport
        if t is None:
            return
        if t.get_write_buffer_size():
            t.abort()  # a client that stopped reading: close() would wait for it forever
        else:
            t.close()

    def data_received(self, data: bytes) -> None:
        if data:
            self._arm_idle()
        self._buf += data
        while self._buf and not self._paused:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    self._hand_over()
                return
            started = time.perf_counter()
            served = self._serve(bytes(self._buf[:end]))
            if served is None:
                self._hand_over()
                return
            del self._buf[: end + 4]
            head, body, record, close = served
            assert self._transport is not None
            self._transport.write(head + self._date.line() + b"\r\n" + body)
            record(time.perf_counter() - started, self._peer)
            if close:
                self._transport.close()
                return

    def _serve(self, head: bytes) -> tuple[bytes, bytes, Callable[[float, str | None], None], bool] | None:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            return None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
            return None
        target = parts[1]
        if not target.startswith("/") or "?" in target or "#" in target or target.startswith(("/_", "/sumdb/")):
            return None
        close = from_peer = False
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or name != name.strip():
                return None  # malformed or obsolete line folding: let aiohttp judge
            name = name.lower()
            if name in ("content-length", "transfer-encoding", "expect", "upgrade", "authorization"):
                return None
            if name == "connection" and "close" in value.lower():
                close = True
            elif name == HOP:
                from_peer = True
        answered = self._answer(unquote(target), from_peer)
        if answered is None:
            return None
        head_bytes, body, record = answered
        if close:
            head_bytes += b"Connection: close\r\n"
        return head_bytes, body, record, close

    def _hand_over(self) -> None:
        """Give the connection (and what it already sent) to aiohttp for good."""
        transport, self._transport = self._transport, None
        self._live.discard(self)
        self._disarm_idle()
        self._disarm_stall()
        if transport is None or transport.is_closing():
            return
        proto = self._fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if self._buf:
            proto.data_received(bytes(self._buf))
        self._buf = bytearray()
