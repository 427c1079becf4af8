"""Cost that does not grow with the store (issue 18): the same node at 1k, 10k and 100k
cached versions (a distinct `.info` and `.mod` each, filled as `modmesh import` fills a
store: bench/scalestore.py).

    .venv/bin/python bench/scale.py                       # 1k, 10k, 100k
    .venv/bin/python bench/scale.py --quick               # 1k, 10k, shorter
    .venv/bin/python bench/scale.py --sizes 1000,50000    # or: run_all.py --only scale

At each size, for the real node (`python -m node.cli serve`, pinned like the others):
start-up (process start until /readyz answers), idle CPU, random-key `.info` and
`.mod` hits (wrk cycling through random keys drawn from the whole store), RSS after
that load; then, the node stopped, `modmesh export`, `gc` and `verify` on the data
directory as subprocesses (wall time, peak RSS: VmHWM via bench/peak.py); and the disk the
directory takes per cached byte. Each larger size is compared with the smallest.
"""

from __future__ import annotations

import http.client
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cases import Ctx  # noqa: E402
from bench.load import run_wrk  # noqa: E402
from bench.procs import Foreign, _child_setup  # noqa: E402
from bench.report import Row  # noqa: E402
from bench.scalestore import Filled, disk_bytes, fill, path_of  # noqa: E402
from bench.servers import NODE_ENV, Server, start_node  # noqa: E402

SIZES = (1000, 10_000, 100_000)
QUICK_SIZES = (1000, 10_000)
#: Random keys per wrk path list (drawn with replacement from the whole store).
DRAWS = 100_000
#: Goals, larger sizes against the smallest.
FLAT = 2.0  # start-up and idle CPU
IDLE_FLOOR = 0.5  # % of a core: below it, idle CPU is at the measurement's noise
HITS = 0.5  # random-key hits
TOOL_MEMORY = 1.5  # export, gc, verify peak RSS (a Python process starts near 60 MB)
DISK = 1.5  # bytes on disk per cached byte, in the blob store
#: Where the cached bytes live (the index and its journal are counted apart).
STORE_DIRS = ("blobs", "sumdb")
TOOLS = ("export", "gc", "verify")
TOOL_TIMEOUT = 1800.0


@dataclass
class Point:
    """Everything measured at one size."""

    filled: Filled
    disk: int  # the whole data directory
    blob_disk: int  # where cached bytes live: blobs/ (files and pack) and sumdb/
    startups: list[float] = field(default_factory=list)
    idle_cpu: float = 0.0  # % of a core
    idle_other: float = 0.0  # cores others used meanwhile
    first_pass: float = 0.0  # seconds for one GET of every file after the start
    hits: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss_mb: float = 0.0
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def startup(self) -> float:
        return statistics.median(self.startups)


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def bench_scale(ctx: Ctx, sizes: tuple[int, ...]) -> list[Row]:
    points = {n: _measure(ctx, n) for n in sorted(set(sizes))}
    return _rows(points)


def _measure(ctx: Ctx, n: int) -> Point:
    data = ctx.workdir / f"scale-{n}-data"
    ctx.log(f"  scale, {n:,} versions: filling the store ({2 * n:,} files through ModuleProxy.admit)")
    filled = fill(data, n)
    point = Point(filled, disk_bytes(data), sum(disk_bytes(data / d) for d in STORE_DIRS if (data / d).exists()))
    ctx.log(
        f"    {filled.cached_bytes / 1e6:.1f} MB cached in {filled.seconds:.0f} s; "
        f"blob store {point.blob_disk / 1e6:.1f} MB on disk ({point.blob_disk / filled.cached_bytes:.2f}x), "
        f"whole data dir {point.disk / 1e6:.1f} MB ({point.disk / filled.cached_bytes:.2f}x)"
    )
    try:
        _serve(ctx, n, data, point)
        for tool in TOOLS:
            point.tools[tool] = _tool(ctx, n, tool, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return point


def _serve(ctx: Ctx, n: int, data: Path, point: Point) -> None:
    runs = 1 if ctx.settings.quick else 3
    srv: Server | None = None
    try:
        for i in range(runs):
            if srv is not None:
                ctx.procs.stop(srv.proc)
            t0 = time.perf_counter()
            srv = start_node(ctx.procs, ctx.workdir, f"scale-{n}-{i}", "off", ctx.server_cpus, data=data)
            point.startups.append(time.perf_counter() - t0)
        assert srv is not None
        ctx.log(f"    start-up {', '.join(f'{s:.2f}' for s in point.startups)} s")
        point.idle_cpu, point.idle_other = _idle(ctx, srv)
        ctx.log(f"    idle CPU {point.idle_cpu:.2f} % of a core (other load {point.idle_other:.2f} cores)")
        point.first_pass = _first_pass(srv, n)
        ctx.log(
            f"    one GET of every cached file (8 clients, each blob checked at its first serve): "
            f"{point.first_pass:.1f} s"
        )
        for kind in ("info", "mod"):
            point.hits[kind] = _hits(ctx, srv, n, kind)
        point.rss_mb = srv.rss_kib() * 1024 / 1e6
        ctx.log(f"    RSS after the load {point.rss_mb:.0f} MB")
    finally:
        if srv is not None:
            ctx.procs.stop(srv.proc)


def _idle(ctx: Ctx, srv: Server) -> tuple[float, float]:
    """% of a core the node used with no requests; measured again when others were busy."""
    time.sleep(2.0)  # let the start's own work settle
    seconds = 10.0 if ctx.settings.quick else 25.0

    def measure() -> tuple[float, float]:
        c0, t0 = srv.cpu(), time.monotonic()
        with Foreign() as other:
            time.sleep(seconds)
        return (srv.cpu() - c0) / (time.monotonic() - t0) * 100, other.cores

    return ctx.gate.run(measure)


def _first_pass(srv: Server, n: int) -> float:
    """GET every cached file once (the node checks each blob before its first serve), so
    the random-key figures are hits of a node that has served its store, not first serves."""
    paths = [path_of(i, kind) for i in range(n) for kind in ("info", "mod")]
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)

    def worker(part: list[str]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for path in part:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: {resp.status} from the filled store")
        finally:
            conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, [paths[i::8] for i in range(8)]))
    return time.perf_counter() - t0


