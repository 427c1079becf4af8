"""HMAC request signing between nodes of one mesh.

Every peer request carries who sent it, when, a random nonce and an HMAC-SHA256
over method, path and query, those three and the body's sha256, keyed with the
mesh's shared secret. The receiver refuses anything unsigned, wrongly signed,
outside its clock window, or seen before inside the window (a bounded nonce
cache), so a captured request cannot be replayed and a node with another secret
can neither read nor change anything. The mesh endpoints are never open, unlike
the GOPROXY endpoints next to them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from node.hooks import HOP_HEADER as NODE_HOP_HEADER

log = logging.getLogger(__name__)

PREFIX = "/_mesh/"
NODE_HEADER = "X-Modmesh-Node"
TS_HEADER = "X-Modmesh-Timestamp"
NONCE_HEADER = "X-Modmesh-Nonce"
SIG_HEADER = "X-Modmesh-Signature"
HOP_HEADER = NODE_HOP_HEADER  # a GOPROXY request with it is answered from the cache only

PEER_ID = web.RequestKey("mesh_peer", str)
# What each signed header may hold (ASCII only, so every comparison is of bytes): a
# node id of printable ASCII, the nonce a token, the time in decimal seconds, the
# signature lower-case hex (hexdigest). Anything else is "malformed", never a 500.
_NODE = re.compile(r"[\x20-\x7e]{1,64}")
_NONCE = re.compile(r"[\x21-\x7e]{8,64}")
_STAMP = re.compile(r"[0-9]{1,16}")
_SIG = re.compile(r"[0-9a-f]{64}")
_EMPTY_SHA = hashlib.sha256(b"").hexdigest()


class AuthError(Exception):
    """Why a request was refused: a short reason used in logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical(method: str, path_qs: str, ts: str, nonce: str, node: str, body_sha: str) -> bytes:
    """What is signed: one field per line, so no field can bleed into the next. The
    bytes as they were on the wire (aiohttp decodes them with surrogateescape)."""
    return "\n".join((method.upper(), path_qs, ts, nonce, node, body_sha)).encode("utf-8", "surrogateescape")


def _mac(secret: bytes, msg: bytes) -> str:
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


class Signer:
    """Adds the signature headers to an outgoing request."""

    def __init__(self, secret: bytes, node_id: str, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.node_id = node_id
        self.clock = clock

    def headers(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        ts = str(int(self.clock()))
        nonce = secrets.token_hex(12)
        body_sha = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA
        sig = _mac(self.secret, canonical(method, path_qs, ts, nonce, self.node_id, body_sha))
        return {NODE_HEADER: self.node_id, TS_HEADER: ts, NONCE_HEADER: nonce, SIG_HEADER: sig}


class NonceCache:
    """Nonces seen recently. Entries live 2x the window from arrival (a request
    stamped at the far edge of the window stays replayable no longer than that), so
    arrival order is expiry order and expiring is a pop from the front. Bounded:
    when full of live nonces, new requests are refused rather than memory grown."""

    def __init__(self, ttl: float, max_entries: int = 65536) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str, now: float) -> None:
        """Record `key`; AuthError if it was seen (replay) or the cache is full."""
        seen = self._seen
        while seen:
            first = next(iter(seen.values()))
            if first > now:
                break
            seen.popitem(last=False)
        if key in seen:
            raise AuthError("replayed")
        if len(seen) >= self.max_entries:
            raise AuthError("replay-cache-full")
        seen[key] = now + self.ttl

    def __len__(self) -> int:
        return len(self._seen)


class Verifier:
    """Checks incoming signatures against every configured secret (rotation)."""

    def __init__(
        self,
        secrets_: Sequence[bytes],
        window: float,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 65536,
    ) -> None:
        self.secrets = tuple(secrets_)
        self.window = window
        self.clock = clock
        self.nonces = NonceCache(2 * window, max_nonces)

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes) -> str:
        """The sender's node id, or AuthError."""
        node, ts, nonce, sig = (headers.get(h) for h in (NODE_HEADER, TS_HEADER, NONCE_HEADER, SIG_HEADER))
        if not (node or ts or nonce or sig):
            raise AuthError("unsigned")
        if not (
            node
            and ts
            and nonce
            and sig
            and _NODE.fullmatch(node)
            and _NONCE.fullmatch(nonce)
            and _STAMP.fullmatch(ts)
            and _SIG.fullmatch(sig)
        ):
            raise AuthError("malformed")
        stamp = int(ts)
        now = self.clock()
        if abs(now - stamp) > self.window:
            raise AuthError("expired")
        body_sha = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA
        try:
            msg = canonical(method, path_qs, ts, nonce, node, body_sha)
        except UnicodeEncodeError:  # not from the wire: no client could have sent it
            raise AuthError("malformed") from None
        given = sig.encode()
        ok = False
        for secret in self.secrets:  # every one, bytes against bytes, constant time
            ok |= hmac.compare_digest(_mac(secret, msg).encode(), given)
        if not ok:
            raise AuthError("bad-signature")
        # Only a correctly signed nonce enters the cache: strangers cannot fill it.
        self.nonces.add(f"{node}\n{nonce}", now)
        return node


class RateLimitedLog:
    """One log line per key per interval, with a count of what was suppressed:
    a misconfigured node retrying every second must not flood the log."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def should_log(self, key: str) -> tuple[bool, int]:
        """(log now?, how many were suppressed since the last line)."""
        now = self.clock()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last >= self.interval:
            if len(self._last) > 1024:
                self._last.clear()
            self._last[key] = (now, 0)
            return True, suppressed
        self._last[key] = (last, suppressed + 1)
        return False, 0


def is_mesh_path(path: str) -> bool:
    return path == PREFIX.rstrip("/") or path.startswith(PREFIX)


def auth_middleware(verifier: Verifier, on_refused: Callable[[str], None] | None = None) -> Middleware:
    """Refuse every request under /_mesh/ that is not correctly signed (401)."""
    limiter = RateLimitedLog()

    @web.middleware
    async def mesh_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_mesh_path(request.path):
            return await handler(request)
        body = await request.read()
        try:
            request[PEER_ID] = verifier.verify(request.method, request.raw_path, request.headers, body)
        except AuthError as e:
            if on_refused is not None:
                on_refused(e.reason)
            claimed = request.headers.get(NODE_HEADER, "-")[:64]
            ok, suppressed = limiter.should_log(f"{request.remote}\n{e.reason}")
            if ok:
                log.warning(
                    "refused mesh request %s %s from %s (node %s): %s%s",
                    request.method,
                    request.path[:100],
                    request.remote,
                    claimed,
                    e.reason,
                    f" ({suppressed} similar suppressed)" if suppressed else "",
                )
            return web.Response(
                status=401,
                text=f"mesh authentication failed: {e.reason}\n\n",
                headers={"Cache-Control": "no-store", "WWW-Authenticate": "Modmesh-HMAC"},
            )
        return await handler(request)

    return mesh_auth
