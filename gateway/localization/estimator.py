"""Batched maximum-likelihood / MAP position estimation in the dB domain.

Per device ``d`` the unknowns are ``theta = (x, y, tx_offset)``. Each sensor ``s`` contributes

* the adverts it **heard**: their mean RSSI (variance ``sigma^2 / k`` for ``k`` adverts) scored with a
  Student-t loss (``nu`` degrees of freedom per advert, ``nu * k`` for a mean of ``k``; ``nu = 0``
  means Gaussian) so a -12 dB body-shadow fade pulls far less than under least squares;
* the adverts it **missed** although it was up (censoring): each costs ``-log(eps + (1 - eps) *
  Phi((floor - mu) / sigma))`` - a strong expected signal that was not heard is evidence the device is
  *not* near that sensor. Without this term fixes are biased toward the sensors that hear the device.
  ``eps`` is the chance a sensor misses an advert for reasons other than weak signal (scan duty
  cycle, collisions), so one missing packet from a close sensor is not taken as proof of distance.

The unknown transmit power is handled jointly: in the grid search it is profiled out in closed form
for every candidate position (weighted mean residual, shrunk toward its prior), in the refinement it is
the third coordinate of a damped Gauss-Newton (Levenberg-Marquardt) on the exact gradient, with IRLS
weights for the t loss and the exact (clipped) curvature of the censored terms. Everything is done for
all devices at once: the per-device Python work is zero.

An optional Gaussian prior (mean, precision) on theta turns the ML into the MAP step of the tracker;
:class:`Solution` returns the likelihood's information-form linearisation (``h_lik``, ``b_lik``) so the
tracker can fuse it into its full state (position, velocity, offset) under each motion model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.localization._gridsearch import grid_cost
from gateway.localization.pathloss import (
    F64,
    MIN_DISTANCE_M,
    TEN_OVER_LN10,
    PathLossModel,
    erfc,
    log_norm_cdf,
    norm_cdf,
)
from gateway.localization.region import Walkable

_SQRT2 = float(np.sqrt(2.0))
_SQRT_2PI = float(np.sqrt(2.0 * np.pi))

I64 = NDArray[np.int64]


@dataclass(frozen=True)
class EstimatorParams:
    sigma_db: float = 6.0
    floor_dbm: float = -95.0
    nu: float = 4.0
    packet_loss: float = 0.05
    bounds: tuple[float, float, float, float] = (-2.0, 32.0, -5.0, 22.0)  # xmin, xmax, ymin, ymax
    max_iter: int = 8
    max_step_m: float = 4.0
    grid_step_m: float = 1.0


@dataclass
class Problem:
    """Per-device, per-sensor sufficient statistics of a window: all arrays ``(D, S)``."""

    mean: F64
    count: F64
    missed: F64

    @property
    def num_devices(self) -> int:
        return int(self.mean.shape[0])

    def take(self, rows: I64) -> Problem:
        return Problem(self.mean[rows], self.count[rows], self.missed[rows])

    @staticmethod
    def concat(parts: Sequence[Problem]) -> Problem:
        return Problem(
            np.concatenate([q.mean for q in parts]),
            np.concatenate([q.count for q in parts]),
            np.concatenate([q.missed for q in parts]),
        )


@dataclass
class RefineBatch:
    """One group of devices for :meth:`Estimator.refine_batches` (the arguments of :meth:`Estimator.refine`)."""

    prob: Problem
    theta0: F64
    prior_mean: F64
    prior_prec: F64
    iterations: int
    nu: F64 | None = None  # (D,) Student-t degrees of freedom; None: the estimator's ``nu``


@dataclass
class _Prepared:
    """Theta-independent parts of a problem's loss (see :meth:`Estimator._prepare`)."""

    mean: F64  # (D, S)
    cs2: F64  # (D, S) count / sigma^2 (0 where nothing was heard)
    # Student-t tail per cell: degrees of freedom nu, (nu + 1) / 2, cs2 * (nu + 1); None: Gaussian
    tdist: tuple[F64, F64, F64] | None
    missed_all: F64  # (D, S) missed-advert counts
    miss_flat: I64  # flat indices of the cells with missed adverts
    missed: F64  # their counts

    def take(self, keep: NDArray[np.bool_]) -> _Prepared:
        missed_all = self.missed_all[keep]
        flat = np.flatnonzero(missed_all)
        tdist = None if self.tdist is None else (self.tdist[0][keep], self.tdist[1][keep], self.tdist[2][keep])
        return _Prepared(self.mean[keep], self.cs2[keep], tdist, missed_all, flat, missed_all.reshape(-1)[flat])


