"""The daemon's localizer: buffered observations -> one batched solve per tick -> tracked fixes.

Per observation the Python work is two dict look-ups and four list appends; everything else happens
once per :meth:`MlLocalizer.fixes` call over numpy arrays for all devices heard since the last call:

1. aggregate the new observations per (device, sensor), with censoring at sensors that are up;
2. new tracks: coarse grid search (offset profiled out) + Gauss-Newton, initialise the tracker;
3. existing tracks: IMM prediction to the adverts' mean time -> MAP (Gauss-Newton started at the
   prediction, prior = prediction) -> information-form update of both motion models there;
4. the fix: the tracker extrapolated to the tick, or for standing devices its mixture with the
   standing-window fix (re-searched globally every few ticks, so a wrong first basin is left once
   the window shows it); hysteresis zones, ``Fix`` out.

Reports in the last ``report_jitter_s`` before a tick wait for the next one (except for walkers), so
one advert's reports are not split over two ticks and counted as misses.

Causal by construction: observations with ``ts > now`` stay buffered for a later call.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.localization.estimator import Estimator, EstimatorParams, Problem, RefineBatch, Solution, aggregate
from gateway.localization.learn import PAIR_MAX_GAP_S, RadioLearner
from gateway.localization.pathloss import F64, PathLossModel
from gateway.localization.region import Walkable
from gateway.localization.trackcheck import check_tx_prior
from gateway.localization.tracker import ImmTracker, TrackerParams
from gateway.localization.zones import ZoneTracker
from gateway.models import Fix, Observation


def layout_bounds(layout: Layout, margin: float = 1.0) -> tuple[float, float, float, float]:
    """Search area: the store, its zones (e.g. the street in front) and sensors, plus a margin."""
    xs = [0.0, layout.store.width_m] + [s.x for s in layout.sensors]
    ys = [0.0, layout.store.depth_m] + [s.y for s in layout.sensors]
    for z in layout.zones:
        xs += [p[0] for p in z.polygon]
        ys += [p[1] for p in z.polygon]
    return (min(xs) - margin, max(xs) + margin, min(ys) - margin, max(ys) + margin)


class WindowStats:
    """Exponentially-decayed per-(device, sensor) sums: a window of any length in O(devices x sensors)."""

    def __init__(self, sensors: int) -> None:
        self.cnt = np.zeros((0, sensors))
        self.sum = np.zeros((0, sensors))
        self.miss = np.zeros((0, sensors))
        self.t = np.zeros(0)
        # decayed advert count and count x time per device: the window's mean time
        self.n = np.zeros(0)
        self.nt = np.zeros(0)

    def ensure(self, capacity: int) -> None:
        for name in ("cnt", "sum", "miss"):
            old = getattr(self, name)
            arr = np.zeros((capacity, old.shape[1]))
            arr[: old.shape[0]] = old
            setattr(self, name, arr)
        for name in ("t", "n", "nt"):
            old1 = getattr(self, name)
            arr1 = np.zeros(capacity)
            arr1[: old1.size] = old1
            setattr(self, name, arr1)

    def reset(self, slots: np.ndarray) -> None:
        self.cnt[slots] = self.sum[slots] = self.miss[slots] = 0.0
        self.n[slots] = self.nt[slots] = 0.0

    def copy_from(self, other: WindowStats, slots: np.ndarray) -> None:
        self.cnt[slots], self.sum[slots], self.miss[slots] = other.cnt[slots], other.sum[slots], other.miss[slots]
        self.n[slots], self.nt[slots] = other.n[slots], other.nt[slots]

    def update(self, slots: np.ndarray, prob: Problem, now: float, tau: np.ndarray | float, t_obs: np.ndarray) -> None:
        decay = np.exp(-np.maximum(now - self.t[slots], 0.0) / tau)
        self.cnt[slots] = self.cnt[slots] * decay[:, None] + prob.count
        self.sum[slots] = self.sum[slots] * decay[:, None] + prob.count * prob.mean
        self.miss[slots] = self.miss[slots] * decay[:, None] + prob.missed
        k = prob.count.sum(axis=1)
        n0 = self.n[slots]
        # times relative to the last update, so the sums stay small (absolute times are ~1.7e9 s)
        self.nt[slots] = (self.nt[slots] + n0 * (self.t[slots] - now)) * decay + k * (t_obs - now)
        self.n[slots] = n0 * decay + k
        self.t[slots] = now

    def mean_time(self, slots: np.ndarray) -> np.ndarray:
        """Count-weighted mean time of the window's adverts (the time a walker was where they place it)."""
        return np.asarray(self.t[slots] + self.nt[slots] / np.maximum(self.n[slots], 1e-9))

    def problem(self, slots: np.ndarray, censor: np.ndarray) -> Problem:
        cnt = self.cnt[slots]
        mean = np.divide(self.sum[slots], cnt, out=np.zeros_like(cnt), where=cnt > 1e-9)
        # misses counted while a sensor was (wrongly) believed up do not count once it is known down;
        # decayed misses never reach exactly 0 and dropping the negligible ones keeps the (costly)
        # censored terms to the sensors that actually missed recently
        missed = self.miss[slots] * censor[None, :]
        missed[missed < 0.1] = 0.0
        return Problem(mean, cnt, missed)


