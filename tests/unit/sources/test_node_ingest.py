"""NodeIngest (pure): mapping as trust boundary, per-node counters, clock handling, liveness."""

from __future__ import annotations

import json

import pytest

from gateway.config import NodesSettings
from gateway.models import Observation
from gateway.sources.node_ingest import NodeIngest, NodeMappingError

SENSORS = ["n11", "n12", "n13", "gw"]
T0 = 1_767_261_600.0


def make(**over: object) -> NodeIngest:
    kw: dict[str, object] = {"enabled": True, "mapping": {"front": "n11", "back": "n12", "n13": "n13"}}
    kw.update(over)
    return NodeIngest(NodesSettings.model_validate(kw), SENSORS)


def dev(rssi: float = -70, mac: str = "d83addb1ee01", ident: str = "apple:1005:9-26") -> bytes:
    return json.dumps({"mac": mac, "id": ident, "rssi@1m": -65, "rssi": rssi}).encode()


def native(node: str, t0_ms: int, dts: list[int]) -> bytes:
    adv = [{"dt": dt, "addr": "5c:2e:11:22:33:44", "rssi": -60} for dt in dts]
    return json.dumps({"v": 1, "node": node, "t0_ms": t0_ms, "adv": adv}).encode()


def test_mapping_errors_are_clear() -> None:
    with pytest.raises(NodeMappingError, match="not in the layout: n99"):
        make(mapping={"a": "n99"})
    with pytest.raises(NodeMappingError, match="both map to 'n11'"):
        make(mapping={"a": "n11", "b": "n11"})


def test_observation_uses_the_mapped_sensor_and_arrival_minus_latency() -> None:
    core = make(latency_s=0.2)
    out = core.ingest_many([("espresense/devices/apple:1005:9-26/front", dev(-71))], T0)
    assert out == [Observation(T0 - 0.2, "n11", "D8:3A:DD:B1:EE:01", -71.0, "node", None, None)]
    assert core.nodes["front"].observations == 1


def test_unmapped_node_is_counted_and_refused_and_names_are_bounded() -> None:
    core = make()
    msgs = [(f"espresense/devices/x/room{i}", dev()) for i in range(200)]
    msgs += [("espresense/devices/x/n12", dev())]  # a sensor id, but no node is mapped by that name
    assert core.ingest_many(msgs, T0) == []
    assert core.dropped["unmapped_node"] == 201
    assert len(core.unmapped) == 65  # 64 names + "<other>"
    assert core.unmapped["<other>"] == 201 - 64


def test_a_node_cannot_inject_for_another_sensor() -> None:
    """The topic names the node; the native payload naming someone else is refused."""
    core = make(mapping={"n11": "n11", "n13": "n13"})
    out = core.ingest_many([("retail-node/n11/adv", native("n13", int(T0 * 1000), [0]))], T0)
    assert out == []
    assert core.nodes["n11"].dropped == {"malformed": 1}
    assert core.nodes["n11"].last_error is not None and core.nodes["n11"].last_error.startswith("node:")
    assert core.nodes["n13"].messages == 0


def test_malformed_counted_per_node_and_good_messages_still_flow() -> None:
    core = make()
    msgs = [
        ("espresense/devices/x/front", b"{bad"),
        ("espresense/devices/x/front", dev(-60)),
        ("espresense/devices/x/back", b'{"id":"x","rssi":"loud"}'),
        ("espresense/rooms/back/telemetry", b"[]"),
    ]
    out = core.ingest_many(msgs, T0)
    assert [o.sensor for o in out] == ["n11"]
    assert core.nodes["front"].dropped == {"malformed": 1}
    assert core.nodes["back"].dropped == {"malformed": 2}
    assert core.nodes["back"].last_error in (
        "payload: expected a JSON object, got list",
        "rssi: expected a number, got str",
    )
    assert core.dropped["malformed"] == 3


def test_rate_limit_per_node() -> None:
    core = make(max_rate_per_node=100.0)
    msgs = [("espresense/devices/x/front", dev())] * 150 + [("espresense/devices/x/back", dev())] * 10
    out = core.ingest_many(msgs, T0)
    assert sum(o.sensor == "n11" for o in out) == 100  # one second of burst
    assert sum(o.sensor == "n12" for o in out) == 10  # another node is not affected
    assert core.nodes["front"].dropped == {"rate_limited": 50}
    # tokens refill with time
    assert len(core.ingest_many([("espresense/devices/x/front", dev())] * 20, T0 + 0.105)) == 10


