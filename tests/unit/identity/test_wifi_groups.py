"""Randomized-MAC grouping: rotations linked by fingerprint + sequence continuity + timing + RSSI."""

from __future__ import annotations

import collections

from gateway.identity.wifi_groups import GroupParams, WifiGrouper
from gateway.parsers.ieee80211 import parse_mgmt
from gateway.parsers.radiotap import parse_radiotap
from gateway.sim.wifi_crowd import generate_crowd

FP_A = "aaaaaaaaaaaaaaaa"
FP_B = "bbbbbbbbbbbbbbbb"


def _burst(g: WifiGrouper, mac: str, fp: str, seq: int, ts: float, rssi: float = -60.0, n: int = 2) -> list[str]:
    return [g.observe(mac, True, fp, (seq + i) % 4096, ts + 0.02 * i, rssi) for i in range(n)]


def test_rotation_with_continuing_sequence_is_linked() -> None:
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    a += _burst(g, "02:00:00:00:00:01", FP_A, 140, 30.0)
    b = _burst(g, "02:00:00:00:00:02", FP_A, 180, 60.0)
    assert set(a) == set(b) == {"w1"}
    assert g.linked == 1


def test_sequence_wraps_at_4096() -> None:
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 4080, 0.0)
    a += _burst(g, "02:00:00:00:00:01", FP_A, 4090, 20.0)  # 4090, 4091
    b = _burst(g, "02:00:00:00:00:02", FP_A, 20, 40.0)  # continues across the wrap
    assert a[0] == b[0]


def test_different_fingerprint_is_never_linked() -> None:
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    b = _burst(g, "02:00:00:00:00:02", FP_B, 103, 30.0)
    assert a[0] != b[0]


def test_sequence_jump_time_gap_and_rssi_jump_prevent_links() -> None:
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    assert _burst(g, "02:00:00:00:00:02", FP_A, 2000, 30.0)[0] != a[0]  # sequence does not continue
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    assert _burst(g, "02:00:00:00:00:02", FP_A, 105, 1000.0)[0] != a[0]  # silent far too long
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0, rssi=-45)
    assert _burst(g, "02:00:00:00:00:02", FP_A, 110, 30.0, rssi=-85)[0] != a[0]  # another place
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    assert g.observe("02:00:00:00:00:02", True, FP_A, 102, 0.1, -60) != a[0]  # within the same burst


def test_public_macs_are_their_own_group() -> None:
    g = WifiGrouper()
    a = g.observe("00:11:22:33:44:55", False, FP_A, 100, 0.0, -60)
    b = g.observe("00:11:22:33:44:66", False, FP_A, 101, 30.0, -60)
    c = g.observe("02:11:22:33:44:77", True, FP_A, 102, 60.0, -60)
    assert len({a, b, c}) == 3
    assert g.observe("00:11:22:33:44:55", False, FP_A, 300, 90.0, -60) == a


def test_the_best_fitting_continuation_wins() -> None:
    # both groups could continue (within bounds); the sequence advance expected after ~30 s
    # (default 1.5/s: ~45) fits b (+39) better than a (+59)
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    b = _burst(g, "02:00:00:00:00:02", FP_A, 120, 1.0)
    new = _burst(g, "02:00:00:00:00:03", FP_A, 160, 31.0)
    assert new[0] == b[0] != a[0]


def test_two_equally_good_continuations_leave_the_mac_unlinked() -> None:
    # two devices of one model went quiet together; the new MAC continues both sequences equally
    # well (same advance, same RSSI): guessing would merge two devices half of the time, so the
    # MAC starts a group of its own (a split costs one group, a wrong merge a whole group's purity)
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    b = _burst(g, "02:00:00:00:00:02", FP_A, 101, 0.5)  # too soon after a to be its rotation
    assert a[0] != b[0]
    new = _burst(g, "02:00:00:00:00:03", FP_A, 146, 30.0)
    assert new[0] not in (a[0], b[0])
    assert g.linked == 0


def test_a_clear_best_continuation_is_still_linked_beside_a_poor_one() -> None:
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    b = _burst(g, "02:00:00:00:00:02", FP_A, 130, 0.5, rssi=-68.0)
    new = _burst(g, "02:00:00:00:00:03", FP_A, 146, 30.0)  # fits a (+44 of ~45, same RSSI)
    assert new[0] == a[0] != b[0]


