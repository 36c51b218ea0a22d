"""Prometheus metrics for the whole daemon, in a registry of their own.

A dedicated ``CollectorRegistry`` (not prometheus_client's global one) so tests can build a fresh
set per case and nothing a library registers globally leaks into ``/metrics``. The rest of the
daemon updates metrics through the small methods of ``GatewayMetrics`` - once per *batch*, never
per observation - so the hot path pays one lock + one add per batch. Labelled children are cached
in dicts because ``Counter.labels()`` costs a tuple build and a lock each call.

Names (all prefixed ``gateway_``) are listed in docs/status-api.md. Counters export ``_total``
only: the ``_created`` timestamps prometheus_client adds by default are switched off (they double
the series and no dashboard reads them).
"""

from __future__ import annotations

import asyncio
import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide: every registry

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics", "default_metrics", "monitor_loop_lag"]

PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
STORAGE_STATES = {"ok": 0, "limited": 1, "full": 2}
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    """Every metric the daemon exports, plus cheap update helpers."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.observations = Counter("gateway_observations", "Observations received, by source", ["source"], registry=r)
        self.drops = Counter("gateway_drops", "Observations/events dropped, by reason", ["reason"], registry=r)
        self.fixes_total = Counter("gateway_fixes", "Position fixes computed", registry=r)
        self.events = Counter("gateway_events", "Events produced (stored in the outbox), by type", ["type"], registry=r)
        self.backlog = Gauge("gateway_outbox_backlog", "Events stored but not yet acknowledged", registry=r)
        self.oldest_age = Gauge(
            "gateway_outbox_oldest_age_seconds", "Age of the oldest unacknowledged event", registry=r
        )
        self.evictions = Counter(
            "gateway_outbox_evictions", "Events evicted by the size cap, by priority", ["priority"], registry=r
        )
        # the disk (docs/storage.md): 0 ok, 1 limited (the disk sets the outbox's cap and it is
        # at it), 2 full (the filesystem is full; the store degrades, the daemon keeps running)
        self.storage_state = Gauge(
            "gateway_storage_state", "Disk state of a store: 0 ok, 1 limited, 2 full", ["store"], registry=r
        )
        self.outbox_cap = Gauge(
            "gateway_outbox_cap_bytes", "Effective outbox cap: min(max_bytes, what the disk can give)", registry=r
        )
        self.unsaved_events = Counter(
            "gateway_events_unsaved",
            "Events dropped in RAM while the disk refused appends, by priority",
            ["priority"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "gateway_publish_latency_seconds",
            "Event creation to broker acknowledgement",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter("gateway_uplink_reconnects", "Uplink (MQTT) reconnections", registry=r)
        self.uplink_connected = Gauge("gateway_uplink_connected", "1 while the uplink is connected", registry=r)
        self.radio_recoveries = Counter(
            "gateway_radio_recoveries",
            "Radio recovery actions (scan restart, adapter reset), by radio",
            ["radio"],
            registry=r,
        )
        self.source_up = Gauge(
            "gateway_source_up",
            "1 while a source runs; 0 starting, degraded (e.g. the Wi-Fi capture relay silent), failed or stopped",
            ["source"],
            registry=r,
        )
        self.loop_lag = Gauge("gateway_event_loop_lag_seconds", "Latest measured event-loop lag", registry=r)
        self.loop_lag_hist = Histogram(
            "gateway_event_loop_lag_distribution_seconds", "Event-loop lag samples", buckets=LAG_BUCKETS, registry=r
        )
        self.status_logins = Counter(
            "gateway_status_logins", "Status page login attempts, by result", ["result"], registry=r
        )
        self.status_sse_clients = Gauge("gateway_status_sse_clients", "Open live-map streams", registry=r)
        # sensor nodes: labels are the node names of [nodes] mapping (bounded; unmapped names never)
        self.node_up = Gauge("gateway_node_up", "1 while a sensor node is up (not quiet/down)", ["node"], registry=r)
        self.node_msgs = Counter("gateway_node_messages", "Messages received from a sensor node", ["node"], registry=r)
        self.node_drops = Counter(
            "gateway_node_drops", "Node messages dropped, by node and reason", ["node", "reason"], registry=r
        )
        self.node_latency = Gauge(
            "gateway_node_latency_seconds", "Latency estimate that time-stamps a node's messages", ["node"], registry=r
        )
        self.node_rate = Gauge("gateway_node_message_rate", "Recent messages/s from a node", ["node"], registry=r)
        self.build = Info("gateway_build", "Version of the running gateway", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        self.outbox_bytes = Gauge("gateway_outbox_bytes", "Bytes the outbox's live pages use", registry=r)
        self.outbox_max_bytes = Gauge("gateway_outbox_max_bytes", "Outbox size cap (outbox.max_bytes)", registry=r)
        self.dead_letters = Counter(
            "gateway_outbox_dead_letters", "Events the broker will never accept, moved to dead_letter", registry=r
        )
        self.publish_failures = Counter(
            "gateway_uplink_publish_failures", "Failed publishes (retried or dead-lettered), by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.commands = Counter("gateway_commands", "Cloud commands answered, by result", ["result"], registry=r)
        # back-pressure in front of the pipeline thread, and its load (headroom on the box)
        self.pipeline_queue_batches = Gauge(
            "gateway_pipeline_queue_batches", "Observation batches waiting for the pipeline", registry=r
        )
        self.pipeline_queue_observations = Gauge(
            "gateway_pipeline_queue_observations", "Observations waiting for the pipeline", registry=r
        )
        self.pipeline_queue_wait = Histogram(
            "gateway_pipeline_queue_wait_seconds",
            "Time a batch waited in the queue before the pipeline took it",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.pipeline_busy = Gauge(
            "gateway_pipeline_busy_ratio", "Share of wall time the pipeline thread computed (last second)", registry=r
        )
        self.pipeline_cpu = Counter("gateway_pipeline_cpu_seconds", "CPU time of the pipeline thread", registry=r)
        self.pipeline_longest_job = Gauge(
            "gateway_pipeline_longest_job_seconds", "Longest single pipeline job (a batch with a fix tick)", registry=r
        )
        self._obs: dict[str, Counter] = {}
        self._drops: dict[str, Counter] = {}
        self._events: dict[str, Counter] = {}
        self._evict: dict[str, Counter] = {}
        self._radio: dict[str, Counter] = {}

    # -- update helpers (call once per batch) ---------------------------------------------------

    def observed(self, source: str, n: int = 1) -> None:
        c = self._obs.get(source)
        if c is None:
            c = self._obs[source] = self.observations.labels(source)
        c.inc(n)

    def dropped(self, reason: str, n: int = 1) -> None:
        c = self._drops.get(reason)
        if c is None:
            c = self._drops[reason] = self.drops.labels(reason)
        c.inc(n)

    def fixed(self, n: int = 1) -> None:
        self.fixes_total.inc(n)

    def produced(self, event_type: str, n: int = 1) -> None:
        c = self._events.get(event_type)
        if c is None:
            c = self._events[event_type] = self.events.labels(event_type)
        c.inc(n)

    def outbox(self, backlog: int, oldest_age_s: float | None) -> None:
        self.backlog.set(backlog)
        self.oldest_age.set(oldest_age_s or 0.0)

    def evicted(self, priority: str, n: int = 1) -> None:
        c = self._evict.get(priority)
        if c is None:
            c = self._evict[priority] = self.evictions.labels(priority)
        c.inc(n)

    def storage(self, store: str, state: str, cap_bytes: int | None = None) -> None:
        self.storage_state.labels(store).set(STORAGE_STATES.get(state, 2))
        if cap_bytes is not None:
            self.outbox_cap.set(cap_bytes)

    def unsaved(self, priority: str, n: int) -> None:
        self.unsaved_events.labels(priority).inc(n)

    def published(self, latencies_s: list[float] | tuple[float, ...]) -> None:
        """Record the creation-to-ack latency of each acknowledged event in one batch."""
        for v in latencies_s:
            self.publish_latency.observe(v)

    def outbox_size(self, used: int, cap: int) -> None:
        self.outbox_bytes.set(used)
        self.outbox_max_bytes.set(cap)

    def dead_lettered(self, n: int) -> None:
        self.dead_letters.inc(n)

    def publish_failed(self, reason: str, n: int = 1) -> None:
        self.publish_failures.labels(reason).inc(n)

    def command(self, result: str, n: int = 1) -> None:
        self.commands.labels(result).inc(n)

    def reconnected(self) -> None:
        self.reconnects.inc()

    def uplink_state(self, connected: bool) -> None:
        self.uplink_connected.set(1 if connected else 0)

    def source_state(self, source: str, running: bool) -> None:
        self.source_up.labels(source).set(1 if running else 0)

    def radio_recovered(self, radio: str) -> None:
        c = self._radio.get(radio)
        if c is None:
            c = self._radio[radio] = self.radio_recoveries.labels(radio)
        c.inc()

    def node(self, name: str, up: bool, latency_s: float, rate: float) -> None:
        self.node_up.labels(name).set(1 if up else 0)
        self.node_latency.labels(name).set(latency_s)
        self.node_rate.labels(name).set(rate)

    def node_messages(self, name: str, n: int) -> None:
        self.node_msgs.labels(name).inc(n)

    def node_dropped(self, name: str, reason: str, n: int) -> None:
        self.node_drops.labels(name, reason).inc(n)

    def pipeline(
        self, batches: int, observations: int, waits: list[float], busy_ratio: float, cpu_s: float, longest_s: float
    ) -> None:
        """The pipeline's queue and thread, once a second (``waits``: batches taken since the last call)."""
        self.pipeline_queue_batches.set(batches)
        self.pipeline_queue_observations.set(observations)
        for w in waits:
            self.pipeline_queue_wait.observe(w)
        self.pipeline_busy.set(busy_ratio)
        if cpu_s > 0:
            self.pipeline_cpu.inc(cpu_s)
        self.pipeline_longest_job.set(longest_s)

    def lag(self, seconds: float) -> None:
        self.loop_lag.set(seconds)
        self.loop_lag_hist.observe(seconds)

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)


_DEFAULT: GatewayMetrics | None = None


def default_metrics() -> GatewayMetrics:
    """The daemon-wide instance (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = GatewayMetrics()
    return _DEFAULT


async def monitor_loop_lag(metrics: GatewayMetrics, interval_s: float = 0.5) -> None:
    """Sleep ``interval_s`` repeatedly and record how late the loop woke us: the event-loop lag.

    Runs until cancelled. A blocked loop (a sync call somewhere) shows up here first.
    """
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - t0 - interval_s)
        metrics.lag(lag)
