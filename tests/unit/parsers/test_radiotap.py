"""Radiotap parser: field alignment, extended bitmaps, namespaces, errors, fuzzing.

Headers below are assembled byte by byte from the radiotap.org field table (not with the
project's own builder), so a wrong alignment or size in the parser cannot hide behind a matching
wrong builder.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.parsers.radiotap import (
    FIELD_ALIGN_SIZE,
    RadiotapError,
    build_radiotap,
    freq_to_channel,
    parse_radiotap,
)


def test_minimal_header_has_no_fields() -> None:
    info = parse_radiotap(bytes([0, 0, 8, 0, 0, 0, 0, 0]) + b"frame")
    assert info.length == 8
    assert info.signal_dbm is None
    assert info.freq_mhz is None
    assert info.channel is None
    assert info.flags == 0
    assert not info.bad_fcs
    assert not info.fcs_at_end


def test_alignment_of_tsft_channel_and_signal() -> None:
    # present: TSFT(0) Flags(1) Rate(2) Channel(3) dBm signal(5) dBm noise(6) Antenna(11) RX flags(14)
    present = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 11) | (1 << 14)
    hdr = bytearray(struct.pack("<BBHI", 0, 0, 0, present))
    hdr += bytes(0)  # offset 8: TSFT is 8-aligned already
    hdr += struct.pack("<Q", 0x1122334455667788)  # 8..16
    hdr += bytes([0x10])  # 16 flags: FCS at end
    hdr += bytes([0x0C])  # 17 rate 6 Mb/s
    hdr += struct.pack("<HH", 2462, 0x00A0)  # 18..22 channel (2-aligned: 18 ok)
    hdr += struct.pack("<bb", -47, -95)  # 22, 23 signal, noise
    hdr += bytes([1])  # 24 antenna
    hdr += bytes([0])  # 25 pad: RX flags is 2-aligned
    hdr += struct.pack("<H", 0)  # 26..28 rx flags
    struct.pack_into("<H", hdr, 2, len(hdr))
    info = parse_radiotap(bytes(hdr) + b"\x40\x00")
    assert info.length == 28
    assert info.tsft == 0x1122334455667788
    assert info.fcs_at_end
    assert not info.bad_fcs
    assert info.rate_500kbps == 12
    assert (info.freq_mhz, info.channel, info.channel_flags) == (2462, 11, 0xA0)
    assert (info.signal_dbm, info.noise_dbm, info.antenna, info.rx_flags) == (-47, -95, 1, 0)


def test_channel_padding_after_odd_offset() -> None:
    # Flags at 8, then Channel must skip byte 9 and start at 10
    present = (1 << 1) | (1 << 3) | (1 << 5)
    hdr = struct.pack("<BBHI", 0, 0, 15, present) + bytes([0x40, 0xEE]) + struct.pack("<HHb", 5180, 0x140, -70)
    info = parse_radiotap(hdr)
    assert info.bad_fcs
    assert (info.freq_mhz, info.channel, info.signal_dbm) == (5180, 36, -70)


def test_extended_bitmaps_per_chain_signals_keep_the_first() -> None:
    # word0: flags, channel, signal, radiotap-ns(29), ext(31); word1: signal, antenna, ns, ext; word2: signal, antenna
    w0 = (1 << 1) | (1 << 3) | (1 << 5) | (1 << 29) | (1 << 31)
    w1 = (1 << 5) | (1 << 11) | (1 << 29) | (1 << 31)
    w2 = (1 << 5) | (1 << 11)
    body = struct.pack("<III", w0, w1, w2)  # 4..16
    body += bytes([0x00, 0x00])  # 16 flags, 17 pad
    body += struct.pack("<HH", 2412, 0xA0)  # 18..22
    body += struct.pack("<b", -40)  # 22 combined signal
    body += struct.pack("<bB", -42, 0)  # 23, 24 chain 0
    body += struct.pack("<bB", -44, 1)  # 25, 26 chain 1
    hdr = struct.pack("<BBH", 0, 0, 4 + len(body)) + body
    info = parse_radiotap(hdr)
    assert (info.signal_dbm, info.channel, info.antenna) == (-40, 1, 0)
    assert info.length == 27


def test_vendor_namespace_is_skipped_by_its_length() -> None:
    # word0: signal + vendor-ns(30) + ext; word1 (vendor ns): two vendor fields of unknown size.
    # skip_length covers the vendor data; the 802.11 frame follows it.
    w0 = (1 << 5) | (1 << 30) | (1 << 31)
    w1 = (1 << 0) | (1 << 1)  # vendor's own meanings: unknown to us
    body = struct.pack("<II", w0, w1)  # 4..12
    body += struct.pack("<b", -33)  # 12 signal
    body += b"\x00"  # 13 pad: vendor ns field is 2-aligned
    body += bytes([0x00, 0x13, 0x74, 7]) + struct.pack("<H", 5)  # 14..20 OUI, sub ns, skip 5
    body += b"VVVVV"  # 20..25 vendor data
    hdr = struct.pack("<BBH", 0, 0, 4 + len(body)) + body
    info = parse_radiotap(hdr + b"frame")
    assert info.signal_dbm == -33
    assert info.vendor_ouis == (0x001374,)
    assert info.length == 25


def test_vendor_namespace_then_back_to_radiotap() -> None:
    hdr = build_radiotap(signal_dbm=-58, freq_mhz=2437, vendor=(0xABCDEF, 1, b"12345"))
    info = parse_radiotap(hdr)
    assert (info.signal_dbm, info.channel, info.vendor_ouis) == (-58, 6, (0xABCDEF,))
    # vendor data larger than the header: an error with an offset
    bad = bytearray(hdr)
    struct.pack_into("<H", bad, len(hdr) - 5 - 2, 200)
    with pytest.raises(RadiotapError) as e:
        parse_radiotap(bytes(bad))
    assert "vendor namespace data" in e.value.reason


def test_tlv_fields_end_the_fixed_layout_but_keep_earlier_fields() -> None:
    # bit 28: TLVs (4-aligned) run to the end of the header; fields before them still count
    w0 = (1 << 5) | (1 << 28)
    tlv = struct.pack("<HH", 0x55, 4) + b"abcd"
    hdr = struct.pack("<BBHIb", 0, 0, 0, w0, -20) + b"\x00\x00\x00" + tlv
    hdr = struct.pack("<BBH", 0, 0, len(hdr)) + hdr[4:]
    info = parse_radiotap(hdr + b"frame")
    assert info.signal_dbm == -20
    assert info.length == len(hdr)


@pytest.mark.parametrize(
    ("data", "reason", "offset"),
    [
        (b"\x00\x00\x08", "header needs 8 bytes", 0),
        (b"\x01\x00\x08\x00\x00\x00\x00\x00", "unsupported version 1", 0),
        (b"\x00\x00\x04\x00\x00\x00\x00\x00", "header length 4 < 8", 2),
        (b"\x00\x00\x40\x00\x00\x00\x00\x00", "exceeds the 8 captured bytes", 2),
        (b"\x00\x00\x08\x00\x00\x00\x00\x80", "extended present bitmaps run past the header", 8),
        (b"\x00\x00\x0a\x00\x08\x00\x00\x00\x00\x00", "field 3 runs past the header length 10", 8),
    ],
)
def test_errors_name_the_problem_and_offset(data: bytes, reason: str, offset: int) -> None:
    with pytest.raises(RadiotapError) as e:
        parse_radiotap(data)
    assert reason in str(e.value)
    assert e.value.offset == offset


def test_cached_layout_still_checks_length() -> None:
    ok = build_radiotap(signal_dbm=-50, freq_mhz=2412, flags=0)
    parse_radiotap(ok)  # caches the layout for this present word
    short = bytearray(ok)
    struct.pack_into("<H", short, 2, 10)  # same present word, header claims 10 bytes
    with pytest.raises(RadiotapError):
        parse_radiotap(bytes(short))


@pytest.mark.parametrize(
    ("freq", "ch"), [(2412, 1), (2437, 6), (2472, 13), (2484, 14), (5180, 36), (5825, 165), (5955, 1), (5935, 2)]
)
def test_freq_to_channel(freq: int, ch: int) -> None:
    assert freq_to_channel(freq) == ch


def test_freq_to_channel_rejects_non_channels() -> None:
    assert freq_to_channel(2413) is None
    assert freq_to_channel(900) is None


def test_field_table_matches_radiotap_org() -> None:
    # spot checks of the alignment/size table against radiotap.org
    assert FIELD_ALIGN_SIZE[0] == (8, 8)
    assert FIELD_ALIGN_SIZE[3] == (2, 4)
    assert FIELD_ALIGN_SIZE[18] == (4, 8)
    assert FIELD_ALIGN_SIZE[21] == (2, 12)
    assert FIELD_ALIGN_SIZE[22] == (8, 12)


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_fuzz_random_bytes_only_radiotap_errors(data: bytes) -> None:
    try:
        info = parse_radiotap(data)
    except RadiotapError:
        return
    assert 8 <= info.length <= len(data)


def test_fuzz_mutated_real_headers() -> None:
    rng = random.Random(5)
    seeds = [
        build_radiotap(signal_dbm=-50, freq_mhz=2412, flags=0x10, tsft=123, rate_500kbps=2),
        build_radiotap(signal_dbm=-50, freq_mhz=2437, chain_signals=(-51, -52, -53)),
        build_radiotap(signal_dbm=-50, freq_mhz=5180, vendor=(0x112233, 0, b"abcdef")),
    ]
    for _ in range(20_000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            del b[rng.randrange(len(b)) :]
        try:
            info = parse_radiotap(bytes(b))
        except RadiotapError:
            continue
        assert info.length <= len(b)


def test_cached_layout_still_checks_every_field_fits() -> None:
    # flags + VHT (a field we skip): same present word, the second header too short for VHT
    present = (1 << 1) | (1 << 21)
    ok = struct.pack("<BBHI", 0, 0, 22, present) + b"\x00" * 14
    short = struct.pack("<BBHI", 0, 0, 10, present) + b"\x00" * 14
    assert parse_radiotap(ok).length == 22  # its layout is now cached
    with pytest.raises(RadiotapError, match="field 21 runs past"):
        parse_radiotap(short)
