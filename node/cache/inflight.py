"""One in-flight fetch of a versioned file, shared by every client that asked for it,
and the loop that sends its bytes to one client while they arrive.

A client of a download gets exactly one of two outcomes: every byte of the
verified file, or an aborted connection. Never a clean end of a short body, and
never silence: the last `HOLDBACK` bytes go out only once the whole file
verified, and the sender's loop re-reads the download's state after every wait,
so a download that finished while a slow client was still writing is noticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from node.cache.index import Entry
from node.cache.protocol import ModRequest
from node.cache.spool import Spool
from node.errors import ModmeshError, UpstreamError

#: Bytes of a streamed file withheld from clients until the whole file verified.
HOLDBACK = 64 * 1024
#: Largest single write to a client.
CHUNK = 256 * 1024


@dataclass(eq=False)
class Download:
    """The state of one fetch; `result` is the Entry (stored or passed through) or the error."""

    req: ModRequest
    spool: Spool
    #: The size the current source announced (Content-Length), if any.
    expected: int | None = None
    #: Set once a client has been sent bytes: the answer can no longer come from
    #: another source, so the chain must not fall through.
    committed: bool = False
    source: str = ""
    #: False when the file was served without being cached (pass-through).
    stored: bool = True
    result: asyncio.Future[Entry] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    version: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def written(self) -> int:
        return self.spool.size

    @property
    def finished(self) -> bool:
        return self.result.done()

    @property
    def error(self) -> BaseException | None:
        """The download's error once finished (cancelled counts as one), else None."""
        if not self.result.done():
            return None
        if self.result.cancelled():
            return UpstreamError(f"the download of {self.req.key} was cancelled")
        return self.result.exception()

    def begin(self, expected: int | None = None) -> None:
        """A source starts to send the file (`expected` bytes, if it said)."""
        if self.spool.size:
            if self.committed:
                raise UpstreamError(f"{self.req.key}: a new source cannot restart a file clients are receiving")
            self.spool.reset()
        self.expected = expected
        self.notify()

    def write(self, data: bytes) -> None:
        self.spool.write(data)
        self.notify()

    def abandon(self) -> bool:
        """The current source failed mid-way. May another one answer? Not once a client
        has bytes from this one; otherwise its bytes are dropped at once."""
        if self.committed:
            return False
        if self.spool.size:
            self.spool.reset()
        self.expected = None
        self.notify()
        return True

    def notify(self) -> None:
        self.version += 1
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def changed_since(self, version: int) -> None:
        """Return once the state differs from what `version` saw (at once if it does)."""
        while self.version == version:
            await self._changed.wait()

    async def wait_until(self, pred: Callable[[], bool]) -> None:
        while not (self.finished or pred()):
            await self.changed_since(self.version)


class Transfer:
    """One client's claim on a download: its bytes stay readable until `close()`."""

    def __init__(self, dl: Download) -> None:
        self.dl = dl
        dl.spool.acquire()
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self.dl.spool.release()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sink(Protocol):
    async def write(self, data: bytes) -> None:
        """Send bytes to the client; may wait for it to read (and raise if it does not)."""


class Aborted(Exception):
    """The file cannot be sent whole: the caller must abort the client's connection."""

    def __init__(self, reason: BaseException | str) -> None:
        super().__init__(str(reason))
        self.reason = reason


async def send(t: Transfer, sink: Sink, holdback: int = HOLDBACK, chunk: int = CHUNK) -> int:
    """Send the whole verified file of `t` to `sink`; return its size.

    Raises `Aborted` if the download failed, or if what it holds no longer matches
    what was sent (the caller must then cut the connection, not end the body)."""
    dl = t.dl
    sent = 0
    while True:
        seen = dl.version
        done = dl.finished
        if done:
            error = dl.error
            if error is not None:
                raise Aborted(error)
            limit = dl.written
        else:
            limit = dl.written - holdback
        while sent < limit:
            data = dl.spool.read(sent, min(chunk, limit - sent))
            if not data:
                raise Aborted(f"{dl.req.key}: the download holds {dl.written} bytes, {sent} were sent")
            dl.committed = True
            await sink.write(data)
            sent += len(data)
        if done:
            return sent
        await dl.changed_since(seen)


def describe(e: BaseException | str) -> str:
    if isinstance(e, ModmeshError):
        return e.message
    return str(e) or type(e).__name__
