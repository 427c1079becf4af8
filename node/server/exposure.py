"""Who sees what: private module names and upstream addresses are for admins only.

The dashboard's figures, `/metrics` and `/healthz` answer more people than `/_admin/`
does (the dashboard whoever may use GOPROXY, the probes anyone), and error bodies go
to every client. None of them may tell a client where the node's upstreams live
(internal hosts, a private route's proxy), or which private modules a site builds.

A request has admin rights by the rule of `/_admin/` (server/access.py): the admin
token when one is configured, else a loopback client. It sees everything. Anyone
else sees

* upstreams by alias: `upstream-1`, `upstream-2`, ... for the GOPROXY chain in
  order, `route-N` (`route-N.M` for the M-th upstream of a route with several) for
  the N-th `[[route]]`, `sumdb:<name>` for a checksum database's base URL; peers
  (`peer:<node id>`), `direct` and `off` as they are; any other name as
  `upstream-<8 hex digits>` (keyed with a secret of this run: stable until restart);
* no private module (`hooks.PrivateModules`: the node's patterns and the mesh's) in
  the dashboard's top modules, nor its file keys in health texts (`<private module>`);
* no log lines and no mesh details on the dashboard: log lines are free text, and the
  mesh's record is what `/_mesh/status` gives signed peers only (the dashboard shows it
  to admins and signed peers: dashboard.py).

Error bodies are the same for everyone: the addresses of every upstream the node
knows are masked in them (`mask_text`), whoever's text it was.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from node.cache.proxy import ModuleProxy
from node.cache.upstream import mask_address
from node.sumdb.databases import ChecksumDatabases

#: Names that are not addresses: shown to everyone.
PLAIN = frozenset({"direct", "off", "offline", "private"})
PEER = "peer:"
#: A module's file key (`<module>/@v/<file>`, `<module>/@latest`) or `<module>@<version>`.
MODULE_KEY = re.compile(r"([^\s,;:'\"()<>@]+)(?:/@v/|/@latest|@v)[^\s,;'\"()<>]*")


class Exposure:
    """One per node: the admin rule, and how to show its upstreams to everyone else."""

    def __init__(
        self, admin: Callable[[web.Request], bool], proxy: ModuleProxy, sumdbs: ChecksumDatabases | None
    ) -> None:
        self._admin = admin
        self.proxy = proxy
        self.sumdbs = sumdbs
        self.private = proxy.hooks.private
        self._key = secrets.token_bytes(16)

    def admin(self, request: web.Request) -> bool:
        return self._admin(request)

    # ---- upstreams ------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """Upstream name (as in logs and metrics) -> what non-admins see instead."""
        out: dict[str, str] = {}
        for i, up in enumerate(self.proxy.chain.upstreams, 1):
            out.setdefault(up.name, f"upstream-{i}")
        for i, (_, chain) in enumerate(self.proxy.routes, 1):
            ups = chain.upstreams
            for j, up in enumerate(ups, 1):
                out.setdefault(up.name, f"route-{i}" if len(ups) == 1 else f"route-{i}.{j}")
        if self.sumdbs is not None:
            for db in self.sumdbs.health():
                if db.get("base"):
                    out.setdefault(str(db["base"]), f"sumdb:{db['name']}")
        return out

    def alias(self, name: str, aliases: dict[str, str] | None = None) -> str:
        found = (self.aliases() if aliases is None else aliases).get(name)
        if found is not None:
            return found
        if name in PLAIN or name.startswith(PEER):
            return name
        return "upstream-" + hashlib.blake2b(name.encode(), key=self._key, digest_size=4).hexdigest()

    def addresses(self) -> list[str]:
        """Every upstream base URL this node knows (the chain, routes, databases)."""
        ups = [*self.proxy.chain.upstreams, *(u for _, chain in self.proxy.routes for u in chain.upstreams)]
        bases = [u.base for u in ups]
        if self.sumdbs is not None:
            bases += [str(db["base"]) for db in self.sumdbs.health() if db.get("base")]
        return bases

    def mask_text(self, text: str) -> str:
        """`text` with every known upstream's address masked (error bodies)."""
        return mask_address(text, *self.addresses())

    # ---- answers --------------------------------------------------------------------

    def metrics(self, registry: CollectorRegistry, request: web.Request) -> bytes:
        """The Prometheus text, with `upstream` labels as aliases for non-admins."""
        if self.admin(request):
            return generate_latest(registry)
        masked = CollectorRegistry(auto_describe=False)
        masked.register(_Aliased(registry, self.alias, self.aliases()))
        return generate_latest(masked)

    def health(self, health: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return health if self.admin(request) else self.public_health(health)

    def public_health(self, health: dict[str, Any]) -> dict[str, Any]:
        """`Node.health()` as a non-admin may see it: upstreams by alias, and no private
        module in its texts (reasons name damaged files, the first file refused...)."""
        aliases = self.aliases()
        out: dict[str, Any] = self.hide_private(health)
        out["upstreams"] = [{**u, "name": self.alias(u["name"], aliases)} for u in out.get("upstreams", [])]
        out["sumdb"] = [
            {**db, "base": self.alias(str(db["base"]), aliases) if db.get("base") else db.get("base")}
            for db in out.get("sumdb", [])
        ]
        return out

    def public_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """The dashboard's data.json as a non-admin may see it (see the module's doc)."""
        out = self.public_health(data)
        out["top_modules"] = self.public_modules(data["top_modules"])
        out["errors"] = []
        out["errors_hidden"] = len(data["errors"])
        return out

    def public_modules(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if not self.private(str(r["module"]))]

    def hide_private(self, value: Any) -> Any:
        """`value` (JSON-like) with each private module's file key or module@version
        in its strings replaced by `<private module>`."""
        if isinstance(value, str):
            return MODULE_KEY.sub(self._hide_key, value)
        if isinstance(value, dict):
            return {k: self.hide_private(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.hide_private(v) for v in value]
        return value

    def _hide_key(self, m: re.Match[str]) -> str:
        return "<private module>" if self.private(m.group(1)) else m.group(0)


class _Aliased(Collector):
    """A registry's families with every `upstream` label replaced by its alias."""

    def __init__(
        self, registry: CollectorRegistry, alias: Callable[[str, dict[str, str]], str], aliases: dict[str, str]
    ) -> None:
        self.registry = registry
        self.alias = alias
        self.aliases = aliases

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            out = copy.copy(family)
            out.samples = [
                s._replace(
                    labels={k: self.alias(v, self.aliases) if k == "upstream" else v for k, v in s.labels.items()}
                )
                for s in family.samples
            ]
            yield out


EXPOSURE: web.AppKey[Exposure] = web.AppKey("modmesh_exposure", Exposure)
