"""Signed notes and keys (node/note.py): Go's vectors, Go's note.Open rules, fuzzing."""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from node.sumdb import note as N
from node.sumdb.note import (
    InvalidSignatureError,
    MalformedKeyError,
    MalformedNoteError,
    NoteError,
    Signature,
    Signer,
    UnverifiedNoteError,
    Verifier,
    generate_key,
    new_ed25519_verifier_key,
    open_note,
    parse_signer,
    parse_verifier,
    sign_note,
)

# Go's own test keys (protocol notes 4.5).
LOCAL_SKEY = "PRIVATE+KEY+localhost.localdev/sumdb+00000c67+AXu6+oaVaOYuQOFrf1V59JK1owcFlJcHwwXHDfDGxSPk"
LOCAL_VKEY = "localhost.localdev/sumdb+00000c67+AcTrnkbUA+TU4heY3hkjiSES/DSQniBqIeQ/YppAUtK6"
SUM_GOLANG_ORG = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"

# The example in x/mod/sumdb/note's package documentation.
PN_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PN_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PN_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PN_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
PN_MSG = (PN_TEXT + "\n" + PN_SIG).encode()

# The lookup reply in protocol notes 4.5 (key from seed bytes 0..31), accepted by go 1.27.
DOC_TREE_NOTE = (
    "go.sum database tree\n1\nPxgBmyr4Dpp5jiiLZg8AStvbeyMXPR817hsurHdOImk=\n\n"
    "— sum.example.test Q2XEiRSF2Mt7AQoMs9NxUUnoPNy7Lt5ayURZMnNzPDdLXkHv/tOZQncCe89PgITUy7HXHy33Cfka/c6omLjRl5FI1gk=\n"
).encode()

_FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pn() -> tuple[Signer, Verifier]:
    return parse_signer(PN_SKEY), parse_verifier(PN_VKEY)


# --- keys ---------------------------------------------------------------------------


def test_go_test_key_pair() -> None:
    signer = parse_signer(LOCAL_SKEY)
    assert signer.name == "localhost.localdev/sumdb"
    assert signer.key_hash == 0x00000C67
    assert signer.verifier() == parse_verifier(LOCAL_VKEY)
    assert signer.verifier().encode() == LOCAL_VKEY


def test_sum_golang_org_key_parses() -> None:
    v = parse_verifier(SUM_GOLANG_ORG)
    assert (v.name, v.key_hash) == ("sum.golang.org", 0x033DE0AE)
    assert v.encode() == SUM_GOLANG_ORG


def test_generate_key_from_seed_matches_doc_database() -> None:
    skey, vkey = generate_key("sum.example.test", bytes(range(32)))
    note = open_note(DOC_TREE_NOTE, [parse_verifier(vkey)])
    assert note.text == "go.sum database tree\n1\nPxgBmyr4Dpp5jiiLZg8AStvbeyMXPR817hsurHdOImk=\n"
    assert [s.name for s in note.sigs] == ["sum.example.test"]
    assert parse_signer(skey).verifier() == parse_verifier(vkey)


def test_generate_key_random_round_trip() -> None:
    skey, vkey = generate_key("example.com/db")
    signer, verifier = parse_signer(skey), parse_verifier(vkey)
    assert signer.verifier() == verifier
    assert skey.startswith("PRIVATE+KEY+example.com/db+")
    assert generate_key("example.com/db") != (skey, vkey)


def test_new_ed25519_verifier_key() -> None:
    v = parse_verifier(LOCAL_VKEY)
    assert new_ed25519_verifier_key(v.name, v.public_key) == LOCAL_VKEY
    with pytest.raises(MalformedKeyError):
        new_ed25519_verifier_key(v.name, v.public_key[:31])
    with pytest.raises(MalformedKeyError):
        new_ed25519_verifier_key("bad name", v.public_key)


