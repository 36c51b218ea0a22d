"""The running daemon as the status page sees it: ``DaemonStatusProvider`` and ``DaemonMetricsSampler``.

Both read the daemon through ``DaemonView``, a protocol listing exactly what they use (typed
attributes of the daemon; nothing is looked up by name, and this module does not import the
daemon: ``daemon.py`` imports it). The provider turns those live objects (runtime flags, source
health and capabilities, pipeline stats and latest fixes, outbox and uplink status, content
state) into the page's ``StatusSnapshot``; its actions go through the daemon's own paths:

* test event: ``DaemonView.queue_event`` appends a ``Heartbeat`` to the pending events, so it
  travels outbox -> uplink like any other;
* opt-out: the presence service (``gateway.identity.subjects.IdentityResolver``): persisted keyed
  digests, live state and stored history erased (the live part on the pipeline's thread);
* restart scanner: ``DaemonView.restart_sources`` restarts the live sources that declare
  ``restartable`` through the supervisor;
* reload config: ``DaemonView.reload_config`` re-reads and validates the configuration, applies
  what can change live and names what needs a restart (``gateway.runtime.reload``).

Everything but the actions is cheap and synchronous: it runs on the event loop a few times a second.

The pipeline runs on a thread of its own (``gateway.runtime.worker``) that changes its state while
the page renders, so the page never reads the live pipeline: it reads ``PipelineView``, a copy that
thread builds (``pipeline_view``), and the back-pressure figures the daemon keeps on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gateway import __version__
from gateway.config import Settings
from gateway.content.service import ContentService
from gateway.layout import Layout, points_in_polygon
from gateway.models import ActivationReport, EventBase, Fix, Heartbeat
from gateway.pipeline import Pipeline
from gateway.presence.service import PresenceService
from gateway.runtime.reload import ReloadResult
from gateway.runtime.supervisor import Supervisor
from gateway.runtime.worker import WorkerStats
from gateway.sources.base import NodeStatus, Source
from gateway.status.coverage import coverage_grid
from gateway.status.metrics import GatewayMetrics
from gateway.status.provider import (
    ActionResult,
    ActivationRow,
    ActorRow,
    CampaignRow,
    ClockStatus,
    DeviceDot,
    DiskStatus,
    EventRow,
    OutboxStatus,
    PipelineStatus,
    StatusSnapshot,
    UplinkStatus,
)
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox

DOT_TTL_S = 5.0  # event-time seconds a dot stays after its last fix
RECENT_ROWS = 20


@dataclass
class Runtime:
    """Flags the daemon keeps for the status page and tests (the daemon writes, they read)."""

    started_monotonic: float
    ready: bool = False
    loop_lag_s: float = 0.0
    last_fixes: list[Fix] | None = None  # the newest fix tick (replaced, never mutated)


@dataclass(frozen=True)
class PipelineView:
    """The pipeline as the status page and /metrics see it: copies made on the pipeline's thread."""

    observations: int = 0
    fixes: int = 0
    events: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, int] = field(default_factory=dict)
    sensor_last_heard: Mapping[str, float] = field(default_factory=dict)  # event time, by sensor
    optouts: int = 0
    wifi_devices: Mapping[str, Any] = field(default_factory=dict)  # the Wi-Fi count's last minute
    residents: Mapping[str, int] = field(default_factory=dict)  # set apart today, by why
    linked_rotations: int = 0


def pipeline_view(pipeline: Pipeline, presence: PresenceService) -> PipelineView:
    """Copy what the page shows of the pipeline; runs where the pipeline state lives."""
    st = pipeline.stats
    return PipelineView(
        observations=st.observations,
        fixes=st.fixes,
        events=dict(st.events),
        dropped=dict(st.dropped),
        sensor_last_heard=dict(pipeline.sensor_last_heard),
        optouts=presence.resolver.optout_count,
        wifi_devices=dict(pipeline.wifi_count.latest) if pipeline.wifi_count is not None else {},
        residents=dict(collections.Counter(pipeline.presence.residents().values())),
        linked_rotations=pipeline.linker.stats.links if pipeline.linker is not None else 0,
    )


@dataclass
class BackPressure:
    """The queue in front of the pipeline thread and that thread's load (the daemon updates it)."""

    worker: WorkerStats = field(default_factory=WorkerStats)
    queued_batches: int = 0
    queued_observations: int = 0
    wait_s: float = 0.0  # how long the newest batch taken had waited
    max_wait_s: float = 0.0
    dropped_late: int = 0  # observations: they waited longer than pipeline.max_delay_s
    # waits not yet observed by the metrics histogram (the sampler empties it; bounded without one)
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


