"""Result rows, the printed table, the JSON file and the machine description."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One figure: the node against a reference (nginx, or the upstream fetched directly)."""

    bench: str  # --only name
    label: str
    unit: str
    node: float | None
    ref: float | None = None
    ref_name: str = ""
    #: "min_ratio" (node/ref >= limit), "max_ratio" (node/ref <= limit),
    #: "max_overhead" ((node-ref)/ref <= limit), "max" (node <= limit) or "" (information).
    target_kind: str = ""
    limit: float = 0.0
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the bench failed: no figure

    @property
    def ratio(self) -> float | None:
        if self.node is None or not self.ref:
            return None
        return self.node / self.ref

    @property
    def ok(self) -> bool | None:
        if not self.target_kind or self.node is None:
            return None
        r = self.ratio
        if self.target_kind == "max":
            return self.node < self.limit
        if r is None:
            return None
        if self.target_kind == "min_ratio":
            return r >= self.limit
        if self.target_kind == "max_ratio":
            return r <= self.limit
        if self.target_kind == "max_overhead":
            return r - 1 <= self.limit
        raise ValueError(self.target_kind)

    def ratio_text(self) -> str:
        r = self.ratio
        if r is None:
            return "-"
        if self.target_kind == "max_overhead":
            return f"{(r - 1) * 100:+.1f}%"
        if self.target_kind == "min_ratio" or self.unit in ("req/s", "MB/s"):
            return f"{r * 100:.1f}%"
        return f"{r:.2f}x"

    def target_text(self) -> str:
        k, lim = self.target_kind, self.limit
        if k == "min_ratio":
            return f">= {lim * 100:.0f}% of {self.ref_name}"
        if k == "max_ratio":
            return f"<= {lim:g}x {self.ref_name}"
        if k == "max_overhead":
            return f"<= +{lim * 100:.0f}% vs {self.ref_name}"
        if k == "max":
            return f"< {lim:g} {self.unit}"
        return "(info)"

    def result_text(self) -> str:
        if self.error:
            return "ERROR"
        ok = self.ok
        return "-" if ok is None else ("PASS" if ok else "MISS")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio=self.ratio, target=self.target_text(), result=self.result_text())
        return d


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("req/s",):
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def table(rows: Sequence[Row]) -> str:
    head = ("benchmark", "unit", "node", "reference", "node/ref", "target", "result")
    body = [
        (
            r.label,
            r.unit,
            fmt(r.node, r.unit),
            f"{fmt(r.ref, r.unit)} {r.ref_name}" if r.ref is not None else "-",
            r.ratio_text(),
            r.target_text(),
            r.result_text(),
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    right = {2, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    notes = [f"  [{r.label}] {r.error or r.note}" for r in rows if r.error or r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _first(cmd: Sequence[str]) -> str:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine(nginx: str | None, wrk: str | None, go: str | None) -> dict[str, Any]:
    model = "?"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else platform.processor() or "?"
    except OSError:
        pass
    import aiohttp

    loop = "asyncio (stdlib loop)"
    mem = "?"
    try:
        kib = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))  # type: ignore[union-attr]
        mem = f"{kib / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _os_name(),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "event_loop": loop,
        "nginx": _first([nginx, "-v"]).removeprefix("nginx version: ") if nginx else "-",
        "wrk": _first([wrk, "-v"]).split("Copyright")[0].strip() if wrk else "-",
        "go": _first([go, "version"]) if go else "-",
    }


def code_version(root: Path) -> str:
    """The commit under test, and whether node/ has uncommitted changes."""
    head = _first(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    try:
        p = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "node"], capture_output=True, text=True, timeout=30
        )
        dirty = " + uncommitted changes in node/" if p.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    return f"git {head}{dirty}" if head != "?" else "unknown (no git)"


def _os_name() -> str:
    try:
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
