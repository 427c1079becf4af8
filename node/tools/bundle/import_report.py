"""An import's report: what became of each entry, in memory only as far as it is small.

The counts, the errors, the first refusals and the last few outcomes are kept in
memory; the rest of the outcomes go, a batch at a time, to a temporary SQLite
database (import_temp.OutcomeLog) in the directory the report is given, and are read
back a page at a time: for the JSON (`json_chunks`, the same shape as `to_json`,
made piece by piece: in a thread, it gives the GIL up between pages) and for the
table. `close` removes the database.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.tools.bundle.format import Status, entry_label
from node.tools.bundle.import_temp import OutcomeLog
from node.tools.bundle.manifest_json import ManifestJSON

#: Outcomes kept in memory before they are moved to the report's database.
KEEP = 1000
#: Refusals kept in memory however many there are (the table shows these).
FIRST_REFUSALS = 100
STATUSES: tuple[Status, ...] = ("admitted", "present", "refused", "skipped")


@dataclass(frozen=True, slots=True)
class Outcome:
    path: str
    kind: str
    status: Status
    module: str = ""
    version: str = ""
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Outcome:
        if not isinstance(obj, dict) or obj.get("status") not in STATUSES:
            raise ValueError("a report entry is not an outcome")
        return cls(*(str(obj.get(k, "")) for k in ("path", "kind", "status", "module", "version", "reason")))  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        return entry_label(self.path, self.kind, self.module, self.version)


class Report:
    def __init__(
        self, source: str, outcomes: Iterable[Outcome] = (), errors: Iterable[str] = (), spill: Path | None = None
    ) -> None:
        self.source = source
        #: Problems with the source as a whole (an unreadable stream, a bad manifest).
        self.errors = list(errors)
        #: The first FIRST_REFUSALS refused outcomes.
        self.refusals: list[Outcome] = []
        self._counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self._recent: list[Outcome] = []
        self._dir = spill
        self._log: OutcomeLog | None = None
        for o in outcomes:
            self.add(o)
        self.spill()

    def add(self, o: Outcome) -> None:
        self._counts[o.status] += 1
        if o.status == "refused" and len(self.refusals) < FIRST_REFUSALS:
            self.refusals.append(o)
        self._recent.append(o)

    @property
    def pending(self) -> bool:
        """Enough outcomes in memory that `spill` should move them to the database."""
        return len(self._recent) >= KEEP

    def spill(self, force: bool = False) -> None:
        """Move the outcomes in memory to the database once there are KEEP of them
        (blocks: call it in a thread, never while another call on this report runs)."""
        if not self._recent or (len(self._recent) < KEEP and not force):
            return
        batch, self._recent = self._recent, []
        if self._log is None:
            self._log = OutcomeLog(self._dir or Path(tempfile.gettempdir()))
        self._log.add((o.path, o.kind, o.status, o.module, o.version, o.reason) for o in batch)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def failed(self) -> bool:
        return bool(self.errors) or self._counts["refused"] > 0

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def pages(self, status: Status | None = None) -> Iterator[list[Outcome]]:
        """Every outcome (or those of `status`) in order, a page at a time (blocks)."""
        if self._log is not None:
            for rows in self._log.pages(status):
                yield [Outcome(*row) for row in rows]
        tail = [o for o in self._recent if status is None or o.status == status]
        if tail:
            yield tail

    def outcomes(self, status: Status | None = None) -> Iterator[Outcome]:
        for page in self.pages(status):
            yield from page

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "counts": self.counts(),
            "errors": self.errors,
            "entries": [o.to_json() for o in self.outcomes()],
        }

    def json_chunks(self) -> Iterator[bytes]:
        """`to_json` encoded a page at a time (blocks; in a thread, it gives the GIL up
        between pages: a large report must not stall a node's event loop)."""
        head = json.dumps({"source": self.source, "counts": self.counts(), "errors": self.errors})
        yield head[:-1].encode() + b', "entries": ['
        sep = b"\n"
        for page in self.pages():
            yield sep + ",\n".join(json.dumps(o.to_json()) for o in page).encode()
            sep = b",\n"
        yield b"\n]}\n"

    def to_json_bytes(self) -> bytes:
        return b"".join(self.json_chunks())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Report:
        return cls(
            str(obj.get("source", "")),
            [Outcome.from_json(o) for o in obj.get("entries", [])],
            [str(e) for e in obj.get("errors", [])],
        )

    @classmethod
    def parser(cls, spill: Path | None = None) -> ReportParser:
        return ReportParser(cls("", spill=spill))


class ReportParser:
    """A report's JSON read as it arrives (`to_json`'s shape): `feed`, then `finish`."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self._p: ManifestJSON[None] = ManifestJSON(lambda o: report.add(Outcome.from_json(o)), keep=False)

    def feed(self, data: bytes) -> None:
        """ValueError: not a report."""
        self._p.feed(data)
        self.report.spill()

    def finish(self) -> Report:
        self._p.finish()
        fields = self._p.fields
        self.report.source = str(fields.get("source", ""))
        self.report.errors = [str(e) for e in fields.get("errors") or []]
        if self._p.entries is None:
            raise ValueError("the report has no entry list")
        return self.report
