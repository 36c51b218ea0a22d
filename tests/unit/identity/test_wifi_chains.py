"""Whole-capture grouping: MAC lifetimes linked into chains with a global, competition-aware choice."""

from __future__ import annotations

import collections

from gateway.identity.wifi_chains import ChainGrouper, ChainParams
from gateway.identity.wifi_groups import WifiGrouper
from gateway.parsers.wifi_probe import ProbeDecoder
from gateway.sim.wifi_crowd import generate_crowd

FP_A = "aaaaaaaaaaaaaaaa"
FP_B = "bbbbbbbbbbbbbbbb"


def _life(
    g: ChainGrouper,
    mac: str,
    seq: int,
    t0: float,
    bursts: int,
    *,
    fp: str = FP_A,
    every: float = 30.0,
    per_burst: int = 40,
    rssi: float = -60.0,
    randomized: bool = True,
) -> int:
    """``bursts`` probe bursts of 3 frames ``every`` s apart; returns the sequence number after them."""
    for k in range(bursts):
        for i in range(3):
            g.add(mac, randomized, fp, (seq + i) % 4096, t0 + k * every + 0.02 * i, rssi)
        seq = (seq + per_burst) % 4096
    return seq


def test_rotation_with_continuing_sequence_is_linked() -> None:
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 5)
    _life(g, "02:00:00:00:00:02", seq, 150.0, 5)
    groups = g.solve()
    assert groups["02:00:00:00:00:01"] == groups["02:00:00:00:00:02"] == "w1"
    assert g.linked == 1


def test_sequence_wraps_at_4096() -> None:
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 3950, 0.0, 4)
    assert seq < 3950  # wrapped inside the first life
    _life(g, "02:00:00:00:00:02", seq, 120.0, 4)
    groups = g.solve()
    assert groups["02:00:00:00:00:01"] == groups["02:00:00:00:00:02"]


def test_an_arrival_with_an_unrelated_sequence_number_starts_its_own_group() -> None:
    g = ChainGrouper()
    _life(g, "02:00:00:00:00:01", 100, 0.0, 5)
    _life(g, "02:00:00:00:00:02", 2900, 150.0, 5)  # ~2700 ahead after 30 s: no continuation
    groups = g.solve()
    assert groups["02:00:00:00:00:01"] != groups["02:00:00:00:00:02"]
    assert g.linked == 0


def test_other_fingerprint_public_mac_and_overlapping_lives_are_never_linked() -> None:
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 5)
    _life(g, "02:00:00:00:00:02", seq, 150.0, 3, fp=FP_B)  # other driver
    _life(g, "00:11:22:33:44:55", seq, 150.0, 3, randomized=False)  # public: its own group always
    # continues the sequence perfectly but starts while MAC 1 still speaks: two devices
    _life(g, "02:00:00:00:00:03", (100 + 3 * 40) % 4096, 100.0, 3)
    groups = g.solve()
    assert len(set(groups.values())) == 4
    assert g.linked == 0


def test_the_continuation_that_fits_best_wins_and_the_other_stands_alone() -> None:
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 5, rssi=-60.0)
    _life(g, "02:00:00:00:00:02", seq, 150.0, 5, rssi=-61.0)  # the same shopper's level
    _life(g, "02:00:00:00:00:03", seq + 3, 151.0, 5, rssi=-75.0)  # sequence fits too, level 15 dB off
    groups = g.solve()
    assert groups["02:00:00:00:00:02"] == groups["02:00:00:00:00:01"]
    assert groups["02:00:00:00:00:03"] != groups["02:00:00:00:00:01"]


def test_three_equally_good_successors_make_no_link() -> None:
    """Whichever were chosen would be wrong two times in three: split rather than merge (two equally
    good ones still give a link at the default min_score: see the next test)."""
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 5)
    for k in range(3):
        _life(g, f"02:00:00:00:00:1{k}", seq + k, 150.0 + 0.5 * k, 5)
    groups = g.solve()
    assert len(set(groups.values())) == 4
    # with a single successor the same evidence is a link
    one = ChainGrouper()
    seq = _life(one, "02:00:00:00:00:01", 100, 0.0, 5)
    _life(one, "02:00:00:00:00:10", seq, 150.0, 5)
    assert one.solve()["02:00:00:00:00:10"] == "w1"


def test_a_different_sequence_rate_weakens_a_link() -> None:
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 8, per_burst=40)
    same = ChainGrouper()
    _life(same, "02:00:00:00:00:01", 100, 0.0, 8, per_burst=40)
    _life(same, "02:00:00:00:00:02", seq, 240.0, 8, per_burst=40)
    _life(g, "02:00:00:00:00:02", seq, 240.0, 8, per_burst=160)  # counts four times as fast
    lives_same = list(same._lives.values())
    lives_fast = list(g._lives.values())
    s_same = same.link_score(lives_same[0], lives_same[1])
    s_fast = g.link_score(lives_fast[0], lives_fast[1])
    assert s_same is not None and s_fast is not None
    assert s_fast < s_same - 2.0


