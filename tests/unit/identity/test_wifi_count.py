"""Wi-Fi devices present per minute and per interval, per zone, with an uncertainty."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.identity.wifi_count import WifiCounter
from gateway.layout import Layout
from gateway.models import EVENT_ADAPTER, DeviceCount, Fix, Observation, Priority, priority_of
from gateway.pipeline import Pipeline

T0 = 1_767_261_600.0  # a whole minute (and quarter hour)


def _counts(events: list[object], interval_s: float, zone: str | None = None) -> list[float]:
    return [e.devices for e in events if isinstance(e, DeviceCount) and e.interval_s == interval_s and e.zone == zone]


def test_devices_heard_in_the_window_are_present_each_minute() -> None:
    c = WifiCounter("s1", window_s=120.0, interval_s=900.0)
    assert c.tick(T0 + 600.0) == []  # nothing heard yet: nothing published
    c.heard(T0 + 10.0, "a")
    c.heard(T0 + 50.0, "b")
    c.heard(T0 + 70.0, "a")  # a again (its next burst)
    c.heard(T0 + 130.0, "c")
    ev = c.tick(T0 + 240.0)
    # minute ends 60, 120, 180, 240: a+b, a+b, a+c (b last heard at 50 < 180-120), c
    assert _counts(ev, 60.0) == [2.0, 2.0, 2.0, 1.0]
    e = ev[0]
    assert isinstance(e, DeviceCount)
    assert (e.interval_start, e.ts, e.window_s, e.store_id) == (T0, T0 + 60.0, 120.0, "s1")
    assert e.sd == pytest.approx((0.1**2 * 4 + 2) ** 0.5, abs=0.01)
    assert c.latest["devices"] == 1.0


def test_the_interval_is_the_mean_of_its_minutes_per_zone_where_located() -> None:
    c = WifiCounter("s1", window_s=120.0, interval_s=900.0)
    ev: list[object] = []
    for k in range(15):
        c.heard(T0 + 60.0 * k + 1.0, "a")  # present all quarter hour
        if k < 5:
            c.heard(T0 + 60.0 * k + 2.0, "b")  # only at first
        c.located([Fix(T0 + 60.0 * k + 3.0, "a", 1.0, 1.0, 0.5, "fruit"), Fix(T0, "z", 1.0, 1.0, 0.5, "bakery")])
        ev += c.tick(T0 + 60.0 * k + 3.0)
    ev += c.tick(T0 + 900.0)
    minutes = _counts(ev, 60.0)
    assert len(minutes) == 15
    assert _counts(ev, 900.0) == [pytest.approx(sum(minutes) / 15, abs=0.01)]
    assert _counts(ev, 900.0, "fruit") == [1.0]
    assert _counts(ev, 900.0, "bakery") == []  # "z" is no Wi-Fi subject
    assert all(priority_of(e) == Priority.AGGREGATE for e in ev)
    assert c.latest["interval"]["devices"] == pytest.approx(sum(minutes) / 15, abs=0.01)


def test_shutdown_publishes_the_minute_under_way_and_its_interval() -> None:
    c = WifiCounter("s1", window_s=120.0, interval_s=900.0)
    c.heard(T0 + 10.0, "a")
    c.heard(T0 + 70.0, "b")
    ev = c.close(T0 + 95.0)
    minutes = [(e.interval_start, e.interval_s, e.devices) for e in ev if isinstance(e, DeviceCount)]
    # the full first minute, the 35 s of the second, and the 95 s interval they make
    assert minutes == [(T0, 60.0, 1.0), (T0 + 60.0, 35.0, 2.0), (T0, 95.0, 1.5)]
    assert c.close(T0 + 200.0) == []  # once


def test_events_are_wire_valid_and_memory_is_bounded() -> None:
    c = WifiCounter("s1")
    for k in range(10_000):
        c.heard(T0 + k, f"s{k}")  # a new subject every second for ~3 h
        if k % 60 == 0:
            for e in c.tick(T0 + k):
                EVENT_ADAPTER.validate_json(e.model_dump_json())
    assert len(c._last_heard) <= 181  # the window and the minute not yet counted


def test_pipeline_publishes_wifi_counts_only_with_wifi(demo_layout: object) -> None:
    from gateway.layout import load_layout

    layout: Layout = load_layout(demo_layout)  # type: ignore[arg-type]
    obs = [
        Observation(T0 + k, "gw", f"02:00:00:00:00:{k % 3:02x}", -60.0, "wifi", None, f"g{k % 3}") for k in range(300)
    ]
    for wifi, expect in ((True, True), (False, False)):
        p = Pipeline(Settings.model_validate({"wifi": {"enabled": wifi}}), layout)
        ev = p.process(obs) + p.advance(T0 + 400.0) + p.close()
        counts = [e for e in ev if isinstance(e, DeviceCount) and e.zone is None and e.interval_s == 60.0]
        assert bool(counts) is expect
        if wifi:
            assert {e.devices for e in counts[1:4]} == {3.0}  # three groups, three subjects
            assert p.stats.events.get("wifi.devices", 0) >= 5
