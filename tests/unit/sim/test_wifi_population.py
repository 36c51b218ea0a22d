"""The simulated phones behave as the public captures show (docs/wifi.md, "The phone population")."""

from __future__ import annotations

import collections
import itertools
import statistics

import pytest

from gateway.parsers.ieee80211 import is_locally_administered
from gateway.sim.wifi_population import BEHAVIOURS, MODELS, generate_store


def _sent(models: list[str], duration_s: float = 1800.0, seed: int = 3) -> list:  # type: ignore[type-arg]
    """Every frame sent on the channel a radio listens to: three fixed radios, as the data set's."""
    crowd = generate_store(len(models), duration_s, seed=seed, models=models, whole_run=True, capture="fixed3")
    return [f for f in crowd.frames if f.rx_channel == f.tx_channel]


def _bursts(frames: list) -> list[list]:  # type: ignore[type-arg]
    out: list[list] = []  # type: ignore[type-arg]
    for f in frames:
        if out and f.ts - out[-1][-1].ts < 1.0:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def test_ios16_per_channel_macs_restart_their_sequence() -> None:
    frames = _sent(["iphone-12"])
    bursts = _bursts(frames)
    macs_per_burst = [len({f.mac for f in b}) for b in bursts]
    assert statistics.median(macs_per_burst) >= 3  # one MAC per channel (1, 6, 11 heard here)
    per_mac = collections.Counter(f.mac for f in frames)
    assert statistics.median(per_mac.values()) <= 2.5  # ~2 probes per MAC
    # MAC changes that continue the counter: the 0-4 % of the captures, not the 81-99 % of old phones
    changes = cont = 0
    for a, b in itertools.pairwise(frames):
        if a.mac != b.mac:
            changes += 1
            cont += 0 < (b.seq - a.seq) % 4096 <= 64
    assert cont / changes < 0.15


def test_legacy_phones_continue_their_sequence_across_mac_changes() -> None:
    frames = _sent(["galaxy-j6"], 3600.0)
    changes = cont = 0
    for a, b in itertools.pairwise(frames):
        if a.mac != b.mac:
            changes += 1
            cont += 0 < (b.seq - a.seq) % 4096 <= 300
    assert changes >= 5 and cont / changes >= 0.7


def test_burst_intervals_within_the_measured_ranges() -> None:
    crowd = generate_store(300, 3600.0, seed=2, capture="fixed3")
    starts: dict[int, list[float]] = collections.defaultdict(list)
    for f in crowd.frames:
        s = starts[f.device]
        if not s or f.ts - s[-1] > 1.0:
            s.append(f.ts)
    medians = [statistics.median(b - a for a, b in itertools.pairwise(s)) for s in starts.values() if len(s) > 4]
    assert 10.0 <= statistics.median(medians) <= 135.0
    gaps = sorted(b - a for s in starts.values() for a, b in itertools.pairwise(s))
    assert 1.0 <= gaps[len(gaps) // 10] <= 8.0  # p10: repeated scans
    assert 60.0 <= gaps[9 * len(gaps) // 10] <= 270.0  # p90


def test_an_android13_phone_sends_two_element_sets_and_names_its_saved_networks() -> None:
    frames = _sent(["oppo-find-x3"], 3600.0, seed=2)
    from gateway.parsers.wifi_probe import ProbeDecoder

    dec = ProbeDecoder(keep_off_channel=True)
    probes = [p for f in frames if (p := dec.decode(f.ts, 127, f.frame)) is not None]
    assert len({p.fingerprint for p in probes}) == 2
    ssids = [p.ssid for p in probes if p.ssid]
    assert ssids and len(set(ssids)) <= 6


def test_no_randomization_and_laptops_keep_one_public_mac() -> None:
    for model in ("huawei-p20", "laptop-intel"):
        frames = _sent([model], 1800.0)
        assert len({f.mac for f in frames}) == 1
        assert not is_locally_administered(frames[0].mac)


def test_shares_and_catalogue() -> None:
    assert sum(BEHAVIOURS.values()) == pytest.approx(1.0)
    assert {m.behaviour for m in MODELS} == set(BEHAVIOURS)
    with pytest.raises(ValueError, match="capture"):
        generate_store(1, 10.0, capture="monitor")


def test_seeded_and_truth_kept() -> None:
    a = generate_store(20, 600.0, seed=9)
    b = generate_store(20, 600.0, seed=9)
    assert [f.frame for f in a.frames] == [f.frame for f in b.frames]
    assert a.heard <= {d.idx for d in a.devices}
    t0 = a.start_ts
    assert 0 < a.present(t0, t0 + 600.0) <= 20


def test_an_iphone_12_now_and_then_scans_channel_1_with_the_iphone_11s_elements_weaker() -> None:
    """As the labelled iPhone 12 of the Open Probe Request Dataset: 8 of 43 bursts another scan."""
    crowd = generate_store(1, 3600.0, seed=3, models=["iphone-12"], levels_db=[-50.0], whole_run=True, capture="fixed3")
    frames = [f for f in crowd.frames if f.rx_channel == f.tx_channel]
    iphone_11 = next(m for m in MODELS if m.name == "iphone-11").wildcard
    bursts = _bursts(frames)
    other = [b for b in bursts if all(f.tx_channel == 1 for f in b) and len(b) <= 3]
    assert 0.08 <= len(other) / len(bursts) <= 0.35
    usual = [f.rssi for b in bursts if b not in other for f in b if f.tx_channel == 1]
    weak = [f.rssi for b in other for f in b]
    assert statistics.mean(usual) - statistics.mean(weak) > 10.0
    ext = dict(iphone_11)[127]
    assert ext is not None and all(ext in f.frame for b in other for f in b)
