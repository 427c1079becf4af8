"""Which addresses mDNS runs on, announces, and prefers among a peer's.

IPv4 only: the interfaces are named by the operator and resolved to their IPv4
addresses, which is what zeroconf's `interfaces=` takes; loopback addresses are
never advertised unless given explicitly, because a peer could not reach them.
Of the addresses a peer announces, one on a network we share wins, then any
routable one, loopback last.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ifaddr

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def interface_addresses(names: Iterable[str] | None = None) -> dict[str, list[ipaddress.IPv4Interface]]:
    """IPv4 addresses (with prefix) per interface name; all interfaces when `names` is
    None. Raises ValueError naming an interface that is missing or has no IPv4 address,
    so a typo in `--mdns-interface` stops start-up instead of silently browsing nothing."""
    found: dict[str, list[ipaddress.IPv4Interface]] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):  # IPv4; IPv6 entries are tuples
                found.setdefault(str(adapter.name), []).append(ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}"))
    if names is None:
        return found
    out: dict[str, list[ipaddress.IPv4Interface]] = {}
    for name in names:
        if name not in found:
            raise ValueError(f"mDNS interface {name!r} does not exist or has no IPv4 address")
        out[name] = found[name]
    return out


@dataclass(frozen=True)
class MdnsAddresses:
    """Where mDNS runs: the interfaces used, their networks, the addresses to bind the
    sockets to, and the addresses to announce (empty: browse only)."""

    interfaces: list[str]
    networks: list[Network]
    bind: list[str]
    advertise: list[str]


def mdns_addresses(interfaces: Sequence[str] | None, advertise: Sequence[str] | None) -> MdnsAddresses:
    """The addresses of `interfaces` (default all). `advertise` None announces their
    non-loopback addresses. Raises ValueError for an unknown interface, or when there is
    no IPv4 address at all."""
    ifaces = interface_addresses(interfaces)
    addrs = [i for found in ifaces.values() for i in found]
    bind = sorted({str(i.ip) for i in addrs})
    if not bind:
        raise ValueError("no IPv4 address to run mDNS on")
    if advertise is None:
        advertise = sorted({str(i.ip) for i in addrs if not i.ip.is_loopback}, key=ipaddress.ip_address)
    return MdnsAddresses(list(ifaces), [i.network for i in addrs], bind, list(advertise))


def advertised_for(host: str) -> list[str] | None:
    """What a node listening on `host` announces: every interface's own address (None)
    for a wildcard or a name, nothing for loopback (it can find peers but not be
    found), else the address it listens on."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_unspecified:
        return None
    if ip.is_loopback:
        log.warning("mDNS: this node listens on %s only; it can find peers but not be found", host)
        return []
    return [host]


def rank(address: str, networks: Sequence[Network]) -> int:
    """Lower is better: on one of our own networks (certainly reachable), then any
    routable address, and loopback last (only useful on the same host)."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return 2
    if any(ip in net for net in networks if not net.network_address.is_loopback):
        return 0
    return 1


def best_address(addresses: Sequence[str], networks: Sequence[Network] = ()) -> str | None:
    """The address to reach a peer at, of those it announces (newest first: after a
    peer moves, its new address wins the stable sort); None when none is an IP address."""
    usable = []
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            continue
        usable.append(a)
    return min(usable, key=lambda a: rank(a, networks)) if usable else None


def http_url(address: str, port: int) -> str:
    ip = ipaddress.ip_address(address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{host}:{port}"
