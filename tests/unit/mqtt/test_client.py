"""AsyncMqttClient against a real mosquitto: publish futures, subscribe, will, errors, 3.1.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.mqtt.client import (
    AsyncMqttClient,
    Message,
    MqttConnectError,
    MqttDisconnectedError,
    Will,
)
from tests.conftest import Mosquitto, free_port


async def until(pred: Callable[[], object], limit_s: float = 5.0) -> None:
    for _ in range(int(limit_s / 0.02) + 1):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {limit_s}s")


async def collect(client: AsyncMqttClient, into: list[Message]) -> None:
    async for m in client.messages():
        into.append(m)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_publish_subscribe_roundtrip(mosquitto: Mosquitto, protocol: str) -> None:
    sub = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id=f"sub-{protocol}", protocol=protocol)  # type: ignore[arg-type]
    pub = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id=f"pub-{protocol}", protocol=protocol)  # type: ignore[arg-type]
    res = await sub.connect()
    assert res.reason_code == 0
    assert await sub.subscribe("t/#", qos=1) == 1
    got: list[Message] = []
    reader = asyncio.create_task(collect(sub, got))
    await pub.connect()
    futs = [pub.publish_nowait(f"t/{i}", b"x%d" % i, qos=1) for i in range(500)]
    codes = await asyncio.gather(*futs)
    assert set(codes) <= {0, 0x10}
    assert await pub.publish("t/qos0", b"zero", qos=0) == 0
    await until(lambda: len(got) == 501)
    assert [m.payload for m in got[:500]] == [b"x%d" % i for i in range(500)]  # in order
    assert got[0].topic == "t/0"
    await pub.disconnect()
    await sub.disconnect()
    await asyncio.wait_for(reader, 2)  # the iterator ends cleanly after our own disconnect


async def test_connect_refused_is_a_connect_error() -> None:
    c = AsyncMqttClient("127.0.0.1", free_port(), client_id="x", connect_timeout_s=2)
    with pytest.raises(MqttConnectError, match="connection refused"):
        await c.connect()


async def test_not_mqtt_server_times_out_cleanly() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        c = AsyncMqttClient("127.0.0.1", srv.getsockname()[1], client_id="x", connect_timeout_s=0.5)
        with pytest.raises(MqttConnectError, match="CONNACK"):
            await c.connect()
    finally:
        srv.close()


async def test_timed_out_connect_leaves_no_stale_fd_in_the_loop(mosquitto: Mosquitto) -> None:
    """A CONNACK timeout must unregister the socket before closing it.

    Otherwise the selector keeps the dead fd; the next connection (which gets the same fd number)
    fails in ``add_reader`` with ENOENT. Found when a cluster node stalled CONNACKs after a
    node kill (tests/integration/test_fleet_cluster.py).
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        for i in range(3):
            c = AsyncMqttClient("127.0.0.1", srv.getsockname()[1], client_id=f"x{i}", connect_timeout_s=0.3)
            with pytest.raises(MqttConnectError, match="CONNACK"):
                await c.connect()
            ok = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id=f"ok{i}")
            await ok.connect()
            assert await ok.publish("t/x", b"1", qos=1) in (0, 0x10)
            await ok.disconnect()
    finally:
        srv.close()
        loop.set_exception_handler(None)
    assert errors == []


async def test_will_published_when_link_dies(mosquitto: Mosquitto) -> None:
    watcher = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id="watcher")
    await watcher.connect()
    await watcher.subscribe("gw/status", qos=1)
    got: list[Message] = []
    reader = asyncio.create_task(collect(watcher, got))
    c = AsyncMqttClient(
        mosquitto.host,
        mosquitto.port,
        client_id="dying",
        will=Will("gw/status", b"offline", qos=1, retain=True),
    )
    await c.connect()
    await c.disconnect()  # a normal DISCONNECT: no will
    await asyncio.sleep(0.2)
    assert got == []
    c2 = AsyncMqttClient(
        mosquitto.host, mosquitto.port, client_id="dying2", will=Will("gw/status", b"offline", qos=1, retain=True)
    )
    await c2.connect()
    sock = c2._client.socket() if c2._client else None
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)  # the box vanishes: no DISCONNECT
    await until(lambda: len(got) == 1)
    assert got[0].payload == b"offline"
    err = await asyncio.wait_for(c2.wait_closed(), 3)
    assert isinstance(err, MqttDisconnectedError)
    with pytest.raises(MqttDisconnectedError):
        await c2.publish("a", b"b")
    reader.cancel()
    await watcher.disconnect()
    await c2.disconnect()


async def test_broker_death_fails_pending_publishes(tmp_path: Path) -> None:
    from tests.conftest import make_mosquitto

    m = make_mosquitto(tmp_path)
    m.start()
    try:
        c = AsyncMqttClient(m.host, m.port, client_id="p")
        await c.connect()
        it = c.messages()
        m.stop()
        with pytest.raises(MqttDisconnectedError):
            await asyncio.wait_for(it.__anext__(), 5)
        fut = c.publish_nowait("a", b"b")
        with pytest.raises(MqttDisconnectedError):
            await fut
        await c.disconnect()
    finally:
        m.stop()
