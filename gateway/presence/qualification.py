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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from gateway.identity.subject_table import SubjectTable
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

    The history is held in a few flat buffers (issue 22: at 500 devices a day's pseudonymous
    history is ~26k subjects, dropped at the pseudonym rotation). Every visit is one record in a
    single ``array('d')``: ``started, ended, kind, n, next, (zone, dwell) * n``, with kinds and zone
    ids interned as small integers (exact: float64 holds them and the timestamps as they were) and
    ``next`` the offset of the subject's following visit (-1: its last). The subjects are a
    ``SubjectTable`` (no Python object per pseudonym) whose rows index the offsets of each one's
    first and last visit and its count. With no object per subject or visit in Python's small-object
    arenas, dropping the day's history returns its memory to the system (the buffers are rebuilt
    then); as dict entries the day's subjects pinned the arenas they were scattered through.

    ``qualify`` reads a subject's visits in the order the old list of records held them and
    computes every field with the same operations in the same order, so results are identical
    (tests/unit/presence/test_qualification.py keeps that list as the reference). ``prune`` (every
    minute) first compares the oldest end held per kind with the horizons and returns at once when
    nothing can go; when something goes it rebuilds the buffers with what stays.
    """

    def __init__(self, *, max_visits_per_subject: int = 1000) -> None:
        self._max = max_visits_per_subject
        self._names: list[str] = []  # interned zone ids and subject kinds (index = packed value)
        self._index: dict[str, int] = {}
        self._reset()
        # oldest ``ended_ts`` held of customer / other visits (``prune``'s fast path; may be stale
        # low after ``forget`` or a bounded history's trim, which only costs one full pass)
        self._min_end_customer = math.inf
        self._min_end_other = math.inf

    def _reset(self) -> None:
        self._subjects = SubjectTable()
        self._buf: array[float] = array("d")
        self._head: array[int] = array("q")  # row -> offset of its first visit
        self._last: array[int] = array("q")  # row -> offset of its last visit
        self._count: array[int] = array("q")  # row -> visits held
        self._garbage = 0  # floats of ``_buf`` no longer reachable (trimmed or forgotten visits)
        self._n = 0

    # -- packing -----------------------------------------------------------------------------------

    def _ix(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self._index[name] = len(self._names)
            self._names.append(name)
        return i

    def _append(self, subject: str, r: VisitRecord) -> int:
        """Pack ``r`` at the end of the buffer, as the subject's last visit; its new count."""
        buf = self._buf
        off = len(buf)
        buf.extend((r.started_ts, r.ended_ts, float(self._ix(r.kind)), float(len(r.dwell_by_zone)), -1.0))
        for z, d in r.dwell_by_zone.items():
            buf.extend((float(self._ix(z)), d))
        if r.kind == "customer":
            self._min_end_customer = min(self._min_end_customer, r.ended_ts)
        else:
            self._min_end_other = min(self._min_end_other, r.ended_ts)
        row = self._subjects.get(subject)
        if row < 0:
            row = self._subjects.add(subject)
            if row == len(self._head):
                self._head.append(off)
                self._last.append(off)
                self._count.append(1)
            else:  # pragma: no cover - rows are handed out in order, one per add
                raise AssertionError("subject rows out of step")
        else:
            buf[self._last[row] + 4] = float(off)
            self._last[row] = off
            self._count[row] += 1
        self._n += 1
        return self._count[row]

    def _offsets(self, row: int) -> list[int]:
        """Where each visit of a subject starts, oldest first."""
        offs: list[int] = []
        buf = self._buf
        i = self._head[row]
        while i >= 0:
            offs.append(i)
            i = int(buf[i + 4])
        return offs

    def _size(self, off: int) -> int:
        return 5 + 2 * int(self._buf[off + 3])

    def _record(self, subject: str, i: int) -> VisitRecord:
        buf, names = self._buf, self._names
        n = int(buf[i + 3])
        dwell = {names[int(buf[j])]: buf[j + 1] for j in range(i + 5, i + 5 + 2 * n, 2)}
        return VisitRecord(subject, cast(SubjectKind, names[int(buf[i + 2])]), buf[i], buf[i + 1], dwell)

    def _rebuild(self, keep_visit: Callable[[float, bool], bool] | None = None) -> int:
        """Copy what stays (every visit, or those ``keep_visit(ended, is_customer)`` keeps) into
        fresh buffers, subjects in the same order; the old buffers are freed whole. Visits dropped."""
        old_subjects, old_buf, old_head = self._subjects, self._buf, self._head
        customer = self._index.get("customer", -1)
        self._reset()
        min_c = min_o = math.inf
        dropped = 0
        for row, subject in old_subjects.keyed_rows():
            i = old_head[row]
            while i >= 0:
                e, is_c = old_buf[i + 1], int(old_buf[i + 2]) == customer
                size = 5 + 2 * int(old_buf[i + 3])
                if keep_visit is None or keep_visit(e, is_c):
                    # the record as it was (its ``next`` is set again by the following append)
                    rec = old_buf[i : i + size]
                    rec[4] = -1.0
                    self._append_packed(subject, rec)
                    if is_c:
                        min_c = min(min_c, e)
                    else:
                        min_o = min(min_o, e)
                else:
                    dropped += 1
                i = int(old_buf[i + 4])
        self._min_end_customer, self._min_end_other = min_c, min_o
        return dropped

    def _append_packed(self, subject: str, rec: array[float]) -> None:
        off = len(self._buf)
        self._buf.extend(rec)
        row = self._subjects.get(subject)
        if row < 0:
            row = self._subjects.add(subject)
            self._head.append(off)
            self._last.append(off)
            self._count.append(1)
        else:
            self._buf[self._last[row] + 4] = float(off)
            self._last[row] = off
            self._count[row] += 1
        self._n += 1

    def _maybe_compact(self) -> None:
        """Rebuild once more than half the buffer is unreachable (trims and forgets)."""
        if self._garbage > 4096 and 2 * self._garbage > len(self._buf):
            self._rebuild()

    # -- API ---------------------------------------------------------------------------------------

    def load(self, records: Iterable[VisitRecord]) -> int:
        """Add stored history (any order); returns how many records were loaded."""
        n = 0
        hist: dict[str, list[VisitRecord]] = {
            s: [self._record(s, i) for i in self._offsets(row)] for row, s in self._subjects.keyed_rows()
        }
        for r in records:
            hist.setdefault(r.subject, []).append(r)
            n += 1
        self._reset()
        for s, h in hist.items():
            h.sort(key=lambda r: r.started_ts)
            for r in h[-self._max :] if len(h) > self._max else h:
                self._append(s, r)
        return n

    def history(self, subject: str) -> list[VisitRecord]:
        row = self._subjects.get(subject)
        return [self._record(subject, i) for i in self._offsets(row)] if row >= 0 else []

    def qualify(self, visit: VisitRecord) -> Qualification:
        """Qualify ``visit`` against the subject's earlier visits, then add it to the history."""
        row = self._subjects.get(visit.subject)
        buf = self._buf
        names = self._names
        last_end: float | None = None  # end of the last earlier visit (list order), as before
        durations: list[float] = []
        first_start = visit.started_ts
        dwell: dict[str, float] = {}
        i = self._head[row] if row >= 0 else -1
        first = True
        while i >= 0:
            s, e, n = buf[i], buf[i + 1], int(buf[i + 3])
            if first:
                first_start = s
                first = False
            if e <= visit.started_ts:
                last_end = e
            durations.append(max(0.0, e - s))
            for j in range(i + 5, i + 5 + 2 * n, 2):
                z = names[int(buf[j])]
                dwell[z] = dwell.get(z, 0.0) + buf[j + 1]
            i = int(buf[i + 4])
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
        held = self._append(visit.subject, visit)
        if held > self._max:
            row = self._subjects.get(visit.subject)
            for _ in range(held - self._max):
                h = self._head[row]
                self._garbage += self._size(h)
                self._head[row] = int(self._buf[h + 4])
            self._count[row] = self._max
            self._n -= held - self._max
            self._maybe_compact()
        return Qualification(
            visit_count=count,
            days_since_last_visit=None if days_since is None else round(days_since, 4),
            avg_visit_s=round(avg, 1),
            visits_per_week=per_week,
            zone_affinity=affinity,
        )

    def forget(self, subject: str) -> None:
        row = self._subjects.remove(subject)
        if row >= 0:
            offs = self._offsets(row)
            self._garbage += sum(map(self._size, offs))
            self._n -= len(offs)
            self._maybe_compact()

    def prune(self, *, pseudonym_since: float, older_than: float) -> int:
        """Drop pseudonymous visits that ended before ``pseudonym_since`` (the current rotation
        period's start) and any visit that ended before ``older_than`` (retention)."""
        if self._min_end_customer >= older_than and self._min_end_other >= max(older_than, pseudonym_since):
            return 0  # nothing held is that old (every minute, most of the day)
        return self._rebuild(lambda e, is_c: e >= older_than and (is_c or e >= pseudonym_since))

    def __len__(self) -> int:
        return self._n
