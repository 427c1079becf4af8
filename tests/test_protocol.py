"""Request parsing: table tests, and hypothesis over hostile paths (pure and over HTTP)."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from node.cache.protocol import MAX_REQUEST_PATH, ModRequest, canonical_request, parse_request, request_of
from node.errors import InvalidRequest, NotFound
from node.golang import modpath, semver
from tests.node_fixtures import node_config


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/rsc.io/quote/@v/list", ModRequest("rsc.io/quote", "", "list")),
        ("/rsc.io/quote/@latest", ModRequest("rsc.io/quote", "", "latest")),
        ("/rsc.io/!q!u!o!t!e/@v/v1.5.3-!p!r!e.info", ModRequest("rsc.io/QUOTE", "v1.5.3-PRE", "info")),
        (
            "/github.com/!azure/go/@v/v2.0.0+incompatible.zip",
            ModRequest("github.com/Azure/go", "v2.0.0+incompatible", "zip"),
        ),
        ("/gopkg.in/yaml.v2/@v/v2.4.0.mod", ModRequest("gopkg.in/yaml.v2", "v2.4.0", "mod")),
        ("/example.com/m/v2/@v/v2.1.0.zip", ModRequest("example.com/m/v2", "v2.1.0", "zip")),
    ],
)
def test_parse_valid(path: str, want: ModRequest) -> None:
    got = parse_request(path)
    assert got == want
    assert "/" + got.upstream_path == path


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/rsc.io/quote/@v/master.info", "master"),
        ("/rsc.io/quote/@v/v1.5.info", "v1.5"),
        ("/rsc.io/quote/@v/v1.5.2+meta.info", "v1.5.2+meta"),
        ("/rsc.io/quote/@v/5d9f230b.info", "5d9f230b"),
        ("/rsc.io/quote/@v/!release-1.0.info", "Release-1.0"),
        ("/rsc.io/quote/@v/latest.info", "latest"),
        ("/rsc.io/breaker/@v/v2.0.0.info", "v2.0.0"),  # may resolve to v2.0.0+incompatible
    ],
)
def test_info_of_a_non_canonical_version_is_a_query(path: str, query: str) -> None:
    req = parse_request(path)
    assert req.version == query and req.kind == "query" and not req.versioned
    assert req.upstream_path == path.lstrip("/")  # asked upstream exactly as the go command asked


@pytest.mark.parametrize(
    ("path", "error", "text"),
    [
        ("/rsc.io/Quote/@v/list", InvalidRequest, "invalid module path"),  # bare uppercase
        ("/rsc.io/quote!/@v/list", InvalidRequest, "invalid module path"),  # dangling !
        ("/rsc.io/../etc/@v/list", InvalidRequest, "invalid module path"),
        ("/../../etc/passwd/@v/list", InvalidRequest, "invalid module path"),
        ("/rsc.io//quote/@v/list", InvalidRequest, "invalid module path"),
        ("/quote/@v/list", InvalidRequest, "invalid module path"),  # no dot in first element
        ("/rsc.io/quote/@v/v1.5.!2.info", InvalidRequest, "invalid version"),
        ("/rsc.io/quote/@v/master.mod", NotFound, "not a canonical version"),
        ("/rsc.io/quote/@v/v1.5.zip", NotFound, "not a canonical version"),
        ("/rsc.io/quote/@v/v1.5.2+meta.zip", NotFound, "not a canonical version"),
        ("/rsc.io/quote/@v/v2.0.0.zip", NotFound, "v2"),  # major version does not fit the path
        ("/rsc.io/quote/@v/v1.5.2.tar.gz", NotFound, "unknown file"),
        ("/rsc.io/quote/@v/", NotFound, "unknown file"),
        ("/rsc.io/quote", NotFound, "not a module proxy path"),
        ("/" + "a" * (MAX_REQUEST_PATH + 1), InvalidRequest, "longer than"),
    ],
)
def test_parse_invalid(path: str, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text) as e:
        parse_request(path)
    assert "\n" not in str(e.value)


_piece = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "",
            "!",
            "!a",
            "%2e",
            "~1",
            "CON",
            "a.b",
            "@v",
            "@latest",
            "v1.0.0",
            "list",
            "x.info",
            "y.zip",
            "\x00",
            "é",
            "A",
            "+",
            " ",
            "\\",
        ]
    ),
    st.text(max_size=12),
)
_paths = st.one_of(
    st.text(max_size=300),
    st.lists(_piece, max_size=10).map(lambda parts: "/" + "/".join(parts)),
    st.tuples(st.lists(_piece, max_size=5), st.text(max_size=20), st.sampled_from(["info", "mod", "zip", "x"])).map(
        lambda t: "/" + "/".join(["example.com", *t[0]]) + f"/@v/{t[1]}.{t[2]}"
    ),
)


@settings(max_examples=1500, deadline=None)
@given(_paths)
def test_parse_never_fails_badly(path: str) -> None:
    """Any text either parses into something Go itself accepts, or is a clean 4xx."""
    try:
        req = parse_request(path)
    except (InvalidRequest, NotFound) as e:
        assert 400 <= e.status < 500 and "\n" not in str(e)
        return
    modpath.check_path(req.module)
    if req.versioned:
        modpath.check(req.module, req.version)
        assert semver.is_valid(req.version)
    assert ".." not in req.module.split("/")


# ---- over HTTP: a live node in a thread, hammered with raw request lines --------------

SECRET = b"TOP-SECRET-OUTSIDE-THE-STORE"


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A node (upstream `off`) in its own thread and loop, with a secret file next to its data."""
    from node.service import Node

    root = tmp_path_factory.mktemp("hostile")
    (root / "secret.txt").write_bytes(SECRET)
    (root / "data").mkdir()
    ready = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        async def main() -> None:
            node = Node(node_config(Path(root / "data"), "off"))
            await node.start()
            url = await node.listen("127.0.0.1", 0)
            box["port"] = int(url.rsplit(":", 1)[1])
            stop = asyncio.Event()
            box["stop"] = (asyncio.get_running_loop(), stop)
            ready.set()
            await stop.wait()
            await node.aclose()

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    yield "127.0.0.1", int(box["port"])  # type: ignore[call-overload]
    loop, stop = box["stop"]  # type: ignore[misc]
    loop.call_soon_threadsafe(stop.set)
    t.join(10)


