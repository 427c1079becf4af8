"""Mesh authentication: HMAC signatures with timestamp and nonce, a bounded replay
window, 401 (logged, rate-limited) for everything unsigned or wrong under /_mesh/,
while the GOPROXY endpoints stay as open as the node is configured."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.auth import NONCE_HEADER, SIG_HEADER, TS_HEADER, AuthError, NonceCache, Signer, Verifier
from sync.messages import PROTOCOL, Gossip, encode_gossip
from tests.mesh_fixtures import MeshNode, wait_for

SECRET = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_signed_request_verifies_once() -> None:
    clock = Clock()
    s, v = Signer(SECRET, "node-a", clock), Verifier([SECRET], 30, clock)
    h = s.headers("POST", "/_mesh/gossip", b"body")
    assert v.verify("POST", "/_mesh/gossip", h, b"body") == "node-a"
    with pytest.raises(AuthError, match="replayed"):
        v.verify("POST", "/_mesh/gossip", h, b"body")


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"method": "GET"}, "bad-signature"),
        ({"path": "/_mesh/inventory?after=0"}, "bad-signature"),
        ({"body": b"other"}, "bad-signature"),
        ({"node": "node-b"}, "bad-signature"),
        ({"secret": b"another secret entirely, 32 byte"}, "bad-signature"),
        ({"skew": 31}, "expired"),
        ({"skew": -31}, "expired"),
        ({"drop": SIG_HEADER}, "malformed"),
        ({"drop": "all"}, "unsigned"),
        ({"ts": "soon"}, "malformed"),
    ],
)
def test_anything_changed_is_refused(change: dict[str, object], reason: str) -> None:
    clock = Clock()
    secret = change.get("secret", SECRET)
    assert isinstance(secret, bytes)
    signer = Signer(secret, "node-a", lambda: clock.t + float(change.get("skew", 0)))  # type: ignore[arg-type]
    h = signer.headers("POST", "/_mesh/gossip", b"body")
    if "node" in change:
        h["X-Modmesh-Node"] = str(change["node"])
    if "ts" in change:
        h[TS_HEADER] = str(change["ts"])
    if change.get("drop") == "all":
        h = {}
    elif "drop" in change:
        del h[str(change["drop"])]
    with pytest.raises(AuthError) as e:
        Verifier([SECRET], 30, clock).verify(
            str(change.get("method", "POST")),
            str(change.get("path", "/_mesh/gossip")),
            h,
            change.get("body", b"body"),  # type: ignore[arg-type]
        )
    assert e.value.reason == reason


@given(st.binary(max_size=64), st.text(max_size=40), st.binary(max_size=200))
def test_signatures_bind_every_field(secret: bytes, path: str, body: bytes) -> None:
    clock = Clock()
    secret = secret or b"x"
    h = Signer(secret, "n", clock).headers("GET", "/" + path, body)
    assert Verifier([secret], 30, clock).verify("GET", "/" + path, h, body) == "n"
    with pytest.raises(AuthError):
        Verifier([secret], 30, clock).verify("GET", "/" + path, h, body + b"!")


def test_secret_rotation_verifies_old_and_new() -> None:
    clock = Clock()
    v = Verifier([b"new" * 11, b"old" * 11], 30, clock)
    for key in (b"new" * 11, b"old" * 11):
        v.verify("GET", "/_mesh/status", Signer(key, "n", clock).headers("GET", "/_mesh/status"), b"")


def test_nonce_cache_expires_and_is_bounded() -> None:
    c = NonceCache(ttl=60, max_entries=3)
    for i in range(3):
        c.add(f"n{i}", now=0)
    with pytest.raises(AuthError, match="replay-cache-full"):
        c.add("n3", now=1)
    with pytest.raises(AuthError, match="replayed"):
        c.add("n0", now=59)
    c.add("n3", now=60.5)  # the first three have expired
    assert len(c) == 1
    c.add("n0", now=61)  # outside the window a nonce may come back (its timestamp cannot)


def test_nonces_only_cached_for_valid_signatures() -> None:
    clock = Clock()
    v = Verifier([SECRET], 30, clock, max_nonces=2)
    for _ in range(10):
        h = Signer(b"wrong secret, wrong secret, wrong", "x", clock).headers("GET", "/_mesh/status")
        with pytest.raises(AuthError):
            v.verify("GET", "/_mesh/status", h, b"")
    assert len(v.nonces) == 0


# ---- over HTTP -----------------------------------------------------------------------


async def _req(
    method: str, url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers, data=data) as r:
            return r.status, await r.read()


async def test_mesh_endpoints_refuse_unsigned_and_wrong(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, mesh_secret: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sync.auth")
    up = await fake_proxy(corpus_modules)
    mn: MeshNode = await make_mesh_node(up.url)
    good = Signer(mesh_secret.read_text().strip().encode(), "tester")
    bad = Signer(b"not the mesh secret at all......", "tester")

    for method, path in (
        ("GET", "/_mesh/status"),
        ("GET", "/_mesh/inventory?after=0"),
        ("POST", "/_mesh/gossip"),
        ("GET", "/_mesh/anything"),
        ("GET", "/_mesh"),
    ):
        status, body = await _req(method, mn.url + path)
        assert status == 401 and body.startswith(b"mesh authentication failed: unsigned"), (path, body)
        status, body = await _req(method, mn.url + path, bad.headers(method, path))
        assert status == 401 and b"bad-signature" in body, path
    status, body = await _req("GET", mn.url + "/_mesh/status", good.headers("GET", "/_mesh/status"))
    assert status == 200 and b'"node_id"' in body
    h = good.headers("GET", "/_mesh/status")
    assert (await _req("GET", mn.url + "/_mesh/status", h))[0] == 200
    status, body = await _req("GET", mn.url + "/_mesh/status", h)  # the same request again
    assert status == 401 and b"replayed" in body
    assert (await _req("GET", mn.url + "/_mesh/nothing", good.headers("GET", "/_mesh/nothing")))[0] == 404

    # Client-facing endpoints are as open as configured (here: open).
    assert (await _req("GET", mn.url + "/rsc.io/quote/@v/list"))[0] == 200
    metric = mn.node.metrics.registry.get_sample_value
    assert metric("modmesh_mesh_auth_failures_total", {"reason": "unsigned"}) == 5
    assert metric("modmesh_mesh_auth_failures_total", {"reason": "bad-signature"}) == 5
    assert metric("modmesh_mesh_auth_failures_total", {"reason": "replayed"}) == 1
    refused = [r for r in caplog.records if "refused mesh request" in r.getMessage()]
    # Logged, but one line per client and reason per interval: 3 lines for 11 refusals.
    assert len(refused) == 3


async def test_signed_but_foreign_or_malformed_gossip(  # type: ignore[no-untyped-def]
    make_mesh_node, mesh_secret: Path
) -> None:
    mn: MeshNode = await make_mesh_node("off")
    key = mesh_secret.read_text().strip().encode()

    async def gossip(sender: str, msg: Gossip | bytes) -> tuple[int, bytes]:
        body = msg if isinstance(msg, bytes) else encode_gossip(msg)
        return await _req(
            "POST", mn.url + "/_mesh/gossip", Signer(key, sender).headers("POST", "/_mesh/gossip", body), body
        )

    other_mesh = Gossip("x1", "elsewhere", PROTOCOL, "http://127.0.0.1:9", 5, "e", 0, 0)
    assert (await gossip("x1", other_mesh))[0] == 409
    newer = Gossip("x2", "default", PROTOCOL + 1, "http://127.0.0.1:9", 5, "e", 0, 0)
    assert (await gossip("x2", newer))[0] == 409
    spoof = Gossip("x3", "default", PROTOCOL, "http://127.0.0.1:9", 5, "e", 0, 0)
    assert (await gossip("someone-else", spoof))[0] == 400
    assert (await gossip("x4", msgpack.packb({"n": 1})))[0] == 400
    assert mn.mesh.membership.members == {}
    ok = Gossip("x5", "default", PROTOCOL, "http://127.0.0.1:9", 5, "e", 0, 0)
    status, _body = await gossip("x5", ok)
    assert status == 200 and set(mn.mesh.membership.members) == {"x5"}


async def test_peer_fetch_passes_client_access_control(  # type: ignore[no-untyped-def]
    corpus_modules, fake_proxy, make_mesh_node, tmp_path: Path
) -> None:
    """A node that requires client tokens still serves its peers: their GOPROXY requests
    are signed, and the mesh vouches for them (node.hooks.authenticators)."""
    up = await fake_proxy(corpus_modules)
    tokens = tmp_path / "tokens"
    tokens.write_text("client-token\n")
    holder: MeshNode = await make_mesh_node(up.url, client_tokens_file=tokens, mesh={"presync": False})
    auth = {"Authorization": "Bearer client-token"}
    for kind in ("info", "mod", "zip"):
        assert (await _req("GET", f"{holder.url}/rsc.io/quote/@v/v1.5.2.{kind}", auth))[0] == 200
    assert (await _req("GET", f"{holder.url}/rsc.io/quote/@v/v1.5.2.zip"))[0] == 401
    assert (await _req("GET", f"{holder.url}/rsc.io/quote/@v/v1.5.2.zip", {"X-Modmesh-Hop": "x"}))[0] == 401

    down = await fake_proxy(corpus_modules)
    down_url = down.url
    await down.stop()
    v: MeshNode = await make_mesh_node(down_url, peers=[holder.url], mesh={"presync": False})
    await wait_for(lambda: bool(v.mesh.catalog.holdings("rsc.io/quote@v1.5.2.zip")), 10, "V learns the holder")
    status, _ = await _req("GET", f"{v.url}/rsc.io/quote/@v/v1.5.2.zip")
    assert status == 200
    entry = await v.node.index.get("rsc.io/quote", "v1.5.2", "zip")
    assert entry is not None and entry.source == f"peer:{holder.mesh.node_id}"
    assert NONCE_HEADER  # (headers are part of the fixed interface)
