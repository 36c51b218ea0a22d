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

Webhook URL policy (`UrlPolicy`; a signed ``actors.put`` must not turn the box into a proxy into
the store LAN or the cloud metadata service): https only unless ``content.webhook_allow_http``;
when ``content.webhook_allow`` lists hosts, only those; and every address the host is or resolves
to must be a public one unless it lies in a network listed in ``content.webhook_allow`` - so
loopback, link-local (169.254.169.254), private and other special ranges are refused by default.
The command handler checks the URL when the actor arrives; the resolver of the HTTP session checks
the addresses at every connection (a DNS answer that changes later is caught), and redirects are
not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.backoff import Backoff
from gateway.config import ContentSettings, IPNetwork, parse_allow_entry
from gateway.content.rules import Activation, Actor
from gateway.log import get_logger
from gateway.mqtt.client import MqttError
from gateway.mqtt.local import LocalBrokerClient, run_connected

log = get_logger(__name__)

LOCAL_RETRY_FIRST_S = 0.5  # first reconnect delay to the local broker (doubles up to max_backoff_s)
BreakerState = Literal["closed", "open", "half_open"]


class UrlPolicyError(OSError):
    """A webhook URL or one of its addresses is not allowed (message: why, one line)."""


@dataclass(frozen=True)
class UrlPolicy:
    allow_http: bool = False
    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, s: ContentSettings) -> UrlPolicy:
        return cls.build(s.webhook_allow_http, s.webhook_allow)

    @classmethod
    def build(cls, allow_http: bool, entries: Sequence[str]) -> UrlPolicy:
        parsed = [parse_allow_entry(e) for e in entries]
        return cls(
            allow_http,
            tuple(p for p in parsed if isinstance(p, str)),
            tuple(p for p in parsed if not isinstance(p, str)),
        )

    @property
    def restricted(self) -> bool:
        return bool(self.names or self.networks)

    def _name_allowed(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        return any(h == n or (n.startswith("*.") and h.endswith(n[1:])) for n in self.names)

    def check_address(self, addr: str) -> str | None:
        """Why this resolved address may not be reached (None: it may)."""
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return f"{addr!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in n for n in self.networks):
            return None
        if ip.is_global and not ip.is_multicast:
            return None
        kind = (
            "loopback"
            if ip.is_loopback
            else "link-local"
            if ip.is_link_local
            else "private"
            if ip.is_private
            else "multicast"
            if ip.is_multicast
            else "reserved"
        )
        return f"{ip} is a {kind} address (list its network in content.webhook_allow to allow it)"

    def check_url(self, url: str) -> str | None:
        """Why this webhook URL is refused (None: allowed so far; addresses are checked on connect)."""
        try:
            u = urlsplit(url)
            host = u.hostname
            _ = u.port
        except ValueError as e:
            return f"not a valid URL ({e})"
        if u.scheme not in ("http", "https"):
            return f"scheme must be https, got {u.scheme or 'none'!r}"
        if u.scheme == "http" and not self.allow_http:
            return "plain http is refused; use https (or set content.webhook_allow_http)"
        if not host:
            return "no host in the URL"
        if u.username is not None or u.password is not None:
            return "credentials in the URL are not allowed"
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            literal = True
        except ValueError:
            literal = False
        if literal:
            return self.check_address(host)
        if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            return f"host {host!r} is loopback"
        if self.restricted and not self._name_allowed(host):
            return f"host {host!r} is not in content.webhook_allow"
        return None


class PolicyResolver(AbstractResolver):
    """The system resolver, refusing a host when any of its addresses breaks the URL policy."""

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            why = self.policy.check_address(r["host"])
            if why is not None:
                raise UrlPolicyError(f"{host} resolves to {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


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
        self.url_policy = UrlPolicy.from_settings(settings)

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
        why = self.url_policy.check_url(actor.url)  # the policy may have tightened since the actor came
        if why is not None:
            return DispatchResult("skipped", f"url policy: {why}", 0)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=PolicyResolver(self.url_policy))
            )
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        backoff = Backoff(self.settings.webhook_backoff_s)
        last = DispatchResult("failed", "not attempted", 0)
        for attempt in range(1, self.settings.webhook_retries + 2):
            try:
                async with self._session.post(
                    actor.url, json=act.payload, timeout=timeout, allow_redirects=False
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return DispatchResult("ok", f"http {resp.status}", attempt)
                    if 300 <= resp.status < 500:  # redirects are not followed: the actor's answer
                        return DispatchResult("rejected", f"http {resp.status}", attempt)
                    last = DispatchResult("failed", f"http {resp.status}", attempt)
            except TimeoutError:
                last = DispatchResult("timeout", f"no answer within {self.settings.webhook_timeout_s}s", attempt)
            except aiohttp.ClientError as e:
                if isinstance(e.__cause__, UrlPolicyError):
                    return DispatchResult("skipped", f"url policy: {e.__cause__}", attempt)
                last = DispatchResult("failed", type(e).__name__, attempt)
            if attempt <= self.settings.webhook_retries:
                self._count("retries")
                await asyncio.sleep(backoff.next_delay())
        return last
