"""Doctor's vocabulary: a `Check` is one named observation, ok / info / warn /
fail, with a one-line detail a person can act on and a stable `code` for tooling.

Every part of `modmesh doctor` (client, node, upstreams, consistency) answers
with a list of them; the node's come over HTTP as JSON (`to_json`/`from_json`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

Status = Literal["ok", "info", "warn", "fail"]
RANK: dict[str, int] = {"ok": 0, "info": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    section: str  # client, node, upstream, sumdb, consistency
    name: str  # what was checked: "GOPROXY", "upstream https://proxy.golang.org", ...
    status: Status
    detail: str  # one line a person can act on
    code: str = ""  # stable id of the problem ("empty-200", "list-lags"), for tooling

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Check:
        status = str(d.get("status", "fail"))
        return cls(
            str(d.get("section", "node")),
            str(d.get("name", "?")),
            cast(Status, status if status in RANK else "fail"),
            str(d.get("detail", "")),
            str(d.get("code", "")),
        )


def worst(checks: Sequence[Check]) -> Status:
    if any(c.status == "fail" for c in checks):
        return "fail"
    return "warn" if any(c.status == "warn" for c in checks) else "ok"
