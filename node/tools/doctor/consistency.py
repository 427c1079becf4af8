"""Doctor's `--module M`: what every upstream and the cache say about one module.

`@v/list` and `@latest` from every upstream of the module's chain, then the
files of the newest version any of them knows, side by side with the node's
cached answers: empty 200s, lists that lag, latest drift and stale cache
entries, each named. The judgement (`consistency_checks`) is a pure function of
what was observed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.cache.protocol import ModRequest
from node.golang import modpath, semver
from node.tools.doctor.check import Check, Status
from node.tools.doctor.probe import Probe
from node.tools.doctor.upstreams import probe_upstream

if TYPE_CHECKING:
    from node.cache.index import MetaEntry
    from node.service import Node


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
        *(asyncio.gather(probe_upstream(u, lst, timeout, 1 << 20), probe_upstream(u, lat, timeout)) for u in ups)
    )
    views = [View(u.name, ls, lt, {}) for u, (ls, lt) in zip(ups, metas, strict=True)]
    ref = reference_version(views)
    if ref is None or modpath.canonical_version(ref) != ref:
        return views
    out = []
    for u, v in zip(ups, views, strict=True):
        paths = {f"@v/{ref}.{k}": ModRequest(module, ref, k).upstream_path for k in ("info", "mod", "zip")}
        got = await asyncio.gather(*(probe_upstream(u, p, timeout, limit=1) for p in paths.values()))
        out.append(View(v.name, v.list, v.latest, dict(zip(paths, got, strict=True))))
    return out


async def consistency(node: Node, module: str, timeout: float) -> list[Check]:
    views = [] if node.config.offline else await module_views(node, module, timeout)
    cached_list = await node.index.get_meta(module, "list")
    cached_latest = await node.index.get_meta(module, "latest")
    return consistency_checks(module, views, cached_list, cached_latest, node.config.meta_ttl, time.time())
