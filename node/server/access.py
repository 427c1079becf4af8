"""Who may use the node: client credentials, per-client rate limits, the admin token.

- GOPROXY and checksum-database endpoints (and the dashboard) are open unless
  client credentials are configured; then a request needs a bearer token, or
  HTTP basic with a configured user:password or with a token as the password —
  which is what the go command sends from `.netrc` (over https only: Go never
  sends credentials over plain http, so put the node behind TLS: `tls_cert_file`).
  Credentials are compared as the bytes the client sent, in constant time against
  every candidate; a malformed one (not UTF-8, bad base64, no colon, oversized) is
  refused like a wrong one: 401, nothing logged.
- `/_admin/` needs the admin token when one is configured, else a loopback client.
- `/healthz`, `/readyz`, `/metrics` stay open (probes and scrapers); `/_mesh/`
  authenticates peers itself (HMAC), and a request a peer authenticator accepts
  counts as authorized.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable
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
#: Longest credential (bytes after the scheme) looked at; longer ones are refused unread.
MAX_CREDENTIAL = 4096
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*")


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

    @functools.cached_property
    def _token_bytes(self) -> tuple[bytes, ...]:
        return tuple(t.encode() for t in self.tokens)

    @functools.cached_property
    def _user_bytes(self) -> dict[bytes, bytes]:
        return {u.encode(): p.encode() for u, p in self.users.items()}

    def token_ok(self, token: bytes | str) -> bool:
        """Whether `token` is one of the client tokens, compared as bytes in constant
        time against every one (a str is taken as the UTF-8 a client sent)."""
        if isinstance(token, str):
            found = wire_bytes(token)
            if found is None:
                return False
            token = found
        ok = False
        for want in self._token_bytes:
            ok |= hmac.compare_digest(token, want)
        return ok

    def client_ok(self, request: web.Request) -> bool:
        found = credential(request)
        if found is None:
            return False
        scheme, cred = found
        if scheme == "bearer":
            return self.token_ok(cred)
        if scheme != "basic":
            return False
        try:
            pair = base64.b64decode(cred, validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = pair.partition(b":")
        if not sep:
            return False
        want = self._user_bytes.get(user)
        ok = want is not None and hmac.compare_digest(password, want)
        return self.token_ok(password) or ok  # a token also works as the password

    def admin_ok(self, request: web.Request) -> bool:
        if self.admin_token is None:
            return _is_loopback(request.remote)
        found = credential(request)
        return found is not None and found[0] == "bearer" and hmac.compare_digest(found[1], self.admin_token.encode())

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


def wire_bytes(value: str) -> bytes | None:
    """A header value as the client sent it: aiohttp decodes header bytes as UTF-8 with
    surrogateescape, which this undoes. None for what no client could have sent."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def credential(request: web.Request) -> tuple[str, bytes] | None:
    """(lower-case scheme, credential bytes) of the Authorization header; None when there
    is none or it is malformed (a scheme that is not a token, an oversized credential)."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, cred = value.strip(" \t").partition(" ")
    raw = wire_bytes(cred.strip(" \t"))
    if raw is None or len(raw) > MAX_CREDENTIAL or not _SCHEME.fullmatch(scheme):
        return None
    return scheme.lower(), raw


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
