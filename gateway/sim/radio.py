"""Radio model of a simulated store, and a family of stores drawn from documented ranges.

One store's radio (:class:`RadioEnv`), per advert and sensor ``s``::

    rssi = p0_s + tx_offset - 10 n_s log10(d_3d) + shadow_s(t) + white - fade      (rounded to 1 dBm)
    heard iff rssi >= floor_s and the report is not lost (probability packet_loss_s)

* ``d_3d``: horizontal distance and the height of the sensor above the phone (``dz_s``);
* ``p0_s``: the layout's ``rssi_at_1m`` plus a per-receiver gain offset (boards and antennas differ);
  ``n_s``: the store's exponent plus a small per-sensor spread;
* ``shadow_s(t)``: shadowing that persists - an AR(1) process per (phone, sensor) with sd
  ``shadow_db`` and time constant ``shadow_tau_s`` (a body turning, a shelf between phone and sensor);
  ``white``: advert-to-advert noise (multipath, channel hopping), sd ``white_db``;
* ``fade``: rare one-sided deep fades (``fade_db`` with probability ``fade_probability``);
* misses come from two causes: the floor (weak signal) and packet loss that has nothing to do with
  signal strength (scan duty cycle, channel collisions, a busy node).

:class:`RadioRanges` holds the ranges a store is drawn from, with where each comes from
(docs/localization.md §2 has the table and the measurements on the real tracks):

* path-loss exponent 1.5-3.5: indoor 2.4 GHz in-building measurements span ~1.6 (corridors, line of
  sight) to ~3.3 (cluttered, obstructed) (Rappaport, *Wireless Communications*, 2nd ed., table 4.2;
  Seidel & Rappaport 1992); the real tracks fit 1.5 (open office, receivers above the desks);
* residual 4-8 dB (white and shadowing together): log-normal shadowing of 3-8 dB indoors (Rappaport
  ibid.), BLE fingerprinting studies report 4-6 dB advert-to-advert (Faragher & Harle, IEEE JSAC 33(11),
  2015); the real tracks: 5.3-5.5 dB, of which ~30 % persists over seconds (autocorrelation 0.3 at one
  advert, 0.2 at 1-2 s, 0.1 at 4-5 s, 0.05 at 9 s);
* receiver heights 1.0-3.5 m above the floor (shelf to ceiling), phones at 0.9-1.5 m (hand, pocket);
  the real tracks' receivers are at 1.22 m and 2.30 m;
* gain offsets sd 2.5 dB: the fitted ``rssi_at_1m`` of the real tracks' 12 receivers spread -56.8 to
  -66.2 dBm (sd 2.3 dB) for one beacon;
* packet loss 3-30 %: the real tracks miss 15 % of reports at every signal level (-85 to -60 dBm
  expected: heard 80-86 %); ESP32 / BlueZ scanning with a duty cycle below 100 % loses more;
* floors -100 to -92 dBm: receivers' sensitivity (the real tracks' weakest reports: -97 to -100 dBm).

Stateless numpy except :class:`Channel`, which keeps each (transmitter, sensor) shadowing state so
successive calls continue the same processes. Randomness from the caller's generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from gateway.config import SimulatorSettings
from gateway.layout import Layout, Sensor, Store

F64 = NDArray[np.float64]
B = NDArray[np.bool_]


@dataclass(frozen=True)
class RadioRanges:
    """Ranges a simulated store's radio is drawn from (uniform unless said otherwise)."""

    path_loss_exponent: tuple[float, float] = (1.5, 3.5)
    exponent_spread: float = 0.15  # sd of a sensor's exponent around the store's
    residual_db: tuple[float, float] = (4.0, 8.0)  # sqrt(white^2 + shadow^2)
    shadow_share: tuple[float, float] = (0.15, 0.45)  # share of the residual variance that persists
    shadow_tau_s: tuple[float, float] = (2.0, 30.0)
    gain_offset_sd_db: float = 2.5
    sensor_height_m: tuple[float, float] = (1.0, 3.5)
    phone_height_m: float = 1.2
    packet_loss: tuple[float, float] = (0.03, 0.30)
    floor_dbm: tuple[float, float] = (-100.0, -92.0)
    fade_probability: tuple[float, float] = (0.0, 0.05)
    fade_db: float = 12.0
    tx_spread_db: float = 4.0  # phones' transmit offsets, sd (dB)


