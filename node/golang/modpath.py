"""Module paths, versions and their escaped forms (port of golang.org/x/mod/module).

Every request the node answers names a module path and a version. These functions decide,
exactly as the go command does, which names are acceptable, so the node never stores,
forwards or serves something a client would refuse, and a hostile URL turns into an
InvalidPathError or InvalidVersionError (both ValueError) and nothing else.

Ported from Go 1.27's vendored x/mod/module (module.go, pseudo.go) and path.Match;
tests/test_modpath.py checks the answers against the real go command. Go strings are bytes
and Python strings are code points: a str that cannot be encoded as UTF-8 (lone surrogates,
e.g. from surrogateescape decoding) is treated as Go treats invalid UTF-8.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Literal

from node.golang import semver
from node.golang._text import is_utf8, quote, quote_rune

__all__ = [
    "InvalidPathError",
    "InvalidVersionError",
    "canonical_version",
    "check",
    "check_file_path",
    "check_import_path",
    "check_path",
    "check_path_major",
    "escape_path",
    "escape_version",
    "path_major_prefix",
    "split_path_version",
    "unescape_path",
    "unescape_version",
]

PathKind = Literal["module", "import", "file"]


class InvalidPathError(ValueError):
    """A module, import or file path the go command would refuse.

    str() is Go's text, e.g. ``malformed module path "foo": missing dot in first path
    element``; `reason` is Go's inner error ("missing dot in first path element") and
    `path` the string as passed in (for unescape_path: the escaped form).
    """

    def __init__(self, path: str, reason: str, kind: PathKind = "module", message: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.kind: PathKind = kind
        if message is None:
            message = f"malformed {kind} path {quote(path)}: {reason}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[InvalidPathError], tuple[str, str, PathKind, str]]:
        return (type(self), (self.path, self.reason, self.kind, str(self)))


class InvalidVersionError(ValueError):
    """A version the go command would refuse, alone or for a given module path.

    str() follows Go: ``version "v2.0.0" invalid: should be v0 or v1, not v2``, or with the
    module path known (as Go's ModuleError prints it) ``example.com/m@v2.0.0: invalid
    version: should be v0 or v1, not v2``. `version` is the string as passed in.
    """

    def __init__(
        self,
        version: str,
        reason: str,
        pseudo: bool = False,
        path: str | None = None,
        message: str | None = None,
    ) -> None:
        self.version = version
        self.reason = reason
        self.pseudo = pseudo
        self.path = path
        noun = "pseudo-version" if pseudo else "version"
        if message is None:
            if path is None:
                message = f"{noun} {quote(version)} invalid: {reason}"
            else:
                message = f"{path}@{version}: invalid {noun}: {reason}"
        super().__init__(message)

    def __reduce__(
        self,
    ) -> tuple[type[InvalidVersionError], tuple[str, str, bool, str | None, str]]:
        return (type(self), (self.version, self.reason, self.pseudo, self.path, str(self)))


# --- Path checks ----------------------------------------------------------------------

_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_ALNUM = _DIGITS + _LOWER + _LOWER.upper()
# First element: an LDH host name, lower case only so it has a single spelling.
_FIRST_OK = frozenset(_DIGITS + _LOWER + "-.")
# Module path elements: no '%' or '+' that would change meaning inside a URL.
_MODULE_OK = frozenset(_ALNUM + "-._~")
_IMPORT_OK = _MODULE_OK | {"+"}
# File names: ASCII punctuation minus shell specials (" ' * < > ? ` |) and separators.
_FILE_ASCII_OK = frozenset(_ALNUM + "!#$%&()+,-.=@[]^_{}~ ")
# Reserved on Windows whatever follows the first dot and in any case. Only ASCII letters
# case-fold to these letters (Kelvin K and long s fold to k and s, used by no name), so an
# ASCII upper() matches Go's strings.EqualFold.
_BAD_WINDOWS_NAMES = frozenset(["CON", "PRN", "AUX", "NUL"] + [f"{p}{d}" for p in ("COM", "LPT") for d in "123456789"])


def _file_char_ok(ch: str) -> bool:
    if ch < "\x80":
        return ch in _FILE_ASCII_OK
    return unicodedata.category(ch).startswith("L")  # unicode.IsLetter


_CHAR_OK: dict[PathKind, Callable[[str], bool]] = {
    "module": _MODULE_OK.__contains__,
    "import": _IMPORT_OK.__contains__,
    "file": _file_char_ok,
}


def _elem_problem(elem: str, kind: PathKind) -> str | None:
    """Why one path element is invalid for kind (Go's checkElem), or None."""
    if not elem:
        return "empty path element"
    if elem.count(".") == len(elem):
        return f"invalid path element {quote(elem)}"
    if elem[0] == "." and kind == "module":
        return "leading dot in path element"
    if elem[-1] == ".":
        return "trailing dot in path element"
    char_ok = _CHAR_OK[kind]
    for ch in elem:
        if not char_ok(ch):
            return f"invalid char {quote_rune(ch)}"
    short = elem.partition(".")[0]
    if short.isascii() and short.upper() in _BAD_WINDOWS_NAMES:
        return f"{quote(short)} disallowed as path element component on Windows"
    if kind == "file":
        return None  # short names (FOO~1) only matter for import paths
    _, tilde, digits = short.rpartition("~")
    if tilde and digits and all(c in _DIGITS for c in digits):
        return "trailing tilde and digits in path element"
    return None


def _path_problem(path: str, kind: PathKind) -> str | None:
    """Why path is invalid for kind (Go's checkPath), or None."""
    if not is_utf8(path):
        return "invalid UTF-8"
    if not path:
        return "empty string"
    if path[0] == "-" and kind != "file":
        return "leading dash"
    if "//" in path:
        return "double slash"
    if path[-1] == "/":
        return "trailing slash"
    for elem in path.split("/"):
        if problem := _elem_problem(elem, kind):
            return problem
    return None


def _module_path_problem(path: str) -> str | None:
    if problem := _path_problem(path, "module"):
        return problem
    first = path.partition("/")[0]
    if not first:
        return "leading slash"
    if "." not in first:
        return "missing dot in first path element"
    if path[0] == "-":
        return "leading dash in first path element"
    for ch in first:
        if ch not in _FIRST_OK:
            return f"invalid char {quote_rune(ch)} in first path element"
    if not split_path_version(path)[2]:
        return "invalid version"
    return None


def check_path(path: str) -> None:
    """Raise InvalidPathError unless path is a valid module path (module.CheckPath).

    On top of the import path rules: the first element is a lower-case host name with a
    dot and no leading dash, no element starts with a dot, and a /vN suffix is well formed.
    """
    if problem := _module_path_problem(path):
        raise InvalidPathError(path, problem)


def check_import_path(path: str) -> None:
    """Raise InvalidPathError unless path is a valid package import path."""
    if problem := _path_problem(path, "import"):
        raise InvalidPathError(path, problem, "import")


def check_file_path(path: str) -> None:
    """Raise InvalidPathError unless path is a valid file path inside a module zip.

    Wider than import paths (Unicode letters, space, more punctuation) but still portable
    to Windows and macOS file systems.
    """
    if problem := _path_problem(path, "file"):
        raise InvalidPathError(path, problem, "file")


# --- Major versions -------------------------------------------------------------------


def split_path_version(path: str) -> tuple[str, str, bool]:
    """(prefix, path_major, ok) with prefix + path_major == path when ok.

    path_major is "" or "/vN" (N >= 2, no leading zero, no dots); gopkg.in paths use
    ".vN" for any N, optionally followed by "-unstable". ok is False for a final element
    that looks like a bad major suffix (/v1, /v02, /v2.0) or a gopkg.in path without one.
    """
    if path.startswith("gopkg.in/"):
        return _split_gopkg_in(path)
    stem = path.rstrip(_DIGITS + ".")
    digits = path[len(stem) :]
    if not digits or not stem.endswith("/v"):
        return path, "", True
    if "." in digits or digits[0] == "0" or digits == "1":
        return path, "", False
    return stem[:-2], "/v" + digits, True


def _split_gopkg_in(path: str) -> tuple[str, str, bool]:
    stem = path.removesuffix("-unstable").rstrip(_DIGITS)
    if not stem.endswith(".v"):
        return path, "", False  # every gopkg.in path ends in .vN
    prefix, path_major = stem[:-2], path[len(stem) - 2 :]
    # Go accepts ".v-unstable" (no digits) too: len(path_major) > 2 and no '0' after "v".
    if len(path_major) <= 2 or (path_major[2] == "0" and path_major != ".v0"):
        return path, "", False
    return prefix, path_major, True


def check_path_major(version: str, path_major: str) -> None:
    """Raise InvalidVersionError unless version's major version fits the path suffix.

    No suffix allows v0, v1 and +incompatible versions; "/vN" and ".vN" require vN.
    As in Go, v0.0.0- pseudo-versions are accepted for gopkg.in ".v1" (an old bug).
    """
    if path_major.startswith(".v"):
        path_major = path_major.removesuffix("-unstable")
    if version.startswith("v0.0.0-") and path_major == ".v1":
        return
    m = semver.major(version)
    if not path_major:
        if m in ("v0", "v1") or semver.build(version) == "+incompatible":
            return
        want = "v0 or v1"
    elif path_major[0] in "/.":
        if m == path_major[1:]:
            return
        want = path_major[1:]
    else:
        want = path_major
    raise InvalidVersionError(version, f"should be {want}, not {m}")


def path_major_prefix(path_major: str) -> str:
    """The tag prefix implied by a path suffix: "/v2" -> "v2", "" -> "" (v0 or v1).

    Raises plain ValueError where Go panics: for input not produced by split_path_version.
    """
    if not path_major:
        return ""
    if path_major[0] not in "/.":
        raise ValueError(f"pathMajor suffix {path_major} passed to PathMajorPrefix lacks separator")
    if path_major.startswith(".v"):
        path_major = path_major.removesuffix("-unstable")
    m = path_major[1:]
    if m != semver.major(m):
        raise ValueError(f"pathMajor suffix {path_major} passed to PathMajorPrefix is not a valid major version")
    return m


def check(path: str, version: str) -> None:
    """Raise unless (path, version) is a valid module version (module.Check).

    InvalidPathError for the path, InvalidVersionError (with .path set) if the version is
    not semver or its major version does not match the path's suffix. Like Go, this does
    not require the canonical form: compare with canonical_version() where that matters.
    """
    check_path(path)
    if not semver.is_valid(version):
        raise InvalidVersionError(version, "not a semantic version", path=path)
    check_fits(path, version)


def check_fits(path: str, version: str) -> None:
    """`check` for a path and a semantic version already known valid: raise
    InvalidVersionError unless the version's major fits the path's suffix."""
    try:
        check_path_major(version, split_path_version(path)[1])
    except InvalidVersionError as err:
        raise InvalidVersionError(version, err.reason, path=path) from None


def canonical_version(v: str) -> str:
    """semver.canonical(), but keeping the build suffix "+incompatible" (which means something)."""
    cv = semver.canonical(v)
    if semver.build(v) == "+incompatible":
        cv += "+incompatible"
    return cv


# --- Case escaping --------------------------------------------------------------------

_UPPER_RE = re.compile(r"[A-Z]")
_BANG_RE = re.compile(r"!([a-z])")
# What makes escaped text malformed: a bare upper-case letter, or a "!" not followed by a-z
# (including a trailing "!").
_BAD_ESCAPE_RE = re.compile(r"[A-Z]|!(?![a-z])")


def case_escape(s: str) -> str:
    """The "!" case encoding alone, without checking `s` (escape_path, escape_version check)."""
    return s if s == s.lower() else _UPPER_RE.sub(lambda m: "!" + m[0].lower(), s)


def case_unescape(escaped: str) -> str:
    """Undo `case_escape` alone, without checking `escaped` (unescape_path does)."""
    return escaped if "!" not in escaped else _BANG_RE.sub(lambda m: m[1].upper(), escaped)


def _unescape(escaped: str) -> str | None:
    if not escaped.isascii() or _BAD_ESCAPE_RE.search(escaped):
        return None
    return case_unescape(escaped)


def escape_path(path: str) -> str:
    """The case-safe form used in URLs and file names: "!" + lower case for upper case.

    github.com/Azure/x -> github.com/!azure/x. Raises InvalidPathError for invalid paths.
    """
    check_path(path)
    return case_escape(path)


def unescape_path(escaped: str) -> str:
    """Inverse of escape_path; raises InvalidPathError for bad escaping or a bad path."""
    path = _unescape(escaped)
    if path is None:
        raise InvalidPathError(escaped, "invalid escaping", message=f"invalid escaped module path {quote(escaped)}")
    if problem := _module_path_problem(path):
        inner = InvalidPathError(path, problem)
        raise InvalidPathError(escaped, problem, message=f"invalid escaped module path {quote(escaped)}: {inner}")
    return path


def escape_version(v: str) -> str:
    """The case-safe form of a version; raises InvalidVersionError.

    Versions need not be semver (queries like "master" are escaped too) but must be a valid
    file name element without "!". Non-ASCII letters pass Go's element check and then fail
    its escaper; here they get the same "disallowed version string" error.
    """
    if _elem_problem(v, "file") or "!" in v or not v.isascii():
        raise InvalidVersionError(v, "disallowed version string")
    return case_escape(v)


def unescape_version(escaped: str) -> str:
    """Inverse of escape_version; raises InvalidVersionError."""
    v = _unescape(escaped)
    if v is None:
        raise InvalidVersionError(escaped, "invalid escaping", message=f"invalid escaped version {quote(escaped)}")
    if problem := _elem_problem(v, "file"):
        raise InvalidVersionError(escaped, problem, message=f"invalid escaped version {quote(v)}: {problem}")
    return v