def test_native_time_uses_node_spacing_and_a_bounded_measured_latency() -> None:
    core = make(mapping={"n11": "n11"}, latency_max_s=0.5)
    # node clock 0.03 s behind arrival for the newest advert; adverts 100 ms apart
    arrival = T0 + 10.0
    t0_ms = int((arrival - 0.03 - 0.2) * 1000)
    out = core.ingest_many([("retail-node/n11/adv", native("n11", t0_ms, [0, 100, 200]))], arrival)
    lat = core.nodes["n11"].latency_s
    assert lat == pytest.approx(0.03, abs=0.002)  # fast down from the 0.1 s default
    assert [round(o.ts - arrival, 3) for o in out] == [round(-lat - 0.2, 3), round(-lat - 0.1, 3), round(-lat, 3)]
    # a node clock 2 s behind (drift) raises the estimate only slowly and never past the bound
    for k in range(200):
        a = arrival + 1 + k
        core.ingest_many([("retail-node/n11/adv", native("n11", int((a - 2.0) * 1000), [0]))], a)
    assert core.nodes["n11"].latency_s == pytest.approx(0.5)
    # beyond max_clock_skew_s the batch is dropped and counted
    a = arrival + 500
    assert core.ingest_many([("retail-node/n11/adv", native("n11", int((a - 60) * 1000), [0]))], a) == []
    assert core.nodes["n11"].dropped["clock_skew"] == 1


def test_liveness_up_quiet_down_and_last_will() -> None:
    core = make(min_quiet_s=2.0, silent_after_s=30.0, quiet_gap_factor=10.0)
    assert core.check(T0) == []
    # "front" reports 20 messages/s for 20 s
    for k in range(400):
        t = T0 + k * 0.05
        core.ingest_many([("espresense/devices/x/front", dev())], t)
        if k % 10 == 0:
            core.check(t)
    t_last = T0 + 399 * 0.05
    assert core.nodes["front"].state == "up"
    assert core.nodes["front"].rate == pytest.approx(17, abs=3)  # EWMA, tau 10 s
    # silent: quiet after max(2, 10 x mean gap) = 2 s, not after 30 s
    assert core.check(t_last + 1.0) == []
    assert core.check(t_last + 2.1) == [("n11", False)]
    assert core.nodes["front"].state == "quiet"
    # never-heard nodes go down silent_after_s after the start; "front" was already inactive
    assert core.check(t_last + 31) == [("n12", False), ("n13", False)]
    assert core.nodes["front"].state == "down"
    # it comes back
    core.ingest_many([("espresense/devices/x/front", dev())], t_last + 40)
    assert core.check(t_last + 40) == [("n11", True)]
    # a last will: down at once
    core.ingest_many([("espresense/rooms/front/status", b"offline")], t_last + 40.5)
    assert core.check(t_last + 40.5) == [("n11", False)]
    assert core.nodes["front"].state == "down"
    assert core.nodes["back"].state == "down"
    st = {d["name"]: d for d in core.status(t_last + 41)}
    assert st["front"]["online"] is False and st["front"]["messages"] == 402


def test_a_telemetry_only_node_is_not_quiet_between_reports() -> None:
    core = make(min_quiet_s=2.0, silent_after_s=30.0)
    core.check(T0)
    for k in range(8):
        t = T0 + 15 * k
        core.ingest_many([("espresense/rooms/back/telemetry", b'{"uptime": 100, "rssi": -60}')], t)
        core.check(t)
        assert core.check(t + 14) == []
        assert core.nodes["back"].state == "up"
    st = core.nodes["back"].as_dict(T0 + 15 * 7 + 5)
    assert st["uptime_s"] == pytest.approx(105.0)


def test_ignored_topics_are_counted_not_observed() -> None:
    core = make()
    assert core.ingest_many([("espresense/rooms/front/max_distance", b"16")], T0) == []
    assert core.dropped == {"ignored_topic": 1}


def test_native_random_addresses_are_irk_resolved_public_ones_are_not() -> None:
    from gateway.identity.addresses import IrkResolver

    spec_irk = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
    spec_rpa = "70:81:94:0d:fb:aa"  # Core spec Vol 3 Part H D.7 sample data
    core = NodeIngest(
        NodesSettings(enabled=True, mapping={"n11": "n11"}), SENSORS, IrkResolver({"customer-7": spec_irk})
    )
    adv = [
        {"dt": 0, "addr": spec_rpa, "at": 1, "rssi": -60},
        {"dt": 1, "addr": spec_rpa, "at": 0, "rssi": -61},  # said to be public: never resolved
        {"dt": 2, "addr": "5c:2e:11:22:33:44", "at": 1, "rssi": -62},
    ]
    doc = {"v": 1, "node": "n11", "t0_ms": int(T0 * 1000), "adv": adv}
    out = core.ingest_many([("retail-node/n11/adv", json.dumps(doc).encode())], T0 + 0.05)
    assert [o.link for o in out] == ["customer-7", None, None]


def test_settings_refuse_an_enabled_source_without_mapping_and_wildcard_prefixes() -> None:
    from gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="nodes.mapping is empty"):
        load_settings(nodes={"enabled": True})
    for bad in ("espresense/#", "a/+/b", "trailing/", "/leading"):
        with pytest.raises(ConfigError, match="topic_prefix"):
            load_settings(nodes={"topic_prefix": bad})
    assert load_settings(nodes={"native_prefix": "store-1/nodes"}).nodes.native_prefix == "store-1/nodes"
