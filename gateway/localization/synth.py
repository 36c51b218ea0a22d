"""Seeded synthetic RSSI generator (same log-distance model as the estimator) for tests and benchmarks.

Noise: Gaussian shadowing ``sigma_db`` per advert and sensor, a per-device transmit offset, occasional
one-sided body-shadow fades, random packet loss, and the detection floor (weaker adverts are not heard).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.localization.pathloss import F64, PathLossModel


@dataclass(frozen=True)
class RadioParams:
    sigma_db: float = 6.0
    tx_spread_db: float = 0.0
    fade_probability: float = 0.0
    fade_db: float = 12.0
    packet_loss: float = 0.0
    floor_dbm: float = -95.0


def simulate_rssi(
    model: PathLossModel, pos: F64, tx_offset: F64, radio: RadioParams, rng: np.random.Generator
) -> tuple[F64, np.ndarray]:
    """RSSI ``(N, S)`` and heard mask for adverts sent from ``pos`` ``(N, 2)`` with offsets ``(N,)``."""
    mu = model.mean_rssi(pos, tx_offset)
    r = mu + radio.sigma_db * rng.standard_normal(mu.shape)
    if radio.fade_probability > 0:
        r -= radio.fade_db * (rng.random(mu.shape) < radio.fade_probability)
    heard = r >= radio.floor_dbm
    if radio.packet_loss > 0:
        heard &= rng.random(mu.shape) >= radio.packet_loss
    return r, heard


def random_walk_path(
    rng: np.random.Generator,
    t: F64,
    bounds: tuple[float, float, float, float],
    speed: float = 1.0,
    pause_p: float = 0.3,
) -> F64:
    """A shopper's path sampled at times ``t``: straight legs between random waypoints, with pauses."""
    xmin, xmax, ymin, ymax = bounds
    pts = np.empty((t.size, 2))
    cur = np.array([rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)])
    tt = float(t[0])
    legs: list[tuple[float, float, F64, F64]] = []  # (t0, t1, p0, p1)
    while tt <= float(t[-1]):
        if rng.random() < pause_p:
            dur = float(rng.uniform(3.0, 20.0))
            legs.append((tt, tt + dur, cur.copy(), cur.copy()))
        else:
            nxt = np.array([rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)])
            dur = float(np.hypot(*(nxt - cur)) / (speed * rng.uniform(0.7, 1.3)))
            legs.append((tt, tt + max(dur, 1e-3), cur.copy(), nxt))
            cur = nxt
        tt += legs[-1][1] - legs[-1][0]
    starts = np.array([leg[0] for leg in legs])
    k = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(legs) - 1)
    for i, ti in enumerate(t):
        t0, t1, p0, p1 = legs[k[i]]
        f = min(1.0, max(0.0, (ti - t0) / (t1 - t0)))
        pts[i] = p0 + f * (p1 - p0)
    return pts


@dataclass
class SyntheticRun:
    """Observations sorted by time (arrays) plus each device's true path sampled every second."""

    ts: F64
    sensor: np.ndarray
    device: np.ndarray
    rssi: F64
    truth_t: F64  # (T,)
    truth_xy: F64  # (D, T, 2)
    tx_offset: F64  # (D,)
    phase: F64 | None = None  # (D,) per-device offset of the truth grid (channel_run)

    def truth_at(self, device: int, t: float) -> F64:
        if self.phase is not None:
            # channel_run: the path sampled at the device's advert times, interpolated to ``t``
            tq = t - float(self.phase[device])
            path = self.truth_xy[device]
            return np.array([np.interp(tq, self.truth_t, path[:, 0]), np.interp(tq, self.truth_t, path[:, 1])])
        k = int(np.clip(np.searchsorted(self.truth_t, t, side="right") - 1, 0, self.truth_t.size - 1))
        return np.asarray(self.truth_xy[device, k])