def _with_hash(vkey: str, h: str) -> str:
    name, _, key = vkey.split("+", 2)
    return f"{name}+{h}+{key}"


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("", "malformed"),
        ("sum.golang.org", "malformed"),
        ("sum.golang.org+033de0ae", "malformed"),
        ("sum.golang.org+033de0ae+", "malformed"),
        (_with_hash(SUM_GOLANG_ORG, "033de0af"), "hash"),  # wrong hash
        (_with_hash(SUM_GOLANG_ORG, "33de0ae"), "malformed"),  # 7 digits
        (_with_hash(SUM_GOLANG_ORG, "0x3de0ae"), "malformed"),
        (_with_hash(SUM_GOLANG_ORG, "+33de0ae"), "malformed"),
        (_with_hash(SUM_GOLANG_ORG, "033de0a_"), "malformed"),
        (_with_hash(SUM_GOLANG_ORG, "０33de0ae"), "malformed"),
        (SUM_GOLANG_ORG.replace("+Ac4z", "+Ac4"), "malformed"),  # bad base64
        (SUM_GOLANG_ORG + "\n", "malformed"),
        (SUM_GOLANG_ORG[:-4] + "\r\nAn8", "malformed"),  # Go's decoder would skip \r\n
        ("sum golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8", "malformed"),
    ],
)
def test_parse_verifier_rejects(vkey: str, message: str) -> None:
    with pytest.raises(MalformedKeyError, match=message):
        parse_verifier(vkey)


def _key_string(name: str, key: bytes, prefix: str = "") -> str:
    h = N._key_hash(name, key)
    return f"{prefix}{name}+{h:08x}+{base64.b64encode(key).decode()}"


def test_parse_verifier_checks_algorithm_and_length() -> None:
    pub = parse_verifier(LOCAL_VKEY).public_key
    with pytest.raises(MalformedKeyError, match="algorithm"):
        parse_verifier(_key_string("x", b"\x02" + pub))
    with pytest.raises(MalformedKeyError, match="malformed"):
        parse_verifier(_key_string("x", b"\x01" + pub[:31]))
    with pytest.raises(MalformedKeyError, match="malformed"):
        parse_verifier(_key_string("x", b"\x01" + pub + b"\x00"))
    assert parse_verifier(_key_string("x", b"\x01" + pub)).name == "x"


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u2003b", "a\u3000b", "a\u2028b", "\ud800"])
def test_invalid_names(name: str) -> None:
    pub = parse_verifier(LOCAL_VKEY).public_key
    with pytest.raises(MalformedKeyError):
        new_ed25519_verifier_key(name, pub)
    with pytest.raises(MalformedKeyError):
        Verifier(name, 0, pub)


def test_unusual_but_valid_names() -> None:
    # Go's rule is only "no Unicode space, no plus"; "é" and U+200B (not White_Space) pass.
    pub = parse_verifier(LOCAL_VKEY).public_key
    for name in ["é.example/ü", "zero\u200bwidth", "a/b/c"]:
        assert parse_verifier(new_ed25519_verifier_key(name, pub)).name == name


def test_hash_hex_is_case_insensitive() -> None:
    name, h, key = SUM_GOLANG_ORG.split("+", 2)
    assert parse_verifier(f"{name}+{h.upper()}+{key}") == parse_verifier(SUM_GOLANG_ORG)


@pytest.mark.parametrize(
    "skey",
    [
        LOCAL_SKEY.replace("PRIVATE+KEY", "PRIVATE+KEX"),
        LOCAL_SKEY.replace("PRIVATE+KEY+", ""),
        LOCAL_SKEY.replace("00000c67", "00000c68"),
        LOCAL_SKEY[:-1],
        "PRIVATE+KEY+",
        LOCAL_VKEY,
    ],
)
def test_parse_signer_rejects(skey: str) -> None:
    with pytest.raises(MalformedKeyError):
        parse_signer(skey)


def test_signer_repr_hides_seed() -> None:
    signer = parse_signer(LOCAL_SKEY)
    assert "seed" not in repr(signer)
    assert base64.b64encode(signer.seed).decode()[:8] not in repr(signer)


