"""Link a device's address rotations without its IRK, inside one pseudonym period, pseudonymously.

A phone that the box holds no IRK for draws a new resolvable private address about every 15
minutes; without help every rotation looks like a new device (a 40-minute visit becomes three
visitors). What persists across one rotation, and what this linker uses:

* **Advert content** that does not rotate with the address (``AdvertInfo.signature``: Continuity
  message types with their status/flags bytes, AirPods model and colour, Fast Pair/CDP header
  bytes, TX power, AD flags; see ``gateway.parsers.ble_vendors``) and the device kind: the new
  address must carry exactly the same signature as the old one.
* **Counters that keep counting** (``AdvertInfo.seq``: Handoff IV sequence number, SmartTag aging
  counter): the new value must not be below the old one and not far above it.
* **Timing of the switch**: the old address stops and the new one starts within a couple of
  advert intervals (``link_max_gap_s``); an old address still advertising cannot have rotated.
* **Radio continuity**: the new address's first advert must be heard at the same sensors with
  about the same RSSI as the old address's last adverts (``rssi_tol_db``, mean absolute difference
  over shared sensors), i.e. from the same place.

The best candidate wins only if it is clearly better than the second (``ambiguity_db``):
a missed link costs one extra visitor, a wrong one merges two people, so ambiguity means no link.
If an old address that was linked away advertises again, the link was wrong and is undone for
what follows (``stats.undone``).

Privacy: the linker runs after the identity stage and sees **daily pseudonyms only**, never a raw
address. A chain is named by its first pseudonym; all state is dropped when the pseudonym key
rotates (``epoch_bounds``), so no link ever spans two pseudonym periods, and nothing is stored.
Within a period, an address or chain silent for ``forget_after_s`` (default 15 min; never below the
10 min after which an old address is no longer a candidate) is forgotten: the state is sized to the
devices around, not to every device the day saw (issue 22: 2,400 addresses by 10:00 at 100 devices).
Consented devices (resolved by IRK, subject = customer reference) are not rotating subjects here:
their adverts carry no ``AdvertInfo`` with ``rotating`` and pass untouched.

Pure: time comes from the observations; no I/O.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.models import Observation

__all__ = ["ChainInfo", "LinkerStats", "RotationLinker"]

RESIDENT_KINDS = frozenset({"beacon", "sensor", "fixture", "scanner"})
COMPANION_KINDS = frozenset({"earbuds", "wearable", "tracker", "accessory"})


@dataclass(slots=True)
class _Addr:
    subject: str
    chain: str
    signature: str
    kind: str
    first_ts: float
    last_ts: float
    count: int = 0
    interval: float = 1.0
    seq: int | None = None
    # per sensor, at the linker's index i of it: the RSSI average at 2i, when that sensor last heard
    # this address at 2i + 1 (NaN: never). One flat array instead of two dicts of floats: ~1 KB less
    # per address, ~1,900 addresses held at 500 devices (issue 22: RSS)
    levels: array[float] = field(default_factory=lambda: array("d"))
    last_advert_ts: float = -math.inf


_NEVER = array("d", (math.nan, math.nan))


def _rssi_of(a: _Addr, sensors: dict[str, int]) -> dict[str, float]:
    """``a``'s RSSI average by sensor (the sensors that heard it)."""
    lv = a.levels
    n = len(lv)
    return {x: lv[2 * i] for x, i in sensors.items() if 2 * i < n and lv[2 * i + 1] == lv[2 * i + 1]}


@dataclass(slots=True)
class ChainInfo:
    """What the linker knows about one chain (a device within this pseudonym period)."""

    root: str
    kind: str
    first_ts: float
    last_ts: float
    addresses: int = 1
    current: str = ""


@dataclass(slots=True)
class LinkerStats:
    addresses: int = 0
    links: int = 0
    ambiguous: int = 0
    no_candidate: int = 0
    undone: int = 0
    resets: int = 0
    forgotten: int = 0  # addresses forgotten after ``forget_after_s`` of silence


