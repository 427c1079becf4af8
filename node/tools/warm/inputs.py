"""What a project needs, read from its own files: go.sum, go.mod, go.work, or a list.

Pure functions (no I/O except `load_gowork` / `load_inputs` reading the named
files), so the rules are property-tested. `modmesh warm` uses them; anything
that has to turn a project into module versions (bundles, too) can.

* `*.sum` (go.sum, go.work.sum): `m v h1:..` needs info, mod and zip;
  `m v/go.mod h1:..` alone needs info and mod only, because that is all the go
  command downloads for a version it only uses for the module graph. The hashes
  travel along, so the caller can check what it gets against them.
* `go.mod` / `*.mod`: every `require` (indirect ones too), with `replace` applied:
  a module replaced by a local directory is skipped, one replaced by another
  module version becomes that version.
* `go.work` / `*.work`: the go.mod of every `use` directory; the workspace's own
  modules are skipped and go.work's `replace` wins over a go.mod's.
* anything else (or `-` for stdin): `module@version` tokens, or `module version`
  lines; `#` starts a comment. An argument that is no file but has an `@` is
  taken as a `module@version` itself.

Versions must be canonical (a proxy serves nothing else); every line that cannot
be used becomes an `InputError` with its file and line, never an exception.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node.cache.protocol import Kind
from node.golang import gomod, modpath


class UnreadableInput(Exception):
    """An input file that cannot be read at all (missing, not text)."""


# ---- what to fetch -------------------------------------------------------------------------


@dataclass
class Target:
    """One module version to warm, and the hashes the inputs promise for it."""

    module: str
    version: str
    zip: bool = True  # False: only the go.mod is needed (a `/go.mod`-only go.sum line)
    zip_h1: str | None = None
    mod_h1: str | None = None
    origin: str = ""  # "go.sum:12", for messages

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return ("info", "mod", "zip") if self.zip else ("info", "mod")


@dataclass(frozen=True)
class InputError:
    origin: str
    text: str
    message: str


Parsed = tuple[list[Target], list[InputError]]


def version_problem(module: str, version: str) -> str | None:
    """Why module@version cannot be warmed (a proxy serves canonical versions only)."""
    try:
        modpath.check(module, version)
    except ValueError as e:
        return str(e)
    if modpath.canonical_version(version) != version:
        return f"{module}@{version}: not a canonical version (want {modpath.canonical_version(version)})"
    return None


def _target(module: str, version: str, origin: str, errors: list[InputError], **kw: Any) -> Target | None:
    problem = version_problem(module, version)
    if problem is not None:
        errors.append(InputError(origin, f"{module}@{version}", problem))
        return None
    return Target(module, version, origin=origin, **kw)


def parse_gosum(text: str, name: str = "go.sum") -> Parsed:
    """go.sum lines, as the go command reads them: three fields, blank lines skipped."""
    targets: list[Target] = []
    errors: list[InputError] = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        origin = f"{name}:{n}"
        if len(f) != 3:
            errors.append(InputError(origin, line.strip(), "malformed go.sum line (want: module version hash)"))
            continue
        module, version, h = f
        gomod_only = version.endswith("/go.mod")
        version = version.removesuffix("/go.mod")
        h1 = h if h.startswith("h1:") else None
        kw = {"zip": False, "mod_h1": h1} if gomod_only else {"zip": True, "zip_h1": h1}
        t = _target(module, version, origin, errors, **kw)
        if t is not None:
            targets.append(t)
    return merge(targets, errors)


def parse_list(text: str, name: str = "list") -> Parsed:
    """`module@version` tokens, or `module version` lines; `#` comments."""
    targets: list[Target] = []
    errors: list[InputError] = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split("#", 1)[0].split()
        origin = f"{name}:{n}"
        if len(f) == 2 and "@" not in line:
            pairs = [(f[0], f[1])]
        else:
            pairs = []
            for tok in f:
                m, at, v = tok.rpartition("@")
                if not at or not m:
                    errors.append(InputError(origin, tok, "want module@version"))
                    continue
                pairs.append((m, v))
        for m, v in pairs:
            t = _target(m, v, origin, errors)
            if t is not None:
                targets.append(t)
    return merge(targets, errors)


def merge(targets: Iterable[Target], errors: list[InputError]) -> Parsed:
    """One target per module version: zip if any input needs it, hashes must agree."""
    out: dict[tuple[str, str], Target] = {}
    for t in targets:
        key = (t.module, t.version)
        have = out.get(key)
        if have is None:
            out[key] = replace(t)
            continue
        have.zip = have.zip or t.zip
        for attr in ("zip_h1", "mod_h1"):
            mine, theirs = getattr(have, attr), getattr(t, attr)
            if mine and theirs and mine != theirs:
                errors.append(
                    InputError(
                        t.origin,
                        f"{t.module}@{t.version}",
                        f"{t.origin} has {theirs} for {t.module}@{t.version}, {have.origin} has {mine}",
                    )
                )
            elif theirs:
                setattr(have, attr, theirs)
    return list(out.values()), errors


# ---- go.mod and go.work --------------------------------------------------------------------


@dataclass(frozen=True)
class Replace:
    old: str
    old_version: str | None  # None: every version
    new: str  # a module path, or a directory
    new_version: str | None  # None: `new` is a directory


@dataclass
class ModFile:
    module: str | None = None
    requires: list[tuple[str, str, int]] = field(default_factory=list)  # (path, version, line)
    replaces: list[Replace] = field(default_factory=list)
    uses: list[str] = field(default_factory=list)  # go.work only
    errors: list[InputError] = field(default_factory=list)


def is_directory_path(p: str) -> bool:
    """modfile.IsDirectoryPath: a replacement that is a local directory, not a module."""
    return (
        p in (".", "..")
        or p.startswith(("./", ".\\", "../", "..\\", "/", "\\"))
        or (len(p) >= 2 and p[0].isascii() and p[0].isalpha() and p[1] == ":")
    )


def parse_modfile(text: str, name: str = "go.mod") -> ModFile:
    """The directives warm needs from a go.mod or go.work (same syntax)."""
    mf = ModFile()
    try:
        stmts = gomod.statements(text)
        for verb, args, line in stmts:
            origin = f"{name}:{line}"
            args = [gomod.parse_string(a) for a in args]
            if verb == "module" and len(args) == 1:
                mf.module = args[0]
            elif verb == "require":
                if len(args) != 2:
                    mf.errors.append(InputError(origin, " ".join(args), "usage: require module/path v1.2.3"))
                else:
                    mf.requires.append((args[0], args[1], line))
            elif verb == "replace":
                r = _replace(args)
                if isinstance(r, str):
                    mf.errors.append(InputError(origin, " ".join(args), r))
                else:
                    mf.replaces.append(r)
            elif verb == "use" and len(args) == 1:
                mf.uses.append(args[0])
    except ValueError as e:  # GoModError and bad quoting
        mf.errors.append(InputError(name, "", f"{name}: {e}"))
    return mf


def _replace(args: list[str]) -> Replace | str:
    if "=>" not in args:
        return "usage: replace module/path [v1.2.3] => other/module v1.4.5 | ./dir"
    i = args.index("=>")
    left, right = args[:i], args[i + 1 :]
    if len(left) not in (1, 2) or len(right) not in (1, 2):
        return "usage: replace module/path [v1.2.3] => other/module v1.4.5 | ./dir"
    if len(right) == 1 and not is_directory_path(right[0]):
        return f"replacement {right[0]} without a version must be a directory path"
    return Replace(left[0], left[1] if len(left) == 2 else None, right[0], right[1] if len(right) == 2 else None)


def apply_replaces(
    mf: ModFile, name: str, overrides: Sequence[Replace] = (), local: frozenset[str] = frozenset()
) -> Parsed:
    """The module versions a go.mod's requirements resolve to.

    `overrides` (a go.work's replaces) win over the file's own; a version-specific
    replace wins over a path-wide one, as in the go command. Modules in `local`
    (workspace modules) and modules replaced by directories are not fetched.
    """
    errors = list(mf.errors)
    targets: list[Target] = []
    for path, version, line in mf.requires:
        origin = f"{name}:{line}"
        if path in local:
            continue
        r = _find_replace(overrides, path, version) or _find_replace(mf.replaces, path, version)
        if r is not None:
            if r.new_version is None:
                continue  # a local directory: nothing to download
            path, version = r.new, r.new_version
        t = _target(path, version, origin, errors)
        if t is not None:
            targets.append(t)
    return merge(targets, errors)


def _find_replace(replaces: Sequence[Replace], path: str, version: str) -> Replace | None:
    found: Replace | None = None
    for r in replaces:  # the last matching line wins; a version-specific one over a path-wide one
        if (
            r.old == path
            and r.old_version in (version, None)
            and (r.old_version is not None or found is None or found.old_version is None)
        ):
            found = r
    return found


def load_gowork(path: Path) -> Parsed:
    """A workspace: every used module's requirements, minus the workspace modules."""
    work = parse_modfile(path.read_text(), str(path))
    mods: list[tuple[Path, ModFile]] = []
    errors = list(work.errors)
    for use in work.uses:
        gm = path.parent / use / "go.mod"
        try:
            mods.append((gm, parse_modfile(gm.read_text(), str(gm))))
        except OSError as ex:
            errors.append(InputError(str(path), use, f"{path}: use {use}: cannot read {gm}: {ex.strerror}"))
    local = frozenset(m.module for _, m in mods if m.module)
    targets: list[Target] = []
    for gm, mf in mods:
        found, bad = apply_replaces(mf, str(gm), work.replaces, local)
        targets += found
        errors += bad
    return merge(targets, errors)


def load_inputs(args: Sequence[str], stdin: Callable[[], str] | None = None) -> Parsed:
    """Parse every input argument; raises UnreadableInput for a file that cannot be read."""
    targets: list[Target] = []
    errors: list[InputError] = []
    for arg in args:
        p = Path(arg)
        try:
            if arg == "-":
                t, e = parse_list((stdin or sys.stdin.read)(), "stdin")
            elif not p.exists() and "@" in arg:
                t, e = parse_list(arg, "argument")
            elif p.name.endswith(".sum"):
                t, e = parse_gosum(p.read_text(), arg)
            elif p.name.endswith(".work"):
                t, e = load_gowork(p)
            elif p.name.endswith(".mod"):
                t, e = apply_replaces(parse_modfile(p.read_text(), arg), arg)
            else:
                t, e = parse_list(p.read_text(), arg)
        except OSError as ex:
            raise UnreadableInput(f"cannot read {arg}: {ex.strerror or ex}") from None
        except UnicodeDecodeError:
            raise UnreadableInput(f"{arg} is not a text file") from None
        targets += t
        errors += e
    return merge(targets, errors)
