"""A minimal MQTT 3.1.1 *subscriber* on an asyncio Protocol, for high-rate local traffic (sensor nodes).

Why not paho (``gateway/mqtt/client.py``, which the uplink uses): paho reads one packet per
``loop_read()`` with a ``recv()`` per header byte and builds an ``MQTTMessage`` plus a topic-filter
match per message; on this class of box that caps a subscriber near 8-35k messages/s before any
decoding (``bench/bench_nodes.py`` measures it). Here ``data_received`` gets whatever the kernel has
(often hundreds of messages) and splits PUBLISH packets out of one buffer with a few slices each, then
hands the whole list to one callback.

Scope, deliberately small: MQTT 3.1.1 (what ESPresense and mosquitto speak), CONNECT with optional
username/password, SUBSCRIBE, QoS 0 and 1 (PUBACK sent) deliveries, keepalive PINGREQ, DISCONNECT.
No publishing, no TLS (the store-local broker is on the store LAN), no session state: after a loss,
make a new one. Malformed packets from the broker close the connection with an error naming the
packet; a non-UTF-8 topic is counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.mqtt.client import MqttConnectError, MqttDisconnectedError, MqttError, MqttSubscribeError

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
MAX_PACKET = 1 << 20  # a node message is < 16 kB; anything near 1 MB is a broken stream


def _str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    n = len(body)
    rem = bytearray()
    while True:
        d, n = n % 128, n // 128
        rem.append(d | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(rem) + body


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: MqttSubscriber) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[tuple[str, bytes]] = []
        retained: list[tuple[str, bytes]] = []
        o = self.owner
        while n - pos >= 2:
            first = buf[pos]
            # remaining length: 1-4 bytes, 7 bits each
            rem = 0
            shift = 0
            i = pos + 1
            complete = False
            while i < n and i <= pos + 4:
                b = buf[i]
                i += 1
                rem |= (b & 0x7F) << shift
                if not b & 0x80:
                    complete = True
                    break
                shift += 7
            if not complete:
                if i > pos + 4:
                    o._fail(MqttDisconnectedError("broker sent a bad remaining length"))
                    return
                break  # header not all here yet
            if rem > MAX_PACKET:
                o._fail(MqttDisconnectedError(f"broker sent a {rem}-byte packet"))
                return
            end = i + rem
            if end > n:
                break
            kind = first & 0xF0
            if kind == 0x30:  # PUBLISH
                tl = (buf[i] << 8) | buf[i + 1]
                t0 = i + 2
                p0 = t0 + tl
                qos = (first >> 1) & 3
                if qos:
                    pid = bytes(buf[p0 : p0 + 2])
                    p0 += 2
                if rem < 2 or p0 > end:
                    o._fail(MqttDisconnectedError("broker sent a malformed PUBLISH"))
                    return
                if qos and self.transport is not None:
                    self.transport.write(b"\x40\x02" + pid)
                try:
                    topic = buf[t0 : t0 + tl].decode()
                except UnicodeDecodeError:
                    o.bad_topics += 1
                else:
                    if first & 0x01:  # RETAIN: a stored message replayed on subscribe, not a live one
                        retained.append((topic, bytes(buf[p0:end])))
                    else:
                        out.append((topic, bytes(buf[p0:end])))
            else:
                o._control(kind, bytes(buf[i:end]))
            pos = end
        if pos:
            del buf[:pos]
        if retained:
            o.received += len(retained)
            if o.on_retained is not None:
                o.on_retained(retained)
        if out:
            o.received += len(out)
            o.on_messages(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)


class MqttSubscriber:
    """One subscriber connection; ``on_messages`` gets lists of ``(topic, payload)`` on the loop thread."""

    def __init__(
        self,
        host: str,
        port: int,
        on_messages: Callable[[list[tuple[str, bytes]]], None],
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        connect_timeout_s: float = 10.0,
        on_retained: Callable[[list[tuple[str, bytes]]], None] | None = None,
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
        self._closed: asyncio.Future[MqttError | None] | None = None
        self._ping: asyncio.Task[None] | None = None
        self._pong = 0.0
        self._next_id = 1
        self._user_close = False

    # -- protocol callbacks ---------------------------------------------------------------------

    def _control(self, kind: int, body: bytes) -> None:
        if kind == 0x20:  # CONNACK
            if self._connack is not None and not self._connack.done() and len(body) == 2:
                self._connack.set_result(body[1])
        elif kind == 0x90:  # SUBACK
            if len(body) >= 3:
                fut = self._suback.pop(int.from_bytes(body[:2], "big"), None)
                if fut is not None and not fut.done():
                    fut.set_result(list(body[2:]))
        elif kind == 0xD0:  # PINGRESP
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
        for fut in self._suback.values():
            if not fut.done():
                fut.set_exception(err)
        self._suback.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None if self._user_close else err)
        if self._ping is not None:
            self._ping.cancel()

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
                flags = 0x02  # clean session
                payload = _str(self.client_id.encode())
                if self._username is not None:
                    flags |= 0x80
                    payload += _str(self._username.encode())
                    if self._password is not None:
                        flags |= 0x40
                        payload += _str(self._password.encode())
                var = _str(b"MQTT") + bytes([4, flags]) + self.keepalive.to_bytes(2, "big")
                proto.transport.write(_packet(0x10, var + payload))
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
                self._proto.transport.write(b"\xc0\x00")

    async def subscribe(self, filters: list[str], qos: int = 0) -> list[int]:
        """Subscribe to all ``filters`` in one SUBSCRIBE; raise if the broker refuses any."""
        if not self.connected or self._proto is None or self._proto.transport is None:
            raise MqttDisconnectedError("not connected")
        pid = self._next_id
        self._next_id = self._next_id % 65535 + 1
        body = pid.to_bytes(2, "big") + b"".join(_str(f.encode()) + bytes([qos]) for f in filters)
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._suback[pid] = fut
        self._proto.transport.write(_packet(0x82, body))
        codes = await fut
        bad = [f for f, c in zip(filters, codes, strict=False) if c >= 0x80]
        if bad or len(codes) != len(filters):
            raise MqttSubscribeError(f"SUBACK refused {bad or filters}", 0x80)
        return codes

    async def wait_closed(self) -> MqttError | None:
        assert self._closed is not None
        return await asyncio.shield(self._closed)

    async def close(self) -> None:
        self._user_close = True
        proto = self._proto
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            if self.connected:
                proto.transport.write(b"\xe0\x00")  # DISCONNECT
            proto.transport.close()
        if self._ping is not None:
            self._ping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping
        self._lost(None)
