"""The node side of `modmesh doctor`: checks that run inside a node.

Served as `GET /_admin/doctor?module=M` (admin token, or loopback only), or run
in the doctor's own process on a data directory: each upstream's reachability,
latency and circuit breaker (every [[route]] too, with its credentials), `direct`
fetches' tools, each checksum database's reachability and verified tree, disk and
inode headroom, cache size and hit ratio, mesh peers; and for `--module M`,
`@v/list` and `@latest` from every upstream and from the cache side by side:
empty 200s, lagging lists, latest drift, stale cache entries.

Probes bypass circuit breakers (doctor wants the real answer and must not move a
breaker itself); the judgements are pure functions of what was observed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from node.cache.direct import Direct
from node.cache.protocol import ModRequest
from node.cache.store import Refusal
from node.cache.upstream import Upstream, UpstreamChain
from node.errors import InvalidRequest, ModmeshError
from node.golang import modpath, semver
from node.golang.patterns import match_prefix_patterns
from node.sumdb.client import ForkDetected, SumDB
from node.tools.doctor.check import Check, Status

if TYPE_CHECKING:
    from node.cache.index import MetaEntry
    from node.service import Node

#: Probed for each upstream's latency when no --module is given (a 404 proves it alive too).
PROBE_MODULE = "golang.org/x/mod"
DEFAULT_TIMEOUT = 5.0
SLOW_UPSTREAM = 2.0  # seconds to first byte that makes an upstream "slow"
GIB = 1 << 30
#: Fail on absolute headroom only (a small share of a huge disk is still plenty); warn on either.
DISK_FAIL, DISK_WARN, DISK_WARN_RATIO = 1 * GIB, 5 * GIB, 0.10
INODE_FAIL_RATIO, INODE_WARN_RATIO = 0.01, 0.05


@dataclass(frozen=True)
class Probe:
    """One GET: status and the first bytes of the body, or why it failed."""

    status: int | None
    body: bytes = b""
    error: str | None = None
    seconds: float = 0.0

    @property
    def empty_200(self) -> bool:
        return self.status == 200 and not self.body

    def what(self) -> str:
        return self.error or f"HTTP {self.status}"


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    limit: int = 1 << 20,
    headers: Mapping[str, str] | None = None,
) -> Probe:
    """GET `url`, keeping at most `limit` body bytes; never raises."""
    started = time.monotonic()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as resp:
            seconds = time.monotonic() - started
            body = b""
            while len(body) < limit:
                chunk = await resp.content.read(limit - len(body))
                if not chunk:
                    break
                body += chunk
            return Probe(resp.status, body, None, seconds)
    except asyncio.TimeoutError:
        return Probe(None, error=f"no answer within {timeout:g}s", seconds=time.monotonic() - started)
    except (aiohttp.ClientError, OSError, ValueError) as e:
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return Probe(None, error=what, seconds=time.monotonic() - started)


# ---- the node itself -----------------------------------------------------------------------


def disk_checks(path: Path, free: int, total: int, ifree: int, itotal: int) -> list[Check]:
    out = []
    ratio = free / total if total else 1.0
    detail = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB ({ratio:.0%}) at {path}"
    if free < DISK_FAIL:
        out.append(Check("node", "disk", "fail", detail + ": new files pass through to clients uncached", "disk-full"))
    elif free < DISK_WARN or ratio < DISK_WARN_RATIO:
        out.append(Check("node", "disk", "warn", detail, "disk-low"))
    else:
        out.append(Check("node", "disk", "ok", detail))
    if itotal <= 0:
        out.append(Check("node", "inodes", "info", "the file system does not report inodes"))
    else:
        r = ifree / itotal
        idetail = f"{ifree} inodes free of {itotal} ({r:.0%})"
        status: Status = "fail" if r < INODE_FAIL_RATIO else "warn" if r < INODE_WARN_RATIO else "ok"
        out.append(Check("node", "inodes", status, idetail, "" if status == "ok" else "inodes-low"))
    return out


def cache_check(entries: int, size: int, from_cache: int, fetched: int) -> Check:
    asked = from_cache + fetched
    ratio = (
        f"hit ratio {from_cache / asked:.0%} ({from_cache} of {asked} answers since start)"
        if asked
        else "no requests since start"
    )
    return Check("node", "cache", "ok", f"{entries} files, {size / (1 << 20):.1f} MiB; {ratio}")


def request_counts(node: Node) -> tuple[int, int]:
    """(answered from cache, fetched) GOPROXY answers, from the node's own metrics."""
    hit = fetched = 0
    for metric in node.metrics.requests.collect():
        for s in metric.samples:
            if not s.name.endswith("_total") or s.labels.get("status") != "200":
                continue
            if s.labels.get("cache") in ("hit", "stale"):
                hit += int(s.value)
            elif s.labels.get("cache") in ("miss", "revalidated"):
                fetched += int(s.value)
    return hit, fetched