def test_direct_construction_is_checked() -> None:
    v = parse_verifier(LOCAL_VKEY)
    with pytest.raises(MalformedKeyError):
        Verifier(v.name, v.key_hash ^ 1, v.public_key)
    with pytest.raises(MalformedKeyError):
        Verifier(v.name, 1 << 32, v.public_key)
    s = parse_signer(LOCAL_SKEY)
    with pytest.raises(MalformedKeyError):
        Signer(s.name, s.key_hash, os.urandom(32))


@given(st.text(max_size=120))
@settings(max_examples=300, deadline=None)
def test_parse_keys_never_leak_other_errors(text: str) -> None:
    for parse in (parse_verifier, parse_signer):
        try:
            parse(text)
        except MalformedKeyError:
            pass


@given(st.integers(0, 2), st.integers(0, 200))
@settings(max_examples=200, deadline=None)
def test_mutated_keys_fail_cleanly(kind: int, pos: int) -> None:
    base = [LOCAL_VKEY, SUM_GOLANG_ORG, LOCAL_SKEY][kind]
    pos %= len(base)
    for c in "+/=A0 \n\u2014x":
        mutated = base[:pos] + c + base[pos + 1 :]
        assume(mutated != base)
        try:
            (parse_signer if kind == 2 else parse_verifier)(mutated)
        except MalformedKeyError:
            pass


# --- notes: Go's documented example --------------------------------------------------


def test_go_doc_example_sign_is_deterministic(pn: tuple[Signer, Verifier]) -> None:
    signer, _ = pn
    assert sign_note(PN_TEXT, [signer]) == PN_MSG


def test_go_doc_example_open(pn: tuple[Signer, Verifier]) -> None:
    _, verifier = pn
    note = open_note(PN_MSG, [verifier])
    assert note.text == PN_TEXT
    assert note.sigs == (Signature("PeterNeumann", 0xC74F20A3, PN_SIG.split()[-1]),)
    assert note.unverified_sigs == ()


def test_go_doc_example_doubly_signed(pn: tuple[Signer, Verifier]) -> None:
    _, verifier = pn
    msg = (PN_TEXT + "\n" + PN_SIG + ENOCH_SIG).encode()
    note = open_note(msg, [verifier])
    assert [s.name for s in note.sigs] == ["PeterNeumann"]
    assert [s.name for s in note.unverified_sigs] == ["EnochRoot"]
    with pytest.raises(UnverifiedNoteError) as info:
        open_note(msg, [])
    assert [s.name for s in info.value.note.unverified_sigs] == ["PeterNeumann", "EnochRoot"]
    assert info.value.note.text == PN_TEXT


def test_bad_signature_by_known_key(pn: tuple[Signer, Verifier]) -> None:
    _, verifier = pn
    with pytest.raises(InvalidSignatureError) as info:
        open_note(PN_MSG.replace(b"know", b"KNOW"), [verifier])
    assert (info.value.name, info.value.key_hash) == ("PeterNeumann", 0xC74F20A3)
    assert isinstance(info.value, NoteError)


def test_signature_with_right_name_wrong_hash_is_unverified(pn: tuple[Signer, Verifier]) -> None:
    _signer, verifier = pn
    other = Signer("PeterNeumann", *_hash_and_seed("PeterNeumann", bytes(32)))
    msg = sign_note(PN_TEXT, [other])
    with pytest.raises(UnverifiedNoteError):
        open_note(msg, [verifier])


def _hash_and_seed(name: str, seed: bytes) -> tuple[int, bytes]:
    skey, _ = generate_key(name, seed)
    return parse_signer(skey).key_hash, seed


def test_multiple_signers_round_trip() -> None:
    signers = [parse_signer(generate_key(f"k{i}.example", bytes([i]) * 32)[0]) for i in range(3)]
    msg = sign_note("hello\n", signers)
    note = open_note(msg, [s.verifier() for s in signers[:2]])
    assert [s.name for s in note.sigs] == ["k0.example", "k1.example"]
    assert [s.name for s in note.unverified_sigs] == ["k2.example"]


