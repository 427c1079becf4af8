"""Issue 6 client access: tokens / basic auth (what .netrc sends), rate limits, admin token."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.server.access import TokenBucket
from tests.goenv import go_env, run_go
from tests.modules import module_files, module_set
from tests.test_e2e_go import decode_stream

M, V = "example.com/hello", "v1.0.0"
MODS = module_set((M, V, module_files(M, V)))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def status(url: str, headers: dict[str, str] | None = None) -> tuple[int, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        await r.read()
        return r.status, r.headers


async def test_client_credentials(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(
        up.url,
        client_tokens_file=write(tmp_path / "tokens", "# site tokens\ntok-1\ntok-2\n"),
        client_basic_file=write(tmp_path / "users", "alice:wonderland\n"),
    )
    path = f"{node.url}/{M}/@v/{V}.info"
    code, headers = await status(path)
    assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert (await status(path, {"Authorization": "Bearer tok-2"}))[0] == 200
    assert (await status(path, {"Authorization": "Bearer nope"}))[0] == 401
    basic = base64.b64encode(b"alice:wonderland").decode()
    assert (await status(path, {"Authorization": f"Basic {basic}"}))[0] == 200
    as_token = base64.b64encode(b"anyone:tok-1").decode()  # .netrc with the token as password
    assert (await status(path, {"Authorization": f"Basic {as_token}"}))[0] == 200
    assert (await status(node.url + "/healthz"))[0] == 200  # probes stay open


async def test_rate_limit_per_client(fake_proxy, make_node) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    node = await make_node(up.url, client_rate=0.5, client_burst=3)
    codes = [(await status(f"{node.url}/{M}/@v/{V}.info"))[0] for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    code, headers = await status(f"{node.url}/{M}/@v/{V}.info")
    assert code == 429 and int(headers["Retry-After"]) >= 1


def test_token_bucket_refills() -> None:
    now = [0.0]
    b = TokenBucket(rate=2, burst=2, clock=lambda: now[0], max_clients=2)
    assert [b.take("a") for _ in range(3)] == [0, 0, 0.5]
    now[0] = 0.5
    assert b.take("a") == 0
    b.take("b")
    b.take("c")  # the least recently seen client ("a") is forgotten: memory stays bounded
    assert len(b._buckets) == 2


async def test_admin_token(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    open_node = await make_node("off")
    assert (await status(open_node.url + "/_admin/nothing-here"))[0] == 404  # loopback may
    node = await make_node("off", admin_token_file=write(tmp_path / "admin", "adm1n\n"))
    assert (await status(node.url + "/_admin/nothing-here"))[0] == 401
    assert (await status(node.url + "/_admin/nothing-here", {"Authorization": "Bearer adm1n"}))[0] == 404


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modmesh test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_go_with_netrc_over_tls(fake_proxy, make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up = await fake_proxy(MODS)
    cert, key = self_signed(tmp_path)
    node = await make_node(
        up.url, tls_cert_file=cert, tls_key_file=key, client_basic_file=write(tmp_path / "users", "builder:hunter2\n")
    )
    assert node.url.startswith("https://")
    # go matches .netrc machines against the URL's host:port (so the port belongs in it).
    hostport = node.url.removeprefix("https://")
    netrc = write(tmp_path / "netrc", f"machine {hostport} login builder password hunter2\n")
    env = go_env(tmp_path / "ok", node.url, GOAUTH="netrc", NETRC=str(netrc), SSL_CERT_FILE=str(cert))
    res = (await run_go(["mod", "download", "-json", f"{M}@{V}"], env, cwd=tmp_path)).check()
    assert "Error" not in decode_stream(res.stdout)[0]
    env = go_env(tmp_path / "no", node.url, SSL_CERT_FILE=str(cert))  # GOAUTH=off: no credentials
    res = await run_go(["mod", "download", "-json", f"{M}@{V}"], env, cwd=tmp_path)
    err = decode_stream(res.stdout)[0]["Error"]
    assert "401 Unauthorized" in err and "needs credentials" in err
