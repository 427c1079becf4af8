"""Memory and event-loop figures for hostile input (issue 18), printed as a table and
written to bench/out/memory.json:

- RSS growth of a real node over 50,000 distinct missing modules (default settings);
- peak RSS of `modmesh import -` fed a 600 MiB stream of stacked PAX headers, and a
  bundle with a 100 MiB manifest, against a small bundle's import;
- the slowest `/healthz` answer of a running node while it imports a manifest just
  under the 32 MiB cap (parsed) and a 100 MiB one (refused).

    .venv/bin/python -m bench.memory

The same code as tests/test_memory.py and tests/test_bundle_limits.py, which assert
the bounds; loopback only, every process stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from node.tools.bundle.format import MAX_MANIFEST
from tests.bundle_floods import big_manifest, pax_flood, small_bundle
from tests.node_process import free_port, serve_process
from tests.test_bundle_limits import _cli_import, _cli_upload, _probe, _write
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
        "manifest_under_cap": _write(tmp / "under.tar", big_manifest(MAX_MANIFEST - MiB)),
        "manifest_100mib": _write(tmp / "huge.tar", big_manifest(100 * MiB)),
    }
    async with serve_process(tmp / "node", "off", port):
        for name, bundle in bundles.items():
            stop = asyncio.Event()
            took: list[float] = []
            probing = asyncio.create_task(_probe(base, stop, took))
            t0 = time.monotonic()
            try:
                _, report = await _cli_upload(base, bundle)
            finally:
                stop.set()
                await probing
            took.sort()
            out[name] = {
                "import_seconds": time.monotonic() - t0,
                "counts": report["counts"],
                "healthz_probes": len(took),
                "healthz_p50_ms": took[len(took) // 2] * 1000,
                "healthz_max_ms": took[-1] * 1000,
            }
    return out


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {"misses": await misses(tmp), "imports": await imports(tmp), "healthz": await healthz(tmp)}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    m, i, h = results["misses"], results["imports"], results["healthz"]
    print(f"{m['misses']} distinct missing modules: RSS +{m['rss_growth_mb']:.1f} MB in {m['seconds']:.0f} s")
    for name in ("pax_600mib", "manifest_100mib"):
        over = i[name]["peak_over_small_mb"]
        print(f"import {name}: peak RSS +{over:.0f} MB over a small import; {i[name]['errors']}")
    for name, f in h.items():
        print(
            f"/healthz while a node imports {name}: max {f['healthz_max_ms']:.0f} ms, "
            f"median {f['healthz_p50_ms']:.0f} ms over {f['healthz_probes']} probes ({f['import_seconds']:.1f} s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
