"""`modmesh warm`: input parsing (pure, property-tested) and warming real nodes,
over HTTP and on a data directory, checked against upstream request logs and
finally against the go command working offline."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from node.cache.protocol import Kind
from node.golang import dirhash, modzip
from node.tools.target import UsageError
from node.tools.warm.command import print_summary, report_json
from node.tools.warm.fetch import FileAnswer
from node.tools.warm.inputs import (
    Target,
    UnreadableInput,
    apply_replaces,
    load_inputs,
    parse_gosum,
    parse_list,
    parse_modfile,
)
from node.tools.warm.warm import warm, warm_data, warm_node
from tests.goenv import go_env, run_go
from tests.modules import big_module, module_files
from tests.node_fixtures import node_config
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.test_e2e_go import decode_stream
from tests.upstream_fixture import Fault

ROOT = Path(__file__).resolve().parent.parent
DB = "sum.warm.test"

# ---- parsing ------------------------------------------------------------------------------

# An element like "v0" or "v2" is a major-version suffix with rules of its own; the
# strategy adds those itself (and Go refuses /v0 and /v1 outright).
_elem = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True).filter(lambda e: not re.fullmatch(r"v[0-9]+", e))


@st.composite
def module_versions(draw: st.DrawFn) -> tuple[str, str]:
    host = draw(_elem) + "." + draw(st.sampled_from(["com", "org", "io"]))
    path = "/".join([host, *draw(st.lists(_elem, max_size=2))])
    major = draw(st.integers(0, 3))
    if major >= 2:
        path += f"/v{major}"
    minor, patch = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    pre = draw(st.sampled_from(["", "-pre.1", "-rc.2"]))
    return path, f"v{major}.{minor}.{patch}{pre}"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(module_versions(), st.sampled_from(["zip", "mod", "both"])), max_size=12),
    st.randoms(use_true_random=False),
)
def test_gosum_parses_exactly_what_is_listed(  # type: ignore[no-untyped-def]
    entries: list[tuple[tuple[str, str], str]], rnd
) -> None:
    lines, want = [], {}
    for (m, v), which in entries:
        if which in ("zip", "both"):
            lines.append(f"{m} {v} h1:zip-{m}-{v}=")
        if which in ("mod", "both"):
            lines.append(f"{m} {v}/go.mod h1:mod-{m}-{v}=")
        zip_ = want.get((m, v), False) or which != "mod"
        want[(m, v)] = zip_
    lines += [""] * 3 + lines[: len(lines) // 2]  # blank lines and duplicates change nothing
    rnd.shuffle(lines)
    targets, errors = parse_gosum("\n".join(lines))
    assert errors == []
    assert {(t.module, t.version): t.zip for t in targets} == want
    for t in targets:
        assert t.kinds == (("info", "mod", "zip") if t.zip else ("info", "mod"))
        assert t.zip_h1 in (None, f"h1:zip-{t.module}-{t.version}=")
        assert t.mod_h1 in (None, f"h1:mod-{t.module}-{t.version}=")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parsers_report_instead_of_raising(text: str) -> None:
    parse_gosum(text)
    parse_list(text)
    mf = parse_modfile(text)
    apply_replaces(mf, "go.mod")


@settings(max_examples=50, deadline=None)
@given(st.lists(module_versions(), max_size=8), st.booleans())
def test_gomod_require_blocks_and_lines(reqs: list[tuple[str, str]], block: bool) -> None:
    if block:
        body = "require (\n" + "".join(f"\t{m} {v} // indirect\n" for m, v in reqs) + ")\n"
    else:
        body = "".join(f"require {m} {v}\n" for m, v in reqs)
    targets, errors = apply_replaces(parse_modfile(f"module example.com/main\n\ngo 1.21\n\n{body}"), "go.mod")
    assert errors == []
    assert {(t.module, t.version) for t in targets} == set(reqs)
    assert all(t.zip for t in targets)


def test_gosum_rejects_bad_lines_with_their_position() -> None:
    targets, errors = parse_gosum(
        "rsc.io/quote v1.5.2 h1:x=\n"
        "rsc.io/quote v1.5 h1:x=\n"  # not canonical
        "two fields\n"
        "Bad..Path v1.0.0 h1:x=\n"
        "rsc.io/quote/v2 v1.0.0 h1:x=\n"  # major version mismatch
    )
    assert [(t.module, t.version) for t in targets] == [("rsc.io/quote", "v1.5.2")]
    assert [e.origin for e in errors] == ["go.sum:2", "go.sum:3", "go.sum:4", "go.sum:5"]
    assert "canonical" in errors[0].message and "v1.5.0" in errors[0].message


def test_conflicting_hashes_are_an_error() -> None:
    _, errors = parse_gosum("a.com/m v1.0.0 h1:one=\na.com/m v1.0.0 h1:two=\n")
    assert len(errors) == 1 and "h1:one=" in errors[0].message and "h1:two=" in errors[0].message


def test_list_formats() -> None:
    targets, errors = parse_list(
        "# modules to warm\n"
        "rsc.io/quote@v1.5.2 golang.org/x/text@v0.3.0  # two on a line\n"
        "rsc.io/sampler v1.3.0\n"  # `go list -m` style
        "\n"
        "not-a-module-version\n"
        "rsc.io/quote@master\n"
    )
    assert [(t.module, t.version) for t in targets] == [
        ("rsc.io/quote", "v1.5.2"),
        ("golang.org/x/text", "v0.3.0"),
        ("rsc.io/sampler", "v1.3.0"),
    ]
    assert [e.origin for e in errors] == ["list:5", "list:6"]


def test_gomod_replace_rules() -> None:
    mf = parse_modfile(
        "module example.com/main\n"
        "require (\n"
        "\texample.com/local v1.0.0\n"
        "\texample.com/moved v1.0.0\n"
        "\texample.com/moved v1.1.0\n"
        '\t"example.com/quoted" v1.2.0\n'
        ")\n"
        "require example.com/pinned v0.1.0 // indirect\n"
        "replace example.com/local => ../local\n"
        "replace example.com/moved => example.com/fork v1.9.0\n"
        "replace example.com/moved v1.1.0 => example.com/exact v2.0.0+incompatible\n"
        "replace example.com/bad => example.com/noversion\n"
    )
    targets, errors = apply_replaces(mf, "go.mod")
    assert sorted((t.module, t.version) for t in targets) == [
        ("example.com/exact", "v2.0.0+incompatible"),
        ("example.com/fork", "v1.9.0"),
        ("example.com/pinned", "v0.1.0"),
        ("example.com/quoted", "v1.2.0"),
    ]
    assert len(errors) == 1 and "must be a directory path" in errors[0].message


def test_gowork_uses_modules_and_overrides_replaces(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "go.mod").write_text(
        "module example.com/a\nrequire (\n\texample.com/b v0.0.0-00010101000000-000000000000\n"
        "\trsc.io/quote v1.5.2\n\texample.com/dep v1.0.0\n)\n"
        "replace example.com/dep => example.com/dep v1.0.1\n"
    )
    (tmp_path / "b" / "go.mod").write_text("module example.com/b\nrequire golang.org/x/text v0.3.0\n")
    (tmp_path / "go.work").write_text(
        "go 1.22\n\nuse (\n\t./a\n\t./b\n)\nuse ./missing\n\nreplace example.com/dep => example.com/dep v1.0.2\n"
    )
    targets, errors = load_inputs([str(tmp_path / "go.work")])
    assert sorted((t.module, t.version) for t in targets) == [
        ("example.com/dep", "v1.0.2"),
        ("golang.org/x/text", "v0.3.0"),
        ("rsc.io/quote", "v1.5.2"),
    ]
    assert len(errors) == 1 and "missing" in errors[0].message


def test_load_inputs_dispatch(tmp_path: Path) -> None:
    (tmp_path / "go.sum").write_text("rsc.io/quote v1.5.2/go.mod h1:m=\n")
    (tmp_path / "mods.txt").write_text("rsc.io/quote@v1.5.2\n")
    targets, errors = load_inputs([str(tmp_path / "go.sum"), str(tmp_path / "mods.txt"), "golang.org/x/mod@v0.1.0"])
    assert errors == []
    by = {(t.module, t.version): t for t in targets}
    assert by[("rsc.io/quote", "v1.5.2")].zip and by[("rsc.io/quote", "v1.5.2")].mod_h1 == "h1:m="
    assert ("golang.org/x/mod", "v0.1.0") in by
    targets, _ = load_inputs(["-"], stdin=lambda: "rsc.io/sampler@v1.3.0\n")
    assert targets[0].module == "rsc.io/sampler"
    with pytest.raises(UnreadableInput, match="cannot read"):
        load_inputs([str(tmp_path / "nope.sum")])


# ---- warming --------------------------------------------------------------------------------


class SlowFetcher:
    """A Fetcher that records how many modules are in flight at once."""

    databases: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.active = self.peak = 0

    async def file(self, module: str, version: str, kind: Kind) -> FileAnswer:
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.005)
        self.active -= 1
        return FileAnswer("miss", 1, None)

    async def record(self, db: str, module: str, version: str) -> str:
        return "hit"


async def test_concurrency_is_bounded() -> None:
    f = SlowFetcher()
    done: list[str] = []
    results = await warm(
        f, [Target("a.com/m", f"v1.0.{i}") for i in range(20)], jobs=3, on_done=lambda r: done.append(r.version)
    )
    assert f.peak == 3 and len(done) == 20
    assert [r.version for r in results] == [f"v1.0.{i}" for i in range(20)]  # input order
    assert all(r.status == "fetched" and r.bytes == 3 for r in results)


def _h1_zip(data: bytes, tmp: Path) -> str:
    p = tmp / "h1.zip"
    p.write_bytes(data)
    return modzip.h1_zip(p)


async def _world(fake_proxy, tmp_path: Path, big: bool = False):  # type: ignore[no-untyped-def]
    """Modules a, b (and a big one), a database logging them, and a go.sum naming some."""
    mods = {
        ("example.com/a", "v1.0.0"): module_files("example.com/a", "v1.0.0"),
        ("example.com/a", "v1.1.0"): module_files("example.com/a", "v1.1.0"),  # not in go.sum
        ("example.com/a", "v1.2.0"): module_files("example.com/a", "v1.2.0"),
        ("example.com/b", "v0.1.0"): module_files("example.com/b", "v0.1.0"),  # go.mod only
    }
    if big:
        mods[("example.com/big", "v1.0.0")] = big_module("example.com/big", "v1.0.0", 300_000)
    up = await fake_proxy()
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))))
    for (m, v), (info, mod, zip_) in mods.items():
        up.add_module(m, v, info, mod, zip_)
        db.add(m, v, _h1_zip(zip_, tmp_path), dirhash.h1_gomod(mod))
    await db.start()
    lines = []
    for (m, v), (_, mod, zip_) in mods.items():
        if v == "v1.1.0":
            continue
        if m != "example.com/b":
            lines.append(f"{m} {v} {_h1_zip(zip_, tmp_path)}")
        lines.append(f"{m} {v}/go.mod {dirhash.h1_gomod(mod)}")
    gosum = tmp_path / "go.sum"
    gosum.write_text("\n".join(lines) + "\n")
    return up, db, gosum


def _files(up) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p for p in up.log if "/@v/" in p)


async def test_warm_gosum_over_http_fetches_exactly_the_listed_versions_once(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    up, db, gosum = await _world(fake_proxy, tmp_path)
    try:
        node = await make_node(up.url, sumdb=(f"{db.vkey} {db.url}",))
        targets, errors = load_inputs([str(gosum)])
        assert errors == []
        results = await warm_node(node.url, targets, jobs=4)
        assert {(r.module, r.version): r.status for r in results} == {
            ("example.com/a", "v1.0.0"): "fetched",
            ("example.com/a", "v1.2.0"): "fetched",
            ("example.com/b", "v0.1.0"): "fetched",
        }
        assert _files(up) == sorted(
            [
                "/example.com/a/@v/v1.0.0.info",
                "/example.com/a/@v/v1.0.0.mod",
                "/example.com/a/@v/v1.0.0.zip",
                "/example.com/a/@v/v1.2.0.info",
                "/example.com/a/@v/v1.2.0.mod",
                "/example.com/a/@v/v1.2.0.zip",
                "/example.com/b/@v/v0.1.0.info",
                "/example.com/b/@v/v0.1.0.mod",  # a /go.mod-only line: no zip
            ]
        )
        for r in results:
            assert r.sumdb.keys() == {DB} and r.reason is None
        await node.sumdbs.dbs[0].idle()
        for m, v in [("example.com/a", "v1.0.0"), ("example.com/b", "v0.1.0")]:
            assert node.sumdbs.dbs[0].store.lookup(m, v) is not None

        up.reset_counts()
        db.reset_counts()
        again = await warm_node(node.url, targets)
        assert [r.status for r in again] == ["cached"] * 3
        assert all(set(r.files.values()) == {"hit"} and set(r.sumdb.values()) == {"hit"} for r in again)
        assert up.log == [] and db.log == []
    finally:
        await db.stop()


async def test_warm_data_dir_beside_a_running_node_then_go_offline(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    up, db, gosum = await _world(fake_proxy, tmp_path, big=True)
    try:
        data = tmp_path / "data"
        spec = (f"{db.vkey} {db.url}",)
        running = await make_node(up.url, data=data, sumdb=spec)
        in_flight = running.store.tmp_dir / "in-flight-download.part"  # the running node's temp file
        in_flight.write_bytes(b"partial")
        cfg = node_config(data, up.url, sumdb=spec, stream_threshold=64 << 10)
        targets, _ = load_inputs([str(gosum)])
        results = await warm_data(cfg, targets)
        assert {r.status for r in results} == {"fetched"}, [r.reason for r in results]
        assert in_flight.exists(), "warm --data deleted a running node's temp file"

        # The running node sees what the other process stored: hits, nothing upstream.
        up.reset_counts()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{running.url}/example.com/big/@v/v1.0.0.zip") as r:
                assert r.status == 200 and r.headers["X-Modmesh-Cache"] == "hit"
                await r.read()
        assert up.log == []
        again = await warm_data(cfg, targets)
        assert {r.status for r in again} == {"cached"}
        await running.aclose()

        # Everything a fresh go command needs, verified, with the WAN gone.
        await up.stop()
        await db.stop()
        offline = await make_node(up.url, data=data, sumdb=spec, offline=True)
        env = go_env(tmp_path / "go", offline.url, gosumdb=db.vkey)
        res = await run_go(
            ["mod", "download", "-json", "example.com/a@v1.0.0", "example.com/big@v1.0.0"], env, cwd=tmp_path
        )
        got = {f"{o['Path']}@{o['Version']}": o for o in decode_stream(res.check().stdout)}
        assert got.keys() == {"example.com/a@v1.0.0", "example.com/big@v1.0.0"}
        assert all("Error" not in o and o["Sum"].startswith("h1:") for o in got.values()), got
    finally:
        await db.stop()


async def test_failures_hash_mismatch_and_cli_exit_code(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    up = await fake_proxy()
    for v in ("v1.0.0", "v1.1.0"):
        up.add_module("example.com/ok", v, *module_files("example.com/ok", v))
    up.add_module("example.com/broken", "v1.0.0", *module_files("example.com/broken", "v1.0.0"))
    up.inject("/example.com/broken/@v/v1.0.0.zip", Fault.status(500, b"disk on fire"))
    node = await make_node(up.url)
    gosum = tmp_path / "go.sum"
    gosum.write_text(
        f"example.com/ok v1.0.0 {_h1_zip(module_files('example.com/ok', 'v1.0.0')[2], tmp_path)}\n"
        "example.com/ok v1.1.0 h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"  # wrong hash
        "example.com/broken v1.0.0 h1:x=\n"
        "example.com/missing v1.0.0 h1:x=\n"
        "example.com/bad v1 h1:x=\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "warm",
        "--node",
        node.url,
        "--json",
        str(gosum),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    report = json.loads(out)
    by = {(r["module"], r["version"]): r for r in report["results"]}
    assert report["summary"] == {**report["summary"], "total": 5, "fetched": 1, "cached": 0, "failed": 4}
    assert by[("example.com/ok", "v1.0.0")]["status"] == "fetched"
    wrong = by[("example.com/ok", "v1.1.0")]
    assert wrong["status"] == "failed" and "the node serves h1:" in wrong["reason"] and "go.sum:2" in wrong["reason"]
    broken = by[("example.com/broken", "v1.0.0")]["reason"]
    assert "500" in broken and "disk on fire" in broken
    assert "404" in by[("example.com/missing", "v1.0.0")]["reason"]
    bad = by[("example.com/bad", "v1")]
    assert "canonical" in bad["reason"] and bad["origin"].endswith("go.sum:5")

    # The human summary names every failure with its reason.
    buf = io.StringIO()
    results = await warm_node(node.url, load_inputs([str(gosum)])[0])
    print_summary(Console(file=buf, width=200), node.url, results, 0.5)
    text = buf.getvalue()
    assert "disk on fire" in text and "already cached" in text and "3 failed" in text
    assert report_json(node.url, results, 0.5)["summary"]["cached"] == 1


async def test_unreachable_node_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot reach node"):
        await warm_node("http://127.0.0.1:9", [Target("a.com/m", "v1.0.0")])


async def test_credentials_and_rate_limits(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    """A node that wants a client token and limits request rates: warm sends the
    token and waits out 429s instead of failing modules."""
    up = await fake_proxy()
    for v in ("v1.0.0", "v1.1.0", "v1.2.0"):
        up.add_module("example.com/a", v, *module_files("example.com/a", v))
    tokens = tmp_path / "tokens"
    tokens.write_text("# client tokens\ns3cret\n")
    node = await make_node(up.url, client_tokens_file=tokens, client_rate=50.0, client_burst=3)
    targets = [Target("example.com/a", v) for v in ("v1.0.0", "v1.1.0", "v1.2.0")]
    denied = await warm_node(node.url, targets)
    assert all(r.status == "failed" and "401" in (r.reason or "") for r in denied)
    results = await warm_node(node.url, targets, jobs=8, token="s3cret")
    assert [r.status for r in results] == ["fetched"] * 3, [r.reason for r in results]
    limited = sum(
        s.value
        for m in node.metrics.requests.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["status"] == "429"
    )
    assert limited > 0  # the node did push back, and warm waited
