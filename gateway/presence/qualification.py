"""Per-subject visit qualification: count, frequency, recurrence, average visit time, zone affinity.

Pure: an in-RAM history of *visitor* visits per subject, fed at start-up from the presence store and
updated as visits end. What the history can say is bounded by privacy on purpose:

* a **pseudonymous** subject exists only within one pseudonym rotation period (a day by default),
  so its history - and therefore its visit count and recurrence - cover that period only; the
  caller prunes pseudonymous records at every rotation (``prune``);
* a **consented customer** (subject = the platform's customer reference) keeps one subject across
  days, so recurrence and frequency are computed over the retention window. That is the only way
  a person is recognised across rotation periods.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.models import SubjectKind

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class VisitRecord:
    """One finished visitor visit, as stored (pseudonymous or customer subject, never a raw id)."""

    subject: str
    kind: SubjectKind
    started_ts: float
    ended_ts: float
    dwell_by_zone: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_ts - self.started_ts)


@dataclass(frozen=True, slots=True)
class Qualification:
    visit_count: int
    days_since_last_visit: float | None
    avg_visit_s: float
    visits_per_week: float | None
    zone_affinity: dict[str, float]


class Qualifier:
    """History per subject -> the qualification fields of ``VisitEnded``."""

    def __init__(self, *, max_visits_per_subject: int = 1000) -> None:
        self._hist: dict[str, list[VisitRecord]] = {}
        self._max = max_visits_per_subject

    def load(self, records: Iterable[VisitRecord]) -> int:
        """Add stored history (any order); returns how many records were loaded."""
        n = 0
        for r in records:
            self._hist.setdefault(r.subject, []).append(r)
            n += 1
        for h in self._hist.values():
            h.sort(key=lambda r: r.started_ts)
            del h[: -self._max]
        return n

    def history(self, subject: str) -> list[VisitRecord]:
        return list(self._hist.get(subject, ()))

    def qualify(self, visit: VisitRecord) -> Qualification:
        """Qualify ``visit`` against the subject's earlier visits, then add it to the history."""
        prev = self._hist.get(visit.subject, [])
        earlier = [r for r in prev if r.ended_ts <= visit.started_ts]
        days_since = (visit.started_ts - earlier[-1].ended_ts) / DAY_S if earlier else None
        allv = [*prev, visit]
        count = len(allv)
        avg = sum(r.duration_s for r in allv) / count
        per_week: float | None = None
        if visit.kind == "customer":
            span_days = max(1.0, (visit.ended_ts - allv[0].started_ts) / DAY_S)
            per_week = round(count / span_days * 7.0, 3)
        dwell: dict[str, float] = {}
        for r in allv:
            for z, d in r.dwell_by_zone.items():
                dwell[z] = dwell.get(z, 0.0) + d
        total = sum(dwell.values())
        affinity = {z: round(d / total, 3) for z, d in sorted(dwell.items(), key=lambda kv: -kv[1])} if total else {}
        prev.append(visit)
        del prev[: -self._max]
        self._hist[visit.subject] = prev
        return Qualification(
            visit_count=count,
            days_since_last_visit=None if days_since is None else round(days_since, 4),
            avg_visit_s=round(avg, 1),
            visits_per_week=per_week,
            zone_affinity=affinity,
        )

    def forget(self, subject: str) -> None:
        self._hist.pop(subject, None)

    def prune(self, *, pseudonym_since: float, older_than: float) -> int:
        """Drop pseudonymous visits that ended before ``pseudonym_since`` (the current rotation
        period's start) and any visit that ended before ``older_than`` (retention)."""
        dropped = 0
        for subj in list(self._hist):
            h = self._hist[subj]
            keep = [
                r for r in h if r.ended_ts >= older_than and (r.kind == "customer" or r.ended_ts >= pseudonym_since)
            ]
            dropped += len(h) - len(keep)
            if keep:
                self._hist[subj] = keep
            else:
                del self._hist[subj]
        return dropped

    def __len__(self) -> int:
        return sum(len(h) for h in self._hist.values())