async def local_checks(node: Node) -> list[Check]:
    st = os.statvfs(node.config.data)
    out = disk_checks(node.config.data, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, st.f_favail, st.f_files)
    count, size = await node.index.totals()
    return out + [
        store_check(node.store.status.refusal),
        unverified_check(node.reverifier.pending),
        cache_check(count, size, *request_counts(node)),
    ]


def unverified_check(pending: int) -> Check:
    if not pending:
        return Check("node", "unverified", "ok", "every cached .zip/.mod the checksum database checks is confirmed")
    return Check(
        "node",
        "unverified",
        "warn",
        f"{pending} cached .zip/.mod files are not confirmed by the checksum database yet (it did not "
        "answer when they were fetched); they are served, not offered to peers or exported, and "
        "checked again in the background: make the database reachable (or set private/nosumdb "
        "for modules it does not know)",
        "sumdb-unverified",
    )


def store_check(refusal: Refusal | None) -> Check:
    if refusal is None:
        return Check("node", "store", "ok", "takes new files")
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(refusal.since))
    return Check(
        "node",
        "store",
        "fail",
        f"cannot take files ({refusal.cause}) since {since}: {refusal.files} passed through to "
        f"clients uncached, first {refusal.first}; free space (or raise max_size)",
        "store-refusing",
    )


async def mesh_check(node: Node, timeout: float) -> Check:
    if not node.url:
        return Check("node", "mesh", "info", "not checked: no node listening in this process (--data)")
    if not any(r.canonical == "/_mesh/status" for r in node.app.router.resources()):
        return Check("node", "mesh", "info", "mesh not enabled")
    async with aiohttp.ClientSession() as s:
        p = await probe(s, f"{node.url}/_mesh/status", timeout)
    if p.status != 200:
        return Check("node", "mesh", "warn", f"/_mesh/status: {p.what()}", "mesh-status")
    try:
        st = json.loads(p.body)
        peers = st.get("peers", []) if isinstance(st, dict) else []
    except ValueError:
        return Check("node", "mesh", "warn", "/_mesh/status is not JSON", "mesh-status")
    return Check("node", "mesh", "ok" if peers else "info", f"{len(peers)} peers")


# ---- upstreams and checksum databases ------------------------------------------------------


def _chains(node: Node) -> list[tuple[str | None, UpstreamChain]]:
    """The default chain and every [[route]]'s chain, with the route's pattern."""
    return [(None, node.chain), *node.proxy.routes]


def _probe_upstream(up: Upstream, path: str, timeout: float, limit: int = 64 << 10) -> Awaitable[Probe]:
    """GET through the upstream's own session and credentials, but not its breaker:
    doctor wants the real answer, and must not open or close breakers itself."""
    return probe(up.session, f"{up.base}/{path}", timeout, limit, up.headers(path) if up.headers else None)


