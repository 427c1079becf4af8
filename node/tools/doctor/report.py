"""`modmesh doctor`: the usual manual diagnosis of "go cannot download X", automated.

Three parts, each a list of `Check` records (ok / info / warn / fail):

* client (client.py): GOPROXY and friends as the go command sees them,
  with the classic pitfalls named; and whether the node answers and is healthy.
* node (node.py): run *inside* the node (`GET /_admin/doctor`) with
  `--node`, or in this process on a data directory with `--data`: upstreams,
  checksum databases, disk, cache, mesh.
* consistency (`--module M`, consistency.py): what every upstream and the
  cache say about M.

This module runs the diagnosis (`diagnose`), and is the command: its arguments
and the table it prints. Exit status 1 when any check fails; warnings alone exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp

from node.cache.upstream import redact
from node.config import Config
from node.golang import modpath
from node.tools._http import bearer
from node.tools.doctor.check import Check, Status, worst
from node.tools.doctor.client import client_checks
from node.tools.doctor.goenv import GO_DEFAULT_PROXY, GoEnv, read_go_env
from node.tools.doctor.goproxy import ProxyEntry, match_node, parse_client_goproxy, redact_list
from node.tools.doctor.node import node_report
from node.tools.doctor.probe import DEFAULT_TIMEOUT, Probe, probe
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

__all__ = ["Report", "diagnose", "register", "render"]


@dataclass
class Report:
    checks: list[Check]
    goenv: GoEnv
    facts: dict[str, Any] | None

    @property
    def status(self) -> Status:
        return worst(self.checks)

    def to_json(self) -> dict[str, Any]:
        summary = {s: sum(c.status == s for c in self.checks) for s in ("ok", "info", "warn", "fail")}
        values = {**self.goenv.values, "GOPROXY": redact_list(self.goenv.values.get("GOPROXY", ""))}
        return {
            "status": self.status,
            "summary": summary,
            "checks": [c.to_json() for c in self.checks],
            "go_env": {"source": self.goenv.source, "values": values},
            "node": self.facts,
        }


def node_health_checks(node: str, health: Probe, ready: Probe, epoch: str | None, required: bool) -> list[Check]:
    """Is the node up, ready, healthy, and the one on this data directory?"""
    name = f"node {redact(node)}"
    if health.status != 200:
        status: Status = "fail" if required else "warn"
        what = "unreachable" if health.error else f"answered /healthz with {health.status}"
        return [Check("client", name, status, f"{what}: {health.what()}", "node-unreachable")]
    try:
        h = json.loads(health.body)
    except ValueError:
        return [Check("client", name, "fail", "/healthz is not JSON: not a modmesh node", "node-unreachable")]
    if epoch is not None and h.get("store", {}).get("epoch") != epoch:
        return [Check("client", name, "warn", "answers, but serves another data directory", "node-other-data")]
    if ready.status != 200:
        return [Check("client", name, "fail", f"not ready (/readyz {ready.what()})", "node-not-ready")]
    if h.get("status") != "ok":
        why = [str(r) for r in h.get("reasons", [])]
        why += [
            f"upstream {u['name']} breaker {u['breaker']}"
            for u in h.get("upstreams", [])
            if u.get("breaker") != "closed"
        ]
        why += [str(d["fork"]) for d in h.get("sumdb", []) if d.get("fork")]
        return [Check("client", name, "fail", f"degraded: {'; '.join(why) or h.get('status')}", "node-degraded")]
    return [Check("client", name, "ok", f"modmesh {h.get('version', '?')}, healthy, up {h.get('uptime_s', 0):.0f}s")]


async def find_node(
    session: aiohttp.ClientSession, entries: Sequence[ProxyEntry], node: str, epoch: str | None, timeout: float
) -> tuple[int, bool] | None:
    """The GOPROXY entry that reaches the node: by address, else by asking each
    entry's /healthz for the node's store epoch (a LAN name for the same node)."""
    found = match_node(entries, node)
    if found is not None or epoch is None:
        return found
    for i, e in enumerate(entries):
        if e.url in ("off", "direct") or e.problem or not e.url.startswith("http"):
            continue
        p = await probe(session, f"{e.url.rstrip('/')}/healthz", min(timeout, 2.0), limit=64 << 10)
        try:
            if p.status == 200 and json.loads(p.body).get("store", {}).get("epoch") == epoch:
                return i, True
        except (ValueError, AttributeError):
            continue
    return None


async def diagnose(
    environ: Mapping[str, str],
    go: str | None,
    *,
    node: str | None = None,
    config: Config | None = None,
    modules: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    admin_token: str | None = None,
) -> Report:
    """The whole diagnosis: against a running node (`node`) or a data directory (`config`)."""
    goenv = await read_go_env(environ, go)
    facts: dict[str, Any] | None = None
    node_part: list[Check] = []
    async with aiohttp.ClientSession() as session:
        if config is not None:
            url = listen_url(config)
            if not (config.data / "index.sqlite").is_file():
                node_part.append(Check("node", "data", "fail", f"{config.data} holds no node data", "no-data"))
            else:
                async with local_node(config) as n:
                    rep = await node_report(n, modules, timeout)
                facts = rep["facts"]
                node_part += [Check.from_json(c) for c in rep["checks"]]
        else:
            assert node is not None
            url = node
        health, ready = await asyncio.gather(
            probe(session, f"{url}/healthz", timeout), probe(session, f"{url}/readyz", timeout)
        )
        reach = node_health_checks(url, health, ready, facts["epoch"] if facts else None, required=config is None)
        if config is None and health.status == 200:
            facts, more = await remote_report(session, url, modules, timeout, admin_token)
            node_part += more
        # A path that 404s without touching an upstream, unless credentials are required.
        needs_auth = (
            bool(facts["clients_need_auth"])
            if facts
            else (await probe(session, f"{url}/_modmesh-doctor", timeout)).status == 401
        )
        epoch = facts["epoch"] if facts else None
        entries, _ = parse_client_goproxy(goenv.values.get("GOPROXY", GO_DEFAULT_PROXY))
        found = await find_node(session, entries, url, epoch, timeout)
    checks = client_checks(goenv, environ, url, found, facts, needs_auth) + reach + node_part
    return Report(checks, goenv, facts)


async def remote_report(
    session: aiohttp.ClientSession, url: str, modules: Sequence[str], timeout: float, admin_token: str | None = None
) -> tuple[dict[str, Any] | None, list[Check]]:
    q = urlencode([("timeout", f"{timeout:g}")] + [("module", m) for m in modules])
    auth = bearer(admin_token) or None
    # Probes inside the node are bounded by `timeout`, consistency takes two rounds.
    p = await probe(session, f"{url}/_admin/doctor?{q}", timeout * 3 + 5, limit=8 << 20, headers=auth)
    if p.status == 403:
        return None, [
            Check(
                "node",
                "node-side checks",
                "warn",
                "the node answers /_admin/ to loopback clients only: run doctor on the node's host, or with --data",
                "admin-forbidden",
            )
        ]
    if p.status == 401:
        return None, [
            Check(
                "node",
                "node-side checks",
                "warn",
                "the node wants its admin token for /_admin/: pass --admin-token-file",
                "admin-token",
            )
        ]
    if p.status != 200:
        return None, [
            Check(
                "node",
                "node-side checks",
                "fail",
                f"/_admin/doctor: {p.what()} {p.body[:200].decode('utf-8', 'replace').strip()}".strip(),
                "admin-error",
            )
        ]
    try:
        rep = json.loads(p.body)
        return rep["facts"], [Check.from_json(c) for c in rep["checks"]]
    except (ValueError, KeyError, TypeError):
        return None, [Check("node", "node-side checks", "fail", "/_admin/doctor sent no report", "admin-error")]


def listen_url(config: Config) -> str:
    host, port = config.host_port
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    scheme = "https" if config.tls_cert_file is not None else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# ---- the command ---------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="diagnose the client set-up, the node and its upstreams",
        description="Check GOPROXY and friends as the go command sees them, the node's health, its upstreams "
        "and checksum databases, and (--module) what each upstream and the cache say about a module.",
    )
    add_node_arguments(p)
    p.add_argument(
        "-m",
        "--module",
        action="append",
        default=[],
        metavar="PATH",
        help="compare @v/list and @latest for this module across upstreams and the cache (repeatable)",
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per probe (default 5)")
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        type=Path,
        help="with --node: the node's admin token, for its node-side checks (/_admin/doctor)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    try:
        cfg = local_config(args)
        url = None if cfg is not None else node_url(args)
        token = read_secret(args.admin_token_file, "admin token file") if args.admin_token_file else None
        for m in args.module:
            try:
                modpath.check_path(m)
            except ValueError as e:
                raise UsageError(f"--module {m}: {e}") from None
    except UsageError as e:
        Console(stderr=True).print(f"modmesh doctor: {e}", markup=False, highlight=False)
        return 2
    setup_cli_logging(Console(stderr=True))
    report = asyncio.run(
        diagnose(
            os.environ,
            shutil.which("go"),
            node=url,
            config=cfg,
            modules=args.module,
            timeout=args.timeout,
            admin_token=token,
        )
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render(Console(), report)
    return 1 if report.status == "fail" else 0


STYLES = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


def render(console: Console, report: Report) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="modmesh doctor", title_justify="left")
    table.add_column("Section")
    table.add_column("Check")
    table.add_column("Status")
    table.add_column("Detail", overflow="fold")
    section = None
    for c in report.checks:
        if section is not None and c.section != section:
            table.add_section()
        table.add_row(
            c.section if c.section != section else "",
            escape(c.name),
            f"[{STYLES[c.status]}]{c.status}[/]",
            escape(c.detail) + (f" [dim]({escape(c.code)})[/]" if c.code else ""),
        )
        section = c.section
    console.print(table)
    fails = sum(c.status == "fail" for c in report.checks)
    warns = sum(c.status == "warn" for c in report.checks)
    console.print(
        f"{fails} failed, {warns} warnings" if fails or warns else "all checks passed",
        style=STYLES[report.status],
        highlight=False,
    )
