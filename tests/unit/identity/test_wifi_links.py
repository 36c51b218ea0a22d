"""The evidence both Wi-Fi groupings weigh: each term says what the measured phone behaviour says."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from gateway.identity.wifi_links import (
    LinkParams,
    Mac,
    TimingTable,
    Track,
    Tracker,
    _evidence,
    link_score,
    ssid_score,
)

FP = "aaaaaaaa11111111"
FP2 = "aaaaaaaa22222222"  # the same family, other elements (an Android phone's directed scans)
P = LinkParams()
T = TimingTable(P)


def _mac(name: str, t0: float, t1: float, seq0: int, seq1: int, rssi: float = -60.0, n: int = 3, fp: str = FP) -> Mac:
    m = Mac(0, name, fp, t0, seq0, t1, seq1)
    m.first_sum = m.last_sum = rssi * n
    m.first_n = m.last_n = n
    return m


def _score(gap: float, dseq: int = 2000, rssi_b: float = -60.0, fp: str = FP, q: float | None = 0.05) -> float:
    a = _mac("a", 0.0, 1.0, 100, 110)
    b = _mac("b", 1.0 + gap, 1.5 + gap, (110 + dseq) % 4096, (120 + dseq) % 4096, rssi_b, fp=fp)
    v = link_score(a, b, P, T, 0.5, q)
    assert v is not None
    return v


def test_timing_within_a_burst_then_repeats_then_the_schedule() -> None:
    """iOS 16's next per-channel MAC comes tens of ms later; a repeated scan after 1.5-8 s; else the
    device's interval (medians 17-135 s); a silence near the limit is the weakest."""
    in_burst, repeat, typical, long = _score(0.04), _score(4.0), _score(60.0), _score(590.0)
    assert in_burst > repeat > typical > long
    assert in_burst > 4.0  # ~150 times likelier than a MAC starting at a random time
    a = _mac("a", 0.0, 1.0, 100, 110)
    assert link_score(a, _mac("b", 602.0, 603.0, 0, 1), P, T, 0.5) is None  # beyond max_gap_s
    assert link_score(a, _mac("b", 0.5, 2.0, 0, 1), P, T, 0.5) is None  # b started while a spoke


def test_sequence_continuation_is_strong_and_a_restart_only_mild() -> None:
    cont = _score(30.0, dseq=40, q=0.5)
    restart = _score(30.0, dseq=2000, q=0.5)
    assert cont - restart > 3.0  # a continued counter is worth ~20x
    assert _score(30.0, dseq=2000, q=0.05) - restart == pytest.approx(math.log(0.95 / 0.5), abs=1e-6)
    # a family that continues its counter: a restart speaks against the link
    assert _score(30.0, dseq=2000, q=0.95) < restart


def test_rssi_steps_heavy_tailed() -> None:
    same, off20, off40 = _score(30.0), _score(30.0, rssi_b=-80.0), _score(30.0, rssi_b=-100.0)
    assert same > off20 > off40
    assert same - off20 < 6.0  # a radio's gain, a body in the way: not a veto


def test_the_same_elements_count_for_a_link() -> None:
    assert _score(30.0) > _score(30.0, fp=FP2)


def test_saved_networks_weigh_by_their_rarity() -> None:
    home, chain = 1, 2
    share = {home: 0.001, chain: 0.3}
    assert ssid_score({home, chain}, {home}, share, P) > 6.0  # a home network is nearly a name
    assert 0.0 < ssid_score({chain}, {chain}, share, P) < 1.5
    assert ssid_score({home}, {3}, share, P) == pytest.approx(math.log(1.0 - P.ssid_cover))
    assert ssid_score(None, {home}, share, P) == 0.0
    assert ssid_score({home}, None, share, P) == 0.0


def test_tracker_follows_a_device_and_starts_another_for_a_stranger() -> None:
    tr = Tracker(P, T, min_p=0.5, default_arrivals=1.0 / 600.0)
    a = _mac("a", 0.0, 1.0, 100, 110, -60.0)
    t1, p1 = tr.assign(a, 1.0, "w1")
    assert t1.tail_before is None and p1 == 1.0
    b = _mac("b", 40.0, 41.0, 900, 910, -61.0)  # 40 s later, same level: its next burst
    t2, p2 = tr.assign(b, 1.0)
    assert t2 is t1 and p2 < 0.5
    far = _mac("c", 45.0, 46.0, 3000, 3010, -92.0)  # 30 dB off and overlapping b's track timing
    t3, _ = tr.assign(far, 1.0, "w2")
    assert t3 is not t1 and t3.gid == "w2"


def test_tracker_prefers_the_track_whose_networks_match() -> None:
    tr = Tracker(P, T, min_p=0.5, default_arrivals=1.0 / 600.0, ssid_share={7: 0.01, 8: 0.01})
    a = _mac("a", 0.0, 1.0, 100, 110, -60.0)
    a.ssids = {7}
    b = _mac("b", 0.5, 1.5, 200, 210, -60.0)
    b.ssids = {8}
    ta, _ = tr.assign(a, 1.0, "wa")
    tb, _ = tr.assign(b, 1.0, "wb")
    c = _mac("c", 40.0, 41.0, 3000, 3010, -60.0)
    c.ssids = {8}
    tc, p_new = tr.assign(c, 1.0)
    assert tc is tb and tc is not ta
    assert p_new < 0.05


