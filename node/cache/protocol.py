"""GOPROXY request paths: parse what the go command sends into a `ModRequest`.

Pure functions only. The HTTP layer hands us the percent-decoded path; we split it
into module, version and kind, undo Go's case encoding (`!x` -> `X`) and validate
by Go's own rules, so nothing malformed ever reaches the store or an upstream.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from node.errors import InvalidRequest, NotFound
from node.golang import modpath, semver

#: `query`: a `.info` for something that is not a canonical version (a branch, a tag
#: name, a commit prefix, `v1.2.3+meta`): the upstream resolves it to one.
Kind = Literal["list", "latest", "info", "mod", "zip", "query"]
VERSIONED_KINDS: tuple[Kind, ...] = ("info", "mod", "zip")

#: Longest request path we look at. Go puts no limit on module paths, but real
#: ones are far shorter, and a bound keeps hostile URLs cheap to reject.
MAX_REQUEST_PATH = 1024

_SUFFIXES: dict[str, Kind] = {".info": "info", ".mod": "mod", ".zip": "zip"}
_KINDS: dict[str, Kind] = {"info": "info", "mod": "mod", "zip": "zip"}


@dataclass(frozen=True, slots=True)
class ModRequest:
    """One GOPROXY file: `module` and `version` are unescaped; version is "" for list/latest."""

    module: str
    version: str
    kind: Kind

    @property
    def versioned(self) -> bool:
        return self.kind in VERSIONED_KINDS

    @property
    def key(self) -> str:
        """Stable text key, used for single-flight, negative caching and logs."""
        if self.kind == "list":
            return f"{self.module}/@v/list"
        if self.kind == "latest":
            return f"{self.module}/@latest"
        if self.kind == "query":  # never a canonical version: no clash with an .info
            return f"{self.module}@{self.version}.info"
        return f"{self.module}@{self.version}.{self.kind}"

    @property
    def upstream_path(self) -> str:
        """The escaped path to append to a GOPROXY base URL (no leading slash)."""
        mod = modpath.escape_path(self.module)
        if self.kind == "list":
            return f"{mod}/@v/list"
        if self.kind == "latest":
            return f"{mod}/@latest"
        ext = "info" if self.kind == "query" else self.kind
        return f"{mod}/@v/{modpath.escape_version(self.version)}.{ext}"

    @property
    def path(self) -> str:
        """The one request path `parse_request` reads as this request (decoded, one
        leading slash): the key of its hot answer (hot.py). For a request the node
        checked (parsed, or read from its index)."""
        if self.kind in VERSIONED_KINDS:
            return f"/{modpath.case_escape(self.module)}/@v/{modpath.case_escape(self.version)}.{self.kind}"
        return "/" + self.upstream_path


@functools.lru_cache(maxsize=4096)  # hot paths repeat; errors are not cached
def parse_request(path: str) -> ModRequest:
    """Parse a decoded request path such as `/rsc.io/!quote/@v/v1.5.2.zip`.

    Raises InvalidRequest (400) for malformed paths or escaping, NotFound (404) for
    shapes the protocol does not have and for versions a proxy never serves (a `.mod`
    or `.zip` of a non-canonical version, versions that do not fit the module path):
    a 404 lets a client with `GOPROXY=node,direct` fall through, as it would at
    proxy.golang.org. A `.info` of a non-canonical version is a `query` the upstream
    resolves (`go get m@master`, `m@<commit>`).
    """
    if len(path) > MAX_REQUEST_PATH:
        raise InvalidRequest(f"request path longer than {MAX_REQUEST_PATH} bytes")
    p = path.lstrip("/")
    if p.endswith("/@latest"):
        return ModRequest(_module(p[: -len("/@latest")]), "", "latest")
    at = p.find("/@v/")
    if at < 0:
        raise NotFound(f"not a module proxy path: {_clip(path)}")
    module = _module(p[:at])
    rest = p[at + len("/@v/") :]
    if rest == "list":
        return ModRequest(module, "", "list")
    for suffix, kind in _SUFFIXES.items():
        if rest.endswith(suffix):
            escaped = rest[: -len(suffix)]
            try:
                version = modpath.unescape_version(escaped)
            except ValueError as e:
                raise InvalidRequest(f"invalid version escaping: {e}") from None
            problem = _unserved(module, version)
            if problem is None:
                return ModRequest(module, version, kind)
            if kind == "info":
                return ModRequest(module, _query(escaped), "query")
            raise NotFound(problem)
    raise NotFound(f"unknown file {_clip(rest)!r}: want list, .info, .mod or .zip")


def request_of(path: str) -> ModRequest:
    """The versioned request whose `ModRequest.path` is `path`, split without checking
    it: for paths the node built itself (hot answers)."""
    at = path.index("/@v/")
    rest = path[at + 4 :]
    dot = rest.rindex(".")
    return ModRequest(modpath.case_unescape(path[1:at]), modpath.case_unescape(rest[:dot]), _KINDS[rest[dot + 1 :]])


def canonical_request(path: str) -> ModRequest | None:
    """The versioned request a client's decoded path names, if it is spelled as the go
    command spells one (`ModRequest.path`), split without the checks `parse_request`
    makes of the module path; None if it is not (then parse it). For looking up what the
    node holds: the index holds checked requests only, so a miss here is a miss, and a
    hit was spelled exactly as `parse_request` reads it."""
    at = path.find("/@v/")
    if at < 2 or path[0] != "/" or path[1] == "/":
        return None
    rest = path[at + 4 :]
    dot = rest.rfind(".")
    kind = _KINDS.get(rest[dot + 1 :]) if dot > 0 else None
    if kind is None:
        return None
    escaped_module, escaped_version = path[1:at], rest[:dot]
    module, version = modpath.case_unescape(escaped_module), modpath.case_unescape(escaped_version)
    if (
        modpath.case_escape(module) != escaped_module
        or modpath.case_escape(version) != escaped_version
        or _unserved(module, version) is not None
    ):
        return None  # not spelled so, or a version query (.info) or no file (.mod, .zip)
    return ModRequest(module, version, kind)


def _module(escaped: str) -> str:
    try:
        return modpath.unescape_path(escaped)
    except ValueError as e:
        raise InvalidRequest(f"invalid module path: {e}") from None


def _unserved(module: str, version: str) -> str | None:
    """Why `version` of the (valid) `module` is no file a proxy serves, or None: it must
    be canonical and fit the path (`v2.0.0` of a path without /v2 is not; as `.info` it is
    a query the upstream may resolve to v2.0.0+incompatible)."""
    if not semver.is_valid(version) or modpath.canonical_version(version) != version:
        return f"{module}@{_clip(version)}: not a canonical version; this proxy serves canonical versions only"
    try:
        modpath.check_fits(module, version)
    except ValueError as e:
        return f"{module}@{version}: {e}"
    return None


def _query(escaped: str) -> str:
    """A non-canonical version for `.info`, as the go command escapes it (EscapeVersion)."""
    version = modpath.unescape_version(escaped)
    try:
        modpath.escape_version(version)
    except ValueError as e:
        raise InvalidRequest(f"invalid version query: {e}") from None
    return version


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."
