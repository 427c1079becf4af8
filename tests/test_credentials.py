"""Issue 18: a malformed credential is a 401, never a 500 or a logged traceback, on
every protected route (GOPROXY with client tokens / basic auth, /_admin/ with the admin
token, the mesh's signed /_mesh/ requests and its signed GOPROXY requests).

Credentials are sent as raw bytes over a socket: a client library would refuse (or
re-encode) most of them, but anyone can write them to the node's port."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest

from node.server.access import AccessPolicy
from sync.auth import NODE_HEADER, NONCE_HEADER, SIG_HEADER, TS_HEADER, AuthError, Signer, Verifier
from tests.mesh_fixtures import MeshNode
from tests.modules import module_files, module_set

M, V = "example.com/hello", "v1.0.0"
MODS = module_set((M, V, module_files(M, V)))
PATH = f"/{M}/@v/{V}.info"


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


#: Authorization header values (raw bytes on the wire) that must all be refused.
BAD_CLIENT = [
    b"Bearer tok-\xc3\xa9",  # UTF-8 non-ASCII
    b"Bearer tok-\xe9",  # latin-1 (invalid UTF-8: a surrogate once decoded)
    b"Bearer " + "тoken".encode(),
    b"Basic " + b64("alice:wönderland".encode()),  # right user, non-ASCII password
    b"Basic " + b64("ålice:wonderland".encode()),  # non-ASCII user
    b"Basic " + b64(b"alice:\xff\xfe"),  # password not UTF-8
    b"Basic " + b64(b"\xffalice:wonderland"),
    b"Basic " + b64("anyone:tok-é".encode()),  # token as password, non-ASCII
    b"Basic " + b64(b"alicewonderland"),  # no colon
    b"Basic !!!not-base64!!!",
    b"Basic " + b64(b"alice:wonderland")[:-2],  # bad padding
    b"Basic \xc3\xa9\xc3\xa9",
    b"Basic",
    b"Bearer",
    b"Bearer " + b"t" * 8000,  # oversized
    b"Basic " + b64(b"alice:" + b"w" * 5000),
    b"\xc3\xa9 tok-1",  # non-ASCII scheme
]


async def raw_get(port: int, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One GET with these exact header bytes; (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    writer.write(head)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at error level and no traceback: a refused credential is not an incident."""
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [(r.name, r.getMessage()) for r in loud]


async def test_malformed_client_credentials_are_401(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "tokens").write_text("tok-1\n")
    (tmp_path / "users").write_text("alice:wonderland\n")
    up = await fake_proxy(MODS)
    node = await make_node(up.url, client_tokens_file=tmp_path / "tokens", client_basic_file=tmp_path / "users")
    port = port_of(node.url)
    for value in BAD_CLIENT:
        status, body = await raw_get(port, PATH, [(b"Authorization", value)])
        assert status == 401, (value[:40], status, body)
        assert body == b"this module proxy needs credentials (token or .netrc)\n\n", value[:40]
    # The good ones still pass, byte for byte.
    assert (await raw_get(port, PATH, [(b"Authorization", b"Bearer tok-1")]))[0] == 200
    assert (await raw_get(port, PATH, [(b"Authorization", b"Basic " + b64(b"alice:wonderland"))]))[0] == 200
    assert (await raw_get(port, PATH, [(b"Authorization", b"Basic " + b64(b"x:tok-1"))]))[0] == 200
    assert_quiet(caplog)


async def test_non_ascii_configured_credentials_match_as_utf8_bytes(  # type: ignore[no-untyped-def]
    fake_proxy, make_node, tmp_path: Path
) -> None:
    """Credentials are compared as bytes: a configured non-ASCII token or password is
    matched by its UTF-8 bytes (what a client sends), and nothing else."""
    (tmp_path / "tokens").write_text("tøken\n", encoding="utf-8")
    (tmp_path / "users").write_text("jürgen:pässword\n", encoding="utf-8")
    up = await fake_proxy(MODS)
    node = await make_node(up.url, client_tokens_file=tmp_path / "tokens", client_basic_file=tmp_path / "users")
    port = port_of(node.url)
    ok = [b"Bearer " + "tøken".encode(), b"Basic " + b64("jürgen:pässword".encode())]
    for value in ok:
        assert (await raw_get(port, PATH, [(b"Authorization", value)]))[0] == 200, value
    for value in (b"Bearer " + "tøken".encode("latin-1"), b"Basic " + b64("jürgen:pässword".encode("latin-1"))):
        assert (await raw_get(port, PATH, [(b"Authorization", value)]))[0] == 401, value


async def test_malformed_admin_token_is_401(  # type: ignore[no-untyped-def]
    make_node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "admin").write_text("adm1n\n")
    node = await make_node("off", admin_token_file=tmp_path / "admin")
    port = port_of(node.url)
    for value in (b"Bearer adm\xc3\xadn", b"Bearer \xe9", b"Bearer " + b"a" * 8000, b"Basic " + b64(b"x:adm1n")):
        status, body = await raw_get(port, "/_admin/nothing-here", [(b"Authorization", value)])
        assert status == 401 and body.startswith(b"admin endpoints need the admin token"), (value[:30], status, body)
    assert (await raw_get(port, "/_admin/nothing-here", [(b"Authorization", b"Bearer adm1n")]))[0] == 404
    assert_quiet(caplog)


