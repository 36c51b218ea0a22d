"""The online grouping's own mechanics: held bursts and their bounds, decisions at once, memory over
a day. (What it groups, beside the whole-capture grouping: test_wifi_chains.py.)"""

from __future__ import annotations

import random

import pytest

from gateway.identity.wifi_groups import GroupParams, WifiGrouper

FP = "aaaaaaaa11111111"


def _burst(g: WifiGrouper, mac: str, seq: int, ts: float, rssi: float = -60.0, n: int = 3) -> list[str | None]:
    out = []
    for i in range(n):
        out.append(g.offer(mac, True, FP, (seq + i) % 4096, ts + 0.02 * i, rssi, (mac, i)))
    return out


def test_a_new_burst_is_held_until_it_is_over_then_released_in_order() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=30.0, decide_after_s=1.0))
    first = _burst(g, "02:00:00:00:00:01", 100, 1000.0)
    assert first == [None, None, None]  # held: its track is decided once the burst is over
    assert g.holding and g.held_macs == 1 and g.held_frames == 3
    g.poll(1000.5)
    assert g.ready == []  # still within decide_after_s of its last frame
    g.poll(1001.1)
    assert [item for item, _gid in g.ready] == [("02:00:00:00:00:01", i) for i in range(3)]
    gid = g.ready[0][1]
    assert {x[1] for x in g.ready} == {gid}
    g.ready.clear()
    assert not g.holding
    # frames of a decided MAC are never held
    assert g.offer("02:00:00:00:00:01", True, FP, 103, 1001.2, -60.0, "late") == gid


def test_the_next_burst_of_a_family_decides_the_held_ones_first() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=30.0, decide_after_s=5.0))
    _burst(g, "02:00:00:00:00:01", 100, 1000.0)
    assert g.holding
    _burst(g, "02:00:00:00:00:02", 900, 1003.0)  # a repeated scan 3 s later: may continue it
    assert [x[0][0] for x in g.ready] == ["02:00:00:00:00:01"] * 3
    g.ready.clear()
    g.poll(1100.0)
    gids = {gid for _item, gid in g.ready}
    assert len(gids) == 1


def test_hold_is_bounded_by_max_delay_even_when_the_burst_goes_on() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=2.0, decide_after_s=1.0))
    t = 1000.0
    released_at = None
    for k in range(40):  # one MAC speaking every 0.5 s: its burst never looks over
        g.offer("02:00:00:00:00:09", True, FP, k, t, -60.0, k)
        if g.ready and released_at is None:
            released_at = t
        t += 0.5
    assert released_at is not None and released_at <= 1000.0 + 2.0 + 0.5


def test_observe_and_a_zero_hold_decide_at_once() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=0.0))
    assert all(x is not None for x in _burst(g, "02:00:00:00:00:01", 1, 10.0))
    assert not g.holding and g.held_frames == 0
    h = WifiGrouper()  # holds by default, but observe() never does
    assert h.observe("02:00:00:00:00:01", True, FP, 1, 10.0, -60.0) is not None
    assert not h.holding


def test_public_macs_are_never_held() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=30.0))
    assert g.offer("00:11:22:33:44:55", False, FP, 1, 10.0, -60.0, "x") is not None


def test_flush_releases_everything_held() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=30.0))
    for k in range(5):
        _burst(g, f"02:00:00:00:00:{k:02x}", 100 * k, 1000.0 + 20.0 * k)
    out = g.flush()
    assert len(out) >= 3 and not g.holding
    assert g.ready == []


def test_a_clock_stepping_back_does_not_hold_frames_forever() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=30.0))
    _burst(g, "02:00:00:00:00:01", 100, 5000.0)
    assert g.holding
    g.offer("00:11:22:33:44:55", False, "bbbbbbbb11111111", 1, 100.0, -60.0, "concatenated")
    assert not g.holding and len(g.ready) == 3


def test_a_stalled_clock_decides_held_bursts_after_max_held_behind_frames() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=30.0, max_held_behind=50))
    _burst(g, "02:00:00:00:00:01", 100, 5000.0)
    for k in range(60):  # timeless records (pcapng simple packet blocks): the clock never moves
        g.offer("00:11:22:33:44:55", False, "bbbbbbbb11111111", k, 5000.0, -60.0, k)
    assert not g.holding


def test_memory_stays_bounded_over_a_day_of_rotating_phones() -> None:
    """A day of a busy store (a new MAC every burst): MACs and tracks stay bounded, not growing
    with the day (MACs quiet for forget_s and tracks silent for max_gap_s are dropped)."""
    g = WifiGrouper(GroupParams(max_delay_s=0.0))
    rng = random.Random(5)
    sizes = []
    t = 0.0
    fams = [f"{k:08x}{k:08x}" for k in range(12)]
    for hour in range(24):
        for _ in range(1200):  # a burst every 3 s across the store
            t += 3.0
            mac = f"02:{rng.getrandbits(40):010x}"
            fp = rng.choice(fams)
            for i in range(2):
                g.observe(mac, True, fp, rng.randrange(4096), t + 0.01 * i, rng.uniform(-90, -50))
        sizes.append((len(g._macs), len(g._tracker)))
        if hour == 2:
            early = sizes[-1]
    assert max(s[0] for s in sizes) <= 1.2 * early[0] + 100, sizes
    assert max(s[1] for s in sizes) <= 1.2 * early[1] + 100, sizes


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="min_p"):
        GroupParams(min_p=0.0)
    with pytest.raises(ValueError, match="max_delay_s"):
        GroupParams(max_delay_s=-1.0)


def test_a_phone_alternating_two_element_sets_at_two_levels_stays_one_device() -> None:
    """A real iPhone 12 sends its usual elements and now and then another set (a shorter extended
    capabilities element), the latter heard 16 dB weaker: a burst of the other set must not become
    the level, nor the element set, its next usual burst is judged against (it split the phone into
    four groups online)."""
    rng = random.Random(4)
    g = WifiGrouper(GroupParams(max_delay_s=2.0))
    usual, other = "aaaaaaaa11111111", "aaaaaaaa22222222"  # one family (rates, HT), two sets
    groups: dict[str, set[str]] = {usual: set(), other: set()}
    t = 1000.0
    for k in range(40):
        fp, level = (other, -78.0) if k % 5 == 4 else (usual, -62.0)
        mac = f"02:00:00:00:{k // 256:02x}:{k % 256:02x}"
        for i in range(3):
            gid = g.offer(mac, True, fp, rng.randrange(4096), t + 0.02 * i, level + rng.gauss(0, 2), (k, i))
            if gid is not None:
                groups[fp].add(gid)
        for _item, gid in g.ready:
            groups[fp].add(gid)
        g.ready.clear()
        t += rng.uniform(25.0, 130.0)
    for _item, gid in g.flush():
        groups[usual].add(gid)
    assert len(groups[usual]) == 1, groups
