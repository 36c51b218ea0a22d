"""The blocked grid search (``_gridsearch.grid_cost``) scores every grid point bit for bit as the
unblocked evaluation it replaced did, so the grid search's argmin - the fix's starting point - is the
same: the reference is that evaluation as it was (``bench.bench_localize.grid_search_unblocked``, the
bench's same-run reference too; issue 22: the fix computation's CPU, outputs unchanged)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_localize import grid_search_unblocked
from gateway.config import LocalizationSettings
from gateway.layout import Layout, load_layout
from gateway.localization._gridsearch import _blocks, grid_cost
from gateway.localization.estimator import Estimator, EstimatorParams, Problem
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import F64, PathLossModel
from gateway.localization.region import Walkable
from gateway.localization.synth import RadioParams, synthetic_run
from gateway.models import Observation
from tests.conftest import LAYOUT

from .conftest import interior_positions, static_problem


def _random_problem(model: PathLossModel, n: int, seed: int, floor: float) -> Problem:
    """Windows as the localizer builds them: decayed (fractional) counts and misses, some sensors
    silent, a few devices heard by one or two sensors only, one heard by none."""
    rng = np.random.default_rng(seed)
    pos = interior_positions(n, seed)
    tx = rng.normal(0.0, 4.0, n)
    prob = static_problem(model, pos, tx, int(rng.integers(1, 6)), RadioParams(sigma_db=6.0, floor_dbm=floor), seed)
    decay = rng.uniform(0.05, 1.0, prob.count.shape)
    cnt = prob.count * decay
    missed = prob.missed * rng.uniform(0.0, 1.0, prob.count.shape)
    missed[missed < 0.1] = 0.0
    few = rng.random(n) < 0.1
    cnt[few] *= rng.random((int(few.sum()), model.num_sensors)) < 0.15
    cnt[0] = 0.0
    mean = np.where(cnt > 0, prob.mean, 0.0)
    return Problem(mean, cnt, missed)


@pytest.mark.parametrize(
    ("seed", "n", "params", "learnt"),
    [
        (1, 300, {}, False),
        (2, 40, {}, True),
        (3, 7, {}, True),  # few censored cells: their erfc is math.erfc, as in the unblocked search
        (4, 120, {"nu": 0.0, "packet_loss": 0.0}, False),  # Gaussian, no packet loss: log Phi
        (5, 1, {}, False),
    ],
)
def test_blocked_grid_search_is_the_unblocked_one_bit_for_bit(
    model: PathLossModel, layout: Layout, seed: int, n: int, params: dict[str, float], learnt: bool
) -> None:
    floor = -80.0 if seed % 2 else -88.0
    est = Estimator(model, EstimatorParams(floor_dbm=floor, **params), Walkable.from_layout(layout))  # type: ignore[arg-type]
    rng = np.random.default_rng(100 + seed)
    if learnt:
        est.floor_s = floor - rng.uniform(0.0, 6.0, model.num_sensors)
        est.eps_s = rng.uniform(0.01, 0.3, model.num_sensors)
    prob = _random_problem(model, n, seed, floor)
    assert (prob.missed > 0).any()
    dm = rng.normal(0.0, 2.0, n)
    dp = np.where(rng.random(n) < 0.5, 1.0 / 16.0, rng.uniform(0.0, 1.0, n))
    for chunk in (1_000_000, 5_000):  # one chunk, and several (each with its own erfc path)
        theta0, cost0 = grid_search_unblocked(est, prob, dm, dp, chunk)
        theta1, cost1 = est.grid_search(prob, dm, dp, chunk)
        assert np.array_equal(theta0, theta1)
        assert np.array_equal(cost0, cost1)


def test_grid_cost_same_for_any_block_size(model: PathLossModel, layout: Layout) -> None:
    """Blocks of one device up to all of them: the same costs at every grid point."""
    est = Estimator(model, EstimatorParams(floor_dbm=-80.0), Walkable.from_layout(layout))
    prob = _random_problem(model, 60, 9, -80.0)
    delta = np.random.default_rng(9).normal(0.0, 3.0, (60, est.grid.shape[0]))
    costs = [
        grid_cost(est._grid_mu_t, prob.mean, prob.count, prob.missed, delta, est._heard_cost, est._missed_loss, b)
        for b in (1, 3_000, 40_000, 10**9)
    ]
    assert np.isfinite(costs[0]).all() and (costs[0] > 0).any()
    for c in costs[1:]:
        assert np.array_equal(costs[0], c)


def test_blocks_cover_every_device_once() -> None:
    cells = np.array([12, 0, 3, 12, 12, 1, 0, 0, 9, 12])
    for per in (1, 5, 12, 24, 1000):
        blocks = _blocks(cells, per)
        assert blocks[0][0] == 0 and blocks[-1][1] == cells.size
        assert all(a < b and b == c for (a, b), (c, _) in zip(blocks, [*blocks[1:], (cells.size, 0)], strict=True))
        assert all(int(cells[a:b].sum()) < per + 12 for a, b in blocks)
    assert _blocks(np.zeros(0, dtype=np.int64), 5) == []


def test_localizer_fixes_unchanged_by_the_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole localizer run (new tracks, track checks, standing re-searches: every grid search it
    makes, with the radio learnt as it goes) gives the same fixes, bit for bit, as with the unblocked
    grid search in its place."""
    layout = load_layout(LAYOUT)
    model = PathLossModel.from_layout(layout)
    radio = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, fade_db=12.0, packet_loss=0.05)
    run = synthetic_run(model, 60, 20.0, radio, np.random.default_rng(5), walking=True)
    ids = [s.id for s in layout.sensors]
    obs = [
        Observation(t, ids[s], f"d{d}", r)
        for t, s, d, r in zip(run.ts.tolist(), run.sensor.tolist(), run.device.tolist(), run.rssi.tolist(), strict=True)
    ]
    ticks = np.arange(np.ceil(run.ts[0]), run.ts[-1], 1.0)
    cut = np.searchsorted(run.ts, ticks, side="right").tolist()

    def fixes() -> tuple[list[tuple[float, str, float, float, float, str | None]], int]:
        loc = MlLocalizer(layout, LocalizationSettings())
        out = []
        lo = 0
        for tick, hi in zip(ticks.tolist(), cut, strict=True):
            loc.add(obs[lo:hi])
            lo = hi
            out += [(f.ts, f.device, f.x, f.y, f.sigma_m, f.zone) for f in loc.fixes(tick)]
        return out, loc.stats.tracks_started

    calls: list[int] = []
    real = Estimator.grid_search

    def counted(self: Estimator, *a: object, **k: object) -> tuple[F64, F64]:
        calls.append(1)
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Estimator, "grid_search", counted)
    new, started = fixes()
    assert len(calls) > ticks.size and len(new) > 500 and started >= 60

    monkeypatch.setattr(Estimator, "grid_search", grid_search_unblocked)
    old, _ = fixes()
    assert new == old
