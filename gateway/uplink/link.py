"""MQTT uplink: drains the durable outbox to the central broker, in seq order, at QoS 1.

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
from dataclasses import dataclass
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
from gateway.uplink.outbox import Outbox, StoredEvent

log = get_logger(__name__)

CommandHandler = Callable[[str, bytes], Awaitable[None]]

# PUBACK codes that mean "this payload will never be accepted": dead-letter instead of retrying.
DEAD_LETTER_CODES = frozenset({0x99})
PACKET_TOO_LARGE = 0x95
# Link losses in a row with the same message at the head of the window before it is suspected;
# it is set aside only if the broker then accepts a control message on the same link (_check_poison).
POISON_LOSSES = 5
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


def batch_payload(gateway_id_json: bytes, rows: list[StoredEvent]) -> bytes:
    """``UplinkBatch`` JSON from stored ``UplinkEvent`` bytes (byte-identical to pydantic's dump)."""
    return b'{"v":1,"gateway_id":%s,"batch":[%s]}' % (gateway_id_json, b",".join(r.payload for r in rows))


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
        self._gw_json = json.dumps(identity.id).encode()
        self._rng = rng or random.Random()
        # full jitter: a fleet that lost its broker at once does not come back in step
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, "full", self._rng)
        self._client: AsyncMqttClient | None = None
        self._state = "stopped"
        self._last_error: str | None = None
        self._last_error_ts: float | None = None
        self._last_reason_code: int | None = None
        self._broker: str | None = None
        self._connected_since: float | None = None
        self._ever_connected = False
        self.published_messages = 0
        self.published_events = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.publish_failures: dict[str, int] = {}
        self.dead_lettered = 0
        self._inflight = 0
        self._ack_pending: list[int] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._no_batch_until = 0
        self._stop = asyncio.Event()
        self._drain_requested = False
        self._drained = asyncio.Event()
        self._wake = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()
        self._loss_head: tuple[int, int] | None = None
        self._prev_loss_head: tuple[int, int] | None = None
        self._same_head_losses = 0
        self._probing = False
        # Poison check: the suspected seq, the control message's outcome on the current link
        # (None: not sent, False: in flight, True: acknowledged) and the last acknowledged event
        # (re-sent as the control: a duplicate the platform already dedupes, so order is kept).
        self._suspect: int | None = None
        self._control: bool | None = None
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
        self._last_error = text
        self._last_error_ts = time.time()
        self._last_reason_code = code

    async def _sleep_or_stop(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

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
                self._broker = f"{host}:{port}"
                self._state = "connecting"
                client = self._make_client(host, port)
                try:
                    res = await client.connect()
                except MqttError as e:
                    self.connect_failures += 1
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
                    self._state = "backoff"
                    await self._sleep_or_stop(self._backoff.delay(attempt))
                    continue
                if self._ever_connected:
                    self.reconnects += 1
                self._ever_connected = True
                self._client = client
                self._state = "connected"
                started = time.monotonic()
                self._connected_since = time.time()
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
                    self._connected_since = None
                    self._inflight = 0
                    await self._close_session(client, graceful)
                if graceful:
                    break
                attempt = 0 if time.monotonic() - started > _STABLE_SESSION_S else attempt + 1
                # Try the next endpoint first: the one that just dropped us is the least likely to
                # take us back now, and when it still accepts TCP without answering (a cluster node
                # during leader election, a dead host behind a load balancer) retrying it first
                # costs a whole connect timeout. Sessions are cluster-wide (docs/fleet.md).
                index += 1
                self._state = "backoff"
                await self._sleep_or_stop(self._backoff.delay(attempt))
        finally:
            self._state = "stopped"
            self._running = False
            self._drained.set()
            self._finished.set()

    async def _check_poison(self) -> None:
        """A message the broker answers by dropping the link (no PUBACK at all) must not block the queue.

        After a link loss the next connection sends only the oldest message (a probe). When the
        link drops ``POISON_LOSSES`` times in a row with that same probe alone in flight, a batch
        is re-sent one event per message. A single event is only *suspected*: a broker that is
        itself unwell (a cluster node re-electing its stream leaders drops every publisher for
        a while) looks the same. The next link first sends a control message (the last
        acknowledged event again, a duplicate the platform dedupes) and then the suspect alone.
        Only when the broker acknowledges the control and then drops the link on the suspect is
        the suspect dead-lettered (kept in the ``dead_letter`` table, counted, reported), never
        deleted as sent. A link lost with the control in flight clears the suspicion.
        """
        head = self._loss_head
        control, self._control = self._control, None
        probing, self._probing = self._probing, head is not None or control is False
        if control is False:
            log.warning("uplink.poison_cleared", seq=self._suspect, reason="link dropped on a control message too")
            self._forget_suspicion()
            return
        if head is None or not probing:
            # Lost with a full window: the culprit is not known yet; the next link probes.
            self._forget_suspicion()
            return
        seq, count = head
        if control and seq == self._suspect:
            text = (
                f"link dropped {POISON_LOSSES + 1} times while seq {seq} was in flight, the last right after the"
                " broker acknowledged a control message (refused by the broker?)"
            )
            self._forget_suspicion()
            self._record_error(text)
            self.dead_lettered += await self.outbox.dead_letter([seq], text, None)
            return
        if head != self._prev_loss_head:
            self._same_head_losses = 1
            self._prev_loss_head = head
            self._suspect = None
            return
        self._same_head_losses += 1
        if self._same_head_losses < POISON_LOSSES:
            return
        self._forget_suspicion()
        if count > 1:
            self._no_batch_until = max(self._no_batch_until, seq + count - 1)
            log.warning("uplink.batch_unbatched", seq_first=seq, events=count, reason="link dropped while in flight")
            return
        self._suspect = seq
        log.warning("uplink.poison_suspected", seq=seq, losses=POISON_LOSSES, next="control message, then the suspect")

    def _forget_suspicion(self) -> None:
        """Start counting link losses on the same probe from zero."""
        self._suspect = None
        self._same_head_losses = 0
        self._prev_loss_head = None

    async def _send_control(self, client: AsyncMqttClient) -> None:
        """Send the control message of the poison check (see ``_check_poison``) alone and await it.

        The control is the last acknowledged event again. With none since start, it is the next
        pending event after the suspect (acknowledged and deleted as usual); if the suspect then
        goes through after all, that one event arrived before it.
        """
        suspect = self._suspect
        assert suspect is not None
        dup = self._last_acked
        rows = [dup] if dup is not None else await self.outbox.pending(1, after_seq=suspect)
        if not rows:
            return  # nothing to compare with yet: keep probing the suspect (nothing is lost)
        self._control = False
        self._inflight = 1
        try:
            await client.publish(self.topics.events, rows[0].payload, qos=1)
        except MqttPublishError as e:  # refused with a code: no evidence either way
            self._control = None
            self._count_failure(e.reason_code)
            return
        self._control = True
        if dup is None:
            self._acknowledged(rows)
            await self._flush_acks()

    async def _close_session(self, client: AsyncMqttClient, graceful: bool) -> None:
        """Flush acks; say goodbye (retained offline + DISCONNECT) if the link is still up."""
        try:
            await asyncio.wait_for(asyncio.shield(self._flush_acks()), 5.0)
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
            log.info("uplink.stopped", backlog=self.outbox.backlog, published=self.published_events)

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
        self._ack_pending.extend(r.seq for r in rows)
        self._last_acked = rows[-1]
        self.published_messages += 1
        self.published_events += len(rows)
        if self.on_published is not None:
            self.on_published(rows)

    def _count_failure(self, code: int | None) -> None:
        key = reason_name(code) if code is not None else "unknown"
        self.publish_failures[key] = self.publish_failures.get(key, 0) + 1

    def _max_payload(self, res: ConnectResult) -> int:
        limit = self.settings.batch_max_bytes
        if res.maximum_packet_size:
            limit = min(limit, res.maximum_packet_size - len(self.topics.events) - 64)
        return max(1024, limit)

    def _next_message(self, buffer: deque[StoredEvent], max_payload: int) -> tuple[list[StoredEvent], bytes]:
        first = buffer.popleft()
        s = self.settings
        if self.outbox.backlog <= s.batch_threshold or not buffer or first.seq <= self._no_batch_until:
            return [first], first.payload
        rows = [first]
        size = 64 + len(first.payload)
        while buffer and len(rows) < s.batch_max:
            nxt = buffer[0]
            if size + len(nxt.payload) + 1 > max_payload or nxt.seq <= self._no_batch_until:
                break
            rows.append(buffer.popleft())
            size += len(nxt.payload) + 1
        if len(rows) == 1:
            return rows, first.payload
        return rows, batch_payload(self._gw_json, rows)

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
            self._inflight = 0

    async def _drain(
        self,
        client: AsyncMqttClient,
        res: ConnectResult,
        inflight: deque[tuple[list[StoredEvent], asyncio.Future[int]]],
    ) -> None:
        window = max(1, min(self.settings.inflight, res.receive_maximum))
        max_payload = self._max_payload(res)
        hard_limit = res.maximum_packet_size
        topic = self.topics.events
        cursor = 0
        buffer: deque[StoredEvent] = deque()
        failures_in_row = 0
        if self._suspect is not None and self._probing:
            await self._send_control(client)
        while True:
            stopping = self._stop.is_set()
            # 1. Fill the window.
            # After a link loss, probe with the oldest message alone until it is acknowledged, so a
            # message the broker drops the link for is identified exactly (see _check_poison).
            while not stopping and len(inflight) < (1 if self._probing else window):
                if not buffer:
                    self.outbox.data_event.clear()
                    rows = await self.outbox.pending(_READAHEAD, after_seq=cursor)
                    if not rows:
                        break
                    buffer.extend(rows)
                    cursor = rows[-1].seq
                msg_rows, payload = self._next_message(buffer, max_payload)
                if hard_limit is not None and len(payload) + len(topic) + 16 > hard_limit and len(msg_rows) == 1:
                    # The broker announced it would drop the link for this packet: never send it.
                    text = f"event of {len(payload)} bytes exceeds the broker's Maximum Packet Size {hard_limit}"
                    self._record_error(text, PACKET_TOO_LARGE)
                    self.dead_lettered += await self.outbox.dead_letter([msg_rows[0].seq], text, PACKET_TOO_LARGE)
                    continue
                inflight.append((msg_rows, client.publish_nowait(topic, payload, qos=1)))
            self._inflight = len(inflight)
            # 2. Nothing in flight: idle until new data, a stop, or the link dropping.
            if not inflight:
                await self._flush_acks()
                if stopping or (self._drain_requested and self.outbox.backlog == 0):
                    self._drained.set()
                    return
                await self._idle(client)
                continue
            # 3. Settle the oldest publish (PUBACKs arrive in order for QoS 1).
            msg_rows, fut = inflight[0]
            if not fut.done():
                self._kick_acks()
                await asyncio.wait([fut])
            inflight.popleft()
            exc = fut.exception()
            if exc is None:
                failures_in_row = 0
                if self._probing:
                    self._probing = False
                    self._suspect = None
                self._acknowledged(msg_rows)
                if len(self._ack_pending) >= _ACK_CHUNK:
                    self._kick_acks()
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
                if code == PACKET_TOO_LARGE and len(rows_f) > 1:
                    self._no_batch_until = max(self._no_batch_until, last_seq)
                    log.warning("uplink.batch_too_large", seq_first=first_seq, seq_last=last_seq, events=len(rows_f))
                    retry_from = first_seq if retry_from is None else min(retry_from, first_seq)
                elif code in DEAD_LETTER_CODES or code == PACKET_TOO_LARGE:
                    n = await self.outbox.dead_letter([r.seq for r in rows_f], text, code)
                    self.dead_lettered += n
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
            await self._flush_acks()
            if retry_from is not None:
                failures_in_row += 1
                self._state = "retrying"
                await self._sleep_or_stop(self._backoff.delay(failures_in_row))
                self._state = "connected"
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

    def _kick_acks(self) -> None:
        if self._ack_pending and (self._ack_task is None or self._ack_task.done()):
            if self._ack_task is not None and not self._ack_task.cancelled() and self._ack_task.exception():
                log.error("uplink.ack_failed", reason=str(self._ack_task.exception()))
            self._ack_task = asyncio.create_task(self._ack_worker(), name="uplink-acks")

    async def _ack_worker(self) -> None:
        while self._ack_pending:
            seqs, self._ack_pending = self._ack_pending, []
            await self.outbox.ack(seqs)

    async def _flush_acks(self) -> None:
        if self._ack_task is not None and not self._ack_task.done():
            await self._ack_task
        if self._ack_pending:
            self._ack_task = asyncio.create_task(self._ack_worker(), name="uplink-acks")
            await self._ack_task

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
        return self._state

    def status(self) -> dict[str, Any]:
        st = self.outbox.stats()
        now = time.time()
        return {
            "link": self._state,
            "broker": self._broker,
            "connected_since": self._connected_since,
            "last_error": self._last_error,
            "last_error_ts": self._last_error_ts,
            "last_reason_code": self._last_reason_code,
            "backlog": st.backlog,
            "oldest_unsent_age_s": None if st.oldest_ts is None else max(0.0, now - st.oldest_ts),
            "last_seq": st.last_seq,
            "inflight": self._inflight,
            "published_messages": self.published_messages,
            "published_events": self.published_events,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "publish_failures": dict(self.publish_failures),
            "dead_lettered": st.dead_letters,
            "evictions": dict(st.evicted),
            "evictions_by_priority": dict(st.evicted_by_priority),
            "outbox_bytes": st.bytes,
        }
