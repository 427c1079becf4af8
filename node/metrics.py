"""Prometheus metrics, one registry per node (no process-global state, so tests
and several in-process nodes never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "modmesh_requests", "GOPROXY requests answered", ["kind", "status", "cache"], registry=r
        )
        self.bytes_served = Counter("modmesh_served_bytes", "Response body bytes sent to clients", ["kind"], registry=r)
        self.upstream_latency = Histogram(
            "modmesh_upstream_latency_seconds",
            "Time from request to response headers, per upstream",
            ["upstream"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.upstream_errors = Counter(
            "modmesh_upstream_errors", "Upstream failures by reason", ["upstream", "reason"], registry=r
        )
        self.upstream_bytes = Counter(
            "modmesh_upstream_bytes", "Bytes received from upstreams", ["upstream"], registry=r
        )
        self.breaker_open = Gauge(
            "modmesh_upstream_breaker_open",
            "1 while an upstream's circuit breaker is open",
            ["upstream"],
            registry=r,
        )
        self.coalesced = Counter(
            "modmesh_coalesced_waits",
            "Requests that waited on another request's upstream fetch",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "modmesh_rejected_blobs", "Upstream answers refused by integrity checks", ["kind"], registry=r
        )
        self.sumdb_requests = Counter(
            "modmesh_sumdb_requests",
            "Checksum database requests answered for clients",
            ["db", "endpoint", "cache"],
            registry=r,
        )
        self.sumdb_tree_size = Gauge("modmesh_sumdb_tree_size", "Size of the newest verified tree", ["db"], registry=r)
        self.sumdb_fork = Gauge(
            "modmesh_sumdb_fork_detected", "1 once a database presented a forked tree", ["db"], registry=r
        )
        self.sumdb_mismatches = Counter(
            "modmesh_sumdb_mismatches",
            "Blobs refused because their h1 differs from the database",
            ["db"],
            registry=r,
        )
        self.sumdb_errors = Counter(
            "modmesh_sumdb_verify_errors",
            "Database answers that failed verification",
            ["db", "reason"],
            registry=r,
        )
        self.passthrough_files = Counter(
            "modmesh_passthrough_files",
            "Files delivered to clients without caching them (the store could not take them)",
            ["cause"],
            registry=r,
        )
        self.passthrough_bytes = Counter(
            "modmesh_passthrough_bytes",
            "Bytes of files delivered to clients without caching them",
            registry=r,
        )
        self.stalled_clients = Counter(
            "modmesh_stalled_clients",
            "Client connections cut because they stopped reading",
            registry=r,
        )
        self.head_timeouts = Counter(
            "modmesh_head_timeouts",
            "Client connections closed (408) because a request head took longer than head_timeout",
            registry=r,
        )
        self.blobs_checked = Counter(
            "modmesh_blobs_checked",
            "Blobs re-hashed against their sha256 (serve: before the first serve of a run; scrub; verify)",
            ["by"],
            registry=r,
        )
        self.blobs_quarantined = Counter(
            "modmesh_blobs_quarantined", "Blobs found damaged and moved to quarantine", ["by"], registry=r
        )
        self.blobs_repaired = Counter(
            "modmesh_blobs_repaired", "Files fetched again after their blob was quarantined", registry=r
        )
        self.scrub_bytes = Counter("modmesh_scrub_bytes", "Bytes the background scrub has read", registry=r)
        self.index_rebuilds = Counter(
            "modmesh_index_rebuilds", "Times the index was rebuilt from the journal and the blobs", registry=r
        )
        self.blobs_unchecked = Gauge(
            "modmesh_blobs_unchecked", "Index rows rebuilt from the journal whose blob is not re-hashed yet", registry=r
        )
        self.memory_cache_bytes = Gauge(
            "modmesh_memory_cache_bytes",
            "Approximate bytes each in-memory cache holds (small, entries, meta, negative), as of the last stats tick",
            ["cache"],
            registry=r,
        )
        self.store_bytes = Gauge("modmesh_store_bytes", "Bytes of blobs in the store", registry=r)
        self.store_blobs = Gauge("modmesh_store_blobs", "Index entries for versioned files", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
