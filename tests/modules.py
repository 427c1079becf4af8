"""Small synthetic modules for node tests, zipped by our own writer."""

from __future__ import annotations

import io
import json
import os

from node.golang import zipwriter


def module_files(
    path: str, version: str, files: dict[str, bytes] | None = None, time: str = "2024-01-02T03:04:05Z"
) -> tuple[bytes, bytes, bytes]:
    """(info, mod, zip) for `path@version`; `files` default to a go.mod and one .go file."""
    mod = f"module {path}\n\ngo 1.21\n".encode()
    files = files if files is not None else {"go.mod": mod, "x.go": b"package x\n"}
    buf = io.BytesIO()
    zipwriter.create_zip_from_files(sorted(files.items()), path, version, buf)
    info = json.dumps({"Version": version, "Time": time}).encode()
    return info, mod, buf.getvalue()


def big_module(path: str, version: str, size: int) -> tuple[bytes, bytes, bytes]:
    """A module whose zip is about `size` bytes (incompressible content)."""
    return module_files(
        path,
        version,
        {
            "go.mod": f"module {path}\n".encode(),
            "blob.go": b"package x\n",
            "data.bin": os.urandom(size),
        },
    )


def module_set(*items: tuple[str, str, tuple[bytes, bytes, bytes]]) -> dict[str, dict[str, tuple[bytes, bytes, bytes]]]:
    out: dict[str, dict[str, tuple[bytes, bytes, bytes]]] = {}
    for path, version, files in items:
        out.setdefault(path, {})[version] = files
    return out
