"""Pseudo-versions: the versions Go makes up for untagged commits
(vX.0.0-yyyymmddhhmmss-abcdef123456 and kin), port of x/mod/module/pseudo.go."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from node.golang import semver
from node.golang._text import quote
from node.golang.modpath import InvalidVersionError

__all__ = ["is_pseudo_version", "pseudo_version_base", "pseudo_version_rev", "pseudo_version_time"]

# Go's pseudoVersionRE with \d spelled [0-9] (Python's \d is Unicode); used with fullmatch.
_PSEUDO_RE = re.compile(
    r"v[0-9]+\.(?:0\.0-|[0-9]+\.[0-9]+-(?:[^+]*\.)?0\.)[0-9]{14}-[A-Za-z0-9]+"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)


def is_pseudo_version(v: str) -> bool:
    """Whether v names an untagged commit: vX.0.0-yyyymmddhhmmss-abcdef123456 and kin."""
    return v.count("-") >= 2 and semver.is_valid(v) and _PSEUDO_RE.fullmatch(v) is not None


def _parse_pseudo(v: str) -> tuple[str, str, str, str]:
    """(base, timestamp, rev, build) of a pseudo-version; base is "vX.0.0" or ends in "0"."""
    if not is_pseudo_version(v):
        raise InvalidVersionError(v, "syntax error", pseudo=True)
    build = semver.build(v)
    rest, _, rev = v[: len(v) - len(build)].rpartition("-")
    dash, dot = rest.rfind("-"), rest.rfind(".")
    cut = dot if dot > dash else dash
    return rest[:cut], rest[cut + 1 :], rev, build


def pseudo_version_time(v: str) -> datetime:
    """The commit time (UTC) embedded in a pseudo-version; InvalidVersionError if none.

    Year 0000 parses in Go but not in datetime; it is reported as a malformed time.
    """
    stamp = _parse_pseudo(v)[1]  # exactly 14 ASCII digits: yyyymmddhhmmss
    fields = (stamp[0:4], stamp[4:6], stamp[6:8], stamp[8:10], stamp[10:12], stamp[12:14])
    try:
        # datetime validates ranges as Go's time.Parse does (month length, leap years,
        # hour < 24, second < 60).
        year, month, day, hour, minute, second = map(int, fields)
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise InvalidVersionError(v, f"malformed time {quote(stamp)}", pseudo=True) from None


def pseudo_version_rev(v: str) -> str:
    """The revision (commit hash prefix) of a pseudo-version; InvalidVersionError if none."""
    return _parse_pseudo(v)[2]


def _dec_decimal(digits: str) -> str:
    """digits - 1 as a decimal string without int() (unbounded); "" for zero."""
    stem = digits.rstrip("0")
    if not stem:
        return ""
    nines = "9" * (len(digits) - len(stem))
    if stem == "1" and nines:
        return nines  # 10 -> 9, 100 -> 99: drop the leading digit rather than keep a 0
    return stem[:-1] + chr(ord(stem[-1]) - 1) + nines


def pseudo_version_base(v: str) -> str:
    """The tagged version a pseudo-version builds on, "" if none (form vX.0.0-...).

    vX.Y.(Z+1)-0.t-r -> vX.Y.Z, vX.Y.Z-pre.0.t-r -> vX.Y.Z-pre, keeping +incompatible.
    """
    base, _, _, build = _parse_pseudo(v)
    pre = semver.prerelease(base)
    if not pre:
        if build:
            raise InvalidVersionError(v, f"lacks base version, but has build metadata {quote(build)}", pseudo=True)
        return ""
    if pre == "-0":
        release = base.removesuffix(pre)
        head, _, patch = release.rpartition(".")
        if not (prev := _dec_decimal(patch)):
            raise InvalidVersionError(v, f"version before {release} would have negative patch number", pseudo=True)
        return f"{head}.{prev}{build}"
    return base.removesuffix(".0") + build
