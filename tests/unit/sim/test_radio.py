"""The simulated stores' radio (gateway/sim/radio.py) and the family the benchmark runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.localization.crlb import tracking_limit
from gateway.localization.pathloss import PathLossModel
from gateway.sim.radio import FAMILY, LAYOUT_KINDS, Channel, RadioEnv, RadioRanges, family_store, technician_walk


def _env(s: int, **kw: float) -> RadioEnv:
    base = dict(white_db=4.0, shadow_db=3.0, shadow_tau_s=5.0)
    base.update(kw)
    return RadioEnv(
        p0=np.full(s, -59.0), n=np.full(s, 2.0), dz=np.zeros(s), packet_loss=np.full(s, 0.2),
        floor_dbm=np.full(s, -95.0), **base,
    )  # fmt: skip


def test_shadowing_persists_in_time_and_continues_across_calls() -> None:
    """Residuals of one phone at one sensor: autocorrelation ~ shadow^2 / total^2 * exp(-lag / tau)."""
    env = _env(2)
    ch = Channel(env, np.array([[0.0, 0.0], [10.0, 0.0]]), np.random.default_rng(1))
    t = np.arange(0.0, 4000.0, 0.5)
    xy = np.tile([[3.0, 0.0]], (t.size, 1))
    half = t.size // 2
    r1, _ = ch.sample(np.zeros(half, dtype=np.int64), t[:half], xy[:half], np.zeros(half))
    r2, _ = ch.sample(np.zeros(t.size - half, dtype=np.int64), t[half:], xy[half:], np.zeros(t.size - half))
    e = np.concatenate([r1, r2])[:, 0] - env.mean(xy[:1], ch.sensor_xy)[0, 0]
    e -= e.mean()
    share = env.shadow_db**2 / env.residual_db**2
    for lag_s in (0.5, 5.0, 20.0):
        k = int(lag_s / 0.5)
        acf = float((e[:-k] * e[k:]).mean() / e.var())
        assert acf == pytest.approx(share * math.exp(-lag_s / env.shadow_tau_s), abs=0.06), lag_s
    assert e.std() == pytest.approx(env.residual_db, rel=0.1)


def test_misses_are_packet_loss_and_floor() -> None:
    """Near: 20 % missed whatever the level (packet loss); far below the floor: all missed."""
    env = _env(2, shadow_db=0.0)
    ch = Channel(env, np.array([[0.0, 0.0], [200.0, 0.0]]), np.random.default_rng(2))
    n = 20000
    _, heard = ch.sample(np.arange(n), np.zeros(n), np.tile([[2.0, 0.0]], (n, 1)), np.zeros(n))
    assert heard[:, 0].mean() == pytest.approx(0.8, abs=0.02)
    assert heard[:, 1].mean() < 0.01  # -59 - 46 dB at 200 m: below the floor


def test_family_covers_the_ranges() -> None:
    stores = [family_store(spec) for spec in FAMILY]
    ranges = RadioRanges()
    sizes = [s.layout.store.width_m * s.layout.store.depth_m for s in stores]
    assert min(sizes) <= 100.0 and max(sizes) >= 1500.0
    counts = [len(s.layout.sensors) for s in stores]
    assert min(counts) == 6 and max(counts) == 16
    assert {spec.kind for spec in FAMILY} == set(LAYOUT_KINDS)
    assert {s.advert_rate_hz for s in stores} >= {1.0, 10.0}
    n = [float(s.env.n.mean()) for s in stores]
    resid = [s.env.residual_db for s in stores]
    assert min(n) < 1.8 and max(n) > 3.0
    assert ranges.path_loss_exponent[0] - 0.5 <= min(n) and max(n) <= ranges.path_loss_exponent[1] + 0.5
    assert min(resid) < 4.6 and max(resid) > 7.2
    for s in stores:
        w, d = s.layout.store.width_m, s.layout.store.depth_m
        xy = s.layout.sensor_xy()
        assert ((xy >= 0) & (xy <= [w, d])).all()
        assert (s.env.packet_loss >= ranges.packet_loss[0]).all() and (s.env.packet_loss <= ranges.packet_loss[1]).all()
    # seeded: the same store every time
    assert np.array_equal(family_store(FAMILY[0]).env.p0, stores[0].env.p0)


def test_technician_walk_covers_the_store_for_three_minutes() -> None:
    store = family_store(FAMILY[0])
    wp = technician_walk(store.layout)
    assert wp[-1, 0] >= 180.0
    speed = np.hypot(*np.diff(wp[:, 1:], axis=0).T) / np.diff(wp[:, 0])
    assert np.allclose(speed, 0.8)
    w, d = store.layout.store.width_m, store.layout.store.depth_m
    assert wp[:, 1].min() <= 1.0 + 1e-9 and wp[:, 1].max() >= w - 1.0 - 1e-9
    assert wp[:, 2].min() <= 1.0 + 1e-9 and wp[:, 2].max() >= d - 4.0


def test_tracking_limit_behaves() -> None:
    """More adverts or less noise: a lower limit; persistent shadowing: a higher one."""
    store = family_store(FAMILY[3])
    model = PathLossModel.from_layout(store.true_layout())
    rng = np.random.default_rng(0)
    starts = rng.uniform([5.0, 5.0], [25.0, 15.0], (6, 2))

    def limit(rate: float, white: float, shadow: float) -> float:
        t = np.arange(0.0, 60.0, 1.0 / rate)
        times = np.tile(t, (6, 1))
        paths = starts[:, None, :] + np.stack([0.5 * t, 0.0 * t], axis=1)[None] % 10.0
        return tracking_limit(model, times, paths, white_db=white, shadow_db=shadow, floor_dbm=-95.0)

    base = limit(2.0, 5.0, 0.0)
    assert 0.1 < base < 3.0
    assert limit(8.0, 5.0, 0.0) < 0.8 * base
    assert limit(2.0, 3.0, 0.0) < 0.8 * base
    assert limit(2.0, 4.0, 3.0) > base  # same total-ish noise, but it persists
