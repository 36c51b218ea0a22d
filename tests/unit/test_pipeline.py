"""Pipeline core: drops are counted, event time comes from the data, replays are deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gateway.config import SimulatorSettings, load_settings
from gateway.layout import load_layout
from gateway.models import EventBase, Observation, PositionFix
from gateway.pipeline import MAX_TICK_GAP_S, Pipeline
from gateway.sim.store import StoreSimulator
from tests.conftest import LAYOUT


def settings(**presence: object):  # type: ignore[no-untyped-def]
    return load_settings(presence={"publish_fixes": True, **presence})


def ring(layout, x: float, y: float, ts: float, device: str = "aa:bb:cc:00:00:01") -> list[Observation]:  # type: ignore[no-untyped-def]
    """Noise-free readings of a device at (x, y) from every layout sensor."""
    out = []
    for s in layout.sensors:
        d = float(np.hypot(s.x - x, s.y - y))
        rssi = s.rssi_at_1m - 10.0 * s.path_loss_exponent * float(np.log10(max(d, 0.5)))
        out.append(Observation(ts=ts, sensor=s.id, device=device, rssi=rssi))
    return out


def test_unknown_sensor_and_late_observations_are_counted_and_dropped() -> None:
    layout = load_layout(LAYOUT)
    p = Pipeline(settings(), layout)
    p.process(ring(layout, 10.0, 10.0, 1000.0))
    p.process([Observation(ts=1000.5, sensor="nope", device="x", rssi=-60.0)])
    late = 1000.0 - p.settings.localization.window_s - 1.0
    p.process([Observation(ts=late, sensor=layout.sensors[0].id, device="x", rssi=-60.0)])
    assert p.stats.dropped == {"unknown_sensor": 1, "too_late": 1}
    assert p.stats.observations == len(layout.sensors)
    # a dropped observation does not count as the sensor being heard
    assert p.sensor_last_heard == {s.id: 1000.0 for s in layout.sensors}


def test_fixes_follow_event_time_and_land_near_the_device() -> None:
    layout = load_layout(LAYOUT)
    s = settings()
    seen = []
    p = Pipeline(s, layout, on_fixes=seen.extend)
    t0 = 5000.0
    events = []
    for k in range(20):
        events += p.process(ring(layout, 12.0, 8.0, t0 + 0.5 * k))
    n_ticks = int((t0 + 9.5) // s.localization.fix_interval_s - t0 // s.localization.fix_interval_s)
    assert p.stats.fixes >= n_ticks - 1 > 0
    fix_events = [e for e in events if e.type == "fix"]
    assert fix_events and all(e.subject != "aa:bb:cc:00:00:01" for e in fix_events)
    last = seen[-1]
    assert abs(last.x - 12.0) < 1.0 and abs(last.y - 8.0) < 1.0
    # silence: advancing event time far ahead closes the visit with no new observation
    later = p.advance(t0 + 3600.0)
    assert p.now == t0 + 3600.0
    assert any(e.type in ("visit.ended", "zone.left") for e in later)


def test_same_observations_give_the_same_events() -> None:
    """A replay at any speed must reproduce the live run: the pipeline never reads the clock."""
    layout = load_layout(LAYOUT)
    sim_s = SimulatorSettings(enabled=True, seed=3, shoppers_per_hour=240, duration_s=480)
    sim = StoreSimulator(layout, sim_s)
    batches = []
    t = sim_s.start_ts
    while t < sim_s.start_ts + 480:
        t += sim_s.tick_s
        batches.append(sim.step(t))

    def run(chunks: int) -> list[tuple[str, float, str | None]]:
        p = Pipeline(settings(), layout)
        out = []
        flat = [o for b in batches for o in b]
        size = max(1, len(flat) // chunks)
        for i in range(0, len(flat), size):
            # fresh copies: the identity stage replaces raw ids in place
            out += p.process(
                [
                    Observation(o.ts, o.sensor, o.device, o.rssi, o.radio, o.rssi_at_1m, o.link)
                    for o in flat[i : i + size]
                ]
            )
        out += p.close()
        return [(e.type, e.ts, getattr(e, "zone", None)) for e in out]

    a, b = run(7), run(300)
    assert len(a) > 10
    assert a == b


def test_a_tick_in_parts_hands_each_part_on_at_once() -> None:
    """``localization.tick_chunk_devices``: each part's events (after everything the call produced
    before them) go to ``on_partial`` as soon as the part is done; with what the calls return, every
    event once, counted once, and the fixes those of one part (up to float rounding)."""
    layout = load_layout(LAYOUT)
    sim_s = SimulatorSettings(enabled=True, seed=4, shoppers_per_hour=900, duration_s=150)
    sim = StoreSimulator(layout, sim_s)
    batches = []
    t = sim_s.start_ts
    while t < sim_s.start_ts + 150:
        t += sim_s.tick_s
        batches.append(sim.step(t))

    def run(chunk: int) -> tuple[list[EventBase], int, Pipeline]:
        s = load_settings(presence={"publish_fixes": True}, localization={"tick_chunk_devices": chunk})
        handed: list[list[EventBase]] = []
        p = Pipeline(s, layout, on_partial=handed.append)
        out: list[EventBase] = []
        calls = 0
        for b in batches:
            got = p.process([Observation(o.ts, o.sensor, o.device, o.rssi, o.radio, o.rssi_at_1m, o.link) for o in b])
            calls += len(handed)
            # handed on first, in time order, then the rest of the call's events
            out += [e for part in handed for e in part] + got
            handed.clear()
        return out, calls, p

    whole, none_handed, a = run(0)
    parts, handed, b = run(2)
    assert none_handed == 0 and handed > 100
    assert len({e.event_id for e in parts}) == len(parts) == sum(b.stats.events.values())
    ts = [e.ts for e in parts if e.type == "fix"]
    assert ts == sorted(ts)
    # (pseudonyms differ between two pipelines: each has its own keys)
    fw = [(e.ts, e.x, e.y) for e in whole if isinstance(e, PositionFix)]
    fp = [(e.ts, e.x, e.y) for e in parts if isinstance(e, PositionFix)]
    assert [f[0] for f in fp] == [f[0] for f in fw] and len(fw) > 1000
    assert max(max(abs(p[1] - w[1]), abs(p[2] - w[2])) for p, w in zip(fp, fw, strict=True)) <= 0.011
    assert b.stats.fixes == a.stats.fixes


def test_a_clock_jump_does_not_tick_every_second_of_it() -> None:
    """A box without RTC whose clock jumps by months (or a replay with a long gap): visits still
    time out, and the pipeline does not run one tick per second of the jump."""
    layout = load_layout(LAYOUT)
    p = Pipeline(settings(), layout)
    for k in range(10):
        p.process(ring(layout, 12.0, 8.0, 5000.0 + 0.5 * k))
    ticks = 0
    fixes = p.localizer.fixes

    def counting(t: float):  # type: ignore[no-untyped-def]
        nonlocal ticks
        ticks += 1
        return fixes(t)

    p.localizer.fixes = counting  # type: ignore[method-assign]
    events = p.advance(5000.0 + 300 * 86400.0)
    assert 0 < ticks <= MAX_TICK_GAP_S / p.settings.localization.fix_interval_s + 2  # not ~26 M
    assert any(e.type == "visit.ended" or e.type == "zone.left" for e in events)
    # the tick grid is realigned just after the new time, and the next observation ticks normally
    later = 5000.0 + 300 * 86400.0 + 10.0
    p.process(ring(layout, 3.0, 3.0, later))
    assert p.now == later
    assert p.stats.fixes > 0


def test_a_batch_of_only_opted_out_observations_is_dropped_quietly() -> None:
    """Identity may drop a whole batch (one opted-out phone alone in the store): nothing to localize,
    no crash (it raised IndexError and took the daemon's pipeline task down)."""
    from gateway.identity.pseudonyms import PseudonymKeyring
    from gateway.identity.subjects import IdentityResolver

    layout = load_layout(LAYOUT)
    resolver = IdentityResolver(PseudonymKeyring(), optout_key=b"k" * 32)
    resolver.add_optout("aa:bb:cc:00:00:01", 1000.0)
    p = Pipeline(settings(), layout, identity=resolver)
    assert p.process(ring(layout, 10.0, 10.0, 1000.0)) == []
    assert resolver.stats.dropped_optout == len(layout.sensors)
    # and the next phone is localized as usual
    p.process(ring(layout, 10.0, 10.0, 1000.5, device="aa:bb:cc:00:00:02"))
    events = p.process(ring(layout, 10.0, 10.0, 1002.0, device="aa:bb:cc:00:00:02"))
    assert any(e.type == "fix" for e in events)


def test_a_fix_stride_sheds_ticks_counts_them_and_keeps_their_observations() -> None:
    """Load shedding (``fix_stride``, set by the daemon): fixes on every n-th tick only, the ticks
    between counted as ``fix_tick_shed``, their observations in the next computed tick (none lost as
    stale); the stride is capped at ``localization.window_s`` ticks; stride 1 changes nothing."""
    layout = load_layout(LAYOUT)
    s = settings()
    iv = s.localization.fix_interval_s

    def run(stride: int, seconds: int = 30) -> tuple[Pipeline, list[PositionFix]]:
        p = Pipeline(s, layout)
        p.fix_stride = stride
        out: list[PositionFix] = []
        for k in range(seconds * 4):
            out += [e for e in p.process(ring(layout, 12.0, 8.0, 7000.0 + 0.25 * k)) if isinstance(e, PositionFix)]
        return p, out

    every, fixes1 = run(1)
    assert "fix_tick_shed" not in every.stats.dropped
    default = Pipeline(s, layout)  # stride 1 is the default: the same fixes
    got = [e for k in range(120) for e in default.process(ring(layout, 12.0, 8.0, 7000.0 + 0.25 * k))]
    assert [(f.ts, f.x, f.y) for f in fixes1] == [(f.ts, f.x, f.y) for f in got if isinstance(f, PositionFix)]
    for stride in (2, 3):
        p, fixes = run(stride)
        ticks = len(fixes1)
        assert abs(len(fixes) - ticks / stride) <= 1
        assert p.stats.dropped["fix_tick_shed"] == pytest.approx(ticks - len(fixes), abs=1)
        assert all(b.ts - a.ts == stride * iv for a, b in itertools.pairwise(fixes))
        assert p.localizer.stats.dropped.get("stale", 0) == 0  # every observation was used
        assert abs(fixes[-1].x - 12.0) < 1.0 and abs(fixes[-1].y - 8.0) < 1.0
    # never more than localization.window_s apart (older observations would be stale)
    p, fixes = run(10)
    cap = int(s.localization.window_s / iv)
    assert all(b.ts - a.ts == cap * iv for a, b in itertools.pairwise(fixes))


def test_a_tick_already_superseded_by_waiting_observations_is_shed() -> None:
    """Catch-up shedding (``horizon``, the daemon's newest live event time waiting behind the call):
    a tick whose successor is already due in observations not yet processed is shed and counted -
    never more than ``localization.window_s`` apart, every observation kept; a horizon that is not
    a tick ahead (a pipeline keeping up) and no horizon at all (replays) change nothing, even for a
    batch that crosses several ticks itself."""
    layout = load_layout(LAYOUT)
    s = settings()
    iv = s.localization.fix_interval_s
    batches = [ring(layout, 12.0, 8.0, 7000.0 + 0.25 * k) for k in range(120)]

    def run(ahead: float | None, step: int = 1) -> tuple[Pipeline, list[PositionFix]]:
        p = Pipeline(s, layout)
        out: list[PositionFix] = []
        for k in range(0, len(batches), step):
            part = [o for b in batches[k : k + step] for o in b]
            if ahead is not None:
                newest = part[-1].ts + ahead
                p.horizon = lambda newest=newest: newest  # type: ignore[misc]
            out += [e for e in p.process(part) if isinstance(e, PositionFix)]
        return p, out

    base, every = run(None)
    assert "fix_tick_shed" not in base.stats.dropped
    for ahead in (-1.0, 0.5 * iv):  # nothing waiting, or not a whole tick ahead: every tick computed
        p, fixes = run(ahead)
        assert "fix_tick_shed" not in p.stats.dropped
        assert [(f.ts, f.x, f.y) for f in fixes] == [(f.ts, f.x, f.y) for f in every]
    _, crossing = run(None, step=12)  # one batch crosses three ticks: all three computed
    assert [f.ts for f in crossing] == [f.ts for f in every]
    cap = int(s.localization.window_s / iv)
    p, fixes = run(10.0)  # far behind: fixes on every window_s-th tick only
    assert p.stats.dropped["fix_tick_shed"] == pytest.approx(len(every) - len(fixes), abs=1)
    assert all(b.ts - a.ts == cap * iv for a, b in itertools.pairwise(fixes))
    assert p.localizer.stats.dropped.get("stale", 0) == 0  # every observation was used
    assert abs(fixes[-1].x - 12.0) < 1.0 and abs(fixes[-1].y - 8.0) < 1.0
