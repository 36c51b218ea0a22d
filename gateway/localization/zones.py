"""Zone assignment with hysteresis so a device standing on a boundary does not flap.

A device changes zone (or leaves all zones) only when its fix is at least ``margin_m`` inside the new
zone (for "no zone": that far outside every zone), or when the same new zone has been seen for
``confirm_fixes`` consecutive fixes. Where zones overlap the deepest one wins. Batched over devices.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gateway.layout import Layout, points_in_polygon
from gateway.localization.pathloss import F64

I64 = NDArray[np.int64]


def signed_depth(xy: F64, poly: F64) -> F64:
    """Distance of each point to the polygon boundary: positive inside, negative outside."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a  # (E, 2)
    ap = xy[:, None, :] - a[None, :, :]  # (n, E, 2)
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    dist = np.sqrt(((xy[:, None, :] - closest) ** 2).sum(-1)).min(axis=1)
    inside = points_in_polygon(xy, poly)
    return np.asarray(np.where(inside, dist, -dist))


class ZoneTracker:
    def __init__(self, layout: Layout, margin_m: float = 0.5, confirm_fixes: int = 3, capacity: int = 64) -> None:
        self.ids: list[str | None] = [z.id for z in layout.zones]
        self.polys = [np.asarray(z.polygon, dtype=np.float64) for z in layout.zones]
        # all edges of all zones in one array so a tick costs a handful of numpy calls, not 7 per zone
        if self.polys:
            self._a = np.concatenate(self.polys)
            self._b = np.concatenate([np.roll(p, -1, axis=0) for p in self.polys])
            self._starts = np.cumsum([0] + [len(p) for p in self.polys[:-1]])
        self.margin = margin_m
        self.confirm = confirm_fixes
        self.cur = np.full(capacity, -2, dtype=np.int64)  # -2: no fix yet, -1: no zone
        self.cand = np.full(capacity, -2, dtype=np.int64)
        self.count = np.zeros(capacity, dtype=np.int64)

    def ensure(self, capacity: int) -> None:
        cur = self.cur.size
        if capacity <= cur:
            return
        new = max(capacity, 2 * cur)
        for name, fill in (("cur", -2), ("cand", -2), ("count", 0)):
            arr = np.full(new, fill, dtype=np.int64)
            arr[:cur] = getattr(self, name)
            setattr(self, name, arr)

    def reset(self, slots: I64) -> None:
        self.cur[slots] = -2
        self.cand[slots] = -2
        self.count[slots] = 0

    def depths(self, xy: F64) -> F64:
        """Signed depth of every point in every zone ``(n, Z)`` (all zones' edges at once)."""
        a, b = self._a, self._b
        ab = b - a
        x = xy[:, 0:1]
        y = xy[:, 1:2]
        apx, apy = x - a[:, 0], y - a[:, 1]
        t = np.clip((apx * ab[:, 0] + apy * ab[:, 1]) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
        dx, dy = apx - t * ab[:, 0], apy - t * ab[:, 1]
        dist = np.minimum.reduceat(dx * dx + dy * dy, self._starts, axis=1)
        # even-odd crossings of a ray toward +x
        cond = (a[:, 1] > y) != (b[:, 1] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = ab[:, 0] * (y - a[:, 1]) / ab[:, 1] + a[:, 0]
        cross = np.add.reduceat((cond & (x < xint)).astype(np.int64), self._starts, axis=1)
        d = np.sqrt(dist)
        return np.asarray(np.where(cross % 2 == 1, d, -d))

    def raw(self, xy: F64) -> tuple[I64, F64, F64]:
        """Deepest containing zone (-1: none), its depth, and all depths ``(n, Z)``."""
        n = xy.shape[0]
        if not self.polys:
            return np.full(n, -1, dtype=np.int64), np.full(n, np.inf), np.zeros((n, 0))
        depth = self.depths(xy)
        best = depth.argmax(axis=1)
        bd = depth[np.arange(n), best]
        zone = np.where(bd > 0, best, -1)
        # depth of "no zone" = distance to the nearest zone
        zdepth = np.where(zone >= 0, bd, -bd)
        return zone.astype(np.int64), zdepth, depth

    def update(self, slots: I64, xy: F64) -> list[str | None]:
        zone, zdepth, _ = self.raw(xy)
        cur = self.cur[slots]
        cand = self.cand[slots]
        count = self.count[slots]
        same_cand = zone == cand
        count = np.where(same_cand, count + 1, 1)
        cand = zone
        first = cur == -2
        deep = zdepth >= self.margin
        switch = (zone != cur) & (first | deep | (count >= self.confirm))
        cur = np.where(switch, zone, cur)
        count = np.where(zone == cur, 0, count)
        self.cur[slots], self.cand[slots], self.count[slots] = cur, cand, count
        return [self.ids[i] if i >= 0 else None for i in cur.tolist()]
