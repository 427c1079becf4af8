"""`modmesh export` / `modmesh import`: the command-line front.

Arguments, the progress bar and what is printed at the end (the export summary,
the import report). Both commands reach a node the two usual ways (target.py):
`--node URL` talks to a running node over HTTP, `--data DIR` builds a Node in
this process on a data directory (a node may be running on it); transfer.py
does the work either way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from node.cache.upstream import redact
from node.tools.bundle.export import ExportSummary
from node.tools.bundle.format import BundleError
from node.tools.bundle.importing import Report
from node.tools.bundle.selection import Selection, SelectionError, parse_gosum, parse_since
from node.tools.bundle.sources import SourceError
from node.tools.bundle.tar import read_manifest_file
from node.tools.bundle.transfer import RemoteError, export_local, export_remote, import_local, import_remote
from node.tools.target import UsageError, add_node_arguments, local_config, node_url, read_secret, setup_cli_logging

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def register(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "export",
        help="write modules and their checksum-database proofs to a bundle",
        description="Write a bundle (a tar stream) of cached modules, list/latest answers and the "
        "checksum-database records, tiles and tree head needed to verify them offline.",
    )
    e.add_argument("-o", "--output", required=True, metavar="FILE", help="the bundle file ('-': stdout)")
    add_node_arguments(e)
    e.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only modules matching this GOPRIVATE-style pattern (repeatable)",
    )
    e.add_argument("--gosum", metavar="FILE", type=Path, help="only the versions in this go.sum")
    e.add_argument("--since", metavar="DATE", help="only what was fetched after this ISO date or time (UTC)")
    e.add_argument(
        "--since-bundle", metavar="FILE", type=Path, help="only what is not in this earlier bundle (incremental)"
    )
    e.add_argument("--admin-token-file", metavar="FILE", type=Path, help="with --node: the node's admin token")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    e.set_defaults(func=run_export)

    i = subparsers.add_parser(
        "import",
        help="verify and admit a bundle, a GOMODCACHE or a module directory",
        description="Verify every entry (sha256, h1, checksum-database record) and admit the sound "
        "ones; refused entries are named. Importing twice changes nothing.",
    )
    i.add_argument(
        "source",
        metavar="SOURCE",
        help="a bundle ('-': stdin), an unpacked bundle, a GOMODCACHE or its cache/download, "
        "or a module directory (module@version, or with --module/--version)",
    )
    add_node_arguments(i)
    i.add_argument("--offline", action="store_true", help="with --data: never contact an upstream or checksum database")
    i.add_argument("--module", metavar="PATH", help="module path of a module directory SOURCE")
    i.add_argument("--version", metavar="VERSION", help="version of a module directory SOURCE")
    i.add_argument("--admin-token-file", metavar="FILE", type=Path, help="with --node: the node's admin token")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.add_argument("-v", "--verbose", action="store_true", help="list every entry, not only refused ones")
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=run_import)


def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    return Console(), Console(stderr=True)


def _progress(console: Console, quiet: bool, verb: str) -> Progress:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(
        TextColumn(f"[bold]{verb}[/]"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.description}", markup=False),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )


def admin_token(args: argparse.Namespace) -> str | None:
    """--admin-token-file, else $MODMESH_ADMIN_TOKEN (the node's admin token, if it has one)."""
    if args.admin_token_file is not None:
        return read_secret(args.admin_token_file, "admin token file")
    return os.environ.get("MODMESH_ADMIN_TOKEN") or None


def _cli_logging() -> None:
    from rich.console import Console

    setup_cli_logging(Console(stderr=True))
    logging.getLogger("node.tools.bundle.importing").setLevel(logging.ERROR)  # refusals are in the report


# ---- export ------------------------------------------------------------------------


def selection_from_args(args: argparse.Namespace) -> tuple[Selection, dict[str, Any]]:
    """The Selection, and its JSON form for POST /_admin/export."""
    body: dict[str, Any] = {"modules": list(args.module)}
    gosum = prev = None
    if args.gosum is not None:
        text = args.gosum.read_text()
        body["gosum"], gosum = text, parse_gosum(text)
    since = parse_since(args.since) if args.since else None
    if args.since:
        body["since"] = args.since
    if args.since_bundle is not None:
        prev, body["since_bundle"] = read_manifest_file(args.since_bundle)
    return Selection(tuple(args.module), gosum, since, prev), body


class _Output:
    """`-o FILE` (written as FILE.part, renamed when complete) or `-o -` (stdout)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = None if name == "-" else Path(name)
        self.part = None if self.path is None else self.path.with_name(self.path.name + ".part")
        self.f: BinaryIO | None = None

    def open(self) -> None:
        # Kept open across writes, closed (or discarded) by close().
        self.f = sys.stdout.buffer if self.part is None else open(self.part, "wb")  # noqa: SIM115

    async def write(self, data: bytes) -> None:
        assert self.f is not None
        await asyncio.to_thread(self.f.write, data)

    def close(self, ok: bool) -> None:
        if self.f is None:
            return
        self.f.flush()
        if self.part is None:
            return
        if ok:
            os.fsync(self.f.fileno())
        self.f.close()
        if ok:
            assert self.path is not None
            os.replace(self.part, self.path)
        else:
            self.part.unlink(missing_ok=True)


def run_export(args: argparse.Namespace) -> int:
    _cli_logging()
    try:
        return asyncio.run(export_main(args))
    except KeyboardInterrupt:
        print("modmesh export: interrupted; no bundle written", file=sys.stderr)
        return 130


async def export_main(args: argparse.Namespace) -> int:
    _, err = _consoles()
    try:
        cfg = local_config(args)
        where = str(cfg.data) if cfg is not None else node_url(args)
        if cfg is not None and not (cfg.data / "index.sqlite").is_file():
            raise UsageError(f"{cfg.data} holds no node data (no index.sqlite)")
        token = admin_token(args) if cfg is None else None
        sel, body = selection_from_args(args)
    except (UsageError, SelectionError, BundleError, OSError, ValueError) as e:
        err.print(f"modmesh export: {e}", markup=False, highlight=False)
        return 2
    output = _Output(args.output)
    ok = False
    try:
        output.open()
        with _progress(err, args.quiet, "export") as progress:
            task = progress.add_task("", total=None)

            async def sink(data: bytes) -> None:
                await output.write(data)
                progress.update(task, advance=len(data))

            summary: ExportSummary | None
            if cfg is not None:
                summary = await export_local(cfg, sel, sink, lambda n: progress.update(task, total=n))
            else:
                manifest = await export_remote(where, token, body, sink, lambda n: progress.update(task, total=n))
                summary = ExportSummary.of(manifest) if manifest is not None else None
        ok = True
    except (BundleError, RemoteError, OSError) as e:
        err.print(f"modmesh export: {e}", markup=False, highlight=False)
        return 1
    finally:
        output.close(ok)
    if not args.quiet:
        _print_export_summary(err, summary, redact(where), args.output)
    return 0


def _print_export_summary(err: Console, summary: ExportSummary | None, where: str, output: str) -> None:
    if summary is None:
        err.print(f"exported from {where} to {output}", markup=False, highlight=False)
        return
    counts, size = summary.counts, summary.bytes
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("zip", "mod", "info", "list", "latest") if counts.get(k))
    dbs = ", ".join(
        f"{d.get('name')} (tree {d.get('tree_size')}: {counts.get('sumdb-lookup', 0)} records, "
        f"{counts.get('sumdb-tile', 0)} tiles)"
        for d in summary.sumdb
    )
    err.print(
        f"exported {summary.entries} entries ({_size(size)}) from {where} to {output}: "
        f"{kinds or 'no module files'}" + (f"; checksum database {dbs}" if dbs else ""),
        markup=False,
        highlight=False,
    )
    for w in summary.warnings:
        err.print(f"warning: {w}", style="yellow", markup=False, highlight=False)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


# ---- import --------------------------------------------------------------------------


def run_import(args: argparse.Namespace) -> int:
    _cli_logging()
    try:
        return asyncio.run(import_main(args))
    except KeyboardInterrupt:
        print("modmesh import: interrupted; what was admitted stays, run it again to finish", file=sys.stderr)
        return 130


async def import_main(args: argparse.Namespace) -> int:
    out, err = _consoles()
    try:
        cfg = local_config(args)
        if cfg is not None and args.offline:
            cfg = dataclasses.replace(cfg, offline=True)
        where = str(cfg.data) if cfg is not None else node_url(args)
        if args.offline and cfg is None:
            raise UsageError("--offline goes with --data (a running node keeps its own mode)")
        token = admin_token(args) if cfg is None else None
        src = args.source
        if src != "-" and not Path(src).exists():
            raise UsageError(f"{src}: no such file or directory")
        if (args.module or args.version) and (src == "-" or not Path(src).is_dir()):
            raise UsageError("--module and --version describe a module directory SOURCE")
    except UsageError as e:
        err.print(f"modmesh import: {e}", markup=False, highlight=False)
        return 2
    label = "stdin" if src == "-" else Path(src).name
    try:
        with _progress(err, args.quiet, "import") as progress:
            task = progress.add_task("", total=None)
            bar = _Bar(progress, task)

            def show(report: Report) -> None:
                progress.stop()
                if args.json:
                    for chunk in report.json_chunks():
                        sys.stdout.write(chunk.decode())
                    sys.stdout.flush()
                else:
                    print_report(out, report, redact(where), args.verbose)

            if cfg is not None:
                failed = await import_local(cfg, src, args.module, args.version, label, bar, show)
            else:
                failed = await import_remote(where, token, src, args.module, args.version, label, bar, show)
    except (SourceError, BundleError, RemoteError) as e:
        err.print(f"modmesh import: {e}", markup=False, highlight=False)
        return 2 if isinstance(e, SourceError) else 1
    return 1 if failed else 0


class _Bar:
    """The progress bar as an import's `transfer.Meter`."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def total(self, n: int | None) -> None:
        self.progress.update(self.task, total=n)

    def bytes(self, n: int) -> None:
        self.progress.update(self.task, advance=n)

    def entry(self, name: str) -> None:
        self.progress.update(self.task, description=name)


#: Refused entries the report table shows at most (a huge bundle may refuse thousands).
MAX_ROWS = 100


def print_report(console: Console, report: Report, where: str, verbose: bool = False) -> None:
    """Refused entries one per row (with the reason; the first MAX_ROWS); the rest as
    counts unless verbose. Verbose, every entry, in tables of a page of rows each (a
    large report is read back a page at a time)."""
    from rich.table import Table
    from rich.text import Text

    c = report.counts()
    pages = report.pages() if verbose else iter([report.refusals[:MAX_ROWS]])
    hidden = 0 if verbose else c["refused"] - min(c["refused"], MAX_ROWS)
    colors = {"admitted": "green", "present": "dim", "refused": "bold red", "skipped": "yellow"}
    first = True
    for rows in pages:
        if not rows:
            continue
        title = f"modmesh import {report.source.removeprefix('import ')} → {where}" if first else None
        table = Table(title=title, title_justify="left", show_header=first)
        table.add_column("Status")
        table.add_column("Entry", overflow="fold")
        table.add_column("Reason", overflow="fold")
        for o in rows:
            table.add_row(Text(o.status, style=colors[o.status]), Text(o.label), Text(o.reason))
        console.print(table)
        first = False
    if hidden:
        console.print(Text(f"... and {hidden} more refused (--verbose or --json lists them all)"))
    for e in report.errors:
        console.print(Text(f"error: {e}", style="bold red"))
    console.print(
        Text(
            f"{c['admitted']} admitted, {c['present']} already present, {c['refused']} refused, {c['skipped']} skipped"
        )
    )
