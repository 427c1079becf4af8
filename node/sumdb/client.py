"""Checksum databases (sum.golang.org and friends): proxy, cache, verify.

The node is a database proxy for its clients (`/sumdb/<db>/...`) and a client of
the database itself: before a public module's `.zip` or `.mod` is cached, its h1
must equal the database's record. Everything taken from a database is verified
the way the go command verifies it: the tree head's signature (note, ed25519),
each record's inclusion in that tree (tiles), and that every tree extends the
newest one verified before (a fork is refused and reported loudly).

Offline use is the point: whatever a client will ask to verify a module the node
served is kept on disk. For every record the tiles on its proof path, for every
tree head the node hands out the tiles on that tree's edge, all at the widths of
the newest verified tree (narrower `.p/W` requests are prefixes), so a fresh
client can verify every served module with the database unreachable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

from node.cache.upstream import Upstream
from node.errors import IntegrityError, ModmeshError, NotFound, UpstreamError
from node.flights import Flights
from node.golang import modpath
from node.metrics import Metrics
from node.sumdb import note, records, tiles, tlog
from node.sumdb.cache import SumDBStore
from node.sumdb.records import Tree
from node.sumdb.spec import DatabaseSpec
from node.sumdb.tiles import Tile
from node.sumdb.tlog import HashReader

log = logging.getLogger(__name__)
T = TypeVar("T")

HEIGHT = 8  # the tile height every go command uses
MAX_REPLY = 1 << 20


class SumDBError(UpstreamError):
    """The database is unreachable or sent something that does not verify."""


class ForkDetected(SumDBError):
    """The database presented a tree that does not extend the verified one."""


class Unverifiable(SumDBError):
    """The database could not confirm or deny a hash: unreachable, or it has no record."""


def record_hashes(text: bytes, module: str, version: str) -> dict[str, str]:
    """The zip and go.mod h1 a record holds for module@version ({"zip": .., "mod": ..})."""
    out: dict[str, str] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == module:
            if f[1] == version:
                out["zip"] = f[2]
            elif f[1] == version + "/go.mod":
                out["mod"] = f[2]
    return out


class SumDB:
    """One checksum database: its cache, its verified tree, and the fetches behind them."""

    def __init__(
        self,
        spec: DatabaseSpec,
        store: SumDBStore,
        make_upstream: Callable[[str], Upstream],
        discover_through: list[Upstream],
        metrics: Metrics,
        latest_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        offline: bool = False,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.verifier = note.parse_verifier(spec.vkey)
        self.store = store
        self.metrics = metrics
        self.latest_ttl = latest_ttl
        self.clock = clock
        self.offline = offline
        self.latest: Tree | None = None
        self.latest_note: bytes | None = None
        self.fork: str | None = None
        self._make_upstream = make_upstream
        self._discover_through = discover_through
        self._base: Upstream | None = None
        self._base_at = 0.0
        self._latest_checked = -1e18
        self._tree_lock = asyncio.Lock()
        self._gets: Flights[str, bytes] = Flights()
        self._lookups: Flights[str, tuple[bytes, str]] = Flights()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._upgrade_pending = False

    # ---- lifecycle -------------------------------------------------------

    def open(self) -> None:
        self.store.open()
        saved = self.store.latest()
        if saved is None:
            return
        try:
            tree = records.parse_tree(note.open_note(saved, [self.verifier]).text)
        except (note.NoteError, tlog.TlogError) as e:
            log.error("checksum database %s: ignoring unverifiable saved tree head: %s", self.name, e)
            return
        self.latest, self.latest_note = tree, saved
        self.metrics.sumdb_tree_size.labels(self.name).set(tree.n)

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._lookups.aclose()
        await self._gets.aclose()
        self.store.close()

    async def idle(self) -> None:
        """Wait until no background work (prefetches, tile upgrades) is running."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except ModmeshError as e:
                log.info("checksum database %s: %s did not complete: %s", self.name, what, e)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- talking to the database ----------------------------------------

    async def _upstream(self) -> Upstream:
        """The database's base URL: configured, found through an upstream proxy's
        `/sumdb/<name>/supported`, or https://<name> (what the go command does)."""
        if self.spec.url is not None:
            if self._base is None:
                self._base = self._make_upstream(self.spec.url)
            return self._base
        if self._base is not None and self.clock() - self._base_at < 600:
            return self._base
        base = f"https://{self.name}"
        for up in self._discover_through:
            try:
                await up.fetch(f"sumdb/{self.name}/supported", _drain, small=True)
            except NotFound:
                continue
            except ModmeshError:
                continue
            base = f"{up.base}/sumdb/{self.name}"
            break
        self._base, self._base_at = self._make_upstream(base), self.clock()
        return self._base

    async def _get(self, path: str) -> bytes:
        """GET one database path, single-flight per path."""
        if self.offline:
            raise NotFound(f"offline mode: {path} of checksum database {self.name} is not cached")
        return await self._gets.run(path, functools.partial(self._fetch, path))

    async def _fetch(self, path: str) -> bytes:
        up = await self._upstream()
        return await up.fetch(path, _read_reply, small=True)

    async def _fetch_tile(self, tile: Tile) -> bytes:
        try:
            data = await self._get(tile.path())
        except NotFound:
            if tile.full:
                raise
            # Go's fallback: a database may stop serving .p/W once the tile is full.
            full = Tile(tile.h, tile.l, tile.n, 1 << tile.h)
            data = (await self._get(full.path()))[: tile.w * tlog.HASH_SIZE]
        if tile.l >= 0 and len(data) != tile.w * tlog.HASH_SIZE:
            raise SumDBError(f"checksum database {self.name}: tile {tile.path()} has {len(data)} bytes")
        return data

    async def with_tiles(
        self, tree: Tree, fn: Callable[[HashReader], T], verified: dict[Tile, bytes] | None = None
    ) -> T:
        """Run a tlog computation over tiles authenticated against `tree`, fetching
        the ones not cached; only tiles that verified are stored (and put in `verified`,
        which still has them when a full disk kept them out of the cache)."""
        pending: dict[Tile, bytes] = {} if verified is None else verified
        for _ in range(16):
            reader = tiles.tile_hash_reader(tree, HEIGHT, self.store.tiles_view(pending))
            try:
                result = fn(reader)
            except tiles.MissingTiles as m:
                fetched = await asyncio.gather(*(self._fetch_tile(t) for t in m.tiles))
                pending.update(zip(m.tiles, fetched))
                continue
            for t, data in pending.items():
                self.store.put_tile(t, data)
            return result
        raise SumDBError(f"checksum database {self.name}: tiles did not converge")

    # ---- trees -----------------------------------------------------------

    async def accept(self, signed: bytes) -> Tree:
        """Verify a signed tree head and merge it with the newest verified tree."""
        try:
            tree = records.parse_tree(note.open_note(signed, [self.verifier]).text)
        except note.NoteError as e:
            self.metrics.sumdb_errors.labels(self.name, "signature").inc()
            raise SumDBError(
                f"checksum database {self.name}: tree head not signed by the configured key: {e}"
            ) from None
        except tlog.TlogError as e:
            raise SumDBError(f"checksum database {self.name}: malformed tree head: {e}") from None
        async with self._tree_lock:
            latest = self.latest
            if latest is None or tree.n > latest.n:
                if latest is not None:
                    await self._check_extends(latest, tree)
                self.latest, self.latest_note = tree, signed
                self.store.put_latest(signed)
                self.metrics.sumdb_tree_size.labels(self.name).set(tree.n)
                if latest is not None:
                    self._schedule_upgrade()
            elif tree.n == latest.n:
                if tree.hash != latest.hash:
                    self._forked(latest, tree, "same size, different root hash")
            else:
                await self._check_extends(tree, latest)
        return tree

    async def _check_extends(self, old: Tree, new: Tree) -> None:
        try:
            proof = await self.with_tiles(new, lambda r: tlog.prove_tree(new.n, old.n, r))
            tlog.check_tree(proof, new.n, new.hash, old.n, old.hash)
        except tlog.TlogError as e:
            self._forked(old, new, str(e))

    def _forked(self, old: Tree, new: Tree, why: str) -> None:
        msg = (
            f"checksum database {self.name} presented a forked tree: tree of size {new.n} "
            f"does not extend verified tree of size {old.n} ({why})"
        )
        if self.fork is None:
            log.error("SECURITY: %s; refusing it", msg)
        self.fork = msg
        self.metrics.sumdb_fork.labels(self.name).set(1)
        raise ForkDetected(msg)

    async def refresh_latest(self) -> Tree:
        signed = await self._get("latest")
        tree = await self.accept(signed)
        self._latest_checked = self.clock()
        return tree

    async def latest_signed(self) -> tuple[bytes, str]:
        """The newest verified tree head note: ("hit"|"miss"|"stale")."""
        if self.latest_note is not None and self.clock() - self._latest_checked < self.latest_ttl:
            return self.latest_note, "hit"
        try:
            await self.refresh_latest()
        except ForkDetected:
            raise
        except ModmeshError:
            if self.latest_note is None:
                raise
            return self.latest_note, "stale"
        assert self.latest_note is not None
        return self.latest_note, "miss"

    def _schedule_upgrade(self) -> None:
        if not self._upgrade_pending:
            self._upgrade_pending = True
            self.spawn(self._upgrade_partials(), "widening cached partial tiles")

    async def _upgrade_partials(self) -> None:
        """Keep every cached partial tile at its width in the newest tree, so a client
        holding any tree up to that one finds the prefix it asks for."""
        self._upgrade_pending = False
        latest = self.latest
        assert latest is not None
        for level, n, width in self.store.partial_positions():
            have = min(1 << HEIGHT, (latest.n >> (level * HEIGHT)) - (n << HEIGHT))
            if have > width:
                idx = [tlog.stored_hash_index(level * HEIGHT, (n << HEIGHT) + i) for i in range(have)]
                await self.with_tiles(latest, functools.partial(_read, idx))

    # ---- lookups ---------------------------------------------------------

    async def lookup(self, module: str, version: str) -> tuple[bytes, str]:
        """The verified lookup reply for module@version and whether it was cached."""
        cached = await asyncio.to_thread(self.store.lookup, module, version)  # off the loop
        if cached is not None:
            return cached, "hit"
        path = f"lookup/{modpath.escape_path(module)}@{modpath.escape_version(version)}"
        # One fetch, check and store per record: a second caller that found no cached
        # reply while the first was still verifying must not fetch it again.
        return await self._lookups.run(path, functools.partial(self._fetch_lookup, module, version, path))

    async def _fetch_lookup(self, module: str, version: str, path: str) -> tuple[bytes, str]:
        cached = await asyncio.to_thread(self.store.lookup, module, version)  # stored while we waited
        if cached is not None:
            return cached, "hit"
        reply = await self._get(path)
        try:
            rid, text, signed = records.split_lookup(reply)
        except tlog.TlogError as e:
            raise SumDBError(
                f"checksum database {self.name}: malformed lookup reply for {module}@{version}: {e}"
            ) from None
        tree = await self.accept(signed)
        if rid >= tree.n:
            raise SumDBError(f"checksum database {self.name}: record {rid} is outside its tree of size {tree.n}")
        try:
            leaf = await self.with_tiles(tree, lambda r: r.read_hashes([tlog.stored_hash_index(0, rid)])[0])
        except tlog.TlogError as e:
            raise SumDBError(
                f"checksum database {self.name}: tiles for {module}@{version} do not verify: {e}"
            ) from None
        if leaf != tlog.record_hash(text):
            self.metrics.sumdb_errors.labels(self.name, "record").inc()
            raise SumDBError(f"checksum database {self.name}: record for {module}@{version} is not the one in its log")
        if "zip" not in record_hashes(text, module, version):
            raise SumDBError(f"checksum database {self.name}: record {rid} is not for {module}@{version}")
        await asyncio.to_thread(self.store.put_lookup, module, version, reply)
        self.spawn(self.cover(tree, rid), f"caching tiles for {module}@{version}")
        return reply, "miss"

    async def cover(self, tree: Tree, record_id: int) -> None:
        """Cache the tiles a client needs to verify this record offline: the edge of
        the tree head it will see, and the record's proof path, at current widths."""
        latest = self.latest or tree
        await self.with_tiles(latest, lambda r: tlog.tree_hash(tree.n, r))
        await self.with_tiles(latest, lambda r: tlog.prove_record(latest.n, record_id, r))

    async def check(self, module: str, version: str, kind: str, h1: str) -> None:
        """Refuse bytes whose h1 differs from the database's record (IntegrityError).
        Raises Unverifiable when the database cannot say (unreachable, no record)."""
        try:
            reply, _ = await self.lookup(module, version)
        except NotFound as e:
            raise Unverifiable(f"checksum database {self.name} has no record of {module}@{version}") from e
        except ModmeshError as e:
            raise Unverifiable(f"checksum database {self.name} did not answer for {module}@{version}: {e}") from e
        _, text, _ = records.split_lookup(reply)
        want = record_hashes(text, module, version).get(kind)
        what = f"{module}@{version}" + ("/go.mod" if kind == "mod" else "")
        if want is None:
            raise IntegrityError(f"checksum database {self.name} has no {kind} hash for {what}")
        if want != h1:
            self.metrics.sumdb_mismatches.labels(self.name).inc()
            log.error("checksum mismatch for %s: upstream %s, database %s %s", what, h1, self.name, want)
            raise IntegrityError(
                f"checksum mismatch for {what}: upstream sent {h1}, checksum database {self.name} has {want}"
            )

    # ---- tiles for clients -----------------------------------------------

    async def tile(self, tile: Tile) -> tuple[bytes, str]:
        cached = await asyncio.to_thread(self.store.tile, tile)
        if cached is not None:
            return cached, "hit"
        if tile.h != HEIGHT:
            raise NotFound(f"tile height {tile.h} is not served; the go command uses {HEIGHT}")
        if tile.l < 0:
            return await self._data_tile(tile), "miss"
        need = ((tile.n << HEIGHT) + tile.w) << (tile.l * HEIGHT)
        tree = await self._tree_covering(need)
        idx = [tlog.stored_hash_index(tile.l * HEIGHT, (tile.n << HEIGHT) + i) for i in range(tile.w)]
        verified: dict[Tile, bytes] = {}
        try:
            await self.with_tiles(tree, lambda r: r.read_hashes(idx), verified)
        except tlog.TlogError as e:
            raise SumDBError(f"checksum database {self.name}: tile {tile.path()} does not verify: {e}") from None
        data = self.store.tile(tile)
        if data is None:  # not cached (a full disk): the verified bytes are still here
            wider = [d for t, d in verified.items() if (t.l, t.n) == (tile.l, tile.n) and t.w >= tile.w]
            if not wider:
                raise SumDBError(f"checksum database {self.name}: tile {tile.path()} was not fetched")
            data = wider[0][: tile.w * tlog.HASH_SIZE]
        return data, "miss"

    async def _data_tile(self, tile: Tile) -> bytes:
        first = tile.n << HEIGHT
        tree = await self._tree_covering(first + tile.w)
        data = await self._fetch_tile(tile)
        records = data.split(b"\n\n")
        if len(records) != tile.w + 1 or records[-1] != b"":
            raise SumDBError(f"checksum database {self.name}: malformed data tile {tile.path()}")
        idx = [tlog.stored_hash_index(0, first + i) for i in range(tile.w)]
        leaves = await self.with_tiles(tree, lambda r: r.read_hashes(idx))
        for rec, leaf in zip(records, leaves):
            if tlog.record_hash(rec + b"\n") != leaf:
                raise SumDBError(f"checksum database {self.name}: data tile {tile.path()} does not verify")
        self.store.put_tile(tile, data)
        return data

    async def _tree_covering(self, size: int) -> Tree:
        if self.latest is None or self.latest.n < size:
            await self.refresh_latest()
        assert self.latest is not None
        if self.latest.n < size:
            raise NotFound(f"checksum database {self.name}: no tree of size {size} yet")
        return self.latest

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tree_size": self.latest.n if self.latest else None,
            "fork": self.fork,
            "base": self._base.name if self._base else self.spec.url,
        }


def _read(indexes: list[int], reader: HashReader) -> list[bytes]:
    return reader.read_hashes(indexes)


async def _drain(resp: aiohttp.ClientResponse) -> bytes:
    return await resp.content.read(MAX_REPLY)


async def _read_reply(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_REPLY:
        raise SumDBError(f"checksum database reply larger than {MAX_REPLY} bytes")
    body = await resp.content.read(MAX_REPLY + 1)
    if len(body) > MAX_REPLY:
        raise SumDBError(f"checksum database reply larger than {MAX_REPLY} bytes")
    if not body:
        raise SumDBError("checksum database sent an empty reply")
    return body
