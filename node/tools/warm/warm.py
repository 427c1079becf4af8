"""`modmesh warm`: fetch the modules a project needs into a node ahead of time.

The point is the hour before the WAN goes away (a lab being disconnected, a site
going offline): everything a build will ask for, read from the project's own
go.sum / go.mod / go.work (node.goinputs), is fetched and verified into the node,
with the checksum-database records a fresh client will ask for to verify it.

Two ways to reach a node (node.cmdtarget), with the same results:

* `--node URL`: plain GOPROXY GETs; the node's `X-Modmesh-Cache` header tells a
  fetch ("miss") from a file already cached ("hit").
* `--data DIR`: a Node built in this process on the data directory, no listener,
  safe beside a node running on the same directory.

Resumable by construction: what is cached is a hit and costs nothing upstream,
so an interrupted run is simply run again. The hashes a go.sum promises are
checked against what the node serves: a mismatch fails, as it would for go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp

from node.cache.protocol import Kind, ModRequest
from node.cache.upstream import redact
from node.config import Config
from node.errors import ModmeshError, NotFound
from node.golang import modpath
from node.tools.target import (
    UsageError,
    add_node_arguments,
    local_config,
    local_node,
    node_url,
    read_secret,
    setup_cli_logging,
)
from node.tools.warm.inputs import InputError, Target, UnreadableInput, load_inputs

if TYPE_CHECKING:
    from rich.console import Console

    from node.service import Node

log = logging.getLogger(__name__)

DEFAULT_JOBS = 8
CACHE_HEADER = "X-Modmesh-Cache"
H1_HEADER = "X-Modmesh-H1"
CHUNK = 256 * 1024
RETRIES_429 = 6  # tries per request while the node answers 429 (its per-client rate limit)
Status = Literal["fetched", "cached", "failed"]


# ---- reaching a node -----------------------------------------------------------------------


class FetchError(Exception):
    """One file or record could not be warmed; the message is the reason shown."""


@dataclass(frozen=True)
class FileAnswer:
    cache: str  # "hit" or "miss"
    size: int
    h1: str | None


class Fetcher(Protocol):
    """A node to warm: over HTTP, or in this process."""

    databases: list[str]

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer: ...

    async def record(self, db: str, module: str, version: str) -> str: ...  # hit, miss, private


class HttpFetcher:
    """A running node, spoken to like any GOPROXY client would (credentials from a
    client token, or user:password in the URL; 429s are waited out)."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, databases: list[str], token: str | None = None
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.databases = databases
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, base: str, token: str | None = None) -> HttpFetcher:
        """Check the node answers and learn which checksum databases it proxies."""
        base = base.rstrip("/")
        try:
            async with session.get(f"{base}/healthz") as resp:
                if resp.status != 200:
                    raise UsageError(f"{redact(base)} is not a modmesh node (/healthz answered {resp.status})")
                health = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise UsageError(f"cannot reach node {redact(base)}: {_describe(e)}") from None
        dbs = [str(d["name"]) for d in health.get("sumdb", []) if isinstance(d, dict) and "name" in d]
        return cls(session, base, dbs, token)

    @asynccontextmanager
    async def _get(self, url: str, method: str = "GET") -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; a 429 (the node's per-client rate limit) is retried after Retry-After."""
        for attempt in range(RETRIES_429):
            resp = await self.session.request(method, url, headers=self.headers)
            if resp.status == 429 and attempt < RETRIES_429 - 1:
                wait = _retry_after(resp.headers.get("Retry-After"), attempt)
                resp.release()
                await asyncio.sleep(wait)
                continue
            try:
                yield resp
            finally:
                resp.release()
            return

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer:
        url = f"{self.base}/{ModRequest(module, version, kind).upstream_path}"
        size = 0
        try:
            async with self._get(url) as resp:
                if resp.status != 200:
                    raise FetchError(f".{kind}: {resp.status} {await _first_line(resp)}".rstrip())
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                cache, h1 = resp.headers.get(CACHE_HEADER, "miss"), resp.headers.get(H1_HEADER)
            if h1 is None and kind != "info":
                # A zip streamed while downloading carries no h1 header; it is cached now.
                async with self._get(url, "HEAD") as resp:
                    h1 = resp.headers.get(H1_HEADER)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise FetchError(f".{kind}: {_describe(e)}") from None
        return FileAnswer("hit" if cache == "hit" else "miss", size, h1)

    async def record(self, db: str, module: str, version: str) -> str:
        url = f"{self.base}/sumdb/{db}/lookup/{modpath.escape_path(module)}@{modpath.escape_version(version)}"
        try:
            async with self._get(url) as resp:
                if resp.status == 404:
                    text = await _first_line(resp)
                    if "private patterns" in text:  # app.sumdb_response refuses private modules
                        return "private"
                    raise FetchError(f"checksum database {db}: {text or 'no record'}")
                if resp.status != 200:
                    raise FetchError(f"checksum database {db}: {resp.status} {await _first_line(resp)}".rstrip())
                await resp.read()
                return "hit" if resp.headers.get(CACHE_HEADER) == "hit" else "miss"
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise FetchError(f"checksum database {db}: {_describe(e)}") from None


class LocalFetcher:
    """A Node in this process, on a data directory (no listener)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.databases = [db.name for db in node.sumdbs.dbs]

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer:
        proxy = self.node.proxy
        req = ModRequest(module, version, kind)
        try:
            hit = await proxy.lookup(req)
            if hit is not None:
                return FileAnswer("hit", hit.entry.size, hit.entry.h1)
            entry, stored = await proxy.fetch(req)
        except ModmeshError as e:
            raise FetchError(f".{kind}: {e}") from None
        if not stored:
            refusal = self.node.store.status.refusal
            raise FetchError(f".{kind}: fetched but not cached: {refusal.cause if refusal else 'the store refused it'}")
        return FileAnswer("miss", entry.size, entry.h1)

    async def record(self, db: str, module: str, version: str) -> str:
        if self.node.sumdbs.is_private(module):
            return "private"
        sumdb = next(d for d in self.node.sumdbs.dbs if d.name == db)
        try:
            _, cache = await sumdb.lookup(module, version)
        except NotFound as e:
            raise FetchError(f"checksum database {db}: no record: {e}") from None
        except ModmeshError as e:
            raise FetchError(f"checksum database {db}: {e}") from None
        return cache


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        return min(30.0, max(0.1, float(value or "")))
    except ValueError:
        return min(30.0, 0.5 * 2.0**attempt)


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def _first_line(resp: aiohttp.ClientResponse) -> str:
    body = await resp.content.read(512)
    return body.decode("utf-8", "replace").strip().split("\n", 1)[0][:200]


# ---- warming -------------------------------------------------------------------------------


@dataclass
class Result:
    module: str
    version: str
    origin: str
    status: Status = "cached"
    files: dict[str, str] = field(default_factory=dict)  # kind -> hit | miss
    sumdb: dict[str, str] = field(default_factory=dict)  # db -> hit | miss | private
    bytes: int = 0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "version": self.version,
            "status": self.status,
            "origin": self.origin,
            "files": self.files,
            "sumdb": self.sumdb,
            "bytes": self.bytes,
            "reason": self.reason,
        }


def input_failures(errors: Iterable[InputError]) -> list[Result]:
    """Unusable input lines are reported like failed modules (and fail the run)."""
    out = []
    for e in errors:
        module, _, version = e.text.partition("@")
        out.append(Result(module, version, e.origin, "failed", reason=e.message))
    return out


async def warm_one(fetcher: Fetcher, t: Target) -> Result:
    """Fetch one module version's files and records; never raises."""
    r = Result(t.module, t.version, t.origin)
    problems: list[str] = []
    try:
        for kind in t.kinds:
            try:
                ans = await fetcher.file(t.module, t.version, kind)
            except FetchError as e:
                problems.append(str(e))
                if kind == "info":
                    break  # unknown version: .mod and .zip would say the same
                continue
            r.files[kind] = ans.cache
            r.bytes += ans.size if ans.cache == "miss" else 0
            want = t.zip_h1 if kind == "zip" else t.mod_h1 if kind == "mod" else None
            if want and ans.h1 and want != ans.h1:
                what = f"{t.module}@{t.version}" + ("/go.mod" if kind == "mod" else "")
                problems.append(f"{t.origin} has {want} for {what}, the node serves {ans.h1}")
        if not problems:
            for db in fetcher.databases:
                try:
                    r.sumdb[db] = await fetcher.record(db, t.module, t.version)
                except FetchError as e:
                    problems.append(str(e))
    except Exception as e:  # a bug must not lose the other results
        log.exception("warming %s@%s failed", t.module, t.version)
        problems.append(f"internal error: {type(e).__name__}: {e}")
    if problems:
        r.status, r.reason = "failed", "; ".join(problems)
    elif "miss" in r.files.values() or "miss" in r.sumdb.values():
        r.status = "fetched"
    return r


async def warm(
    fetcher: Fetcher,
    targets: Sequence[Target],
    jobs: int = DEFAULT_JOBS,
    on_done: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Warm every target, at most `jobs` at a time; results in input order."""
    sem = asyncio.Semaphore(max(1, jobs))

    async def one(t: Target) -> Result:
        async with sem:
            r = await warm_one(fetcher, t)
        if on_done is not None:
            on_done(r)
        return r

    return list(await asyncio.gather(*(one(t) for t in targets)))


def http_session(read_timeout: float = 300.0) -> aiohttp.ClientSession:
    """A client for a node: its answers can take as long as its upstreams do."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
    return aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "modmesh-warm"})


async def warm_node(
    url: str,
    targets: Sequence[Target],
    jobs: int = DEFAULT_JOBS,
    on_done: Callable[[Result], None] | None = None,
    token: str | None = None,
) -> list[Result]:
    async with http_session() as session:
        fetcher = await HttpFetcher.connect(session, url, token)
        return await warm(fetcher, targets, jobs, on_done)


async def warm_data(
    config: Config, targets: Sequence[Target], jobs: int = DEFAULT_JOBS, on_done: Callable[[Result], None] | None = None
) -> list[Result]:
    async with local_node(config) as node:
        return await warm(LocalFetcher(node), targets, jobs, on_done)


# ---- the command ---------------------------------------------------------------------------


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