def test_track_learns_its_level_per_element_set_and_networks() -> None:
    a = _mac("a", 0.0, 1.0, 0, 1, -60.0)
    t = Track("w", a, None)
    t.learn_level(a)
    m = _mac("b", 30.0, 31.0, 0, 1, -70.0)
    m.ssids = {5}
    t.learn_level(m)
    t.learn_ssids(m)
    w = 3 * math.exp(-30.0 / 120.0)  # three frames each; the first burst faded over 30 s
    assert t.level == pytest.approx((-60.0 * w - 70.0 * 3) / (w + 3))
    assert t.ssids == {5}
    # a burst of another element set keeps its own level, and does not move the device's
    other = replace(_mac("c", 60.0, 61.0, 0, 1, -85.0), fingerprint="ffffffff00000000")
    t.learn_level(other)
    assert t.level_for(other.fingerprint) == (pytest.approx(-85.0), 3.0)
    assert t.level_for(a.fingerprint) == (t.level, t.level_n) and t.level > -66.0
    t.tail = other
    assert t.has_fp(a.fingerprint) and t.has_fp(other.fingerprint) and not t.has_fp("eeeeeeee00000000")


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_gap_s"):
        LinkParams(max_gap_s=0.5)
    with pytest.raises(ValueError, match="seq_continue"):
        LinkParams(seq_continue=1.0)
    with pytest.raises(ValueError, match="interval_s"):
        LinkParams(interval_s=(50.0, 10.0))


def _reference_assign(tr: Tracker, b: Mac, fp_share: float) -> tuple[Track | None, float, float]:
    """What Tracker.assign decides, scored term by term with _evidence (the general scoring):
    (track it would continue or None, P(new device), gap-blind confidence of the link)."""
    family = b.fingerprint[:8]
    new = math.exp(tr.new_weight(family))
    total = total_blind = new
    best, best_v, best_blind = None, -math.inf, 0.0
    table = tr._table(family)
    for t in tr._by_family.get(family, []):
        gap = b.first_ts - t.tail.last_ts
        if not 0.0 < gap <= tr.p.max_gap_s:
            continue
        v, vb = _evidence(
            t.tail,
            b,
            gap,
            tr.p,
            fp_share,
            tr.seq_continue.get(family),
            t.level_for(b.fingerprint),
            True,
            t.has_fp(b.fingerprint),
            tr.fp_shares.get(t.tail.fingerprint, 0.0),
        )
        if v == -math.inf:
            continue
        lg = math.log(gap)
        v += table.table[table.index(lg)] if t.iv_n == 0 else tr._timing(t, gap, table, lg)
        if b.ssids and t.ssids:
            ss = ssid_score(t.ssids, b.ssids, tr.ssid_share, tr.p)
            v, vb = v + ss, vb + ss
        total += math.exp(min(v, 700.0))
        total_blind += math.exp(min(vb, 700.0))
        if v > best_v:
            best, best_v, best_blind = t, v, math.exp(min(vb, 700.0))
    if best is None or math.exp(min(best_v, 700.0)) / total < tr.min_p:
        return None, new / total, 0.0
    return best, new / total, best_blind / total_blind


def test_assign_fast_path_scores_as_evidence_does() -> None:
    """assign scores MACs heard in one burst inline (the hot loop); its choices, P(new) and
    gap-blind confidence stay those of _evidence over random devices, element sets, levels,
    sequence rates and networks."""
    rng = random.Random(5)
    fps = [FP, FP2, "aaaaaaaa33333333"]
    for q in (None, 0.03, 0.9):
        tr = Tracker(
            P,
            T,
            min_p=0.6,
            seq_continue={} if q is None else {"aaaaaaaa": q},
            ssid_share={1: 0.01, 2: 0.3},
            in_burst={"aaaaaaaa": 0.4},
        )
        tr.blind = True
        tr.fp_shares = {FP: 0.55, FP2: 0.9}  # the third set unknown: share 0
        ts = 0.0
        linked = 0
        for i in range(400):
            ts += rng.choice([0.03, 0.05, 2.0, 20.0, 60.0, 150.0])
            dur = rng.choice([0.0, 0.3, 90.0])
            seq = rng.randrange(4096)
            m = Mac(i, f"m{i}", rng.choice(fps), ts, seq, ts + dur, (seq + rng.randrange(60)) % 4096)
            n = rng.randrange(0, 4)
            m.first_n = n
            m.first_sum = m.last_sum = rng.uniform(-85.0, -45.0) * n
            m.last_n = n
            if dur > 60.0 and rng.random() < 0.7:  # a MAC heard over bursts: its own sequence rate
                m.silences, m.rate_adv, m.rate_span = 2, rng.randrange(10, 200), dur
            if rng.random() < 0.2:
                m.ssids = {rng.choice([1, 2, 3])}
            share = rng.uniform(0.01, 0.9)
            want, want_p, want_conf = _reference_assign(tr, m, share)
            got, got_p = tr.assign(m, share, f"g{i}")
            assert got_p == pytest.approx(want_p, rel=1e-9, abs=1e-12)
            if want is None:
                assert got.tail is m and got.macs == 1 and tr.last_confidence == 0.0
            else:
                linked += 1
                assert got is want
                assert tr.last_confidence == pytest.approx(want_conf, rel=1e-9, abs=1e-12)
            ts += dur
        assert 20 < linked < 380  # both outcomes were exercised
