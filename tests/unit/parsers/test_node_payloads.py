"""Sensor-node payload decoders: ESPresense device/telemetry/status and the native batch topic.

ESPresense vectors follow the firmware's v4 ``fill()`` keys (mac, id, name, rssi@1m, rssi, rxAdj,
rssiVar, distance, var, int) and the v3 extras (raw, idType, speed), see ESPresense/ESPresense
src/BleFingerprint.cpp and its telemetry in src/main.cpp; the MAC/IRK values are made up.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity.subjects import irk_link
from gateway.parsers.node_payloads import (
    NodePayloadError,
    TopicRouter,
    decode_espresense_device,
    decode_espresense_devices,
    decode_espresense_telemetry,
    decode_native_adv,
    decode_status,
    mac_to_device,
)

V4 = (
    b'{"mac":"d83addb1ee01","id":"apple:1005:9-26","name":"","rssi@1m":-65,"rssi":-71.24,'
    b'"rxAdj":0,"rssiVar":1.7,"distance":2.41,"var":0.12,"int":1012}'
)
V3 = (
    b'{"id":"irk:00112233445566778899aabbccddeeff","idType":120,"rssi@1m":-65,"rssi":-80,'
    b'"raw":6.1,"distance":5.92,"speed":0.02,"mac":"4f1e2d3c4b5a","interval":987}'
)
IBEACON = (
    b'{"mac":"c1b2c3d4e5f6","id":"iBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-100-1",'
    b'"rssi@1m":-59,"rssi":-67,"rxAdj":0,"distance":1.7,"var":0.1,"int":100}'
)
TELEMETRY = (
    b'{"ip":"192.168.7.21","uptime":86412,"firm":"esp32","rssi":-61,"ver":"v4.0.6","adverts":91823,'
    b'"seen":412,"reported":35711,"freeHeap":131000,"maxHeap":90112,"scanStack":1820}'
)


# -- topics ----------------------------------------------------------------------------------------


def test_router_classifies_espresense_and_native_topics() -> None:
    r = TopicRouter("espresense", "retail-node")
    assert r.classify("espresense/devices/apple:1005:9-26/n11") == ("esp_device", "n11")
    assert r.classify("espresense/rooms/n11/telemetry") == ("esp_telemetry", "n11")
    assert r.classify("espresense/rooms/n11/status") == ("esp_status", "n11")
    assert r.classify("retail-node/n12/adv") == ("native_adv", "n12")
    assert r.classify("retail-node/n12/status") == ("native_status", "n12")
    # settings echoes, extra levels, empty levels, other roots: never observations
    for t in (
        "espresense/rooms/n11/max_distance",
        "espresense/devices/x/n11/extra",
        "espresense/devices//n11",
        "espresense/devices/x/",
        "espresensefoo/devices/x/n11",
        "retail-node/n12/adv/more",
        "retail-node//adv",
        "other/n11",
        "",
    ):
        assert r.classify(t)[0] == "ignored", t


def test_router_prefix_with_levels_and_filters() -> None:
    r = TopicRouter("store-7/espresense", "store-7/nodes")
    assert r.classify("store-7/espresense/devices/abc/front") == ("esp_device", "front")
    assert r.classify("espresense/devices/abc/front")[0] == "ignored"
    assert "store-7/espresense/devices/+/+" in r.filters
    assert "store-7/nodes/+/adv" in r.filters


# -- ESPresense devices -----------------------------------------------------------------------------


def test_v4_fingerprint_id_is_not_a_link_and_default_1m_is_dropped() -> None:
    d = decode_espresense_device(V4)
    assert d.device == "D8:3A:DD:B1:EE:01"
    assert d.rssi == pytest.approx(-71.24)
    assert d.link is None  # "apple:1005:9-26" is shared by many phones
    assert d.rssi_at_1m is None  # the node's default reference is not a calibration


def test_v3_irk_id_becomes_the_same_link_as_the_ble_stage() -> None:
    d = decode_espresense_device(V3)
    assert d.device == "4F:1E:2D:3C:4B:5A"
    assert d.link == irk_link(bytes.fromhex("00112233445566778899aabbccddeeff"))
    assert "00112233445566778899aabbccddeeff" not in d.link  # the raw IRK does not travel on
    assert d.rssi == -80.0


def test_ibeacon_keeps_its_measured_power_and_links_by_beacon_id() -> None:
    d = decode_espresense_device(IBEACON)
    assert d.rssi_at_1m == -59.0
    assert d.link is not None and d.link.startswith("iBeacon:")


def test_id_only_message_uses_the_id_as_device() -> None:
    d = decode_espresense_device(b'{"id":"name:front-door-tag","rssi":-70}')
    assert d.device == "name:front-door-tag"
    assert d.link is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "payload"),
        (b"not json", "payload"),
        (b"[1,2]", "payload"),
        (b'{"id":"x"}', "rssi"),
        (b'{"id":"x","rssi":"-70"}', "rssi"),
        (b'{"id":"x","rssi":true}', "rssi"),
        (b'{"id":"x","rssi":NaN}', "rssi"),
        (b'{"id":"x","rssi":-500}', "rssi"),
        (b'{"id":"x","rssi":99}', "rssi"),
        (b'{"rssi":-70}', "id"),
        (b'{"id":"","rssi":-70}', "id"),
        (b'{"id":7,"rssi":-70}', "id"),
        (b'{"id":"x","mac":"zz3addb1ee01","rssi":-70}', "mac"),
        (b'{"id":"x","mac":12,"rssi":-70}', "mac"),
        (b'{"id":"x","mac":"d83add","rssi":-70}', "mac"),
        (b'{"id":"iBeacon:a-1-2","rssi":-70,"rssi@1m":"x"}', "rssi@1m"),
        (b"\xff\xfe{", "payload"),
        (b"[" * 100_000, "payload"),
        (b"[" * 16_000, "payload"),
    ],
)
def test_malformed_device_payloads_name_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(NodePayloadError) as ei:
        decode_espresense_device(payload)
    assert ei.value.field == field


def test_error_text_never_contains_the_payload() -> None:
    with pytest.raises(NodePayloadError) as ei:
        decode_espresense_device(b'{"mac":"d83addb1ee0Z","id":"x","rssi":-70}')
    assert "d83add" not in str(ei.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_node_payload_error(data: bytes) -> None:
    for fn in (decode_espresense_device, decode_espresense_telemetry, decode_status):
        with contextlib.suppress(NodePayloadError):
            fn(data)
    with contextlib.suppress(NodePayloadError):
        decode_native_adv(data, "n1")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "mac", "rssi", "rssi@1m", "name", "distance"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    )
)
def test_any_json_object_decodes_or_raises_node_payload_error(doc: dict[str, object]) -> None:
    try:
        d = decode_espresense_device(json.dumps(doc).encode())
    except NodePayloadError:
        return
    assert -130 <= d.rssi <= 20


def test_batch_decode_matches_one_by_one() -> None:
    """One node's reports decoded in one json.loads; a bad one only fails itself, in place."""
    payloads = [V4, b'{"id":"x","rssi":"loud"}', V3, b"{not json}", IBEACON, b'{"id":"a"}', b"[1]", V4]
    got = decode_espresense_devices(payloads)
    want: list[object] = []
    for p in payloads:
        try:
            want.append(decode_espresense_device(p))
        except NodePayloadError as e:
            want.append(("err", e.field))
    assert [g if not isinstance(g, NodePayloadError) else ("err", g.field) for g in got] == want
    good = [V4, V3, IBEACON] * 50
    assert decode_espresense_devices(good) == [decode_espresense_device(p) for p in good]
    # a payload pair that would shift element boundaries in a joined array is not decoded as a shift
    tricky = [b'{"id":"x","rssi":-70},{"id":"y","rssi":-71}', b'{"id":"z","rssi":-72}']
    res = decode_espresense_devices(tricky)
    assert isinstance(res[0], NodePayloadError) and not isinstance(res[1], NodePayloadError)


