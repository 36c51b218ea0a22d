"""ProbeDecoder.iter_probes (cached fast path) must agree with decode() frame by frame."""

from __future__ import annotations

import random
import struct

import pytest

from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.pcap import LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, Record
from gateway.parsers.radiotap import build_radiotap
from gateway.parsers.wifi_probe import Probe, ProbeDecoder
from gateway.sim.wifi_crowd import generate_crowd


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    n = len(b)
    r = rng.random()
    if r < 0.3:
        b[rng.randrange(n)] = rng.randrange(256)
    elif r < 0.5:
        b[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif r < 0.6:
        del b[rng.randrange(n) :]
    elif r < 0.7:
        struct.pack_into("<H", b, 2, rng.randrange(64))  # radiotap length
    elif r < 0.8:
        b[0] = 1  # radiotap version
    return bytes(b)


def _records() -> list[Record]:
    rng = random.Random(5)
    crowd = generate_crowd(20, 600.0, seed=3)
    recs: list[Record] = []
    for i, f in enumerate(crowd):
        ts: float | None = None if i % 17 == 0 else f.ts
        recs.append((ts, LINKTYPE_RADIOTAP, f.frame))
        if i % 3 == 0:
            recs.append((f.ts, LINKTYPE_RADIOTAP, _mutate(rng, f.frame)))
        if i % 11 == 0:
            rt_len = f.frame[2] | f.frame[3] << 8
            recs.append((f.ts, LINKTYPE_IEEE802_11, f.frame[rt_len:]))
    # the FCS at the end, a bad FCS, a header without a frequency, a non-probe management frame
    probe = build_probe_request(b"\x02\x11\x22\x33\x44\x55", 7, [(0, b""), (1, b"\x02\x04"), (3, b"\x06")])
    for _ in range(3):
        recs.append(
            (1.0, LINKTYPE_RADIOTAP, build_radiotap(signal_dbm=-50, freq_mhz=2437, flags=0x10) + probe + b"FCS!")
        )
        recs.append((2.0, LINKTYPE_RADIOTAP, build_radiotap(signal_dbm=-50, freq_mhz=2437, flags=0x40) + probe))
        recs.append((3.0, LINKTYPE_RADIOTAP, build_radiotap(signal_dbm=-60) + probe))
        recs.append((4.0, LINKTYPE_RADIOTAP, build_radiotap(signal_dbm=-60) + b"\x50\x00" + probe[2:]))
    return recs


@pytest.mark.parametrize("keep_off_channel", [False, True])
def test_iter_probes_matches_decode(keep_off_channel: bool) -> None:
    recs = _records()
    ref = ProbeDecoder(keep_off_channel=keep_off_channel)
    expected: list[Probe] = []
    last = 0.0
    for ts, lt, data in recs:
        last = last if ts is None else ts
        p = ref.decode(last, lt, data)
        if p is not None:
            expected.append(p)
    for _ in range(2):  # cold and warm caches
        dec = ProbeDecoder(keep_off_channel=keep_off_channel)
        got = list(dec.iter_probes(recs))
        assert got == expected
        assert dec.counts == ref.counts
        assert dec.probes == ref.probes
        assert dec.records == len(recs)


def _tsft_records(chains: tuple[int, ...]) -> list[Record]:
    """Probes whose radiotap headers carry a hardware timestamp that differs in every frame (what a
    real mac80211 capture looks like), with and without extended present bitmaps."""
    rng = random.Random(11)
    probe = build_probe_request(b"\x02\x11\x22\x33\x44\x66", 9, [(0, b""), (1, b"\x02\x04"), (3, b"\x01")])
    recs: list[Record] = []
    for i in range(200):
        rt = build_radiotap(
            signal_dbm=-40 - i % 5, freq_mhz=2412, flags=0, tsft=rng.getrandbits(63), chain_signals=chains
        )
        frame = rt + probe
        if i % 7 == 0:
            frame = _mutate(rng, frame)
        recs.append((100.0 + i, LINKTYPE_RADIOTAP, frame))
    return recs


@pytest.mark.parametrize("chains", [(), (-41, -43)])
def test_fast_path_ignores_the_hardware_timestamp(chains: tuple[int, ...]) -> None:
    import gateway.parsers.wifi_probe as wp

    recs = _tsft_records(chains)
    ref = ProbeDecoder()
    last = 0.0
    expected = []
    for ts, lt, data in recs:
        last = last if ts is None else ts
        if (p := ref.decode(last, lt, data)) is not None:
            expected.append(p)
    wp._RT_CACHE.clear()
    dec = ProbeDecoder()
    got = list(dec.iter_probes(recs))
    assert got == expected and len(got) > 150
    assert dec.counts == ref.counts
    # one cached outcome per distinct (layout, RSSI): the timestamps did not make every header new
    assert 0 < len(wp._RT_CACHE) <= 5 + len(recs) // 7
