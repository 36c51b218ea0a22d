"""Log-distance path-loss model and the normal-distribution helpers the estimator needs.

``rssi = p0[s] + tx_offset - 10 * n[s] * log10(d)`` with ``d`` the 3-D distance from the phone's plane
to sensor ``s`` (sensor ``z`` is its height above that plane, so a phone right under a ceiling node
is still ``z`` metres away - this caps the information a single close sensor gives).

numpy has no ``erf``; :func:`norm_cdf` / :func:`log_norm_cdf` use a rational approximation
(W. J. Cody-style, |error| < 1.2e-7) on large arrays and ``math.erfc`` on small ones, so the estimator
needs no SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.layout import Layout

F64 = NDArray[np.float64]
TEN_OVER_LN10 = 10.0 / np.log(10.0)
MIN_DISTANCE_M = 0.3
_SQRT2 = np.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
# up to this many values :func:`erfc` calls math.erfc per element (cheaper than ~25 numpy calls)
_SCALAR_MAX = 256


@dataclass(frozen=True)
class PathLossModel:
    """Per-sensor calibrated model: positions (S,2), heights (S,), p0 (S,) dBm at 1 m, exponents (S,)."""

    xy: F64
    z: F64
    p0: F64
    n: F64

    @classmethod
    def from_layout(cls, layout: Layout) -> PathLossModel:
        return cls(layout.sensor_xy(), layout.sensor_z(), layout.sensor_p0(), layout.sensor_n())

    @property
    def num_sensors(self) -> int:
        return int(self.xy.shape[0])

    def distance(self, pos: F64) -> F64:
        """3-D distances from positions ``(..., 2)`` to every sensor: ``(..., S)``."""
        dx = pos[..., None, 0] - self.xy[:, 0]
        dy = pos[..., None, 1] - self.xy[:, 1]
        return np.asarray(np.sqrt(dx * dx + dy * dy + self.z * self.z + MIN_DISTANCE_M**2))

    def mean_rssi(self, pos: F64, tx_offset: F64 | float = 0.0) -> F64:
        """Expected RSSI ``(..., S)`` at every sensor for transmitters at ``pos`` ``(..., 2)``."""
        d = self.distance(pos)
        off = np.asarray(tx_offset, dtype=np.float64)[..., None] if np.ndim(tx_offset) else tx_offset
        return np.asarray(self.p0 - TEN_OVER_LN10 * self.n * np.log(d) + off)

    def mean_and_gradient(self, pos: F64) -> tuple[F64, F64, F64]:
        """Expected RSSI (tx offset 0) and its x / y derivatives, each ``(D, S)`` for ``pos`` ``(D, 2)``."""
        dx = pos[:, None, 0] - self.xy[:, 0]
        dy = pos[:, None, 1] - self.xy[:, 1]
        d2 = dx * dx + dy * dy + self.z * self.z + MIN_DISTANCE_M**2
        mu = self.p0 - (0.5 * TEN_OVER_LN10) * self.n * np.log(d2)
        k = -TEN_OVER_LN10 * self.n / d2
        return mu, k * dx, k * dy


def erfc(x: F64, exact: bool | None = None) -> F64:
    """Complementary error function, |relative error| < 1.2e-7 (Numerical Recipes ``erfcc``).

    Small arrays (the censored cells of one refinement: tens of values) go through ``math.erfc``
    element by element - exact, and a few microseconds instead of the ~25 numpy calls of the rational
    approximation, which is kept for the large arrays of the grid search (in place, same values).
    ``exact``: ``math.erfc`` (True) or the approximation (False) whatever the size (the grid search
    evaluates a chunk's cells in cache-sized blocks and must take the path the whole chunk would have:
    ``gateway/localization/_gridsearch.py``).
    """
    if (x.size <= _SCALAR_MAX) if exact is None else exact:
        return np.fromiter(map(math.erfc, x.ravel().tolist()), np.float64, x.size).reshape(x.shape)
    z = np.abs(x)
    t = 0.5 * z
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * 0.17087277
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        poly += c
        poly *= t
    poly -= 1.26551223
    poly -= np.multiply(z, z, out=z)
    np.exp(poly, out=poly)
    poly *= t
    return np.subtract(2.0, poly, out=poly, where=x < 0)


def norm_cdf(z: F64, exact: bool | None = None) -> F64:
    return np.asarray(0.5 * erfc(-z / _SQRT2, exact))


def norm_pdf(z: F64) -> F64:
    return np.asarray(np.exp(-0.5 * z * z - _LOG_SQRT_2PI))


def log_norm_cdf(z: F64, exact: bool | None = None) -> F64:
    """``log Phi(z)``, accurate in the far left tail (asymptotic series below z = -6)."""
    zc = np.maximum(z, -6.0)
    direct = np.log(np.maximum(norm_cdf(zc, exact), 1e-300))
    zz = np.minimum(z, -6.0)
    tail = -0.5 * zz * zz - _LOG_SQRT_2PI - np.log(-zz) + np.log1p(-1.0 / (zz * zz) + 3.0 / zz**4)
    return np.asarray(np.where(z < -6.0, tail, direct))


def mills_ratio(z: F64) -> F64:
    """``phi(z) / Phi(z)``, stable for very negative z (tends to -z)."""
    return np.asarray(np.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_norm_cdf(z)))
