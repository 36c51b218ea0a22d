"""Presence with device kinds: shop fronts, residents (staff/fixtures), companions, orphans."""

from __future__ import annotations

from pathlib import Path

from gateway.config import PresenceSettings
from gateway.identity.linking import ChainInfo
from gateway.layout import load_layout
from gateway.models import Aggregate, EventBase, Fix, VisitEnded, VisitStarted
from gateway.presence.engine import PresenceEngine

SHOPFRONT = load_layout(Path(__file__).resolve().parents[3] / "hardware/layouts/shopfront.toml")
T0 = 1_767_261_600.0


def engine(kinds: dict[str, str], **kw: float) -> tuple[PresenceEngine, dict[str, ChainInfo]]:
    e = PresenceEngine(SHOPFRONT, PresenceSettings(**kw), "s1")
    chains = {s: ChainInfo(s, k, T0, T0) for s, k in kinds.items()}
    e.set_chain_info(chains.get)
    return e, chains


def walk(
    e: PresenceEngine, chains: dict[str, ChainInfo], path: dict[str, list[tuple[float, float]]], t1: float
) -> list[EventBase]:
    """Each subject at one position per second (list index = second); silent when its list ends."""
    out: list[EventBase] = []
    t = T0
    while t <= t1:
        fx = []
        for subj, pts in path.items():
            k = int(t - T0)
            if k < len(pts):
                x, y = pts[k]
                fx.append(Fix(t, subj, x, y, 1.0, e.zones_for(__import__("numpy").array([[x, y]]))[0]))
                chains[subj].last_ts = t
        out += e.update(fx, t)
        out += e.tick(t)
        t += 1.0
    return out + e.close(t)


def test_a_passer_by_straying_across_the_shop_front_is_not_a_visitor() -> None:
    e, ch = engine({"p": "phone"})
    # walks the pavement 1 m from the glass, its estimate strays 1.5 m into the window display for 8 s
    pts = [(float(x), -1.0) for x in range(0, 10)] + [(float(x), 1.5) for x in range(10, 18)]
    pts += [(float(x), -1.0) for x in range(18, 26)]
    ev = walk(e, ch, {"p": pts}, T0 + 120)
    assert not [x for x in ev if isinstance(x, VisitStarted)]
    ends = [x for x in ev if isinstance(x, VisitEnded)]
    assert ends and not any(x.visitor for x in ends)


def test_a_shopper_who_walks_in_is_a_visitor() -> None:
    e, ch = engine({"v": "phone"})
    pts = [(12.0, -1.0)] * 3 + [(12.0, 1.5)] * 5 + [(6.0, 8.0)] * 120 + [(12.0, 1.5)] * 5 + [(12.0, -2.0)] * 3
    ev = walk(e, ch, {"v": pts}, T0 + 400)
    ends = [x for x in ev if isinstance(x, VisitEnded) and x.visitor]
    assert len(ends) == 1 and ends[0].dwell_by_zone.get("womens", 0) > 100


def test_fixtures_never_start_a_visit_and_all_day_devices_become_residents() -> None:
    e, ch = engine({"tv": "fixture", "staff": "phone"}, resident_after_s=300)
    staff = [(6.0, 8.0)] * 200 + [(18.0, 6.0)] * 400
    ev = walk(e, ch, {"tv": [(20.0, 14.0)] * 600, "staff": staff}, T0 + 600)
    assert not [x for x in ev if isinstance(x, VisitEnded) and x.visitor]
    closed = [x for x in ev if isinstance(x, VisitEnded) and x.resident]
    assert [x.subject for x in closed] == ["staff"]  # its visit.started had gone out: closed as resident
    assert e.residents() == {"tv": "fixture", "staff": "all-day"}
    aggs = [x for x in ev if isinstance(x, Aggregate) and x.zone is None]
    assert sum(a.residents for a in aggs) >= 1 or e.stats.aggregates_withheld > 0


def test_a_tag_moving_with_a_phone_is_not_an_extra_visitor_but_a_tag_alone_is() -> None:
    e, ch = engine({"phone": "phone", "tag": "tracker", "lonely-tag": "tracker"})
    path = [(12.0, -1.0)] * 3 + [(12.0, 1.5)] * 5 + [(6.0, 8.0)] * 90 + [(12.0, 1.5)] * 5 + [(12.0, -2.0)] * 3
    near = [(x + 1.0, y + 0.5) for x, y in path]
    other = [(12.0, -1.0)] * 3 + [(12.0, 1.5)] * 5 + [(18.0, 7.0)] * 90 + [(12.0, 1.5)] * 5 + [(12.0, -2.0)] * 3
    ev = walk(e, ch, {"phone": path, "tag": near, "lonely-tag": other}, T0 + 300)
    visitors = sorted(x.subject for x in ev if isinstance(x, VisitEnded) and x.visitor)
    assert visitors == ["lonely-tag", "phone"]
    assert e.stats.companions == 1


