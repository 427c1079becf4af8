"""Signed notes (a port of x/mod/sumdb/note): how a checksum database signs its tree heads.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
`— <name> <base64(4-byte key hash ‖ Ed25519 signature of the text)>`. Keys are
named: a verifier key reads `<name>+<hash8hex>+<base64(0x01 ‖ public key)>`,
a signer key `PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01 ‖ seed)>`, and the
hash (first 4 bytes of SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)) ties the
name to the key.

`open_note` has Go's note.Open semantics: unknown signers are kept as
unverified, at least one known key must have signed, and a bad signature by a
known key is an error. Notes over MAX_NOTE_SIZE bytes are refused (Go has no
cap; real tree heads are ~200 bytes).

Ed25519 itself comes from the `cryptography` package.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "InvalidSignatureError",
    "MalformedKeyError",
    "MalformedNoteError",
    "Note",
    "NoteError",
    "Signature",
    "Signer",
    "UnverifiedNoteError",
    "Verifier",
    "generate_key",
    "new_ed25519_verifier_key",
    "open_note",
    "parse_signer",
    "parse_verifier",
    "sign_note",
]

MAX_NOTE_SIZE = 1_000_000
MAX_SIGNATURES = 100
_ALG_ED25519 = 1
_SIG_PREFIX = "\u2014 "  # em dash, space


class NoteError(ValueError):
    """A note or key that cannot be trusted."""


class MalformedKeyError(NoteError):
    """A verifier or signer key that does not parse, or whose hash does not match."""


class MalformedNoteError(NoteError):
    """A note that breaks the format (text rules, signature block, too many signatures)."""


class UnverifiedNoteError(NoteError):
    """A well-formed note with no signature by a known key; `.note` holds what was parsed."""

    def __init__(self, note: Note) -> None:
        super().__init__("note has no verifiable signatures")
        self.note = note


class InvalidSignatureError(NoteError):
    """A known key's signature does not verify."""

    def __init__(self, name: str, key_hash: int) -> None:
        super().__init__(f"invalid signature for key {name}+{key_hash:08x}")
        self.name = name
        self.key_hash = key_hash


# --- Ed25519 (the `cryptography` package) ------------------------------------------------


