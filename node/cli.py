"""`modmesh` command line. `serve` is the composition root's entry point.

Subcommands other than `serve` live in their own modules, each with
`register(subparsers)` that adds its parser and sets `func(args) -> int`;
node/tools/registry.py lists them. Plugins (the mesh) add theirs the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from node.cache.upstream import GoproxyError, parse_goproxy
from node.config import SETTINGS, Config, ConfigError, load_config
from node.logs import setup_logging
from node.plugins import Plugin, load_plugins
from node.sumdb.spec import SumDBConfigError, parse_sumdb_spec
from node.tools.registry import ADMIN, COMMANDS

log = logging.getLogger("modmesh")


def build_parser(plugins: Sequence[Plugin] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modmesh", description="A Go module proxy for the edge.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a node", description="Run a modmesh node.")
    s.set_defaults(func=None)
    s.add_argument("--config", metavar="FILE", type=Path, help="TOML configuration file (or $MODMESH_CONFIG)")
    SETTINGS.add_flags(s)  # one flag per setting that declares one (node/config.py)
    for plugin in plugins:
        plugin.add_serve_arguments(s)
    for tool in COMMANDS:
        tool.register(sub)
    for plugin in plugins:
        plugin.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    plugins = load_plugins()
    args = build_parser(plugins).parse_args(argv)
    if args.command == "serve":
        return serve(args, plugins)
    result: int = args.func(args)
    return result


def serve(args: argparse.Namespace, plugins: Sequence[Plugin] = ()) -> int:
    flags = SETTINGS.flags_from_args(args)
    try:
        cfg = load_config(args.config, flags=flags)
        parse_goproxy(cfg.upstream)
        for spec in cfg.sumdb:
            parse_sumdb_spec(spec)
    except (ConfigError, GoproxyError, SumDBConfigError) as e:
        print(f"modmesh: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    # The stdlib loop, not uvloop: uvloop has no loop.sendfile, so cache hits would be
    # read through a thread pool instead of sent by the kernel (bench/README.md).
    return asyncio.run(_serve(cfg, args, plugins))


async def _serve(cfg: Config, args: argparse.Namespace, plugins: Sequence[Plugin]) -> int:
    from node.service import Node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    node = Node(cfg, admin=ADMIN)
    started: list[Plugin] = []
    try:
        await node.start()
        for plugin in plugins:
            await plugin.start(node, args)
            started.append(plugin)
        await node.listen()
    except (OSError, ValueError) as e:
        print(f"modmesh: cannot start: {e}", file=sys.stderr)
        await _close(node, started)
        return 1
    # What start-up built lives as long as the node: keep it out of every full collection
    # (hundreds of thousands of objects, a pause of tens of ms each time).
    gc.freeze()
    await stop.wait()
    log.info("shutting down")
    await _close(node, started)
    return 0


async def _close(node: object, plugins: Sequence[Plugin]) -> None:
    from node.service import Node

    for plugin in reversed(plugins):
        try:
            await plugin.aclose()
        except Exception:
            log.exception("plugin %s failed to close", plugin.name)
    assert isinstance(node, Node)
    await node.aclose()


if __name__ == "__main__":
    sys.exit(main())
