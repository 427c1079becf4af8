"""Issue 6: private modules routed to their own upstream (with credentials) or `direct`."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from tests.goenv import go_env, run_go
from tests.modules import module_files, module_set
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.test_e2e_go import decode_stream
from tests.upstream_fixture import FakeProxy

SECRET_TOKEN = "s3cr3t-token-value-for-tests"
PRIVATE = "corp.example.com/secret"


class TokenProxy(FakeProxy):
    """A private GOPROXY that answers 401 without the right bearer token."""

    seen_tokens: list[str]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen_tokens.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {SECRET_TOKEN}":
            return web.Response(status=401, text="token required\n")
        return await super()._handle(request)


async def test_private_route_with_token_never_leaks(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = module_files(PRIVATE, "v1.0.0")
    corp = TokenProxy(module_set((PRIVATE, "v1.0.0", files)))
    corp.seen_tokens = []
    await corp.start()
    public = await fake_proxy({**corpus_modules, **module_set((PRIVATE, "v1.0.0", files))})
    db = FakeSumDB("sum.example.test", generate_keys("sum.example.test", seed=bytes(32)))
    db.add_corpus(corpus_modules)
    await db.start()
    try:
        token_file = tmp_path / "corp-token"
        token_file.write_text(SECRET_TOKEN + "\n")
        from node.config import Route

        node = await make_node(
            public.url,
            sumdb=(f"{db.vkey} {db.url}",),
            routes=(Route("corp.example.com", corp.url, token_file=token_file),),
            log_format="json",
        )
        caplog.set_level(logging.DEBUG)
        env = go_env(tmp_path, node.url, gosumdb=db.vkey, GONOSUMDB="corp.example.com")
        res = (
            await run_go(["mod", "download", "-json", f"{PRIVATE}@v1.0.0", "rsc.io/quote@v1.5.2"], env, cwd=tmp_path)
        ).check()
        assert all("Error" not in o for o in decode_stream(res.stdout))
        assert f"Bearer {SECRET_TOKEN}" in corp.seen_tokens
        assert corp.count(f"/{PRIVATE}/@v/v1.0.0.zip") == 1
        # Never to the public upstream, never to the checksum database, never in a log.
        assert not [p for p in public.log if "corp.example.com" in p]
        assert not [p for p in db.log if "corp.example.com" in p]
        assert public.count("/rsc.io/quote/@v/v1.5.2.zip") == 1
        assert SECRET_TOKEN not in caplog.text
        for record in caplog.records:
            assert SECRET_TOKEN not in str(getattr(record, "fields", ""))
    finally:
        await corp.stop()
        await db.stop()


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(cwd),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.test",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.test",
            "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
            "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z",
        },
    )


async def test_direct_from_a_git_server_on_loopback(  # type: ignore[no-untyped-def]
    make_node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if subprocess.run(["which", "git"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    module = "git.example.test/hello.git"  # the .git qualifier: go talks git to the host directly
    work = tmp_path / "work"
    work.mkdir()
    (work / "go.mod").write_text(f"module {module}\n\ngo 1.21\n")
    (work / "hello.go").write_text('package hello\n\nfunc Hello() string { return "hi from git" }\n')
    _git(work, "init", "-q", "-b", "main")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "first")
    _git(work, "tag", "v1.0.0")
    served = tmp_path / "srv"
    served.mkdir()
    _git(served, "clone", "-q", "--bare", str(work), "hello")  # go asks for .../hello
    _git(served / "hello", "update-server-info")

    # A plain (dumb-protocol) git HTTP server on loopback, and git told that
    # https://git.example.test/ lives there: no DNS, no hosts file needed.
    app = web.Application()
    app.router.add_static("/", served)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "http://127.0.0.1:{port}/"]\n\tinsteadOf = https://git.example.test/\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    try:
        from node.config import Route

        node = await make_node("off", routes=(Route("git.example.test", "direct"),))
        env = go_env(tmp_path / "client", node.url, GONOSUMDB="git.example.test")
        res = (await run_go(["mod", "download", "-json", f"{module}@v1.0.0"], env, cwd=tmp_path)).check()
        (out,) = decode_stream(res.stdout)
        entry = await node.index.get(module, "v1.0.0", "zip")
        assert entry is not None and entry.source == "direct" and out["Sum"] == entry.h1
        res = (await run_go(["list", "-m", "-versions", module], env, cwd=tmp_path)).check()
        assert "v1.0.0" in res.stdout.split()
        # Not there: a clean 404 the go command shows, not a 500.
        res = await run_go(["mod", "download", "-json", f"{module}@v9.9.9"], env, cwd=tmp_path)
        assert not res.ok and "404" in decode_stream(res.stdout)[0]["Error"]
    finally:
        await runner.cleanup()


async def test_direct_without_go_is_a_clear_error(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    from node.config import Route

    node = await make_node("off", routes=(Route("git.example.test", "direct"),))
    node.direct.go = None  # as on a node without the go command
    async with aiohttp.ClientSession() as s:
        async with s.get(node.url + "/git.example.test/x.git/@v/v1.0.0.info") as r:
            assert r.status == 502 and "needs the go command and git" in await r.text()
    await asyncio.sleep(0)


def test_direct_errors_name_no_address_or_directory(tmp_path: Path) -> None:
    """git's words name the URL it was sent to (after the node's insteadOf rewrites: an
    internal host, maybe with credentials) and the node's directories: clients get neither."""
    from node.cache.direct import Direct

    direct = Direct(tmp_path / "direct")
    line = (
        f"go: git.example.test/x.git@v1.0.0: git ls-remote -q origin in {tmp_path}/direct/gopath/pkg: exit status 128:"
        " fatal: repository 'https://ci:s3cret@git.corp.internal:8443/x/' not found; tried git@git.corp.internal:x.git"
    )
    assert direct.masked(line) == (
        "go: git.example.test/x.git@v1.0.0: git ls-remote -q origin in <direct>/gopath/pkg: exit status 128:"
        " fatal: repository '<upstream>' not found; tried <upstream>"
    )
