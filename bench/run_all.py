"""modmesh benchmarks: the node against nginx serving the same files, on loopback.

    make bench                       # or: .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py --quick           # smaller and shorter: a smoke run
    .venv/bin/python bench/run_all.py --only info,zip   # some of: info list zip corpus heal cold rss scale

Prints the machine, how processes were pinned, and one line per figure with its
target and PASS/MISS; writes the same to bench/out/results.json. Installs nginx
and wrk with apt-get when they are missing. Everything listens on 127.0.0.1 and
is stopped at the end, on errors and on Ctrl-C. See bench/README.md for what
each figure measures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import cases, heal, scale  # noqa: E402
from bench.cases import NAMES, Ctx, Settings  # noqa: E402
from bench.mirror import verify_static, warm_and_mirror  # noqa: E402
from bench.procs import NOISE_CORES, Procs, QuietGate, ensure_packages, find_tool, isolate_network  # noqa: E402
from bench.report import Row, code_version, machine, table, write_json  # noqa: E402
from bench.servers import (  # noqa: E402
    NODE_ENV,
    start_big_upstream,
    start_ceiling,
    start_corpus_upstream,
    start_nginx,
    start_node,
)

OUT = ROOT / "bench" / "out"
WARM = {"info", "list", "zip", "corpus", "heal"}
#: Run only when named with --only: it alone takes longer than the rest together.
OPT_IN = {"scale"}


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark a modmesh node against nginx on loopback.")
    p.add_argument("--quick", action="store_true", help="smaller zips, shorter runs, one run per median")
    p.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        action="append",
        help=f"run only these benches: {', '.join(NAMES)} (repeatable; without it, all but "
        f"{', '.join(sorted(OPT_IN))})",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, trees)")
    p.add_argument(
        "--sizes",
        metavar="N[,N]",
        help="scale: cached versions per store (default "
        f"{','.join(map(str, scale.SIZES))}; --quick {','.join(map(str, scale.QUICK_SIZES))})",
    )
    args = p.parse_args(argv)
    try:
        args.sizes = scale.parse_sizes(args.sizes) if args.sizes else None
    except ValueError as e:
        p.error(str(e))
    only = {n.strip() for item in args.only or [] for n in item.split(",") if n.strip()}
    unknown = only - set(NAMES)
    if unknown:
        p.error(f"unknown bench {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    args.selected = [n for n in NAMES if n in only or (not only and n not in OPT_IN)]
    return args


def cpu_plan() -> tuple[list[int] | None, list[int], str]:
    """(server CPUs, client CPUs, description). One core for the server under test."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or find_tool("taskset") is None:
        return (
            None,
            cpus,
            f"not pinned ({len(cpus)} CPU{'s' if len(cpus) > 1 else ''} available"
            + ("" if find_tool("taskset") else ", no taskset")
            + ")",
        )
    server, client = cpus[:1], cpus[1:]
    return (
        server,
        client,
        (
            f"server under test (node, or nginx master + 1 worker) on CPU {server[0]}; "
            f"clients (wrk, go, downloads), upstreams and this script on CPU "
            f"{','.join(map(str, client))}"
        ),
    )


