"""Coverage overlay: grid shape and physical sanity of the CRLB map the page draws."""

from __future__ import annotations

import math

from gateway.layout import load_layout
from gateway.status.coverage import coverage_grid, geometric_crlb_grid
from tests.unit.status.support import DEMO_LAYOUT


def test_grid_covers_the_floor_and_is_best_among_the_sensors() -> None:
    lay = load_layout(DEMO_LAYOUT)
    for g in (coverage_grid(lay), geometric_crlb_grid(lay)):
        assert (g["nx"], g["ny"], g["step_m"]) == (30, 20, 1.0)
        assert (g["x0"], g["y0"]) == (0.5, 0.5)
        assert len(g["rmse_m"]) == 20
        assert all(len(row) == 30 for row in g["rmse_m"])
        values = [v for row in g["rmse_m"] for v in row]
        assert all(v is None or (math.isfinite(v) and v > 0) for v in values)
        centre, corner = g["rmse_m"][10][15], g["rmse_m"][0][0]
        assert centre < corner  # inside the sensor grid beats the corner outside it
        assert centre < 5.0


def test_bound_shrinks_with_less_noise() -> None:
    lay = load_layout(DEMO_LAYOUT)
    noisy = geometric_crlb_grid(lay, sigma_db=8.0)["rmse_m"][10][15]
    quiet = geometric_crlb_grid(lay, sigma_db=4.0)["rmse_m"][10][15]
    assert abs(noisy / quiet - 2.0) < 0.02  # the bound is linear in sigma
