"""The framework ceiling: the smallest aiohttp app, on the node's event loop.

Answers every GET with the same small JSON body, no routing beyond one
catch-all, no middleware, no access log. Whatever the node does per cache hit
comes on top of this, so its requests/s bound what the node can reach without
leaving aiohttp's web layer.

    python -m bench.ceiling --listen 127.0.0.1:0     # prints its URL, stops on SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

from bench.bigupstream import serve_until_signalled

BODY = b'{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}'


async def _serve(host: str, port: int) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    await serve_until_signalled(app, host, port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A minimal aiohttp server (the node's framework ceiling).")
    p.add_argument("--listen", default="127.0.0.1:0")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if host not in ("", "localhost") and not host.startswith("127."):
        p.error("bench servers listen on loopback only")
    asyncio.run(_serve(host or "127.0.0.1", int(port or 0)))  # the node's CLI uses the stdlib loop
    return 0


if __name__ == "__main__":
    sys.exit(main())
