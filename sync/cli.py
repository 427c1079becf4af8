"""`modmesh peers`: a node's member table, from its signed /_mesh/status.

The status endpoint is a mesh endpoint, so it is signed like any peer request:
the command needs the mesh secret (flag, the config file's [mesh] table, or
MODMESH_MESH_SECRET_FILE), as every other mesh endpoint would.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from yarl import URL

from node.config import ConfigError, load_config
from node.hooks import MeshStatus

from .auth import Signer
from .config import load_mesh_config, load_secrets

STATUS_PATH = "/_mesh/status"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "peers",
        help="show a node's mesh members",
        description="Show the mesh members a node knows, their state and sync backlog.",
    )
    p.add_argument("--node", metavar="URL", default="http://127.0.0.1:3000", help="the node to ask")
    p.add_argument("--mesh-secret-file", metavar="FILE", type=Path, help="the mesh secret (requests are signed)")
    p.add_argument("--config", metavar="FILE", type=Path, help="TOML file whose [mesh] table names the secret")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.set_defaults(func=run)


def _secret_file(args: argparse.Namespace) -> Path | None:
    cfg = load_config(args.config) if args.config is not None or os.environ.get("MODMESH_CONFIG") else None
    section = cfg.sections.get("mesh") if cfg is not None else None
    return load_mesh_config(section, os.environ, {"secret_file": args.mesh_secret_file}).secret_file


async def fetch_status(node_url: str, secret: bytes, timeout: float = 10.0) -> MeshStatus:
    base = node_url.rstrip("/")
    signer = Signer(secret, "cli")
    path = URL(base).raw_path.rstrip("/") + STATUS_PATH
    async with aiohttp.ClientSession() as s:
        async with s.get(
            URL(base + STATUS_PATH, encoded=True),
            headers=signer.headers("GET", path),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            if r.status == 401:
                raise PermissionError("the node refused the signature: is this its mesh secret?")
            if r.status == 404:
                raise LookupError("the node does not run the mesh (no secret configured?)")
            r.raise_for_status()
            result: MeshStatus = await r.json()
            return result


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render(status: MeshStatus, width: int = 120) -> str:
    """The status as a table (text), for terminals and tests alike."""
    table = Table(title=f"mesh {status['mesh']!r} seen from {status['node_id']} ({status['url']})")
    for col in ("node", "url", "state", "last seen", "inventory", "backlog", "note"):
        table.add_column(col, justify="right" if col in ("inventory", "backlog") else "left")
    for m in status["members"]:
        note = f"quarantined {m['quarantined_s']:.0f}s" if m["quarantined_s"] else m["source"]
        table.add_row(
            m["node_id"], m["url"], m["state"], _ago(m["last_seen_s"]), str(m["inventory"]), str(m["backlog"]), note
        )
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    console.print(table)
    pre = status["presync"]
    console.print(
        f"this node: {status['inventory']} files (serial {status['head_serial']}); catalog "
        f"{status['catalog']['entries']} files from peers; sync backlog {status['sync_backlog']}; "
        f"pre-sync {'on' if pre['enabled'] else 'off'}, {len(pre['active'])} active"
    )
    return out.getvalue()


def run(args: argparse.Namespace) -> int:
    try:
        secret_file = _secret_file(args)
        if secret_file is None:
            print("modmesh peers: no mesh secret: pass --mesh-secret-file FILE", file=sys.stderr)
            return 2
        secret = load_secrets(secret_file)[0]
    except (ConfigError, ValueError) as e:
        print(f"modmesh peers: {e}", file=sys.stderr)
        return 2
    try:
        status = asyncio.run(fetch_status(args.node, secret))
    except (TimeoutError, aiohttp.ClientError, OSError, LookupError) as e:
        print(f"modmesh peers: cannot get {args.node}{STATUS_PATH}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status), end="")
    return 0
