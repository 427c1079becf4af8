"""Proof that FakeSumDB is a faithful checksum database, judged by the real go command.

No node here: go talks to FakeProxy (modules) and FakeSumDB (database) directly,
so every later test that puts a node in between tests against something go
itself accepts, and whose misbehaviour go itself rejects. Facts established
with go 1.27:

* `GOSUMDB="<vkey> http://127.0.0.1:PORT"` works: go uses an explicit URL as
  is, http included, and never asks GOPROXY for `sumdb/<name>/supported`.
* With `GOSUMDB=<vkey>` alone, go walks GOPROXY for `sumdb/<name>/supported`;
  `GOPROXY=<FakeProxy>,<FakeSumDB>` gets a 404 from the first and a 200 from
  the second, which then serves `sumdb/<name>/lookup|tile/...`.
* A lookup of a record below 256 in a tree of 267 fetched `tile/8/0/000`,
  `tile/8/1/000.p/1` and `tile/8/0/001.p/11`; never `latest` or data tiles.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.golang import modpath
from tests.conftest import FakeProxyFactory
from tests.corpus import CorpusVersion, servable
from tests.goenv import decode_stream, go_env, run_go
from tests.sumdb_fixture import (
    DbKey,
    FakeSumDB,
    ed25519_public,
    ed25519_sign,
    format_tree,
    generate_keys,
    parse_tile_path,
    tile_path,
)
from tests.upstream_fixture import Fault, ModuleSet

NAME = "sum.example.test"
HELLO = "example.com/hello"
HELLO_ZIP_H1 = "h1:RRYMUoTH0NuCZ6Uzn82AqTXx61N0Cv5l8QsjGVwQduo="
HELLO_MOD_H1 = "h1:NnGvEkTHyKKlgPcQSue0skqyqiS1EfBSAh+0WaWZYmE="
QUOTE_DEPS = [
    ("rsc.io/quote", "v1.5.2"),
    ("rsc.io/sampler", "v1.3.0"),
    ("golang.org/x/text", "v0.0.0-20170915032832-14c0d48ead0c"),
]
MAIN_GO = 'package main\n\nimport (\n\t"fmt"\n\n\t"rsc.io/quote"\n)\n\nfunc main() { fmt.Println(quote.Hello()) }\n'


async def _db(modules: ModuleSet, **kwargs: Any) -> FakeSumDB:
    db = FakeSumDB(NAME, **kwargs)
    db.add_corpus(modules)
    await db.start()
    return db


@pytest.fixture
async def sumdb(corpus_modules: ModuleSet) -> AsyncIterator[FakeSumDB]:
    """A started FakeSumDB logging the whole corpus (267 records: full and level-1 tiles)."""
    db = await _db(corpus_modules)
    try:
        yield db
    finally:
        await db.stop()


def _subset(corpus: list[CorpusVersion], modules: ModuleSet, n: int = 30) -> ModuleSet:
    """rsc.io/quote and its deps plus the first servable versions: ~30 in all."""
    keys = list(QUOTE_DEPS)
    for cv in servable(corpus):
        if len(keys) >= n:
            break
        if (cv.path, cv.version) not in keys:
            keys.append((cv.path, cv.version))
    out: dict[str, dict[str, Any]] = {}
    for path, version in keys:
        out.setdefault(path, {})[version] = modules[path][version]
    return out


# --- (f) the independent oracle's own arithmetic ------------------------------------


def _naive_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, recursively, straight from the definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two below n
    return hashlib.sha256(b"\x01" + _naive_root(leaves[:k]) + _naive_root(leaves[k:])).digest()


def test_ed25519_rfc8032_vectors() -> None:
    seed1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert ed25519_public(seed1).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert ed25519_sign(seed1, b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    seed2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
    assert ed25519_public(seed2).hex() == "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
    assert ed25519_sign(seed2, b"\x72").hex() == (
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )


def test_keys_match_go_vectors() -> None:
    skey = "PRIVATE+KEY+localhost.localdev/sumdb+00000c67+AXu6+oaVaOYuQOFrf1V59JK1owcFlJcHwwXHDfDGxSPk"
    key = DbKey.from_skey(skey)
    assert key.vkey == "localhost.localdev/sumdb+00000c67+AcTrnkbUA+TU4heY3hkjiSES/DSQniBqIeQ/YppAUtK6"
    assert key.skey == skey
    assert generate_keys(NAME).vkey != generate_keys(NAME).vkey  # random without a seed
    assert generate_keys(NAME, bytes(32)).vkey == generate_keys(NAME, bytes(32)).vkey
    for bad in ("", "a b", "a+b"):
        with pytest.raises(ValueError):
            generate_keys(bad)
    with pytest.raises(ValueError, match="hash"):
        DbKey.from_skey(skey.replace("00000c67", "00000c68"))
    with pytest.raises(ValueError, match="key is for"):
        FakeSumDB(NAME, generate_keys("other.example.test"))
    assert "AXu6" not in repr(key)


def test_lookup_bytes_match_doc_vector() -> None:
    """Notes 4.5: the exact reply go 1.27 accepted, key from seed bytes 0..31."""
    db = FakeSumDB(NAME, generate_keys(NAME, bytes(range(32))))
    assert db.add(HELLO, "v1.0.0", HELLO_ZIP_H1, HELLO_MOD_H1) == 0
    assert db.add(HELLO, "v1.0.0", HELLO_ZIP_H1, HELLO_MOD_H1) == 0  # idempotent
    with pytest.raises(ValueError, match="already logged"):
        db.add(HELLO, "v1.0.0", HELLO_MOD_H1, HELLO_MOD_H1)
    reply = db.reply_for(f"/lookup/{HELLO}@v1.0.0")
    assert reply.status == 200
    assert reply.body.decode() == (
        "0\n"
        f"{HELLO} v1.0.0 {HELLO_ZIP_H1}\n"
        f"{HELLO} v1.0.0/go.mod {HELLO_MOD_H1}\n"
        "\n"
        "go.sum database tree\n1\nPxgBmyr4Dpp5jiiLZg8AStvbeyMXPR817hsurHdOImk=\n"
        "\n"
        "— sum.example.test Q2XEiRSF2Mt7AQoMs9NxUUnoPNy7Lt5ayURZMnNzPDdLXkHv/"
        "tOZQncCe89PgITUy7HXHy33Cfka/c6omLjRl5FI1gk=\n"
    )
    assert db.reply_for("/latest").body == reply.body.split(b"\n\n", 1)[1]


def test_tile_paths() -> None:
    assert tile_path(8, 0, 1234, 256) == "tile/8/0/x001/234"
    assert tile_path(3, 4, 1234067, 1) == "tile/3/4/x001/x234/067.p/1"
    assert tile_path(8, -1, 0, 5) == "tile/8/data/000.p/5"
    for path, want in [
        ("tile/8/0/x001/234", (8, 0, 1234, 256)),
        ("tile/3/4/x001/x234/067.p/1", (3, 4, 1234067, 1)),
        ("tile/8/data/000.p/5", (8, -1, 0, 5)),
    ]:
        assert parse_tile_path(path) == want
    for bad in (
        "tile/8/0/0",
        "tile/8/0/000.p/256",
        "tile/8/0/000.p/0",
        "tile/8/0/x000/001",
        "tile/8/-1/000",
        "tile/0/0/000",
        "tile/31/0/000",
        "tile/8/0",
        "tile/8/0/1000",
        "tile/8/0/000.p/",
        "tiles/8/0/000",
        "tile/8/0/00a",
    ):
        with pytest.raises(ValueError):
            parse_tile_path(bad)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 255, 256, 257, 300, 512, 513])
def test_tiles_match_naive_tree_hash(size: int) -> None:
    db = FakeSumDB(NAME, generate_keys(NAME, bytes(32)))
    for i in range(size):
        db.add(f"example.com/m{i}", "v1.0.0", HELLO_ZIP_H1, HELLO_MOD_H1)
    recs = db.records
    for n in {0, 1, size // 2, size - 1, size}:
        assert db.tree_hash(n) == _naive_root(recs[:n]), n
    head = db.reply_for("/latest").body
    assert head.startswith(format_tree(size, _naive_root(recs)) + b"\n")

    served = 0
    for level in (0, 1, 2):
        span = 1 << (8 * level)  # leaves under one hash at this level
        for n in range(3):
            for w in (*range(1, 9), 100, 255, 256):
                path = f"/{tile_path(8, level, n, w)}"
                reply = db.reply_for(path)
                first, last = n * 256, n * 256 + w  # hash indexes at this level
                if last * span > size:
                    assert reply.status == 404, path
                    continue
                want = b"".join(_naive_root(recs[i * span : (i + 1) * span]) for i in range(first, last))
                assert (reply.status, reply.body) == (200, want), path
                assert reply.content_type == "application/octet-stream"
                served += 1
    assert served > 0
    data = db.reply_for(f"/{tile_path(8, -1, 0, min(size, 256))}")
    assert data.body == b"".join(r + b"\n" for r in recs[:256])
    assert data.content_type.startswith("text/plain")
    assert db.reply_for(f"/{tile_path(8, -1, 0, size % 256 + 1)}").status == (200 if size >= 256 else 404)
    assert db.reply_for("/tile/4/0/000.p/1").status == 404  # only H=8, like sum.golang.org
    assert db.reply_for("/tile/8/0/0").status == 400


def test_level_two_tile() -> None:
    """65,536 records: the first hash tile of level 2 (L=2 covers 2^16 leaves per hash)."""
    size = (1 << 16) + 3
    db = FakeSumDB(NAME, generate_keys(NAME, bytes(32)))
    db.records.extend(b"r%d\n" % i for i in range(size))  # raw texts: only hashing is under test
    root16 = _naive_root(db.records[: 1 << 16])
    assert db.tile(8, 2, 0, 1) == root16
    assert db.tile(8, 2, 0, 2) is None
    assert db.tree_hash() == _naive_root(db.records)
    assert db.tile(8, 1, 0, 256) is not None and db.tile(8, 1, 1, 1) is None
    assert db.tile(8, 0, 256, 3) == b"".join(hashlib.sha256(b"\x00" + r).digest() for r in db.records[-3:])
    assert db.tile(8, 0, 256, 4) is None


# --- HTTP behaviour -------------------------------------------------------------------


async def test_http_endpoints(corpus_modules: ModuleSet, sumdb: FakeSumDB) -> None:
    db = sumdb
    assert db.size == 267 > 256
    quote = db.record("rsc.io/QUOTE", "v1.5.3-PRE")
    assert quote is not None
    async with aiohttp.ClientSession() as s:
        for base in (db.url, db.db_url):
            async with s.get(f"{base}/lookup/rsc.io/%21q%21u%21o%21t%21e@v1.5.3-%21p%21r%21e") as r:
                body = await r.read()
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                rid, rest = body.split(b"\n", 1)
                assert db.records[int(rid)] == quote and rest.startswith(quote + b"\n")
            async with s.get(f"{base}/latest") as r:
                assert await r.read() == db.signed_tree()
            async with s.get(f"{base}/tile/8/1/000.p/1") as r:
                assert (r.status, await r.read()) == (200, db.tile(8, 1, 0, 1))
            async with s.get(f"{base}/tile/8/0/001") as r:
                assert r.status == 404  # 267 records: tile 1 of level 0 is partial
            async with s.get(f"{base}/lookup/example.com/nope@v1.0.0") as r:
                assert r.status == 404 and (await r.text()).startswith("not found: example.com/nope@v1.0.0")
            async with s.get(f"{base}/lookup/rsc.io/quote@latest") as r:
                assert r.status == 400
            async with s.get(f"{base}/tile/8/0/00") as r:
                assert r.status == 400
        async with s.get(f"{db.url}/sumdb/{NAME}/supported") as r:
            assert r.status == 200
        for path in ("/supported", "/sumdb/sum.golang.org/supported", "/rsc.io/quote/@v/list"):
            async with s.get(db.url + path) as r:
                assert r.status == 404, path
    assert db.count("/latest") == 2
    assert db.count(f"/sumdb/{NAME}/supported") == 1
    assert "/lookup/rsc.io/!q!u!o!t!e@v1.5.3-!p!r!e" in db.log

    db.inject("/lookup/", Fault.status(503, b"db down\n"), times=1)
    db.reset_counts()
    async with aiohttp.ClientSession() as s:
        for want in (503, 200):
            async with s.get(f"{db.url}/lookup/rsc.io/quote@v1.5.2") as r:
                assert r.status == want
    assert db.count("/lookup/rsc.io/quote@v1.5.2") == 2 and len(db.log) == 2

    url, port = db.url, db.port
    await db.stop()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with s.get(f"{url}/latest"):
                pass
        await db.start()
        assert db.port == port
        async with s.get(f"{url}/latest") as r:
            assert r.status == 200


async def test_modules_mode_and_run(corpus_modules: ModuleSet) -> None:
    """With modules= one server is a GOPROXY plus its database."""
    async with FakeSumDB(NAME, modules=corpus_modules).run() as db:
        async with aiohttp.ClientSession() as s, s.get(f"{db.url}/rsc.io/quote/@v/v1.5.2.mod") as r:
            assert r.status == 200
    assert not db.running


# --- (a) (b) the real go command accepts it ------------------------------------------


@pytest.mark.e2e
async def test_go_verifies_against_fixture(
    corpus: list[CorpusVersion],
    corpus_modules: ModuleSet,
    sumdb: FakeSumDB,
    fake_proxy: FakeProxyFactory,
    go_build_cache: Path,
    tmp_path: Path,
) -> None:
    """GOSUMDB="<vkey> http://...": ~30 downloads and a build, all verified; 267 records."""
    subset = _subset(corpus, corpus_modules)
    fp = await fake_proxy(subset)
    env = go_env(tmp_path, fp.url, sumdb.gosumdb, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    keys = [f"{p}@{v}" for p, vs in subset.items() for v in vs]
    assert len(keys) == 30
    res = await run_go(["mod", "download", "-json", *keys], env, cwd=tmp_path)
    got = {(o["Path"], o["Version"]): o for o in decode_stream(res.stdout)}
    assert not {k: o["Error"] for k, o in got.items() if o.get("Error")}
    res.check()
    for (path, version), o in got.items():
        assert sumdb.record(path, version) == (
            f"{path} {version} {o['Sum']}\n{path} {version}/go.mod {o['GoModSum']}\n".encode()
        )
    lookups = [p for p in sumdb.log if p.startswith("/lookup/")]
    assert len(lookups) == len(set(lookups)) == 30
    assert f"/lookup/{modpath.escape_path('rsc.io/quote')}@v1.5.2" in lookups
    # 267 records: a record below 256 needs the full level-0 tile and a level-1 tile.
    tiles = {p for p in sumdb.log if p.startswith("/tile/")}
    assert {"/tile/8/0/000", "/tile/8/1/000.p/1", "/tile/8/0/001.p/11"} <= tiles
    assert not [p for p in sumdb.log if p == "/latest" or "/data/" in p]
    assert not [p for p in fp.log if "sumdb" in p]  # an explicit URL skips proxy discovery
    head = (tmp_path / "gopath" / "pkg" / "sumdb" / NAME / "latest").read_bytes()
    assert head == sumdb.signed_tree()

    main = tmp_path / "main"
    main.mkdir()
    (main / "go.mod").write_text("module example.com/main\n\ngo 1.21\n")
    (main / "main.go").write_text(MAIN_GO)
    (await run_go(["build", "-o", "hello", "."], env, cwd=main)).check()
    gosum = (main / "go.sum").read_text().splitlines()
    assert len(gosum) == 6
    for path, version in QUOTE_DEPS:
        record = sumdb.record(path, version)
        assert record is not None
        assert set(record.decode().splitlines()) <= set(gosum)
    proc = await asyncio.create_subprocess_exec(
        str(main / "hello"), env={"PATH": os.defpath}, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.decode().strip() == "Hello, world."


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["proxy-then-db", "one-server"])
async def test_go_reaches_db_through_goproxy(
    layout: str, corpus_modules: ModuleSet, fake_proxy: FakeProxyFactory, tmp_path: Path
) -> None:
    """GOSUMDB=<vkey> alone: go finds the database at $GOPROXY/sumdb/<name>/."""
    quote = {p: {v: corpus_modules[p][v]} for p, v in QUOTE_DEPS}
    if layout == "proxy-then-db":
        fp = await fake_proxy(quote)
        db = await _db(quote)
        goproxy = f"{fp.url},{db.url}"
    else:
        fp = None
        db = FakeSumDB(NAME, modules=quote)
        db.add_corpus(quote)
        await db.start()
        goproxy = db.url
    try:
        env = go_env(tmp_path, goproxy, db.vkey)
        keys = [f"{p}@{v}" for p, v in QUOTE_DEPS]
        (await run_go(["mod", "download", "-json", *keys], env, cwd=tmp_path)).check()
        prefix = f"/sumdb/{NAME}"
        assert db.count(f"{prefix}/supported") == 1
        assert sum(p.startswith(f"{prefix}/lookup/") for p in db.log) == 3
        assert f"{prefix}/tile/8/0/000.p/3" in db.log
        assert not [p for p in db.log if p.startswith(("/lookup/", "/tile/"))]
        if fp is not None:
            assert fp.count(f"{prefix}/supported") == 1  # 404 there, so go moved on
            assert not [p for p in db.log if "/@v/" in p]  # modules all came from fp
    finally:
        await db.stop()


# --- (c) (d) (e) misbehaviour the go command must catch ------------------------------


@pytest.mark.e2e
async def test_go_catches_corrupt_record(
    corpus_modules: ModuleSet, sumdb: FakeSumDB, fake_proxy: FakeProxyFactory, tmp_path: Path
) -> None:
    fp = await fake_proxy(corpus_modules)
    good = sumdb.record("rsc.io/quote", "v1.5.2")
    rid = sumdb.corrupt_record("rsc.io/quote", "v1.5.2")
    bad = sumdb.record("rsc.io/quote", "v1.5.2")
    assert good is not None and bad is not None
    assert rid == 267 and bad == sumdb.records[rid] != good
    assert sumdb.records.index(good) < 267  # appended: the log stays append-only
    assert bad.split(b"\n")[1] == good.split(b"\n")[1]
    with pytest.raises(KeyError):
        sumdb.corrupt_record("example.com/nope", "v1.0.0")
    env = go_env(tmp_path, fp.url, sumdb.gosumdb)
    res = await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
    assert res.returncode != 0
    err = decode_stream(res.stdout)[0]["Error"]
    assert "verifying module: checksum mismatch" in err and "SECURITY ERROR" in err
    assert f"{NAME}: {bad.split()[2].decode()}" in err
    # The go.mod line was untouched, so the .mod passed and only the zip was refused.
    assert decode_stream(res.stdout)[0]["GoModSum"] == good.split()[5].decode()


@pytest.mark.e2e
async def test_go_refuses_wrong_signer(
    corpus_modules: ModuleSet, sumdb: FakeSumDB, fake_proxy: FakeProxyFactory, tmp_path: Path
) -> None:
    fp = await fake_proxy(corpus_modules)
    sumdb.sign_with(generate_keys(NAME))  # same name, other key: its signature is unknown
    env = go_env(tmp_path, fp.url, sumdb.gosumdb)
    res = await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
    assert res.returncode != 0
    assert "reading tree note: note has no verifiable signatures" in res.stdout
    sumdb.sign_with(None)
    (await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)).check()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("fork", "needle"),
    [
        ({}, "go.sum database server misbehavior detected!"),
        ({"grow": 0}, "go.sum database server misbehavior detected!"),
        ({"index": 0, "grow": 0}, "go.sum database server misbehavior detected!"),
        ({"index": 0}, "checking tree#267 against tree#268: downloaded inconsistent tile"),
        ({"keep_published_tiles": False}, "initializing sumdb.Client: checking tree#267: downloaded inconsistent tile"),
    ],
    ids=["last-grow", "last-same-size", "first-same-size", "first-grow", "tiles-rewritten"],
)
async def test_go_detects_fork(
    fork: dict[str, Any],
    needle: str,
    corpus_modules: ModuleSet,
    sumdb: FakeSumDB,
    fake_proxy: FakeProxyFactory,
    tmp_path: Path,
) -> None:
    """go remembers the head in GOPATH/pkg/sumdb; a second run with a fresh module cache
    (so no cached tiles or lookups help) meets the forked log."""
    fp = await fake_proxy(corpus_modules)
    first = go_env(tmp_path / "one", fp.url, sumdb.gosumdb)
    (await run_go(["mod", "download", "rsc.io/quote@v1.5.2"], first, cwd=tmp_path)).check()
    old_head, old_root = sumdb.signed_tree(), sumdb.tree_hash()
    sumdb.fork(**fork)
    assert sumdb.size == 267 + fork.get("grow", 1)
    assert sumdb.tree_hash(267) != old_root
    second = go_env(tmp_path / "two", fp.url, sumdb.gosumdb, GOPATH=first["GOPATH"])
    res = await run_go(["mod", "download", "-json", "rsc.io/sampler@v1.3.0"], second, cwd=tmp_path)
    assert res.returncode != 0
    assert needle in res.stdout + res.stderr
    if "misbehavior" in needle:
        assert res.stderr.startswith("SECURITY ERROR\n")
        assert old_head.decode().split("\n")[2] in res.stderr  # the old root is quoted
    # A client without history has nothing to compare: a fork that only adds new
    # tile widths (or rewrites every tile) looks like an honest log to it. The other
    # forks serve published tiles that cannot match the new heads, which anyone notices.
    fresh = go_env(tmp_path / "three", fp.url, sumdb.gosumdb)
    res = await run_go(["mod", "download", "rsc.io/sampler@v1.3.0"], fresh, cwd=tmp_path)
    assert res.ok == (fork in ({}, {"keep_published_tiles": False})), res.stderr


@pytest.mark.e2e
async def test_go_reports_injected_fault(
    corpus_modules: ModuleSet, sumdb: FakeSumDB, fake_proxy: FakeProxyFactory, tmp_path: Path
) -> None:
    fp = await fake_proxy(corpus_modules)
    sumdb.inject(r"/tile/8/1/", Fault.status(500, b"tile store down\n"))
    env = go_env(tmp_path, fp.url, sumdb.gosumdb)
    res = await run_go(["mod", "download", "-json", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
    assert res.returncode != 0
    assert "500 Internal Server Error" in res.stdout and "tile store down" in res.stdout


# --- script mode --------------------------------------------------------------------


async def test_script_mode(corpus: list[CorpusVersion]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.sumdb_fixture",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "00" * 32,
        cwd=str(Path(__file__).resolve().parent.parent),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        vkey = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        assert vkey == generate_keys(NAME, bytes(32)).vkey
        async with aiohttp.ClientSession() as s, s.get(f"{url}/latest") as r:
            body = await r.read()
        empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
        assert body.startswith(f"go.sum database tree\n0\n{empty}\n\n".encode())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
