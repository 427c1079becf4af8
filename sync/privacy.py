"""Private modules stay private across the mesh: patterns travel, names never do.

A node's private modules are those its own patterns name (`private`, `nosumdb` and
every `[[route]]` pattern). Two rules keep them private on every node of a mesh,
including nodes that lack the route:

* **Never offered to peers.** A module private by any pattern this node honours
  (its own, or any member's) is left out of its inventory pages and popularity
  gossip, is not taken into its catalog or pre-synced, and no peer is asked for it.
  So a private module's name never travels between nodes.
* **Every member's patterns are honoured.** Each gossip message carries the sender's
  own patterns (never relayed ones: a pattern lives exactly as long as the member
  that declares it), and the receiver adds them to the node's
  `hooks.PrivateModules`. The node then sends no matching module to a checksum
  database and, unless it has a route or pattern of its own for it, fetches it from
  no upstream either (`ModuleProxy.chain_for`): a client asking it for another
  node's private module gets a 404 that says why, and its name reaches nobody.

A node honours a member's patterns from its first direct gossip exchange with that
member on; they are kept while the member is remembered (`forget_after` after it
died) and in `<data>/mesh/private.json`, so a restarted node honours them before it
has heard from anyone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from node.hooks import PrivateModules

from .config import MeshConfigError
from .messages import MAX_PATTERN, MAX_PRIVATE, patterns_fit

log = logging.getLogger(__name__)

#: Sources in `hooks.PrivateModules` are "mesh:<node id>".
SOURCE = "mesh:"
#: Modules of every kind of site: a pattern matching one of them makes most of the
#: public world private on every node (fail-closed, but worth a warning).
PUBLIC_SAMPLES = ("github.com/a/b", "golang.org/x/text", "gopkg.in/yaml.v3", "rsc.io/quote", "k8s.io/api")


class MeshPrivacy:
    """The mesh's side of `hooks.PrivateModules`: declares ours, honours members'."""

    def __init__(self, modules: PrivateModules, data: Path) -> None:
        self.modules = modules
        self.own = modules.own_patterns()
        if not patterns_fit(self.own):
            raise MeshConfigError(
                f"the mesh carries at most {MAX_PRIVATE} private patterns of at most {MAX_PATTERN} "
                f"characters each (private, nosumdb and [[route]] patterns); this node has {len(self.own)}"
            )
        self.path = data / "mesh" / "private.json"
        self._warned: set[tuple[str, str]] = set()
        #: Members whose patterns were loaded from disk and not heard since: until when.
        self._saved: dict[str, float] = {}

    def __call__(self, module: str) -> bool:
        """Private by any pattern this node honours: never offered, never asked for."""
        return self.modules(module)

    def load(self, until: float) -> None:
        """Honour what members declared before this node restarted, until they gossip
        again (which replaces it) or `until` (the mesh's clock) passes without a word."""
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("cannot read %s (%s): members' private patterns apply once they gossip", self.path, e)
            return
        if not isinstance(saved, dict):
            return
        for node_id, patterns in saved.items():
            if isinstance(node_id, str) and isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
                self.modules.add(SOURCE + node_id, patterns)
                self._saved[node_id] = until

    def expire(self, now: float) -> None:
        """Drop saved patterns of members not heard from since the restart, in time."""
        for node_id, until in list(self._saved.items()):
            if now > until:
                del self._saved[node_id]
                self.forget(node_id)

    def heard(self, node_id: str, patterns: tuple[str, ...]) -> None:
        """A member's gossip: its own patterns, honoured from now on."""
        self._saved.pop(node_id, None)
        if not self.modules.add(SOURCE + node_id, patterns):
            return
        if patterns:
            log.info("mesh peer %s declares private module patterns %s", node_id, ",".join(patterns))
        for p in patterns:
            broad = [m for m in PUBLIC_SAMPLES if PrivateModules(p)(m)]
            if broad and (node_id, p) not in self._warned:
                self._warned.add((node_id, p))
                log.warning(
                    "mesh peer %s declares %r private: every node of the mesh now treats modules such as %s "
                    "as private (no checksum database, no upstream without a route); fix its private, "
                    "nosumdb or [[route]] patterns if that is not meant",
                    node_id,
                    p,
                    broad[0],
                )
        self._save()

    def forget(self, node_id: str) -> None:
        """A member left the mesh for good: its patterns go with it."""
        if SOURCE + node_id in self.modules.sources():
            self.modules.discard(SOURCE + node_id)
            self._save()

    def declared(self, node_id: str) -> list[str]:
        return list(self.modules.sources().get(SOURCE + node_id, ()))

    def close(self) -> None:
        """The mesh stops: the node keeps only its own patterns."""
        for source in self.modules.sources():
            if source.startswith(SOURCE):
                self.modules.discard(source)

    def _save(self) -> None:
        members = {s[len(SOURCE) :]: list(p) for s, p in self.modules.sources().items() if s.startswith(SOURCE)}
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(members, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot save the mesh's private patterns to %s: %s", self.path, e)
