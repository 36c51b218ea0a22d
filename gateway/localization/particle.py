"""The particle-filter localizer: a Rao-Blackwellised particle filter per device over the walkable area.

Why a particle filter (docs/localization.md §3 has the measurements): on real walked tracks the noise
is not what the ML + IMM tracker assumes. Each sensor's error persists for seconds to tens of seconds
(body and furniture shadowing that moves with the walker; auto-correlation 0.3 at one advert, 0.1 at
4 s), most missing reports are packet loss rather than weak signal, and the first seconds of a track
are multi-modal. A particle cloud carries the multi-modality and the walkable-area prior exactly, and
every particle carries a small linear-Gaussian part that is integrated out in closed form:

* position and velocity ``(x, y, vx, vy)`` and a motion mode (standing / walking, a Markov chain with
  mean sojourns ``stand_s`` / ``walk_s``); walking is an Ornstein-Uhlenbeck velocity (acceleration
  noise, velocity decay), standing a slow random walk. Particles leaving the walkable area are
  projected back onto it;
* the phone's transmit offset ``delta`` (dB; prior N(0, ``tx_spread_db``^2), slow drift) and one
  shadowing term per sensor ``b_s`` (dB; AR(1) with sd ``shadow_sd_db`` and time constant
  ``shadow_tau_s``), each a scalar Kalman filter per particle. Their variances do not depend on the
  particle, so they are kept per device.

Per tick and device the adverts heard since the last tick are aggregated per sensor (mean, count,
missed adverts); a sensor heard ``k`` times contributes ``N(mu_s(x) + delta + b_s, sigma^2 / k)``
with the offset integrated out (Sherman-Morrison over the sensors), and every missed advert at a
sensor that is up contributes ``eps_s + (1 - eps_s) Phi((floor_s - mu) / sd)``: ``eps_s``, the
chance a report goes missing for reasons other than weak signal, is **learnt per sensor** from the
misses of strongly heard devices (prior ``packet_loss``), and ``floor_s`` is the weaker of the
configured floor and the weakest report the sensor has made. The fix is the weighted mean of the
particles, each moved to the tick by its velocity (the adverts describe their mean time).

Everything is batched over the devices of a tick: arrays ``(devices, particles[, sensors])``. Random
numbers come from a generator seeded by ``seed`` and the tick time, so a tick is a pure function of
the localizer's state, its inputs and ``now`` (no global state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization.buffer import ObservationBuffer
from gateway.localization.estimator import Estimator, EstimatorParams, aggregate, make_grid
from gateway.localization.localizer import WindowStats, layout_bounds
from gateway.localization.pathloss import F64, MIN_DISTANCE_M, TEN_OVER_LN10, PathLossModel, erfc
from gateway.localization.region import Walkable
from gateway.localization.zones import ZoneTracker
from gateway.models import Fix, Observation

I64 = NDArray[np.int64]
B = NDArray[np.bool_]
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class ParticleParams:
    particles: int = 256
    sigma_db: float = 5.0
    shadow_sd_db: float = 2.0
    shadow_tau_s: float = 30.0
    tx_spread_db: float = 4.0
    tx_drift_db: float = 0.05
    packet_loss: float = 0.15
    floor_dbm: float = -95.0
    accel_sigma: float = 0.15
    velocity_tau_s: float = 8.0
    max_speed: float = 2.0
    start_speed_sd: float = 0.6
    stand_s: float = 60.0
    walk_s: float = 60.0
    static_sigma_m: float = 0.03
    walk_sigma_m: float = 0.0
    jitter_h2: float = 0.04
    ess_frac: float = 0.5
    init_walk_p: float = 0.5
    grid_step_m: float = 0.5
    check_window_s: float = 20.0
    check_p_walk: float = 0.5
    check_every_ticks: int = 3
    restart_nll: float = 4.0
    restart_dist_m: float = 2.0
    loss_memory_s: float = 600.0
    loss_prior_adverts: float = 100.0
    seed: int = 0

    @classmethod
    def from_settings(cls, s: LocalizationSettings) -> ParticleParams:
        return cls(
            particles=s.particles,
            sigma_db=s.particle_sigma_db,
            shadow_sd_db=s.shadow_sd_db,
            shadow_tau_s=s.shadow_tau_s,
            tx_spread_db=s.tx_spread_db,
            packet_loss=s.packet_loss,
            floor_dbm=s.detection_floor_dbm,
            accel_sigma=s.walk_accel_sigma,
            velocity_tau_s=s.walk_velocity_tau_s,
            max_speed=s.max_speed_mps,
            stand_s=s.stand_s,
            walk_s=s.walk_s,
            static_sigma_m=s.static_sigma_m,
        )


@dataclass
class ParticleStats:
    observations: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    fixes: int = 0
    tracks_started: int = 0
    resampled: int = 0


def _norm_cdf(x: F64) -> F64:
    return np.asarray(0.5 * erfc(-x / _SQRT2))


class ParticleLocalizer:
    """Implements :class:`gateway.localization.Localizer` (``add`` / ``fixes`` / ``set_sensor_active`` / ``forget``)."""

    def __init__(self, layout: Layout, settings: LocalizationSettings, params: ParticleParams | None = None) -> None:
        self._s = settings
        self.p = params or ParticleParams.from_settings(settings)
        self.layout = layout
        self.model = PathLossModel.from_layout(layout)
        self.region = Walkable.from_layout(layout)
        self.bounds = layout_bounds(layout)
        self.zones = ZoneTracker(layout, settings.zone_margin_m, settings.zone_confirm_fixes)
        self.stats = ParticleStats()
        m = self.model
        ns = m.num_sensors
        self._ns = ns
        self._sx = m.xy[:, 0].copy()
        self._sy = m.xy[:, 1].copy()
        self._zc = m.z * m.z + MIN_DISTANCE_M**2
        self._cn = -0.5 * TEN_OVER_LN10 * m.n
        grid = make_grid(self.bounds, self.p.grid_step_m)
        self._grid = grid[self.region.contains(grid)]
        self._grid_mu = np.ascontiguousarray(m.mean_rssi(self._grid).T)  # (S, G)
        self._grid_mu2 = self._grid_mu**2
        self._active = np.ones(ns, dtype=bool)
        self._last_heard = np.full(ns, -np.inf)
        self._lowest = np.full(ns, np.inf)
        self._loss_miss = np.zeros(ns)
        self._loss_adv = np.zeros(ns)
        self._loss_t = -np.inf
        n = self.p.particles
        self._n = n
        self.buf = ObservationBuffer(layout.sensor_index(), self._grow)
        self.pos = np.zeros((0, n, 2))
        self.vel = np.zeros((0, n, 2))
        self.vvar = np.zeros((0, n))
        self.walk = np.zeros((0, n), dtype=bool)
        self.logw = np.zeros((0, n))
        self.delta = np.zeros((0, n))
        self.dvar = np.zeros(0)
        self.bias = np.zeros((0, n, ns))
        self.bvar = np.zeros((0, ns))
        self.t = np.zeros(0)
        self.live = np.zeros(0, dtype=bool)
        self.p_walk = np.zeros(0)
        self._win = WindowStats(ns)
        self._stand = WindowStats(ns)
        self._sw = np.zeros((0, 3))
        self._sw_ok = np.zeros(0, dtype=bool)
        self._ticks = 0
        self.estimator = Estimator(
            self.model,
            EstimatorParams(
                sigma_db=self.p.sigma_db,
                floor_dbm=self.p.floor_dbm,
                nu=settings.robust_nu,
                packet_loss=self.p.packet_loss,
                bounds=self.bounds,
                grid_step_m=settings.grid_step_m,
            ),
            self.region,
        )

    # -- Localizer protocol ---------------------------------------------------------------

    def add(self, observations: Sequence[Observation]) -> None:
        self.buf.add(observations)
        self.stats.observations += len(observations)

    def add_arrays(self, ts: np.ndarray, sensor: np.ndarray, devices: Sequence[str], rssi: np.ndarray) -> None:
        """Fast path (CLI, replay): sensor indices already resolved and values already validated."""
        self.buf.add_arrays(ts, sensor, devices, rssi)
        self.stats.observations += len(devices)

    def set_sensor_active(self, sensor_id: str, active: bool) -> None:
        i = self.buf.sidx.get(sensor_id)
        if i is not None:
            self._active[i] = active

    def forget(self, device: str) -> None:
        d = self.buf.slot.get(device)
        if d is None:
            return
        self.buf.discard(d)
        self._release(d)

    def fixes(self, now: float) -> list[Fix]:
        if not self.buf.ts:
            self._expire(now)
            return []
        exempt = self.live & (self.p_walk > self._s.track_nu_p_walk)
        ts, dev, sen, rssi = self.buf.pop_due(now, self._s.report_jitter_s, exempt)
        fresh = ts >= now - self._s.window_s
        if not fresh.all():
            self.stats.dropped["stale"] = self.stats.dropped.get("stale", 0) + int((~fresh).sum())
            ts, dev, sen, rssi = ts[fresh], dev[fresh], sen[fresh], rssi[fresh]
        out: list[Fix] = []
        if ts.size:
            out = self._tick(now, ts, dev, sen, rssi)
        self._expire(now)
        for k, v in self.buf.dropped.items():
            self.stats.dropped[k] = v
        return out

    # -- state ----------------------------------------------------------------------------

    def _grow(self, capacity: int) -> None:
        def grow(a: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity,) + a.shape[1:], dtype=a.dtype)
            out[: a.shape[0]] = a
            return out

        for name in ("pos", "vel", "vvar", "walk", "logw", "delta", "dvar", "bias", "bvar", "t", "live", "p_walk"):
            setattr(self, name, grow(getattr(self, name)))
        self.zones.ensure(capacity)
        self._win.ensure(capacity)
        self._stand.ensure(capacity)
        for name in ("_sw", "_sw_ok"):
            setattr(self, name, grow(getattr(self, name)))

    def _release(self, d: int) -> None:
        self.live[d] = False
        self.p_walk[d] = 0.0
        self.zones.reset(np.array([d]))
        self.buf.release(d)

    def _expire(self, now: float) -> None:
        live = np.flatnonzero(self.live)
        for d in live[self.t[live] < now - self._s.forget_after_s].tolist():
            self._release(d)

    def floors(self) -> F64:
        """Per-sensor detection floor: the configured one, or lower where a sensor reported weaker."""
        return np.asarray(np.minimum(self.p.floor_dbm, self._lowest))

    def packet_loss(self) -> F64:
        """Per-sensor chance of a miss unrelated to signal strength (learnt; prior ``packet_loss``)."""
        w0 = self.p.loss_prior_adverts
        eps = (self._loss_miss + w0 * self.p.packet_loss) / (self._loss_adv + w0)
        return np.asarray(np.clip(eps, 0.005, 0.8))

    # -- the tick -------------------------------------------------------------------------

    def _tick(self, now: float, ts: F64, dev: I64, sen: I64, rssi: F64) -> list[Fix]:
        p = self.p
        ns = self._ns
        np.maximum.at(self._last_heard, sen, ts)
        np.minimum.at(self._lowest, sen, rssi)
        censor = self._active & (self._last_heard >= now - self._s.sensor_silent_s)
        slots, inv = np.unique(dev, return_inverse=True)
        k_all = slots.size
        prob = aggregate(inv.astype(np.int64), sen, rssi, k_all, ns, censor)
        t_obs = np.bincount(inv, weights=ts, minlength=k_all) / np.bincount(inv, minlength=k_all)
        rng = np.random.default_rng([p.seed, int(round(now * 1000.0)) & 0xFFFFFFFFFFFF])
        live = self.live[slots] & (self.t[slots] >= now - self._s.reinit_after_s)
        old = np.flatnonzero(live)
        new = np.flatnonzero(~live)
        floors = self.floors()
        eps = self.packet_loss()
        if old.size:
            so = slots[old]
            self._predict(so, t_obs[old], rng)
            self._update(so, prob.mean[old], prob.count[old], prob.missed[old], floors, eps, censor)
        if new.size:
            self._init(slots[new], t_obs[new], prob.mean[new], prob.count[new], prob.missed[new], floors, eps, rng)
        if new.size:
            self._win.reset(slots[new])
            self._stand.reset(slots[new])
            self._sw_ok[slots[new]] = False
        self._win.update(slots, prob, now, p.check_window_s, t_obs)
        standing = self.p_walk[slots] < self._s.standing_p_walk
        tau = np.where(standing, self._s.standing_window_s, self._s.walking_window_s)
        self._stand.update(slots, prob, now, tau, t_obs)
        due = old[((slots[old] + self._ticks) % p.check_every_ticks == 0) & (self.p_walk[slots[old]] < p.check_p_walk)]
        if due.size:
            self._check(slots[due], censor, floors, eps, rng)
        self._ticks += 1
        self._learn_loss(now, slots, prob.count, prob.missed, censor, floors)
        # normalise, resample where the weights have degenerated
        lw = self.logw[slots]
        lw -= lw.max(axis=1, keepdims=True)
        w = np.exp(lw)
        w /= w.sum(axis=1, keepdims=True)
        self.logw[slots] = np.log(np.maximum(w, 1e-300))
        ess = 1.0 / (w * w).sum(axis=1)
        low = ess < self.p.ess_frac * self._n
        if low.any():
            self._resample(slots[low], w[low], rng)
            w[low] = 1.0 / self._n
        # the fix: each particle moved to the tick by its velocity, weighted mean and covariance
        dt = np.maximum(now - self.t[slots], 0.0)
        pos = self.pos[slots] + self.vel[slots] * dt[:, None, None]
        mean = np.einsum("kn,knc->kc", w, pos)
        d = pos - mean[:, None, :]
        cov = np.einsum("kn,kni,knj->kij", w, d, d)
        walk = self.walk[slots]
        pw = np.einsum("kn,kn->k", w, walk)
        self.p_walk[slots] = pw
        sidx = np.flatnonzero(
            (pw < self._s.standing_p_walk) & (self._stand.cnt[slots].max(axis=1) >= self._s.standing_min_adverts)
        )
        if sidx.size:
            self._standing_fix(slots, sidx, w, pos, walk, censor, eps, floors, mean, cov, pw)
        var = cov[:, 0, 0] + cov[:, 1, 1]
        xy = self.region.project(mean)
        sigma = np.sqrt(np.maximum(var, 0.0))
        zones = self.zones.update(slots, xy)
        names = self.buf.names
        xs, ys, sg = xy[:, 0].tolist(), xy[:, 1].tolist(), sigma.tolist()
        out = [Fix(now, names[d_] or "", xs[i], ys[i], sg[i], zones[i]) for i, d_ in enumerate(slots.tolist())]
        self.stats.fixes += len(out)
        return out

    def _standing_fix(
        self,
        slots: I64,
        sidx: I64,
        w: F64,
        pos: F64,
        walk: B,
        censor: B,
        eps: F64,
        floors: F64,
        mean: F64,
        cov: F64,
        pw: F64,
    ) -> None:
        """Standing devices: the ML fix over the standing window, mixed with the particles by P(walking).

        The particle cloud keeps the basin (it is global and multi-modal) and follows walkers; for a
        device that stays put, the maximum-likelihood fix over a long window uses all of its adverts at
        the current estimate, which is what reaches the Cramér-Rao bound (a cloud that must keep some
        particles ready to walk spreads wider). The window fix is refined from its last value, or from
        the standing particles' mean when it has none or the cloud has moved away from it (> 2 m)."""
        st = self._s
        est = self.estimator
        est.params = replace(est.params, packet_loss=float(np.median(eps)), floor_dbm=float(np.median(floors)))
        ss = slots[sidx]
        k = ss.size
        ws = w[sidx] * ~walk[sidx]
        tot = ws.sum(axis=1, keepdims=True)
        ws = np.where(tot > 0, ws / np.maximum(tot, 1e-300), w[sidx])
        m_stand = np.einsum("kn,knc->kc", ws, pos[sidx])
        d_stand = np.einsum("kn,kn->k", ws, self.delta[ss])
        start = self._sw[ss].copy()
        fresh = ~self._sw_ok[ss] | (np.hypot(*(start[:, :2] - m_stand).T) > 2.0)
        start[fresh, :2] = m_stand[fresh]
        start[fresh, 2] = d_stand[fresh]
        sub = self._stand.problem(ss, censor)
        pp = np.zeros((k, 3, 3))
        pp[:, 2, 2] = 1.0 / self.p.tx_spread_db**2
        it = np.where(fresh, est.params.max_iter, st.track_iterations)
        sol = est.refine(sub, start, np.zeros((k, 3)), pp, it)
        self._sw[ss] = sol.theta
        self._sw_ok[ss] = True
        wcov = np.linalg.inv(sol.h_post)[:, :2, :2]
        p = pw[sidx][:, None]
        dx = sol.theta[:, :2] - mean[sidx]
        mean[sidx] = sol.theta[:, :2] - p * dx
        p3 = p[:, :, None]
        cov[sidx] = (1.0 - p3) * wcov + p3 * cov[sidx] + p3 * (1.0 - p3) * dx[:, :, None] * dx[:, None, :]

    def _mu0(self, pos: F64) -> F64:
        """Expected RSSI without offset / shadowing, ``(k, n, S)`` for particles ``(k, n, 2)``."""
        dx = pos[:, :, 0:1] - self._sx
        dy = pos[:, :, 1:2] - self._sy
        d2 = dx * dx
        d2 += dy * dy
        d2 += self._zc
        mu = np.log(d2)
        mu *= self._cn
        mu += self.model.p0
        return mu

    def _predict(self, slots: I64, t: F64, rng: np.random.Generator) -> None:
        """Move every particle to time ``t``: mode switch, then position sampled with the velocity
        integrated out (each particle keeps a Gaussian over its velocity, same variance on both axes,
        conditioned on the position increment it was sampled with: a marginalised particle filter, so
        the cloud samples two dimensions, not four)."""
        p = self.p
        k, n = slots.size, self._n
        dt = np.maximum(t - self.t[slots], 1e-3)
        walk = self.walk[slots]
        vel = self.vel[slots]
        vv = self.vvar[slots]
        pos = self.pos[slots]
        u = rng.random((k, n))
        start = ~walk & (u < (1.0 - np.exp(-dt / p.stand_s))[:, None])
        stop = walk & (u < (1.0 - np.exp(-dt / p.walk_s))[:, None])
        vel[start] = 0.0
        vv[start] = p.start_speed_sd**2
        walk = (walk | start) & ~stop
        vel[~walk] = 0.0
        vv[~walk] = 0.0
        # Ornstein-Uhlenbeck velocity per axis, exact discretisation over dt
        tau = p.velocity_tau_s
        a = np.exp(-dt / tau)[:, None]
        dtc = dt[:, None]
        q = p.accel_sigma**2
        qvv = q * tau / 2.0 * (1.0 - a * a)
        qxv = q * tau**2 / 2.0 * (1.0 - a) ** 2
        qxx = q * tau**2 * (dtc - 2.0 * tau * (1.0 - a) + tau / 2.0 * (1.0 - a * a)) + p.walk_sigma_m**2 * dtc
        g = tau * (1.0 - a)  # x' = x + g v + noise
        sxx = g * g * vv + qxx
        sxv = g * a * vv + qxv
        svv = a * a * vv + qvv
        mean_step = g[:, :, None] * vel
        sd_x = np.sqrt(np.maximum(sxx, 0.0))
        z = rng.standard_normal((k, n, 2))
        step = mean_step + sd_x[:, :, None] * z
        gain = np.where(sxx > 1e-12, sxv / np.maximum(sxx, 1e-12), 0.0)
        v_new = a[:, :, None] * vel + gain[:, :, None] * (step - mean_step)
        vv_new = np.maximum(svv - gain * sxv, 0.0)
        still = ~walk
        jitter = p.static_sigma_m * np.sqrt(dt)[:, None, None] * z
        step[still] = jitter[still]
        v_new[still] = 0.0
        vv_new[still] = 0.0
        speed = np.sqrt((v_new * v_new).sum(axis=2))
        fast = speed > p.max_speed
        if fast.any():
            v_new[fast] *= (p.max_speed / speed[fast])[:, None]
        pos += step
        flat = pos.reshape(-1, 2)
        inside = self.region.contains(flat)
        if not inside.all():
            out = ~inside
            flat[out] = self.region.project(flat[out])
            v_new.reshape(-1, 2)[out] = 0.0
        self.vvar[slots] = vv_new
        self.pos[slots] = pos
        self.vel[slots] = v_new
        self.walk[slots] = walk
        self.t[slots] = t
        # shadowing decays toward 0 (AR(1)), the offset drifts
        ab = np.exp(-dt / p.shadow_tau_s)
        self.bias[slots] *= ab[:, None, None]
        self.bvar[slots] = (ab * ab)[:, None] * self.bvar[slots] + ((1.0 - ab * ab) * p.shadow_sd_db**2)[:, None]
        self.dvar[slots] += p.tx_drift_db**2 * dt

    def _update(self, slots: I64, mean: F64, count: F64, missed: F64, floors: F64, eps: F64, censor: B) -> None:
        p = self.p
        s2 = p.sigma_db**2
        heard = count > 0
        bvar = self.bvar[slots]
        dvar = self.dvar[slots]
        noise = s2 / np.maximum(count, 1.0)
        iv = np.where(heard, 1.0 / (noise + bvar), 0.0)  # (k, S)
        mu0 = self._mu0(self.pos[slots])
        delta = self.delta[slots]
        bias = self.bias[slots]
        pred = mu0 + delta[:, :, None] + bias
        e = mean[:, None, :] - pred
        e *= heard[:, None, :]
        ive = e * iv[:, None, :]
        se = ive.sum(axis=2)
        see = (ive * e).sum(axis=2)
        siv = iv.sum(axis=1)
        g = dvar / (1.0 + dvar * siv)  # (k,)
        ll = -0.5 * (see - g[:, None] * se * se)
        dd = g[:, None] * se  # offset update per particle
        self.delta[slots] = delta + dd
        self.dvar[slots] = g
        # shadowing: scalar Kalman update per (particle, sensor) with what the offset left unexplained
        kb = np.where(heard, bvar / (bvar + noise), 0.0)
        e -= dd[:, :, None] * heard[:, None, :]
        bias += kb[:, None, :] * e
        self.bias[slots] = bias
        self.bvar[slots] = (1.0 - kb) * bvar
        md, ms = np.nonzero(missed)
        if md.size:
            sd = np.sqrt(s2 + bvar[md, ms] + dvar[md])
            z = (floors[ms][:, None] - pred[md, :, ms]) / sd[:, None]
            like = eps[ms][:, None] + (1.0 - eps[ms])[:, None] * _norm_cdf(z)
            np.add.at(ll, md, missed[md, ms][:, None] * np.log(like))
        self.logw[slots] += ll

    def _init(
        self,
        slots: I64,
        t: F64,
        mean: F64,
        count: F64,
        missed: F64,
        floors: F64,
        eps: F64,
        rng: np.random.Generator,
    ) -> None:
        """New tracks: the posterior of this tick's data on the walkable grid (offset integrated out),
        sampled into particles."""
        p = self.p
        k, n = slots.size, self._n
        ll, dg, gg = self._grid_ll(mean, count, missed, floors, eps)
        ll -= ll.max(axis=1, keepdims=True)
        w = np.exp(ll)
        w /= w.sum(axis=1, keepdims=True)
        self._seed(slots, w, dg, gg, t, rng)
        self.zones.reset(slots)
        self.stats.tracks_started += k

    def _grid_ll(self, mean: F64, count: F64, missed: F64, floors: F64, eps: F64) -> tuple[F64, F64, F64]:
        """Log-likelihood of aggregated data at every walkable grid point ``(k, G)`` with the offset
        integrated out (prior N(0, ``tx_spread_db``^2)), the offset's conditional mean there ``(k, G)``
        and its variance ``(k,)``. Sums over sensors are matrix products with the grid's expected RSSI."""
        p = self.p
        s2 = p.sigma_db**2
        heard = count > 0
        iv = np.where(heard, 1.0 / (s2 / np.maximum(count, 1.0) + p.shadow_sd_db**2), 0.0)
        pv = p.tx_spread_db**2
        ivm = iv * mean
        gm = self._grid_mu
        see = (ivm * mean).sum(axis=1)[:, None] - 2.0 * ivm @ gm + iv @ self._grid_mu2
        se = ivm.sum(axis=1)[:, None] - iv @ gm
        siv = iv.sum(axis=1)
        gg = pv / (1.0 + pv * siv)
        ll = -0.5 * (see - gg[:, None] * se * se)
        dg = gg[:, None] * se
        md, ms = np.nonzero(missed)
        if md.size:
            sd = math.sqrt(s2 + p.shadow_sd_db**2)
            z = (floors[ms][:, None] - gm[ms] - dg[md]) / sd
            like = eps[ms][:, None] + (1.0 - eps[ms])[:, None] * _norm_cdf(z)
            np.add.at(ll, md, missed[md, ms][:, None] * np.log(like))
        return ll, dg, gg

    def _check(self, slots: I64, censor: B, floors: F64, eps: F64, rng: np.random.Generator) -> None:
        """Leave a wrong basin: restart the particles of devices whose recent window (``check_window_s``)
        is explained much better (``restart_nll`` nats) by a place ``restart_dist_m`` away from them.

        Particles only explore around where they are; a first fix in the wrong place (one second of
        data is often multi-modal) or a track lost during a long fade is otherwise kept for ever,
        especially while standing (slow diffusion)."""
        p = self.p
        prob = self._win.problem(slots, censor)
        ll, dg, gg = self._grid_ll(prob.mean, prob.count, prob.missed, floors, eps)
        best = ll.argmax(axis=1)
        rows = np.arange(slots.size)
        # where the particles say the device was at the window's mean time
        w = np.exp(self.logw[slots] - self.logw[slots].max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        back = (self._win.mean_time(slots) - self.t[slots])[:, None, None]
        at = np.einsum("kn,knc->kc", w, self.pos[slots] + self.vel[slots] * back)
        # its likelihood: nearest grid point (the grid is the walkable area at grid_step_m)
        near = self._nearest(at)
        worse = ll[rows, best] - ll[rows, near] > p.restart_nll
        far = np.hypot(*(self._grid[best] - at).T) > p.restart_dist_m
        go = np.flatnonzero(worse & far)
        if go.size:
            wg = np.exp(ll[go] - ll[go].max(axis=1, keepdims=True))
            wg /= wg.sum(axis=1, keepdims=True)
            self._seed(slots[go], wg, dg[go], gg[go], self.t[slots[go]], rng)
            self.stats.dropped["track_restarted"] = self.stats.dropped.get("track_restarted", 0) + int(go.size)

    def _nearest(self, xy: F64) -> I64:
        d2 = ((self._grid[None, :, :] - xy[:, None, :]) ** 2).sum(axis=2)
        return np.asarray(d2.argmin(axis=1))

    def _seed(self, slots: I64, w: F64, dg: F64, gg: F64, t: F64, rng: np.random.Generator) -> None:
        """Particles drawn from a grid posterior ``w`` ``(k, G)`` (offset ``dg`` / variance ``gg`` there)."""
        p = self.p
        k, n = slots.size, self._n
        idx = _systematic(w, n, rng)
        rows = np.arange(k)[:, None]
        h = p.grid_step_m
        pos = self._grid[idx] + rng.uniform(-0.5 * h, 0.5 * h, (k, n, 2))
        pos = self.region.project(pos.reshape(-1, 2)).reshape(k, n, 2)
        walk = rng.random((k, n)) < p.init_walk_p
        self.pos[slots] = pos
        self.vel[slots] = 0.0
        self.vvar[slots] = np.where(walk, p.start_speed_sd**2, 0.0)
        self.walk[slots] = walk
        self.logw[slots] = 0.0
        self.delta[slots] = dg[rows, idx]
        self.dvar[slots] = gg
        self.bias[slots] = 0.0
        self.bvar[slots] = p.shadow_sd_db**2
        self.t[slots] = t
        self.live[slots] = True

    def _resample(self, slots: I64, w: F64, rng: np.random.Generator) -> None:
        """Systematic resampling, then a Liu-West kernel move on positions (keeps mean and variance)."""
        k, n = slots.size, self._n
        idx = _systematic(w, n, rng)
        rows = np.arange(k)[:, None]
        for name in ("pos", "vel", "vvar", "walk", "delta", "bias"):
            arr = getattr(self, name)
            arr[slots] = arr[slots][rows, idx]
        self.logw[slots] = 0.0
        pos = self.pos[slots]
        m = pos.mean(axis=1, keepdims=True)
        d = pos - m
        cov = np.einsum("kni,knj->kij", d, d) / n + 1e-6 * np.eye(2)
        h2 = self.p.jitter_h2
        if h2 > 0:
            chol = np.linalg.cholesky(h2 * cov)
            z = rng.standard_normal((k, n, 2))
            pos = math.sqrt(1.0 - h2) * pos + (1.0 - math.sqrt(1.0 - h2)) * m + np.einsum("kij,knj->kni", chol, z)
        flat = pos.reshape(-1, 2)
        self.pos[slots] = self.region.project(flat).reshape(k, n, 2)
        self.stats.resampled += k

    def _learn_loss(self, now: float, slots: I64, count: F64, missed: F64, censor: B, floors: F64) -> None:
        """Misses of reports that should have been strong count as packet loss (per sensor, decayed)."""
        p = self.p
        if np.isfinite(self._loss_t):
            f = math.exp(-max(now - self._loss_t, 0.0) / p.loss_memory_s)
            self._loss_miss *= f
            self._loss_adv *= f
        self._loss_t = now
        live = self.live[slots]
        if not live.any():
            return
        sl = slots[live]
        w = np.exp(self.logw[sl])
        w /= w.sum(axis=1, keepdims=True)
        mu = self._mu0(self.pos[sl]) + self.delta[sl][:, :, None] + self.bias[sl]
        mu_hat = np.einsum("kn,kns->ks", w, mu)
        sd = math.sqrt(p.sigma_db**2 + p.shadow_sd_db**2)
        strong = censor[None, :] & (mu_hat > floors[None, :] + 3.0 * sd)
        adverts = count[live].max(axis=1, keepdims=True) * strong
        self._loss_adv += adverts.sum(axis=0)
        self._loss_miss += (missed[live] * strong).sum(axis=0)


def _systematic(w: F64, n: int, rng: np.random.Generator) -> I64:
    """``n`` systematic-resampling indices per row of the normalised weights ``w`` ``(k, m)``."""
    k, m = w.shape
    c = np.cumsum(w, axis=1)
    c /= c[:, -1:]
    rows = np.arange(k)[:, None]
    u = (rng.random((k, 1)) + np.arange(n)) / n
    flat = np.searchsorted((c + rows).ravel(), (u + rows).ravel(), side="left").reshape(k, n)
    return np.asarray(np.minimum(flat - rows * m, m - 1))