def test_wrong_link_is_undone_when_the_old_mac_speaks_again() -> None:
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    # another device of the same model appears with a sequence number that happens to continue
    x = _burst(g, "02:00:00:00:00:09", FP_A, 120, 30.0)
    assert x[0] == a[0]  # linked (wrongly, as we learn next)
    back = _burst(g, "02:00:00:00:00:01", FP_A, 125, 40.0)
    assert back[0] == a[0]  # the group goes back to its device
    again = _burst(g, "02:00:00:00:00:09", FP_A, 160, 60.0)
    assert again[0] != a[0]
    assert g.unlinked == 1


def test_state_is_bounded_by_expiry() -> None:
    g = WifiGrouper(GroupParams(forget_s=100.0))
    for i in range(50):
        g.observe(f"02:00:00:00:01:{i:02x}", True, f"{i:016x}", 100, float(i), -60)  # 50 models
    assert len(g) == 50
    g.observe("02:00:00:00:02:00", True, FP_B, 0, 500.0, -60)
    assert len(g) == 1


def test_group_ids_do_not_reveal_macs() -> None:
    g = WifiGrouper(prefix="x-")
    gid = g.observe("02:aa:bb:cc:dd:ee", True, FP_A, 1, 0.0, -60)
    assert gid == "x-1"


def test_generated_crowd_groups_close_to_device_count() -> None:
    """A small crowd end to end (parse -> group): group count and purity near the truth."""
    frames = generate_crowd(40, 1800.0, seed=4)
    g = WifiGrouper()
    by_group: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    macs = set()
    for f in frames:
        rt = parse_radiotap(f.frame)
        m = parse_mgmt(f.frame[rt.length :])
        assert m is not None
        if m.ds_channel is not None and m.ds_channel != rt.channel:
            continue  # off-channel leakage
        macs.add(m.src)
        by_group[g.observe(m.src, m.randomized, m.fingerprint, m.seq, f.ts, rt.signal_dbm)][f.device] += 1
    devices = {f.device for f in frames}
    purity = [c.most_common(1)[0][1] / sum(c.values()) for c in by_group.values()]
    assert len(macs) > 1.5 * len(devices)  # the crowd really rotates
    assert abs(len(by_group) - len(devices)) <= 0.25 * len(devices)
    assert sum(p >= 0.9 for p in purity) >= 0.85 * len(purity)


# --- held decisions (offer): a new MAC's link waits for the evidence -------------------------


def _offer_burst(
    g: WifiGrouper, out: list[tuple[str, str]], mac: str, seq: int, ts: float, rssi: float = -60.0, n: int = 2
) -> None:
    """Offer a burst; record (mac, group) of every frame as emitted (held ones when released)."""
    for i in range(n):
        gid = g.offer(mac, True, FP_A, (seq + i) % 4096, ts + 0.02 * i, rssi, mac)
        if gid is not None:
            out.append((mac, gid))
        for item, gid2 in g.ready:
            out.append((str(item), gid2))
        g.ready.clear()


def test_held_new_mac_is_not_linked_to_a_device_that_speaks_again() -> None:
    # a talks every 30 s; x (another phone of the model) shows up 20 s after a's burst with a
    # sequence number that happens to continue a's. Decided at once (observe), x's first frames
    # land in a's group; held, x's link waits until a's next burst is due - a speaks, so x is
    # not a's rotation and none of x's frames is ever labelled with a's group.
    old = WifiGrouper()
    a_old = _burst(old, "02:00:00:00:00:01", FP_A, 100, 0.0) + _burst(old, "02:00:00:00:00:01", FP_A, 130, 30.0)
    assert _burst(old, "02:00:00:00:00:09", FP_A, 160, 50.0)[0] == a_old[0]  # the old, immediate mistake

    g = WifiGrouper(GroupParams(max_delay_s=90.0))
    out: list[tuple[str, str]] = []
    _offer_burst(g, out, "02:00:00:00:00:01", 100, 0.0)
    _offer_burst(g, out, "02:00:00:00:00:01", 130, 30.0)
    _offer_burst(g, out, "02:00:00:00:00:09", 160, 50.0)
    assert len(out) == 4  # x's frames are held
    _offer_burst(g, out, "02:00:00:00:00:01", 165, 60.0)  # a is still there
    _offer_burst(g, out, "02:00:00:00:00:09", 190, 80.0)  # past x's hold: decided
    a_gid = out[0][1]
    assert {gid for mac, gid in out if mac.endswith("01")} == {a_gid}
    x_gids = {gid for mac, gid in out if mac.endswith("09")}
    assert len([m for m, _ in out if m.endswith("09")]) == 4
    assert a_gid not in x_gids
    assert g.linked == 0 and g.unlinked == 0  # never linked, so nothing to undo


