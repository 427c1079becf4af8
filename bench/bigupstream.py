"""A bench-only GOPROXY upstream for big zips, with its bandwidth limited.

Serves list/info/mod/zip for the synthetic modules of bench/bigzip.py, streaming
each zip from disk (never whole in memory) paced to `--rate` bytes per second per
response (0: unlimited). The pacing catches up on its own schedule, so a late
wake-up does not lower the average rate. Everything else is 404, so it can sit in
front of the corpus upstream in a `,` chain.

    python -m bench.bigupstream --listen 127.0.0.1:0 --rate 100000000 \
        --zip bench.modmesh.example/zip50mb=bench/out/zips/zip50mb-f1.zip

Prints its base URL on stdout once it listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from bench.bigzip import VERSION, go_mod, info_json
from node.golang.modpath import escape_path, escape_version

CHUNK = 128 * 1024


def build_app(zips: dict[str, Path], rate: float) -> web.Application:
    files: dict[str, tuple[str, bytes | Path]] = {}
    for module, zip_path in zips.items():
        base = f"/{escape_path(module)}"
        v = f"{base}/@v/{escape_version(VERSION)}"
        files[f"{base}/@v/list"] = ("text/plain; charset=utf-8", f"{VERSION}\n".encode())
        files[f"{base}/@latest"] = ("application/json", info_json(VERSION))
        files[f"{v}.info"] = ("application/json", info_json(VERSION))
        files[f"{v}.mod"] = ("text/plain; charset=utf-8", go_mod(module))
        files[f"{v}.zip"] = ("application/zip", zip_path)

    async def handle(request: web.Request) -> web.StreamResponse:
        found = files.get(request.path)
        if found is None:
            return web.Response(status=404, text=f"not found: {request.path}\n\n")
        ctype, body = found
        if isinstance(body, bytes):
            return web.Response(body=body, headers={"Content-Type": ctype})
        return await _send_paced(request, body, ctype, rate)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def _send_paced(request: web.Request, path: Path, ctype: str, rate: float) -> web.StreamResponse:
    size = path.stat().st_size
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    resp.content_length = size
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDONLY)
    try:
        start, sent = loop.time(), 0
        while sent < size:
            chunk = os.pread(fd, min(CHUNK, size - sent), sent)
            if not chunk:
                raise OSError(f"{path} shrank while being served")
            await resp.write(chunk)
            sent += len(chunk)
            if rate > 0:
                ahead = start + sent / rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        os.close(fd)
    await resp.write_eof()
    return resp


async def serve_until_signalled(app: web.Application, host: str, port: int) -> None:
    """Serve `app`, print its URL (the bench reads it), stop on SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    bound = runner.addresses[0]
    print(f"http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await done.wait()
    finally:
        await runner.cleanup()


async def _serve(host: str, port: int, zips: dict[str, Path], rate: float) -> None:
    await serve_until_signalled(build_app(zips, rate), host, port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve big synthetic module zips, bandwidth-limited.")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks one)")
    p.add_argument("--rate", type=float, default=0.0, help="bytes per second per response; 0 = unlimited")
    p.add_argument("--zip", action="append", default=[], metavar="MODULE=PATH", help="a module and its zip")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if host not in ("", "localhost") and not host.startswith("127."):
        p.error("bench upstreams listen on loopback only")
    zips = {}
    for item in args.zip:
        module, sep, path = item.partition("=")
        if not sep:
            p.error(f"--zip wants MODULE=PATH, not {item!r}")
        zips[module] = Path(path)
    asyncio.run(_serve(host or "127.0.0.1", int(port or 0), zips, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
