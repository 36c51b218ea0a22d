"""Fit per-sensor ``rssi_at_1m`` and ``path_loss_exponent`` from transmitters at known positions.

Sources of known positions: reference beacons (fixed), a walk with a logged path (interpolated), and
the sensors themselves (a sensor node's advert heard by another node: both positions are in the
layout). Reference transmitters define 0 dB transmit offset; sensors transmitting get their own
offset (ESP32 boards differ), fitted jointly. If only sensors transmit, their mean offset is 0.

Robust: Huber-weighted alternating least squares (per-sensor line in ``log10 d`` given the offsets,
per-transmitter offsets given the lines), with weak priors toward the layout's current values so a
sensor with few or badly spread distances keeps sane numbers (and a note says so). Adverts below the
detection floor are not seen, which would bias far-range fits toward stronger signals: observations
whose *predicted* level is within 2.5 sigma of the floor are left out of the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gateway.layout import Layout
from gateway.localization.pathloss import F64, MIN_DISTANCE_M

I64 = NDArray[np.int64]


@dataclass
class CalibrationData:
    sensor: I64  # (N,)
    tx: I64  # (N,) transmitter index
    dist: F64  # (N,) 3-D distance (m)
    rssi: F64  # (N,)
    tx_names: list[str]
    tx_reference: NDArray[np.bool_]  # (T,) offset fixed at 0

    @classmethod
    def from_rows(
        cls, rows: list[tuple[int, str, float, float, float, float]], layout: Layout, reference: set[str]
    ) -> CalibrationData:
        names: dict[str, int] = {}
        sx, sy, sz = layout.sensor_xy()[:, 0], layout.sensor_xy()[:, 1], layout.sensor_z()
        sen = np.array([r[0] for r in rows], dtype=np.int64)
        tx = np.array([names.setdefault(r[1], len(names)) for r in rows], dtype=np.int64)
        x, y, z, rssi = (np.array([r[k] for r in rows], dtype=np.float64) for k in (2, 3, 4, 5))
        d = np.sqrt((x - sx[sen]) ** 2 + (y - sy[sen]) ** 2 + (z - sz[sen]) ** 2 + MIN_DISTANCE_M**2)
        tx_names = list(names)
        ref = np.array([n in reference for n in tx_names], dtype=bool)
        return cls(sen, tx, d, rssi, tx_names, ref)


@dataclass
class CalibrationResult:
    p0: F64
    n: F64
    tx_offset: dict[str, float]
    count: I64
    resid_sd: F64
    sigma_db: float
    notes: list[str] = field(default_factory=list)


def fit_sensors(
    data: CalibrationData,
    layout: Layout,
    prior_n_sd: float = 0.5,
    prior_p0_sd: float = 15.0,
    huber_k: float = 1.5,
    iterations: int = 30,
    floor_dbm: float | None = -95.0,
) -> CalibrationResult:
    ns = len(layout.sensors)
    nt = len(data.tx_names)
    p0 = layout.sensor_p0().copy()
    n = layout.sensor_n().copy()
    p0_prior, n_prior = p0.copy(), n.copy()
    off = np.zeros(nt)
    free = ~data.tx_reference
    any_ref = bool(data.tx_reference.any())
    L = -10.0 * np.log10(data.dist)
    w = np.ones_like(data.rssi)
    scale = 6.0
    for it in range(iterations):
        y = data.rssi - off[data.tx]
        # per-sensor weighted line y = p0 + n * L with ridge priors (2x2 normal equations, batched)
        sw = np.bincount(data.sensor, w, ns) + 1.0 / prior_p0_sd**2 * scale**2
        swl = np.bincount(data.sensor, w * L, ns)
        swll = np.bincount(data.sensor, w * L * L, ns) + 1.0 / prior_n_sd**2 * scale**2
        swy = np.bincount(data.sensor, w * y, ns) + p0_prior / prior_p0_sd**2 * scale**2
        swly = np.bincount(data.sensor, w * L * y, ns) + n_prior / prior_n_sd**2 * scale**2
        det = sw * swll - swl * swl
        p0 = (swll * swy - swl * swly) / det
        n = np.clip((sw * swly - swl * swy) / det, 0.6, 6.0)
        # per-transmitter offsets for the non-reference transmitters
        r0 = data.rssi - (p0[data.sensor] + n[data.sensor] * L)
        num = np.bincount(data.tx, w * r0, nt)
        den = np.bincount(data.tx, w, nt)
        new_off = np.where(free & (den > 0), num / np.maximum(den, 1e-12), 0.0)
        if not any_ref and free.any():
            new_off[free] -= new_off[free].mean()
        off = new_off
        resid = r0 - off[data.tx]
        scale = max(1.4826 * float(np.median(np.abs(resid))), 0.5)
        a = np.abs(resid) / (huber_k * scale)
        w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))
        if floor_dbm is not None and it >= 3:
            # adverts whose *predicted* level is near the floor are partly unseen, and the seen ones
            # are biased strong: leave them out (selecting on the prediction, not on the noisy value,
            # keeps the fit unbiased)
            pred = p0[data.sensor] + n[data.sensor] * L + off[data.tx]
            w = np.where(pred < floor_dbm + 2.5 * scale, 0.0, w)
    resid = data.rssi - (p0[data.sensor] + n[data.sensor] * L) - off[data.tx]
    count = np.bincount(data.sensor, minlength=ns)
    rs = np.sqrt(np.bincount(data.sensor, resid**2, ns) / np.maximum(count, 1))
    notes = [f"residual sigma (robust) {scale:.2f} dB over {data.rssi.size} observations -> sigma_db"]
    for i, s in enumerate(layout.sensors):
        sel = data.sensor == i
        if count[i] < 10:
            notes.append(f"sensor {s.id}: only {count[i]} observations; values stay near the layout's")
        elif np.ptp(L[sel]) < 3.0:
            notes.append(f"sensor {s.id}: distances span < 2x; path_loss_exponent is mostly the prior")
    return CalibrationResult(
        p0=p0,
        n=n,
        tx_offset={data.tx_names[t]: float(off[t]) for t in np.flatnonzero(free)},
        count=count,
        resid_sd=rs,
        sigma_db=scale,
        notes=notes,
    )


def sensors_toml(layout: Layout, res: CalibrationResult) -> str:
    out = [f"# gateway calibrate: robust residual sigma {res.sigma_db:.2f} dB", ""]
    for i, s in enumerate(layout.sensors):
        out.append("[[sensors]]")
        out.append(f'id = "{s.id}"')
        if s.kind != "node":
            out.append(f'kind = "{s.kind}"')
        out.append(f"x = {s.x:g}")
        out.append(f"y = {s.y:g}")
        out.append(f"z = {s.z:g}")
        out.append(f"rssi_at_1m = {res.p0[i]:.1f}  # {int(res.count[i])} obs, rms residual {res.resid_sd[i]:.1f} dB")
        out.append(f"path_loss_exponent = {res.n[i]:.2f}")
        out.append("")
    return "\n".join(out)
