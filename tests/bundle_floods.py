"""Hostile bundles made as streams, never held whole: stacked PAX headers in front of a
member, and a manifest of any size (tests/test_bundle_limits.py, bench/memory.py).

Each bundle carries one real `.info` entry, so a bundle that passes would admit it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator

from node.tools.bundle.format import FORMAT, FORMAT_VERSION, MANIFEST_NAME, Manifest, ManifestEntry
from node.tools.bundle.tar import BLOCK, RECORD, tar_header

MODULE, VERSION = "example.com/flood", "v1.0.0"
INFO = json.dumps({"Version": VERSION, "Time": "2024-01-02T03:04:05Z"}).encode()
INFO_PATH = f"{MODULE}/@v/{VERSION}.info"
#: One stacked header's payload: under the 1 MiB a single header was always allowed.
PAX_PAYLOAD = (1 << 20) - BLOCK


def _pad(n: int) -> bytes:
    return bytes(-n % BLOCK)


def _info_entry() -> ManifestEntry:
    return ManifestEntry(INFO_PATH, "info", len(INFO), hashlib.sha256(INFO).hexdigest(), MODULE, VERSION)


def _member(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data), 0) + data + _pad(len(data))


def _end(written: int) -> bytes:
    written += 2 * BLOCK
    return bytes(2 * BLOCK + -written % RECORD)


def small_bundle() -> bytes:
    """The bundle the floods spoil: its manifest and the `.info`."""
    manifest = Manifest([_info_entry()], "2024-01-02T03:04:05Z", {"kind": "directory"}).to_bytes()
    out = _member(MANIFEST_NAME, manifest) + _member(INFO_PATH, INFO)
    return out + _end(len(out))


def _pax_header(i: int) -> bytes:
    """A PAX extended header with one record of its own key, PAX_PAYLOAD bytes long."""
    key = f"comment.flood{i}"
    body_len = PAX_PAYLOAD - len(f" {key}=\n") - 7  # 7 digits of length
    record = f"{PAX_PAYLOAD} {key}={'x' * body_len}\n".encode()
    assert len(record) == PAX_PAYLOAD
    info = tarfile.TarInfo(f"PaxHeaders/flood{i}")
    info.type = tarfile.XHDTYPE
    info.size = len(record)
    return info.tobuf(tarfile.USTAR_FORMAT) + record + _pad(len(record))


def pax_flood(total: int) -> Iterator[bytes]:
    """small_bundle with `total` bytes of stacked PAX headers in front of its `.info`."""
    manifest = Manifest([_info_entry()], "2024-01-02T03:04:05Z", {"kind": "directory"}).to_bytes()
    head = _member(MANIFEST_NAME, manifest)
    yield head
    written = len(head)
    i = 0
    while written < len(head) + total:
        chunk = _pax_header(i)
        yield chunk
        written += len(chunk)
        i += 1
    tail = _member(INFO_PATH, INFO)
    yield tail + _end(written + len(tail))


def _entry_json(i: int) -> bytes:
    module = f"example.com/group{i // 100}/module{i}"
    kind = ("info", "mod", "zip")[i % 3]
    e = ManifestEntry(
        f"{module}/@v/v1.0.0.{kind}",
        kind,
        1000 + i,
        hashlib.sha256(str(i).encode()).hexdigest(),
        module,
        "v1.0.0",
        None if kind == "info" else "h1:" + "A" * 43 + "=",
        1.7e9,
    )
    return json.dumps(e.to_json(), indent=1).encode()


def big_manifest(size: int) -> Iterator[bytes]:
    """A bundle whose manifest is exactly `size` bytes: the `.info`'s entry, then made-up
    entries (of files the bundle does not carry), then the `.info` itself."""
    head = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "created": "2024-01-02T03:04:05Z"})
    first = json.dumps(_info_entry().to_json()).encode()
    opening = head[:-1].encode() + b', "entries": [' + first
    closing = b"]}\n"
    yield tar_header(MANIFEST_NAME, size, 0) + opening
    left = size - len(opening) - len(closing)
    i = 0
    batch: list[bytes] = []
    while True:
        entry = b",\n" + _entry_json(i)
        if len(entry) > left:
            break
        batch.append(entry)
        left -= len(entry)
        i += 1
        if len(batch) == 1000:
            yield b"".join(batch)
            batch = []
    yield b"".join(batch) + b" " * left + closing + _pad(size)
    tail = _member(INFO_PATH, INFO)
    yield tail + bytes(2 * BLOCK)


#: A checksum database the importing node is not configured with: its entries are skipped.
ELSEWHERE = "elsewhere.example"


def skipped_bundle(n: int) -> tuple[int, Iterator[bytes]]:
    """A valid bundle of the `.info` and `n` empty lookup members of ELSEWHERE, each
    listed in the manifest (~330 bytes an entry, as `export` writes them): an import
    admits the `.info` and skips the rest. Returns the manifest's size and the stream."""
    empty = hashlib.sha256(b"").hexdigest()
    entries = [_info_entry()]
    for i in range(n):
        module = f"example.com/group{i // 100}/module{i}"
        path = f"sumdb/{ELSEWHERE}/lookup/{module}@v1.0.0"
        entries.append(ManifestEntry(path, "sumdb-lookup", 0, empty, module, "v1.0.0", None, 1.7e9, ELSEWHERE))
    manifest = Manifest(entries, "2024-01-02T03:04:05Z", {"kind": "directory"}).to_bytes()

    def stream() -> Iterator[bytes]:
        head = _member(MANIFEST_NAME, manifest)
        written = len(head)
        for i in range(0, len(head), 1 << 20):
            yield head[i : i + (1 << 20)]
        batch: list[bytes] = []
        for e in entries[1:]:
            batch.append(tar_header(e.path, 0, 0))
            if len(batch) == 1000:
                written += sum(map(len, batch))
                yield b"".join(batch)
                batch = []
        written += sum(map(len, batch))
        tail = _member(INFO_PATH, INFO)
        yield b"".join(batch) + tail + _end(written + len(tail))

    return len(manifest), stream()
