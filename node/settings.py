"""Settings declared once, every other surface derived from the declaration.

A configuration class (the node's `Config`, the mesh's `MeshConfig`) is a frozen
dataclass whose fields are made with `setting(...)`. The field's name and annotation
are the setting's name and type; the call gives its default and help text, and what a
derived surface needs beyond that: a parser when the type's own is not the right one
(sizes), a `modmesh serve` flag, choices, a TOML key other than the name:

    @dataclass(frozen=True)
    class Config:
        meta_ttl: float = setting(300.0, "how long a cached @v/list or @latest is fresh")
        max_size: int | None = setting(None, "cap on cached blob bytes", flag="--max-size SIZE", parse=parse_size)

`Settings(cls, ...)` reads those declarations and derives the TOML keys, the
environment variables (`<prefix><NAME>`), the serve flags (argparse arguments whose
help is the declaration's) and their mapping back to setting names. The loaders
(node/config.py, sync/config.py) merge them: flags > environment > file > defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
C = TypeVar("C", bound="DataclassInstance")

_META = "modmesh.setting"


class ConfigError(ValueError):
    pass


# ---- value parsers: TOML values (typed) and environment/flag values (strings) ----

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.I)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_duration(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{value!r} is not a duration (e.g. 30, 1.5s, 250ms, 5m, 7d)")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def parse_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{value!r} is not a size (e.g. 4MiB, 50GB, 1048576)")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


def parse_int(value: object) -> int:
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"{value!r} is not an integer")
    return int(value)


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def parse_list(value: object) -> tuple[str, ...]:
    """A TOML array, or a comma-separated string (environment), or a repeated flag's list."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(str(v).strip() for v in items if str(v).strip())


def parse_path(value: object) -> Path | None:
    return Path(str(value)).expanduser() if str(value) else None


#: The parser a setting gets from its annotation when it declares none.
#: Every float setting takes the duration syntax (a bare number is seconds).
_BY_TYPE: dict[str, Callable[[object], Any]] = {
    "float": parse_duration,
    "int": parse_int,
    "bool": parse_bool,
    "str": str,
    "tuple[str, ...]": parse_list,
    "Path": parse_path,
    "Path | None": parse_path,
}


def coerce(typ: str, value: object, size: bool = False) -> Any:
    """Turn a TOML, environment or flag value into a field of type `typ` (its annotation
    string), a size if `size`. ValueError/TypeError if it cannot. (The interface from
    before the declarations; they pick their parser themselves.)"""
    if size:
        return parse_size(value)
    return _BY_TYPE.get(typ, str)(value)


# ---- the declaration ----


@dataclass(frozen=True)
class Flag:
    """How a setting is spelt on `modmesh serve`'s command line."""

    spelling: str  #: "--max-size"
    metavar: str | None = None
    #: Each use adds one item (argparse "append"); the flags replace the other sources' list.
    repeatable: bool = False
    #: A switch: takes no value; given, the setting becomes this.
    sets: bool | None = None
    #: The flag's help when it reads differently from the setting's ("--no-mdns").
    help: str | None = None
    #: Values the flag offers, when narrower than the setting's (default: the setting's).
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.spelling.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Setting:
    """One setting; `name` and `type` come from its dataclass field."""

    help: str
    parse: Callable[[object], Any] | None = None
    choices: tuple[str, ...] = ()
    flag: Flag | None = None
    #: Its key in the TOML file; "": the name; None: not read from the file.
    toml: str | None = ""
    #: Read from `<prefix><NAME>` in the environment.
    env: bool = True
    #: How help and docs show the default, when the value itself does not say it well.
    shown: str | None = None
    name: str = ""
    type: str = ""


@overload
def setting(
    default: T,
    help: str,
    *,
    flag: str | Flag | None = ...,
    parse: Callable[[object], Any] | None = ...,
    choices: tuple[str, ...] = ...,
    toml: str | bool = ...,
    env: bool = ...,
    shown: str | None = ...,
) -> T: ...
@overload
def setting(
    *,
    factory: Callable[[], T],
    help: str,
    flag: str | Flag | None = ...,
    parse: Callable[[object], Any] | None = ...,
    choices: tuple[str, ...] = ...,
    toml: str | bool = ...,
    env: bool = ...,
    shown: str | None = ...,
) -> T: ...
def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    flag: str | Flag | None = None,
    parse: Callable[[object], Any] | None = None,
    choices: tuple[str, ...] = (),
    toml: str | bool = True,
    env: bool = True,
    shown: str | None = None,
) -> Any:
    """A dataclass field declaring a setting. `flag` is a `Flag` or "--SPELLING [METAVAR]";
    `toml` is True (key = name), another key, or False (not in the file)."""
    if isinstance(flag, str):
        spelling, _, metavar = flag.partition(" ")
        flag = Flag(spelling, metavar or None)
    decl = Setting(
        help=help,
        parse=parse,
        choices=choices,
        flag=flag,
        toml=toml if isinstance(toml, str) else "" if toml else None,
        env=env,
        shown=shown,
    )
    metadata = {_META: decl}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---- the derived surfaces ----

ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup


