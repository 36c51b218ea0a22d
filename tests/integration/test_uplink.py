"""Uplink against a real mosquitto: order, contiguity, batching, status, commands, drain."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayIdentity, MqttSettings
from gateway.models import EventBase, ZoneEntered
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox
from tests.conftest import Mosquitto
from tests.integration.uplink_support import Cloud, assert_in_order, until

pytestmark = pytest.mark.integration

IDENT = GatewayIdentity(id="gw-1", store_id="store-1")


def events(n: int, start: int = 0) -> list[EventBase]:
    return [ZoneEntered(ts=1000.0 + i, store_id="store-1", subject=f"p{i}", zone="z") for i in range(start, start + n)]


def settings(m: Mosquitto, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "host": m.host,
        "port": m.port,
        "tls": False,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "connect_timeout_s": 3.0,
    }
    base.update(kw)
    return MqttSettings(**base)


async def test_events_arrive_in_order_with_contiguous_seqs(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(events(150))  # backlog below batch_threshold: one message per event
    async with Cloud(mosquitto) as cloud:
        up = Uplink(settings(mosquitto, batch_threshold=1000), IDENT, ob)
        acked: list[int] = []
        up.on_published = lambda rows: acked.extend(r.seq for r in rows)
        task = asyncio.create_task(up.run())
        await cloud.wait_for(150)
        for k in range(5):  # more while running
            await ob.append(events(30, 150 + 30 * k))
        await cloud.wait_for(300)
        assert_in_order(cloud.seqs, 300)
        assert cloud.batches == 0
        await until(lambda: not (ob.stats().backlog), 5)
        st = up.status()
        assert st["link"] == "connected"
        assert st["backlog"] == 0
        assert st["published_events"] == 300
        assert acked == list(range(1, 301))  # the metrics hook saw every acknowledged event once
        assert cloud.status
        assert cloud.status[-1].state == "online"
        await up.drain(3.0)
        await asyncio.wait_for(task, 3.0)
        assert up.status()["link"] == "stopped"
        await until(lambda: cloud.status[-1].state == "offline", 3)
    await ob.close()


async def test_large_backlog_is_batched(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    for k in range(10):
        await ob.append(events(300, 300 * k))
    async with Cloud(mosquitto) as cloud:
        up = Uplink(settings(mosquitto, batch_threshold=200, batch_max=50), IDENT, ob)
        task = asyncio.create_task(up.run())
        await cloud.wait_for(3000)
        assert_in_order(cloud.seqs, 3000)
        assert cloud.batches >= 3000 // 50 - 10  # nearly all batched (the tail goes one by one)
        await until(lambda: not (ob.stats().backlog), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await ob.close()


async def test_commands_and_replies(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    got: list[bytes] = []
    up: Uplink

    async def on_command(topic: str, payload: bytes) -> None:
        got.append(payload)
        await up.publish_reply(b'{"ok":true,"echo":' + payload + b"}")

    up = Uplink(settings(mosquitto), IDENT, ob, on_command=on_command)
    async with Cloud(mosquitto, topic="retail/store-1/gw-1/replies") as cloud:
        task = asyncio.create_task(up.run())
        await until(lambda: up.status()["link"] == "connected", 5)
        await asyncio.sleep(0.1)  # subscription in place
        await cloud.client.publish(up.topics.commands, b'{"cmd":"ping"}', qos=1)
        await until(lambda: bool(cloud.other), 5)
        assert got == [b'{"cmd":"ping"}']
        assert cloud.other == [(up.topics.replies, b'{"ok":true,"echo":{"cmd":"ping"}}')]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await ob.close()


async def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    from tests.conftest import make_mosquitto

    m = make_mosquitto(tmp_path)
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(events(50))
    # Fixed 1 s backoff, so the cloud below subscribes before the uplink's next attempt.
    up = Uplink(settings(m, reconnect_min_s=1.0, reconnect_max_s=1.0), IDENT, ob)
    task = asyncio.create_task(up.run())
    try:
        await until(lambda: not (up.status()["connect_failures"] < 2), 8)
        st = up.status()
        assert st["link"] in ("backoff", "connecting")
        assert "connection refused" in (st["last_error"] or "")
        assert st["backlog"] == 50
        m.start()
        async with Cloud(m) as cloud:
            await cloud.wait_for(50)
            assert_in_order(cloud.seqs, 50)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        m.stop()
        await ob.close()


async def test_failover_endpoint_and_mqtt311(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """First endpoint dead: the uplink moves on to the next one; MQTT 3.1.1 works too."""
    from tests.conftest import free_port

    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(events(40))
    s = settings(
        mosquitto,
        port=free_port(),  # nothing listens here
        brokers=[{"host": mosquitto.host, "port": mosquitto.port}],
        protocol="3.1.1",
    )
    async with Cloud(mosquitto) as cloud:
        up = Uplink(s, IDENT, ob)
        task = asyncio.create_task(up.run())
        try:
            await cloud.wait_for(40, 10)
            assert_in_order(cloud.seqs, 40)
            st = up.status()
            assert st["broker"] == f"{mosquitto.host}:{mosquitto.port}"
            assert st["connect_failures"] >= 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    await ob.close()
