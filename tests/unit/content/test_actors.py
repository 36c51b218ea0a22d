"""Actor dispatch against real endpoints: an aiohttp server on 127.0.0.1 and a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.config import ContentSettings
from gateway.content.actors import ActorDispatcher, CircuitBreaker, PolicyResolver, UrlPolicy, UrlPolicyError
from gateway.content.rules import Activation, Actor
from gateway.mqtt.client import AsyncMqttClient
from tests.conftest import Mosquitto


def act(aid: str = "a1", actor: str = "w1") -> Activation:
    return Activation(
        aid,
        1.0,
        "c1",
        "spring",
        "promo",
        0,
        actor,
        "p1",
        "pseudonym",
        None,
        {"activation_id": aid, "content_id": "spring"},
    )


class Hook:
    """A webhook actor whose behaviour the test scripts: a list of statuses or 'hang'."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.calls: list[dict[str, Any]] = []

    async def handle(self, req: web.Request) -> web.Response:
        self.calls.append(await req.json())
        step = self.script.pop(0) if self.script else 200
        if step == 302:
            raise web.HTTPFound("/elsewhere")
        if step == "hang":
            await asyncio.sleep(0.8)
        return web.Response(status=int(step) if step != "hang" else 200)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield h, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def settings(**kw: Any) -> ContentSettings:
    base: dict[str, Any] = {
        "webhook_timeout_s": 0.3,
        "webhook_retries": 2,
        "webhook_backoff_s": 0.01,
        "breaker_failures": 3,
        "breaker_reset_s": 0.3,
        "mqtt_ack_timeout_s": 0.5,
        # the test webhook listens on loopback over plain http: allowed explicitly, as a store would
        "webhook_allow_http": True,
        "webhook_allow": ["127.0.0.0/8"],
    }
    base.update(kw)
    return ContentSettings(**base)


async def test_webhook_ok_retry_and_4xx(hook: tuple[Hook, str]) -> None:
    h, url = hook
    actor = Actor(id="w1", transport="webhook", url=url)
    d = ActorDispatcher(settings())
    try:
        r = await d.dispatch(act(), actor)
        assert (r.result, r.detail, r.attempts) == ("ok", "http 200", 1)
        assert h.calls[-1] == {"activation_id": "a1", "content_id": "spring"}
        h.script = [503, 502, 200]
        r = await d.dispatch(act("a2"), actor)
        assert (r.result, r.attempts) == ("ok", 3) and d.counters["retries"] == 2
        h.script = [404]
        r = await d.dispatch(act("a3"), actor)
        assert (r.result, r.detail, r.attempts) == ("rejected", "http 404", 1)  # no retry on 4xx
    finally:
        await d.close()


async def test_webhook_timeout_then_breaker_opens_half_opens_closes(hook: tuple[Hook, str]) -> None:
    h, url = hook
    actor = Actor(id="w1", transport="webhook", url=url)
    d = ActorDispatcher(settings(webhook_retries=0))
    try:
        h.script = ["hang"] * 3
        for i in range(3):
            r = await d.dispatch(act(f"t{i}"), actor)
            assert r.result == "timeout"
        br = d.breakers["w1"]
        assert br.state == "open" and br.counters["opened"] == 1
        n = len(h.calls)
        r = await d.dispatch(act("skip"), actor)
        assert (r.result, r.detail) == ("skipped", "breaker open") and len(h.calls) == n
        await asyncio.sleep(0.35)
        h.script = [500]  # half-open probe fails -> open again
        r = await d.dispatch(act("probe1"), actor)
        assert r.result == "failed" and br.state == "open" and br.counters["half_open"] == 1
        await asyncio.sleep(0.35)
        r = await d.dispatch(act("probe2"), actor)  # probe succeeds -> closed
        assert r.result == "ok" and br.state == "closed" and br.counters["closed"] == 1
    finally:
        await d.close()


def test_breaker_single_probe_in_half_open() -> None:
    now = [0.0]
    b = CircuitBreaker(failures_to_open=1, reset_s=10, clock=lambda: now[0])
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # second caller waits for the probe
    b.success()
    assert b.state == "closed" and b.allow()


async def test_webhook_connection_refused_is_failed() -> None:
    from tests.conftest import free_port

    actor = Actor(id="w9", transport="webhook", url=f"http://127.0.0.1:{free_port()}/x")
    d = ActorDispatcher(settings(webhook_retries=1))
    try:
        r = await d.dispatch(act(actor="w9"), actor)
        assert r.result == "failed" and r.attempts == 2 and r.detail is not None
    finally:
        await d.close()