def go_binary() -> str | None:
    beside = Path(sys.executable).parent / "go"
    if beside.exists():
        return str(beside)
    from tests.goenv import go_binary as tests_go

    return tests_go()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any], bool]:
    sel = set(args.selected)
    settings = Settings.make(args.quick)
    server_cpus, client_cpus, pinning = cpu_plan()
    os.sched_setaffinity(0, client_cpus)  # this script and everything it starts, unless pinned elsewhere
    tools = {}
    if sel & WARM:
        tools["nginx"] = "nginx"
    if sel & {"info", "list", "zip", "scale"}:
        tools["wrk"] = "wrk"
    ensure_packages(tools)  # the only step that needs the network
    network = isolate_network()
    nginx, wrk, go = find_tool("nginx"), find_tool("wrk"), go_binary()
    if "corpus" in sel and go is None:
        raise RuntimeError("no go command: install the test extras (make test) first")

    info: dict[str, Any] = {
        "machine": machine(nginx, wrk, go),
        "code": code_version(ROOT),
        "settings": {
            "quick": settings.quick,
            "benches": args.selected,
            "pinning": pinning,
            "network": network,
            "nginx": "worker_processes 1 (the node is one process), sendfile on, access_log off, "
            "keepalive_requests 1000000",
            "node": f"python -m node.cli serve --log-level warning, env {NODE_ENV}",
            "rounds": settings.rounds,
            "round_seconds": settings.seconds,
            "warmup_seconds": settings.warmup,
            "small_connections": settings.small_conns,
            "zip_connections": settings.zip_conns,
            "runs_per_median": settings.runs,
            "upstream_rate_bits_per_s": 800e6,
            "units": "MB = 10^6 bytes, GB = 10^9 bytes",
        },
    }
    load = Path("/proc/loadavg").read_text().split()[:3]
    info["settings"]["load_at_start"] = f"load average {' '.join(load)} when the bench started" + (
        " (the machine was not idle: figures may be noisy)" if float(load[0]) > 0.5 else ""
    )
    log(f"modmesh bench{' (quick)' if settings.quick else ''}: {', '.join(args.selected)}")
    log(f"  {info['settings']['load_at_start']}")
    log(f"  pinning: {pinning}")
    log(f"  network: {network}")

    workdir = Path(tempfile.mkdtemp(prefix="modmesh-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers (user nobody) read the tree below it
    shm = Path("/dev/shm")
    go_tmp = (
        Path(tempfile.mkdtemp(prefix="modmesh-bench-go-", dir=shm))
        if ("corpus" in sel and shm.is_dir() and os.access(shm, os.W_OK))
        else None
    )
    procs = Procs()
    rows: list[Row] = []
    ok = True
    gate = QuietGate(log, threshold=NOISE_CORES, budget=30.0 if settings.quick else 150.0)
    ctx = Ctx(settings, workdir, OUT / "zips", procs, server_cpus, wrk, go, log, gate, go_tmp=go_tmp)

    def attempt(name: str, fn: Any, *fargs: Any) -> None:
        nonlocal ok
        t0 = time.monotonic()
        try:
            rows.extend(fn(*fargs))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            ok = False
            traceback.print_exc()
            rows.append(Row(name, name, "", None, error=f"{type(e).__name__}: {str(e)[:300]}"))
        log(f"  ({name}: {time.monotonic() - t0:.0f} s)")

    try:
        if sel & {"zip", "cold", "heal"}:
            ctx.zip_module = cases.big_module(ctx, settings.zip_mb)
        if "rss" in sel:
            ctx.rss_module = cases.big_module(ctx, settings.rss_mb)
        bigs = [m for m in (ctx.zip_module, ctx.rss_module) if m is not None]
        if bigs:
            ctx.big_upstream = start_big_upstream(procs, workdir, "big-upstream", bigs, cases.UPSTREAM_RATE)

        if sel & WARM:
            t0 = time.monotonic()
            log("  setting up: corpus upstream, warm node, static tree, nginx")
            corpus_up = start_corpus_upstream(procs, workdir)
            chain = corpus_up.url if ctx.big_upstream is None else f"{ctx.big_upstream.url},{corpus_up.url}"
            ctx.node = start_node(procs, workdir, "node-warm", chain, server_cpus)
            versions = cases.corpus_versions(workdir)
            if ctx.zip_module is not None:
                versions.append((ctx.zip_module.module, ctx.zip_module.version))
            ctx.mirror = warm_and_mirror(ctx.node.url, versions, workdir / "tree")
            big_names = {m.module for m in bigs}
            # Every corpus version, refused or not: a version the node refuses fails the
            # corpus run (and shows in the report) instead of being left out of it.
            ctx.corpus_args = [f"{m}@{v}" for m, v in versions if m not in big_names]
            assert nginx is not None
            ctx.nginx = start_nginx(procs, nginx, workdir, "nginx", workdir / "tree", 1, server_cpus)
            verify_static(ctx.nginx.url, ctx.mirror)
            if "info" in sel:
                ctx.ceiling = start_ceiling(procs, workdir, server_cpus)
            info["settings"]["corpus"] = {
                "versions": len(ctx.corpus_args),
                "modules": len(ctx.mirror.modules),
                "refused_by_node": ctx.mirror.refused,
            }
            log(
                f"    {len(ctx.mirror.versions)} versions of {len(ctx.mirror.modules)} modules cached and "
                f"mirrored; {len(ctx.mirror.refused)} refused by the node (the corpus run keeps them: "
                f"they fail it) "
                f"({time.monotonic() - t0:.0f} s)"
            )
            for name in ("info", "list"):
                if name in sel:
                    attempt(name, cases.bench_hits, ctx, name)
            if "zip" in sel:
                attempt("zip", cases.bench_zip, ctx)
            if "heal" in sel:
                attempt("heal", heal.bench_heal, ctx)
            if "corpus" in sel:
                attempt("corpus", cases.bench_corpus, ctx)
            for srv in (ctx.ceiling, ctx.nginx, ctx.node, corpus_up):
                if srv is not None:
                    procs.stop(srv.proc)

        if "cold" in sel:
            attempt("cold", cases.bench_cold, ctx)
        if "rss" in sel:
            unlimited = None
            if not settings.quick:
                unlimited = start_big_upstream(procs, workdir, "big-upstream-unlimited", bigs, 0)
            attempt("rss", cases.bench_rss, ctx, unlimited)
        if "scale" in sel:
            sizes = args.sizes or (scale.QUICK_SIZES if settings.quick else scale.SIZES)
            info["settings"]["scale_sizes"] = list(sizes)
            attempt("scale", scale.bench_scale, ctx, sizes)
    finally:
        procs.stop_all()
        info["settings"]["remeasured_for_noise"] = gate.retried
        if go_tmp is not None:
            shutil.rmtree(go_tmp, ignore_errors=True)
        if args.keep:
            log(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows, info, ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    started = time.time()
    try:
        rows, info, ok = run(args)
    except KeyboardInterrupt:
        log("\ninterrupted; everything started has been stopped")
        return 130
    m = info["machine"]
    s = info["settings"]
    log("")
    log(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['kernel']} ({m['os']})")
    log(
        f"         Python {m['python']}, aiohttp {m['aiohttp']}, {m['event_loop']}; {m['nginx']}; {m['wrk']}; {m['go']}"
    )
    log(f"code:    {info['code']}")
    log(f"pinning: {s['pinning']}")
    log(f"network: {s['network']}")
    log(f"nginx:   {s['nginx']}")
    log(
        f"method:  medians: load {s['rounds']} rounds x {s['round_seconds']:g} s per server in rotating order after "
        f"a {s['warmup_seconds']:g} s warm-up; go mod download and cold miss {s['runs_per_median']} alternating runs "
        f"per side; {s['units']}"
    )
    log(
        f"load:    {s['load_at_start']}; {s.get('remeasured_for_noise', 0)} measurements repeated because other "
        f"processes or CPU steal took > {NOISE_CORES:g} cores"
    )
    log("")
    log(table(rows))
    payload = {
        **info,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "results": [r.as_json() for r in rows],
    }
    write_json(OUT / "results.json", payload)
    log(f"\nwritten to {OUT / 'results.json'} ({payload['wall_seconds']:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
