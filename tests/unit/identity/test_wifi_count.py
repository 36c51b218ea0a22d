"""Wi-Fi devices present per minute and per interval, per zone, with an uncertainty: the presence the
heard bursts stand for, not the groups (gateway/identity/wifi_count.py)."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.identity.wifi_count import WifiCounter, count_marks
from gateway.layout import Layout
from gateway.models import EVENT_ADAPTER, DeviceCount, Fix, Observation, PresenceMark, Priority, priority_of
from gateway.pipeline import Pipeline

T0 = 1_767_261_600.0  # a whole minute (and quarter hour)


def _mark(presence_s: float, rel: float = 0.0, arrivals: float = 0.0) -> PresenceMark:
    return PresenceMark(presence_s=presence_s, rel_sd=rel, arrivals=arrivals, arrivals_rel_sd=rel)


def _counts(events: list[object], interval_s: float, zone: str | None = None) -> list[float]:
    return [e.devices for e in events if isinstance(e, DeviceCount) and e.interval_s == interval_s and e.zone == zone]


def test_a_burst_stands_for_its_presence_spread_over_the_window_around_it() -> None:
    c = WifiCounter("s1", window_s=300.0, interval_s=900.0, slack_s=5.0)
    assert c.tick(T0 + 100.0) == []  # nothing heard yet: nothing published
    c.heard(T0 + 119.0, "a")  # frames without a mark count for nothing
    c.heard(T0 + 150.0, "a", _mark(300.0))  # one device for 300 s: [T0, T0 + 300)
    # counting starts with the minute of the first burst, [T0 + 120, T0 + 180); it waits for the
    # bursts after it: window / 2 + slack
    assert _counts(c.tick(T0 + 180.0 + 154.0), 60.0) == []
    ev = c.tick(T0 + 180.0 + 155.0)
    assert _counts(ev, 60.0) == [1.0]
    ev = c.tick(T0 + 600.0 + 155.0)
    assert _counts(ev, 60.0) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    e = ev[0]
    assert isinstance(e, DeviceCount)
    assert (e.interval_start, e.ts, e.window_s, e.store_id) == (T0 + 180.0, T0 + 240.0, 300.0, "s1")
    assert c.latest["devices"] == 0.0 and c.latest["window_s"] == 300.0


def test_a_phone_split_into_many_groups_still_counts_once() -> None:
    """Three groups, one phone: each of its bursts stands for its share of the time, whoever's."""
    c = WifiCounter("s1", window_s=300.0)
    ev: list[object] = []
    for k in range(30):  # a burst every 60 s, each under another group (a per-burst split)
        c.heard(T0 + 60.0 * k, f"group{k % 3}", _mark(60.0))
        ev += c.tick(T0 + 60.0 * k)
    ev += c.tick(T0 + 1800.0 + 155.0)
    middle = _counts(ev, 60.0)[5:20]
    assert middle == [pytest.approx(1.0)] * 15


def test_uncertainty_from_the_bursts_and_from_the_learnt_parameters() -> None:
    c = WifiCounter("s1", window_s=300.0)
    for k in range(10):  # ten devices heard once each, around the same moment
        c.heard(T0 + 150.0 + k * 0.1, f"d{k}", _mark(300.0, rel=0.2))
    ev = c.tick(T0 + 600.0)
    first = next(e for e in ev if isinstance(e, DeviceCount) and e.zone is None)
    assert first.devices == pytest.approx(10.0, abs=0.05)
    # scatter: ten contributions of 1 -> variance 10; parameters: 0.2 x 10, the same for all
    assert first.sd == pytest.approx((10 + (0.2 * 10) ** 2) ** 0.5, abs=0.02)