@dataclass(frozen=True)
class RadioEnv:
    """One store's radio, as drawn (all per-sensor arrays ``(S,)``)."""

    p0: F64
    n: F64
    dz: F64  # height of each sensor above the phones' plane (m)
    white_db: float
    shadow_db: float
    shadow_tau_s: float
    packet_loss: F64
    floor_dbm: F64
    fade_probability: float = 0.0
    fade_db: float = 12.0
    tx_spread_db: float = 4.0

    @property
    def residual_db(self) -> float:
        return math.hypot(self.white_db, self.shadow_db)

    @classmethod
    def from_settings(cls, p0: F64, n: F64, z: F64, s: SimulatorSettings) -> RadioEnv:
        """The store simulator's radio (``[simulator]`` settings) for sensors with these values."""
        k = p0.size
        return cls(
            p0=p0,
            n=n,
            dz=z,
            white_db=s.shadowing_db,
            shadow_db=s.persistent_shadowing_db,
            shadow_tau_s=s.shadowing_tau_s,
            packet_loss=np.full(k, s.packet_loss),
            floor_dbm=np.full(k, s.detection_floor_dbm),
            fade_probability=s.fade_probability,
            fade_db=s.fade_db,
            tx_spread_db=s.tx_spread_db,
        )

    @classmethod
    def ideal(cls, layout: Layout, sigma_db: float, floor_dbm: float = -95.0, packet_loss: float = 0.0) -> RadioEnv:
        """The localizer's own model: the layout's values, white noise only."""
        s = len(layout.sensors)
        return cls(
            p0=layout.sensor_p0(),
            n=layout.sensor_n(),
            dz=layout.sensor_z(),
            white_db=sigma_db,
            shadow_db=0.0,
            shadow_tau_s=1.0,
            packet_loss=np.full(s, packet_loss),
            floor_dbm=np.full(s, floor_dbm),
        )

    @classmethod
    def draw(
        cls, rng: np.random.Generator, nominal_p0: F64, heights: F64, ranges: RadioRanges | None = None
    ) -> RadioEnv:
        """A store's radio: ``nominal_p0`` / ``heights`` per sensor (``heights`` above the floor)."""
        r = ranges or RadioRanges()
        s = nominal_p0.size
        n_store = rng.uniform(*r.path_loss_exponent)
        n = np.clip(n_store + r.exponent_spread * rng.standard_normal(s), 1.2, 4.0)
        resid = rng.uniform(*r.residual_db)
        share = rng.uniform(*r.shadow_share)
        return cls(
            p0=nominal_p0 + r.gain_offset_sd_db * rng.standard_normal(s),
            n=n,
            dz=np.abs(heights - r.phone_height_m),
            white_db=resid * math.sqrt(1.0 - share),
            shadow_db=resid * math.sqrt(share),
            shadow_tau_s=rng.uniform(*r.shadow_tau_s),
            packet_loss=rng.uniform(*r.packet_loss, s),
            floor_dbm=rng.uniform(*r.floor_dbm, s),
            fade_probability=rng.uniform(*r.fade_probability),
            fade_db=r.fade_db,
            tx_spread_db=r.tx_spread_db,
        )

    def mean(self, xy: F64, sensor_xy: F64, tx_offset: F64 | float = 0.0) -> F64:
        """Expected RSSI ``(N, S)`` for transmitters at ``xy`` ``(N, 2)``."""
        dx = xy[:, None, 0] - sensor_xy[None, :, 0]
        dy = xy[:, None, 1] - sensor_xy[None, :, 1]
        d = np.sqrt(dx * dx + dy * dy + self.dz * self.dz)
        off = np.asarray(tx_offset, dtype=np.float64).reshape(-1, 1) if np.ndim(tx_offset) else tx_offset
        return np.asarray(self.p0 - 10.0 * self.n * np.log10(np.maximum(d, 0.1)) + off)


