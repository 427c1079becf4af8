"""Bundles that would take a node's memory or its event loop: stacked PAX headers and
huge manifests (node/tools/bundle/tar.py, manifest_json.py, import_temp.py), imported
by the real CLI and by a running node, the streams made as they are sent
(tests/bundle_floods.py)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.tools.bundle.format import MANIFEST_NAME, MAX_MANIFEST, BundleError, Manifest, ManifestEntry
from node.tools.bundle.import_temp import Expected
from node.tools.bundle.importing import Outcome, Report
from node.tools.bundle.manifest_json import ManifestJSON
from node.tools.bundle.tar import MAX_EXTENDED, TarReader, read_manifest, tar_header
from tests.bundle_floods import big_manifest, pax_flood, skipped_bundle, small_bundle
from tests.node_process import free_port, serve_process

MiB = 1 << 20
#: The CLI, reporting its own peak RSS (KiB) on the way out: VmHWM, not getrusage's
#: ru_maxrss, which Linux carries over from the process that forked it.
PEAK_RSS = """
import runpy, sys
try:
    runpy.run_module("node.cli", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    print(f"PEAK_RSS_KB {hwm}", file=sys.stderr)
"""


class _Stream:
    """A ByteSource over an iterator of chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""
        self.read_bytes = 0

    async def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = next(self._it, b"")
            if not more:
                break
            self._buf += more
        out, self._buf = self._buf[:n], self._buf[n:]
        self.read_bytes += len(out)
        return out


async def test_stacked_pax_headers_are_refused_after_a_mebibyte() -> None:
    src = _Stream(pax_flood(64 * MiB))
    r = TarReader(src)
    assert (await r.next()) is not None  # the manifest
    with pytest.raises(BundleError, match=r"more than 1 MiB of extended tar headers; the bundle is refused"):
        await r.next()
    assert src.read_bytes < MAX_EXTENDED + 2 * MiB  # not read on


def test_manifest_parsed_in_pieces_is_the_manifest() -> None:
    data = b"".join(big_manifest(2 * MiB))[512 : 512 + 2 * MiB]
    whole = json.loads(data)
    rng = random.Random(7)
    for _ in range(5):
        p = Manifest.parser()
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 7, 300, 4096, 100_000])
            p.feed(data[pos : pos + step])
            pos += step
        m = Manifest.parsed(p)
        assert [e.to_json() for e in m.entries] == whole["entries"]
        assert m.created == whole["created"]


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[1, 2]",
        b'{"format": "modmesh-bundle", "format_version": 1, "entries": [',
        b'{"format": "modmesh-bundle", "format_version": 1, "entries": [] } x',
        b'{"format": "modmesh-bundle", "format_version": 1, "entries": 3}',
        b'{"format": "modmesh-bundle", "format_version": 1, "entries": [{]}',
        b'{"format": "other", "entries": []}',
        b"\xff",
    ],
)
def test_bad_manifests_are_one_clear_error(text: bytes) -> None:
    with pytest.raises(BundleError) as e:
        Manifest.from_bytes(text)
    assert "\n" not in str(e.value)


def test_a_value_cut_at_a_chunk_boundary_is_not_taken_early() -> None:
    p: ManifestJSON[Any] = ManifestJSON(lambda o: o)
    for piece in (b'{"a": 12', b'34, "entries": [{"x": 1}', b"]}"):
        p.feed(piece)
    p.finish()
    assert p.fields == {"a": 1234} and p.entries == [{"x": 1}]


def test_report_bytes_are_its_json(tmp_path: Path) -> None:
    outcomes = [Outcome(f"p{i}", "info", "refused" if i % 3 else "admitted", "m", "v", "why") for i in range(2500)]
    r = Report("import x", outcomes, ["e"], spill=tmp_path)
    assert len(r._recent) < 1000 and list(tmp_path.iterdir())  # the rest waits on disk
    assert json.loads(r.to_json_bytes()) == r.to_json()
    assert r.to_json()["entries"] == [o.to_json() for o in outcomes]
    assert r.counts() == {"admitted": 834, "present": 0, "refused": 1666, "skipped": 0}
    assert r.refusals == [o for o in outcomes if o.status == "refused"][:100]
    assert list(r.outcomes("admitted")) == [o for o in outcomes if o.status == "admitted"]
    data = r.to_json_bytes()
    p = Report.parser(spill=tmp_path)
    for i in range(0, len(data), 777):
        p.feed(data[i : i + 777])
    again = p.finish()
    assert again.to_json() == r.to_json() and again.failed
    r.close()
    again.close()
    assert not list(tmp_path.iterdir())
    assert json.loads(Report("empty").to_json_bytes()) == Report("empty").to_json()


