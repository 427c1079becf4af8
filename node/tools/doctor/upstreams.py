"""Doctor's checks of a node's sources: each upstream and each checksum database.

Each upstream (of every [[route]] too, with its credentials) is asked for one
`@v/list`: reachability, latency and its circuit breaker; `direct` fetches need
the go command and git on the node. Each checksum database's latest tree head is
fetched and verified. Probes bypass circuit breakers: doctor wants the real
answer and must not move a breaker itself.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from node.cache.direct import Direct
from node.cache.protocol import ModRequest
from node.cache.upstream import Upstream, UpstreamChain
from node.errors import ModmeshError
from node.golang import modpath
from node.golang.patterns import match_prefix_patterns
from node.sumdb.client import ForkDetected, SumDB
from node.tools.doctor.check import Check
from node.tools.doctor.probe import Probe, probe

if TYPE_CHECKING:
    from node.service import Node

#: Probed for each upstream's latency when no --module is given (a 404 proves it alive too).
PROBE_MODULE = "golang.org/x/mod"
SLOW_UPSTREAM = 2.0  # seconds to first byte that makes an upstream "slow"


def _chains(node: Node) -> list[tuple[str | None, UpstreamChain]]:
    """The default chain and every [[route]]'s chain, with the route's pattern."""
    return [(None, node.chain), *node.proxy.routes]


def probe_upstream(up: Upstream, path: str, timeout: float, limit: int = 64 << 10) -> Awaitable[Probe]:
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
        p = await probe_upstream(up, path, timeout)
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
        except (TimeoutError, ModmeshError) as e:
            return Check("sumdb", name, "fail", f"unreachable: {e or 'timed out'}; {last}", "sumdb-unreachable")
        ms = (time.monotonic() - started) * 1000
        return Check("sumdb", name, "ok", f"reachable ({ms:.0f} ms), tree of size {tree.n} verified")

    return list(await asyncio.gather(*(one(d) for d in node.sumdbs.dbs)))


def _age(path: Path) -> str:
    try:
        return f"verified {time.time() - path.stat().st_mtime:.0f}s ago"
    except OSError:
        return "never saved"