def test_duplicates_are_dropped(pn: tuple[Signer, Verifier]) -> None:
    _, verifier = pn
    msg = (PN_TEXT + "\n" + PN_SIG + PN_SIG + ENOCH_SIG + ENOCH_SIG).encode()
    note = open_note(msg, [verifier, verifier])  # the same verifier twice is not ambiguous
    assert len(note.sigs) == 1 and len(note.unverified_sigs) == 1
    # Go verifies a known key once: a second, bad signature by the same key is skipped.
    bad_sig = PN_SIG.replace("x08go/", "x08go+")
    note = open_note((PN_TEXT + "\n" + PN_SIG + bad_sig).encode(), [verifier])
    assert len(note.sigs) == 1
    with pytest.raises(InvalidSignatureError):
        open_note((PN_TEXT + "\n" + bad_sig + PN_SIG).encode(), [verifier])


def test_text_with_blank_lines_and_trailing_blank_line(pn: tuple[Signer, Verifier]) -> None:
    signer, verifier = pn
    for text in ["a\n\nb\n", "a\n\n", "\n", "— fake AAAA\n\n— x y\n", "tab\x7fdel é\n"]:
        assert open_note(sign_note(text, [signer]), [verifier]).text == text


def _sig_line(name: str, raw: bytes) -> str:
    return f"— {name} {base64.b64encode(raw).decode()}\n"


@pytest.mark.parametrize(
    "msg",
    [
        b"",
        b"\n\n",
        PN_TEXT.encode(),  # no signatures
        PN_TEXT.encode() + b"\n",  # blank line, empty signature block
        PN_MSG[:-1],  # last signature line unterminated
        PN_MSG.replace("—".encode(), b"-"),
        PN_MSG.replace("— ".encode(), "—".encode()),
        PN_MSG.replace(b"PeterNeumann ", b"PeterNeumann  "),
        PN_MSG.replace(b"PeterNeumann ", b"Peter+Neumann "),
        PN_MSG.replace(b"PeterNeumann ", b" "),
        PN_MSG.replace(b"PeterNeumann x08go", b"PeterNeumann\x08go"),
        PN_MSG.replace(b"JnAM=", b"JnAM"),  # bad padding
        PN_MSG.replace(b"JnAM=", b"JnAM=\r"),
        PN_MSG.replace(b"If you", b"If\tyou"),  # control character
        PN_MSG.replace(b"If you", b"If\ryou"),
        PN_MSG.replace(b"If you", b"If \xffyou"),  # invalid UTF-8
        PN_MSG.replace(b"If you", b"If \xed\xa0\x80you"),  # encoded surrogate
        PN_MSG + b"\n",  # trailing blank line
        PN_MSG + b"extra\n",
        (PN_TEXT + "\n" + _sig_line("PeterNeumann", b"\x00\x00\x00\x00")).encode(),  # < 5 bytes
        (PN_TEXT + "\n" + "— PeterNeumann \n").encode(),
        (PN_TEXT + "\n" + "— PeterNeumann\n").encode(),
    ],
)
def test_open_rejects_malformed(msg: bytes, pn: tuple[Signer, Verifier]) -> None:
    _, verifier = pn
    with pytest.raises(MalformedNoteError):
        open_note(msg, [verifier])


def test_signature_count_limit(pn: tuple[Signer, Verifier]) -> None:
    _signer, verifier = pn
    unknown = [_sig_line(f"u{i}", struct.pack(">I", i) + b"x" * 64) for i in range(99)]
    ok = PN_TEXT + "\n" + PN_SIG + "".join(unknown)
    assert len(open_note(ok.encode(), [verifier]).unverified_sigs) == 99
    too_many = ok + _sig_line("u99", struct.pack(">I", 99) + b"x" * 64)
    with pytest.raises(MalformedNoteError, match="100"):
        open_note(too_many.encode(), [verifier])
    # Repeats count too (Go counts lines, then drops duplicates).
    with pytest.raises(MalformedNoteError):
        open_note((PN_TEXT + "\n" + PN_SIG * 101).encode(), [verifier])


