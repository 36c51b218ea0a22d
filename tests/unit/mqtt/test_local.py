"""The store-local broker client against a scripted broker on 127.0.0.1 (byte-exact framing), plus
round trips through a real mosquitto: deliveries, QoS 1 publishes, the reconnecting link."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.backoff import Backoff
from gateway.mqtt.client import (
    AsyncMqttClient,
    MqttConnectError,
    MqttDisconnectedError,
    MqttError,
    MqttSubscribeError,
)
from gateway.mqtt.framing import encode_packet
from gateway.mqtt.local import LocalBrokerClient, run_connected
from tests.conftest import Mosquitto


def publish(topic: bytes, payload: bytes, qos: int = 0, pid: int = 7) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"") + payload
    return encode_packet(0x30 | (qos << 1), body)


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
            w.write(encode_packet(0x90, sub[:2] + self.suback))
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
        sub = LocalBrokerClient("127.0.0.1", srv.port, on, client_id="c1", username="node", password="pw")
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
        sub = LocalBrokerClient("127.0.0.1", srv.port, lambda m: None)
        with pytest.raises(MqttConnectError, match="not authorized"):
            await sub.connect()
    async with Scripted(suback=b"\x00\x80") as srv:
        sub = LocalBrokerClient("127.0.0.1", srv.port, lambda m: None)
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
        sub = LocalBrokerClient("127.0.0.1", srv.port, lambda m: None)
        await sub.connect()
        await sub.subscribe(["a"])
        err = await asyncio.wait_for(sub.wait_closed(), 5)
        assert isinstance(err, MqttDisconnectedError) and "remaining length" in str(err)
    with pytest.raises(MqttConnectError):
        await LocalBrokerClient("127.0.0.1", 1, lambda m: None, connect_timeout_s=2).connect()


async def test_round_trip_through_mosquitto(mosquitto: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    sub = LocalBrokerClient(mosquitto.host, mosquitto.port, got.extend, client_id="s")
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


@pytest.mark.parametrize("tail", [b"\x30\x00", b"\x30\x01\x00", b"\x32\x03\x00\x00\x01"])
async def test_a_publish_too_short_for_its_topic_closes_the_link_with_a_reason(tail: bytes) -> None:
    """A PUBLISH of 0-1 bytes (or a QoS 1 one cut before its packet id) at the end of a read used
    to raise IndexError out of data_received; it is a malformed packet, said so, and what came
    before it in the same read is delivered."""
    got: list[tuple[str, bytes]] = []

    async def script(w: asyncio.StreamWriter) -> None:
        w.write(publish(b"a/b", b"one") + tail)
        await w.drain()
        await asyncio.sleep(0.5)

    async with Scripted(suback=b"\x00") as srv:
        srv.script = script
        sub = LocalBrokerClient("127.0.0.1", srv.port, got.extend)
        await sub.connect()
        await sub.subscribe(["a/+"])
        err = await asyncio.wait_for(sub.wait_closed(), 5)
    assert isinstance(err, MqttDisconnectedError) and "malformed PUBLISH" in str(err)
    assert got == [("a/b", b"one")]


async def test_qos1_publish_waits_for_its_puback_and_fails_when_the_link_drops(mosquitto: Mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    sub = LocalBrokerClient(mosquitto.host, mosquitto.port, got.extend, client_id="screen")
    await sub.connect()
    await sub.subscribe(["gateway/actors/#"], qos=1)
    pub = LocalBrokerClient(mosquitto.host, mosquitto.port, lambda m: None, client_id="gw")
    await pub.connect()
    await asyncio.gather(*(pub.publish(f"gateway/actors/s{i}", b"x" * i, qos=1) for i in range(100)))
    await pub.publish("gateway/actors/q0", b"fire and forget", qos=0)
    for _ in range(100):
        if len(got) == 101:
            break
        await asyncio.sleep(0.02)
    assert got == [(f"gateway/actors/s{i}", b"x" * i) for i in range(100)] + [("gateway/actors/q0", b"fire and forget")]
    with pytest.raises(ValueError, match="qos"):
        await pub.publish("t", b"", qos=2)
    await sub.close()
    await pub.close()
    with pytest.raises(MqttDisconnectedError):
        await pub.publish("gateway/actors/late", b"", qos=1)


async def test_a_publish_in_flight_fails_with_the_link() -> None:
    async def silent(w: asyncio.StreamWriter) -> None:  # never PUBACKs, then drops the link
        await asyncio.sleep(0.3)
        w.transport.abort()

    async with Scripted() as srv:
        srv.script = silent
        c = LocalBrokerClient("127.0.0.1", srv.port, lambda m: None)
        await c.connect()
        await c.subscribe(["a"])
        with pytest.raises(MqttDisconnectedError):
            await asyncio.wait_for(c.publish("a/b", b"p", qos=1), 5)


async def test_run_connected_reconnects_with_backoff_and_says_why() -> None:
    """Nothing listening, then a broker that answers and drops: every failure is reported, the
    delays follow the backoff and a connection that worked resets it."""
    downs: list[str] = []
    ups = 0
    sleeps: list[float] = []

    class Counting(Backoff):
        def next_delay(self) -> float:
            d = super().next_delay()
            sleeps.append(d)
            return 0.01

    async def drop(w: asyncio.StreamWriter) -> None:
        w.transport.abort()

    async with Scripted() as srv:
        srv.script = drop
        port = srv.port

        async def up(c: LocalBrokerClient) -> None:
            nonlocal ups
            await c.subscribe(["a"])
            ups += 1

        def down(e: MqttError) -> None:
            downs.append(type(e).__name__)

        task = asyncio.create_task(
            run_connected(
                lambda: LocalBrokerClient("127.0.0.1", port, lambda m: None), up, Counting(0.2, 1.0), on_down=down
            )
        )
        for _ in range(200):
            if ups >= 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ups >= 2 and downs[:2] == ["MqttDisconnectedError"] * 2
    assert sleeps[:2] == [0.2, 0.2]  # reset by each connection that worked
