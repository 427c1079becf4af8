"""The door's pure rules (node/verify.py): what an upstream answer must be, and how
lists merge, checked against hand-made cases and with hypothesis."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.cache import verify
from node.cache.protocol import ModRequest
from node.errors import IntegrityError
from node.golang import modpath, pseudo, semver

Q = ModRequest("example.com/m", "master", "query")

_core = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)).map(lambda t: f"v{t[0]}.{t[1]}.{t[2]}")
_pre = st.sampled_from(["", "-pre", "-rc.1", "-0.20240102030405-abcdefabcdef"])
versions = st.builds(lambda c, p: c + p, _core, _pre).filter(lambda v: modpath.canonical_version(v) == v)


def listing(vs: list[str]) -> bytes:
    return "".join(v + "\n" for v in vs).encode()


@given(st.lists(st.lists(versions, max_size=6), max_size=4))
def test_merged_lists_keep_every_version_once_in_order(parts: list[list[str]]) -> None:
    merged = verify.merge_lists(*(listing(p) for p in parts))
    got = verify.list_versions(merged)
    assert set(got) == {v for p in parts for v in p}
    assert got == sorted(got, key=semver.sort_key) and len(got) == len(set(got))
    assert verify.merge_lists(merged, *(listing(p) for p in reversed(parts))) == merged  # idempotent, any order


def test_merged_lists_keep_the_latest_timestamp() -> None:
    a = b"v1.0.0 2024-01-01T00:00:00Z\nv1.1.0\n"
    b = b"v1.0.0 2024-02-01T00:00:00Z\n"
    assert verify.merge_lists(a, b) == b"v1.0.0 2024-02-01T00:00:00Z\nv1.1.0\n"


@given(st.lists(versions, max_size=8))
def test_latest_is_the_highest_release_then_prerelease_then_pseudo(vs: list[str]) -> None:
    got = verify.latest_of(vs)
    if not vs:
        assert got is None
        return
    assert got in vs
    releases = [v for v in vs if not semver.prerelease(v)]
    tagged = [v for v in vs if not pseudo.is_pseudo_version(v)]
    pool = releases or tagged or vs
    assert got == max(pool, key=semver.sort_key)


@pytest.mark.parametrize(
    ("body", "version"),
    [
        (b'{"Version":"v1.2.3","Time":"2024-01-02T03:04:05Z"}', "v1.2.3"),
        (b'{"Version":"v0.0.0-20240102030405-abcdefabcdef"}', "v0.0.0-20240102030405-abcdefabcdef"),
    ],
)
def test_query_answers_name_a_canonical_version(body: bytes, version: str) -> None:
    assert verify.resolved_version(Q, body) == version


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"Version":"master"}',
        b'{"Version":"v1.2"}',
        b'{"Version":"v2.0.0"}',
        b'{"Version":"v1.2.3","Time":"yesterday"}',
        json.dumps({"Version": 5}).encode(),
    ],
)
def test_query_answers_that_are_upstream_failures(body: bytes) -> None:
    with pytest.raises(IntegrityError):
        verify.resolved_version(Q, body)


@pytest.mark.parametrize(
    "body",
    [
        b"module example.com/other\n",  # a fork, a renamed module: the go command decides
        b"go 1.21\n",  # no module directive: ParseLax takes it, and so does the go command
        b"module example.com/m\n\nrequire example.com/x v1.0.0\n",
    ],
)
def test_mod_files_go_would_read_are_taken(body: bytes) -> None:
    assert verify.check_mod(ModRequest("example.com/m", "v1.0.0", "mod"), body) == body


@pytest.mark.parametrize("body", [b"", b"module a b c\n", b"module example.com/m\nrequire (\n"])
def test_mod_files_go_could_not_read_are_refused(body: bytes) -> None:
    with pytest.raises(IntegrityError):
        verify.check_mod(ModRequest("example.com/m", "v1.0.0", "mod"), body)
