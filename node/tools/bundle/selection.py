"""What `modmesh export` puts in a bundle: the `Selection`.

Module patterns, a go.sum's versions, a date and an earlier bundle (for an
incremental export) narrow it, from the command line or from the JSON body of
`POST /_admin/export`; with none of them, everything cached is exported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from node.golang.patterns import match_prefix_patterns
from node.tools.bundle.format import Manifest, utc_iso


class SelectionError(ValueError):
    pass


def parse_gosum(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(module, version) -> {"zip": h1, "mod": h1} from go.sum lines."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) != 3:
            raise SelectionError(f"go.sum line {n}: want 'module version hash', got {line[:80]!r}")
        module, version, h1 = f
        kind = "zip"
        if version.endswith("/go.mod"):
            version, kind = version.removesuffix("/go.mod"), "mod"
        out.setdefault((module, version), {})[kind] = h1
    return out


def parse_since(value: str) -> float:
    """An ISO 8601 date or time (UTC unless it says otherwise) as a Unix time."""
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SelectionError(
            f"--since {value!r} is not an ISO date (e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


@dataclass(frozen=True)
class Selection:
    """Filters combine with AND; repeated module patterns with OR. None of them: everything."""

    modules: tuple[str, ...] = ()
    gosum: Mapping[tuple[str, str], Mapping[str, str]] | None = None
    since: float | None = None
    previous: Manifest | None = None
    _gosum_modules: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.gosum is not None:
            object.__setattr__(self, "_gosum_modules", frozenset(m for m, _ in self.gosum))

    @property
    def everything(self) -> bool:
        return not self.modules and self.gosum is None and self.since is None and self.previous is None

    def in_scope(self, module: str) -> bool:
        if self.modules and not match_prefix_patterns(",".join(self.modules), module):
            return False
        return self.gosum is None or module in self._gosum_modules

    def describe(self) -> dict[str, Any]:
        return {
            "everything": self.everything,
            "modules": list(self.modules),
            "gosum_versions": None if self.gosum is None else len(self.gosum),
            "since": None if self.since is None else utc_iso(self.since),
            "since_bundle": None if self.previous is None else self.previous.created,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Selection:
        """The body of POST /_admin/export: modules, gosum (text), since (ISO), since_bundle (manifest)."""
        modules = obj.get("modules") or []
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise SelectionError("modules must be a list of patterns")
        gosum = obj.get("gosum")
        since = obj.get("since")
        prev = obj.get("since_bundle")
        return cls(
            tuple(modules),
            parse_gosum(str(gosum)) if gosum is not None else None,
            parse_since(str(since)) if since else None,
            Manifest.from_bytes(_json_bytes(prev)) if prev is not None else None,
        )


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()