async def upstream_checks(node: Node, modules: Sequence[str], timeout: float) -> list[Check]:
    if node.config.offline:
        return [Check("upstream", "upstreams", "info", f"offline mode: {node.config.upstream} not contacted")]

    async def one(up: Upstream, pattern: str | None) -> Check:
        module = next((m for m in modules if pattern is None or match_prefix_patterns(pattern, m)), None)
        if module is None:
            module = pattern if pattern and _is_module_path(pattern) else PROBE_MODULE
        path = ModRequest(module, "", "list").upstream_path
        p = await _probe_upstream(up, path, timeout)
        name, b = f"upstream {up.name}" + (f" (route {pattern})" if pattern else ""), up.breaker
        ms = f"{p.seconds * 1000:.0f} ms"
        if p.status in (401, 403):
            return Check(
                "upstream", name, "fail", f"{path}: {p.what()}: credentials missing or refused", "upstream-auth"
            )
        if p.error or p.status not in (200, 404, 410):
            return Check(
                "upstream", name, "fail", f"{path}: {p.what()} after {ms} (breaker {b.state})", "upstream-unreachable"
            )
        if b.state != "closed":
            return Check(
                "upstream",
                name,
                "warn",
                f"answers ({p.status} in {ms}), but its circuit breaker is {b.state} after {b.failures} failures",
                "upstream-breaker-open",
            )
        if p.seconds > SLOW_UPSTREAM:
            return Check("upstream", name, "warn", f"slow: {p.status} for {path} in {ms}", "upstream-slow")
        return Check("upstream", name, "ok", f"{p.status} for {path} in {ms}")

    probes: list[Awaitable[Check]] = []
    out: list[Check] = []
    for pattern, chain in _chains(node):
        probes += [one(u, pattern) for u in chain.upstreams]
        out += [direct_check(e, pattern) for e in chain.entries if isinstance(e, Direct)]
    if not probes and not out:
        return [
            Check(
                "upstream", "upstreams", "warn", "no upstream configured: only cached modules are served", "no-upstream"
            )
        ]
    return list(await asyncio.gather(*probes)) + out


def direct_check(d: Direct, pattern: str | None) -> Check:
    """`direct` runs the go command and git on the node; both must be there."""
    name = "direct" + (f" (route {pattern})" if pattern else "")
    missing = [tool for tool, found in (("go", d.go), ("git", shutil.which("git"))) if not found]
    if missing:
        return Check(
            "upstream",
            name,
            "fail",
            f"{' and '.join(missing)} not found on the node: direct fetches fail",
            "direct-tools-missing",
        )
    return Check("upstream", name, "info", f"fetched from version control with {d.go} (not probed)")


def _is_module_path(p: str) -> bool:
    try:
        modpath.check_path(p)
    except ValueError:
        return False
    return True


async def sumdb_checks(node: Node, timeout: float) -> list[Check]:
    if not node.sumdbs.dbs:
        return [Check("sumdb", "checksum database", "info", "none configured (sumdb off): nothing is verified")]

    async def one(db: SumDB) -> Check:
        name = f"sumdb {db.name}"
        before = db.latest.n if db.latest else None
        seen = _age(db.store.root / "latest")
        last = f"last verified tree size {before}, {seen}" if before is not None else "no tree verified yet"
        if db.fork:
            return Check("sumdb", name, "fail", db.fork, "sumdb-fork")
        if node.config.offline:
            return Check("sumdb", name, "info", f"offline mode: not contacted; {last}")
        started = time.monotonic()
        try:
            tree = await asyncio.wait_for(db.refresh_latest(), timeout)
        except ForkDetected as e:
            return Check("sumdb", name, "fail", str(e), "sumdb-fork")
        except (ModmeshError, asyncio.TimeoutError) as e:
            return Check("sumdb", name, "fail", f"unreachable: {e or 'timed out'}; {last}", "sumdb-unreachable")
        ms = (time.monotonic() - started) * 1000
        return Check("sumdb", name, "ok", f"reachable ({ms:.0f} ms), tree of size {tree.n} verified")

    return list(await asyncio.gather(*(one(d) for d in node.sumdbs.dbs)))


def _age(path: Path) -> str:
    try:
        return f"verified {time.time() - path.stat().st_mtime:.0f}s ago"
    except OSError:
        return "never saved"


# ---- consistency of one module -------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What one upstream says about a module."""

    name: str
    list: Probe
    latest: Probe
    files: Mapping[str, Probe]  # ".info" / ".mod" / ".zip" of the reference version


def list_versions(body: bytes) -> set[str]:
    out = set()
    for line in body.decode("utf-8", "replace").splitlines():
        f = line.split()
        if f and semver.is_valid(f[0]):
            out.add(f[0])
    return out


def latest_version(body: bytes) -> str | None:
    try:
        v = json.loads(body).get("Version")
    except (ValueError, AttributeError):
        return None
    return v if isinstance(v, str) and semver.is_valid(v) else None


