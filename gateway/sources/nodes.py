"""Sensor-node source: ESP32 nodes (ESPresense or our native firmware) over the store-local broker.

Thin async adapter around the pure :class:`gateway.sources.node_ingest.NodeIngest`:

* one MQTT 3.1.1 subscription (QoS 0: a late RSSI is worth nothing, so no broker backlog) on the
  **store-local** broker - ``[local_broker]``, or the embedded broker on 127.0.0.1 when its host is
  unset - never the cloud uplink;
* the store-local broker client (``gateway/mqtt/local.py``, an asyncio Protocol: paho's per-packet
  reads cap a subscriber below the message rates nodes reach) appends ``(topic, payload)`` lists to
  a bounded buffer; ``batches()`` wakes, reads the clock once, decodes the whole chunk and yields
  one batch;
* every ``check_interval_s`` it runs the liveness check and tells the listener given to
  ``watch_sensors`` of each change (the daemon forwards that to the localizer);
* the link to the local broker is retried with jittered backoff (``run_connected``, the same loop
  as the content actors'); while it is down the source is ``degraded`` (and, after the
  thresholds, every node is reported quiet/down: we cannot hear them).

Raw MACs from node messages stay in the ``Observation`` (RAM only); topics, which contain device
ids, are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable

from gateway.backoff import Backoff
from gateway.config import NodesSettings, Settings
from gateway.identity.addresses import IrkResolver
from gateway.layout import Layout
from gateway.log import get_logger
from gateway.models import Observation, SourceHealth
from gateway.mqtt.client import MqttError
from gateway.mqtt.local import LocalBrokerClient, local_broker_address, run_connected
from gateway.sources.base import Capabilities, NodeStatus, ProbeSink, SensorStateListener
from gateway.sources.node_ingest import NodeIngest

log = get_logger(__name__)

CHECK_INTERVAL_S = 0.5
LINK_RETRY_FIRST_S = 0.2  # first reconnect delay to the local broker (doubles up to nodes.reconnect_max_s)
MAX_CHUNK = 5000  # messages decoded per wake-up (bounds the time between yields to the loop)


class NodesSource:
    """Implements the ``Source`` protocol for in-store sensor nodes (and its ``SensorNodes`` capability)."""

    def __init__(
        self,
        settings: NodesSettings,
        layout: Layout,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "gateway-nodes",
        username: str | None = None,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
        check_interval_s: float = CHECK_INTERVAL_S,
        resolver: IrkResolver | None = None,
    ) -> None:
        self.name = "nodes"
        self.settings = settings
        self.core = NodeIngest(settings, [s.id for s in layout.sensors], resolver)
        self.host, self.port = host, port
        self.client_id = client_id
        self._username, self._password = username, password
        # event time of this source: the wall clock for real nodes; the simulator's clock in the demo
        self.event_clock = clock
        self.check_interval_s = check_interval_s
        self._sensor_listener: SensorStateListener | None = None
        self.health = SourceHealth(name=self.name)
        self._pending: list[tuple[str, bytes]] = []
        self._wake: asyncio.Event | None = None
        self._client: LocalBrokerClient | None = None
        self._connects = 0
        self._last_error: str | None = None
        self._overflow = 0
        self._publish_health(clock())

    # -- subscriber callback (loop thread) --------------------------------------------------------------

    def _on_messages(self, msgs: list[tuple[str, bytes]]) -> None:
        room = self.settings.max_pending - len(self._pending)
        if len(msgs) > room:
            self._overflow += len(msgs) - max(room, 0)
            msgs = msgs[: max(room, 0)]
        was_empty = not self._pending
        self._pending.extend(msgs)
        if was_empty and self._pending and self._wake is not None:
            self._wake.set()

    def _on_retained(self, msgs: list[tuple[str, bytes]]) -> None:
        """Retained status/telemetry is current state (e.g. a last will ``offline``); a retained device
        report is an old reception that would be stamped with today's arrival time: refused."""
        keep = []
        for topic, payload in msgs:
            kind, _ = self.core.router.classify(topic)
            if kind in ("esp_status", "native_status", "esp_telemetry"):
                keep.append((topic, payload))
            else:
                self.core.drop("retained_report")
        if keep:
            self._on_messages(keep)

    # -- capabilities and status ---------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """Live, restartable (a new subscription), its own event clock, per-node health."""
        return Capabilities(event_clock=self.event_clock, restartable=True, nodes=self)

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Stamp arrivals with ``clock`` (the demo's simulated time) instead of the wall clock."""
        self.event_clock = clock

    def watch_sensors(self, listener: SensorStateListener) -> None:
        self._sensor_listener = listener

    def watch_wifi(self, sink: ProbeSink) -> None:
        self.core.on_wifi = sink

    def node_status(self) -> list[NodeStatus]:
        """Per-node health for the status page and metrics (no device data in it)."""
        return self.core.status(self.event_clock())

    def _publish_health(self, now: float) -> None:
        c = self.core
        h = self.health
        h.dropped = dict(c.dropped)
        if self._overflow:
            h.dropped["backlog_overflow"] = self._overflow
        h.observations = c.observations
        states = [st.state for st in c.nodes.values()]
        h.detail.update(
            {
                "broker": f"{self.host}:{self.port}",
                "connected": bool(self._client is not None and self._client.connected),
                "connects": self._connects,
                "last_error": self._last_error,
                "messages": c.messages,
                "nodes_up": states.count("up"),
                "nodes_quiet": states.count("quiet"),
                "nodes_down": states.count("down"),
                "unmapped_nodes": len(c.unmapped),
            }
        )

    def _check(self) -> None:
        now = self.event_clock()
        for sensor, active in self.core.check(now):
            log.info("nodes.sensor_state", sensor=sensor, active=active)
            if self._sensor_listener is not None:
                self._sensor_listener(sensor, active)
        self._publish_health(now)

    # -- link ---------------------------------------------------------------------------------------

    def _client_for_link(self) -> LocalBrokerClient:
        return LocalBrokerClient(
            self.host,
            self.port,
            self._on_messages,
            on_retained=self._on_retained,
            client_id=self.client_id,
            keepalive=30,
            username=self._username,
            password=self._password,
        )

    async def _up(self, client: LocalBrokerClient) -> None:
        await client.subscribe(self.core.router.filters, qos=0)
        self._client = client
        self._connects += 1
        self._last_error = None
        self.health.state = "running"

    def _down(self, err: MqttError) -> None:
        self._client = None
        self._last_error = str(err)[:200]
        self.health.state = "degraded"

    async def _link(self) -> None:
        """Keep one subscription to the local broker alive (jittered exponential backoff)."""
        backoff = Backoff(LINK_RETRY_FIRST_S, self.settings.reconnect_max_s, "spread")
        await run_connected(self._client_for_link, self._up, backoff, on_down=self._down, what="nodes")

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """For tests and the demo: until the subscription is in place."""
        deadline = time.monotonic() + timeout
        while not (self._client is not None and self._client.connected and self.health.state == "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes source not connected to {self.host}:{self.port}")
            await asyncio.sleep(0.02)

    # -- Source protocol ----------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        self._wake = wake = asyncio.Event()
        link = asyncio.create_task(self._link(), name="nodes-link")
        loop = asyncio.get_running_loop()
        next_check = loop.time()
        try:
            while True:
                if not self._pending:
                    timeout = max(0.0, next_check - loop.time())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await wake.wait()
                wake.clear()
                if link.done():  # the link task only ends by an error: surface it to the supervisor
                    link.result()
                if self._pending:
                    chunk = self._pending[:MAX_CHUNK]
                    del self._pending[:MAX_CHUNK]
                    now = self.event_clock()
                    obs = self.core.ingest_many(chunk, now)
                    self._publish_health(now)
                    if obs:
                        self.health.last_observation_ts = obs[-1].ts
                        yield obs
                if loop.time() >= next_check:
                    self._check()
                    next_check = loop.time() + self.check_interval_s
                if self._pending:
                    await asyncio.sleep(0)  # let the rest of the daemon run between chunks
        finally:
            link.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await link
            self.health.state = "stopped"


def enabled(settings: Settings) -> bool:
    """For ``gateway.runtime.daemon.SOURCE_FACTORIES``."""
    return settings.nodes.enabled


def make_source(settings: Settings, layout: Layout) -> NodesSource:
    """For ``gateway.runtime.daemon.SOURCE_FACTORIES``: subscribe on the store-local broker."""
    host, port = local_broker_address(settings)
    n = settings.nodes
    resolver = None
    if settings.ble.irk_file is not None:  # the same known IRKs as the gateway's own radio
        from gateway.sources.ble import load_irks

        resolver = IrkResolver(load_irks(settings.ble.irk_file))
    return NodesSource(
        n,
        layout,
        host=host,
        port=port,
        client_id=f"{settings.gateway.id}-nodes",
        username=n.broker_username,
        password=n.broker_password,
        resolver=resolver,
    )