def test_expected_entries_wait_on_disk_and_are_claimed_once(tmp_path: Path) -> None:
    entries = [ManifestEntry(f"m/@v/v1.{i}.0.info", "info", i, None, "m", f"v1.{i}.0") for i in range(2500)]
    x = Expected(tmp_path)
    x.add(entries[:1000])
    x.add(entries[1000:])
    assert x.claim("m/@v/v1.7.0.info") == (entries[7], False)
    assert x.claim("m/@v/v1.7.0.info") == (entries[7], True)
    assert x.claim("nowhere") == (None, False)
    pages = list(x.unseen())
    assert [len(p) for p in pages] == [1000, 1000, 499]
    assert [e for p in pages for e in p] == entries[:7] + entries[8:]
    x.close()
    assert not list(tmp_path.iterdir())


async def test_a_manifest_over_the_cap_or_the_free_disk_is_refused_from_its_header() -> None:
    r = TarReader(_Stream([tar_header(MANIFEST_NAME, MAX_MANIFEST + 1, 0)]))
    with pytest.raises(BundleError, match=r"over the 1024 MiB a node reads"):
        await read_manifest(r, lambda _: None)
    data = small_bundle()
    with pytest.raises(BundleError, match=r"more than the 0 MiB free on the store's disk"):
        await read_manifest(TarReader(_Stream([data])), lambda _: None, room=100)
    got: list[ManifestEntry] = []
    m = await read_manifest(TarReader(_Stream([data])), got.extend)
    assert m.entries == [] and [e.path for e in got] == ["example.com/flood/@v/v1.0.0.info"]


# ---- the real CLI ------------------------------------------------------------------------


async def _cli_import(data: Path, chunks: Iterable[bytes]) -> tuple[int, dict[str, Any], int]:
    """`modmesh import --data DATA -` fed `chunks` as it reads them: its exit status,
    its JSON report and its peak RSS in bytes."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PEAK_RSS,
        "import",
        "--data",
        str(data),
        "--offline",
        "--quiet",
        "--json",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: the point

    feeding = asyncio.create_task(feed())
    try:
        out, err = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), proc.stderr.read()), 120)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        feeding.cancel()
    peak = [line for line in err.decode().splitlines() if line.startswith("PEAK_RSS_KB ")]
    assert peak, err.decode()[-2000:]
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else {}, int(peak[-1].split()[1]) * 1024


def _indexed(data: Path) -> int:
    with sqlite3.connect(data / "index.sqlite") as db:
        n: int = db.execute("SELECT count(*) FROM entries").fetchone()[0]
        return n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS in bytes as Linux reports it")
async def test_hostile_bundles_leave_memory_bounded_and_nothing_wrong_imported(tmp_path: Path) -> None:
    """A 600 MiB stream of stacked PAX headers: refused with one clear line, nothing
    imported. A 100 MiB manifest (~320,000 entries, under the cap): parsed into the
    temporary database, the one member carried admitted, every other entry refused as
    missing. Peak RSS under 100 MB over a small import's either way."""
    status, report, baseline = await _cli_import(tmp_path / "ok", [small_bundle()])
    assert status == 0 and report["counts"]["admitted"] == 1, report
    status, report, peak = await _cli_import(tmp_path / "pax", pax_flood(600 * MiB))
    print(f"600 MiB of PAX headers: peak RSS {peak / 1e6:.0f} MB, a small import's {baseline / 1e6:.0f} MB")
    assert peak - baseline < 100e6, f"PAX headers: peak RSS {peak / 1e6:.0f} MB"
    assert status == 1 and len(report["errors"]) == 1 and "extended tar headers" in report["errors"][0]
    assert report["counts"]["admitted"] == 0 and _indexed(tmp_path / "pax") == 0

    status, report, peak = await _cli_import(tmp_path / "manifest", big_manifest(100 * MiB))
    print(f"a 100 MiB manifest: peak RSS {peak / 1e6:.0f} MB, a small import's {baseline / 1e6:.0f} MB")
    assert peak - baseline < 100e6, f"100 MiB manifest: peak RSS {peak / 1e6:.0f} MB"
    assert status == 1 and report["errors"] == []
    c, entries = report["counts"], report["entries"]
    assert c["admitted"] == 1 and c["present"] == c["skipped"] == 0 and c["refused"] > 300_000
    assert len(entries) == sum(c.values()) and entries[0]["path"] == "example.com/flood/@v/v1.0.0.info"
    assert {e["reason"] for e in entries[1:]} == {"missing from the bundle"}
    assert _indexed(tmp_path / "manifest") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS in bytes as Linux reports it")