def _signed(secret: bytes, path: str, **change: bytes) -> list[tuple[bytes, bytes]]:
    h = {k.encode(): v.encode() for k, v in Signer(secret, "tester").headers("GET", path).items()}
    for name, value in change.items():
        h[name.encode()] = value
    return list(h.items())


def bad_signatures(secret: bytes, path: str) -> list[list[tuple[bytes, bytes]]]:
    good = dict(_signed(secret, path))
    sig = good[SIG_HEADER.encode()]
    return [
        _signed(secret, path, **{SIG_HEADER: sig[:-2] + "é".encode()}),
        _signed(secret, path, **{SIG_HEADER: sig[:-1] + b"\xff"}),
        _signed(secret, path, **{SIG_HEADER: "é".encode() * 32}),
        _signed(secret, path, **{SIG_HEADER: sig.upper()}),
        _signed(secret, path, **{SIG_HEADER: sig + b"00"}),
        _signed(secret, path, **{NODE_HEADER: "tëster".encode()}),
        _signed(secret, path, **{NODE_HEADER: b"t\xffster"}),
        _signed(secret, path, **{NONCE_HEADER: "nönce-nönce-nönce".encode()}),
        _signed(secret, path, **{NONCE_HEADER: b"\xff" * 16}),
        _signed(secret, path, **{TS_HEADER: "١٧٠٠٠٠٠٠٠٠".encode()}),  # Arabic-Indic digits: int() takes them
        _signed(secret, path, **{TS_HEADER: b"\xff"}),
        _signed(secret, path, **{TS_HEADER: b"9" * 400}),
        _signed(secret, path, **{SIG_HEADER: b"a" * 5000}),
    ]


async def test_malformed_mesh_signatures_are_401(  # type: ignore[no-untyped-def]
    make_mesh_node, mesh_secret: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "tokens").write_text("client-token\n")
    mn: MeshNode = await make_mesh_node("off", client_tokens_file=tmp_path / "tokens", mesh={"presync": False})
    secret = mesh_secret.read_text().strip().encode()
    port = port_of(mn.url)
    for headers in bad_signatures(secret, "/_mesh/status"):
        status, body = await raw_get(port, "/_mesh/status", headers)
        assert status == 401 and body.startswith(b"mesh authentication failed: "), (headers, status, body)
    # A peer's signed GOPROXY request (the hop header) on a node that needs client tokens.
    for headers in bad_signatures(secret, PATH):
        status, body = await raw_get(port, PATH, [*headers, (b"X-Modmesh-Hop", b"tester")])
        assert status == 401 and body.startswith(b"this module proxy needs credentials"), (headers, status, body)
    good = _signed(secret, "/_mesh/status")
    assert (await raw_get(port, "/_mesh/status", good))[0] == 200
    assert_quiet(caplog)


@pytest.mark.parametrize(
    "field, value",
    [
        (SIG_HEADER, "é" * 64),
        (SIG_HEADER, "\udcff" * 64),  # what aiohttp makes of invalid UTF-8 (surrogateescape)
        (NODE_HEADER, "nöde"),
        (NODE_HEADER, "n\udcffde"),
        (NONCE_HEADER, "\udcff" * 12),
        (TS_HEADER, "١٧٠٠٠٠٠٠٠٠"),
        (TS_HEADER, " 1700000000"),
        (TS_HEADER, "1_700_000_000"),
    ],
)
def test_verifier_refuses_non_ascii_fields_as_malformed(field: str, value: str) -> None:
    clock = lambda: 1_700_000_000.0  # noqa: E731
    headers = Signer(b"s" * 32, "node-a", clock).headers("GET", "/_mesh/status")
    headers[field] = value
    with pytest.raises(AuthError) as e:
        Verifier([b"s" * 32], 30, clock).verify("GET", "/_mesh/status", headers, b"")
    assert e.value.reason == "malformed"


def test_verifier_survives_a_path_aiohttp_decoded_with_surrogates() -> None:
    clock = lambda: 1_700_000_000.0  # noqa: E731
    headers = Signer(b"s" * 32, "node-a", clock).headers("GET", "/_mesh/x")
    with pytest.raises(AuthError):
        Verifier([b"s" * 32], 30, clock).verify("GET", "/_mesh/\udcffx", headers, b"")


def test_policy_compares_bytes() -> None:
    """The comparison itself, without HTTP: str with any code point, never a TypeError."""
    policy = AccessPolicy(tokens=frozenset({"tok-1", "tøken"}), users={"alice": "wonderland"}, admin_token="adm1n")
    assert policy.token_ok("tok-1") and policy.token_ok("tøken")
    for bad in ("tök-1", "\udcff", "", "tok-1\x00", "x" * 10000):
        assert not policy.token_ok(bad)