class Settings(Generic[C]):
    """The settings a configuration class declares, and the surfaces derived from them."""

    def __init__(
        self,
        cls: type[C],
        *,
        env_prefix: str,
        label: str = "config key",
        error: type[ConfigError] = ConfigError,
        log: logging.Logger | None = None,
    ) -> None:
        self.cls = cls
        self.env_prefix = env_prefix
        self.label = label
        self.error = error
        self.log = log or logging.getLogger(__name__)
        self._fields = {f.name: f for f in dataclasses.fields(cls) if _META in f.metadata}
        settings = []
        for f in self._fields.values():
            decl: Setting = f.metadata[_META]
            parse = decl.parse or _BY_TYPE.get(str(f.type))
            if parse is None:
                raise TypeError(f"setting {cls.__name__}.{f.name}: no parser for type {f.type}; declare parse=")
            toml = None if decl.toml is None else decl.toml or f.name
            settings.append(dataclasses.replace(decl, name=f.name, type=str(f.type), parse=parse, toml=toml))
        #: In declaration order.
        self.all: tuple[Setting, ...] = tuple(settings)
        self.by_name = {s.name: s for s in self.all}
        self.by_toml = {s.toml: s for s in self.all if s.toml is not None}

    # -- names --

    def env_var(self, s: Setting) -> str | None:
        return f"{self.env_prefix}{s.name.upper()}" if s.env else None

    def default(self, s: Setting) -> Any:
        f = self._fields[s.name]
        if f.default_factory is not MISSING:
            return f.default_factory()
        return f.default

    # -- reading values --

    def parse(self, s: Setting, value: object) -> Any:
        assert s.parse is not None
        try:
            return s.parse(value)
        except (TypeError, ValueError) as e:
            raise self.error(f"{self.label} {s.name!r}: {e}") from None

    def from_table(self, table: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Values from a TOML table; unknown keys are warned about (`where: unknown key ...`)."""
        values: dict[str, Any] = {}
        for key, value in table.items():
            s = self.by_toml.get(key)
            if s is None:
                self.log.warning("%s: unknown key %r ignored", where, key)
            else:
                values[s.name] = self.parse(s, value)
        return values

    def from_env(self, env: Mapping[str, str]) -> dict[str, Any]:
        """Values from `<prefix><NAME>` variables; empty ones count as unset."""
        values: dict[str, Any] = {}
        for s in self.all:
            var = self.env_var(s)
            if var is not None and env.get(var):
                values[s.name] = self.parse(s, env[var])
        return values

    def from_flags(self, flags: Mapping[str, object]) -> dict[str, Any]:
        """Values from flags given as {setting name: value}; None is "not given"."""
        return {key: self.parse(self.by_name[key], v) for key, v in flags.items() if v is not None}

    def check_choices(self, cfg: C) -> None:
        for s in self.all:
            value = getattr(cfg, s.name)
            if s.choices and value not in s.choices:
                raise self.error(f"{s.name} must be {_alternatives(s.choices)}, not {value!r}")

    # -- the command line --

    def add_flags(self, parser: ArgumentContainer) -> None:
        """An argparse argument for every setting that declares a flag. None is "not
        given", so the flag wins only when it is used."""
        for s in self.all:
            f = s.flag
            if f is None:
                continue
            kw: dict[str, Any] = {"dest": f.dest, "default": None, "help": self.flag_help(s)}
            if f.sets is not None:
                kw["action"] = "store_true"
            else:
                kw["metavar"] = f.metavar
                if f.repeatable:
                    kw["action"] = "append"
                if s.parse is parse_path:
                    kw["type"] = Path
                if f.choices or s.choices:
                    kw["choices"] = f.choices or s.choices
            parser.add_argument(f.spelling, **kw)

    def flags_from_args(self, args: object) -> dict[str, object]:
        """The flags `add_flags` added, parsed, as {setting name: value} (None: not given)."""
        values: dict[str, object] = {}
        for s in self.all:
            f = s.flag
            if f is None:
                continue
            v = getattr(args, f.dest, None)
            if f.sets is not None:
                v = f.sets if v else None
            elif f.repeatable:
                v = v or None
            values[s.name] = v
        return values

    def flag_help(self, s: Setting) -> str:
        assert s.flag is not None
        notes = ["repeatable"] if s.flag.repeatable else []
        shown = None if s.flag.sets is not None else self.shown_default(s)
        if shown:
            notes.append(f"default: {shown}")
        text = s.flag.help or s.help
        if notes:
            text += f" ({'; '.join(notes)})"
        return text.replace("%", "%%")  # argparse %-formats help

    def shown_default(self, s: Setting) -> str | None:
        """The default as help shows it; None when there is nothing to show (none, empty)."""
        if s.shown is not None:
            return s.shown
        value = self.default(s)
        if value is None or value in ((), ""):
            return None
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return ", ".join(map(str, value))
        if s.parse is parse_duration:
            return f"{value:g}s"
        if s.parse is parse_size and isinstance(value, int):
            return show_size(value)
        return str(value)


def show_size(n: int) -> str:
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def _alternatives(choices: tuple[str, ...]) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
