"""The dashboard's figures as pure functions of what the node keeps (node/server/dashboard.py
serves them): request counts by cache result, hit ratios, the "over time" series from
cumulative samples, and the mesh panel from the mesh's typed status record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from prometheus_client.metrics import MetricWrapperBase

from node.hooks import MemberStatus, MeshStatus

#: Request kinds that are not module or checksum database traffic (the page's own polls).
NOT_TRAFFIC = frozenset({"healthz", "readyz", "metrics", "other"})
CACHE_RESULTS = ("hit", "stale", "miss", "revalidated", "error")
FROM_CACHE = ("hit", "stale")
FETCHED = ("miss", "revalidated")
#: The panel lists at most this many peers.
MAX_PEERS = 50


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    by_cache: Mapping[str, int]  # cumulative requests per cache result
    store_bytes: int
    blobs: int


def collected(metric: MetricWrapperBase, suffix: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of a labelled metric's samples named `<name><suffix>`."""
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix):
                yield s.labels, s.value


def requests_by_cache(samples: Iterable[tuple[dict[str, str], float]]) -> dict[str, int]:
    """Module and checksum database requests by cache result (the page's own polls left out)."""
    out = dict.fromkeys(CACHE_RESULTS, 0)
    for labels, value in samples:
        if labels.get("kind") in NOT_TRAFFIC:
            continue
        cache = labels.get("cache", "none")
        if cache in out:
            out[cache] += int(value)
    return out


def hit_ratio(by_cache: Mapping[str, int]) -> float | None:
    """Answers from the cache over answers that needed a cache decision (errors left out)."""
    hits = sum(by_cache.get(k, 0) for k in FROM_CACHE)
    total = hits + sum(by_cache.get(k, 0) for k in FETCHED)
    return hits / total if total else None


def series(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Per-interval figures from cumulative samples: requests, hit ratio, store bytes."""
    out: list[dict[str, Any]] = []
    prev: Mapping[str, int] = {}
    for s in samples:
        delta = {k: max(0, v - prev.get(k, 0)) for k, v in s.by_cache.items()}
        ratio = hit_ratio(delta)
        out.append(
            {
                "t": s.t,
                "requests": sum(delta.values()),
                "hit_ratio": None if ratio is None else round(ratio, 4),
                "store_bytes": s.store_bytes,
            }
        )
        prev = s.by_cache
    return out


# ---- the mesh panel ----------------------------------------------------------------


class PeerRow(TypedDict):
    """One member of the mesh, as the panel lists it."""

    id: str
    url: str
    state: str
    source: str
    last_seen_s: float
    inventory: int
    backlog: int
    quarantined_s: float


class MeshView(TypedDict):
    """The `mesh` section of data.json: off, unavailable (`error`), withheld from a
    client without admin rights (`restricted`), or peers and figures."""

    enabled: bool
    restricted: NotRequired[bool]
    error: NotRequired[str]
    peers: NotRequired[list[PeerRow]]
    backlog: NotRequired[int]
    summary: NotRequired[dict[str, str | int]]


def peer_row(m: MemberStatus) -> PeerRow:
    return {
        "id": m["node_id"],
        "url": m["url"],
        "state": m["state"],
        "source": m["source"],
        "last_seen_s": m["last_seen_s"],
        "inventory": m["inventory"],
        "backlog": m["backlog"],
        "quarantined_s": m["quarantined_s"],
    }


def mesh_view(status: MeshStatus) -> MeshView:
    """The mesh's members (its peers), its sync backlog and who this node is in it."""
    return {
        "enabled": True,
        "peers": [peer_row(m) for m in status["members"][:MAX_PEERS]],
        "backlog": status["sync_backlog"],
        "summary": {
            "node_id": status["node_id"],
            "mesh": status["mesh"],
            "url": status["url"],
            "epoch": status["epoch"],
            "head_serial": status["head_serial"],
            "inventory": status["inventory"],
        },
    }


def mesh_unavailable(error: str) -> MeshView:
    return {"enabled": True, "error": error[:300]}
