"""The store-local broker client: one MQTT 3.1.1 connection on an asyncio Protocol, and the one rule
for finding that broker.

Both users of the store-local broker go through it: the sensor-node source (tens of thousands of
QoS 0 messages a second) and the content actors (QoS 1 activations to screens, acks back).
``local_broker_address(settings)`` is where it is: ``[local_broker] host``, else the embedded
broker on this box (127.0.0.1); never the cloud uplink's broker.

Why this and not paho (``gateway/mqtt/client.py``, which the uplink uses), aiomqtt or gmqtt:
``data_received`` gets whatever the kernel has (often hundreds of messages) and
``gateway.mqtt.framing.split_packets`` splits them out of one buffer with a few slices each, then
the whole list goes to one callback. paho reads one packet per ``loop_read()`` with a ``recv()``
per header byte and builds an ``MQTTMessage`` plus a topic match per message (aiomqtt is paho
underneath, plus an ``asyncio.Queue`` hop per message); gmqtt parses in Python too but calls back
once per message with a handler lookup each time. ``bench/bench_nodes.py`` measures all of them on
the same broker and stream in the same run (``nodes.ingest_mqtt`` and ``nodes.client[...]``): this
one is the fastest that delivered every message.

Scope, deliberately small: MQTT 3.1.1 (what ESPresense, mosquitto and the demo's amqtt speak),
CONNECT with optional username/password, SUBSCRIBE, deliveries at QoS 0 and 1 (PUBACK sent),
PUBLISH at QoS 0 and 1 (each QoS 1 publish awaits its own PUBACK), keepalive PINGREQ, DISCONNECT.
No TLS (the store-local broker is on the store LAN), no session state: after a loss, make a new
one (``run_connected`` does, with backoff). A stream that cannot be MQTT closes the connection
with an error naming the packet; a non-UTF-8 topic is counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway.backoff import Backoff
from gateway.config import Settings
from gateway.log import get_logger
from gateway.mqtt.client import (
    MqttConnectError,
    MqttDisconnectedError,
    MqttError,
    MqttPublishError,
    MqttSubscribeError,
)
from gateway.mqtt.framing import (
    CONNACK,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PUBACK,
    SUBACK,
    connect_packet,
    puback_packet,
    publish_packet,
    split_packets,
    subscribe_packet,
)

log = get_logger(__name__)

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
Messages = Callable[[list[tuple[str, bytes]]], None]


def local_broker_address(settings: Settings) -> tuple[str, int]:
    """The store-local broker: ``[local_broker] host``, else the embedded one on this box."""
    lb = settings.local_broker
    return (lb.host or "127.0.0.1"), lb.port


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: LocalBrokerClient) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        frames = split_packets(buf)
        if frames.used:
            del buf[: frames.used]
        o = self.owner
        if frames.to_ack and self.transport is not None:
            self.transport.write(b"".join(puback_packet(pid) for pid in frames.to_ack))
        for kind, body in frames.control:
            o._control(kind, body)
        o.bad_topics += frames.bad_topics
        if frames.retained:
            o.received += len(frames.retained)
            if o.on_retained is not None:
                o.on_retained(frames.retained)
        if frames.messages:
            o.received += len(frames.messages)
            o.on_messages(frames.messages)
        if frames.error is not None:
            o._fail(MqttDisconnectedError(f"broker sent {frames.error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)


class LocalBrokerClient:
    """One connection; ``on_messages`` gets lists of ``(topic, payload)`` on the loop thread."""

    def __init__(
        self,
        host: str,
        port: int,
        on_messages: Messages,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        connect_timeout_s: float = 10.0,
        on_retained: Messages | None = None,
    ) -> None:
        """``on_retained`` gets messages the broker replays from its store on subscribe (RETAIN flag
        set); without it they are dropped."""
        self.host, self.port = host, port
        self.on_messages = on_messages
        self.on_retained = on_retained
        self.client_id = client_id
        self._username, self._password = username, password
        self.keepalive = keepalive
        self.connect_timeout_s = connect_timeout_s
        self.received = 0
        self.bad_topics = 0
        self.connected = False
        self._proto: _Protocol | None = None
        self._connack: asyncio.Future[int] | None = None
        self._suback: dict[int, asyncio.Future[list[int]]] = {}
        self._puback: dict[int, asyncio.Future[None]] = {}
        self._closed: asyncio.Future[MqttError | None] | None = None
        self._ping: asyncio.Task[None] | None = None
        self._pong = 0.0
        self._next_id = 1
        self._user_close = False

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.port}"

    # -- protocol callbacks ---------------------------------------------------------------------

    def _control(self, kind: int, body: bytes) -> None:
        if kind == PUBACK:
            if len(body) >= 2:
                fut = self._puback.pop(int.from_bytes(body[:2], "big"), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        elif kind == CONNACK:
            if self._connack is not None and not self._connack.done() and len(body) == 2:
                self._connack.set_result(body[1])
        elif kind == SUBACK:
            if len(body) >= 3:
                fut2 = self._suback.pop(int.from_bytes(body[:2], "big"), None)
                if fut2 is not None and not fut2.done():
                    fut2.set_result(list(body[2:]))
        elif kind == PINGRESP:
            self._pong = asyncio.get_running_loop().time()
        # anything else (UNSUBACK, broker-initiated oddities) is ignored

    def _fail(self, err: MqttError) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
        self._lost(err)

    def _lost(self, exc: BaseException | None) -> None:
        self.connected = False
        if isinstance(exc, MqttError):
            err: MqttError = exc
        elif self._user_close:
            err = MqttDisconnectedError("disconnected by the client")
        else:
            err = MqttDisconnectedError(f"connection lost: {exc or 'closed by the broker'}")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttConnectError(f"before CONNACK: {err}"))
        for waiting in (self._suback, self._puback):
            for fut in waiting.values():
                if not fut.done():
                    fut.set_exception(err)
            waiting.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None if self._user_close else err)
        if self._ping is not None:
            self._ping.cancel()

    def _write(self, data: bytes) -> None:
        if not self.connected or self._proto is None or self._proto.transport is None:
            raise MqttDisconnectedError("not connected")
        self._proto.transport.write(data)

    def _packet_id(self) -> int:
        pid = self._next_id
        self._next_id = self._next_id % 65535 + 1
        return pid

    # -- public ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _t, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
                self._proto = proto
                assert proto.transport is not None
                proto.transport.write(connect_packet(self.client_id, self.keepalive, self._username, self._password))
                rc = await self._connack
        except TimeoutError:
            await self.close()
            raise MqttConnectError(f"no CONNACK within {self.connect_timeout_s:g}s") from None
        except OSError as e:
            raise MqttConnectError(f"socket: {e.strerror or e}") from None
        if rc != 0:
            await self.close()
            raise MqttConnectError(f"broker refused the connection: {CONNACK_REASONS.get(rc, rc)}", rc)
        self.connected = True
        self._pong = loop.time()
        self._ping = loop.create_task(self._keepalive())

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        period = max(1.0, self.keepalive / 2)
        while self.connected:
            await asyncio.sleep(period)
            if loop.time() - self._pong > 2 * self.keepalive:
                self._fail(MqttDisconnectedError("no PINGRESP from the broker"))
                return
            if self._proto is not None and self._proto.transport is not None:
                self._proto.transport.write(PINGREQ_PACKET)

    async def subscribe(self, filters: list[str], qos: int = 0) -> list[int]:
        """Subscribe to all ``filters`` in one SUBSCRIBE; raise if the broker refuses any."""
        pid = self._packet_id()
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._write(subscribe_packet(pid, filters, qos))
        self._suback[pid] = fut
        codes = await fut
        bad = [f for f, c in zip(filters, codes, strict=False) if c >= 0x80]
        if bad or len(codes) != len(filters):
            raise MqttSubscribeError(f"SUBACK refused {bad or filters}", 0x80)
        return codes

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish; at QoS 1 return when the broker's PUBACK arrives (``MqttError`` if the link drops first)."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        if not qos:
            self._write(publish_packet(topic, payload, 0, 0, retain))
            return
        pid = self._packet_id()
        if pid in self._puback:
            raise MqttPublishError("65535 publishes in flight", 0x91, pid)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write(publish_packet(topic, payload, 1, pid, retain))
        self._puback[pid] = fut
        try:
            await fut
        finally:
            self._puback.pop(pid, None)

    async def wait_closed(self) -> MqttError | None:
        """Until the connection ends: the error, or None after ``close()``."""
        assert self._closed is not None
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        self._user_close = True
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            if self.connected:
                proto.transport.write(DISCONNECT_PACKET)
            proto.transport.close()
        if self._ping is not None:
            self._ping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping
        self._lost(None)


async def run_connected(
    make: Callable[[], LocalBrokerClient],
    session: Callable[[LocalBrokerClient], Awaitable[None]],
    backoff: Backoff,
    *,
    on_down: Callable[[MqttError], None] | None = None,
    what: str = "local broker",
) -> None:
    """Keep one connection to the local broker until cancelled: connect (``make()`` a fresh client),
    run ``session(client)`` (subscribe, hand the client out) and wait while it lives; after a failure
    or a loss wait ``backoff`` before the next attempt (its count restarts with each connection that
    worked). ``on_down`` hears every failure and loss."""
    while True:
        client = make()
        try:
            await client.connect()
        except MqttError as e:
            delay = backoff.next_delay()
            if on_down is not None:
                on_down(e)
            log.warning(
                "mqtt.local_unreachable", what=what, broker=client.broker, error=str(e)[:200], retry_s=round(delay, 2)
            )
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        log.info("mqtt.local_connected", what=what, broker=client.broker)
        try:
            err: MqttError | None
            try:
                await session(client)
                err = await client.wait_closed()
            except MqttError as e:
                err = e
        finally:
            await client.close()
        lost = err or MqttDisconnectedError("closed")
        if on_down is not None:
            on_down(lost)
        delay = backoff.next_delay()  # a broker that accepts and drops at once is not hammered
        log.warning("mqtt.local_lost", what=what, broker=client.broker, error=str(lost)[:200], retry_s=round(delay, 2))
        await asyncio.sleep(delay)
