"""Presence (first cut): zone enter/leave and visit start/end per subject from fixes. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.config import PresenceSettings
from gateway.layout import Layout
from gateway.models import EventBase, Fix, SubjectKind, VisitEnded, VisitStarted, ZoneEntered, ZoneLeft


@dataclass
class _Track:
    first: float
    last: float
    zone: str | None = None
    zone_since: float = 0.0
    path: list[str] = field(default_factory=list)
    dwell: dict[str, float] = field(default_factory=dict)


class PresenceEngine:
    def __init__(
        self,
        layout: Layout,
        settings: PresenceSettings,
        store_id: str,
        subject_kind: Callable[[str], SubjectKind] = lambda _s: "pseudonym",
    ) -> None:
        self._s = settings
        self._store = store_id
        self._kind = subject_kind
        self._outside = {z.id for z in layout.zones if z.kind == "outside"}
        self._tracks: dict[str, _Track] = {}

    def update(self, fixes: Sequence[Fix], now: float) -> list[EventBase]:
        out: list[EventBase] = []
        for f in fixes:
            tr = self._tracks.get(f.device)
            kind = self._kind(f.device)
            if tr is None:
                tr = self._tracks[f.device] = _Track(first=f.ts, last=f.ts)
                out.append(VisitStarted(ts=f.ts, store_id=self._store, subject=f.device, subject_kind=kind))
            tr.last = f.ts
            if f.zone != tr.zone:
                if tr.zone is not None:
                    dwell = f.ts - tr.zone_since
                    tr.dwell[tr.zone] = tr.dwell.get(tr.zone, 0.0) + dwell
                    out.append(
                        ZoneLeft(
                            ts=f.ts,
                            store_id=self._store,
                            subject=f.device,
                            subject_kind=kind,
                            zone=tr.zone,
                            dwell_s=dwell,
                        )
                    )
                if f.zone is not None:
                    tr.path.append(f.zone)
                    out.append(
                        ZoneEntered(ts=f.ts, store_id=self._store, subject=f.device, subject_kind=kind, zone=f.zone)
                    )
                tr.zone, tr.zone_since = f.zone, f.ts
        return out

    def tick(self, now: float) -> list[EventBase]:
        gone = [d for d, t in self._tracks.items() if t.last < now - self._s.visit_timeout_s]
        return [e for d in gone for e in self._end(d)]

    def close(self, now: float) -> list[EventBase]:
        return [e for d in list(self._tracks) for e in self._end(d)]

    def _end(self, device: str) -> list[EventBase]:
        tr = self._tracks.pop(device)
        kind = self._kind(device)
        out: list[EventBase] = []
        if tr.zone is not None:
            dwell = tr.last - tr.zone_since
            tr.dwell[tr.zone] = tr.dwell.get(tr.zone, 0.0) + dwell
            out.append(
                ZoneLeft(
                    ts=tr.last, store_id=self._store, subject=device, subject_kind=kind, zone=tr.zone, dwell_s=dwell
                )
            )
        inside = any(z not in self._outside for z in tr.path)
        duration = tr.last - tr.first
        out.append(
            VisitEnded(
                ts=tr.last,
                store_id=self._store,
                subject=device,
                subject_kind=kind,
                started_ts=tr.first,
                duration_s=duration,
                visitor=inside and duration >= self._s.visitor_min_s,
                path=tr.path,
                dwell_by_zone=tr.dwell,
            )
        )
        return out