def test_the_interval_is_the_mean_of_its_minutes_with_distinct_devices_per_zone() -> None:
    c = WifiCounter("s1", window_s=300.0, interval_s=900.0)
    ev: list[object] = []
    for k in range(-5, 22):
        c.heard(T0 + 60.0 * k + 1.0, "a", _mark(60.0))  # "a" present all along
        if 0 <= k < 5:
            c.heard(T0 + 60.0 * k + 2.0, "b", _mark(60.0, arrivals=0.2))  # "b" at first
        c.located([Fix(T0 + 60.0 * k + 3.0, "a", 1.0, 1.0, 0.5, "fruit"), Fix(T0, "z", 1.0, 1.0, 0.5, "bakery")])
        ev += c.tick(T0 + 60.0 * k + 3.0)
    ev += c.tick(T0 + 900.0 + 155.0)
    quarter = [e for e in ev if isinstance(e, DeviceCount) and e.interval_s == 900.0 and e.zone is None]
    assert len(quarter) == 1 and quarter[0].interval_start == T0
    minutes = [
        e.devices
        for e in ev
        if isinstance(e, DeviceCount) and e.interval_s == 60.0 and e.zone is None and T0 <= e.interval_start < T0 + 900
    ]
    assert quarter[0].devices == pytest.approx(sum(minutes) / 15, abs=0.01)
    # distinct: half of those present at its start and end, plus the arrivals of its bursts
    assert quarter[0].distinct == pytest.approx(0.5 * (minutes[0] + minutes[-1]) + 5 * 0.2, abs=0.1)
    assert quarter[0].distinct_sd is not None and quarter[0].distinct_sd > 0
    assert _counts(ev, 900.0, "fruit") == [pytest.approx(1.0, abs=0.01)]
    assert _counts(ev, 900.0, "bakery") == []  # "z" is no Wi-Fi subject
    assert all(priority_of(e) == Priority.AGGREGATE for e in ev)  # type: ignore[arg-type]
    assert c.latest["interval"]["devices"] == pytest.approx(sum(minutes) / 15, abs=0.01)


def test_shutdown_publishes_every_minute_heard_and_the_one_under_way() -> None:
    c = WifiCounter("s1", window_s=300.0, interval_s=900.0)
    c.heard(T0 + 10.0, "a", _mark(60.0))
    c.heard(T0 + 70.0, "b", _mark(60.0))
    ev = c.close(T0 + 95.0)
    minutes = [(e.interval_start, e.interval_s) for e in ev if isinstance(e, DeviceCount)]
    # the full first minute, the 35 s of the second, and the 95 s interval they make
    assert minutes == [(T0, 60.0), (T0 + 60.0, 35.0), (T0, 95.0)]
    assert c.close(T0 + 200.0) == []  # once


def test_a_long_silence_publishes_no_zero_minutes_in_between() -> None:
    c = WifiCounter("s1", window_s=300.0, interval_s=900.0)
    c.heard(T0 + 10.0, "a", _mark(60.0))
    ev = c.tick(T0 + 3600.0)
    ev += c.tick(T0 + 5 * 86400.0)  # five days later (a closed store, a capture spanning days)
    c.heard(T0 + 5 * 86400.0 + 10.0, "b", _mark(60.0))
    ev += c.close(T0 + 5 * 86400.0 + 400.0)
    assert len(ev) < 80  # the quarter hour around each burst, not five days of minutes
    assert max(e.devices for e in ev if isinstance(e, DeviceCount)) > 0.0


def test_opt_out_removes_a_subject_at_once() -> None:
    c = WifiCounter("s1", window_s=300.0)
    c.heard(T0 + 100.0, "a", _mark(300.0))
    c.heard(T0 + 100.0, "b", _mark(300.0))
    c.forget("a")
    ev = c.tick(T0 + 400.0)
    assert _counts(ev, 60.0)[0] == pytest.approx(1.0)  # b alone (a and b: 2)