def test_note_size_limit(pn: tuple[Signer, Verifier]) -> None:
    signer, verifier = pn
    text = "x" * (N.MAX_NOTE_SIZE) + "\n"
    with pytest.raises(MalformedNoteError):
        open_note(sign_note(text, [signer]), [verifier])


def test_sign_note_rejects() -> None:
    signer = parse_signer(LOCAL_SKEY)
    for text in ["", "no newline", "ctl\x01\n", "cr\r\n", "\ud800\n"]:
        with pytest.raises(MalformedNoteError):
            sign_note(text, [signer])
    with pytest.raises(MalformedNoteError):
        sign_note("text\n", [])


_note_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=[chr(c) for c in range(32) if c != 10]),
    max_size=200,
).map(lambda s: s + "\n")


@given(_note_text)
@_FAST
def test_sign_open_round_trip(text: str) -> None:
    signer = parse_signer(LOCAL_SKEY)
    note = open_note(sign_note(text, [signer]), [signer.verifier()])
    assert note.text == text and len(note.sigs) == 1


@given(st.integers(min_value=0), st.integers(0, 255))
@_FAST
def test_any_byte_flip_is_rejected(pos: int, xor: int) -> None:
    assume(xor)
    verifier = parse_verifier(PN_VKEY)
    msg = bytearray(PN_MSG)
    msg[pos % len(msg)] ^= xor
    try:
        note = open_note(bytes(msg), [verifier])
    except NoteError:
        return
    # Only a change in the unused low bits of the last base64 digit survives (Go agrees).
    assert note.text == PN_TEXT
    assert base64.b64decode(note.sigs[0].base64) == base64.b64decode(PN_SIG.split()[-1])


def test_noncanonical_base64_tail_is_accepted_like_go() -> None:
    msg = PN_MSG.replace(b"JnAM=", b"JnAN=")
    assert open_note(msg, [parse_verifier(PN_VKEY)]).sigs[0].base64.endswith("JnAN=")


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_open_arbitrary_bytes_raises_only_note_errors(data: bytes) -> None:
    verifier = parse_verifier(PN_VKEY)
    for msg in (data, PN_TEXT.encode() + b"\n" + data, PN_MSG + data):
        try:
            open_note(msg, [verifier])
        except NoteError:
            pass


# --- Ed25519 through the cryptography package ----------------------------------------------

RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("seed", "pub", "msg", "sig"), RFC8032)
def test_ed25519_rfc8032_vectors(seed: str, pub: str, msg: str, sig: str) -> None:
    s, p, m, g = (bytes.fromhex(x) for x in (seed, pub, msg, sig))
    assert N._ed25519_public(s) == p
    assert N._ed25519_sign(s, m) == g
    assert N._ed25519_verify(p, m, g)
    assert not N._ed25519_verify(p, m + b"x", g)
    # S >= L is refused even though it would satisfy the equation (malleability).
    order = 2**252 + 27742317777372353535851937790883648493
    s_big = int.from_bytes(g[32:], "little") + order
    assert not N._ed25519_verify(p, m, g[:32] + s_big.to_bytes(32, "little"))
    assert not N._ed25519_verify(p, m, g[:63])
    assert not N._ed25519_verify(b"\xff" * 32, m, g)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64), st.integers(0, 511))
@settings(max_examples=15, deadline=None)
def test_ed25519_flipped_bit_never_verifies(seed: bytes, msg: bytes, bit: int) -> None:
    pub = N._ed25519_public(seed)
    sig = N._ed25519_sign(seed, msg)
    assert N._ed25519_verify(pub, msg, sig)
    flipped = bytearray(sig)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not N._ed25519_verify(pub, msg, bytes(flipped))