@dataclass
class Solution:
    theta: F64  # (D, 3) x, y, tx offset
    h_post: F64  # (D, 3, 3) curvature of the negative log-posterior (information)
    h_lik: F64  # (D, 3, 3) its likelihood part
    b_lik: F64  # (D, 3) likelihood ~ exp(-0.5 theta' h_lik theta + b_lik' theta) near theta
    cost: F64  # (D,) negative log-likelihood at theta (without prior)

    def cov(self) -> F64:
        return np.asarray(np.linalg.inv(self.h_post))


def aggregate(
    dev: I64, sensor: I64, rssi: F64, num_devices: int, num_sensors: int, censor: NDArray[np.bool_]
) -> Problem:
    """Window of observations -> per (device, sensor) mean, count, and censored (missed) adverts.

    The number of adverts a device sent is estimated as the most any sensor heard; every active
    (``censor``) sensor that heard fewer missed the difference.
    """
    flat = dev * num_sensors + sensor
    size = num_devices * num_sensors
    cnt = np.bincount(flat, minlength=size).astype(np.float64).reshape(num_devices, num_sensors)
    tot = np.bincount(flat, weights=rssi, minlength=size).reshape(num_devices, num_sensors)
    mean = np.divide(tot, cnt, out=np.zeros_like(tot), where=cnt > 0)
    adverts = cnt.max(axis=1, keepdims=True)
    missed = (adverts - cnt) * censor[None, :]
    return Problem(mean, cnt, missed)


def make_grid(bounds: tuple[float, float, float, float], step: float) -> F64:
    xmin, xmax, ymin, ymax = bounds
    xs = np.arange(xmin, xmax + 1e-9, step)
    ys = np.arange(ymin, ymax + 1e-9, step)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