RECENT_S = 5.0  # only what a sensor heard this recently describes where a device is now
GONE_S = 600.0  # an address silent this long is no longer a candidate for a rotation
PRUNE_EVERY_S = 60.0  # event time between two sweeps for addresses and chains gone silent
TRIM_FROM = 5  # shared sensors from which the largest RSSI difference is left out (a fade)
LINK_LOG_MAX = 2000  # links kept in ``link_log`` (a measuring aid: bench_store reads ~130 per run; 0.4 MB)


def _distance(new: dict[str, float], old: _Addr, min_shared: int, sensors: dict[str, int]) -> float | None:
    """Mean absolute RSSI difference over sensors that heard both recently (the largest dropped
    when at least ``TRIM_FROM`` are shared), plus a penalty for sensors that heard only one of
    them; None when too few sensors are shared."""
    lv = old.levels
    n = len(lv)
    recent = {
        x: lv[2 * i]
        for x, i in sensors.items()
        if 2 * i < n and old.last_ts - lv[2 * i + 1] <= RECENT_S  # NaN (never heard there): False
    }
    shared = [x for x in new if x in recent]
    if not shared or len(shared) < min(min_shared, len(new), len(recent)):
        return None
    diffs = sorted(abs(new[x] - recent[x]) for x in shared)
    if len(diffs) >= TRIM_FROM:
        diffs.pop()  # one sensor's deep fade (a body between phone and sensor) is not a move
    d = sum(diffs) / len(diffs)
    only = len(new) + len(recent) - 2 * len(shared)
    return d + 8.0 * only / max(1, len(new) + len(recent))


