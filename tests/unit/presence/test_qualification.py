"""Visit qualification: count, recurrence, average visit time, frequency, zone affinity, pruning."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.presence.qualification import DAY_S, Qualification, Qualifier, VisitRecord

T = 1_767_261_600.0
DAY = DAY_S


def rec(subject: str, start: float, dur: float, kind: str = "customer", **dwell: float) -> VisitRecord:
    return VisitRecord(subject, kind, start, start + dur, dwell)  # type: ignore[arg-type]


def test_first_visit() -> None:
    q = Qualifier().qualify(rec("c", T, 600, grocery=400, produce=200))
    assert q.visit_count == 1
    assert q.days_since_last_visit is None
    assert q.avg_visit_s == 600
    assert q.visits_per_week == 7.0  # one visit over (at least) one day
    assert q.zone_affinity == {"grocery": pytest.approx(0.667, abs=1e-3), "produce": pytest.approx(0.333, abs=1e-3)}
    assert list(q.zone_affinity) == ["grocery", "produce"]  # strongest first


def test_recurrence_frequency_and_average_for_a_customer() -> None:
    ql = Qualifier()
    ql.qualify(rec("c", T, 600, grocery=600))
    ql.qualify(rec("c", T + 7 * DAY, 1200, electronics=1200))
    q = ql.qualify(rec("c", T + 14 * DAY, 300, grocery=300))
    assert q.visit_count == 3
    assert q.days_since_last_visit == pytest.approx(7 - 1200 / DAY_S, abs=1e-3)
    assert q.avg_visit_s == 700
    assert q.visits_per_week == pytest.approx(3 / (14 + 300 / DAY_S) * 7, abs=1e-3)
    assert q.zone_affinity["electronics"] == pytest.approx(1200 / 2100, abs=1e-3)


def test_pseudonyms_get_no_frequency_and_subjects_are_separate() -> None:
    ql = Qualifier()
    ql.qualify(rec("p1", T, 100, kind="pseudonym"))
    q = ql.qualify(rec("p1", T + 3600, 300, kind="pseudonym"))
    assert q.visits_per_week is None
    assert q.visit_count == 2
    assert q.days_since_last_visit == pytest.approx((3600 - 100) / DAY_S, abs=1e-4)
    assert ql.qualify(rec("p2", T, 100, kind="pseudonym")).visit_count == 1


def test_load_then_qualify_and_prune() -> None:
    ql = Qualifier()
    n = ql.load(
        [
            rec("c", T - 40 * DAY, 100),  # beyond retention
            rec("c", T - 2 * DAY, 100),
            rec("p", T - 2 * DAY, 100, kind="pseudonym"),  # previous rotation period
            rec("p", T - 100, 50, kind="pseudonym"),
        ]
    )
    assert n == 4 and len(ql) == 4
    dropped = ql.prune(pseudonym_since=T - 3600, older_than=T - 30 * DAY)
    assert dropped == 2
    assert [r.started_ts for r in ql.history("c")] == [T - 2 * DAY]
    assert len(ql.history("p")) == 1
    q = ql.qualify(rec("c", T, 100))
    assert q.visit_count == 2
    ql.forget("c")
    assert ql.history("c") == []


def test_history_is_bounded() -> None:
    ql = Qualifier(max_visits_per_subject=5)
    for i in range(20):
        q = ql.qualify(rec("c", T + i * DAY, 60))
    assert len(ql.history("c")) == 5
    assert q.visit_count == 6  # the bounded history plus this one


def test_history_is_packed_small() -> None:
    """A day's pseudonymous history at 500 devices (~26k subjects) fits in a few MB (issue 22)."""
    import tracemalloc

    zones = ["entrance", "service", "checkout", "produce", "grocery", "electronics"]
    subjects = [f"{i:032x}" for i in range(5000)]
    tracemalloc.start()
    try:
        ql = Qualifier()
        for i, s in enumerate(subjects):
            dwell = {z: round(10.0 + i * 0.001 + j, 3) for j, z in enumerate(zones[:4])}
            ql.qualify(VisitRecord(s, "pseudonym", T + i, T + i + 600.5, dwell))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(ql) == 5000
    assert held / 5000 < 300  # bytes per one-visit subject (~250); ~500 as lists of records with dicts


