"""GOPROXY parsing, the circuit breaker and the fallback walk over real servers."""

from __future__ import annotations

import aiohttp
import pytest

from node.cache.upstream import (
    CircuitBreaker,
    GoproxyError,
    Timeouts,
    build_chain,
    parse_goproxy,
    redact,
)
from node.errors import LookupDisabled, NotFound, UpstreamError, UpstreamTimeout
from node.metrics import Metrics
from tests.upstream_fixture import Fault


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("https://a", [("https://a", False)]),
        ("https://a/,https://b|https://c", [("https://a", False), ("https://b", True), ("https://c", False)]),
        (" https://a , ,http://b:8080/prefix/ ", [("https://a", False), ("http://b:8080/prefix", False)]),
        ("127.0.0.1:8411", [("https://127.0.0.1:8411", False)]),
        ("https://a|off,https://b", [("https://a", True), ("off", False)]),
        ("off", [("off", False)]),
        ("https://a,direct,https://b", [("https://a", False), ("direct", False)]),
    ],
)
def test_parse_goproxy(value: str, want: list[tuple[str, bool]]) -> None:
    assert [(e.target, e.fallthrough_on_error) for e in parse_goproxy(value)] == want


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (",", "no entries"),
        ("", "no entries"),
        ("ftp://a", "scheme"),
        ("file:///srv/goproxy", "scheme"),
        ("http://user:pw@a", "refusing to pass credentials"),
        ("https://", "no host"),
    ],
)
def test_parse_goproxy_rejects(value: str, reason: str) -> None:
    with pytest.raises(GoproxyError, match=reason):
        parse_goproxy(value)


def test_redact_masks_credentials() -> None:
    assert redact("https://user:secret@example.com/p") == "https://***@example.com/p"
    assert "secret" not in redact("https://:secret@example.com:8443")


def test_breaker_opens_probes_and_closes() -> None:
    now = [0.0]
    b = CircuitBreaker(threshold=2, reset_after=10, clock=lambda: now[0])
    assert b.allow() and not b.failure()
    assert b.allow() and b.failure()  # second consecutive failure opens it
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half-open"
    assert b.allow()  # one probe...
    assert not b.allow()  # ...and only one
    assert b.failure()  # failed probe re-opens for another interval
    assert not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.failures == 0


MOD = {"example.com/m": {"v1.0.0": (b'{"Version":"v1.0.0"}', b"module example.com/m\n", None)}}


async def _fetch(chain, path="example.com/m/@v/v1.0.0.info"):  # type: ignore[no-untyped-def]
    async def consume(up, resp):  # type: ignore[no-untyped-def]
        return await resp.read()

    return await chain.fetch(path, consume, small=True)


@pytest.fixture
async def session():  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        yield s


def _chain(value: str, session: aiohttp.ClientSession, **kw: float):  # type: ignore[no-untyped-def]
    return build_chain(
        value,
        session,
        Timeouts(connect=1, read=kw.get("read", 1), small_total=5),
        Metrics(),
        int(kw.get("threshold", 3)),
        kw.get("reset", 30),
    )


async def test_comma_falls_through_on_404_only(fake_proxy, session) -> None:  # type: ignore[no-untyped-def]
    a, b = await fake_proxy({}), await fake_proxy(MOD)
    body, up = await _fetch(_chain(f"{a.url},{b.url}", session))
    assert body == b'{"Version":"v1.0.0"}' and up.base == b.url

    a.inject("v1.0.0.info", Fault.status(500))
    with pytest.raises(UpstreamError, match="answered 500"):
        await _fetch(_chain(f"{a.url},{b.url}", session))
    assert b.count("v1.0.0.info") == 1  # only the first, successful walk reached b


async def test_pipe_falls_through_on_any_error(fake_proxy, session) -> None:  # type: ignore[no-untyped-def]
    a, b = await fake_proxy(MOD), await fake_proxy(MOD)
    a.inject("v1.0.0.info", Fault.reset_mid_body())
    _body, up = await _fetch(_chain(f"{a.url}|{b.url}", session))
    assert up.base == b.url


async def test_not_found_everywhere_and_off(fake_proxy, session) -> None:  # type: ignore[no-untyped-def]
    a = await fake_proxy({})
    with pytest.raises(NotFound):
        await _fetch(_chain(a.url, session))
    with pytest.raises(LookupDisabled, match="GOPROXY=off"):
        await _fetch(_chain(f"{a.url},off", session))


async def test_best_error_is_latest_real_failure(fake_proxy, session) -> None:  # type: ignore[no-untyped-def]
    a, b = await fake_proxy(MOD), await fake_proxy({})
    a.inject("v1.0.0.info", Fault.status(503))
    with pytest.raises(UpstreamError, match="503"):  # not b's 404
        await _fetch(_chain(f"{a.url}|{b.url}", session))


async def test_breaker_costs_one_timeout_per_interval(fake_proxy, session) -> None:  # type: ignore[no-untyped-def]
    a = await fake_proxy(MOD)
    a.inject("v1.0.0.info", Fault.hang())
    chain = _chain(a.url, session, read=0.3, threshold=1, reset=60)
    with pytest.raises(UpstreamTimeout):
        await _fetch(chain)
    for _ in range(20):  # the breaker is open: no request reaches the dead upstream
        with pytest.raises(UpstreamError, match="not retried"):
            await _fetch(chain)
    assert a.count("v1.0.0.info") == 1
