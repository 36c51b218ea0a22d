"""The fix tick's CPU on a full store, beside the unblocked grid search in the same run (issue 22).

A store of N devices (``bench_daemon``'s: the demo store, its simulator's arrival rate calibrated so
that N devices were heard in the last minute, rotations linked) is filled, then its observations are
fed to two localizers tick by tick, one second of event time per tick: one as shipped, one with the
grid search as it was before it ran in cache-sized blocks (``grid_search_unblocked``, below). Both
compute each tick in turn, so the machine's load falls on both alike; the fixes must be identical
(bit for bit) or the bench fails.

* ``localize.tick[N devices]``: median / p90 CPU of a tick and the share of the grid searches in it,
  reference the unblocked localizer's, ratio;
* ``localize.grid_rss[N devices]``: the largest temporary the grid searches allocate (the first tick
  scores every device at every point of the 1 m grid), blocked vs unblocked.

``python -m bench.bench_localize [--quick] [--devices 500]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from typing import Any

import numpy as np

from gateway.config import load_settings
from gateway.layout import load_layout
from gateway.localization.estimator import Estimator, Problem
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import F64, log_norm_cdf, norm_cdf


def _add_rows(out: F64, rows: np.ndarray, vals: F64) -> None:
    if rows.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    out[rows[starts]] += np.add.reduceat(vals, starts, axis=0)


def _heard_cost(est: Estimator, e: F64, count: F64) -> F64:
    u2 = count * e
    u2 *= e
    u2 /= est.params.sigma_db**2
    if est.params.nu > 0:
        nu = est.params.nu * np.maximum(count, 1.0)
        u2 /= nu
        np.log1p(u2, out=u2)
        u2 *= 0.5 * (nu + 1.0)
        return u2
    u2 *= 0.5
    return u2


def _missed_loss(est: Estimator, mu: F64, missed: F64, sens: np.ndarray) -> F64:
    sig = est.params.sigma_db
    floor, eps = est._floor_eps(sens)
    alpha = (floor - mu) / sig
    if est.params.packet_loss > 0:
        like = eps + (1.0 - eps) * norm_cdf(alpha)
        loss = -np.log(like)
    else:
        loss = -log_norm_cdf(alpha)
    return np.asarray(missed * loss)


def grid_search_unblocked(
    est: Estimator,
    prob: Problem,
    delta_mean: F64,
    delta_prec: F64,
    chunk_elems: int = 1_000_000,
    grid: F64 | None = None,
) -> tuple[F64, F64]:
    """``Estimator.grid_search`` as it was before its blocks: every cell of a chunk at once."""
    grid, grid_mu_t = est.grid_tables(grid)
    d_all = prob.num_devices
    s = est.model.num_sensors
    g = grid.shape[0]
    theta = np.empty((d_all, 3))
    best_cost = np.empty(d_all)
    step = max(1, chunk_elems // (g * s))
    s2 = est.params.sigma_db**2
    for lo in range(0, d_all, step):
        sl = slice(lo, min(d_all, lo + step))
        cnt, mean, missed = prob.count[sl], prob.mean[sl], prob.missed[sl]
        w = cnt / s2
        num = (w * mean).sum(1)[:, None] - w @ grid_mu_t + (delta_prec[sl] * delta_mean[sl])[:, None]
        den = w.sum(1)[:, None] + delta_prec[sl][:, None]
        delta = num / np.maximum(den, 1e-12)
        hd, hs = np.nonzero(cnt)
        e = mean[hd, hs][:, None] - grid_mu_t[hs]
        e -= delta[hd]
        rho = _heard_cost(est, e, cnt[hd, hs][:, None])
        cost = np.zeros((cnt.shape[0], g))
        _add_rows(cost, hd, rho)
        md, ms = np.nonzero(missed)
        if md.size:
            lc = _missed_loss(est, grid_mu_t[ms] + delta[md], missed[md, ms][:, None], ms[:, None])
            _add_rows(cost, md, lc)
        prior = 0.5 * delta_prec[sl][:, None] * (delta - delta_mean[sl][:, None]) ** 2
        k = np.argmin(cost + prior, axis=1)
        rows = np.arange(cost.shape[0])
        theta[sl, :2] = grid[k]
        theta[sl, 2] = delta[rows, k]
        best_cost[sl] = cost[rows, k]
    return theta, best_cost


class _Timed(Estimator):
    """An estimator that adds up its grid searches' CPU (and may search the old way)."""

    unblocked = False
    grid_cpu = 0.0

    def grid_search(
        self,
        prob: Problem,
        delta_mean: F64,
        delta_prec: F64,
        chunk_elems: int = 1_000_000,
        grid: F64 | None = None,
    ) -> tuple[F64, F64]:
        c = time.process_time()
        try:
            if self.unblocked:
                return grid_search_unblocked(self, prob, delta_mean, delta_prec, chunk_elems, grid)
            return super().grid_search(prob, delta_mean, delta_prec, chunk_elems, grid)
        finally:
            self.grid_cpu += time.process_time() - c