def synthetic_run(
    model: PathLossModel,
    devices: int,
    duration_s: float,
    radio: RadioParams,
    rng: np.random.Generator,
    walking: bool = False,
    bounds: tuple[float, float, float, float] = (1.0, 29.0, 1.0, 19.0),
    advert_interval_s: float = 1.0,
    t0: float = 1_767_261_600.0,
) -> SyntheticRun:
    """Devices advertising every ``advert_interval_s`` (random phase) for ``duration_s``; static or walking."""
    steps = int(duration_s / advert_interval_s)
    tt: F64 = np.asarray(t0 + np.arange(steps, dtype=np.float64) * advert_interval_s, dtype=np.float64)
    if walking:
        xy = np.stack([random_walk_path(rng, tt, bounds) for _ in range(devices)])
    else:
        p = np.column_stack([rng.uniform(bounds[0], bounds[1], devices), rng.uniform(bounds[2], bounds[3], devices)])
        xy = np.repeat(p[:, None, :], steps, axis=1)
    tx = radio.tx_spread_db * rng.standard_normal(devices)
    phase = rng.uniform(0, advert_interval_s, devices)
    s = model.num_sensors
    pos = xy.reshape(-1, 2)
    r, heard = simulate_rssi(model, pos, np.repeat(tx, steps), radio, rng)
    ts = (tt[None, :] + phase[:, None]).reshape(-1)  # (D*T,)
    ts_all = np.repeat(ts, s).reshape(-1, s) + rng.uniform(0, 0.02, (ts.size, s))  # sensor latency
    dev = np.repeat(np.arange(devices), steps)[:, None].repeat(s, axis=1)
    sen = np.broadcast_to(np.arange(s), heard.shape)
    order = np.argsort(ts_all[heard], kind="stable")
    return SyntheticRun(
        ts=ts_all[heard][order],
        sensor=sen[heard][order],
        device=dev[heard][order],
        rssi=np.round(r[heard][order]),
        truth_t=tt,
        truth_xy=xy,
        tx_offset=tx,
    )


def write_jsonl(run: SyntheticRun, sensor_ids: list[str], path: str, prefix: str = "dev") -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(
            f'{{"ts": {t:.3f}, "sensor": "{sensor_ids[s]}", "device": "{prefix}{d}", "rssi": {r:.0f}}}\n'
            for t, s, d, r in zip(
                run.ts.tolist(), run.sensor.tolist(), run.device.tolist(), run.rssi.tolist(), strict=True
            )
        )


def channel_run(
    sample: Callable[[np.ndarray, F64, F64, F64], tuple[F64, np.ndarray]],
    devices: int,
    duration_s: float,
    rng: np.random.Generator,
    *,
    bounds: tuple[float, float, float, float],
    walking: bool = False,
    advert_interval_s: float = 1.0,
    tx_spread_db: float = 4.0,
    speed: float = 1.0,
    pause_p: float = 0.3,
    latency_s: float = 0.02,
    t0: float = 1_767_261_600.0,
) -> SyntheticRun:
    """Like :func:`synthetic_run`, with RSSI from a caller's radio (``sample(keys, t, xy, tx)`` ->
    ``(rssi (N, S), heard (N, S))``, e.g. :meth:`gateway.sim.radio.Channel.sample`).

    Each advert is sent from where the device is at its send time (``truth_at`` is sampled on the
    same per-device grid, so the truth of a fix at ``t`` is the position at the newest advert <= t).
    """
    steps = int(duration_s / advert_interval_s)
    tt: F64 = np.asarray(t0 + np.arange(steps, dtype=np.float64) * advert_interval_s, dtype=np.float64)
    phase = rng.uniform(0, advert_interval_s, devices)
    if walking:
        xy = np.stack([random_walk_path(rng, tt + phase[d], bounds, speed, pause_p) for d in range(devices)])
    else:
        p = np.column_stack([rng.uniform(bounds[0], bounds[1], devices), rng.uniform(bounds[2], bounds[3], devices)])
        xy = np.repeat(p[:, None, :], steps, axis=1)
    tx = tx_spread_db * rng.standard_normal(devices)
    ts = (tt[None, :] + phase[:, None]).reshape(-1)
    keys = np.repeat(np.arange(devices), steps)
    r, heard = sample(keys, ts, xy.reshape(-1, 2), np.repeat(tx, steps))
    s = r.shape[1]
    ts_all = np.repeat(ts, s).reshape(-1, s) + rng.uniform(0, latency_s, (ts.size, s))
    sen = np.broadcast_to(np.arange(s), heard.shape)
    dev = np.broadcast_to(keys[:, None], heard.shape)
    order = np.argsort(ts_all[heard], kind="stable")
    return SyntheticRun(
        ts=ts_all[heard][order],
        sensor=sen[heard][order],
        device=dev[heard][order],
        rssi=r[heard][order],
        truth_t=tt,
        truth_xy=xy,
        tx_offset=tx,
        phase=phase,
    )
