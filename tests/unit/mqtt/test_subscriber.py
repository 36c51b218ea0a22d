"""The minimal MQTT 3.1.1 subscriber against a scripted broker on 127.0.0.1 (byte-exact framing),
plus one round trip through a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.mqtt.client import AsyncMqttClient, MqttConnectError, MqttDisconnectedError, MqttSubscribeError
from gateway.mqtt.subscriber import MqttSubscriber, _packet
from tests.conftest import Mosquitto


def publish(topic: bytes, payload: bytes, qos: int = 0, pid: int = 7) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"") + payload
    return _packet(0x30 | (qos << 1), body)


class Scripted:
    """Accepts one client, answers CONNACK/SUBACK, then runs ``script(writer)``; records what it read."""

    def __init__(self, connack_rc: int = 0, suback: bytes = b"\x00") -> None:
        self.connack_rc = connack_rc
        self.suback = suback
        self.read = bytearray()
        self.script_done = asyncio.Event()
        self.script: object = None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readexactly(2)
            self.read += head + await r.readexactly(head[1])
            w.write(bytes([0x20, 2, 0, self.connack_rc]))
            if self.connack_rc:
                await w.drain()
                return
            head = await r.readexactly(2)
            sub = await r.readexactly(head[1])
            self.read += head + sub
            w.write(_packet(0x90, sub[:2] + self.suback))
            await w.drain()
            if callable(self.script):
                await self.script(w)  # type: ignore[misc]
            self.script_done.set()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    while chunk := await r.read(4096):  # until the client closes
                        self.read += chunk
        finally:
            w.close()


async def test_messages_split_at_every_byte_qos1_ack_and_batching() -> None:
    got: list[tuple[str, bytes]] = []
    calls: list[int] = []

    def on(msgs: list[tuple[str, bytes]]) -> None:
        calls.append(len(msgs))
        got.extend(msgs)

    big = b"x" * 300
    stream = publish(b"a/b", b"one") + publish(b"a/c", big, qos=1, pid=0x1234) + publish(b"a/\xff", b"bad-utf8")
    stream += publish(b"a/d", b"")

    async def script(w: asyncio.StreamWriter) -> None:
        for i in range(len(stream)):
            w.write(stream[i : i + 1])
            await w.drain()
            await asyncio.sleep(0)
        w.write(stream * 50)
        await w.drain()
        await asyncio.sleep(0.2)

    async with Scripted(suback=b"\x00\x00") as srv:
        srv.script = script
        sub = MqttSubscriber("127.0.0.1", srv.port, on, client_id="c1", username="node", password="pw")
        await sub.connect()
        assert await sub.subscribe(["a/+", "b/#"]) == [0, 0]
        await asyncio.wait_for(srv.script_done.wait(), 10)
        await sub.close()
    assert got[:3] == [("a/b", b"one"), ("a/c", big), ("a/d", b"")]
    assert len(got) == 3 * 51
    assert sub.bad_topics == 51
    assert min(calls[-3:]) >= 1 and max(calls) >= 50  # the bulk write arrived in few callbacks
    read = bytes(srv.read)
    assert read[0] == 0x10 and b"MQTT\x04\xc2" in read and b"node" in read and b"pw" in read
    assert b"\x40\x02\x12\x34" in read  # PUBACK for the QoS 1 delivery
    assert read.endswith(b"\xe0\x00")  # DISCONNECT


async def test_refusals_and_bad_stream() -> None:
    async with Scripted(connack_rc=5) as srv:
        sub = MqttSubscriber("127.0.0.1", srv.port, lambda m: None)
        with pytest.raises(MqttConnectError, match="not authorized"):
            await sub.connect()
    async with Scripted(suback=b"\x00\x80") as srv:
        sub = MqttSubscriber("127.0.0.1", srv.port, lambda m: None)
        await sub.connect()
        with pytest.raises(MqttSubscribeError, match="b/#"):
            await sub.subscribe(["a/+", "b/#"])
        await sub.close()

    async def garbage(w: asyncio.StreamWriter) -> None:
        w.write(b"\x30\xff\xff\xff\xff\x01")  # remaining length with 5 bytes
        await w.drain()
        await asyncio.sleep(0.5)

    async with Scripted(suback=b"\x00") as srv:
        srv.script = garbage
        sub = MqttSubscriber("127.0.0.1", srv.port, lambda m: None)
        await sub.connect()
        await sub.subscribe(["a"])
        err = await asyncio.wait_for(sub.wait_closed(), 5)
        assert isinstance(err, MqttDisconnectedError) and "remaining length" in str(err)
    with pytest.raises(MqttConnectError):
        await MqttSubscriber("127.0.0.1", 1, lambda m: None, connect_timeout_s=2).connect()


async def test_round_trip_through_mosquitto(mosquitto: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    sub = MqttSubscriber(mosquitto.host, mosquitto.port, got.extend, client_id="s")
    await sub.connect()
    await sub.subscribe(["espresense/devices/+/+"])
    pub = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id="p", protocol="3.1.1")
    await pub.connect()
    await asyncio.gather(
        *(pub.publish_nowait(f"espresense/devices/d{i}/n11", b"{}" * i, qos=i % 2) for i in range(200))
    )
    for _ in range(100):
        if len(got) == 200:
            break
        await asyncio.sleep(0.02)
    await pub.disconnect()
    await sub.close()
    assert got == [(f"espresense/devices/d{i}/n11", b"{}" * i) for i in range(200)]
