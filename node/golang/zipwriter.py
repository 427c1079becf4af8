"""Building canonical module zips (Go's zip.Create / zip.CreateFromDir).

A proxy never re-zips what it serves; this is for tests, fixtures and
`modmesh import` of a local directory as `module@version`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, cast

from node.golang import gomod
from node.golang._zipformat import (
    IO_BLOCK,
    MAX_GO_MOD,
    MAX_LICENSE,
    MAX_ZIP_FILE,
    Collisions,
    ZipError,
    clean,
    fold,
    name_bytes,
)
from node.golang.modpath import check_file_path

__all__ = ["create_zip", "create_zip_from_files"]


@dataclass(frozen=True, slots=True)
class _Source:
    path: str  # slash-separated, relative to the module root
    size: int
    open: Callable[[], IO[bytes]]


_VCS_DIRS = frozenset({".bzr", ".git", ".hg", ".svn"})
_GO_LANG = re.compile(r"(0|[1-9]\d*)(?:\.(0|[1-9]\d*)(?:\.(?:0|[1-9]\d*)|[a-z]+(?:0|[1-9]\d*)?)?)?")


def _go_at_least_1_24(go_directive: str | None) -> bool:
    """go/version.Compare(version.Lang("go"+v), "go1.24") >= 0."""
    m = _GO_LANG.fullmatch(go_directive or "")
    return m is not None and (int(m[1]), int(m[2] or 0)) >= (1, 24)


def _is_vendored(name: str, go124: bool) -> bool:
    """x/mod/zip's isVendoredPackage, including the pre-1.24 offset bug it keeps for old modules."""
    if go124 and name == "vendor/modules.txt":
        return True
    if name.startswith("vendor/"):
        i = len("vendor/")
    elif (j := name.find("/vendor/")) >= 0:
        i = j + len("/vendor/") if go124 else len("/vendor/")
    else:
        return False
    return "/" in name[i:]


def _root_go_version(sources: Iterable[_Source]) -> str | None:
    for src in sources:
        if src.path == "go.mod" and src.size <= MAX_GO_MOD:
            with src.open() as fh:
                return gomod.go_version(fh.read(MAX_GO_MOD + 1))
    return None


def _select(sources: list[_Source]) -> list[_Source]:
    """x/mod/zip's checkFiles: the files that belong in the zip, or ZipError."""
    go124 = _go_at_least_1_24(_root_go_version(sources))
    module_dirs: set[str] = set()
    for src in sources:
        head, _, base = src.path.rpartition("/")
        if fold(base) == "go.mod":
            module_dirs.add(head)

    def in_submodule(p: str) -> bool:
        while "/" in p:
            p = p.rpartition("/")[0]
            if p in module_dirs:
                return True
        return False

    collisions = Collisions()
    budget = MAX_ZIP_FILE
    size_error: str | None = None
    first_error: str | None = None
    chosen: list[_Source] = []
    for src in sorted(sources, key=lambda s: name_bytes(s.path)):
        p = src.path
        problem: str | None = None
        if clean(p) != p:
            problem = "file path is not clean"
        elif p.startswith("/"):
            problem = "file path is not relative"
        elif _is_vendored(p, go124) or in_submodule(p) or p == ".hg_archival.txt":
            continue
        else:
            try:
                check_file_path(p)
            except ValueError as err:
                problem = str(err)
        if problem is None and p.lower() == "go.mod" and p != "go.mod":
            problem = "go.mod files must have lowercase names"
        problem = problem or collisions.check(p, False)
        if problem is None:
            if src.size <= budget:
                budget -= src.size
            elif size_error is None:
                size_error = f"module source tree too large (max size is {MAX_ZIP_FILE} bytes)"
            if p == "go.mod" and src.size > MAX_GO_MOD:
                problem = f"go.mod file too large (max size is {MAX_GO_MOD} bytes)"
            elif p == "LICENSE" and src.size > MAX_LICENSE:
                problem = f"LICENSE file too large (max size is {MAX_LICENSE} bytes)"
        if problem is None:
            chosen.append(src)
        elif first_error is None:
            first_error = f"{p}: {problem}"
    if size_error is not None:
        raise ZipError(size_error)
    if first_error is not None:
        raise ZipError(first_error)
    return chosen


class _WriteOnly:
    """Hide seek/tell so zipfile always streams with data descriptors: the output
    bytes then depend only on the files, not on what kind of stream `out` is."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def _open_binary(path: str) -> IO[bytes]:
    return open(path, "rb")


def _write(sources: list[_Source], module: str, version: str, out: IO[bytes]) -> None:
    chosen = _select(sources)
    prefix = f"{module}@{version}/"
    with zipfile.ZipFile(cast(IO[bytes], _WriteOnly(out)), "w", zipfile.ZIP_DEFLATED) as zf:
        for src in chosen:
            info = zipfile.ZipInfo(prefix + src.path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            left = src.size + 1  # like Go: notice a file that grew since it was listed
            with src.open() as fh, zf.open(info, "w") as dst:
                while left > 0 and (block := fh.read(min(left, IO_BLOCK))):
                    dst.write(block)
                    left -= len(block)
            if left <= 0:
                raise ZipError(f"file {src.path!r} is larger than declared size")


def create_zip_from_files(files: Iterable[tuple[str, bytes]], module: str, version: str, out: BinaryIO) -> None:
    """x/mod/zip.Create over (slash-separated relative name, content) pairs."""
    _write([_Source(name, len(data), partial(io.BytesIO, data)) for name, data in files], module, version, out)


def _walk(root: Path) -> list[_Source]:
    """x/mod/zip's listFilesInDir: regular files, minus VCS dirs, nested modules, vendored packages."""
    go_mod = root / "go.mod"
    go124 = False
    if go_mod.is_file() and go_mod.stat().st_size <= MAX_GO_MOD:
        go124 = _go_at_least_1_24(gomod.go_version(go_mod.read_bytes()))
    out: list[_Source] = []

    def visit(directory: Path, rel: str) -> None:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda d: os.fsencode(d.name))
        for child in children:
            slash = f"{rel}{child.name}"
            if _is_vendored(slash, go124):
                continue  # everything below a vendored path is vendored too
            if child.is_dir(follow_symlinks=False):
                if child.name in _VCS_DIRS:
                    continue
                try:
                    if not stat.S_ISDIR(os.lstat(os.path.join(child.path, "go.mod")).st_mode):
                        continue  # another module
                except FileNotFoundError:
                    pass
                visit(Path(child.path), slash + "/")
            elif child.is_file(follow_symlinks=False):
                size = child.stat(follow_symlinks=False).st_size
                out.append(_Source(slash, size, partial(_open_binary, child.path)))
            # symlinks and other irregular files are left out

    visit(root, "")
    return out


def create_zip(src_dir: str | os.PathLike[str], module: str, version: str, out: BinaryIO) -> None:
    """x/mod/zip.CreateFromDir: the canonical zip of a module tree, written to `out`.

    Deterministic: entries sorted by name, fixed timestamps and modes, deflate.
    """
    _write(_walk(Path(src_dir)), module, version, out)
