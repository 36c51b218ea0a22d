"""Tracker and the daemon-facing localizer, driven by the synthetic store generator."""

from __future__ import annotations

import math

import numpy as np

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization import make_localizer
from gateway.localization.centroid import CentroidLocalizer
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, simulate_rssi
from gateway.models import Observation

RADIO = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, packet_loss=0.02)


def feed(
    loc: MlLocalizer, model: PathLossModel, layout: Layout, path: np.ndarray, tx: float, seed: int
) -> list[tuple[float, float, float, float]]:
    """One advert per second along ``path`` (T, 2); returns (error, sigma, p_walk, speed) per tick."""
    rng = np.random.default_rng(seed)
    ids = [s.id for s in layout.sensors]
    out = []
    for k, p in enumerate(path):
        r, heard = simulate_rssi(model, p[None, :], np.array([tx]), RADIO, rng)
        t = 100.0 + k
        loc.add([Observation(t + 0.01 * s, ids[s], "dev", float(r[0, s])) for s in range(len(ids)) if heard[0, s]])
        fx = loc.fixes(t + 0.5)
        assert len(fx) == 1
        slot = loc._slot["dev"]
        state, _, pw = loc.tracker.estimate(np.array([slot]))
        out.append(
            (math.hypot(fx[0].x - p[0], fx[0].y - p[1]), fx[0].sigma_m, float(pw[0]), float(np.hypot(*state[0, 2:4])))
        )
    return out


def test_standing_device_converges_and_is_classified_standing(layout: Layout, model: PathLossModel) -> None:
    errs = []
    for seed, (x, y, tx) in enumerate([(8.0, 6.0, 3.0), (20.0, 14.0, -4.0), (13.0, 9.0, 0.0), (24.0, 6.0, 5.0)]):
        loc = MlLocalizer(layout, LocalizationSettings())
        res = feed(loc, model, layout, np.tile([x, y], (90, 1)), tx, seed)
        errs += [r[0] for r in res[60:]]
        assert np.mean([r[2] for r in res[60:]]) < 0.5  # mostly the standing model
        # the reported sigma shrinks as evidence accumulates
        assert res[-1][1] < 0.5 * res[0][1]
    assert float(np.median(errs)) < 1.2, np.median(errs)


def test_walking_device_is_followed(layout: Layout, model: PathLossModel) -> None:
    t = np.arange(60.0)
    path = np.column_stack([4.0 + 0.4 * t, np.full_like(t, 10.0)])  # 0.4 m/s, 24 m
    errs, walk = [], []
    for seed in range(3):
        loc = MlLocalizer(layout, LocalizationSettings())
        res = feed(loc, model, layout, path, 0.0, 10 + seed)
        errs += [r[0] for r in res[15:]]
        walk += [r[2] for r in res[15:]]
    assert float(np.median(errs)) < 3.0, np.median(errs)
    assert float(np.mean(walk)) > 0.3  # the walking model carries real weight


def test_fixes_are_causal_and_only_for_devices_heard(layout: Layout) -> None:
    loc = MlLocalizer(layout, LocalizationSettings())
    loc.add([Observation(10.0, "n11", "a", -60.0), Observation(10.2, "n12", "a", -70.0)])
    loc.add([Observation(11.5, "n34", "b", -60.0)])
    first = loc.fixes(10.5)
    assert [f.device for f in first] == ["a"]
    assert all(f.ts == 10.5 for f in first)
    second = loc.fixes(12.0)
    assert [f.device for f in second] == ["b"]  # "a" not heard since the last call
    assert loc.fixes(13.0) == []


def test_bad_observations_are_counted_not_raised(layout: Layout) -> None:
    loc = MlLocalizer(layout, LocalizationSettings())
    loc.add(
        [
            Observation(1.0, "nope", "a", -60.0),
            Observation(1.0, "n11", "a", float("nan")),
            Observation(1.0, "n11", "a", 999.0),
            Observation(1.0, "n11", "a", -60.0),
        ]
    )
    assert loc.stats.dropped == {"unknown_sensor": 1, "bad_rssi": 2}
    assert len(loc.fixes(2.0)) == 1


def test_down_sensor_is_not_read_as_far_away(layout: Layout, model: PathLossModel) -> None:
    """A device right under n22 heard by everyone but n22 (node down)."""
    ids = [s.id for s in layout.sensors]
    dead = ids.index("n22")
    truth = np.array([11.25, 10.0])

    def run(mark_down: bool, silent_s: float = 60.0) -> float:
        errs = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            # no allowance for random packet loss: every miss is read as "signal below the floor"
            loc = MlLocalizer(layout, LocalizationSettings(sensor_silent_s=silent_s, packet_loss=0.0))
            if mark_down:
                loc.set_sensor_active("n22", False)
            # n22 was heard earlier (so the silence heuristic alone would not save us)
            loc.add([Observation(0.0, "n22", "other", -60.0)])
            loc.fixes(0.5)
            mu = model.mean_rssi(truth[None, :])[0]
            for k in range(20):
                r = mu + rng.normal(0, 6.0, mu.shape)
                loc.add([Observation(1.0 + k, ids[s], "dev", float(r[s])) for s in range(len(ids)) if s != dead])
                fx = [f for f in loc.fixes(1.5 + k) if f.device == "dev"]
                if k >= 10:
                    errs.append(math.hypot(fx[0].x - truth[0], fx[0].y - truth[1]))
        return float(np.mean(errs))

    down, up = run(mark_down=True), run(mark_down=False)
    assert down < 2.0, down
    assert up > down + 1.0, (up, down)
    # a sensor that has heard nothing for sensor_silent_s is treated as down even if not flagged
    assert run(mark_down=False, silent_s=5.0) < 2.0


def test_forget_and_expiry(layout: Layout) -> None:
    s = LocalizationSettings(forget_after_s=5.0)
    loc = MlLocalizer(layout, s)
    loc.add([Observation(1.0, "n11", "a", -60.0), Observation(1.0, "n11", "b", -60.0)])
    loc.fixes(1.5)
    loc.forget("a")
    assert "a" not in loc._slot
    loc.add([Observation(2.0, "n11", "a", -60.0)])  # comes back as a new track
    assert [f.device for f in loc.fixes(2.5)] == ["a"]
    loc.fixes(20.0)
    assert loc._slot == {}  # both expired
    assert loc.stats.tracks_started == 3


def test_make_localizer_respects_setting(layout: Layout) -> None:
    assert isinstance(make_localizer(layout, LocalizationSettings()), MlLocalizer)
    assert isinstance(make_localizer(layout, LocalizationSettings(estimator="centroid")), CentroidLocalizer)