def test_held_rotation_is_linked_with_all_its_frames_in_order_within_the_bound() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=90.0))
    out: list[tuple[str, str]] = []
    _offer_burst(g, out, "02:00:00:00:00:01", 100, 0.0)
    _offer_burst(g, out, "02:00:00:00:00:01", 130, 30.0)
    # rotation one interval later; a never speaks again
    _offer_burst(g, out, "02:00:00:00:00:02", 160, 60.0, n=3)
    assert len(out) == 4 and g.holding
    # a's next burst would have been due by 30 + 1.4 * 30 = 72 s: decided by then, not at 90 s
    _offer_burst(g, out, "02:00:00:00:00:07", 3000, 73.0, n=1)  # an unrelated frame moves time on
    assert not g.holding
    rotated = [gid for mac, gid in out if mac.endswith("02")]
    assert rotated == [out[0][1]] * 3
    assert g.linked == 1


def test_hold_is_bounded_and_flush_releases_everything() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=10.0))
    out: list[tuple[str, str]] = []
    _offer_burst(g, out, "02:00:00:00:00:01", 100, 0.0)  # one burst: no interval learned yet
    _offer_burst(g, out, "02:00:00:00:00:02", 130, 30.0)
    assert len(out) == 2
    g.poll(39.9)
    assert g.holding
    g.poll(40.0)  # first frame at 30 s + max_delay_s
    assert not g.holding and [gid for _, gid in g.ready] == [out[0][1]] * 2
    g.ready.clear()
    _offer_burst(g, out, "02:00:00:00:00:03", 190, 90.0)
    assert g.holding
    rest = g.flush()
    assert [item for item, _ in rest] == ["02:00:00:00:00:03"] * 2 and not g.holding


def test_new_mac_without_candidate_is_not_held() -> None:
    g = WifiGrouper(GroupParams(max_delay_s=90.0))
    assert g.offer("02:00:00:00:00:01", True, FP_A, 100, 0.0, -60.0, None) == "w1"
    assert g.offer("02:00:00:00:00:02", True, FP_B, 104, 30.0, -60.0, None) == "w2"  # other model
    assert g.offer("00:11:22:33:44:55", False, FP_A, 105, 30.0, -60.0, None) == "w3"  # public MAC
    assert not g.holding


def test_a_group_silent_past_the_gap_limit_is_a_candidate_again_once_it_speaks() -> None:
    # expiry takes groups silent longer than max_gap_s off the candidate lists (search cost);
    # when their MAC speaks again they must be back, or its next rotation would be missed
    g = WifiGrouper(GroupParams(max_gap_s=240.0))
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    g.expire(300.0)  # silent 300 s > max_gap_s: dormant, off the lists
    assert FP_A not in g._by_fp
    a += _burst(g, "02:00:00:00:00:01", FP_A, 140, 310.0)
    assert [x.gid for x in g._by_fp[FP_A]] == ["w1"]  # back: a new MAC's search sees it again
    g.expire(320.0)
    assert [x.gid for x in g._by_fp[FP_A]] == ["w1"] and set(a) == {"w1"}


def test_a_missed_burst_does_not_stretch_the_learned_interval() -> None:
    # bursts at 0, 30 and 90 s: the one at 60 s was not heard (the capture was on another
    # channel). The device's interval is still 30 s, not the 39 s an average of 30 and 60 gives,
    # so a rotation 14 s after its last burst (0.47 of 30 s; only 0.36 of 39 s) is allowed
    g = WifiGrouper()
    a = _burst(g, "02:00:00:00:00:01", FP_A, 100, 0.0)
    a += _burst(g, "02:00:00:00:00:01", FP_A, 130, 30.0)
    a += _burst(g, "02:00:00:00:00:01", FP_A, 190, 90.0)
    b = _burst(g, "02:00:00:00:00:02", FP_A, 205, 104.0)
    assert set(a) == set(b) == {"w1"}


