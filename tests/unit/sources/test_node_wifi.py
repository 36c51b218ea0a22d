"""Sensor nodes' Wi-Fi reports: the typed model, the topic, the ingest, the merge into the grouping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.capture.radio import channel_freq
from gateway.config import NodesSettings, WifiSettings
from gateway.identity.wifi_merge import NodeProbe
from gateway.models import WifiNodeReport
from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.radiotap import build_radiotap
from gateway.sources.base import SourceHealth
from gateway.sources.node_ingest import NodeIngest
from gateway.sources.wifi import _ProbeObservations

T0 = 1_767_261_600.0


def _ingest() -> NodeIngest:
    s = NodesSettings.model_validate({"enabled": True, "mapping": {"front": "n11", "back": "n12"}})
    return NodeIngest(s, ["n11", "n12", "gw"])


def _report(node: str, t0: float, probes: list[dict[str, object]]) -> bytes:
    return json.dumps({"v": 1, "node": node, "t0_ms": int(t0 * 1000), "probes": probes}).encode()


def test_the_report_model_says_which_field_is_wrong() -> None:
    ok = WifiNodeReport.model_validate_json(
        _report("front", T0, [{"dt": 5, "addr": "da:a1:19:00:00:01", "seq": 17, "rssi": -61, "ch": 6}])
    )
    assert ok.probes[0].seq == 17
    with pytest.raises(ValidationError, match="seq"):
        WifiNodeReport.model_validate_json(
            _report("front", T0, [{"dt": 5, "addr": "da:a1:19:00:00:01", "seq": 5000, "rssi": -61, "ch": 6}])
        )
    with pytest.raises(ValidationError, match="ssid"):  # no SSIDs, no elements: extra fields refused
        WifiNodeReport.model_validate_json(
            _report("front", T0, [{"dt": 5, "addr": "da:a1:19:00:00:01", "seq": 1, "rssi": -61, "ch": 6, "ssid": "x"}])
        )


def test_node_reports_reach_the_wifi_source_on_the_gateway_clock_with_their_sensor() -> None:
    core = _ingest()
    assert "retail-node/+/wifi" in core.router.filters
    got: list[NodeProbe] = []
    core.on_wifi = got.extend
    arrival = T0 + 0.3
    probes: list[dict[str, object]] = [
        {"dt": 0, "addr": "da:a1:19:00:00:01", "seq": 17, "rssi": -61, "ch": 6},
        {"dt": 40, "addr": "da:a1:19:00:00:02", "seq": 3, "rssi": -80, "ch": 6},
    ]
    payload = _report("front", T0, probes)
    assert core.ingest_many([("retail-node/front/wifi", payload)], arrival) == []  # no BLE observation
    assert [(p.sensor, p.mac, p.seq, p.rssi) for p in got] == [
        ("n11", "da:a1:19:00:00:01", 17, -61.0),  # as the capture's decoder writes it
        ("n11", "da:a1:19:00:00:02", 3, -80.0),
    ]
    assert got[1].ts - got[0].ts == pytest.approx(0.04)  # the node's own spacing
    assert got[1].ts <= arrival
    # a node cannot speak for another; a bad field is named
    core.ingest_many([("retail-node/back/wifi", _report("front", T0, []))], arrival)
    assert core.nodes["back"].last_error is not None and "node" in core.nodes["back"].last_error
    core.ingest_many([("retail-node/back/wifi", b'{"v": 1, "node": "back", "t0_ms": 5, "probes": [{}]}')], arrival)
    assert core.nodes["back"].dropped["malformed"] == 2


def test_without_a_wifi_source_node_reports_are_counted_and_dropped() -> None:
    core = _ingest()
    core.ingest_many(
        [
            (
                "retail-node/front/wifi",
                _report("front", T0, [{"dt": 0, "addr": "da:a1:19:00:00:01", "seq": 1, "rssi": -61, "ch": 1}]),
            )
        ],
        T0 + 0.1,
    )
    assert core.dropped["wifi_no_capture"] == 1


def _frame(mac: bytes, seq: int, rssi: int) -> bytes:
    ies = [(0, b""), (1, bytes([0x82, 0x84, 0x8B, 0x96])), (3, bytes([6]))]
    return build_radiotap(signal_dbm=rssi, freq_mhz=channel_freq(6), flags=0) + build_probe_request(mac, seq, ies)


def test_a_frame_heard_by_nodes_too_is_one_burst_with_a_level_per_receiver() -> None:
    conv = _ProbeObservations(WifiSettings(group_hold_s=2.0), SourceHealth(name="wifi:test"))
    mac = bytes.fromhex("daa119000001")
    text = "da:a1:19:00:00:01"
    # one node hears the frame before the capture radio's copy is decoded, another after it
    conv.node_probes([NodeProbe(T0 + 0.01, "n11", text, 17, -61.0)])
    obs = conv.convert(T0, 127, _frame(mac, 17, -70), 6)
    assert obs is not None and obs.device == text
    conv.node_probes([NodeProbe(T0 + 0.3, "n12", text, 17, -77.0)])
    st = conv.grouper._macs[obs.device]
    assert st.mac.pos == {"n11": [-61.0, 1.0], "n12": [-77.0, 1.0]}
    assert st.unit.agg.pos == st.mac.pos  # the burst's, while its decision is held
    assert conv.nodes.counts()["matched"] == 2 and conv.nodes.counts()["late"] == 1
    conv.sync_health()
    assert conv.health.detail["node_reports"]["matched"] == 2


def test_the_daemon_hands_node_reports_to_the_wifi_source() -> None:
    from gateway.config import Settings
    from gateway.runtime.daemon import build_sources, load_store_layout

    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "wifi"
    pcap = next(iter(sorted(fixture.glob("*.pcap*"))))
    settings = Settings.model_validate(
        {"wifi": {"enabled": True, "pcap": str(pcap)}, "nodes": {"enabled": True, "mapping": {"front": "n11"}}}
    )
    sources = build_sources(settings, load_store_layout(settings))
    wifi = next(s for s in sources if s.name.startswith("wifi"))
    nodes = next(s for s in sources if s.capabilities.nodes is not None)
    assert wifi.capabilities.probe_sink is not None
    assert nodes.core.on_wifi == wifi.capabilities.probe_sink  # type: ignore[attr-defined]
