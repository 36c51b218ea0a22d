"""Heading persistence in the tracker's walking model (``TrackerParams.along_scale`` / ``cross_scale``, on
by default).

A walker's acceleration noise is split along and across its velocity: a walker keeps its heading more
readily than its speed, so a straight leg's cross-track error shrinks (docs/localization.md §9.9).
"""

from __future__ import annotations

import numpy as np

from gateway.localization.tracker import ImmTracker, TrackerParams

OPEN = (-50.0, 50.0, -50.0, 50.0)


def test_noise_along_and_across_the_heading() -> None:
    tr = ImmTracker(TrackerParams(accel_sigma=0.2, along_scale=1.5, cross_scale=0.5, heading_min_speed=0.2))
    dt = np.array([1.0, 1.0, 1.0])
    vel = np.array([[1.0, 0.0], [0.0, -0.6], [0.05, 0.0]])
    q = tr._walk_noise(dt, vel)
    assert np.allclose(q, q.swapaxes(1, 2)) and (np.linalg.eigvalsh(q) > -1e-12).all()
    # velocity noise (dt = 1 s): 0.3² along the heading, 0.1² across it
    assert np.isclose(q[0, 2, 2], 0.09) and np.isclose(q[0, 3, 3], 0.01) and np.isclose(q[0, 2, 3], 0.0)
    assert np.isclose(q[1, 3, 3], 0.09) and np.isclose(q[1, 2, 2], 0.01)
    # position noise dt³/3 of the same
    assert np.isclose(q[0, 0, 0], 0.09 / 3.0) and np.isclose(q[0, 0, 2], 0.09 / 2.0)
    # a slow track (0.05 of 0.2 m/s): a quarter of the way from isotropic 0.2² to the split
    assert np.isclose(q[2, 2, 2], 0.75 * 0.04 + 0.25 * 0.09) and np.isclose(q[2, 3, 3], 0.75 * 0.04 + 0.25 * 0.01)


def test_equal_scales_are_the_isotropic_model() -> None:
    tr = ImmTracker(TrackerParams(accel_sigma=0.2, along_scale=1.0, cross_scale=1.0))
    dt = np.array([0.7, 1.3])
    f0, q0 = tr._models(dt)
    f1, q1 = tr._models(dt, np.array([[1.0, 0.0], [0.3, 0.4]]))
    assert np.array_equal(f0, f1) and np.array_equal(q0, q1)


def _straight_walk(params: TrackerParams, seed: int, sd: float = 1.5) -> float:
    """A walker going 0.8 m/s along a diagonal for 40 s, a position measurement (sd ``sd`` m) a second:
    mean cross-track error after 10 s."""
    tr = ImmTracker(params)
    s = np.array([0])
    rng = np.random.default_rng(seed)
    u = np.array([0.6, 0.8])
    tr.init(s, 0.0, np.array([[0.0, 0.0, 0.0]]), np.diag([1.0, 1.0, 1.0]))
    tr.mu[0] = [0.1, 0.9]
    h = np.diag([1 / sd**2, 1 / sd**2, 1.0])[None]
    cross = []
    for k in range(1, 41):
        t = float(k)
        truth = 0.8 * t * u
        z = truth + rng.normal(0.0, sd, 2)
        tr.predict(s, t)
        tr.update(s, t, h, (h[0] @ np.array([z[0], z[1], 0.0]))[None])
        m, _, _ = tr.estimate(s)
        if t > 10:
            d = m[0, :2] - truth
            cross.append(abs(d[0] * u[1] - d[1] * u[0]))
    return float(np.mean(cross))


def test_heading_persistence_keeps_a_straight_walker_on_its_line() -> None:
    iso = TrackerParams(bounds=OPEN, accel_sigma=0.2, along_scale=1.0, cross_scale=1.0)
    head = TrackerParams(bounds=OPEN, accel_sigma=0.2)  # the defaults: along 1.5, across 0.5
    e_iso = np.mean([_straight_walk(iso, seed) for seed in range(20)])
    e_head = np.mean([_straight_walk(head, seed) for seed in range(20)])
    assert e_head < 0.93 * e_iso  # 20 walks: 0.58 -> 0.51 m when written