@dataclass
class Channel:
    """A store's radio in use: draws RSSI and misses, continuing each (transmitter, sensor) shadowing."""

    env: RadioEnv
    sensor_xy: F64
    rng: np.random.Generator
    _state: dict[int, tuple[float, F64]] = field(default_factory=dict)

    def sample(self, keys: NDArray[np.int64], t: F64, xy: F64, tx_offset: F64) -> tuple[F64, B]:
        """RSSI ``(N, S)`` (integer dBm) and the heard mask for adverts by transmitters ``keys`` at ``t``.

        Adverts of one transmitter must come in time order across calls (the shadowing is a process
        in time); within a call any order is fine.
        """
        env = self.env
        rng = self.rng
        n, s = xy.shape[0], self.sensor_xy.shape[0]
        mu = env.mean(xy, self.sensor_xy, tx_offset)
        shadow = np.zeros((n, s))
        if env.shadow_db > 0 and n:
            order = np.lexsort((t, keys))
            ks, tt = keys[order], t[order]
            first = np.r_[True, ks[1:] != ks[:-1]]
            start = np.flatnonzero(first)
            group = np.cumsum(first) - 1
            rank = np.arange(n) - start[group]
            # the state each group continues from (a stationary draw for a new transmitter)
            prev_t = np.empty(start.size)
            prev_b = np.empty((start.size, s))
            for gi, row in enumerate(start.tolist()):
                st = self._state.get(int(ks[row]))
                if st is None:
                    prev_t[gi] = -np.inf
                    prev_b[gi] = env.shadow_db * rng.standard_normal(s)
                else:
                    prev_t[gi], prev_b[gi] = st
            for step in range(int(rank.max()) + 1):
                rows = np.flatnonzero(rank == step)
                g = group[rows]
                a = np.exp(-np.maximum(tt[rows] - prev_t[g], 0.0) / env.shadow_tau_s)[:, None]
                b = a * prev_b[g] + np.sqrt(1.0 - a * a) * env.shadow_db * rng.standard_normal((rows.size, s))
                shadow[order[rows]] = b
                prev_t[g], prev_b[g] = tt[rows], b
            for gi, row in enumerate(start.tolist()):
                self._state[int(ks[row])] = (float(prev_t[gi]), prev_b[gi].copy())
        rssi = mu + shadow + env.white_db * rng.standard_normal((n, s))
        if env.fade_probability > 0:
            rssi -= env.fade_db * (rng.random((n, s)) < env.fade_probability)
        rssi = np.round(rssi)
        heard = (rssi >= env.floor_dbm) & (rng.random((n, s)) >= env.packet_loss)
        return rssi, heard

    def forget(self, keys: Sequence[int]) -> None:
        for k in keys:
            self._state.pop(int(k), None)


# -- a family of stores ------------------------------------------------------------------------

LAYOUT_KINDS = ("grid", "perimeter", "rows", "scattered")


@dataclass(frozen=True)
class SimStore:
    """A drawn store: its true radio, the layout a technician would write (nominal radio values)."""

    name: str
    layout: Layout  # positions and heights as installed; rssi_at_1m / exponent nominal (-59 dBm, 2.0)
    env: RadioEnv
    advert_rate_hz: float

    def true_layout(self) -> Layout:
        """The layout with the true per-sensor values (what a perfect calibration would write)."""
        sensors = [
            s.model_copy(update={"rssi_at_1m": float(self.env.p0[i]), "path_loss_exponent": float(self.env.n[i])})
            for i, s in enumerate(self.layout.sensors)
        ]
        return self.layout.model_copy(update={"sensors": sensors})


def sensor_positions(rng: np.random.Generator, kind: str, width: float, depth: float, count: int) -> F64:
    """``count`` sensor positions of one layout style inside a ``width`` x ``depth`` store."""
    m = 1.0
    if kind == "grid":
        cols = max(2, round(math.sqrt(count * width / depth)))
        rows = max(2, math.ceil(count / cols))
        xs = np.linspace(width / (2 * cols), width - width / (2 * cols), cols)
        ys = np.linspace(depth / (2 * rows), depth - depth / (2 * rows), rows)
        pts = np.array([(x, y) for y in ys for x in xs])[:count]
    elif kind == "perimeter":
        per = 2 * (width + depth - 4 * m)
        u = (np.arange(count) + rng.uniform(0, 1)) / count * per
        pts = np.array([_on_perimeter(v, width, depth, m) for v in u])
    elif kind == "rows":
        top = count // 2
        xs1 = np.linspace(m, width - m, top)
        xs2 = np.linspace(m, width - m, count - top)
        pts = np.concatenate([np.column_stack([xs1, np.full(top, depth / 3)]),
                              np.column_stack([xs2, np.full(count - top, 2 * depth / 3)])])  # fmt: skip
    elif kind == "scattered":
        pts = np.column_stack([rng.uniform(m, width - m, count), rng.uniform(m, depth - m, count)])
    else:
        raise ValueError(f"kind: unknown layout style {kind!r} (one of {', '.join(LAYOUT_KINDS)})")
    return np.asarray(pts, dtype=np.float64)


def _on_perimeter(u: float, w: float, d: float, m: float) -> tuple[float, float]:
    a, b = w - 2 * m, d - 2 * m
    if u < a:
        return m + u, m
    u -= a
    if u < b:
        return w - m, m + u
    u -= b
    if u < a:
        return w - m - u, d - m
    return m, d - m - (u - a)


