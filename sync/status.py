"""`/_mesh/status`: what `modmesh peers` shows, as JSON (one place builds it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mesh import Mesh


def mesh_status(mesh: Mesh, now: float) -> dict[str, Any]:
    members = []
    for m in sorted(mesh.membership.members.values(), key=lambda m: m.node_id):
        members.append(
            {
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
            }
        )
    presync = mesh.presync
    return {
        "node_id": mesh.node_id,
        "mesh": mesh.cfg.name,
        "url": mesh.url,
        "epoch": mesh.node.index.epoch,
        "head_serial": mesh.inventory.head,
        "inventory": mesh.inventory.count,
        "members": members,
        "seeds": [
            {"url": s.url, "source": s.source, "node_id": s.node_id, "self": s.is_self} for s in mesh.membership.seeds
        ],
        "catalog": {"entries": len(mesh.catalog), "skipped": mesh.catalog.skipped},
        "presync": {
            "enabled": mesh.cfg.presync,
            "active": sorted(presync.active),
            "backlog": presync.backlog,
            "store_bytes": presync.store_bytes,
            "budget_bytes": presync.budget,
        },
        "sync_backlog": mesh.backlog(),
    }
