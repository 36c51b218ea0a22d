"""``StatusProvider`` over a running ``gateway.runtime.daemon.Daemon``: what the lead wires into ``run``.

It only *reads* the daemon's live objects (runtime flags, source health, pipeline stats and latest
fixes, outbox and uplink status) and turns them into the page's plain JSON. The two actions that
change something go through the daemon's own paths: a test event is appended to the daemon's
pending events (so it travels outbox -> uplink like any other), and an opt-out installs
``OptOutIdentity`` in front of pseudonymisation (the identifier is kept only as a keyed hash).

Everything here is cheap and synchronous: it runs on the event loop a few times a second.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway import __version__
from gateway.demo.status_demo import coverage_grid
from gateway.demo.status_sim import OptOutIdentity
from gateway.layout import Layout, points_in_polygon
from gateway.models import Fix, Heartbeat
from gateway.status.metrics import GatewayMetrics
from gateway.status.provider import ActionResult, DeviceDot, StatusSnapshot

if TYPE_CHECKING:
    from gateway.runtime.daemon import Daemon

DOT_TTL_S = 5.0  # event-time seconds a dot stays after its last fix


class DaemonStatusProvider:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._latest: dict[str, Fix] = {}
        self._zones: dict[str, str | None] = {}  # zone of each latest fix, computed once per fix
        self._dots: list[dict[str, Any]] | None = None  # serialisable dots, rebuilt only on change
        self._version = 0  # bumped whenever the set of dots changes (the stream skips unchanged ticks)
        self._seen_fixes: list[Fix] | None = None
        self._events: deque[dict[str, Any]] = deque(maxlen=50)
        self._crlb: dict[str, Any] | None = None
        self._optout: OptOutIdentity | None = None

    # -- helpers --------------------------------------------------------------------------------

    def _refresh_dots(self) -> None:
        before = self._version
        fixes = self.daemon.runtime.last_fixes
        if fixes is not None and fixes is not self._seen_fixes:
            self._seen_fixes = fixes
            for f in fixes:
                self._latest[f.device] = f
            self._zones.update(self._zones_of(fixes))
            self._version += 1
        if self._optout is not None and self._optout.suppressed:
            for subj in self._optout.suppressed:
                self._latest.pop(subj, None)
                self._zones.pop(subj, None)
            self._optout.suppressed.clear()
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

    def devices_version(self) -> int:
        """Changes whenever ``devices()`` would return something new (the live stream's cache key)."""
        self._refresh_dots()
        return self._version

    # -- StatusProvider -------------------------------------------------------------------------

    def ready(self) -> bool:
        return bool(self.daemon.runtime.ready) and not self.daemon.supervisor.stopping

    def layout(self) -> Layout:
        return self.daemon.layout

    def devices(self) -> list[dict[str, Any]]:
        self._refresh_dots()
        if self._dots is None:
            self._dots = [
                DeviceDot(f.device, round(f.x, 2), round(f.y, 2), round(f.sigma_m, 2), self._zones.get(k)).as_dict()
                for k, f in self._latest.items()
            ]
        return list(self._dots)

    def snapshot(self) -> dict[str, Any]:
        d = self.daemon
        self._refresh_dots()
        now = (d.event_clock() or time.time)()  # ages on the page are in event time (simulator too)
        occ = {z.id: 0 for z in d.layout.zones}
        for k in self._latest:
            z = self._zones.get(k)
            if z in occ:
                occ[z] += 1
        last = d.pipeline.sensor_last_heard
        heard: dict[str, float | None] = {sid: last.get(sid) for sid in d.layout.sensor_index()}
        nodes: list[dict[str, Any]] = []
        for src in d.sources:
            node_status = getattr(src, "node_status", None)
            if callable(node_status):
                nodes.extend(node_status())
        uplink: dict[str, Any] = {}
        outbox: dict[str, Any] = {}
        if d.uplink is not None:
            u = d.uplink.status()
            uplink = {
                "state": u.get("link"),
                "broker": u.get("broker"),
                "last_error": u.get("last_error"),
                "reconnects": u.get("reconnects"),
                "published_events": u.get("published_events"),
            }
            outbox = {
                "backlog": u.get("backlog"),
                "oldest_age_s": self._oldest_age(now),
                "evictions": sum((u.get("evictions") or {}).values()),
                "bytes": u.get("outbox_bytes"),
            }
        elif d.outbox is not None:
            ob = d.outbox.stats()
            outbox = {
                "backlog": ob.backlog,
                "oldest_age_s": None if ob.oldest_ts is None else max(0.0, now - ob.oldest_ts),
                "evictions": ob.evicted_total,
                "bytes": ob.bytes,
            }
        disk: dict[str, Any] = {}
        try:
            du = shutil.disk_usage(d.settings.paths.state_dir)
            disk = {"path": str(d.settings.paths.state_dir), "total_bytes": du.total, "free_bytes": du.free}
        except OSError:
            pass
        st = d.pipeline.stats
        return StatusSnapshot(
            ts=now,
            version=__version__,
            uptime_s=time.monotonic() - d.runtime.started_monotonic,
            gateway_id=d.settings.gateway.id,
            store_id=d.settings.gateway.store_id,
            ready=self.ready(),
            sources=[src.health for src in d.sources],
            sensors_last_heard=heard,
            nodes=nodes,
            uplink=uplink,
            outbox=outbox,
            disk=disk,
            clock={"synchronized": None, "source": "system", "offset_s": None},
            recent_events=self._recent_events(),
            recent_activations=self._recent_activations(),
            campaigns=self._campaigns(),
            actors=self._actors(),
            zone_occupancy=occ,
            optouts=self._optout_count(),
            extra={
                "observations": st.observations,
                "fixes": st.fixes,
                "events": dict(st.events),
                "dropped": dict(st.dropped),
                "loop_lag_s": round(d.runtime.loop_lag_s, 4),
                "queued_batches": d.queue.qsize(),
                # staff, fixtures and neighbours set apart today, by why (device kind or all-day)
                "residents": dict(collections.Counter(d.pipeline.presence.residents().values())),
                "linked_rotations": d.pipeline.linker.stats.links if d.pipeline.linker is not None else 0,
            },
        ).as_dict()

    def crlb_grid(self) -> dict[str, Any] | None:
        if self._crlb is None:
            loc = self.daemon.settings.localization
            self._crlb = coverage_grid(self.daemon.layout, loc.sigma_db, loc.detection_floor_dbm)
        return self._crlb

    async def restart_scanner(self) -> ActionResult:
        restarted = 0
        for src in self.daemon.sources:
            fn = getattr(src, "restart", None)
            if callable(fn):
                await fn()
                restarted += 1
        if not restarted:
            return ActionResult(False, "no running source supports a restart")
        return ActionResult(True, f"{restarted} scanner(s) restarted")

    async def reload_config(self) -> ActionResult:
        return ActionResult(False, "reload is not supported yet: restart the service (systemctl restart gateway)")

    async def send_test_event(self) -> ActionResult:
        ev = Heartbeat(
            ts=(self.daemon.event_clock() or time.time)(),
            store_id=self.daemon.settings.gateway.store_id,
            note="status page test event",
        )
        self.daemon.pending.append(ev)
        self._events.appendleft({"ts": ev.ts, "type": ev.type, "subject": None, "zone": None})
        return ActionResult(True, "test event queued")

    def _oldest_age(self, now: float) -> float | None:
        """Age of the oldest unsent event in event time (the simulator's clock in the demo)."""
        if self.daemon.outbox is None:
            return None
        oldest = self.daemon.outbox.stats().oldest_ts
        return None if oldest is None else max(0.0, now - oldest)

    def _recent_events(self) -> list[dict[str, Any]]:
        """Newest first: presence events the daemon committed, and test events sent from this page."""
        out = [
            {
                "ts": e.ts,
                "type": getattr(e, "type", "?"),
                "subject": getattr(e, "subject", None),
                "zone": getattr(e, "zone", None),
            }
            for e in reversed(getattr(self.daemon, "recent", ()))
            if getattr(e, "type", None) != "activation"
        ][:20]
        if hasattr(self.daemon, "recent"):  # a test event shows up here once committed, like any other
            return sorted(out, key=lambda e: -float(e["ts"]))
        return list(self._events)[:20]

    def _recent_activations(self) -> list[dict[str, Any]]:
        return [
            {
                "ts": e.ts,
                "campaign_id": getattr(e, "campaign_id", None),
                "content_id": getattr(e, "content_id", None),
                "actor_id": getattr(e, "actor_id", None),
                "subject": getattr(e, "subject", None),
                "result": getattr(e, "result", None),
            }
            for e in reversed(getattr(self.daemon, "recent", ()))
            if getattr(e, "type", None) == "activation"
        ][:20]

    def _campaigns(self) -> list[dict[str, Any]]:
        content = getattr(self.daemon, "content", None)
        if content is None:
            return []
        now = (self.daemon.event_clock() or time.time)()
        out = []
        for c in content.state.campaigns.values():
            active = (c.valid_from is None or c.valid_from <= now) and (c.valid_to is None or now < c.valid_to)
            out.append({"id": c.id, "name": c.name or c.id, "active": active, "category": c.category})
        return out

    def _actors(self) -> list[dict[str, Any]]:
        content = getattr(self.daemon, "content", None)
        if content is None:
            return []
        return [{"id": a.id, "name": a.id, "kind": a.kind, "state": a.transport} for a in content.state.actors.values()]

    def _optout_count(self) -> int:
        presence = getattr(self.daemon, "presence", None)
        if presence is not None:
            return int(presence.resolver.optout_count)
        return self._optout.blocked if self._optout is not None else 0

    async def add_optout(self, identifier: str) -> ActionResult:
        if not identifier.strip():
            return ActionResult(False, "identifier is empty")
        presence = getattr(self.daemon, "presence", None)
        if presence is not None:  # the daemon's resolver: persisted, and erases live state + history
            clock = self.daemon.event_clock() or time.time
            erased = await presence.add_optout(identifier, clock())
            self._latest.clear()  # dots come back with the next fixes, minus the opted-out device
            self._zones.clear()
            self._dots = None
            self._version += 1
            return ActionResult(True, f"opt-out recorded; {erased} tracked subject(s) erased")
        if self._optout is None:
            current = self.daemon.pipeline.identity
            keyring = getattr(current, "_keys", None)
            if keyring is None or type(current).__name__ != "IdentityStage":
                return ActionResult(False, "this identity stage does not support opt-outs")
            self._optout = OptOutIdentity(keyring)
            self.daemon.pipeline.identity = self._optout
        self._optout.block(identifier)
        return ActionResult(True, "opt-out recorded; the device is no longer tracked")


class DaemonMetricsSampler:
    """Feeds the Prometheus metrics from the daemon's own cumulative counters.

    The stages already count (source health, pipeline stats, outbox and uplink status); sampling
    those totals once a second and adding the deltas to the counters costs nothing on the hot path
    and needs no instrumentation in every stage. Publish latency is the one metric that must be
    observed where it happens (``GatewayMetrics.published`` from the uplink's ack handler).
    """

    def __init__(self, daemon: Daemon, metrics: GatewayMetrics) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self._last: dict[tuple[str, str], float] = {}

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
        for src in d.sources:
            node_status = getattr(src, "node_status", None)
            if callable(node_status):
                for n in node_status():
                    name = str(n["name"])
                    m.node(name, n["state"] == "up", n["latency_s"], n["rate_per_s"])
                    if k := self._delta("node_msg", name, n["messages"]):
                        m.node_messages(name, int(k))
                    for reason, total in n["dropped"].items():
                        if k := self._delta("node_drop", f"{name}:{reason}", total):
                            m.node_dropped(name, reason, int(k))
        st = d.pipeline.stats
        for reason, total in st.dropped.items():
            if n := self._delta("drop", f"pipeline:{reason}", total):
                m.dropped(reason, int(n))
        if n := self._delta("fix", "", st.fixes):
            m.fixed(int(n))
        for etype, total in st.events.items():
            if n := self._delta("event", etype, total):
                m.produced(etype, int(n))
        if d.uplink is not None:
            u = d.uplink.status()
            now = (d.event_clock() or time.time)()
            oldest = d.outbox.stats().oldest_ts if d.outbox is not None else None
            m.outbox(int(u.get("backlog") or 0), None if oldest is None else max(0.0, now - oldest))
            m.uplink_state(u.get("link") == "connected")
            if n := self._delta("reconnect", "", float(u.get("reconnects") or 0)):
                m.reconnects.inc(n)
            for prio, total in (u.get("evictions_by_priority") or {}).items():
                if n := self._delta("evict", str(prio), float(total)):
                    m.evicted(str(prio), int(n))

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            self.sample()
            await asyncio.sleep(period_s)
