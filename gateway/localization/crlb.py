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
