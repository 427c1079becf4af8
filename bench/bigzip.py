"""Synthetic module zips for the benches: valid module zips of random bytes.

The node verifies every zip against Go's module-zip rules, so a big test file must
be a real module zip. We write random files into a temporary tree and zip it
with node.zipwriter.create_zip (streamed to disk; nothing is held in memory), once:
the result is cached under bench/out/zips and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from node.golang import modzip, zipwriter
from node.golang.modpath import escape_path, escape_version

VERSION = "v1.0.0"
#: Bump to invalidate zips cached by an older bench.
FORMAT = 1
_FILE = 16 * 10**6  # bytes of random data per file in the tree
_BLOCK = 1 << 20


@dataclass(frozen=True)
class BigModule:
    module: str
    version: str
    zip_path: Path
    size: int
    sha256: str

    @property
    def mod(self) -> bytes:
        return go_mod(self.module)

    @property
    def info(self) -> bytes:
        return info_json(self.version)

    def path(self, ext: str) -> str:
        """The request path of this version's `ext` file ("info", "mod", "zip")."""
        return f"/{escape_path(self.module)}/@v/{escape_version(self.version)}.{ext}"

    @property
    def list_path(self) -> str:
        return f"/{escape_path(self.module)}/@v/list"


def module_name(megabytes: int) -> str:
    return f"bench.modmesh.example/zip{megabytes}mb"


def go_mod(module: str) -> bytes:
    return f"module {module}\n\ngo 1.21\n".encode()


def info_json(version: str) -> bytes:
    return json.dumps({"Version": version, "Time": "2024-01-01T00:00:00Z"}).encode()


def ensure(cache_dir: Path, megabytes: int) -> BigModule:
    """The cached module zip of about `megabytes` MB (10^6 bytes), built if missing."""
    module = module_name(megabytes)
    base = cache_dir / f"zip{megabytes}mb-f{FORMAT}"
    zip_path, meta_path = base.with_suffix(".zip"), base.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if meta["module"] == module and zip_path.stat().st_size == meta["size"]:
            return BigModule(module, VERSION, zip_path, meta["size"], meta["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"  building the {megabytes} MB test zip (once; cached in {cache_dir}) ...", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bigzip-", dir=cache_dir))
    try:
        tree = work / "tree"
        _write_tree(tree, module, megabytes * 10**6)
        part = work / "out.zip"
        with open(part, "wb", buffering=_BLOCK) as out:
            zipwriter.create_zip(tree, module, VERSION, out)
        size, sha = part.stat().st_size, _sha256(part)
        if size > modzip.MAX_ZIP_FILE:
            raise RuntimeError(f"generated zip is {size} bytes, over Go's limit")
        os.replace(part, zip_path)
        meta_path.write_text(json.dumps({"module": module, "version": VERSION, "size": size, "sha256": sha}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BigModule(module, VERSION, zip_path, size, sha)


def _write_tree(tree: Path, module: str, data_bytes: int) -> None:
    (tree / "data").mkdir(parents=True)
    (tree / "go.mod").write_bytes(go_mod(module))
    (tree / "doc.go").write_text("// Package bench is random data for the modmesh benches.\npackage bench\n")
    left, i = data_bytes, 0
    while left > 0:
        n = min(_FILE, left)
        with open(tree / "data" / f"blob{i:03d}.bin", "wb") as f:
            for off in range(0, n, _BLOCK):
                f.write(os.urandom(min(_BLOCK, n - off)))
        left -= n
        i += 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()