def test_events_are_wire_valid_and_memory_is_bounded() -> None:
    c = WifiCounter("s1")
    for k in range(10_000):
        c.heard(T0 + k, f"s{k}", _mark(30.0, 0.1, 0.05))  # a new subject every second for ~3 h
        if k % 60 == 0:
            for e in c.tick(T0 + k):
                EVENT_ADAPTER.validate_json(e.model_dump_json())
    assert len(c._marks) <= 300 + 60 + 5 + 1  # the window, the minute not yet counted, the slack


def test_a_whole_capture_counts_its_distinct_devices_from_the_arrivals() -> None:
    marks = [(T0 + 60.0 * k, "g", _mark(60.0, 0.1, 0.1)) for k in range(60)]
    events, whole = count_marks(marks, window_s=300.0)
    assert whole is not None and whole.distinct == pytest.approx(6.0)
    assert whole.interval_start == T0 and whole.devices == pytest.approx(1.0, abs=0.1)
    assert any(e.interval_s == 900.0 for e in events)
    assert count_marks([]) == ([], None)


def test_pipeline_counts_the_marked_bursts_only_with_wifi(demo_layout: object) -> None:
    from gateway.layout import load_layout

    layout: Layout = load_layout(demo_layout)  # type: ignore[arg-type]
    obs = []
    for k in range(900):
        o = Observation(T0 + k, "gw", f"02:00:00:00:00:{k % 3:02x}", -60.0, "wifi", None, f"g{k % 3}")
        if k % 20 == 0:  # three devices (k % 3): a burst of each every minute, each a minute of presence
            o.presence = _mark(60.0)
        obs.append(o)
    obs = sorted(obs, key=lambda o: o.ts)
    for wifi, expect in ((True, True), (False, False)):
        p = Pipeline(Settings.model_validate({"wifi": {"enabled": wifi}}), layout)
        ev = p.process(obs) + p.advance(T0 + 1200.0) + p.close()
        counts = [e for e in ev if isinstance(e, DeviceCount) and e.zone is None and e.interval_s == 60.0]
        assert bool(counts) is expect
        if wifi:
            assert [round(e.devices, 1) for e in counts[3:10]] == [3.0] * 7
            assert p.stats.events.get("wifi.devices", 0) >= 5


def test_the_daemons_identity_stage_keeps_the_marks() -> None:
    """The daemon resolves subjects with IdentityResolver (new observations): a burst's mark goes on."""
    from gateway.identity.pseudonyms import PseudonymKeyring
    from gateway.identity.subjects import IdentityResolver

    r = IdentityResolver(PseudonymKeyring(), optout_key=b"k" * 32)
    o = Observation(T0, "gw", "02:00:00:00:00:01", -60.0, "wifi", None, "g1")
    o.presence = _mark(60.0)
    (out,) = r.resolve([o])
    assert out is not o and out.presence == o.presence


def _irregular(start: float, end: float, seed: int) -> list[float]:
    """One phone's heard bursts: clusters and quiet stretches (cv of the silences ~1, as the real
    iPhone 7's and iPhone 12's)."""
    import random

    rng = random.Random(seed)
    out, t = [], start
    while t < end:
        out.append(t)
        t += rng.choice([3.0, 5.0, 20.0, 45.0, 120.0, 200.0])
    return out


def _minutes(marks: list[tuple[float, str, PresenceMark]], **kw: object) -> list[tuple[float, float]]:
    events, _whole = count_marks(marks, window_s=300.0, **kw)  # type: ignore[arg-type]
    return [(e.interval_start, e.devices) for e in events if e.zone is None and e.interval_s == 60.0]


