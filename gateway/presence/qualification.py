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

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

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
    """History per subject -> the qualification fields of ``VisitEnded``.

    The history is held compactly (issue 22: at 500 devices a day's pseudonymous history is ~26k
    subjects, 13 MB as ``VisitRecord`` objects with a dwell dict each): one ``array('d')`` per
    subject, each visit packed as ``started, ended, kind, n, (zone, dwell) * n`` with kinds and
    zone ids interned as small integers (exact: float64 holds them and the timestamps as they
    were). ``qualify`` reads the packed visits in the order the old list held them and computes
    every field with the same operations in the same order, so results are identical. ``prune``
    (every minute) first compares the oldest end held per kind with the horizons and returns at
    once when nothing can go.
    """

    def __init__(self, *, max_visits_per_subject: int = 1000) -> None:
        self._hist: dict[str, array[float]] = {}
        self._max = max_visits_per_subject
        self._names: list[str] = []  # interned zone ids and subject kinds (index = packed value)
        self._index: dict[str, int] = {}
        self._n = 0
        # oldest ``ended_ts`` held of customer / other visits (``prune``'s fast path; may be stale
        # low after ``forget`` or a bounded history's trim, which only costs one full pass)
        self._min_end_customer = math.inf
        self._min_end_other = math.inf

    # -- packing -----------------------------------------------------------------------------------

    def _ix(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self._index[name] = len(self._names)
            self._names.append(name)
        return i

    def _pack(self, r: VisitRecord, into: array[float]) -> None:
        into.extend((r.started_ts, r.ended_ts, float(self._ix(r.kind)), float(len(r.dwell_by_zone))))
        for z, d in r.dwell_by_zone.items():
            into.extend((float(self._ix(z)), d))
        if r.kind == "customer":
            self._min_end_customer = min(self._min_end_customer, r.ended_ts)
        else:
            self._min_end_other = min(self._min_end_other, r.ended_ts)

    def _unpack(self, subject: str, buf: array[float]) -> list[VisitRecord]:
        out: list[VisitRecord] = []
        names = self._names
        i = 0
        while i < len(buf):
            n = int(buf[i + 3])
            dwell = {names[int(buf[j])]: buf[j + 1] for j in range(i + 4, i + 4 + 2 * n, 2)}
            kind = cast(SubjectKind, names[int(buf[i + 2])])
            out.append(VisitRecord(subject, kind, buf[i], buf[i + 1], dwell))
            i += 4 + 2 * n
        return out

    @staticmethod
    def _offsets(buf: array[float]) -> list[int]:
        """Where each packed visit starts."""
        offs: list[int] = []
        i = 0
        while i < len(buf):
            offs.append(i)
            i += 4 + 2 * int(buf[i + 3])
        return offs

    def _store(self, subject: str, recs: list[VisitRecord]) -> None:
        buf: array[float] = array("d")
        for r in recs:
            self._pack(r, buf)
        self._hist[subject] = buf

    # -- API ---------------------------------------------------------------------------------------

    def load(self, records: Iterable[VisitRecord]) -> int:
        """Add stored history (any order); returns how many records were loaded."""
        n = 0
        hist: dict[str, list[VisitRecord]] = {s: self._unpack(s, b) for s, b in self._hist.items()}
        for r in records:
            hist.setdefault(r.subject, []).append(r)
            n += 1
        self._hist = {}
        self._n = 0
        for s, h in hist.items():
            h.sort(key=lambda r: r.started_ts)
            del h[: -self._max]
            self._store(s, h)
            self._n += len(h)
        return n

    def history(self, subject: str) -> list[VisitRecord]:
        buf = self._hist.get(subject)
        return self._unpack(subject, buf) if buf is not None else []

    def qualify(self, visit: VisitRecord) -> Qualification:
        """Qualify ``visit`` against the subject's earlier visits, then add it to the history."""
        buf = self._hist.get(visit.subject)
        if buf is None:
            buf = array("d")
        names = self._names
        last_end: float | None = None  # end of the last earlier visit (list order), as before
        durations: list[float] = []
        first_start = visit.started_ts
        dwell: dict[str, float] = {}
        i = 0
        while i < len(buf):
            s, e, n = buf[i], buf[i + 1], int(buf[i + 3])
            if i == 0:
                first_start = s
            if e <= visit.started_ts:
                last_end = e
            durations.append(max(0.0, e - s))
            for j in range(i + 4, i + 4 + 2 * n, 2):
                z = names[int(buf[j])]
                dwell[z] = dwell.get(z, 0.0) + buf[j + 1]
            i += 4 + 2 * n
        days_since = (visit.started_ts - last_end) / DAY_S if last_end is not None else None
        durations.append(visit.duration_s)
        count = len(durations)
        avg = sum(durations) / count
        per_week: float | None = None
        if visit.kind == "customer":
            span_days = max(1.0, (visit.ended_ts - first_start) / DAY_S)
            per_week = round(count / span_days * 7.0, 3)
        for z, d in visit.dwell_by_zone.items():
            dwell[z] = dwell.get(z, 0.0) + d
        total = sum(dwell.values())
        affinity = {z: round(d / total, 3) for z, d in sorted(dwell.items(), key=lambda kv: -kv[1])} if total else {}
        self._pack(visit, buf)
        self._n += 1
        if count > self._max:
            offs = self._offsets(buf)
            del buf[: offs[count - self._max]]
            self._n -= count - self._max
        self._hist[visit.subject] = buf
        return Qualification(
            visit_count=count,
            days_since_last_visit=None if days_since is None else round(days_since, 4),
            avg_visit_s=round(avg, 1),
            visits_per_week=per_week,
            zone_affinity=affinity,
        )

    def forget(self, subject: str) -> None:
        buf = self._hist.pop(subject, None)
        if buf is not None:
            self._n -= len(self._offsets(buf))

    def prune(self, *, pseudonym_since: float, older_than: float) -> int:
        """Drop pseudonymous visits that ended before ``pseudonym_since`` (the current rotation
        period's start) and any visit that ended before ``older_than`` (retention)."""
        if self._min_end_customer >= older_than and self._min_end_other >= max(older_than, pseudonym_since):
            return 0  # nothing held is that old (every minute, most of the day)
        customer = self._index.get("customer", -1)
        min_c = min_o = math.inf
        dropped = 0
        for subj in list(self._hist):
            buf = self._hist[subj]
            offs = self._offsets(buf)
            keep: list[int] = []
            for k, i in enumerate(offs):
                e, is_c = buf[i + 1], int(buf[i + 2]) == customer
                if e >= older_than and (is_c or e >= pseudonym_since):
                    keep.append(k)
                    if is_c:
                        min_c = min(min_c, e)
                    else:
                        min_o = min(min_o, e)
            dropped += len(offs) - len(keep)
            if not keep:
                del self._hist[subj]
            elif len(keep) < len(offs):
                ends = [*offs[1:], len(buf)]
                new: array[float] = array("d")
                for k in keep:
                    new.extend(buf[offs[k] : ends[k]])
                self._hist[subj] = new
        self._min_end_customer, self._min_end_other = min_c, min_o
        self._n -= dropped
        return dropped

    def __len__(self) -> int:
        return self._n
