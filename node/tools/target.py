"""The node a command works on: `--node URL` (a running node, over HTTP) or
`--data DIR` (a data directory, opened in this process), shared by every
operator command (warm, doctor, export, import, pin, gc, verify).

A data directory may have a node running on it. That is safe: the SQLite index
(WAL) takes a second writer, blobs appear by atomic rename, and every process
writes temp files into a directory of its own (node/cache/store.py).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from node.cache.upstream import GoproxyError, parse_goproxy
from node.config import Config, ConfigError, load_config
from node.sumdb.spec import SumDBConfigError, parse_sumdb_spec

if TYPE_CHECKING:
    from rich.console import Console

    from node.service import Node

DEFAULT_NODE = "http://127.0.0.1:3000"


class UsageError(Exception):
    """Bad arguments or unreadable inputs: exit 2 before anything is done."""


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    """--node / --data (+ --config, --upstream, --sumdb for --data), shared with doctor."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--node", metavar="URL", help=f"a running node, over HTTP (default {DEFAULT_NODE}, or $MODMESH_NODE)"
    )
    where.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        help="a data directory, opened in this process (a node may be running on it)",
    )
    p.add_argument("--config", metavar="FILE", type=Path, help="with --data: the node's TOML configuration")
    p.add_argument("--upstream", metavar="GOPROXY-STRING", help="with --data: the upstream chain")
    p.add_argument(
        "--sumdb", metavar="'NAME+KEY URL'", action="append", help="with --data: checksum database (repeatable)"
    )


def local_config(args: argparse.Namespace) -> Config | None:
    """The Config for --data/--config runs, None for --node runs; UsageError if unusable."""
    if args.data is None and args.config is None:
        if args.upstream or args.sumdb:
            raise UsageError("--upstream and --sumdb need --data (a node's own config applies over HTTP)")
        return None
    if args.node:
        raise UsageError("--config goes with --data, not --node")
    try:
        cfg = load_config(args.config, flags={"data": args.data, "upstream": args.upstream, "sumdb": args.sumdb})
        parse_goproxy(cfg.upstream)
        for spec in cfg.sumdb:
            parse_sumdb_spec(spec)
    except (ConfigError, GoproxyError, SumDBConfigError) as e:
        raise UsageError(str(e)) from None
    return cfg


def node_url(args: argparse.Namespace) -> str:
    url: str = args.node or os.environ.get("MODMESH_NODE") or DEFAULT_NODE
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--node {url!r}: want an http:// or https:// URL")
    return url.rstrip("/")


def read_secret(path: Path, what: str) -> str:
    """The first non-comment line of a token file (never a flag: flags show in `ps`)."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    if not lines:
        raise UsageError(f"{what} {path} is empty")
    return lines[0]


def setup_cli_logging(console: Console) -> None:
    """Node warnings (refused blobs, open breakers) above the progress bar, not through it."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)


@asynccontextmanager
async def local_node(config: Config) -> AsyncIterator[Node]:
    """A Node on `config.data` without a listener, safe beside a running node."""
    from node.service import Node

    node = Node(config)
    try:
        await node.start()
        yield node
    finally:
        if hasattr(node, "sumdbs"):
            for db in node.sumdbs.dbs:
                await db.idle()  # tiles for offline clients are cached in the background
        await node.aclose()
