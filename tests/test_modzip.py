"""node.modzip: the h1 hash, check_zip, ZipStreamHasher and the zip writers.

The real go command is the oracle: zips we build are served from a file://
GOPROXY tree and `go mod download -json` must accept them with Sum == h1_zip;
zips we refuse must be refused by go with the same message. Hostile zips are
built by hand (_raw_zip) so every header field can lie.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import tempfile
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.golang import modpath
from node.golang.dirhash import h1_from_digests, h1_gomod
from node.golang.modzip import (
    MAX_ENTRIES,
    MAX_GO_MOD,
    MAX_LICENSE,
    MAX_ZIP_FILE,
    CheckedZip,
    ZipError,
    check_zip,
    h1_zip,
)
from node.golang.zipstream import ZipStreamHasher
from node.golang.zipwriter import create_zip, create_zip_from_files
from tests.corpus import corpus_root, parse_txtar
from tests.goenv import go_env

M, V = "example.com/m", "v1.0.0"
P = f"{M}@{V}/"

# protocol notes 5.4, the worked example (verified against go 1.27)
HELLO_MOD = b"module example.com/hello\n\ngo 1.21\n"
HELLO_GO = b'package hello\n\nfunc Hello() string { return "hi" }\n'
HELLO_FILES = [("go.mod", HELLO_MOD), ("hello.go", HELLO_GO)]
HELLO_H1 = "h1:RRYMUoTH0NuCZ6Uzn82AqTXx61N0Cv5l8QsjGVwQduo="
HELLO_GOMOD_H1 = "h1:NnGvEkTHyKKlgPcQSue0skqyqiS1EfBSAh+0WaWZYmE="


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zipped(files: Iterable[tuple[str, bytes]], module: str = M, version: str = V) -> bytes:
    out = io.BytesIO()
    create_zip_from_files(files, module, version, out)
    return out.getvalue()


def save(tmp: Path, data: bytes, name: str = "m.zip") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def stream_digests(data: bytes, chunks: Iterable[int] = (4096,)) -> dict[str, tuple[str, int]] | None:
    h = ZipStreamHasher()
    sizes = list(chunks)
    pos = i = 0
    while pos < len(data):
        n = max(1, sizes[i % len(sizes)])
        h.feed(data[pos : pos + n])
        pos, i = pos + n, i + 1
    return h.digests()


class _Unseekable(io.RawIOBase):
    """A write-only sink: zipfile then writes data descriptors for every entry."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def py_zip(entries: Iterable[tuple[str, bytes, int]], descriptors: bool = False) -> bytes:
    """A zip written by Python's zipfile: (name, content, ZIP_STORED/ZIP_DEFLATED)."""
    sink: io.BytesIO | _Unseekable = _Unseekable() if descriptors else io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        with zipfile.ZipFile(sink, "w") as z:
            for name, data, method in entries:
                info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                z.writestr(info, data)
    return bytes(sink.data) if isinstance(sink, _Unseekable) else sink.getvalue()


# --- hand-made zips whose headers can lie ---------------------------------------------


@dataclass
class Raw:
    name: bytes | str
    content: bytes = b""
    method: int = 8
    flags: int = 0
    crc: int | None = None  # defaults are the truth about `content`
    usize: int | None = None
    payload: bytes | None = None  # the stored bytes; default: content, deflated if method 8
    csize: int | None = None  # default len(payload)
    local_name: bytes | None = None
    descriptor: bool = False

    def raw_name(self) -> bytes:
        return self.name.encode() if isinstance(self.name, str) else self.name


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def raw_zip(entries: Iterable[Raw], comment: bytes = b"", zip64: bool = False) -> bytes:
    entries = list(entries)
    out = bytearray()
    central = bytearray()
    for e in entries:
        name = e.raw_name()
        payload = e.payload if e.payload is not None else (deflate(e.content) if e.method == 8 else e.content)
        crc = zlib.crc32(e.content) if e.crc is None else e.crc
        usize = len(e.content) if e.usize is None else e.usize
        flags = e.flags | (8 if e.descriptor else 0)
        lname = e.local_name if e.local_name is not None else name
        csize = len(payload) if e.csize is None else e.csize
        offset = len(out)
        hdr = (0, 0, 0) if e.descriptor else (crc, csize, usize)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, e.method, 0, 0x21, *hdr, len(lname), 0)
        out += lname + payload
        if e.descriptor:
            out += struct.pack("<4sIII", b"PK\x07\x08", crc, csize, usize)
        sizes = (crc, csize, usize, offset)
        extra = b""
        if zip64:
            extra = struct.pack("<HHQQQ", 1, 24, usize, csize, offset)
            sizes = (crc, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            flags,
            e.method,
            0,
            0x21,
            sizes[0],
            sizes[1],
            sizes[2],
            len(name),
            len(extra),
            0,
            0,
            0,
            0,
            sizes[3],
        )
        central += name + extra
    cd_off = len(out)
    out += central
    count = len(entries)
    if zip64:
        rec_at = len(out)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), cd_off)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, rec_at, 1)
        count, cd_size, cd_off = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        cd_size = len(central)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_off, len(comment))
    return bytes(out + comment)


