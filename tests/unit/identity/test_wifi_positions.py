"""Several receivers: a burst's levels at the nodes followed across bursts (wifi_links.Tracker.pos_score)."""

from __future__ import annotations

import collections
import dataclasses
import random
from pathlib import Path

import pytest

from gateway.identity.wifi_chains import ChainGrouper
from gateway.identity.wifi_groups import GroupParams, WifiGrouper
from gateway.identity.wifi_links import LinkParams, Mac, TimingTable, Track, Tracker
from gateway.layout import load_layout
from gateway.parsers.wifi_probe import ProbeDecoder
from gateway.sim.wifi_population import generate_store
from gateway.sim.wifi_receivers import WifiReceivers

P = LinkParams()
FP = "aaaaaaaa11111111"
LAYOUT = load_layout(Path(__file__).resolve().parents[3] / "hardware" / "layouts" / "demo-store.toml")


def _burst(ts: float, levels: dict[str, float], frames: int = 3) -> Mac:
    m = Mac(0, f"m{ts}", FP, ts, 0, ts + 0.5, 2)
    for _ in range(frames):
        m.add_levels(levels)
    return m


def _score(gap: float, before: dict[str, float], after: dict[str, float]) -> float:
    tr = Tracker(P, TimingTable(P), min_p=0.5)
    track = Track("w1", _burst(0.0, before), None)
    track.learn_pos(track.tail)
    return tr.pos_score(track, _burst(gap, after))


HERE = {"n11": -55.0, "n12": -70.0, "n21": -72.0, "n22": -80.0}
THERE = {"n11": -82.0, "n12": -68.0, "n21": -85.0, "n22": -58.0}


def test_the_same_spot_soon_after_speaks_for_the_link_another_spot_against() -> None:
    assert _score(5.0, HERE, HERE) > 0.5
    assert _score(5.0, HERE, THERE) < -1.5
    # long after, the shopper may be anywhere: next to no evidence either way
    assert abs(_score(1200.0, HERE, THERE)) < 0.2
    assert abs(_score(1200.0, HERE, HERE)) < 0.5
    # the further a walk could have gone, the less a step says
    assert _score(5.0, HERE, THERE) < _score(30.0, HERE, THERE) < _score(120.0, HERE, THERE)


def test_no_nodes_no_evidence_and_a_node_that_stops_hearing_speaks_against_staying() -> None:
    assert _score(5.0, {}, HERE) == 0.0
    assert _score(5.0, HERE, {}) == 0.0
    # other nodes hear it now: it did not stay (a node misses a burst now and then: mild)
    assert _score(5.0, {"n11": -60.0}, {"n34": -60.0}) < -0.5
    assert _score(5.0, HERE, THERE | {"n99": -60.0}) < _score(5.0, HERE, THERE)


def test_levels_at_many_nodes_count_as_one_position() -> None:
    many_here = {f"x{i}": -60.0 - i for i in range(10)}
    many_there = {f"x{i}": -60.0 - i + (25.0 if i % 2 else -25.0) for i in range(10)}
    two = _score(5.0, dict(list(many_here.items())[:2]), dict(list(many_there.items())[:2]))
    ten = _score(5.0, many_here, many_there)
    assert ten == pytest.approx(two, rel=0.5)  # not five times the evidence


def _probes(crowd_frames: list, levels: bool) -> list[tuple[int, tuple, dict[str, int] | None]]:  # type: ignore[type-arg]
    dec = ProbeDecoder()
    out = []
    for f in crowd_frames:
        p = dec.decode(f.ts, 127, f.frame)
        if p is not None and f.captured:
            out.append((f.device, p, f.levels if levels else None))
    return out


def _groups(probes: list, online: bool) -> list[str]:  # type: ignore[type-arg]
    if online:
        g = WifiGrouper(GroupParams(max_delay_s=2.0))
        out = [""] * len(probes)
        for k, (_d, p, lv) in enumerate(probes):
            gid = g.offer(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, k, p.ssid, lv)
            if gid is not None:
                out[k] = gid
            for item, gid2 in g.ready:
                out[item] = gid2  # type: ignore[index]
            g.ready.clear()
        for item, gid2 in g.flush():
            out[item] = gid2  # type: ignore[index]
        return out
    c = ChainGrouper()
    for _d, p, lv in probes:
        c.add(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, p.ssid, lv)
    groups = c.solve()
    return [groups[p.mac] for _d, p, _lv in probes]


@pytest.mark.parametrize("online", [False, True])
def test_one_receiver_groups_exactly_as_without_receivers(online: bool) -> None:
    # today's stores: the capture radio alone - every frame's levels at nodes are empty
    crowd = generate_store(40, 1200.0, seed=5, receivers=WifiReceivers(LAYOUT, nodes=[]))
    assert all(f.levels == {} for f in crowd.frames)
    with_levels = _probes(crowd.frames, levels=True)
    assert _groups(with_levels, online) == _groups(_probes(crowd.frames, levels=False), online)
    # and the single-radio crowd: levels passed as None, or not at all
    probes = _probes(generate_store(40, 1200.0, seed=5).frames, levels=False)
    if online:
        g = WifiGrouper(GroupParams(max_delay_s=0.0))
        plain = [g.observe(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, p.ssid) for _d, p, _l in probes]
        g = WifiGrouper(GroupParams(max_delay_s=0.0))
        none = [
            g.observe(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, p.ssid, None) for _d, p, _l in probes
        ]
        assert plain == none
        return
    c1, c2 = ChainGrouper(), ChainGrouper()
    for _d, p, _l in probes:
        c1.add(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, p.ssid)
        c2.add(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, p.ssid, None)
    assert c1.solve() == c2.solve()


def _purity(devices: list[int], groups: list[str]) -> float:
    by: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for d, g in zip(devices, groups, strict=True):
        by[g][d] += 1
    return sum(c.most_common(1)[0][1] for c in by.values()) / len(devices)


@pytest.mark.parametrize("online", [False, True])
def test_nodes_tell_apart_look_alike_iphones_one_radio_cannot(online: bool) -> None:
    # four iPhones 13 (iOS 16: a new MAC per channel, the counter restarted, no directed probes) at
    # one level at the capture radio, each at its own spot in the store: only the nodes tell them apart
    crowd = generate_store(4, 1800.0, seed=9, models=["iphone-13"] * 4, levels_db=[-62.0], whole_run=True)
    spots = [
        {"n11": -52.0, "n12": -66.0, "n21": -68.0, "n22": -76.0},
        {"n13": -52.0, "n14": -66.0, "n23": -68.0, "n24": -76.0},
        {"n31": -52.0, "n32": -66.0, "n21": -68.0, "n22": -76.0},
        {"n33": -52.0, "n34": -66.0, "n23": -68.0, "n24": -76.0},
    ]
    rng = random.Random(3)
    frames = [
        dataclasses.replace(f, levels={r: round(v + rng.gauss(0.0, 4.0)) for r, v in spots[f.device].items()})
        for f in crowd.frames
    ]
    alone = _probes(frames, levels=False)
    nodes = _probes(frames, levels=True)
    devices = [d for d, _p, _l in alone]
    g_alone, g_nodes = _groups(alone, online), _groups(nodes, online)
    assert _purity(devices, g_nodes) >= _purity(devices, g_alone) + 0.02
    assert len(set(g_nodes)) <= 1.5 * len(set(g_alone))  # not by splitting everything
