"""The member table: who is in the mesh, and whether they are alive, suspect or dead.

Liveness comes from heartbeats: every node stamps its gossip with a heartbeat
(wall-clock milliseconds, so it keeps growing across restarts) and relays a
sample of the heartbeats it knows. A newer heartbeat, heard directly or through
a third node, is proof of life; silence makes a member suspect after
`suspect_after` and dead after `dead_after`; failed requests make it suspect at
once and dead after `dead_failures` in a row. Dead members are retried with a
doubling backoff and rejoin as soon as they answer or a newer heartbeat arrives.
Static peers start as seeds (a URL without a known node id) and are retried the
same way until they answer. All decisions take `now` (monotonic seconds).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from .messages import MemberInfo

log = logging.getLogger(__name__)

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
MAX_SEEDS = 1024


@dataclass(frozen=True)
class Timing:
    suspect_after: float = 10.0
    dead_after: float = 30.0
    dead_failures: int = 3
    backoff: float = 1.0
    backoff_max: float = 60.0
    forget_after: float = 3600.0


@dataclass(eq=False)
class Member:
    node_id: str
    url: str
    slot: int
    source: str  # static, mdns, gossip
    state: str = ALIVE
    last_seen: float = 0.0
    heartbeat: int = 0
    failures: int = 0
    backoff: float = 0.0
    next_retry: float = 0.0
    dead_since: float = 0.0
    quarantined_until: float = 0.0
    quarantine_reason: str = ""
    # Inventory sync: the peer's epoch, the last serial we applied, its head, our count.
    epoch: str = ""
    synced: int = 0
    head: int = 0
    count: int = 0
    syncing: bool = False

    def quarantined(self, now: float) -> bool:
        return now < self.quarantined_until

    def usable(self, now: float) -> bool:
        return self.state != DEAD and not self.quarantined(now) and bool(self.url)

    @property
    def backlog(self) -> int:
        return max(0, self.head - self.synced)


@dataclass(eq=False)
class Seed:
    """A URL to try: a static peer, or a node mDNS announced. Only a signed gossip
    answer turns it into a member, so an announcement alone changes nothing."""

    url: str
    source: str = "static"
    node_id: str | None = None
    is_self: bool = False
    backoff: float = 0.0
    next_try: float = 0.0


def next_backoff(current: float, t: Timing, rng: random.Random) -> float:
    """Doubling, capped, with +-20% jitter so a rebooted site does not retry in lockstep."""
    base = t.backoff if current <= 0 else min(t.backoff_max, current * 2)
    return base * rng.uniform(0.8, 1.2)


class Membership:
    def __init__(self, self_id: str, timing: Timing, rng: random.Random | None = None) -> None:
        self.self_id = self_id
        self.timing = timing
        self.rng = rng or random.Random()
        self.members: dict[str, Member] = {}
        self.seeds: list[Seed] = []
        self._by_slot: dict[int, Member] = {}
        self._free_slots: list[int] = []
        self._next_slot = 0

    # ---- lookup ------------------------------------------------------------------

    def get(self, node_id: str) -> Member | None:
        return self.members.get(node_id)

    def by_slot(self, slot: int) -> Member | None:
        return self._by_slot.get(slot)

    def add_seed(self, url: str, source: str = "static", node_id: str | None = None) -> None:
        if node_id == self.self_id:
            return
        for s in self.seeds:
            if s.url == url:
                s.next_try = 0.0  # announced again: worth trying now
                return
        if source == "mdns" and node_id is not None:
            # A node re-announced at a new address: its old mDNS URL is stale.
            self.seeds = [s for s in self.seeds if not (s.source == "mdns" and s.node_id == node_id)]
        if len(self.seeds) < MAX_SEEDS:
            self.seeds.append(Seed(url, source, node_id))

    def drop_seeds(self, node_id: str) -> None:
        """mDNS said goodbye: forget its announced URLs (static peers stay)."""
        self.seeds = [s for s in self.seeds if s.source == "static" or s.node_id != node_id]

    def seed_source(self, node_id: str, url: str) -> str:
        for s in self.seeds:
            if s.node_id == node_id or s.url == url:
                return s.source
        return "gossip"

    def counts(self) -> dict[str, int]:
        out = {ALIVE: 0, SUSPECT: 0, DEAD: 0}
        for m in self.members.values():
            out[m.state] += 1
        return out

    # ---- facts -------------------------------------------------------------------

    def _slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        self._next_slot += 1
        return self._next_slot - 1

    def _set_state(self, m: Member, state: str, now: float, why: str) -> None:
        if m.state == state:
            return
        level = logging.INFO if state != SUSPECT else logging.DEBUG
        log.log(level, "mesh peer %s (%s): %s -> %s (%s)", m.node_id, m.url, m.state, state, why)
        m.state = state
        if state == DEAD:
            m.dead_since = now
            m.backoff = next_backoff(0.0, self.timing, self.rng)
            m.next_retry = now + m.backoff
        elif state == ALIVE:
            m.failures, m.backoff, m.next_retry = 0, 0.0, 0.0

    def heard(self, node_id: str, url: str, heartbeat: int, now: float, source: str) -> Member | None:
        """Direct contact: `node_id` talked to us or answered us. None for ourselves."""
        if node_id == self.self_id:
            return None
        m = self.members.get(node_id)
        if m is None:
            m = Member(node_id, url, self._slot(), source, last_seen=now, heartbeat=heartbeat)
            self.members[node_id] = m
            self._by_slot[m.slot] = m
            log.info("mesh peer %s joined at %s (%s)", node_id, url or "?", source)
        else:
            if url and url != m.url:
                log.info("mesh peer %s moved from %s to %s", node_id, m.url, url)
                m.url = url
            m.heartbeat = max(m.heartbeat, heartbeat)
            m.last_seen = now
            if m.source == "gossip" and source in ("static", "mdns"):
                m.source = source
        self._set_state(m, ALIVE, now, "answered" if m.state == DEAD else "heard")
        m.failures = 0
        return m

    def merge(self, infos: Iterable[MemberInfo], now: float) -> list[Member]:
        """Member views relayed by a peer: a newer heartbeat is proof of life. Returns
        members learnt for the first time (to contact)."""
        new = []
        for info in infos:
            if info.node_id == self.self_id:
                continue
            m = self.members.get(info.node_id)
            if m is None:
                if info.state == DEAD or not info.url:
                    continue  # nothing to gain from a stranger someone else thinks is gone
                m = Member(info.node_id, info.url, self._slot(), "gossip", last_seen=now, heartbeat=info.heartbeat)
                self.members[info.node_id] = m
                self._by_slot[m.slot] = m
                log.info("mesh peer %s learnt through gossip at %s", info.node_id, info.url)
                new.append(m)
            elif info.heartbeat > m.heartbeat:
                m.heartbeat = info.heartbeat
                m.last_seen = now
                if info.url and info.url != m.url:
                    m.url = info.url
                if m.state != ALIVE:
                    self._set_state(m, ALIVE, now, "newer heartbeat through gossip")
        return new

    def failed(self, node_id: str, now: float) -> None:
        m = self.members.get(node_id)
        if m is None:
            return
        m.failures += 1
        if m.state == DEAD:
            m.backoff = next_backoff(m.backoff, self.timing, self.rng)
            m.next_retry = now + m.backoff
        elif m.failures >= self.timing.dead_failures:
            self._set_state(m, DEAD, now, f"{m.failures} failed requests")
        else:
            self._set_state(m, SUSPECT, now, "request failed")

    def seed_answered(self, seed: Seed, node_id: str) -> None:
        seed.node_id = node_id
        seed.backoff = 0.0
        seed.next_try = 0.0
        if node_id == self.self_id and not seed.is_self:
            seed.is_self = True
            log.info("static peer %s is this node; not contacting it", seed.url)

    def seed_failed(self, seed: Seed, now: float) -> None:
        seed.backoff = next_backoff(seed.backoff, self.timing, self.rng)
        seed.next_try = now + seed.backoff

    def quarantine(self, node_id: str, now: float, seconds: float, reason: str) -> None:
        m = self.members.get(node_id)
        if m is not None:
            m.quarantined_until = max(m.quarantined_until, now + seconds)
            m.quarantine_reason = reason

    def lost(self, node_id: str, now: float) -> None:
        """mDNS said goodbye: suspect until it proves otherwise."""
        m = self.members.get(node_id)
        if m is not None and m.state == ALIVE:
            self._set_state(m, SUSPECT, now, "mDNS goodbye")

    # ---- time --------------------------------------------------------------------

    def tick(self, now: float) -> list[Member]:
        """Apply timeouts; returns the members forgotten. Their slots stay taken until
        the caller has dropped their catalog entries and calls release()."""
        t = self.timing
        gone = []
        for m in list(self.members.values()):
            silent = now - m.last_seen
            if m.state == ALIVE and silent > t.suspect_after:
                self._set_state(m, SUSPECT, now, f"silent for {silent:.1f}s")
            if m.state == SUSPECT and silent > t.dead_after:
                self._set_state(m, DEAD, now, f"silent for {silent:.1f}s")
            if m.state == DEAD and m.source != "static" and now - m.dead_since > t.forget_after:
                gone.append(m)
        for m in gone:
            self.remove(m)
        return gone

    def remove(self, m: Member) -> None:
        log.info("mesh peer %s forgotten", m.node_id)
        self.members.pop(m.node_id, None)
        self._by_slot.pop(m.slot, None)

    def release(self, slot: int) -> None:
        self._free_slots.append(slot)

    def targets(self, fanout: int, now: float) -> tuple[list[Member], list[Seed]]:
        """Whom to gossip with this round: `fanout` random live members, the dead
        whose retry is due, and static peers not (or no longer) answering."""
        live = [m for m in self.members.values() if m.state != DEAD and m.url]
        picked = self.rng.sample(live, min(fanout, len(live)))
        picked += [m for m in self.members.values() if m.state == DEAD and m.url and now >= m.next_retry]
        seeds = []
        for s in self.seeds:
            if s.is_self or now < s.next_try:
                continue
            m = self.members.get(s.node_id) if s.node_id else None
            if m is None or (m.url != s.url and m.state != ALIVE):
                seeds.append(s)
        for m in picked:
            if m.state == DEAD:
                m.next_retry = now + max(m.backoff, self.timing.backoff)  # until it answers or fails
        return picked, seeds

    def sample(self, n: int, now: float) -> list[MemberInfo]:
        """A random slice of our view to relay (bounded message, full coverage over rounds)."""
        known = [m for m in self.members.values() if m.url]
        picked = self.rng.sample(known, min(n, len(known)))
        return [MemberInfo(m.node_id, m.url, m.heartbeat, m.state) for m in picked]

    def usable(self, now: float) -> list[Member]:
        return [m for m in self.members.values() if m.usable(now)]