def test_raw_zip_is_a_zip() -> None:
    data = raw_zip([Raw(P + "a.go", b"package a\n"), Raw(P + "b", b"x" * 100, method=0, descriptor=True)])
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.read(P + "a.go") == b"package a\n" and z.testzip() is None
    with zipfile.ZipFile(io.BytesIO(raw_zip([Raw(P + "a.go", b"x")], zip64=True))) as z:
        assert z.read(P + "a.go") == b"x"


# --- h1 ----------------------------------------------------------------------------------


def test_worked_example(tmp_path: Path) -> None:
    digests = [(f"example.com/hello@v1.0.0/{n}", sha(d)) for n, d in HELLO_FILES]
    assert digests[0][1] == "696bef3df531155a2b7f73b4ede6dacadad7d4d853364be19d481822075573bd"
    assert digests[1][1] == "c565e4b43a1a3b5823b2e797c67a15453639be33f9ff8985577d59809cb35895"
    assert h1_from_digests(digests) == h1_from_digests(reversed(digests)) == HELLO_H1
    assert h1_gomod(HELLO_MOD) == HELLO_GOMOD_H1
    ours = save(tmp_path, zipped(HELLO_FILES, "example.com/hello", "v1.0.0"))
    stored = [(f"example.com/hello@v1.0.0/{n}", d, zipfile.ZIP_STORED) for n, d in HELLO_FILES]
    theirs = save(tmp_path, py_zip(stored), "py.zip")
    assert h1_zip(ours) == h1_zip(theirs) == HELLO_H1
    assert check_zip(ours, "example.com/hello", "v1.0.0") == CheckedZip(HELLO_H1, 2, 85)


def test_directory_entries_change_h1(tmp_path: Path) -> None:
    prefix = "example.com/hello@v1.0.1/"
    files = [(prefix + n, d, zipfile.ZIP_DEFLATED) for n, d in HELLO_FILES]
    plain = save(tmp_path, py_zip(files), "plain.zip")
    with_dir = save(tmp_path, py_zip([(prefix, b"", zipfile.ZIP_STORED), *files]), "dir.zip")
    # The values go reported (protocol notes 5.4).
    assert h1_zip(plain).startswith("h1:e819")
    assert h1_zip(with_dir).startswith("h1:BCqq")
    checked = check_zip(with_dir, "example.com/hello", "v1.0.1")
    assert checked.h1 == h1_zip(with_dir) and checked.files == 2
    nested = save(tmp_path, py_zip([*files, (prefix + "d/", b"", zipfile.ZIP_STORED)]), "d.zip")
    assert h1_zip(nested) not in (h1_zip(plain), h1_zip(with_dir))
    assert check_zip(nested, "example.com/hello", "v1.0.1").h1 == h1_zip(nested)


def test_h1_sorts_names_as_bytes() -> None:
    # A raw 0xE9 byte (kept as the escape U+DCE9) sorts before U+D000 (ED 80 80)
    # as bytes, which is what Go compares, but after it as code points.
    names = ["a/b", "a.b", "\ud000", "\udce9", "Z", "a"]
    raw = [n.encode("utf-8", "surrogateescape") for n in names]
    summary = b"".join(b"%s  %s\n" % (sha(r).encode(), r) for r in sorted(raw))
    want = "h1:" + base64.b64encode(hashlib.sha256(summary).digest()).decode()
    assert h1_from_digests((n, sha(r)) for n, r in zip(names, raw)) == want
    assert sorted(names) != [r.decode("utf-8", "surrogateescape") for r in sorted(raw)]


@pytest.mark.parametrize(
    "items",
    [[("a\nb", sha(b""))], [("a", "ABC")], [("a", sha(b"").upper())], [("\ud800", sha(b""))]],
)
def test_h1_rejects(items: list[tuple[str, str]]) -> None:
    with pytest.raises(ZipError):
        h1_from_digests(items)


def test_h1_zip_hashes_raw_name_bytes(tmp_path: Path) -> None:
    # No UTF-8 flag: zipfile would decode the name as cp437; Go keeps the bytes.
    raw = b"m@v1/caf\xe9"
    path = save(tmp_path, raw_zip([Raw(raw, b"x")]))
    assert h1_zip(path) == h1_from_digests([(raw.decode("utf-8", "surrogateescape"), sha(b"x"))])


def test_h1_zip_duplicate_names_hash_the_last(tmp_path: Path) -> None:
    # dirhash.HashZip looks names up in a map: every line gets the last entry's content.
    path = save(tmp_path, raw_zip([Raw("x", b"first"), Raw("x", b"second")]))
    assert h1_zip(path) == h1_from_digests([("x", sha(b"second"))] * 2)


# --- check_zip: accepted -----------------------------------------------------------------


