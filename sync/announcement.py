"""What a modmesh node announces over mDNS / DNS-SD (`_modmesh._tcp.local.`), and
how an announcement is read back.

One service instance per node; its TXT record says who it is (node id, mesh name,
protocol version, port). An announcement only tells the mesh that a node *exists*
at a URL; the mesh decides whether to talk to it (the mesh secret, the protocol
version), so nothing here is trusted for anything else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .addresses import Network, best_address, http_url

SERVICE_TYPE = "_modmesh._tcp.local."
TXT_VERSION = "1"
MAX_LABEL = 63


@dataclass(frozen=True)
class Announcement:
    """What a node announces about itself; `url` is where its HTTP API listens."""

    node_id: str
    mesh: str
    protocol: int
    url: str  # "http://<addr>:<port>"


def instance_name(node_id: str) -> str:
    """A DNS-SD instance label for a node: readable, at most 63 bytes, and distinct
    for distinct node ids (a hash replaces the tail of long or rewritten ids), so two
    nodes never end up sharing an instance or host name."""
    clean = re.sub(r"[^A-Za-z0-9-]", "-", node_id)
    label = f"modmesh-{clean}"
    if clean != node_id or len(label) > MAX_LABEL:
        digest = hashlib.sha256(node_id.encode()).hexdigest()[:12]
        label = f"{label[: MAX_LABEL - 13].rstrip('-')}-{digest}"
    return label


def txt_properties(node_id: str, mesh: str, protocol: int, port: int) -> dict[str, str]:
    """The TXT record we publish. Each `key=value` must fit one 255-byte TXT string."""
    props = {"txtvers": TXT_VERSION, "id": node_id, "mesh": mesh, "proto": str(protocol), "port": str(port)}
    for k, v in props.items():
        if len(f"{k}={v}".encode()) > 255:
            raise ValueError(f"mDNS TXT entry {k!r} is too long ({len(v.encode())} bytes)")
    return props


def _text(props: Mapping[bytes, bytes | None], key: bytes) -> str | None:
    raw = props.get(key)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_announcement(
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str],
    srv_port: int | None,
    networks: Sequence[Network] = (),
) -> Announcement | None:
    """An Announcement from a resolved service, or None if it is not a usable modmesh
    announcement (missing or garbled fields, no address, no port).

    `addresses` come newest first (zeroconf's order), so after a peer moves the new
    address wins. The SRV port is authoritative; the TXT `port` is a fallback for
    responders that publish port 0 in SRV.
    """
    node_id = _text(properties, b"id")
    mesh = _text(properties, b"mesh")
    proto_s = _text(properties, b"proto")
    if not node_id or mesh is None or proto_s is None:
        return None
    try:
        protocol = int(proto_s)
    except ValueError:
        return None
    port = srv_port or 0
    if not port:
        try:
            port = int(_text(properties, b"port") or "0")
        except ValueError:
            port = 0
    if not 0 < port < 65536:
        return None
    best = best_address(addresses, networks)
    if best is None:
        return None
    return Announcement(node_id=node_id, mesh=mesh, protocol=protocol, url=http_url(best, port))
