"""First-cut localizer: power-weighted centroid of the sensors that heard a device.

Simple and robust; superseded by the maximum-likelihood estimator when it is available. Kept as a
fallback and as the baseline the benchmarks compare against.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator, Sequence

import numpy as np

from gateway.config import LocalizationSettings
from gateway.layout import Layout, points_in_polygon
from gateway.models import Fix, Observation


class CentroidLocalizer:
    def __init__(self, layout: Layout, settings: LocalizationSettings) -> None:
        self._layout = layout
        self._s = settings
        self._idx = layout.sensor_index()
        self._xy = layout.sensor_xy()
        self._p0 = layout.sensor_p0()
        self._n = layout.sensor_n()
        self._active = np.ones(len(self._idx), dtype=bool)
        self._win: dict[str, deque[tuple[float, int, float]]] = defaultdict(deque)
        self._dirty: set[str] = set()

    def add(self, observations: Sequence[Observation]) -> None:
        for o in observations:
            i = self._idx.get(o.sensor)
            if i is None:
                continue
            self._win[o.device].append((o.ts, i, o.rssi))
            self._dirty.add(o.device)

    def set_sensor_active(self, sensor_id: str, active: bool) -> None:
        i = self._idx.get(sensor_id)
        if i is not None:
            self._active[i] = active

    def forget(self, device: str) -> None:
        self._win.pop(device, None)
        self._dirty.discard(device)

    def fixes_chunks(self, now: float, chunk: int = 0) -> Iterator[list[Fix]]:
        """One part whatever ``chunk``: a centroid tick is cheap."""
        yield self.fixes(now)

    def fixes(self, now: float) -> list[Fix]:
        out: list[Fix] = []
        lo = now - self._s.window_s
        for dev in sorted(self._dirty):
            q = self._win[dev]
            while q and q[0][0] < lo:
                q.popleft()
            usable = [(i, r) for (t, i, r) in q if t <= now]
            if not usable:
                continue
            idx = np.fromiter((i for i, _ in usable), dtype=np.int64, count=len(usable))
            rssi = np.fromiter((r for _, r in usable), dtype=np.float64, count=len(usable))
            # per-sensor mean RSSI -> distance from the path-loss model -> 1/d^2 weights
            sums = np.bincount(idx, weights=rssi, minlength=len(self._xy))
            cnt = np.bincount(idx, minlength=len(self._xy))
            heard = (cnt > 0) & self._active
            if not heard.any():
                continue
            mean = sums[heard] / cnt[heard]
            d = 10.0 ** ((self._p0[heard] - mean) / (10.0 * self._n[heard]))
            w = 1.0 / np.maximum(d, 0.5) ** 2
            xy = (self._xy[heard] * w[:, None]).sum(axis=0) / w.sum()
            sigma = float(np.sqrt((w * d**2).sum() / w.sum()) / np.sqrt(max(1, int(heard.sum()))))
            out.append(Fix(now, dev, float(xy[0]), float(xy[1]), sigma, self._zone(xy)))
        self._dirty.clear()
        for dev in [d for d, q in self._win.items() if not q or q[-1][0] < now - self._s.forget_after_s]:
            del self._win[dev]
        return out

    def _zone(self, xy: np.ndarray) -> str | None:
        pt = xy.reshape(1, 2)
        for z in self._layout.zones:
            if points_in_polygon(pt, z.polygon)[0]:
                return z.id
        return None
