"""Warm a node and mirror what it serves into a static GOPROXY tree for nginx.

Every list, .info, .mod and .zip is fetched through the node once (a miss that
fills its cache) and written, byte for byte as the node answered, to
`<tree>/<escaped module>/@v/...`. A second pass checks the node now answers
every one of them from its cache, and that nginx serves the same bytes. A
version the node refuses is not mirrored (there are no bytes to mirror) and is
named in `refused`; the corpus run still asks for it, so it fails there, in the
report, instead of disappearing from the comparison.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import fetch
from node.golang.modpath import escape_path, escape_version

EXTS = ("info", "mod", "zip")


def list_path(module: str) -> str:
    return f"/{escape_path(module)}/@v/list"


def file_path(module: str, version: str, ext: str) -> str:
    return f"/{escape_path(module)}/@v/{escape_version(version)}.{ext}"


@dataclass
class Mirror:
    tree: Path
    versions: list[tuple[str, str]] = field(default_factory=list)  # (module, version) served whole
    refused: dict[str, str] = field(default_factory=dict)  # "module@version" -> why
    digests: dict[str, str] = field(default_factory=dict)  # request path -> sha256 of the body

    @property
    def modules(self) -> list[str]:
        return sorted({m for m, _ in self.versions})

    def paths(self, ext: str) -> list[str]:
        if ext == "list":
            return [list_path(m) for m in self.modules]
        return [file_path(m, v, ext) for m, v in self.versions]


def _pmap(
    fn: Callable[[str], tuple[str, int, dict[str, str], bytes]], items: Iterable[str]
) -> list[tuple[str, int, dict[str, str], bytes]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fn, items))


def warm_and_mirror(node_url: str, versions: Iterable[tuple[str, str]], tree: Path) -> Mirror:
    versions = list(versions)
    mirror = Mirror(tree)

    def get(path: str) -> tuple[str, int, dict[str, str], bytes]:
        r = fetch(node_url, path, timeout=300)
        return path, r.status, r.headers, r.body

    wanted = [file_path(m, v, ext) for m, v in versions for ext in EXTS]
    got = {p: (status, body) for p, status, _h, body in _pmap(get, wanted)}
    for m, v in versions:
        bad = [
            f"{ext} {got[file_path(m, v, ext)][0]}: {got[file_path(m, v, ext)][1][:120]!r}"
            for ext in EXTS
            if got[file_path(m, v, ext)][0] != 200
        ]
        if bad:
            mirror.refused[f"{m}@{v}"] = "; ".join(bad)
        else:
            mirror.versions.append((m, v))
    lists = {p: (status, body) for p, status, _h, body in _pmap(get, mirror.paths("list"))}
    for p, (status, body) in lists.items():
        if status != 200:
            raise RuntimeError(f"node answered {status} for {p}: {body[:200]!r}")
    for p in mirror.paths("info") + mirror.paths("mod") + mirror.paths("zip"):
        _write(tree, p, got[p][1], mirror)
    for p, (_s, body) in lists.items():
        _write(tree, p, body, mirror)

    # Second pass: everything must now be a cache hit, with the same bytes.
    every = [p for ext in ("list", *EXTS) for p in mirror.paths(ext)]
    misses = []
    for p, status, headers, body in _pmap(get, every):
        if status != 200 or hashlib.sha256(body).hexdigest() != mirror.digests[p]:
            raise RuntimeError(f"node changed its answer for {p} ({status})")
        if headers.get("x-modmesh-cache") != "hit":
            misses.append(f"{p}: {headers.get('x-modmesh-cache')}")
    if misses:
        raise RuntimeError(f"{len(misses)} files are not cache hits after warming, e.g. {misses[:3]}")
    return mirror


def verify_static(url: str, mirror: Mirror) -> None:
    """nginx must answer every path of the mirror with the node's bytes."""

    def get(path: str) -> tuple[str, int, dict[str, str], bytes]:
        r = fetch(url, path, timeout=300)
        return path, r.status, r.headers, r.body

    for p, status, _h, body in _pmap(get, list(mirror.digests)):
        if status != 200 or hashlib.sha256(body).hexdigest() != mirror.digests[p]:
            raise RuntimeError(f"static server answered {status} for {p}, or other bytes than the node")


def _write(tree: Path, path: str, body: bytes, mirror: Mirror) -> None:
    target = tree / path.lstrip("/")
    if tree.resolve() not in target.resolve().parents:
        raise RuntimeError(f"path escapes the tree: {path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    mirror.digests[path] = hashlib.sha256(body).hexdigest()
