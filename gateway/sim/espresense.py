"""The store simulator's sensors as ESPresense nodes on a real MQTT broker.

So the demo and the integration tests run the real node path (paho -> broker -> nodes source ->
pipeline) with the simulator's ground truth behind it. Each sensor is one node with its own MQTT
connection (client id ``espresense-<room>``, last will ``offline`` on its status topic, like the
firmware), publishing:

* every simulated reception as ``<prefix>/devices/<id>/<room>`` ESPresense v4 JSON, QoS 0;
* ``<prefix>/rooms/<room>/status`` ``online`` (retained) at start and
  ``<prefix>/rooms/<room>/telemetry`` every 15 simulated seconds.

Simulated time runs at ``speed`` x the wall clock from the moment ``run()`` starts; ``clock()`` is
that virtual clock, which the nodes source uses as its arrival clock so "arrival time" means the
same thing as it does with real nodes. Receptions are published in ``slice_s`` (simulated) slices
once their time has passed, so an observation arrives between 0 and ``slice_s`` after it happened,
plus the broker's delay: like a real node's report cadence, only shorter.

Device ids, as ESPresense would publish them: a phone whose address rotations are linkable (the
simulator's stand-in for IRK resolution) is ``irk:<32 hex>`` with a simulated IRK derived from its
link; a beacon is ``iBeacon:<uuid>-<major>-<minor>`` with its measured power in ``rssi@1m``; any
other device is its MAC in ESPresense's 12-hex form.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from typing import Literal

from gateway.config import SimulatorSettings
from gateway.layout import Layout
from gateway.log import get_logger
from gateway.models import Observation
from gateway.mqtt.client import AsyncMqttClient, Will
from gateway.sim.store import StoreSimulator

log = get_logger(__name__)

TELEMETRY_EVERY_S = 15.0
DEFAULT_1M = -65  # ESPresense's default reference when a device advertises no calibrated power


def sim_irk(link: str) -> bytes:
    """The simulated IRK of a linkable simulated phone (tests map it back with ``irk_link``)."""
    return hashlib.sha256(b"sim-irk:" + link.encode()).digest()[:16]


def espresense_id(o: Observation) -> str:
    if o.link is not None:
        return "irk:" + sim_irk(o.link).hex()
    mac = o.device.replace(":", "").lower()
    if o.rssi_at_1m is not None:  # simulated fixed beacons advertise a measured power
        u = hashlib.sha256(b"sim-beacon:" + mac.encode()).hexdigest()
        return f"iBeacon:{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:32]}-1-{int(u[32:36], 16)}"
    return mac


def espresense_payload(o: Observation, ident: str) -> bytes:
    r1m = int(o.rssi_at_1m) if o.rssi_at_1m is not None else DEFAULT_1M
    dist = round(10 ** ((r1m - o.rssi) / 35.0), 2)
    doc = {
        "mac": o.device.replace(":", "").lower(),
        "id": ident,
        "rssi@1m": r1m,
        "rssi": o.rssi,
        "rxAdj": 0,
        "distance": dist,
        "var": 0.1,
        "int": 1000,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class EspresenseEmitter:
    def __init__(
        self,
        layout: Layout,
        settings: SimulatorSettings,
        host: str,
        port: int,
        *,
        rooms: dict[str, str] | None = None,
        prefix: str = "espresense",
        slice_s: float = 0.1,
        firmware: Literal["espresense", "native"] = "espresense",
        native_prefix: str = "retail-node",
    ) -> None:
        """``rooms``: layout sensor id -> node (room) name; default every sensor, named by its id.

        ``firmware="native"``: publish our native topic instead (one batch per node and slice, node
        clock = simulated time, raw addresses: no IRK ids, so rotations only link if the gateway
        resolves them)."""
        self.firmware = firmware
        self.native_prefix = native_prefix
        self.layout = layout
        self.settings = settings
        self.host, self.port = host, port
        self.rooms = rooms if rooms is not None else {x.id: x.id for x in layout.sensors}
        self.prefix = prefix
        self.slice_s = slice_s
        self.sim = StoreSimulator(layout, settings, sensors=list(self.rooms))
        self.start_ts = self.sim.now
        self._wall0: float | None = None
        self._edge: float | None = None  # simulated time published so far (while running)
        self.clients: dict[str, AsyncMqttClient] = {}
        self.silenced: set[str] = set()
        self.published = 0
        self.sent: list[Observation] = []  # what was published (kept only when keep_sent)
        self.keep_sent = False
        self.running = asyncio.Event()

    def clock(self) -> float:
        """Simulated 'now' (Unix s): frozen at the start until run() begins.

        While running it never gets more than one slice ahead of what has been published: when the
        emitter falls behind its schedule (it shares the CPU with the gateway under test), simulated
        time waits for it, as if the store had paused, instead of the late publications reaching the
        gateway as "old" receptions. Delays on the gateway's side are still measured in full.
        """
        if self._wall0 is None:
            return self.start_ts
        t = self.start_ts + (time.monotonic() - self._wall0) * self.settings.speed
        if self._edge is not None:
            t = min(t, self._edge + self.slice_s)
        return t

    def _wall_due(self, t_sim: float) -> float:
        assert self._wall0 is not None
        return self._wall0 + (t_sim - self.start_ts) / self.settings.speed

    def silence(self, sensor: str) -> None:
        """The node stops publishing (power cut: nothing more, not even a last will yet)."""
        self.silenced.add(sensor)

    async def _connect_all(self) -> None:
        native = self.firmware == "native"
        for sensor, room in self.rooms.items():
            status = f"{self.native_prefix}/{room}/status" if native else f"{self.prefix}/rooms/{room}/status"
            c = AsyncMqttClient(
                self.host,
                self.port,
                client_id=f"{'node' if native else 'espresense'}-{room}",
                protocol="3.1.1",
                will=Will(status, b"offline", qos=1, retain=True),
                tcp_nodelay=True,
            )
            await c.connect()
            online = json.dumps({"v": 1, "up_s": 0, "fw": "sim"}).encode() if native else b"online"
            await c.publish(status, online, qos=1, retain=True)
            self.clients[sensor] = c

    def _send(self, sensor: str, topic: str, payload: bytes) -> None:
        c = self.clients.get(sensor)
        if c is None or not c.connected:
            return
        fut = c.publish_nowait(topic, payload, qos=0)
        fut.add_done_callback(_consume)
        self.published += 1

    def _telemetry(self, t: float) -> None:
        if self.firmware == "native":
            return  # native nodes report health on their retained status topic only
        up = int(t - self.start_ts)
        for sensor, room in self.rooms.items():
            if sensor in self.silenced:
                continue
            doc = {"ip": "192.0.2.10", "uptime": up, "firm": "esp32", "rssi": -55, "ver": "sim", "freeHeap": 150000}
            self._send(sensor, f"{self.prefix}/rooms/{room}/telemetry", json.dumps(doc).encode())

    async def run(self) -> None:
        """Connect every node, then publish until ``duration_s`` (or forever); close at the end."""
        s = self.settings
        await self._connect_all()
        self._wall0 = time.monotonic()
        self._edge = self.start_ts
        self.running.set()
        t_end = self.start_ts + s.duration_s if s.duration_s is not None else float("inf")
        next_tele = self.start_ts
        ids: dict[tuple[str, str | None, float | None], str] = {}
        rooms = self.rooms
        prefix = self.prefix
        k = 0
        try:
            while True:
                t_prev = self.start_ts + k * s.tick_s
                k += 1
                t = self.start_ts + k * s.tick_s
                if t > t_end:
                    break
                obs = self.sim.step(t)
                if self.keep_sent:
                    self.sent.extend(obs)
                i = 0
                edge = t_prev
                while edge < t - 1e-9:
                    edge = min(edge + self.slice_s, t)
                    delay = self._wall_due(edge) - time.monotonic()
                    await asyncio.sleep(max(0.0, delay))
                    self._edge = edge
                    if edge >= next_tele:
                        self._telemetry(edge)
                        next_tele += TELEMETRY_EVERY_S
                    if self.firmware == "native":
                        j = i
                        while j < len(obs) and obs[j].ts <= edge:
                            j += 1
                        self._native_batches(obs[i:j])
                        i = j
                    while i < len(obs) and obs[i].ts <= edge:
                        o = obs[i]
                        i += 1
                        if o.sensor in self.silenced:
                            continue
                        key = (o.device, o.link, o.rssi_at_1m)
                        ident = ids.get(key)
                        if ident is None:
                            if len(ids) > 100_000:
                                ids.clear()
                            ident = ids[key] = espresense_id(o)
                        topic = f"{prefix}/devices/{ident}/{rooms[o.sensor]}"
                        self._send(o.sensor, topic, espresense_payload(o, ident))
        finally:
            self._edge = None
            await self.close()

    def _native_batches(self, obs: list[Observation]) -> None:
        by_sensor: dict[str, list[Observation]] = {}
        for o in obs:
            if o.sensor not in self.silenced:
                by_sensor.setdefault(o.sensor, []).append(o)
        for sensor, group in by_sensor.items():
            room = self.rooms[sensor]
            t0_ms = int(group[0].ts * 1000)
            adv = [
                {
                    "dt": max(0, int(o.ts * 1000) - t0_ms),
                    "addr": o.device.lower(),
                    "at": 1,
                    "rssi": int(o.rssi),
                    "ch": 37,
                }
                for o in group
            ]
            doc = {"v": 1, "node": room, "t0_ms": t0_ms, "fw": "sim", "adv": adv}
            self._send(sensor, f"{self.native_prefix}/{room}/adv", json.dumps(doc, separators=(",", ":")).encode())

    async def close(self) -> None:
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                await c.disconnect()
        self.clients.clear()


def _consume(fut: asyncio.Future[int]) -> None:
    """QoS 0 publishes are fire-and-forget: retrieve a failure so asyncio does not report it."""
    if not fut.cancelled():
        fut.exception()
