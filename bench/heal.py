"""What a store that heals itself costs (node/cache/integrity.py).

The warm node (check_on_serve on, the default) against a second node on the same data
directory with check_on_serve off: the hit path as it was before blobs were checked.
Same load, same rounds, rotating order (cases._pair):

- `.info` cache hits, req/s (the fast path: bytes in memory)
- 50 MB zip hits, MB/s (sendfile from the store; one integer comparison per request)
- first serve after a start: one GET of every cached file from a node just started,
  check on (each blob hashed once) against check off: the one-time cost of a restart.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.cases import Ctx, notes, pair
from bench.load import download, run_wrk, stream_load
from bench.report import Row
from bench.servers import Server, start_node

OFF = {"MODMESH_CHECK_ON_SERVE": "0"}


def bench_heal(ctx: Ctx) -> list[Row]:
    assert ctx.node and ctx.mirror and ctx.wrk and ctx.zip_module
    data = ctx.workdir / "node-warm-data"
    off = start_node(ctx.procs, ctx.workdir, "node-nocheck", "off", ctx.server_cpus, data=data, env_extra=OFF)
    try:
        rows = _hits(ctx, off) + _zip(ctx, off)
    finally:
        ctx.procs.stop(off.proc)
    return rows + _first_serve(ctx, data)


def _hits(ctx: Ctx, off: Server) -> list[Row]:
    assert ctx.mirror and ctx.wrk and ctx.node
    wrk, paths, conns = ctx.wrk, ctx.mirror.paths("info"), ctx.settings.small_conns
    ctx.log(f"  .info hits, check_on_serve on vs off: wrk -t1 -c{conns}, {len(paths)} paths")

    def measure(server: Server, seconds: float) -> dict[str, Any]:
        r = run_wrk(wrk, server.url, paths, ctx.workdir, seconds, conns, 10)
        if r.error_count:
            raise RuntimeError(f"wrk saw errors against {server.url}: {r.errors}")
        return {
            "rps": r.rps,
            "mb_s": r.bytes_per_s / 1e6,
            "p99_ms": r.p99_ms,
            "seconds": r.seconds,
            "client_cpu": r.client_cpu,
        }

    d = pair(ctx, {"on": ctx.node, "off": off}, measure)
    return [
        Row(
            "heal",
            ".info cache hits, check_on_serve on",
            "req/s",
            d["on"]["rps"],
            d["off"]["rps"],
            "check off",
            "min_ratio",
            0.95,
            notes(d),
            {"paths": len(paths), **d},
        )
    ]


def _zip(ctx: Ctx, off: Server) -> list[Row]:
    assert ctx.zip_module and ctx.node
    m, conns = ctx.zip_module, ctx.settings.zip_conns
    ctx.log(f"  {m.size / 1e6:.0f} MB zip hits, check_on_serve on vs off: {conns} connections")

    def measure(server: Server, seconds: float) -> dict[str, Any]:
        r = stream_load(server.url, m.path("zip"), conns, seconds)
        lat = sorted(r.latencies) or [float("nan")]
        return {
            "rps": r.requests / r.seconds,
            "mb_s": r.bytes_per_s / 1e6,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
            "seconds": r.seconds,
            "client_cpu": r.client_cpu,
        }

    d = pair(ctx, {"on": ctx.node, "off": off}, measure)
    return [
        Row(
            "heal",
            f"{m.size / 1e6:.0f} MB zip hits, check_on_serve on",
            "MB/s",
            d["on"]["mb_s"],
            d["off"]["mb_s"],
            "check off",
            "min_ratio",
            0.95,
            notes(d),
            dict(d),
        )
    ]


def _first_serve(ctx: Ctx, data: Path) -> list[Row]:
    """Seconds for one GET of every cached file from a node just started (8 clients)."""
    assert ctx.mirror and ctx.zip_module
    paths = [p for ext in ("info", "mod", "zip") for p in ctx.mirror.paths(ext)]
    total = sum((ctx.mirror.tree / p.lstrip("/")).stat().st_size for p in paths)
    ctx.log(f"  first serve after a start, check_on_serve on vs off: {len(paths)} files, 8 clients")
    times: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(ctx.settings.runs):
        for side in ("on", "off") if i % 2 == 0 else ("off", "on"):
            env = OFF if side == "off" else {}
            srv = start_node(
                ctx.procs, ctx.workdir, f"first-{side}-{i}", "off", ctx.server_cpus, data=data, env_extra=env
            )
            try:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    got = list(pool.map(lambda p, u=srv.url: download(u, p, hash_body=False).status, paths))
                times[side].append(time.perf_counter() - t0)
                bad = [p for p, s in zip(paths, got) if s != 200]
                if bad:
                    raise RuntimeError(f"{len(bad)} files not served after a restart, e.g. {bad[0]}")
            finally:
                ctx.procs.stop(srv.proc)
            ctx.log(f"    {side:3s}: {times[side][-1]:.3f} s")
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return [
        Row(
            "heal",
            f"first serve of all {len(paths)} cached files after a start",
            "s",
            on,
            off,
            "check off",
            note=f"extra: {total / 1e6:.0f} MB; the one-time cost of hashing every blob before its "
            "first serve in a run",
            detail={"runs": times},
        )
    ]
