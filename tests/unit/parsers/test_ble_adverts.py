"""BLE advertising-data parsers: real adverts as test vectors, edge cases, and a fuzz smoke test.

Where the vectors come from:

* BLUECHARM_*: Blue Charm Beacons BC011 adverts (advertising + scan response, zero padded) that
  AOSP's Bluetooth stack carries as canned scan results for its scan debugging mode
  (packages/modules/Bluetooth, ScanController.java).
* MIKROTIK_TLM: an Eddystone-TLM capture printed (hex + decoded values) in MikroTik's RouterOS
  "IoT / Bluetooth" documentation (TG-BT5 tag; battery 2.928 V, 21.285 °C, 37040856 packets,
  uptime 3724474.2 s).
* ALTBEACON_RADIUS: the AltBeacon bytes from the Android Beacon Library's BeaconTransmitter test
  (Radius Networks, company id 0x0118), prefixed with its AD header ``1B FF``.
* ESPRUINO_UID: the Eddystone-UID advert of Espruino's Puck.js example (namespace = first 10
  bytes of SHA-1("placesgraph1.microsoft.com"), tx -8 dBm at 0 m).
* IPHONE_NEARBY: an iPhone "Nearby Info" continuity advert (flags 0x1A, tx power 12, Apple 0x10).
* SPEC_URL: constructed (not captured) by the eddystone-url specification's encoding rules for
  the Physical Web short link "https://goo.gl/S6zT6P" (scheme 0x03, no expansion code).
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.parsers.ble import (
    EDDYSTONE_0M_TO_1M_DB,
    Advert,
    AdvertParseError,
    AltBeacon,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    IBeacon,
    ManufacturerData,
    ServiceData,
    decode_eddystone_url,
    parse_advert,
    parse_advert_uncached,
    rssi_at_1m_of,
)

BLUECHARM_URL = (
    "0201060303AAFE1716AAFE10EE01626C7565636861726D626561636F6E730009168020691E0EFE1355"
    "1109426C7565436861726D5F313639363835000000"
)
BLUECHARM_UID = (
    "0201060303AAFE1716AAFE00EE626C7565636861726D31000000000001000009168020691E0EFE1355"
    "1109426C7565436861726D5F313639363835000000"
)
BLUECHARM_TLM = (
    "0201060303AAFE1116AAFE20000BF017000008874803FB93540916802069080EFE1355"
    "1109426C7565436861726D5F313639363835000000000000000000"
)
BLUECHARM_IBEACON = (
    "0201061AFF4C000215426C7565436861726D426561636F6E730EFE1355C509168020691E0EFE1355"
    "1109426C7565436861726D5F31363936383500000000"
)
MIKROTIK_TLM = "0201060303AAFE1116AAFE20000B701549023532D802384F46"
ALTBEACON_RADIUS = "1BFF1801BEAC2F234454CF6D4A0FADF2F4911BA9FFA600010002C500"
ESPRUINO_UID = "0303AAFE1716AAFE00F8E157BD5DF90AAD1DC2FB000000000001" + "0000"
IPHONE_NEARBY = "02011A020A0C0BFF4C001006071E8D7B9B58"
SPEC_URL = "0201060303AAFE1316AAFE10EB03676F6F2E676C2F53367A543650"


def adv(hexstr: str) -> Advert:
    return parse_advert_uncached(bytes.fromhex(hexstr))


def test_bluecharm_ibeacon() -> None:
    a = adv(BLUECHARM_IBEACON)
    assert a.flags == 0x06
    assert a.local_name == "BlueCharm_169685"
    ib = a.frames[0]
    assert isinstance(ib, IBeacon)
    assert ib.uuid == "426c7565-4368-6172-6d42-6561636f6e73"  # ASCII "BlueCharmBeacons"
    assert (ib.major, ib.minor, ib.measured_power) == (0x0EFE, 0x1355, -59)
    assert a.rssi_at_1m == -59.0  # iBeacon is calibrated at 1 m: unchanged
    assert a.frames[1] == ServiceData("00002080-0000-1000-8000-00805f9b34fb", bytes.fromhex("691e0efe1355"))


def test_bluecharm_eddystone_url_with_expansion() -> None:
    a = adv(BLUECHARM_URL)
    url = a.frames[0]
    assert isinstance(url, EddystoneURL)
    assert url.url == "https://www.bluecharmbeacons.com/"  # scheme 0x01 + text + expansion 0x00
    assert url.tx_power == -18
    assert a.rssi_at_1m == -18 - EDDYSTONE_0M_TO_1M_DB  # 0 m calibration normalised to 1 m
    assert a.service_uuids == ("0000feaa-0000-1000-8000-00805f9b34fb",)


def test_bluecharm_eddystone_uid() -> None:
    uid = adv(BLUECHARM_UID).frames[0]
    assert isinstance(uid, EddystoneUID)
    assert uid.namespace == "626c7565636861726d31"
    assert uid.instance == "000000000001"
    assert uid.rssi_at_1m == -59.0


def test_bluecharm_tlm() -> None:
    tlm = adv(BLUECHARM_TLM).frames[0]
    assert isinstance(tlm, EddystoneTLM)
    assert not tlm.encrypted
    assert tlm.battery_mv == 3056
    assert tlm.temperature_c == 23.0
    assert tlm.adv_count == 0x00088748
    assert tlm.uptime_s == pytest.approx(0x03FB9354 / 10)
    assert tlm.rssi_at_1m is None


def test_mikrotik_tlm_matches_vendor_decoding() -> None:
    tlm = adv(MIKROTIK_TLM).frames[0]
    assert isinstance(tlm, EddystoneTLM)
    assert tlm.battery_mv == 2928
    assert round(tlm.temperature_c or 0, 3) == 21.285
    assert tlm.adv_count == 37040856
    assert tlm.uptime_s == pytest.approx(3724474.2)


def test_tlm_negative_temperature_and_unsupported_fields() -> None:
    # battery 0 (not reported), temperature -0.5 °C (0xFF80 in 8.8 two's complement)
    a = adv("0201060303AAFE1116AAFE20000000FF800000000700000005")
    tlm = a.frames[0]
    assert isinstance(tlm, EddystoneTLM)
    assert tlm.battery_mv is None
    assert tlm.temperature_c == -0.5
    assert tlm.uptime_s == 0.5
    # 0x8000 means "temperature not supported"
    tlm2 = adv("0201060303AAFE1116AAFE200009C480000000000700000005").frames[0]
    assert isinstance(tlm2, EddystoneTLM)
    assert tlm2.temperature_c is None
    assert tlm2.battery_mv == 2500


def test_encrypted_tlm_is_told_apart() -> None:
    etlm = "00112233445566778899AABB"
    a = adv("0201060303AAFE1516AAFE2001" + etlm + "1234ABCD")
    tlm = a.frames[0]
    assert isinstance(tlm, EddystoneTLM)
    assert tlm.encrypted
    assert tlm.etlm == etlm.lower()
    assert (tlm.salt, tlm.mic) == (0x1234, 0xABCD)
    assert tlm.battery_mv is None
    assert tlm.adv_count is None


def test_altbeacon_radius_networks() -> None:
    a = adv(ALTBEACON_RADIUS)
    ab = a.frames[0]
    assert isinstance(ab, AltBeacon)
    assert ab.company_id == 0x0118
    assert ab.beacon_id == "2f234454cf6d4a0fadf2f4911ba9ffa600010002"
    assert ab.reference_rssi == -59
    assert ab.reserved == 0
    assert a.rssi_at_1m == -59.0


def test_espruino_uid_without_flags() -> None:
    a = adv(ESPRUINO_UID)
    assert a.flags is None
    uid = a.frames[0]
    assert isinstance(uid, EddystoneUID)
    assert uid.namespace == "e157bd5df90aad1dc2fb"
    assert uid.tx_power == -8
    assert uid.rssi_at_1m == -49.0


def test_iphone_nearby_is_generic_manufacturer_data() -> None:
    a = adv(IPHONE_NEARBY)
    assert a.flags == 0x1A
    assert a.tx_power == 12
    assert a.frames == (ManufacturerData(0x004C, bytes.fromhex("1006071e8d7b9b58")),)
    assert a.manufacturer_data == {0x004C: bytes.fromhex("1006071e8d7b9b58")}
    assert a.rssi_at_1m is None


def test_spec_url_example() -> None:
    url = adv(SPEC_URL).frames[0]
    assert isinstance(url, EddystoneURL)
    assert url.url == "https://goo.gl/S6zT6P"


@pytest.mark.parametrize(
    ("body", "url"),
    [
        (b"\x00abc\x07", "http://www.abc.com"),
        (b"\x02a\x00b\x0dc", "http://a.com/b.govc"),
        (b"\x01x\x04\x0b", "https://www.x.info/.info"),
        (b"\x03", "https://"),
    ],
)
def test_url_expansions(body: bytes, url: str) -> None:
    assert decode_eddystone_url(body) == url


def test_url_reserved_bytes_name_their_offset() -> None:
    with pytest.raises(AdvertParseError) as e:
        decode_eddystone_url(b"\x00ab\x20cd", offset=10)
    assert e.value.offset == 13
    assert "0x20" in e.value.reason
    with pytest.raises(AdvertParseError, match="scheme byte 0x04"):
        decode_eddystone_url(b"\x04abc")


def test_names_flags_uuids_and_service_data_kinds() -> None:
    # short name, then complete name (complete wins); 32-bit service data; 128-bit UUID list;
    # 128-bit service data; 16-bit UUID list with two entries; tx power -4
    u128 = bytes.fromhex("6e400001b5a3f393e0a9e50e24dcca9e")  # Nordic UART, canonical order
    payload = (
        b"\x04\x08abc"
        + b"\x06\x09abcde"
        + b"\x07\x20\x78\x56\x34\x12\x01\x02"
        + b"\x11\x07"
        + u128[::-1]
        + b"\x12\x21"
        + u128[::-1]
        + b"\x09"
        + b"\x05\x03\x0f\x18\x0a\x18"
        + b"\x02\x0a\xfc"
        + b"\x01\x01"  # flags with no data byte: allowed, means 0
    )
    a = parse_advert_uncached(payload)
    assert a.local_name == "abcde"
    assert a.tx_power == -4
    assert a.flags == 0
    assert a.service_uuids == (
        "6e400001-b5a3-f393-e0a9-e50e24dcca9e",
        "0000180f-0000-1000-8000-00805f9b34fb",
        "0000180a-0000-1000-8000-00805f9b34fb",
    )
    assert a.service_data == {
        "12345678-0000-1000-8000-00805f9b34fb": b"\x01\x02",
        "6e400001-b5a3-f393-e0a9-e50e24dcca9e": b"\x09",
    }


def test_zero_length_terminates_and_padding_is_ignored() -> None:
    a = adv("020106" + "00" * 28)
    assert a.flags == 6
    assert adv("").frames == ()


@pytest.mark.parametrize(
    ("hexstr", "offset", "fragment"),
    [
        ("0201061aff4c0002", 3, "overruns"),  # truncated iBeacon AD
        ("02ff4c", 0, "company id"),  # manufacturer data without a full company id
        ("02010609ff4c000215aabbccdd", 7, "iBeacon frame is 6 bytes"),
        ("0303aafe0516aafe000000", 8, "Eddystone-UID frame is 2 bytes"),
        ("0516aafe1000", 4, "Eddystone-URL frame is 2 bytes"),
        ("0716aafe10eb0861", 6, "scheme byte 0x08"),
        ("0716aafe20000102", 4, "TLM (plain) frame is 4 bytes"),
        ("0716aafe2007010203", 5, "version 0x07"),
        ("030a0102", 0, "TX power level is 2 bytes"),
        ("0403aabbcc", 0, "not a multiple of 2"),
        ("0216aa", 0, "shorter than its UUID"),
    ],
)
def test_malformed_input_names_offset_and_problem(hexstr: str, offset: int, fragment: str) -> None:
    with pytest.raises(AdvertParseError) as e:
        adv(hexstr)
    assert e.value.offset == offset
    assert fragment in str(e.value)
    assert str(e.value).startswith(f"offset {offset}: ")


def test_cached_parse_returns_the_same_answer() -> None:
    data = bytes.fromhex(BLUECHARM_IBEACON)
    first = parse_advert(data)
    assert parse_advert(bytearray(data)) == first == parse_advert_uncached(data)


def test_rssi_at_1m_of_split_data_like_bleak_gives() -> None:
    ib = bytes.fromhex(BLUECHARM_IBEACON)[7:30]  # manufacturer data after the company id
    assert rssi_at_1m_of({0x004C: ib}, {}) == -59.0
    eddy = bytes.fromhex("10ee01626c7565636861726d626561636f6e7300")
    assert rssi_at_1m_of({}, {"0000feaa-0000-1000-8000-00805f9b34fb": eddy}) == -59.0
    assert rssi_at_1m_of({0x0006: b"\x01\x09"}, {}) is None
    with pytest.raises(AdvertParseError):
        rssi_at_1m_of({}, {"0000feaa-0000-1000-8000-00805f9b34fb": b"\x00\x01"})


def test_fuzz_smoke_only_documented_error() -> None:
    """Fast in-test fuzz (the 10^6 run is bench/bench_ble.py): random and mutated payloads."""
    rng = random.Random(4)
    seeds = [bytes.fromhex(v) for v in (BLUECHARM_URL, BLUECHARM_TLM, ALTBEACON_RADIUS, IPHONE_NEARBY, SPEC_URL)]
    bad_offsets: list[int] = []
    for k in range(20000):
        if k % 2:
            data = os.urandom(rng.randrange(0, 40))
        else:
            b = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        try:
            a = parse_advert_uncached(data)
        except AdvertParseError as e:
            bad_offsets.append(e.offset - len(data))
            continue
        a.to_dict()  # the JSON form must not fail either
    assert bad_offsets, "mutations should hit some malformed cases"
    assert max(bad_offsets) <= 0  # every error offset lies within the payload


# ---------------------------------------------------------------------------------------------
# Generated well-formed payloads: every AD structure is accounted for, nothing raises
# ---------------------------------------------------------------------------------------------

_generic_ad = st.one_of(
    st.tuples(st.just(0x09), st.binary(max_size=12)),  # complete local name
    st.tuples(st.just(0x19), st.binary(min_size=2, max_size=2)),  # appearance (not decoded)
    st.tuples(
        st.just(0xFF),
        # company id (LE) that is neither Apple nor starts an AltBeacon code, then payload
        st.builds(lambda c, b: c.to_bytes(2, "little") + b, st.integers(0x0000, 0x004B), st.binary(max_size=20)),
    ),
    st.tuples(
        st.just(0x16),
        st.builds(lambda u, b: u.to_bytes(2, "little") + b, st.integers(0x1800, 0x18FF), st.binary(max_size=20)),
    ),
    st.tuples(st.just(0x03), st.binary(max_size=3).map(lambda b: b + b[:1] if len(b) % 2 else b)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_generic_ad, max_size=6))
def test_generated_well_formed_payloads_round_trip(ads: list[tuple[int, bytes]]) -> None:
    payload = b"".join(bytes([len(d) + 1, t]) + d for t, d in ads)
    a = parse_advert_uncached(payload)
    mfr = {int.from_bytes(d[:2], "little"): d[2:] for t, d in ads if t == 0xFF}
    assert a.manufacturer_data == mfr
    sd = {f"0000{int.from_bytes(d[:2], 'little'):04x}-0000-1000-8000-00805f9b34fb": d[2:] for t, d in ads if t == 0x16}
    assert a.service_data == sd
    names = [d for t, d in ads if t == 0x09]
    assert a.local_name == (names[-1].decode("utf-8", "replace") if names else None)
    assert len(a.frames) == sum(1 for t, _ in ads if t in (0xFF, 0x16))
    assert len(a.service_uuids) == sum(len(d) // 2 for t, d in ads if t == 0x03)