def draw_store(
    rng: np.random.Generator,
    name: str,
    *,
    width: float | None = None,
    depth: float | None = None,
    sensors: int | None = None,
    kind: str | None = None,
    advert_rate_hz: float | None = None,
    ranges: RadioRanges | None = None,
) -> SimStore:
    """One store of the family: size 8-50 m, 6-16 sensors, a layout style, its radio, an advert rate."""
    r = ranges or RadioRanges()
    w = width if width is not None else float(rng.uniform(8.0, 50.0))
    d = depth if depth is not None else float(np.clip(w * rng.uniform(0.5, 1.0), 8.0, 40.0))
    k = sensors if sensors is not None else int(rng.integers(6, 17))
    style = kind if kind is not None else str(rng.choice(LAYOUT_KINDS))
    xy = sensor_positions(rng, style, w, d, k)
    heights = rng.uniform(*r.sensor_height_m, k)
    env = RadioEnv.draw(rng, np.full(k, -59.0), heights, r)
    layout = Layout(
        store=Store(id=name, width_m=round(w, 2), depth_m=round(d, 2)),
        sensors=[
            Sensor(id=f"s{i:02d}", x=round(float(x), 2), y=round(float(y), 2), z=round(float(env.dz[i]), 2))
            for i, (x, y) in enumerate(xy)
        ],
    )
    rate = advert_rate_hz if advert_rate_hz is not None else float(rng.choice([1.0, 2.0, 5.0, 10.0]))
    return SimStore(name, layout, env, rate)


def technician_walk(
    layout: Layout, spacing_m: float = 3.0, speed: float = 0.8, margin_m: float = 1.0, min_duration_s: float = 180.0
) -> F64:
    """A calibration walk: back and forth across the store every ``spacing_m`` (a lawnmower) at
    ``speed``, and back again the other way until it lasts ``min_duration_s``; returns waypoints
    ``(K, 3)`` of ``(t, x, y)`` from t = 0 (what a technician logs by walking between marks on the
    floor; docs/localization.md §7)."""
    w, d = layout.store.width_m, layout.store.depth_m
    ys = np.arange(margin_m, d - margin_m + 1e-9, spacing_m)
    pts: list[tuple[float, float]] = []
    for i, y in enumerate(ys):
        xs = (margin_m, w - margin_m) if i % 2 == 0 else (w - margin_m, margin_m)
        pts += [(xs[0], float(y)), (xs[1], float(y))]
    one = np.array(pts)
    xy = one
    while True:
        seg = np.hypot(*np.diff(xy, axis=0).T)
        if seg.sum() / speed >= min_duration_s:
            break
        xy = np.concatenate([xy, xy[::-1][1:]])
    t = np.r_[0.0, np.cumsum(seg) / speed]
    return np.column_stack([t, xy])


@dataclass(frozen=True)
class FamilySpec:
    name: str
    width: float
    depth: float
    sensors: int
    kind: str
    rate_hz: float
    exponent: tuple[float, float]
    residual_db: tuple[float, float]
    heights: tuple[float, float] = (1.0, 3.5)


# The bench's family: every size, sensor count, layout style and advert rate of the ranges,
# with the radio drawn from sub-ranges so the extremes (n 1.5 and 3.5, residual 4 and 8 dB) occur.
FAMILY: tuple[FamilySpec, ...] = (
    FamilySpec("kiosk", 10.0, 8.0, 6, "perimeter", 1.0, (3.0, 3.5), (7.0, 8.0)),
    FamilySpec("corner-shop", 18.0, 12.0, 8, "grid", 2.0, (2.5, 3.0), (5.5, 7.0)),
    FamilySpec("office-like", 19.4, 19.4, 12, "grid", 2.0, (1.5, 1.7), (5.0, 5.6), (1.2, 2.3)),
    FamilySpec("demo-like", 30.0, 20.0, 12, "grid", 10.0, (2.0, 2.5), (4.0, 5.5)),
    FamilySpec("two-aisles", 25.0, 16.0, 10, "rows", 5.0, (2.2, 2.8), (6.0, 7.5)),
    FamilySpec("scattered", 35.0, 25.0, 14, "scattered", 1.0, (1.8, 2.4), (4.5, 6.0)),
    FamilySpec("supermarket", 50.0, 40.0, 16, "grid", 10.0, (2.8, 3.5), (6.5, 8.0)),
    FamilySpec("hall", 45.0, 30.0, 16, "perimeter", 5.0, (1.5, 2.0), (4.0, 5.0)),
)


def family_store(spec: FamilySpec, seed: int = 0) -> SimStore:
    """The store of ``spec``, its radio drawn (seeded) from the spec's sub-ranges of :class:`RadioRanges`."""
    rng = np.random.default_rng([seed, sum(spec.name.encode())])
    ranges = RadioRanges(path_loss_exponent=spec.exponent, residual_db=spec.residual_db, sensor_height_m=spec.heights)
    return draw_store(
        rng,
        spec.name,
        width=spec.width,
        depth=spec.depth,
        sensors=spec.sensors,
        kind=spec.kind,
        advert_rate_hz=spec.rate_hz,
        ranges=ranges,
    )
