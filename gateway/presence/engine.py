"""Presence: fixes -> zone sessions, visits, passer-by vs visitor, anonymous aggregates.

Pure (time is an argument; no I/O, no clock). Input is a stream of ``Fix`` whose ``device`` is
already a *subject* (pseudonym or consented customer ref, see ``gateway/identity/subjects.py``).

Model, per subject:

* **Zone sessions with hysteresis.** A fix in a zone other than the confirmed one makes that zone
  a *candidate*; the candidate is confirmed once fixes have stayed off the confirmed zone for
  ``enter_debounce_s`` (into a zone) or ``exit_debounce_s`` (into no zone). A fix back in the
  confirmed zone cancels the candidate, so boundary noise does not create sessions. Transitions
  are **backdated** to the first fix of the candidate: dwell is measured from when the person
  really crossed, not from when we became sure. Leaving the store, the ``outside`` zones and no
  zone are one way out (fixes beyond the glass alternate between the pavement and off the plan),
  and a return to the zone shorter than ``exit_debounce_s`` does not restart it: the exit is
  backdated to the first fix out of the store. In-store zones that were candidates for less
  than the debounce *on the way* into or out of the store (the entrance, walked through in a
  second or two) get their time and their zone events when the next transition is confirmed
  (``_transit``); between two in-store zones such a pass is not a zone visit (its time goes to
  the zone walked to), and a candidate followed by a return to the confirmed zone was noise and
  gets nothing. A door zone (kind ``entrance``) entered from an in-store zone must hold for
  ``door_debounce_s`` (4 s) instead: a door is walked through, and a shopper standing beside it
  (kiosk-small's ``cases`` wraps its door on three sides) has fixes straying into it for a few
  seconds; walking out, those seconds still go to the door (``_transit``) once the exit is seen.
* **Visit** = a span of presence in the store's in-store zones (every zone whose kind is not
  ``outside``). It starts at the first in-store zone entry and ends at the last in-store zone exit
  once the subject has been out of the store (or silent) for ``visit_timeout_s``.
* **Visitor vs passer-by.** A visit becomes a *visitor* visit when the subject is in an in-store
  zone that is not the entrance (once the visit has lasted ``visitor_confirm_s``: a passer-by's
  position estimate strays a few metres into the shop for a few seconds), or stays at the entrance
  for ``visitor_min_s`` in total. Only
  then are its ``visit.started`` (backdated) and zone events emitted; a visit that never
  qualifies, and a subject seen only outside (a confirmed ``outside`` zone), yields one
  ``visit.ended`` with ``visitor=false`` (if ``report_passers_by``) and nothing else - people
  who never enter the shop produce no per-zone trail at all (data minimisation).
* **Residents.** Staff, fixtures and neighbours are set apart: a subject whose device kind (from the
  rotation linker, ``set_chain_info``) is a beacon, sensor, fixture or handheld scanner never
  starts a visit; a linked device present for ``resident_after_s`` (its address rotations joined)
  is a resident from then on: an open visit is closed with ``resident=true`` (not a visitor).
  A visit longer than ``max_visit_s`` also makes its subject a resident. Residents are counted in
  ``stats``, in ``residents()`` (status page) and in the aggregates' ``residents``.
* **Companions.** A tracker, earbuds, wearable or accessory within ``companion_radius_m`` of a phone
  when its visit would qualify moves with that phone: it is not an extra visitor (a tag alone, with
  no phone near it, still counts: many Android phones do not advertise).
* **Orphans (position continuity).** A subject whose first fix is deep in the store (not at the
  entrance, a shop front or outside) did not walk in: it is a device already inside whose address
  rotation the linker could not join (or one just switched on). Its visit does not qualify for
  ``ORPHAN_WAIT_S``; if in that time another subject of the same device kind went silent within
  ``ORPHAN_RADIUS_M`` of where the orphan is, the orphan continues that subject (its fixes are
  attributed to it; ``stats.merges``), else it is a track of its own. A resident is such a subject
  too, and a new subject first fixed anywhere off the pavement (a first fix is one advert's and may
  be off the plan) just as a resident of its kind fell silent is an orphan: a staff phone's missed
  rotation stays set apart (it was counted as a visitor in every bench_store seed-3 run).
* **Clearly inside.** A visit qualifies only once the subject has been seen for ``visitor_deep_s``
  farther than ``front_margin_m`` from any ``outside`` zone: a passer-by walking close to the glass
  has fixes just inside it, seldom metres inside for long.
* **Shop fronts.** Zones of kind ``front``, and every in-store zone that borders an ``outside``
  zone, (window displays along the pavement) qualify a visit only
  after ``visitor_min_s`` there, like the entrance: a passer-by's fix that strays across the shop
  front for a few seconds does not make a visitor.
* **Aggregates** per ``aggregate_interval_s`` (aligned to Unix time), for the store and per zone:
  distinct visitors and passers-by whose visit *ended* in the interval, conversion, and a dwell
  histogram. Published only when the distinct subjects are at least ``k_anonymity``; an interval
  is published once no visit ending in it can still be detected (``visit_timeout_s`` + debounces).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.config import PresenceSettings
from gateway.identity.linking import COMPANION_KINDS, RESIDENT_KINDS, ChainInfo
from gateway.layout import Layout, Zone, zone_index
from gateway.models import (
    Aggregate,
    EventBase,
    Fix,
    SubjectKind,
    VisitEnded,
    VisitStarted,
    ZoneEntered,
    ZoneLeft,
)
from gateway.presence.qualification import Qualifier, VisitRecord

_FAR = math.inf
ORPHAN_WAIT_S = 20.0  # how long an orphan waits for a vanished track to continue
ORPHAN_RADIUS_M = 2.5  # how far from where that track was last seen it may appear
ORPHAN_SILENCE_S = 2.0  # a track silent this long (while the orphan speaks) has stopped
ORPHAN_BEFORE_S = 6.0  # a track that stopped at most this long before the orphan's first fix
RESIDENT_GONE_S = 10.0  # a resident silent this long (while the orphan speaks) may have rotated
MERGE_LOG_MAX = 2000  # merges kept in ``merge_log`` (a measuring aid for bench_store: 0.4 MB at most)
VECTOR_MIN = 32  # batches of at least this many fixes test the shop-front margin on arrays
MAX_TRANSIT = 8  # unconfirmed zones remembered between two confirmed ones (a corner's flicker)
_NO = "\x00no-candidate"  # sentinel: no candidate zone (None is a valid candidate: "no zone")


def _borders(a: Zone, b: Zone, tol: float = 0.3) -> bool:
    """Do two zones' polygons touch (a point of one's boundary within ``tol`` of the other)?"""
    pa = np.asarray(a.polygon, dtype=np.float64)
    pb = np.asarray(b.polygon, dtype=np.float64)
    pts = []
    for i in range(len(pa)):
        p0, p1 = pa[i], pa[(i + 1) % len(pa)]
        n = max(2, int(np.hypot(*(p1 - p0)) / 0.25))
        pts.append(p0 + (p1 - p0) * np.linspace(0, 1, n)[:, None])
    q = np.concatenate(pts)
    best = np.full(len(q), np.inf)
    for i in range(len(pb)):
        p0, p1 = pb[i], pb[(i + 1) % len(pb)]
        d = p1 - p0
        ll = float(d @ d) or 1.0
        t = np.clip(((q - p0) @ d) / ll, 0.0, 1.0)
        e = p0 + t[:, None] * d - q
        best = np.minimum(best, np.hypot(e[:, 0], e[:, 1]))
    return bool((best <= tol).any())


@dataclass(slots=True)
class _Visit:
    start: float
    last_in: float
    visitor: bool = False
    entrance_s: float = 0.0
    path: list[str] = field(default_factory=list)
    dwell: dict[str, float] = field(default_factory=dict)
    pending: list[EventBase] = field(default_factory=list)


@dataclass(slots=True)
class _Track:
    first_seen: float
    last_seen: float
    zone: str | None = None
    zone_since: float = 0.0
    cand: str | None = _NO
    cand_since: float = 0.0
    clear_since: float = 0.0
    visit: _Visit | None = None
    had_visit: bool = False
    outside_seen: list[str] = field(default_factory=list)
    resident: bool = False
    companion: bool = False
    x: float = 0.0
    y: float = 0.0
    orphan_until: float = -math.inf  # an orphan waits until then for a vanished track to continue
    resident_only: bool = False  # an orphan that may continue a resident only
    deep_s: float = 0.0  # time seen clearly inside (farther than front_margin_m from the pavement)
    last_inside: float = -math.inf  # time of the newest fix inside an in-store zone
    near_phone: int = 0  # ticks a companion-kind device was next to a phone / ticks checked
    near_checks: int = 0
    transit: list[tuple[str, float]] = field(default_factory=list)  # unconfirmed in-store zones passed
    # leaving the store: first fix of an exit that a return shorter than exit_debounce_s interrupted
    # (fixes flickering across the glass), and the first fix of that return
    leave_since: float | None = None
    back_since: float = 0.0


@dataclass(slots=True)
class PresenceStats:
    fixes: int = 0
    late_fixes: int = 0
    visits_started: int = 0
    visits_ended: int = 0
    passers_by: int = 0
    residents: int = 0
    companions: int = 0
    merges: int = 0
    aggregates_published: int = 0
    aggregates_withheld: int = 0


class PresenceEngine:
    def __init__(
        self,
        layout: Layout,
        settings: PresenceSettings,
        store_id: str,
        subject_kind: Callable[[str], SubjectKind] | None = None,
        *,
        qualifier: Qualifier | None = None,
    ) -> None:
        self._layout = layout
        self._s = settings
        self.store_id = store_id
        self.qualifier = qualifier if qualifier is not None else Qualifier()
        self._kind_of_subject = subject_kind or (lambda _s: "pseudonym")
        self._zone_kind = {z.id: z.kind for z in layout.zones}
        self._in_store = {z.id for z in layout.zones if z.kind != "outside"}
        # zones where a visit qualifies only after visitor_min_s: the door, the shop front (a zone of
        # kind "front" or any in-store zone that borders an outside zone: a pavement's fixes stray in)
        outside = [z for z in layout.zones if z.kind == "outside"]
        self._entrances = {
            z.id
            for z in layout.zones
            if z.kind in ("entrance", "front")
            or (settings.front_from_outside and z.kind != "outside" and any(_borders(z, o) for o in outside))
        }
        self._edge_zones = self._entrances | {z.id for z in layout.zones if z.kind == "outside"}
        self._doors = {z.id for z in layout.zones if z.kind == "entrance"}
        self._outside_ids = [z.id for z in outside]
        self._outside = frozenset(self._outside_ids)
        self.alias: dict[str, str] = {}  # orphan subject -> the subject whose visit it continues
        # (orphan, the subject it continues) of the latest merges, for measuring; bounded: never
        # cleared, it grew by ~5,000 a day at 500 devices (issue 22)
        self.merge_log: deque[tuple[str, str]] = deque(maxlen=MERGE_LOG_MAX)
        self._chain_info: Callable[[str], ChainInfo | None] | None = None
        self._residents: dict[str, str] = {}  # subject -> kind, this pseudonym period
        self._tracks: dict[str, _Track] = {}
        self._edges: dict[str, list[tuple[float, float, float, float, float]]] = {}
        for zn in layout.zones:
            pts = list(zn.polygon)
            segs = []
            for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
                dx, dy = x2 - x1, y2 - y1
                ll = dx * dx + dy * dy
                segs.append((x1, y1, dx, dy, 1.0 / ll if ll else 0.0))
            self._edges[zn.id] = segs
        # interval index -> scope (None = store, else zone id) -> [(subject, visitor, dwell_s)]
        self._buckets: dict[int, dict[str | None, list[tuple[str, bool, float]]]] = {}
        self._resident_rows: dict[int, set[str]] = {}
        self._bins = list(settings.dwell_bins_s)
        self._bin_labels = self._make_bin_labels(self._bins)
        self._grace = settings.visit_timeout_s + settings.enter_debounce_s + settings.exit_debounce_s
        self.stats = PresenceStats()

    # -- public API ------------------------------------------------------------------------------

    def set_chain_info(self, info: Callable[[str], ChainInfo | None]) -> None:
        """What the rotation linker knows of a subject (device kind, span of its linked addresses)."""
        self._chain_info = info

    def residents(self) -> dict[str, str]:
        """Subjects set apart as residents in this pseudonym period -> why (device kind or 'all-day')."""
        return dict(self._residents)

    def _resident_kind(self, dev: str, now: float) -> str | None:
        if self._chain_info is None:
            return None
        c = self._chain_info(dev)
        if c is not None:
            if c.kind in RESIDENT_KINDS:
                return c.kind
            if c.last_ts - c.first_ts >= self._s.resident_after_s:
                return "all-day"
        # the track's own span: an orphan merged into it (a rotation the linker missed) keeps it
        # going while its chain (forgotten by the linker once silent) and the new one are each
        # shorter than resident_after_s
        tr = self._tracks.get(dev)
        if tr is not None and tr.last_seen - tr.first_seen >= self._s.resident_after_s:
            return "all-day"
        return None

    def _make_resident(self, dev: str, tr: _Track, why: str, now: float, out: list[EventBase]) -> None:
        if tr.visit is not None:
            self._end_visit(dev, tr, min(now, tr.last_seen), out, resident=True)
        tr.resident = True
        self._residents[dev] = why
        self.stats.residents += 1

    @property
    def open_visits(self) -> int:
        return sum(1 for t in self._tracks.values() if t.visit is not None and t.visit.visitor)

    def current_zones(self) -> dict[str, str | None]:
        """Confirmed zone of every visitor currently in a visit (status page, content rules)."""
        return {s: t.zone for s, t in self._tracks.items() if t.visit is not None and t.visit.visitor}

    def zones_for(self, xy: np.ndarray) -> list[str | None]:
        """Zone id for each row of an (N, 2) array of positions (first matching zone, or None)."""
        if len(xy) == 0:
            return []
        ids = [z.id for z in self._layout.zones]
        return [ids[i] if i >= 0 else None for i in zone_index(self._layout, np.asarray(xy, dtype=np.float64)).tolist()]

    def update(self, fixes: Sequence[Fix], now: float) -> list[EventBase]:
        """Feed fixes (per subject in time order); returns the events they caused.

        Fixes older than the subject's last fix are counted (``stats.late_fixes``) and ignored for
        transitions. Timeouts happen in ``tick`` (``now`` is accepted for the pipeline's signature).
        """
        out: list[EventBase] = []
        tracks = self._tracks
        enter_d = self._s.enter_debounce_s
        exit_d = self._s.exit_debounce_s
        door_d = self._s.door_debounce_s
        doors = self._doors
        hyst = self._s.zone_hysteresis_m
        inside = self._in_store
        late = 0
        alias = self.alias
        margin = self._s.front_margin_m
        near_out = self._near_outside(fixes, margin) if self._outside_ids and len(fixes) >= VECTOR_MIN else None
        for i, f in enumerate(fixes):
            dev = alias.get(f.device, f.device)
            ts = f.ts
            z = f.zone
            tr = tracks.get(dev)
            if tr is None:
                tr = tracks[dev] = _Track(ts, ts, cand=z, cand_since=ts, clear_since=ts, x=f.x, y=f.y)
                why = self._resident_kind(dev, ts)
                if why is not None or dev in self._residents:
                    self._make_resident(dev, tr, why or self._residents[dev], ts, out)
                elif self._chain_info is not None and z not in self._outside:
                    if z is not None and z not in self._edge_zones:
                        tr.orphan_until = ts + ORPHAN_WAIT_S  # deep in the store: it did not walk in
                    elif self._resident_near_in_time(dev, ts):
                        # a first fix is one advert's (anywhere off the pavement): a resident of its
                        # kind that falls silent now may have rotated; it may continue only a resident
                        tr.orphan_until = ts + ORPHAN_WAIT_S
                        tr.resident_only = True
            elif ts < tr.last_seen:
                late += 1
                continue
            if z in inside:
                tr.last_inside = ts
                if not (
                    self._outside_ids
                    and (
                        near_out[i]
                        if near_out is not None
                        else any(self._near(o, f.x, f.y, margin) for o in self._outside_ids)
                    )
                ):
                    gap = ts - tr.last_seen
                    tr.deep_s += (2.0 if gap > 2.0 else gap) if ts > tr.first_seen else 1.0
            tr.last_seen = ts
            tr.x = f.x
            tr.y = f.y
            if tr.resident:
                continue
            cur = tr.zone
            if z == cur:
                if tr.cand != _NO and tr.cand not in inside and cur in inside:
                    # back from an exit not yet confirmed: if the way out resumes within the exit
                    # debounce, the exit began at this attempt's first fix, not at the resumption
                    if tr.leave_since is None:
                        tr.leave_since = tr.cand_since
                    tr.back_since = ts
                tr.cand = _NO
                tr.transit.clear()
                continue
            if z != tr.cand:
                if tr.cand != _NO and tr.cand in inside:  # an in-store zone passed on the way
                    if len(tr.transit) >= MAX_TRANSIT:
                        del tr.transit[0]
                    tr.transit.append((tr.cand, tr.cand_since))
                # still on the way out, the pavement and no zone (a fix off the plan) alternate; each
                # switch restarted the exit, so a visitor left at the last one (the glass shop's
                # entrance read +19 % in bench_store seed 2): they are one candidate, "out"
                leaving = cur in inside and z not in inside and tr.cand != _NO and tr.cand not in inside
                tr.cand = z
                if not leaving:
                    tr.cand_since = tr.clear_since = ts
                if tr.leave_since is not None and z not in inside:
                    if ts - tr.back_since < exit_d:
                        tr.cand_since = tr.leave_since  # a flicker back in: the exit began before it
                    else:
                        tr.leave_since = None  # it stayed: that attempt was not an exit
            if z in inside:
                if ts - tr.cand_since >= (door_d if z in doors and cur in inside else enter_d):
                    self._transit(dev, tr, out)
                    self._transition(dev, tr, z, tr.cand_since, out)
            elif cur in inside and hyst > 0.0 and self._near(cur, f.x, f.y, hyst):
                tr.clear_since = _FAR  # leaving the store, but still within the band: not clear yet
            else:
                if tr.clear_since == _FAR:
                    tr.clear_since = ts
                if ts - tr.clear_since >= exit_d:
                    self._transit(dev, tr, out)
                    self._transition(dev, tr, z, tr.cand_since, out)
        self.stats.fixes += len(fixes)
        self.stats.late_fixes += late
        return out

    def tick(self, now: float) -> list[EventBase]:
        """Time-driven work: visit timeouts, silent subjects, entrance qualification, aggregates."""
        out: list[EventBase] = []
        s = self._s
        timeout = s.visit_timeout_s
        self._resolve_orphans(now, out)
        chain = self._chain_info is not None  # without it no companion or resident kind is known
        in_store = self._in_store
        max_visit = s.max_visit_s
        for dev, tr in list(self._tracks.items()):
            silent = now - tr.last_seen >= timeout
            if chain:
                if now - tr.last_seen < 1.5 and not tr.resident and self._companion_kind(dev):
                    tr.near_checks += 1
                    if self._moves_with_phone(dev):
                        tr.near_phone += 1
                if not tr.resident:
                    why = self._resident_kind(dev, now)
                    if why is not None:
                        self._make_resident(dev, tr, why, now, out)
            v = tr.visit
            if v is not None:
                if silent:
                    self._end_visit(dev, tr, tr.last_seen, out)
                elif tr.zone not in in_store and now - v.last_in >= timeout:
                    self._end_visit(dev, tr, v.last_in, out)
                elif now - v.start >= max_visit:
                    self._make_resident(dev, tr, "long-visit", now, out)
                elif v.visitor:
                    pass  # qualified already: the common case
                elif (
                    tr.zone in self._in_store
                    and tr.zone not in self._entrances
                    and min(now, tr.last_inside) - v.start >= s.visitor_confirm_s
                ) or (
                    not v.visitor
                    and tr.zone in self._entrances
                    # time actually seen inside: a passer-by walking along the glass stays in the
                    # hysteresis band of a front zone without being in it
                    and v.entrance_s + (min(now, tr.last_inside) - tr.zone_since) >= s.visitor_min_s
                ):
                    self._qualify(dev, v, out)
            if silent:
                if not tr.had_visit and not tr.resident and tr.outside_seen:
                    self._street_passer_by(dev, tr, out)
                del self._tracks[dev]
                if self.alias:
                    for k in [k for k, tgt in self.alias.items() if tgt == dev]:
                        del self.alias[k]
        self._publish_aggregates(now, out, final=False)
        return out

    def close(self, now: float) -> list[EventBase]:
        """End every open visit (shutdown) and publish every pending aggregate, partial included.

        Aggregates are additive: after a restart the platform may receive a second aggregate for
        the same ``interval_start`` and must sum them.
        """
        out: list[EventBase] = []
        for dev, tr in list(self._tracks.items()):
            v = tr.visit
            if v is not None:
                end = tr.last_seen if tr.zone in self._in_store else v.last_in
                self._end_visit(dev, tr, min(end, now), out)
            elif not tr.had_visit and not tr.resident and tr.outside_seen:
                self._street_passer_by(dev, tr, out)
        self._tracks.clear()
        self._publish_aggregates(now, out, final=True)
        return out

    def forget(self, subject: str) -> None:
        """Erase everything held about ``subject`` (opt-out): no event is emitted for it."""
        self._tracks.pop(subject, None)
        self._residents.pop(subject, None)
        for k in [k for k, v in self.alias.items() if v == subject or k == subject]:
            self._tracks.pop(k, None)
            del self.alias[k]
        self.qualifier.forget(subject)
        for scopes in self._buckets.values():
            for scope, rows in scopes.items():
                scopes[scope] = [r for r in rows if r[0] != subject]

    def _near_outside(self, fixes: Sequence[Fix], band: float) -> list[bool]:
        """``_near(o, f.x, f.y, band)`` for any outside zone ``o``, for every fix at once: the same
        float operations in the same order, on arrays (a per-fix Python loop cost half the stage)."""
        n = len(fixes)
        x = np.array([f.x for f in fixes], dtype=np.float64)
        y = np.array([f.y for f in fixes], dtype=np.float64)
        hit = np.zeros(n, dtype=bool)
        b2 = band * band
        for o in self._outside_ids:
            for x1, y1, dx, dy, inv in self._edges.get(o, ()):
                t = np.clip(((x - x1) * dx + (y - y1) * dy) * inv, 0.0, 1.0)
                ex = x1 + t * dx - x
                ey = y1 + t * dy - y
                hit |= ex * ex + ey * ey <= b2
        out: list[bool] = hit.tolist()
        return out

    def _near(self, zone: str, x: float, y: float, band: float) -> bool:
        """Is (x, y) within ``band`` metres of ``zone``'s boundary (inside or out)?"""
        edges = self._edges.get(zone)
        if edges is None:
            return False
        b2 = band * band
        for x1, y1, dx, dy, inv in edges:
            t = ((x - x1) * dx + (y - y1) * dy) * inv
            t = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
            ex = x1 + t * dx - x
            ey = y1 + t * dy - y
            if ex * ex + ey * ey <= b2:
                return True
        return False

    # -- zone sessions -----------------------------------------------------------------------------

    def _transit(self, dev: str, tr: _Track, out: list[EventBase]) -> None:
        """Before a confirmed transition: give the in-store zones passed on the way their time.

        Walking from the street through the entrance to an aisle (or back out) the fixes are in
        the entrance for a second or two, less than the debounce: without this the entrance time
        went to the aisle (leaving) or to no visit at all (arriving). Only when walking in or out
        (an in-store zone on one side of the transition, the street or no zone on the other): a
        passer-by's stray through a window between two street fixes is not one, and an aisle
        crossed in a second between two aisles is not a zone visit (the presence bench's zone
        visit counts went 3.2 % -> 8.7 % off when it was: a stay is what a zone visit means, and
        ``zone.entered`` campaigns fired for a second's pass). Such a pass belongs to the zone
        walked to: the previous zone was left when the pass began (the transition is backdated
        there), else the entrance kept the seconds of every aisle crossed on the way in (+7.5 %).
        """
        steps, tr.transit = tr.transit, []
        if steps and ((tr.zone in self._in_store) != (tr.cand in self._in_store)):
            cand, since = tr.cand, tr.cand_since
            for zone, t in steps:
                self._transition(dev, tr, zone, t, out)
            tr.cand, tr.cand_since = cand, since
        elif steps and tr.zone in self._in_store and tr.cand in self._in_store:
            tr.cand_since = min(tr.cand_since, steps[0][1])

    def _transition(self, dev: str, tr: _Track, new: str | None, t: float, out: list[EventBase]) -> None:
        old = tr.zone
        in_store = self._in_store
        v = tr.visit
        if old is not None and old in in_store and v is not None:
            dwell = max(0.0, t - tr.zone_since)
            v.dwell[old] = v.dwell.get(old, 0.0) + dwell
            if old in self._entrances:
                v.entrance_s += dwell
            v.last_in = t
            self._emit(v, self._zone_left(dev, t, old, dwell), out)
            if not v.visitor and v.entrance_s >= self._s.visitor_min_s:
                self._qualify(dev, v, out)
        tr.zone = new
        tr.zone_since = t
        tr.cand = _NO
        tr.leave_since = None
        if new is None:
            return
        if new in in_store:
            if v is not None and old not in in_store and t - v.last_in >= self._s.visit_timeout_s:
                self._end_visit(dev, tr, v.last_in, out)
                v = None
            if v is None:
                v = tr.visit = _Visit(start=t, last_in=t)
                tr.had_visit = True
            v.path.append(new)
            v.last_in = t
            self._emit(
                v, ZoneEntered(ts=t, store_id=self.store_id, subject=dev, subject_kind=self._sk(dev), zone=new), out
            )
            if not v.visitor and new not in self._entrances and t - v.start >= self._s.visitor_confirm_s:
                self._qualify(dev, v, out)
        elif not tr.outside_seen or tr.outside_seen[-1] != new:
            tr.outside_seen.append(new)

    def _emit(self, v: _Visit, ev: EventBase, out: list[EventBase]) -> None:
        if v.visitor:
            out.append(ev)
        else:
            v.pending.append(ev)

    def _resident_near_in_time(self, dev: str, ts: float) -> bool:
        """Has a resident of ``dev``'s device kind spoken in the seconds before ``ts``?"""
        if self._chain_info is None or not self._residents:
            return False
        info = self._chain_info(dev)
        if info is None:
            return False
        for other in self._residents:  # few (staff, fixtures): not every track
            ot = self._tracks.get(other)
            if ot is not None and ot.resident and other != dev and ts - ORPHAN_BEFORE_S <= ot.last_seen <= ts:
                oi = self._chain_info(other)
                if oi is not None and oi.kind == info.kind:
                    return True
        return False

    def _resolve_orphans(self, now: float, out: list[EventBase]) -> None:
        """Let each waiting orphan continue a track of the same kind that stopped where it appeared."""
        if self._chain_info is None:
            return
        tracks = self._tracks
        r2 = ORPHAN_RADIUS_M**2
        for dev, tr in list(tracks.items()):
            if tr.orphan_until == -math.inf:
                continue
            info = self._chain_info(dev)
            kind = info.kind if info is not None else None
            best: tuple[float, str] | None = None
            for other, ot in tracks.items():
                # a resident's rotation the linker missed continues the resident (staff, fixtures)
                if other == dev or ot.orphan_until != -math.inf or (tr.resident_only and not ot.resident):
                    continue
                if not (tr.first_seen - ORPHAN_BEFORE_S <= ot.last_seen <= tr.last_seen - ORPHAN_SILENCE_S):
                    continue
                if ot.last_seen > tr.first_seen + 5.0:  # spoke long after the orphan appeared: not it
                    continue
                if ot.resident and now - ot.last_seen < RESIDENT_GONE_S:
                    continue  # a staff phone is silent a few seconds now and then: it must be gone
                oi = self._chain_info(other)
                if oi is None or oi.kind != kind:
                    continue
                d2 = (ot.x - tr.x) ** 2 + (ot.y - tr.y) ** 2
                if d2 <= r2 and (best is None or d2 < best[0]):
                    best = (d2, other)
            if best is not None:
                old = best[1]
                self.alias[dev] = old
                for k, tgt in list(self.alias.items()):
                    if tgt == dev:
                        self.alias[k] = old
                ot = tracks[old]
                ot.last_seen = max(ot.last_seen, tr.last_seen)
                ot.x, ot.y = tr.x, tr.y
                del tracks[dev]
                self.stats.merges += 1
                self.merge_log.append((dev, old))
            elif now >= tr.orphan_until:
                tr.orphan_until = -math.inf  # a device of its own: qualifies like any other (tick)
                tr.resident_only = False

    def _companion_kind(self, dev: str) -> bool:
        if self._chain_info is None:
            return False
        c = self._chain_info(dev)
        return c is not None and c.kind in COMPANION_KINDS

    def _is_companion(self, dev: str, tr: _Track) -> bool:
        """Moved with a phone most of the time it was seen (or, seen too briefly, right now)."""
        if tr.companion:
            return True
        if tr.near_checks >= 3:
            return tr.near_phone * 2 >= tr.near_checks
        return self._moves_with_phone(dev)

    def _moves_with_phone(self, dev: str) -> bool:
        """Is ``dev`` a tracker/earbuds/wearable right next to a phone (the phone is the visitor)?"""
        if self._chain_info is None:
            return False
        c = self._chain_info(dev)
        if c is None or c.kind not in COMPANION_KINDS:
            return False
        me = self._tracks.get(dev)
        if me is None:
            return False
        r2 = self._s.companion_radius_m**2
        for other, tr in self._tracks.items():
            if other == dev or tr.resident or abs(tr.last_seen - me.last_seen) > 5.0:
                continue
            oc = self._chain_info(other)
            if oc is not None and oc.kind in ("phone", "computer") and (tr.x - me.x) ** 2 + (tr.y - me.y) ** 2 <= r2:
                return True
        return False

    def _qualify(self, dev: str, v: _Visit, out: list[EventBase]) -> None:
        tr = self._tracks.get(dev)
        if tr is not None and tr.orphan_until != -math.inf:
            return  # an orphan waits: it may continue a visit already counted
        if tr is not None and tr.deep_s < self._s.visitor_deep_s:
            return  # not yet seen clearly inside: a passer-by's estimate strays across the shop front
        if tr is not None and self._is_companion(dev, tr):
            if not tr.companion:
                tr.companion = True
                self.stats.companions += 1
            return
        v.visitor = True
        self.stats.visits_started += 1
        out.append(VisitStarted(ts=v.start, store_id=self.store_id, subject=dev, subject_kind=self._sk(dev)))
        out.extend(v.pending)
        v.pending = []

    def _end_visit(self, dev: str, tr: _Track, end: float, out: list[EventBase], *, resident: bool = False) -> None:
        v = tr.visit
        if v is None:
            return
        if tr.zone in self._in_store and tr.zone is not None:  # still inside: close the zone at `end`
            z = tr.zone
            zd = max(0.0, end - tr.zone_since)
            v.dwell[z] = v.dwell.get(z, 0.0) + zd
            if z in self._entrances:
                v.entrance_s += zd
            self._emit(v, self._zone_left(dev, end, z, zd), out)
            tr.zone = None
            tr.zone_since = end
            tr.cand = _NO
            tr.leave_since = None
            if not v.visitor and v.entrance_s >= self._s.visitor_min_s and not resident:
                self._qualify(dev, v, out)
        tr.visit = None
        tr.transit.clear()
        end = max(end, v.start)
        duration = end - v.start
        dwell = {z: round(d, 3) for z, d in v.dwell.items()}
        kind = self._sk(dev)
        if resident:
            # it turned out to be staff / a fixture: close what went out, count it as no visit
            if v.visitor:
                self.stats.visits_started -= 1
                out.append(
                    VisitEnded(
                        ts=end,
                        store_id=self.store_id,
                        subject=dev,
                        subject_kind=kind,
                        started_ts=v.start,
                        duration_s=duration,
                        visitor=False,
                        resident=True,
                    )
                )
            self._count(end, dev, False, duration, {}, resident=True)
            return
        if tr.companion or (not v.visitor and self._companion_kind(dev) and self._is_companion(dev, tr)):
            if not tr.companion:
                tr.companion = True
                self.stats.companions += 1
            self._count(end, dev, False, duration, {}, resident=False, companion=True)
            return
        if v.visitor:
            self.stats.visits_ended += 1
        else:
            self.stats.passers_by += 1
        if v.visitor or self._s.report_passers_by:
            # frequency / recurrence only for visitors: a passer-by is not a customer visit
            q = self.qualifier.qualify(VisitRecord(dev, kind, v.start, end, dwell)) if v.visitor else None
            out.append(
                VisitEnded(
                    ts=end,
                    store_id=self.store_id,
                    subject=dev,
                    subject_kind=kind,
                    started_ts=v.start,
                    duration_s=duration,
                    visitor=v.visitor,
                    path=v.path,
                    dwell_by_zone=dwell,
                    **(
                        {
                            "visit_count": q.visit_count,
                            "days_since_last_visit": q.days_since_last_visit,
                            "avg_visit_s": q.avg_visit_s,
                            "visits_per_week": q.visits_per_week,
                            "zone_affinity": q.zone_affinity,
                        }
                        if q is not None
                        else {}
                    ),
                )
            )
        self._count(end, dev, v.visitor, duration, dwell)

    def _street_passer_by(self, dev: str, tr: _Track, out: list[EventBase]) -> None:
        if self._companion_kind(dev) and self._is_companion(dev, tr):
            self.stats.companions += 1
            return  # a tag or earbuds going by with a phone: the phone is the passer-by
        self.stats.passers_by += 1
        end = tr.last_seen
        if self._s.report_passers_by:
            out.append(
                VisitEnded(
                    ts=end,
                    store_id=self.store_id,
                    subject=dev,
                    subject_kind=self._sk(dev),
                    started_ts=tr.first_seen,
                    duration_s=max(0.0, end - tr.first_seen),
                    visitor=False,
                    path=list(tr.outside_seen),
                )
            )
        self._count(end, dev, False, max(0.0, end - tr.first_seen), dict.fromkeys(tr.outside_seen, 0.0))

    def _zone_left(self, dev: str, t: float, zone: str, dwell: float) -> ZoneLeft:
        return ZoneLeft(ts=t, store_id=self.store_id, subject=dev, subject_kind=self._sk(dev), zone=zone, dwell_s=dwell)

    def _sk(self, subject: str) -> SubjectKind:
        return self._kind_of_subject(subject)

    # -- aggregates ---------------------------------------------------------------------------------

    @staticmethod
    def _make_bin_labels(bins: list[float]) -> list[str]:
        edges = [0.0, *bins]
        labels = [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(bins))]
        return [*labels, f"{bins[-1]:g}+"]

    def _bin(self, dwell: float) -> str:
        for edge, label in zip(self._bins, self._bin_labels, strict=False):
            if dwell < edge:
                return label
        return self._bin_labels[-1]

    def _count(
        self,
        end: float,
        dev: str,
        visitor: bool,
        duration: float,
        dwell: dict[str, float],
        *,
        resident: bool = False,
        companion: bool = False,
    ) -> None:
        idx = math.floor(end / self._s.aggregate_interval_s)
        scopes = self._buckets.setdefault(idx, {})
        if resident:
            self._resident_rows.setdefault(idx, set()).add(dev)
            scopes.setdefault(None, [])
            return
        if companion:
            return
        scopes.setdefault(None, []).append((dev, visitor, duration))
        for z, d in dwell.items():
            scopes.setdefault(z, []).append((dev, visitor, d))

    def _publish_aggregates(self, now: float, out: list[EventBase], *, final: bool) -> None:
        iv = self._s.aggregate_interval_s
        k = self._s.k_anonymity
        for idx in sorted(self._buckets):
            start = idx * iv
            if not final and start + iv + self._grace > now:
                break
            scopes = self._buckets.pop(idx)
            residents = len(self._resident_rows.pop(idx, ()))
            for scope in sorted(scopes, key=lambda z: (z is not None, z or "")):
                rows = scopes[scope]
                visitors = {r[0] for r in rows if r[1]}
                passers = {r[0] for r in rows if not r[1]} - visitors
                if len(visitors) + len(passers) < k:
                    self.stats.aggregates_withheld += 1
                    continue
                hist = dict.fromkeys(self._bin_labels, 0)
                for _subj, vis, d in rows:
                    if vis:
                        hist[self._bin(d)] += 1
                total = len(visitors) + len(passers)
                out.append(
                    Aggregate(
                        ts=min(start + iv, now) if final else start + iv,
                        store_id=self.store_id,
                        interval_start=start,
                        interval_s=iv,
                        zone=scope,
                        visitors=len(visitors),
                        passers_by=len(passers),
                        conversion=round(len(visitors) / total, 4) if total else None,
                        dwell_histogram=hist,
                        residents=residents if scope is None else 0,
                    )
                )
                self.stats.aggregates_published += 1