async def test_a_valid_bundle_with_a_manifest_over_32_mib_imports_in_bounded_memory(tmp_path: Path) -> None:
    """A bundle that carries every entry its manifest lists, 110,000 of them (a 36 MiB
    manifest: a whole-store export's size, over the 32 MiB once read): it imports (the
    `.info` admitted, lookups of a database the node is not configured with skipped,
    nothing refused), peak RSS under 100 MB over a small import's (main: refused)."""
    status, report, baseline = await _cli_import(tmp_path / "ok", [small_bundle()])
    assert status == 0, report
    size, chunks = skipped_bundle(110_000)
    assert size > 32 * MiB
    status, report, peak = await _cli_import(tmp_path / "big", chunks)
    print(f"a {size / MiB:.0f} MiB manifest: peak RSS {peak / 1e6:.0f} MB, a small import's {baseline / 1e6:.0f} MB")
    assert report.get("errors") == [], report.get("errors")
    assert report["counts"] == {"admitted": 1, "present": 0, "refused": 0, "skipped": 110_000}
    assert status == 0
    assert len(report["entries"]) == 110_001
    assert peak - baseline < 100e6, f"peak RSS {peak / 1e6:.0f} MB"
    assert _indexed(tmp_path / "big") == 1


# ---- a running node ------------------------------------------------------------------------


async def _probe(base: str, stop: asyncio.Event, took: list[float]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        while not stop.is_set():
            t0 = time.monotonic()
            async with s.get(f"{base}/healthz") as r:
                await r.read()
                assert r.status == 200
            took.append(time.monotonic() - t0)
            await asyncio.sleep(0.02)


async def _cli_upload(base: str, bundle: Path) -> tuple[int, bytes]:
    """`modmesh import --node BASE BUNDLE` in its own process (the upload and the report's
    JSON do not run on this test's event loop, which measures /healthz): its exit status
    and its JSON report, unparsed (parsing a large one would stall this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "import",
        "--node",
        base,
        "--quiet",
        "--json",
        str(bundle),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out.strip(), err.decode()[-2000:]
    return proc.returncode or 0, out


def _write(path: Path, chunks: Iterable[bytes]) -> Path:
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    return path


async def test_a_node_importing_huge_manifests_keeps_answering(tmp_path: Path) -> None:
    """POST /_admin/import of a 31 MiB manifest and of a 100 MiB one (each parsed in a
    thread, entry by entry, into a temporary database; the report streamed back):
    /healthz answers all along. The bound here is generous (a blocked loop took
    16.8 s); the figures are in bench/memory.py."""
    under = _write(tmp_path / "under.tar", big_manifest(31 * MiB))
    huge = _write(tmp_path / "huge.tar", big_manifest(100 * MiB))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with serve_process(tmp_path / "data", "off", port):
        stop = asyncio.Event()
        took: list[float] = []
        probing = asyncio.create_task(_probe(base, stop, took))
        try:
            uploads = [await _cli_upload(base, under), await _cli_upload(base, huge)]
        finally:
            stop.set()
            await probing
        assert not list((tmp_path / "data" / "tmp").rglob("*.sqlite"))  # the temp databases are gone
        status, out = uploads[0]
        report = json.loads(out)
        assert report["counts"]["admitted"] == 1 and not report["errors"]
        assert report["counts"]["refused"] > 90_000  # every made-up entry: missing from the bundle
        status, out = uploads[1]
        report = json.loads(out)
        assert status == 1 and not report["errors"] and report["counts"]["admitted"] == 0
        assert report["counts"]["present"] == 1 and report["counts"]["refused"] > 300_000
        assert len(report["entries"]) == sum(report["counts"].values())
        print(f"/healthz during the imports: {len(took)} probes, max {max(took) * 1000:.0f} ms")
        assert len(took) > 10
        assert max(took) < 3.0, f"/healthz took up to {max(took):.2f}s during an import"


def test_manifest_entries_are_interned() -> None:
    data = b"".join(big_manifest(MiB))[512 : 512 + MiB]
    m = Manifest.from_bytes(data)
    same = [e for e in m.entries if e.version == "v1.0.0"]
    assert all(e.version is same[0].version for e in same)
    assert isinstance(m.entries[0], ManifestEntry)


def test_a_large_value_is_not_parsed_once_per_chunk() -> None:
    tries = 0
    p: ManifestJSON[Any] = ManifestJSON(lambda o: o)
    parse = p._parse

    def counted(text: str, final: bool) -> int:
        nonlocal tries
        tries += 1
        return parse(text, final)

    p._parse = counted  # type: ignore[method-assign]
    data = b'{"warnings": [' + b", ".join(b'"w%d"' % i for i in range(300_000)) + b'], "entries": []}'
    for i in range(0, len(data), 4096):
        p.feed(data[i : i + 4096])
    p.finish()
    assert len(p.fields["warnings"]) == 300_000 and p.entries == []
    assert tries < 30