def store_batches(devices: int, seconds: float) -> list[tuple[float, list[Any]]]:
    """The filled store's observations over ``seconds`` (device = its linked identity, as the
    pipeline's linker hands them on)."""
    from bench.bench_daemon import DAY_START, _sim, calibrate

    rate = calibrate(devices)
    sim, tick = _sim(7, rate, 1.0, DAY_START + 4 * 3600)
    t0 = sim.now
    k = 0
    while k * tick < 1200.0:
        k += 1
        sim.step(t0 + k * tick)
    out = []
    while k * tick < 1200.0 + seconds:
        k += 1
        t = t0 + k * tick
        out.append((t, [replace(o, device=o.link) if o.link else o for o in sim.step(t)]))
    return out


def _localizer(unblocked: bool) -> tuple[MlLocalizer, _Timed]:
    s = load_settings()
    loc = MlLocalizer(load_layout("hardware/layouts/demo-store.toml"), s.localization)
    est = loc.estimator
    timed = _Timed(est.model, est.params, est.region)
    timed.unblocked = unblocked
    loc.estimator = timed
    return loc, timed


def run(devices: int, seconds: float) -> int:
    batches = store_batches(devices, seconds)
    sides = {"blocked": _localizer(False), "unblocked": _localizer(True)}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    peak: dict[str, float] = {}
    same = True
    tick: float | None = None
    n_fixes: list[int] = []
    for t, obs in batches:
        for loc, _ in sides.values():
            loc.add(obs)
        if tick is None:
            tick = float(np.floor(t)) + 1.0
        while tick <= t:
            out = {}
            first = not n_fixes
            for name, (loc, _) in sides.items():
                if first:
                    tracemalloc.start()
                c = time.process_time()
                out[name] = loc.fixes(tick)
                cpu[name].append(time.process_time() - c)
                if first:
                    peak[name] = tracemalloc.get_traced_memory()[1] / 2**20
                    tracemalloc.stop()
            a, b = ([(f.device, f.x, f.y, f.sigma_m, f.zone) for f in out[k]] for k in sides)
            same &= a == b
            n_fixes.append(len(out["blocked"]))
            tick += 1.0
    skip = min(5, len(n_fixes) - 1)  # the first ticks start every track
    med = {k: 1e3 * statistics.median(v[skip:]) for k, v in cpu.items()}
    p90 = {k: 1e3 * float(np.percentile(v[skip:], 90)) for k, v in cpu.items()}
    share = {k: sides[k][1].grid_cpu / max(1e-9, sum(v)) for k, v in cpu.items()}
    print(
        f"localize.tick[{devices} devices]: median {med['blocked']:.2f} ms CPU, p90 {p90['blocked']:.2f} ms, "
        f"grid searches {100 * share['blocked']:.0f} % of it ({statistics.median(n_fixes):.0f} fixes a tick, "
        f"{len(n_fixes)} ticks) (reference the unblocked grid search, same ticks interleaved: median "
        f"{med['unblocked']:.2f} ms, p90 {p90['unblocked']:.2f} ms, grid searches {100 * share['unblocked']:.0f} %; "
        f"ratio {med['blocked'] / med['unblocked']:.2f}); fixes identical: {'yes' if same else 'NO'}"
    )
    print(
        f"localize.grid_rss[{devices} devices]: first tick (every track new) allocates at most "
        f"{peak['blocked']:.1f} MB (reference unblocked {peak['unblocked']:.1f} MB)"
    )
    return 0 if same else 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", default="500")
    a = ap.parse_args(argv)
    rc = 0
    for n in [int(x) for x in a.devices.split(",")]:
        rc |= run(n, 30.0 if a.quick else 120.0)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
