"""One observed GET, the raw material of doctor's judgements.

`probe` never raises: a timeout or a connection error is part of what was
observed. Upstream probes go through the upstream's own session and
credentials, but not its circuit breaker (upstreams.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from node.tools._http import describe

#: Seconds per probe unless --timeout (or ?timeout=) says otherwise.
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    """One GET: status and the first bytes of the body, or why it failed."""

    status: int | None
    body: bytes = b""
    error: str | None = None
    seconds: float = 0.0

    @property
    def empty_200(self) -> bool:
        return self.status == 200 and not self.body

    def what(self) -> str:
        return self.error or f"HTTP {self.status}"


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    limit: int = 1 << 20,
    headers: Mapping[str, str] | None = None,
) -> Probe:
    """GET `url`, keeping at most `limit` body bytes; never raises."""
    started = time.monotonic()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as resp:
            seconds = time.monotonic() - started
            body = b""
            while len(body) < limit:
                chunk = await resp.content.read(limit - len(body))
                if not chunk:
                    break
                body += chunk
            return Probe(resp.status, body, None, seconds)
    except TimeoutError:
        return Probe(None, error=f"no answer within {timeout:g}s", seconds=time.monotonic() - started)
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return Probe(None, error=describe(e), seconds=time.monotonic() - started)
