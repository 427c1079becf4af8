"""The export and import drivers: where `modmesh export` / `import` do the work.

`--data DIR`: in this process, on a Node opened on the data directory (a node
may be running on it; export opens it offline). `--node URL`: in the running
node, through its /_admin/export and /_admin/import endpoints (admin.py); a
directory given to `import --node` is uploaded as a bundle made on the fly.

The command-line front (commands.py) passes a `Meter` for the progress bar.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import aiohttp

from node.cache.upstream import redact
from node.config import Config
from node.tools._http import admin_session, first_line
from node.tools.bundle.export import ExportPlan, ExportSummary, plan_export, write_bundle
from node.tools.bundle.format import Manifest
from node.tools.bundle.importing import Report, import_members, import_stream
from node.tools.bundle.selection import Selection
from node.tools.bundle.sources import FileSource, open_directory, tar_stream
from node.tools.bundle.tar import CHUNK, CONTENT_TYPE, ManifestSniffer, Sink, TarReader
from node.tools.target import local_node


class RemoteError(Exception):
    """The node refused, or the connection to it failed."""


class Meter(Protocol):
    """Where an import reports its progress."""

    def total(self, n: int | None) -> None: ...

    def bytes(self, n: int) -> None: ...

    def entry(self, name: str) -> None: ...


# ---- export ------------------------------------------------------------------------


async def export_local(cfg: Config, sel: Selection, sink: Sink, total: Callable[[int], None]) -> ExportSummary:
    async with local_node(dataclasses.replace(cfg, offline=True)) as node:
        plan: ExportPlan = await plan_export(node, sel)
        try:
            total(plan.tar_size())
            await write_bundle(plan, sink)
            return plan.summary
        finally:
            plan.close()


async def export_remote(
    url: str,
    token: str | None,
    body: dict[str, Any],
    sink: Sink,
    total: Callable[[int], None],
) -> Manifest | None:
    sniffer = ManifestSniffer()
    try:
        async with admin_session(token) as s, s.post(f"{url}/_admin/export", json=body) as r:
            if r.status != 200:
                raise RemoteError(f"{redact(url)} answered {r.status}: {await first_line(r, 4096)}")
            if r.content_length is not None:
                total(r.content_length)
            async for chunk in r.content.iter_chunked(CHUNK):
                sniffer.feed(chunk)
                await sink(chunk)
    except aiohttp.ClientError as e:
        raise RemoteError(f"{redact(url)}: {e or type(e).__name__} (the bundle is incomplete)") from None
    return sniffer.manifest


# ---- import ------------------------------------------------------------------------


def _open_source(src: str) -> BinaryIO:
    return sys.stdin.buffer if src == "-" else open(src, "rb")


#: What the command does with a report while its temp files are still there.
Show = Callable[[Report], None]


async def import_local(
    cfg: Config, src: str, module: str | None, version: str | None, label: str, meter: Meter, show: Show
) -> bool:
    """Import into a Node on `cfg`'s data directory; `show` the report before the node
    closes (its outcomes may be in the store's temp directory). True if it failed."""
    async with local_node(cfg) as node:
        origin = f"import {label}"
        if src == "-" or Path(src).is_file():
            f = _open_source(src)
            meter.total(os.fstat(f.fileno()).st_size if src != "-" else None)
            try:
                report = await import_stream(node, TarReader(FileSource(f, meter.bytes)), origin, meter.entry)
            finally:
                if src != "-":
                    f.close()
        else:
            ds = await asyncio.to_thread(open_directory, Path(src), module, version, node.store.tmp_dir)
            try:
                meter.total(ds.total)
                report = await import_members(node, ds.manifest, ds.members(meter.bytes), origin, meter.entry)
            finally:
                ds.close()
        try:
            show(report)
            return report.failed
        finally:
            report.close()


async def _file_body(f: BinaryIO, on_bytes: Callable[[int], None]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, CHUNK):
        on_bytes(len(chunk))
        yield chunk


async def import_remote(
    url: str, token: str | None, src: str, module: str | None, version: str | None, label: str, meter: Meter, show: Show
) -> bool:
    """Upload to a running node; its report is read as it arrives (the outcomes past
    the first few wait in a temp file), then shown. True if the import failed."""
    ds = None
    f: BinaryIO | None = None
    report: Report | None = None
    try:
        if src == "-" or Path(src).is_file():
            f = _open_source(src)
            meter.total(os.fstat(f.fileno()).st_size if src != "-" else None)
            data: AsyncIterator[bytes] = _file_body(f, meter.bytes)
        else:
            ds = await asyncio.to_thread(open_directory, Path(src), module, version, Path(tempfile.gettempdir()))
            meter.total(ds.total)
            data = tar_stream(ds, meter.bytes)
        meter.entry(f"uploading to {redact(url)}")
        async with (
            admin_session(token) as s,
            s.post(
                f"{url}/_admin/import", params={"source": label}, data=data, headers={"Content-Type": CONTENT_TYPE}
            ) as r,
        ):
            if r.status != 200:
                raise RemoteError(f"{redact(url)} answered {r.status}: {await first_line(r, 4096)}")
            parser = Report.parser()
            report = parser.report
            try:
                async for chunk in r.content.iter_chunked(CHUNK):
                    await asyncio.to_thread(parser.feed, chunk)
                parser.finish()
            except ValueError as e:
                raise RemoteError(f"{redact(url)} answered with a report that does not parse: {e}") from None
        show(report)
        return report.failed
    except aiohttp.ClientError as e:
        raise RemoteError(f"{redact(url)}: {e or type(e).__name__}") from None
    finally:
        if report is not None:
            report.close()
        if f is not None and src != "-":
            f.close()
        if ds is not None:
            ds.close()
