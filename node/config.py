"""Node configuration: one frozen dataclass, loaded once.

Every setting is declared once, as a `Config` field made with `setting()` (name, type,
default, help, and a flag where `modmesh serve` has one); the TOML keys, the
`MODMESH_<KEY>` environment variables and the serve flags are derived from it
(node/settings.py). Precedence: command-line flags > environment > TOML file >
defaults. Every key is documented in README.md ("Configuration", a test keeps the
table complete); unknown keys in the file are warned about, not fatal, so an older
node reads a newer file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.settings import ConfigError as ConfigError
from node.settings import Flag, Settings, parse_list, setting
from node.settings import coerce as coerce
from node.settings import parse_duration as parse_duration
from node.settings import parse_size as parse_size

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


_ROUTE_FIELDS = {f.name for f in dataclasses.fields(Route)}


def parse_routes(raw: object, file: Path | None = None) -> tuple[Route, ...]:
    """The `[[route]]` array of tables."""
    where = f"config file {file}" if file is not None else "config"
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"{where}: 'route' must be a list of tables ([[route]])")
    routes = []
    for r in raw:
        unknown = set(r) - _ROUTE_FIELDS
        if unknown:
            log.warning("%s: unknown key(s) %s in [[route]] ignored", where, sorted(unknown))
        if not isinstance(r.get("pattern"), str) or not isinstance(r.get("upstream"), str):
            raise ConfigError(f"{where}: every [[route]] needs 'pattern' and 'upstream'")
        kw = {k: v for k, v in r.items() if k in _ROUTE_FIELDS}
        for k in ("token_file", "basic_auth_file"):
            if k in kw:
                kw[k] = Path(str(kw[k])).expanduser()
        routes.append(Route(**kw))
    return tuple(routes)


def parse_sumdb(value: object) -> tuple[str, ...]:
    """GOSUMDB specs; `off` alone: no checksum database at all."""
    specs = parse_list(value)
    return () if specs == ("off",) else specs


@dataclass(frozen=True)
class Config:
    """Every setting of a node. (`setting()` returns a dataclasses.field, which ruff's
    RUF009 cannot see through for non-builtin types, hence the noqa comments.)"""

    listen: str = setting("127.0.0.1:3000", "address to listen on", flag="--listen HOST:PORT")
    data: Path = setting(
        factory=default_data_dir,
        help="data directory: blobs, index, temp files",
        flag="--data DIR",
        shown="$STATE_DIRECTORY, else $XDG_DATA_HOME/modmesh or ~/.local/share/modmesh",
    )
    upstream: str = setting(
        DEFAULT_UPSTREAM,
        "upstream chain in GOPROXY syntax, e.g. 'https://a,https://b|https://c': ',' falls through on "
        "404/410 only, '|' on any error, 'off' ends the chain, 'direct' fetches with the go command",
        flag="--upstream GOPROXY-STRING",
    )
    connect_timeout: float = setting(5.0, "seconds to establish a TCP/TLS connection to an upstream")
    read_timeout: float = setting(30.0, "longest silence while waiting for an upstream's headers or body bytes")
    small_timeout: float = setting(60.0, "whole-request bound for info, mod, list and latest from an upstream")
    breaker_threshold: int = setting(3, "consecutive failures that open an upstream's circuit breaker")
    breaker_reset: float = setting(30.0, "how long a breaker stays open before one probe request is let through")
    meta_ttl: float = setting(300.0, "how long a cached @v/list or @latest is fresh")
    meta_stale_window: float = setting(
        300.0,
        "after the TTL, how long the cached answer is served while a background refresh runs (stale-while-revalidate)",
    )
    negative_ttl: float = setting(60.0, 'how long a "not found" from the upstreams is remembered')
    stream_threshold: int = setting(
        4 << 20, "zips larger than this stream to clients while they download", parse=parse_size
    )
    write_idle_timeout: float = setting(
        60.0,
        "a client that takes no bytes of a response for this long is cut off (it never holds a download, "
        "its memory or other clients; the download goes on)",
    )
    head_timeout: float = setting(
        60.0,
        "a client must send a whole request head within this long of its first byte (a total deadline, "
        "not extended by bytes that trickle in; nginx's client_header_timeout), else 408 and closed",
    )
    passthrough_memory: int = setting(
        512 << 20,
        "when the store cannot take a file (disk full, quota, max_size), the node still passes it through "
        "to clients, holding at most this many bytes in memory at once",
        parse=parse_size,
    )
    memory_cache: int = setting(
        64 << 20,
        "bytes the in-memory caches hold at most, together: small files as ready answers (11/16, about "
        "350 bytes a file besides its body), index rows of hits (1/8), @v/list, @latest and query answers (1/8), "
        'recent "not found" answers (1/16)',
        parse=parse_size,
        shown="64MiB",
    )
    check_on_serve: bool = setting(
        True,
        "hash each blob against its sha256 before its first serve after the node starts; a damaged one is "
        "quarantined and fetched again, never served",
    )
    scrub_period: float = setting(
        7 * 86400.0,
        "the background scrub re-hashes every blob once per this period (0: no scrub)",
        shown="7d",
    )
    scrub_rate: int = setting(
        8 << 20,
        "bytes per second the scrub reads at most, so that client traffic keeps the disk",
        parse=parse_size,
        shown="8MiB",
    )
    max_size: int | None = setting(
        None,
        "cap on cached blob bytes, e.g. 50GB; over it the least used unpinned files are evicted",
        flag="--max-size SIZE",
        parse=parse_size,
    )
    sumdb: tuple[str, ...] = setting(
        (DEFAULT_SUMDB,),
        "checksum database in GOSUMDB syntax, 'NAME+HASH+KEY [URL]'; without a URL the node finds it "
        "through its upstreams' /sumdb/ endpoints, else at https://NAME; 'off': none",
        flag=Flag("--sumdb", "'NAME+KEY URL'", repeatable=True),
        parse=parse_sumdb,
        shown="sum.golang.org",
    )
    sumdb_verify: str = setting(
        "sumdb",
        "'sumdb': a public .zip/.mod whose h1 differs from the database is refused; one the database "
        "cannot confirm (unreachable, no record) is cached unverified and checked again in the background; "
        "'require': that is refused too (fail closed); 'off': no checks against a database",
        choices=("sumdb", "require", "off"),
    )
    private: str = setting(
        "", "GOPRIVATE-syntax patterns of private modules: never checked against or sent to a checksum database"
    )
    nosumdb: str = setting("", "GONOSUMDB-syntax patterns skipping the database, in addition to `private`")
    sumdb_latest_ttl: float = setting(60.0, "how long a cached database `latest` tree head is fresh")
    trust_env: bool = setting(False, "honour HTTP_PROXY/HTTPS_PROXY/NO_PROXY for upstream requests")
    offline: bool = setting(
        False,
        "no upstream or checksum-database traffic at all: serve what is cached",
        flag=Flag("--offline", sets=True),
    )
    routes: tuple[Route, ...] = setting(
        (),
        "per-pattern routes for private modules: pattern, upstream, optional credentials",
        toml="route",
        env=False,
        parse=parse_routes,
    )
    direct_timeout: float = setting(
        300.0, "how long one `direct` fetch (the go command talking to version control) may take"
    )
    direct_jobs: int = setting(4, "at most this many `direct` fetches run at once")
    client_tokens_file: Path | None = setting(
        None,
        "client access: a file of bearer tokens (one per line); with it (or client_basic_file) the "
        "GOPROXY and sumdb endpoints require credentials",
    )
    client_basic_file: Path | None = setting(
        None, "client access: a file of `user:password` lines (HTTP basic, what .netrc sends)"
    )
    client_rate: float = setting(0.0, "requests per second per client address (0: unlimited)")
    client_burst: int = setting(50, "the burst client_rate allows")
    admin_token_file: Path | None = setting(
        None, "a file holding the admin token; without it admin endpoints answer loopback only"
    )
    tls_cert_file: Path | None = setting(
        None, "serve https with this certificate chain (PEM, with tls_key_file) instead of plain http"
    )
    tls_key_file: Path | None = setting(None, "the private key (PEM) for tls_cert_file")
    log_level: str = setting(
        "info", "log level", flag=Flag("--log-level", choices=("debug", "info", "warning", "error"))
    )
    log_format: str = setting(
        "json", "log line format: json (one object per line) or text", flag="--log-format", choices=("json", "text")
    )
    #: TOML tables that belong to plugins (e.g. [mesh]), passed through unread. Not a setting.
    sections: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


SETTINGS = Settings(Config, env_prefix="MODMESH_", log=log)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen address {value!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Merge defaults, the TOML file, MODMESH_* environment variables and flags
    (flags: {setting name: value}, None meaning not given)."""
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
        if "route" in raw:  # an array of tables: its messages name the file
            values["routes"] = parse_routes(raw.pop("route"), file)
        sections = {key: value for key, value in raw.items() if isinstance(value, dict)}
        scalars = {key: value for key, value in raw.items() if key not in sections}
        values.update(SETTINGS.from_table(scalars, f"config file {file}"))
        values["sections"] = sections
    values.update(SETTINGS.from_env(env))
    values.update(SETTINGS.from_flags(flags or {}))
    cfg = Config(**values)
    parse_listen(cfg.listen)
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        raise ConfigError("tls_cert_file and tls_key_file go together")
    if cfg.write_idle_timeout <= 0:
        raise ConfigError(f"write_idle_timeout must be a positive duration, not {cfg.write_idle_timeout}")
    if cfg.head_timeout <= 0:
        raise ConfigError(f"head_timeout must be a positive duration, not {cfg.head_timeout}")
    if cfg.max_size is not None and cfg.max_size <= 0:
        raise ConfigError(f"max_size must be a positive size, not {cfg.max_size}")
    SETTINGS.check_choices(cfg)
    return cfg
