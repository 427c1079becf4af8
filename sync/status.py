"""The mesh's status record: what `/_mesh/status` answers as JSON, `modmesh peers`
shows and the node's dashboard reads (through `node.hooks.Hooks.mesh_status`).

The record's type, `MeshStatus`, lives in node/hooks.py (the seam: `node` may not
import `sync`); this module is the one place that builds it, from the mesh's parts
and plain values, so it needs nothing from sync/mesh.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from node.hooks import MemberStatus, MeshStatus, SeedStatus

from .catalog import Catalog
from .membership import Member, Seed
from .presync import PreSync
from .privacy import MeshPrivacy


def member_status(m: Member, now: float, private: list[str] | None = None) -> MemberStatus:
    return {
        "node_id": m.node_id,
        "url": m.url,
        "state": m.state,
        "source": m.source,
        "last_seen_s": round(max(0.0, now - m.last_seen), 1),
        "inventory": m.count,
        "synced_serial": m.synced,
        "head_serial": m.head,
        "backlog": m.backlog,
        "failures": m.failures,
        "quarantined_s": round(max(0.0, m.quarantined_until - now), 1),
        "quarantine_reason": m.quarantine_reason if m.quarantined(now) else "",
        "private": private or [],
    }


def _by_id(m: Member) -> str:
    return m.node_id


def seed_status(s: Seed) -> SeedStatus:
    return {"url": s.url, "source": s.source, "node_id": s.node_id, "self": s.is_self}


def mesh_status(
    *,
    node_id: str,
    mesh: str,
    url: str,
    epoch: str,
    head_serial: int,
    inventory: int,
    members: Iterable[Member],
    seeds: Iterable[Seed],
    catalog: Catalog,
    presync: PreSync,
    presync_enabled: bool,
    sync_backlog: int,
    now: float,
    private: MeshPrivacy,
) -> MeshStatus:
    """This node in its mesh as of `now` (the mesh's clock): members sorted by node id."""
    return {
        "node_id": node_id,
        "mesh": mesh,
        "url": url,
        "epoch": epoch,
        "head_serial": head_serial,
        "inventory": inventory,
        "members": [member_status(m, now, private.declared(m.node_id)) for m in sorted(members, key=_by_id)],
        "seeds": [seed_status(s) for s in seeds],
        "catalog": {"entries": len(catalog), "skipped": catalog.skipped},
        "presync": {
            "enabled": presync_enabled,
            "active": sorted(presync.active),
            "backlog": presync.backlog,
            "store_bytes": presync.store_bytes,
            "budget_bytes": presync.budget,
        },
        "sync_backlog": sync_backlog,
        "private": list(private.own),
    }
