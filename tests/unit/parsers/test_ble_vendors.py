"""Vendor messages in real adverts: each vector names where it was captured / published.

Sources (manufacturer data = company id little-endian + body, or service data = UUID + body):

* TD = Theengs Decoder test suite, ``tests/BLE/test_ble.cpp`` (theengs/decoder): ``test_mfgdata``,
  ``test_uuid`` and ``test_uuid_name_svcdata`` tables (real captures by the project's contributors).
* SEEMOO = SEEMOO Lab's Apple BLE decoder tests (``Apple_BLE_DecoderTests.swift``, BLEDissector).
* ROS = "ROS-BLE-Device-scanner" README example output (a real scan log).

Manufacturer and service data from those tables are wrapped in their AD header here (the tables
store them split, as bleak hands them over); the bytes themselves are unchanged.
"""

from __future__ import annotations

import random

import pytest

from gateway.parsers.ble import parse_advert_uncached
from gateway.parsers.ble_vendors import advert_kind, advert_signature, describe, is_manufacturer_only


def mfr(hex_body: str) -> bytes:
    b = bytes.fromhex(hex_body)
    return bytes([len(b) + 1, 0xFF]) + b


def svc(uuid16: str, hex_body: str) -> bytes:
    b = bytes.fromhex(uuid16)[::-1] + bytes.fromhex(hex_body)
    return bytes([len(b) + 1, 0x16]) + b


# (source, payload, expected kind, expected first message)
REAL = [
    ("ROS", bytes.fromhex("02011a020a0c") + mfr("4c001005471cfe5900"), "phone", "apple-nearby-info"),
    ("ROS", bytes.fromhex("02011a020a0c") + mfr("4c0010064b1eaff9a9bb"), "phone", "apple-nearby-info"),
    ("SEEMOO", mfr("4C00100504982E25F0"), "phone", "apple-nearby-info"),
    ("SEEMOO", mfr("4C000C0E00312A3A3C7DFA7FC8E7C8639BFC100501181096B1"), "phone", "apple-handoff"),
    ("TD", mfr("4c000c0e00a7582cd64fff2fe83046c99f5b10065a19e96670d8"), "phone", "apple-handoff"),
    ("SEEMOO", mfr("4c000f05a0336f0c56"), "phone", "apple-nearby-action"),
    ("SEEMOO", mfr("4C00121900EA53A04FD71ED534080DE2F409310C64AACABCEC8ED70100"), "tracker", "apple-find-my"),
    ("TD", mfr("4c001219003d9967e0d67bf55617939043e48fd6762144da3e35160300"), "tracker", "apple-find-my"),
    ("TD", mfr("4c000719010e2022f58f00000a7d9fff27234873d4305e0fed1b39e2b8"), "earbuds", "apple-proximity-pairing"),
    ("TD", mfr("4c0009060304c0a87b1e130c1adefc915b9ef8010401030c"), "fixture", "apple-airplay-target"),
    ("TD", mfr("060001092002ac6d90ec0132b3204cd39c7ced3e48436ba15dc6314778"), "computer", "ms-cdp"),
    ("ROS", mfr("060001092002614cbc4fb7b91fe9ae8c0141965120c6df27f94408e411"), "computer", "ms-cdp"),
    ("TD", bytes.fromhex("020106") + mfr("4c000215426c7565436861726d426561636f6e730efe1355c5"), "beacon", "ibeacon"),
    ("TD", mfr("4c000215fda50693a4e24fb1afcfc6eb07647825000100021a"), "beacon", "ibeacon"),
    ("TD", svc("feed", "0200c58aaccd312f479e"), "tracker", "tile"),
    ("TD", svc("feec", "0200c58aaccd312f479e"), "tracker", "tile"),
    ("TD", svc("fd84", "0200c58aaccd312f479e"), "tracker", "tile"),
    ("TD", svc("fd6f", "e7c6d34c71e48baf278bd99be74685bca78126ab"), "phone", "exposure-notification"),
    ("TD", svc("fe95", "5020aa01123c0338342d580a10013e"), "sensor", "xiaomi-mibeacon"),
    ("TD", svc("fe95", "712098004a63b6658d7cc40d071003f32600"), "sensor", "xiaomi-mibeacon"),
    ("TD", svc("181a", "a4c138d5d49801453e510b7b62"), "sensor", "environmental-sensing"),
    ("TD", svc("181a", "5601cf38c1a44008bd13470c64cc0f"), "sensor", "environmental-sensing"),
    ("TD", svc("fdcd", "0807ffeeddccbbaa01041201720202010d"), "sensor", "qingping"),
    ("TD", svc("fd3d", "6900ba18993b"), "sensor", "switchbot"),
    ("TD", svc("fcd2", "40001d01643a01"), "sensor", "bthome"),
    ("TD", mfr("990403291A1ECE1EFC18F94202CA0B53"), "sensor", "ruuvitag"),
    ("TD", mfr("6b003b164446"), "wearable", "polar"),
    ("TD", mfr("6b002f166b68"), "wearable", "polar"),
    ("TD", mfr("dc0004710502360000000f0004"), "accessory", "oral-b"),
    ("TD", mfr("88ec000418ee6400"), "sensor", "govee"),
    ("TD", svc("181d", "223e30e607020e10293a"), "sensor", "weight-scale"),
    (
        "ROS",
        bytes.fromhex("0303") + bytes.fromhex("9ffe") + svc("fe9f", "025a535579743475695f75670000017110fdcc85"),
        "phone",
        "google-nearby",
    ),
]