def test_check_zip_accepts_variants(tmp_path: Path) -> None:
    files = [Raw(P + "go.mod", b"module example.com/m\n"), Raw(P + "a.go", b"package a\n" * 50)]
    want = h1_from_digests((e.raw_name().decode(), sha(e.content)) for e in files)
    variants = {
        "plain": raw_zip(files),
        "comment": raw_zip(files, comment=b"made by hand"),
        "zip64": raw_zip(files, zip64=True),
        "stored+descriptor": raw_zip([Raw(e.name, e.content, method=0, descriptor=True) for e in files]),
        "crc 0 is not checked (Go)": raw_zip([Raw(e.name, e.content, crc=0) for e in files]),
        "prefix entry": raw_zip([Raw(P, method=0), *files]),
        "repeated directory entry": raw_zip([*files, Raw(P + "d/", method=0), Raw(P + "d/", method=0)]),
        "python deflate+descriptor": py_zip(((e.raw_name().decode(), e.content, 8) for e in files), True),
    }
    contents = [(e.raw_name().decode(), sha(e.content)) for e in files]
    special = {
        "prefix entry": h1_from_digests([(P, sha(b"")), *contents]),
        "repeated directory entry": h1_from_digests([*contents, (P + "d/", sha(b"")), (P + "d/", sha(b""))]),
    }
    for label, data in variants.items():
        path = save(tmp_path, data, "v.zip")
        checked = check_zip(path, M, V)
        assert checked.h1 == h1_zip(path) == special.get(label, want), label
        assert checked.files == 2 and checked.size == sum(len(e.content) for e in files)


def test_check_zip_empty_zip(tmp_path: Path) -> None:
    path = save(tmp_path, raw_zip([]))
    assert check_zip(path, M, V) == CheckedZip(h1_from_digests([]), 0, 0)
    assert stream_digests(path.read_bytes()) == {}


def test_check_zip_trusts_complete_digests_only(tmp_path: Path) -> None:
    data = zipped(HELLO_FILES)
    path = save(tmp_path, data)
    digests = stream_digests(data)
    assert digests is not None
    assert check_zip(path, M, V, digests) == check_zip(path, M, V)
    # Digests are trusted for content: a lie shows up in the h1 (that is the contract).
    lie = {**digests, P + "hello.go": (sha(b"other"), len(HELLO_GO))}
    assert check_zip(path, M, V, lie).h1 != check_zip(path, M, V).h1
    # Incomplete or size-inconsistent digests are ignored and the entries are read.
    partial = {P + "go.mod": digests[P + "go.mod"]}
    wrong_size = {**lie, P + "hello.go": (sha(b"other"), 5)}
    for d in (partial, wrong_size, {}):
        assert check_zip(path, M, V, d) == check_zip(path, M, V)


# --- check_zip: refused --------------------------------------------------------------------


def z(*entries: Raw) -> bytes:
    return raw_zip(entries)


_BIG = 300 << 20
_ONE = z(Raw(P + "a", b"x"))
_HOSTILE: dict[str, tuple[bytes, str]] = {
    # modfetch's check right after the download
    "no prefix": (z(Raw(P + "a.go"), Raw("hello.go")), f"zip for {M}@{V} has unexpected file hello.go"),
    "other version": (z(Raw(f"{M}@v1.0.1/a.go")), f"has unexpected file {M}@v1.0.1/a.go"),
    "no slash after version": (z(Raw(f"{M}@{V}")), "has unexpected file"),
    # names (x/mod/zip checkZip)
    "unclean //": (z(Raw(P + "a//b.go")), f"{P}a//b.go: file path is not clean"),
    "unclean ..": (z(Raw(P + "a/../b.go")), "file path is not clean"),
    "unclean dir": (z(Raw(P + "a//", method=0)), "file path is not clean"),
    "bad char": (z(Raw(P + "a:b.go")), "malformed file path \"a:b.go\": invalid char ':'"),
    "newline": (z(Raw(P + "a\nb.go")), "invalid char"),
    "invalid UTF-8": (z(Raw(P.encode() + b"\xff.go")), "invalid UTF-8"),
    "windows name": (z(Raw(P + "con.go")), "disallowed as path element component on Windows"),
    "case collision": (
        z(Raw(P + "a.go"), Raw(P + "A.go")),
        f'{P}A.go: case-insensitive file name collision: "a.go" and "A.go"',
    ),
    "unicode collision (Kelvin sign)": (
        z(Raw(P + "k.go"), Raw(P + "\u212a.go")),
        'case-insensitive file name collision: "k.go" and "\u212a.go"',
    ),
    "directory collision": (
        z(Raw(P + "A/", method=0), Raw(P + "a/b.go")),
        'case-insensitive file name collision: "A" and "a"',
    ),
    "duplicate": (z(Raw(P + "a.go"), Raw(P + "a.go")), 'multiple entries for file "a.go"'),
    "file and directory": (z(Raw(P + "a"), Raw(P + "a/b.go")), 'entry "a" is both a file and a directory'),
    "nested go.mod": (z(Raw(P + "sub/go.mod")), f"{P}sub/go.mod: go.mod file not in module root directory"),
    "nested Go.Mod": (z(Raw(P + "sub/Go.Mod")), "go.mod file not in module root directory"),
    "GO.MOD": (z(Raw(P + "GO.MOD")), "go.mod files must have lowercase names"),
    # sizes
    "total size": (
        # The size error wins over the bad name, as in Go (CheckedFiles.Err).
        z(Raw(P + "a:b"), Raw(P + "a", usize=_BIG), Raw(P + "b", usize=_BIG)),
        f"total uncompressed size of module contents too large (max size is {MAX_ZIP_FILE} bytes)",
    ),
    "go.mod size": (
        z(Raw(P + "go.mod", usize=MAX_GO_MOD + 1)),
        f"go.mod file too large (max size is {MAX_GO_MOD} bytes)",
    ),
    "LICENSE size": (
        z(Raw(P + "LICENSE", usize=MAX_LICENSE + 1)),
        f"LICENSE file too large (max size is {MAX_LICENSE} bytes)",
    ),
    "more than declared": (
        z(Raw(P + "a", b"x" * 1000, usize=10)),
        "uncompressed size is larger than declared size (10 bytes)",
    ),
    "less than declared": (z(Raw(P + "a", b"x" * 1000, usize=2000)), "smaller than declared size"),
    "stored size mismatch": (z(Raw(P + "a", b"x" * 10, method=0, usize=11)), "stored entry with differing"),
    # contents
    "crc": (z(Raw(P + "a", b"x", crc=1)), f"{P}a: checksum error"),
    "descriptor crc": (z(Raw(P + "a", b"x", crc=1, descriptor=True)), "checksum error"),
    "corrupt deflate": (z(Raw(P + "a", b"x", payload=b"\xff" * 8)), "corrupt deflate data"),
    "truncated deflate": (
        z(Raw(P + "a", b"x" * 99, payload=deflate(bytes(range(99)))[:-3])),
        "unexpected end of compressed data",
    ),
    "local name differs": (
        z(Raw(P + "a.go", local_name=(P + "b.go").encode())),
        "local header names a different file",
    ),
    "encrypted": (z(Raw(P + "a", flags=1)), "encrypted zip entries are not supported"),
    "bzip2": (z(Raw(P + "a", method=12, payload=b"")), "unsupported compression method 12"),
    "directory with content": (z(Raw(P + "d/", b"x")), f"{P}d/: directory entry has content"),
    # structure
    "garbage": (b"this is not a zip file" * 10, "not a valid zip file"),
    "empty file": (b"", "not a valid zip file"),
    "truncated": (_ONE[:-5], "not a valid zip file"),
    "trailing data": (_ONE + b"junk", "data after the end of central directory record"),
    "prepended data": (b"junk" + _ONE, "central directory is not where the end record says"),
    "second end record in comment": (
        raw_zip([Raw(P + "a", b"x")], comment=b"PK\x05\x06" + bytes(18)),
        "not a valid zip file",
    ),
    "data overlaps central directory": (
        z(Raw(P + "a", b"x" * 10, method=0, csize=1000, usize=1000)),
        "data runs into the central directory",
    ),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_check_zip_refuses(case: str, tmp_path: Path) -> None:
    data, message = _HOSTILE[case]
    path = save(tmp_path, data)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ZipError) as exc:
        check_zip(path, M, V)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)
    # The streaming fast path must refuse it too (or give up and leave it to the reader).
    digests = stream_digests(data, (1, 7, 4096))
    with pytest.raises(ZipError):
        check_zip(path, M, V, digests)
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted or written


