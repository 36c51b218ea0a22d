"""Cramér-Rao bound on position RMSE for a sensor layout and noise level.

Per advert, sensor ``s`` measures ``mu_s(x, y) + tx_offset + noise`` and below the detection floor
reports nothing (a censored Gaussian, "Tobit"). Its Fisher information about ``mu_s`` is
``(1/sigma^2) * [1 - Phi(a) + a*phi(a) + phi(a)^2 / Phi(a)]`` with ``a = (floor - mu_s) / sigma``,
which tends to ``1/sigma^2`` for strong signals and to 0 far below the floor. Stacked over sensors with
``d mu / d theta`` for ``theta = (x, y, tx_offset)`` this is the 3x3 Fisher matrix; the unknown transmit
power is a nuisance parameter, so the bound on position is the xy block of its *inverse* (the Schur
complement), not the inverse of the xy block. With ``k`` independent adverts the bound scales 1/sqrt(k).
"""

from __future__ import annotations

import numpy as np

from gateway.layout import Layout
from gateway.localization.pathloss import F64, PathLossModel, mills_ratio, norm_cdf, norm_pdf


def fisher(
    model: PathLossModel,
    pos: F64,
    sigma_db: float,
    floor_dbm: float | None = -95.0,
    active: np.ndarray | None = None,
    tx_prior_sd: float | None = None,
) -> F64:
    """Fisher information ``(N, 3, 3)`` of one advert per sensor at positions ``pos`` ``(N, 2)``."""
    mu, gx, gy = model.mean_and_gradient(pos)
    if floor_dbm is None:
        info = np.full_like(mu, 1.0 / sigma_db**2)
    else:
        a = (floor_dbm - mu) / sigma_db
        phi = norm_pdf(a)
        info = (1.0 - norm_cdf(a) + a * phi + phi * mills_ratio(a)) / sigma_db**2
    if active is not None:
        info = info * active[None, :]
    ones = np.ones_like(gx)
    grads = np.stack([gx, gy, ones], axis=2)  # (N, S, 3)
    f = np.einsum("ns,nsi,nsj->nij", info, grads, grads)
    if tx_prior_sd is not None:
        f[:, 2, 2] += 1.0 / tx_prior_sd**2
    return np.asarray(f)


def crlb_rmse(
    model: PathLossModel,
    pos: F64,
    sigma_db: float,
    adverts: float = 1.0,
    floor_dbm: float | None = -95.0,
    tx_known: bool = False,
    active: np.ndarray | None = None,
) -> F64:
    """Lower bound on the 2-D position RMSE (m) at each position, for ``adverts`` adverts per sensor."""
    f = fisher(model, pos, sigma_db, floor_dbm, active) * adverts
    if tx_known:
        cov = np.linalg.inv(f[:, :2, :2] + 1e-12 * np.eye(2))
    else:
        cov = np.linalg.inv(f + 1e-12 * np.eye(3))[:, :2, :2]
    return np.asarray(np.sqrt(np.maximum(cov[:, 0, 0] + cov[:, 1, 1], 0.0)))


def crlb_map(
    layout: Layout, sigma_db: float, step_m: float = 1.0, adverts: float = 1.0, floor_dbm: float | None = -95.0
) -> tuple[F64, F64, F64]:
    """CRLB RMSE over a grid covering the store: ``(xs, ys, rmse[len(ys), len(xs)])`` for the status page."""
    xs = np.arange(step_m / 2, layout.store.width_m, step_m)
    ys = np.arange(step_m / 2, layout.store.depth_m, step_m)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    pos = np.stack([gx.ravel(), gy.ravel()], axis=1)
    r = crlb_rmse(PathLossModel.from_layout(layout), pos, sigma_db, adverts, floor_dbm)
    return xs, ys, r.reshape(gy.shape)