def _raw_get(host: str, port: int, target: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Content-Type", "")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/data/../secret.txt",
        "/example.com/../../secret.txt/@v/list",
        "/example.com/m/@v/..%2f..%2f..%2fsecret.txt.info",
        "//secret.txt",
        "/%00/@v/list",
    ],
)
def test_traversal_attempts(live_node: tuple[str, int], target: str) -> None:
    status, body, ctype = _raw_get(*live_node, target)
    assert 400 <= status < 500 and SECRET not in body
    assert ctype.startswith("text/plain")


_targets = st.one_of(
    _paths.map(lambda p: "/" + quote(p.lstrip("/"), safe="/@!+~")),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200).map(lambda s: "/" + s),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_targets)
def test_http_hostile_paths_always_4xx(live_node: tuple[str, int], target: str) -> None:
    assume(target.split("?")[0].split("#")[0] not in ("/", "/healthz", "/readyz", "/metrics"))  # real pages
    status, body, ctype = _raw_get(*live_node, target)
    assert 400 <= status < 500, (target, status, body)
    assert SECRET not in body
    assert ctype.startswith("text/plain")
    assert body.endswith(b"\n") and b"\n" not in body.rstrip(b"\n")  # one line for the go command


# ---- the node's own spelling of a request (hot answers, lookups without a parse) -------

_elem = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9._~-]{0,8}[a-zA-Z0-9]", fullmatch=True)


def _spelled(elems: list[str], major: int, minor: int, pre: str, kind: str) -> str | None:
    """The path the go command sends for such a file, if the module path is valid."""
    try:
        escaped = modpath.escape_path("example.com/" + "/".join(elems))
    except modpath.InvalidPathError:
        return None
    return f"/{escaped}/@v/v{major}.{minor}.0{pre}.{kind}"


_valid_paths = (
    st.tuples(
        st.lists(_elem, min_size=1, max_size=3),
        st.integers(0, 1),
        st.integers(0, 30),
        st.sampled_from(["", "-Pre.1", "-rc.B2", "-0.20240101000000-abcdefabcdef"]),
        st.sampled_from(["info", "mod", "zip"]),
    )
    .map(lambda t: _spelled(*t))
    .filter(lambda p: p is not None)
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_paths, _valid_paths))
def test_a_path_split_without_a_parse_is_the_path_parse_reads_the_same_way(path: str) -> None:
    """`canonical_request` takes a path only as `ModRequest.path` spells it: what it
    returns names exactly this path, so a lookup by it finds only the file a parse of this
    path would name. And it takes every versioned path the go command sends."""
    req = canonical_request(path)
    if req is not None:
        assert req.path == path
    try:
        parsed = parse_request(path)
    except (InvalidRequest, NotFound):
        return
    assert req is None or req == parsed
    if parsed.versioned:
        assert parsed.path == "/" + path.lstrip("/")
        assert request_of(parsed.path) == parsed
        if not path.startswith("//"):
            assert req == parsed