def test_a_phone_followed_burst_to_burst_counts_one_all_along() -> None:
    """Issue 19, sixth round: the real phones' per-minute error (27.6 %) was one phone's irregular
    bursts, each spread over the window; where a burst surely follows its group's previous one
    (PresenceMark.follows), the phone is present in between - exactly one."""
    times = _irregular(T0, T0 + 3600.0, 1)
    mean_gap = (times[-1] - times[0]) / (len(times) - 1)
    marks = [(t, "w1", PresenceMark(mean_gap, 0.1, 0.0, 0.1, follows=k > 0)) for k, t in enumerate(times)]
    inside = lambda mins: [n for s, n in mins if times[0] <= s and s + 60.0 <= times[-1]]  # noqa: E731
    followed = inside(_minutes(marks))
    assert len(followed) > 50
    dev = [abs(n - 1.0) for n in followed]
    # one, but for a minute now and then in a silence longer than half the window, published
    # while what the bursts stood for beyond their silences was carried after the latest
    assert sum(d < 1e-6 for d in dev) >= 0.8 * len(dev)
    assert sum(dev) / len(dev) < 0.06
    # the old shape (each burst's presence over the window around it): right on average only
    spread = inside(_minutes(marks, follow=False))
    assert abs(sum(spread) / len(spread) - 1.0) < 0.2
    assert sum(abs(n - 1.0) for n in spread) / len(spread) > 5 * sum(dev) / len(dev)
    # a mark that does not follow (a new device, a link not sure), or another group, is spread as before
    loose = [(t, "w1", PresenceMark(mean_gap, 0.1, 0.0, 0.1)) for t in times]
    assert _minutes(loose) == _minutes(loose, follow=False)
    apart = [(t, f"w{k}", mk) for k, (t, _g, mk) in enumerate(marks)]
    assert _minutes(apart) == _minutes(apart, follow=False)


def test_following_keeps_what_the_bursts_stand_for_in_all() -> None:
    """The presence a followed burst stood for beyond its silence (a visit's ends: the model's
    kappa) is not dropped, it goes on with the device: the count's total stays the model's."""
    times = _irregular(T0 + 600.0, T0 + 2400.0, 2)
    # each burst stands for its share of the silences and of the visit's two ends (kappa 1.2)
    each = 1.2 * (times[-1] - times[0]) / (len(times) - 1)
    marks = [(t, "w1", PresenceMark(each, 0.1, 0.0, 0.1, follows=k > 0)) for k, t in enumerate(times)]
    # the capture starts before and goes on after: every minute of the visit is counted
    marks = [(T0, "other", _mark(1e-6)), *marks, (T0 + 3600.0, "other", _mark(1e-6))]
    total = sum(n * 60.0 for _s, n in _minutes(marks))
    assert total == pytest.approx(each * len(times), rel=0.03)
    assert total == pytest.approx(sum(n * 60.0 for _s, n in _minutes(marks, follow=False)), rel=0.03)
    # where the silences filled outweigh what the bursts stood for, the device still counts one
    # (silences up to half the window: a longer one is counted as far as known when its minutes
    # are published, half a window after they end)
    every = [T0 + 600.0 + 20.0 * k + 100.0 * (k // 5) for k in range(60)]  # silences of 20 and 120 s
    short = [(t, "w1", PresenceMark(10.0, 0.1, 0.0, 0.1, follows=k > 0)) for k, t in enumerate(every)]
    short = [(T0, "other", _mark(1e-6)), *short, (T0 + 3600.0, "other", _mark(1e-6))]
    assert sum(n * 60.0 for _s, n in _minutes(short)) >= every[-1] - every[0]
    # ... placed after the device's latest burst, not before its first
    first = min(s for s, n in _minutes(marks) if n > 0.01)
    assert first >= times[0] - 150.0 - 60.0


def test_an_opt_out_forgets_a_followed_subject_too() -> None:
    c = WifiCounter("s1", window_s=300.0)
    c.heard(T0 + 400.0, "a", _mark(60.0))
    c.heard(T0 + 460.0, "a", PresenceMark(60.0, 0.0, 0.0, 0.0, follows=True))
    c.forget("a")
    c.heard(T0 + 520.0, "a", PresenceMark(60.0, 0.0, 0.0, 0.0, follows=True))  # nothing before it now
    ev = c.tick(T0 + 1200.0)
    assert sum(_counts(ev, 60.0)) == pytest.approx(60.0 / 60.0, abs=1e-6)
