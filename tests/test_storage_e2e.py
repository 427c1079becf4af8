"""Acceptance for storage limits, with the real go command: a cap below the working
set keeps the store under it, keeps pinned modules, and keeps what the site builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from node.golang.modpath import escape_path, escape_version
from tests.corpus import CorpusVersion, servable
from tests.goenv import go_env, run_go
from tests.test_e2e_go import _main_module
from tests.test_storage import cached, modmesh, on_disk

pytestmark = pytest.mark.e2e

HOT = {
    ("rsc.io/quote", "v1.5.2"),
    ("rsc.io/sampler", "v1.3.0"),
    ("golang.org/x/text", "v0.0.0-20170915032832-14c0d48ead0c"),
}


def blobs_of(modules: dict[str, dict[str, tuple[bytes | None, ...]]], versions: list[CorpusVersion]) -> dict[str, int]:
    return {
        hashlib.sha256(b).hexdigest(): len(b) for cv in versions for b in modules[cv.path][cv.version] if b is not None
    }


async def test_cap_below_working_set_keeps_hot_set_and_pins(  # type: ignore[no-untyped-def]
    corpus, corpus_modules, fake_proxy, make_node, go_build_cache, tmp_path: Path
) -> None:
    versions = servable(corpus)
    hot = [cv for cv in versions if (cv.path, cv.version) in HOT]
    # Cold but pinned: rsc.io/quote's other releases. Cold and unpinned: everything
    # outside rsc.io/ (about half the corpus).
    pinned = [
        cv
        for cv in versions
        if cv.path == "rsc.io/quote" and (cv.path, cv.version) not in HOT and not cv.version.startswith("v0.")
    ]
    cold = [cv for cv in versions if not cv.path.startswith("rsc.io/") and (cv.path, cv.version) not in HOT]
    assert len(hot) == 3 and len(pinned) > 5 and len(cold) > 100
    keep = blobs_of(corpus_modules, hot + pinned)
    working_set = sum(blobs_of(corpus_modules, hot + pinned + cold).values())
    cap = sum(keep.values()) + 12_000
    assert cap < working_set / 2

    up = await fake_proxy(corpus_modules)
    node = await make_node(up.url, max_size=cap)
    rc, out, err = await modmesh("pin", "--node", node.url, "rsc.io/*")
    assert rc == 0 and "rsc.io/*: pinned" in out, err

    # The site builds its program: the first build fetches, later ones (other
    # machines, CI runs with clean caches) hit.
    src = await _main_module(tmp_path)
    env = go_env(tmp_path / "go1", node.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "hello1.bin"), "."], env, cwd=src)).check()
    hot_paths = [p for p in up.log if "/@v/" in p and not p.endswith("/list")]
    assert any(p.endswith(".zip") for p in hot_paths) and any("golang.org/x/text" in p for p in hot_paths)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            for p in hot_paths:
                async with s.get(node.url + p) as r:
                    assert r.status == 200 and r.headers["X-Modmesh-Cache"] == "hit"
        # Then many other modules pass through once each, far more than fit.
        for cv in pinned + cold:
            for kind in ("info", "mod", "zip"):
                async with s.get(f"{node.url}/{escape_path(cv.path)}/@v/{escape_version(cv.version)}.{kind}") as r:
                    await r.read()  # a few corpus versions are refused (502); that is fine here
    await node.storage.idle()

    used = (await node.index.totals()).bytes
    assert used <= cap < working_set
    assert sum(on_disk(node.config.data).values()) == used
    assert len([p for p in up.log if p.endswith(".zip")]) >= len(pinned) + len(cold) * 9 // 10
    for cv in pinned:
        for kind in ("info", "mod", "zip"):
            assert await cached(node, cv.path, cv.version, kind), (cv.key, kind)
    evicted = [cv for cv in cold if not await cached(node, cv.path, cv.version, "zip")]
    assert len(evicted) > len(cold) // 2

    # A fresh machine builds the hot set again: no request reaches the upstream...
    up.reset_counts()
    env = go_env(tmp_path / "go2", node.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "hello2.bin"), "."], env, cwd=src)).check()
    assert up.log == []
    # ...and with the upstream gone, it still builds.
    await up.stop()
    env = go_env(tmp_path / "go3", node.url, GOFLAGS="-mod=mod -modcacherw", GOCACHE=str(go_build_cache))
    (await run_go(["build", "-o", str(tmp_path / "hello3.bin"), "."], env, cwd=src)).check()
