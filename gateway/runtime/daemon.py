"""The daemon: wires sources -> pipeline (pure core) -> outbox -> uplink under one supervisor.

    sources --(bounded queue of batches)--> pipeline task --(events)--> outbox writer (batched
    SQLite transactions) --> uplink (MQTT QoS 1, acks delete rows)

Back-pressure: the queue between sources and the pipeline is bounded; a live source that cannot
enqueue drops the batch and counts it (radios cannot be paused), a replay simply waits.
Shutdown (first SIGTERM/SIGINT): intake stops, the queue is drained through the pipeline, open
visits are closed, pending events are committed to SQLite, the uplink gets the rest of the drain
deadline to publish; a second signal exits at once (committed events are safe on disk).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.resources
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings
from gateway.content.service import ContentService, IdentityConsents, PresenceConsentAdapter
from gateway.layout import Layout, LayoutError, load_layout, parse_layout
from gateway.log import configure_logging, get_logger
from gateway.models import EventBase, Fix, Observation
from gateway.ops.update import announce_ready
from gateway.pipeline import Pipeline
from gateway.presence.service import PresenceService
from gateway.runtime.notify import Notifier
from gateway.runtime.supervisor import Supervisor, TaskSpec
from gateway.sources.base import Source
from gateway.sources.simulated import SimulatedSource
from gateway.status.server import StatusServer
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox

log = get_logger(__name__)

QUEUE_BATCHES = 256


def embedded_layout() -> Layout:
    text = importlib.resources.files("gateway").joinpath("data/demo-store.toml").read_text(encoding="utf-8")
    import tomllib

    return parse_layout(tomllib.loads(text), "<embedded demo-store.toml>")


def load_store_layout(settings: Settings) -> Layout:
    return load_layout(settings.paths.layout) if settings.paths.layout else embedded_layout()


def build_sources(settings: Settings, layout: Layout) -> list[Source]:
    """Every enabled source; each module is imported only when used (radios need their libs)."""
    sources: list[Source] = []
    if settings.simulator.enabled:
        from gateway.sources.simulated import SimulatedSource

        sources.append(SimulatedSource(layout, settings.simulator))
    if settings.replay.enabled and settings.replay.path is not None:
        from gateway.sources.replay import ReplaySource

        sources.append(ReplaySource(settings.replay.path, settings.replay.speed))
    for flag, factory in SOURCE_FACTORIES:
        if flag(settings):
            sources.append(factory(settings, layout))
    return sources


# (enabled?, factory) for radio sources contributed by their modules; see gateway/sources/.
SOURCE_FACTORIES: list[tuple[Callable[[Settings], bool], Callable[[Settings, Layout], Source]]] = []


def _wifi_source(settings: Settings, layout: Layout) -> Source:
    from gateway.sources.wifi import make_wifi_source  # AF_PACKET capture, or pcap replay if wifi.pcap is set

    return make_wifi_source(settings.wifi)


def _ble_source(settings: Settings, layout: Layout) -> Source:
    from gateway.sources.ble import make_source  # bleak is imported only when BLE is enabled

    return make_source(settings, layout)


SOURCE_FACTORIES.append((lambda s: s.wifi.enabled, _wifi_source))
SOURCE_FACTORIES.append((lambda s: s.ble.enabled, _ble_source))


def _nodes_source(settings: Settings, layout: Layout) -> Source:
    from gateway.sources.nodes import make_source  # ESP32 sensor nodes over the store-local broker

    return make_source(settings, layout)


SOURCE_FACTORIES.append((lambda s: s.nodes.enabled, _nodes_source))


def is_replay(src: Source) -> bool:
    """A recording (JSON lines, pcap): finite, never dropped under back-pressure, and it carries its
    own event time, so the wall clock must not drive the pipeline while it plays."""
    return bool(getattr(src, "replay", False))


@dataclass
class Runtime:
    """What the status page and tests can read about a running daemon."""

    started_monotonic: float
    ready: bool = False
    loop_lag_s: float = 0.0
    last_fixes: list[Fix] | None = None


class Daemon:
    def __init__(self, settings: Settings, layout: Layout, *, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.layout = layout
        self.notifier = notifier or Notifier()
        self.runtime = Runtime(started_monotonic=time.monotonic())
        self.sources = build_sources(settings, layout)
        # presence + privacy (identity resolver with consents/opt-outs, qualification history)
        self.presence = PresenceService(settings, layout)
        self.presence.forget_hooks.append(self._forget_subject)
        self.pipeline = Pipeline(
            settings,
            layout,
            identity=self.presence.resolver,
            presence=self.presence.engine,
            on_fixes=self._on_fixes,
        )
        self.queue: asyncio.Queue[list[Observation] | None] = asyncio.Queue(maxsize=QUEUE_BATCHES)
        self.pending: list[EventBase] = []
        # the newest committed events (not fixes), for the status page
        self.recent: collections.deque[EventBase] = collections.deque(maxlen=200)
        # events committed to the outbox, by type (presence events, activation reports, ...): /metrics
        self.committed_by_type: collections.Counter[str] = collections.Counter()
        self._flush_lock = asyncio.Lock()
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        # content activation (issue 9): command store + rules + actor dispatch; see gateway/content/service.py
        self.content: ContentService | None = None
        self.content_identity: IdentityConsents | None = None
        self.supervisor = Supervisor(settings.supervisor, drain=self.drain)
        self.status_server: StatusServer | None = None
        # sources that know when one of their sensors is down (sensor nodes) tell the localizer, so
        # a silent sensor is not read as "every device is far from it"
        for src in self.sources:
            if hasattr(src, "on_sensor_state"):
                src.on_sensor_state = self._sensor_state
        self._pipeline_idle = asyncio.Event()
        self._last_obs_wall = time.monotonic()

    def _forget_subject(self, subject: str) -> None:
        """An opt-out erased ``subject`` from presence: drop it everywhere else it still lives (the
        localizer's buffered observations, events not yet committed, the status page's lists)."""
        self.pipeline.localizer.forget(subject)
        self.pending[:] = [e for e in self.pending if getattr(e, "subject", None) != subject]
        kept = [e for e in self.recent if getattr(e, "subject", None) != subject]
        self.recent.clear()
        self.recent.extend(kept)
        if self.runtime.last_fixes is not None:
            self.runtime.last_fixes = [f for f in self.runtime.last_fixes if f.device != subject]

    def _on_fixes(self, fixes: list[Fix]) -> None:
        self.runtime.last_fixes = fixes

    def _sensor_state(self, sensor: str, active: bool) -> None:
        self.pipeline.localizer.set_sensor_active(sensor, active)

    # -- tasks ------------------------------------------------------------------------------------

    def _source_task(self, src: Source) -> Callable[[], Awaitable[None]]:
        return lambda: self._run_source(src)

    async def _run_source(self, src: Source) -> None:
        live = not is_replay(src)
        async for batch in src.batches():
            if live:
                # radios cannot be paused: when the pipeline is behind, drop and count
                try:
                    self.queue.put_nowait(batch)
                except asyncio.QueueFull:
                    src.health.drop("backpressure", len(batch))
                await asyncio.sleep(0)
            else:
                await self.queue.put(batch)

    async def _run_pipeline(self) -> None:
        while True:
            batch = await self.queue.get()
            if batch is None:
                self._pipeline_idle.set()
                return
            self._last_obs_wall = time.monotonic()
            events = self.pipeline.process(batch)
            if events:
                self.pending.extend(events)
                if self.content is not None and self.content.on_events(events):
                    await self.content.let_dispatch_run()
            if self.queue.empty():
                self._pipeline_idle.set()
            else:
                self._pipeline_idle.clear()

    def event_clock(self) -> Callable[[], float] | None:
        """Where event time comes from when nothing is heard: the simulator's clock, the wall clock
        for live radios, none for a replay (its end closes every visit)."""
        live = [src for src in self.sources if not is_replay(src) and not isinstance(src, SimulatedSource)]
        if live:
            # a live source may run on a clock of its own (sensor nodes fed by the simulator in the demo)
            clocks = {getattr(src, "event_clock", time.time) for src in live}
            return clocks.pop() if len(clocks) == 1 else time.time
        sim = next((src for src in self.sources if isinstance(src, SimulatedSource)), None)
        if sim is not None:
            return lambda: float(sim.sim.now)
        return None

    async def _run_clock(self) -> None:
        """Advance event time through silence so visits time out with no observations."""
        clock = self.event_clock()
        if clock is None:  # replay: nothing to do until shutdown
            await asyncio.Event().wait()
            return
        while True:
            await asyncio.sleep(1.0)
            # only when the pipeline has caught up: queued observations are older than the clock
            if self.queue.empty() and time.monotonic() - self._last_obs_wall >= 1.0:
                now = clock()
                events = self.pipeline.advance(now)
                self.pending.extend(events)
                if self.content is not None:
                    self.content.on_events(events, now)
                    self.content.tick(now)

    async def _run_writer(self) -> None:
        assert self.outbox is not None
        interval = self.settings.outbox.flush_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> int:
        """Commit pending events to the outbox in batches (one transaction per batch)."""
        assert self.outbox is not None
        n = 0
        async with self._flush_lock:  # the writer task and the drain may both flush
            while self.pending:
                chunk = self.pending[: self.settings.outbox.append_batch]
                # taken out before the await: a cancelled await still commits on the DB thread, so
                # putting it back then would commit it twice; only a failed append puts it back
                del self.pending[: len(chunk)]
                try:
                    await self.outbox.append(chunk)
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    self.pending[:0] = chunk
                    raise
                n += len(chunk)
                self.committed_by_type.update(str(getattr(e, "type", type(e).__name__)) for e in chunk)
                self.recent.extend(e for e in chunk if getattr(e, "type", None) != "fix")
                try:  # visit history for qualification: secondary to the event itself, never retried
                    await self.presence.record(chunk)
                except Exception as e:
                    log.error("visit history not recorded", reason=str(e), events=len(chunk))
        return n

    async def _run_uplink(self) -> None:
        assert self.uplink is not None
        await self.uplink.run()

    async def _run_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        period = min(interval, 1.0) if interval else 1.0
        last_ping = 0.0
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(period)
            lag = time.monotonic() - t0 - period
            self.runtime.loop_lag_s = lag
            healthy = lag < (interval or 10.0) / 2
            if interval and healthy and time.monotonic() - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = time.monotonic()
            if not healthy:
                log.warning("event loop lagging; watchdog ping withheld", lag_s=round(lag, 3))

    async def drain(self, deadline_s: float) -> None:
        t_end = time.monotonic() + deadline_s
        self.notifier.stopping()
        log.info("draining", queued_batches=self.queue.qsize(), pending_events=len(self.pending))
        # intake (sources, clock) is cancelled by the supervisor; flush the queue through the
        # pipeline: idle is set again only once the pipeline has taken the end marker
        self._pipeline_idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.put(None), max(0.1, (t_end - time.monotonic()) / 4))
            await asyncio.wait_for(self._pipeline_idle.wait(), max(0.1, (t_end - time.monotonic()) / 2))
        self.pending.extend(self.pipeline.close())
        if self.content is not None:  # in-flight dispatches report before the final flush
            await self.content.drain(max(0.1, (t_end - time.monotonic()) / 4))
        if self.outbox is not None:
            n = await self.flush()
            log.info("events committed", count=n)
        if self.uplink is not None:
            await self.uplink.drain(max(0.0, t_end - time.monotonic()))

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.paths.state_dir.mkdir(parents=True, exist_ok=True)
        from gateway.content.store import private_file
        from gateway.presence.service import presence_db_path

        # events and personal data: 0600 whatever the umask, also for files an older version made 0644
        for db in (self.settings.outbox_path, self.settings.content_state_path, presence_db_path(self.settings)):
            private_file(db)
        self.outbox = await Outbox.open(
            self.settings.outbox_path, self.settings.gateway.id, max_bytes=self.settings.outbox.max_bytes
        )
        clock = self.event_clock() or time.time
        await self.presence.open(clock())
        if self.settings.content.enabled:
            await self._start_content()
        self.uplink = Uplink(
            self.settings.mqtt,
            self.settings.gateway,
            self.outbox,
            on_command=self._on_command if self.content is not None else None,
        )
        sup = self.supervisor
        for src in self.sources:
            finite = is_replay(src) or (
                isinstance(src, SimulatedSource) and self.settings.simulator.duration_s is not None
            )
            sup.add(TaskSpec(f"source:{src.name}", self._source_task(src), "finite" if finite else "restart", "intake"))
        sup.add(TaskSpec("pipeline", self._run_pipeline, "fatal"))
        sup.add(TaskSpec("clock", self._run_clock, "restart", "intake"))  # no advance() after close()
        sup.add(TaskSpec("outbox-writer", self._run_writer, "fatal", "egress"))
        sup.add(TaskSpec("uplink", self._run_uplink, "restart", "egress"))
        sup.add(TaskSpec("watchdog", self._run_watchdog, "fatal"))
        sup.add(TaskSpec("presence-maintenance", lambda: self.presence.run_maintenance(clock), "restart"))
        if self.settings.status.enabled:
            await self._start_status()

    async def _start_status(self) -> None:
        """The technician page is not on the data path: if its port is taken the daemon keeps
        collecting and says so loudly, rather than refusing to start."""
        from gateway.runtime.status_provider import DaemonMetricsSampler, DaemonStatusProvider
        from gateway.status.metrics import default_metrics, monitor_loop_lag
        from gateway.status.server import StatusServer

        metrics = default_metrics()
        server = StatusServer(DaemonStatusProvider(self), self.settings.status, metrics=metrics)
        try:
            await server.start()
        except OSError as e:
            log.error("status page not served", reason=str(e), port=self.settings.status.port)
            return
        self.status_server = server
        if self.uplink is not None and self.event_clock() is time.time:
            # event-to-ack latency only means something when event time is wall time (live radios)
            self.uplink.on_published = lambda rows: metrics.published([time.time() - r.ts for r in rows])
        sampler = DaemonMetricsSampler(self, metrics)
        self.supervisor.add(TaskSpec("metrics", sampler.run, "restart"))
        self.supervisor.add(TaskSpec("loop-lag", lambda: monitor_loop_lag(metrics), "restart"))

    async def _start_content(self) -> None:
        from gateway.content.actors import ActorDispatcher

        dispatcher = ActorDispatcher(self.settings.content)
        identity = self.content_identity or PresenceConsentAdapter.maybe(
            getattr(self, "presence", None), self.event_clock() or time.time
        )
        self.content = await ContentService.open(
            self.settings, emit=self.pending.extend, dispatcher=dispatcher, identity=identity, reply=self._reply
        )
        lb, m = self.settings.local_broker, self.settings.mqtt
        if lb.host is not None:
            host, port = lb.host, lb.port
        elif m.host is not None and not m.tls:  # demo/tests: one plain broker serves both roles
            host, port = m.host, m.port
        else:
            host, port = "127.0.0.1", lb.port
        client_id = f"{self.settings.gateway.id}-actors"
        self.supervisor.add(
            TaskSpec("actors-local", lambda: dispatcher.run_local(host, port, client_id), "restart", "egress")
        )

    async def _on_command(self, topic: str, payload: bytes) -> None:
        assert self.content is not None
        await self.content.handle_command(topic, payload)

    async def _reply(self, payload: bytes) -> None:
        if self.uplink is not None:
            await self.uplink.publish_reply(payload)

    async def run(self) -> int:
        rc = 1
        try:
            await self.start()
            loop = asyncio.get_running_loop()
            self.supervisor.install_signal_handlers(loop)
            log.info(
                "gateway ready",
                version=__version__,
                gateway=self.settings.gateway.id,
                store=self.settings.gateway.store_id,
                sources=[s.name for s in self.sources],
                startup_s=round(time.monotonic() - self.runtime.started_monotonic, 3),
            )
            self.runtime.ready = True
            self.notifier.ready(f"running: {len(self.sources)} source(s)")
            announce_ready()  # for `gateway update`: this release reached READY (no-op outside systemd)
            rc = await self.supervisor.run()
        finally:
            await self._close_all()
        log.info("gateway stopped", exit_code=rc, reason=self.supervisor.stop_reason, stats=self._stats())
        return rc

    async def _close_all(self) -> None:
        """Close every resource that was opened, each on its own: one failing close (or a start-up
        that failed half-way) must not leave another SQLite connection's thread keeping the
        process alive."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.status_server is not None:
            steps.append(("status server", self.status_server.stop))
        if self.content is not None:
            steps.append(("content", self.content.close))
        if self.outbox is not None:
            steps.append(("final flush", self._final_flush))
            steps.append(("outbox", self.outbox.close))
        steps.append(("presence", self.presence.close))
        for what, step in steps:
            try:
                await step()
            except Exception as e:  # keep closing the rest, and say what failed
                log.error("close failed", what=what, reason=str(e))
        self.notifier.close()

    async def _final_flush(self) -> None:
        if self.outbox is not None and self.pending:
            await self.flush()

    def _stats(self) -> dict[str, Any]:
        st = self.pipeline.stats
        return {"observations": st.observations, "fixes": st.fixes, "events": st.events, "dropped": st.dropped}


