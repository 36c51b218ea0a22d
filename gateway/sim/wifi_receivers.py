"""Wi-Fi heard at several receivers of a store: the capture radio and sensor nodes (simulation).

:func:`gateway.sim.wifi_population.generate_store` with ``receivers=WifiReceivers(layout)`` places
every device of the crowd on a walk through the store and hears each probe request it sends at
every receiver - the gateway's capture radio (``capture``, hopping 1/6/11 as the relay does) and
the layout's other sensors as nodes reporting the probe requests they hear (an ESP32 in
promiscuous mode, the common design; each hops 1/6/11 too, with its own phase). A frame heard by
several receivers is one frame with a level per receiver (``CrowdFrame.levels``); frames only
nodes heard carry no capture level.

Nothing new is invented for the radio (docs/wifi.md, "Several receivers", has the table):

* **walks**: the BLE store simulator's (:class:`gateway.sim.store.StoreSimulator`): shoppers walk
  from the street through the entrance to 1-4 zones, dwell, go to the checkout, leave; passers-by
  walk the pavement, some glance in. The Wi-Fi crowd keeps its own arrivals and stays (docs/wifi.md);
  a walk is fitted to a stay by stretching (or shrinking) its dwells, so walking speed stays the
  walker's (0.8-1.4 m/s);
* **radio**: :mod:`gateway.sim.radio`'s model, a store drawn from :class:`~gateway.sim.radio.RadioRanges`
  (path-loss exponent 1.5-3.5, residual 4-8 dB of which 15-45 % persists, per-receiver gain
  offsets sd 2.5 dB, packet loss 3-30 % per receiver, floors -100..-92 dBm - an ESP32's 802.11b
  1 Mbps sensitivity is -98 dBm, Espressif's ESP32 datasheet, table "Wi-Fi radio"); phones'
  transmit offsets sd 4 dB;
* **level at 1 m**: the layout's ``rssi_at_1m`` is a phone's BLE advert; a probe request is sent
  ``p0_offset_db`` (15 dB) louder: phones send 2.4 GHz Wi-Fi at 15-20 dBm and BLE adverts at
  0-5 dBm (assumed from the typical figures of phones' RF exposure test reports, not measured here).

Stateless but for the seeded generators; per device one call (its events in time order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gateway.config import SimulatorSettings
from gateway.layout import Layout
from gateway.sim.radio import Channel, RadioEnv, RadioRanges
from gateway.sim.store import StoreSimulator

__all__ = ["Walk", "WifiReceivers"]

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Walk:
    """A device's way through the store: waypoints (times in the crowd's seconds from its start)."""

    t: F64
    x: F64
    y: F64

    def at(self, ts: F64) -> F64:
        return np.column_stack([np.interp(ts, self.t, self.x), np.interp(ts, self.t, self.y)])


def fit_walk(t: F64, x: F64, y: F64, start: float, stay: float) -> Walk:
    """The walk ``(t, x, y)`` moved to ``start`` and fitted to ``stay`` seconds: its dwells (legs
    that do not move) stretched or shrunk so that walking legs keep their speed; a walk with no
    dwell to stretch, or longer than the stay, is scaled whole."""
    dt = np.diff(t)
    still = (np.diff(x) == 0.0) & (np.diff(y) == 0.0)
    moving = float(dt[~still].sum())
    dwell = float(dt[still].sum())
    if dwell > 0.0 and moving < stay:
        dt = np.where(still, dt * ((stay - moving) / dwell), dt)
    elif moving + dwell > 0.0:
        dt = dt * (stay / (moving + dwell))
    return Walk(start + np.r_[0.0, np.cumsum(dt)], x.copy(), y.copy())


@dataclass
class WifiReceivers:
    """The receivers of a store (see the module docstring). ``capture``: the layout sensor that is the
    gateway's capture radio; ``nodes``: the sensors reporting probe requests (default every other
    sensor of the layout; ``[]``: the capture radio alone)."""

    layout: Layout
    capture: str = "gw"
    nodes: list[str] | None = None
    channels: tuple[int, ...] = (1, 6, 11)
    dwell_s: float = 0.25
    p0_offset_db: float = 15.0
    ranges: RadioRanges = field(default_factory=RadioRanges)
    ids: list[str] = field(init=False)
    _walkers: dict[bool, StoreSimulator] = field(init=False, default_factory=dict)
    _channel: Channel | None = field(init=False, default=None)
    _phase: F64 = field(init=False)
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        known = [s.id for s in self.layout.sensors]
        if self.capture not in known:
            raise ValueError(f"capture: sensor {self.capture!r} is not in the layout")
        nodes = [s for s in known if s != self.capture] if self.nodes is None else list(self.nodes)
        for s in nodes:
            if s not in known or s == self.capture:
                raise ValueError(f"nodes: {s!r} is not another sensor of the layout")
        self.ids = [self.capture, *nodes]

    def start(self, seed: int) -> None:
        """Draw the store's radio and the walkers for a crowd of seed ``seed``."""
        rng = self._rng = np.random.default_rng([seed, 0x51F1])
        known = [s.id for s in self.layout.sensors]
        sel = [known.index(i) for i in self.ids]
        p0 = self.layout.sensor_p0()[sel] + self.p0_offset_db
        env = RadioEnv.draw(rng, p0, self.layout.sensor_z()[sel], self.ranges)
        self._channel = Channel(env, self.layout.sensor_xy()[sel], rng)
        # each receiver's hopping phase: the capture radio's as the single-radio crowd's (0)
        self._phase = np.r_[0.0, rng.uniform(0.0, len(self.channels) * self.dwell_s, len(self.ids) - 1)]
        for passer in (False, True):
            s = SimulatorSettings(
                seed=seed + (7919 if passer else 0), staff=0, fixtures=0, beacons=0,
                passer_by_fraction=1.0 if passer else 0.0,
            )  # fmt: skip
            self._walkers[passer] = StoreSimulator(self.layout, s, start_ts=0.0)

    def walk(self, arrive: float, leave: float, passer_by: bool) -> Walk:
        """A walk for a device in the store from ``arrive`` to ``leave`` (the store simulator's)."""
        sim = self._walkers[passer_by]
        before = set(sim.people)
        sim._spawn_shopper(0.0)
        pid = max(set(sim.people) - before)
        p = sim.people.pop(pid)
        return fit_walk(p.t - p.t[0], p.x, p.y, arrive, max(1.0, leave - arrive))

    def hear(
        self, key: int, walk: Walk, ts: F64, channel: NDArray[np.int64], offset: F64
    ) -> tuple[F64, NDArray[np.bool_]]:
        """RSSI ``(E, R)`` and heard mask of a device's events (time order) at every receiver:
        heard when the receiver sits on the event's channel then, above its floor, not lost."""
        assert self._channel is not None, "start() first"
        keys = np.full(ts.size, key, dtype=np.int64)
        rssi, heard = self._channel.sample(keys, ts, walk.at(ts), offset)
        self._channel.forget([key])
        k = len(self.channels)
        slot = np.floor((ts[:, None] + self._phase[None, :]) / self.dwell_s).astype(np.int64) % k
        tuned = np.asarray(self.channels, dtype=np.int64)[slot]
        return rssi, heard & (tuned == channel[:, None])
