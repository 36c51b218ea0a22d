"""MQTT uplink: drains the durable outbox to the central broker, in seq order, at QoS 1.

This module is the connection loop; its decisions live in two pure parts: ``batcher.py`` (which
events share a message, as what bytes) and ``poison.py`` (a message the broker drops the link for,
told apart from a broker that is unwell). ``AckWriter`` deletes acknowledged rows in chunks.

Contract (docs/mqtt.md has the full version):

* Topics: ``<prefix>/<store_id>/<gateway_id>/events`` (up), ``.../status`` (up, retained:
  birth ``online``, last will ``offline``), ``.../commands`` (down), ``.../replies`` (up).
* Events are published in ascending ``seq`` on each connection, at most ``inflight`` unacknowledged
  at a time. A row leaves the outbox only after a PUBACK with a success reason code. A failure code
  is retried (with backoff, from the lowest unacknowledged seq) or, when the payload itself can
  never be accepted (0x99, or 0x95 for a single event), dead-lettered - never deleted as sent.
* Delivery is at-least-once: after a reconnect or a retry the same seq can arrive twice; the
  platform deduplicates by ``(gateway_id, seq)`` (or ``event_id``) and orders by ``seq``.
* When the backlog exceeds ``batch_threshold``, up to ``batch_max`` events share one message, an
  ``UplinkBatch`` whose items are the stored ``UplinkEvent`` bytes (ids and seqs kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import __version__
from gateway.backoff import Backoff
from gateway.config import GatewayIdentity, MqttSettings
from gateway.log import get_logger
from gateway.models import GatewayStatus
from gateway.mqtt.client import (
    AsyncMqttClient,
    ConnectResult,
    MqttDisconnectedError,
    MqttError,
    MqttPublishError,
    TlsFiles,
    Will,
    reason_name,
)
from gateway.uplink.batcher import Batcher, batch_payload, max_payload
from gateway.uplink.outbox import Outbox
from gateway.uplink.outbox_sql import StoredEvent
from gateway.uplink.poison import PACKET_TOO_LARGE, POISON_LOSSES, PoisonDetector, refusal

__all__ = ["POISON_LOSSES", "AckWriter", "Uplink", "UplinkTopics", "batch_payload"]

log = get_logger(__name__)

CommandHandler = Callable[[str, bytes], Awaitable[None]]

_READAHEAD = 1000
_ACK_CHUNK = 2048
_STABLE_SESSION_S = 30.0


@dataclass(frozen=True, slots=True)
class UplinkTopics:
    events: str
    status: str
    commands: str
    replies: str

    @classmethod
    def for_gateway(cls, prefix: str, store_id: str, gateway_id: str) -> UplinkTopics:
        base = f"{prefix}/{store_id}/{gateway_id}"
        return cls(f"{base}/events", f"{base}/status", f"{base}/commands", f"{base}/replies")


@dataclass(slots=True)
class LinkStats:
    """What ``Uplink.status()`` reports about the link (the outbox adds its own counts)."""

    state: str = "stopped"  # stopped | connecting | connected | backoff | retrying
    broker: str | None = None
    connected_since: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    last_reason_code: int | None = None
    inflight: int = 0
    published_messages: int = 0
    published_events: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    publish_failures: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0


class AckWriter:
    """Acknowledged seqs are deleted from the outbox in the background, in chunks: the publish
    window never waits on SQLite, and a crash before the delete only re-sends (duplicates, never loss)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.pending: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, seqs: list[int]) -> None:
        self.pending.extend(seqs)
        if len(self.pending) >= _ACK_CHUNK:
            self.kick()

    def kick(self) -> None:
        """Start deleting what is pending (unless a delete is already running)."""
        if self.pending and (self._task is None or self._task.done()):
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                log.error("uplink.ack_failed", reason=str(self._task.exception()))
            self._task = asyncio.create_task(self._worker(), name="uplink-acks")

    async def _worker(self) -> None:
        while self.pending:
            seqs, self.pending = self.pending, []
            await self.outbox.ack(seqs)

    async def flush(self) -> None:
        """Until every acknowledged seq so far is deleted."""
        if self._task is not None and not self._task.done():
            await self._task
        if self.pending:
            self._task = asyncio.create_task(self._worker(), name="uplink-acks")
            await self._task


