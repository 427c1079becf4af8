"""Memory and event-loop figures for hostile input (issue 18), printed as a table and
written to bench/out/memory.json:

- RSS growth of a real node over 50,000 distinct missing modules (default settings);
- peak RSS of `modmesh import -` fed a 600 MiB stream of stacked PAX headers, and a
  bundle with a 100 MiB manifest, against a small bundle's import;
- the slowest `/healthz` answer of a running node while it imports a manifest of
  31 MiB and one of 100 MiB (~100,000 and ~320,000 entries, all parsed);
- a whole store of 55,000 versions (`.info` and `.mod`: 110,000 entries, a manifest
  over the 32 MiB an import used to read) exported, then imported into an empty data
  directory: time and peak RSS of each command.

    .venv/bin/python -m bench.memory [--only misses,imports,healthz,roundtrip] [--versions N]

The same code as tests/test_memory.py and tests/test_bundle_limits.py, which assert
the bounds; loopback only, every process stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.cache.protocol import ModRequest
from node.config import Config
from node.service import Node
from node.tools.bundle.tar import once
from tests.bundle_floods import big_manifest, pax_flood, small_bundle
from tests.node_process import free_port, serve_process
from tests.test_bundle_limits import PEAK_RSS, _cli_import, _cli_upload, _probe, _write
from tests.test_memory import MISSES, _miss_all, _rss
from tests.upstream_fixture import FakeProxy

MiB = 1 << 20
OUT = Path(__file__).parent / "out" / "memory.json"


async def misses(tmp: Path) -> dict[str, Any]:
    up = FakeProxy({})
    await up.start()
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        async with serve_process(tmp / "misses", up.url, port) as proc:
            await _miss_all(base, "warm", 2_000)
            before = _rss(proc.pid)
            t0 = time.monotonic()
            await _miss_all(base, "missing", MISSES)
            took = time.monotonic() - t0
            return {"misses": MISSES, "rss_growth_mb": (_rss(proc.pid) - before) / 1e6, "seconds": took}
    finally:
        await up.stop()


async def imports(tmp: Path) -> dict[str, Any]:
    _, _, baseline = await _cli_import(tmp / "small", [small_bundle()])
    out: dict[str, Any] = {"small_import_peak_mb": baseline / 1e6}
    for name, chunks in (("pax_600mib", pax_flood(600 * MiB)), ("manifest_100mib", big_manifest(100 * MiB))):
        status, report, peak = await _cli_import(tmp / name, chunks)
        out[name] = {"status": status, "errors": report.get("errors"), "peak_over_small_mb": (peak - baseline) / 1e6}
    return out


async def healthz(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bundles = {
        "manifest_31mib": _write(tmp / "under.tar", big_manifest(31 * MiB)),
        "manifest_100mib": _write(tmp / "huge.tar", big_manifest(100 * MiB)),
    }
    async with serve_process(tmp / "node", "off", port):
        for name, bundle in bundles.items():
            stop = asyncio.Event()
            took: list[float] = []
            probing = asyncio.create_task(_probe(base, stop, took))
            t0 = time.monotonic()
            try:
                _, body = await _cli_upload(base, bundle)
            finally:
                stop.set()
                await probing
            report = json.loads(body)
            took.sort()
            out[name] = {
                "import_seconds": time.monotonic() - t0,
                "counts": report["counts"],
                "healthz_probes": len(took),
                "healthz_p50_ms": took[len(took) // 2] * 1000,
                "healthz_max_ms": took[-1] * 1000,
            }
    return out


#: Versions per module in the round trip's store (each module also has a list).
PER_MODULE = 20


async def _fill(data: Path, versions: int) -> None:
    """`versions` distinct versions (an `.info` and a `.mod` each) admitted into a new store."""
    node = Node(Config(listen="127.0.0.1:0", data=data, upstream="off", sumdb=()))
    await node.start()
    try:

        async def admit(i: int) -> None:
            module, version = f"example.com/trip/m{i // PER_MODULE}", f"v1.{i % PER_MODULE}.0"
            info = json.dumps({"Version": version, "Time": "2024-01-02T03:04:05Z"}).encode()
            mod = f"module {module}\n\ngo 1.21\n\nrequire example.com/trip/dep{i % 50} v0.{i % 97}.{i}\n".encode()
            for kind, body in (("info", info), ("mod", mod)):
                await node.proxy.admit(ModRequest(module, version, kind), "bench", once(body))  # type: ignore[arg-type]

        for start in range(0, versions, 256):
            await asyncio.gather(*(admit(i) for i in range(start, min(versions, start + 256))))
    finally:
        await node.aclose()


async def _cli(*argv: str) -> tuple[int, bytes, float, float]:
    """`modmesh ARGV` in its own process: exit status, stdout, seconds, peak RSS (MB)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEAK_RSS, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    took = time.monotonic() - t0
    peak = [line for line in err.decode().splitlines() if line.startswith("PEAK_RSS_KB ")]
    return proc.returncode or 0, out, took, int(peak[-1].split()[1]) * 1024 / 1e6


