"""What `modmesh import` reads, as a manifest and bundle members.

* a bundle file, or `-` for stdin: a tar stream (`FileSource` under `tar.TarReader`);
* an unpacked bundle: a directory holding `modmesh-bundle.json` and its files;
* a GOMODCACHE, or its `cache/download`: every `<m>/@v/{list,<v>.info,<v>.mod,<v>.zip}`;
  `.lock`, `.ziphash`, `.partial` and temp files, and the `sumdb/` directory (tiles
  at one client's widths, no tree head) are left alone;
* a module directory, `module@version` (or `--module M --version V DIR`): zipped by
  our writer (Go's rules), `.mod` from its go.mod (or the legacy one Go makes up),
  `.info` with the version and the time of the import.

Directories become the same members a bundle stream has, so one importer checks
them all, and `--node` uploads them as a bundle (`tar_stream`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from node.golang import gomod, modpath, semver
from node.golang.modzip import ZipError
from node.golang.zipwriter import create_zip
from node.tools.bundle.format import (
    KIND_ORDER,
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    module_member,
    parse_module_member,
    utc_iso,
)
from node.tools.bundle.importing import Member
from node.tools.bundle.tar import CHUNK, TarWriter, file_chunks, once

_IGNORED = (".lock", ".ziphash", ".partial")
Progress = Callable[[int], None]


class SourceError(Exception):
    """The source cannot be read as anything importable (a usage problem)."""


class FileSource:
    """A ByteSource over a binary file (a bundle, stdin), read in a thread."""

    def __init__(self, f: BinaryIO, on_bytes: Progress | None = None) -> None:
        self.f = f
        self.on_bytes = on_bytes

    async def read(self, n: int) -> bytes:
        data = await asyncio.to_thread(self.f.read, n)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        return data


@dataclass
class DirSource:
    kind: str  # bundle, gomodcache, directory
    manifest: Manifest
    files: list[tuple[ManifestEntry, Path | bytes]]
    temp: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(e.size for e, _ in self.files)

    async def members(self, on_bytes: Progress | None = None) -> AsyncIterator[Member]:
        for e, src in self.files:
            if isinstance(src, bytes):
                if on_bytes is not None:
                    on_bytes(len(src))
                yield Member(e.path, len(src), functools.partial(once, src))
                continue
            try:
                size = src.stat().st_size
            except OSError:
                continue  # reported as missing
            yield Member(e.path, size, functools.partial(file_chunks, src, on_bytes))

    def close(self) -> None:
        for p in self.temp:
            p.unlink(missing_ok=True)


def _now() -> str:
    return utc_iso(time.time())


def open_directory(path: Path, module: str | None, version: str | None, tmp_dir: Path) -> DirSource:
    """Classify and read a directory source (blocking: call in a thread)."""
    if not path.is_dir():
        raise SourceError(f"{path} is not a directory")
    if module or version:
        return _module_dir(path, module, version, tmp_dir)
    if (path / MANIFEST_NAME).is_file():
        return _unpacked_bundle(path)
    if (path / "cache" / "download").is_dir():
        return _gomodcache(path / "cache" / "download")
    if "@" in path.name:
        return _module_dir(path, None, None, tmp_dir)
    if next(path.glob("*/@v"), None) is not None or next(path.glob("**/@v"), None) is not None:
        return _gomodcache(path)
    raise SourceError(
        f"{path}: not a bundle, an unpacked bundle, a GOMODCACHE (cache/download) or a "
        "module@version directory; for a module directory pass --module and --version"
    )


def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _unpacked_bundle(root: Path) -> DirSource:
    manifest = Manifest.from_bytes((root / MANIFEST_NAME).read_bytes())
    files: list[tuple[ManifestEntry, Path | bytes]] = [
        (e, root.joinpath(*e.path.split("/"))) for e in manifest.entries if _safe(e.path)
    ]
    return DirSource("bundle", manifest, files)


def _gomodcache(base: Path) -> DirSource:
    entries: list[tuple[ManifestEntry, Path]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = Path(dirpath).relative_to(base).as_posix()
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != "sumdb"]
            continue
        if not rel_dir.endswith("/@v"):
            continue
        dirnames[:] = []
        for name in filenames:
            if name.endswith(_IGNORED) or ".tmp" in name:
                continue
            if name == "list":
                kind = "list"
            elif name.endswith((".info", ".mod", ".zip")):
                kind = name.rpartition(".")[2]
            else:
                continue
            rel = f"{rel_dir}/{name}"
            p = Path(dirpath) / name
            try:
                req = parse_module_member(rel)
                module, version = req.module, req.version
            except ValueError:
                module = version = ""  # the importer refuses it, naming the path
            st = p.stat()
            entries.append((ManifestEntry(rel, kind, st.st_size, None, module, version, None, st.st_mtime), p))
    entries.sort(key=lambda ep: (ep[0].module, _vkey(ep[0].version), KIND_ORDER[ep[0].kind], ep[0].path))
    manifest = Manifest([e for e, _ in entries], _now(), origin={"kind": "gomodcache", "path": str(base)})
    return DirSource("gomodcache", manifest, list(entries))


def _vkey(v: str) -> tuple[object, ...]:
    return tuple(semver.sort_key(v)) if v and semver.is_valid(v) else ()


def _module_dir(root: Path, module: str | None, version: str | None, tmp_dir: Path) -> DirSource:
    name = root.name
    stem, at, tail = name.rpartition("@")
    if version is None:
        if not at:
            raise SourceError(f"{root}: cannot tell the version; name the directory module@version or pass --version")
        version = modpath.unescape_version(tail) if "!" in tail else tail
    go_mod = root / "go.mod"
    mod = go_mod.read_bytes() if go_mod.is_file() else None
    if module is None:
        if mod is None:
            raise SourceError(f"{root} has no go.mod: pass --module")
        try:
            module = gomod.parse_module_path(mod)
        except ValueError as e:
            raise SourceError(f"{go_mod}: {e}") from None
        last = module.rsplit("/", 1)[-1]
        if at and stem not in (last, modpath.escape_path(module).rsplit("/", 1)[-1]):
            raise SourceError(f"{root}: the directory's name does not match go.mod's module {module}; pass --module")
    elif mod is not None:
        try:
            declared = gomod.check(mod)
        except ValueError as e:
            raise SourceError(f"{go_mod}: {e}") from None
        if declared is not None and declared != module:
            raise SourceError(
                f"{go_mod} declares module {declared}, not {module}: a directory is imported as "
                "the module its go.mod names"
            )
    try:
        parse_module_member(module_member(module, version, "zip"))
    except ValueError as e:
        raise SourceError(f"{module}@{version}: {e}") from None
    if mod is None:
        mod = gomod.legacy_go_mod(module)
    info = json.dumps({"Version": version, "Time": _now()}).encode()
    tmp = tmp_dir / f"import-{secrets.token_hex(8)}.zip"
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            create_zip(root, module, version, f)
        with open(tmp, "rb") as zf:
            while block := zf.read(CHUNK):
                h.update(block)
    except (ZipError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise SourceError(f"cannot zip {root} as {module}@{version}: {e}") from None
    now = time.time()

    def entry(kind: str, size: int, sha: str) -> ManifestEntry:
        return ManifestEntry(module_member(module, version, kind), kind, size, sha, module, version, None, now)

    files: list[tuple[ManifestEntry, Path | bytes]] = [
        (entry("info", len(info), hashlib.sha256(info).hexdigest()), info),
        (entry("mod", len(mod), hashlib.sha256(mod).hexdigest()), mod),
        (entry("zip", tmp.stat().st_size, h.hexdigest()), tmp),
    ]
    manifest = Manifest([e for e, _ in files], _now(), origin={"kind": "directory", "path": str(root)})
    return DirSource("directory", manifest, files, [tmp])


async def tar_stream(source: DirSource, on_bytes: Progress | None = None) -> AsyncIterator[bytes]:
    """The directory as a bundle stream (to upload to a node's /_admin/import)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    async def produce() -> None:
        try:
            writer = TarWriter(queue.put)
            mbytes = source.manifest.to_bytes()
            await writer.add(MANIFEST_NAME, len(mbytes), 0, once(mbytes))
            mtimes = {e.path: e.fetched_at or 0 for e, _ in source.files}
            async for m in source.members(on_bytes):
                await writer.add(m.name, m.size, mtimes[m.name], m.chunks())
            await writer.close()
        finally:
            await queue.put(None)  # the consumer then learns the outcome from the task

    task = asyncio.ensure_future(produce())
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
        await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