def test_mac_forms() -> None:
    assert mac_to_device("d83addb1ee01") == "D8:3A:DD:B1:EE:01"
    assert mac_to_device("d8:3a:dd:b1:ee:01") == "D8:3A:DD:B1:EE:01"
    assert mac_to_device("D8-3A-DD-B1-EE-01") == "D8:3A:DD:B1:EE:01"
    for bad in ("d8:3a-dd:b1:ee:01", "d83addb1ee0", "g83addb1ee01", ""):
        assert mac_to_device(bad) is None


# -- telemetry / status -----------------------------------------------------------------------------


def test_telemetry_fields() -> None:
    t = decode_espresense_telemetry(TELEMETRY)
    assert t.uptime_s == 86412
    assert t.wifi_rssi == -61
    assert t.version == "v4.0.6"
    assert t.free_heap == 131000
    assert t.adverts == 91823


def test_status_text_and_native_json() -> None:
    assert decode_status(b"online") == (True, None)
    assert decode_status(b"offline") == (False, None)
    online, tele = decode_status(b'{"v":1,"up_s":120,"heap":50000,"wifi_rssi":-70,"drops":3,"fw":"1.0.3"}')
    assert online and tele is not None
    assert tele.uptime_s == 120 and tele.drops == 3 and tele.version == "1.0.3"
    with pytest.raises(NodePayloadError):
        decode_status(b"maybe")


