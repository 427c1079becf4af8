"""Everything of aiohttp's that is not its public API, in one place.

The fast path (fastpath.py) answers in-memory hits below aiohttp and hands every
other request, with the bytes already read, to aiohttp's own protocol. That needs
aiohttp's connection factory (`web.Server`), the application's request factory and
handler, and the runner's server construction. tests/test_aiohttp_adapter.py pins
the behaviour relied on; pyproject.toml caps aiohttp to the versions tested.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from node.cache.proxy import ModuleProxy
from node.server.accesslog import RequestRecorder
from node.server.fastpath import Answer, FastConnection, HttpDate
from node.server.responses import fast_answer


def response_started(request: web.BaseRequest) -> bool:
    """Whether any byte of a response to `request` went out already."""
    return request.writer is not None and request.writer.output_size > 0


class FastServer(web.Server):
    """aiohttp's connection factory, with every connection starting on the fast path."""

    def __init__(self, answer: Answer, *args: Any, write_idle: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answer = answer
        self._write_idle = write_idle
        self._date = HttpDate()
        self._fast: set[FastConnection] = set()

    def __call__(self) -> Any:
        return FastConnection(self._answer, super().__call__, self._date, self._fast, self._write_idle)

    async def shutdown(self, timeout: float | None = None) -> None:
        for conn in list(self._fast):
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
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.proxy = proxy
        self.recorder = recorder
        self.write_idle = write_idle

    async def _make_server(self) -> web.Server:
        await super()._make_server()  # startup signals, freezing
        return FastServer(
            self.answer,
            self.app._handle,
            request_factory=self.app._make_request,
            write_idle=self.write_idle,
            **self._kwargs,
        )

    def answer(self, path: str, from_peer: bool) -> tuple[bytes, bytes, Callable[[float, str | None], None]] | None:
        return fast_answer(self.proxy, self.recorder, path, from_peer)
