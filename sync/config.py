"""Mesh configuration: the `[mesh]` TOML table, `MODMESH_MESH_<KEY>` variables and flags.

Declared like the node's settings (node/settings.py), so the same precedence (flags >
environment > file > defaults) and the same duration/size syntax apply, and an operator
learns one set of rules. The mesh is on only
when a secret is configured: peer endpoints must never answer unsigned requests,
and a node that has no secret has nothing to sign with. Asking for peers or mDNS
without a secret is a configuration mistake and refused at start-up, loudly,
instead of silently running a node that will never join.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.settings import ConfigError, Flag, Settings, parse_size, setting

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class MeshConfigError(ConfigError):
    """A mesh setting the node cannot run with (the CLI prints it and exits)."""


@dataclass(frozen=True)
class MeshConfig:
    """Every mesh setting: the `[mesh]` table, `MODMESH_MESH_<KEY>` and the flags that
    the plugin adds to `modmesh serve`, all derived from these declarations."""

    secret_file: Path | None = setting(
        None,
        "file holding the shared secret, one per line: the first signs, any verifies (so secrets can be "
        "rotated); no secret: the mesh is off",
        flag=Flag("--mesh-secret-file", "FILE", help="shared mesh secret; without one the mesh is off"),
    )
    name: str = setting(
        "default",
        "nodes of another mesh name are ignored, even with the same secret",
        flag=Flag("--mesh-name", "NAME", help="mesh name; others are ignored"),
    )
    peers: tuple[str, ...] = setting(
        (),
        "static peers (base URLs), for networks without multicast",
        flag=Flag("--peer", "URL", repeatable=True, help="static peer node, for networks without multicast"),
    )
    mdns: bool = setting(
        True, "discover peers with mDNS", flag=Flag("--no-mdns", sets=False, help="do not discover peers with mDNS")
    )
    mdns_interfaces: tuple[str, ...] = setting(
        (),
        "interfaces mDNS uses; empty: all",
        flag=Flag("--mdns-interface", "IFACE", repeatable=True, help="network interface for mDNS"),
        shown="all",
    )
    advertise: str = setting(
        "",
        "base URL peers should use to reach this node; default: the listen address (a wildcard host is "
        "replaced by the address a peer sees us connect from)",
    )
    gossip_interval: float = setting(2.0, "seconds between gossip rounds; each round talks to `fanout` random peers")
    fanout: int = setting(3, "peers per gossip round")
    request_timeout: float = setting(5.0, "whole-request bound for gossip and inventory requests")
    suspect_after: float = setting(10.0, "silence after which an alive peer is suspect")
    dead_after: float = setting(30.0, "silence after which a peer is dead (longer than suspect_after)")
    dead_failures: int = setting(3, "consecutive failed requests that make a peer dead before its timeout")
    retry_backoff: float = setting(1.0, "dead peers and unanswered static peers are retried with this backoff")
    retry_backoff_max: float = setting(60.0, "the retry backoff doubles up to this")
    forget_after: float = setting(3600.0, "dead peers learnt from gossip or mDNS are forgotten after this long")
    auth_window: float = setting(30.0, "signed requests are accepted this many seconds either side of our clock")
    peer_timeout: float = setting(2.0, "time budget for asking a peer on a client miss before the upstreams")
    quarantine: float = setting(600.0, "how long a peer that served bad bytes is not asked again")
    half_life: float = setting(3600.0, "half-life of the popularity counters")
    popular_top_n: int = setting(128, "most popular module versions gossiped per message")
    presync: bool = setting(True, "pull the mesh's popular module versions in the background")
    presync_interval: float = setting(10.0, "seconds between pre-sync rounds")
    presync_top_k: int = setting(
        200, "pre-sync pulls at most this many of the mesh's most popular module versions (0: no limit)"
    )
    presync_min_score: float = setting(
        2.0, "pre-sync pulls only versions whose decayed mesh-wide score is at least this"
    )
    presync_budget: int = setting(10 << 30, "pre-sync stops while the store holds this many bytes", parse=parse_size)
    presync_concurrency: int = setting(2, "pre-sync transfers at once")
    presync_bandwidth: int = setting(
        0, "bytes per second for all pre-sync transfers together; 0: unlimited", parse=parse_size
    )
    inventory_page: int = setting(1000, "inventory entries per page (at most 1000)")
    max_catalog: int = setting(1_000_000, "distinct files remembered from peers' inventories (about 270 bytes each)")

    @property
    def enabled(self) -> bool:
        return self.secret_file is not None


SETTINGS = Settings(MeshConfig, env_prefix="MODMESH_MESH_", label="mesh config key", error=MeshConfigError, log=log)


def flags_from_args(args: object) -> dict[str, object]:
    """The serve flags the mesh plugin adds, as config keys (None: not given)."""
    return SETTINGS.flags_from_args(args)


def load_mesh_config(
    section: Mapping[str, Any] | None,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, object] | None = None,
) -> MeshConfig:
    """Merge defaults, the `[mesh]` table, MODMESH_MESH_* variables and flags."""
    layers = (
        SETTINGS.from_table(section or {}, "config [mesh]"),
        SETTINGS.from_env(env),
        SETTINGS.from_flags(flags or {}),
    )
    values = {key: value for layer in layers for key, value in layer.items()}
    cfg = MeshConfig(**values)
    _validate(cfg, set(values))
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