def test_history_dropped_at_rotation_leaves_no_objects_behind() -> None:
    """A day's pseudonymous subjects are no Python objects each (issue 22): holding 20k of them adds
    a handful of allocator blocks (the old dict of one array per subject: ~2 per subject), and the
    rotation's prune gives back what they took (the buffers are rebuilt, the old ones freed whole)."""
    import gc
    import sys
    import tracemalloc

    subjects = [f"{i:024x}" for i in range(20_000)]
    dwell = {"entrance": 10.0, "grocery": 200.5, "checkout": 60.0}
    ql = Qualifier()
    ql.qualify(VisitRecord("cust-1", "customer", T - DAY, T - DAY + 600, dwell))  # a customer stays
    gc.collect()
    tracemalloc.start()
    try:
        blocks0, held0 = sys.getallocatedblocks(), tracemalloc.get_traced_memory()[0]
        for i, s in enumerate(subjects):
            ql.qualify(VisitRecord(s, "pseudonym", T + i, T + i + 600.5, dwell))
        gc.collect()
        blocks_day, held_day = sys.getallocatedblocks() - blocks0, tracemalloc.get_traced_memory()[0] - held0
        assert ql.prune(pseudonym_since=T + DAY, older_than=T - 30 * DAY) == 20_000
        gc.collect()
        held_after = tracemalloc.get_traced_memory()[0] - held0
    finally:
        tracemalloc.stop()
    assert len(ql) == 1 and len(ql.history("cust-1")) == 1
    assert blocks_day < 100, blocks_day
    assert held_day / len(subjects) < 200, held_day  # bytes per one-visit subject
    assert held_after < 64 * 1024, held_after


# -- the packed history gives exactly what the list of records gave ------------------------------


class ListQualifier:
    """The qualifier as it was before the packed history (a list of records per subject): the reference."""

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


ZONES = ("entrance", "grocery", "produce", "checkout")
# ids that are not pseudonyms (a plain dict inside) and pseudonym-like hex ids (packed bytes), among
# them two that differ only by trailing / leading zero bytes
SUBJECTS = ("a", "b", "c", "ab", "ab00", "00ab", "0123456789abcdef0123456789abcdef")
record = st.builds(
    lambda subj, kind, start, dur, dw: VisitRecord(
        subj, kind, T + start, T + start + dur, {ZONES[i]: d for i, d in dw.items()}
    ),
    st.sampled_from(SUBJECTS),
    st.sampled_from(["pseudonym", "customer"]),
    st.floats(-40 * DAY, 40 * DAY, allow_nan=False),
    st.one_of(st.floats(0, 3 * 3600, allow_nan=False), st.just(-5.0)),
    st.dictionaries(st.integers(0, 3), st.floats(0, 3600, allow_nan=False), max_size=4),
)
op = st.one_of(
    st.tuples(st.just("qualify"), record),
    st.tuples(st.just("load"), st.lists(record, max_size=4)),
    st.tuples(st.just("prune"), st.floats(-41 * DAY, 41 * DAY), st.floats(-41 * DAY, 41 * DAY)),
    st.tuples(st.just("forget"), st.sampled_from(SUBJECTS)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=40), st.integers(1, 4))
def test_packed_history_matches_the_list_of_records(ops: list[tuple[object, ...]], cap: int) -> None:
    new, old = Qualifier(max_visits_per_subject=cap), ListQualifier(max_visits_per_subject=cap)
    for o in ops:
        if o[0] == "qualify":
            assert isinstance(o[1], VisitRecord)
            a: Qualification | int | None = new.qualify(o[1])
            b: Qualification | int | None = old.qualify(o[1])
            assert isinstance(a, Qualification) and isinstance(b, Qualification)
            assert list(a.zone_affinity.items()) == list(b.zone_affinity.items())  # order too
        elif o[0] == "load":
            recs = o[1]
            assert isinstance(recs, Iterable)
            a, b = new.load(list(recs)), old.load(list(recs))
        elif o[0] == "prune":
            since, older = o[1], o[2]
            assert isinstance(since, float) and isinstance(older, float)
            a = new.prune(pseudonym_since=T + since, older_than=T + older)
            b = old.prune(pseudonym_since=T + since, older_than=T + older)
        else:
            assert isinstance(o[1], str)
            a, b = new.forget(o[1]), old.forget(o[1])
        assert a == b
        assert len(new) == len(old)
        for s in SUBJECTS:
            assert new.history(s) == old.history(s)
