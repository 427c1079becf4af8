"""Integrity at the door: pure checks on what an upstream (or peer) sent.

Each function takes the request and the bytes and either returns the normalised
body or raises IntegrityError with a one-line reason. Nothing here does I/O, so
the rules are easy to test and shared by every path that admits bytes.
"""

from __future__ import annotations

import json
from datetime import datetime

from node.cache.protocol import ModRequest
from node.errors import IntegrityError
from node.golang import gomod, modpath, pseudo, semver

MAX_INFO = 1 << 20
MAX_MOD = 16 << 20  # Go's cap for go.mod inside a zip; keep .mod to it too
MAX_LIST = 16 << 20


def check_info(req: ModRequest, body: bytes) -> bytes:
    """A `.info` must be a JSON object whose Version is exactly the requested one."""
    obj = _json_object(req, body)
    got = obj.get("Version")
    if got != req.version:
        raise IntegrityError(f"upstream .info for {req.module}@{req.version} names version {str(got)[:80]!r}")
    _check_time(req, obj)
    return body


def check_latest(req: ModRequest, body: bytes) -> bytes:
    """`@latest` has the shape of `.info`; its Version must be canonical and fit the path."""
    resolved_version(req, body)
    return body


def resolved_version(req: ModRequest, body: bytes) -> str:
    """The Version an `@latest` or a query (`.info` of a branch, tag or commit) answer
    resolved to: a JSON object whose Version is canonical and fits the module path."""
    what = f"{req.module}@{req.version}" if req.version else f"{req.module}@latest"
    obj = _json_object(req, body)
    v = obj.get("Version")
    if not isinstance(v, str) or not semver.is_valid(v) or modpath.canonical_version(v) != v:
        raise IntegrityError(f"upstream answer for {what} has no canonical Version")
    try:
        modpath.check(req.module, v)
    except ValueError as e:
        raise IntegrityError(f"upstream answer for {what}: {e}") from None
    _check_time(req, obj)
    return v


def check_mod(req: ModRequest, body: bytes) -> bytes:
    """A `.mod` must be non-empty, bounded and parse. Which module it declares is the go
    command's business: a fork used through `replace`, a renamed or a retracted-and-renamed
    module all declare another path, and proxies serve them as they are."""
    if not body:
        raise IntegrityError(f"upstream sent an empty .mod for {req.module}@{req.version}")
    if len(body) > MAX_MOD:
        raise IntegrityError(f"upstream .mod for {req.module}@{req.version} is larger than 16 MiB")
    try:
        gomod.check(body)
    except ValueError as e:
        raise IntegrityError(f"upstream .mod for {req.module}@{req.version} does not parse: {e}") from None
    return body


def normalize_list(req: ModRequest, body: bytes) -> bytes:
    """Vet an `@v/list` and rewrite it canonically: one sorted version per line.

    Go itself ignores lines it cannot parse, so a proxy's HTML error page looks like
    "no versions" to it; we refuse such a body instead of caching a lie. Versions
    that are not canonical or do not fit the module path are dropped (Go never
    uses them); an RFC 3339 timestamp in field 2 is kept.
    """
    if len(body) > MAX_LIST:
        raise IntegrityError(f"upstream list for {req.module} is larger than 16 MiB")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"upstream list for {req.module} is not UTF-8") from None
    versions: dict[str, str] = {}
    for line in text.split("\n"):
        fields = line.split()
        if not fields:
            continue
        v = fields[0]
        if not semver.is_valid(v):
            raise IntegrityError(f"upstream list for {req.module} has a non-version line {line[:60]!r}")
        if modpath.canonical_version(v) != v:
            continue
        try:
            modpath.check(req.module, v)
        except ValueError:
            continue
        stamp = fields[1] if len(fields) > 1 and _is_rfc3339(fields[1]) else ""
        versions[v] = max(stamp, versions.get(v, ""))
    lines = [f"{v} {versions[v]}".rstrip() for v in sorted(versions, key=semver.sort_key)]
    return "".join(line + "\n" for line in lines).encode()


def list_versions(body: bytes) -> list[str]:
    return [line.split()[0] for line in body.decode().splitlines() if line.strip()]


def merge_lists(*bodies: bytes) -> bytes:
    """Normalised lists merged into one: every version any of them has (a proxy never
    withdraws a version, so a lagging or empty answer must not hide one), sorted,
    with the latest timestamp seen for each."""
    versions: dict[str, str] = {}
    for body in bodies:
        for line in body.decode("utf-8", "replace").splitlines():
            fields = line.split()
            if fields:
                stamp = fields[1] if len(fields) > 1 else ""
                versions[fields[0]] = max(stamp, versions.get(fields[0], ""))
    lines = [f"{v} {versions[v]}".rstrip() for v in sorted(versions, key=semver.sort_key)]
    return "".join(line + "\n" for line in lines).encode()


def latest_of(versions: list[str]) -> str | None:
    """What `@latest` means among known versions (the go command's and proxy.golang.org's
    rule): the highest release, else the highest pre-release, else the newest pseudo-version."""
    pseudos = [v for v in versions if pseudo.is_pseudo_version(v)]
    tagged = [v for v in versions if not pseudo.is_pseudo_version(v)]
    releases = [v for v in tagged if not semver.prerelease(v)]
    for pool in (releases, tagged, pseudos):
        if pool:
            return max(pool, key=semver.sort_key)
    return None


def _json_object(req: ModRequest, body: bytes) -> dict[str, object]:
    what = f"{req.module}@{req.version}" if req.version else req.module
    if not body:
        raise IntegrityError(f"upstream sent an empty {req.kind} answer for {what}")
    if len(body) > MAX_INFO:
        raise IntegrityError(f"upstream {req.kind} answer for {what} is larger than 1 MiB")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"upstream {req.kind} answer for {what} is not JSON") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"upstream {req.kind} answer for {what} is not a JSON object")
    return obj


def _check_time(req: ModRequest, obj: dict[str, object]) -> None:
    t = obj.get("Time")
    if t is not None and not (isinstance(t, str) and _is_rfc3339(t)):
        raise IntegrityError(f"upstream {req.kind} answer for {req.module} has a malformed Time")


def _is_rfc3339(s: str) -> bool:
    try:
        datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in s