@pytest.mark.parametrize(
    ("source", "payload", "kind", "message"), REAL, ids=[f"{r[0]}-{r[3]}-{i}" for i, r in enumerate(REAL)]
)
def test_real_adverts_decoded_with_their_kind(source: str, payload: bytes, kind: str, message: str) -> None:
    adv = parse_advert_uncached(payload)
    msgs = describe(adv.manufacturer_data, adv.service_data, adv.service_uuids)
    assert msgs, f"{source}: nothing recognised"
    assert msgs[0].message == message
    assert advert_kind(msgs) == kind


def test_at_least_30_real_adverts_of_15_kinds() -> None:
    assert len(REAL) >= 30
    assert len({r[3] for r in REAL}) >= 15


def test_nearby_info_fields_and_what_rotates() -> None:
    adv = parse_advert_uncached(mfr("4c001005471cfe5900"))
    (m,) = describe(adv.manufacturer_data, adv.service_data)
    assert m.fields["action_code"] == 7 and m.fields["action"] == "screen on"
    assert m.fields["auth_tag"] == "fe5900"
    # the auth tag rotates with the address; status/action and data flags do not
    other = parse_advert_uncached(mfr("4c001005471c123456"))
    (m2,) = describe(other.manufacturer_data, other.service_data)
    assert m.stable == m2.stable


def test_handoff_sequence_is_the_counter() -> None:
    adv = parse_advert_uncached(mfr("4C000C0E00312A3A3C7DFA7FC8E7C8639BFC100501181096B1"))
    ho = describe(adv.manufacturer_data, adv.service_data)[0]
    assert ho.seq == 0x2A31


def test_signature_leaves_the_name_out() -> None:
    sig = advert_signature((), tx_power=12, flags=26, local_name="Anna's iPhone")
    assert "Anna" not in sig and "iPhone" not in sig


def test_unknown_vendor_named_from_sig_table() -> None:
    adv = parse_advert_uncached(mfr("5900" + "0102030405"))  # Nordic Semiconductor, unknown format
    (m,) = describe(adv.manufacturer_data, adv.service_data)
    assert m.message == "manufacturer" and m.kind == "unknown"
    assert m.vendor == "Nordic Semiconductor ASA"


def test_truncated_vendor_messages_never_raise() -> None:
    for body in ("4c0010", "4c001005", "4c000719", "0600", "060001", "0600030001"):
        adv = parse_advert_uncached(mfr(body))
        msgs = describe(adv.manufacturer_data, adv.service_data)
        assert msgs and all(isinstance(m.message, str) for m in msgs)


def test_describe_fuzz_never_raises() -> None:
    rng = random.Random(5)
    heads = [b"\x4c\x00", b"\x06\x00", b"\x75\x00", b"\xe0\x00", b"\x99\x04", b"\x59\x00"]
    for _ in range(20000):
        body = rng.choice(heads) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 28)))
        describe({int.from_bytes(body[:2], "little"): body[2:]}, {})
        describe({}, {f"0000{rng.choice(['fe2c', 'fd5a', 'feaa', 'feed', 'fd6f'])}-0000-1000-8000-00805f9b34fb": body})


def test_manufacturer_only_hint() -> None:
    assert is_manufacturer_only(bytes.fromhex("4c001005471cfe5900"))
    assert not is_manufacturer_only(mfr("4c001005471cfe5900"))