def reference_version(views: Sequence[View]) -> str | None:
    """The version whose files are probed: the newest any upstream lists or reports."""
    vs: set[str] = set().union(*(list_versions(v.list.body) for v in views if v.list.status == 200))
    vs |= {lv for v in views if v.latest.status == 200 and (lv := latest_version(v.latest.body))}
    return max(vs, key=semver.sort_key) if vs else None


def consistency_checks(
    module: str,
    views: Sequence[View],
    cached_list: MetaEntry | None,
    cached_latest: MetaEntry | None,
    ttl: float,
    now: float,
) -> list[Check]:
    """Empty 200s, lists that lag, latest drift and stale cache entries, each named."""
    lists = {v.name: list_versions(v.list.body) for v in views if v.list.status == 200}
    union: set[str] = set().union(*lists.values())
    found: list[tuple[Status, str, str]] = []
    for v in views:
        found += _answer_problems(module, v, lists.get(v.name))
        missing = union - lists.get(v.name, set())
        if missing and v.list.status in (200, 404, 410):
            state = (
                f"answers {v.list.status}"
                if v.list.status != 200
                else "is empty"
                if not lists[v.name]
                else "lacks " + ", ".join(sorted(missing, key=semver.sort_key)[-3:])
            )
            have = ", ".join(n for n, vs in lists.items() if vs & missing)
            n = f"{len(missing)} version{'s' if len(missing) > 1 else ''}"
            found.append(("fail", "list-lags", f"upstream {v.name}'s @v/list lags: it {state} ({n} listed by {have})"))
    latests = {v.name: lv for v in views if v.latest.status == 200 and (lv := latest_version(v.latest.body))}
    if len(set(latests.values())) > 1:
        differs = ", ".join(f"{n} {lv}" for n, lv in latests.items())
        found.append(("warn", "latest-drift", f"@latest differs: {differs}"))
    found += _cache_problems(union, cached_list, cached_latest, ttl, now)
    name = f"module {module}"
    if not found:
        newest = max(union, key=semver.sort_key) if union else "none"
        where = f"{len(views)} upstreams" + (" and the cache" if cached_list is not None else "")
        return [Check("consistency", name, "ok", f"{where} agree: {len(union)} versions, newest {newest}")]
    return [Check("consistency", name, status, detail, code) for status, code, detail in found]


def _answer_problems(module: str, v: View, listed: set[str] | None) -> list[tuple[Status, str, str]]:
    out: list[tuple[Status, str, str]] = []
    if v.list.status not in (200, 404, 410):
        out.append(("fail", "list-error", f"upstream {v.name}: {module}/@v/list {v.list.what()}"))
    if v.latest.empty_200:
        out.append(("fail", "empty-200", f"upstream {v.name} answered an empty 200 for {module}/@latest"))
    elif v.latest.status not in (200, 404, 410):
        out.append(("fail", "latest-error", f"upstream {v.name}: {module}/@latest {v.latest.what()}"))
    elif v.latest.status == 200 and latest_version(v.latest.body) is None:
        out.append(("fail", "bad-latest", f"upstream {v.name}: {module}/@latest is not JSON naming a version"))
    for what, p in v.files.items():
        version = what[len("@v/") :].rsplit(".", 1)[0]
        if p.empty_200:
            out.append(("fail", "empty-200", f"upstream {v.name} answered an empty 200 for {module}/{what}"))
        elif p.status in (404, 410) and listed is not None and version in listed:
            out.append(("fail", "file-missing", f"upstream {v.name} lists {version} but answers {p.status} for {what}"))
        elif p.status not in (200, 404, 410):
            out.append(("fail", "file-error", f"upstream {v.name}: {module}/{what} {p.what()}"))
    return out


def _cache_problems(
    union: set[str], cached_list: MetaEntry | None, cached_latest: MetaEntry | None, ttl: float, now: float
) -> list[tuple[Status, str, str]]:
    out: list[tuple[Status, str, str]] = []
    for kind, entry in (("@v/list", cached_list), ("@latest", cached_latest)):
        if entry is not None and now - entry.fetched_at > ttl:
            out.append(
                (
                    "warn",
                    "cache-stale",
                    f"the node's cached {kind} is {now - entry.fetched_at:.0f}s old "
                    f"(meta_ttl {ttl:.0f}s): refreshed on the next request",
                )
            )
    lacking = union - list_versions(cached_list.body) if cached_list is not None else set()
    if cached_list is not None and lacking:
        shown = ", ".join(sorted(lacking, key=semver.sort_key)[-3:])
        out.append(
            ("warn", "cache-lags", f"the node's cached @v/list lacks {shown} (fetched from {cached_list.source})")
        )
    return out


