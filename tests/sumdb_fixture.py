"""FakeSumDB: a real checksum database (like sum.golang.org) on 127.0.0.1 for tests.

An independent oracle: the RFC 6962 hashing, tiles and note signing are written
here from the protocol notes (section 4) with hashlib alone (Ed25519 included:
the venv has no `cryptography`, and a few ms per signed head is plenty), never
imported from the node, so a bug in node/tlog.py or node/note.py cannot hide
behind the same bug in its fixture. Only the h1 of module bytes comes from
node.modzip, and the go command checks those itself.

It is a FakeProxy whose replies are a database (so counters, the request log,
fault injection and stop/start on the same port behave exactly alike), served
both at the root and under `/sumdb/<name>/`:

* `GOSUMDB="<vkey> <url>"` reaches it directly (go accepts an http:// URL there);
* `GOPROXY=<proxy>,<url>` with `GOSUMDB=<vkey>` reaches it as a proxied
  database: a FakeProxy 404s `sumdb/<name>/supported`, this one answers 200.
  Pass `modules=` to make one server a complete GOPROXY plus database.

Misbehaviour for tests: `fork()` rewrites history, `sign_with()` signs with a
wrong key, `corrupt_record()` logs a wrong hash, `inject()` adds Faults.

Run standalone:
    python -m tests.sumdb_fixture --listen 127.0.0.1:8412 --corpus
prints the URL, then the verifier key.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import signal
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from node.golang import dirhash, modpath, modzip
from tests.upstream_fixture import FakeProxy, ModuleSet, Reply

__all__ = [
    "DbKey",
    "FakeSumDB",
    "ed25519_public",
    "ed25519_sign",
    "format_tree",
    "generate_keys",
    "node_hash",
    "parse_tile_path",
    "record_hash",
    "tile_path",
]

_TEXT = "text/plain; charset=UTF-8"  # what Go's sumdb.Server sends
_BINARY = "application/octet-stream"
_ALG_ED25519 = b"\x01"
_EM_DASH = "\u2014"


# --- Ed25519 signing (RFC 8032 section 5.1, pure Python) ---------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493  # group order
_D = -121665 * pow(121666, -1, _P) % _P
_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _add(a: _Point, b: _Point) -> _Point:
    p1 = (a[1] - a[0]) * (b[1] - b[0]) % _P
    p2 = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c = 2 * a[3] * b[3] * _D % _P
    d = 2 * a[2] * b[2] % _P
    e, f, g, h = p2 - p1, d - c, d + c, p2 + p1
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, pt: _Point) -> _Point:
    acc: _Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        s >>= 1
    return acc


def _base() -> _Point:
    y = 4 * pow(5, -1, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x & 1:
        x = _P - x
    return (x, y, 1, x * y % _P)


_G = _base()


def _compress(pt: _Point) -> bytes:
    zinv = pow(pt[2], -1, _P)
    x, y = pt[0] * zinv % _P, pt[1] * zinv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(seed).digest()
    return int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254), h[32:]


def ed25519_public(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte seed."""
    return _compress(_mul(_expand(seed)[0], _G))


def ed25519_sign(seed: bytes, msg: bytes, public: bytes | None = None) -> bytes:
    """Deterministic 64-byte Ed25519 signature (same bytes as any conforming signer)."""
    a, prefix = _expand(seed)
    pub = public if public is not None else _compress(_mul(a, _G))
    r = int.from_bytes(hashlib.sha512(prefix + msg).digest(), "little") % _L
    big_r = _compress(_mul(r, _G))
    k = int.from_bytes(hashlib.sha512(big_r + pub + msg).digest(), "little") % _L
    return big_r + ((r + k * a) % _L).to_bytes(32, "little")


# --- keys and notes (notes 4.5, 4.8; x/mod/sumdb/note) ----------------------------


def _key_hash(name: str, pub: bytes) -> int:
    return int(struct.unpack(">I", hashlib.sha256(name.encode() + b"\n" + pub).digest()[:4])[0])


def _check_name(name: str) -> None:
    if not name or any(c in name for c in " +") or any(ord(c) < 0x20 for c in name):
        raise ValueError(f"invalid key name {name!r}: must be non-empty, without spaces or '+'")


