"""Pure gossip decisions: popularity with exponential decay, and where a peer lives.

Popularity is what makes pre-sync useful: a module version the site used this
morning matters, one used once last quarter does not. Each node counts its own
client hits per (module, version) with a half-life; gossip carries each node's
top-N; a node's mesh-wide view is its own counters plus the latest report of every
peer, each decayed from when it was taken. Only direct reports are summed (a
relayed one would be counted twice). Everything takes `now` and is bounded.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .messages import MAX_POPULAR, Popular

ModVer = tuple[str, str]


def decay(score: float, since: float, now: float, half_life: float) -> float:
    """`score` measured at `since`, as it stands at `now`."""
    if now <= since:
        return score
    return score * math.exp2(-(now - since) / half_life)


@dataclass(slots=True)
class _Counter:
    score: float
    at: float


class Popularity:
    """Local hit counters and peers' reports, bounded in both dimensions."""

    def __init__(self, half_life: float, max_local: int = 50_000, max_peers: int = 4096) -> None:
        self.half_life = half_life
        self.max_local = max_local
        self.max_peers = max_peers
        self._local: dict[ModVer, _Counter] = {}
        self._reports: dict[str, tuple[float, tuple[Popular, ...]]] = {}

    def hit(self, module: str, version: str, now: float, weight: float = 1.0) -> None:
        key = (module, version)
        c = self._local.get(key)
        if c is None:
            if len(self._local) >= self.max_local:
                self._shrink(now)
            self._local[key] = _Counter(weight, now)
        else:
            c.score = decay(c.score, c.at, now, self.half_life) + weight
            c.at = now

    def _shrink(self, now: float) -> None:
        """Forget the weakest half: a bounded table that keeps what matters."""
        ranked = sorted(self._local.items(), key=lambda kv: decay(kv[1].score, kv[1].at, now, self.half_life))
        for key, _ in ranked[: len(ranked) // 2 + 1]:
            del self._local[key]

    def local_score(self, module: str, version: str, now: float) -> float:
        c = self._local.get((module, version))
        return 0.0 if c is None else decay(c.score, c.at, now, self.half_life)

    def top(self, n: int, now: float) -> tuple[Popular, ...]:
        """Our own most popular versions, to gossip."""
        n = min(n, MAX_POPULAR)
        best = heapq.nlargest(n, self._local.items(), key=lambda kv: decay(kv[1].score, kv[1].at, now, self.half_life))
        return tuple(Popular(m, v, decay(c.score, c.at, now, self.half_life)) for (m, v), c in best)

    def report(self, node_id: str, items: Iterable[Popular], now: float) -> None:
        """A peer's latest top-N replaces its previous one."""
        if node_id not in self._reports and len(self._reports) >= self.max_peers:
            oldest = min(self._reports, key=lambda k: self._reports[k][0])
            del self._reports[oldest]
        self._reports[node_id] = (now, tuple(items)[:MAX_POPULAR])

    def forget(self, node_id: str) -> None:
        self._reports.pop(node_id, None)

    def mesh_scores(self, now: float) -> dict[ModVer, float]:
        scores: dict[ModVer, float] = {}
        for key, c in self._local.items():
            scores[key] = decay(c.score, c.at, now, self.half_life)
        for at, items in self._reports.values():
            for p in items:
                key = (p.module, p.version)
                scores[key] = scores.get(key, 0.0) + decay(p.score, at, now, self.half_life)
        return scores

    def mesh_top(self, k: int, min_score: float, now: float) -> list[tuple[ModVer, float]]:
        """The mesh's most popular versions with at least `min_score`, best first (k=0: all)."""
        ranked = [(key, s) for key, s in self.mesh_scores(now).items() if s >= min_score]
        ranked.sort(key=lambda kv: (-kv[1], kv[0]))
        return ranked[:k] if k > 0 else ranked


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def effective_url(advertised: str, remote: str | None) -> str:
    """Where to reach a peer: its advertised URL, with a wildcard host (0.0.0.0, ::)
    replaced by the address its request came from. Empty when there is no way."""
    if not advertised:
        return ""
    parts = urlsplit(advertised)
    host = parts.hostname or ""
    if not _unspecified(host):
        return advertised.rstrip("/")
    if not remote:
        return ""
    netloc = f"[{remote}]" if ":" in remote else remote
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def self_url(listen_url: str, advertise: str) -> str:
    """The URL this node announces: the configured one, else where it listens."""
    return (advertise or listen_url).rstrip("/")
