"""Semantic versions as the go command understands them (port of golang.org/x/mod/semver).

Go's dialect of SemVer 2.0 differs in two ways: the leading "v" is required, and "vMAJOR"
and "vMAJOR.MINOR" (without prerelease or build) are shorthands for vMAJOR.0.0 and
vMAJOR.MINOR.0. Like Go, nothing here raises: an invalid version is simply "" / False /
the bottom of the order, because the node sorts version lists scraped from upstreams and
must not fall over on a junk line.

Numbers are compared as digit strings (length, then text), never converted with int():
semver numbers are unbounded and int() refuses strings longer than 4300 digits.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "SortKey",
    "build",
    "canonical",
    "compare",
    "is_valid",
    "major",
    "major_minor",
    "max_version",
    "prerelease",
    "sort_key",
]

_NUM = r"0|[1-9][0-9]*"
# A prerelease identifier: a number without leading zeros, or anything with a non-digit.
_PRE_IDENT = r"0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*"
_BUILD_IDENT = r"[0-9A-Za-z-]+"
# Explicit ASCII classes and fullmatch(): Python's \d and $ would accept more than Go.
_SEMVER_RE = re.compile(
    rf"v(?P<major>{_NUM})"
    rf"(?:\.(?P<minor>{_NUM})"
    rf"(?:\.(?P<patch>{_NUM})"
    rf"(?P<prerelease>-(?:{_PRE_IDENT})(?:\.(?:{_PRE_IDENT}))*)?"
    rf"(?P<build>\+{_BUILD_IDENT}(?:\.{_BUILD_IDENT})*)?"
    r")?)?"
)


class _Parsed(NamedTuple):
    major: str
    minor: str
    patch: str
    prerelease: str  # "" or "-..."
    build: str  # "" or "+..."


def _parse(v: str) -> _Parsed | None:
    m = _SEMVER_RE.fullmatch(v)
    if m is None:
        return None
    return _Parsed(
        major=m["major"],
        minor=m["minor"] or "0",
        patch=m["patch"] or "0",
        prerelease=m["prerelease"] or "",
        build=m["build"] or "",
    )


def is_valid(v: str) -> bool:
    """Whether v is a semantic version in Go's dialect (leading "v", shorthands allowed)."""
    return _parse(v) is not None


def canonical(v: str) -> str:
    """vMAJOR.MINOR.PATCH[-PRE] with shorthands filled in and build metadata dropped.

    Two versions compare equal exactly when their canonical forms are identical, so this
    is the form used for file names and list entries. Returns "" for an invalid version.
    """
    p = _parse(v)
    if p is None:
        return ""
    return f"v{p.major}.{p.minor}.{p.patch}{p.prerelease}"


def major(v: str) -> str:
    """The major version prefix, "v2" for "v2.1.0"; "" if invalid."""
    p = _parse(v)
    return "" if p is None else f"v{p.major}"


def major_minor(v: str) -> str:
    """The major.minor prefix, "v2.1" for "v2.1.0" (and "v2.0" for "v2"); "" if invalid."""
    p = _parse(v)
    return "" if p is None else f"v{p.major}.{p.minor}"


def prerelease(v: str) -> str:
    """The prerelease suffix including its "-", "-pre" for "v2.1.0-pre+meta"; "" if none."""
    p = _parse(v)
    return "" if p is None else p.prerelease


def build(v: str) -> str:
    """The build suffix including its "+", "+meta" for "v2.1.0+meta"; "" if none."""
    p = _parse(v)
    return "" if p is None else p.build


def _compare_num(x: str, y: str) -> int:
    # Digit strings without leading zeros: the longer one is bigger.
    kx, ky = (len(x), x), (len(y), y)
    return (kx > ky) - (kx < ky)


def _is_num(ident: str) -> bool:
    # Not str.isdigit(): that accepts non-ASCII digits; identifiers here are ASCII anyway.
    return all("0" <= c <= "9" for c in ident)


def _compare_prerelease(x: str, y: str) -> int:
    """SemVer 2.0 precedence of two prerelease suffixes ("" means a release)."""
    if x == y:
        return 0
    if not x:
        return 1  # a release sorts above all its prereleases
    if not y:
        return -1
    xs, ys = x[1:].split("."), y[1:].split(".")
    for dx, dy in zip(xs, ys):
        if dx == dy:
            continue
        nx, ny = _is_num(dx), _is_num(dy)
        if nx != ny:
            return -1 if nx else 1  # numeric identifiers sort below alphanumeric ones
        if nx:
            return _compare_num(dx, dy)
        return -1 if dx < dy else 1
    # All shared identifiers equal: the longer list wins.
    return -1 if len(xs) < len(ys) else 1


def compare(v: str, w: str) -> int:
    """-1, 0 or +1 by semver precedence; build metadata is ignored.

    An invalid version sorts below every valid one, and all invalid versions are equal,
    as in Go, so a list with junk in it still has a well-defined order.
    """
    pv, pw = _parse(v), _parse(w)
    if pv is None or pw is None:
        return (pv is not None) - (pw is not None)
    for a, b in ((pv.major, pw.major), (pv.minor, pw.minor), (pv.patch, pw.patch)):
        if c := _compare_num(a, b):
            return c
    return _compare_prerelease(pv.prerelease, pw.prerelease)


def max_version(v: str, w: str) -> str:
    """The greater of the two, canonicalized (Go's deprecated semver.Max; w wins ties)."""
    v, w = canonical(v), canonical(w)
    return v if compare(v, w) > 0 else w


class SortKey(NamedTuple):
    """A sort key whose order is Go's semver.Sort: compare(), then the bytes of the string.

    Field order matters: tuples compare field by field.
    """

    valid: bool
    major: tuple[int, str]
    minor: tuple[int, str]
    patch: tuple[int, str]
    release: bool  # a release sorts above its prereleases
    prerelease: tuple[tuple[bool, int, str], ...]
    # Go breaks ties with strings.Compare (bytes); code point order is the same order.
    text: str


def _ident_key(ident: str) -> tuple[bool, int, str]:
    # Numeric identifiers first, ordered by value (length, then digits); then the rest
    # in ASCII order.
    if _is_num(ident):
        return (False, len(ident), ident)
    return (True, 0, ident)


def sort_key(v: str) -> SortKey:
    """Key for sorted(): the same order as Go's semver.Sort (ties broken by string)."""
    p = _parse(v)
    if p is None:
        return SortKey(False, (0, ""), (0, ""), (0, ""), False, (), v)
    return SortKey(
        valid=True,
        major=(len(p.major), p.major),
        minor=(len(p.minor), p.minor),
        patch=(len(p.patch), p.patch),
        release=not p.prerelease,
        prerelease=tuple(_ident_key(i) for i in p.prerelease[1:].split(".")) if p.prerelease else (),
        text=v,
    )
