"""Every checksum database a node uses, the private patterns, and the verification
mode: the proxy's BlobVerifier (the first database decides what enters the store).

The private patterns are the node's `hooks.PrivateModules`: its own, and those the
mesh adds (every member's), so no module a member treats as private is ever sent to
a database from here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.cache.index import Entry
from node.errors import IntegrityError, NotFound
from node.hooks import PrivateModules
from node.metrics import Metrics
from node.sumdb.client import SumDB, Unverifiable
from node.sumdb.spec import SumDBConfigError

#: `sumdb_verify` modes. "sumdb": a mismatch is refused; what the database cannot
#: confirm (it does not answer, it has no record) is kept *unverified* and checked again
#: later. "require": that is refused too (fail closed). "off": no checks.
VERIFY_MODES = ("sumdb", "require", "off")


class ChecksumDatabases:
    """Every configured database, the private patterns, and the verification mode.

    The first database verifies what enters the store (the go command, too, uses
    exactly one GOSUMDB); all of them are proxied for clients.
    """

    def __init__(self, dbs: list[SumDB], mode: str, private: PrivateModules, metrics: Metrics) -> None:
        if mode not in VERIFY_MODES:
            raise SumDBConfigError(f"sumdb_verify must be one of {', '.join(VERIFY_MODES)}, not {mode!r}")
        self.dbs = dbs
        self.mode = mode
        self.verify_enabled = mode != "off" and bool(dbs)
        self.patterns = private
        self.metrics = metrics
        #: Called when the database answered again after failing (the re-verifier's cue).
        self.answered: list[Callable[[], None]] = []

    def open(self) -> None:
        for db in self.dbs:
            db.open()

    async def aclose(self) -> None:
        for db in self.dbs:
            await db.aclose()

    def route(self, rest: str) -> tuple[SumDB, str] | None:
        """Split `<name>/<endpoint>` (a name may contain '/': match configured names)."""
        best: tuple[SumDB, str] | None = None
        for db in self.dbs:
            if rest.startswith(db.name + "/") and (best is None or len(db.name) > len(best[0].name)):
                best = (db, rest[len(db.name) + 1 :])
        return best

    @property
    def private(self) -> str:
        """Every private pattern honoured here (own and the mesh's), GOPRIVATE-style."""
        return self.patterns.joined

    def is_private(self, module: str) -> bool:
        return self.patterns(module)

    def checks(self, module: str) -> bool:
        return self.verify_enabled and not self.is_private(module)

    def start_lookup(self, module: str, version: str) -> None:
        """Begin the record lookup while the blob downloads (it is single-flight)."""
        if self.checks(module):
            db = self.dbs[0]
            db.spawn(db.lookup(module, version), f"lookup of {module}@{version}")

    async def verify(self, module: str, version: str, kind: str, h1: str, require: bool = False) -> bool:
        """True when the database confirmed `h1` (or no check applies); False when it could
        not say and the mode keeps such files unverified. IntegrityError on a mismatch,
        and when the database cannot say in "require" mode (or with `require`: imports)."""
        if not (self.checks(module) and kind in ("zip", "mod")):
            return True
        try:
            await self.dbs[0].check(module, version, kind, h1)
        except Unverifiable as e:
            if require or self.mode == "require":
                raise IntegrityError(f"{e}; not cached") from None
            return False
        for cue in self.answered:
            cue()
        return True

    async def recheck(self, module: str, version: str, kind: str, h1: str) -> str:
        """For an unverified file: "verified" (or no longer checked), "mismatch" (logged
        and counted by the check), "absent" (the database has no record) or "unreachable"."""
        if not self.checks(module):
            return "verified"
        try:
            await self.dbs[0].check(module, version, kind, h1)
        except Unverifiable as e:
            return "absent" if isinstance(e.__cause__, NotFound) else "unreachable"
        except IntegrityError:
            return "mismatch"
        return "verified"

    def stored(self, entry: Entry) -> None:
        """Store observer: prefetch what offline clients need (record and tiles)."""
        if entry.kind in ("zip", "mod") and self.checks(entry.module):
            db = self.dbs[0]
            db.spawn(db.lookup(entry.module, entry.version), f"prefetch of {entry.module}@{entry.version}")

    def health(self) -> list[dict[str, Any]]:
        return [db.health() for db in self.dbs]

    @property
    def forked(self) -> bool:
        return any(db.fork for db in self.dbs)
