"""`modmesh` command line. `serve` is the composition root's entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Config, ConfigError, load_config
from .logs import setup_logging
from .sumdb import SumDBConfigError, parse_sumdb_spec
from .upstream import GoproxyError, parse_goproxy

log = logging.getLogger("modmesh")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modmesh", description="A Go module proxy for the edge.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a node", description="Run a modmesh node.")
    s.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:3000)")
    s.add_argument("--data", metavar="DIR", type=Path, help="data directory (blobs and index)")
    s.add_argument("--upstream", metavar="GOPROXY-STRING",
                   help="upstream chain in GOPROXY syntax, e.g. 'https://a,https://b|https://c'")
    s.add_argument("--config", metavar="FILE", type=Path, help="TOML configuration file")
    s.add_argument("--sumdb", metavar="'NAME+KEY URL'", action="append",
                   help="checksum database in GOSUMDB syntax (repeatable; default sum.golang.org)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", choices=["json", "text"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    flags = {
        "listen": args.listen, "data": args.data, "upstream": args.upstream,
        "log_level": args.log_level, "log_format": args.log_format, "sumdb": args.sumdb,
    }
    try:
        cfg = load_config(args.config, flags=flags)
        parse_goproxy(cfg.upstream)
        for spec in cfg.sumdb:
            parse_sumdb_spec(spec)
    except (ConfigError, GoproxyError, SumDBConfigError) as e:
        print(f"modmesh: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(cfg))
    return uvloop.run(_serve(cfg))


async def _serve(cfg: Config) -> int:
    from .service import Node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    node = Node(cfg)
    try:
        await node.start()
        await node.listen()
    except OSError as e:
        print(f"modmesh: cannot start: {e}", file=sys.stderr)
        await node.aclose()
        return 1
    await stop.wait()
    log.info("shutting down")
    await node.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