class RotationLinker:
    """Observations (subjects = daily pseudonyms) in, the same with rotated addresses joined."""

    def __init__(
        self,
        epoch_bounds: Callable[[float], tuple[int, float, float]],
        *,
        link_max_gap_s: float = 3.0,
        rssi_tol_db: float = 6.5,
        ambiguity_db: float = 1.5,
        seq_window: int = 64,
        min_shared_sensors: int = 3,
        forget_after_s: float = 900.0,
    ) -> None:
        self._bounds_of = epoch_bounds
        self.forget_after = max(GONE_S, forget_after_s)
        self._next_prune = -math.inf
        self._epoch: tuple[int, float, float] | None = None
        self.max_gap = link_max_gap_s
        self.tol = rssi_tol_db
        self.ambiguity = ambiguity_db
        self.seq_window = seq_window
        self.min_shared = min_shared_sensors
        self._addr: dict[str, _Addr] = {}
        self._sensors: dict[str, int] = {}  # sensor -> its index in ``_Addr.levels`` (this period)
        self._chains: dict[str, ChainInfo] = {}
        # chains whose current address may be rotating out: signature -> {chain root}
        self._by_sig: dict[str, set[str]] = {}
        self.stats = LinkerStats()
        # new addresses waiting for their decision: subject -> (due time, [(root, old subject, d)])
        self._pending: dict[str, tuple[float, list[tuple[str, str, float]]]] = {}
        self._relabelled: list[tuple[str, str]] = []
        # (new subject, the address it continues) of the latest links made, for measuring (bounded)
        self.link_log: list[tuple[str, str]] = []

    # -- queries ------------------------------------------------------------------------------

    def chain_of(self, subject: str) -> str:
        a = self._addr.get(subject)
        return a.chain if a is not None else subject

    def info(self, root: str) -> ChainInfo | None:
        return self._chains.get(root)

    def chains(self) -> dict[str, ChainInfo]:
        return self._chains

    # -- processing ---------------------------------------------------------------------------

    def _reset(self) -> None:
        self._addr.clear()
        self._sensors.clear()
        self._chains.clear()
        self._by_sig.clear()
        self._pending.clear()
        self._relabelled.clear()
        self.link_log.clear()
        self.stats.resets += 1

    def _prune(self, now: float) -> None:
        """Forget addresses and chains silent for ``forget_after`` (they can link to nothing now)."""
        self._next_prune = now + PRUNE_EVERY_S
        cut = now - self.forget_after
        gone = [s for s, a in self._addr.items() if a.last_ts < cut]
        for s in gone:
            del self._addr[s]
            self._pending.pop(s, None)
        dead = [r for r, c in self._chains.items() if c.last_ts < cut]
        for r in dead:
            del self._chains[r]
        if gone or dead:
            for sig in list(self._by_sig):
                roots = self._by_sig[sig]
                roots.difference_update(dead)
                if not roots:
                    del self._by_sig[sig]
            self.stats.forgotten += len(gone)

    def process(self, batch: Sequence[Observation]) -> list[Observation]:
        """Rewrite ``device`` of observations from a rotated address to its chain's root subject."""
        if not batch:
            return []
        out: list[Observation] = []
        if self._pending:  # decide before labelling this batch (an old address in it still speaks)
            self._decide(batch[0].ts, {o.device for o in batch})
        ep = self._epoch
        # first sight of an address in this batch: gather its first advert (all sensors)
        fresh: dict[str, list[Observation]] = {}
        for o in batch:
            info = o.adv
            if info is None or not info.rotating:
                if info is not None:
                    self._touch_static(o)
                out.append(o)
                continue
            ts = o.ts
            if ep is None or not ep[1] <= ts < ep[2]:
                nb = self._bounds_of(ts)
                if ep is None or nb[0] > ep[0]:
                    if ep is not None:
                        self._reset()
                    ep = self._epoch = nb
                else:  # late observation from the previous period: never linked
                    out.append(o)
                    continue
            a = self._addr.get(o.device)
            if a is None:
                first = fresh.get(o.device)
                if first is None:
                    fresh[o.device] = [o]
                elif o.ts - first[0].ts < 0.05:
                    first.append(o)
                out.append(o)
                continue
            self._update(a, o)
            o.device = a.chain
            out.append(o)
        for subject, obs in fresh.items():
            self._first_sight(subject, obs)
            a = self._addr[subject]
            for o in obs:
                self._update(a, o)
        if self._pending:
            self._decide(batch[-1].ts)
        if batch[-1].ts >= self._next_prune:
            self._prune(batch[-1].ts)
        return out

    def take_relabelled(self) -> list[tuple[str, str]]:
        """(provisional subject, chain root) of links decided since the last call.

        The provisional subject was used for the new address's first adverts (about one advert
        interval, while the linker waited to see whether the old address really stopped); the
        pipeline makes the localizer and presence forget it, its later adverts carry the root.
        """
        out, self._relabelled = self._relabelled, []
        return out

    def _touch_static(self, o: Observation) -> None:
        """Non-rotating devices are their own chain (kind and span still wanted by presence)."""
        c = self._chains.get(o.device)
        if c is None:
            assert o.adv is not None
            self._chains[o.device] = ChainInfo(o.device, o.adv.kind, o.ts, o.ts, 1, o.device)
        elif o.ts > c.last_ts:
            c.last_ts = o.ts

    def _update(self, a: _Addr, o: Observation) -> None:
        ts = o.ts
        if ts - a.last_advert_ts > 0.05:  # a new advert (several sensors hear the same one)
            if a.count and ts > a.last_advert_ts:
                gap = ts - a.last_advert_ts
                if gap < 10 * a.interval:
                    a.interval = 0.8 * a.interval + 0.2 * gap if a.count > 1 else gap
            a.count += 1
            a.last_advert_ts = ts
            info = o.adv
            if info is not None:
                if info.seq is not None:
                    a.seq = info.seq
                if info.signature != a.signature:  # e.g. the user woke the phone: action code changed
                    a.signature = info.signature
                    self._by_sig.setdefault(info.signature, set()).add(a.chain)
        i = self._sensors.get(o.sensor)
        if i is None:
            i = self._sensors[o.sensor] = len(self._sensors)
        i += i
        lv = a.levels
        if len(lv) <= i:
            lv.extend(_NEVER * ((i + 2 - len(lv)) // 2))
        prev, last = lv[i], lv[i + 1]
        if last != last or ts - last > RECENT_S:  # NaN: never heard there
            lv[i] = o.rssi  # a sensor that had lost it starts afresh
        else:
            lv[i] = 0.5 * prev + 0.5 * o.rssi
        lv[i + 1] = ts
        if ts > a.last_ts:
            a.last_ts = ts
        c = self._chains[a.chain]
        if ts > c.last_ts:
            c.last_ts = ts
        if c.current != a.subject:
            # the old address of a linked chain speaks again: that link was wrong, undo it
            cur = self._addr.get(c.current)
            if cur is not None and cur.chain == a.chain and a.first_ts < cur.first_ts:
                self._detach(cur)

    def _detach(self, a: _Addr) -> None:
        self.stats.undone += 1
        old = self._chains[a.chain]
        old.current = next(
            (s for s, x in self._addr.items() if x.chain == a.chain and s != a.subject and x.last_ts == old.last_ts),
            old.root,
        )
        a.chain = a.subject
        self._chains[a.subject] = ChainInfo(a.subject, a.kind, a.first_ts, a.last_ts, 1, a.subject)
        self._by_sig.setdefault(a.signature, set()).add(a.subject)

    def _first_sight(self, subject: str, obs: list[Observation]) -> None:
        """A new address: a chain of its own for now, and the candidates it may continue.

        The decision waits about one and a half advert intervals of the candidates: a device that
        rotated has stopped using its old address, another device that only happened to be quiet
        for a moment speaks again in that time and drops out.
        """
        o0 = obs[0]
        info = o0.adv
        assert info is not None
        t = o0.ts
        self.stats.addresses += 1
        rssi = {o.sensor: o.rssi for o in obs}
        cands: list[tuple[str, str, float]] = []
        due = t
        roots = self._by_sig.get(info.signature, set())
        for root in list(roots):
            c = self._chains.get(root)
            if c is None:
                roots.discard(root)
                continue
            cur = self._addr.get(c.current)
            if cur is None:
                continue
            gap = t - cur.last_ts
            if gap > max(self.max_gap, 2.5 * cur.interval):
                if gap > 600.0:
                    roots.discard(root)  # long gone: no longer a candidate
                continue
            if gap < 0.3 * cur.interval or cur.count < 2 or cur.kind != info.kind:
                continue
            if cur.seq is not None and info.seq is not None and not (0 <= info.seq - cur.seq <= self.seq_window):
                continue
            dist = _distance(rssi, cur, self.min_shared, self._sensors)
            if dist is None or dist > self.tol + 2.0:
                continue
            d = dist
            if d > self.tol + 2.0:
                continue
            cands.append((root, cur.subject, d))
            due = max(due, cur.last_ts + 1.6 * cur.interval + 0.1)
        self._chains[subject] = ChainInfo(subject, info.kind, t, t, 1, subject)
        self._by_sig.setdefault(info.signature, set()).add(subject)
        self._addr[subject] = _Addr(subject, subject, info.signature, info.kind, t, t, seq=info.seq)
        if cands:
            self._pending[subject] = (min(due, t + self.max_gap), cands)
        else:
            self.stats.no_candidate += 1

    def _decide(self, now: float, speaking: set[str] | frozenset[str] = frozenset()) -> None:
        for subject, (due, cands) in list(self._pending.items()):
            if now < due:
                continue
            del self._pending[subject]
            a = self._addr.get(subject)
            if a is None or a.chain != subject:
                continue
            alive: list[tuple[float, str]] = []
            for root, old, d in cands:
                c = self._chains.get(root)
                cur = self._addr.get(old)
                # the old address must still be the chain's and must not have spoken since
                if c is None or cur is None or c.current != old or cur.last_ts >= a.first_ts - 0.02:
                    continue
                if old in speaking:
                    continue
                # the new address has been heard a little longer now: compare averages, not one advert
                dist = _distance(_rssi_of(a, self._sensors), cur, self.min_shared, self._sensors)
                if dist is not None:
                    d = dist
                if d > self.tol:
                    continue
                alive.append((d, root))
            alive.sort()
            if not alive:
                self.stats.no_candidate += 1
                continue
            if len(alive) > 1 and alive[1][0] - alive[0][0] < self.ambiguity:
                self.stats.ambiguous += 1
                continue
            root = alive[0][1]
            c = self._chains[root]
            previous = c.current
            stub = self._chains.pop(subject)
            self._by_sig.get(a.signature, set()).discard(subject)
            a.chain = root
            c.addresses += 1
            c.current = subject
            c.last_ts = max(c.last_ts, stub.last_ts)
            self.stats.links += 1
            self._relabelled.append((subject, root))
            if len(self.link_log) >= LINK_LOG_MAX:  # the latest links only (it grew all day: issue 22)
                del self.link_log[: LINK_LOG_MAX // 2]
            self.link_log.append((subject, previous))
