"""Radio properties of a store learnt from its own data, so one set of defaults holds across stores.

Three things the path-loss layout does not say and that differ between stores and sensors, each
estimated from observations alone (no ground truth), decayed so they follow changes:

* **Detection floor** per sensor: the configured ``detection_floor_dbm``, or lower once the sensor
  has reported weaker adverts (a report at -100 dBm proves the floor is at most -100). On the real
  tracks the configured -95 dBm was wrong: receivers reported down to -97 .. -100 dBm.
* **Packet loss** per sensor: the share of adverts a sensor misses although the device is heard
  strongly enough that the floor cannot explain it (expected RSSI > floor + 3 sigma at the current
  estimate). The real tracks miss 15 % of reports at every signal level; charging those misses to
  weak signal pushed fixes away from sensors that were close. Prior: ``packet_loss`` worth
  ``prior_adverts`` adverts.
* **Advert-to-advert noise** (sigma_w): from the differences between successive per-tick means of
  one device at one sensor (a few seconds apart): ``(r2 - r1) / sqrt(1/k1 + 1/k2) ~ N(0, sigma_w^2)``
  for a device that moved little in between; a robust scale (1.4826 x median |z|) ignores the deep
  fades and the walkers passing close to a sensor. Persistent shadowing does not show in these
  differences; the estimator adds ``shadowing_db`` for it (:meth:`RadioLearner.sigma`).

Pure: numpy state updated by the localizer's tick, time passed in.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
B = NDArray[np.bool_]

PAIR_MAX_GAP_S = 3.0
MIN_PAIRS = 200


def median(a: F64) -> float:
    """``float(np.median(a))`` of a non-empty 1-D float array, the same value (the same order
    statistics, the same mean of the middle two), without ``np.median``'s NaN check: it imports
    ``numpy.ma`` (0.4-0.5 MB of the daemon's RSS; issue 22) to ask whether its input is masked."""
    n = a.size
    h = n // 2
    part = np.partition(a, [h - 1, h, -1] if n % 2 == 0 else [h, -1])
    if np.isnan(part[-1]):  # NaNs sort last: np.median's answer is NaN then
        return math.nan
    return float(np.mean(part[h - 1 : h + 1])) if n % 2 == 0 else float(part[h])


class RadioLearner:
    def __init__(
        self,
        num_sensors: int,
        floor_dbm: float,
        packet_loss: float,
        sigma_db: float,
        shadowing_db: float,
        *,
        memory_s: float = 600.0,
        prior_adverts: float = 30.0,
        pairs: int = 4096,
    ) -> None:
        self.floor_dbm = floor_dbm
        self.prior_loss = packet_loss
        self.prior_sigma = sigma_db
        self.shadowing_db = shadowing_db
        self.memory_s = memory_s
        self.prior_adverts = prior_adverts
        self.lowest = np.full(num_sensors, np.inf)
        self.miss = np.zeros(num_sensors)
        self.adverts = np.zeros(num_sensors)
        self._t = -math.inf
        self._z = np.zeros(pairs)
        self._nz = 0
        self._sigma_w: float | None = None

    # -- estimates ----------------------------------------------------------------------------

    def floors(self) -> F64:
        return np.asarray(np.minimum(self.floor_dbm, self.lowest))

    def packet_loss(self) -> F64:
        w0 = self.prior_adverts
        eps = (self.miss + w0 * self.prior_loss) / (self.adverts + w0)
        return np.asarray(np.clip(eps, 0.005, 0.8))

    def sigma_white(self) -> float | None:
        """The advert-to-advert noise (dB), once enough pairs have been seen."""
        return self._sigma_w

    def sigma(self) -> float:
        """The noise sd the estimator should use: learnt white noise plus the persistent shadowing,
        or the configured ``sigma_db`` until there is enough data."""
        if self._sigma_w is None:
            return self.prior_sigma
        return math.hypot(self._sigma_w, self.shadowing_db)

    # -- updates ------------------------------------------------------------------------------

    def reports(self, sensor: NDArray[np.int64], rssi: F64) -> None:
        np.minimum.at(self.lowest, sensor, rssi)

    def misses(self, now: float, adverts: F64, missed: F64, strong: B) -> None:
        """One tick: ``adverts`` ``(D,)`` each device sent, ``missed`` ``(D, S)``; only cells ``strong``
        (expected well above the floor) count."""
        if math.isfinite(self._t):
            f = math.exp(-max(now - self._t, 0.0) / self.memory_s)
            self.miss *= f
            self.adverts *= f
        self._t = now
        self.adverts += (adverts[:, None] * strong).sum(axis=0)
        self.miss += (missed * strong).sum(axis=0)

    def pairs(self, z: F64) -> None:
        """Normalised differences of successive means (``N(0, sigma_w^2)`` each)."""
        if z.size == 0:
            return
        n = self._z.size
        z = z[-n:]
        idx = (self._nz + np.arange(z.size)) % n
        self._z[idx] = np.abs(z)
        self._nz += z.size
        if self._nz >= MIN_PAIRS:
            self._sigma_w = 1.4826 * median(self._z[: min(self._nz, n)])
