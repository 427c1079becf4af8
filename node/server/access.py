"""Who may use the node: client credentials, per-client rate limits, the admin token.

- GOPROXY and checksum-database endpoints (and the dashboard) are open unless
  client credentials are configured; then a request needs a bearer token, or
  HTTP basic with a configured user:password or with a token as the password —
  which is what the go command sends from `.netrc` (over https only: Go never
  sends credentials over plain http, so put the node behind TLS: `tls_cert_file`).
- `/_admin/` needs the admin token when one is configured, else a loopback client.
- `/healthz`, `/readyz`, `/metrics` stay open (probes and scrapers); `/_mesh/`
  authenticates peers itself (HMAC), and a request a peer authenticator accepts
  counts as authorized.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from node.config import Config, ConfigError
from node.errors import ModmeshError
from node.server.app import Handler

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ADMIN_PREFIX = "/_admin/"
MESH_PREFIX = "/_mesh/"


class Unauthorized(ModmeshError):
    status = 401


class Forbidden(ModmeshError):
    status = 403


class TooManyRequests(ModmeshError):
    status = 429


@dataclass
class TokenBucket:
    """Per-client token buckets, bounded in number (least recently seen forgotten)."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 65536
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def take(self, client: str) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        now = self.clock()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


@dataclass
class AccessPolicy:
    tokens: frozenset[str] = frozenset()
    users: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    limiter: TokenBucket | None = None
    #: Extra ways to accept a request (the mesh's signed peer requests).
    authenticators: list[Callable[[web.Request], bool]] = field(default_factory=list)

    @property
    def clients_need_auth(self) -> bool:
        return bool(self.tokens or self.users)

    @property
    def open_to_clients(self) -> bool:
        """No credentials and no rate limit: GOPROXY hits need no checks at all."""
        return not self.clients_need_auth and self.limiter is None

    def client_ok(self, request: web.Request) -> bool:
        kind, _, cred = request.headers.get("Authorization", "").partition(" ")
        if kind.lower() == "bearer" and _any_equal(cred.strip(), self.tokens):
            return True
        if kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            want = self.users.get(user)
            if want is not None and hmac.compare_digest(want, password):
                return True
            if _any_equal(password, self.tokens):
                return True
        return False

    def admin_ok(self, request: web.Request) -> bool:
        if self.admin_token is None:
            return _is_loopback(request.remote)
        kind, _, cred = request.headers.get("Authorization", "").partition(" ")
        return kind.lower() == "bearer" and hmac.compare_digest(cred.strip(), self.admin_token)

    def middleware(self) -> Middleware:
        @web.middleware
        async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
            path = request.path
            if path in OPEN_PATHS or path.startswith(MESH_PREFIX):
                return await handler(request)
            if path.startswith(ADMIN_PREFIX):
                if not self.admin_ok(request):
                    if self.admin_token is None:
                        raise Forbidden("admin endpoints answer loopback clients only (or set admin_token_file)")
                    raise Unauthorized("admin endpoints need the admin token")
                return await handler(request)
            if any(auth(request) for auth in self.authenticators):
                return await handler(request)  # a signed peer: neither rate-limited nor asked for tokens
            if self.admin_token is not None and self.admin_ok(request):
                return await handler(request)  # the admin token: the dashboard's admin view
            if self.limiter is not None and request.remote:
                wait = self.limiter.take(request.remote)
                if wait > 0:
                    return web.Response(
                        status=429,
                        text="too many requests from this client; slow down\n\n",
                        headers={"Retry-After": str(max(1, round(wait))), "Cache-Control": "no-store"},
                    )
            if self.clients_need_auth and not self.client_ok(request):
                return web.Response(
                    status=401,
                    text="this module proxy needs credentials (token or .netrc)\n\n",
                    headers={"WWW-Authenticate": 'Basic realm="modmesh"', "Cache-Control": "no-store"},
                )
            return await handler(request)

        return access


def _any_equal(value: str, candidates: Iterable[str]) -> bool:
    # Compare against every candidate (constant time per candidate, no early exit).
    ok = False
    for c in candidates:
        ok |= hmac.compare_digest(value, c)
    return ok


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_policy(cfg: Config) -> AccessPolicy:
    tokens = frozenset(_lines(cfg.client_tokens_file, "client tokens file")) if cfg.client_tokens_file else frozenset()
    users: dict[str, str] = {}
    if cfg.client_basic_file:
        for line in _lines(cfg.client_basic_file, "client basic-auth file"):
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                raise ConfigError(f"{cfg.client_basic_file}: lines must be user:password")
            users[user] = password
    admin = None
    if cfg.admin_token_file:
        found = _lines(cfg.admin_token_file, "admin token file")
        if not found:
            raise ConfigError(f"admin token file {cfg.admin_token_file} is empty")
        admin = found[0]
    limiter = TokenBucket(cfg.client_rate, max(1, cfg.client_burst)) if cfg.client_rate > 0 else None
    return AccessPolicy(tokens, users, admin, limiter)