def tracking_limit(
    model: PathLossModel,
    times: F64,
    paths: F64,
    *,
    white_db: float,
    shadow_db: float = 0.0,
    shadow_tau_s: float = 10.0,
    floor_dbm: F64 | float = -95.0,
    packet_loss: F64 | float = 0.0,
    tx_prior_sd: float = 4.0,
    accel_sigma: float = 0.25,
    tick_s: float = 1.0,
    warmup_s: float = 10.0,
    samples: int = 8,
    seed: int = 0,
) -> float:
    """Linearised causal limit: median 2-D error of the best causal filter for walkers on ``paths``.

    ``times`` ``(D, T)`` are each device's advert times and ``paths`` ``(D, T, 2)`` where it was then.
    The filter knows the radio model exactly and is linearised at the true positions (a posterior
    Cramér-Rao bound for filtering, Tichavský et al. 1998, with a linear motion model): state
    ``[x, y, vx, vy, tx_offset, shadow_1..shadow_S]``, a constant-velocity walker with white
    acceleration ``accel_sigma``, the transmit offset unknown (prior ``tx_prior_sd``), each sensor's
    shadowing an AR(1) with sd ``shadow_db`` and time constant ``shadow_tau_s``. Every advert brings
    each sensor's expected information: censored-Gaussian (Tobit) information at the floor times the
    chance the report is not lost. The error is read at fix ticks every ``tick_s`` (predicted from the
    last advert, as a causal fix is) after ``warmup_s``; its median is taken over ``samples`` draws
    from each tick's Gaussian.
    """
    d, t_n = times.shape
    s = model.num_sensors
    shadowed = shadow_db > 0.0
    dim = 5 + s if shadowed else 5
    floor = np.broadcast_to(np.asarray(floor_dbm, dtype=np.float64), (s,))
    keep = 1.0 - np.broadcast_to(np.asarray(packet_loss, dtype=np.float64), (s,))
    p = np.zeros((d, dim, dim))
    p[:, 0, 0] = p[:, 1, 1] = 25.0
    p[:, 2, 2] = p[:, 3, 3] = 1.0
    p[:, 4, 4] = tx_prior_sd**2
    idx = np.arange(5, dim)
    p[:, idx, idx] = shadow_db**2
    rng = np.random.default_rng(seed)
    errs: list[F64] = []
    last = times[:, 0].copy()
    next_tick = np.ceil((times[:, 0] + warmup_s) / tick_s) * tick_s

    def predict(p: F64, dt: F64) -> F64:
        f = np.tile(np.eye(dim), (dt.size, 1, 1))
        f[:, 0, 2] = f[:, 1, 3] = dt
        a = np.exp(-dt / shadow_tau_s)
        f[:, idx, idx] = a[:, None]
        q = np.zeros_like(f)
        qa = accel_sigma**2
        for i, v in ((0, 2), (1, 3)):
            q[:, i, i] = qa * dt**3 / 3.0
            q[:, i, v] = q[:, v, i] = qa * dt**2 / 2.0
            q[:, v, v] = qa * dt
        q[:, idx, idx] = ((1.0 - a * a) * shadow_db**2)[:, None]
        return np.asarray(f @ p @ f.transpose(0, 2, 1) + q)

    for k in range(t_n):
        tk = times[:, k]
        # ticks between the previous advert and this one: read the predicted error there
        while True:
            due = next_tick <= tk
            if not due.any():
                break
            rows = np.flatnonzero(due)
            pt = predict(p[rows], next_tick[rows] - last[rows])
            cov = pt[:, :2, :2]
            z = rng.standard_normal((rows.size, samples, 2))
            chol = np.linalg.cholesky(cov + 1e-12 * np.eye(2))
            errs.append(np.sqrt((np.einsum("rij,rsj->rsi", chol, z) ** 2).sum(axis=2)).ravel())
            next_tick[rows] += tick_s
        p = predict(p, np.maximum(tk - last, 0.0))
        last = tk
        mu, gx, gy = model.mean_and_gradient(paths[:, k, :])
        sig = white_db
        a = (floor[None, :] - mu) / sig
        phi = norm_pdf(a)
        info = (1.0 - norm_cdf(a) + a * phi + phi * mills_ratio(a)) / sig**2 * keep[None, :]
        h = np.zeros((d, s, dim))
        h[:, :, 0] = gx
        h[:, :, 1] = gy
        h[:, :, 4] = 1.0
        if shadowed:
            h[:, np.arange(s), idx] = 1.0
        j = np.einsum("ds,dsi,dsj->dij", info, h, h)
        p = np.linalg.inv(np.linalg.inv(p) + j)
        p = 0.5 * (p + p.transpose(0, 2, 1))
    if not errs:
        return float("nan")
    return float(np.median(np.concatenate(errs)))
