"""Uplink against a real mosquitto: order, contiguity, batching, status, commands, drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayIdentity, MqttSettings
from gateway.models import EventBase, GatewayStatus, UplinkBatch, UplinkEvent, ZoneEntered
from gateway.mqtt_async import AsyncMqttClient
from gateway.outbox import Outbox
from gateway.uplink import Uplink
from tests.conftest import Mosquitto

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


class Cloud:
    """The platform stand-in: records every event envelope (batches unpacked) in arrival order."""

    def __init__(self, m: Mosquitto, topic: str = "retail/#") -> None:
        self.client = AsyncMqttClient(m.host, m.port, client_id="cloud-test")
        self.topic = topic
        self.seqs: list[int] = []
        self.ids: dict[int, str] = {}
        self.messages = 0
        self.batches = 0
        self.status: list[GatewayStatus] = []
        self.other: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Cloud:
        await self.client.connect()
        await self.client.subscribe(self.topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.client.disconnect()

    async def _read(self) -> None:
        async for msg in self.client.messages():
            self.messages += 1
            if msg.topic.endswith("/events"):
                doc = json.loads(msg.payload)
                items = [UplinkEvent.model_validate(doc)] if "seq" in doc else UplinkBatch.model_validate(doc).batch
                if "batch" in doc:
                    self.batches += 1
                for ev in items:
                    if ev.seq in self.ids:
                        assert self.ids[ev.seq] == ev.event.event_id, f"seq {ev.seq} reused"
                    self.ids[ev.seq] = ev.event.event_id
                    self.seqs.append(ev.seq)
            elif msg.topic.endswith("/status"):
                self.status.append(GatewayStatus.model_validate_json(msg.payload))
            else:
                self.other.append((msg.topic, msg.payload))

    async def wait_for(self, n_distinct: int, limit_s: float = 20.0) -> None:
        await until(lambda: len(self.ids) >= n_distinct, limit_s)


async def until(pred: Callable[[], object], limit_s: float = 5.0) -> None:
    """Poll a condition (bounded in time); fail the test with a clear message if it never holds."""
    for _ in range(int(limit_s / 0.02) + 1):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {limit_s}s")


def assert_in_order(seqs: list[int], last: int) -> None:
    """Every seq 1..last arrived; first arrivals are in ascending order (duplicates allowed)."""
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    assert first_seen == list(range(1, last + 1))


async def test_events_arrive_in_order_with_contiguous_seqs(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(events(150))  # backlog below batch_threshold: one message per event
    async with Cloud(mosquitto) as cloud:
        up = Uplink(settings(mosquitto, batch_threshold=1000), IDENT, ob)
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
