"""Causality: a fix at ``now`` uses only observations with ts <= now - also what the localizer learns
about the radio (floors, packet loss, noise), which must not see the future either."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization import make_localizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, synthetic_run
from gateway.models import Observation


@pytest.mark.parametrize(
    "settings",
    [
        LocalizationSettings(),
        # checks every third tick: the devices seen early (here the future ones) take the first slots,
        # and a schedule by slot number would check the others on other ticks than without them
        LocalizationSettings(check_every_ticks=3, recent_window_s=3.0, restart_nll=5.0),
    ],
    ids=["defaults", "check-every-3"],
)
def test_future_observations_do_not_change_a_fix(
    layout: Layout, model: PathLossModel, settings: LocalizationSettings
) -> None:
    radio = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, packet_loss=0.1, floor_dbm=-92.0)
    run = synthetic_run(model, 8, 40.0, radio, np.random.default_rng(3), walking=True)
    ids = [s.id for s in layout.sensors]
    obs = [
        Observation(t, ids[s], f"d{d}", r)
        for t, s, d, r in zip(run.ts.tolist(), run.sensor.tolist(), run.device.tolist(), run.rssi.tolist(), strict=True)
    ]
    # reports far in the future (a -118 dBm one would lower a sensor's floor; new devices take slots)
    end = float(run.ts[-1])
    future = [Observation(end + 1.0 + 0.01 * i, o.sensor, f"late{i % 4}", -118.0) for i, o in enumerate(obs[:60])]
    plain = make_localizer(layout, settings)
    ahead = make_localizer(layout, settings)
    ahead.add(future)
    ticks = np.arange(math.ceil(run.ts[0]), run.ts[-1], 1.0)
    cut = np.searchsorted(run.ts, ticks, side="right")
    lo = 0
    fed = 0
    compared = 0
    for tick, hi in zip(ticks.tolist(), cut.tolist(), strict=True):
        plain.add(obs[lo:hi])
        lo = hi
        # the other one has always been given everything up to 5 s past the tick before it runs
        horizon = int(np.searchsorted(run.ts, tick + 5.0, side="right"))
        ahead.add(obs[fed:horizon])
        fed = max(fed, horizon)
        a = [(f.device, f.x, f.y, f.sigma_m, f.zone) for f in plain.fixes(tick)]
        b = [(f.device, f.x, f.y, f.sigma_m, f.zone) for f in ahead.fixes(tick)]
        assert a == b, tick
        compared += len(a)
    assert compared > 200