async def test_mqtt_actor_sent_ack_and_ack_timeout(mosquitto: Mosquitto) -> None:
    screen = AsyncMqttClient(mosquitto.host, mosquitto.port, client_id="screen")
    await screen.connect()
    await screen.subscribe("gateway/actors/#", qos=1)
    d = ActorDispatcher(settings())
    link = asyncio.create_task(d.run_local(mosquitto.host, mosquitto.port, "gw-actors"))
    for _ in range(250):  # bounded: 5 s
        if d.mqtt is not None:
            break
        await asyncio.sleep(0.02)
    assert d.mqtt is not None and d.mqtt.connected
    got: list[tuple[str, dict[str, Any]]] = []
    answer = {"value": "ok"}

    async def screen_loop() -> None:
        async for m in screen.messages():
            if m.topic.endswith("/ack"):
                continue
            doc = json.loads(m.payload)
            got.append((m.topic, doc))
            if "reply_to" in doc and answer["value"] != "silent":
                await screen.publish(
                    doc["reply_to"],
                    json.dumps({"activation_id": doc["activation_id"], "status": answer["value"]}).encode(),
                )

    task = asyncio.create_task(screen_loop())
    try:
        r = await d.dispatch(act(actor="s1"), Actor(id="s1"))
        assert r.result == "sent"
        acked = Actor(id="s2", ack=True)
        r = await d.dispatch(act("a2", "s2"), acked)
        assert (r.result, r.detail) == ("ok", "ack ok")
        answer["value"] = "busy"
        r = await d.dispatch(act("a3", "s2"), acked)
        assert (r.result, r.detail) == ("rejected", "ack busy")
        answer["value"] = "silent"
        r = await d.dispatch(act("a4", "s2"), acked)
        assert r.result == "timeout"
        await asyncio.sleep(0.1)
        assert [t for t, _ in got] == ["gateway/actors/s1"] + ["gateway/actors/s2"] * 3
        assert got[0][1] == {"activation_id": "a1", "content_id": "spring"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        link.cancel()
        await asyncio.gather(link, return_exceptions=True)
        assert d.mqtt is None
        await d.close()
        await screen.disconnect()


async def test_mqtt_actor_without_broker_is_failed() -> None:
    d = ActorDispatcher(settings())
    r = await d.dispatch(act(actor="s1"), Actor(id="s1"))
    assert (r.result, r.detail) == ("failed", "local broker not connected")


async def test_webhook_policy_at_dispatch_and_no_redirects(hook: tuple[Hook, str]) -> None:
    h, url = hook
    actor = Actor(id="w1", transport="webhook", url=url)
    # default policy (https only, public addresses only): the stored loopback actor is not called
    d = ActorDispatcher(ContentSettings())
    try:
        r = await d.dispatch(act(), actor)
        assert r.result == "skipped" and r.detail is not None and r.detail.startswith("url policy: plain http")
        assert h.calls == []
    finally:
        await d.close()
    d = ActorDispatcher(settings())
    try:
        h.script = [302]
        r = await d.dispatch(act(), actor)
        assert (r.result, r.detail, r.attempts) == ("rejected", "http 302", 1)  # the redirect is not followed
        assert len(h.calls) == 1
    finally:
        await d.close()


class FakeDns:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[Any]:
        return [
            {"hostname": host, "host": a, "port": port, "family": 2, "proto": 0, "flags": 0} for a in self.answers[host]
        ]

    async def close(self) -> None:
        return None


async def test_resolver_refuses_names_that_resolve_inside() -> None:
    """A public-looking name answering with the metadata address (DNS rebinding) is refused at
    connect time; a name in the allow-list still has to resolve to an allowed network."""
    dns = FakeDns({"evil.example": ["93.184.216.34", "169.254.169.254"], "ok.example": ["93.184.216.34"]})
    r = PolicyResolver(UrlPolicy(), dns)  # type: ignore[arg-type]
    assert [x["host"] for x in await r.resolve("ok.example", 443)] == ["93.184.216.34"]
    with pytest.raises(UrlPolicyError, match="169.254.169.254 is a link-local address"):
        await r.resolve("evil.example", 443)
    pol = UrlPolicy.build(False, ["tablets.store.lan", "10.20.0.0/24"])
    assert pol.check_url("https://tablets.store.lan/x") is None
    assert pol.check_url("https://other.store.lan/x") == "host 'other.store.lan' is not in content.webhook_allow"
    dns.answers["tablets.store.lan"] = ["10.99.0.1"]
    with pytest.raises(UrlPolicyError, match="10.99.0.1 is a private address"):
        await PolicyResolver(pol, dns).resolve("tablets.store.lan", 443)  # type: ignore[arg-type]
    dns.answers["tablets.store.lan"] = ["10.20.0.7"]
    assert len(await PolicyResolver(pol, dns).resolve("tablets.store.lan", 443)) == 1  # type: ignore[arg-type]
    assert UrlPolicy.build(False, ["*.example.com"]).check_url("https://a.b.example.com/") is None
    for bad in ("https://user:pw@example.com/", "https:///x", "https://[zz]/"):
        assert UrlPolicy().check_url(bad) is not None, bad
