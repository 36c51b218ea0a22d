"""802.11 management-frame parser and the device-model fingerprint."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.parsers.ieee80211 import (
    SUBTYPE_PROBE_REQ,
    Ieee80211Error,
    build_probe_request,
    is_locally_administered,
    parse_mgmt,
)
from gateway.sim.wifi_crowd import MODELS

MAC = bytes.fromhex("da:a1:19:00:11:22".replace(":", ""))
RATES = bytes([0x02, 0x04, 0x0B, 0x16])
XRATES = bytes([0x0C, 0x12, 0x18, 0x24, 0x30, 0x48, 0x60, 0x6C])
HT = bytes.fromhex("2d0117ff000000000000000000000000000000000000000000")[:26].ljust(26, b"\x00")
EXTCAP = bytes.fromhex("0400080400000040")
APPLE = bytes.fromhex("0017f20a000104000000")


def _ies(ssid: bytes = b"", channel: int = 6, ht: bytes = HT) -> list[tuple[int, bytes]]:
    return [(0, ssid), (1, RATES), (50, XRATES), (3, bytes([channel])), (45, ht), (127, EXTCAP), (221, APPLE)]


def test_probe_request_fields() -> None:
    # a hand-assembled header: FC 0x0040, duration 0, DA broadcast, SA, BSSID broadcast, seq 1234 frag 0
    hdr = struct.pack("<HH", 0x0040, 0) + b"\xff" * 6 + MAC + b"\xff" * 6 + struct.pack("<H", 1234 << 4)
    body = b"\x00\x00" + b"\x01\x04" + RATES + b"\x03\x01\x0b" + b"\xdd\x0a" + APPLE
    m = parse_mgmt(hdr + body)
    assert m is not None
    assert m.subtype == SUBTYPE_PROBE_REQ
    assert m.is_probe_request
    assert m.src == "da:a1:19:00:11:22"
    assert m.randomized  # 0xda has the locally administered bit
    assert m.seq == 1234
    assert m.ssid == b""
    assert m.ssid_hidden
    assert m.ds_channel == 11
    assert m.rates == RATES
    assert m.ie_ids == bytes([0, 1, 3, 221])
    assert m.vendor_ouis == (0x0017F2,)
    assert len(m.fingerprint) == 16


def test_directed_ssid_is_not_hidden_and_blank_ssid_is() -> None:
    m = parse_mgmt(build_probe_request(MAC, 1, _ies(ssid=b"HomeNet")))
    assert m is not None
    assert m.ssid == b"HomeNet"
    assert not m.ssid_hidden
    m = parse_mgmt(build_probe_request(MAC, 1, _ies(ssid=b"\x00\x00\x00")))
    assert m is not None
    assert m.ssid_hidden


def test_fingerprint_ignores_ssid_channel_seq_mac_and_sm_power_save() -> None:
    base = parse_mgmt(build_probe_request(MAC, 10, _ies()))
    assert base is not None
    ht_ps = bytearray(HT)
    ht_ps[0] ^= 0x0C  # SM power save bits
    variants = [
        build_probe_request(MAC, 3000, _ies()),
        build_probe_request(bytes.fromhex("001122334455"), 10, _ies()),
        build_probe_request(MAC, 10, _ies(ssid=b"CoffeeShop")),
        build_probe_request(MAC, 10, _ies(channel=11)),
        build_probe_request(MAC, 10, _ies(ht=bytes(ht_ps))),
    ]
    for v in variants:
        m = parse_mgmt(v)
        assert m is not None
        assert m.fingerprint == base.fingerprint


def test_fingerprint_changes_with_model_identifying_elements() -> None:
    base = parse_mgmt(build_probe_request(MAC, 10, _ies()))
    assert base is not None
    ies = _ies()
    reordered = [ies[0], ies[1], ies[3], ies[2], *ies[4:]]
    other_ht = bytearray(HT)
    other_ht[3] = 0x00  # one MCS fewer
    changes = [
        reordered,
        [*ies[:-1], (221, bytes.fromhex("001018020000"))],  # another vendor OUI
        [*ies[:5], (127, bytes.fromhex("0400080400000041")), ies[6]],  # extended capabilities
        [ies[0], (1, bytes([0x82, 0x84, 0x8B, 0x96])), *ies[2:]],  # rates
        _ies(ht=bytes(other_ht)),
        [*ies, (191, bytes(12))],  # + VHT capabilities
        [*ies, (255, bytes([35, 1, 2, 3]))],  # + HE capabilities
        [*ies, (107, b"\x02")],  # + interworking
    ]
    fps = {base.fingerprint}
    for c in changes:
        m = parse_mgmt(build_probe_request(MAC, 10, c))
        assert m is not None
        fps.add(m.fingerprint)
    assert len(fps) == len(changes) + 1


def test_crowd_models_have_distinct_fingerprints() -> None:
    fps = set()
    for _name, _w, ies in MODELS:
        body = [(e, v if v is not None else (b"" if e == 0 else b"\x01")) for e, v in ies]
        m = parse_mgmt(build_probe_request(MAC, 1, body))
        assert m is not None
        fps.add(m.fingerprint)
    assert len(fps) == len(MODELS)


def test_fcs_at_end_is_not_an_element() -> None:
    frame = build_probe_request(MAC, 5, _ies()) + b"\xde\xad\xbe\xef"
    with pytest.raises(Ieee80211Error):
        parse_mgmt(frame)  # the FCS looks like an element that overruns the frame
    m = parse_mgmt(frame, fcs_at_end=True)
    assert m is not None
    assert m.seq == 5


def test_beacon_and_assoc_request_fixed_fields() -> None:
    hdr = struct.pack("<HH", 0x80, 0) + b"\xff" * 6 + MAC + MAC + struct.pack("<H", 7 << 4)
    beacon = hdr + bytes(8) + struct.pack("<HH", 100, 0x0401) + b"\x00\x04Shop\x03\x01\x01"
    m = parse_mgmt(beacon)
    assert m is not None
    assert m.subtype == 8
    assert m.ssid == b"Shop"
    assert m.ds_channel == 1
    assoc = struct.pack("<HH", 0x00, 0) + MAC + MAC + MAC + struct.pack("<H", 8 << 4)
    assoc += struct.pack("<HH", 0x0431, 10) + b"\x00\x04Shop"
    m = parse_mgmt(assoc)
    assert m is not None
    assert m.subtype == 0
    assert m.ssid == b"Shop"


def test_ht_control_field_is_skipped() -> None:
    frame = build_probe_request(MAC, 9, _ies())
    fc = struct.unpack_from("<H", frame)[0] | 0x8000  # +HTC / order
    with_htc = struct.pack("<H", fc) + frame[2:24] + b"\x00\x00\x00\x00" + frame[24:]
    m = parse_mgmt(with_htc)
    assert m is not None
    assert m.ds_channel == 6
    assert m.seq == 9


def test_non_management_and_protected_frames_are_not_parsed() -> None:
    data = struct.pack("<HH", 0x08, 0) + MAC * 3 + b"\x00\x00"
    assert parse_mgmt(data) is None
    ctrl = struct.pack("<HH", 0xB4, 0) + MAC * 2  # RTS
    assert parse_mgmt(ctrl) is None
    prot = bytearray(build_probe_request(MAC, 1, _ies()))
    prot[1] |= 0x40
    assert parse_mgmt(bytes(prot)) is None
    action = struct.pack("<HH", 0xD0, 0) + MAC * 3 + b"\x00\x00" + b"\x04\x00"
    assert parse_mgmt(action) is None


@pytest.mark.parametrize(
    ("frame", "reason", "offset"),
    [
        (b"\x40", "has no frame control", 0),
        (b"\x41\x00" + bytes(22), "protocol version 1", 0),
        (b"\x40\x00" + bytes(20), "management header needs 24 bytes", 0),
        (build_probe_request(MAC, 1, [(0, b"")]) + b"\x01", "truncated information element header", 26),
        (build_probe_request(MAC, 1, [(0, b"")]) + b"\x01\x08\x02", "element 1 length 8 runs past", 26),
        (build_probe_request(MAC, 1, [(0, b"x" * 33)]), "SSID length 33 > 32", 24),
        (build_probe_request(MAC, 1, [(255, b"")]), "element extension without an extension id", 24),
        (struct.pack("<HH", 0x20, 0) + bytes(20) + b"\x00\x00", "fixed fields need 10 bytes", 24),
    ],
)
def test_errors_name_the_problem_and_offset(frame: bytes, reason: str, offset: int) -> None:
    with pytest.raises(Ieee80211Error) as e:
        parse_mgmt(frame)
    assert reason in str(e.value)
    assert e.value.offset == offset


def test_locally_administered_bit() -> None:
    assert is_locally_administered(bytes.fromhex("020000000000"))
    assert is_locally_administered("da:a1:19:00:11:22")
    assert not is_locally_administered("00:11:22:33:44:55")


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=24, max_size=24), st.binary(max_size=120))
def test_fuzz_random_bodies_only_parser_errors(header: bytes, body: bytes) -> None:
    frame = b"\x40\x00" + header[2:] + body
    try:
        m = parse_mgmt(frame, fcs_at_end=len(body) % 2 == 1)
    except Ieee80211Error:
        return
    assert m is None or len(m.fingerprint) == 16


def test_fuzz_mutated_probe_requests() -> None:
    rng = random.Random(11)
    seeds = [build_probe_request(MAC, 1, _ies())]
    for _n, _w, ies in MODELS:
        seeds.append(build_probe_request(MAC, 2, [(e, v if v is not None else b"\x06") for e, v in ies]))
    for _ in range(20_000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            del b[rng.randrange(len(b)) :]
        with contextlib.suppress(Ieee80211Error):
            parse_mgmt(bytes(b), fcs_at_end=rng.random() < 0.1)
