"""Node configuration: one frozen dataclass, loaded once.

Precedence: command-line flags > environment (`MODMESH_<KEY>`) > TOML file >
defaults. Every key is documented in README.md ("Configuration"); unknown keys
in the file are warned about, not fatal, so an older node reads a newer file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "https://proxy.golang.org"
#: What the go command uses when GOSUMDB is unset (its built-in key).
DEFAULT_SUMDB = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """systemd's StateDirectory, else the XDG data home."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(base) / "modmesh"


@dataclass(frozen=True)
class Route:
    """`[[route]]`: modules matching `pattern` (GOPRIVATE syntax) are fetched only
    through `upstream` (a GOPROXY string, or `direct`), with optional credentials.
    Routed modules are private: never sent to another upstream or a checksum database."""

    pattern: str
    upstream: str
    token_file: Path | None = None
    token_env: str | None = None
    basic_auth_file: Path | None = None
    basic_auth_env: str | None = None


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:3000"
    data: Path = field(default_factory=default_data_dir)
    upstream: str = DEFAULT_UPSTREAM
    #: Seconds to establish a TCP/TLS connection to an upstream.
    connect_timeout: float = 5.0
    #: Longest silence (seconds) while waiting for an upstream's headers or body bytes.
    read_timeout: float = 30.0
    #: Whole-request bound (seconds) for info, mod, list and latest from an upstream.
    small_timeout: float = 60.0
    #: Consecutive failures that open an upstream's circuit breaker.
    breaker_threshold: int = 3
    #: Seconds a breaker stays open before one probe request is let through.
    breaker_reset: float = 30.0
    #: Seconds a cached @v/list or @latest is fresh.
    meta_ttl: float = 300.0
    #: Seconds after the TTL during which the cached answer is served while a
    #: background refresh runs (stale-while-revalidate).
    meta_stale_window: float = 300.0
    #: Seconds a "not found" from the upstreams is remembered.
    negative_ttl: float = 60.0
    #: Zips larger than this stream to clients while they download (bytes).
    stream_threshold: int = 4 << 20
    #: Seconds a client may take no bytes of a response before it is cut off (it never
    #: holds a download, its memory or other clients; the download goes on).
    write_idle_timeout: float = 60.0
    #: When the store cannot take a file (disk full, quota, max_size), the node still
    #: passes it through to clients, holding at most this many bytes in memory at once.
    passthrough_memory: int = 512 << 20
    #: Cap on the store's blob bytes (storage limits): over it, the least valuable
    #: unpinned files are evicted. None: no cap.
    max_size: int | None = None
    #: Checksum databases, GOSUMDB syntax each: "NAME+HASH+KEY [URL]". Without a URL the
    #: node finds the database through its upstreams' /sumdb/ endpoints, else at https://NAME.
    sumdb: tuple[str, ...] = (DEFAULT_SUMDB,)
    #: "sumdb": a public .zip/.mod whose h1 differs from the database is refused; one the
    #: database cannot confirm (unreachable, no record) is cached *unverified* and checked
    #: again in the background; "require": that is refused too (fail closed); "off": no
    #: checks against a database (the node still proxies it for clients).
    sumdb_verify: str = "sumdb"
    #: GOPRIVATE-syntax patterns of private modules: never checked against or sent to a
    #: checksum database.
    private: str = ""
    #: GONOSUMDB-syntax patterns skipping the database, in addition to `private`.
    nosumdb: str = ""
    #: Seconds a cached database `latest` tree head is fresh.
    sumdb_latest_ttl: float = 60.0
    #: Honour HTTP_PROXY/HTTPS_PROXY/NO_PROXY for upstream requests.
    trust_env: bool = False
    #: No upstream or checksum-database traffic at all: serve what is cached.
    offline: bool = False
    #: Per-pattern routes for private modules ([[route]] tables in the file).
    routes: tuple[Route, ...] = ()
    #: Seconds one `direct` fetch (the go command talking to version control) may take.
    direct_timeout: float = 300.0
    #: At most this many `direct` fetches run at once.
    direct_jobs: int = 4
    #: Client access: a file of bearer tokens (one per line). With it (or
    #: client_basic_file) the GOPROXY and sumdb endpoints require credentials.
    client_tokens_file: Path | None = None
    #: Client access: a file of `user:password` lines (HTTP basic, what .netrc sends).
    client_basic_file: Path | None = None
    #: Requests per second per client address (0: unlimited), with this burst.
    client_rate: float = 0.0
    client_burst: int = 50
    #: A file holding the admin token; without it admin endpoints answer loopback only.
    admin_token_file: Path | None = None
    #: Serve https with this certificate chain and key (PEM) instead of plain http.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    log_level: str = "info"
    #: "json" (one object per line) or "text".
    log_format: str = "json"
    #: TOML tables that belong to plugins (e.g. [mesh]), passed through unread.
    sections: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class ConfigError(ValueError):
    pass


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
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
_SIZE_KEYS = {"stream_threshold", "max_size", "passthrough_memory"}


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen address {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_duration(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{value!r} is not a duration (e.g. 30, 1.5s, 250ms, 5m)")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def parse_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{value!r} is not a size (e.g. 4MiB, 50GB, 1048576)")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


def coerce(typ: str, value: object, size: bool = False) -> Any:
    """Turn a TOML, environment or flag value into a dataclass field's type (given as its
    annotation string); shared with the mesh's own config. ValueError/TypeError if not."""
    if size:
        return parse_size(value)
    if typ == "float":
        return parse_duration(value)
    if typ == "int":
        return int(value)  # type: ignore[call-overload]
    if typ == "bool":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if typ == "tuple[str, ...]":
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(str(v).strip() for v in items if str(v).strip())
    if typ in ("Path", "Path | None"):
        return Path(str(value)).expanduser() if str(value) else None
    return str(value)


def _coerce(key: str, value: object) -> Any:
    try:
        return coerce(str(_FIELDS[key].type), value, key in _SIZE_KEYS)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key {key!r}: {e}") from None


_ROUTE_FIELDS = {f.name for f in dataclasses.fields(Route)}


def _routes(file: Path, raw: object) -> tuple[Route, ...]:
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"config file {file}: 'route' must be a list of tables ([[route]])")
    routes = []
    for r in raw:
        unknown = set(r) - _ROUTE_FIELDS
        if unknown:
            log.warning("config file %s: unknown key(s) %s in [[route]] ignored", file, sorted(unknown))
        if not isinstance(r.get("pattern"), str) or not isinstance(r.get("upstream"), str):
            raise ConfigError(f"config file {file}: every [[route]] needs 'pattern' and 'upstream'")
        kw = {k: v for k, v in r.items() if k in _ROUTE_FIELDS}
        for k in ("token_file", "basic_auth_file"):
            if k in kw:
                kw[k] = Path(str(kw[k])).expanduser()
        routes.append(Route(**kw))
    return tuple(routes)


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Merge defaults, the TOML file, MODMESH_* environment variables and flags."""
    values: dict[str, Any] = {}
    if file is None and env.get("MODMESH_CONFIG"):
        file = Path(env["MODMESH_CONFIG"])
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file}: {e}") from None
        sections: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "route":
                values["routes"] = _routes(file, value)
            elif isinstance(value, dict):
                sections[key] = value
            elif key in _FIELDS and key != "sections":
                values[key] = _coerce(key, value)
            else:
                log.warning("config file %s: unknown key %r ignored", file, key)
        values["sections"] = sections
    for key in _FIELDS.keys() - {"sections", "routes"}:
        ev = env.get(f"MODMESH_{key.upper()}")
        if ev:
            values[key] = _coerce(key, ev)
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    if values.get("sumdb") in (("off",), ("",)):
        values["sumdb"] = ()  # GOSUMDB=off: no checksum database at all
    cfg = Config(**values)
    parse_listen(cfg.listen)
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        raise ConfigError("tls_cert_file and tls_key_file go together")
    if cfg.write_idle_timeout <= 0:
        raise ConfigError(f"write_idle_timeout must be a positive duration, not {cfg.write_idle_timeout}")
    if cfg.max_size is not None and cfg.max_size <= 0:
        raise ConfigError(f"max_size must be a positive size, not {cfg.max_size}")
    if cfg.sumdb_verify not in ("sumdb", "require", "off"):
        raise ConfigError(f"sumdb_verify must be 'sumdb', 'require' or 'off', not {cfg.sumdb_verify!r}")
    if cfg.log_format not in ("json", "text"):
        raise ConfigError(f"log_format must be 'json' or 'text', not {cfg.log_format!r}")
    return cfg
