"""`modmesh serve --offline`: not one request upstream, cached modules and lists served."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.goenv import go_env, run_go
from tests.sumdb_fixture import FakeSumDB, generate_keys
from tests.test_e2e_go import decode_stream

DB = "sum.example.test"
WANTED = ["rsc.io/quote@v1.5.2", "rsc.io/sampler@v1.3.0", "golang.org/x/text@v0.0.0-20170915032832-14c0d48ead0c"]


async def test_offline_node_makes_no_upstream_requests(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_node, tmp_path: Path
) -> None:
    up = await fake_proxy(corpus_modules)
    db = FakeSumDB(DB, generate_keys(DB, seed=bytes(32)))
    db.add_corpus(corpus_modules)
    await db.start()
    try:
        data = tmp_path / "data"
        spec = (f"{db.vkey} {db.url}",)
        warm = await make_node(up.url, data=data, sumdb=spec)
        env = go_env(tmp_path / "warm", warm.url, gosumdb=db.vkey)
        (await run_go(["mod", "download", "-json", *WANTED], env, cwd=tmp_path)).check()
        (await run_go(["list", "-m", "-versions", "rsc.io/quote"], env, cwd=tmp_path)).check()
        await warm.sumdbs.dbs[0].idle()
        await warm.aclose()

        up.reset_counts()
        db.reset_counts()
        offline = await make_node(up.url, data=data, sumdb=spec, offline=True, meta_ttl=0)
        env = go_env(tmp_path / "cold", offline.url, gosumdb=db.vkey)
        res = (await run_go(["mod", "download", "-json", *WANTED], env, cwd=tmp_path)).check()
        assert all("Error" not in o for o in decode_stream(res.stdout))
        res = (await run_go(["list", "-m", "-versions", "rsc.io/quote"], env, cwd=tmp_path)).check()
        assert "v1.5.2" in res.stdout.split()
        async with aiohttp.ClientSession() as s:
            async with s.get(offline.url + "/rsc.io/quote/@v/list") as r:
                assert r.status == 200 and r.headers["X-Modmesh-Stale"] == "offline"
            async with s.get(offline.url + "/rsc.io/quote/@v/v1.0.0.zip") as r:  # never cached
                assert r.status == 404 and "offline" in await r.text()
        assert sum(up.requests.values()) == 0, up.log
        assert sum(db.requests.values()) == 0, db.log
    finally:
        await db.stop()
