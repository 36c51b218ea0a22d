"""The ML estimator on synthetic data from the same path-loss model."""

from __future__ import annotations

import numpy as np

from gateway.localization.crlb import crlb_rmse
from gateway.localization.estimator import Estimator, EstimatorParams, Problem
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams

from .conftest import interior_positions, static_problem


def rmse(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(((est - truth) ** 2).sum(1).mean()))


def test_ml_reaches_crlb_on_pure_path_loss_noise(model: PathLossModel) -> None:
    pos = interior_positions(150, 1)
    prob = static_problem(model, pos, np.zeros(150), 10, RadioParams(sigma_db=6.0), seed=2)
    sol = Estimator(model, EstimatorParams(nu=0.0, packet_loss=0.0)).locate(prob)  # tx power unknown
    bound = float(np.sqrt((crlb_rmse(model, pos, 6.0, adverts=10) ** 2).mean()))
    got = rmse(sol.theta[:, :2], pos)
    assert got <= 1.25 * bound, (got, bound)
    assert got >= 0.5 * bound  # a sanity check that the bound is the right scale


def test_censoring_removes_bias_toward_hearing_sensors(model: PathLossModel) -> None:
    floor = -78.0  # only sensors within ~7 m hear: missing sensors carry most of the information
    pos = interior_positions(120, 3)
    prob = static_problem(model, pos, np.zeros(120), 10, RadioParams(sigma_db=6.0, floor_dbm=floor), seed=4)
    est = Estimator(model, EstimatorParams(floor_dbm=floor, nu=0.0, packet_loss=0.0))
    with_c = est.locate(prob, tx_prior_sd=4.0)
    without = est.locate(Problem(prob.mean, prob.count, np.zeros_like(prob.missed)), tx_prior_sd=4.0)
    # bias toward the hearing sensors: the estimate moves toward their (weighted) centroid
    w = prob.count / prob.count.sum(1, keepdims=True)
    toward = w @ model.xy - pos
    toward /= np.linalg.norm(toward, axis=1, keepdims=True)
    bias_with = float(((with_c.theta[:, :2] - pos) * toward).sum(1).mean())
    bias_without = float(((without.theta[:, :2] - pos) * toward).sum(1).mean())
    assert bias_without > 0.5, bias_without
    assert abs(bias_with) < 0.5 * bias_without, (bias_with, bias_without)
    assert rmse(with_c.theta[:, :2], pos) < 0.7 * rmse(without.theta[:, :2], pos)
    # heard-only RSSI is truncated high, which also inflates the transmit offset
    assert without.theta[:, 2].mean() > with_c.theta[:, 2].mean() + 2.0


def test_transmit_offset_is_estimated_jointly(model: PathLossModel) -> None:
    pos = interior_positions(120, 5)
    tx = np.random.default_rng(6).choice([-6.0, 6.0], 120)
    prob = static_problem(model, pos, tx, 30, RadioParams(sigma_db=6.0), seed=7)
    est = Estimator(model, EstimatorParams(nu=0.0, packet_loss=0.0))
    sol = est.locate(prob)
    assert float(np.std(sol.theta[:, 2] - tx)) < 1.5
    assert np.corrcoef(sol.theta[:, 2], tx)[0, 1] > 0.9
    # ignoring the offset (forcing it to 0) is clearly worse
    pp = np.zeros((120, 3, 3))
    pp[:, 2, 2] = 1e6
    forced = est.refine(prob, sol.theta * np.array([1, 1, 0]), np.zeros((120, 3)), pp)
    assert rmse(sol.theta[:, :2], pos) < 0.8 * rmse(forced.theta[:, :2], pos)


def test_student_t_is_robust_to_body_shadow_fades(model: PathLossModel) -> None:
    pos = interior_positions(150, 8)
    radio = RadioParams(sigma_db=2.0, fade_probability=0.15, fade_db=15.0)
    prob = static_problem(model, pos, np.zeros(150), 1, radio, seed=9)
    reps = [static_problem(model, pos, np.zeros(150), 1, radio, seed=10 + k) for k in range(3)]
    robust = Estimator(model, EstimatorParams(sigma_db=2.0, nu=3.0, packet_loss=0.05))
    gauss = Estimator(model, EstimatorParams(sigma_db=2.0, nu=0.0, packet_loss=0.05))
    r_err = [rmse(robust.locate(p, 4.0).theta[:, :2], pos) for p in [prob, *reps]]
    g_err = [rmse(gauss.locate(p, 4.0).theta[:, :2], pos) for p in [prob, *reps]]
    assert np.mean(r_err) < 0.85 * np.mean(g_err), (r_err, g_err)


def test_fisher_information_from_solution_matches_crlb(model: PathLossModel) -> None:
    pos = np.array([[15.0, 10.0]] * 50)
    prob = static_problem(model, pos, np.zeros(50), 20, RadioParams(sigma_db=6.0), seed=11)
    sol = Estimator(model, EstimatorParams(nu=0.0, packet_loss=0.0)).locate(prob)
    sd = np.sqrt(np.linalg.inv(sol.h_post)[:, 0, 0] + np.linalg.inv(sol.h_post)[:, 1, 1])
    bound = crlb_rmse(model, pos[:1], 6.0, adverts=20)[0]
    assert 0.7 * bound < np.median(sd) < 1.4 * bound