class LoadMeter:
    """Busy and CPU share of the pipeline thread over the last ``window_s`` (at least)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._last: tuple[float, float, float] | None = None
        self.busy_pct = 0.0
        self.cpu_pct = 0.0

    def update(self, w: WorkerStats, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._last is None:
            self._last = (now, w.busy_s, w.cpu_s)
            return
        t0, b0, c0 = self._last
        if now - t0 >= self.window_s:
            self.busy_pct = min(100.0, 100.0 * (w.busy_s - b0) / (now - t0))
            self.cpu_pct = 100.0 * (w.cpu_s - c0) / (now - t0)
            self._last = (now, w.busy_s, w.cpu_s)


def pipeline_status(bp: BackPressure, meter: LoadMeter, loop_lag_s: float) -> PipelineStatus:
    meter.update(bp.worker)
    return PipelineStatus(
        queued_batches=bp.queued_batches,
        queued_observations=bp.queued_observations,
        wait_s=round(bp.wait_s, 4),
        max_wait_s=round(bp.max_wait_s, 4),
        busy_pct=round(meter.busy_pct, 1),
        cpu_pct=round(meter.cpu_pct, 1),
        longest_job_s=round(bp.worker.max_job_s, 4),
        dropped_late=bp.dropped_late,
        loop_lag_s=round(loop_lag_s, 4),
    )


class DaemonView(Protocol):
    """What the status page reads from the daemon, and the actions it asks of it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def layout(self) -> Layout: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def sources(self) -> Sequence[Source]: ...

    @property
    def pipeline_view(self) -> PipelineView:
        """The pipeline's counters and sensors, copied on its thread (never the live objects)."""
        ...

    @property
    def backpressure(self) -> BackPressure: ...

    @property
    def presence(self) -> PresenceService: ...

    @property
    def content(self) -> ContentService | None: ...

    @property
    def outbox(self) -> Outbox | None: ...

    @property
    def uplink(self) -> Uplink | None: ...

    @property
    def recent(self) -> Sequence[EventBase]:
        """The newest committed events (never fixes), oldest first."""
        ...

    @property
    def outbox_refusing(self) -> str | None:
        """Why the disk refuses appends to the outbox (None: it does not); docs/storage.md."""
        ...

    @property
    def held_events(self) -> tuple[int, Mapping[str, int]]:
        """Events waiting in RAM for the outbox, and those dropped there by priority."""
        ...

    @property
    def committed_by_type(self) -> Mapping[str, int]:
        """Events committed to the outbox since start, by wire type (metrics)."""
        ...

    def event_clock(self) -> Callable[[], float] | None:
        """Where event time comes from (None: a recording's own time)."""
        ...

    def queue_event(self, event: EventBase) -> None:
        """Commit ``event`` with the next flush (outbox -> uplink)."""
        ...

    async def restart_sources(self) -> list[str]:
        """Restart every running source that declares ``restartable``; their names."""
        ...

    async def reload_config(self) -> ReloadResult: ...


def node_status(sources: Sequence[Source]) -> list[NodeStatus]:
    """Every sensor node of every source fed by nodes (``Capabilities.nodes``)."""
    out: list[NodeStatus] = []
    for src in sources:
        nodes = src.capabilities.nodes
        if nodes is not None:
            out.extend(nodes.node_status())
    return out


def _event_row(e: EventBase) -> EventRow:
    d = e.model_dump(include={"type", "subject", "zone"})
    return EventRow(ts=e.ts, type=str(d.get("type", "?")), subject=d.get("subject"), zone=d.get("zone"))


def _activation_row(e: ActivationReport) -> ActivationRow:
    return ActivationRow(
        ts=e.ts,
        campaign_id=e.campaign_id,
        content_id=e.content_id,
        actor_id=e.actor_id,
        subject=e.subject,
        result=e.result,
    )


