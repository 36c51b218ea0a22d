"""A small stand-in for the central platform: subscribes to every gateway's events and prints them.

Used by ``gateway demo`` and by tests. It checks the platform-side contract as it goes: per gateway,
sequence numbers must be contiguous (a repeated seq is a harmless at-least-once duplicate, dropped
by event id; a missing one is a gap and is reported).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.content.commands import Signer, make_command
from gateway.mqtt.client import AsyncMqttClient

# What the stand-in pushes to every gateway at start (demo): a screen actor, a campaign, a consent.
DEMO_IRK_HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # a made-up key for the demo customer


def demo_commands(issued_at: float) -> list[tuple[str, dict[str, Any], int]]:
    """(kind, body, revision) the stand-in sends; revisions above anything a demo state holds."""
    rev = int(issued_at)
    return [
        (
            "actors.put",
            {"actor": {"id": "demo-screen", "kind": "screen", "categories": ["promo"], "scopes": ["zone"]}},
            rev,
        ),
        (
            "campaigns.put",
            {
                "campaign": {
                    "id": "produce-welcome",
                    "name": "Fresh produce welcome",
                    "category": "promo",
                    "content_id": "produce-video-01",
                    "actors": ["demo-screen"],
                    "priority": 10,
                    "segment": {"trigger": "zone.entered", "zone": "produce"},
                    "caps": {"per_subject": {"count": 1, "window_s": 3600}, "per_actor": {"count": 30, "window_s": 60}},
                }
            },
            rev,
        ),
        (
            "consents.put",
            {
                "customer_ref": "cust-demo-1",
                "irk_hex": DEMO_IRK_HEX,
                "scope": ["presence", "first_name"],
                "tags": ["loyalty"],
                "first_name": "Alex",
            },
            rev,
        ),
    ]


@dataclass
class GatewayLedger:
    next_seq: int = 1
    received: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)


class CloudStandIn:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "retail",
        protocol: Any = "5",
        out: TextIO | None = None,
        verbose: bool = True,
        durable: bool = False,
        signer: Signer | None = None,
    ) -> None:
        # durable: a persistent session (as the platform's ingest runs): the broker keeps the
        # subscriptions and queues QoS 1 events while the stand-in is away (and across a broker
        # restart when the broker persists its state)
        self.client = AsyncMqttClient(
            host,
            port,
            client_id="cloud-standin",
            protocol=protocol,
            clean_start=not durable,
            session_expiry_s=3600 if durable else None,
        )
        self.prefix = prefix
        self.out = out or sys.stdout
        self.verbose = verbose
        self.ledgers: dict[str, GatewayLedger] = {}
        self.by_type: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.malformed = 0
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.replies: dict[str, dict[str, Any]] = {}
        self.push_commands = False
        # the platform's command-signing key (the gateway holds only its public half)
        self.signer = signer

    async def run(self) -> None:
        await self.client.connect()
        await self.client.subscribe(f"{self.prefix}/+/+/events", qos=1)
        await self.client.subscribe(f"{self.prefix}/+/+/status", qos=1)
        await self.client.subscribe(f"{self.prefix}/+/+/replies", qos=1)
        self.connected.set()
        try:
            async for msg in self.client.messages():
                self.handle(msg.topic, msg.payload)
        finally:
            await self.client.disconnect()

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            self.malformed += 1
            return
        if topic.endswith("/status"):
            gw = topic.split("/")[-2]
            self.status[gw] = str(doc.get("state"))
            self._say(f"cloud <- {gw} status {doc.get('state')}")
            if doc.get("state") == "online" and self.push_commands:
                store = topic.split("/")[-3]
                task = asyncio.create_task(self.push_demo_state(store, gw))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        if topic.endswith("/replies"):
            if isinstance(doc, dict):
                self.replies[str(doc.get("id"))] = doc
                err = doc.get("error")
                self._say(f"cloud <- reply {doc.get('id')} ok={doc.get('ok')}" + (f" error={err}" if err else ""))
            return
        items = doc.get("batch", [doc])
        for item in items:
            self._accept(item)

    async def push_demo_state(self, store: str, gw: str, timeout: float = 10.0) -> None:
        """Send the demo actor, campaign and consent; resend each until its reply arrives (the
        gateway subscribes to its command topic a moment after going online)."""
        topic = f"{self.prefix}/{store}/{gw}/commands"
        now = time.time()
        for n, (kind, body, rev) in enumerate(demo_commands(now)):
            cid = f"demo-{kind}-{int(now)}-{n}"
            end = time.monotonic() + timeout
            # signed for this gateway only, valid for an hour
            cmd = make_command(kind, body, id=cid, revision=rev, aud=gw, issued_at=now, ttl_s=3600, signer=self.signer)
            while cid not in self.replies and time.monotonic() < end:
                self._say(f"cloud -> {gw} {kind} id={cid} revision={rev}")
                await self.client.publish(topic, cmd)
                for _ in range(10):
                    if cid in self.replies:
                        break
                    await asyncio.sleep(0.1)

    def _accept(self, item: dict[str, Any]) -> None:
        gw, seq, ev = item["gateway_id"], int(item["seq"]), item["event"]
        led = self.ledgers.setdefault(gw, GatewayLedger())
        if ev["event_id"] in led.seen_ids or seq < led.next_seq:
            led.duplicates += 1
            return
        if seq > led.next_seq:
            led.gaps.append((led.next_seq, seq - 1))
        led.next_seq = seq + 1
        led.received += 1
        led.seen_ids.add(ev["event_id"])
        self.by_type[ev["type"]] = self.by_type.get(ev["type"], 0) + 1
        self.events.append(item)
        if self.verbose:
            keys = ("zone", "dwell_s", "duration_s", "visitor", "path", "campaign_id", "actor_id", "result")
            extra = " ".join(f"{k}={ev[k]}" for k in keys if k in ev)
            subj = str(ev.get("subject", ""))[:10]
            self._print(f"cloud <- {gw} #{seq} {ev['type']} subject={subj} {extra}".rstrip())

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _say(self, line: str) -> None:
        """Progress lines: only when verbose (``gateway demo --quiet`` prints the summary alone)."""
        if self.verbose:
            self._print(line)

    def summary(self) -> dict[str, Any]:
        return {
            gw: {"received": led.received, "last_seq": led.next_seq - 1, "gaps": led.gaps, "duplicates": led.duplicates}
            for gw, led in self.ledgers.items()
        } | {"by_type": self.by_type, "malformed": self.malformed}
