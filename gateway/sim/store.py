"""A seeded store simulator: shoppers, passers-by, phones with rotating addresses, fixed beacons.

Pure: time is an argument (``step(t_end)``), randomness comes from one seeded generator, and the
output depends only on the seed, the layout, the settings and the step schedule (the simulated
source always steps in fixed ``tick_s`` increments, so a run is reproducible end to end).

Radio model: :mod:`gateway.sim.radio` (per advert, per sensor)::

    rssi = p0_sensor + tx_offset_device - 10 * n_sensor * log10(d_3d) + shadow(t) + N(0, shadowing) - fade
    heard iff rssi >= detection_floor and the report is not lost (packet_loss); rounded to 1 dBm.

``shadow(t)`` persists per phone and sensor (``persistent_shadowing_db``, ``shadowing_tau_s``; 0 by
default); ``fade`` is a body/shelf shadow of ``fade_db`` with probability ``fade_probability``. Ground truth
(positions, visits, dwell per zone) is kept for tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gateway.config import SimulatorSettings
from gateway.layout import Layout, Zone, points_in_polygon
from gateway.models import Observation
from gateway.sim.radio import Channel, RadioEnv

PersonKind = Literal["visitor", "passer-by", "beacon"]


@dataclass(slots=True)
class VisitTruth:
    person: int
    kind: PersonKind
    start: float  # first time inside the store (visitor) / on the street (passer-by)
    end: float
    dwell_by_zone: dict[str, float] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Person:
    pid: int
    kind: PersonKind
    t: NDArray[np.float64]  # waypoint times
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    tx_offset: float
    advert_phase: float
    rotation_phase: float
    next_advert: float

    @property
    def t_end(self) -> float:
        return float(self.t[-1])

    def position(self, ts: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return np.interp(ts, self.t, self.x), np.interp(ts, self.t, self.y)


def _mac_from(seed: int, pid: int, epoch: int, static: bool) -> str:
    b = bytearray(hashlib.sha256(f"{seed}:{pid}:{epoch}".encode()).digest()[:6])
    # BLE: top two bits 0b01 = resolvable private address (phones); 0b11 = random static (beacons)
    b[0] = (b[0] & 0x3F) | (0xC0 if static else 0x40)
    return ":".join(f"{x:02X}" for x in b)


class StoreSimulator:
    def __init__(
        self,
        layout: Layout,
        settings: SimulatorSettings,
        *,
        sensors: list[str] | None = None,
        start_ts: float | None = None,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        self.now = settings.start_ts if start_ts is None else start_ts
        self.t0 = self.now
        ids = [x.id for x in layout.sensors]
        self.sensor_ids = sensors if sensors is not None else ids
        sel = [ids.index(i) for i in self.sensor_ids]
        self._sxy = layout.sensor_xy()[sel]
        self._sz = layout.sensor_z()[sel]
        self._p0 = layout.sensor_p0()[sel]
        self._n = layout.sensor_n()[sel]
        self.channel = Channel(RadioEnv.from_settings(self._p0, self._n, self._sz, settings), self._sxy, self.rng)
        self._zones = layout.zones
        self._entrance = self._zone_of_kind("entrance")
        self._street = self._zone_of_kind("outside")
        self._targets = [z for z in layout.zones if z.kind in ("aisle", "other")] or [
            z for z in layout.zones if z.kind not in ("outside", "entrance")
        ]
        self._checkout = self._zone_of_kind("checkout")
        self.people: dict[int, _Person] = {}
        self.visits: list[VisitTruth] = []
        self.mac_owner: dict[str, int] = {}
        self._next_pid = 0
        self._next_arrival = self.now + self._interarrival()
        for _ in range(settings.beacons):
            self._spawn_beacon()

    # -- world --------------------------------------------------------------------------------

    def _zone_of_kind(self, kind: str) -> Zone | None:
        return next((z for z in self.layout.zones if z.kind == kind), None)

    def _interarrival(self) -> float:
        rate = self.settings.shoppers_per_hour / 3600.0
        return float(self.rng.exponential(1.0 / rate)) if rate > 0 else math.inf

    def _point_in(self, zone: Zone, margin: float = 0.5) -> tuple[float, float]:
        poly = np.asarray(zone.polygon, dtype=np.float64)
        lo, hi = poly.min(axis=0) + margin, poly.max(axis=0) - margin
        for _ in range(100):
            p = self.rng.uniform(lo, hi)
            if points_in_polygon(p.reshape(1, 2), zone.polygon)[0]:
                return float(p[0]), float(p[1])
        c = poly.mean(axis=0)
        return float(c[0]), float(c[1])

    def _door(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(point on the street in front of the entrance, point just inside it)."""
        if self._entrance is None:
            w = self.layout.store.width_m
            return (w / 2, -2.5), (w / 2, 1.0)
        poly = np.asarray(self._entrance.polygon)
        cx = float(poly[:, 0].mean())
        return (cx, float(poly[:, 1].min()) - 2.5), (cx, float(poly[:, 1].min()) + 1.5)

    def _street_ends(self) -> tuple[tuple[float, float], tuple[float, float]]:
        if self._street is None:
            w = self.layout.store.width_m
            return (-2.0, -2.5), (w + 2.0, -2.5)
        poly = np.asarray(self._street.polygon)
        y = float(poly[:, 1].mean())
        return (float(poly[:, 0].min()) + 0.1, y), (float(poly[:, 0].max()) - 0.1, y)

    def _new_person(self, kind: PersonKind, wps: list[tuple[float, float, float]]) -> _Person:
        arr = np.asarray(wps, dtype=np.float64)
        p = _Person(
            pid=self._next_pid,
            kind=kind,
            t=arr[:, 0],
            x=arr[:, 1],
            y=arr[:, 2],
            tx_offset=float(self.rng.normal(0.0, self.settings.tx_spread_db)),
            advert_phase=float(self.rng.uniform(0, self.settings.advert_interval_s)),
            rotation_phase=float(self.rng.uniform(0, self.settings.mac_rotation_s)),
            next_advert=float(arr[0, 0] + self.rng.uniform(0, self.settings.advert_interval_s)),
        )
        self._next_pid += 1
        self.people[p.pid] = p
        return p

    def _walk(self, wps: list[tuple[float, float, float]], to: tuple[float, float], speed: float) -> None:
        t, x, y = wps[-1]
        d = math.hypot(to[0] - x, to[1] - y)
        wps.append((t + d / speed, to[0], to[1]))

    def _dwell(self, wps: list[tuple[float, float, float]], seconds: float) -> None:
        t, x, y = wps[-1]
        wps.append((t + seconds, x, y))

    def _spawn_shopper(self, t: float) -> None:
        a, b = self._street_ends()
        if self.rng.random() < 0.5:
            a, b = b, a
        speed = float(self.rng.uniform(0.8, 1.4))
        wps: list[tuple[float, float, float]] = [(t, a[0], a[1])]
        outside, inside = self._door()
        if self.rng.random() < self.settings.passer_by_fraction:
            kind: PersonKind = "passer-by"
            if self.rng.random() < 0.25 and self._entrance is not None:  # glances in at the door
                self._walk(wps, outside, speed)
                self._walk(wps, (inside[0], inside[1] - 0.5), speed)
                self._dwell(wps, float(self.rng.uniform(3, 15)))
                self._walk(wps, outside, speed)
            self._walk(wps, b, speed)
        else:
            kind = "visitor"
            self._walk(wps, outside, speed)
            self._walk(wps, inside, speed)
            k = int(self.rng.integers(1, 5))
            for zi in self.rng.choice(len(self._targets), size=min(k, len(self._targets)), replace=False):
                zone = self._targets[int(zi)]
                for _ in range(int(self.rng.integers(1, 3))):
                    self._walk(wps, self._point_in(zone), speed)
                    self._dwell(wps, float(np.clip(self.rng.lognormal(math.log(45), 0.6), 10, 600)))
            if self._checkout is not None and self.rng.random() < 0.7:
                self._walk(wps, self._point_in(self._checkout), speed)
                self._dwell(wps, float(self.rng.uniform(30, 150)))
            self._walk(wps, inside, speed)
            self._walk(wps, outside, speed)
            self._walk(wps, b, speed)
        p = self._new_person(kind, wps)
        self.visits.append(self._truth(p))

    def _spawn_beacon(self) -> None:
        zone = self._targets[self._next_pid % len(self._targets)] if self._targets else None
        if zone is not None:
            x, y = self._point_in(zone)
        else:
            x, y = self.layout.store.width_m / 2, self.layout.store.depth_m / 2
        self._new_person("beacon", [(self.now, x, y), (math.inf, x, y)])

    def _truth(self, p: _Person) -> VisitTruth:
        ts = np.arange(p.t[0], p.t[-1], 0.5)
        xs, ys = p.position(ts)
        xy = np.column_stack([xs, ys])
        labels = np.full(len(ts), -1)
        for i, z in enumerate(self._zones):
            inside = points_in_polygon(xy, z.polygon) & (labels < 0)
            labels[inside] = i
        dwell: dict[str, float] = {}
        path: list[str] = []
        for i, z in enumerate(self._zones):
            n = int(np.count_nonzero(labels == i))
            if n:
                dwell[z.id] = n * 0.5
        prev = -2
        for lab in labels:
            if lab != prev and lab >= 0:
                path.append(self._zones[int(lab)].id)
            prev = lab
        in_store = [i for i, z in enumerate(self._zones) if z.kind != "outside"]
        mask = np.isin(labels, in_store)
        if p.kind == "visitor" and mask.any():
            start, end = float(ts[mask][0]), float(ts[mask][-1])
        else:
            start, end = float(p.t[0]), float(p.t[-1])
        return VisitTruth(p.pid, p.kind, start, end, dwell, path)

    # -- observation ----------------------------------------------------------------------------

    def device_id(self, p: _Person, t: float) -> str:
        if p.kind == "beacon":
            mac = _mac_from(self.settings.seed, p.pid, 0, static=True)
        else:
            epoch = int((t + p.rotation_phase) // self.settings.mac_rotation_s)
            mac = _mac_from(self.settings.seed, p.pid, epoch, static=False)
        self.mac_owner.setdefault(mac, p.pid)
        return mac

    def truth_position(self, pid: int, t: float) -> tuple[float, float] | None:
        p = self.people.get(pid)
        if p is None or not (p.t[0] <= t <= p.t[-1]):
            return None
        x, y = p.position(np.array([t]))
        return float(x[0]), float(y[0])

    def active_people(self, t: float) -> list[int]:
        return [p.pid for p in self.people.values() if p.t[0] <= t <= p.t[-1]]

    def step(self, t_end: float) -> list[Observation]:
        """Advance the world to ``t_end``; return every advert heard in (now, t_end], by time."""
        if t_end <= self.now:
            return []
        while self._next_arrival <= t_end:
            self._spawn_shopper(self._next_arrival)
            self._next_arrival += self._interarrival()
        interval = self.settings.advert_interval_s
        times: list[NDArray[np.float64]] = []
        owners: list[_Person] = []
        for p in list(self.people.values()):
            if p.next_advert > t_end:
                if p.t_end < self.now:
                    del self.people[p.pid]
                continue
            k = int((t_end - p.next_advert) // interval) + 1
            ts = np.asarray(p.next_advert + interval * np.arange(k), dtype=np.float64)
            ts = ts[ts <= p.t_end]
            p.next_advert += interval * k
            if len(ts):
                times.append(ts)
                owners.extend([p] * len(ts))
        self.now = t_end
        if not times:
            return []
        ts_all = np.concatenate(times)
        # BLE advDelay: 0-10 ms pseudo-random jitter per advert
        ts_all = ts_all + self.rng.uniform(0.0, 0.01, size=len(ts_all))
        xs = np.empty(len(ts_all))
        ys = np.empty(len(ts_all))
        tx = np.empty(len(ts_all))
        pid = np.empty(len(ts_all), dtype=np.int64)
        off = 0
        for arr in times:
            p = owners[off]
            xs[off : off + len(arr)], ys[off : off + len(arr)] = p.position(arr)
            tx[off : off + len(arr)] = p.tx_offset
            pid[off : off + len(arr)] = p.pid
            off += len(arr)
        rssi, heard = self.channel.sample(pid, ts_all, np.column_stack([xs, ys]), tx)
        order = np.argsort(ts_all, kind="stable")
        out: list[Observation] = []
        sids = self.sensor_ids
        link = self.settings.link_rotations
        for a in order:
            row = heard[a]
            if not row.any():
                continue
            p = owners[a]
            t = float(ts_all[a])
            dev = self.device_id(p, t)
            lk = f"sim-{self.settings.seed}-{p.pid}" if (link and p.kind != "beacon") else None
            r1m = -59.0 if p.kind == "beacon" else None
            for j in np.flatnonzero(row):
                out.append(Observation(t, sids[j], dev, float(rssi[a, j]), "sim", r1m, lk))
        return out

    def rssi(self, xy: NDArray[np.float64], tx_offset: NDArray[np.float64]) -> NDArray[np.float64]:
        """Noisy integer RSSI (dBm) at every sensor for an (N, 2) array of positions (misses not applied)."""
        keys = np.full(xy.shape[0], -1, dtype=np.int64)
        r, _ = self.channel.sample(keys, np.zeros(xy.shape[0]), xy, tx_offset)
        self.channel.forget([-1])
        return r
