"""`gateway calibrate`'s fit on a technician's walk through a room shaped like the real tracks' office.

The sensors miss adverts for two reasons: weak signal (below the floor, far away) and packet loss (at
any level). Fitting only what was heard biases the exponent low (far reports are the strong ones
that made it); the censored fit uses the misses, telling the two causes apart per sensor.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.layout import Layout, Sensor, Store
from gateway.localization.calibrate import CalibrationData, CalibrationResult, fit_sensors
from gateway.sim.radio import Channel, RadioEnv, sensor_positions, technician_walk

from .conftest import office_layout

TRUE_N = 3.0


def _walk(layout: Layout, env: RadioEnv, seed: int, with_misses: bool) -> CalibrationResult:
    wp = technician_walk(layout, min_duration_s=240.0)
    t = np.arange(0.0, wp[-1, 0], 0.2)  # a reference beacon at 5 adverts/s
    xy = np.column_stack([np.interp(t, wp[:, 0], wp[:, 1]), np.interp(t, wp[:, 0], wp[:, 2])])
    ch = Channel(env, layout.sensor_xy(), np.random.default_rng(seed))
    r, heard = ch.sample(np.zeros(t.size, dtype=np.int64), t, xy, np.zeros(t.size))
    rows = [
        (int(s), "b", float(xy[i, 0]), float(xy[i, 1]), 0.0, float(r[i, s]), float(t[i]))
        for i, s in zip(*np.nonzero(heard), strict=True)
    ]
    misses = [(int(s), "b", float(xy[i, 0]), float(xy[i, 1]), 0.0) for i, s in zip(*np.nonzero(~heard), strict=True)]
    data = CalibrationData.from_rows(rows, layout, {"b"}, misses if with_misses else None)
    return fit_sensors(data, layout, floor_dbm=-95.0)


@pytest.fixture(scope="module")
def room() -> tuple[Layout, RadioEnv]:
    nominal = office_layout(2.0)  # what the technician starts from: -59 dBm, n 2
    rng = np.random.default_rng(3)
    s = len(nominal.sensors)
    env = RadioEnv(
        p0=-59.0 + 2.5 * rng.standard_normal(s), n=np.full(s, TRUE_N), dz=nominal.sensor_z(), white_db=4.5,
        shadow_db=2.5, shadow_tau_s=10.0, packet_loss=np.full(s, 0.15), floor_dbm=np.full(s, -95.0),
    )  # fmt: skip
    return nominal, env


def test_censored_fit_recovers_the_exponent(room: tuple[Layout, RadioEnv]) -> None:
    layout, env = room
    res = _walk(layout, env, 1, with_misses=True)
    assert abs(float(res.n.mean()) - TRUE_N) < 0.15, res.n
    # p0 and n of one sensor trade off against each other: compare what they predict at 3-15 m
    d = np.array([3.0, 6.0, 10.0, 15.0])[:, None]
    fitted = res.p0 - 10.0 * res.n * np.log10(d)
    true = env.p0 - 10.0 * env.n * np.log10(d)
    assert np.abs(fitted - true).max() < 2.5, fitted - true
    # the misses told apart: packet loss near the true 15 % at every sensor
    assert res.packet_loss is not None
    assert np.abs(res.packet_loss - 0.15).max() < 0.06, res.packet_loss
    # the noise split: advert-to-advert vs persistent (the walk decorrelates some shadowing: loose)
    assert res.sigma_white_db == pytest.approx(4.5, abs=0.5)
    assert res.shadowing_db is not None
    assert 1.0 < res.shadowing_db < 4.0
    assert any("packet loss per sensor" in n for n in res.notes)
    assert any("shadowing_db" in n for n in res.notes)


def test_heard_only_fit_is_biased_flat_in_a_large_store() -> None:
    """A 50 x 40 m hall, n = 3: most far adverts are lost below the floor. The old fit (no misses,
    near-floor predictions dropped) comes out flat (2.69); the censored fit does not (2.99)."""
    xy = sensor_positions(np.random.default_rng(0), "grid", 50.0, 40.0, 16)
    sensors = [Sensor(id=f"s{i}", x=float(x), y=float(y), z=1.5) for i, (x, y) in enumerate(xy)]
    layout = Layout(store=Store(id="hall", width_m=50.0, depth_m=40.0), sensors=sensors)
    rng = np.random.default_rng(3)
    env = RadioEnv(
        p0=-59.0 + 2.5 * rng.standard_normal(16), n=np.full(16, TRUE_N), dz=layout.sensor_z(), white_db=4.5,
        shadow_db=2.5, shadow_tau_s=10.0, packet_loss=np.full(16, 0.15), floor_dbm=np.full(16, -95.0),
    )  # fmt: skip
    old = _walk(layout, env, 1, with_misses=False)
    new = _walk(layout, env, 1, with_misses=True)
    assert float(np.mean(TRUE_N - old.n)) > 0.2, old.n
    assert abs(float(np.mean(TRUE_N - new.n))) < 0.1, new.n
