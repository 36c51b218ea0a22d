"""Fit per-sensor ``rssi_at_1m`` and ``path_loss_exponent`` from transmitters at known positions.

Sources of known positions: reference beacons (fixed), a walk with a logged path (interpolated), and
the sensors themselves (a sensor node's advert heard by another node: both positions are in the
layout). Reference transmitters define 0 dB transmit offset; sensors transmitting get their own
offset (ESP32 boards differ), fitted jointly. If only sensors transmit, their mean offset is 0.

Robust: Huber-weighted alternating least squares (per-sensor line in ``log10 d`` given the offsets,
per-transmitter offsets given the lines), with weak priors toward the layout's current values so a
sensor with few or badly spread distances keeps sane numbers (and a note says so).

Adverts below the detection floor are not seen, which biases far-range fits toward stronger signals
(a flatter exponent). When the data says which adverts each sensor **missed** (reference adverts are
grouped by time, see ``gateway calibrate``), the fit is a censored regression (Tobit, by EM): a miss
is either packet loss (probability ``eps_s``, fitted per sensor) or a report below the floor, whose
expected value enters the line fit with the probability it was weak. Without misses, observations
whose *predicted* level is within 2.5 sigma of the floor are left out instead.

Besides p0 and n it reports what the localizer needs to know about the store's noise: the residual
sd, split into the advert-to-advert part (successive reports of one transmitter at one sensor, under
1.5 s apart) and the part that persists (``shadowing_db``), each sensor's packet loss and floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gateway.layout import Layout
from gateway.localization.pathloss import F64, MIN_DISTANCE_M, norm_cdf, norm_pdf

I64 = NDArray[np.int64]


@dataclass
class CalibrationData:
    sensor: I64  # (N,)
    tx: I64  # (N,) transmitter index
    dist: F64  # (N,) 3-D distance (m)
    rssi: F64  # (N,)
    tx_names: list[str]
    tx_reference: NDArray[np.bool_]  # (T,) offset fixed at 0
    ts: F64 | None = None  # (N,) report times (for the advert-to-advert noise)
    # adverts a sensor missed (censored): sensor, transmitter, 3-D distance, one row per miss
    miss_sensor: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    miss_tx: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    miss_dist: F64 = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_rows(
        cls,
        rows: list[tuple[int, str, float, float, float, float, float]],
        layout: Layout,
        reference: set[str],
        misses: list[tuple[int, str, float, float, float]] | None = None,
    ) -> CalibrationData:
        """``rows``: (sensor, transmitter, x, y, z, rssi, ts) per report; ``misses``: (sensor,
        transmitter, x, y, z) per advert a sensor did not report (transmitters never heard are dropped)."""
        names: dict[str, int] = {}
        sx, sy, sz = layout.sensor_xy()[:, 0], layout.sensor_xy()[:, 1], layout.sensor_z()

        def dist(sen: I64, x: F64, y: F64, z: F64) -> F64:
            return np.asarray(np.sqrt((x - sx[sen]) ** 2 + (y - sy[sen]) ** 2 + (z - sz[sen]) ** 2 + MIN_DISTANCE_M**2))

        sen = np.array([r[0] for r in rows], dtype=np.int64)
        tx = np.array([names.setdefault(r[1], len(names)) for r in rows], dtype=np.int64)
        x, y, z, rssi, ts = (np.array([r[k] for r in rows], dtype=np.float64) for k in (2, 3, 4, 5, 6))
        tx_names = list(names)
        ref = np.array([n in reference for n in tx_names], dtype=bool)
        known = [m for m in (misses or []) if m[1] in names]
        ms = np.array([m[0] for m in known], dtype=np.int64)
        mt = np.array([names[m[1]] for m in known], dtype=np.int64)
        mx, my, mz = (np.array([m[k] for m in known], dtype=np.float64) for k in (2, 3, 4))
        return cls(sen, tx, dist(sen, x, y, z), rssi, tx_names, ref, ts, ms, mt, dist(ms, mx, my, mz))


@dataclass
class CalibrationResult:
    p0: F64
    n: F64
    tx_offset: dict[str, float]
    count: I64
    resid_sd: F64
    sigma_db: float
    notes: list[str] = field(default_factory=list)
    packet_loss: F64 | None = None  # (S,) fitted from the misses (None: no misses given)
    floor_dbm: F64 | None = None  # (S,) the floor used per sensor
    sigma_white_db: float | None = None  # advert-to-advert part of sigma_db
    shadowing_db: float | None = None  # the part that persists


def fit_sensors(
    data: CalibrationData,
    layout: Layout,
    prior_n_sd: float = 0.5,
    prior_p0_sd: float = 15.0,
    huber_k: float = 1.5,
    iterations: int = 30,
    floor_dbm: float | None = -95.0,
    packet_loss: float = 0.1,
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
    censored = floor_dbm is not None and data.miss_sensor.size > 0
    floor = np.full(ns, -np.inf if floor_dbm is None else float(floor_dbm))
    if floor_dbm is not None:
        lowest = np.full(ns, np.inf)
        np.minimum.at(lowest, data.sensor, data.rssi)
        floor = np.minimum(floor, lowest)
    eps = np.full(ns, packet_loss)
    mL = -10.0 * np.log10(data.miss_dist) if censored else np.zeros(0)
    ms, mt = data.miss_sensor, data.miss_tx
    for it in range(iterations):
        # censored rows (EM): the expected value of a miss that was weak, weighted by how likely that is
        cw = np.zeros(0)
        cy = np.zeros(0)
        a_c = np.zeros(0)
        if censored and it >= 1:
            mu = p0[ms] + n[ms] * mL + off[mt]
            a_c = (floor[ms] - mu) / scale
            cdf = np.maximum(norm_cdf(a_c), 1e-300)
            weak = (1.0 - eps[ms]) * cdf / (eps[ms] + (1.0 - eps[ms]) * cdf)
            cy = mu - scale * norm_pdf(a_c) / cdf - off[mt]
            cw = weak
            # packet loss: the miss rate where the floor cannot explain a miss (predicted > floor + 3 sd)
            strong_m = a_c < -3.0
            hp = p0[data.sensor] + n[data.sensor] * L + off[data.tx]
            strong_h = hp > floor[data.sensor] + 3.0 * scale
            n_miss = np.bincount(ms[strong_m], minlength=ns)
            n_all = n_miss + np.bincount(data.sensor[strong_h], minlength=ns)
            eps = np.clip((n_miss + 5.0 * packet_loss) / (n_all + 5.0), 0.001, 0.9)
        y = data.rssi - off[data.tx]
        allw = np.concatenate([w, cw])
        allL = np.concatenate([L, mL if cw.size else np.zeros(0)])
        ally = np.concatenate([y, cy])
        alls = np.concatenate([data.sensor, ms if cw.size else np.zeros(0, dtype=np.int64)])
        # per-sensor weighted line y = p0 + n * L with ridge priors (2x2 normal equations, batched)
        sw = np.bincount(alls, allw, ns) + 1.0 / prior_p0_sd**2 * scale**2
        swl = np.bincount(alls, allw * allL, ns)
        swll = np.bincount(alls, allw * allL * allL, ns) + 1.0 / prior_n_sd**2 * scale**2
        swy = np.bincount(alls, allw * ally, ns) + p0_prior / prior_p0_sd**2 * scale**2
        swly = np.bincount(alls, allw * allL * ally, ns) + n_prior / prior_n_sd**2 * scale**2
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
        mad = max(1.4826 * float(np.median(np.abs(resid))), 0.5)
        if cw.size:
            # the heard residuals are truncated at the floor (too narrow): the censored ones' expected
            # squared deviation, sigma^2 (1 - a lambda), completes the Tobit EM's variance update
            lam = norm_pdf(a_c) / np.maximum(norm_cdf(a_c), 1e-300)
            wsum = float(w.sum())
            scale = float(
                np.sqrt((wsum * mad**2 + float((cw * scale**2 * (1.0 - a_c * lam)).sum())) / (wsum + float(cw.sum())))
            )
        else:
            scale = mad
        a = np.abs(resid) / (huber_k * scale)
        w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))
        if floor_dbm is not None and not censored and it >= 3:
            # adverts whose *predicted* level is near the floor are partly unseen, and the seen ones
            # are biased strong: leave them out (selecting on the prediction, not on the noisy value,
            # keeps the fit unbiased)
            pred = p0[data.sensor] + n[data.sensor] * L + off[data.tx]
            w = np.where(pred < floor_dbm + 2.5 * scale, 0.0, w)
    resid = data.rssi - (p0[data.sensor] + n[data.sensor] * L) - off[data.tx]
    count = np.bincount(data.sensor, minlength=ns)
    rs = np.sqrt(np.bincount(data.sensor, resid**2, ns) / np.maximum(count, 1))
    notes = [f"residual sigma (robust) {scale:.2f} dB over {data.rssi.size} observations -> sigma_db"]
    pred = data.rssi - resid
    strong = pred > floor[data.sensor] + 2.0 * scale if floor_dbm is not None else np.ones(resid.size, dtype=bool)
    white = _white_noise(data, resid, strong)
    shadow = None
    if white is not None:
        shadow = float(np.sqrt(max(scale**2 - white**2, 0.0)))
        notes.append(f"advert-to-advert noise {white:.2f} dB, persistent part {shadow:.2f} dB -> shadowing_db")
    if censored:
        notes.append(
            "packet loss per sensor (misses not explained by the floor): "
            + ", ".join(f"{s.id} {eps[i]:.2f}" for i, s in enumerate(layout.sensors))
            + f" -> packet_loss ~{float(np.median(eps)):.2f} (learnt per sensor while running)"
        )
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
        packet_loss=eps if censored else None,
        floor_dbm=floor if floor_dbm is not None else None,
        sigma_white_db=white,
        shadowing_db=shadow,
    )


def _white_noise(data: CalibrationData, resid: F64, strong: NDArray[np.bool_], max_gap_s: float = 1.5) -> float | None:
    """Advert-to-advert noise: successive residuals of one transmitter at one sensor differ by
    ``N(0, 2 sigma_w^2)`` when the persistent part has not changed in between (robust scale). Only
    reports predicted well above the floor (``strong``): near it the heard ones are the strong draws."""
    if data.ts is None or data.ts.size < 20:
        return None
    order = np.lexsort((data.ts, data.tx, data.sensor))
    sen, tx, ts, r, ok = data.sensor[order], data.tx[order], data.ts[order], resid[order], strong[order]
    same = (sen[1:] == sen[:-1]) & (tx[1:] == tx[:-1]) & (np.diff(ts) <= max_gap_s) & (np.diff(ts) > 0)
    same &= ok[1:] & ok[:-1]
    if same.sum() < 20:
        return None
    d = np.diff(r)[same]
    return float(1.4826 * np.median(np.abs(d)) / np.sqrt(2.0))


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
        loss = "" if res.packet_loss is None else f", packet loss {res.packet_loss[i]:.2f}"
        out.append(
            f"rssi_at_1m = {res.p0[i]:.1f}  # {int(res.count[i])} obs, rms residual {res.resid_sd[i]:.1f} dB{loss}"
        )
        out.append(f"path_loss_exponent = {res.n[i]:.2f}")
        out.append("")
    return "\n".join(out)
