"""The access log and request metrics: one structured line per answer, for aiohttp's
access logger and the fast path alike."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from node.cache.protocol import ModRequest
from node.metrics import Metrics

# Per-request facts the access log reports.
REQ = web.RequestKey("req", ModRequest)
CACHE = web.RequestKey("cache", str)
UPSTREAM = web.RequestKey("upstream", str)
KIND = web.RequestKey("kind", str)  # for requests that are not a ModRequest (sumdb)
SENT = web.RequestKey("sent", int)  # body bytes of a streamed answer


def access_logger(recorder: RequestRecorder) -> type[AbstractAccessLogger]:
    """aiohttp builds the access logger itself, so bind the node's recorder here."""

    class Logger(AccessLogger):
        pass

    Logger.recorder = recorder
    return Logger


class RequestRecorder:
    """Request metrics and the one structured access-log line, for aiohttp's access
    logger and the fast path alike."""

    def __init__(self, metrics: Metrics, logger: logging.Logger) -> None:
        self.metrics = metrics
        self.logger = logger
        # labels() costs a lock and a dict walk: once per label set.
        self._counters: dict[tuple[str, int, str], tuple[Any, Any]] = {}

    def record(
        self,
        method: str,
        path: str,
        status: int,
        kind: str,
        cache: str,
        upstream: str,
        seconds: float,
        sent: int,
        remote: str | None,
        req: ModRequest | None,
    ) -> None:
        key = (kind, status, cache)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = (
                self.metrics.requests.labels(kind, str(status), cache or "none"),
                self.metrics.bytes_served.labels(kind),
            )
        counters[0].inc()
        counters[1].inc(sent)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "method": method,
            "path": path,
            "status": status,
            "kind": kind,
            "cache": cache,
            "upstream": upstream,
            "ms": round(seconds * 1000, 2),
            "bytes": sent,
            "remote": remote,
        }
        if req is not None:
            fields["module"] = req.module
            if req.version:
                fields["version"] = req.version
        self.logger.info("%s %s %s", method, path, status, extra={"fields": fields})


class AccessLogger(AbstractAccessLogger):
    """Called by aiohttp after each response went out (so the byte count is real)."""

    recorder: RequestRecorder

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        req: ModRequest | None = request.get(REQ)
        kind = req.kind if req else request.get(KIND) or _endpoint_kind(request.path)
        self.recorder.record(
            request.method,
            request.path,
            response.status,
            kind,
            request.get(CACHE, ""),
            request.get(UPSTREAM, ""),
            time,
            _body_bytes(request, response),
            request.remote,
            req,
        )


def _body_bytes(request: BaseRequest, response: StreamResponse) -> int:
    if request.method == "HEAD":
        return 0
    streamed: int | None = request.get(SENT)
    if streamed is not None:
        return streamed
    # body_length counts the header bytes too; Content-Length is the body.
    return response.content_length if response.content_length is not None else response.body_length


def _endpoint_kind(path: str) -> str:
    return path.strip("/") if path in ("/healthz", "/readyz", "/metrics") else "other"
