"""A seeded store simulator: shoppers, passers-by, staff, fixed devices, each with real BLE adverts.

Pure: time is an argument (``step(t_end)``), randomness comes from one seeded generator, and the
output depends only on the seed, the layout, the settings and the step schedule (the simulated
source always steps in fixed ``tick_s`` increments, so a run is reproducible end to end).

Radio model: :mod:`gateway.sim.radio` (per advert, per sensor)::

    rssi = p0_sensor + tx_offset_device - 10 * n_sensor * log10(d_3d) + shadow(t) + N(0, shadowing) - fade
    heard iff rssi >= detection_floor and the report is not lost (packet_loss); rounded to 1 dBm.

``shadow(t)`` persists per phone and sensor (``persistent_shadowing_db``, ``shadowing_tau_s``; 0 by
default); ``fade`` is a body/shelf shadow of ``fade_db`` with probability ``fade_probability``. Ground truth
(positions, visits, dwell per zone) is kept for tests and benchmarks.

Devices (``gateway.sim.devices`` says what each kind advertises and where the figures come from):
every person carries zero or more devices, each with its own advert interval, transmit power and
address-rotation schedule (about every ``mac_rotation_s`` with ``rotation_jitter_s`` of jitter).
Every observation carries the advert's parsed content (``Observation.adv``) as a real radio's would.
Rotations are **unlinkable** unless ``link_rotations`` (the stand-in for a consented phone's IRK):
then a phone's addresses carry ``link = sim-<seed>-<person>``. Staff (``staff``) carry a phone and
every second one a handheld scanner, and walk the store all day; fixed devices (``fixtures``: a
TV, a printer, an Apple TV whose address rotates) and ``beacons`` never move. Passers-by walk the
pavement (the ``outside`` zone) at a random distance from the shop front; everyone on the street
starts and ends ``street_beyond_m`` past the ends of the layout's pavement (0 by default: they
appear and vanish at its ends, still loud at the nodes - docs/ble.md, "Kiosk door", round 9).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gateway.config import SimulatorSettings
from gateway.layout import Layout, Zone, points_in_polygon
from gateway.models import AdvertInfo, Observation
from gateway.sim.devices import SimDevice, advert_info, draw_shopper_devices, draw_staff_devices, fixture_devices
from gateway.sim.radio import Channel, RadioEnv

PersonKind = Literal["visitor", "passer-by", "staff", "fixture"]


@dataclass(slots=True)
class VisitTruth:
    person: int
    kind: PersonKind
    start: float  # first time inside the store (visitor) / on the street (passer-by)
    end: float
    dwell_by_zone: dict[str, float] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # true kinds of the devices carried


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
    devices: list[_Emitter] = field(default_factory=list)

    @property
    def t_end(self) -> float:
        return float(self.t[-1])

    def position(self, ts: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return np.interp(ts, self.t, self.x), np.interp(ts, self.t, self.y)


@dataclass(slots=True)
class _Emitter:
    """One advertising device of a person: its schedule, power and address epochs."""

    person: _Person
    dev: SimDevice
    tx_offset: float
    next_advert: float
    bounds: list[float]  # address rotation instants so far (epoch k starts at bounds[k-1])
    period: float
    jitter: float
    rng_seed: int

    def epoch(self, t: float) -> int:
        if not self.dev.rotates:
            return 0
        b = self.bounds
        while b[-1] <= t:
            # deterministic jitter per (device, rotation) so a replay reproduces the schedule
            h = hashlib.sha256(f"{self.rng_seed}:{self.dev.did}:{len(b)}".encode()).digest()
            u = int.from_bytes(h[:4], "big") / 2**32 * 2.0 - 1.0
            b.append(b[-1] + max(60.0, self.period + u * self.jitter))
        return bisect.bisect_right(b, t)


def _mac_from(seed: int, pid: int, epoch: int, static: bool) -> str:
    b = bytearray(hashlib.sha256(f"{seed}:{pid}:{epoch}".encode()).digest()[:6])
    # BLE: top two bits 0b01 = resolvable private address (phones); 0b11 = random static (beacons)
    b[0] = (b[0] & 0x3F) | (0xC0 if static else 0x40)
    return ":".join(f"{x:02X}" for x in b)


STAFF_DAY_S = 14 * 3600.0


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
        # devices and schedules come from their own stream, so adding a device kind does not move
        # every shopper's path
        self.dev_rng = np.random.default_rng([settings.seed, 0xDE71CE])
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
        self._targets = [z for z in layout.zones if z.kind in ("aisle", "other", "front")] or [
            z for z in layout.zones if z.kind not in ("outside", "entrance")
        ]
        self._checkout = self._zone_of_kind("checkout")
        self.people: dict[int, _Person] = {}
        self.visits: list[VisitTruth] = []
        self.residents: list[VisitTruth] = []  # staff and fixed devices (truth)
        self.mac_owner: dict[str, int] = {}  # raw address -> person
        self.mac_device: dict[str, int] = {}  # raw address -> device id
        self.device_kind: dict[int, str] = {}  # device id -> true kind
        self.device_owner: dict[int, int] = {}  # device id -> person
        self._person_kind: dict[int, PersonKind] = {}
        self._emitters: list[_Emitter] = []
        self._next_pid = 0
        self._next_did = 0
        self._next_arrival = self.now + self._interarrival()
        for i in range(settings.staff):
            self._spawn_staff(i)
        for d in fixture_devices(settings.fixtures, settings.beacons):
            self._spawn_fixture(d)

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

    def _street_ends(self, lane: float | None = None) -> tuple[tuple[float, float], tuple[float, float]]:
        """Both ends of a walk along the pavement; ``lane`` in [0, 1]: 0 at the shop front."""
        if self._street is None:
            w = self.layout.store.width_m
            return (-2.0 - self.settings.street_beyond_m, -2.5), (w + 2.0 + self.settings.street_beyond_m, -2.5)
        poly = np.asarray(self._street.polygon)
        y = float(poly[:, 1].mean())
        if lane is not None:
            lo, hi = float(poly[:, 1].min()), float(poly[:, 1].max())
            front = hi if abs(hi) <= abs(lo) else lo  # the side that touches the store (y = 0)
            back = lo if front == hi else hi
            y = front + (back - front) * (0.15 + 0.7 * lane)
        # the street goes on past the drawn pavement: a phone keeps advertising as its owner walks on
        # (vanishing at the polygon's end, 1-3 m from a node and ~25 dB above the floor, left fixes
        # of people who had just walked out of the kiosk's door in the door until their last advert)
        beyond = self.settings.street_beyond_m
        return (float(poly[:, 0].min()) + 0.1 - beyond, y), (float(poly[:, 0].max()) - 0.1 + beyond, y)

    def _new_person(self, kind: PersonKind, wps: list[tuple[float, float, float]], devices: list[SimDevice]) -> _Person:
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
        self._person_kind[p.pid] = kind
        s = self.settings
        r = self.dev_rng
        for d in devices:
            d.did = self._next_did
            d.seed = s.seed
            self._next_did += 1
            interval = d.interval_s * s.advert_interval_s
            period = s.mac_rotation_s * float(r.uniform(0.93, 1.07))
            em = _Emitter(
                person=p,
                dev=d,
                tx_offset=d.tx_db + float(r.normal(0.0, s.tx_spread_db)),
                next_advert=float(arr[0, 0] + r.uniform(0, interval)),
                bounds=[float(arr[0, 0] + r.uniform(0, period))],
                period=period,
                jitter=s.rotation_jitter_s,
                rng_seed=s.seed,
            )
            em.dev.interval_s = interval
            p.devices.append(em)
            self._emitters.append(em)
            self.device_kind[d.did] = d.truth_kind
            self.device_owner[d.did] = p.pid
        return p

    def _walk(self, wps: list[tuple[float, float, float]], to: tuple[float, float], speed: float) -> None:
        t, x, y = wps[-1]
        d = math.hypot(to[0] - x, to[1] - y)
        wps.append((t + d / speed, to[0], to[1]))

    def _dwell(self, wps: list[tuple[float, float, float]], seconds: float) -> None:
        t, x, y = wps[-1]
        wps.append((t + seconds, x, y))

    def _spawn_shopper(self, t: float) -> None:
        speed = float(self.rng.uniform(0.8, 1.4))
        flip = self.rng.random() < 0.5
        passer = self.rng.random() < self.settings.passer_by_fraction
        lane = float(self.rng.random()) if passer else None
        a, b = self._street_ends(lane)
        if flip:
            a, b = b, a
        wps: list[tuple[float, float, float]] = [(t, a[0], a[1])]
        outside, inside = self._door()
        if passer:
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
        devices = draw_shopper_devices(
            self.dev_rng, ios_share=self.settings.ios_share, android_silent=self.settings.android_silent
        )
        p = self._new_person(kind, wps, devices)
        truth = self._truth(p)
        truth.devices = [d.truth_kind for d in devices]
        self.visits.append(truth)

    def _spawn_staff(self, index: int) -> None:
        zones = [*self._targets, *([self._checkout] if self._checkout is not None else [])]
        x, y = self._point_in(zones[index % len(zones)])
        wps: list[tuple[float, float, float]] = [(self.now, x, y)]
        while wps[-1][0] < self.now + STAFF_DAY_S:
            self._walk(wps, self._point_in(zones[int(self.rng.integers(len(zones)))]), 1.0)
            self._dwell(wps, float(np.clip(self.rng.lognormal(math.log(240), 0.7), 30, 1800)))
        devices = draw_staff_devices(self.dev_rng, index)
        p = self._new_person("staff", wps, devices)
        self.residents.append(VisitTruth(p.pid, "staff", self.now, p.t_end, devices=[d.truth_kind for d in devices]))

    def _spawn_fixture(self, dev: SimDevice) -> None:
        zone = self._targets[self._next_pid % len(self._targets)] if self._targets else None
        if zone is not None:
            x, y = self._point_in(zone)
        else:
            x, y = self.layout.store.width_m / 2, self.layout.store.depth_m / 2
        p = self._new_person("fixture", [(self.now, x, y), (math.inf, x, y)], [dev])
        self.residents.append(VisitTruth(p.pid, "fixture", self.now, math.inf, devices=[dev.truth_kind]))

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

    def _address(self, em: _Emitter, t: float) -> tuple[str, int]:
        epoch = em.epoch(t)
        mac = _mac_from(self.settings.seed, 1_000_000 + em.dev.did, epoch, static=not em.dev.rotates)
        if mac not in self.mac_owner:
            self.mac_owner[mac] = em.person.pid
            self.mac_device[mac] = em.dev.did
        return mac, epoch

    def visits_kind(self, did: int) -> PersonKind | None:
        """Who carries device ``did``: visitor, passer-by, staff or fixture (truth)."""
        p = self.device_owner.get(did)
        if p is None:
            return None
        return self._person_kind.get(p)

    def device_id(self, p: _Person, t: float) -> str:
        """The address of ``p``'s first device at ``t`` (its phone, when it carries one)."""
        if not p.devices:
            return _mac_from(self.settings.seed, p.pid, 0, static=True)
        return self._address(p.devices[0], t)[0]

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
        times: list[NDArray[np.float64]] = []
        owners: list[_Emitter] = []
        keep: list[_Emitter] = []
        for em in self._emitters:
            p = em.person
            interval = em.dev.interval_s
            if em.next_advert > t_end:
                if p.t_end >= self.now:
                    keep.append(em)
                continue
            keep.append(em)
            k = int((t_end - em.next_advert) // interval) + 1
            ts = np.asarray(em.next_advert + interval * np.arange(k), dtype=np.float64)
            ts = ts[ts <= p.t_end]
            em.next_advert += interval * k
            if len(ts):
                times.append(ts)
                owners.extend([em] * len(ts))
        self._emitters = keep
        gone = [pid for pid, p in self.people.items() if p.t_end < self.now]
        for pid in gone:
            del self.people[pid]
        self.channel.forget(gone)
        self.now = t_end
        if not times:
            return []
        ts_all = np.concatenate(times)
        # BLE advDelay: 0-10 ms pseudo-random jitter per advert
        ts_all = np.minimum(ts_all + self.rng.uniform(0.0, 0.01, size=len(ts_all)), t_end)
        xs = np.empty(len(ts_all))
        ys = np.empty(len(ts_all))
        tx = np.empty(len(ts_all))
        keys = np.empty(len(ts_all), dtype=np.int64)  # the radio channel's shadowing is per person
        off = 0
        for arr in times:
            em = owners[off]
            xs[off : off + len(arr)], ys[off : off + len(arr)] = em.person.position(arr)
            tx[off : off + len(arr)] = em.person.tx_offset + em.tx_offset
            keys[off : off + len(arr)] = em.person.pid
            off += len(arr)
        rssi, heard = self.channel.sample(keys, ts_all, np.column_stack([xs, ys]), tx)
        order = np.argsort(ts_all, kind="stable")
        out: list[Observation] = []
        sids = self.sensor_ids
        link = self.settings.link_rotations
        seed = self.settings.seed
        for a in order:
            row = heard[a]
            if not row.any():
                continue
            em = owners[a]
            p = em.person
            t = float(ts_all[a])
            dev, epoch = self._address(em, t)
            info: AdvertInfo = advert_info(em.dev.payload(epoch, t), em.dev.rotates)
            lk = None
            if link and em.dev.rotates:  # the phone keeps the historical id; other devices their own
                lk = f"sim-{seed}-{p.pid}" if em is p.devices[0] else f"sim-{seed}-{p.pid}-d{em.dev.did}"
            r1m = -59.0 if em.dev.model == "ibeacon" else None
            for j in np.flatnonzero(row):
                out.append(Observation(t, sids[j], dev, float(rssi[a, j]), "sim", r1m, lk, info))
        return out

    def rssi(self, xy: NDArray[np.float64], tx_offset: NDArray[np.float64]) -> NDArray[np.float64]:
        """Noisy integer RSSI (dBm) at every sensor for an (N, 2) array of positions (misses not applied)."""
        keys = np.full(xy.shape[0], -1, dtype=np.int64)
        r, _ = self.channel.sample(keys, np.zeros(xy.shape[0]), xy, tx_offset)
        self.channel.forget([-1])
        return r
