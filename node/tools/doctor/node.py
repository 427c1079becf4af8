"""The node side of `modmesh doctor`: checks that run inside a node.

Served as `GET /_admin/doctor?module=M` (admin token, or loopback only), or run
in the doctor's own process on a data directory: disk and inode headroom, the
store, unconfirmed files, cache size and hit ratio, mesh peers (here); each
upstream and checksum database (upstreams.py); and for `--module M`, what every
upstream and the cache say about M (consistency.py). `node_report` runs them
all concurrently and returns them with the facts the client-side checks need.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.cache.status import Refusal
from node.errors import InvalidRequest
from node.golang import modpath
from node.tools.doctor.check import Check, Status
from node.tools.doctor.consistency import consistency
from node.tools.doctor.integrity import damage_check, index_check, quarantine_check, scrub_check
from node.tools.doctor.probe import DEFAULT_TIMEOUT
from node.tools.doctor.upstreams import sumdb_checks, upstream_checks

if TYPE_CHECKING:
    from node.service import Node

GIB = 1 << 30
#: Fail on absolute headroom only (a small share of a huge disk is still plenty); warn on either.
DISK_FAIL, DISK_WARN, DISK_WARN_RATIO = 1 * GIB, 5 * GIB, 0.10
INODE_FAIL_RATIO, INODE_WARN_RATIO = 0.01, 0.05


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
    totals = await node.index.totals()
    store = node.health()["store"]
    quarantine = quarantine_check(node.proxy.integrity.quarantine_dir)
    return [
        *out,
        store_check(node.store.status.refusal),
        damage_check(store["integrity"], node.config.check_on_serve),
        index_check(node.recovery, store["integrity"]["unchecked"], node.journal.size),
        scrub_check(store["scrub"]),
        *([quarantine] if quarantine else []),
        unverified_check(node.reverifier.pending),
        cache_check(totals.files, totals.bytes, *request_counts(node)),
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


def mesh_check(node: Node) -> Check:
    """The mesh as this node sees it, from the record `/_mesh/status` answers peers
    (`hooks.mesh_status`), read in-process: that endpoint takes signed requests only."""
    status_of = node.hooks.mesh_status
    if status_of is None:
        return Check("node", "mesh", "info", "mesh not enabled")
    try:
        st = status_of()
    except Exception as e:
        return Check("node", "mesh", "warn", f"mesh status failed: {type(e).__name__}", "mesh-status")
    states = Counter(m["state"] for m in st["members"])
    alive = states.get("alive", 0)
    detail = ", ".join(f"{states[s]} {s}" for s in ("alive", "suspect", "dead") if states.get(s))
    detail = f"{len(st['members'])} peers" + (f" ({detail})" if detail else "")
    if st["sync_backlog"]:
        detail += f", {st['sync_backlog']} inventory entries not synced yet"
    if not st["members"]:
        return Check("node", "mesh", "info", f"no peers yet in mesh {st['mesh']!r}")
    if not alive:
        return Check("node", "mesh", "warn", detail + ": no peer answers", "mesh-no-peers")
    return Check("node", "mesh", "ok", detail)


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
        return [mesh_check(node)]

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
