"""Content activation end to end with real parts: `gateway run` (subprocess, simulated store) ->
commands over the uplink broker -> replies; activations to an MQTT screen on a separate store-local
broker; with the uplink broker down campaigns keep firing and the activation reports arrive after
it returns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.cloud_standin import CloudStandIn
from gateway.mqtt.client import AsyncMqttClient
from tests.conftest import gateway_cmd, gateway_env, make_mosquitto
from tests.signing import Platform

pytestmark = pytest.mark.integration

CMD_TOPIC = "retail/demo-store/gw-test/commands"
REPLY_TOPIC = "retail/demo-store/gw-test/replies"


async def wait_for(pred: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return bool(pred())


async def collect(client: AsyncMqttClient, sink: list[tuple[str, dict[str, Any]]]) -> None:
    with contextlib.suppress(Exception):
        async for m in client.messages():
            sink.append((m.topic, json.loads(m.payload)))


async def test_commands_activations_and_offline_reports(tmp_path: Path) -> None:
    local = make_mosquitto(tmp_path)
    local.start()
    # the uplink broker keeps its sessions across the restart below (as a production broker does), and
    # the platform's stand-in has a persistent session: reports the gateway delivers before the new
    # stand-in has subscribed are queued for it, not dropped (that race made this test flaky)
    mosquitto = make_mosquitto(tmp_path, persist_to=tmp_path / "broker-db")
    mosquitto.start()
    uplink_port = mosquitto.port
    platform = Platform("gw-test")  # signs every command; the gateway holds the public key
    platform.write_public_key(tmp_path / "command.pub")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f"""
[gateway]
id = "gw-test"
store_id = "demo-store"
[paths]
state_dir = "{tmp_path / "state"}"
[mqtt]
host = "127.0.0.1"
port = {uplink_port}
tls = false
reconnect_max_s = 1.0
[local_broker]
host = "127.0.0.1"
port = {local.port}
[simulator]
enabled = true
speed = 30
shoppers_per_hour = 900
[status]
enabled = false
[content]
command_public_key_file = "{tmp_path / "command.pub"}"
[log]
format = "json"
"""
    )
    cloud = AsyncMqttClient("127.0.0.1", uplink_port, client_id="platform")
    await cloud.connect()
    await cloud.subscribe(REPLY_TOPIC)
    replies: list[tuple[str, dict[str, Any]]] = []
    rtask = asyncio.create_task(collect(cloud, replies))
    screen = AsyncMqttClient("127.0.0.1", local.port, client_id="screen")
    await screen.connect()
    await screen.subscribe("gateway/actors/screen-1")
    shown: list[tuple[str, dict[str, Any]]] = []
    stask = asyncio.create_task(collect(screen, shown))
    standin = CloudStandIn("127.0.0.1", uplink_port, verbose=False, durable=True)
    ctask = asyncio.create_task(standin.run())
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)),
        env=gateway_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    standin2: CloudStandIn | None = None
    c2task: asyncio.Task[None] | None = None
    try:
        # the gateway subscribes to its command topic once connected: retry ping until answered
        for i in range(100):
            await cloud.publish(CMD_TOPIC, platform.cmd("ping", {}, id=f"ping-{i}"))
            if await wait_for(lambda: any(r["id"] and r["id"].startswith("ping") for _, r in replies), 0.3):
                break
        assert any(r["ok"] for _, r in replies), replies
        await cloud.publish(
            CMD_TOPIC,
            platform.cmd(
                "actors.put",
                {"actor": {"id": "screen-1", "categories": ["promo"], "scopes": ["zone"]}},
                id="a1",
                revision=1,
            ),
        )
        campaign = {
            "id": "welcome",
            "category": "promo",
            "content_id": "welcome-video",
            "actors": ["screen-1"],
            "segment": {"trigger": "visit.started"},
            "caps": {},
        }
        await cloud.publish(CMD_TOPIC, platform.cmd("campaigns.put", {"campaign": campaign}, id="c1", revision=1))
        await cloud.publish(
            CMD_TOPIC, platform.cmd("campaigns.put", {"campaign": {**campaign, "priority": "x"}}, id="bad", revision=2)
        )
        await cloud.publish(
            CMD_TOPIC, platform.cmd("campaigns.delete", {"campaign_id": "welcome"}, id="old", revision=1)
        )
        await cloud.publish(CMD_TOPIC, b"\xff not json")
        assert await wait_for(lambda: {"a1", "c1", "bad", "old", None} <= {r["id"] for _, r in replies}, 10), replies
        by_id = {r["id"]: r for _, r in replies}
        assert by_id["a1"]["ok"] and by_id["c1"]["ok"] and by_id["c1"]["applied_revision"] == 1
        assert by_id["bad"]["error"]["path"] == "/body/campaign/priority" and not by_id["bad"]["ok"]
        assert not by_id["old"]["ok"] and by_id["old"]["error"]["path"] == "/revision"
        assert by_id[None]["error"]["reason"].startswith("not valid JSON")

        # activations reach the screen, stripped to content (+zone scope); reports reach the platform
        assert await wait_for(lambda: len(shown) >= 3, 30), shown
        topic, payload = shown[0]
        assert topic == "gateway/actors/screen-1"
        assert payload["content_id"] == "welcome-video" and "customer_ref" not in payload
        assert await wait_for(lambda: standin.by_type.get("activation", 0) >= 1, 15)

        # uplink broker down: campaigns keep firing locally
        mosquitto.stop()
        n_before = len(shown)
        assert await wait_for(lambda: len(shown) >= n_before + 5, 30)
        offline_ids = {p["activation_id"] for _, p in shown[n_before:]}
        await asyncio.sleep(0.5)
        # broker back (same port): the stored reports are delivered
        mosquitto.start()
        standin2 = CloudStandIn("127.0.0.1", uplink_port, verbose=False, durable=True)
        c2task = asyncio.create_task(standin2.run())
        s2 = standin2

        def delivered() -> set[str]:
            return {e["event"]["event_id"] for e in s2.events if e["event"]["type"] == "activation"}

        assert await wait_for(lambda: offline_ids <= delivered(), 40), (len(offline_ids), len(delivered()))
        reports = [e["event"] for e in s2.events if e["event"]["event_id"] in offline_ids]
        assert all(r["result"] == "sent" and r["actor_id"] == "screen-1" for r in reports)
        assert all(r["subject_kind"] == "pseudonym" for r in reports)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert "00112233" not in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for t in (rtask, stask, ctask, c2task):
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in (rtask, stask, ctask, c2task) if t is not None), return_exceptions=True)
        with contextlib.suppress(Exception):
            await screen.disconnect()
        with contextlib.suppress(Exception):
            await cloud.disconnect()
        local.stop()
        mosquitto.stop()
