from __future__ import annotations

import numpy as np

from gateway.layout import Layout
from gateway.localization.zones import ZoneTracker, signed_depth


def test_signed_depth() -> None:
    sq = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    d = signed_depth(np.array([[2.0, 2.0], [1.0, 3.5], [5.0, 2.0], [-1.0, -1.0]]), sq)
    assert np.allclose(d, [2.0, 0.5, -1.0, -np.sqrt(2)])


def test_boundary_jitter_does_not_flap(layout: Layout) -> None:
    # grocery (x 10..20) / electronics (x 20..30) share x = 20
    zt = ZoneTracker(layout, margin_m=0.75, confirm_fixes=3)
    slots = np.array([0])
    seen = [zt.update(slots, np.array([[15.0, 10.0]]))[0]]
    rng = np.random.default_rng(0)
    for k in range(40):
        x = 20.0 + (0.3 if k % 2 else -0.3) + rng.normal(0, 0.05)
        seen.append(zt.update(slots, np.array([[x, 10.0]]))[0])
    assert seen[0] == "grocery"
    assert set(seen) == {"grocery"}, seen


def test_deep_entry_is_immediate_and_shallow_needs_confirmation(layout: Layout) -> None:
    zt = ZoneTracker(layout, margin_m=0.75, confirm_fixes=3)
    a, b = np.array([0]), np.array([1])
    assert zt.update(a, np.array([[15.0, 10.0]])) == ["grocery"]
    assert zt.update(a, np.array([[25.0, 10.0]])) == ["electronics"]  # 5 m inside: at once
    assert zt.update(b, np.array([[15.0, 10.0]])) == ["grocery"]
    got = [zt.update(b, np.array([[20.3, 10.0]]))[0] for _ in range(3)]  # 0.3 m inside
    assert got == ["grocery", "grocery", "electronics"]


def test_outside_all_zones_and_batching(layout: Layout) -> None:
    zt = ZoneTracker(layout, margin_m=0.5, confirm_fixes=2, capacity=2)
    zt.ensure(10)
    slots = np.array([3, 7])
    out = zt.update(slots, np.array([[40.0, 40.0], [5.0, 10.0]]))
    assert out == [None, "produce"]
    zt.reset(np.array([7]))
    assert zt.update(np.array([7]), np.array([[25.0, 10.0]])) == ["electronics"]


def test_batched_depths_match_per_polygon(layout: Layout) -> None:
    zt = ZoneTracker(layout)
    rng = np.random.default_rng(1)
    xy = np.column_stack([rng.uniform(-3, 33, 500), rng.uniform(-6, 22, 500)])
    ref = np.stack([signed_depth(xy, p) for p in zt.polys], axis=1)
    assert np.allclose(zt.depths(xy), ref)


def test_walkable_region_projects_outside_points(layout: Layout) -> None:
    from gateway.localization.region import Walkable

    w = Walkable.from_layout(layout)
    pts = np.array([[5.0, 5.0], [-2.0, 6.0], [15.0, -3.0], [15.0, -8.0], [31.0, 25.0]])
    assert w.contains(pts).tolist() == [True, False, True, False, False]
    proj = w.project(pts)
    assert np.allclose(proj, [[5.0, 5.0], [0.0, 6.0], [15.0, -3.0], [15.0, -5.0], [30.0, 20.0]])