def _consume(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()


class Uplink:
    """Owns the MQTT link to the platform; `run` until cancelled, `drain` on shutdown."""

    def __init__(
        self,
        settings: MqttSettings,
        identity: GatewayIdentity,
        outbox: Outbox,
        *,
        on_command: CommandHandler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.outbox = outbox
        self.on_command = on_command
        self.topics = UplinkTopics.for_gateway(settings.topic_prefix, identity.store_id, identity.id)
        self.batcher = Batcher(json.dumps(identity.id).encode(), settings.batch_threshold, settings.batch_max)
        self.poison = PoisonDetector()
        self.acks = AckWriter(outbox)
        self._rng = rng or random.Random()
        # full jitter: a fleet that lost its broker at once does not come back in step
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, "full", self._rng)
        self._client: AsyncMqttClient | None = None
        self.stats = LinkStats()
        self._ever_connected = False
        self._stop = asyncio.Event()
        self._drain_requested = False
        self._drained = asyncio.Event()
        self._wake = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()
        # (first seq, events) of the oldest message in flight when the link dropped (poison check)
        self._loss_head: tuple[int, int] | None = None
        # re-sent as the poison check's control message: a duplicate the platform dedupes
        self._last_acked: StoredEvent | None = None
        # called with the rows of each acknowledged message (metrics: event-to-ack latency)
        self.on_published: Callable[[list[StoredEvent]], None] | None = None

    # -- helpers --------------------------------------------------------------------------

    def _status_payload(self, state: str) -> bytes:
        return (
            GatewayStatus(
                gateway_id=self.identity.id,
                store_id=self.identity.store_id,
                state="online" if state == "online" else "offline",
                ts=time.time(),
                version=__version__,
            )
            .model_dump_json()
            .encode()
        )

    def _endpoints(self) -> list[tuple[str, int]]:
        s = self.settings
        if s.host is None:
            raise ValueError("mqtt.host is not set (the daemon must point the uplink at a broker)")
        return [(s.host, s.port)] + [(b.host, b.port) for b in s.brokers]

    def _make_client(self, host: str, port: int) -> AsyncMqttClient:
        s = self.settings
        tls = TlsFiles(s.ca_file, s.cert_file, s.key_file) if s.tls else None
        return AsyncMqttClient(
            host,
            port,
            client_id=s.client_id or self.identity.id,
            protocol=s.protocol,
            keepalive=s.keepalive_s,
            clean_start=False,
            session_expiry_s=s.session_expiry_s,
            username=s.username,
            password=s.password,
            tls=tls,
            will=Will(self.topics.status, self._status_payload("offline"), qos=1, retain=True),
            max_inflight=s.inflight,
            connect_timeout_s=s.connect_timeout_s,
        )

    def _record_error(self, text: str, code: int | None = None) -> None:
        self.stats.last_error = text
        self.stats.last_error_ts = time.time()
        self.stats.last_reason_code = code

    async def _sleep_or_stop(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel on 3.11
            async with asyncio.timeout(delay):
                await self._stop.wait()

    # -- main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish birth, drain the outbox; reconnect with jittered backoff. Until cancelled."""
        endpoints = self._endpoints()
        attempt = 0  # failures in a row: drives the backoff
        index = 0  # endpoint to try next: advances on every failure and every link loss
        self._running = True
        self._finished.clear()
        self._stop.clear()
        try:
            while not self._stop.is_set():
                host, port = endpoints[index % len(endpoints)]
                self.stats.broker = f"{host}:{port}"
                self.stats.state = "connecting"
                client = self._make_client(host, port)
                try:
                    res = await client.connect()
                except MqttError as e:
                    self.stats.connect_failures += 1
                    self._record_error(f"connect to {host}:{port} failed: {e}", e.reason_code)
                    log.error(
                        "uplink.connect_failed",
                        broker=f"{host}:{port}",
                        reason=str(e),
                        reason_code=e.reason_code,
                        attempt=attempt + 1,
                    )
                    attempt += 1
                    index += 1
                    self.stats.state = "backoff"
                    await self._sleep_or_stop(self._backoff.delay(attempt))
                    continue
                if self._ever_connected:
                    self.stats.reconnects += 1
                self._ever_connected = True
                self._client = client
                self.stats.state = "connected"
                started = time.monotonic()
                self.stats.connected_since = time.time()
                log.info(
                    "uplink.connected",
                    broker=f"{host}:{port}",
                    session_present=res.session_present,
                    receive_maximum=res.receive_maximum,
                    backlog=self.outbox.backlog,
                )
                graceful = False
                try:
                    await self._session(client, res)
                    graceful = True
                except MqttError as e:
                    self._record_error(f"link to {host}:{port} lost: {e}", e.reason_code)
                    log.warning("uplink.link_lost", broker=f"{host}:{port}", reason=str(e), backlog=self.outbox.backlog)
                    await self._check_poison()
                finally:
                    self._client = None
                    self.stats.connected_since = None
                    self.stats.inflight = 0
                    await self._close_session(client, graceful)
                if graceful:
                    break
                attempt = 0 if time.monotonic() - started > _STABLE_SESSION_S else attempt + 1
                # Try the next endpoint first: the one that just dropped us is the least likely to
                # take us back now, and when it still accepts TCP without answering (a cluster node
                # during leader election, a dead host behind a load balancer) retrying it first
                # costs a whole connect timeout. Sessions are cluster-wide (docs/fleet.md).
                index += 1
                self.stats.state = "backoff"
                await self._sleep_or_stop(self._backoff.delay(attempt))
        finally:
            self.stats.state = "stopped"
            self._running = False
            self._drained.set()
            self._finished.set()

    async def _check_poison(self) -> None:
        """The link dropped: ask the poison detector what that means and do it (see ``poison.py``)."""
        v = self.poison.link_lost(self._loss_head)
        if v.decision == "cleared":
            log.warning("uplink.poison_cleared", seq=v.seq, reason="link dropped on a control message too")
        elif v.decision == "dead_letter":
            assert v.seq is not None
            text = (
                f"link dropped {v.losses} times while seq {v.seq} was in flight, the last right after the"
                " broker acknowledged a control message (refused by the broker?)"
            )
            self._record_error(text)
            self.stats.dead_lettered += await self.outbox.dead_letter([v.seq], text, None)
        elif v.decision == "unbatch":
            assert v.seq is not None
            assert v.until is not None
            self.batcher.unbatch_until(v.until)
            log.warning(
                "uplink.batch_unbatched",
                seq_first=v.seq,
                events=v.until - v.seq + 1,
                reason="link dropped while in flight",
            )
        elif v.decision == "suspect":
            log.warning("uplink.poison_suspected", seq=v.seq, losses=v.losses, next="control message, then the suspect")

    async def _send_control(self, client: AsyncMqttClient) -> None:
        """Send the control message of the poison check (see ``poison.py``) alone and await it.

        The control is the last acknowledged event again. With none since start, it is the next
        pending event after the suspect (acknowledged and deleted as usual); if the suspect then
        goes through after all, that one event arrived before it.
        """
        suspect = self.poison.suspect
        assert suspect is not None
        dup = self._last_acked
        rows = [dup] if dup is not None else await self.outbox.pending(1, after_seq=suspect)
        if not rows:
            return  # nothing to compare with yet: keep probing the suspect (nothing is lost)
        self.poison.control_sent()
        self.stats.inflight = 1
        try:
            await client.publish(self.topics.events, rows[0].payload, qos=1)
        except MqttPublishError as e:  # refused with a code: no evidence either way
            self.poison.control_refused()
            self._count_failure(e.reason_code)
            return
        self.poison.control_acknowledged()
        if dup is None:
            self._acknowledged(rows)
            await self.acks.flush()

    async def _close_session(self, client: AsyncMqttClient, graceful: bool) -> None:
        """Flush acks; say goodbye (retained offline + DISCONNECT) if the link is still up."""
        try:
            await asyncio.wait_for(asyncio.shield(self.acks.flush()), 5.0)
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception as e:  # an ack write failed: rows stay and are re-sent (duplicates, not loss)
            log.error("uplink.ack_failed", reason=str(e))
        if client.connected:
            with contextlib.suppress(MqttError, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(
                    client.publish(self.topics.status, self._status_payload("offline"), qos=1, retain=True), 2.0
                )
        with contextlib.suppress(asyncio.CancelledError):
            await client.disconnect()
        if graceful:
            log.info("uplink.stopped", backlog=self.outbox.backlog, published=self.stats.published_events)

    async def _session(self, client: AsyncMqttClient, res: ConnectResult) -> None:
        try:
            await client.publish(self.topics.status, self._status_payload("online"), qos=1, retain=True)
        except MqttPublishError as e:
            self._count_failure(e.reason_code)
            self._record_error(f"birth message on {self.topics.status} refused: {e}", e.reason_code)
            log.error("uplink.birth_refused", topic=self.topics.status, reason=str(e), reason_code=e.reason_code)
        commands: asyncio.Task[None] | None = None
        if self.on_command is not None:
            await client.subscribe(self.topics.commands, qos=1)
            commands = asyncio.create_task(self._command_loop(client), name="uplink-commands")
        try:
            await self._drain_loop(client, res)
        finally:
            if commands is not None:
                commands.cancel()
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await commands

    async def _command_loop(self, client: AsyncMqttClient) -> None:
        assert self.on_command is not None
        async for msg in client.messages():
            if msg.topic != self.topics.commands:
                continue
            try:
                await self.on_command(msg.topic, msg.payload)
            except Exception as e:  # a bad command must not take the link down
                log.error("uplink.command_failed", topic=msg.topic, error=f"{type(e).__name__}: {e}")

    def _acknowledged(self, rows: list[StoredEvent]) -> None:
        """A message got its PUBACK: its rows are deleted (in chunks), counted and kept as the control."""
        self.acks.pending.extend(r.seq for r in rows)
        self._last_acked = rows[-1]
        self.stats.published_messages += 1
        self.stats.published_events += len(rows)
        if self.on_published is not None:
            self.on_published(rows)

    def _count_failure(self, code: int | None) -> None:
        key = reason_name(code) if code is not None else "unknown"
        self.stats.publish_failures[key] = self.stats.publish_failures.get(key, 0) + 1

    async def _drain_loop(self, client: AsyncMqttClient, res: ConnectResult) -> None:
        """Publish pending rows in seq order with a bounded window; ack on PUBACK success."""
        inflight: deque[tuple[list[StoredEvent], asyncio.Future[int]]] = deque()
        self._loss_head = None
        try:
            await self._drain(client, res, inflight)
        finally:
            # Whatever is still in flight stays in the outbox; silence its futures' outcomes.
            for _, f in inflight:
                if f.done():
                    if not f.cancelled():
                        f.exception()
                else:
                    f.add_done_callback(_consume)
            self.stats.inflight = 0

    async def _drain(
        self,
        client: AsyncMqttClient,
        res: ConnectResult,
        inflight: deque[tuple[list[StoredEvent], asyncio.Future[int]]],
    ) -> None:
        window = max(1, min(self.settings.inflight, res.receive_maximum))
        limit = max_payload(self.settings.batch_max_bytes, res.maximum_packet_size, self.topics.events)
        hard_limit = res.maximum_packet_size
        topic = self.topics.events
        cursor = 0
        buffer: deque[StoredEvent] = deque()
        failures_in_row = 0
        if self.poison.needs_control():
            await self._send_control(client)
        while True:
            stopping = self._stop.is_set()
            # 1. Fill the window.
            # After a link loss, probe with the oldest message alone until it is acknowledged, so a
            # message the broker drops the link for is identified exactly (see poison.py).
            while not stopping and len(inflight) < self.poison.window(window):
                if not buffer:
                    self.outbox.data_event.clear()
                    rows = await self.outbox.pending(_READAHEAD, after_seq=cursor)
                    if not rows:
                        break
                    buffer.extend(rows)
                    cursor = rows[-1].seq
                msg_rows, payload = self.batcher.next_message(buffer, self.outbox.backlog, limit)
                if hard_limit is not None and len(payload) + len(topic) + 16 > hard_limit and len(msg_rows) == 1:
                    # The broker announced it would drop the link for this packet: never send it.
                    text = f"event of {len(payload)} bytes exceeds the broker's Maximum Packet Size {hard_limit}"
                    self._record_error(text, PACKET_TOO_LARGE)
                    self.stats.dead_lettered += await self.outbox.dead_letter([msg_rows[0].seq], text, PACKET_TOO_LARGE)
                    continue
                inflight.append((msg_rows, client.publish_nowait(topic, payload, qos=1)))
            self.stats.inflight = len(inflight)
            # 2. Nothing in flight: idle until new data, a stop, or the link dropping.
            if not inflight:
                await self.acks.flush()
                if stopping or (self._drain_requested and self.outbox.backlog == 0):
                    self._drained.set()
                    return
                await self._idle(client)
                continue
            # 3. Settle the oldest publish (PUBACKs arrive in order for QoS 1).
            msg_rows, fut = inflight[0]
            if not fut.done():
                self.acks.kick()
                await asyncio.wait([fut])
            inflight.popleft()
            exc = fut.exception()
            if exc is None:
                failures_in_row = 0
                self.poison.acknowledged()
                self._acknowledged(msg_rows)
                if len(self.acks.pending) >= _ACK_CHUNK:
                    self.acks.kick()
                continue
            if not isinstance(exc, MqttPublishError):
                # Link dropped: everything in flight failed the same way; rows stay for the next link.
                self._loss_head = (msg_rows[0].seq, len(msg_rows))
                raise exc
            # 4. A failure code: settle the rest of the window, then retry or dead-letter.
            failed: list[tuple[list[StoredEvent], MqttPublishError]] = [(msg_rows, exc)]
            while inflight:
                rows2, f2 = inflight.popleft()
                await asyncio.wait([f2])
                e2 = f2.exception()
                if e2 is None:
                    self._acknowledged(rows2)
                elif isinstance(e2, MqttPublishError):
                    failed.append((rows2, e2))
                else:
                    self._loss_head = (failed[0][0][0].seq, len(failed[0][0]))
                    raise e2
            retry_from: int | None = None
            for rows_f, err in failed:
                code = err.reason_code or 0x80
                self._count_failure(code)
                first_seq, last_seq = rows_f[0].seq, rows_f[-1].seq
                text = f"PUBACK {reason_name(code)} (0x{code:02X}) on {topic} for seq {first_seq}..{last_seq}"
                self._record_error(text, code)
                what = refusal(code, len(rows_f))
                if what == "unbatch":
                    self.batcher.unbatch_until(last_seq)
                    log.warning("uplink.batch_too_large", seq_first=first_seq, seq_last=last_seq, events=len(rows_f))
                    retry_from = first_seq if retry_from is None else min(retry_from, first_seq)
                elif what == "dead_letter":
                    n = await self.outbox.dead_letter([r.seq for r in rows_f], text, code)
                    self.stats.dead_lettered += n
                else:
                    if retry_from is None:  # one line per round, not one per message
                        log.error(
                            "uplink.publish_refused",
                            topic=topic,
                            reason=text,
                            reason_code=code,
                            messages=len(failed),
                            attempt=failures_in_row + 1,
                        )
                    retry_from = first_seq if retry_from is None else min(retry_from, first_seq)
            await self.acks.flush()
            if retry_from is not None:
                failures_in_row += 1
                self.stats.state = "retrying"
                await self._sleep_or_stop(self._backoff.delay(failures_in_row))
                self.stats.state = "connected"
                buffer.clear()
                cursor = retry_from - 1

    async def _idle(self, client: AsyncMqttClient) -> None:
        waiter = asyncio.ensure_future(self.outbox.wait_for_data(None))
        stop = asyncio.ensure_future(self._stop.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            waits: list[asyncio.Future[Any]] = [waiter, stop, wake, client.closed]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, stop, wake):
                t.cancel()
        self._wake.clear()
        if client.closed.done():
            err = client.closed.result()
            raise err or MqttDisconnectedError("disconnected")

    # -- shutdown, replies, status --------------------------------------------------------

    async def drain(self, deadline_s: float) -> None:
        """Graceful shutdown: publish what is pending until empty or ``deadline_s``, then stop.

        Rows not acknowledged by then stay in the outbox and go out after the next start.
        """
        if not self._running:
            return
        self._drain_requested = True
        self._drained.clear()
        self._wake.set()
        deadline = time.monotonic() + deadline_s
        try:
            await asyncio.wait_for(self._drained.wait(), max(0.0, deadline - time.monotonic() - 0.5))
        except TimeoutError:
            log.warning("uplink.drain_deadline", backlog=self.outbox.backlog, deadline_s=deadline_s)
        self._stop.set()
        self._wake.set()
        # Let run() flush acks, publish 'offline' and disconnect, within what is left of the deadline.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), max(0.2, deadline - time.monotonic()))

    async def publish_reply(self, payload: bytes) -> None:
        """Publish a command reply (QoS 1) on ``.../replies``; raises `MqttError` if not connected."""
        client = self._client
        if client is None or not client.connected:
            raise MqttDisconnectedError("uplink is not connected")
        await client.publish(self.topics.replies, payload, qos=1)

    @property
    def link_state(self) -> str:
        return self.stats.state

    @property
    def published_messages(self) -> int:
        return self.stats.published_messages

    def status(self) -> dict[str, Any]:
        st = self.outbox.stats()
        now = time.time()
        return {
            "link": self.stats.state,
            "broker": self.stats.broker,
            "connected_since": self.stats.connected_since,
            "last_error": self.stats.last_error,
            "last_error_ts": self.stats.last_error_ts,
            "last_reason_code": self.stats.last_reason_code,
            "backlog": st.backlog,
            "oldest_unsent_age_s": None if st.oldest_ts is None else max(0.0, now - st.oldest_ts),
            "last_seq": st.last_seq,
            "inflight": self.stats.inflight,
            "published_messages": self.stats.published_messages,
            "published_events": self.stats.published_events,
            "reconnects": self.stats.reconnects,
            "connect_failures": self.stats.connect_failures,
            "publish_failures": dict(self.stats.publish_failures),
            "dead_lettered": st.dead_letters,
            "evictions": dict(st.evicted),
            "evictions_by_priority": dict(st.evicted_by_priority),
            "outbox_bytes": st.bytes,
        }