async def module_views(node: Node, module: str, timeout: float) -> list[View]:
    """@v/list and @latest from every upstream, then the reference version's files."""
    ups = node.proxy.chain_for(module).upstreams  # a routed module is fetched only through its route
    lst, lat = ModRequest(module, "", "list").upstream_path, ModRequest(module, "", "latest").upstream_path
    metas = await asyncio.gather(
        *(asyncio.gather(_probe_upstream(u, lst, timeout, 1 << 20), _probe_upstream(u, lat, timeout)) for u in ups)
    )
    views = [View(u.name, ls, lt, {}) for u, (ls, lt) in zip(ups, metas)]
    ref = reference_version(views)
    if ref is None or modpath.canonical_version(ref) != ref:
        return views
    out = []
    for u, v in zip(ups, views):
        paths = {f"@v/{ref}.{k}": ModRequest(module, ref, k).upstream_path for k in ("info", "mod", "zip")}
        got = await asyncio.gather(*(_probe_upstream(u, p, timeout, limit=1) for p in paths.values()))
        out.append(View(v.name, v.list, v.latest, dict(zip(paths, got))))
    return out


async def consistency(node: Node, module: str, timeout: float) -> list[Check]:
    views = [] if node.config.offline else await module_views(node, module, timeout)
    cached_list = await node.index.get_meta(module, "list")
    cached_latest = await node.index.get_meta(module, "latest")
    return consistency_checks(module, views, cached_list, cached_latest, node.config.meta_ttl, time.time())


# ---- the report ----------------------------------------------------------------------------


def node_facts(node: Node) -> dict[str, Any]:
    """What client-side checks need to know about the node."""
    cfg = node.config
    return {
        "epoch": node.index.epoch,
        "url": node.url,
        "listen": cfg.listen,
        "data": str(cfg.data),
        "sumdb": [db.name for db in node.sumdbs.dbs],
        "private": node.sumdbs.private,
        "offline": cfg.offline,
        "meta_ttl": cfg.meta_ttl,
        "upstreams": [u.name for u in node.chain.upstreams],
        "clients_need_auth": node.access.clients_need_auth,
        "tls": cfg.tls_cert_file is not None,
    }


async def _guard(what: str, aw: Awaitable[list[Check]]) -> list[Check]:
    """One broken check must not hide the others."""
    try:
        return await aw
    except Exception as e:
        return [Check("node", what, "fail", f"check crashed: {type(e).__name__}: {e}", "doctor-error")]


async def node_report(node: Node, modules: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Every node-side check, run concurrently; JSON-ready."""

    async def mesh() -> list[Check]:
        return [await mesh_check(node, timeout)]

    groups = await asyncio.gather(
        _guard("local", local_checks(node)),
        _guard("mesh", mesh()),
        _guard("upstreams", upstream_checks(node, modules, timeout)),
        _guard("sumdb", sumdb_checks(node, timeout)),
        *(_guard(f"module {m}", consistency(node, m, timeout)) for m in modules),
    )
    return {"facts": node_facts(node), "checks": [c.to_json() for g in groups for c in g]}


def admin_routes(node: Node) -> list[web.RouteDef]:
    async def doctor(request: web.Request) -> web.Response:
        modules = request.query.getall("module", [])
        for m in modules:
            try:
                modpath.check_path(m)
            except ValueError as e:
                raise InvalidRequest(f"module {m!r}: {e}") from None
        try:
            timeout = min(60.0, max(0.1, float(request.query.get("timeout", DEFAULT_TIMEOUT))))
        except ValueError:
            raise InvalidRequest("timeout must be a number of seconds") from None
        report = await node_report(node, modules, timeout)
        return web.json_response(report, headers={"Cache-Control": "no-store"})

    return [web.get("/_admin/doctor", doctor)]
