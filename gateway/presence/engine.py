"""Presence: fixes -> zone sessions, visits, passer-by vs visitor, anonymous aggregates.

Pure (time is an argument; no I/O, no clock). Input is a stream of ``Fix`` whose ``device`` is
already a *subject* (pseudonym or consented customer ref, see ``gateway/identity/subjects.py``).

Model, per subject:

* **Zone sessions with hysteresis.** A fix in a zone other than the confirmed one makes that zone
  a *candidate*; the candidate is confirmed once fixes have stayed off the confirmed zone for
  ``enter_debounce_s`` (into a zone) or ``exit_debounce_s`` (into no zone). A fix back in the
  confirmed zone cancels the candidate, so boundary noise does not create sessions. Transitions
  are **backdated** to the first fix of the candidate: dwell is measured from when the person
  really crossed, not from when we became sure.
* **Visit** = a span of presence in the store's in-store zones (every zone whose kind is not
  ``outside``). It starts at the first in-store zone entry and ends at the last in-store zone exit
  once the subject has been out of the store (or silent) for ``visit_timeout_s``.
* **Visitor vs passer-by.** A visit becomes a *visitor* visit when the subject enters an in-store
  zone that is not the entrance, or stays at the entrance for ``visitor_min_s`` in total. Only
  then are its ``visit.started`` (backdated) and zone events emitted; a visit that never
  qualifies, and a subject seen only outside (a confirmed ``outside`` zone), yields one
  ``visit.ended`` with ``visitor=false`` (if ``report_passers_by``) and nothing else - people
  who never enter the shop produce no per-zone trail at all (data minimisation).
* **Residents.** A visit longer than ``max_visit_s`` (staff phone, fixed beacon) is ended and the
  subject is ignored until it has been silent for ``visit_timeout_s``.
* **Aggregates** per ``aggregate_interval_s`` (aligned to Unix time), for the store and per zone:
  distinct visitors and passers-by whose visit *ended* in the interval, conversion, and a dwell
  histogram. Published only when the distinct subjects are at least ``k_anonymity``; an interval
  is published once no visit ending in it can still be detected (``visit_timeout_s`` + debounces).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.config import PresenceSettings
from gateway.layout import Layout, points_in_polygon
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
_NO = "\x00no-candidate"  # sentinel: no candidate zone (None is a valid candidate: "no zone")


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


@dataclass(slots=True)
class PresenceStats:
    fixes: int = 0
    late_fixes: int = 0
    visits_started: int = 0
    visits_ended: int = 0
    passers_by: int = 0
    residents: int = 0
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
        self._entrances = {z.id for z in layout.zones if z.kind == "entrance"}
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
        self._bins = list(settings.dwell_bins_s)
        self._bin_labels = self._make_bin_labels(self._bins)
        self._grace = settings.visit_timeout_s + settings.enter_debounce_s + settings.exit_debounce_s
        self.stats = PresenceStats()

    # -- public API ------------------------------------------------------------------------------

    @property
    def open_visits(self) -> int:
        return sum(1 for t in self._tracks.values() if t.visit is not None and t.visit.visitor)

    def current_zones(self) -> dict[str, str | None]:
        """Confirmed zone of every visitor currently in a visit (status page, content rules)."""
        return {s: t.zone for s, t in self._tracks.items() if t.visit is not None and t.visit.visitor}

    def zones_for(self, xy: np.ndarray) -> list[str | None]:
        """Zone id for each row of an (N, 2) array of positions (first matching zone, or None)."""
        n = len(xy)
        lab: list[str | None] = [None] * n
        if n == 0:
            return lab
        free = np.ones(n, dtype=bool)
        pts = np.asarray(xy, dtype=np.float64)
        for z in self._layout.zones:
            hit = points_in_polygon(pts, z.polygon) & free
            for i in np.flatnonzero(hit):
                lab[int(i)] = z.id
            free &= ~hit
        return lab

    def update(self, fixes: Sequence[Fix], now: float) -> list[EventBase]:
        """Feed fixes (per subject in time order); returns the events they caused.

        Fixes older than the subject's last fix are counted (``stats.late_fixes``) and ignored for
        transitions. Timeouts happen in ``tick`` (``now`` is accepted for the pipeline's signature).
        """
        out: list[EventBase] = []
        tracks = self._tracks
        enter_d = self._s.enter_debounce_s
        exit_d = self._s.exit_debounce_s
        hyst = self._s.zone_hysteresis_m
        inside = self._in_store
        late = 0
        for f in fixes:
            dev = f.device
            ts = f.ts
            z = f.zone
            tr = tracks.get(dev)
            if tr is None:
                tr = tracks[dev] = _Track(ts, ts, cand=z, cand_since=ts, clear_since=ts)
            elif ts < tr.last_seen:
                late += 1
                continue
            tr.last_seen = ts
            if tr.resident:
                continue
            cur = tr.zone
            if z == cur:
                tr.cand = _NO
                continue
            if z != tr.cand:
                tr.cand = z
                tr.cand_since = tr.clear_since = ts
            if z in inside:
                if ts - tr.cand_since >= enter_d:
                    self._transition(dev, tr, z, tr.cand_since, out)
            elif cur in inside and hyst > 0.0 and self._near(cur, f.x, f.y, hyst):
                tr.clear_since = _FAR  # leaving the store, but still within the band: not clear yet
            else:
                if tr.clear_since == _FAR:
                    tr.clear_since = ts
                if ts - tr.clear_since >= exit_d:
                    self._transition(dev, tr, z, tr.cand_since, out)
        self.stats.fixes += len(fixes)
        self.stats.late_fixes += late
        return out

    def tick(self, now: float) -> list[EventBase]:
        """Time-driven work: visit timeouts, silent subjects, entrance qualification, aggregates."""
        out: list[EventBase] = []
        s = self._s
        timeout = s.visit_timeout_s
        for dev in list(self._tracks):
            tr = self._tracks[dev]
            silent = now - tr.last_seen >= timeout
            v = tr.visit
            if v is not None:
                if silent:
                    self._end_visit(dev, tr, tr.last_seen, out)
                elif tr.zone not in self._in_store and now - v.last_in >= timeout:
                    self._end_visit(dev, tr, v.last_in, out)
                elif now - v.start >= s.max_visit_s:
                    self._end_visit(dev, tr, now, out)
                    tr.resident = True
                    self.stats.residents += 1
                elif (
                    not v.visitor
                    and tr.zone in self._entrances
                    and v.entrance_s + (now - tr.zone_since) >= s.visitor_min_s
                ):
                    self._qualify(dev, v, out)
            if silent:
                if not tr.had_visit and not tr.resident and tr.outside_seen:
                    self._street_passer_by(dev, tr, out)
                del self._tracks[dev]
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
        self.qualifier.forget(subject)
        for scopes in self._buckets.values():
            for scope, rows in scopes.items():
                scopes[scope] = [r for r in rows if r[0] != subject]

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
            if not v.visitor and new not in self._entrances:
                self._qualify(dev, v, out)
        elif not tr.outside_seen or tr.outside_seen[-1] != new:
            tr.outside_seen.append(new)

    def _emit(self, v: _Visit, ev: EventBase, out: list[EventBase]) -> None:
        if v.visitor:
            out.append(ev)
        else:
            v.pending.append(ev)

    def _qualify(self, dev: str, v: _Visit, out: list[EventBase]) -> None:
        v.visitor = True
        self.stats.visits_started += 1
        out.append(VisitStarted(ts=v.start, store_id=self.store_id, subject=dev, subject_kind=self._sk(dev)))
        out.extend(v.pending)
        v.pending = []

    def _end_visit(self, dev: str, tr: _Track, end: float, out: list[EventBase]) -> None:
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
            if not v.visitor and v.entrance_s >= self._s.visitor_min_s:
                self._qualify(dev, v, out)
        tr.visit = None
        end = max(end, v.start)
        duration = end - v.start
        dwell = {z: round(d, 3) for z, d in v.dwell.items()}
        kind = self._sk(dev)
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

    def _count(self, end: float, dev: str, visitor: bool, duration: float, dwell: dict[str, float]) -> None:
        idx = math.floor(end / self._s.aggregate_interval_s)
        scopes = self._buckets.setdefault(idx, {})
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
                    )
                )
                self.stats.aggregates_published += 1
