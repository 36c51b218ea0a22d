"""Live-map dots over the daemon: zones computed once per fix, a version that changes only when the dots do,
and a stream hub that neither rebuilds nor resends an unchanged map."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from gateway.layout import Layout, load_layout, points_in_polygon
from gateway.models import Fix
from gateway.runtime.status_provider import DaemonStatusProvider
from gateway.status.app import StreamHub
from gateway.status.provider import StatusProvider
from tests.unit.status.support import DEMO_LAYOUT


def fake_daemon(layout: Layout) -> Any:
    return SimpleNamespace(layout=layout, runtime=SimpleNamespace(last_fixes=None))


def test_dots_zone_from_tracker_or_polygon_first_match_wins() -> None:
    d = fake_daemon(load_layout(DEMO_LAYOUT))
    p = DaemonStatusProvider(d)
    d.runtime.last_fixes = [
        Fix(100.0, "a", 5.0, 10.0, 1.0),  # produce
        Fix(100.0, "b", 15.0, 2.0, 1.0),  # entrance
        Fix(100.0, "c", 10.0, 2.0, 1.0),  # on the service/entrance edge
        Fix(100.0, "d", 40.0, 40.0, 1.0),  # outside every zone
        Fix(100.0, "e", 5.0, 10.0, 1.0, zone="grocery"),  # the tracker's hysteresis zone is kept
    ]
    zones = {dot["subject"]: dot["zone"] for dot in p.devices()}
    assert zones["a"] == "produce" and zones["b"] == "entrance" and zones["d"] is None and zones["e"] == "grocery"
    assert zones["c"] in ("service", "entrance")


def test_batched_zones_equal_the_per_dot_first_match() -> None:
    layout = load_layout(DEMO_LAYOUT)
    d = fake_daemon(layout)
    p = DaemonStatusProvider(d)
    xs, ys = np.meshgrid(np.arange(-3.0, 33.0, 0.5), np.arange(-6.0, 23.0, 0.5))  # edges and corners included
    pts = zip(xs.ravel().tolist(), ys.ravel().tolist(), strict=True)
    d.runtime.last_fixes = [Fix(100.0, f"p{i}", x, y, 1.0) for i, (x, y) in enumerate(pts)]

    def first_zone(x: float, y: float) -> str | None:
        for z in layout.zones:
            if bool(points_in_polygon(np.array([[x, y]]), z.polygon)[0]):
                return z.id
        return None

    got = {dot["subject"]: dot["zone"] for dot in p.devices()}
    want = {f.device: first_zone(f.x, f.y) for f in d.runtime.last_fixes}
    assert got == want
    assert len(set(want.values())) == len(layout.zones) + 1  # every zone and "none" are exercised


def test_version_changes_only_with_the_dots() -> None:
    d = fake_daemon(load_layout(DEMO_LAYOUT))
    p = DaemonStatusProvider(d)
    v0 = p.devices_version()
    assert p.devices() == []
    d.runtime.last_fixes = [Fix(100.0, "a", 5.0, 10.0, 1.0)]
    v1 = p.devices_version()
    assert v1 != v0
    first = p.devices()
    assert p.devices_version() == v1 and p.devices() == first  # same fixes list: nothing new
    d.runtime.last_fixes = [Fix(101.0, "a", 6.0, 10.0, 1.0)]  # next tick, same device moved
    assert p.devices_version() != v1
    assert p.devices()[0]["x"] == 6.0
    v2 = p.devices_version()
    d.runtime.last_fixes = [Fix(110.0, "b", 15.0, 2.0, 1.0)]  # "a" ages out (TTL 5 s of event time)
    assert p.devices_version() != v2
    assert [dot["subject"] for dot in p.devices()] == ["b"]
    p.devices().clear()  # callers get a copy: the cache is not theirs to change
    assert len(p.devices()) == 1


class CountingProvider:
    def __init__(self, with_version: bool) -> None:
        self.calls = 0
        self.version = 0
        self.with_version = with_version

    def devices_version(self) -> int | None:
        return self.version if self.with_version else None

    def devices(self) -> list[dict[str, Any]]:
        self.calls += 1
        return [{"subject": "s", "x": float(self.version), "y": 0.0, "sigma_m": 1.0, "zone": None}]


def test_hub_skips_unchanged_maps_when_the_provider_has_a_version() -> None:
    prov = CountingProvider(with_version=True)
    hub = StreamHub(cast(StatusProvider, prov), devices_every_s=0.5, status_every_s=2.0)
    g1, body1 = hub.devices_event(0.0)
    g2, body2 = hub.devices_event(0.5)  # interval passed, dots unchanged: same payload, nothing resent
    assert (g2, body2) == (g1, body1) and prov.calls == 1
    prov.version = 1
    g3, _ = hub.devices_event(0.7)  # changed, but within the interval: still the cached one
    assert g3 == g1 and prov.calls == 1
    g4, body4 = hub.devices_event(1.0)
    assert g4 == g1 + 1 and body4 != body1 and b'"x":1.0' in body4 and prov.calls == 2


def test_hub_rebuilds_every_interval_without_a_version() -> None:
    prov = CountingProvider(with_version=False)
    hub = StreamHub(cast(StatusProvider, prov), devices_every_s=0.5, status_every_s=2.0)
    g1, _ = hub.devices_event(0.0)
    g2, _ = hub.devices_event(0.5)
    assert g2 == g1 + 1 and prov.calls == 2


class FakePresence:
    def __init__(self) -> None:
        self.optouts: list[tuple[str, float]] = []

    async def add_optout(self, identifier: str, now: float) -> int:
        self.optouts.append((identifier, now))
        return 1


async def test_an_opt_out_clears_the_dot_and_zone_caches_until_the_next_fixes() -> None:
    d = fake_daemon(load_layout(DEMO_LAYOUT))
    d.presence = FakePresence()
    d.event_clock = lambda: lambda: 123.0
    p = DaemonStatusProvider(d)
    d.runtime.last_fixes = [Fix(100.0, "a", 5.0, 10.0, 1.0), Fix(100.0, "b", 15.0, 10.0, 1.0)]
    assert {dot["subject"] for dot in p.devices()} == {"a", "b"}
    v = p.devices_version()
    r = await p.add_optout("02:00:00:00:00:01")
    assert r.ok and d.presence.optouts == [("02:00:00:00:00:01", 123.0)]  # in event time
    assert p.devices() == [] and p.devices_version() != v
    assert "a" not in p._zones and "a" not in p._latest
    d.runtime.last_fixes = [Fix(101.0, "b", 15.0, 10.0, 1.0)]  # the next tick, without the opted-out one
    assert {dot["subject"] for dot in p.devices()} == {"b"}
