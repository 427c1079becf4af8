"""What the operator commands share when they talk to a node over HTTP.

The admin session (export, import, pin, gc, verify answer when they are done),
the bearer header of a token, the first line of an error answer, and how a
failed request is described.
"""

from __future__ import annotations

import aiohttp


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header for a token; none without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def admin_session(token: str | None) -> aiohttp.ClientSession:
    """A session for a node's /_admin/ endpoints, with its admin token (if any).

    They answer when the work is done (an export, an import, a verify): no read timeout.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    return aiohttp.ClientSession(timeout=timeout, headers=bearer(token))


async def first_line(resp: aiohttp.ClientResponse, limit: int, width: int | None = None) -> str:
    """The first line of an answer's body (read: its first `limit` bytes; kept: at
    most `width` characters), for an error message."""
    text = (await resp.content.read(limit)).decode("utf-8", "replace").strip()
    return text.split("\n", 1)[0][:width]


def describe(e: BaseException) -> str:
    """A client-side failure in one line: its type, and its message if it has one."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