def _ed25519_public(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _ed25519_sign(seed: bytes, msg: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(msg)


def _ed25519_verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    if len(sig) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- keys -------------------------------------------------------------------------------

# Go's unicode.IsSpace: the Unicode White_Space property.
_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    map(chr, range(0x2000, 0x200B))
)
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _valid_name(name: str) -> bool:
    """Non-empty UTF-8 without Unicode spaces or '+'."""
    if not name or "+" in name or any(c in _SPACES for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _b64decode(s: str) -> bytes | None:
    """Standard padded base64, nothing else (Go's StdEncoding minus its \\r\\n skipping)."""
    return base64.b64decode(s) if _B64.fullmatch(s) else None


def _key_hash(name: str, key: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + key).digest()
    return int.from_bytes(digest[:4], "big")


def _check_key_fields(name: str, key_hash: int, key: bytes, what: str) -> None:
    if not isinstance(name, str) or not _valid_name(name):
        raise MalformedKeyError(f"invalid {what} name {name!r}")
    if not isinstance(key_hash, int) or not 0 <= key_hash < 1 << 32:
        raise MalformedKeyError(f"invalid {what} key hash {key_hash!r}")
    if not isinstance(key, bytes) or len(key) != 32:
        raise MalformedKeyError(f"{what} key is not 32 bytes")


@dataclass(frozen=True)
class Verifier:
    """One server public key (Ed25519)."""

    name: str
    key_hash: int
    public_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_fields(self.name, self.key_hash, self.public_key, "verifier")
        if self.key_hash != _key_hash(self.name, bytes([_ALG_ED25519]) + self.public_key):
            raise MalformedKeyError("invalid verifier hash")

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """Whether sig (64 bytes, without the key hash prefix) signs msg."""
        return _ed25519_verify(self.public_key, bytes(msg), bytes(sig))

    def encode(self) -> str:
        """The verifier key string (what GOSUMDB takes)."""
        return new_ed25519_verifier_key(self.name, self.public_key)


@dataclass(frozen=True)
class Signer:
    """One server signing key (Ed25519 seed); the seed stays out of repr."""

    name: str
    key_hash: int
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_key_fields(self.name, self.key_hash, self.seed, "signer")
        pub = bytes([_ALG_ED25519]) + _ed25519_public(self.seed)
        if self.key_hash != _key_hash(self.name, pub):
            raise MalformedKeyError("invalid signer hash")

    def sign(self, msg: bytes) -> bytes:
        return _ed25519_sign(self.seed, bytes(msg))

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_hash, _ed25519_public(self.seed))


def _split_key(fields: list[str], what: str) -> tuple[str, int, bytes]:
    """(name, hash, key bytes without the algorithm byte) from name, hash16, key64."""
    name, hash16, key64 = fields
    key = _b64decode(key64)
    if not _HEX8.fullmatch(hash16) or key is None or not _valid_name(name) or not key:
        raise MalformedKeyError(f"malformed {what} id")
    if key[0] != _ALG_ED25519:
        raise MalformedKeyError(f"unknown {what} algorithm")
    if len(key) != 33:
        raise MalformedKeyError(f"malformed {what} id")
    return name, int(hash16, 16), key[1:]


def parse_verifier(vkey: str) -> Verifier:
    """Parse `<name>+<hash8hex>+<base64(0x01 ‖ public key)>`."""
    if not isinstance(vkey, str):
        raise MalformedKeyError("malformed verifier id")
    name, _, rest = vkey.partition("+")
    hash16, _, key64 = rest.partition("+")
    return Verifier(*_split_key([name, hash16, key64], "verifier"))


def parse_signer(skey: str) -> Signer:
    """Parse `PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01 ‖ seed)>`."""
    if not isinstance(skey, str) or not skey.startswith("PRIVATE+KEY+"):
        raise MalformedKeyError("malformed signer id")
    name, _, rest = skey.removeprefix("PRIVATE+KEY+").partition("+")
    hash16, _, key64 = rest.partition("+")
    return Signer(*_split_key([name, hash16, key64], "signer"))


def new_ed25519_verifier_key(name: str, public_key_bytes: bytes) -> str:
    """The verifier key string for an Ed25519 public key."""
    if not isinstance(name, str) or not _valid_name(name):
        raise MalformedKeyError(f"invalid key name {name!r}")
    if not isinstance(public_key_bytes, bytes) or len(public_key_bytes) != 32:
        raise MalformedKeyError("Ed25519 public key is not 32 bytes")
    pub = bytes([_ALG_ED25519]) + public_key_bytes
    return f"{name}+{_key_hash(name, pub):08x}+{base64.b64encode(pub).decode()}"


def generate_key(name: str, seed: bytes | None = None) -> tuple[str, str]:
    """(signer key, verifier key) for a new key, or for `seed` (32 bytes) to get fixed keys."""
    seed = os.urandom(32) if seed is None else seed
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise MalformedKeyError("Ed25519 seed is not 32 bytes")
    vkey = new_ed25519_verifier_key(name, _ed25519_public(seed))
    hash8 = vkey.split("+")[1]
    skey = f"PRIVATE+KEY+{name}+{hash8}+{base64.b64encode(bytes([_ALG_ED25519]) + seed).decode()}"
    return skey, vkey


# --- notes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    name: str
    key_hash: int
    base64: str  # of key hash ‖ signature, as it appears in the note


@dataclass(frozen=True)
class Note:
    text: str
    sigs: tuple[Signature, ...] = ()  # verified
    unverified_sigs: tuple[Signature, ...] = ()  # by keys we do not know


def _text_ok(text: str) -> bool:
    """No ASCII control characters other than newline."""
    return not any(c < " " and c != "\n" for c in text)


def open_note(msg: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and check its signatures (Go's note.Open)."""
    if not isinstance(msg, (bytes, bytearray)) or len(msg) > MAX_NOTE_SIZE:
        raise MalformedNoteError("malformed note")
    try:
        whole = bytes(msg).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("malformed note") from None
    if not _text_ok(whole):
        raise MalformedNoteError("malformed note")
    split = whole.rfind("\n\n")
    if split < 0:
        raise MalformedNoteError("malformed note")
    text, block = whole[: split + 1], whole[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedNoteError("malformed note")

    known: dict[tuple[str, int], set[Verifier]] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_hash), set()).add(v)
    text_bytes = text.encode()
    sigs: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[str] = set()
    for count, line in enumerate(block[:-1].split("\n"), 1):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedNoteError("malformed note")
        line = line[len(_SIG_PREFIX) :]
        name, _, b64 = line.partition(" ")
        raw = _b64decode(b64)
        if raw is None or not _valid_name(name) or not b64 or len(raw) < 5:
            raise MalformedNoteError("malformed note")
        if count > MAX_SIGNATURES:
            raise MalformedNoteError(f"malformed note: more than {MAX_SIGNATURES} signatures")
        (key_hash,) = struct.unpack(">I", raw[:4])
        candidates = known.get((name, key_hash))
        if not candidates:
            if line not in seen_unverified:
                seen_unverified.add(line)
                unverified.append(Signature(name, key_hash, b64))
            continue
        if len(candidates) > 1:
            raise NoteError(f"ambiguous key {name}+{key_hash:08x}")
        if (name, key_hash) in seen:
            continue
        seen.add((name, key_hash))
        (verifier,) = candidates
        if not verifier.verify(text_bytes, raw[4:]):
            raise InvalidSignatureError(name, key_hash)
        sigs.append(Signature(name, key_hash, b64))

    note = Note(text, tuple(sigs), tuple(unverified))
    if not sigs:
        raise UnverifiedNoteError(note)
    return note


def sign_note(text: str, signers: Iterable[Signer]) -> bytes:
    """The signed note: text, a blank line, one signature line per signer."""
    signers = list(signers)
    if not isinstance(text, str) or not text.endswith("\n") or not _text_ok(text):
        raise MalformedNoteError("malformed note text")
    try:
        text_bytes = text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNoteError("malformed note text") from None
    if not 1 <= len(signers) <= MAX_SIGNATURES:
        raise MalformedNoteError(f"a note needs 1 to {MAX_SIGNATURES} signatures")
    lines = []
    for s in signers:
        sig = struct.pack(">I", s.key_hash) + s.sign(text_bytes)
        lines.append(f"{_SIG_PREFIX}{s.name} {base64.b64encode(sig).decode()}\n")
    return text_bytes + b"\n" + "".join(lines).encode()