# -- native ---------------------------------------------------------------------------------------------

IBEACON_AD = "0201061aff4c000215e2c56db5dffb48d2b060d0f5a71096e00064000ac5"  # measured power 0xC5 = -59


def native(node: str = "n11", **over: object) -> bytes:
    doc: dict[str, object] = {
        "v": 1,
        "node": node,
        "t0_ms": 1767261600123,
        "fw": "1.0.3",
        "adv": [
            {"dt": 0, "addr": "5c:2e:11:22:33:44", "at": 1, "rssi": -67, "ch": 37, "d": "02011a"},
            {"dt": 41, "addr": "d0:0b:aa:bb:cc:dd", "at": 0, "rssi": -80, "ch": 38, "d": IBEACON_AD},
        ],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_native_batch() -> None:
    b = decode_native_adv(native(), "n11")
    assert b.node == "n11" and b.t0 == pytest.approx(1767261600.123)
    assert [a.device for a in b.adverts] == ["5C:2E:11:22:33:44", "D0:0B:AA:BB:CC:DD"]
    assert b.adverts[1].dt_s == pytest.approx(0.041)
    assert b.adverts[1].rssi_at_1m == -59.0
    assert b.adverts[0].rssi_at_1m is None
    assert b.bad_adverts == 0 and b.version == "1.0.3"


def test_native_node_cannot_speak_for_another_node() -> None:
    with pytest.raises(NodePayloadError) as ei:
        decode_native_adv(native(node="n12"), "n11")
    assert ei.value.field == "node"


def test_native_bad_entries_are_dropped_one_by_one() -> None:
    adv = [
        {"dt": 0, "addr": "5c:2e:11:22:33:44", "rssi": -67},
        {"dt": -1, "addr": "5c:2e:11:22:33:44", "rssi": -67},
        {"dt": 0, "addr": "nope", "rssi": -67},
        {"dt": 0, "addr": "5c:2e:11:22:33:44", "rssi": "x"},
        {"dt": 0, "addr": "5c:2e:11:22:33:44", "rssi": -60, "d": "0"},
        {"dt": 0, "addr": "5c:2e:11:22:33:44", "rssi": -60, "d": "05ff"},  # AD length past the end
        "x",
    ]
    b = decode_native_adv(native(adv=adv), "n11")
    assert len(b.adverts) == 1 and b.bad_adverts == 6


@pytest.mark.parametrize(
    ("over", "field"),
    [({"v": 2}, "v"), ({"t0_ms": "x"}, "t0_ms"), ({"t0_ms": -5}, "t0_ms"), ({"adv": {}}, "adv")],
)
def test_native_bad_envelope(over: dict[str, object], field: str) -> None:
    with pytest.raises(NodePayloadError) as ei:
        decode_native_adv(native(**over), "n11")
    assert ei.value.field == field


def test_native_too_many_adverts() -> None:
    adv = [{"dt": 0, "addr": "5c:2e:11:22:33:44", "rssi": -67}] * 501
    with pytest.raises(NodePayloadError, match="more than"):
        decode_native_adv(native(adv=adv), "n11")
