"""A small stand-in for the central platform: subscribes to every gateway's events and prints them.

Used by ``gateway demo`` and by tests. It checks the platform-side contract as it goes: per gateway,
sequence numbers must be contiguous (a repeated seq is a harmless at-least-once duplicate, dropped
by event id; a missing one is a gap and is reported).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.mqtt_async import AsyncMqttClient


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
    ) -> None:
        self.client = AsyncMqttClient(host, port, client_id="cloud-standin", protocol=protocol)
        self.prefix = prefix
        self.out = out or sys.stdout
        self.verbose = verbose
        self.ledgers: dict[str, GatewayLedger] = {}
        self.by_type: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.malformed = 0
        self.connected = asyncio.Event()

    async def run(self) -> None:
        await self.client.connect()
        await self.client.subscribe(f"{self.prefix}/+/+/events", qos=1)
        await self.client.subscribe(f"{self.prefix}/+/+/status", qos=1)
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
            self._print(f"cloud <- {gw} status {doc.get('state')}")
            return
        items = doc.get("batch", [doc])
        for item in items:
            self._accept(item)

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
            extra = " ".join(f"{k}={ev[k]}" for k in ("zone", "dwell_s", "duration_s", "visitor", "path") if k in ev)
            subj = str(ev.get("subject", ""))[:10]
            self._print(f"cloud <- {gw} #{seq} {ev['type']} subject={subj} {extra}".rstrip())

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def summary(self) -> dict[str, Any]:
        return {
            gw: {"received": led.received, "last_seq": led.next_seq - 1, "gaps": led.gaps, "duplicates": led.duplicates}
            for gw, led in self.ledgers.items()
        } | {"by_type": self.by_type, "malformed": self.malformed}