def test_no_hold_when_the_old_mac_has_already_had_its_chance_to_speak() -> None:
    # a's interval is 30 s; the new MAC comes 50 s after a's last burst (> 1.4 x 30 s): a would
    # have spoken by now had it not rotated, so there is nothing to wait for - linked at once
    g = WifiGrouper(GroupParams(max_delay_s=30.0))
    out: list[tuple[str, str]] = []
    _offer_burst(g, out, "02:00:00:00:00:01", 100, 0.0)
    _offer_burst(g, out, "02:00:00:00:00:01", 130, 30.0)
    _offer_burst(g, out, "02:00:00:00:00:02", 180, 80.0)
    assert not g.holding and g.held_frames == 0
    assert [gid for _, gid in out] == [out[0][1]] * 6


def _held_b(g: WifiGrouper, fp: str) -> None:
    """Device A probes every 20 s; a new MAC B at t=75 (A silent only 15 s < 1.4 x 20 s) is held."""
    for k in range(4):
        for i in range(2):
            g.offer("02:00:00:00:00:01", True, fp, 100 + 30 * k + i, 20.0 * k + 0.02 * i, -60.0, ("a", k, i))
    assert g.offer("02:00:00:00:00:02", True, fp, 213, 75.0, -60.0, "b0") is None
    assert g.holding


def test_a_clock_stepping_back_does_not_hold_frames_forever() -> None:
    """A concatenated capture (time jumps back past the hold's start) decides held MACs at once:
    otherwise nothing ever becomes due and callers buffer every later frame until the end."""
    fp = "aaaaaaaaaaaaaaaa"
    g = WifiGrouper(GroupParams(max_delay_s=30.0), prefix="g")
    _held_b(g, fp)
    g.offer("00:11:22:33:44:55", False, "cccccccccccccccc", 1, 60.0, -50.0, "p0")  # back 15 s: within the hold
    assert g.holding
    g.offer("00:11:22:33:44:55", False, "cccccccccccccccc", 2, 10.0, -50.0, "p1")  # back 65 s: past it
    assert not g.holding
    assert [item for item, _gid in g.ready] == ["b0"]


def test_a_stalled_clock_decides_held_macs_after_max_held_behind_frames() -> None:
    """Timeless records (pcapng simple packet blocks reuse the last time) never make a hold due: the
    frame budget does."""
    fp = "aaaaaaaaaaaaaaaa"
    g = WifiGrouper(GroupParams(max_delay_s=30.0, max_held_behind=1000), prefix="g")
    _held_b(g, fp)
    for n in range(1000):
        g.offer("00:11:22:33:44:55", False, "cccccccccccccccc", n % 4096, 75.0, -50.0, n)
    assert g.holding and not g.ready
    g.offer("00:11:22:33:44:55", False, "cccccccccccccccc", 1000, 75.0, -50.0, 1000)
    assert not g.holding
    assert [item for item, _gid in g.ready] == ["b0"]


def test_a_group_decided_while_dormant_is_a_candidate_again() -> None:
    """A held MAC linked to a group that the periodic expiry marked dormant during the hold: the group
    must be back on its fingerprint's candidate list, or the device's next rotation is a split."""
    fp, pub = "aaaaaaaaaaaaaaaa", "cccccccccccccccc"
    g = WifiGrouper(GroupParams(max_delay_s=30.0), prefix="g")
    ga = g.offer("02:00:00:00:00:01", True, fp, 100, 0.0, -60.0, "a0")  # one burst: interval unknown
    g.offer("02:00:00:00:00:01", True, fp, 101, 0.02, -60.0, "a1")
    for i in range(100):  # a public MAC keeps time moving
        g.offer("00:11:22:33:44:55", False, pub, i, 1.0 + 2.3 * i, -50.0, None)
    assert g.offer("02:00:00:00:00:02", True, fp, 400, 232.0, -60.0, "x0") is None  # silence 232 s <= 240 s
    g.offer("02:00:00:00:00:02", True, fp, 401, 232.1, -60.0, "x1")
    g.offer("00:11:22:33:44:55", False, pub, 499, 255.0, -50.0, None)  # expiry pass: the group goes dormant
    g.offer("00:11:22:33:44:55", False, pub, 500, 262.5, -50.0, None)  # X due: linked to it
    assert ga is not None and {gid for _item, gid in g.flush()} == {ga}
    g.offer("02:00:00:00:00:03", True, fp, 431, 282.0, -60.0, "y0")  # X rotates, its sequence continues
    assert g.flush() == [("y0", ga)]
