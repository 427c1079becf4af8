"""Mesh configuration: the `[mesh]` TOML table, `MODMESH_MESH_<KEY>` variables and flags.

Same precedence as the node (flags > environment > file > defaults) and the same
duration/size syntax, so an operator learns one set of rules. The mesh is on only
when a secret is configured: peer endpoints must never answer unsigned requests,
and a node that has no secret has nothing to sign with. Asking for peers or mDNS
without a secret is a configuration mistake and refused at start-up, loudly,
instead of silently running a node that will never join.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.config import ConfigError, coerce

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class MeshConfigError(ConfigError):
    """A mesh setting the node cannot run with (the CLI prints it and exits)."""


@dataclass(frozen=True)
class MeshConfig:
    #: File holding the shared secret (one per line: the first signs, any verifies,
    #: so secrets can be rotated). No secret: the mesh is off.
    secret_file: Path | None = None
    #: Nodes of another mesh name are ignored, even with the same secret.
    name: str = "default"
    #: Static peers (base URLs) for networks without multicast.
    peers: tuple[str, ...] = ()
    mdns: bool = True
    #: Interfaces mDNS uses; empty: all.
    mdns_interfaces: tuple[str, ...] = ()
    #: Base URL peers should use to reach this node; default: the listen address
    #: (a wildcard host is replaced by the address a peer sees us connect from).
    advertise: str = ""
    #: Seconds between gossip rounds; each round talks to `fanout` random peers.
    gossip_interval: float = 2.0
    fanout: int = 3
    #: Whole-request bound for gossip and inventory requests.
    request_timeout: float = 5.0
    #: Silence after which an alive peer is suspect, then dead.
    suspect_after: float = 10.0
    dead_after: float = 30.0
    #: Consecutive failed requests that make a peer dead before its timeout.
    dead_failures: int = 3
    #: Dead peers and unanswered static peers are retried with this backoff (doubling).
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    #: Dead peers learnt from gossip or mDNS are forgotten after this long.
    forget_after: float = 3600.0
    #: Signed requests are accepted this many seconds either side of our clock.
    auth_window: float = 30.0
    #: Time budget for asking a peer on a client miss before the upstreams.
    peer_timeout: float = 2.0
    #: How long a peer that served bad bytes is not asked again.
    quarantine: float = 600.0
    #: Half-life of the popularity counters.
    half_life: float = 3600.0
    #: Most popular module versions gossiped per message.
    popular_top_n: int = 128
    presync: bool = True
    presync_interval: float = 10.0
    #: Pull at most this many of the mesh's most popular module versions (0: no limit) ...
    presync_top_k: int = 200
    #: ... whose decayed mesh-wide score is at least this.
    presync_min_score: float = 2.0
    #: Pre-sync stops while the store holds this many bytes.
    presync_budget: int = 10 << 30
    presync_concurrency: int = 2
    #: Bytes per second for all pre-sync transfers together; 0: unlimited.
    presync_bandwidth: int = 0
    #: Inventory entries per page (at most 1000).
    inventory_page: int = 1000
    #: Distinct files remembered from peers' inventories (about 270 bytes each).
    max_catalog: int = 1_000_000

    @property
    def enabled(self) -> bool:
        return self.secret_file is not None


_FIELDS = {f.name: f for f in dataclasses.fields(MeshConfig)}
_SIZES = {"presync_budget", "presync_bandwidth"}


def _coerce(key: str, value: object) -> Any:
    try:
        return coerce(str(_FIELDS[key].type), value, key in _SIZES)
    except (TypeError, ValueError) as e:
        raise MeshConfigError(f"mesh config key {key!r}: {e}") from None


def flags_from_args(args: object) -> dict[str, object]:
    """The serve flags the mesh plugin adds, as config keys (None: not given)."""
    no_mdns = getattr(args, "no_mdns", None)
    return {
        "peers": getattr(args, "peer", None) or None,
        "mdns": False if no_mdns else None,
        "secret_file": getattr(args, "mesh_secret_file", None),
        "name": getattr(args, "mesh_name", None),
        "mdns_interfaces": getattr(args, "mdns_interface", None) or None,
    }


def load_mesh_config(
    section: Mapping[str, Any] | None,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, object] | None = None,
) -> MeshConfig:
    """Merge defaults, the `[mesh]` table, MODMESH_MESH_* variables and flags."""
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for key, value in (section or {}).items():
        if key in _FIELDS:
            values[key] = _coerce(key, value)
            explicit.add(key)
        else:
            log.warning("config [mesh]: unknown key %r ignored", key)
    for key in _FIELDS:
        ev = env.get(f"MODMESH_MESH_{key.upper()}")
        if ev:
            values[key] = _coerce(key, ev)
            explicit.add(key)
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
            explicit.add(key)
    cfg = MeshConfig(**values)
    _validate(cfg, explicit)
    return cfg


def _validate(cfg: MeshConfig, explicit: set[str]) -> None:
    if not cfg.enabled:
        asked = [
            what
            for what, on in (
                ("static peers", bool(cfg.peers)),
                ("mDNS discovery", "mdns" in explicit and cfg.mdns),
                ("mDNS interfaces", bool(cfg.mdns_interfaces)),
            )
            if on
        ]
        if asked:
            raise MeshConfigError(
                f"mesh: {' and '.join(asked)} configured but no shared secret: "
                "pass --mesh-secret-file FILE (or [mesh] secret_file), or drop the mesh settings"
            )
        return
    if not _NAME.match(cfg.name):
        raise MeshConfigError(f"mesh name {cfg.name!r}: use 1-63 letters, digits, '.', '_' or '-'")
    for url in (*cfg.peers, *((cfg.advertise,) if cfg.advertise else ())):
        check_url(url)
    positive = (
        "gossip_interval",
        "request_timeout",
        "suspect_after",
        "dead_after",
        "retry_backoff",
        "retry_backoff_max",
        "auth_window",
        "peer_timeout",
        "half_life",
        "presync_interval",
    )
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise MeshConfigError(f"mesh config key {key!r} must be positive")
    if cfg.dead_after <= cfg.suspect_after:
        raise MeshConfigError("mesh: dead_after must be longer than suspect_after")
    for key in ("fanout", "dead_failures", "presync_concurrency", "popular_top_n", "max_catalog"):
        if getattr(cfg, key) < 1:
            raise MeshConfigError(f"mesh config key {key!r} must be at least 1")
    if not 1 <= cfg.inventory_page <= 1000:
        raise MeshConfigError("mesh config key 'inventory_page' must be between 1 and 1000")


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeshConfigError(f"mesh peer {url!r} must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise MeshConfigError(f"mesh peer {url!r} must not carry credentials, a query or a fragment")
    return url.rstrip("/")


def load_secrets(path: Path) -> tuple[bytes, ...]:
    """Every non-empty line is a secret; the first one signs (rotation: prepend the new one)."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as e:
        raise MeshConfigError(f"cannot read mesh secret file {path}: {e.strerror}") from None
    secrets = tuple(line.strip() for line in data.splitlines() if line.strip())
    if not secrets:
        raise MeshConfigError(f"mesh secret file {path} is empty")
    if any(len(s) < 16 for s in secrets):
        log.warning("mesh secret in %s is shorter than 16 bytes; use a long random secret", path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("mesh secret file %s is readable by other users (chmod 600 it)", path)
    return secrets
