"""Async dispatch of activations to local actors: store-local MQTT topics and HTTP webhooks.

* MQTT: publish (QoS 1) the payload on ``<prefix>/actors/<actor_id>`` on the store-local broker
  (``gateway/mqtt/local.py``: the same client and broker rule as the sensor nodes); actors with
  ``ack = true`` answer on ``<prefix>/actors/<actor_id>/ack`` with ``{"activation_id": ...,
  "status": ...}`` within ``mqtt_ack_timeout_s``; otherwise the broker's PUBACK is the answer ("sent").
* Webhooks: POST JSON with a per-attempt timeout, bounded retries with exponential backoff on
  connection errors, timeouts and 5xx (4xx is the actor's final answer: no retry).
* Per-actor circuit breaker (closed -> open after N consecutive failures -> half-open probe after
  ``breaker_reset_s`` -> closed on success): a dead screen must not slow the others down nor be
  hammered; while open, activations are recorded as ``skipped: breaker open``.

Every dispatch returns a `DispatchResult` that becomes the ``result``/``detail`` of the
ActivationReport sent to the platform.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from gateway.backoff import Backoff
from gateway.config import ContentSettings
from gateway.content.rules import Activation, Actor
from gateway.log import get_logger
from gateway.mqtt.client import MqttError
from gateway.mqtt.local import LocalBrokerClient, run_connected

log = get_logger(__name__)

LOCAL_RETRY_FIRST_S = 0.5  # first reconnect delay to the local broker (doubles up to max_backoff_s)
BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class DispatchResult:
    result: str  # ok | sent | failed | timeout | skipped | rejected
    detail: str | None = None
    attempts: int = 0


@dataclass
class CircuitBreaker:
    """Consecutive-failure breaker with one half-open probe at a time. Clock injectable."""

    failures_to_open: int = 5
    reset_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    counters: dict[str, int] = field(default_factory=lambda: {"opened": 0, "rejected": 0, "half_open": 0, "closed": 0})

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at >= self.reset_s:
                self.state = "half_open"
                self.counters["half_open"] += 1
            else:
                self.counters["rejected"] += 1
                return False
        if self.probe_in_flight:  # half-open: a single probe
            self.counters["rejected"] += 1
            return False
        self.probe_in_flight = True
        return True

    def success(self) -> None:
        if self.state != "closed":
            self.counters["closed"] += 1
        self.state = "closed"
        self.consecutive_failures = 0
        self.probe_in_flight = False

    def failure(self) -> None:
        self.probe_in_flight = False
        self.consecutive_failures += 1
        if self.state == "half_open" or self.consecutive_failures >= self.failures_to_open:
            if self.state != "open":
                self.counters["opened"] += 1
            self.state = "open"
            self.opened_at = self.clock()


class ActorDispatcher:
    """Sends activations to actors; owns the local broker link (and its ack listener) and the HTTP session."""

    def __init__(
        self,
        settings: ContentSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.mqtt: LocalBrokerClient | None = None  # while the local broker link is up (run_local)
        self._session = session
        self._own_session = session is None
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}
        self._acks: dict[str, asyncio.Future[str]] = {}
        self._sem = asyncio.Semaphore(settings.max_concurrent_dispatch)
        self.counters: dict[str, int] = {}

    def topic(self, actor_id: str) -> str:
        return f"{self.settings.actor_topic_prefix}/actors/{actor_id}"

    async def run_local(self, host: str, port: int, client_id: str, *, max_backoff_s: float = 10.0) -> None:
        """Keep a connection to the store-local broker (reconnecting with backoff); until cancelled.
        While it is down, MQTT actors are reported 'failed' and rules keep evaluating."""

        def make() -> LocalBrokerClient:
            return LocalBrokerClient(host, port, self._on_acks, client_id=client_id, connect_timeout_s=5.0)

        async def up(client: LocalBrokerClient) -> None:
            await client.subscribe([f"{self.settings.actor_topic_prefix}/actors/+/ack"], qos=1)
            self.mqtt = client

        def down(_err: MqttError) -> None:
            self.mqtt = None

        backoff = Backoff(LOCAL_RETRY_FIRST_S, max_backoff_s, "spread")
        try:
            await run_connected(make, up, backoff, on_down=down, what="actors")
        finally:
            self.mqtt = None

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    def _on_acks(self, msgs: list[tuple[str, bytes]]) -> None:
        for topic, payload in msgs:
            if not topic.endswith("/ack"):
                continue
            try:
                doc = json.loads(payload)
                aid, status = str(doc["activation_id"]), str(doc.get("status", "ok"))
            except (ValueError, KeyError, TypeError):
                self._count("malformed_ack")
                continue
            fut = self._acks.get(aid)
            if fut is not None and not fut.done():
                fut.set_result(status[:64])

    def breaker(self, actor_id: str) -> CircuitBreaker:
        b = self.breakers.get(actor_id)
        if b is None:
            b = self.breakers[actor_id] = CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_reset_s, self.clock
            )
        return b

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def dispatch(self, act: Activation, actor: Actor) -> DispatchResult:
        br = self.breaker(actor.id)
        if not br.allow():
            self._count("breaker_open")
            return DispatchResult("skipped", "breaker open")
        async with self._sem:
            try:
                if actor.transport == "mqtt":
                    res = await self._mqtt(act, actor)
                else:
                    res = await self._webhook(act, actor)
            except Exception as e:  # any transport bug is the actor's failure, not the daemon's
                res = DispatchResult("failed", f"{type(e).__name__}", 1)
        if res.result in ("ok", "sent"):
            br.success()
        elif res.result != "rejected":
            br.failure()
        else:
            br.success()  # the actor answered: it is alive
        self._count(res.result)
        return res

    async def _mqtt(self, act: Activation, actor: Actor) -> DispatchResult:
        if self.mqtt is None or not self.mqtt.connected:
            return DispatchResult("failed", "local broker not connected", 1)
        payload = json.dumps(act.payload | ({"reply_to": self.topic(actor.id) + "/ack"} if actor.ack else {})).encode()
        fut: asyncio.Future[str] | None = None
        if actor.ack:
            fut = self._acks[act.activation_id] = asyncio.get_running_loop().create_future()
        try:
            try:
                await asyncio.wait_for(
                    self.mqtt.publish(self.topic(actor.id), payload, qos=1), self.settings.mqtt_ack_timeout_s
                )
            except TimeoutError:
                return DispatchResult("timeout", "no PUBACK from local broker", 1)
            except MqttError as e:
                return DispatchResult("failed", str(e)[:200], 1)
            if fut is None:
                return DispatchResult("sent", None, 1)
            try:
                status = await asyncio.wait_for(fut, self.settings.mqtt_ack_timeout_s)
            except TimeoutError:
                return DispatchResult("timeout", f"no ack within {self.settings.mqtt_ack_timeout_s}s", 1)
            return DispatchResult("ok" if status == "ok" else "rejected", f"ack {status}", 1)
        finally:
            if fut is not None:
                self._acks.pop(act.activation_id, None)

    async def _webhook(self, act: Activation, actor: Actor) -> DispatchResult:
        assert actor.url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        backoff = Backoff(self.settings.webhook_backoff_s)
        last = DispatchResult("failed", "not attempted", 0)
        for attempt in range(1, self.settings.webhook_retries + 2):
            try:
                async with self._session.post(actor.url, json=act.payload, timeout=timeout) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return DispatchResult("ok", f"http {resp.status}", attempt)
                    if 400 <= resp.status < 500:
                        return DispatchResult("rejected", f"http {resp.status}", attempt)
                    last = DispatchResult("failed", f"http {resp.status}", attempt)
            except TimeoutError:
                last = DispatchResult("timeout", f"no answer within {self.settings.webhook_timeout_s}s", attempt)
            except aiohttp.ClientError as e:
                last = DispatchResult("failed", type(e).__name__, attempt)
            if attempt <= self.settings.webhook_retries:
                self._count("retries")
                await asyncio.sleep(backoff.next_delay())
        return last
