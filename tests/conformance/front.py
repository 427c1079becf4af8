"""The harness's front: one GOPROXY address for Go's script tests run through a node.

Go's scripts build some GOPROXY/GOSUMDB values from `$GOPROXY` plus path prefixes
that only Go's test proxy implements (`/invalid/`, `/404/`, `/sumdb-wrong/`,
`/redirect/N/` ...): they test the fixture, not a proxy. The front keeps the test
proxy's `/mod` prefix (scripts match URLs of that shape in error text), sends those
prefixes to the test proxy and everything else to the node, and passes redirects
back untouched, so a redirect chain ends at the node.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from yarl import URL

#: First path elements under /mod/ that only Go's test proxy (proxy_test.go) knows.
TEST_ONLY = re.compile(r"^(invalid|redirect|sumdb-direct|sumdb-wrong|sumdb-redirect|sumdb-\d+|\d+)/")
_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "content-encoding",
    "host",
}


def target(tail: str, test_proxy: str, node: str) -> str:
    """Where `/mod/<tail>` goes: the test proxy's own URL, or the node's."""
    if TEST_ONLY.match(tail):
        return f"{test_proxy}/{tail}"
    return f"{node}/{tail}"


@asynccontextmanager
async def running_front(test_proxy: str, node: str) -> AsyncIterator[str]:
    """Serve the front on 127.0.0.1; yields its GOPROXY URL (ending in /mod)."""
    session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300))

    async def forward(request: web.Request) -> web.StreamResponse:
        url = target(request.raw_path[len("/mod/") :], test_proxy, node)  # still escaped, query kept
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with session.request(
            request.method,
            URL(url, encoded=True),
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            if up.headers.get("Content-Encoding"):
                resp.headers["Content-Encoding"] = up.headers["Content-Encoding"]
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(1 << 16):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("*", "/mod/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/mod"
    finally:
        await runner.cleanup()
        await session.close()
