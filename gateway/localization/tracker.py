"""Batched interacting-multiple-model (IMM) tracker: a *standing* and a *walking* model per device.

State per model: ``[x, y, vx, vy, tx_offset]``.

* standing: position is a slow random walk (``static_sigma_m`` per sqrt(s)), velocity is zero;
* walking: nearly-constant velocity (white acceleration ``accel_sigma``) with velocity decay ``tau_v``
  so a track that stops does not overshoot for ever.

Both carry the transmit offset as a (nearly) constant: a phone's offset is learnt over the whole track,
which is most of what makes a long-standing device accurate. Model switching is a continuous-time
Markov chain (mean sojourn ``stand_s`` / ``walk_s``).

The measurement is the estimator's linearised likelihood of ``theta = (x, y, tx_offset)`` in information
form ``exp(-0.5 theta' H theta + b' theta)`` (computed once per tick at the MAP under the combined
prediction). Each model fuses it exactly like a linear-Gaussian measurement of the theta sub-space, and
the Laplace marginal likelihood re-weights the models. All of it is ``(n, 2, 5, 5)`` numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.localization.pathloss import F64

I64 = NDArray[np.int64]
THETA = np.array([0, 1, 4])


@dataclass(frozen=True)
class TrackerParams:
    static_sigma_m: float = 0.03
    accel_sigma: float = 0.5
    tau_v: float = 8.0
    stand_s: float = 20.0
    walk_s: float = 15.0
    tx_drift_db: float = 0.05
    init_speed_sd: float = 0.8
    bounds: tuple[float, float, float, float] = (-2.0, 32.0, -5.0, 22.0)
    # heading persistence: a walker's acceleration noise along its velocity is ``accel_sigma`` x
    # ``along_scale``, across it ``accel_sigma`` x ``cross_scale`` (1, 1: the same in every direction),
    # blended to the same in every direction as the speed falls below ``heading_min_speed``
    # (docs/localization.md 9.9: on the real tracks, the family and the store doors)
    along_scale: float = 1.5
    cross_scale: float = 0.5
    heading_min_speed: float = 0.2


def _inv3(a: F64) -> tuple[F64, F64]:
    """Inverse and log |determinant| of a stack of symmetric 3 x 3 matrices ``(..., 3, 3)``.

    The adjugate in closed form: a few dozen elementwise numpy operations over the whole stack,
    where ``np.linalg.inv`` + ``slogdet`` run one LAPACK factorisation per matrix each (the tick's
    tracker update inverts two of these per device and model: ~4x faster at tick sizes). Equal to
    those up to float rounding for the well-conditioned covariances and precisions of the tracker
    (``tests/unit/localization/test_tracker_batched.py``). The result is exactly symmetric.
    """
    a00, a01, a02 = a[..., 0, 0], a[..., 0, 1], a[..., 0, 2]
    a11, a12, a22 = a[..., 1, 1], a[..., 1, 2], a[..., 2, 2]
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    det = a00 * c00 + a01 * c01 + a02 * c02
    r = 1.0 / det
    out = np.empty(a.shape)
    out[..., 0, 0] = c00 * r
    out[..., 0, 1] = out[..., 1, 0] = c01 * r
    out[..., 0, 2] = out[..., 2, 0] = c02 * r
    out[..., 1, 1] = (a00 * a22 - a02 * a02) * r
    out[..., 1, 2] = out[..., 2, 1] = (a01 * a02 - a00 * a12) * r
    out[..., 2, 2] = (a00 * a11 - a01 * a01) * r
    return out, np.log(np.abs(det))


def _sym(a: F64) -> F64:
    return np.asarray(0.5 * (a + np.swapaxes(a, -1, -2)))


class ImmTracker:
    def __init__(self, params: TrackerParams, capacity: int = 64) -> None:
        self.params = params
        self.x = np.zeros((capacity, 2, 5))
        self.P = np.tile(np.eye(5), (capacity, 2, 1, 1))
        self.mu = np.full((capacity, 2), 0.5)
        self.t = np.zeros(capacity)
        # per-tick predictions kept between predict() and update()
        self._xp = np.zeros((0, 2, 5))
        self._Pp = np.zeros((0, 2, 5, 5))
        self._c = np.zeros((0, 2))

    def ensure(self, capacity: int) -> None:
        cur = self.x.shape[0]
        if capacity <= cur:
            return
        new = max(capacity, 2 * cur)
        x = np.zeros((new, 2, 5))
        p = np.tile(np.eye(5), (new, 2, 1, 1))
        mu = np.full((new, 2), 0.5)
        t = np.zeros(new)
        x[:cur], p[:cur], mu[:cur], t[:cur] = self.x, self.P, self.mu, self.t
        self.x, self.P, self.mu, self.t = x, p, mu, t

    def init(self, slots: I64, t: F64 | float, theta: F64, cov: F64) -> None:
        n = slots.size
        x = np.zeros((n, 5))
        x[:, [0, 1, 4]] = theta
        p = np.zeros((n, 5, 5))
        p[:, 2, 2] = p[:, 3, 3] = self.params.init_speed_sd**2
        p[np.ix_(np.arange(n), THETA, THETA)] = cov
        self.x[slots] = x[:, None, :]
        self.P[slots] = p[:, None, :, :]
        self.mu[slots] = 0.5
        self.t[slots] = t

    def _models(self, dt: F64, vel: F64 | None = None) -> tuple[F64, F64]:
        """Transition matrices and process noise ``(n, 2, 5, 5)`` for elapsed times ``dt`` ``(n,)``;
        ``vel`` ``(n, 2)``: the walking model's velocity, whose direction the heading persistence uses."""
        n = dt.size
        p = self.params
        f = np.zeros((n, 2, 5, 5))
        q = np.zeros((n, 2, 5, 5))
        # standing
        f[:, 0, 0, 0] = f[:, 0, 1, 1] = f[:, 0, 4, 4] = 1.0
        q[:, 0, 0, 0] = q[:, 0, 1, 1] = p.static_sigma_m**2 * dt
        q[:, 0, 2, 2] = q[:, 0, 3, 3] = 1e-4
        # walking
        decay = np.exp(-dt / p.tau_v)
        f[:, 1, 0, 0] = f[:, 1, 1, 1] = f[:, 1, 4, 4] = 1.0
        f[:, 1, 0, 2] = f[:, 1, 1, 3] = dt
        f[:, 1, 2, 2] = f[:, 1, 3, 3] = decay
        qa = p.accel_sigma**2
        for i, v in ((0, 2), (1, 3)):
            q[:, 1, i, i] = qa * dt**3 / 3.0
            q[:, 1, i, v] = q[:, 1, v, i] = qa * dt**2 / 2.0
            q[:, 1, v, v] = qa * dt
        if vel is not None and (p.along_scale != 1.0 or p.cross_scale != 1.0):
            q[:, 1, :4, :4] = self._walk_noise(dt, vel)
        q[:, :, 4, 4] = p.tx_drift_db**2 * dt[:, None]
        return f, q

    def _walk_noise(self, dt: F64, v: F64) -> F64:
        """The walking model's position / velocity noise ``(n, 4, 4)`` with the acceleration's
        covariance ``A = a_along² u u' + a_cross² (I - u u')`` (``u`` the heading), blended to the
        isotropic ``accel_sigma²`` I by speed / ``heading_min_speed`` (a slow or new track's heading
        is noise)."""
        p = self.params
        speed = np.hypot(v[:, 0], v[:, 1])
        u = v / np.maximum(speed, 1e-9)[:, None]
        uu = u[:, :, None] * u[:, None, :]
        qa = p.accel_sigma**2
        eye = np.eye(2)
        a = qa * (p.along_scale**2 * uu + p.cross_scale**2 * (eye - uu))
        w = np.clip(speed / p.heading_min_speed, 0.0, 1.0)[:, None, None]
        a = w * a + (1.0 - w) * qa * eye
        out = np.empty((dt.size, 4, 4))
        out[:, :2, :2] = a * (dt**3 / 3.0)[:, None, None]
        out[:, :2, 2:] = out[:, 2:, :2] = a * (dt**2 / 2.0)[:, None, None]
        out[:, 2:, 2:] = a * dt[:, None, None]
        return out

    def predict(self, slots: I64, t: F64 | float) -> tuple[F64, F64]:
        """IMM mixing + prediction to time ``t`` (per device or one for all); returns the combined prior
        on theta (mean, precision).

        ``t`` is the time the next measurement describes - for a window of adverts, their mean time, not
        the tick: fusing a window as if taken at its end lags a walker by speed x window / 2.
        """
        p = self.params
        dt = np.maximum(t - self.t[slots], 1e-3)
        mu = self.mu[slots]
        x = self.x[slots]
        P = self.P[slots]
        p01 = 1.0 - np.exp(-dt / p.stand_s)
        p10 = 1.0 - np.exp(-dt / p.walk_s)
        pi = np.empty((dt.size, 2, 2))
        pi[:, 0, 0], pi[:, 0, 1] = 1.0 - p01, p01
        pi[:, 1, 0], pi[:, 1, 1] = p10, 1.0 - p10
        c = np.einsum("nij,ni->nj", pi, mu)
        w = pi * mu[:, :, None] / np.maximum(c[:, None, :], 1e-300)  # w[n, i, j] = P(i | j)
        x0 = np.einsum("nij,nik->njk", w, x)
        dx = x[:, :, None, :] - x0[:, None, :, :]  # (n, i, j, 5)
        P0 = np.einsum("nij,nikl->njkl", w, P) + np.einsum("nij,nijk,nijl->njkl", w, dx, dx)
        f, q = self._models(dt, x[:, 1, 2:4])
        xp = np.einsum("njkl,njl->njk", f, x0)
        # matmul chains, not 3-operand einsums: ~4x faster at tick sizes
        Pp = _sym(f @ P0 @ f.swapaxes(-1, -2) + q)
        self._xp, self._Pp, self._c = xp, Pp, c
        th = xp[:, :, THETA]
        m = np.einsum("nj,njk->nk", c, th)
        d = th - m[:, None, :]
        cov = np.einsum("nj,njkl->nkl", c, Pp[:, :, THETA][:, :, :, THETA]) + (d * c[:, :, None]).swapaxes(1, 2) @ d
        return m, _inv3(cov)[0]

    def update(self, slots: I64, t: F64 | float, h_lik: F64, b_lik: F64) -> None:
        """Fuse the linearised likelihood into each model, re-weight the models, store the result."""
        xp, Pp, c = self._xp, self._Pp, self._c
        S = Pp[:, :, THETA][:, :, :, THETA]  # (n, 2, 3, 3)
        m = xp[:, :, THETA]
        lam, logdet_s = _inv3(S)
        lam_m = np.einsum("njkl,njl->njk", lam, m)
        eta = lam_m + b_lik[:, None, :]
        lam_post = lam + h_lik[:, None, :, :]
        S_post, logdet_lp = _inv3(lam_post)
        m_post = np.einsum("njkl,njl->njk", S_post, eta)
        ll = (
            -0.5 * np.einsum("njk,njk->nj", m, lam_m)
            + 0.5 * np.einsum("njk,njk->nj", eta, m_post)
            - 0.5 * logdet_s
            - 0.5 * logdet_lp
        )
        K = Pp[:, :, :, THETA] @ lam  # (n, 2, 5, 3); matmul, ~5x faster than the einsum at tick sizes
        x = xp + np.einsum("njkl,njl->njk", K, m_post - m)
        P = Pp - K @ (S - S_post) @ K.swapaxes(-1, -2)
        P = _sym(P)
        xmin, xmax, ymin, ymax = self.params.bounds
        np.clip(x[:, :, 0], xmin, xmax, out=x[:, :, 0])
        np.clip(x[:, :, 1], ymin, ymax, out=x[:, :, 1])
        ll = ll - ll.max(axis=1, keepdims=True)
        w = c * np.exp(np.maximum(ll, -50.0))
        mu = np.clip(w / w.sum(axis=1, keepdims=True), 1e-4, 1.0)
        mu /= mu.sum(axis=1, keepdims=True)
        self.x[slots], self.P[slots], self.mu[slots], self.t[slots] = x, P, mu, t

    def estimate(self, slots: I64, at: float | None = None) -> tuple[F64, F64, F64]:
        """Combined state ``(n, 5)``, covariance ``(n, 5, 5)`` and walking probability ``(n,)``.

        ``at``: extrapolate each model from its last measurement time to ``at`` first (a fix at the tick
        from adverts heard on average half a window earlier; without this a walker's fix lags).
        """
        mu = self.mu[slots]
        x = self.x[slots]
        P = self.P[slots]
        if at is not None:
            dt = np.maximum(at - self.t[slots], 0.0)
            f, q = self._models(dt)
            x = np.einsum("njkl,njl->njk", f, x)
            P = _sym(f @ P @ f.swapaxes(-1, -2) + q)
        m = np.einsum("nj,njk->nk", mu, x)
        d = x - m[:, None, :]
        # the spread of the model means as one batched matmul (the 3-operand einsum is ~4x slower)
        P = np.einsum("nj,njkl->nkl", mu, P) + (d * mu[:, :, None]).swapaxes(1, 2) @ d
        return m, P, mu[:, 1]