class Estimator:
    """Holds the model, parameters and the precomputed grid; all methods are batched over devices."""

    def __init__(self, model: PathLossModel, params: EstimatorParams, region: Walkable | None = None) -> None:
        self.model = model
        self.params = params
        self.region = region
        self.grid = self.make_grid(params.grid_step_m)
        self._grid_mu_t = np.ascontiguousarray(model.mean_rssi(self.grid).T)  # (S, G)
        self._grids: dict[int, tuple[F64, F64]] = {}
        # per-sensor constants of mu = p0 + cn * log(d^2) + offset and d mu / d(x, y) = kn / d^2 * (dx, dy)
        self._zc = model.z * model.z + MIN_DISTANCE_M**2
        self._cn = -0.5 * TEN_OVER_LN10 * model.n
        self._kn = -TEN_OVER_LN10 * model.n
        self._p0 = model.p0
        self._sx, self._sy = np.ascontiguousarray(model.xy[:, 0]), np.ascontiguousarray(model.xy[:, 1])
        # per-sensor detection floor and packet loss (learnt by the localizer); None: the params' values
        self.floor_s: F64 | None = None
        self.eps_s: F64 | None = None

    def _floor_eps(self, sens: I64 | None) -> tuple[F64 | float, F64 | float]:
        """Floor and packet loss for the censored cells of sensors ``sens`` (scalars when not learnt)."""
        floor: F64 | float = self.params.floor_dbm
        eps: F64 | float = self.params.packet_loss
        if sens is not None:
            if self.floor_s is not None:
                floor = self.floor_s[sens]
            if self.eps_s is not None:
                eps = self.eps_s[sens]
        return floor, eps

    def make_grid(self, step: float) -> F64:
        g = make_grid(self.params.bounds, step)
        return g if self.region is None else g[self.region.contains(g)]

    # -- per-term losses ------------------------------------------------------------------

    def _heard(self, e: F64, count: F64, nu_dev: F64 | None = None) -> tuple[F64, F64, F64]:
        """Loss, d loss / d mu and GN curvature for heard residuals ``e = mean - mu`` (weighted by count).

        ``nu_dev``: per-device degrees of freedom ``(D, 1)`` instead of ``p.nu`` (all > 0).
        """
        s2 = self.params.sigma_db**2
        u2 = count * e * e / s2
        if nu_dev is not None or self.params.nu > 0:
            # the mean of k heavy-tailed adverts is close to Gaussian: nu grows with k, so one faded
            # advert is down-weighted but a well-averaged sensor is not treated as an outlier
            nu = (self.params.nu if nu_dev is None else nu_dev) * np.maximum(count, 1.0)
            rho = 0.5 * (nu + 1.0) * np.log1p(u2 / nu)
            w = (nu + 1.0) / (nu + u2)
        else:
            rho = 0.5 * u2
            w = np.ones_like(u2)
        wk = w * count / s2
        return rho, -wk * e, wk

    def _heard_cost(self, e: F64, count: F64, out: F64 | None = None) -> F64:
        """Loss of the heard terms (grid search: ``e`` is (pairs, G), computed in place - into ``out``
        when given - same values)."""
        u2 = np.multiply(count, e, out=out)
        u2 *= e
        u2 /= self.params.sigma_db**2
        if self.params.nu > 0:
            nu = self.params.nu * np.maximum(count, 1.0)
            u2 /= nu
            np.log1p(u2, out=u2)
            u2 *= 0.5 * (nu + 1.0)
            return u2
        u2 *= 0.5
        return u2

    def _missed_loss(self, mu: F64, missed: F64, sens: I64 | None = None, exact: bool | None = None) -> F64:
        """The loss of :meth:`_missed` alone (the grid search needs no derivatives); ``exact``: the
        erfc path (:func:`~gateway.localization.pathloss.erfc`; None: by the array's size)."""
        sig = self.params.sigma_db
        floor, eps = self._floor_eps(sens)
        alpha = (floor - mu) / sig
        if self.params.packet_loss > 0:
            # eps + (1 - eps) Phi(alpha), in place (the grid search's arrays are large)
            like = norm_cdf(alpha, exact)
            like *= 1.0 - eps
            like += eps
            loss = np.log(like, out=like)
            np.negative(loss, out=loss)
        else:
            loss = -log_norm_cdf(alpha, exact)
        loss *= missed
        return loss

    def _missed(self, mu: F64, missed: F64, sens: I64 | None = None) -> tuple[F64, F64, F64]:
        """Loss, first and (clipped) second derivative wrt mu of the censored terms.

        With ``x = (mu - floor) / (sigma sqrt 2)``: ``Phi(alpha) = erfc(x) / 2`` and ``phi(alpha) =
        exp(-x^2) / sqrt(2 pi)`` for ``alpha = (floor - mu) / sigma``, so one ``erfc`` and one ``exp``,
        in place (this runs in every likelihood evaluation of a refinement). ``sens``: the sensor of
        each cell, for the learnt per-sensor floor and packet loss.
        """
        sig = self.params.sigma_db
        floor, eps = self._floor_eps(sens)
        if self.params.packet_loss <= 0:
            alpha = (floor - mu) / sig
            loss = -log_norm_cdf(alpha)
            from gateway.localization.pathloss import mills_ratio

            d1 = mills_ratio(alpha) / sig
            d2 = np.maximum(d1 * (alpha + sig * d1) / sig, 0.0)
            return missed * loss, missed * d1, missed * d2
        x = mu - floor
        x *= 1.0 / (sig * _SQRT2)
        like = erfc(x)
        like *= 0.5 * (1.0 - eps)
        like += eps
        loss = np.log(like)
        loss *= -missed
        d1 = x * x
        np.negative(d1, out=d1)
        np.exp(d1, out=d1)
        d1 *= (1.0 - eps) / (sig * _SQRT_2PI)
        d1 /= like
        # d2 = d1 (alpha / sigma + d1), clipped at 0; alpha / sigma = -x sqrt 2 / sigma
        d2 = x * (-_SQRT2 / sig)
        d2 += d1
        d2 *= d1
        np.maximum(d2, 0.0, out=d2)
        d1 *= missed
        d2 *= missed
        return loss, d1, d2

    def evaluate(self, prob: Problem, theta: F64, nu_dev: F64 | None = None) -> tuple[F64, F64, F64, F64, F64]:
        """Negative log-likelihood (D,), d/dmu (D,S), curvature (D,S), dmu/dx (D,S), dmu/dy (D,S).

        The plain form of the likelihood: the solver uses the fused :meth:`_post_terms` and :meth:`nll`,
        and tests pin both to this one (tests/unit/localization/test_batched_tick.py).
        """
        mu0, gx, gy = self.model.mean_and_gradient(theta[:, :2])
        mu = mu0 + theta[:, 2:3]
        heard = prob.count > 0
        rho, a, b = self._heard(prob.mean - mu, prob.count, nu_dev)
        rho = np.where(heard, rho, 0.0)
        a = np.where(heard, a, 0.0)
        b = np.where(heard, b, 0.0)
        # censored terms only where adverts were missed (a minority of the cells while tracking)
        miss = np.nonzero(prob.missed)
        if miss[0].size:
            lc, ac, bc = self._missed(mu[miss], prob.missed[miss], miss[1])
            rho[miss] += lc
            a[miss] += ac
            b[miss] += bc
        return rho.sum(axis=1), a, b, gx, gy

    @staticmethod
    def _normal_eq(a: F64, b: F64, gx: F64, gy: F64) -> tuple[F64, F64]:
        g = np.stack([(a * gx).sum(1), (a * gy).sum(1), a.sum(1)], axis=1)
        bx, by = b * gx, b * gy
        hxx, hxy, hyy = (bx * gx).sum(1), (bx * gy).sum(1), (by * gy).sum(1)
        hxd, hyd, hdd = bx.sum(1), by.sum(1), b.sum(1)
        h = np.stack([np.stack([hxx, hxy, hxd], 1), np.stack([hxy, hyy, hyd], 1), np.stack([hxd, hyd, hdd], 1)], axis=1)
        return g, h

    # -- grid search with the offset profiled out --------------------------------------------

    def grid_tables(self, grid: F64 | None = None) -> tuple[F64, F64]:
        """``(grid, expected RSSI (S, G))``: the estimator's own grid, or a caller's (the track
        check's, searched every tick: its expected RSSI is kept for the next call)."""
        if grid is None:
            return self.grid, self._grid_mu_t
        cached = self._grids.get(id(grid))
        if cached is None or cached[0] is not grid:
            if len(self._grids) > 8:
                self._grids.clear()
            cached = (grid, np.ascontiguousarray(self.model.mean_rssi(grid).T))
            self._grids[id(grid)] = cached
        return cached

    def grid_search(
        self, prob: Problem, delta_mean: F64, delta_prec: F64, chunk_elems: int = 1_000_000, grid: F64 | None = None
    ) -> tuple[F64, F64]:
        """Best grid point per device with the tx offset profiled out: ``theta (D, 3)``, ``cost (D,)``.

        For each candidate position the offset is the precision-weighted mean residual of the heard
        sensors, shrunk toward ``delta_mean`` (closed form, two matrix products); the robust + censored
        cost is then evaluated there (:func:`gateway.localization._gridsearch.grid_cost`).
        ``cost`` is the negative log-likelihood without the prior.
        """
        grid, grid_mu_t = self.grid_tables(grid)
        d_all = prob.num_devices
        s = self.model.num_sensors
        g = grid.shape[0]
        theta = np.empty((d_all, 3))
        best_cost = np.empty(d_all)
        # the chunks set which erfc path the censored terms take (see _gridsearch): keep them as they were
        step = max(1, chunk_elems // (g * s))
        s2 = self.params.sigma_db**2
        for lo in range(0, d_all, step):
            sl = slice(lo, min(d_all, lo + step))
            cnt, mean, missed = prob.count[sl], prob.mean[sl], prob.missed[sl]
            w = cnt / s2  # (d, S)
            num = (w * mean).sum(1)[:, None] - w @ grid_mu_t + (delta_prec[sl] * delta_mean[sl])[:, None]
            den = w.sum(1)[:, None] + delta_prec[sl][:, None]
            delta = num / np.maximum(den, 1e-12)  # (d, G)
            prior = 0.5 * delta_prec[sl][:, None] * (delta - delta_mean[sl][:, None]) ** 2
            cost = grid_cost(grid_mu_t, mean, cnt, missed, delta, self._heard_cost, self._missed_loss)
            k = np.argmin(cost + prior, axis=1)
            rows = np.arange(cost.shape[0])
            theta[sl, :2] = grid[k]
            theta[sl, 2] = delta[rows, k]
            best_cost[sl] = cost[rows, k]
        return theta, best_cost

    # -- damped Gauss-Newton refinement -----------------------------------------------------

    def _prepare(self, prob: Problem, nu_dev: F64 | None) -> _Prepared:
        """Everything in the loss that does not depend on theta, computed once per :meth:`refine` call.

        The batches are small (tens of devices x ~12 sensors), so the cost of a likelihood evaluation is
        the number of numpy calls, not the arithmetic: this hoists the per-cell constants out of the
        iterations. A cell that heard nothing has ``count = 0`` and so zero loss, gradient and weight.
        """
        cs2 = prob.count / self.params.sigma_db**2
        tdist = None
        if nu_dev is not None or self.params.nu > 0:
            nu = (self.params.nu if nu_dev is None else nu_dev) * np.maximum(prob.count, 1.0)
            tdist = (nu, 0.5 * (nu + 1.0), cs2 * (nu + 1.0))
        flat = np.flatnonzero(prob.missed)
        return _Prepared(prob.mean, cs2, tdist, prob.missed, flat, prob.missed.reshape(-1)[flat])

    def local_mean(self, prob: Problem, theta: F64, tx_prec: float, points: F64) -> F64:
        """Posterior mean position ``(D, 2)`` of each device over its own ``points`` ``(D, M, 2)``.

        ``theta`` ``(D, 3)``: the MAP (offset included); ``points``: positions around it (a stencil
        spread by the MAP's covariance). At every point the transmit offset is profiled out in closed
        form (the heard sensors' precision-weighted residual, shrunk toward 0 by ``tx_prec``) and the
        full cost (robust + censored, :meth:`nll`) plus the offset prior weighs it; points outside the
        walkable area weigh nothing. Near a wall or along the ridge where position and offset trade
        off, the posterior is lopsided and its mean, not its mode, is what minimises the squared error
        (docs/localization.md 9.10).
        """
        k, m = points.shape[0], points.shape[1]
        pos = points.reshape(-1, 2)
        mu = self.model.mean_rssi(pos).reshape(k, m, -1)
        w = prob.count / self.params.sigma_db**2  # (k, S)
        delta = (w[:, None, :] * (prob.mean[:, None, :] - mu)).sum(axis=2) / (w.sum(axis=1)[:, None] + tx_prec)
        rep = Problem(np.repeat(prob.mean, m, 0), np.repeat(prob.count, m, 0), np.repeat(prob.missed, m, 0))
        # one erfc path whatever the number of devices: a device's mean must not depend on which others
        # share its tick or its part of it (tick_chunk_devices)
        cost = self.nll(rep, np.column_stack([pos, delta.reshape(-1)]), exact=False).reshape(k, m)
        cost += 0.5 * tx_prec * delta**2
        if self.region is not None:
            cost[~self.region.contains(pos).reshape(k, m)] = np.inf
        best = cost.min(axis=1, keepdims=True)
        # a device with no point inside the walkable area keeps its MAP
        ok = np.isfinite(best[:, 0])
        p = np.exp(-(cost - np.where(np.isfinite(best), best, 0.0)))
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        out = np.einsum("km,kmi->ki", p, points)
        out[~ok] = theta[~ok, :2]
        return np.asarray(out)

    def nll(self, prob: Problem, theta: F64, exact: bool | None = None) -> F64:
        """Negative log-likelihood ``(D,)`` alone (``evaluate(...)[0]`` without the derivatives);
        ``exact``: the censored terms' erfc path (None: by their number, see :func:`erfc`)."""
        m = self.model
        dx = theta[:, 0:1] - self._sx
        dy = theta[:, 1:2] - self._sy
        d2 = dx * dx
        d2 += dy * dy
        d2 += self._zc
        mu = np.log(d2)
        mu *= self._cn
        mu += m.p0
        mu += theta[:, 2:3]
        e = prob.mean - mu
        rho = self._heard_cost(e, prob.count)
        miss = np.flatnonzero(prob.missed)
        if miss.size:
            rho.reshape(-1)[miss] += self._missed_loss(
                mu.reshape(-1)[miss], prob.missed.reshape(-1)[miss], miss % self.model.num_sensors, exact
            )
        return np.asarray(rho.sum(axis=1))

    def _post_terms(self, q: _Prepared, th: F64) -> tuple[F64, F64, F64]:
        """Negative log-likelihood ``(D,)``, its gradient ``(D, 3)`` and GN curvature ``(D, 3, 3)`` at ``th``.

        The same quantities as :meth:`evaluate` + :meth:`_normal_eq`, with fewer numpy calls: the
        Jacobian rows (d mu / dx, d mu / dy, 1) are written into one ``(D, 3, S)`` array so the gradient
        and the curvature are two batched matrix products.
        """
        m = self.model
        n, s = th.shape[0], m.num_sensors
        dx = th[:, 0:1] - self._sx
        dy = th[:, 1:2] - self._sy
        d2 = dx * dx
        d2 += dy * dy
        d2 += self._zc
        jac = np.empty((n, 3, s))
        k = np.divide(self._kn, d2, out=jac[:, 2])  # borrow the third row, it is set to 1 below
        np.multiply(k, dx, out=jac[:, 0])
        np.multiply(k, dy, out=jac[:, 1])
        jac[:, 2] = 1.0
        mu = np.log(d2)
        mu *= self._cn
        mu += self._p0
        mu += th[:, 2:3]
        e = mu - q.mean  # minus the residual: d loss / d mu = wk * e
        u2 = q.cs2 * e
        u2 *= e
        if q.tdist is not None:
            nu, hnu1, cs2nu1 = q.tdist
            rho = u2 / nu
            np.log1p(rho, out=rho)
            rho *= hnu1
            u2 += nu
            wk = np.divide(cs2nu1, u2, out=u2)
        else:
            rho = 0.5 * u2
            wk = q.cs2.copy()
        a = wk * e
        if q.miss_flat.size:
            lc, ac, bc = self._missed(mu.reshape(-1)[q.miss_flat], q.missed, q.miss_flat % self.model.num_sensors)
            rho.reshape(-1)[q.miss_flat] += lc
            a.reshape(-1)[q.miss_flat] += ac
            wk.reshape(-1)[q.miss_flat] += bc
        g = np.matmul(jac, a[:, :, None])[:, :, 0]
        h = np.matmul(jac * wk[:, None, :], jac.transpose(0, 2, 1))
        return rho.sum(axis=1), g, h

    def refine(
        self,
        prob: Problem,
        theta0: F64,
        prior_mean: F64,
        prior_prec: F64,
        iterations: int | I64 | None = None,
        nu: F64 | None = None,
    ) -> Solution:
        """Levenberg-Marquardt on the negative log-posterior, all devices at once.

        ``iterations``: one count for all devices or one per device ``(D,)`` (default ``p.max_iter``);
        once only devices with a larger budget remain, the later iterations run on those rows alone.
        ``nu``: per-device Student-t degrees of freedom ``(D,)`` instead of ``p.nu`` (0 = Gaussian).
        """
        nu_dev = None if nu is None else np.where(nu > 0, nu, 1e9)[:, None]
        p = self.params
        xmin, xmax, ymin, ymax = p.bounds
        lo, hi = np.array([xmin, ymin]), np.array([xmax, ymax])
        n = theta0.shape[0]
        budget = np.broadcast_to(np.asarray(p.max_iter if iterations is None else iterations, dtype=np.int64), (n,))
        theta = theta0.copy()
        lam = np.full(n, 1e-3)
        eye = np.eye(3)
        q = self._prepare(prob, nu_dev)
        pm, pp = prior_mean, prior_prec

        def post(th: F64) -> tuple[F64, F64, F64, F64]:
            cost, g, h = self._post_terms(q, th)
            r = th - pm
            pr = np.matmul(pp, r[:, :, None])[:, :, 0]
            g += pr
            h += pp
            return cost + 0.5 * (r * pr).sum(1), cost, g, h

        total, cost, g, h = post(theta)
        # rows: the devices still iterating (indices into the inputs); ``out`` collects finished ones
        rows: I64 | None = None
        out: tuple[F64, F64, F64, F64] | None = None
        last = int(budget.max()) if n else 0
        for it in range(last):
            more = budget > it if rows is None else budget[rows] > it
            if not more.all():
                if out is None:
                    out = (theta.copy(), cost.copy(), g.copy(), h.copy())
                    rows = np.arange(n)
                assert rows is not None
                done = rows[~more]
                out[0][done], out[1][done], out[2][done], out[3][done] = theta[~more], cost[~more], g[~more], h[~more]
                rows = rows[more]
                theta, total, cost, g, h, lam = theta[more], total[more], cost[more], g[more], h[more], lam[more]
                pm, pp, q = pm[more], pp[more], q.take(more)
            m = theta.shape[0]
            hd = h.copy()
            diag = hd.reshape(m, 9)[:, ::4]
            diag += lam[:, None] * np.maximum(diag, 1e-6)
            step = -np.linalg.solve(hd, g[:, :, None])[:, :, 0]
            norm = np.hypot(step[:, 0], step[:, 1])
            over = norm > p.max_step_m
            if over.any():
                step[over] *= (p.max_step_m / norm[over])[:, None]
            trial = theta + step
            np.maximum(trial[:, :2], lo, out=trial[:, :2])
            np.minimum(trial[:, :2], hi, out=trial[:, :2])
            if self.region is not None:
                trial[:, :2] = self.region.project(trial[:, :2])
            t_total, t_cost, t_g, t_h = post(trial)
            ok = t_total <= total
            if ok.all():
                theta, total, cost, g, h = trial, t_total, t_cost, t_g, t_h
                lam *= 0.3
                continue
            theta[ok] = trial[ok]
            total[ok] = t_total[ok]
            cost[ok] = t_cost[ok]
            g[ok] = t_g[ok]
            h[ok] = t_h[ok]
            lam = np.where(ok, lam * 0.3, lam * 10.0)
        if out is not None and rows is not None:
            out[0][rows], out[1][rows], out[2][rows], out[3][rows] = theta, cost, g, h
            theta, cost, g, h = out
        h_lik = h - prior_prec
        # keep the information strictly positive so the tracker can invert sums of it
        h_post = h + 1e-9 * eye
        # quadratic model of the likelihood around theta (exact even if not fully converged / clipped)
        g_lik = g - np.matmul(prior_prec, (theta - prior_mean)[:, :, None])[:, :, 0]
        b_lik = np.matmul(h_lik, theta[:, :, None])[:, :, 0] - g_lik
        return Solution(theta, h_post, h_lik, b_lik, cost)

    def refine_batches(self, batches: Sequence[RefineBatch]) -> list[Solution]:
        """Several :meth:`refine` problems solved as one batch, one :class:`Solution` per batch.

        Each device's iterations are independent of the others', so the result is that of separate
        calls; at tick sizes a call costs its number of numpy operations, so one call instead of three
        is most of the saving. Devices with the larger iteration budget finish alone.
        """
        if len(batches) == 1:
            b = batches[0]
            return [self.refine(b.prob, b.theta0, b.prior_mean, b.prior_prec, b.iterations, b.nu)]
        sizes = [b.theta0.shape[0] for b in batches]
        nu = None
        if any(b.nu is not None for b in batches):
            nus = [np.full(k, self.params.nu) if b.nu is None else b.nu for b, k in zip(batches, sizes, strict=True)]
            nu = np.concatenate(nus)
        sol = self.refine(
            Problem.concat([b.prob for b in batches]),
            np.concatenate([b.theta0 for b in batches]),
            np.concatenate([b.prior_mean for b in batches]),
            np.concatenate([b.prior_prec for b in batches]),
            np.repeat([b.iterations for b in batches], sizes),
            nu,
        )
        out = []
        lo = 0
        for k in sizes:
            sl = slice(lo, lo + k)
            out.append(Solution(sol.theta[sl], sol.h_post[sl], sol.h_lik[sl], sol.b_lik[sl], sol.cost[sl]))
            lo += k
        return out

    def locate(self, prob: Problem, tx_prior_sd: float | None = None) -> Solution:
        """Stand-alone ML fix for each device: grid search, then refinement.

        ``tx_prior_sd=None`` leaves the transmit offset completely free (pure ML, the CRLB setting).
        """
        d = prob.num_devices
        prec = 0.0 if tx_prior_sd is None else 1.0 / tx_prior_sd**2
        dm = np.zeros(d)
        dp = np.full(d, prec)
        theta0, _ = self.grid_search(prob, dm, dp)
        pm = np.zeros((d, 3))
        pp = np.zeros((d, 3, 3))
        pp[:, 2, 2] = prec
        return self.refine(prob, theta0, pm, pp)
