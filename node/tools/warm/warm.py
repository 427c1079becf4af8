"""`modmesh warm`: fetch the modules a project needs into a node ahead of time.

The point is the hour before the WAN goes away (a lab being disconnected, a site
going offline): everything a build will ask for, read from the project's own
go.sum / go.mod / go.work (inputs.py), is fetched and verified into the node,
with the checksum-database records a fresh client will ask for to verify it.

Two ways to reach a node (fetch.py), with the same results: `--node URL` over
HTTP, `--data DIR` in this process. This module is the run: each target's files
and records, `jobs` at a time, one `Result` each (never an exception).

Resumable by construction: what is cached is a hit and costs nothing upstream,
so an interrupted run is simply run again. The hashes a go.sum promises are
checked against what the node serves: a mismatch fails, as it would for go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from node.config import Config
from node.tools.target import local_node
from node.tools.warm.fetch import Fetcher, FetchError, HttpFetcher, LocalFetcher, http_session
from node.tools.warm.inputs import InputError, Target

log = logging.getLogger(__name__)

DEFAULT_JOBS = 8
Status = Literal["fetched", "cached", "failed"]


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
