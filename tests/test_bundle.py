"""`modmesh export` / `modmesh import` (issue 5): bundles across an air gap.

Nodes are real (the app on 127.0.0.1), the upstream and the checksum database
are the fixtures, the commands run through the real argument parser; the go
command is the oracle for "a fresh machine builds, verified, from the import".
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.cli import build_parser
from node.golang import dirhash, modzip, zipwriter
from node.golang.modpath import escape_path
from node.tools.bundle.commands import export_main, import_main
from node.tools.bundle.export import plan_export
from node.tools.bundle.format import MANIFEST_NAME, Manifest
from node.tools.bundle.selection import Selection, parse_gosum, parse_since
from node.tools.bundle.sources import FileSource
from node.tools.bundle.tar import TarReader
from tests.blobs import on_disk
from tests.goenv import go_env, run_go
from tests.modules import big_module, module_files
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.test_e2e_go import decode_stream
from tests.test_sumdb_e2e import build_hello

DB = "sum.bundle.test"
ROOT = Path(__file__).resolve().parent.parent


# ---- helpers --------------------------------------------------------------------------


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """Run `modmesh export|import ...` in this loop; (exit code, --json report, else {"text": stdout})."""
    args = build_parser().parse_args(list(argv))
    capsys.readouterr()
    code = await (export_main(args) if args.command == "export" else import_main(args))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else {"text": out}


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {e["path"]: e["status"] for e in report["entries"]}


def refused(report: dict[str, Any]) -> dict[str, str]:
    return {e["path"]: e["reason"] for e in report["entries"] if e["status"] == "refused"}


def h1_zip(data: bytes, tmp: Path) -> str:
    p = tmp / "h1.zip"
    p.write_bytes(data)
    return modzip.h1_zip(p)


async def fetch_all(url: str, mods: dict[tuple[str, str], Any], meta: bool = True) -> None:
    """Let a node fetch (and verify) every file of these versions, and their list/latest."""
    async with aiohttp.ClientSession() as s:
        for m, v in mods:
            for kind in ("info", "mod", "zip"):
                async with s.get(f"{url}/{escape_path(m)}/@v/{v}.{kind}") as r:
                    assert r.status == 200, (m, v, kind, await r.text())
                    await r.read()
            if meta:
                for tail in ("@v/list", "@latest"):
                    async with s.get(f"{url}/{escape_path(m)}/{tail}") as r:
                        assert r.status == 200, await r.text()


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:  # any tar reader reads a bundle
        return tar.getnames()


def manifest_of(path: Path) -> Manifest:
    with tarfile.open(path) as tar:
        f = tar.extractfile(MANIFEST_NAME)
        assert f is not None
        return Manifest.from_bytes(f.read())


def flip_byte(bundle: Path, member: str) -> None:
    with tarfile.open(bundle) as tar:
        info = tar.getmember(member)
    data = bytearray(bundle.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0x01
    bundle.write_bytes(bytes(data))


MODS = {
    ("example.com/a", "v1.0.0"): module_files("example.com/a", "v1.0.0"),
    ("example.com/a", "v1.1.0"): module_files("example.com/a", "v1.1.0"),
    ("example.com/b", "v0.1.0"): module_files("example.com/b", "v0.1.0"),
    ("example.com/Big", "v1.0.0"): big_module("example.com/Big", "v1.0.0", 600_000),
}


@pytest.fixture
async def world(fake_proxy, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An upstream with MODS and a database that logs them."""
    up = await fake_proxy()
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(range(32))))
    for (m, v), (info, mod, zip_) in MODS.items():
        up.add_module(m, v, info, mod, zip_)
        db.add(m, v, h1_zip(zip_, tmp_path), dirhash.h1_gomod(mod))
    await db.start()
    yield up, db
    await db.stop()


def spec(db: FakeSumDB) -> tuple[str, ...]:
    return (f"{db.vkey} {db.url}",)


# ---- acceptance: export from A, import into B with nothing reachable, go builds -------


