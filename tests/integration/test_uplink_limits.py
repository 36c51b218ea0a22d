"""Broker limits and sessions: packet-size caps, messages the broker kills the link for, persistent sessions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayIdentity, MqttSettings
from gateway.models import EventBase, VisitEnded, ZoneEntered
from gateway.uplink.link import POISON_LOSSES, Uplink
from gateway.uplink.outbox import Outbox
from tests.conftest import Mosquitto, make_mosquitto
from tests.integration.uplink_support import Cloud, SickBrokerProxy, until

pytestmark = pytest.mark.integration

IDENT = GatewayIdentity(id="gw-1", store_id="store-1")


def small(n: int, start: int = 0) -> list[EventBase]:
    return [ZoneEntered(ts=1.0 + i, store_id="store-1", subject=f"p{i}", zone="z") for i in range(start, start + n)]


def big() -> VisitEnded:
    path = [f"zone-{i:04d}" for i in range(300)]  # ~3.6 kB of JSON
    return VisitEnded(ts=5.0, store_id="store-1", subject="p", started_ts=1.0, duration_s=4.0, visitor=True, path=path)


def settings(m: Mosquitto, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {"host": m.host, "port": m.port, "tls": False, "reconnect_min_s": 0.02}
    base["reconnect_max_s"] = 0.1
    base.update(kw)
    return MqttSettings(**base)


def broker(tmp_path: Path, extra: str) -> Mosquitto:
    m = make_mosquitto(tmp_path, extra)
    m.start()
    return m


async def run_until(up: Uplink, pred: Any, limit_s: float) -> None:
    task = asyncio.create_task(up.run())
    try:
        await until(pred, limit_s)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_announced_max_packet_size_caps_batches_and_sets_oversize_aside(tmp_path: Path) -> None:
    m = broker(tmp_path, "max_packet_size 2048\n")
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(small(300))
    await ob.append([big()])  # seq 301: can never fit under 2048 bytes
    await ob.append(small(300, 300))
    try:
        async with Cloud(m) as cloud:
            up = Uplink(settings(m, batch_threshold=50, batch_max=100), IDENT, ob)
            await run_until(up, lambda: ob.stats().backlog == 0 and len(cloud.ids) == 600, 15)
            assert sorted(cloud.ids) == [*range(1, 301), *range(302, 602)]
            assert cloud.batches > 10  # batched, but each batch under the broker's limit
            assert up.status()["reconnects"] == 0  # the broker never had to drop us
            dl = await ob.dead_letters()
            assert [(e.seq, code) for e, code, _ in dl] == [(301, 0x95)]
            assert ob.stats().dead_letters == 1
    finally:
        m.stop()
        await ob.close()


async def test_message_the_broker_drops_the_link_for_is_set_aside(tmp_path: Path) -> None:
    """mosquitto's message_size_limit is not announced; a too-big message costs a link drop each time."""
    m = broker(tmp_path, "message_size_limit 2048\n")
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(small(3))
    await ob.append([big()])  # seq 4
    await ob.append(small(3, 3))
    try:
        async with Cloud(m) as cloud:
            up = Uplink(settings(m), IDENT, ob)
            await run_until(up, lambda: ob.stats().backlog == 0, 20)
            await cloud.wait_for(6, 5)
            assert sorted(cloud.ids) == [1, 2, 3, 5, 6, 7]
            assert up.status()["reconnects"] >= POISON_LOSSES - 1
            dl = await ob.dead_letters()
            assert [e.seq for e, _, _ in dl] == [4]
            assert "link dropped" in dl[0][2]
    finally:
        m.stop()
        await ob.close()


async def test_persistent_session_queues_commands_while_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    got: list[bytes] = []

    async def on_command(topic: str, payload: bytes) -> None:
        got.append(payload)

    up = Uplink(settings(mosquitto), IDENT, ob, on_command=on_command)
    await run_until(up, lambda: up.status()["link"] == "connected", 5)  # subscribes, then goes away
    assert up.status()["link"] == "stopped"
    async with Cloud(mosquitto, topic="retail/+/+/status") as cloud:
        await until(lambda: cloud.status and cloud.status[-1].state == "offline", 5)
        cmd = json.dumps({"cmd": "reload"}).encode()
        await cloud.client.publish(up.topics.commands, cmd, qos=1)  # gateway offline: the broker queues it
        up2 = Uplink(settings(mosquitto), IDENT, ob, on_command=on_command)
        await run_until(up2, lambda: got == [cmd], 5)
        assert cloud.status[-1].state in ("online", "offline")
    await ob.close()


async def test_batch_the_broker_drops_the_link_for_goes_out_unbatched(tmp_path: Path) -> None:
    m = broker(tmp_path, "message_size_limit 4096\n")
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(small(120))  # batches of 60 (~12 kB) are over the broker's silent limit
    try:
        async with Cloud(m) as cloud:
            up = Uplink(settings(m, batch_threshold=10, batch_max=60), IDENT, ob)
            await run_until(up, lambda: ob.stats().backlog == 0, 30)
            await cloud.wait_for(120, 5)
            assert sorted(cloud.ids) == list(range(1, 121))
            assert ob.stats().dead_letters == 0
            assert up.status()["reconnects"] >= POISON_LOSSES
    finally:
        m.stop()
        await ob.close()


async def test_broker_dropping_every_publisher_for_a_while_sets_nothing_aside(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A sick broker (every events publish costs the link) is told from a poison message by a control message."""
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append(small(3))
    try:
        async with Cloud(mosquitto) as cloud, SickBrokerProxy(mosquitto) as proxy:
            s = settings(mosquitto, host=proxy.host, port=proxy.port)
            up = Uplink(s, IDENT, ob)
            task = asyncio.create_task(up.run())
            try:
                await until(lambda: ob.stats().backlog == 0, 10)
                proxy.sick = True
                await ob.append(small(4, 3))
                # The head is suspected after POISON_LOSSES drops; the control message then costs a
                # link too, which clears the suspicion; a second round starts.
                await until(lambda: proxy.drops >= 2 * (POISON_LOSSES + 1) + 1, 30)
                proxy.sick = False
                await until(lambda: ob.stats().backlog == 0, 10)
                await cloud.wait_for(7, 5)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert sorted(cloud.ids) == list(range(1, 8))
            assert ob.stats().dead_letters == 0
            assert up.status()["dead_lettered"] == 0
            first: list[int] = []
            for q in cloud.seqs:
                if q not in first:
                    first.append(q)
            assert first == list(range(1, 8))  # the control is a duplicate: first arrivals stay in order
    finally:
        await ob.close()


async def test_poison_message_first_after_start_is_set_aside(tmp_path: Path) -> None:
    """Nothing acknowledged since start: the control is the next event (delivered before the poison's verdict)."""
    m = broker(tmp_path, "message_size_limit 2048\n")
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    await ob.append([big()])  # seq 1
    await ob.append(small(3))
    try:
        async with Cloud(m) as cloud:
            up = Uplink(settings(m), IDENT, ob)
            await run_until(up, lambda: ob.stats().backlog == 0, 20)
            await cloud.wait_for(3, 5)
            assert sorted(cloud.ids) == [2, 3, 4]
            assert [e.seq for e, _, _ in await ob.dead_letters()] == [1]
    finally:
        m.stop()
        await ob.close()
