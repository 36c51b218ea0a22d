"""Rules engine: each segment kind, caps, quiet hours, priorities, permissions and payload scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.content.rules import (
    Actor,
    Campaign,
    Caps,
    ConsentInfo,
    ContentContext,
    CountWindow,
    RulesEngine,
    TimeWindow,
    build_payload,
)
from gateway.models import VisitEnded, VisitStarted, ZoneEntered, ZoneLeft

T0 = 1_767_261_600.0  # 2026-01-01 10:00 UTC
SCREEN = Actor(id="screen-1", kind="screen", categories=["promo"], scopes=["zone"])
TABLET = Actor(id="tablet-1", kind="staff", categories=["promo", "service"], scopes=["customer_ref", "first_name"])
CONSENT = ConsentInfo("cust-42", frozenset({"first_name"}), frozenset({"vip", "loyal"}), "Ada")


def camp(**kw: Any) -> Campaign:
    base: dict[str, Any] = {
        "id": "c1",
        "category": "promo",
        "content_id": "spring",
        "actors": ["screen-1"],
        "segment": {"trigger": "zone.entered", "zone": "shoes"},
        "caps": {},
    }
    base.update(kw)
    return Campaign.model_validate(base)


def ctx(**kw: Any) -> ContentContext:
    c = ContentContext(
        store_id="demo-store", actors={"screen-1": SCREEN, "tablet-1": TABLET}, consents={"cust-42": CONSENT}
    )
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def entered(subject: str = "p1", zone: str = "shoes", ts: float = T0, kind: str = "pseudonym") -> ZoneEntered:
    return ZoneEntered(ts=ts, store_id="demo-store", subject=subject, zone=zone, subject_kind=kind)  # type: ignore[arg-type]


def test_zone_entered_fires_only_in_its_zone() -> None:
    eng = RulesEngine([camp()])
    assert eng.evaluate(entered(zone="food"), T0, ctx()) == []
    acts = eng.evaluate(entered(), T0, ctx())
    assert [(a.campaign_id, a.actor_id, a.content_id) for a in acts] == [("c1", "screen-1", "spring")]
    assert acts[0].payload["zone"] == "shoes"


def test_dwell_fires_once_per_stay_via_tick_and_not_after_leaving() -> None:
    eng = RulesEngine([camp(segment={"trigger": "dwell", "zone": "shoes", "dwell_s": 30})])
    c = ctx()
    assert eng.evaluate(entered(), T0, c) == []
    assert eng.tick(T0 + 29, c) == []
    assert len(eng.tick(T0 + 30, c)) == 1
    assert eng.tick(T0 + 90, c) == []  # once per stay
    eng.evaluate(ZoneLeft(ts=T0 + 100, store_id="demo-store", subject="p1", zone="shoes", dwell_s=100), T0 + 100, c)
    eng.evaluate(entered(subject="p2", ts=T0 + 100), T0 + 100, c)
    eng.evaluate(ZoneLeft(ts=T0 + 110, store_id="demo-store", subject="p2", zone="shoes", dwell_s=10), T0 + 110, c)
    assert eng.tick(T0 + 200, c) == []  # p2 left before 30 s


def test_visit_count_condition() -> None:
    eng = RulesEngine([camp(segment={"trigger": "visit.started", "min_visit_count": 2})])
    c = ctx()
    vs = VisitStarted(ts=T0, store_id="demo-store", subject="p1")
    assert eng.evaluate(vs, T0, c) == []
    ve = VisitEnded(ts=T0 + 1, store_id="demo-store", subject="p1", started_ts=T0, duration_s=1, visitor=True)
    eng.evaluate(ve, T0 + 1, c)
    assert len(eng.evaluate(vs, T0 + 5000, c)) == 1


def test_customer_tags_condition_needs_consented_customer_with_all_tags() -> None:
    eng = RulesEngine([camp(segment={"trigger": "zone.entered", "zone": "shoes", "customer_tags": ["vip"]})])
    assert eng.evaluate(entered("p1"), T0, ctx()) == []  # pseudonym
    assert eng.evaluate(entered("cust-9", kind="customer"), T0, ctx()) == []  # no consent
    assert len(eng.evaluate(entered("cust-42", kind="customer"), T0, ctx())) == 1
    eng2 = RulesEngine([camp(segment={"trigger": "zone.entered", "zone": "shoes", "customer_tags": ["vip", "x"]})])
    assert eng2.evaluate(entered("cust-42", kind="customer"), T0, ctx()) == []


def test_time_of_day_and_store_conditions() -> None:
    eng = RulesEngine(
        [camp(segment={"trigger": "zone.entered", "zone": "shoes", "time_of_day": {"start": "09:00", "end": "10:30"}})]
    )
    assert len(eng.evaluate(entered(), T0, ctx())) == 1  # 10:00
    assert eng.evaluate(entered("p2"), T0 + 3600, ctx()) == []  # 11:00
    eng2 = RulesEngine([camp(segment={"trigger": "zone.entered", "zone": "shoes", "store_ids": ["other"]})])
    assert eng2.evaluate(entered(), T0, ctx()) == []
    eng3 = RulesEngine([camp(segment={"trigger": "zone.entered", "zone": "shoes", "store_ids": ["demo-store"]})])
    assert len(eng3.evaluate(entered(), T0, ctx())) == 1


def test_validity_window() -> None:
    eng = RulesEngine([camp(valid_from=T0 + 10, valid_to=T0 + 20)])
    assert eng.evaluate(entered(), T0, ctx()) == []
    assert len(eng.evaluate(entered(), T0 + 15, ctx())) == 1
    assert eng.evaluate(entered("p2"), T0 + 20, ctx()) == []


def test_caps_per_subject_and_per_actor() -> None:
    eng = RulesEngine([camp(caps={"per_subject": {"count": 1, "window_s": 60}})])
    c = ctx()
    assert len(eng.evaluate(entered(), T0, c)) == 1
    assert eng.evaluate(entered(), T0 + 30, c) == []
    assert len(eng.evaluate(entered(), T0 + 61, c)) == 1
    eng2 = RulesEngine([camp(caps={"per_actor": {"count": 2, "window_s": 10}})])
    got = [len(eng2.evaluate(entered(f"p{i}"), T0 + i, c)) for i in range(4)]
    assert got == [1, 1, 0, 0]
    assert eng2.suppressed["cap_actor"] == 2


def test_default_caps_apply_when_campaign_has_none() -> None:
    eng = RulesEngine([camp(caps=None)], default_caps=Caps(per_subject=CountWindow(count=1, window_s=3600)))
    assert len(eng.evaluate(entered(), T0, ctx())) == 1
    assert eng.evaluate(entered(), T0 + 100, ctx()) == []


def test_quiet_hours_campaign_and_global() -> None:
    eng = RulesEngine([camp(quiet_hours=[{"start": "09:30", "end": "10:15"}])])
    assert eng.evaluate(entered(), T0, ctx()) == []
    assert len(eng.evaluate(entered(), T0 + 1800, ctx())) == 1  # 10:30
    eng2 = RulesEngine([camp()], quiet_hours=[TimeWindow(start="22:00", end="10:05")])  # wraps midnight
    assert eng2.evaluate(entered(), T0, ctx()) == []
    assert len(eng2.evaluate(entered(), T0 + 600, ctx())) == 1


def test_priority_one_campaign_per_actor_per_event() -> None:
    low = camp(id="low", priority=1, content_id="low")
    high = camp(id="high", priority=5, content_id="high")
    acts = RulesEngine([low, high]).evaluate(entered(), T0, ctx())
    assert [a.content_id for a in acts] == ["high"]


def test_actor_category_permission_and_optout() -> None:
    eng = RulesEngine([camp(category="service", actors=["screen-1", "tablet-1"])])
    acts = eng.evaluate(entered(), T0, ctx())
    assert [a.actor_id for a in acts] == ["tablet-1"]  # screen may not show 'service'
    assert eng.evaluate(entered("p9"), T0, ctx(optouts={"p9"})) == []


def test_payload_scopes_screen_never_gets_customer_data() -> None:
    c = camp(actors=["screen-1", "tablet-1"])
    consent = ConsentInfo("cust-42", frozenset({"customer_ref", "first_name", "tags"}), frozenset({"vip"}), "Ada")
    kw: dict[str, Any] = {
        "activation_id": "a",
        "ts": T0,
        "campaign": c,
        "subject_kind": "customer",
        "subject": "cust-42",
        "zone": "shoes",
        "consent": consent,
    }
    screen = build_payload(actor=SCREEN, **kw)
    assert "customer_ref" not in screen and "first_name" not in screen and "tags" not in screen
    assert screen["content_id"] == "spring" and screen["zone"] == "shoes"
    tablet = build_payload(actor=TABLET, **kw)
    assert tablet["customer_ref"] == "cust-42" and tablet["first_name"] == "Ada"
    assert "tags" not in tablet and "zone" not in tablet  # tablet lacks those scopes
    # consent scope limits too: first name only
    kw["consent"] = CONSENT
    tablet2 = build_payload(actor=TABLET, **kw)
    assert tablet2.get("first_name") == "Ada" and "customer_ref" not in tablet2
    # pseudonymous subject: nothing personal, never the pseudonym
    kw.update(subject_kind="pseudonym", subject="pseudo-abc", consent=None)
    anon = build_payload(actor=TABLET, **kw)
    assert "pseudo-abc" not in str(anon) and "customer_ref" not in anon


def test_campaign_validation_errors() -> None:
    with pytest.raises(ValidationError, match="dwell_s is required"):
        camp(segment={"trigger": "dwell", "zone": "shoes"})
    with pytest.raises(ValidationError, match="zone is required"):
        camp(segment={"trigger": "zone.entered"})
    with pytest.raises(ValidationError, match="unknown time zone"):
        camp(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="webhook actors need"):
        Actor(id="x", transport="webhook")


def _day(ts: float) -> tuple[float, float]:
    start = (ts // 86400.0) * 86400.0
    return start, start + 86400.0


def _visit_day(eng: RulesEngine, day0: float, subjects: list[str], kind: str = "pseudonym") -> list[tuple[str, str]]:
    """Each subject visits twice (the second visit fires ``min_visit_count`` 2); the activations."""
    c = ctx()
    out: list[tuple[str, str]] = []
    for i, s in enumerate(subjects):
        for k in range(2):
            t = day0 + 3600 + i * 10 + k * 4000
            vs = VisitStarted(ts=t, store_id="demo-store", subject=s, subject_kind=kind)  # type: ignore[arg-type]
            out += [(a.subject, a.campaign_id) for a in eng.evaluate(vs, t, c)]
            ve = VisitEnded(
                ts=t + 60,
                store_id="demo-store",
                subject=s,
                subject_kind=kind,  # type: ignore[arg-type]
                started_ts=t,
                duration_s=60,
                visitor=True,
                visit_count=k + 1,
            )
            eng.evaluate(ve, t + 60, c)
    return out


@pytest.mark.parametrize("pseudo", [lambda d, i: f"{d}{i}", lambda d, i: f"{d * 12}{i:012x}"], ids=["names", "hex"])
def test_visit_counts_of_past_pseudonym_periods_are_dropped_and_results_do_not_change(
    pseudo: Callable[[str, int], str],
) -> None:
    """Issue 22: a day's pseudonyms kept their visit counts forever (until 100k subjects). A
    pseudonym never returns after its rotation period: dropping them changes no activation. Both
    with plain names and with hex ids as the keyring makes them (held packed, not as dict keys)."""
    campaigns = [camp(segment={"trigger": "visit.started", "min_visit_count": 2}, caps={"per_subject": None})]
    day0 = (T0 // 86400.0) * 86400.0
    subjects = [pseudo("a", i) for i in range(50)]
    p3, q3 = pseudo("a", 3), pseudo("b", 3)
    eng, ref = RulesEngine(campaigns, pseudonym_period=_day), RulesEngine(campaigns)
    got = [*_visit_day(eng, day0, subjects), *_visit_day(eng, day0, ["cust-42"], kind="customer")]
    want = [*_visit_day(ref, day0, subjects), *_visit_day(ref, day0, ["cust-42"], kind="customer")]
    assert got == want and len(got) == 51
    assert eng.visit_count(p3) == ref.visit_count(p3) == 2
    # the next day (new pseudonyms, an hour after the rotation): the old counts are gone
    next_subjects = [pseudo("b", i) for i in range(50)]
    assert _visit_day(eng, day0 + 86400, next_subjects) == _visit_day(ref, day0 + 86400, next_subjects)
    assert eng.visit_count(p3) == 0 and ref.visit_count(p3) == 2
    assert eng.visit_count(q3) == 2 and eng.visit_count("cust-42") == 2  # customers stay (consented)


def test_visit_counts_beyond_max_subjects_go_oldest_first() -> None:
    """The bound on per-subject state drops the oldest subject's count first, as the dict did."""
    eng = RulesEngine([], max_subjects=10)
    c = ctx()
    subjects = [f"{i:024x}" for i in range(30)]
    for i, s in enumerate(subjects):
        eng.evaluate(VisitStarted(ts=T0 + i, store_id="demo-store", subject=s, subject_kind="pseudonym"), T0 + i, c)
    eng.evaluate(VisitStarted(ts=T0 + 40, store_id="demo-store", subject=subjects[25], subject_kind="pseudonym"), T0, c)
    assert [eng.visit_count(s) for s in subjects] == [0] * 20 + [1] * 5 + [2] + [1] * 4


def test_spent_per_subject_caps_are_swept() -> None:
    """A cap entry whose activations have left the window allows what no entry allows: swept."""
    eng = RulesEngine([camp(caps={"per_subject": {"count": 1, "window_s": 600}})])
    c = ctx()
    for i in range(200):
        assert len(eng.evaluate(entered(f"p{i}", ts=T0 + i), T0 + i, c)) == 1
    assert len(eng.evaluate(entered("p0", ts=T0 + 300), T0 + 300, c)) == 0  # still capped
    assert len(eng._cap_subject) == 200
    eng.evaluate(entered("late", ts=T0 + 1000), T0 + 1000, c)
    assert len(eng._cap_subject) == 1  # only the new one
    assert len(eng.evaluate(entered("p0", ts=T0 + 1001), T0 + 1001, c)) == 1
