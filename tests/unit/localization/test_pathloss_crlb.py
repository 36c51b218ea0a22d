from __future__ import annotations

import math

import numpy as np

from gateway.layout import Layout
from gateway.localization.crlb import crlb_map, crlb_rmse, fisher
from gateway.localization.pathloss import PathLossModel, erfc, log_norm_cdf, mills_ratio


def test_erfc_matches_math() -> None:
    x = np.linspace(-6, 6, 241)
    ref = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(erfc(x) - ref) / np.maximum(ref, 1e-300)) < 2e-7


def test_log_norm_cdf_far_tail_is_finite_and_accurate() -> None:
    z = np.array([-40.0, -10.0, -6.5, -3.0, 0.0, 3.0])
    ref = np.array([math.log(0.5 * math.erfc(-v / math.sqrt(2))) if v > -37 else -v * v / 2 for v in z])
    got = log_norm_cdf(z)
    assert np.all(np.isfinite(got))
    assert np.allclose(got[1:], ref[1:], rtol=1e-4)
    assert abs(got[0] - ref[0]) / abs(ref[0]) < 0.01
    assert np.allclose(mills_ratio(np.array([-30.0])), 30.0, rtol=0.01)


def test_mean_rssi_uses_sensor_height(model: PathLossModel) -> None:
    under = model.xy[:1].copy()
    mu = model.mean_rssi(under)[0, 0]
    d = math.sqrt(model.z[0] ** 2 + 0.3**2)
    assert math.isclose(mu, model.p0[0] - 10 * model.n[0] * math.log10(d), rel_tol=1e-9)


def test_crlb_unknown_tx_power_is_larger_and_scales_with_adverts(model: PathLossModel) -> None:
    pos = np.array([[15.0, 10.0], [2.0, 2.0], [8.0, 14.0]])
    known = crlb_rmse(model, pos, 6.0, tx_known=True)
    unknown = crlb_rmse(model, pos, 6.0)
    assert np.all(unknown >= known - 1e-9)
    assert unknown[1] > 1.1 * known[1]  # off-centre, the offset and the range trade off
    ten = crlb_rmse(model, pos, 6.0, adverts=10)
    assert np.allclose(ten, unknown / math.sqrt(10), rtol=1e-6)
    # a corner is worse than the middle of the sensor grid
    assert unknown[1] > unknown[0]


def test_censoring_reduces_information_of_far_sensors(model: PathLossModel) -> None:
    pos = np.array([[15.0, 10.0]])
    no_floor = fisher(model, pos, 6.0, floor_dbm=None)
    high_floor = fisher(model, pos, 6.0, floor_dbm=-75.0)
    assert np.linalg.det(high_floor[0]) < np.linalg.det(no_floor[0])


def test_crlb_map_shape(layout: Layout) -> None:
    xs, ys, r = crlb_map(layout, 6.0, step_m=2.0)
    assert r.shape == (ys.size, xs.size)
    assert np.all(r > 0)
    assert np.all(np.isfinite(r))
