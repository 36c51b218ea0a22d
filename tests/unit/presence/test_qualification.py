"""Visit qualification: count, recurrence, average visit time, frequency, zone affinity, pruning."""

from __future__ import annotations

import pytest

from gateway.presence.qualification import DAY_S, Qualifier, VisitRecord

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