async def roundtrip(tmp: Path, versions: int) -> dict[str, Any]:
    t0 = time.monotonic()
    await _fill(tmp / "from", versions)
    filled = time.monotonic() - t0
    bundle = tmp / "whole.bundle"
    status, _, export_s, export_mb = await _cli("export", "--data", str(tmp / "from"), "-q", "-o", str(bundle))
    assert status == 0, "export failed"
    with open(bundle, "rb") as f:
        head = f.read(512)
    manifest_mib = int(head[124:136].rstrip(b"\0 ") or b"0", 8) / (1 << 20)
    status, out, import_s, import_mb = await _cli(
        "import", "--data", str(tmp / "to"), "--sumdb", "off", "--offline", "--quiet", "--json", str(bundle)
    )
    report = json.loads(out)
    bundle.unlink()
    return {
        "versions": versions,
        "fill_seconds": filled,
        "entries": sum(report["counts"].values()),
        "manifest_mib": manifest_mib,
        "export_seconds": export_s,
        "export_peak_mb": export_mb,
        "import_status": status,
        "import_counts": report["counts"],
        "import_errors": report["errors"],
        "import_seconds": import_s,
        "import_peak_mb": import_mb,
    }


async def main(only: set[str], versions: int) -> None:
    parts = {"misses": misses, "imports": imports, "healthz": healthz}
    results: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, part in parts.items():
            if name in only:
                results[name] = await part(tmp)
        if "roundtrip" in only:
            results["roundtrip"] = await roundtrip(tmp, versions)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    if "misses" in only:
        m = results["misses"]
        print(f"{m['misses']} distinct missing modules: RSS +{m['rss_growth_mb']:.1f} MB in {m['seconds']:.0f} s")
    if "imports" in only:
        i = results["imports"]
        for name in ("pax_600mib", "manifest_100mib"):
            over = i[name]["peak_over_small_mb"]
            print(f"import {name}: peak RSS +{over:.0f} MB over a small import; {i[name]['errors']}")
    if "healthz" in only:
        for name, f in results["healthz"].items():
            print(
                f"/healthz while a node imports {name}: max {f['healthz_max_ms']:.0f} ms, "
                f"median {f['healthz_p50_ms']:.0f} ms over {f['healthz_probes']} probes ({f['import_seconds']:.1f} s)"
            )
    if "roundtrip" in only:
        r = results["roundtrip"]
        print(
            f"a store of {r['versions']} versions, {r['entries']} entries, {r['manifest_mib']:.0f} MiB manifest: "
            f"export {r['export_seconds']:.0f} s, peak {r['export_peak_mb']:.0f} MB; "
            f"import {r['import_seconds']:.0f} s, peak {r['import_peak_mb']:.0f} MB, {r['import_counts']}"
            f"{', errors: ' + str(r['import_errors']) if r['import_errors'] else ''}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="misses,imports,healthz,roundtrip", help="comma-separated parts")
    ap.add_argument("--versions", type=int, default=55_000, help="versions in the round trip's store")
    a = ap.parse_args()
    asyncio.run(main(set(a.only.split(",")), a.versions))
