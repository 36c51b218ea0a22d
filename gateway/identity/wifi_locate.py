"""Where a Wi-Fi scan burst was sent from, in metres, from its levels at several receivers (pure).

Issue 19, sixth round: the position term of the grouping (:func:`gateway.identity.wifi_links.pos_score`)
compares a burst's level at each node with the device's latest burst there, step by step in dB. This
module places a burst on the floor instead - the layout's log-distance path-loss model (the one
``gateway/localization/pathloss.py`` calibrates and the localizer uses: ``rssi = p0 - 10 n log10(d)``
with ``d`` the 3-D distance to the sensor) with the phone's transmit power unknown (a free offset:
a probe request is louder than a BLE advert, and phones differ) - and :func:`pos_score_m` scores two
bursts' positions as one device that stayed or walked on against two unrelated devices.

The formula is written here rather than imported: ``identity`` sits below ``localization`` in the
import layers (tests/unit/test_layers.py). The grid search is a coarse fix (``step_m``), with a
spread from the likelihood over the grid: enough to say "metres apart", not a localizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from gateway.layout import Layout

__all__ = ["BurstLocator", "pos_score_m"]

F64 = NDArray[np.float64]
_TEN_OVER_LN10 = 10.0 / math.log(10.0)


class BurstLocator:
    """Positions of bursts from their levels at the layout's sensors (receiver id -> (level, frames)).

    ``level_sd_db``: the spread of a burst's mean level at one sensor around the path-loss model's
    (the store's residual, 4-8 dB in the simulator's radio, 5.5 dB on the real BLE tracks);
    ``frame_db``: one frame's extra noise (the mean of ``n`` frames has ``frame_db / sqrt(n)``);
    ``margin_m``: how far outside the store's box a burst may be placed (the pavement in front)."""

    def __init__(
        self,
        layout: Layout,
        *,
        step_m: float = 0.5,
        margin_m: float = 3.0,
        level_sd_db: float = 6.0,
        frame_db: float = 4.0,
        min_receivers: int = 3,
    ) -> None:
        if not (step_m > 0.0 and margin_m >= 0.0 and level_sd_db > 0.0 and frame_db >= 0.0):
            raise ValueError("step_m and level_sd_db must be > 0, margin_m and frame_db >= 0")
        if min_receivers < 2:
            raise ValueError(f"min_receivers must be at least 2 (a position needs levels at two), got {min_receivers}")
        w, d = layout.store.width_m, layout.store.depth_m
        xs = np.arange(-margin_m, w + margin_m + 1e-9, step_m)
        ys = np.arange(-margin_m, d + margin_m + 1e-9, step_m)
        gx, gy = np.meshgrid(xs, ys)
        self.grid: F64 = np.column_stack([gx.ravel(), gy.ravel()])
        self.area_m2 = float((w + 2 * margin_m) * (d + 2 * margin_m))
        xy, z = layout.sensor_xy(), layout.sensor_z()
        dx = self.grid[:, None, 0] - xy[None, :, 0]
        dy = self.grid[:, None, 1] - xy[None, :, 1]
        dist = np.sqrt(dx * dx + dy * dy + z[None, :] ** 2 + 0.09)
        # expected level at every grid point and sensor, up to the phone's transmit offset: (G, S)
        self.model: F64 = layout.sensor_p0()[None, :] - _TEN_OVER_LN10 * layout.sensor_n()[None, :] * np.log(dist)
        self.index = layout.sensor_index()
        self.level_var = level_sd_db * level_sd_db
        self.frame_var = frame_db * frame_db
        self.min_receivers = min_receivers
        self.located = 0
        self.too_few = 0

    def locate(self, levels: Mapping[str, tuple[float, float]]) -> tuple[float, float, float] | None:
        """(x, y, variance per axis in m²) of a burst heard at ``levels`` (receiver -> (mean level,
        frames)); None where fewer than ``min_receivers`` known sensors heard it."""
        cols: list[int] = []
        vals: list[float] = []
        wts: list[float] = []
        for r, (v, n) in levels.items():
            i = self.index.get(r)
            if i is not None:
                cols.append(i)
                vals.append(v)
                wts.append(1.0 / (self.level_var + self.frame_var / max(n, 1.0)))
        if len(cols) < self.min_receivers:
            self.too_few += 1
            return None
        self.located += 1
        w = np.asarray(wts)
        resid = np.asarray(vals)[None, :] - self.model[:, cols]  # (G, k)
        # the transmit offset that fits each grid point best (weighted mean residual), then the misfit
        off = resid @ w / w.sum()
        dev = resid - off[:, None]
        cost = 0.5 * (dev * dev) @ w
        post = np.exp(cost.min() - cost)
        post /= post.sum()
        mx = float(post @ self.grid[:, 0])
        my = float(post @ self.grid[:, 1])
        var = float(post @ ((self.grid[:, 0] - mx) ** 2 + (self.grid[:, 1] - my) ** 2)) / 2.0
        return mx, my, var


def pos_score_m(
    a: tuple[float, float, float],
    b: tuple[float, float, float],
    gap: float,
    *,
    area_m2: float,
    dwell_s: float,
    speed_m_s: float,
    wander_m: float = 1.0,
) -> float:
    """log LR that a burst placed at ``b`` (x, y, variance per axis) is the device placed at ``a``
    ``gap`` seconds before, against an unrelated device (anywhere on ``area_m2``). The device
    stayed (chance ``exp(-gap / dwell_s)``: the two fixes differ by their errors and a little
    wandering) or walked on, at most ``speed_m_s`` per second (uniform over the disc it can reach,
    blurred by the fixes' errors, never more spread out than the floor)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    d2 = dx * dx + dy * dy
    s2 = a[2] + b[2] + wander_m * wander_m
    stay = math.exp(-0.5 * d2 / s2) / (2.0 * math.pi * s2)
    reach = speed_m_s * gap + 2.0 * math.sqrt(s2)
    disc = math.pi * reach * reach
    if disc >= area_m2:
        walk = 1.0 / area_m2
    else:
        d = math.sqrt(d2)
        # uniform inside the disc; beyond its edge a Gaussian fall-off over the fixes' errors
        edge = math.exp(-0.5 * (d - reach) ** 2 / s2) if d > reach else 1.0
        walk = edge / disc
    pi = math.exp(-gap / dwell_s)
    return math.log(pi * stay + (1.0 - pi) * walk) + math.log(area_m2)
