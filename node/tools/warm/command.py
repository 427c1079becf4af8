"""The `modmesh warm` command: its arguments, the progress bar and the report.

The report is a table of failures (with reasons) and fetches, cached modules
as one count (`print_summary`), or JSON (`report_json`). Exit status 2 for bad
arguments or an unreachable node, 1 when any module failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.cache.upstream import redact
from node.config import Config
from node.tools.target import UsageError, add_node_arguments, local_config, node_url, read_secret, setup_cli_logging
from node.tools.warm.inputs import Target, UnreadableInput, load_inputs
from node.tools.warm.warm import DEFAULT_JOBS, Result, input_failures, warm_data, warm_node

if TYPE_CHECKING:
    from rich.console import Console


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "warm",
        help="fetch modules into a node ahead of time",
        description="Fetch every module listed in go.sum / go.mod / go.work files or module@version "
        "lists into a node, with their checksum-database records. Resumable: run it again.",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="go.sum, go.mod, go.work, a list of module@version ('-': stdin), or module@version",
    )
    add_node_arguments(p)
    p.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help="with --node: a client token, for a node that requires credentials (or user:password@ in the URL)",
    )
    p.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS, help=f"concurrent modules (default {DEFAULT_JOBS})")
    p.add_argument("--json", action="store_true", help="print per-module results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True)
    try:
        cfg = local_config(args)
        where = str(cfg.data) if cfg is not None else node_url(args)
        token = read_secret(args.token_file, "token file") if args.token_file else None
        targets, errors = load_inputs(args.files)
    except (UsageError, UnreadableInput) as e:
        err.print(f"modmesh warm: {e}", markup=False, highlight=False)
        return 2
    setup_cli_logging(err)
    started = time.monotonic()
    try:
        results = asyncio.run(_run_with_progress(cfg, where, targets, args.jobs, err, args.quiet, token))
    except UsageError as e:
        err.print(f"modmesh warm: {e}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("modmesh warm: interrupted; run it again to resume")
        return 130
    results = input_failures(errors) + results
    elapsed = time.monotonic() - started
    out = Console()
    if args.json:
        print(json.dumps(report_json(redact(where), results, elapsed), indent=2))
    else:
        print_summary(out, redact(where), results, elapsed)
    return 1 if any(r.status == "failed" for r in results) else 0


async def _run_with_progress(
    cfg: Config | None,
    where: str,
    targets: Sequence[Target],
    jobs: int,
    console: Console,
    quiet: bool,
    token: str | None = None,
) -> list[Result]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]warm[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
    with progress:
        task = progress.add_task("", total=len(targets))

        def done(r: Result) -> None:
            progress.update(task, advance=1, description=f"{r.module}@{r.version}")

        if cfg is not None:
            return await warm_data(cfg, targets, jobs, done)
        return await warm_node(where, targets, jobs, done, token)


def counts(results: Sequence[Result]) -> dict[str, int]:
    c = {"total": len(results), "fetched": 0, "cached": 0, "failed": 0}
    for r in results:
        c[r.status] += 1
    return c


def report_json(where: str, results: Sequence[Result], elapsed: float) -> dict[str, Any]:
    summary: dict[str, Any] = counts(results)
    summary["bytes"] = sum(r.bytes for r in results)
    summary["seconds"] = round(elapsed, 3)
    return {"node": where, "summary": summary, "results": [r.to_json() for r in results]}


def print_summary(console: Console, where: str, results: Sequence[Result], elapsed: float) -> None:
    """Failures (with reasons) and fetches one per row; cached modules as one count."""
    from rich.markup import escape
    from rich.table import Table

    c = counts(results)
    table = Table(title=f"modmesh warm → {where}", title_justify="left")
    table.add_column("Module")
    table.add_column("Version")
    table.add_column("Result")
    table.add_column("Detail", overflow="fold")
    for r in sorted(results, key=lambda r: r.status != "failed"):
        if r.status == "failed":
            table.add_row(escape(r.module), escape(r.version), "[bold red]failed[/]", escape(f"{r.origin}: {r.reason}"))
        elif r.status == "fetched":
            table.add_row(escape(r.module), r.version, "[green]fetched[/]", escape(_fetched_detail(r)))
    if c["cached"]:
        table.add_row(f"({c['cached']} modules)", "", "[cyan]already cached[/]", "")
    console.print(table)
    console.print(
        f"{c['fetched']} fetched, {c['cached']} already cached, {c['failed']} failed "
        f"({_size(sum(r.bytes for r in results))} in {elapsed:.1f}s)",
        style="bold red" if c["failed"] else None,
        highlight=False,
    )


def _fetched_detail(r: Result) -> str:
    files = ", ".join(k for k, v in r.files.items() if v == "miss") or "-"
    dbs = [k for k, v in r.sumdb.items() if v == "miss"]
    return f"{files} ({_size(r.bytes)})" + (f"; records: {', '.join(dbs)}" if dbs else "")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    x = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if x < 1024:
            return f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} TiB"