# -- commands -----------------------------------------------------------------------------------------


def _load(args: argparse.Namespace, **overrides: Any) -> tuple[Settings, Layout] | int:
    try:
        settings = load_settings(args.config, **overrides)
        layout = load_store_layout(settings)
    except (ConfigError, LayoutError) as e:
        print(str(e), file=sys.stderr)
        return 2
    return settings, layout


def _cmd_run(args: argparse.Namespace) -> int:
    if args.config is not None and not Path(args.config).is_file():
        print(f"gateway run: --config {args.config}: no such file", file=sys.stderr)
        return 2
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    settings, layout = loaded
    from gateway.ops.preflight import check  # what would stop the daemon: refuse now, in one line each

    problems = [p for p in check(settings) if p.severity == "error"]
    for p in problems:
        print(f"gateway run: {p.line()}", file=sys.stderr)
    if problems:
        return 2
    os.umask(0o077)  # outbox, content state, keys: readable by the service user only (0600)
    configure_logging(settings.log.level, settings.log.format)

    async def main() -> int:
        return await Daemon(settings, layout).run()

    try:
        return asyncio.run(main())
    except (OSError, sqlite3.Error) as e:  # state dir / database unusable: say which, exit 1 for systemd
        log.error("gateway could not run", reason=f"{type(e).__name__}: {e}")
        return 1


def add_commands(sub: Any) -> None:
    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", "-c", type=Path, default=os.environ.get("GATEWAY_CONFIG"))
    run.set_defaults(func=_cmd_run)
