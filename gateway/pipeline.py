"""The pure core of the data path: observations in, wire events out. No I/O, time from the data.

    raw observations --identity--> subject observations --linker--> device observations
        --localizer--> fixes --presence--> events

The linker (``gateway/identity/linking.py``) joins the address rotations of one device without
its IRK, inside one pseudonym period, and tells presence what kind of device each subject is.

Event time is the observations' own ``ts``: fixes are computed on a fixed cadence
(``localization.fix_interval_s``) as observation time crosses each tick, so a replay at any speed
produces the same events as the live run did. ``advance(now)`` moves time forward when no
observation arrives (live sources), so visits still time out.

A tick over many devices (a live store at 25k obs/s ticks once a second over ~2,000) can be
computed in parts of ``localization.tick_chunk_devices``: each part's fixes go to presence at once
and the events so far to ``on_partial`` (the daemon hands them to the loop), so an activation waits
for its part of the tick, not for all of it. Off by default: each part pays the tick's fixed cost
again, so at 2,000 devices parts of 256 cost 2 % of a core more and finished the tick's last fixes
later (p99 of when a fix was ready 156 vs 132 ms of CPU after the tick started, median 58 vs 73 ms).

Load shedding: ``fix_stride`` (the daemon sets it from its queue's wait, ``pipeline.shed_after_s``)
computes fixes on every n-th tick only - at most ``localization.window_s`` apart, so an observation
is rarely too old for the next computed tick (at the cap a few are: 24 of 5,516 in 30 s at stride 3)
- and counts each tick skipped as ``fix_tick_shed``; the skipped ticks' observations go into the next
computed one, presence still ticks every interval. The fix ticks are ~83 % of this
thread's CPU at 25k obs/s (``python -m bench.bench_content --stages``), so they are what can give.
Catch-up shedding (``horizon``, the daemon's newest live event time waiting behind the call): a
tick whose successor is already due in observations received but not processed yet is shed the
same way and within the same bound - its fixes would be stale when done, and the tick that
supersedes them would wait behind it. Without a horizon (replays, ``gateway locate``) nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.identity.linking import RotationLinker
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.subjects import IdentityResolver
from gateway.identity.wifi_count import WifiCounter
from gateway.layout import Layout
from gateway.localization import Localizer, make_localizer
from gateway.models import AdvertInfo, EventBase, Fix, Observation, PositionFix, SubjectKind
from gateway.presence.engine import PresenceEngine

# event-time silence ticked through before the tick grid jumps ahead (far longer than any timeout)
MAX_TICK_GAP_S = 7200.0  # > presence.visit_timeout_s (at most 3600 s)


@dataclass
class PipelineStats:
    observations: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    fixes: int = 0
    events: dict[str, int] = field(default_factory=dict)
    last_fixes: list[Fix] = field(default_factory=list)


class IdentityStage:
    """Raw identifiers -> pseudonymous subjects. Linked addresses (``link``) share one subject."""

    def __init__(self, keyring: PseudonymKeyring) -> None:
        self._keys = keyring

    def resolve(self, batch: Sequence[Observation]) -> list[Observation]:
        pn = self._keys.pseudonym
        out = []
        for o in batch:
            o.device = pn(o.link or o.device, o.ts)
            if o.link is not None and o.adv is not None and o.adv.rotating:
                # resolved (IRK/consent): one subject already, nothing to link; the kind still counts
                o.adv = AdvertInfo(o.adv.kind, o.adv.signature, False, o.adv.seq)
            o.link = None
            out.append(o)
        return out

    def subject_kind(self, subject: str) -> SubjectKind:
        return "pseudonym"


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        *,
        identity: IdentityStage | IdentityResolver | None = None,
        localizer: Localizer | None = None,
        presence: PresenceEngine | None = None,
        on_fixes: Callable[[list[Fix]], None] | None = None,
        on_partial: Callable[[list[EventBase]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.identity: IdentityStage | IdentityResolver = identity or IdentityStage(
            PseudonymKeyring(
                rotation_time=settings.privacy.rotation_time,
                period_h=settings.privacy.rotation_period_h,
                nbytes=settings.privacy.pseudonym_bytes,
            )
        )
        self.localizer = localizer or make_localizer(layout, settings.localization)
        self.presence = presence or PresenceEngine(
            layout, settings.presence, settings.gateway.store_id, self.identity.subject_kind
        )
        self.linker: RotationLinker | None = None
        if settings.linking.enabled:
            # only the period boundaries are used, never a key
            bounds = PseudonymKeyring.from_settings(settings.privacy).epoch_bounds
            lk = settings.linking
            self.linker = RotationLinker(
                bounds, link_max_gap_s=lk.max_gap_s, rssi_tol_db=lk.rssi_tol_db, ambiguity_db=lk.ambiguity_db
            )
            self.presence.set_chain_info(self.linker.info)
        self._sensors = set(layout.sensor_index())
        self._interval = settings.localization.fix_interval_s
        self._next_tick: float | None = None
        self.now = -math.inf
        self.stats = PipelineStats()
        self._on_fixes = on_fixes
        # a long fix tick (localization.tick_chunk_devices) hands the events of each finished part
        # of it, and everything the call produced before, to ``on_partial`` at once
        self.on_partial = on_partial
        self._chunk = settings.localization.tick_chunk_devices
        # load shedding (the daemon sets it when its queue falls behind): fixes are computed on every
        # ``fix_stride``-th tick only; the ticks between are counted as ``fix_tick_shed`` and their
        # observations go into the next computed tick (presence still ticks every interval)
        self.fix_stride = 1
        # catch-up shedding (the daemon sets it for live input): the newest event time of the
        # observations already received and waiting behind this call; a tick whose successor is
        # already due in them is shed (within localization.window_s of the last computed one) -
        # its fixes would be stale when done and would hold up the tick that supersedes them
        self.horizon: Callable[[], float] | None = None
        self._max_stride = max(1, int(settings.localization.window_s / self._interval + 1e-9))
        self._last_fix_tick = -math.inf
        self._out: list[EventBase] = []  # the current call's events not handed on yet
        # event time each layout sensor was last heard (status page: a silent sensor is a fault)
        self.sensor_last_heard: dict[str, float] = {}
        # Wi-Fi devices present per minute / aggregate interval (docs/wifi.md, "Counting")
        self.wifi_count: WifiCounter | None = (
            WifiCounter(
                settings.gateway.store_id,
                window_s=settings.wifi.count_window_s,
                interval_s=settings.presence.aggregate_interval_s,
            )
            if settings.wifi.enabled
            else None
        )

    def process(self, batch: Sequence[Observation]) -> list[EventBase]:
        """Feed one time-ordered batch; return the events it completes."""
        events: list[EventBase] = []
        good: list[Observation] = []
        keep = good.append
        heard = self.sensor_last_heard
        sensors = self._sensors
        too_late = self.now - self.settings.localization.window_s
        for o in batch:  # the per-observation hot loop: locals only
            sensor, ts = o.sensor, o.ts
            if sensor not in sensors:
                self._drop("unknown_sensor")
            elif ts < too_late:
                self._drop("too_late")
            else:
                keep(o)
                if ts > heard.get(sensor, -math.inf):
                    heard[sensor] = ts
        if not good:
            return events
        self.stats.observations += len(good)
        if self._next_tick is None:
            self._next_tick = math.floor(good[0].ts / self._interval) * self._interval + self._interval
        resolved = self.identity.resolve(good)
        if not resolved:  # every observation dropped by identity (e.g. all of an opted-out phone)
            return events
        if self.linker is not None:
            resolved = self.linker.process(resolved)
            for stub, _root in self.linker.take_relabelled():
                # the new address's first adverts ran under a provisional subject: drop that stub
                self.localizer.forget(stub)
                self.presence.forget(stub)
        wc = self.wifi_count
        if wc is not None:
            for o in resolved:
                if o.radio == "wifi":
                    wc.heard(o.ts, o.device, o.presence)
        start = 0
        add = self.localizer.add
        next_tick = self._next_tick
        self._out = events
        for j, o in enumerate(resolved):
            if o.ts >= next_tick:
                add(resolved[start:j])
                start = j
                self._out += self._ticks_until(o.ts)
                next_tick = self._next_tick
        add(resolved[start:])
        self.now = max(self.now, resolved[-1].ts)
        events, self._out = self._out, []
        return events

    def advance(self, now: float) -> list[EventBase]:
        """Move event time to ``now`` without new observations (silence is information too)."""
        if self._next_tick is None or now < self._next_tick:
            return []
        self.now = max(self.now, now)
        self._out = []
        return self._ticks_until(now)

    def close(self) -> list[EventBase]:
        events = self.presence.close(self.now)
        if self.wifi_count is not None:
            events += self.wifi_count.close(self.now)
        return self._count(events)

    def _ticks_until(self, ts: float) -> list[EventBase]:
        events: list[EventBase] = []
        assert self._next_tick is not None
        gap_end: float | None = None
        if ts - self._next_tick > MAX_TICK_GAP_S:
            # a long silence (store closed) or a clock jump (NTP on a box without RTC): tick through
            # the first hour so every visit times out, then realign; never a tick per second of a day
            gap_end = ts
            ts = self._next_tick + MAX_TICK_GAP_S
        while self._next_tick <= ts:
            t = self._next_tick
            stride = min(self.fix_stride, self._max_stride)
            if (stride > 1 and t - self._last_fix_tick < (stride - 0.5) * self._interval) or self._superseded(t):
                self._drop("fix_tick_shed")
                fixes = []
            else:
                self._last_fix_tick = t
                fixes = self._tick_fixes(t, events)
            self.stats.fixes += len(fixes)
            if fixes:
                self.stats.last_fixes = fixes
                if self._on_fixes is not None:
                    self._on_fixes(fixes)
            events += self.presence.tick(t)
            if self.wifi_count is not None:
                self.wifi_count.located(fixes)
                events += self.wifi_count.tick(t)
            self._next_tick = t + self._interval
        if gap_end is not None:
            self._next_tick = math.floor(gap_end / self._interval) * self._interval + self._interval
        return self._count(events)

    def _superseded(self, t: float) -> bool:
        """The tick after ``t`` is already due in observations waiting behind this call (``horizon``)
        and the fixes stay at most ``localization.window_s`` apart if ``t`` is shed."""
        horizon = self.horizon
        return (
            horizon is not None
            and t - self._last_fix_tick < (self._max_stride - 0.5) * self._interval
            and horizon() >= t + self._interval
        )

    def _tick_fixes(self, t: float, events: list[EventBase]) -> list[Fix]:
        """One tick's fixes, fed to presence (their events appended to ``events``). A localizer that
        computes a tick in parts does so when ``tick_chunk_devices`` asks for it: each part's events
        go to ``on_partial`` at once, with everything this call produced before them."""
        if self._chunk <= 0 or self.on_partial is None:
            fixes = self.localizer.fixes(t)
            self._part(fixes, t, events)
            return fixes
        fixes = []
        for part in self.localizer.fixes_chunks(t, self._chunk):
            fixes += part
            self._part(part, t, events)
            if events or self._out:
                out = self._out + self._count(events)  # self._out: counted when it was returned
                self._out.clear()
                events.clear()
                self.on_partial(out)
        return fixes

    def _part(self, fixes: list[Fix], t: float, events: list[EventBase]) -> None:
        if fixes and self.settings.presence.publish_fixes:
            events += [self._fix_event(f) for f in fixes]
        events += self.presence.update(fixes, t)

    def _fix_event(self, f: Fix) -> PositionFix:
        return PositionFix(
            ts=f.ts,
            store_id=self.settings.gateway.store_id,
            subject=f.device,
            subject_kind=self.identity.subject_kind(f.device),
            x=round(f.x, 2),
            y=round(f.y, 2),
            sigma_m=round(f.sigma_m, 2),
            zone=f.zone,
        )

    def _count(self, events: list[EventBase]) -> list[EventBase]:
        for e in events:
            t = str(getattr(e, "type", "?"))
            self.stats.events[t] = self.stats.events.get(t, 0) + 1
        return events

    def _drop(self, reason: str) -> None:
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
