"""The upstream chain: GOPROXY-syntax parsing, per-upstream HTTP with hard timeouts
and a circuit breaker, and Go's `,` / `|` fallback walk.

`,` after an entry: only "not found" (404/410) moves on to the next entry.
`|` after an entry: any failure moves on. `off` ends the walk ("lookup disabled").
A failure is anything but a clean, complete, sound 200: a bad status, a reset,
a timeout, a truncated body, or a body the caller's `consume` refuses.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from node.errors import (
    Gone,
    IntegrityError,
    LookupDisabled,
    ModmeshError,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from node.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

OFF = "off"
DIRECT = "direct"


class GoproxyError(ValueError):
    """A GOPROXY-syntax string the node cannot use."""


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    """One element of a GOPROXY list: a base URL or `off`."""

    target: str
    #: True when the separator after this entry is `|` (any error falls through).
    fallthrough_on_error: bool = False


def parse_goproxy(value: str) -> list[ProxyEntry]:
    """Parse a GOPROXY-syntax string the way the go command does (doc 2.1).

    Entries after `off` and `direct` are dropped, as Go drops them.
    """
    entries: list[ProxyEntry] = []
    rest = value
    while rest:
        cut = min((i for i in (rest.find(","), rest.find("|")) if i >= 0), default=-1)
        if cut < 0:
            item, sep, rest = rest, "", ""
        else:
            item, sep, rest = rest[:cut], rest[cut], rest[cut + 1 :]
        item = item.strip()
        if not item:
            continue
        if item in (OFF, DIRECT):
            entries.append(ProxyEntry(item))
            break
        entries.append(ProxyEntry(_normalize_url(item), fallthrough_on_error=(sep == "|")))
    if not entries:
        raise GoproxyError(f"GOPROXY list {value!r} contains no entries")
    return entries


def _normalize_url(item: str) -> str:
    if "://" not in item and any(c in item for c in ".:/"):
        item = "https://" + item  # what the go command does with a bare host
    parts = urlsplit(item)
    if parts.scheme not in ("http", "https"):
        raise GoproxyError(f"invalid proxy URL scheme in {redact(item)!r} (must be https or http)")
    if not parts.hostname:
        raise GoproxyError(f"proxy URL {redact(item)!r} has no host")
    if parts.scheme == "http" and (parts.username or parts.password):
        raise GoproxyError(f"refusing to pass credentials to insecure URL {redact(item)!r}")
    if parts.query or parts.fragment:
        raise GoproxyError(f"proxy URL {redact(item)!r} must not have a query or fragment")
    return item.rstrip("/")


def redact(url: str) -> str:
    """Mask credentials in a URL so it can be logged or shown to clients."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; then lets one probe through
    every `reset_after` seconds. A dead upstream so costs one timeout per interval."""

    threshold: int = 3
    reset_after: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_after:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def retry_in(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_after - (self.clock() - self.opened_at))

    def success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> bool:
        """Record a failure; True when this one opened (or re-opened) the breaker."""
        self.failures += 1
        was_probe, self.probing = self.probing, False
        if was_probe or (self.opened_at is None and self.failures >= self.threshold):
            self.opened_at = self.clock()
            return True
        return False


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    #: Longest silence while waiting for headers or body bytes.
    read: float = 30.0
    #: Whole-request bound for small files (info, mod, list, latest); zips have none,
    #: since a slow but moving 500 MB transfer is legitimate.
    small_total: float = 60.0


@dataclass
class Upstream:
    """One upstream proxy base URL."""

    base: str
    session: aiohttp.ClientSession
    timeouts: Timeouts
    metrics: Metrics
    fallthrough_on_error: bool = False
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    #: Extra request headers per path (the mesh signs peer requests this way).
    headers: Callable[[str], Mapping[str, str]] | None = None
    #: Shown in logs and metrics instead of the URL (e.g. "peer:<id>").
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or redact(self.base)

    async def fetch(
        self,
        path: str,
        consume: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        small: bool,
    ) -> T:
        """GET base/path and hand a 200 response to `consume`; map every failure
        (including those raised while `consume` reads the body) to our error tree."""
        if not self.breaker.allow():
            raise UpstreamError(f"the upstream is failing; not retried for another {self.breaker.retry_in():.0f}s")
        url = f"{self.base}/{path}"
        to = self.timeouts
        timeout = aiohttp.ClientTimeout(
            total=to.small_total if small else None, sock_connect=to.connect, sock_read=to.read
        )
        started = time.monotonic()
        try:
            headers = self.headers(path) if self.headers is not None else None
            async with self.session.get(url, timeout=timeout, allow_redirects=True, headers=headers) as resp:
                self.metrics.upstream_latency.labels(self.name).observe(time.monotonic() - started)
                if resp.status != 200:
                    raise await self._status_error(resp, path)
                result = await consume(resp)
        except NotFound:
            self.breaker_ok()  # a clean "not found" proves the upstream is alive
            raise
        except IntegrityError:
            # Refused by `consume`: the upstream is alive, just wrong.
            self.metrics.upstream_errors.labels(self.name, "integrity").inc()
            raise
        except UpstreamError as e:
            self._failed(type(e).__name__, e)
            raise
        except TimeoutError:
            err: UpstreamError = UpstreamTimeout(f"the upstream did not answer {path} in time")
            self._failed("timeout", err)
            raise err from None
        except aiohttp.ClientPayloadError:
            err = UpstreamError(f"the upstream sent a truncated body for {path}")
            self._failed("truncated", err)
            raise err from None
        except aiohttp.ClientError as e:
            err = UpstreamError(f"the upstream failed for {path}: {_describe(e)}")
            self._failed("connection", err)
            raise err from None
        self.breaker_ok()
        return result

    def breaker_ok(self) -> None:
        if self.breaker.opened_at is not None:
            log.info("upstream %s recovered; circuit closed", self.name)
            self.metrics.breaker_open.labels(self.name).set(0)
        self.breaker.success()

    def _failed(self, reason: str, err: Exception) -> None:
        self.metrics.upstream_errors.labels(self.name, reason).inc()
        if self.breaker.failure():
            self.metrics.breaker_open.labels(self.name).set(1)
            # Logged at state changes only, not once per request.
            log.warning("upstream %s failing (%s); circuit open for %.0fs", self.name, err, self.breaker.reset_after)

    async def _status_error(self, resp: aiohttp.ClientResponse, path: str) -> ModmeshError:
        # Redirects included: where a private upstream keeps its files is its own business.
        text = mask_address(await _error_text(resp), self.base, str(resp.url), *(str(r.url) for r in resp.history))
        first = text.split("\n", 1)[0].strip()[:200]
        what = f"the upstream answered {resp.status} for {path}" + (f": {first}" if first else "")
        if resp.status in (404, 410):
            # The go command prints a proxy's 404/410 text: pass the upstream's on as it is.
            return (NotFound if resp.status == 404 else Gone)(what, body=text)
        if resp.status == 504:
            return UpstreamTimeout(what)
        return UpstreamError(what)


#: Most of an upstream's error text passed on to clients (the go command shows 8 lines).
MAX_ERROR_TEXT = 4096


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """An upstream's plain-text error body, bounded, without control characters (the go
    command ignores any other kind of body, and refuses text with control characters)."""
    if resp.content_type != "text/plain":
        return ""
    try:
        head = await resp.content.read(MAX_ERROR_TEXT)
    except (TimeoutError, aiohttp.ClientError):
        return ""
    return clean_text(head.decode("utf-8", "replace"))


def mask_address(text: str, *bases: str) -> str:
    """`text` without the upstreams' URLs or host names, in any letter case (they may be
    internal, or carry credentials): clients never learn where the node fetches from."""
    secrets: set[str] = set()
    for base in bases:
        parts = urlsplit(base)
        secrets.update(s for s in (base, redact(base), parts.netloc, parts.hostname or "") if s)
    if not secrets or not text:
        return text
    pattern = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    return re.sub(pattern, "<upstream>", text, flags=re.IGNORECASE)


def clean_text(text: str) -> str:
    """Printable characters, newlines and tabs only; cut to MAX_ERROR_TEXT."""
    return "".join(c for c in text if c.isprintable() or c in "\n\t")[:MAX_ERROR_TEXT]


def _describe(e: BaseException) -> str:
    """An aiohttp error without the URL or address it names."""
    if isinstance(e, aiohttp.ClientConnectorError):
        err = e.os_error
        return f"cannot connect ({os.strerror(err.errno) if err.errno else type(err).__name__})"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the connection was closed"
    if isinstance(e, aiohttp.TooManyRedirects):
        return "too many redirects"
    if isinstance(e, aiohttp.ClientResponseError):
        return f"{e.status} {e.message}"
    return type(e).__name__


class Source(Protocol):
    """A chain entry that can answer a GOPROXY path: an Upstream, or Direct."""

    @property
    def name(self) -> str: ...

    @property
    def fallthrough_on_error(self) -> bool: ...

    async def fetch(self, path: str, consume: Callable[[Any], Awaitable[T]], *, small: bool) -> T: ...


@dataclass(frozen=True)
class Off:
    """The `off` entry: lookups that reach it fail as "disabled"."""

    name: str = OFF
    message: str = "module lookup disabled by GOPROXY=off"


class UpstreamChain:
    """Walks the configured upstreams with Go's fallback rules, one request at a time."""

    def __init__(self, entries: Sequence[Source | Off]) -> None:
        self.entries = list(entries)

    @property
    def upstreams(self) -> list[Upstream]:
        return [e for e in self.entries if isinstance(e, Upstream)]

    async def fetch(
        self,
        path: str,
        consume: Callable[[Any, aiohttp.ClientResponse], Awaitable[T]],
        *,
        small: bool,
        may_fall_through: Callable[[], bool] = lambda: True,
    ) -> tuple[T, Source]:
        """Return the first sound answer and the upstream that gave it.

        Raises the most useful error when none did: the latest failure that was not
        "not found", else the last "not found" (Go's rule, doc 2.2).
        `may_fall_through` lets a caller that has already sent bytes to a client
        stop the walk: the answer can no longer come from somewhere else.
        """
        best: ModmeshError | None = None
        best_rank = -1
        for entry in self.entries:
            if isinstance(entry, Off):
                off = LookupDisabled(entry.message)
                raise best if best_rank >= 1 and best is not None else off
            try:
                return await entry.fetch(path, functools.partial(consume, entry), small=small), entry
            except NotFound as e:
                if best_rank <= 0:
                    best, best_rank = e, 0
                continue
            except ModmeshError as e:
                best, best_rank = e, 1
                if entry.fallthrough_on_error and may_fall_through():
                    continue
                raise
        assert best is not None, "an empty chain is refused by parse_goproxy"
        raise best


def build_chain(
    value: str,
    session: aiohttp.ClientSession,
    timeouts: Timeouts,
    metrics: Metrics,
    breaker_threshold: int,
    breaker_reset: float,
    direct: Source | None = None,
    headers: Callable[[str], Mapping[str, str]] | None = None,
) -> UpstreamChain:
    """Build a chain from a GOPROXY string; `headers` adds credentials to every request."""
    entries: list[Source | Off] = []
    for e in parse_goproxy(value):
        if e.target == OFF:
            entries.append(Off())
        elif e.target == DIRECT:
            if direct is None:
                raise GoproxyError("GOPROXY entry 'direct' is not available here")
            entries.append(direct)
        else:
            entries.append(
                Upstream(
                    e.target,
                    session,
                    timeouts,
                    metrics,
                    e.fallthrough_on_error,
                    CircuitBreaker(breaker_threshold, breaker_reset),
                    headers=headers,
                )
            )
    return UpstreamChain(entries)
