"""Several receivers, as a store runs them: the daemon with its Wi-Fi source (the capture relay's
socket) and its nodes source over a real mosquitto. A node publishes the probe requests it heard
(``retail-node/<node>/wifi``); the capture relay forwards the same frames: the daemon merges them,
and the frame's burst has the node's level (docs/wifi.md, "Several receivers")."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gateway.capture.radio import channel_freq
from gateway.capture.relay import Relay
from gateway.capture.wire import LINKTYPE_RADIOTAP
from gateway.config import load_settings
from gateway.mqtt.client import AsyncMqttClient
from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.radiotap import build_radiotap
from gateway.runtime.daemon import Daemon, embedded_layout
from gateway.sources.nodes import NodesSource
from gateway.sources.wifi import WifiRelaySource
from tests.conftest import Mosquitto, until

pytestmark = pytest.mark.integration


def _frame(mac: bytes, seq: int, rssi: int) -> bytes:
    ies = [(0, b""), (1, bytes([0x82, 0x84, 0x8B, 0x96])), (3, bytes([6]))]
    return build_radiotap(signal_dbm=rssi, freq_mhz=channel_freq(6), flags=0) + build_probe_request(mac, seq, ies)


async def test_a_probe_heard_by_the_capture_radio_and_a_node_is_one_frame_with_both_levels(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    layout = embedded_layout()
    sock = tmp_path / "capture.sock"
    settings = load_settings(
        paths={"state_dir": str(tmp_path / "state")},
        wifi={
            "enabled": True,
            "capture_socket": str(sock),
            "sensor_id": layout.sensors[0].id,
            "group_hold_s": 5.0,
            "node_merge_s": 10.0,
        },
        nodes={"enabled": True, "mapping": {"front": layout.sensors[1].id}},
        local_broker={"host": mosquitto.host, "port": mosquitto.port},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "tls": False},
        status={"enabled": False},
    )
    daemon = Daemon(settings, layout)
    wifi = next(s for s in daemon.sources if isinstance(s, WifiRelaySource))
    nodes = next(s for s in daemon.sources if isinstance(s, NodesSource))
    run = asyncio.create_task(daemon.run())
    pub = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id="node-front", protocol="3.1.1")
    relay: Relay | None = None
    try:
        await nodes.wait_connected()
        await pub.connect()
        await until(sock.exists)
        relay = Relay(sock)
        mac = bytes.fromhex("daa119000001")
        now = time.time()
        # the node's report first (two frames), then the capture radio's copies of the same frames
        report = {
            "v": 1, "node": "front", "t0_ms": int(now * 1000),
            "probes": [{"dt": 0, "addr": "da:a1:19:00:00:01", "seq": 100, "rssi": -58, "ch": 6},
                       {"dt": 20, "addr": "da:a1:19:00:00:01", "seq": 101, "rssi": -60, "ch": 6}],
        }  # fmt: skip
        await pub.publish("retail-node/front/wifi", json.dumps(report).encode(), qos=0)
        await until(lambda: wifi._conv.nodes.active)
        assert relay.forward(_frame(mac, 100, -71), LINKTYPE_RADIOTAP, ts_ns=int(now * 1e9), channel=6)
        assert relay.forward(_frame(mac, 101, -73), LINKTYPE_RADIOTAP, ts_ns=int((now + 0.02) * 1e9), channel=6)
        await until(lambda: wifi._conv.nodes.matched >= 2)
        st = wifi._conv.grouper._macs["da:a1:19:00:00:01"]
        assert st.mac.pos == {layout.sensors[1].id: [-118.0, 2.0]}  # the node's two levels, one receiver
        assert st.mac.first_n == 2  # and the capture radio's own
        assert nodes.core.wifi_probes == 2
    finally:
        if relay is not None:
            relay.close()
        await pub.disconnect()
        daemon.supervisor.request_stop("test over", 0)
        rc = await asyncio.wait_for(run, 20)
    assert rc == 0