def test_check_zip_refuses_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    path.write_bytes(zipped(HELLO_FILES))
    os.truncate(path, MAX_ZIP_FILE + 1)  # sparse: cheap
    message = "module zip file is too large (524288001 bytes; limit is 524288000 bytes)"
    with pytest.raises(ZipError, match=re.escape(message)):
        check_zip(path, M, V)


def test_entry_count_is_capped(tmp_path: Path) -> None:
    data = bytearray(raw_zip([Raw(P + "a", b"x")]))
    struct.pack_into("<HH", data, len(data) - 14, 3, 3)
    with pytest.raises(ZipError, match="holds 1 entries, end record says 3"):
        check_zip(save(tmp_path, bytes(data)), M, V)
    zip64 = bytearray(raw_zip([Raw(P + "a", b"x")], zip64=True))
    rec_at = len(zip64) - 22 - 20 - 56
    struct.pack_into("<QQ", zip64, rec_at + 24, MAX_ENTRIES + 1, MAX_ENTRIES + 1)
    with pytest.raises(ZipError, match=f"too many entries \\({MAX_ENTRIES + 1}; modmesh's limit"):
        check_zip(save(tmp_path, bytes(zip64)), M, V)


def test_h1_zip_refuses_unbounded_work(tmp_path: Path) -> None:
    # Overlapping entries could make Go's HashZip inflate the same data many times over.
    data = raw_zip([Raw(P + "a", usize=_BIG), Raw(P + "b", usize=_BIG)])
    with pytest.raises(ZipError, match="total uncompressed size of module contents too large"):
        h1_zip(save(tmp_path, data))


