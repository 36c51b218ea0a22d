"""The coverage overlay of the status page: position-accuracy bound per floor cell, as JSON.

``coverage_grid`` is what the daemon's provider serves: the localization module's Cramér-Rao map
(``gateway.localization.crlb.crlb_map``: censored model, unknown transmit power).
``geometric_crlb_grid`` is the textbook bound of the plain log-distance model, kept as the
reference the tests hold the map against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.layout import Layout
from gateway.localization.crlb import crlb_map


def grid_dict(xs: Any, ys: Any, rmse: Any, step_m: float) -> dict[str, Any]:
    """The page's coverage JSON from grid axes and an ``(ny, nx)`` RMSE array (non-finite -> null)."""
    rows = [[None if not math.isfinite(float(v)) else round(float(v), 2) for v in row] for row in rmse]
    return {"x0": float(xs[0]), "y0": float(ys[0]), "step_m": step_m, "nx": len(xs), "ny": len(ys), "rmse_m": rows}


def coverage_grid(
    layout: Layout, sigma_db: float = 6.0, floor_dbm: float = -95.0, step_m: float = 1.0
) -> dict[str, Any]:
    """Coverage overlay: the CRLB position RMSE (m) of one advert per sensor, on a ``step_m`` grid."""
    xs, ys, rmse = crlb_map(layout, sigma_db, step_m=step_m, floor_dbm=floor_dbm)
    return grid_dict(xs, ys, rmse, step_m)


def geometric_crlb_grid(layout: Layout, sigma_db: float = 6.0, step_m: float = 1.0) -> dict[str, Any]:
    """Cramér-Rao bound on 2-D position RMSE for the log-distance model, on a grid.

    For RSSI_i = P0_i - 10 n_i log10(d_i) + N(0, sigma^2), the Fisher information of (x, y) is
    sum_i (10 n_i / (ln 10 sigma))^2 (p - s_i)(p - s_i)^T / d_i^4 and RMSE >= sqrt(tr J^-1)
    (known transmit power, no detection floor: a looser model than ``coverage_grid``'s).
    """
    w, d = layout.store.width_m, layout.store.depth_m
    xs = np.arange(step_m / 2, w, step_m)
    ys = np.arange(step_m / 2, d, step_m)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    s = layout.sensor_xy()
    z = layout.sensor_z()
    b = (10.0 * layout.sensor_n() / (math.log(10.0) * sigma_db)) ** 2
    dx = pts[:, None, 0] - s[None, :, 0]
    dy = pts[:, None, 1] - s[None, :, 1]
    d2 = dx * dx + dy * dy + z[None, :] ** 2
    wgt = b[None, :] / (d2 * d2)
    jxx = (wgt * dx * dx).sum(1)
    jyy = (wgt * dy * dy).sum(1)
    jxy = (wgt * dx * dy).sum(1)
    det = jxx * jyy - jxy * jxy
    with np.errstate(divide="ignore", invalid="ignore"):
        rmse = np.sqrt((jxx + jyy) / det)
    return grid_dict(xs, ys, rmse.reshape(gy.shape), step_m)
