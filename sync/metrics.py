"""Mesh metrics, registered on the node's own registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MeshMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.gossip_rounds = Counter(
            "modmesh_mesh_gossip_rounds", "Gossip exchanges with a peer, by result", ["result"], registry=r
        )
        self.peer_fetches = Counter(
            "modmesh_mesh_peer_fetches",
            "Files asked of a peer (miss: for a client; presync: in the background)",
            ["peer", "path", "result"],
            registry=r,
        )
        self.synced_bytes = Counter(
            "modmesh_mesh_synced_bytes", "Bytes of verified blobs taken from peers", ["peer"], registry=r
        )
        self.rejected = Counter(
            "modmesh_mesh_rejected_blobs",
            "Blobs from a peer refused by verification (peer quarantined)",
            ["peer"],
            registry=r,
        )
        self.resumed = Counter(
            "modmesh_mesh_resumed_transfers", "Pre-sync transfers resumed with a Range request", registry=r
        )
        self.auth_failures = Counter(
            "modmesh_mesh_auth_failures", "Mesh requests refused (401), by reason", ["reason"], registry=r
        )
        self.members = Gauge("modmesh_mesh_members", "Known mesh members by state", ["state"], registry=r)
        self.quarantined = Gauge("modmesh_mesh_quarantined_peers", "Peers currently quarantined", registry=r)
        self.catalog = Gauge("modmesh_mesh_catalog_entries", "Distinct files known from peers' inventories", registry=r)
        self.backlog = Gauge(
            "modmesh_mesh_sync_backlog",
            "Inventory entries not yet pulled plus files queued for pre-sync",
            registry=r,
        )
