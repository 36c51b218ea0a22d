"""A standing device's fix is its window's posterior mean, not its mode (`standing_mean_sd`).

Near a wall, and along the ridge where a phone's position trades against its transmit offset, the
window's posterior is lopsided: the mode sits on one side of the mass and the squared error (the
static bar is an RMSE) is the mean's to minimise (docs/localization.md 9.10).
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization.estimator import Estimator, EstimatorParams
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.region import Walkable
from gateway.localization.synth import RadioParams

from .conftest import static_problem
from .test_standing_search import _family_static_ratio

UNIT = np.stack(np.meshgrid(np.linspace(-3, 3, 5), np.linspace(-3, 3, 5)), axis=-1).reshape(-1, 2)


def _points(theta: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov[:, :2, :2])
    return np.asarray(theta[:, None, :2] + np.einsum("kij,mj->kmi", chol, UNIT))


def test_a_sharp_symmetric_posterior_keeps_its_mode(layout: Layout, model: PathLossModel) -> None:
    """Many adverts in the middle of the store: the posterior is close to Gaussian and its mean is the mode
    (the stencil spreads with the fix's own covariance, so its discreteness does not move the fix)."""
    pos = np.array([[12.0, 9.0], [18.0, 11.0], [9.0, 8.0]])
    prob = static_problem(model, pos, np.zeros(3), 200, RadioParams(sigma_db=3.0), seed=1)
    est = Estimator(model, EstimatorParams(sigma_db=3.0, nu=0.0, packet_loss=0.0), Walkable.from_layout(layout))
    sol = est.locate(prob)
    cov = sol.cov()
    mean = est.local_mean(prob, sol.theta, 1.0 / 16.0, _points(sol.theta, cov))
    sd = np.sqrt(cov[:, 0, 0] + cov[:, 1, 1])
    shift = np.hypot(*(mean - sol.theta[:, :2]).T)
    assert np.all(shift < 0.25 * sd), (shift, sd)


def test_the_walkable_area_pulls_the_mean_off_the_wall(layout: Layout, model: PathLossModel) -> None:
    """A fix at the wall with a wide posterior: the half of the stencil outside the store weighs nothing, so
    the mean lies inside and away from the wall, by a good part of the fix's sd."""
    pos = np.array([[0.4, 10.0]])
    prob = static_problem(model, pos, np.zeros(1), 3, RadioParams(sigma_db=6.0), seed=3)
    est = Estimator(model, EstimatorParams(nu=0.0, packet_loss=0.0), Walkable.from_layout(layout))
    theta = np.array([[0.0, 10.0, 0.0]])
    cov = np.diag([4.0, 4.0, 16.0])[None]
    mean = est.local_mean(prob, theta, 1.0 / 16.0, _points(theta, cov))
    assert mean[0, 0] > 0.8, mean
    # without a walkable area the same stencil is not cut at the wall
    free = Estimator(model, EstimatorParams(nu=0.0, packet_loss=0.0)).local_mean(
        prob, theta, 1.0 / 16.0, _points(theta, cov)
    )
    assert mean[0, 0] - free[0, 0] > 0.5, (mean, free)


def test_no_walkable_point_keeps_the_mode(layout: Layout, model: PathLossModel) -> None:
    pos = np.array([[10.0, 10.0]])
    prob = static_problem(model, pos, np.zeros(1), 5, RadioParams(sigma_db=6.0), seed=4)
    est = Estimator(model, EstimatorParams(nu=0.0, packet_loss=0.0), Walkable.from_layout(layout))
    theta = np.array([[-50.0, -50.0, 0.0]])  # far outside, with a tight stencil: nothing walkable
    mean = est.local_mean(prob, theta, 1.0 / 16.0, _points(theta, np.diag([0.01, 0.01, 1.0])[None]))
    assert np.allclose(mean, theta[:, :2])


def test_posterior_mean_lowers_the_small_store_static_rmse() -> None:
    """The benchmark's static case on the family's corner-shop (18 x 12 m, 8 sensors, 2 adverts/s): the
    phones near walls hold most of the squared error, and the posterior mean brings the RMSE closer to
    the bound than the mode (1.45 -> 1.42 x CRLB on the bench's draw; the mode is what the old code
    output)."""
    mean = _family_static_ratio(LocalizationSettings(standing_mean_sd=3.0))
    mode = _family_static_ratio(LocalizationSettings(standing_mean_sd=0.0))
    assert mean < mode - 0.02, (mean, mode)


def test_a_fix_spilling_over_a_wall_moves_inside_not_onto_it(layout: Layout) -> None:
    """`walkable_mean_sd`: the mean of the fix's Gaussian cut to the walkable area. A fix 0.3 m outside the
    left wall with a 1 m sd lands inside (the projection, the old output, put it on the wall at x = 0); a
    fix whose ellipse lies inside is unchanged; 0 leaves the projection alone."""
    loc = MlLocalizer(layout, LocalizationSettings())
    xy = np.array([[-0.3, 10.0], [15.0, 10.0]])
    pcov = np.array([np.eye(2), 0.25 * np.eye(2)])
    out = xy.copy()
    loc._walkable_mean(out, pcov, np.arange(2))
    assert 0.3 < out[0, 0] < 1.5, out
    assert abs(out[0, 1] - 10.0) < 1e-9
    assert np.array_equal(out[1], xy[1])
    assert loc.region.project(xy)[0, 0] == 0.0  # what the projection alone gives


def test_chol2_matches_numpy_and_flags_covariances_without_a_factor() -> None:
    """The closed-form 2 x 2 Cholesky factor equals numpy's on positive definite covariances; a row that
    is indefinite, singular or not finite is flagged instead of raising (numpy raises for the batch)."""
    from gateway.localization.localizer import _chol2

    rng = np.random.default_rng(7)
    m = rng.normal(size=(200, 2, 2))
    good = m @ m.transpose(0, 2, 1) + 0.01 * np.eye(2)
    chol, ok = _chol2(good)
    assert ok.all()
    assert np.allclose(chol, np.linalg.cholesky(good), rtol=1e-12, atol=1e-12)
    bad = np.array(
        [[[1.0, 2.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]], [[np.nan, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 1.0]]]
    )
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(bad)
    _, ok = _chol2(bad)
    assert not ok.any()


def test_a_covariance_without_a_factor_leaves_its_fix_and_the_tick_goes_on(layout: Layout) -> None:
    """A tracked fix whose covariance is not positive definite (or not finite) keeps its place; the other
    fixes of the tick still get their walkable-area mean (the tick raised LinAlgError before: bench_nodes
    stopped on it)."""
    loc = MlLocalizer(layout, LocalizationSettings())
    xy = np.array([[-0.3, 10.0], [-0.3, 12.0], [-0.3, 14.0]])
    pcov = np.array([np.eye(2), [[1.0, 2.0], [2.0, 1.0]], np.full((2, 2), np.nan)])
    out = xy.copy()
    loc._walkable_mean(out, pcov, np.arange(3))
    assert 0.3 < out[0, 0] < 1.5, out
    assert np.array_equal(out[1:], xy[1:])