def _hits(ctx: Ctx, srv: Server, n: int, kind: str) -> dict[str, Any]:
    assert ctx.wrk
    s = ctx.settings
    rng = random.Random(n * 7 + len(kind))
    paths = [path_of(rng.randrange(n), kind) for _ in range(DRAWS)]
    conns = s.small_conns

    def once(seconds: float) -> dict[str, Any]:
        assert ctx.wrk
        r = run_wrk(ctx.wrk, srv.url, paths, ctx.workdir, seconds, conns, 10)
        if r.error_count:
            raise RuntimeError(f"wrk saw errors on random .{kind} keys at {n:,} versions: {r.errors}")
        return {"rps": r.rps, "p99_ms": r.p99_ms, "requests": r.requests, "client_cpu": r.client_cpu / r.seconds}

    def one_round() -> tuple[dict[str, Any], float]:
        cpu0 = srv.cpu()
        with Foreign() as other:
            r = once(s.seconds)
        r["server_cpu"] = (srv.cpu() - cpu0) / s.seconds
        r["other_cores"] = other.cores
        ctx.log(
            f"    .{kind:4s} random keys: {r['rps']:9,.0f} req/s  p99 {r['p99_ms']:7.2f} ms  "
            f"server CPU {r['server_cpu']:4.0%}  client CPU {r['client_cpu']:4.0%}  other load {other.cores:.2f}"
        )
        return r, other.cores

    once(s.warmup)
    rounds = [ctx.gate.run(one_round)[0] for _ in range(s.rounds)]
    return {
        "rps": statistics.median(r["rps"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "other_cores_max": max(r["other_cores"] for r in rounds),
        "client_cpu_max": max(r["client_cpu"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds),
        "rounds": rounds,
    }


def _tool(ctx: Ctx, n: int, tool: str, data: Path) -> dict[str, Any]:
    """One `modmesh <tool> --data` run, pinned like the node: wall time and peak RSS."""
    bundle = ctx.workdir / f"scale-{n}.bundle"
    args = {
        "export": ["export", "-o", str(bundle), "-q"],
        "gc": ["gc", "--json"],
        "verify": ["verify", "--json"],
    }[tool]
    peak_path = ctx.workdir / f"scale-{n}-{tool}.peak"
    argv = [
        sys.executable,
        "-m",
        "bench.peak",
        str(peak_path),
        "node.cli",
        *args,
        "--data",
        str(data),
        "--upstream",
        "off",
    ]
    if ctx.server_cpus:
        argv = ["taskset", "-c", ",".join(map(str, ctx.server_cpus)), *argv]
    out_path = ctx.workdir / f"scale-{n}-{tool}.out"
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(os.environ, **NODE_ENV),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        status = _wait(p, f"modmesh {tool}", TOOL_TIMEOUT)
        seconds = time.perf_counter() - t0
    text = out_path.read_text(errors="replace")
    if status != 0:
        raise RuntimeError(f"modmesh {tool} exited with {status} at {n:,} versions:\n{text[-2000:]}")
    result: dict[str, Any] = {"seconds": seconds, "peak_mb": int(peak_path.read_text()) * 1024 / 1e6}
    if tool == "export":
        result["bundle_mb"] = bundle.stat().st_size / 1e6
        bundle.unlink()
    elif tool == "verify" and f'"files": {2 * n}' not in text:
        raise RuntimeError(f"modmesh verify did not check all {2 * n:,} files:\n{text[-2000:]}")
    ctx.log(f"    modmesh {tool}: {seconds:.2f} s, peak RSS {result['peak_mb']:.0f} MB")
    return result


def _wait(p: subprocess.Popen[bytes], what: str, timeout: float) -> int:
    """The exit code (the child's peak RSS is in its .peak file: bench/peak.py)."""
    deadline = time.monotonic() + timeout
    while True:
        code = p.poll()
        if code is not None:
            return code
        if time.monotonic() > deadline:
            p.kill()
            p.wait(10)
            raise TimeoutError(f"{what} took longer than {timeout:.0f} s")
        time.sleep(0.02)


# --- rows ---------------------------------------------------------------------------------


def _rows(points: dict[int, Point]) -> list[Row]:
    sizes = sorted(points)
    base = sizes[0]
    b = points[base]
    ref = f"at {label(base)}"
    rows: list[Row] = []

    def series(
        what: str, unit: str, value: Any, kind: str = "", limit: float = 0.0, floor: float = 0.0, note: str = ""
    ) -> None:
        for n in sizes:
            p = points[n]
            first = n == base
            rows.append(
                Row(
                    "scale",
                    f"{label(n)} versions: {what}",
                    unit,
                    value(p),
                    None if first else max(value(b), floor),
                    "" if first else ref,
                    "" if first else kind,
                    limit,
                    note if not first and note else "",
                )
            )

    series("fill (ModuleProxy.admit, 2 files a version)", "s", lambda p: p.filled.seconds)
    series("one GET of every file after a start", "s", lambda p: p.first_pass)
    series(
        "start-up (process start to /readyz)",
        "s",
        lambda p: p.startup,
        "max_ratio",
        FLAT,
    )
    series(
        "idle CPU",
        "% core",
        lambda p: p.idle_cpu,
        "max_ratio",
        FLAT,
        IDLE_FLOOR,
        f"reference floored at {IDLE_FLOOR:g} % of a core ({label(base)}: {b.idle_cpu:.2f} %)",
    )
    for kind in ("info", "mod"):
        series(f"random-key .{kind} hits", "req/s", lambda p, k=kind: p.hits[k]["rps"], "min_ratio", HITS)
    series("RSS after the load", "MB", lambda p: p.rss_mb)
    for tool in TOOLS:
        series(f"modmesh {tool} --data", "s", lambda p, t=tool: p.tools[t]["seconds"])
        series(f"modmesh {tool} peak RSS", "MB", lambda p, t=tool: p.tools[t]["peak_mb"], "max_ratio", TOOL_MEMORY)
    for n in sizes:
        p = points[n]
        rows.append(
            Row(
                "scale",
                f"{label(n)} versions: blob store disk per cached byte",
                "x",
                p.blob_disk / p.filled.cached_bytes,
                target_kind="max",
                limit=DISK,
                note=f"{p.blob_disk / 1e6:.1f} MB on disk (st_blocks of {', '.join(STORE_DIRS)}) for "
                f"{p.filled.cached_bytes / 1e6:.1f} MB in {p.filled.files:,} files",
                detail={"disk_bytes": p.blob_disk, "cached_bytes": p.filled.cached_bytes},
            )
        )
        rows.append(
            Row(
                "scale",
                f"{label(n)} versions: whole data dir per cached byte",
                "x",
                p.disk / p.filled.cached_bytes,
                note=f"{p.disk / 1e6:.1f} MB: the blob store, index.sqlite and index.journal (a row and a "
                "journal line per file, whatever its size: large against 50-300 byte files)",
                detail={"disk_bytes": p.disk, "cached_bytes": p.filled.cached_bytes},
            )
        )
    noisy = [f"{label(n)} .{k}" for n in sizes for k, h in points[n].hits.items() if h["other_cores_max"] > 0.1] + [
        f"{label(n)} idle" for n in sizes if points[n].idle_other > 0.1
    ]
    busy = [f"{label(n)} .{k}" for n in sizes for k, h in points[n].hits.items() if h["client_cpu_max"] > 0.9]
    notes = []
    if noisy:
        notes.append(f"other load > 0.1 cores during {', '.join(noisy)}: noisy")
    if busy:
        notes.append(f"wrk used > 90% of its core during {', '.join(busy)}: may be client-bound")
    if notes:
        rows[-1].note += "; " + "; ".join(notes)
    rows[0].detail = {str(n): _detail(points[n]) for n in sizes}
    return rows


def _detail(p: Point) -> dict[str, Any]:
    return {
        "filled": vars(p.filled),
        "disk_bytes": p.disk,
        "startups": p.startups,
        "idle_cpu_percent": p.idle_cpu,
        "idle_other_cores": p.idle_other,
        "first_pass_seconds": p.first_pass,
        "hits": p.hits,
        "rss_mb": p.rss_mb,
        "tools": p.tools,
    }


def parse_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes {text!r}: want positive counts, e.g. 1000,10000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    from bench import run_all

    return run_all.main(["--only", "scale", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
