"""The grid search's cost at every grid point, in cache-sized blocks of devices.

:meth:`Estimator.grid_search` scores every device at every grid point: the robust loss of each sensor
that heard it (``pairs x G`` residuals) and the censored loss of each sensor that missed adverts (an
``erfc``, an ``exp`` and a ``log`` per cell), then takes the argmin. At a store's load (300-500 devices
x 12 sensors x 81-770 points, every tick) that was half of the localizer's CPU, and each of the ~45
numpy passes over a ``pairs x G`` array of megabytes streamed it through memory: the arrays were
larger than the core's L2 cache. Here the same passes run over blocks of a few dozen devices whose
temporaries stay in cache, in place where the old code allocated.

Nothing else changes: each cell's loss is computed with the same operations in the same order, summed
per device with the same ``reduceat`` (per block of whole devices: a device's segment is the same),
and the censored cells take the erfc path the whole chunk would have taken (``math.erfc`` for <= 256
cells, the rational approximation otherwise) - costs, and so the argmin, are bit for bit those of
the unblocked evaluation (``tests/unit/localization/test_grid_blocks.py`` holds them to it).

Measured (``python -m bench.bench_localize``, the unblocked search beside it in the same run): a
tick's median CPU 0.84 x at 500 devices, 0.76 x at 2,000, unchanged at 100 (the grid searches ~0.7 x
where they are large); the first tick of a full store (every track new, the 1 m grid) allocates
~7 MB instead of ~32 MB, which had stayed in the daemon's RSS (its peak 98-99 MB instead of
116-119 MB in ``bench_daemon --devices 500``).

Tried and left: evaluating the censored terms only where a lower bound (heard cost + prior) does not
rule a point out keeps ~20 % of the points on these windows, and gathering them cost more than it
saved; numexpr was slower on the heard terms and not bit for bit numpy's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from gateway.localization.pathloss import _SCALAR_MAX, F64

I64 = NDArray[np.int64]

# elements (pairs x grid points) per block: a few of these arrays fit a core's L2 cache together
BLOCK_ELEMS = 1 << 15

HeardCost = Callable[[F64, F64, F64], F64]  # (residuals (in place), counts (p, 1), out) -> loss
MissedLoss = Callable[[F64, F64, I64, bool], F64]  # (mu, missed, sensor (p, 1), exact) -> loss


def _add_rows(out: F64, rows: I64, vals: F64) -> None:
    """``out[rows[i]] += vals[i]`` for sorted ``rows`` (segment sums, much faster than ``np.add.at``)."""
    if rows.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    out[rows[starts]] += np.add.reduceat(vals, starts, axis=0)


def _blocks(rows_nonzero: I64, per_block: int) -> list[tuple[int, int]]:
    """Consecutive device ranges holding about ``per_block`` cells each (whole devices)."""
    n = rows_nonzero.size
    if n == 0:
        return []
    ends = np.cumsum(rows_nonzero)
    if ends[-1] <= per_block:
        return [(0, n)]
    cuts = np.searchsorted(ends, np.arange(per_block, int(ends[-1]), per_block), side="left") + 1
    bounds = np.unique(np.r_[0, cuts, n])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds.tolist()) if b > a]


def grid_cost(
    grid_mu_t: F64,  # (S, G) expected RSSI at every grid point (offset 0)
    mean: F64,  # (n, S) per-sensor mean RSSI
    cnt: F64,  # (n, S) adverts heard
    missed: F64,  # (n, S) adverts missed
    delta: F64,  # (n, G) the profiled offset at every point
    heard_cost: HeardCost,
    missed_loss: MissedLoss,
    block_elems: int = BLOCK_ELEMS,
) -> F64:
    """``(n, G)``: each device's negative log-likelihood at every grid point (without the prior)."""
    n = cnt.shape[0]
    g = grid_mu_t.shape[1]
    cost = np.zeros((n, g))
    heard, miss = cnt != 0, missed != 0
    nh, nm = heard.sum(axis=1), miss.sum(axis=1)
    # the censored cells' erfc path is that of all of them at once (see the module docstring)
    exact = int(nm.sum()) * g <= _SCALAR_MAX
    per_block = max(1, block_elems // g)
    size = min(per_block + cnt.shape[1], max(int(nh.sum()), int(nm.sum()))) * g
    buf, tmp = np.empty(size), np.empty(size)
    for lo, hi in _blocks(nh, per_block):
        hd, hs = np.nonzero(heard[lo:hi])
        p = hd.size
        e = np.take(grid_mu_t, hs, axis=0, out=buf[: p * g].reshape(p, g))
        np.subtract(mean[lo:hi][hd, hs][:, None], e, out=e)
        e -= np.take(delta[lo:hi], hd, axis=0, out=tmp[: p * g].reshape(p, g))
        rho = heard_cost(e, cnt[lo:hi][hd, hs][:, None], tmp[: p * g].reshape(p, g))
        _add_rows(cost[lo:hi], hd, rho)
    for lo, hi in _blocks(nm, per_block):
        md, ms = np.nonzero(miss[lo:hi])
        q = md.size
        mu = np.take(grid_mu_t, ms, axis=0, out=buf[: q * g].reshape(q, g))
        mu += np.take(delta[lo:hi], md, axis=0, out=tmp[: q * g].reshape(q, g))
        _add_rows(cost[lo:hi], md, missed_loss(mu, missed[lo:hi][md, ms][:, None], ms[:, None], exact))
    return cost