def test_an_orphan_deep_in_the_store_continues_the_track_that_stopped_there() -> None:
    """An unlinked rotation: 'a' stops in menswear, 'b' appears there 1 s later: one visitor."""
    e, ch = engine({"a": "phone", "b": "phone"})
    a = [(12.0, -1.0)] * 3 + [(12.0, 1.5)] * 5 + [(18.0, 7.0)] * 100
    b = [None] * 109 + [(18.0, 7.0)] * 100 + [(12.0, 1.5)] * 5 + [(12.0, -2.0)] * 3
    e2 = walk_sparse(e, ch, {"a": a, "b": b}, T0 + 400)
    visitors = [x for x in e2 if isinstance(x, VisitEnded) and x.visitor]
    assert len(visitors) == 1 and visitors[0].subject == "a"
    assert visitors[0].duration_s > 180
    assert e.stats.merges == 1


def walk_sparse(
    e: PresenceEngine, chains: dict[str, ChainInfo], path: dict[str, list[tuple[float, float] | None]], t1: float
) -> list[EventBase]:
    import numpy as np

    out: list[EventBase] = []
    t = T0
    while t <= t1:
        fx = []
        for subj, pts in path.items():
            k = int(t - T0)
            if k < len(pts) and pts[k] is not None:
                x, y = pts[k]  # type: ignore[misc]
                fx.append(Fix(t, subj, x, y, 1.0, e.zones_for(np.array([[x, y]]))[0]))
                chains[subj].last_ts = t
        out += e.update(fx, t)
        out += e.tick(t)
        t += 1.0
    return out + e.close(t)


def _staff_rotation(first: tuple[float, float]) -> tuple[PresenceEngine, list[EventBase]]:
    """A staff phone, a resident after 300 s, rotates at t = 400 s and the linker misses it (an
    advert faded at one sensor): the new address 'b' is a chain of its own, only seconds old, first
    fixed at ``first`` (one advert's fix), then next to where 'a' stopped, by the window display."""
    e, ch = engine({"a": "phone", "b": "phone"}, resident_after_s=300)
    a = [(6.0, 8.0)] * 200 + [(3.0, 4.0)] * 200
    b: list[tuple[float, float] | None] = [None] * 401 + [first] + [(3.0, 4.0)] * 30 + [(6.0, 8.0)] * 200
    ch["b"].first_ts = T0 + 401
    return e, walk_sparse(e, ch, {"a": a, "b": b}, T0 + 700)


def test_a_staff_phone_rotating_in_the_store_unlinked_stays_a_resident() -> None:
    """The seed-3 bench_store staff phone: an orphan deep in the store continues a resident's track
    (old code skipped residents as orphans' candidates: 'b' became a visitor of 230 s)."""
    e, ev = _staff_rotation((3.0, 4.5))
    assert not [x for x in ev if isinstance(x, VisitEnded) and x.visitor]
    assert list(e.merge_log) == [("b", "a")]
    assert "a" in e.residents()


def test_a_staff_phone_whose_new_address_is_first_fixed_outside_any_zone_stays_a_resident() -> None:
    """The same with the new address's first fix off the plan (one advert's fix, clamped to the
    search area's corner), as in the bench: a first fix in no zone made no orphan in the old code."""
    e, ev = _staff_rotation((-4.0, -4.5))
    assert not [x for x in ev if isinstance(x, VisitEnded) and x.visitor]
    assert list(e.merge_log) == [("b", "a")]


def test_a_shopper_walking_in_from_the_pavement_is_no_orphan() -> None:
    """First fixed on the pavement: it walked in, it continues no one (a staff phone fell silent there)."""
    e, ch = engine({"a": "phone", "b": "phone"}, resident_after_s=300)
    a = [(12.0, 4.0)] * 400
    b: list[tuple[float, float] | None] = [None] * 399 + [(12.0, -1.0)] * 3 + [(12.0, 1.5)] * 3 + [(12.0, 5.0)] * 120
    ch["b"].first_ts = T0 + 399
    ev = walk_sparse(e, ch, {"a": a, "b": b}, T0 + 700)
    assert [x.subject for x in ev if isinstance(x, VisitEnded) and x.visitor] == ["b"]
    assert e.stats.merges == 0


def test_a_device_present_all_day_through_a_missed_rotation_becomes_a_resident() -> None:
    """bench_store shopfront-glass seed 2: an Apple TV in a window rotated unlinked after 15 min;
    the orphan rule joined the new address to the old track, but the all-day rule read the old
    chain's span (15 min, never growing): a visitor of 2 h. The merged track's span counts."""
    e, ch = engine({"a": "computer", "b": "computer"}, resident_after_s=600)
    a: list[tuple[float, float] | None] = [(18.0, 7.0)] * 300
    b: list[tuple[float, float] | None] = [None] * 301 + [(18.0, 7.0)] * 700
    ch["b"].first_ts = T0 + 301
    ev = walk_sparse(e, ch, {"a": a, "b": b}, T0 + 1100)
    assert list(e.merge_log) == [("b", "a")]
    assert not [x for x in ev if isinstance(x, VisitEnded) and x.visitor]
    assert e.residents() == {"a": "all-day"}