def test_out_of_order_frames_are_counted_and_ids_are_counters_in_start_order() -> None:
    g = ChainGrouper(ChainParams(), prefix="g")
    _life(g, "02:00:00:00:00:09", 100, 50.0, 2)
    _life(g, "02:00:00:00:00:01", 3000, 0.0, 1)  # starts earlier: the first id
    g.add("02:00:00:00:00:09", True, FP_A, 90, 10.0, -60.0)  # before that MAC's latest frame
    assert g.out_of_order == 1
    groups = g.solve()
    assert groups == {"02:00:00:00:00:01": "g1", "02:00:00:00:00:09": "g2"}


def test_one_successor_and_one_predecessor_per_mac() -> None:
    """Two equally good successors both pass the score (a coin flip at the default min_score): the
    old MAC still continues into one of them only, and a new MAC continues one old MAC only."""
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 5)
    _life(g, "02:00:00:00:00:10", seq, 150.0, 5)
    _life(g, "02:00:00:00:00:11", seq + 1, 150.5, 5)
    groups = g.solve()
    assert g.linked == 1
    assert len(set(groups.values())) == 2
    g = ChainGrouper()
    seq1 = _life(g, "02:00:00:00:00:01", 100, 0.0, 5)
    _life(g, "02:00:00:00:00:02", seq1 - 1, 0.5, 5)  # ends with the sequence number one lower
    _life(g, "02:00:00:00:00:10", seq1, 150.0, 5)
    g.solve()
    assert g.linked == 1


def _life_swapped(g: ChainGrouper, mac: str, seq: int, t0: float, bursts: int, swap_at: int) -> int:
    for k in range(bursts):
        order = [1, 0, 2] if k == swap_at else [0, 1, 2]  # two frames of one burst in swapped order
        for j, i in enumerate(order):
            g.add(mac, True, FP_A, (seq + i) % 4096, t0 + k * 30.0 + 0.02 * j, -60.0)
        seq = (seq + 40) % 4096
    return seq


def test_a_step_back_or_a_long_absence_does_not_make_up_a_rate() -> None:
    # two frames swapped in one burst (two radios a few ms apart): one step of -1 = +4095 mod 4096
    g = ChainGrouper()
    seq = _life_swapped(g, "02:00:00:00:00:01", 100, 0.0, 5, swap_at=2)
    _life(g, "02:00:00:00:00:02", seq, 150.0, 5)
    groups = g.solve()
    assert groups["02:00:00:00:00:01"] == groups["02:00:00:00:00:02"]
    # the MAC heard again after ~55 min (its counter wrapped meanwhile): its rate is its bursts'
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 0.0, 4)
    seq = _life(g, "02:00:00:00:00:01", (seq + 4400) % 4096, 3300.0, 4)
    _life(g, "02:00:00:00:00:02", seq, 3300.0 + 150.0, 4)
    groups = g.solve()
    assert groups["02:00:00:00:00:01"] == groups["02:00:00:00:00:02"]


def test_an_earlier_frame_of_a_merged_capture_moves_the_start_back() -> None:
    g = ChainGrouper()
    seq = _life(g, "02:00:00:00:00:01", 100, 100.0, 3)
    g.add("02:00:00:00:00:01", True, FP_A, 60, 50.0, -60.0)  # from a second capture, earlier
    assert g.out_of_order == 1
    # a MAC that started between 50 and 100 and ended before 100 overlaps it: never its predecessor
    _life(g, "02:00:00:00:00:00", 30, 55.0, 1)
    _life(g, "02:00:00:00:00:02", seq, 190.0, 3)
    groups = g.solve()
    assert groups["02:00:00:00:00:00"] != groups["02:00:00:00:00:01"]
    assert groups["02:00:00:00:00:02"] == groups["02:00:00:00:00:01"]


def test_params_are_validated() -> None:
    import pytest

    for bad in ({"min_gap_s": 0.0}, {"max_gap_s": 1.0}, {"prior": -1000.0}, {"rate_sd": float("nan")}):
        with pytest.raises(ValueError, match="ChainParams"):
            ChainParams(**bad)  # type: ignore[arg-type]


def _impure_and_count(labels: dict[int, collections.Counter[int]]) -> tuple[int, int]:
    impure = sum(1 for c in labels.values() if c.most_common(1)[0][1] / sum(c.values()) < 0.9)
    return impure, len(labels)


def test_on_a_crowd_whole_capture_grouping_is_purer_than_online_at_a_similar_count() -> None:
    frames = generate_crowd(120, 2400.0, seed=3)
    dec = ProbeDecoder()
    chains = ChainGrouper()
    online = WifiGrouper()
    probes = []
    by_online: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for f in frames:
        p = dec.decode(f.ts, 127, f.frame)
        if p is None:
            continue
        probes.append((p.mac, f.device))
        chains.add(p.mac, p.randomized, p.fingerprint, p.seq, f.ts, p.rssi)
        by_online[online.observe(p.mac, p.randomized, p.fingerprint, p.seq, f.ts, p.rssi)][f.device] += 1
    groups = chains.solve()
    by_chain: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for mac, device in probes:
        by_chain[groups[mac]][device] += 1
    devices = len({d for _m, d in probes})
    imp_chain, n_chain = _impure_and_count(by_chain)
    imp_online, n_online = _impure_and_count(by_online)
    assert abs(n_chain - devices) <= 0.2 * devices, (n_chain, devices)
    assert n_chain <= n_online + 0.05 * devices
    assert imp_chain < imp_online, (imp_chain, imp_online)