async def test_export_import_then_go_builds_offline_with_verification(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, go_build_cache, capsys, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(32)))
    db.add_corpus(corpus_modules)
    await db.start()
    try:
        a = await make_node(up.url, sumdb=spec(db))
        env = go_env(
            tmp_path / "a", a.url, gosumdb=db.vkey, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache)
        )
        await build_hello(tmp_path / "a", env)  # rsc.io/quote, rsc.io/sampler, golang.org/x/text
        await a.sumdbs.dbs[0].idle()
        bundle = tmp_path / "a.bundle"
        code, _ = await cli(capsys, "export", "--node", a.url, "-o", str(bundle))
        assert code == 0
    finally:
        await up.stop()
        await db.stop()  # from here on nothing upstream is reachable

    names = tar_names(bundle)
    assert names[0] == MANIFEST_NAME
    assert names.index(f"sumdb/{DB}/latest") < names.index("rsc.io/quote/@v/v1.5.2.zip")
    manifest = manifest_of(bundle)
    quote = next(e for e in manifest.entries if e.path == "rsc.io/quote/@v/v1.5.2.zip")
    assert (quote.module, quote.version, quote.kind) == ("rsc.io/quote", "v1.5.2", "zip")
    assert quote.h1 and quote.sha256 and quote.size > 0
    assert manifest.origin["epoch"] == a.index.epoch and manifest.origin["serial"] > 0
    assert manifest.sumdb[0]["name"] == DB and manifest.warnings == []

    b = await make_node("off", sumdb=spec(db), offline=True)
    code, report = await cli(capsys, "import", "--node", b.url, "--json", str(bundle))
    assert code == 0, refused(report)
    st = statuses(report)
    assert st["rsc.io/quote/@v/v1.5.2.zip"] == "admitted" and st[f"sumdb/{DB}/latest"] == "admitted"
    assert set(st.values()) == {"admitted", "present"}  # present: sumdb/<db>/supported

    env = go_env(tmp_path / "b", b.url, gosumdb=db.vkey, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    await build_hello(tmp_path / "b", env)
    gosum = (tmp_path / "b" / "hello" / "go.sum").read_text()
    assert "rsc.io/quote v1.5.2 h1:" in gosum and "golang.org/x/text" in gosum

    # Importing twice changes nothing.
    before = await b.index.changes_since(0)
    code, again = await cli(capsys, "import", "--node", b.url, "--json", str(bundle))
    assert code == 0 and again["counts"]["admitted"] == 0 and again["counts"]["present"] == len(manifest.entries)
    assert await b.index.changes_since(0) == before


async def test_unpacked_bundle_is_a_goproxy_tree(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, db = world
    a = await make_node(up.url, sumdb=spec(db))
    await fetch_all(a.url, MODS)
    await a.sumdbs.dbs[0].idle()
    bundle = tmp_path / "a.bundle"
    assert (await cli(capsys, "export", "--data", str(a.config.data), "-o", str(bundle)))[0] == 0
    tree = tmp_path / "tree"
    with tarfile.open(bundle) as tar:
        tar.extractall(tree, filter="data")
    await up.stop()
    await db.stop()
    # With the bundle's tree head as the client's own, every tile it asks for is in the tree.
    env = go_env(tmp_path / "go", f"file://{tree}", gosumdb=db.vkey)
    latest = Path(env["GOPATH"]) / "pkg" / "sumdb" / DB / "latest"
    latest.parent.mkdir(parents=True)
    shutil.copy(tree / "sumdb" / DB / "latest", latest)
    wanted = [f"{m}@{v}" for m, v in MODS]
    res = (await run_go(["mod", "download", "-json", *wanted], env, cwd=tmp_path)).check()
    assert all("Error" not in o and o["Sum"].startswith("h1:") for o in decode_stream(res.stdout))
    res = (await run_go(["list", "-m", "-versions", "example.com/a"], env, cwd=tmp_path)).check()
    assert res.stdout.split() == ["example.com/a", "v1.0.0", "v1.1.0"]

    # The unpacked tree imports too (manifest + files), with the same checks.
    b = await make_node("off", sumdb=spec(db), offline=True)
    code, report = await cli(capsys, "import", "--node", b.url, "--json", str(tree))
    assert code == 0 and report["counts"]["refused"] == 0 and report["counts"]["admitted"] > 10


# ---- acceptance: one flipped byte ---------------------------------------------------------


async def test_flipped_byte_refuses_that_entry_only(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, db = world
    a = await make_node(up.url, sumdb=spec(db))
    await fetch_all(a.url, MODS)
    await a.sumdbs.dbs[0].idle()
    bundle = tmp_path / "a.bundle"
    # --data on a directory a node is running on.
    assert (await cli(capsys, "export", "--data", str(a.config.data), "-o", str(bundle)))[0] == 0
    bad = "example.com/!big/@v/v1.0.0.zip"
    flip_byte(bundle, bad)
    bad_bytes = _member(bundle, bad)
    await up.stop()
    await db.stop()

    data_b = tmp_path / "b"
    code, report = await cli(
        capsys, "import", "--data", str(data_b), "--sumdb", spec(db)[0], "--offline", "--json", str(bundle)
    )
    assert code == 1
    assert list(refused(report)) == [bad]
    assert "sha256" in refused(report)[bad] and "manifest" in refused(report)[bad]
    st = statuses(report)
    assert st["example.com/a/@v/v1.0.0.zip"] == "admitted" and st["example.com/!big/@v/v1.0.0.mod"] == "admitted"
    assert sum(1 for s in st.values() if s == "admitted") == len(st) - 2  # the bad zip, supported

    code, out = await cli(capsys, "import", "--data", str(data_b), "--sumdb", spec(db)[0], "--offline", str(bundle))
    text = out["text"]
    assert code == 1 and "refused" in text and "example.com/Big@v1.0.0.zip" in text and "sha256" in text

    b = await make_node("off", data=data_b, sumdb=spec(db), offline=True)
    status, _ = await get(f"{b.url}/{bad}")
    assert status == 404
    status, body = await get(f"{b.url}/example.com/a/@v/v1.0.0.zip")
    assert status == 200 and body == MODS[("example.com/a", "v1.0.0")][2]
    stored = on_disk(data_b)
    assert hashlib.sha256(bad_bytes).hexdigest() not in stored
    assert not [p for p in (data_b / "tmp").rglob("*") if p.is_file()]


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


async def test_tampered_database_data_is_refused_and_named(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, db = world
    a = await make_node(up.url, sumdb=spec(db))
    await fetch_all(a.url, MODS, meta=False)
    await a.sumdbs.dbs[0].idle()
    bundle = tmp_path / "a.bundle"
    assert (await cli(capsys, "export", "--data", str(a.config.data), "-o", str(bundle)))[0] == 0
    lookup = f"sumdb/{DB}/lookup/example.com/a@v1.0.0"
    tiles = [n for n in tar_names(bundle) if "/tile/" in n]
    await up.stop()
    await db.stop()

    # A record changed in transit: refused, and the module it vouches for cannot be admitted.
    bad = tmp_path / "lookup.bundle"
    bad.write_bytes(bundle.read_bytes())
    flip_byte(bad, lookup)
    code, report = await cli(
        capsys, "import", "--data", str(tmp_path / "b1"), "--sumdb", spec(db)[0], "--offline", "--json", str(bad)
    )
    r = refused(report)
    assert code == 1 and lookup in r
    assert set(r) == {lookup, "example.com/a/@v/v1.0.0.mod", "example.com/a/@v/v1.0.0.zip"}
    assert "no record" in r["example.com/a/@v/v1.0.0.zip"]

    # A tile changed: named, and what can no longer be authenticated is refused with it.
    bad.write_bytes(bundle.read_bytes())
    flip_byte(bad, tiles[-1])
    code, report = await cli(
        capsys, "import", "--data", str(tmp_path / "b2"), "--sumdb", spec(db)[0], "--offline", "--json", str(bad)
    )
    r = refused(report)
    assert code == 1 and tiles[-1] in r and len(r) > 1

    # A tree head signed by another key: the database part is refused, nothing of it stored.
    code, report = await cli(
        capsys,
        "import",
        "--data",
        str(tmp_path / "b3"),
        "--sumdb",
        f"{generate_keys(DB).vkey} {db.url}",
        "--offline",
        "--json",
        str(bundle),
    )
    r = refused(report)
    assert code == 1 and "not signed by this node's key" in r[f"sumdb/{DB}/latest"]
    assert not (tmp_path / "b3" / "sumdb" / DB / "latest").exists()


async def test_truncated_bundle_names_what_is_missing(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, _ = world
    a = await make_node(up.url)
    await fetch_all(a.url, MODS)
    bundle = tmp_path / "a.bundle"
    code, _ = await cli(capsys, "export", "--data", str(a.config.data), "-o", str(bundle))
    assert code == 0
    data = bundle.read_bytes()
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(data[: len(data) // 2])
    code, report = await cli(capsys, "import", "--data", str(tmp_path / "b"), "--sumdb", "off", "--json", str(cut))
    assert code == 1 and report["errors"] and "ends early" in report["errors"][0]
    r = refused(report)
    assert r and all(
        reason in ("missing from the bundle", "the bundle ends inside this entry") for reason in r.values()
    )
    assert report["counts"]["admitted"] > 0


# ---- acceptance: a GOMODCACHE made by the go command ---------------------------------------


async def test_gomodcache_import_is_served_byte_identical(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, db = world
    env = go_env(tmp_path / "go", up.url, gosumdb=db.gosumdb)
    wanted = [f"{m}@{v}" for m, v in MODS]
    (await run_go(["mod", "download", "-json", *wanted], env, cwd=tmp_path)).check()
    (await run_go(["list", "-m", "-versions", "example.com/a"], env, cwd=tmp_path)).check()
    cache = Path(env["GOMODCACHE"])
    download = cache / "cache" / "download"
    assert (download / "sumdb").is_dir() and list(download.rglob("*.ziphash"))

    # Into a node that is running on the data directory, verified against the database.
    data = tmp_path / "b"
    b = await make_node("off", data=data, sumdb=spec(db))
    code, report = await cli(capsys, "import", "--data", str(data), "--sumdb", spec(db)[0], "--json", str(cache))
    assert code == 0, refused(report)
    files = sorted(
        p.relative_to(download).as_posix()
        for p in download.rglob("*")
        if p.is_file() and p.suffix in (".info", ".mod", ".zip") and "sumdb" not in p.parts
    )
    assert len(files) == 3 * len(MODS)
    assert {e["path"] for e in report["entries"] if e["kind"] in ("info", "mod", "zip")} == set(files)
    for rel in files:
        status, body = await get(f"{b.url}/{rel}")
        assert status == 200 and body == (download / rel).read_bytes(), rel
    status, body = await get(f"{b.url}/example.com/a/@v/list")
    assert status == 200 and body == b"v1.0.0\nv1.1.0\n"

    code, again = await cli(capsys, "import", "--data", str(data), "--sumdb", spec(db)[0], "--json", str(download))
    assert code == 0 and again["counts"]["admitted"] == 0


async def test_gomodcache_import_refuses_a_hash_the_database_disowns(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, db = world
    env = go_env(tmp_path / "go", up.url)  # GOSUMDB=off: the client took whatever it got
    (await run_go(["mod", "download", "example.com/a@v1.0.0", "example.com/b@v0.1.0"], env, cwd=tmp_path)).check()
    download = Path(env["GOMODCACHE"]) / "cache" / "download"
    db.corrupt_record("example.com/a", "v1.0.0")  # the database vouches for another zip
    code, report = await cli(
        capsys, "import", "--data", str(tmp_path / "b"), "--sumdb", spec(db)[0], "--json", str(download)
    )
    assert code == 1
    assert list(refused(report)) == ["example.com/a/@v/v1.0.0.zip"]
    assert "checksum mismatch" in refused(report)["example.com/a/@v/v1.0.0.zip"]


# ---- a module directory ------------------------------------------------------------------


async def test_module_directory_import(make_node, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src" / "hello@v1.2.3"
    (src / "sub").mkdir(parents=True)
    (src / "go.mod").write_text("module example.com/hello\n\ngo 1.21\n")
    (src / "hello.go").write_text('package hello\n\nfunc Hello() string { return "hi" }\n')
    (src / "sub" / "x.go").write_text("package sub\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    data = tmp_path / "b"
    code, report = await cli(capsys, "import", "--data", str(data), "--sumdb", "off", "--json", str(src))
    assert code == 0 and report["counts"]["admitted"] == 3
    b = await make_node("off", data=data, offline=True)
    status, zip_bytes = await get(f"{b.url}/example.com/hello/@v/v1.2.3.zip")
    assert status == 200
    buf = io.BytesIO()
    zipwriter.create_zip(src, "example.com/hello", "v1.2.3", buf)
    assert zip_bytes == buf.getvalue()
    (tmp_path / "z.zip").write_bytes(zip_bytes)
    with __import__("zipfile").ZipFile(tmp_path / "z.zip") as z:
        assert sorted(z.namelist()) == [
            "example.com/hello@v1.2.3/go.mod",
            "example.com/hello@v1.2.3/hello.go",
            "example.com/hello@v1.2.3/sub/x.go",
        ]
    status, mod = await get(f"{b.url}/example.com/hello/@v/v1.2.3.mod")
    assert status == 200 and mod == (src / "go.mod").read_bytes()
    status, info = await get(f"{b.url}/example.com/hello/@v/v1.2.3.info")
    assert json.loads(info)["Version"] == "v1.2.3"

    # A legacy tree (no go.mod) needs --module/--version; its .mod is the one Go makes up.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "x.go").write_text("package x\n")
    code, _ = await cli(capsys, "import", "--data", str(data), "--sumdb", "off", str(legacy))
    assert code == 2
    code, report = await cli(
        capsys,
        "import",
        "--data",
        str(data),
        "--sumdb",
        "off",
        "--json",
        "--module",
        "example.com/legacy",
        "--version",
        "v0.1.0",
        str(legacy),
    )
    assert code == 0
    status, mod = await get(f"{b.url}/example.com/legacy/@v/v0.1.0.mod")
    assert mod == b"module example.com/legacy\n"

    # go.mod naming another module: refused at the door, named (a proxy serves such a
    # .mod as it is; a directory, though, is imported as the module its go.mod names).
    other = tmp_path / "other@v1.0.0"
    other.mkdir()
    (other / "go.mod").write_text("module example.com/other\n")
    capsys.readouterr()
    code = await import_main(
        build_parser().parse_args(
            [
                "import",
                "--data",
                str(data),
                "--sumdb",
                "off",
                "--module",
                "example.com/wrong",
                "--version",
                "v1.0.0",
                str(other),
            ]
        )
    )
    assert code == 2 and "declares module example.com/other, not example.com/wrong" in capsys.readouterr().err


# ---- selection and incremental bundles -----------------------------------------------------


async def test_selection_filters(world, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up, db = world
    a = await make_node(up.url, sumdb=spec(db))
    await fetch_all(a.url, MODS)
    await a.sumdbs.dbs[0].idle()

    def modules(plan: Any) -> set[tuple[str, str, str]]:
        return {(e.module, e.version, e.kind) for e in plan.manifest.entries if not e.kind.startswith("sumdb")}

    everything = await plan_export(a, Selection())
    assert len(modules(everything)) == 3 * len(MODS) + 2 * 3
    only_b = await plan_export(a, Selection(modules=("example.com/b",)))
    assert {m for m, _, _ in modules(only_b)} == {"example.com/b"}
    assert {e.module for e in only_b.manifest.entries if e.kind == "sumdb-lookup"} == {"example.com/b"}
    star = await plan_export(a, Selection(modules=("example.com/*",)))
    assert modules(star) == modules(everything)

    a_mod = MODS[("example.com/a", "v1.0.0")][1]
    gosum = parse_gosum(
        f"example.com/a v1.0.0/go.mod {dirhash.h1_gomod(a_mod)}\n"
        f"example.com/b v0.1.0 {h1_zip(MODS[('example.com/b', 'v0.1.0')][2], tmp_path)}\n"
        f"example.com/b v0.1.0/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        "example.com/gone v1.0.0/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    )
    plan = await plan_export(a, Selection(gosum=gosum))
    assert {(m, v, k) for m, v, k in modules(plan) if v} == {
        ("example.com/a", "v1.0.0", "info"),
        ("example.com/a", "v1.0.0", "mod"),
        ("example.com/b", "v0.1.0", "info"),
        ("example.com/b", "v0.1.0", "zip"),
    }
    assert any("go.sum has h1:AAAA" in w for w in plan.manifest.warnings)
    assert any("example.com/gone@v1.0.0 mod (in go.sum) is not cached" in w for w in plan.manifest.warnings)

    # The same over HTTP, for curl: GET /_admin/export?module=...
    status, body = await get(f"{a.url}/_admin/export?module=example.com/b")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = tar.getnames()
    assert names[0] == MANIFEST_NAME and "example.com/b/@v/v0.1.0.zip" in names
    assert not [n for n in names if n.startswith("example.com/a/")]
    assert (await get(f"{a.url}/_admin/export?since=someday"))[0] == 400

    later = await plan_export(a, Selection(since=parse_since("2999-01-01")))
    assert later.manifest.entries == []
    assert len(modules(await plan_export(a, Selection(since=parse_since("2000-01-01T00:00:00Z"))))) == 18


async def test_incremental_bundles_follow_a_growing_database(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path
) -> None:
    up, db = world
    a = await make_node(up.url, sumdb=spec(db))
    first = {k: v for k, v in MODS.items() if k[0] == "example.com/a"}
    await fetch_all(a.url, first)
    await a.sumdbs.dbs[0].idle()
    b1, b2 = tmp_path / "1.bundle", tmp_path / "2.bundle"
    assert (await cli(capsys, "export", "--node", a.url, "-o", str(b1)))[0] == 0

    # The database grows; A verifies a new module against the bigger tree.
    c_files = module_files("example.com/c", "v1.0.0")
    for i in range(300):  # more than a tile: new full tiles, new partial widths
        db.add(f"example.com/filler{i}", "v1.0.0", "h1:" + "A" * 43 + "=", "h1:" + "B" * 43 + "=")
    up.add_module("example.com/c", "v1.0.0", *c_files)
    db.add("example.com/c", "v1.0.0", h1_zip(c_files[2], tmp_path), dirhash.h1_gomod(c_files[1]))
    await fetch_all(a.url, {("example.com/c", "v1.0.0"): c_files})
    await a.sumdbs.dbs[0].idle()
    assert (await cli(capsys, "export", "--node", a.url, "-o", str(b2), "--since-bundle", str(b1)))[0] == 0
    m1, m2 = manifest_of(b1), manifest_of(b2)
    assert {e.module for e in m2.entries if e.kind in ("info", "mod", "zip")} == {"example.com/c"}
    kept = {e.path for e in m2.entries if e.kind not in ("sumdb-supported", "sumdb-latest")}
    assert not kept & {e.path for e in m1.entries}, kept & {e.path for e in m1.entries}
    assert m2.sumdb[0]["tree_size"] > m1.sumdb[0]["tree_size"]
    assert m2.selection["since_bundle"] == m1.created
    await up.stop()
    await db.stop()

    data = tmp_path / "b"
    for bundle in (b1, b2):
        code, report = await cli(
            capsys, "import", "--data", str(data), "--sumdb", spec(db)[0], "--offline", "--json", str(bundle)
        )
        assert code == 0, refused(report)
    b = await make_node("off", data=data, sumdb=spec(db), offline=True)
    assert b.sumdbs.dbs[0].latest is not None and b.sumdbs.dbs[0].latest.n == m2.sumdb[0]["tree_size"]
    env = go_env(tmp_path / "go", b.url, gosumdb=db.vkey)
    res = (
        await run_go(["mod", "download", "-json", "example.com/a@v1.0.0", "example.com/c@v1.0.0"], env, cwd=tmp_path)
    ).check()
    assert all("Error" not in o for o in decode_stream(res.stdout))

    # The second bundle carries what its own records need: it imports alone, too.
    code, report = await cli(
        capsys, "import", "--data", str(tmp_path / "c"), "--sumdb", spec(db)[0], "--offline", "--json", str(b2)
    )
    assert code == 0 and {e["module"] for e in report["entries"] if e["kind"] == "zip"} == {"example.com/c"}


async def test_forked_database_in_a_bundle_is_refused(  # type: ignore[no-untyped-def]
    world, make_node, capsys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up, db = world
    a = await make_node(up.url, sumdb=spec(db))
    await fetch_all(a.url, {("example.com/a", "v1.0.0"): None}, meta=False)
    await a.sumdbs.dbs[0].idle()
    b1 = tmp_path / "1.bundle"
    assert (await cli(capsys, "export", "--data", str(a.config.data), "-o", str(b1)))[0] == 0
    db.fork(index=0, grow=2)  # another history, and A2 sees only that one
    a2 = await make_node(up.url, sumdb=spec(db))
    await fetch_all(a2.url, {("example.com/b", "v0.1.0"): None}, meta=False)
    await a2.sumdbs.dbs[0].idle()
    b2 = tmp_path / "2.bundle"
    assert (await cli(capsys, "export", "--data", str(a2.config.data), "-o", str(b2)))[0] == 0

    data = tmp_path / "b"
    assert (await cli(capsys, "import", "--data", str(data), "--sumdb", spec(db)[0], "--offline", str(b1)))[0] == 0
    code, report = await cli(
        capsys, "import", "--data", str(data), "--sumdb", spec(db)[0], "--offline", "--json", str(b2)
    )
    assert code == 1
    assert "forked" in refused(report)[f"sumdb/{DB}/latest"]
    assert any(r.levelname == "ERROR" and "SECURITY" in r.getMessage() for r in caplog.records)


# ---- the format and the command line --------------------------------------------------------


async def test_long_paths_and_pax_headers_round_trip(tmp_path: Path) -> None:
    from node.tools.bundle.tar import TarWriter, once

    name = "example.com/" + "x" * 150 + "/@v/v1.0.0.zip"
    out = io.BytesIO()

    async def sink(b: bytes) -> None:
        out.write(b)

    w = TarWriter(sink)
    await w.add(MANIFEST_NAME, 2, 0, once(b"{}"))
    await w.add(name, 5, 0, once(b"hello"))
    await w.close()
    assert len(out.getvalue()) % tarfile.RECORDSIZE == 0
    out.seek(0)
    r = TarReader(FileSource(out))
    got = []
    while (m := await r.next()) is not None:
        got.append((m.name, b"".join([c async for c in r.chunks()])))
    assert got == [(MANIFEST_NAME, b"{}"), (name, b"hello")]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.getnames() == [MANIFEST_NAME, name]


async def test_cli_pipes_export_into_import(world, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`modmesh export -o - | modmesh import -` between two processes."""
    up, _ = world
    a = await make_node(up.url)
    await fetch_all(a.url, MODS)
    await a.aclose()
    python = sys.executable
    exp = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "node.cli",
        "export",
        "--data",
        str(a.config.data),
        "--sumdb",
        "off",
        "-o",
        "-",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    imp = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "node.cli",
        "import",
        "-",
        "--data",
        str(tmp_path / "b"),
        "--sumdb",
        "off",
        "--json",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert exp.stdout is not None and imp.stdin is not None
    while chunk := await exp.stdout.read(1 << 16):
        imp.stdin.write(chunk)
        await imp.stdin.drain()
    imp.stdin.close()
    out, err = await imp.communicate()
    _, exp_err = await exp.communicate()
    assert exp.returncode == 0, exp_err.decode()
    assert b"exported 18 entries" in exp_err
    assert imp.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["counts"] == {"admitted": 18, "present": 0, "refused": 0, "skipped": 0}


async def test_usage_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert (await cli(capsys, "import", "--data", str(tmp_path), str(tmp_path / "nope")))[0] == 2
    assert (await cli(capsys, "export", "--data", str(tmp_path), "-o", "x", "--since", "yesterday"))[0] == 2
    assert (await cli(capsys, "import", "--node", "http://127.0.0.1:9", "--offline", str(tmp_path)))[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (await cli(capsys, "import", "--data", str(tmp_path / "d"), str(empty)))[0] == 2
    not_bundle = tmp_path / "x.tar"
    not_bundle.write_bytes(b"hello")
    data = tmp_path / "d"
    (data / "index.sqlite").parent.mkdir(parents=True, exist_ok=True)
    (data / "index.sqlite").touch()
    code, _ = await cli(
        capsys, "export", "--data", str(data), "-o", str(tmp_path / "o"), "--since-bundle", str(not_bundle)
    )
    assert code == 2 and not (tmp_path / "o").exists()
    code, report = await cli(capsys, "import", "--data", str(tmp_path / "d"), "--json", str(not_bundle))
    assert code == 1 and report["errors"]


# ---- properties of the format -------------------------------------------------------------

_names = st.lists(
    st.from_regex(
        r"[a-z0-9.]{1,12}(/[a-zA-Z0-9!._~-]{1,40}){0,6}/@v/v[0-9]\.[0-9]\.[0-9]\.(zip|mod|info)", fullmatch=True
    ),
    min_size=1,
    max_size=6,
    unique=True,
)


class _Chunky:
    """A byte source that answers reads with arbitrary short counts."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.data, self.cuts, self.pos = data, cuts, 0

    async def read(self, n: int) -> bytes:
        step = max(1, min(n, self.cuts[self.pos % len(self.cuts)] if self.cuts else n))
        out = self.data[self.pos : self.pos + step]
        self.pos += len(out)
        return out


@settings(max_examples=60, deadline=None)
@given(
    names=_names,
    sizes=st.lists(st.integers(0, 3000), min_size=6, max_size=6),
    cuts=st.lists(st.integers(1, 1500), max_size=5),
)
def test_tar_stream_round_trips_and_its_size_is_known(names: list[str], sizes: list[int], cuts: list[int]) -> None:
    from node.tools.bundle.tar import TarWriter, once, tar_size

    members = [(n, bytes([i % 251]) * sizes[i], float(i * 1000)) for i, n in enumerate(names)]

    async def go() -> tuple[bytes, list[tuple[str, bytes]]]:
        out = io.BytesIO()

        async def sink(b: bytes) -> None:
            out.write(b)

        w = TarWriter(sink, buffer=700)
        for name, data, mtime in members:
            await w.add(name, len(data), mtime, once(data))
        await w.close()
        r = TarReader(_Chunky(out.getvalue(), cuts))
        got = []
        while (m := await r.next()) is not None:
            got.append((m.name, b"".join([c async for c in r.chunks()])))
        return out.getvalue(), got

    raw, got = asyncio.run(go())
    assert got == [(n, d) for n, d, _ in members]
    assert len(raw) == tar_size([(n, len(d), t) for n, d, t in members])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getnames() == names


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["info", "mod", "zip", "list", "sumdb-tile"]),
            st.integers(0, 1 << 40),
            st.one_of(st.none(), st.floats(0, 4e9, allow_nan=False)),
            st.one_of(st.none(), st.from_regex(r"h1:[A-Za-z0-9+/]{43}=", fullmatch=True)),
        ),
        max_size=8,
    )
)
def test_manifest_round_trips(rows: list[tuple[str, int, float | None, str | None]]) -> None:
    from node.tools.bundle.format import ManifestEntry

    entries = [
        ManifestEntry(f"p/{i}", kind, size, "ab" * 32, "m", "v1.0.0", h1, t, "db" if kind.startswith("sumdb") else "")
        for i, (kind, size, t, h1) in enumerate(rows)
    ]
    m = Manifest(
        entries,
        "2026-01-01T00:00:00Z",
        {"kind": "node", "epoch": "e", "serial": 3},
        {"everything": True},
        [{"name": "db", "tree_size": 1}],
        ["w"],
    )
    back = Manifest.from_bytes(m.to_bytes())
    assert back.entries == entries and back.origin == m.origin and back.warnings == ["w"]