@dataclass
class _Search:
    """A standing re-search waiting for its refinement: the slots, their current window fixes, the batch."""

    ss: np.ndarray
    cur: np.ndarray
    batch: RefineBatch


@dataclass
class LocalizerStats:
    observations: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    fixes: int = 0
    tracks_started: int = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _chol2(cov: F64) -> tuple[F64, np.ndarray]:
    """Lower Cholesky factors of 2 x 2 covariances ``(k, 2, 2)`` in closed form (the lower triangle, as
    ``np.linalg.cholesky`` reads it) and the mask of the rows that have one. A covariance that is not
    positive definite - not finite, or left indefinite by rounding - has none: the caller leaves that
    fix as it is, where ``np.linalg.cholesky`` raised and stopped the whole tick (bench_nodes did)."""
    a, c, d = cov[:, 0, 0], cov[:, 1, 0], cov[:, 1, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        l11 = np.sqrt(a)
        l21 = c / l11
        l22 = np.sqrt(d - l21 * l21)
    ok = np.isfinite(l11) & np.isfinite(l21) & np.isfinite(l22) & (l11 > 0) & (l22 > 0)
    chol = np.zeros_like(cov)
    chol[:, 0, 0] = l11
    chol[:, 1, 0] = l21
    chol[:, 1, 1] = l22
    return chol, ok


def _stencil(center: F64, cov: F64, span: float, n: int) -> tuple[F64, F64, np.ndarray]:
    """An ``n`` x ``n`` grid of points spanning ``span`` sd of each Gaussian ``N(center, cov)`` either
    side: ``(points (k', n * n, 2), the unit grid (n * n, 2), ok (k,))`` - the rows whose covariance has
    a Cholesky factor (:func:`_chol2`); the others have no points."""
    chol, ok = _chol2(cov + 1e-9 * np.eye(2))
    g = np.linspace(-span, span, n)
    unit = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    return center[ok, None, :] + np.einsum("kij,mj->kmi", chol[ok], unit), unit, ok


class MlLocalizer:
    def __init__(self, layout: Layout, settings: LocalizationSettings) -> None:
        self._s = settings
        self.layout = layout
        self.model = PathLossModel.from_layout(layout)
        bounds = layout_bounds(layout)
        self.region = Walkable.from_layout(layout)
        self.estimator = Estimator(
            self.model,
            EstimatorParams(
                sigma_db=settings.sigma_db,
                floor_dbm=settings.detection_floor_dbm,
                nu=settings.robust_nu,
                packet_loss=settings.packet_loss,
                bounds=bounds,
                grid_step_m=settings.grid_step_m,
            ),
            self.region,
        )
        self.tracker = ImmTracker(
            TrackerParams(
                static_sigma_m=settings.static_sigma_m,
                accel_sigma=settings.accel_sigma,
                stand_s=settings.stand_s,
                walk_s=settings.walk_s,
                bounds=bounds,
            )
        )
        self.zones = ZoneTracker(layout, settings.zone_margin_m, settings.zone_confirm_fixes)
        self.stats = LocalizerStats()
        self._sidx = layout.sensor_index()
        ns = len(self._sidx)
        self.learn = RadioLearner(
            ns, settings.detection_floor_dbm, settings.packet_loss, settings.sigma_db, settings.shadowing_db
        )
        # the last per-tick mean of each (device, sensor): successive differences measure the noise
        self._last_mean = np.zeros((0, ns))
        self._last_cnt = np.zeros((0, ns))
        self._last_t = np.zeros((0, ns))
        self._active = np.ones(ns, dtype=bool)
        self._last_heard = np.full(ns, -np.inf)
        self._slot: dict[str, int] = {}
        self._names: list[str | None] = []
        self._free: list[int] = []
        self._live = np.zeros(0, dtype=bool)
        # each device's phase in the every-N-ticks schedules: from its name, so a device's fixes do not
        # depend on which other devices happened to be seen first (slot numbers do)
        self._phase = np.zeros(0, dtype=np.int64)
        # the standing window (long memory while standing) and the recent window (a few seconds)
        self._stand = WindowStats(ns)
        self._recent = WindowStats(ns)
        self._sw_theta = np.zeros((0, 3))
        # a standing device's posterior mean minus its window fix (recomputed every few ticks)
        self._mean_corr = np.zeros((0, 2))
        self._mean_at = np.zeros((0, 2))  # the window fix each correction was computed at
        self._was_standing = np.zeros(0, dtype=bool)
        self._ticks = 0
        self._check_grid = self.estimator.make_grid(settings.check_grid_m)
        self._search_grid = self.estimator.make_grid(settings.standing_search_grid_m)
        # pending observations (not yet consumed by a tick)
        self._ts: list[float] = []
        self._dev: list[int] = []
        self._sen: list[int] = []
        self._rssi: list[float] = []

    # -- Localizer protocol ---------------------------------------------------------------

    def add(self, observations: Sequence[Observation]) -> None:
        sidx = self._sidx
        slot = self._slot
        ts_, dev_, sen_, rssi_ = self._ts, self._dev, self._sen, self._rssi
        for o in observations:
            s = sidx.get(o.sensor)
            if s is None:
                self.stats.drop("unknown_sensor")
                continue
            r = o.rssi
            if not (-130.0 <= r <= 20.0):  # also rejects NaN
                self.stats.drop("bad_rssi")
                continue
            d = slot.get(o.device)
            if d is None:
                d = self._new_slot(o.device)
            ts_.append(o.ts)
            dev_.append(d)
            sen_.append(s)
            rssi_.append(r)
        self.stats.observations += len(observations)

    def add_arrays(self, ts: np.ndarray, sensor: np.ndarray, devices: Sequence[str], rssi: np.ndarray) -> None:
        """Fast path (CLI, replay): sensor indices already resolved and values already validated."""
        slot = self._slot
        d = [slot.get(x) if x in slot else self._new_slot(x) for x in devices]
        self._ts.extend(ts.tolist())
        self._dev.extend(d)  # type: ignore[arg-type]
        self._sen.extend(sensor.tolist())
        self._rssi.extend(rssi.tolist())
        self.stats.observations += len(d)

    def set_sensor_active(self, sensor_id: str, active: bool) -> None:
        i = self._sidx.get(sensor_id)
        if i is not None:
            self._active[i] = active

    def forget(self, device: str) -> None:
        d = self._slot.pop(device, None)
        if d is None:
            return
        if self._ts:
            keep = [i for i, v in enumerate(self._dev) if v != d]
            self._ts = [self._ts[i] for i in keep]
            self._dev = [self._dev[i] for i in keep]
            self._sen = [self._sen[i] for i in keep]
            self._rssi = [self._rssi[i] for i in keep]
        self._release(d)

    def fixes(self, now: float) -> list[Fix]:
        return [f for part in self.fixes_chunks(now) for f in part]

    def fixes_chunks(self, now: float, chunk: int = 0) -> Iterator[list[Fix]]:
        """:meth:`fixes` in parts of at most ``chunk`` devices each (0: one part), each part yielded as
        soon as it is computed: the same fixes in the same order, so a caller can act on the first
        devices' fixes while the others still compute (a tick over a thousand devices takes tens of
        milliseconds). Devices are independent within a tick; what the tick learns from all of them
        (sensor floors, noise, packet loss) is learnt before the first part and after the last, as in
        one part. Consume it to the end: the tick is complete when the last part is handed out.
        """
        if not self._ts:
            self._expire(now)
            return
        ts = np.asarray(self._ts)
        dev = np.asarray(self._dev, dtype=np.int64)
        sen = np.asarray(self._sen, dtype=np.int64)
        rssi = np.asarray(self._rssi)
        due = ts <= now
        hold = self._s.report_jitter_s
        if hold > 0:
            # An advert's reports from different sensors arrive with a spread (sensor latency, node
            # jitter). One that straddles the tick would be counted as an advert in both ticks, and
            # every sensor whose report fell on the other side would be charged a miss: for a phone
            # advertising at the tick's phase, half its adverts at every sensor, read as "weak
            # everywhere" (offset -6 dB, fixes metres off). Reports of the last ``hold`` seconds wait
            # for the next tick, with the rest of their advert (reports within ``hold`` before them).
            # Not for devices clearly walking (P(walking) > track_nu_p_walk): their fix is extrapolated
            # from the newest reports, and holding those cost 0.01-0.02 m of median at 5-10 adverts/s.
            cand = due & (ts > now - hold)
            cand &= ~(self._live[dev] & (self.tracker.mu[dev, 1] > self._s.track_nu_p_walk))
            if cand.any():
                first = np.full(int(dev.max()) + 1, np.inf)
                np.minimum.at(first, dev[cand], ts[cand])
                due &= ts <= first[dev] - hold
        if not due.all():
            later = ~due
            self._ts, self._dev = ts[later].tolist(), dev[later].tolist()
            self._sen, self._rssi = sen[later].tolist(), rssi[later].tolist()
            ts, dev, sen, rssi = ts[due], dev[due], sen[due], rssi[due]
        else:
            self._ts, self._dev, self._sen, self._rssi = [], [], [], []
        fresh = ts >= now - self._s.window_s
        if not fresh.all():
            self.stats.drop("stale", int((~fresh).sum()))
            ts, dev, sen, rssi = ts[fresh], dev[fresh], sen[fresh], rssi[fresh]
        if ts.size:
            yield from self._tick(now, ts, dev, sen, rssi, chunk)
        self._expire(now)

    # -- internals --------------------------------------------------------------------------

    def _new_slot(self, device: str) -> int:
        if self._free:
            d = self._free.pop()
            self._names[d] = device
        else:
            d = len(self._names)
            self._names.append(device)
            cap = len(self._names)
            if cap > self._live.size:
                live = np.zeros(max(64, 2 * cap), dtype=bool)
                live[: self._live.size] = self._live
                self._live = live
                phase = np.zeros(live.size, dtype=np.int64)
                phase[: self._phase.size] = self._phase
                self._phase = phase
                self._stand.ensure(live.size)
                self._recent.ensure(live.size)
                swt = np.zeros((live.size, 3))
                swt[: self._sw_theta.shape[0]] = self._sw_theta
                self._sw_theta = swt
                for name in ("_mean_corr", "_mean_at"):
                    old2 = getattr(self, name)
                    arr2 = np.zeros((live.size, 2))
                    arr2[: old2.shape[0]] = old2
                    setattr(self, name, arr2)
                was = np.zeros(live.size, dtype=bool)
                was[: self._was_standing.size] = self._was_standing
                self._was_standing = was
                for name in ("_last_mean", "_last_cnt", "_last_t"):
                    old = getattr(self, name)
                    arr = np.zeros((live.size, old.shape[1]))
                    arr[: old.shape[0]] = old
                    setattr(self, name, arr)
                self.tracker.ensure(live.size)
                self.zones.ensure(live.size)
        self._slot[device] = d
        self._phase[d] = zlib.crc32(device.encode())
        self._live[d] = False
        self._stand.reset(np.array([d]))
        self._recent.reset(np.array([d]))
        self._was_standing[d] = False
        self._last_t[d] = -np.inf
        return d

    def _release(self, d: int) -> None:
        self._names[d] = None
        self._live[d] = False
        self.zones.reset(np.array([d]))
        self._free.append(d)

    def _check_batch(self, ss: np.ndarray, censor: np.ndarray, st: LocalizationSettings) -> RefineBatch:
        """Track check, first half: restart tracks the last few seconds of data place far away (lost, or
        started walking).

        The recent window's best place (coarse grid with the offset profiled out, then Gauss-Newton:
        this batch, refined in :meth:`_tick`'s solve with the others) is compared by
        :meth:`_check_finish` with the tracker's state and with the standing-window fix; if either
        explains the recent data worse by ``restart_nll`` nats and lies > 3 m away, the tracker restarts
        there and the standing window restarts from the recent data.
        """
        k = ss.size
        sub = self._recent.problem(ss, censor)
        pp = self._tx_prior(k)
        pm = np.zeros((k, 3))
        if st.check_tx_sd_db > 0:
            check_tx_prior(self.tracker, ss, st.track_nu_p_walk, st.check_tx_sd_db, pm, pp)
        theta_g, _ = self.estimator.grid_search(sub, pm[:, 2], pp[:, 2, 2], grid=self._check_grid)
        return RefineBatch(sub, theta_g, pm, pp, st.track_iterations)

    def _check_finish(
        self, now: float, ss: np.ndarray, batch: RefineBatch, best: Solution, st: LocalizationSettings
    ) -> np.ndarray:
        """Track check, second half (see :meth:`_check_batch`); returns the mask of restarted devices."""
        est = self.estimator
        k = ss.size
        sub = batch.prob
        state, _, _ = self.tracker.estimate(ss)
        th_track = state[:, [0, 1, 4]]
        if st.time_align:
            # where the track says the device was at the window's mean time: a walker's window lags it by
            # several metres, and comparing it with the current position would restart good tracks
            back = self._recent.mean_time(ss) - self.tracker.t[ss]
            th_track[:, :2] += state[:, 2:4] * back[:, None]
        th_stand = np.where(self._was_standing[ss][:, None], self._sw_theta[ss], th_track)
        cost_best = best.cost
        moved = np.zeros(k, dtype=bool)
        # both candidates' costs in one evaluation
        costs = est.nll(Problem.concat([sub, sub]), np.concatenate([th_track, th_stand]))
        for i, th in enumerate((th_track, th_stand)):
            cost = costs[i * k : (i + 1) * k]
            far = np.hypot(*(best.theta[:, :2] - th[:, :2]).T) > 3.0
            moved |= (cost - cost_best > st.restart_nll) & far
        if moved.any():
            rows = ss[moved]
            cov = best.cov()[moved]
            t_w = self._recent.mean_time(rows) if st.time_align else now
            self.tracker.init(rows, t_w, best.theta[moved], cov)
            self._stand.copy_from(self._recent, rows)
            self._sw_theta[rows] = best.theta[moved]
            self._was_standing[rows] = False
            self.stats.drop("track_restarted", int(moved.sum()))
        return moved

    def _search_batch(self, ss: np.ndarray, censor: np.ndarray, st: LocalizationSettings) -> _Search | None:
        """Global re-search of the standing window (its refinement; ``None``: nothing to refine - the
        batch is solved in :meth:`_standing_fix` with its own): leave a wrong basin once the window
        shows it.

        The standing-window fix is refined locally every tick from where it was, so it inherits the
        basin of the track's first fix - with a few seconds of data that is often a wrong one, e.g.
        pinned to a wall by the walkable-area projection with a weak transmit offset. The track check
        only looks at the last few seconds, too little to beat it (``restart_nll`` over 4 s); the
        standing window holds up to a minute of adverts and separates the basins clearly. Grid search
        (``standing_search_grid_m``, offset profiled out) + refinement over that window; if it beats
        the current window fix by ``standing_search_nll`` nats of posterior, the window fix moves there
        (the tracker follows through the re-centring test of :meth:`_standing_fix`).
        :meth:`_search_finish` applies it.
        """
        k = ss.size
        if k == 0:
            return None
        est = self.estimator
        sub = self._stand.problem(ss, censor)
        pp = self._tx_prior(k)
        pm = np.zeros((k, 3))
        # its own grid (`standing_search_grid_m`, 2 m), finer than the track check's: in a small store the
        # wrong basins lie 2-4 m from the right one, and a 3 m grid whose best point fell within 3 m of
        # the current fix never refined the basin next to it (docs/localization.md 9.7)
        theta_g, _ = est.grid_search(sub, np.zeros(k), np.full(k, pp[0, 2, 2]), grid=self._search_grid)
        cur = self._sw_theta[ss]
        # only a grid optimum in another place can mean another basin: a device whose global optimum
        # is next to its fix is already in the right one (the per-tick refinement keeps it there), so
        # the costly refinement is spent on the few that may have to move
        far = np.flatnonzero(np.hypot(*(theta_g[:, :2] - cur[:, :2]).T) > st.standing_search_grid_m)
        if far.size == 0:
            return None
        if far.size < k:
            ss, sub, theta_g, cur = ss[far], sub.take(far), theta_g[far], cur[far]
            pp, pm = pp[: far.size], pm[: far.size]
        return _Search(ss, cur, RefineBatch(sub, theta_g, pm, pp, est.params.max_iter))

    def _search_finish(self, search: _Search, best: Solution, st: LocalizationSettings) -> np.ndarray:
        """Move the window fixes the re-search beats; returns the slots moved."""
        cur, sub = search.cur, search.batch.prob
        prec = search.batch.prior_prec[0, 2, 2]
        cost_cur = self.estimator.nll(sub, cur) + 0.5 * prec * cur[:, 2] ** 2
        cost_best = best.cost + 0.5 * prec * best.theta[:, 2] ** 2
        better = cost_cur - cost_best > st.standing_search_nll
        if better.any():
            self._sw_theta[search.ss[better]] = best.theta[better]
            self.stats.drop("standing_moved", int(better.sum()))
        return np.asarray(search.ss[better])

    def _tx_prior(self, k: int) -> np.ndarray:
        pp = np.zeros((k, 3, 3))
        pp[:, 2, 2] = 1.0 / self._s.tx_spread_db**2
        return pp

    def _standing_fix(
        self,
        now: float,
        slots: np.ndarray,
        sidx: np.ndarray,
        censor: np.ndarray,
        standing: np.ndarray,
        state: np.ndarray,
        cov: np.ndarray,
        xy: np.ndarray,
        pcov: np.ndarray,
        search: _Search | None = None,
    ) -> None:
        """ML over the standing window for standing devices (re-linearised every tick).

        A tracker linearises each second's likelihood once, where it stood then; for a device that
        stays put the window ML uses all of it at the current estimate, which is what gets close to
        the bound. A tracker state that disagrees with the window fix is re-centred on it. ``search``:
        this tick's standing re-search (:meth:`_search_batch`), refined in the same batched solve.
        """
        est = self.estimator
        st = self._s
        ss = slots[sidx]
        sub = self._stand.problem(ss, censor)
        k = ss.size
        start = self._sw_theta[ss].copy()
        entering = ~self._was_standing[ss]
        start[entering] = state[sidx][entering][:, [0, 1, 4]]
        pm = np.zeros((k, 3))
        pp = self._tx_prior(k)
        batches = [RefineBatch(sub, start, pm, pp, st.track_iterations)]
        if search is not None:
            batches.append(search.batch)
        sols = est.refine_batches(batches)
        sol = sols[0]
        if search is not None:
            # the re-search ran in the same solve; a window fix it moved is refined again from there
            redo = np.flatnonzero(np.isin(ss, self._search_finish(search, sols[1], st)))
            if redo.size:
                again = est.refine(sub.take(redo), self._sw_theta[ss[redo]], pm[redo], pp[redo], st.track_iterations)
                sol.theta[redo], sol.h_post[redo] = again.theta, again.h_post
        self._sw_theta[ss] = sol.theta
        wcov = np.linalg.inv(sol.h_post)
        # re-centre trackers that disagree with the window fix (chi2, 3 dof, 99.7%)
        d = sol.theta - state[sidx][:, [0, 1, 4]]
        tcov = cov[sidx][:, [0, 1, 4]][:, :, [0, 1, 4]]
        m2 = np.einsum("ni,nij,nj->n", d, np.linalg.inv(tcov + wcov), d)
        off = m2 > 14.0
        # the output is the mixture of the two hypotheses the IMM weighs: standing (the window fix) or
        # not (the tracker's estimate) - a walker briefly classified standing is not pinned to the
        # window, and a standing device's fix moves by a fraction of P(walking) only
        pw = np.where(off | (not st.standing_mix), 0.0, self.tracker.mu[ss, 1])[:, None]
        if off.any():
            self.tracker.init(ss[off], now, sol.theta[off], wcov[off])
            self.stats.drop("track_recentred", int(off.sum()))
        dx = sol.theta[:, :2] - state[sidx][:, :2]
        xy[sidx] = sol.theta[:, :2] - pw * dx
        if st.standing_mean_sd > 0:
            # also when the fix moved by more than its sd since (a re-search, the first seconds)
            moved = np.hypot(*(sol.theta[:, :2] - self._mean_at[ss]).T) ** 2 > wcov[:, 0, 0] + wcov[:, 1, 1]
            fresh = entering | off | moved | ((self._phase[ss] + self._ticks) % st.standing_mean_every_ticks == 0)
            self._standing_mean(ss, sub, sol.theta, wcov, np.flatnonzero(fresh))
            xy[sidx] += (1.0 - pw) * self._mean_corr[ss]
        pw3 = pw[:, :, None]
        pcov[sidx] = (
            (1.0 - pw3) * wcov[:, :2, :2]
            + pw3 * cov[sidx][:, :2, :2]
            + pw3 * (1.0 - pw3) * dx[:, :, None] * dx[:, None, :]
        )

    def _walkable_mean(self, xy: F64, pcov: F64, rows: np.ndarray) -> None:
        """Move ``rows``' fixes (in place) to the mean of their Gaussian ``N(xy, pcov)`` cut to the
        walkable area (a 7 x 7 stencil spanning ``walkable_mean_sd`` sd either side): the posterior mean
        under the walkable-area prior, where projecting put a fix whose estimate spills over a wall *on*
        the wall. A fix whose stencil lies inside is unchanged (the stencil is symmetric); one with no
        point inside is left to the projection."""
        pts, unit, ok = _stencil(xy[rows], pcov[rows], self._s.walkable_mean_sd, 7)
        rows = rows[ok]  # a covariance with no factor: that fix is left to the projection
        if rows.size == 0:
            return
        inside = self.region.contains(pts.reshape(-1, 2)).reshape(pts.shape[:2])
        w = np.exp(-0.5 * (unit * unit).sum(axis=1))[None, :] * inside
        tot = w.sum(axis=1)
        cut = (tot > 0) & ~inside.all(axis=1)
        if cut.any():
            xy[rows[cut]] = np.einsum("km,kmi->ki", w[cut], pts[cut]) / tot[cut, None]

    def _standing_mean(self, ss: np.ndarray, sub: Problem, theta: F64, wcov: np.ndarray, rows: np.ndarray) -> None:
        """Refresh ``rows``' posterior-mean correction: the standing window's posterior mean over a 5 x 5
        stencil spanning ``standing_mean_sd`` sd of the window fix's covariance either side, minus the
        fix (:meth:`Estimator.local_mean`; the fix is the mode, and the RMSE is the mean's to minimise)."""
        points, _, ok = _stencil(theta[rows, :2], wcov[rows, :2, :2], self._s.standing_mean_sd, 5)
        self._mean_corr[ss[rows[~ok]]] = 0.0  # no factor: the mode, until the next refresh
        self._mean_at[ss[rows[~ok]]] = theta[rows[~ok], :2]
        rows = rows[ok]
        if rows.size == 0:
            return
        pm = self.estimator.local_mean(sub.take(rows), theta[rows], 1.0 / self._s.tx_spread_db**2, points)
        self._mean_corr[ss[rows]] = pm - theta[rows, :2]
        self._mean_at[ss[rows]] = theta[rows, :2]

    def _track_update(self, sub: Problem, m: np.ndarray, lam: np.ndarray, walking: np.ndarray) -> tuple[F64, F64]:
        """MAP under the tracker's prediction -> the likelihood's information form, per device.

        Devices clearly walking (``track_nu_p_walk``) use ``track_robust_nu``: one second of adverts
        from a moving phone, where a heavier tail than the fade mixture calls for throws away real
        information; the others keep ``robust_nu`` (their tracker also anchors the standing-window fix,
        and a lighter tail there let a few static devices' fades through: RMSE 1.04 -> 1.11 m).
        """
        sol = self.estimator.refine_batches([self._track_batch(sub, m, lam, walking)])[0]
        return sol.h_lik, sol.b_lik

    def _track_batch(self, sub: Problem, m: np.ndarray, lam: np.ndarray, walking: np.ndarray) -> RefineBatch:
        st = self._s
        nu = np.where(walking, st.track_robust_nu, st.robust_nu)
        return RefineBatch(sub, m, m, lam, st.track_iterations, nu)

    def _learn_noise(
        self, slots: np.ndarray, prob: Problem, t_obs: np.ndarray, sen: np.ndarray, rssi: np.ndarray
    ) -> None:
        """Floors from the weakest reports, noise from successive means; the estimator uses both."""
        lr = self.learn
        lr.reports(sen, rssi)
        heard = prob.count > 0
        lt = self._last_t[slots]
        pair = heard & (lt >= t_obs[:, None] - PAIR_MAX_GAP_S)
        if pair.any():
            lk = self._last_cnt[slots]
            z = (prob.mean - self._last_mean[slots]) / np.sqrt(
                1.0 / np.maximum(prob.count, 1.0) + 1.0 / np.maximum(lk, 1.0)
            )
            lr.pairs(z[pair])
        self._last_mean[slots] = np.where(heard, prob.mean, self._last_mean[slots])
        self._last_cnt[slots] = np.where(heard, prob.count, self._last_cnt[slots])
        self._last_t[slots] = np.where(heard, t_obs[:, None], lt)
        est = self.estimator
        est.floor_s = lr.floors()
        est.eps_s = lr.packet_loss()
        sigma = lr.sigma()
        if sigma != est.params.sigma_db:
            est.params = replace(est.params, sigma_db=sigma)

    def _learn_loss(self, now: float, prob: Problem, state: np.ndarray, censor: np.ndarray) -> None:
        """Packet loss: misses where the device should have been heard well (at its current estimate)."""
        lr = self.learn
        mu = self.model.mean_rssi(state[:, :2], state[:, 4])
        strong = censor[None, :] & (mu > lr.floors()[None, :] + 3.0 * lr.sigma())
        lr.misses(now, prob.count.max(axis=1), prob.missed, strong)

    def _expire(self, now: float) -> None:
        live = np.flatnonzero(self._live)
        if live.size == 0:
            return
        old = live[self.tracker.t[live] < now - self._s.forget_after_s]
        for d in old.tolist():
            name = self._names[d]
            if name is not None:
                self._slot.pop(name, None)
            self._release(d)

    def _tick(
        self, now: float, ts: np.ndarray, dev: np.ndarray, sen: np.ndarray, rssi: np.ndarray, chunk: int = 0
    ) -> Iterator[list[Fix]]:
        ns = self.model.num_sensors
        np.maximum.at(self._last_heard, sen, ts)
        censor = self._active & (self._last_heard >= now - self._s.sensor_silent_s)
        slots, inv = np.unique(dev, return_inverse=True)
        prob = aggregate(inv.astype(np.int64), sen, rssi, slots.size, ns, censor)
        # the time the window's adverts describe (their mean time): the tracker fuses them there and
        # extrapolates to ``now`` for the fix
        t_obs = np.bincount(inv, weights=ts, minlength=slots.size) / np.bincount(inv, minlength=slots.size)
        if self._s.learn_radio:
            self._learn_noise(slots, prob, t_obs, sen, rssi)
        if not self._s.time_align:
            t_obs = np.full(slots.size, now)
        n = slots.size
        step = n if chunk <= 0 else chunk
        parts = [np.arange(lo, min(n, lo + step)) for lo in range(0, n, step)]
        seen: list[tuple[Problem, F64]] = []  # each part's tracked devices: the packet-loss learner's input
        for i, part in enumerate(parts):
            out, old_prob, old_state = self._solve(now, slots[part], prob.take(part), t_obs[part], censor)
            seen.append((old_prob, old_state))
            if i == len(parts) - 1:
                # the tick's end, before its last part is handed out (the schedules count ticks)
                self._ticks += 1
                if self._s.learn_radio and any(q.num_devices for q, _ in seen):
                    probs = Problem.concat([q for q, _ in seen])
                    self._learn_loss(now, probs, np.concatenate([st for _, st in seen]), censor)
            yield out

    def _solve(
        self, now: float, slots: np.ndarray, prob: Problem, t_obs: np.ndarray, censor: np.ndarray
    ) -> tuple[list[Fix], Problem, F64]:
        """One part of a tick (see :meth:`fixes_chunks`): its fixes, and its tracked devices' window and
        state (for :meth:`_learn_loss`, which learns from the whole tick at once)."""
        live = self._live[slots]
        # a track not updated for a long time restarts from scratch
        live &= self.tracker.t[slots] >= now - self._s.reinit_after_s
        est = self.estimator
        st = self._s
        tx_prec = 1.0 / st.tx_spread_db**2
        k_all = slots.size
        p_walk = np.ones(k_all)
        old = np.flatnonzero(live)
        new = np.flatnonzero(~live)
        fresh = ~self._live[slots[new]]
        if new.size:
            self._stand.reset(slots[new])
            self._recent.reset(slots[new])
        # the recent window does not depend on the tracker: update it first, so the track check's
        # refinement joins the tracker update's and the new tracks' in one batched solve
        self._recent.update(slots, prob, now, st.recent_window_s, t_obs)
        batches: list[RefineBatch] = []
        if old.size:
            sl = slots[old]
            m, lam = self.tracker.predict(sl, t_obs[old])
            walking = self.tracker.mu[sl, 1] > st.track_nu_p_walk
            batches.append(self._track_batch(prob.take(old), m, lam, walking))
        if new.size:
            sub = prob.take(new)
            k = new.size
            theta0, _ = est.grid_search(sub, np.zeros(k), np.full(k, tx_prec))
            batches.append(RefineBatch(sub, theta0, np.zeros((k, 3)), self._tx_prior(k), est.params.max_iter))
        due = old[(self._phase[slots[old]] + self._ticks) % st.check_every_ticks == 0]
        if due.size:
            batches.append(self._check_batch(slots[due], censor, st))
        sols = est.refine_batches(batches)
        if old.size:
            sol = sols.pop(0)
            self.tracker.update(sl, t_obs[old], sol.h_lik, sol.b_lik)
            p_walk[old] = self.tracker.mu[sl, 1]  # estimate()'s walking probability, without the rest
        if new.size:
            sol = sols.pop(0)
            cov = sol.cov()
            # a first fix from one second of data is multi-modal: be honest about it
            cov[:, 0, 0] += st.init_extra_var_m2
            cov[:, 1, 1] += st.init_extra_var_m2
            self.tracker.init(slots[new], t_obs[new], sol.theta, cov)
            self._live[slots[new]] = True
            self._sw_theta[slots[new]] = sol.theta
            self.zones.reset(slots[new[fresh]])
            self.stats.tracks_started += int(fresh.sum())
        # standing window: long memory while standing, short while walking; recent window: a few s
        standing = p_walk < st.standing_p_walk
        tau = np.where(standing, st.standing_window_s, st.walking_window_s)
        self._stand.update(slots, prob, now, tau, t_obs)
        restarted = np.zeros(0, dtype=np.int64)
        search: _Search | None = None
        if due.size:
            restarted = due[self._check_finish(now, slots[due], batches[-1], sols.pop(0), st)]
            standing[restarted] = False
        if st.standing_search_nll > 0 and old.size and self._ticks % st.standing_search_every_ticks == 0:
            # the standing window changes slowly (minute memory): a global re-search every few ticks is
            # enough, and doing all devices in the same tick keeps the per-call numpy overhead down
            pick = old[self._was_standing[slots[old]] & ~np.isin(old, restarted)]
            search = self._search_batch(slots[pick], censor, st)
        state, cov, _ = self.tracker.estimate(slots, at=now)
        xy = state[:, :2].copy()
        pcov = cov[:, :2, :2].copy()
        sidx = np.flatnonzero(standing & (self._stand.cnt[slots].max(axis=1) >= st.standing_min_adverts))
        if sidx.size:
            self._standing_fix(now, slots, sidx, censor, standing, state, cov, xy, pcov, search)
        elif search is not None:
            self._search_finish(search, est.refine_batches([search.batch])[0], st)
        self._was_standing[slots] = standing
        if st.walkable_mean_sd > 0:
            # the standing devices' window fixes are posterior means over the walkable area already
            rest = np.ones(k_all, dtype=bool)
            rest[sidx] = False
            self._walkable_mean(xy, pcov, np.flatnonzero(rest))
        xy = self.region.project(xy)
        sigma = np.sqrt(np.maximum(pcov[:, 0, 0] + pcov[:, 1, 1], 0.0))
        zones = self.zones.update(slots, xy)
        names = self._names
        xs, ys, ss = xy[:, 0].tolist(), xy[:, 1].tolist(), sigma.tolist()
        out = [Fix(now, names[d] or "", xs[i], ys[i], ss[i], zones[i]) for i, d in enumerate(slots.tolist())]
        self.stats.fixes += len(out)
        return out, prob.take(old), state[old]
