"""`modmesh export` / `modmesh import`: the commands and the node's admin endpoints.

Both commands reach a node the two usual ways (node.warm's conventions):
`--node URL` talks to a running node over HTTP, `--data DIR` builds a Node in
this process on a data directory (a node may be running on it).

    POST /_admin/export          JSON selection -> the bundle (application/x-tar,
                                 exact Content-Length; the manifest comes first)
    GET  /_admin/export?module=PATTERN&since=DATE   the same, for curl
    POST /_admin/import?source=NAME                 body: a bundle -> JSON report

`import --node` of a directory uploads it as a bundle made on the fly.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
from aiohttp import web

from node.cache.upstream import redact
from node.config import Config
from node.errors import InvalidRequest
from node.server.app import ClientSink, ClientStalled, abort_connection
from node.tools.bundle.export import ExportPlan, plan_export, write_bundle
from node.tools.bundle.format import MANIFEST_NAME, BundleError, Manifest
from node.tools.bundle.importing import Report, import_members, import_stream
from node.tools.bundle.selection import Selection, SelectionError, parse_gosum, parse_since
from node.tools.bundle.sources import FileSource, SourceError, open_directory, tar_stream
from node.tools.bundle.tar import BLOCK, CHUNK, TarReader
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
    from rich.progress import Progress, TaskID

    from node.service import Node

log = logging.getLogger(__name__)

TAR = "application/x-tar"


# ---- admin endpoints -----------------------------------------------------------


def admin_routes(node: Node) -> list[web.RouteDef]:
    async def export_get(request: web.Request) -> web.StreamResponse:
        try:
            since = request.query.get("since")
            sel = Selection(tuple(request.query.getall("module", [])), None, parse_since(since) if since else None)
        except SelectionError as e:
            raise InvalidRequest(str(e)) from None
        return await _send_bundle(request, node, sel)

    async def export_post(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                raise SelectionError("the body must be a JSON object")
            sel = Selection.from_json(body)
        except (ValueError, SelectionError, BundleError) as e:
            raise InvalidRequest(f"export selection: {e}") from None
        return await _send_bundle(request, node, sel)

    async def import_post(request: web.Request) -> web.Response:
        source = request.query.get("source", "upload")[:200]
        report = await import_stream(node, TarReader(request.content), f"import {source}")
        c = report.counts()
        log.info(
            "import %s: %d admitted, %d present, %d refused, %d skipped%s",
            source,
            c["admitted"],
            c["present"],
            c["refused"],
            c["skipped"],
            f"; {report.errors[0]}" if report.errors else "",
        )
        return web.json_response(report.to_json(), headers={"Cache-Control": "no-store"})

    return [
        web.get("/_admin/export", export_get),
        web.post("/_admin/export", export_post),
        web.post("/_admin/import", import_post),
    ]


async def _send_bundle(request: web.Request, node: Node, sel: Selection) -> web.StreamResponse:
    plan = await plan_export(node, sel)
    resp = web.StreamResponse(
        headers={
            "Content-Type": TAR,
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="modmesh-bundle.tar"',
        }
    )
    resp.content_length = plan.tar_size()
    await resp.prepare(request)
    sink = ClientSink(request, resp, node.config.write_idle_timeout)
    try:
        await write_bundle(plan, sink.write)
    except (BundleError, ClientStalled, OSError) as e:
        if not isinstance(e, ConnectionResetError):
            log.error("export to %s stopped: %s", request.remote, e)
        abort_connection(request)  # the client sees a short body, never a complete bad bundle
        return resp
    await resp.write_eof()
    return resp


# ---- command line ----------------------------------------------------------------


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


def _session(token: str | None) -> aiohttp.ClientSession:
    # An export or import answers when it is done: no read timeout.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    return aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else {})


async def _first_line(resp: aiohttp.ClientResponse) -> str:
    text = (await resp.content.read(4096)).decode("utf-8", "replace").strip()
    return text.split("\n", 1)[0]


def _cli_logging() -> None:
    from rich.console import Console

    setup_cli_logging(Console(stderr=True))
    logging.getLogger("node.tools.bundle.importing").setLevel(logging.ERROR)  # refusals are in the report


# ---- export ------------------------------------------------------------------------


def read_manifest_file(path: Path) -> tuple[Manifest, dict[str, Any]]:
    """An earlier bundle's manifest: the bundle itself (only its first member is read)
    or the manifest JSON. Returns it parsed and as the JSON object."""
    with open(path, "rb") as f:
        head = f.read(1)
        f.seek(0)
        data = f.read() if head == b"{" else _manifest_sync(f)
    return Manifest.from_bytes(data), json.loads(data)


def _manifest_sync(f: BinaryIO) -> bytes:
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST_NAME:
                raise BundleError(f"{getattr(f, 'name', 'bundle')} is not a modmesh bundle")
            fh = tar.extractfile(member)
            assert fh is not None
            return fh.read()
    except tarfile.TarError as e:
        raise BundleError(f"{getattr(f, 'name', 'bundle')} is not a modmesh bundle: {e}") from None


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
        self.f = sys.stdout.buffer if self.part is None else open(self.part, "wb")

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

            manifest: Manifest | None
            if cfg is not None:
                manifest = await _export_local(cfg, sel, sink, lambda n: progress.update(task, total=n))
            else:
                manifest = await _export_remote(where, token, body, sink, lambda n: progress.update(task, total=n))
        ok = True
    except (BundleError, _RemoteError, OSError) as e:
        err.print(f"modmesh export: {e}", markup=False, highlight=False)
        return 1
    finally:
        output.close(ok)
    if not args.quiet:
        _print_export_summary(err, manifest, redact(where), args.output)
    return 0


async def _export_local(
    cfg: Config, sel: Selection, sink: Callable[[bytes], Awaitable[None]], total: Callable[[int], None]
) -> Manifest:
    async with local_node(dataclasses.replace(cfg, offline=True)) as node:
        plan: ExportPlan = await plan_export(node, sel)
        total(plan.tar_size())
        await write_bundle(plan, sink)
        return plan.manifest


class _RemoteError(Exception):
    pass


async def _export_remote(
    url: str,
    token: str | None,
    body: dict[str, Any],
    sink: Callable[[bytes], Awaitable[None]],
    total: Callable[[int], None],
) -> Manifest | None:
    sniffer = _ManifestSniffer()
    try:
        async with _session(token) as s, s.post(f"{url}/_admin/export", json=body) as r:
            if r.status != 200:
                raise _RemoteError(f"{redact(url)} answered {r.status}: {await _first_line(r)}")
            if r.content_length is not None:
                total(r.content_length)
            async for chunk in r.content.iter_chunked(CHUNK):
                sniffer.feed(chunk)
                await sink(chunk)
    except aiohttp.ClientError as e:
        raise _RemoteError(f"{redact(url)}: {e or type(e).__name__} (the bundle is incomplete)") from None
    return sniffer.manifest


class _ManifestSniffer:
    """Picks the manifest (the first member) out of a bundle stream passing by."""

    def __init__(self) -> None:
        self.buf = b""
        self.manifest: Manifest | None = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self.buf += chunk
        if len(self.buf) < BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(self.buf[:BLOCK], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            self.done = True
            return
        if len(self.buf) >= BLOCK + info.size:
            self.done = True
            try:
                self.manifest = Manifest.from_bytes(self.buf[BLOCK : BLOCK + info.size])
            except BundleError:
                pass
            self.buf = b""


def _print_export_summary(err: Console, manifest: Manifest | None, where: str, output: str) -> None:
    if manifest is None:
        err.print(f"exported from {where} to {output}", markup=False, highlight=False)
        return
    counts: dict[str, int] = {}
    for e in manifest.entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    size = sum(e.size for e in manifest.entries)
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("zip", "mod", "info", "list", "latest") if counts.get(k))
    dbs = ", ".join(
        f"{d.get('name')} (tree {d.get('tree_size')}: {counts.get('sumdb-lookup', 0)} records, "
        f"{counts.get('sumdb-tile', 0)} tiles)"
        for d in manifest.sumdb
    )
    err.print(
        f"exported {len(manifest.entries)} entries ({_size(size)}) from {where} to {output}: "
        f"{kinds or 'no module files'}" + (f"; checksum database {dbs}" if dbs else ""),
        markup=False,
        highlight=False,
    )
    for w in manifest.warnings:
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
            if cfg is not None:
                report = await _import_local(cfg, src, args, label, bar)
            else:
                report = await _import_remote(where, token, src, args, label, bar)
    except (SourceError, BundleError, _RemoteError) as e:
        err.print(f"modmesh import: {e}", markup=False, highlight=False)
        return 2 if isinstance(e, SourceError) else 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(out, report, redact(where), args.verbose)
    return 1 if report.failed else 0


class _Bar:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def total(self, n: int | None) -> None:
        self.progress.update(self.task, total=n)

    def bytes(self, n: int) -> None:
        self.progress.update(self.task, advance=n)

    def entry(self, name: str) -> None:
        self.progress.update(self.task, description=name)


def _open_source(src: str) -> BinaryIO:
    return sys.stdin.buffer if src == "-" else open(src, "rb")


async def _import_local(cfg: Config, src: str, args: argparse.Namespace, label: str, bar: _Bar) -> Report:
    async with local_node(cfg) as node:
        origin = f"import {label}"
        if src == "-" or Path(src).is_file():
            f = _open_source(src)
            bar.total(os.fstat(f.fileno()).st_size if src != "-" else None)
            try:
                return await import_stream(node, TarReader(FileSource(f, bar.bytes)), origin, bar.entry)
            finally:
                if src != "-":
                    f.close()
        ds = await asyncio.to_thread(open_directory, Path(src), args.module, args.version, node.store.tmp_dir)
        try:
            bar.total(ds.total)
            return await import_members(node, ds.manifest, ds.members(bar.bytes), origin, bar.entry)
        finally:
            ds.close()


async def _file_body(f: BinaryIO, on_bytes: Callable[[int], None]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, CHUNK):
        on_bytes(len(chunk))
        yield chunk


async def _import_remote(
    url: str, token: str | None, src: str, args: argparse.Namespace, label: str, bar: _Bar
) -> Report:
    ds = None
    f: BinaryIO | None = None
    try:
        if src == "-" or Path(src).is_file():
            f = _open_source(src)
            bar.total(os.fstat(f.fileno()).st_size if src != "-" else None)
            data: AsyncIterator[bytes] = _file_body(f, bar.bytes)
        else:
            ds = await asyncio.to_thread(
                open_directory, Path(src), args.module, args.version, Path(tempfile.gettempdir())
            )
            bar.total(ds.total)
            data = tar_stream(ds, bar.bytes)
        bar.entry(f"uploading to {redact(url)}")
        async with (
            _session(token) as s,
            s.post(f"{url}/_admin/import", params={"source": label}, data=data, headers={"Content-Type": TAR}) as r,
        ):
            if r.status != 200:
                raise _RemoteError(f"{redact(url)} answered {r.status}: {await _first_line(r)}")
            return Report.from_json(await r.json())
    except aiohttp.ClientError as e:
        raise _RemoteError(f"{redact(url)}: {e or type(e).__name__}") from None
    finally:
        if f is not None and src != "-":
            f.close()
        if ds is not None:
            ds.close()


def print_report(console: Console, report: Report, where: str, verbose: bool = False) -> None:
    """Refused entries one per row (with the reason); the rest as counts unless verbose."""
    from rich.table import Table
    from rich.text import Text

    c = report.counts()
    rows = [o for o in report.outcomes if verbose or o.status == "refused"]
    if rows:
        table = Table(title=f"modmesh import {report.source.removeprefix('import ')} → {where}", title_justify="left")
        table.add_column("Status")
        table.add_column("Entry", overflow="fold")
        table.add_column("Reason", overflow="fold")
        colors = {"admitted": "green", "present": "dim", "refused": "bold red", "skipped": "yellow"}
        for o in rows:
            table.add_row(Text(o.status, style=colors[o.status]), Text(o.label), Text(o.reason))
        console.print(table)
    for e in report.errors:
        console.print(Text(f"error: {e}", style="bold red"))
    console.print(
        Text(
            f"{c['admitted']} admitted, {c['present']} already present, {c['refused']} refused, {c['skipped']} skipped"
        )
    )