@dataclass(frozen=True, eq=False)
class DbKey:
    """An Ed25519 signer for one database name; `vkey` goes into GOSUMDB."""

    name: str
    seed: bytes

    public: bytes = field(init=False, repr=False)  # 0x01 ‖ 32-byte key, as in the vkey

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        object.__setattr__(self, "public", _ALG_ED25519 + ed25519_public(self.seed))

    @property
    def key_hash(self) -> int:
        return _key_hash(self.name, self.public)

    @property
    def vkey(self) -> str:
        """`<name>+<hash8hex>+<base64(0x01 ‖ pubkey)>`."""
        return f"{self.name}+{self.key_hash:08x}+{base64.b64encode(self.public).decode()}"

    @property
    def skey(self) -> str:
        """`PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01 ‖ seed)>`, Go's signer key form."""
        seed = base64.b64encode(_ALG_ED25519 + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{seed}"

    def signature_line(self, text: bytes) -> str:
        sig = struct.pack(">I", self.key_hash) + ed25519_sign(self.seed, text, self.public[1:])
        return f"{_EM_DASH} {self.name} {base64.b64encode(sig).decode()}\n"

    def sign(self, text: str | bytes) -> bytes:
        """A signed note: text, a blank line, one signature line."""
        raw = text.encode() if isinstance(text, str) else text
        if not raw.endswith(b"\n"):
            raise ValueError("note text must end in a newline")
        return raw + b"\n" + self.signature_line(raw).encode()

    @classmethod
    def from_skey(cls, skey: str) -> DbKey:
        """Parse a `PRIVATE+KEY+...` signer key (checks its key hash)."""
        parts = skey.split("+", 4)  # the base64 key may itself contain "+"
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValueError("malformed signer key")
        _, _, name, khash, b64 = parts
        raw = base64.b64decode(b64, validate=True)
        if len(raw) != 33 or raw[:1] != _ALG_ED25519:
            raise ValueError("unsupported signer key algorithm")
        key = cls(name, raw[1:])
        if f"{key.key_hash:08x}" != khash:
            raise ValueError("signer key hash does not match")
        return key

    def __repr__(self) -> str:  # never print the seed
        return f"DbKey({self.vkey})"


def generate_keys(name: str, seed: bytes | None = None) -> DbKey:
    """A signer for `name`; random unless `seed` (32 bytes) is given."""
    return DbKey(name, os.urandom(32) if seed is None else bytes(seed))


# --- tlog (notes 4.5; x/mod/sumdb/tlog) --------------------------------------------


def record_hash(text: bytes) -> bytes:
    """RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + text).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def format_tree(n: int, root: bytes) -> bytes:
    return f"go.sum database tree\n{n}\n{base64.b64encode(root).decode()}\n".encode()


def tile_path(h: int, level: int, n: int, w: int) -> str:
    """`tile/H/L/NNN[.p/W]`; level -1 is written `data`."""
    digits = f"{n % 1000:03d}"
    while n >= 1000:
        n //= 1000
        digits = f"x{n % 1000:03d}/{digits}"
    suffix = "" if w == 1 << h else f".p/{w}"
    return f"tile/{h}/{'data' if level == -1 else level}/{digits}{suffix}"


_DIGITS = re.compile(r"x?[0-9]{1,3}")


def parse_tile_path(path: str) -> tuple[int, int, int, int]:
    """(H, L, N, W) for a canonical tile path (L = -1 for data); ValueError otherwise."""
    f = path.split("/")
    if len(f) < 4 or f[0] != "tile" or not f[1].isdigit() or not (f[2] == "data" or f[2].isdigit()):
        raise ValueError(f"malformed tile path {path!r}")
    h, level = int(f[1]), (-1 if f[2] == "data" else int(f[2]))
    if not 1 <= h <= 30:
        raise ValueError(f"malformed tile path {path!r}")
    w = 1 << h
    rest = f[3:]
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not rest[-1].isdigit() or not 0 < int(rest[-1]) < w:
            raise ValueError(f"malformed tile path {path!r}")
        w = int(rest[-1])
        rest = [*rest[:-2], rest[-2][:-2]]
    n = 0
    for part in rest:
        if not _DIGITS.fullmatch(part):
            raise ValueError(f"malformed tile path {path!r}")
        n = n * 1000 + int(part.removeprefix("x"))
    if tile_path(h, level, n, w) != path:  # one spelling per tile, as Go insists
        raise ValueError(f"malformed tile path {path!r}")
    return h, level, n, w


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every complete-subtree hash: levels[l][i] covers leaves [i*2^l, (i+1)*2^l)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def _tree_hash(levels: list[list[bytes]], n: int) -> bytes:
    """Root of the first n leaves: maximal complete subtrees left to right, folded from the right."""
    if n == 0:
        return hashlib.sha256(b"").digest()
    parts: list[bytes] = []
    start = 0
    for level in range(n.bit_length() - 1, -1, -1):
        if n & (1 << level):
            parts.append(levels[level][start >> level])
            start += 1 << level
    root = parts[-1]
    for h in reversed(parts[:-1]):
        root = node_hash(h, root)
    return root


def _tile_bytes(levels: list[list[bytes]], records: list[bytes], h: int, level: int, n: int, w: int) -> bytes | None:
    """A hash tile (level >= 0) or data tile (level -1), or None if the tree is too small."""
    start = n << h
    if level == -1:
        if start + w > len(records):
            return None
        return b"".join(r + b"\n" for r in records[start : start + w])  # Go: FormatRecord minus id
    lvl = level * h
    if lvl >= len(levels) or start + w > len(levels[lvl]):
        return None
    return b"".join(levels[lvl][start : start + w])


# --- the server ----------------------------------------------------------------------


_MOD_VER = re.compile(r"[^@]+@v[0-9]+\.[0-9]+\.[0-9]+(-[^@]*)?(\+incompatible)?")  # Go's modVerRE


def _text(status: int, msg: str) -> Reply:
    # One line then a blank line: the go command prints up to the first blank line.
    return Reply(status, f"{msg}\n\n".encode(), _TEXT)


def _gosum(path: str, version: str, zip_h1: str, mod_h1: str) -> bytes:
    return f"{path} {version} {zip_h1}\n{path} {version}/go.mod {mod_h1}\n".encode()


def _bogus_h1(seed: bytes) -> str:
    return "h1:" + base64.b64encode(hashlib.sha256(b"modmesh-bogus\n" + seed).digest()).decode()


def _h1_zip_bytes(data: bytes, scratch: Path) -> str:
    scratch.write_bytes(data)
    return modzip.h1_zip(scratch)


class FakeSumDB(FakeProxy):
    """An in-memory, append-only go.sum log served like sum.golang.org.

    Records are added explicitly (`add`, `add_corpus`); unlike sum.golang.org a
    lookup never fetches a module, so unknown versions are a plain 404.
    `modules` (optional) are served as a GOPROXY too, FakeProxy style.
    """

    def __init__(
        self,
        name: str = "sum.example.test",
        key: DbKey | None = None,
        *,
        modules: ModuleSet | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tile_height: int = 8,
    ) -> None:
        super().__init__(modules, host=host, port=port)
        self.key = key if key is not None else generate_keys(name)
        if self.key.name != name:
            raise ValueError(f"key is for {self.key.name!r}, not {name!r}")
        self.name = name
        self.tile_height = tile_height
        self.records: list[bytes] = []  # record texts by id: the log
        self._ids: dict[tuple[str, str], int] = {}  # (path, version) -> id served by lookup
        self._signer = self.key
        self._cache: list[list[bytes]] | None = None
        self._signed: tuple[DbKey, bytes, bytes] | None = None
        # (size, hash levels, records) of each pre-fork history, oldest first.
        self._published: list[tuple[int, list[list[bytes]], list[bytes]]] = []
        self._forks = 0

    # --- addresses ---------------------------------------------------------------

    @property
    def vkey(self) -> str:
        return self.key.vkey

    @property
    def gosumdb(self) -> str:
        """GOSUMDB value that reaches this server directly."""
        return f"{self.vkey} {self.url}"

    @property
    def db_url(self) -> str:
        """The database root as seen through this server acting as a proxy."""
        return f"{self.url}/sumdb/{self.name}"

    # --- the log -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.records)

    def _append(self, text: bytes) -> int:
        self.records.append(text)
        self._cache = None
        return len(self.records) - 1

    def add(self, path: str, version: str, zip_h1: str, mod_h1: str) -> int:
        """Log the go.sum lines for path@version as the next record; returns its id.

        Adding the same lines again is a no-op; different lines for a logged
        version are refused (use corrupt_record to log a wrong hash on purpose).
        """
        text = _gosum(path, version, zip_h1, mod_h1)
        have = self._ids.get((path, version))
        if have is not None:
            if self.records[have] != text:
                raise ValueError(f"{path}@{version} is already logged with other hashes")
            return have
        self._ids[(path, version)] = self._append(text)
        return self._ids[(path, version)]

    def add_corpus(self, modules: ModuleSet) -> int:
        """Log every version with both a .mod and a .zip (hashes computed from the bytes).

        Zips whose h1 cannot be computed are skipped. Returns how many were added.
        """
        added = 0
        with tempfile.TemporaryDirectory(prefix="fakesumdb-") as tmp:
            scratch = Path(tmp) / "m.zip"
            for path, versions in modules.items():
                for version, (_info, mod, zip_bytes) in versions.items():
                    if mod is None or zip_bytes is None or (path, version) in self._ids:
                        continue
                    try:
                        zip_h1 = _h1_zip_bytes(zip_bytes, scratch)
                    except modzip.ZipError:
                        continue
                    self.add(path, version, zip_h1, dirhash.h1_gomod(mod))
                    added += 1
        return added

    def record(self, path: str, version: str) -> bytes | None:
        """The record a lookup of path@version serves, or None."""
        rid = self._ids.get((path, version))
        return None if rid is None else self.records[rid]

    def _hashes(self) -> list[list[bytes]]:
        if self._cache is None or len(self._cache[0]) != len(self.records):  # records appended directly
            self._cache = _levels([record_hash(r) for r in self.records])
        return self._cache

    def tree_hash(self, n: int | None = None) -> bytes:
        """Root hash of the first n records (default: all)."""
        n = self.size if n is None else n
        if not 0 <= n <= self.size:
            raise ValueError(f"tree size {n} out of range")
        return _tree_hash(self._hashes(), n)

    def signed_tree(self) -> bytes:
        """The current signed tree head, as /latest and every lookup carry it."""
        text = format_tree(self.size, self.tree_hash())
        if self._signed is None or self._signed[:2] != (self._signer, text):
            self._signed = (self._signer, text, self._signer.sign(text))  # ~3 ms in pure Python
        return self._signed[2]

    def tile(self, h: int, level: int, n: int, w: int) -> bytes | None:
        """Tile bytes, or None when the current tree cannot support that tile.

        After fork(), a tile the pre-fork tree already supported keeps its old
        bytes (see fork); every other tile comes from the current history.
        """
        for _size, levels, records in self._published:
            data = _tile_bytes(levels, records, h, level, n, w)
            if data is not None:
                return data
        return _tile_bytes(self._hashes(), self.records, h, level, n, w)

    # --- misbehaviour -----------------------------------------------------------------

    def sign_with(self, key: DbKey | None) -> None:
        """Sign tree heads with `key` from now on (None: the real key again)."""
        self._signer = self.key if key is None else key

    def corrupt_record(self, path: str, version: str, zip_h1: str | None = None, mod_h1: str | None = None) -> int:
        """Log a wrong record for a logged version and serve it from now on; returns its id.

        The bad record is appended (the log stays append-only and consistent, so
        clients that saw earlier heads accept it: the database itself vouches
        for the wrong hash). Omitted hashes keep their logged value, except that
        with neither given the zip hash is replaced by a made-up one.
        """
        rid = self._ids.get((path, version))
        if rid is None:
            raise KeyError(f"{path}@{version} is not in the log")
        old_zip, old_mod = (line.rsplit(" ", 1)[1] for line in self.records[rid].decode().splitlines())
        if zip_h1 is None and mod_h1 is None:
            zip_h1 = _bogus_h1(self.records[rid])
        text = _gosum(path, version, zip_h1 or old_zip, mod_h1 or old_mod)
        self._ids[(path, version)] = self._append(text)
        return self._ids[(path, version)]

    def fork(self, index: int | None = None, grow: int = 1, keep_published_tiles: bool = True) -> None:
        """Present a different history from now on: record `index` (default: the
        last one) gets a made-up zip hash, so heads for old sizes change.

        grow > 0 also appends records, so a client that knew the old head finds
        it is not a prefix of the new one; grow=0 gives a second, different head
        of the same size.

        With keep_published_tiles (the default) every tile path the pre-fork
        tree supported keeps its old bytes, as CDNs, proxies and client caches
        would: tile bytes for a path never change in an honest log, so only the
        new heads and the tiles for new widths give the fork away. What go 1.27
        says to a client that stored the old head (tests/test_sumdb_fixture.py):
        the default index (the last record: in a partial tile unless the size is
        a multiple of 256), or grow=0 with any index: `SECURITY ERROR ... server
        misbehavior detected!`; an index inside an old full tile with grow > 0:
        `checking tree#N against tree#M: downloaded inconsistent tile`;
        keep_published_tiles=False: its start-up re-check of the stored head
        fails with `checking tree#N: downloaded inconsistent tile`.
        """
        index = self.size - 1 if index is None else index
        if not 0 <= index < self.size:
            raise ValueError(f"no record {index} to fork (size {self.size})")
        if keep_published_tiles:
            self._published.append((self.size, self._hashes(), list(self.records)))
        first, rest = self.records[index].split(b"\n", 1)
        self.records[index] = first.rsplit(b" ", 1)[0] + b" " + _bogus_h1(first).encode() + b"\n" + rest
        self._cache = None
        self._forks += 1
        for i in range(grow):
            fake = _bogus_h1(b"%d/%d" % (self._forks, i))
            self.add(f"fork{self._forks}.example.test/m", f"v1.0.{i}", fake, fake)

    # --- serving ------------------------------------------------------------------------

    def reply_for(self, path: str) -> Reply:
        """The fault-free answer for a percent-decoded request path."""
        prefix = "/sumdb/"
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if rest == self.name + "/supported":
                return Reply(200, b"", _TEXT)
            if not rest.startswith(self.name + "/"):
                return _text(404, f"not found: no checksum database at {path}")
            return self._db_reply(rest[len(self.name) :])
        if path == "/latest" or path.startswith(("/lookup/", "/tile/")):
            return self._db_reply(path)
        return super().reply_for(path)  # modules, if this server also acts as a GOPROXY

    def _db_reply(self, sub: str) -> Reply:
        if sub == "/latest":
            return Reply(200, self.signed_tree(), _TEXT)
        if sub.startswith("/lookup/"):
            return self._lookup(sub[len("/lookup/") :])
        if sub.startswith("/tile/"):
            return self._tile(sub[1:])
        return _text(404, "404 page not found")

    def _lookup(self, mod: str) -> Reply:
        if not _MOD_VER.fullmatch(mod):
            return _text(400, "invalid module@version syntax")
        esc_path, esc_vers = mod.split("@", 1)
        try:
            path, version = modpath.unescape_path(esc_path), modpath.unescape_version(esc_vers)
        except ValueError as e:  # Go's server says 500 here; a client error it is
            return _text(400, f"invalid module@version: {e}")
        rid = self._ids.get((path, version))
        if rid is None:
            return _text(404, f"not found: {path}@{version}")
        body = f"{rid}\n".encode() + self.records[rid] + b"\n" + self.signed_tree()
        return Reply(200, body, _TEXT)

    def _tile(self, tpath: str) -> Reply:
        try:
            h, level, n, w = parse_tile_path(tpath)
        except ValueError:
            return _text(400, "invalid tile syntax")
        if h != self.tile_height:
            return _text(404, f"not found: tiles of height {h} are not served")
        data = self.tile(h, level, n, w)
        if data is None:
            return _text(404, f"not found: {tpath} is beyond tree size {self.size}")
        return Reply(200, data, _TEXT if level == -1 else _BINARY)


# --- script mode ------------------------------------------------------------------------


async def _serve_forever(host: str, port: int, name: str, seed: bytes | None, use_corpus: bool) -> None:
    from tests.corpus import load_corpus
    from tests.upstream_fixture import modules_from_corpus

    modules: ModuleSet = {}
    if use_corpus:
        with tempfile.TemporaryDirectory(prefix="fakesumdb-") as tmp:
            modules = modules_from_corpus(load_corpus(), Path(tmp))
    db = FakeSumDB(name, generate_keys(name, seed), modules=modules, host=host, port=port)
    db.add_corpus(modules)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    async with db.run():
        print(db.url, flush=True)
        print(db.vkey, flush=True)
        await done.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve a fake checksum database until SIGTERM; prints its URL and verifier key. "
        "With --corpus it also serves the modules, so GOPROXY=<url> GOSUMDB=<vkey> works alone."
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks one)")
    parser.add_argument("--name", default="sum.example.test", help="database name (host[/path])")
    parser.add_argument("--seed", default=None, help="64 hex digits for a reproducible key")
    parser.add_argument("--corpus", action="store_true", help="log and serve Go's test-module corpus")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    seed = bytes.fromhex(args.seed) if args.seed else None
    asyncio.run(_serve_forever(host or "127.0.0.1", int(port or 0), args.name, seed, args.corpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
