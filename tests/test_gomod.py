"""node.gomod: module paths out of go.mod bodies, and the synthesised legacy go.mod.

The real go command is the oracle (`go mod edit -json` parses with modfile),
and every `.mod` section of Go's own test corpus must parse to the path its
file name encodes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.golang import modpath
from node.golang.gomod import GoModError, go_version, legacy_go_mod, parse_module_path
from tests.corpus import corpus_root, parse_txtar
from tests.goenv import go_env

# --- parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"module example.com/m\n", "example.com/m"),
        (b"module example.com/m", "example.com/m"),  # no final newline
        (b'module "example.com/m"\n', "example.com/m"),
        (b'module "example.com/\\x41\\u00e9\\101"\n', "example.com/A\u00e9A"),
        (b"\t module   example.com/m  \r\n", "example.com/m"),
        (b"// comment\nmodule example.com/m // trailing\n", "example.com/m"),
        (b"module example.com/m//no space needed\n", "example.com/m"),
        (b"module (\n\texample.com/m\n)\n", "example.com/m"),
        (b"module ( // why not\n\n\t// doc\n\texample.com/m // c\n)\n", "example.com/m"),
        (b"go 1.21\n\nrequire (\n\trsc.io/quote v1.5.2\n)\nmodule example.com/m\n", "example.com/m"),
        # ParseLax: unknown directives and blocks, and main-module-only ones, are ignored.
        (b"module example.com/m\nfrobnicate a b c\nnewblock (\n x\n)\ntool x\n", "example.com/m"),
        (b"module example.com/m\nreplace x => y v1.0.0\nexclude ( q v1 )\n", "example.com/m"),
        # The go line is not the module path's business.
        (b"module example.com/m\ngo 1\ngo 1.2.3.4.5\n", "example.com/m"),
        (b'module example.com/m\nx `raw string` "q"\n', "example.com/m"),
        ("module example.com/\u00e9t\u00e9\n".encode(), "example.com/\u00e9t\u00e9"),
        # A block-looking line with more tokens is not a module block.
        (b"module example.com/m\nmodule x (\n y\n)\n", "example.com/m"),
    ],
)
def test_parse_module_path(body: bytes, path: str) -> None:
    assert parse_module_path(body) == path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'module "example.com/m\n', "go.mod:1:22: unexpected newline in string"),
        (b'module "example.com/m', "go.mod:1:8: unexpected EOF in string"),
        (b'module "example.com/m\\', "go.mod:1:8: unexpected EOF in string"),
        (b'module "a\\\nb"\n', "go.mod:1: invalid quoted string: invalid syntax"),  # escaped newline
        (b"module `example.com/m\n", "unexpected newline in string"),
        (b"module (\n\texample.com/m\n", "syntax error (unterminated block started at go.mod:1:1)"),
        (b"module (\n\texample.com/m\n) x\n", "syntax error (expected newline after closing paren)"),
        (b"module example.com/m /* c */\n", "mod files must use // comments (not /* */ comments)"),
        (b"module example.com/m\x0b\n", "unexpected input character '\\v'"),
        (b"\xef\xbb\xbfmodule example.com/m\n", "go.mod:1: unexpected input character '\\ufeff'"),
        (b"module example.com/\xff\n", "go.mod:1: invalid UTF-8"),
        (b"// \xc3\x28\nmodule example.com/m\n", "invalid UTF-8"),
        (b"module example.com/m\x00\n", "NUL"),
        (b"go 1.21\n", "missing module directive"),
        (b"", "missing module directive"),
        (b"golang.org/toolchain\n", "missing module directive"),
        (b"module a\nmodule a\n", "go.mod:2: repeated module statement"),
        (b"module (\n a\n b\n)\n", "go.mod:3: repeated module statement"),
        (b"module\n", "usage: module module/path"),
        (b"module a b\n", "usage: module module/path"),
        (b"module `example.com/m`\n", "invalid quoted string: unquoted string cannot contain quote"),
        (b"module example.com/'m'\n", "unquoted string cannot contain quote"),
        (b'module "a\\qb"\n', "invalid quoted string: invalid syntax"),
        (b'module "a\\\'b"\n', "invalid syntax"),
        (b'module "\\ud800"\n', "invalid syntax"),
        (b'module "\\400"\n', "invalid syntax"),
        (b'module "\\xff"\n', "invalid UTF-8"),
    ],
)
def test_parse_errors(body: bytes, message: str) -> None:
    with pytest.raises(GoModError) as exc:
        parse_module_path(body)
    assert message in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_go_version() -> None:
    assert go_version(b"module m\ngo 1.24\n") == "1.24"
    assert go_version(b"module m\ngo 1.21rc1\n") == "1.21rc1"
    assert go_version(b"module m\ngo 1.21-custom\n") == "1.21"  # ParseLax's fix-up
    assert go_version(b"go 1.22.3\n") == "1.22.3"
    assert go_version(b"module m\n") is None
    assert go_version(b"module m\ngo 1\n") is None  # ParseLax fails, so zip creation sees no version
    assert go_version(b"module m\ngo 1.21\ngo 1.22\n") is None
    assert go_version(b"module m\ngo 1.21 1.22\n") is None
    assert go_version(b'module "m\n') is None


# --- legacy go.mod --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("example.com/m", b"module example.com/m\n"),
        ("gopkg.in/yaml.v2", b"module gopkg.in/yaml.v2\n"),
        ("example.com/a b", b'module "example.com/a b"\n'),
        ("example.com/a//b", b'module "example.com/a//b"\n'),
        ("example.com/a/*b", b'module "example.com/a/*b"\n'),
        ("example.com/(x)", b'module "example.com/(x)"\n'),
        ("(", b"module (\n"),  # Go quotes a lone bracket as little as this
        ("", b'module ""\n'),
        ('a"b\\c', b'module "a\\"b\\\\c"\n'),
        ("a`b'c", b'module "a`b\'c"\n'),
        ("a\tb\x7f\x00", b'module "a\\tb\\x7f\\x00"\n'),
        ("a\u00a0b\u2028", b'module "a\\u00a0b\\u2028"\n'),
        ("caf\u00e9/\U0001f600", "module caf\u00e9/\U0001f600\n".encode()),
        ("x\U000e0001", b'module "x\\U000e0001"\n'),
    ],
)
def test_legacy_go_mod(path: str, body: bytes) -> None:
    assert legacy_go_mod(path) == body


_PATHS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30).filter(lambda s: s not in tuple("()[]{},"))


@given(_PATHS)
def test_legacy_go_mod_round_trips(path: str) -> None:
    assert parse_module_path(legacy_go_mod(path)) == path


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_else(body: bytes) -> None:
    try:
        parse_module_path(body)
    except GoModError:
        pass
    go_version(body)


# --- Go's corpus -----------------------------------------------------------------------

# Corpus files whose .mod deliberately declares another path than the file name encodes.
_DECLARES_OTHER_PATH = {
    "example.com_badchain_c_v1.1.0.txt": "badchain.example.com/c",  # a "module declares its path as" test
    "example.com_latemigrate_v2_v2.0.0.txt": "example.com/latemigrate",  # v2 tagged before /v2 existed
    "example.com_quote_v1.5.2.txt": "rsc.io/Quote",  # a fork that kept a (case-changed) upstream path
    "example.com_retract_rename_v1.9.0-new.txt": "example.com/retract/newname",  # module renamed
}
# Toolchain "modules" are fetched as .zip only (protocol notes 6.2); the older
# ones' .mod sections hold just the path, which is not a go.mod.
_TOOLCHAIN = "golang.org/toolchain"
# Names whose path fails module.CheckPath, so Go's test proxy skips them (notes 7.4).
_UNESCAPABLE = {"example.com_invalidpath_v1_v1.0.0.txt": "example.com/invalidpath/v1"}


def _path_from_name(name: str) -> str:
    stem = name.removesuffix(".txt")
    escaped = stem[: stem.rfind("_v")].replace("_", "/")
    if name in _UNESCAPABLE:
        return _UNESCAPABLE[name]
    return modpath.unescape_path(escaped)


def test_every_corpus_mod_parses() -> None:
    root = corpus_root()
    files = sorted(p for p in root.iterdir() if p.suffix == ".txt")
    assert len(files) > 250
    checked = toolchains = 0
    seen_exceptions = set()
    for file in files:
        want = _path_from_name(file.name)
        for section, body in parse_txtar(file.read_bytes())[1]:
            if section != ".mod":
                continue
            if want == _TOOLCHAIN and body == b"golang.org/toolchain\n":
                with pytest.raises(GoModError, match="missing module directive"):
                    parse_module_path(body)
                toolchains += 1
                continue
            got = parse_module_path(body)
            if file.name in _DECLARES_OTHER_PATH:
                seen_exceptions.add(file.name)
                want = _DECLARES_OTHER_PATH[file.name]
            assert got == want, file.name
            checked += 1
    assert seen_exceptions == set(_DECLARES_OTHER_PATH)
    assert checked > 230 and toolchains > 10


# --- the go command as oracle ---------------------------------------------------------

# Bodies on which strict modfile.Parse (go mod edit) and ParseLax agree.
_ORACLE_BODIES = [
    b'module "example.com/\\x41b"\n',
    b"module (\n\texample.com/m // c\n)\n",
    b"module example.com/m//c\ngo 1.21\n",
    b"module example.com/m\nmodule example.com/n\n",
    b'module "example.com/m\n',
    b"module (\nexample.com/m\n",
    b"module (\nexample.com/m\n) x\n",
    b"module example.com/m /* x */\n",
    b"module `example.com/m`\n",
    b"module a b\n",
    b'module "a\\qb"\n',
    b"\xef\xbb\xbfmodule a\n",
    b"module a\x0b\n",
    "module example.com/\u00e9\n".encode(),
]


@pytest.mark.e2e
def test_matches_go_mod_edit(go_bin: str, tmp_path: Path) -> None:
    env = go_env(tmp_path, "off")
    for body in _ORACLE_BODIES:
        (tmp_path / "go.mod").write_bytes(body)
        run = subprocess.run(
            [go_bin, "mod", "edit", "-json", "go.mod"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode == 0:
            assert parse_module_path(body) == json.loads(run.stdout)["Module"]["Path"], body
        else:
            with pytest.raises(GoModError) as exc:
                parse_module_path(body)
            go_error = run.stderr.splitlines()[-1]
            assert str(exc.value) == go_error, body
