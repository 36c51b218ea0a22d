"""Shared by the uplink integration tests: a platform stand-in subscriber and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from gateway.models import GatewayStatus, UplinkBatch, UplinkEvent
from gateway.mqtt.client import AsyncMqttClient, MqttError
from tests.conftest import Mosquitto


class Cloud:
    """The platform stand-in: records every event envelope (batches unpacked) in arrival order.

    It keeps a persistent session (clean_start=False, session expiry) and reconnects by itself, so
    with a persistent broker it misses nothing across broker restarts - like the real platform.
    """

    def __init__(self, m: Mosquitto, topic: str = "retail/#", client_id: str = "cloud-test", **kw: object) -> None:
        self.m = m
        self.topic = topic
        self.client_id = client_id
        self.kw = kw
        self.client = self._new_client()
        self.seqs: list[int] = []
        self.ids: dict[int, str] = {}
        self.messages = 0
        self.batches = 0
        self.reconnects = 0
        self.status: list[GatewayStatus] = []
        self.other: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def _new_client(self) -> AsyncMqttClient:
        return AsyncMqttClient(
            self.m.host,
            self.m.port,
            client_id=self.client_id,
            clean_start=False,
            session_expiry_s=600,
            connect_timeout_s=2,
            **self.kw,  # type: ignore[arg-type]
        )

    async def __aenter__(self) -> Cloud:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.disconnect()

    async def _run(self) -> None:
        for _ in range(2000):  # bounded: ~100 s of reconnect attempts at most
            try:
                await self.client.connect()
                await self.client.subscribe(self.topic, qos=1)
                self._connected.set()
                await self._read()
            except MqttError:
                pass
            self.reconnects += 1
            await self.client.disconnect()
            await asyncio.sleep(0.05)
            self.client = self._new_client()

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


class SickBrokerProxy:
    """A loopback TCP proxy in front of a broker that, while ``sick``, drops any connection on
    which the client publishes to a topic ending in ``/events`` - the way a cluster node whose
    stream leaders are being re-elected drops every publisher for a while. ``drops`` counts them.
    """

    def __init__(self, m: Mosquitto) -> None:
        self.m = m
        self.sick = False
        self.drops = 0
        self.connections = 0
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SickBrokerProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        br, bw = await asyncio.open_connection(self.m.host, self.m.port)
        up = asyncio.create_task(self._client_to_broker(cr, bw))
        down = asyncio.create_task(self._pipe(br, cw))
        self._tasks.update((up, down))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self._tasks.difference_update((up, down))
            for w in (cw, bw):
                w.close()

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()

    async def _client_to_broker(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Forward whole MQTT packets; cut the link on an events PUBLISH while sick."""
        while True:
            try:
                first = await r.readexactly(1)
            except asyncio.IncompleteReadError:
                return
            length, mult, raw = 0, 1, b""
            for _ in range(4):
                b = await r.readexactly(1)
                raw += b
                length += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = await r.readexactly(length)
            if first[0] >> 4 == 3 and self.sick:  # PUBLISH
                topic = body[2 : 2 + int.from_bytes(body[:2], "big")]
                if topic.endswith(b"/events"):
                    self.drops += 1
                    return
            w.write(first + raw + body)
            await w.drain()
