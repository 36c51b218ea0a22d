"""bench_wifi's count references: a group taken as one device between its bursts (_fill_minutes) and
the per-phone breakdown of the real capture's count (_real_phones), on marks made here."""

from __future__ import annotations

import random

from bench.bench_wifi import Truth, _count_figures, _fill_minutes, _real_phones
from gateway.identity.wifi_count import count_marks
from gateway.models import PresenceMark
from gateway.parsers.wifi_probe import Probe

T0 = 1_700_000_000.0


def _bursts(seed: int, start: float, end: float) -> list[float]:
    """Irregular scan bursts: quiet stretches and clusters, as the real iPhone 7's (cv ~1.2)."""
    rng = random.Random(seed)
    out, t = [], start
    while t < end:
        out.append(t)
        t += rng.choice([4.0, 6.0, 25.0, 60.0, 150.0, 240.0])
    return out


def _mark(presence: float) -> PresenceMark:
    return PresenceMark(presence_s=presence, rel_sd=0.2, arrivals=0.0, arrivals_rel_sd=0.3)


def test_one_device_followed_whole_is_counted_one_between_its_bursts() -> None:
    times = _bursts(1, T0, T0 + 3600.0)
    mean_gap = (times[-1] - times[0]) / (len(times) - 1)
    marks = [(t, "w1", _mark(mean_gap)) for t in times]
    truth = Truth([(times[0], times[-1])], times[0], times[-1])
    fill = _fill_minutes(marks, truth, min_truth=0.5)
    assert fill["n"] > 50
    # inside its visit the device is present all along: only the minutes at its two ends differ
    assert abs(fill["bias"]) < 0.02 and fill["mae"] < 0.02
    # the count's window spreads each burst's presence over 5 minutes: right on average, but a
    # quiet stretch reads low and a cluster high - what the real phones' per-minute error is made of
    events, _whole = count_marks(marks, window_s=300.0)
    window = _count_figures(events, truth, min_truth=0.5)
    assert abs(window["minute.bias"]) < 0.15
    assert window["minute.mae"] > 5 * fill["mae"]


def test_two_devices_at_once_are_two_and_a_silence_beyond_the_fill_is_not_filled() -> None:
    a = _bursts(2, T0, T0 + 1800.0)
    b = _bursts(3, T0 + 10.0, T0 + 1800.0)
    marks = sorted([(t, "w1", _mark(60.0)) for t in a] + [(t, "w2", _mark(60.0)) for t in b])
    truth = Truth([(a[0], a[-1]), (b[0], b[-1])], T0, T0 + 1800.0)
    assert _fill_minutes(marks, truth, min_truth=0.5)["mae"] < 0.05
    # the same device heard 20 minutes apart: the silence is not taken as presence
    gap = [(T0, "w1", _mark(60.0)), (T0 + 1200.0, "w1", _mark(60.0))]
    present = Truth([(T0, T0 + 1200.0)], T0, T0 + 1200.0)
    assert _fill_minutes(gap, present, min_truth=0.5)["bias"] < -0.5


def test_the_real_phones_breakdown_names_each_phone_with_its_silences_and_presence() -> None:
    probes, marks = [], []
    spans: dict[object, list[float]] = {}
    for dev, start in (("phoneA", T0), ("phoneB", T0 + 7200.0)):
        times = [start + 30.0 * k for k in range(41)]
        spans[dev] = [times[0], times[-1]]
        for t in times:
            probes.append((dev, Probe(t, "02:00:00:00:00:01", True, -60, 6, False, "fp", 0)))
            marks.append((t, dev, _mark(30.0)))
    text = _real_phones(probes, marks, spans, 300.0)
    assert "phoneA: 41 bursts, silences 30 s (cv 0.0), presence 1.02 x its 20 min" in text
    assert "phoneB" in text
