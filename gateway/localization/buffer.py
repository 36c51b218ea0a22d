"""Observations waiting for their tick, and the device-name <-> slot map of a batched localizer.

Per observation the Python work is a dict look-up and four list appends; :meth:`ObservationBuffer.pop_due`
hands a tick everything with ``ts <= now`` as numpy arrays and keeps the rest, so a tick never sees
an observation from its future (causal by construction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from gateway.models import Observation

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]


class ObservationBuffer:
    """Pending observations as parallel lists (ts, slot, sensor, rssi) and the slot allocator."""

    def __init__(self, sensor_index: dict[str, int], on_grow: Callable[[int], None]) -> None:
        self.sidx = sensor_index
        self.slot: dict[str, int] = {}
        self.names: list[str | None] = []
        self._free: list[int] = []
        self._on_grow = on_grow
        self.capacity = 0
        self.ts: list[float] = []
        self.dev: list[int] = []
        self.sen: list[int] = []
        self.rssi: list[float] = []
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def new_slot(self, device: str) -> int:
        if self._free:
            d = self._free.pop()
            self.names[d] = device
        else:
            d = len(self.names)
            self.names.append(device)
            if len(self.names) > self.capacity:
                self.capacity = max(64, 2 * len(self.names))
                self._on_grow(self.capacity)
        self.slot[device] = d
        return d

    def release(self, d: int) -> None:
        name = self.names[d]
        if name is not None:
            self.slot.pop(name, None)
        self.names[d] = None
        self._free.append(d)

    def add(self, observations: Sequence[Observation]) -> int:
        """Validate and buffer; returns how many were taken (bad sensor / RSSI are counted and dropped)."""
        sidx, slot = self.sidx, self.slot
        ts_, dev_, sen_, rssi_ = self.ts, self.dev, self.sen, self.rssi
        n = 0
        for o in observations:
            s = sidx.get(o.sensor)
            if s is None:
                self._drop("unknown_sensor")
                continue
            r = o.rssi
            if not (-130.0 <= r <= 20.0):  # also rejects NaN
                self._drop("bad_rssi")
                continue
            d = slot.get(o.device)
            if d is None:
                d = self.new_slot(o.device)
            ts_.append(o.ts)
            dev_.append(d)
            sen_.append(s)
            rssi_.append(r)
            n += 1
        return n

    def add_arrays(self, ts: F64, sensor: I64, devices: Sequence[str], rssi: F64) -> None:
        """Fast path (CLI, replay): sensor indices already resolved and values already validated."""
        slot = self.slot
        d = [slot[x] if x in slot else self.new_slot(x) for x in devices]
        self.ts.extend(ts.tolist())
        self.dev.extend(d)
        self.sen.extend(sensor.tolist())
        self.rssi.extend(rssi.tolist())

    def discard(self, d: int) -> None:
        """Drop the pending observations of slot ``d`` (a forgotten device)."""
        if not self.ts:
            return
        keep = [i for i, v in enumerate(self.dev) if v != d]
        self.ts = [self.ts[i] for i in keep]
        self.dev = [self.dev[i] for i in keep]
        self.sen = [self.sen[i] for i in keep]
        self.rssi = [self.rssi[i] for i in keep]

    def pop_due(self, now: float, hold_s: float, exempt: NDArray[np.bool_]) -> tuple[F64, I64, I64, F64]:
        """Observations with ``ts <= now`` (arrays ts, slot, sensor, rssi), the rest kept for later.

        An advert's reports from different sensors arrive with a spread (sensor latency, node jitter);
        one that straddles the tick would be counted as an advert in both ticks and every sensor whose
        report fell on the other side charged a miss. Reports of the last ``hold_s`` seconds therefore
        wait for the next tick together with the rest of their advert (reports within ``hold_s`` before
        them), except for slots marked in ``exempt`` (devices clearly walking: their newest reports are
        worth more than the split).
        """
        ts = np.asarray(self.ts, dtype=np.float64)
        dev = np.asarray(self.dev, dtype=np.int64)
        sen = np.asarray(self.sen, dtype=np.int64)
        rssi = np.asarray(self.rssi, dtype=np.float64)
        due = ts <= now
        if hold_s > 0 and ts.size:
            cand = due & (ts > now - hold_s) & ~exempt[dev]
            if cand.any():
                first = np.full(int(dev.max()) + 1, np.inf)
                np.minimum.at(first, dev[cand], ts[cand])
                due &= ts <= first[dev] - hold_s
        if due.all():
            self.ts, self.dev, self.sen, self.rssi = [], [], [], []
            return ts, dev, sen, rssi
        later = ~due
        self.ts, self.dev = ts[later].tolist(), dev[later].tolist()
        self.sen, self.rssi = sen[later].tolist(), rssi[later].tolist()
        return ts[due], dev[due], sen[due], rssi[due]
