"""Doctor's view of the store's own health: damaged blobs found and repaired, the
index (rebuilt, caught up with its journal), the scrub, the quarantine folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from node.cache.recovery import Recovery
from node.tools.doctor.check import Check


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def damage_check(integrity: dict[str, Any], check_on_serve: bool) -> Check:
    repairing, found, repaired = integrity["repairing"], integrity["quarantined"], integrity["repaired"]
    if repairing:
        last = integrity.get("last_damage") or {}
        keys = ", ".join(last.get("keys", [])[:3])
        return Check(
            "node",
            "integrity",
            "warn",
            f"{repairing} files were damaged on disk and are not repaired yet (no peer or upstream had "
            f"them): they answer an error, never the damaged bytes, until a source has them (last: {keys})",
            "blobs-damaged",
        )
    how = "each blob is hashed before its first serve" if check_on_serve else "check_on_serve is off"
    if found:
        return Check("node", "integrity", "ok", f"{found} damaged blobs found since start, {repaired} repaired; {how}")
    return Check("node", "integrity", "ok" if check_on_serve else "info", f"no damaged blob found since start; {how}")


def index_check(rec: Recovery, unchecked: int, journal_bytes: int) -> Check:
    if rec.rebuilt:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.at))
        detail = (
            f"rebuilt from the journal at {when} ({rec.damage}): {rec.recovered} files recovered, "
            f"{rec.missing} lost, {rec.damaged_lines} damaged journal lines; the damaged index is in "
            f"{rec.moved_to}"
        )
        if unchecked:
            return Check("node", "index", "warn", f"{detail}; {unchecked} not re-hashed yet", "index-rebuilt")
        return Check("node", "index", "info", detail + "; every recovered blob re-hashed")
    if rec.recovered or rec.damaged_lines:
        return Check(
            "node",
            "index",
            "info",
            f"caught up with the journal at start-up: {rec.recovered} changes the index had lost (a crash "
            f"or power cut) were applied; {rec.damaged_lines} damaged journal lines",
        )
    return Check("node", "index", "ok", f"passed SQLite's quick_check at start-up; journal {_mib(journal_bytes)}")


def scrub_check(scrub: dict[str, Any]) -> Check:
    period, rate = scrub["period_s"], scrub["rate_bytes_per_s"]
    if period <= 0 or rate <= 0:
        return Check(
            "node",
            "scrub",
            "warn",
            "the background scrub is off (scrub_period = 0): damage to blobs already served in this run "
            "is found only by `modmesh verify`",
            "scrub-off",
        )
    days = period / 86400
    span = f"{days:g} days" if days >= 1 else f"{period:g} s"
    return Check(
        "node",
        "scrub",
        "ok",
        f"every blob re-hashed once per {span} at most {_mib(rate)}/s; {scrub['checked']} checked, "
        f"{_mib(scrub['bytes_read'])} read since start",
    )


def quarantine_check(folder: Path) -> Check | None:
    if not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".json")]
    if not files:
        return None
    size = sum(p.stat().st_size for p in files)
    return Check(
        "node",
        "quarantine",
        "info",
        f"{len(files)} damaged blobs ({_mib(size)}) kept in {folder} for inspection, each with a .json "
        "note of what it was; safe to delete",
    )