def test_zip_bomb_is_bounded(tmp_path: Path) -> None:
    """64 MiB of zeros declared as 1 KiB: refused quickly, with a few MiB of memory."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush()
    data = raw_zip([Raw(P + "bomb", b"", usize=1024, crc=0, payload=payload)])
    path = save(tmp_path, data)
    tracemalloc.start()
    try:
        with pytest.raises(ZipError, match="larger than declared size"):
            check_zip(path, M, V)
        with pytest.raises(ZipError, match="larger than declared size"):
            h1_zip(path)
        assert stream_digests(data, (65536,)) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# --- ZipStreamHasher --------------------------------------------------------------------


def reference_digests(data: bytes) -> dict[str, tuple[str, int]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: (sha(z.read(i)), i.file_size) for i in z.infolist()}


_contents = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda b, n: (b * n)[:200_000], st.binary(min_size=1, max_size=20), st.integers(0, 20_000)),
)
_entries = st.lists(
    st.tuples(
        st.sampled_from(["a.go", "b/c.go", "d/", "e", "f/g/h.txt", "\u00e9.go"]),
        _contents,
        st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
    ),
    max_size=6,
    unique_by=lambda e: e[0],
)
_chunkings = st.lists(st.integers(1, 70_000), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(_entries, st.booleans(), _chunkings)
def test_stream_hasher_matches_zipfile(
    entries: list[tuple[str, bytes, int]], descriptors: bool, chunks: list[int]
) -> None:
    entries = [(P + n, b"" if n.endswith("/") else d, m) for n, d, m in entries]
    data = py_zip(entries, descriptors)
    got = stream_digests(data, chunks)
    if descriptors and any(m == zipfile.ZIP_STORED for _, _, m in entries):
        assert got is None or got == reference_digests(data)  # stored + descriptor: may give up
    else:
        assert got == reference_digests(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), _chunkings)
def test_stream_hasher_never_raises_on_random_bytes(data: bytes, chunks: list[int]) -> None:
    stream_digests(data, chunks)
    stream_digests(b"PK\x03\x04" + data, chunks)
    stream_digests(zipped(HELLO_FILES)[:100] + data, chunks)


_EDITS = ["set", "insert", "delete"]
_SEED_ZIPS = [
    zipped([*HELLO_FILES, ("sub/data.bin", bytes(range(256)) * 40)]),
    py_zip([(P + "a", b"x" * 300, 8), (P + "b", b"y", 0)], descriptors=False),
    py_zip([(P + "a", b"abc" * 300, 8), (P + "d/", b"", 8)], descriptors=True),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SEED_ZIPS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(_EDITS)), min_size=1, max_size=4),
    _chunkings,
)
def test_stream_fast_path_agrees_with_reading(
    seed: bytes, edits: list[tuple[int, int, str]], chunks: list[int]
) -> None:
    """Whatever the streaming parser vouches for, reading the file concludes the same."""
    data = bytearray(seed)
    for pos, value, op in edits:
        pos %= len(data) + 1
        if op == "set" and pos < len(data):
            data[pos] = value
        elif op == "insert":
            data[pos:pos] = bytes([value])
        else:
            del data[pos : pos + 1 + value % 8]
    digests = stream_digests(bytes(data), chunks)
    if digests is None:
        return  # most edits make the parser give up, which is always safe
    with tempfile.TemporaryDirectory() as tmp:
        path = save(Path(tmp), bytes(data))
        outcomes: list[CheckedZip | str] = []
        for d in (None, digests):
            try:
                outcomes.append(check_zip(path, M, V, d))
            except ZipError:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1]


def test_stream_hasher_gives_up_cleanly() -> None:
    good = zipped(HELLO_FILES)
    assert stream_digests(good) is not None
    assert stream_digests(good + b"x") is None  # trailing data
    assert stream_digests(good[:-1]) is None  # incomplete
    assert stream_digests(b"x" + good) is None  # prepended data
    stored_dd = raw_zip([Raw(P + "a", b"xyz", method=0, descriptor=True)])
    assert stream_digests(stored_dd) is None
    assert stream_digests(raw_zip([Raw(P + "a", b"x")], zip64=True)) is None
    assert stream_digests(raw_zip([Raw(P + "a", b"x", crc=1)])) is None  # left to check_zip to explain
    h = ZipStreamHasher()
    h.feed(good)
    h.feed(b"")
    assert h.digests() is not None
    h.feed(b"more")
    assert h.digests() is None


def test_stream_hasher_memory_is_bounded() -> None:
    """A legitimate 48 MiB entry behind a data descriptor: a few MiB of memory at most."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = bytes(range(256)) * 4096
    payload = b"".join(comp.compress(block) for _ in range(48)) + comp.flush()
    content_crc = 0
    for _ in range(48):
        content_crc = zlib.crc32(block, content_crc)
    data = raw_zip([Raw(P + "big", b"", crc=content_crc, usize=48 << 20, payload=payload, descriptor=True)])
    tracemalloc.start()
    try:
        got = stream_digests(data, (256 << 10,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == {P + "big": (sha(block * 48), 48 << 20)}
    assert peak < 16 << 20


# --- creating zips -------------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.namelist()


def _tree_files(go: str) -> dict[str, bytes]:
    return {
        "go.mod": f"module example.com/tree\n\ngo {go}\n".encode(),
        "LICENSE": b"do what you like\n",
        "a.go": b"package tree\n",
        "sub/b.go": b"package sub\n",
        ".dotfile": b"kept\n",
        "testdata/x.txt": b"kept\n",
        "vendor/modules.txt": b"# only kept before go 1.24\n",
        "vendor/v.go": b"package vendor // directly in vendor/: kept\n",
        "vendor/golang.org/x/y/y.go": b"package y // a vendored package: omitted\n",
        "pkg/vendor/vendor.go": b"package vendor // omitted before go 1.24 (Go's old offset bug)\n",
        "pkg/vendor/deep/d.go": b"package deep // omitted\n",
        "nested/go.mod": b"module example.com/tree/nested\n",
        "nested/n.go": b"package nested // another module: omitted\n",
        "other/GO.MOD": b"module example.com/tree/other\n",  # case-insensitive nested module
        "other/o.go": b"package other\n",
        ".git/config": b"[core]\n",
        "sub/.hg/store": b"x\n",
        "x/.svn/entries": b"x\n",
        ".bzr/branch": b"x\n",
        ".hg_archival.txt": b"repo: 0\n",
    }


TREE_KEPT = {"go.mod", "LICENSE", "a.go", "sub/b.go", ".dotfile", "testdata/x.txt", "vendor/v.go"}
TREE_KEPT_BY_GO = {"1.24": TREE_KEPT | {"pkg/vendor/vendor.go"}, "1.21": TREE_KEPT | {"vendor/modules.txt"}}


def tree(root: Path, go: str) -> Path:
    make_tree(root, _tree_files(go))
    os.symlink("a.go", root / "link.go")
    os.symlink("sub", root / "linkdir")
    os.mkfifo(root / "fifo")
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize("go", ["1.24", "1.21"])
def test_create_zip_leaves_out_what_go_leaves_out(go: str, tmp_path: Path) -> None:
    root = tree(tmp_path / "src", go)
    out = io.BytesIO()
    create_zip(root, "example.com/tree", "v1.0.0", out)
    names = zip_names(out.getvalue())
    prefix = "example.com/tree@v1.0.0/"
    assert names == sorted(names, key=str.encode)
    assert {n.removeprefix(prefix) for n in names} == TREE_KEPT_BY_GO[go]
    # zip.Create applies the same rules to in-memory files, except that it has no
    # VCS-directory rule (that one is CreateFromDir's).
    mem = io.BytesIO()
    create_zip_from_files(_tree_files(go).items(), "example.com/tree", "v1.0.0", mem)
    vcs = {".git/config", "sub/.hg/store", "x/.svn/entries", ".bzr/branch"}
    assert {n.removeprefix(prefix) for n in zip_names(mem.getvalue())} == TREE_KEPT_BY_GO[go] | vcs


def test_create_zip_from_files_keeps_vcs_dirs() -> None:
    """zip.Create has no VCS rule (only CreateFromDir does); and sorts like create_zip."""
    data = zipped([("b.go", b""), (".git/config", b""), ("a.go", b"")])
    assert zip_names(data) == [P + ".git/config", P + "a.go", P + "b.go"]


_path_elements = st.sampled_from(["a", "b", "c.go", "D", "\u00e9", "x y", "-z"])
_tree_names = st.lists(st.lists(_path_elements, min_size=1, max_size=3).map("/".join), max_size=8)


def _clash(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


@settings(max_examples=25, deadline=None)
@given(_tree_names, st.data())
def test_create_zip_is_deterministic_and_checks(names: list[str], data: st.DataObject) -> None:
    files: dict[str, bytes] = {}
    for name in names:
        if any(_clash(name, other) for other in files):
            continue
        files[name] = data.draw(_contents)
    with tempfile.TemporaryDirectory() as tmp:
        a = make_tree(Path(tmp) / "a", files)
        b = make_tree(Path(tmp) / "b", dict(reversed(list(files.items()))))
        out_a, out_b = io.BytesIO(), io.BytesIO()
        create_zip(a, M, V, out_a)
        create_zip(b, M, V, out_b)
        assert out_a.getvalue() == out_b.getvalue() == zipped(files.items())
        path = save(Path(tmp), out_a.getvalue())
        checked = check_zip(path, M, V)
        assert checked.h1 == h1_zip(path) == h1_from_digests((P + n, sha(d)) for n, d in files.items())
        assert checked == check_zip(path, M, V, stream_digests(out_a.getvalue(), (1000,)))
        assert checked.files == len(files) and checked.size == sum(map(len, files.values()))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("a.go", b""), ("A.go", b"")], 'a.go: case-insensitive file name collision: "A.go" and "a.go"'),
        ([("a.go", b""), ("a.go", b"")], 'a.go: multiple entries for file "a.go"'),
        ([("a", b""), ("a/b.go", b"")], 'a/b.go: entry "a" is both a file and a directory'),
        ([("a:b.go", b"")], "a:b.go: malformed file path \"a:b.go\": invalid char ':'"),
        ([("./a.go", b"")], "./a.go: file path is not clean"),
        ([("a/", b"")], "a/: file path is not clean"),
        ([("", b"")], ": file path is not clean"),
        ([("/a.go", b"")], "/a.go: file path is not relative"),
        ([("GO.MOD", b"")], "GO.MOD: go.mod files must have lowercase names"),
        ([("go.mod", bytes(MAX_GO_MOD + 1))], "go.mod: go.mod file too large (max size is 16777216 bytes)"),
    ],
)
def test_create_zip_from_files_refuses(files: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(ZipError) as exc:
        zipped(files)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("name", "size", "message"),
    [
        ("data.bin", MAX_ZIP_FILE + 1, f"module source tree too large (max size is {MAX_ZIP_FILE} bytes)"),
        ("go.mod", MAX_GO_MOD + 1, "go.mod file too large"),
        ("LICENSE", MAX_LICENSE + 1, "LICENSE: LICENSE file too large"),
    ],
)
def test_create_zip_refuses_large_files(name: str, size: int, message: str, tmp_path: Path) -> None:
    make_tree(tmp_path, {"a.go": b"package a\n"})
    with open(tmp_path / name, "wb") as f:
        f.truncate(size)  # sparse
    with pytest.raises(ZipError, match=re.escape(message)):
        create_zip(tmp_path, M, V, io.BytesIO())