class DaemonStatusProvider:
    """``StatusProvider`` over a running daemon (what ``gateway run`` serves)."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self._latest: dict[str, Fix] = {}
        self._zones: dict[str, str | None] = {}  # zone of each latest fix, computed once per fix
        self._dots: list[dict[str, Any]] | None = None  # serialisable dots, rebuilt only on change
        self._version = 0  # bumped whenever the set of dots changes (the stream skips unchanged ticks)
        self._seen_fixes: list[Fix] | None = None
        self._crlb: dict[str, Any] | None = None
        self._load = LoadMeter()

    # -- helpers --------------------------------------------------------------------------------

    def _now(self) -> float:
        """Event time: ages on the page are in the daemon's event time (the simulator's too)."""
        return (self.daemon.event_clock() or time.time)()

    def _refresh_dots(self) -> None:
        before = self._version
        fixes = self.daemon.runtime.last_fixes
        if fixes is not None and fixes is not self._seen_fixes:
            self._seen_fixes = fixes
            for f in fixes:
                self._latest[f.device] = f
            self._zones.update(self._zones_of(fixes))
            self._version += 1
        if self._latest:
            newest = max(f.ts for f in self._latest.values())
            stale = [k for k, f in self._latest.items() if f.ts < newest - DOT_TTL_S]
            for k in stale:
                del self._latest[k]
                self._zones.pop(k, None)
            self._version += bool(stale)
        if self._version != before:
            self._dots = None

    def _zones_of(self, fixes: list[Fix]) -> dict[str, str | None]:
        """Zone per fix: the tracker's (with hysteresis) when it has one, else the polygon the dot is in,
        one vectorised test per zone for the whole tick instead of one per dot per page refresh."""
        out: dict[str, str | None] = {f.device: f.zone for f in fixes}
        missing = [f for f in fixes if f.zone is None]
        if missing and self.daemon.layout.zones:
            pts = np.array([[f.x, f.y] for f in missing], dtype=float)
            left = np.ones(len(missing), dtype=bool)
            for z in self.daemon.layout.zones:
                hit = left & points_in_polygon(pts, z.polygon)
                for i in np.flatnonzero(hit).tolist():
                    out[missing[i].device] = z.id
                left &= ~hit
        return out

    def _forget_dots(self) -> None:
        """Drop every dot; they come back with the next fixes (minus an opted-out device)."""
        self._latest.clear()
        self._zones.clear()
        self._dots = None
        self._version += 1

    # -- StatusProvider: getters ----------------------------------------------------------------

    def ready(self) -> bool:
        return bool(self.daemon.runtime.ready) and not self.daemon.supervisor.stopping

    def layout(self) -> Layout:
        return self.daemon.layout

    def devices_version(self) -> int | None:
        self._refresh_dots()
        return self._version

    def devices(self) -> list[dict[str, Any]]:
        self._refresh_dots()
        if self._dots is None:
            self._dots = [
                DeviceDot(f.device, round(f.x, 2), round(f.y, 2), round(f.sigma_m, 2), self._zones.get(k)).as_dict()
                for k, f in self._latest.items()
            ]
        return list(self._dots)

    def snapshot(self) -> StatusSnapshot:
        d = self.daemon
        self._refresh_dots()
        now = self._now()
        occ = {z.id: 0 for z in d.layout.zones}
        for k in self._latest:
            z = self._zones.get(k)
            if z in occ:
                occ[z] += 1
        pv = d.pipeline_view
        last = pv.sensor_last_heard
        heard: dict[str, float | None] = {sid: last.get(sid) for sid in d.layout.sensor_index()}
        events, activations = self._recent()
        return StatusSnapshot(
            ts=now,
            version=__version__,
            uptime_s=time.monotonic() - d.runtime.started_monotonic,
            gateway_id=d.settings.gateway.id,
            store_id=d.settings.gateway.store_id,
            ready=self.ready(),
            sources=[src.health for src in d.sources],
            sensors_last_heard=heard,
            nodes=node_status(d.sources),
            uplink=self._uplink(),
            outbox=self._outbox(now),
            disk=self._disk(),
            clock=ClockStatus(synchronized=None, source="system", offset_s=None),
            recent_events=events,
            recent_activations=activations,
            campaigns=self._campaigns(now),
            actors=self._actors(),
            zone_occupancy=occ,
            wifi_devices=dict(pv.wifi_devices),
            optouts=pv.optouts,
            pipeline=pipeline_status(d.backpressure, self._load, d.runtime.loop_lag_s),
            extra={
                "observations": pv.observations,
                "fixes": pv.fixes,
                "events": dict(pv.events),
                "dropped": dict(pv.dropped),
                "loop_lag_s": round(d.runtime.loop_lag_s, 4),
                "queued_batches": d.backpressure.queued_batches,
                # staff, fixtures and neighbours set apart today, by why (device kind or all-day)
                "residents": dict(pv.residents),
                "linked_rotations": pv.linked_rotations,
            },
        )

    def crlb_grid(self) -> dict[str, Any] | None:
        if self._crlb is None:
            loc = self.daemon.settings.localization
            self._crlb = coverage_grid(self.daemon.layout, loc.sigma_db, loc.detection_floor_dbm)
        return self._crlb

    def _uplink(self) -> UplinkStatus:
        if self.daemon.uplink is None:
            return UplinkStatus()
        u = self.daemon.uplink.status()
        return UplinkStatus(
            state=u["link"],
            broker=u["broker"],
            last_error=u["last_error"],
            reconnects=u["reconnects"],
            published_events=u["published_events"],
        )

    def _outbox(self, now: float) -> OutboxStatus:
        """Backlog and the event-time age of the oldest unsent event."""
        outbox = self.daemon.outbox
        if outbox is None:
            return OutboxStatus()
        ob = outbox.stats()
        d = self.daemon
        return OutboxStatus(
            backlog=ob.backlog,
            oldest_age_s=None if ob.oldest_ts is None else max(0.0, now - ob.oldest_ts),
            evictions=ob.evicted_total,
            bytes=ob.bytes,
            # the disk as the outbox sees it, and what waits in RAM if it refuses (docs/storage.md)
            disk_state=ob.disk_state,
            cap_bytes=ob.cap_bytes,
            evictions_by_priority=ob.evicted_by_priority,
            refusing=d.outbox_refusing,
            pending=d.held_events[0],
            dropped_in_ram=dict(d.held_events[1]),
        )

    def _disk(self) -> DiskStatus:
        state_dir = self.daemon.settings.paths.state_dir
        try:
            du = shutil.disk_usage(state_dir)
        except OSError:
            return DiskStatus()
        disk = DiskStatus(path=str(state_dir), total_bytes=du.total, free_bytes=du.free)
        store = self.daemon.presence.store
        if store is not None:
            disk["presence_store"] = store.state()
        return disk

    def _recent(self) -> tuple[list[EventRow], list[ActivationRow]]:
        """Newest first: committed events (presence, and test events sent from this page) and
        activation reports, at most ``RECENT_ROWS`` of each."""
        events: list[EventRow] = []
        activations: list[ActivationRow] = []
        for e in reversed(self.daemon.recent):
            if isinstance(e, ActivationReport):
                if len(activations) < RECENT_ROWS:
                    activations.append(_activation_row(e))
            elif len(events) < RECENT_ROWS:
                events.append(_event_row(e))
            if len(events) >= RECENT_ROWS and len(activations) >= RECENT_ROWS:
                break
        events.sort(key=lambda r: -r["ts"])  # commit order is not quite event order
        return events, activations

    def _campaigns(self, now: float) -> list[CampaignRow]:
        content = self.daemon.content
        if content is None:
            return []
        out: list[CampaignRow] = []
        for c in content.state.campaigns.values():
            active = (c.valid_from is None or c.valid_from <= now) and (c.valid_to is None or now < c.valid_to)
            out.append(CampaignRow(id=c.id, name=c.name or c.id, active=active, category=c.category))
        return out

    def _actors(self) -> list[ActorRow]:
        content = self.daemon.content
        if content is None:
            return []
        return [ActorRow(id=a.id, name=a.id, kind=a.kind, state=a.transport) for a in content.state.actors.values()]

    # -- StatusProvider: actions ----------------------------------------------------------------

    async def restart_scanner(self) -> ActionResult:
        names = await self.daemon.restart_sources()
        if not names:
            return ActionResult(False, "no running source can be restarted (recordings and timed simulations cannot)")
        return ActionResult(True, f"{len(names)} source(s) restarted: {', '.join(names)}")

    async def reload_config(self) -> ActionResult:
        r = await self.daemon.reload_config()
        return ActionResult(r.ok, r.message())

    async def send_test_event(self) -> ActionResult:
        ev = Heartbeat(ts=self._now(), store_id=self.daemon.settings.gateway.store_id, note="status page test event")
        self.daemon.queue_event(ev)  # listed in recent events once committed, like any other
        return ActionResult(True, "test event queued")

    async def add_optout(self, identifier: str) -> ActionResult:
        if not identifier.strip():
            return ActionResult(False, "identifier is empty")
        # the daemon's resolver: persisted, and erases live state + history
        erased = await self.daemon.presence.add_optout(identifier, self._now())
        self._forget_dots()
        return ActionResult(True, f"opt-out recorded; {erased} tracked subject(s) erased")


class DaemonMetricsSampler:
    """Feeds the Prometheus metrics from the daemon's own cumulative counters.

    The stages already count (source health, pipeline stats, outbox and uplink status); sampling
    those totals once a second and adding the deltas to the counters costs nothing on the hot path
    and needs no instrumentation in every stage. Publish latency is the one metric that must be
    observed where it happens (``GatewayMetrics.published`` from the uplink's ack handler).
    """

    def __init__(self, daemon: DaemonView, metrics: GatewayMetrics) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self._last: dict[tuple[str, str], float] = {}
        self._load = LoadMeter()

    def _delta(self, kind: str, key: str, total: float) -> float:
        prev = self._last.get((kind, key), 0.0)
        self._last[(kind, key)] = total
        return max(0.0, total - prev)  # a restarted source resets its totals: never go backwards

    def sample(self) -> None:
        d, m = self.daemon, self.metrics
        for src in d.sources:
            h = src.health
            if n := self._delta("obs", h.name, h.observations):
                m.observed(h.name, int(n))
            for reason, total in h.dropped.items():
                if n := self._delta("drop", f"{h.name}:{reason}", total):
                    m.dropped(reason, int(n))
            if n := self._delta("recov", h.name, h.recoveries):
                for _ in range(int(n)):
                    m.radio_recovered(h.name)
            m.source_state(h.name, h.state == "running")
        for node in node_status(d.sources):
            name = node["name"]
            m.node(name, node["state"] == "up", node.get("latency_s", 0.0), node.get("rate_per_s", 0.0))
            if k := self._delta("node_msg", name, node.get("messages", 0)):
                m.node_messages(name, int(k))
            for reason, total in node.get("dropped", {}).items():
                if k := self._delta("node_drop", f"{name}:{reason}", total):
                    m.node_dropped(name, reason, int(k))
        st = d.pipeline_view
        for reason, total in st.dropped.items():
            if n := self._delta("drop", f"pipeline:{reason}", total):
                m.dropped(reason, int(n))
        if n := self._delta("fix", "", st.fixes):
            m.fixed(int(n))
        bp = d.backpressure
        self._load.update(bp.worker)
        waits = list(bp.waits)
        bp.waits.clear()
        m.pipeline(
            bp.queued_batches,
            bp.queued_observations,
            waits,
            self._load.busy_pct / 100.0,
            self._delta("pipeline_cpu", "", bp.worker.cpu_s),
            bp.worker.max_job_s,
        )
        # every event stored in the outbox (activation reports included), not only the pipeline's
        for etype, total in d.committed_by_type.items():
            if n := self._delta("event", etype, total):
                m.produced(etype, int(n))
        if d.content is not None:
            for key, result in (("commands_ok", "ok"), ("commands_rejected", "rejected")):
                if n := self._delta("command", result, d.content.counters.get(key, 0)):
                    m.command(result, int(n))
        if d.uplink is not None:
            u = d.uplink.status()
            now = (d.event_clock() or time.time)()
            oldest = d.outbox.stats().oldest_ts if d.outbox is not None else None
            m.outbox(int(u["backlog"] or 0), None if oldest is None else max(0.0, now - oldest))
            m.uplink_state(u["link"] == "connected")
            if n := self._delta("reconnect", "", float(u["reconnects"] or 0)):
                m.reconnects.inc(n)
            for prio, total in (u["evictions_by_priority"] or {}).items():
                if n := self._delta("evict", str(prio), float(total)):
                    m.evicted(str(prio), int(n))
            if n := self._delta("dead", "", float(u.get("dead_lettered") or 0)):
                m.dead_lettered(int(n))
            for reason, total in (u.get("publish_failures") or {}).items():
                if n := self._delta("pubfail", str(reason), float(total)):
                    m.publish_failed(str(reason), int(n))
            if d.outbox is not None:
                os_ = d.outbox.stats()
                m.outbox_size(os_.bytes, os_.max_bytes)
        if d.outbox is not None:
            ob = d.outbox.stats()
            m.storage("outbox", ob.disk_state, ob.cap_bytes)
            for prio, total in d.held_events[1].items():
                if n := self._delta("ram_drop", prio, float(total)):
                    m.unsaved(prio, int(n))
        if d.presence.store is not None:
            m.storage("presence", "full" if d.presence.store.disk_full else "ok")

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            self.sample()
            await asyncio.sleep(period_s)
