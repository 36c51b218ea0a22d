"""The walkable area: the store floor plus every zone (e.g. the street in front), as polygons.

Phones are carried by people, so a position outside every polygon is impossible. Using that as a hard
prior removes a real ambiguity of RSSI ranging near walls: a weak phone just inside a wall otherwise
fits almost as well (or better) a little *outside* the wall with a stronger transmit power.
"""

from __future__ import annotations

import numpy as np

from gateway.layout import Layout
from gateway.localization.pathloss import F64


class Walkable:
    def __init__(self, polygons: list[F64]) -> None:
        self.polys = polygons
        self._a = np.concatenate(polygons)
        self._b = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
        self._starts = np.cumsum([0] + [len(p) for p in polygons[:-1]])
        # axis-aligned rectangles (the store floor, most zones) answer "inside" with four comparisons;
        # the crossing test only runs for points outside all of them and only if other polygons exist
        rects = [p for p in polygons if _is_rectangle(p)]
        lo = np.array([p.min(axis=0) for p in rects]).reshape(-1, 2)
        hi = np.array([p.max(axis=0) for p in rects]).reshape(-1, 2)
        self._rx0, self._ry0, self._rx1, self._ry1 = lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]
        self._all_rects = len(rects) == len(polygons)

    @classmethod
    def from_layout(cls, layout: Layout) -> Walkable:
        w, d = layout.store.width_m, layout.store.depth_m
        polys = [np.array([[0.0, 0.0], [w, 0.0], [w, d], [0.0, d]])]
        polys += [np.asarray(z.polygon, dtype=np.float64) for z in layout.zones]
        return cls(polys)

    def contains(self, xy: F64) -> np.ndarray:
        """Inside any polygon (half-open: a rectangle is ``[x0, x1) x [y0, y1)``, as the crossing test)."""
        x, y = xy[:, 0:1], xy[:, 1:2]
        inside = np.asarray(((x >= self._rx0) & (x < self._rx1) & (y >= self._ry0) & (y < self._ry1)).any(axis=1))
        if self._all_rects or inside.all():
            return inside
        rest = np.flatnonzero(~inside)
        inside[rest] = self._crossing(xy[rest])
        return inside

    def _crossing(self, xy: F64) -> np.ndarray:
        """Even-odd crossing test against every polygon edge."""
        a, b = self._a, self._b
        x, y = xy[:, 0:1], xy[:, 1:2]
        cond = (a[:, 1] > y) != (b[:, 1] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (b[:, 0] - a[:, 0]) * (y - a[:, 1]) / (b[:, 1] - a[:, 1]) + a[:, 0]
        cross = np.add.reduceat((cond & (x < xint)).astype(np.int64), self._starts, axis=1)
        return np.asarray((cross % 2 == 1).any(axis=1))

    def project(self, xy: F64) -> F64:
        """Points outside the walkable area moved to the nearest point of its boundary."""
        out = ~self.contains(xy)
        if not out.any():
            return xy
        p = xy[out]
        res = xy.copy()
        if self._all_rects:
            # the nearest point of a filled rectangle is the clamp, and outside the union the nearest
            # point of the union is the nearest of those (the boundary's, as the edge search below finds)
            cx = np.clip(p[:, 0:1], self._rx0, self._rx1)
            cy = np.clip(p[:, 1:2], self._ry0, self._ry1)
            k = np.argmin((p[:, 0:1] - cx) ** 2 + (p[:, 1:2] - cy) ** 2, axis=1)
            rows = np.arange(p.shape[0])
            res[out, 0] = cx[rows, k]
            res[out, 1] = cy[rows, k]
            return res
        a, b = self._a, self._b
        ab = b - a
        apx, apy = p[:, 0:1] - a[:, 0], p[:, 1:2] - a[:, 1]
        t = np.clip((apx * ab[:, 0] + apy * ab[:, 1]) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
        cx, cy = a[:, 0] + t * ab[:, 0], a[:, 1] + t * ab[:, 1]
        k = np.argmin((p[:, 0:1] - cx) ** 2 + (p[:, 1:2] - cy) ** 2, axis=1)
        rows = np.arange(p.shape[0])
        res[out, 0] = cx[rows, k]
        res[out, 1] = cy[rows, k]
        return res


def _is_rectangle(p: F64) -> bool:
    """Four vertices on the corners of their bounding box, in order around it (any direction)."""
    if p.shape != (4, 2):
        return False
    lo, hi = p.min(axis=0), p.max(axis=0)
    if not (hi > lo).all():
        return False
    corner = (p == lo) | (p == hi)
    if not corner.all():
        return False
    # consecutive vertices share exactly one coordinate (edges are axis-parallel, not diagonals)
    same = p == np.roll(p, -1, axis=0)
    return bool((same.sum(axis=1) == 1).all())
