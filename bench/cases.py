"""The benchmarks. Each returns `Row`s; run_all.py sets up, prints and saves.

Names (for --only): info, list, zip, corpus, cold, rss; heal is in heal.py, scale in scale.py.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import bigzip
from bench.bigzip import BigModule
from bench.load import download, run_wrk, stream_load
from bench.mirror import Mirror
from bench.procs import NOISE_CORES, Foreign, Procs, QuietGate
from bench.report import Row
from bench.servers import Server, start_node
from tests.goenv import decode_stream

NAMES = ("info", "list", "zip", "corpus", "heal", "cold", "rss", "scale")
UPSTREAM_RATE = 800e6 / 8  # 800 Mbit/s in bytes per second


@dataclass
class Settings:
    quick: bool
    rounds: int  # measured rounds of load per server (req/s, MB/s), in rotating order
    seconds: float  # length of one round
    warmup: float  # warm-up load per server, not measured
    runs: int  # timed runs per side of `go mod download` and of the cold miss
    zip_mb: int
    rss_mb: int
    small_conns: int = 32
    zip_conns: int = 4

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick, rounds=1, seconds=3, warmup=1, runs=1, zip_mb=20, rss_mb=100)
        return cls(quick, rounds=5, seconds=3, warmup=2, runs=5, zip_mb=50, rss_mb=500)


@dataclass
class Ctx:
    settings: Settings
    workdir: Path
    cache_dir: Path
    procs: Procs
    server_cpus: list[int] | None
    wrk: str | None
    go: str | None
    log: Callable[[str], None]
    gate: QuietGate
    #: Set up by run_all.py when a bench needs them.
    node: Server | None = None
    nginx: Server | None = None
    mirror: Mirror | None = None
    big_upstream: Server | None = None
    ceiling: Server | None = None
    zip_module: BigModule | None = None
    rss_module: BigModule | None = None
    corpus_args: list[str] = field(default_factory=list)
    #: Where go's directories (module cache, build cache, home) go: tmpfs when we can.
    go_tmp: Path | None = None


# --- cache hits: requests/s and p99; zip throughput and CPU per GB ----------------------

Measure = Callable[[Server, float], dict[str, Any]]


def pair(ctx: Ctx, servers: dict[str, Server], measure: Measure) -> dict[str, dict[str, Any]]:
    """Servers (node, nginx, ...) under the same load: a warm-up each, then `rounds` rounds,
    the order rotating from round to round.

    Each round also records the server's CPU seconds (/proc, all threads and
    workers) and how much CPU other processes on the machine took meanwhile.
    The figures are medians over the rounds.
    """
    s = ctx.settings
    for server in servers.values():
        measure(server, s.warmup)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    names = list(servers)

    def one_round(name: str, server: Server) -> tuple[dict[str, Any], float]:
        cpu0 = server.cpu()
        with Foreign() as other:
            r = measure(server, s.seconds)
        r["server_cpu_s"] = cpu = server.cpu() - cpu0
        r["server_cpu_util"] = cpu / r["seconds"]
        r["client_cpu_util"] = r.pop("client_cpu") / r["seconds"]
        r["other_cores"] = other.cores
        ctx.log(
            f"    {name:7s}: {r['rps']:9,.0f} req/s {r['mb_s']:7,.0f} MB/s  p99 {r['p99_ms']:7.2f} ms  "
            f"server CPU {r['server_cpu_util']:4.0%}  client CPU {r['client_cpu_util']:4.0%}  "
            f"other load {other.cores:.2f} cores"
        )
        return r, other.cores

    for i in range(s.rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            rounds[name].append(ctx.gate.run(partial(one_round, name, servers[name]))[0])
    out: dict[str, dict[str, Any]] = {}
    for name, rs in rounds.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
        med["other_cores_max"] = max(r["other_cores"] for r in rs)
        out[name] = {**med, "rounds": rs}
    return out


def notes(d: dict[str, dict[str, Any]]) -> str:
    notes = []
    busy = [n for n in d if d[n]["client_cpu_util"] > 0.9]
    if busy:
        notes.append(f"the client used >90% of its core against {' and '.join(busy)}: may be client-bound")
    other = max(d[n]["other_cores_max"] for n in d)
    if other > NOISE_CORES:
        notes.append(f"other load (processes, steal) reached {other:.2f} cores meanwhile: figures are noisy")
    return "; ".join(notes)


def bench_hits(ctx: Ctx, kind: str) -> list[Row]:
    assert ctx.mirror and ctx.wrk
    wrk, workdir, conns = ctx.wrk, ctx.workdir, ctx.settings.small_conns
    paths = ctx.mirror.paths(kind)
    label = ".info" if kind == "info" else "@v/list"
    ctx.log(
        f"  {label} hits: wrk -t1 -c{conns}, {len(paths)} paths in rotation, "
        f"{ctx.settings.rounds} x {ctx.settings.seconds:g} s per server"
    )

    def measure(server: Server, seconds: float) -> dict[str, Any]:
        r = run_wrk(wrk, server.url, paths, workdir, seconds, conns, 10)
        if r.error_count:
            raise RuntimeError(f"wrk saw errors against {server.url}: {r.errors}")
        return {
            "rps": r.rps,
            "mb_s": r.bytes_per_s / 1e6,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "max_ms": r.max_ms,
            "requests": r.requests,
            "bytes": r.bytes,
            "seconds": r.seconds,
            "client_cpu": r.client_cpu,
        }

    assert ctx.node and ctx.nginx
    servers = {"node": ctx.node, "nginx": ctx.nginx}
    if kind == "info" and ctx.ceiling is not None:
        servers["aiohttp"] = ctx.ceiling
    d = pair(ctx, servers, measure)
    detail = {"paths": len(paths), "connections": conns, **d}
    rows = [
        Row(
            kind,
            f"{label} cache hits",
            "req/s",
            d["node"]["rps"],
            d["nginx"]["rps"],
            "nginx",
            "min_ratio" if kind == "info" else "",
            0.25,
            notes(d),
            detail,
        ),
        Row(kind, f"{label} p99 latency", "ms", d["node"]["p99_ms"], d["nginx"]["p99_ms"], "nginx"),
    ]
    if "aiohttp" in d:
        rows.append(
            Row(
                kind,
                "minimal aiohttp app, same load",
                "req/s",
                d["aiohttp"]["rps"],
                d["nginx"]["rps"],
                "nginx",
                note="extra: bench/ceiling.py, one catch-all handler returning a fixed body on "
                "the node's event loop; the most the node could reach inside aiohttp's web layer",
            )
        )
    return rows


def bench_zip(ctx: Ctx) -> list[Row]:
    assert ctx.zip_module
    m = ctx.zip_module
    conns = ctx.settings.zip_conns
    ctx.log(
        f"  {m.size / 1e6:.0f} MB zip hits: {conns} keep-alive connections downloading it in a loop, "
        f"{ctx.settings.rounds} x {ctx.settings.seconds:g} s per server"
    )

    def measure(server: Server, seconds: float) -> dict[str, Any]:
        r = stream_load(server.url, m.path("zip"), conns, seconds)
        lat = sorted(r.latencies) or [float("nan")]
        return {
            "rps": r.requests / r.seconds,
            "mb_s": r.bytes_per_s / 1e6,
            "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
            "requests": r.requests,
            "bytes": r.bytes,
            "seconds": r.seconds,
            "client_cpu": r.client_cpu,
        }

    assert ctx.node and ctx.nginx
    d = pair(ctx, {"node": ctx.node, "nginx": ctx.nginx}, measure)
    for side in d.values():
        for r in side["rounds"]:
            r["cpu_s_per_gb"] = r["server_cpu_s"] / (r["bytes"] / 1e9)
        side["cpu_s_per_gb"] = statistics.median(r["cpu_s_per_gb"] for r in side["rounds"])
    detail = {"zip_bytes": m.size, "connections": conns, **d}
    mb = m.size / 1e6
    return [
        Row(
            "zip",
            f"{mb:.0f} MB zip hits, throughput",
            "MB/s",
            d["node"]["mb_s"],
            d["nginx"]["mb_s"],
            "nginx",
            "min_ratio",
            0.80,
            notes(d),
            detail,
        ),
        Row(
            "zip",
            f"{mb:.0f} MB zip hits, server CPU",
            "CPU-s/GB",
            d["node"]["cpu_s_per_gb"],
            d["nginx"]["cpu_s_per_gb"],
            "nginx",
            "max_ratio",
            2.0,
        ),
    ]


# --- go mod download of the corpus --------------------------------------------------------


def _go_download(ctx: Ctx, url: str, tag: str) -> tuple[float, float]:
    """(seconds, other processes' cores) of one `go mod download` with a fresh module cache."""
    from tests.goenv import go_env, remove_modcache

    assert ctx.go
    tmp = (ctx.go_tmp or ctx.workdir) / f"go-{tag}"
    tmp.mkdir()
    try:
        env = go_env(tmp, url)
        with Foreign() as other:
            t0 = time.perf_counter()
            p = subprocess.run(
                [ctx.go, "mod", "download", "-json", *ctx.corpus_args],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
            seconds = time.perf_counter() - t0
        objs = decode_stream(p.stdout)
        errors = [o for o in objs if "Error" in o]
        if p.returncode != 0 or errors or len(objs) != len(ctx.corpus_args):
            first = errors[0] if errors else p.stderr[-1500:]
            raise RuntimeError(
                f"go mod download via {tag} failed ({p.returncode}, {len(errors)} errors, "
                f"{len(objs)}/{len(ctx.corpus_args)} modules): {first}"
            )
        return seconds, other.cores
    finally:
        remove_modcache(tmp)


def bench_corpus(ctx: Ctx) -> list[Row]:
    assert ctx.node and ctx.nginx
    n = ctx.settings.runs
    ctx.log(
        f"  go mod download of {len(ctx.corpus_args)} versions, fresh GOMODCACHE in {ctx.go_tmp or ctx.workdir}, "
        f"1 warm-up + {n} timed runs each"
    )
    servers = {"node": ctx.node, "nginx": ctx.nginx}
    times: dict[str, list[float]] = {"node": [], "nginx": []}
    other_max = 0.0
    for name, server in servers.items():
        _go_download(ctx, server.url, f"{name}-warmup")

    def one_run(name: str, i: int) -> tuple[float, float]:
        seconds, other = _go_download(ctx, servers[name].url, f"{name}-{i}")
        ctx.log(f"    run {i + 1} {name:5s}: {seconds:.2f} s  (other load {other:.2f} cores)")
        return seconds, other

    for i in range(n):
        for name in ("node", "nginx") if i % 2 == 0 else ("nginx", "node"):
            seconds, other = ctx.gate.run(partial(one_run, name, i))
            times[name].append(seconds)
            other_max = max(other_max, other)
    med = {k: statistics.median(v) for k, v in times.items()}
    notes = [_noisy(other_max)]
    if ctx.go_tmp is not None:
        notes.append(
            "go's directories on tmpfs: on disk, extracting the zips (about 1 s here) would drown "
            "the difference between the servers"
        )
    return [
        Row(
            "corpus",
            f"go mod download, warm corpus ({len(ctx.corpus_args)} versions)",
            "s",
            med["node"],
            med["nginx"],
            "nginx",
            "max_ratio",
            1.5,
            "; ".join(n for n in notes if n),
            detail={
                "runs": times,
                "versions": len(ctx.corpus_args),
                "other_cores_max": other_max,
                "go_dir": str(ctx.go_tmp or ctx.workdir),
            },
        )
    ]


def _noisy(other_cores: float) -> str:
    if other_cores > NOISE_CORES:
        return f"other load (processes, steal) reached {other_cores:.2f} cores meanwhile: figures are noisy"
    return ""


# --- cold miss through the node vs. straight from the upstream ------------------------


def _fresh_node_download(ctx: Ctx, tag: str, module: BigModule, upstream: Server) -> dict[str, Any]:
    """Start a node with an empty data dir, download `module`'s zip through it, stop it."""
    node = start_node(ctx.procs, ctx.workdir, tag, upstream.url, ctx.server_cpus)
    try:
        idle_kib = node.peak_rss_kib()
        cpu0 = node.cpu()
        with Foreign() as other:
            r = download(node.url, module.path("zip"), timeout=600)
        cpu = node.cpu() - cpu0
        peak_kib = node.peak_rss_kib()
        node.proc.check_alive()
    finally:
        ctx.procs.stop(node.proc)
        shutil.rmtree(ctx.workdir / f"{tag}-data", ignore_errors=True)
    if r.status != 200 or r.size != module.size or r.sha256 != module.sha256:
        raise RuntimeError(
            f"cold download via node: status {r.status}, {r.size} of {module.size} bytes, "
            f"sha256 {'ok' if r.sha256 == module.sha256 else 'WRONG'}"
        )
    if r.headers.get("x-modmesh-cache") != "miss":
        raise RuntimeError(f"expected a cache miss, got X-Modmesh-Cache: {r.headers.get('x-modmesh-cache')}")
    return {
        "seconds": r.seconds,
        "ttfb": r.ttfb,
        "cpu_s": cpu,
        "idle_rss_kib": idle_kib,
        "peak_rss_kib": peak_kib,
        "other_cores": other.cores,
    }


def _direct_download(module: BigModule, upstream: Server) -> dict[str, Any]:
    with Foreign() as other:
        r = download(upstream.url, module.path("zip"), timeout=600)
    if r.status != 200 or r.sha256 != module.sha256:
        raise RuntimeError(f"direct download from the upstream: status {r.status}, {r.size} bytes")
    return {"seconds": r.seconds, "ttfb": r.ttfb, "other_cores": other.cores}


def bench_cold(ctx: Ctx) -> list[Row]:
    assert ctx.zip_module and ctx.big_upstream
    m, up = ctx.zip_module, ctx.big_upstream
    n = ctx.settings.runs
    ctx.log(
        f"  cold miss, {m.size / 1e6:.0f} MB zip, upstream limited to 800 Mbit/s, {n} runs each "
        f"(fresh node and data dir per run)"
    )
    _direct_download(m, up)  # page cache and connection set-up, not measured
    runs: dict[str, list[dict[str, Any]]] = {"node": [], "direct": []}

    def one_run(side: str, i: int) -> tuple[dict[str, Any], float]:
        res = _direct_download(m, up) if side == "direct" else _fresh_node_download(ctx, f"cold{i}", m, up)
        ctx.log(
            f"    run {i + 1} {side:6s}: {res['seconds']:.3f} s, first byte after "
            f"{res['ttfb'] * 1000:.0f} ms  (other load {res['other_cores']:.2f} cores)"
        )
        return res, res["other_cores"]

    for i in range(n):
        for side in ("direct", "node") if i % 2 == 0 else ("node", "direct"):
            runs[side].append(ctx.gate.run(partial(one_run, side, i))[0])
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    ttfb = {k: statistics.median(r["ttfb"] for r in v) for k, v in runs.items()}
    mb = m.size / 1e6
    return [
        Row(
            "cold",
            f"{mb:.0f} MB zip cold miss, time",
            "s",
            med["node"],
            med["direct"],
            "direct",
            "max_overhead",
            0.10,
            _noisy(max(r["other_cores"] for v in runs.values() for r in v)),
            detail={"runs": runs, "rate_bytes_per_s": UPSTREAM_RATE},
        ),
        Row(
            "cold",
            f"{mb:.0f} MB zip cold miss, first byte",
            "ms",
            ttfb["node"] * 1000,
            ttfb["direct"] * 1000,
            "direct",
            note="the node sends headers once stream_threshold (4 MiB) has arrived",
        ),
    ]


# --- peak RSS while streaming a big zip cold ------------------------------------------


def bench_rss(ctx: Ctx, unlimited: Server | None) -> list[Row]:
    assert ctx.rss_module and ctx.big_upstream
    m = ctx.rss_module
    mb = m.size / 1e6
    ctx.log(f"  peak RSS, {mb:.0f} MB zip cold through a fresh node (upstream 800 Mbit/s)")
    r = _fresh_node_download(ctx, "rss", m, ctx.big_upstream)
    ctx.log(
        f"    {r['seconds']:.2f} s, VmHWM {r['peak_rss_kib'] / 1024:.1f} MiB (idle {r['idle_rss_kib'] / 1024:.1f} MiB)"
    )
    rows = [
        Row(
            "rss",
            f"{mb:.0f} MB zip cold, node peak RSS",
            "MB",
            r["peak_rss_kib"] * 1024 / 1e6,
            target_kind="max",
            limit=150,
            note=f"VmHWM; {r['idle_rss_kib'] * 1024 / 1e6:.0f} MB right after start-up, "
            f"download took {r['seconds']:.1f} s",
            detail=r,
        )
    ]
    if unlimited is not None:
        ctx.log("  peak RSS again with an unlimited upstream")
        u = _fresh_node_download(ctx, "rss-unlimited", m, unlimited)
        ctx.log(f"    {u['seconds']:.2f} s, VmHWM {u['peak_rss_kib'] / 1024:.1f} MiB")
        rows.append(
            Row(
                "rss",
                f"{mb:.0f} MB zip cold, peak RSS, unlimited upstream",
                "MB",
                u["peak_rss_kib"] * 1024 / 1e6,
                note=f"extra: no bandwidth limit; {m.size / 1e6 / u['seconds']:.0f} MB/s end to end",
                detail=u,
            )
        )
    return rows


def corpus_versions(workdir: Path) -> list[tuple[str, str]]:
    from tests.corpus import load_corpus, servable

    return [(cv.path, cv.version) for cv in servable(load_corpus(), workdir)]


def big_module(ctx: Ctx, megabytes: int) -> BigModule:
    return bigzip.ensure(ctx.cache_dir, megabytes)
