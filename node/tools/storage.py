"""`modmesh pin`, `modmesh gc`, `modmesh verify`, and their `/_admin/` endpoints.

Each command reaches a node as `modmesh warm` and `doctor` do (target.py):

* `--node URL` (default `$MODMESH_NODE`, else http://127.0.0.1:3000): the running
  node does the work (`/_admin/pin`, `/_admin/gc`, `/_admin/verify`, JSON), so its
  in-memory caches stay in step; `--admin-token-file` when the node has an admin
  token, else admin endpoints answer loopback clients only.
* `--data DIR` (+ `--config`, `--upstream`, `--sumdb`): a Node built in this process
  on the data directory, not listening. `pin` and `verify` do not enforce
  `max_size` there (listing pins should not evict); `gc` does, and takes
  `--max-size` to override the configured cap.

The policy itself is in node/cache/storage.py; this module only parses, calls and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiohttp import web

from node.config import Config, ConfigError, parse_size
from node.errors import InvalidRequest
from node.tools._http import admin_session
from node.tools.rebuild import run_rebuild
from node.tools.target import (
    UsageError,
    add_node_arguments,
    local_config,
    local_node,
    node_url,
    read_secret,
    setup_cli_logging,
)

if TYPE_CHECKING:
    from rich.console import Console

    from node.cache.storage import StorageManager
    from node.service import Node

T = TypeVar("T")


class NodeError(Exception):
    """The node refused: exit status 1."""


class NodeUnreachable(NodeError):
    """No answer from the node: exit status 2, as for `modmesh warm`."""


# ---- admin endpoints ----------------------------------------------------------------


def admin_routes(node: Node) -> list[web.RouteDef]:
    async def pins(request: web.Request) -> web.Response:
        return _json({"pins": await node.storage.pins(), **await node.storage.usage()})

    async def pin(request: web.Request) -> web.Response:
        pattern = await _pattern(request)
        try:
            added = await node.storage.pin(pattern)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        return _json({"pattern": pattern, "added": added})

    async def unpin(request: web.Request) -> web.Response:
        pattern = request.query.get("pattern", "")
        try:
            removed = await node.storage.unpin(pattern)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        return _json({"pattern": pattern, "removed": removed})

    async def gc(request: web.Request) -> web.Response:
        return _json((await node.storage.gc()).to_json())

    async def verify(request: web.Request) -> web.Response:
        repair = request.query.get("repair", "1") not in ("0", "false", "no")
        return _json((await node.storage.verify(repair)).to_json())

    return [
        web.get("/_admin/pin", pins),
        web.post("/_admin/pin", pin),
        web.delete("/_admin/pin", unpin),
        web.post("/_admin/gc", gc),
        web.post("/_admin/verify", verify),
    ]


def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _pattern(request: web.Request) -> str:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest('want a JSON body {"pattern": "..."}') from None
    if not isinstance(body, dict) or not isinstance(body.get("pattern"), str):
        raise InvalidRequest('want a JSON body {"pattern": "..."}')
    return str(body["pattern"])


# ---- the commands ----------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pin",
        help="keep modules through eviction",
        description="Pin modules (GOPRIVATE-style patterns such as rsc.io/* or corp.example.com): "
        "eviction never removes them. Without arguments, list the pins.",
    )
    p.add_argument("patterns", nargs="*", metavar="PATTERN")
    p.add_argument("--list", action="store_true", help="list pins and what they hold")
    p.add_argument("--remove", action="store_true", help="remove the given pins")
    _common(p)
    p.set_defaults(func=run_pin)

    g = subparsers.add_parser(
        "gc",
        help="delete orphan blobs, stale temp files and expired answers; enforce max_size",
        description="Remove blobs no index row refers to and temp files (both after 15 minutes), "
        "rows whose blob is gone, expired list/latest answers of modules with nothing "
        "cached; then evict down to max_size if one is set.",
    )
    _common(g)
    g.add_argument("--max-size", metavar="SIZE", help="with --data: the cap to enforce (e.g. 50GB)")
    g.set_defaults(func=run_gc)

    v = subparsers.add_parser(
        "verify",
        help="re-hash every blob and repair bad ones",
        description="Re-hash every blob against its name and the index's sha256, size and h1; "
        "refetch bad files from the mesh's peers or the upstreams. Exit status 1 "
        "when something could not be repaired.",
    )
    _common(v)
    v.add_argument("--no-repair", action="store_true", help="only report")
    v.add_argument(
        "--rebuild-index",
        action="store_true",
        help="with --data, the node stopped: build the index again from the journal and the blobs",
    )
    v.set_defaults(func=run_verify)


def _common(p: argparse.ArgumentParser) -> None:
    add_node_arguments(p)
    p.add_argument(
        "--admin-token-file", metavar="FILE", type=Path, help="with --node: the node's admin token, if it has one"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_pin(args: argparse.Namespace) -> int:
    if args.remove and args.list:
        return _usage("pin", "--list and --remove do not go together")
    if args.remove and not args.patterns:
        return _usage("pin", "--remove needs a PATTERN")

    async def local(sm: StorageManager) -> dict[str, Any]:
        changed = []
        for p in args.patterns:
            if args.remove:
                changed.append({"pattern": p, "removed": await sm.unpin(p)})
            elif not args.list:
                changed.append({"pattern": p, "added": await sm.pin(p)})
        return {"changed": changed, "pins": await sm.pins(), **await sm.usage()}

    async def remote(c: _Client) -> dict[str, Any]:
        changed = []
        for p in args.patterns:
            if args.remove:
                changed.append(await c.call("DELETE", "/_admin/pin", params={"pattern": p}))
            elif not args.list:
                changed.append(await c.call("POST", "/_admin/pin", body={"pattern": p}))
        return {"changed": changed, **await c.call("GET", "/_admin/pin")}

    res = _run("pin", args, local, remote, enforce_cap=False)
    if isinstance(res, int):
        return res
    missing = [c["pattern"] for c in res["changed"] if c.get("removed") is False]
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        console = _console()
        for c in res["changed"]:
            verb = (
                ("removed" if c["removed"] else "was not pinned")
                if "removed" in c
                else ("pinned" if c["added"] else "already pinned")
            )
            console.print(f"{c['pattern']}: {verb}", markup=False, highlight=False)
        _print_pins(console, res)
    return 1 if missing else 0


def run_gc(args: argparse.Namespace) -> int:
    cap: int | None = None
    if args.max_size is not None:
        if args.data is None and args.config is None:
            return _usage("gc", "--max-size goes with --data (a running node enforces its own)")
        try:
            cap = parse_size(args.max_size)
        except ConfigError as e:
            return _usage("gc", str(e))

    async def local(sm: StorageManager) -> dict[str, Any]:
        return (await sm.gc()).to_json()

    async def remote(c: _Client) -> dict[str, Any]:
        return await c.call("POST", "/_admin/gc")

    res = _run("gc", args, local, remote, enforce_cap=True, max_size=cap)
    if isinstance(res, int):
        return res
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    from rich.table import Table

    t = Table(title="modmesh gc", title_justify="left")
    t.add_column("Removed")
    t.add_column("Count", justify="right")
    t.add_column("Size", justify="right")
    t.add_row("orphan blobs", str(res["orphan_blobs"]), _size(res["orphan_bytes"]))
    t.add_row("stale temp files", str(res["tmp_files"]), _size(res["tmp_bytes"]))
    t.add_row("rows without a blob", str(res["dangling_rows"]), "")
    t.add_row("expired list/latest answers", str(res["meta_rows"]), "")
    ev = res.get("evict") or {}
    t.add_row("evicted (over max_size)", f"{ev.get('evicted_files', 0)} files", _size(ev.get("evicted_bytes", 0)))
    console = _console()
    console.print(t)
    cap_text = _size(ev["max_size"]) if ev.get("max_size") else "no max_size"
    console.print(
        f"store: {_size(ev.get('used_after', 0))} ({cap_text})"
        + (f"; {res['young_orphans']} recent unindexed blobs left for the next run" if res["young_orphans"] else "")
    )
    if ev.get("pinned_over_cap"):
        console.print("[bold yellow]pinned modules alone exceed max_size[/]")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    if args.rebuild_index:
        return run_rebuild(args)
    repair = not args.no_repair

    async def local(sm: StorageManager) -> dict[str, Any]:
        return (await sm.verify(repair)).to_json()

    async def remote(c: _Client) -> dict[str, Any]:
        return await c.call("POST", "/_admin/verify", params={"repair": "1" if repair else "0"})

    res = _run("verify", args, local, remote, enforce_cap=False)
    if isinstance(res, int):
        return res
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        from rich.table import Table

        console = _console()
        console.print(
            f"verified {res['blobs']} blobs ({_size(res['bytes'])}) for {res['files']} files; "
            f"{len(res['problems'])} bad, {res['repaired']} repaired, {res['unrepaired']} not repaired"
            + (f"; {res['orphans_corrupt']} corrupt unindexed blobs deleted" if res["orphans_corrupt"] else "")
        )
        if res["problems"]:
            t = Table(title="problems", title_justify="left")
            for col in ("Module", "Version", "File", "Problem", "Result"):
                t.add_column(col, overflow="fold")
            style = {"repaired": "green", "found": "yellow", "unrepairable": "bold red"}
            for p in res["problems"]:
                t.add_row(
                    p["module"],
                    p["version"],
                    p["kind"],
                    p["reason"],
                    f"[{style.get(p['status'], '')}]{p['status']}[/] {p['detail']}".rstrip(),
                )
            console.print(t)
    return 1 if res["unrepaired"] else 0


# ---- plumbing ------------------------------------------------------------------------------


def _run(
    name: str,
    args: argparse.Namespace,
    local: Callable[[StorageManager], Awaitable[dict[str, Any]]],
    remote: Callable[[_Client], Awaitable[dict[str, Any]]],
    *,
    enforce_cap: bool,
    max_size: int | None = None,
) -> dict[str, Any] | int:
    """The command's JSON result, or an exit status after printing why: 2 for bad
    arguments or an unreachable node (as warm), 1 when the node refused."""
    try:
        cfg = local_config(args)
        if cfg is not None:
            if max_size is not None:
                cfg = dataclasses.replace(cfg, max_size=max_size)
            shown_cap = cfg.max_size
            if not enforce_cap:
                cfg = dataclasses.replace(cfg, max_size=None)
            from rich.console import Console

            setup_cli_logging(Console(stderr=True))
            res = asyncio.run(_with_local_node(cfg, local))
            if "max_size" in res:
                res["max_size"] = shown_cap  # configured, just not enforced by this run
            return res
        if args.admin_token_file and args.data:
            raise UsageError("--admin-token-file goes with --node")
        token = read_secret(args.admin_token_file, "admin token file") if args.admin_token_file else None
        return asyncio.run(_with_client(node_url(args), token, remote))
    except UsageError as e:
        return _usage(name, str(e))
    except NodeUnreachable as e:
        print(f"modmesh {name}: {e}", file=sys.stderr)
        return 2
    except (NodeError, ValueError, OSError) as e:
        print(f"modmesh {name}: {e}", file=sys.stderr)
        return 1


def _usage(name: str, msg: str) -> int:
    print(f"modmesh {name}: {msg}", file=sys.stderr)
    return 2


async def _with_local_node(cfg: Config, op: Callable[[StorageManager], Awaitable[T]]) -> T:
    async with local_node(cfg) as node:
        return await op(node.storage)


class _Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, params: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            async with self.session.request(method, self.base + path, params=params, json=body) as r:
                text = await r.text()
        except aiohttp.ClientError as e:
            raise NodeUnreachable(f"cannot reach {self.base}: {e}") from None
        if r.status != 200:
            line = text.strip().split("\n", 1)[0]
            raise NodeError(f"{self.base} answered {r.status}: {line}")
        result: dict[str, Any] = json.loads(text)
        return result


async def _with_client(url: str, token: str | None, op: Callable[[_Client], Awaitable[T]]) -> T:
    async with admin_session(token) as session:  # verify and gc answer when they are done
        return await op(_Client(session, url))


def _console() -> Console:
    from rich.console import Console

    return Console()


def _size(n: int) -> str:
    from rich.filesize import decimal

    return decimal(int(n))


def _print_pins(console: Console, res: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="pins", title_justify="left")
    t.add_column("Pattern")
    t.add_column("Blobs", justify="right")
    t.add_column("Size", justify="right")
    t.add_column("Since")
    for p in res["pins"]:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(p["created_at"]))
        t.add_row(p["pattern"], str(p["blobs"]), _size(p["bytes"]), since)
    console.print(t)
    cap = _size(res["max_size"]) if res.get("max_size") else "no max_size"
    console.print(f"store: {_size(res['used'])} ({cap})")
