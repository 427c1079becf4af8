"""Credentials for private upstreams, read once at start-up, never logged.

A route's token (bearer) or user:password (basic) comes from a file or an
environment variable; the chain's Upstreams add the header to every request.
Credentials are only ever sent over https, or plain http to a loopback host.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from node.cache.upstream import DIRECT, OFF, parse_goproxy
from node.config import ConfigError, Route


def _secret(file: Path | None, env: str | None, what: str) -> str | None:
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {what} file {file}: {e.strerror}") from None
        if not value:
            raise ConfigError(f"{what} file {file} is empty")
        return value
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"environment variable {env} ({what}) is not set")
        return value
    return None


def route_credentials(route: Route) -> Callable[[str], Mapping[str, str]] | None:
    token = _secret(route.token_file, route.token_env, "token")
    basic = _secret(route.basic_auth_file, route.basic_auth_env, "basic auth")
    if token and basic:
        raise ConfigError(f"route {route.pattern!r}: give a token or basic auth, not both")
    if not (token or basic):
        return None
    if basic is not None and ":" not in basic:
        raise ConfigError(f"route {route.pattern!r}: basic auth must be 'user:password'")
    for entry in parse_goproxy(route.upstream):
        if entry.target not in (OFF, DIRECT) and not _safe_for_credentials(entry.target):
            raise ConfigError(f"route {route.pattern!r}: refusing to send credentials to insecure URL {entry.target}")
    value = f"Bearer {token}" if token else "Basic " + base64.b64encode(str(basic).encode()).decode()
    headers = {"Authorization": value}
    return lambda path: headers


def _safe_for_credentials(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
