"""Whether the store takes files, and why not (health, the dashboard, doctor)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    """The store could not take a file: why, which file first, since when, how many."""

    cause: str
    first: str
    since: float
    files: int = 1


class StoreStatus:
    """Whether the store takes files. Set by the first refusal (a full disk, a quota,
    a file larger than `max_size` allows), cleared by the next file it stores."""

    def __init__(self) -> None:
        self.refusal: Refusal | None = None

    def refused(self, cause: str, what: str, now: float) -> None:
        r = self.refusal
        if r is None:
            self.refusal = Refusal(cause, what, now)
        else:
            self.refusal = Refusal(cause, r.first, r.since, r.files + 1)

    def stored(self) -> bool:
        """A file was stored; True if that ended a refusal."""
        ended, self.refusal = self.refusal is not None, None
        return ended

    def health(self) -> dict[str, object]:
        r = self.refusal
        if r is None:
            return {"caching": True}
        return {"caching": False, "reason": r.cause, "since": r.since, "first": r.first, "files_passed": r.files}
