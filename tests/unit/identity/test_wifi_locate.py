"""Bursts placed in metres from their levels at several receivers (wifi_locate.py) and the position
term in metres of the grouping (Tracker.locator)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from gateway.identity.wifi_chains import ChainGrouper
from gateway.identity.wifi_links import LinkParams, Mac, TimingTable, Track, Tracker
from gateway.identity.wifi_locate import BurstLocator, pos_score_m
from gateway.layout import load_layout

LAYOUT = load_layout(Path(__file__).resolve().parents[3] / "hardware" / "layouts" / "demo-store.toml")
FP = "aaaaaaaa11111111"


def _levels(x: float, y: float, tx: float, noise: float = 0.0, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Every sensor's level of a phone at (x, y) sending ``tx`` dB louder than the layout's p0."""
    rng = random.Random(seed)
    out = {}
    for s in LAYOUT.sensors:
        d = math.sqrt((x - s.x) ** 2 + (y - s.y) ** 2 + s.z**2 + 0.09)
        out[s.id] = (s.rssi_at_1m + tx - 10.0 * s.path_loss_exponent * math.log10(d) + rng.gauss(0.0, noise), 1.0)
    return out


@pytest.mark.parametrize(("x", "y", "tx"), [(5.0, 4.0, 15.0), (22.0, 15.0, 9.0), (14.0, 10.0, 20.0)])
def test_a_burst_is_placed_where_it_was_sent_whatever_its_transmit_power(x: float, y: float, tx: float) -> None:
    loc = BurstLocator(LAYOUT)
    fix = loc.locate(_levels(x, y, tx))
    assert fix is not None
    # the likelihood's mean over the floor: within its own spread (a few metres at 6 dB per sensor)
    assert math.hypot(fix[0] - x, fix[1] - y) < math.sqrt(fix[2]) < 6.0
    # with a store's noise it is still metres, not the store, away; and it says how unsure it is
    errs = []
    for seed in range(20):
        f = loc.locate(_levels(x, y, tx, noise=6.0, seed=seed))
        assert f is not None and f[2] > 0.0
        errs.append(math.hypot(f[0] - x, f[1] - y))
    assert sorted(errs)[10] < 5.0


def test_too_few_receivers_place_nothing_and_unknown_ones_are_ignored() -> None:
    loc = BurstLocator(LAYOUT)
    assert loc.locate({"n11": (-60.0, 2.0), "n12": (-70.0, 2.0)}) is None
    assert loc.locate({"n11": (-60.0, 2.0), "n12": (-70.0, 2.0), "elsewhere": (-50.0, 1.0)}) is None
    assert loc.too_few == 2 and loc.located == 0
    with pytest.raises(ValueError, match="min_receivers"):
        BurstLocator(LAYOUT, min_receivers=1)


def test_metres_apart_soon_after_speak_against_one_device_long_after_nothing() -> None:
    kw = {"area_m2": 36.0 * 26.0, "dwell_s": 60.0, "speed_m_s": 1.4}
    here, near, far = (5.0, 5.0, 2.0), (5.5, 5.5, 2.0), (25.0, 15.0, 2.0)
    assert pos_score_m(here, near, 5.0, **kw) > 1.0
    assert pos_score_m(here, far, 5.0, **kw) < -2.0
    # the further the shopper could have walked, the less a far burst says against it
    assert pos_score_m(here, far, 5.0, **kw) < pos_score_m(here, far, 20.0, **kw)
    assert abs(pos_score_m(here, far, 3000.0, **kw)) < 0.05
    # unsure fixes say less than sure ones
    assert pos_score_m((5.0, 5.0, 30.0), (25.0, 15.0, 30.0), 5.0, **kw) > pos_score_m(here, far, 5.0, **kw)


def _burst(ts: float, levels: dict[str, tuple[float, float]]) -> Mac:
    m = Mac(0, f"m{ts}", FP, ts, 0, ts + 0.5, 2)
    m.add_levels({r: v for r, (v, _n) in levels.items()})
    return m


def test_the_tracker_scores_in_metres_with_a_locator_and_in_db_steps_without() -> None:
    p = LinkParams()
    here, there = _levels(5.0, 4.0, 15.0), _levels(24.0, 16.0, 15.0)
    scores = {}
    for name, loc in (("db", None), ("m", BurstLocator(LAYOUT))):
        tr = Tracker(p, TimingTable(p), min_p=0.5)
        tr.locator = loc
        track = Track("w1", _burst(0.0, here), None)
        track.learn_pos(track.tail)
        scores[name] = (tr.pos_score(track, _burst(10.0, here)), tr.pos_score(track, _burst(10.0, there)))
    assert scores["m"] != scores["db"]
    assert scores["m"][0] > 0.5 and scores["m"][1] < -1.0
    assert scores["db"][0] > scores["db"][1]
    # a burst no node heard: no evidence either way, with a locator too
    tr = Tracker(p, TimingTable(p), min_p=0.5)
    tr.locator = BurstLocator(LAYOUT)
    track = Track("w1", _burst(0.0, here), None)
    track.learn_pos(track.tail)
    assert tr.pos_score(track, Mac(0, "m9", FP, 9.0, 0, 9.5, 2)) == 0.0


def test_without_levels_a_locator_changes_no_group() -> None:
    rng = random.Random(3)
    frames = []
    for k in range(60):
        ts = 10.0 * k + rng.uniform(0, 3)
        mac = f"02:00:00:00:{k // 4:02x}:{k % 4:02x}"
        for i in range(2):
            frames.append((mac, FP if k % 3 else "bbbbbbbb22222222", rng.randrange(4096), ts + 0.02 * i, -60.0 - k % 5))
    out = []
    for loc in (None, BurstLocator(LAYOUT)):
        g = ChainGrouper(locator=loc)
        for mac, fp, seq, ts, rssi in frames:
            g.add(mac, True, fp, seq, ts, rssi, None)
        out.append(g.solve())
    assert out[0] == out[1]
    assert len(set(out[0].values())) < len(out[0])  # it did group something