def test_create_zip_streams_large_files(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "big.bin", "wb") as f:
        f.truncate(40 << 20)
    out = tmp_path / "out.zip"
    tracemalloc.start()
    try:
        with open(out, "wb") as fh:
            create_zip(tmp_path / "src", M, V, fh)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20
    assert check_zip(out, M, V).size == 40 << 20


# --- case folding: the go command as oracle -----------------------------------------------

_FOLD_PROGRAM = """package main

import (
	"bufio"
	"fmt"
	"os"
	"unicode"
)

// Print every rune whose strToFold key (x/mod/zip) differs from itself, with the key.
func main() {
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		m := r
		for x := unicode.SimpleFold(r); x != r; x = unicode.SimpleFold(x) {
			m = min(m, x)
		}
		if 'A' <= m && m <= 'Z' {
			m += 'a' - 'A'
		}
		if m != r {
			fmt.Fprintf(w, "%x %x\\n", r, m)
		}
	}
}
"""


@pytest.mark.e2e
def test_case_folding_matches_go(go_bin: str, go_build_cache: Path, tmp_path: Path) -> None:
    from node.golang._zipformat import fold  # the collision key; equal keys must mean strings.EqualFold

    (tmp_path / "go.mod").write_text("module foldcheck\n\ngo 1.21\n")
    (tmp_path / "main.go").write_text(_FOLD_PROGRAM)
    run = subprocess.run(
        [go_bin, "run", "."],
        cwd=tmp_path,
        env=go_env(tmp_path / "env", "off", GOCACHE=str(go_build_cache)),
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    go_key = {int(a, 16): int(b, 16) for a, b in (line.split() for line in run.stdout.splitlines())}
    assert len(go_key) > 1400
    classes: dict[str, set[int]] = {}
    for cp in range(0x110000):
        if not 0xD800 <= cp <= 0xDFFF:
            classes.setdefault(fold(chr(cp)), set()).add(cp)
    for members in classes.values():
        assert len({go_key.get(cp, cp) for cp in members}) == 1, sorted(map(hex, members))
    for cp, key in go_key.items():
        assert fold(chr(cp)) == fold(chr(key)), hex(cp)


# --- the go command as oracle: downloads ------------------------------------------------------


@dataclass
class Version:
    path: str
    version: str
    mod: bytes
    zip_data: bytes
    info: bytes = b""
    expect_files: set[str] | None = None  # relative names go must extract
    h1_prefix: str = ""  # a known prefix of the real Sum

    def __post_init__(self) -> None:
        if not self.info:
            self.info = json.dumps({"Version": self.version, "Time": "2024-01-02T03:04:05Z"}).encode()


def write_proxy(root: Path, versions: Iterable[Version]) -> str:
    for v in versions:
        d = root / modpath.escape_path(v.path) / "@v"
        d.mkdir(parents=True, exist_ok=True)
        stem = modpath.escape_version(v.version)
        (d / f"{stem}.info").write_bytes(v.info)
        (d / f"{stem}.mod").write_bytes(v.mod)
        (d / f"{stem}.zip").write_bytes(v.zip_data)
        with open(d / "list", "a") as f:
            f.write(v.version + "\n")
    return root.as_uri()


def go_download(go_bin: str, tmp: Path, versions: list[Version]) -> dict[str, dict[str, str]]:
    proxy = write_proxy(tmp / "proxy", versions)
    run = subprocess.run(
        [go_bin, "mod", "download", "-json", *(f"{v.path}@{v.version}" for v in versions)],
        env=go_env(tmp / "go", proxy),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out: dict[str, dict[str, str]] = {}
    decoder, text = json.JSONDecoder(), run.stdout.strip()
    while text:
        obj, end = decoder.raw_decode(text)
        out[f"{obj['Path']}@{obj['Version']}"] = obj
        text = text[end:].strip()
    assert len(out) == len(versions), run.stderr
    return out


def corpus_version(file: str) -> Version:
    """A corpus txtar, zipped by create_zip from a materialised tree."""
    stem = file.removesuffix(".txt")
    i = stem.rfind("_v")
    path, version = modpath.unescape_path(stem[:i].replace("_", "/")), modpath.unescape_version(stem[i + 1 :])
    sections = dict(parse_txtar((corpus_root() / file).read_bytes())[1])
    files = {n: d for n, d in sections.items() if n not in (".info", ".mod", ".zip")}
    with tempfile.TemporaryDirectory() as tmp:
        out = io.BytesIO()
        create_zip(make_tree(Path(tmp), files), path, version, out)
    return Version(path, version, sections[".mod"], out.getvalue(), sections[".info"], set(files))


def dir_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_go_accepts_our_zips(go_bin: str, tmp_path: Path) -> None:
    versions: list[Version] = []
    for go in ("1.24", "1.21"):  # the exclusion rules, both vendor variants
        src = tree(tmp_path / f"tree{go}", go)
        out = io.BytesIO()
        version = f"v1.{go[2:]}.0"
        create_zip(src, "example.com/tree", version, out)
        mod = (src / "go.mod").read_bytes()
        versions.append(Version("example.com/tree", version, mod, out.getvalue(), expect_files=TREE_KEPT_BY_GO[go]))
    hello = zipped(HELLO_FILES, "example.com/hello", "v1.0.0")
    versions.append(Version("example.com/hello", "v1.0.0", HELLO_MOD, hello, h1_prefix=HELLO_H1))
    # Upper case in path and version (bang-escaped on the wire, not in the zip); file
    # names with non-ASCII letters and every punctuation character Go allows.
    upper = {
        "go.mod": b"module example.com/Upper/Case\n",
        "donn\u00e9es/\u00e9t\u00e9.txt": b"x\n",
        "A B/c-d_e~f+g=h,i[k]{l}!m#n$o%p&q@r^(s).txt": b"punctuation\n",
        "-dash/.dot": b"x\n",
    }
    upper_zip = zipped(upper.items(), "example.com/Upper/Case", "v0.1.0-Pre")
    versions.append(
        Version("example.com/Upper/Case", "v0.1.0-Pre", upper["go.mod"], upper_zip, expect_files=set(upper))
    )
    # Directory entries (Python's zipfile writes them; Go hashes them, extracts nothing).
    d = "example.com/dirs@v1.0.0/"
    mod = b"module example.com/dirs\n"
    dirs = py_zip(
        [(d, b"", 0), (d + "go.mod", mod, 8), (d + "d/", b"", 0), (d + "d/x.go", b"package d\n", 8), (d + "d/", b"", 0)]
    )  # a repeated directory entry is legal, and hashed twice
    versions.append(Version("example.com/dirs", "v1.0.0", mod, dirs, expect_files={"go.mod", "d/x.go"}))
    mod = b"module example.com/dd\n"
    descriptors = py_zip([("example.com/dd@v1.0.0/go.mod", mod, 8)], descriptors=True)
    versions.append(Version("example.com/dd", "v1.0.0", mod, descriptors))
    quote = corpus_version("rsc.io_quote_v1.5.2.txt")
    quote.h1_prefix = "h1:3fEykkD9"  # what Go's own test proxy computes (protocol notes 7.4)
    versions += [
        quote,
        corpus_version("rsc.io_sampler_v1.3.0.txt"),
        corpus_version("rsc.io_!q!u!o!t!e_v1.5.3-!p!r!e.txt"),
        corpus_version("golang.org_x_text_v0.0.0-20170915032832-14c0d48ead0c.txt"),
        corpus_version("example.com_retract_v1.1.0.txt"),  # no go.mod in the zip
        corpus_version("example.com_dotname_v1.0.0.txt"),  # a .dot directory
    ]

    results = go_download(go_bin, tmp_path, versions)
    for v in versions:
        key = f"{v.path}@{v.version}"
        got = results[key]
        assert "Error" not in got, got
        path = save(tmp_path, v.zip_data, "check.zip")
        digests = stream_digests(v.zip_data, (8192,))
        assert digests is not None or v.path == "example.com/dirs", key  # repeated names: gives up
        assert got["Sum"] == h1_zip(path) == check_zip(path, v.path, v.version).h1, key
        assert got["Sum"] == check_zip(path, v.path, v.version, digests).h1, key
        assert got["Sum"].startswith(v.h1_prefix), key
        assert got["GoModSum"] == h1_gomod(v.mod), key
        if v.expect_files is not None:
            assert dir_files(Path(got["Dir"])) == v.expect_files, key


_GO_REFUSES = {  # module example.com/badN: (relative name, content, crc) entries; "/" = no prefix
    1: [("go.mod", b"module example.com/bad1\n", None), ("/hello.go", b"package x\n", None)],
    2: [("a.go", b"package a\n", None), ("A.go", b"package a\n", None)],
    3: [("sub/go.mod", b"module example.com/bad3/sub\n", None)],
    4: [("GO.MOD", b"module example.com/bad4\n", None)],
    5: [("a.go", b"package a\n", 1)],
    6: [("a:b.go", b"package a\n", None)],
}


def _bad_zip(n: int) -> bytes:
    prefix = f"example.com/bad{n}@v1.0.0/"
    return raw_zip(
        Raw(name[1:] if name.startswith("/") else prefix + name, data, crc=crc) for name, data, crc in _GO_REFUSES[n]
    )


@pytest.mark.e2e
def test_go_refuses_what_check_zip_refuses(go_bin: str, tmp_path: Path) -> None:
    paths = {n: f"example.com/bad{n}" for n in _GO_REFUSES}
    versions = [Version(p, "v1.0.0", f"module {p}\n".encode(), _bad_zip(n)) for n, p in paths.items()]
    results = go_download(go_bin, tmp_path, versions)
    for v in versions:
        go_error = results[f"{v.path}@v1.0.0"].get("Error", "")
        assert go_error, v.path
        with pytest.raises(ZipError) as exc:
            check_zip(save(tmp_path, v.zip_data, "bad.zip"), v.path, v.version)
        ours = str(exc.value)
        if "checksum error" in ours:
            assert "checksum error" in go_error  # Go's archive/zip says just "zip: checksum error"
        else:
            assert ours in go_error, (ours, go_error)
