"""A standing device whose window fix sits in a wrong basin gets out (`standing_search_nll`).

The per-tick standing-window refinement is local: a track whose first fix landed in a wrong basin
(typically at a wall, with a weak transmit offset) stayed there for minutes in the full benchmark and
made most of the static RMSE above 1 m. Here the wrong basin is forced on a real track, then the
localizer runs on; with the global re-search it must leave within the next seconds, and the same
run without it (the old behaviour) shows the basin is real.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization.crlb import crlb_rmse
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, channel_run, simulate_rssi
from gateway.models import Fix, Observation
from gateway.sim.radio import FAMILY, Channel, RadioEnv, family_store

RADIO = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, packet_loss=0.02)
TRUTH = (6.5, 6.1, -5.0)  # a weak phone 6.5 m from the left wall
WALL = np.array([[0.0, 5.0, -1.0]])  # the wall fit: a little stronger phone, pinned to x = 0


def run(layout: Layout, model: PathLossModel, settings: LocalizationSettings, seed: int) -> tuple[list[float], int]:
    """60 s of one advert per second; at 20 s the track and its window fix are put at the wall."""
    loc = MlLocalizer(layout, settings)
    ids = [s.id for s in layout.sensors]
    rng = np.random.default_rng(seed)
    x, y, tx = TRUTH
    errs = []
    for k in range(60):
        r, heard = simulate_rssi(model, np.array([[x, y]]), np.array([tx]), RADIO, rng)
        t = 100.0 + k
        loc.add([Observation(t + 0.01 * s, ids[s], "dev", float(r[0, s])) for s in range(len(ids)) if heard[0, s]])
        if k == 20:
            slot = np.array([loc._slot["dev"]])
            loc._sw_theta[slot] = WALL
            loc.tracker.init(slot, t - 0.5, WALL, np.diag([0.5, 0.5, 4.0])[None])
        fx = loc.fixes(t + 0.5)
        assert len(fx) == 1
        errs.append(math.hypot(fx[0].x - x, fx[0].y - y))
    return errs, loc.stats.dropped.get("standing_moved", 0)


# the track check of the scenario: a 4 s window checked every third tick, 6 nats (the defaults'
# quicker 3 s / every tick / 5 nats check restarts some of these tracks itself, before the re-search);
# the fix is the window's mode (the posterior mean, `standing_mean_sd`, pulls the forced wall fix 1-2 m
# inward at once, test_standing_mean.py): this is the re-search's own test
SLOW_CHECK = {"recent_window_s": 4.0, "check_every_ticks": 3, "restart_nll": 6.0, "standing_mean_sd": 0.0}


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_standing_fix_leaves_a_wrong_basin(layout: Layout, model: PathLossModel, seed: int) -> None:
    # learn_radio off: the scenario is tuned to the configured noise (with the learnt noise and
    # packet loss the track check alone already restarts this particular track)
    errs, moved = run(layout, model, LocalizationSettings(learn_radio=False, **SLOW_CHECK), seed)
    assert errs[20] > 5.0  # the forced wall fix was output
    assert max(errs[-10:]) < 1.5, errs[-10:]
    assert moved >= 1
    # without the re-search the track stays at the wall: the local refinement cannot leave, and a 4 s
    # recent window is too little evidence for the track check's restart
    off = LocalizationSettings(standing_search_nll=0.0, learn_radio=False, **SLOW_CHECK)
    stuck, moved_off = run(layout, model, off, seed)
    assert float(np.median(stuck[-10:])) > 5.0, stuck[-10:]
    assert moved_off == 0


@pytest.mark.parametrize("seed", [0, 2, 3])
@pytest.mark.parametrize("learn", [False, True])
def test_defaults_leave_a_wrong_basin(layout: Layout, model: PathLossModel, seed: int, learn: bool) -> None:
    """With the default check and re-search together, the forced wall fix is left within 30 s."""
    errs, _ = run(layout, model, LocalizationSettings(learn_radio=learn), seed)
    # the forced wall fix (6.5 m off) dominates the output; its posterior mean is 1-2 m inward already
    assert errs[20] > 4.0
    assert max(errs[-10:]) < 1.5, errs[-10:]


def test_standing_search_leaves_good_fixes_alone(layout: Layout, model: PathLossModel) -> None:
    """Static devices in the right basin are not moved once their windows hold some data (the search only
    takes clear wins; in the first seconds a 3 s window may still hold two basins)."""
    ids = [s.id for s in layout.sensors]
    rng = np.random.default_rng(5)
    pos = np.column_stack([rng.uniform(6, 24, 12), rng.uniform(5, 15, 12)])
    tx = np.zeros(12)
    loc = MlLocalizer(layout, LocalizationSettings())
    errs = []
    settled = -1
    for k in range(60):
        r, heard = simulate_rssi(model, pos, tx, RadioParams(sigma_db=3.0), rng)
        t = 100.0 + k
        loc.add(
            [
                Observation(t + 0.01 * s, ids[s], f"d{d}", float(r[d, s]))
                for d in range(12)
                for s in range(len(ids))
                if heard[d, s]
            ]
        )
        fx = loc.fixes(t + 0.5)
        if k == 10:
            settled = loc.stats.dropped.get("standing_moved", 0)
        if k >= 30:
            errs += [math.hypot(f.x - pos[int(f.device[1:]), 0], f.y - pos[int(f.device[1:]), 1]) for f in fx]
    assert max(errs) < 1.5
    assert loc.stats.dropped.get("standing_moved", 0) == settled


def _family_static_ratio(settings: LocalizationSettings) -> float:
    """The benchmark's static case on the family's corner-shop (18 x 12 m, 8 sensors, 2 adverts/s): 80
    still phones, the localizer's own radio model, the fix 10 s after they start; RMSE over the CRLB."""
    store = family_store(FAMILY[1])
    true = store.true_layout()
    env = store.env
    floor = float(np.mean(env.floor_dbm))
    ch = Channel(RadioEnv.ideal(true, env.residual_db, floor), true.sensor_xy(), np.random.default_rng([1, 2]))
    w, d = true.store.width_m, true.store.depth_m
    run = channel_run(
        ch.sample, 80, 12.0, np.random.default_rng([1, 3]), bounds=(0.5, w - 0.5, 0.5, d - 0.5),
        advert_interval_s=1.0 / store.advert_rate_hz,
    )  # fmt: skip
    loc = MlLocalizer(true, settings)
    ids = [s.id for s in true.sensors]
    t0 = float(run.truth_t[0])
    lo = 0
    fixes: list[Fix] = []
    for tick in np.arange(t0 + 1.0, t0 + 10.5, 1.0).tolist():
        hi = int(np.searchsorted(run.ts, tick, side="right"))
        loc.add([Observation(float(run.ts[i]), ids[run.sensor[i]], f"d{run.device[i]}", float(run.rssi[i]))
                 for i in range(lo, hi)])  # fmt: skip
        lo = hi
        fixes = loc.fixes(tick)
    assert len(fixes) == 80
    dev = np.array([int(f.device[1:]) for f in fixes])
    pos = run.truth_xy[dev, 0]
    err = np.hypot(np.array([f.x for f in fixes]) - pos[:, 0], np.array([f.y for f in fixes]) - pos[:, 1])
    bound = crlb_rmse(PathLossModel.from_layout(true), pos, env.residual_db, 10.0 * store.advert_rate_hz, floor)
    return float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(bound**2)))


def test_search_grid_reaches_the_near_basins_of_a_small_store() -> None:
    """In an 18 x 12 m store the wrong basins of still phones lie 2-4 m from the right one: the re-search
    on a 2 m grid leaves them, the old one on the track check's 3 m grid (whose best point, within 3 m of
    the current fix, was never refined) left several phones 2.5-5 m off and the RMSE at 1.6 x the bound
    (docs/localization.md 9.7)."""
    # the grids compared on the window's mode (`standing_mean_sd` 0): 1.40 with an isotropic walking
    # model, 1.45 with heading persistence (docs/localization.md 9.9)
    new = _family_static_ratio(LocalizationSettings(standing_mean_sd=0.0))
    old = _family_static_ratio(LocalizationSettings(standing_search_grid_m=3.0, standing_mean_sd=0.0))
    assert new <= 1.47, new
    assert old > 1.5, old
    # with the posterior mean (off by default): 1.42 (docs/localization.md 9.10)
    assert _family_static_ratio(LocalizationSettings(standing_mean_sd=3.0)) <= 1.44
