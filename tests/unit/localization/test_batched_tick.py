"""The cheaper localization tick computes the same fixes.

A tick's cost is its number of numpy calls (tens of devices x 12 sensors), so the tick solves the
tracker update, the new tracks' first fixes and the track check in one batched refinement, the standing
re-search in the standing fix's, and the estimator evaluates loss + gradient + curvature in one pass.
Each device's Levenberg-Marquardt iterations are independent of the others', so none of this may
change a result: these tests hold the batched / fused paths to the separate / plain ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization.estimator import Estimator, EstimatorParams, Problem, RefineBatch, Solution
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.region import Walkable
from gateway.localization.synth import RadioParams, simulate_rssi
from gateway.models import Observation

from .conftest import interior_positions, static_problem

FLOOR = -80.0  # far sensors miss adverts: the censored terms are part of every problem below


def _same(a: Solution, b: Solution) -> None:
    assert np.allclose(a.theta, b.theta, rtol=0, atol=1e-9)
    for x, y in ((a.h_post, b.h_post), (a.h_lik, b.h_lik), (a.b_lik, b.b_lik), (a.cost, b.cost)):
        assert np.allclose(x, y, rtol=1e-9, atol=1e-9)


def _problem(model: PathLossModel, n: int, seed: int) -> tuple[Problem, np.ndarray]:
    pos = interior_positions(n, seed)
    tx = np.random.default_rng(seed).normal(0.0, 3.0, n)
    prob = static_problem(model, pos, tx, 3, RadioParams(sigma_db=6.0, floor_dbm=FLOOR), seed=seed + 1)
    assert (prob.missed > 0).any()
    return prob, np.column_stack([pos, tx])


def _estimator(model: PathLossModel, layout: Layout, **kw: float) -> Estimator:
    return Estimator(model, EstimatorParams(floor_dbm=FLOOR, **kw), Walkable.from_layout(layout))  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [{}, {"nu": 0.0, "packet_loss": 0.0}])
def test_fused_evaluation_matches_evaluate_and_normal_equations(
    model: PathLossModel, layout: Layout, params: dict[str, float]
) -> None:
    """``_post_terms`` (one pass, Jacobian as one array) = ``evaluate`` + ``_normal_eq``, both tails."""
    est = _estimator(model, layout, **params)
    prob, truth = _problem(model, 30, 3)
    theta = truth + np.random.default_rng(4).normal(0.0, 2.0, truth.shape)
    nu = np.where(np.arange(30) % 2 == 0, 16.0, 4.0)[:, None] if not params else None
    cost, g, h = est._post_terms(est._prepare(prob, nu), theta)
    cost0, a, b, gx, gy = est.evaluate(prob, theta, nu)
    g0, h0 = est._normal_eq(a, b, gx, gy)
    assert np.allclose(cost, cost0, rtol=1e-12, atol=1e-9)
    assert np.allclose(g, g0, rtol=1e-10, atol=1e-9)
    assert np.allclose(h, h0, rtol=1e-10, atol=1e-9)


def test_per_sensor_floor_and_loss_in_every_path(model: PathLossModel, layout: Layout) -> None:
    """Learnt per-sensor floors / packet loss (``learn_radio``) reach the fused terms, ``nll``, the
    plain ``evaluate`` and the grid search alike, and they change the result (the test can fail)."""
    est = _estimator(model, layout)
    prob, truth = _problem(model, 20, 5)
    theta = truth + np.random.default_rng(6).normal(0.0, 1.5, truth.shape)
    base = est.nll(prob, theta)
    s = model.num_sensors
    est.floor_s = FLOOR - np.linspace(0.0, 6.0, s)
    est.eps_s = np.linspace(0.02, 0.3, s)
    cost, g, h = est._post_terms(est._prepare(prob, None), theta)
    cost0, a, b, gx, gy = est.evaluate(prob, theta)
    g0, h0 = est._normal_eq(a, b, gx, gy)
    assert np.allclose(cost, cost0, rtol=1e-12, atol=1e-9)
    assert np.allclose(est.nll(prob, theta), cost0, rtol=1e-12, atol=1e-9)
    assert np.allclose(g, g0, rtol=1e-10, atol=1e-9)
    assert np.allclose(h, h0, rtol=1e-10, atol=1e-9)
    assert not np.allclose(cost0, base)
    # the grid search's censored cost at its chosen point is the same likelihood
    grid_theta, grid_cost = est.grid_search(prob, np.zeros(20), np.zeros(20))
    assert np.allclose(grid_cost, est.nll(prob, grid_theta), rtol=1e-6, atol=1e-6)


def test_refine_batches_equal_separate_calls(model: PathLossModel, layout: Layout) -> None:
    """Different priors, tails and iteration budgets in one solve: each batch as if refined alone."""
    est = _estimator(model, layout)
    rng = np.random.default_rng(7)
    batches = []
    for i, (n, iters) in enumerate(((12, 3), (3, 8), (7, 3))):
        prob, truth = _problem(model, n, 10 + i)
        start = truth + rng.normal(0.0, 1.5, truth.shape)
        pp = np.zeros((n, 3, 3))
        pp[:, 2, 2] = 1.0 / 16.0
        pm = np.zeros((n, 3))
        nu = None
        if i == 0:  # a tracker update: prior at the prediction, per-device tails
            pm, pp = start.copy(), np.eye(3)[None].repeat(n, 0) * rng.uniform(0.2, 2.0, (n, 1, 1))
            nu = np.where(np.arange(n) % 3 == 0, 16.0, 4.0)
        batches.append(RefineBatch(prob, start, pm, pp, iters, nu))
    together = est.refine_batches(batches)
    for b, sol in zip(batches, together, strict=True):
        _same(sol, est.refine(b.prob, b.theta0, b.prior_mean, b.prior_prec, b.iterations, b.nu))


def test_per_device_iteration_budgets(model: PathLossModel, layout: Layout) -> None:
    """Devices with a smaller budget stop there; the others finish on their rows alone."""
    est = _estimator(model, layout)
    prob, truth = _problem(model, 9, 21)
    start = truth + np.random.default_rng(22).normal(0.0, 2.0, truth.shape)
    pm = np.zeros((9, 3))
    pp = np.zeros((9, 3, 3))
    pp[:, 2, 2] = 1.0 / 16.0
    budget = np.array([0, 1, 2, 3, 8, 3, 1, 8, 5])
    sol = est.refine(prob, start, pm, pp, iterations=budget)
    for it in np.unique(budget):
        rows = np.flatnonzero(budget == it)
        ref = est.refine(prob.take(rows), start[rows], pm[rows], pp[rows], iterations=int(it))
        _same(Solution(sol.theta[rows], sol.h_post[rows], sol.h_lik[rows], sol.b_lik[rows], sol.cost[rows]), ref)
    assert np.array_equal(sol.theta[0], start[0])  # a zero budget leaves the start


def test_walkable_contains_matches_the_crossing_test(layout: Layout) -> None:
    """The rectangle fast path answers exactly like the even-odd test, edges and corners included."""
    rng = np.random.default_rng(5)
    store = Walkable.from_layout(layout)
    ell = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 1.0], [1.0, 1.0], [1.0, 3.0], [0.0, 3.0]])  # not a rectangle
    mixed = Walkable([np.array([[5.0, 5.0], [8.0, 5.0], [8.0, 7.0], [5.0, 7.0]]), ell])
    for region, span in ((store, (-6.0, 36.0)), (mixed, (-1.0, 9.0))):
        pts = rng.uniform(*span, (4000, 2))
        verts = np.concatenate(region.polys)
        grid = np.array([[x, y] for x in np.unique(verts[:, 0]) for y in np.unique(verts[:, 1])])
        pts = np.concatenate([pts, verts, grid, grid + 1e-12, grid - 1e-12])
        assert np.array_equal(region.contains(pts), region._crossing(pts))
    assert mixed.contains(np.array([[0.5, 2.0], [2.0, 2.0], [6.0, 6.0]])).tolist() == [True, False, True]


def _scenario(layout: Layout, model: PathLossModel, loc: MlLocalizer) -> list[tuple[float, float, float]]:
    """45 s: four static phones, one forced into a wrong basin (the standing re-search moves it), one
    walking, one appearing late (a new track while others are tracked)."""
    ids = [s.id for s in layout.sensors]
    rng = np.random.default_rng(11)
    static = np.array([[6.5, 6.1], [20.0, 12.0], [12.0, 3.0], [25.0, 16.0]])
    out = []
    for k in range(45):
        t = 100.0 + k
        walker = np.array([[3.0 + 0.5 * k, 10.0]])
        pos = np.concatenate([static, walker] + ([np.array([[15.0, 15.0]])] if k >= 25 else []))
        tx = np.r_[-5.0, 0.0, 2.0, -2.0, 0.0, 1.0][: pos.shape[0]]
        r, heard = simulate_rssi(model, pos, tx, RadioParams(sigma_db=6.0, fade_probability=0.05), rng)
        loc.add(
            [
                Observation(t + 0.01 * s, ids[s], f"d{d}", float(r[d, s]))
                for d in range(pos.shape[0])
                for s in range(len(ids))
                if heard[d, s]
            ]
        )
        if k == 20:
            slot = np.array([loc._slot["d0"]])
            loc._sw_theta[slot] = [[0.0, 5.0, -1.0]]
            loc.tracker.init(slot, t - 0.5, np.array([[0.0, 5.0, -1.0]]), np.diag([0.5, 0.5, 4.0])[None])
        out += [(f.ts, f.x, f.y) for f in sorted(loc.fixes(t + 0.5), key=lambda f: f.device)]
    return out


def test_batched_tick_gives_the_fixes_of_separate_refinements(layout: Layout, model: PathLossModel) -> None:
    """Every refinement solved alone, the standing re-search before the standing fix: same fixes."""
    # the scenario (a re-search that moves a window fix) was built on a 60 s standing sojourn and a
    # 4 s / 6 nats track check (a quicker check restarts the displaced track before the re-search can)
    settings = LocalizationSettings(stand_s=60.0, accel_sigma=0.3, recent_window_s=4.0, restart_nll=6.0)
    batched = MlLocalizer(layout, settings)
    got = _scenario(layout, model, batched)
    plain = MlLocalizer(layout, settings)
    est = plain.estimator

    def one_by_one(batches: Sequence[RefineBatch]) -> list[Solution]:
        return [est.refine(b.prob, b.theta0, b.prior_mean, b.prior_prec, b.iterations, b.nu) for b in batches]

    def search_first(ss: np.ndarray, censor: np.ndarray, st: LocalizationSettings) -> None:
        # the standing re-search finished before the standing fix starts (its own solve, as before)
        search = MlLocalizer._search_batch(plain, ss, censor, st)
        if search is not None:
            plain._search_finish(search, one_by_one([search.batch])[0], st)

    est.refine_batches = one_by_one  # type: ignore[method-assign]
    plain._search_batch = search_first  # type: ignore[method-assign]
    want = _scenario(layout, model, plain)
    assert len(got) == len(want) > 200
    for (t0, x0, y0), (t1, x1, y1) in zip(got, want, strict=True):
        assert t0 == t1 and math.hypot(x0 - x1, y0 - y1) < 1e-6
    # the paths that share a solve were all taken: new tracks, checks, a standing re-search that moved
    assert batched.stats.dropped.get("standing_moved", 0) >= 1
    assert batched.stats.dropped == plain.stats.dropped
    assert batched.stats.tracks_started == 6


def test_rectangle_projection_matches_the_edge_search(layout: Layout) -> None:
    """Outside points go to the same nearest boundary point with the clamp as with the edge search."""
    fast = Walkable.from_layout(layout)
    slow = Walkable.from_layout(layout)
    slow._all_rects = False  # the general path: nearest point over every polygon edge
    assert fast._all_rects
    pts = np.random.default_rng(9).uniform(-8.0, 40.0, (3000, 2))
    got, want = fast.project(pts), slow.project(pts)
    assert (~fast.contains(pts)).sum() > 500
    assert np.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [40, 2000])  # math.erfc per element / the rational approximation
def test_censored_terms_match_the_textbook_form(model: PathLossModel, layout: Layout, size: int) -> None:
    """``_missed`` (one erfc + one exp, in place) = -log(eps + (1 - eps) Phi(a)) and its derivatives."""
    from gateway.localization.pathloss import norm_cdf, norm_pdf

    est = _estimator(model, layout, packet_loss=0.05)
    mu = np.random.default_rng(1).uniform(-110.0, -50.0, size)
    missed = np.random.default_rng(2).uniform(0.1, 5.0, size)
    sig, eps = est.params.sigma_db, est.params.packet_loss
    alpha = (FLOOR - mu) / sig
    like = eps + (1.0 - eps) * norm_cdf(alpha)
    d1 = (1.0 - eps) * norm_pdf(alpha) / (sig * like)
    d2 = np.maximum(d1 * (alpha + sig * d1) / sig, 0.0)
    loss, g1, g2 = est._missed(mu, missed)
    assert np.allclose(loss, missed * -np.log(like), rtol=1e-6, atol=1e-12)
    assert np.allclose(g1, missed * d1, rtol=1e-6, atol=1e-12)
    assert np.allclose(g2, missed * d2, rtol=1e-6, atol=1e-12)
    assert (g2 == 0).any() and (g2 > 0).any()  # both sides of the clip are exercised


@pytest.mark.parametrize("params", [{}, {"nu": 0.0, "packet_loss": 0.0}])
def test_nll_is_the_cost_of_evaluate(model: PathLossModel, layout: Layout, params: dict[str, float]) -> None:
    est = _estimator(model, layout, **params)
    prob, truth = _problem(model, 40, 8)
    theta = truth + np.random.default_rng(9).normal(0.0, 3.0, truth.shape)
    assert np.allclose(est.nll(prob, theta), est.evaluate(prob, theta)[0], rtol=1e-12, atol=1e-9)
