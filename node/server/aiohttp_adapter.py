"""Everything of aiohttp's that is not its public API, in one place.

The fast path (fastpath.py) reads every request head itself, answers in-memory hits,
and hands other requests, with the bytes already read, to aiohttp's own protocol on
the same transport; after aiohttp's answer the connection comes back. That needs
aiohttp's connection factory (`web.Server`, its loop and handler arguments), the
application's request factory and handler, the runner's server construction, and two
things of aiohttp's `RequestHandler`: `log_access` runs once a response's last byte
is written, and a handler whose `transport` is None when it is told the connection
is lost neither closes nor writes to the transport. tests/test_aiohttp_adapter.py
pins the behaviour relied on; pyproject.toml caps aiohttp to the versions tested.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from node.cache.proxy import ModuleProxy
from node.server.accesslog import RequestRecorder
from node.server.fastpath import Answer, Answered, FastConnection, Front, Later
from node.server.responses import fast_answer, later_answer


def response_started(request: web.BaseRequest) -> bool:
    """Whether any byte of a response to `request` went out already."""
    return request.writer is not None and request.writer.output_size > 0


class ReturningHandler(RequestHandler):
    """aiohttp's protocol for what a fast-path connection hands it: it tells the
    connection when an answer is out, and lets go of the transport without closing it."""

    def __init__(self, manager: web.Server, conn: FastConnection, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._conn = conn

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        super().log_access(request, response, time)  # after the response's last byte was written
        self._conn.answered(bool(response.keep_alive))

    def detach(self) -> None:
        """Stop as if the client had gone (the idle request loop ends, aiohttp's server
        forgets this handler), leaving the transport open for the fast path."""
        self.transport = None
        self.connection_lost(None)


class FastServer(web.Server):
    """aiohttp's connection factory, with every connection starting on the fast path."""

    def __init__(
        self,
        answer: Answer,
        *args: Any,
        answer_later: Later | None = None,
        write_idle: float = 60.0,
        head_timeout: float = 60.0,
        on_head_timeout: Callable[[], None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.front = Front(answer, self._handler, write_idle, head_timeout, on_head_timeout, answer_later=answer_later)
        self._fast = self.front.live

    def __call__(self) -> Any:
        return FastConnection(self.front)

    def _handler(self, conn: FastConnection) -> ReturningHandler:
        return ReturningHandler(self, conn, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        self.front.closing = True
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        self.front.closing = True
        for conn in list(self.front.live):
            conn.close()  # between requests by construction: nothing is cut short
        await super().shutdown(timeout)


class FastPathRunner(web.AppRunner):
    """Answers in-memory cache hits below aiohttp (node/fastpath.py); everything else
    goes to the application as usual. Only used while client access is open."""

    def __init__(
        self,
        app: web.Application,
        proxy: ModuleProxy,
        recorder: RequestRecorder,
        write_idle: float = 60.0,
        head_timeout: float = 60.0,
        on_head_timeout: Callable[[], None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.proxy = proxy
        self.recorder = recorder
        self.write_idle = write_idle
        self.head_timeout = head_timeout
        self.on_head_timeout = on_head_timeout

    async def _make_server(self) -> web.Server:
        await super()._make_server()  # startup signals, freezing
        return FastServer(
            self.answer,
            self.app._handle,
            answer_later=self.answer_later,
            request_factory=self.app._make_request,
            write_idle=self.write_idle,
            head_timeout=self.head_timeout,
            on_head_timeout=self.on_head_timeout,
            **self._kwargs,
        )

    def answer(self, path: str, from_peer: bool) -> Answered | None:
        return fast_answer(self.proxy, self.recorder, path, from_peer)

    async def answer_later(self, path: str, from_peer: bool) -> Answered | None:
        return await later_answer(self.proxy, self.recorder, path, from_peer)
