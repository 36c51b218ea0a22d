"""The example local-broker ACL (hardware/sensor-nodes/local-broker.acl) on a real mosquitto: a node
logged in as n11 cannot publish for n12, anonymous clients get nothing through, and the gateway's
nodes source (user ``gateway``) reads what the nodes may publish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from gateway.config import NodesSettings, load_settings
from gateway.models import Observation
from gateway.mqtt.client import AsyncMqttClient, MqttConnectError, MqttError
from gateway.runtime.daemon import embedded_layout
from gateway.sources.nodes import NodesSource, make_source
from tests.conftest import REPO, Mosquitto, make_mosquitto

pytestmark = pytest.mark.integration

ACL = REPO / "hardware" / "sensor-nodes" / "local-broker.acl"


def secured(tmp_path: Path, pw: Path) -> Mosquitto:
    # `user root`: when the tests run as root, mosquitto would otherwise drop to the mosquitto user and
    # not be allowed to read the password/ACL files under the private pytest tmp dir (ignored otherwise)
    m = make_mosquitto(tmp_path, f"password_file {pw}\nacl_file {ACL}\nset_tcp_nodelay true\nuser root\n")
    m.conf.write_text(m.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    try:
        m.start()
    except BaseException:
        m.stop()
        raise
    return m


def passwd(path: Path, users: dict[str, str]) -> None:
    path.write_text("")
    for u, pw in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), u, pw], check=True, capture_output=True)


async def test_a_node_cannot_publish_for_another_sensor(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    passwd(pw, {"gateway": "gw-secret", "n11": "s11", "n12": "s12"})
    m = secured(tmp_path, pw)
    layout = embedded_layout()
    settings = load_settings(
        nodes={
            "enabled": True,
            "mapping": {"n11": "n11", "n12": "n12"},
            "broker_username": "gateway",
            "broker_password": "gw-secret",
        },
        local_broker={"host": m.host, "port": m.port},
    )
    src = make_source(settings, layout)
    got: list[Observation] = []

    async def consume() -> None:
        async for b in src.batches():
            got.extend(b)

    task = asyncio.create_task(consume())

    async def as_n11(topic: str, body: bytes) -> None:
        """Publish as node n11; a denied publish may be dropped or cost the connection (either is fine)."""
        node = AsyncMqttClient(
            m.host, m.port, client_id="espresense-n11", protocol="3.1.1", username="n11", password="s11"
        )
        await node.connect()
        with contextlib.suppress(MqttError):
            await node.publish(topic, body, qos=1)
        await node.disconnect()

    try:
        await src.wait_connected()
        with pytest.raises(MqttConnectError):
            await AsyncMqttClient(m.host, m.port, client_id="anon", protocol="3.1.1").connect()
        body = json.dumps({"mac": "d83addb1ee01", "id": "x", "rssi": -60}).encode()
        await as_n11("espresense/devices/x/n12", body)  # someone else's room: denied
        native = {"v": 1, "node": "n12", "t0_ms": 1, "adv": [{"dt": 0, "addr": "5c:2e:11:22:33:44", "rssi": -50}]}
        await as_n11("retail-node/n12/adv", json.dumps(native).encode())  # denied
        await as_n11("espresense/devices/x/n11", body)  # its own: delivered
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert [(o.sensor, o.rssi) for o in got] == [("n11", -60.0)]
        st = {d["name"]: d for d in src.node_status()}
        assert st["n12"]["messages"] == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        m.stop()


async def test_wrong_gateway_password_is_reported_not_raised(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    passwd(pw, {"gateway": "gw-secret"})
    m = secured(tmp_path, pw)
    src = NodesSource(
        NodesSettings(enabled=True, mapping={"n11": "n11"}),
        embedded_layout(),
        host=m.host,
        port=m.port,
        username="gateway",
        password="wrong",
    )
    task = asyncio.create_task(anext(src.batches()))  # type: ignore[arg-type]
    try:
        for _ in range(100):
            if src.health.detail.get("last_error"):
                break
            await asyncio.sleep(0.05)
        assert src.health.state == "degraded"
        assert "bad user name or password" in str(src.health.detail["last_error"]) or "not authorized" in str(
            src.health.detail["last_error"]
        )
        assert "wrong" not in str(src.health.detail)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await task
        m.stop()
