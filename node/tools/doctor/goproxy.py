"""GOPROXY as the go command reads it, and what it does to a client of the node.

`parse_client_goproxy` follows modfetch/proxy.go: entries, `,` (fall back on
404/410 only) and `|` (fall back on any error), a bare host gets https://,
`off` and `direct` end the list. `goproxy_checks` names the classic pitfalls:
no scheme, `off`, missing the node, the node not first, `|` fallback hiding
failures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from node.cache.upstream import redact
from node.tools.doctor.check import Check, Status
from node.tools.doctor.goenv import GO_DEFAULT_PROXY


@dataclass(frozen=True)
class ProxyEntry:
    raw: str
    url: str  # as go uses it: https:// added to a bare host; "off" and "direct" as is
    sep: str  # the separator after it: "," (404/410 only), "|" (any error), "" (last)
    problem: str | None = None  # why go refuses it (and with it every lookup)
    prefixed: bool = False  # go added "https://"


def parse_client_goproxy(value: str) -> tuple[list[ProxyEntry], list[str]]:
    """GOPROXY as modfetch/proxy.go reads it; returns (entries, ignored entries)."""
    entries: list[ProxyEntry] = []
    rest = value
    while rest:
        cut = min((i for i in (rest.find(","), rest.find("|")) if i >= 0), default=-1)
        item, sep, rest = (rest, "", "") if cut < 0 else (rest[:cut], rest[cut], rest[cut + 1 :])
        item = item.strip()
        if not item:
            continue
        if item in ("off", "direct"):
            entries.append(ProxyEntry(item, item, sep))
            ignored = [i.strip() for i in rest.replace("|", ",").split(",") if i.strip()]
            return entries, ignored
        url, prefixed = item, False
        if any(c in item for c in ".:") and ":/" not in item and not item.startswith("/"):
            url, prefixed = "https://" + item, True
        entries.append(ProxyEntry(item, url, sep, _url_problem(url), prefixed))
    return entries, []


def redact_list(value: str) -> str:
    """A GOPROXY-style list with credentials masked in every entry, for reports."""
    return "".join(p if p in ",|" else redact(p) for p in re.split(r"([,|])", value))


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme:
        return "invalid proxy URL missing scheme (write http:// or https://)"
    if parts.scheme not in ("http", "https", "file"):
        return "invalid proxy URL scheme (must be https, http, file)"
    if parts.scheme == "http" and (parts.username or parts.password):
        return "refusing to pass credentials to insecure URL"
    return None


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _address(url: str) -> tuple[str, str, int, str]:
    p = urlsplit(url)
    host = (p.hostname or "").lower()
    host = "127.0.0.1" if host in _LOOPBACK or host.startswith("127.") else host
    try:
        port = p.port or (443 if p.scheme == "https" else 80)
    except ValueError:
        port = -1
    return p.scheme, host, port, p.path.rstrip("/")


def match_node(entries: Sequence[ProxyEntry], node: str) -> tuple[int, bool] | None:
    """(index, same scheme) of the entry that names the node's address, if any."""
    scheme, host, port, path = _address(node)
    for i, e in enumerate(entries):
        if e.url in ("off", "direct") or e.problem:
            continue
        s, h, p, pa = _address(e.url)
        if (h, p, pa) == (host, port, path) or (host == "0.0.0.0" and (p, pa) == (port, path)):
            return i, s == scheme
    return None


def goproxy_checks(value: str, node: str | None, found: tuple[int, bool] | None) -> list[Check]:
    """What GOPROXY does to a client that should go through the node."""

    def chk(status: Status, detail: str, code: str = "") -> Check:
        return Check("client", "GOPROXY", status, detail, code)

    entries, ignored = parse_client_goproxy(value)
    out: list[Check] = []
    if not entries:
        return [chk("fail", f"GOPROXY={value!r} contains no entries: every module lookup fails", "goproxy-no-entries")]
    bad = next((e for e in entries if e.problem), None)
    if bad is not None:
        return [chk("fail", f"entry {bad.raw!r}: {bad.problem}; go refuses the whole list", "goproxy-invalid")]
    if entries[0].url == "off":
        return [chk("fail", "GOPROXY=off: module lookup disabled, every download fails", "goproxy-off")]
    if ignored:
        out.append(
            chk(
                "warn",
                f"entries after {entries[-1].url!r} are never used: {', '.join(ignored)}",
                "goproxy-ignored-entries",
            )
        )
    if node is None:
        return out
    if found is not None and not found[1]:
        e = entries[found[0]]
        scheme = urlsplit(node).scheme
        how = (
            f"entry {e.raw!r} has no scheme, so go uses {e.url}"
            if e.prefixed
            else f"entry {e.raw!r} uses {urlsplit(e.url).scheme}"
        )
        fails = "fails the TLS handshake" if scheme == "http" else "fails"
        return [
            *out,
            chk(
                "fail",
                f"{how}, but the node speaks {scheme}: every request {fails}; write {node}",
                "goproxy-no-scheme" if e.prefixed else "goproxy-scheme",
            ),
        ]
    if found is None:
        default = " (go's default: GOPROXY is unset)" if value == GO_DEFAULT_PROXY else ""
        return [
            *out,
            chk(
                "fail",
                f"GOPROXY={value}{default} never reaches the node {node}: export GOPROXY={node}",
                "goproxy-misses-node",
            ),
        ]
    i = found[0]
    if i > 0:
        first = ", ".join(e.url for e in entries[:i])
        out.append(
            chk(
                "warn",
                f"{first} answers before the node; the node is asked only when "
                f"{'it fails' if entries[i - 1].sep == '|' else 'it answers 404/410'}",
                "goproxy-node-not-first",
            )
        )
    after, sep = entries[i + 1 :], entries[i].sep
    if not after:
        out.append(chk("ok", "reaches the node; no fallback: what the node cannot serve fails the build"))
    elif sep == ",":
        out.append(
            chk(
                "ok",
                f"reaches the node; ',{after[0].url}': go falls back only when the node answers "
                "404/410, never on a node failure (502/504)",
            )
        )
    else:
        out.append(
            chk(
                "warn",
                f"'|{after[0].url}' after the node: any node error (an outage, a checksum mismatch) "
                f"silently falls through to {after[0].url}; use ',' to see failures",
                "goproxy-pipe-fallback",
            )
        )
    return out
