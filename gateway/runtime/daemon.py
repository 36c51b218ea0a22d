"""The daemon: wires sources -> pipeline (pure core) -> outbox -> uplink under one supervisor.

    sources --(bounded queue of batches)--> pipeline task --> pipeline thread --(events)--> outbox
    writer (batched SQLite transactions) --> uplink (MQTT QoS 1, acks delete rows)

The pipeline (identity -> localization -> presence) runs on a thread of its own
(``gateway.runtime.worker.PipelineWorker``), which alone touches its state: the pipeline task
hands it the queued batches (all those waiting, in one job), the clock its ``advance``, the drain
its ``close``, opt-outs and consents their changes; the events come back on the loop, in order.
The event loop stays free for I/O while a fix tick computes.

Back-pressure: the queue between sources and the pipeline is bounded; a live source that cannot
enqueue drops the batch and counts it (radios cannot be paused), a replay simply waits; a live
batch that waited longer than ``pipeline.max_delay_s`` is dropped as ``late`` (so latency stays
bounded on an overloaded box). Before that, once a live batch waited longer than
``pipeline.shed_after_s``, fixes are computed on every 3rd tick only until the queue is short again
(``Pipeline.fix_stride``; counted as ``fix_tick_shed``); and whatever the wait, a fix tick whose
successor is already due in live batches queued behind it is shed too (``Pipeline.horizon``). A
job that hands a tick's events to the loop mid-way waits (``SETTLE_WAIT_S`` at most) until the
activations they started wrote their packets. Queue depth, waits, late drops, ticks shed
and the pipeline thread's load are on /metrics and the status page (``BackPressure``). What a
source is (a recording, a node feed, restartable, on its own clock) it declares in its
``capabilities`` (``gateway/sources/base.py``); the daemon never probes it.
The status page reads the daemon through ``gateway.runtime.status_provider.DaemonView``.
Shutdown (first SIGTERM/SIGINT): intake stops, the queue is drained through the pipeline, open
visits are closed, pending events are committed to SQLite, the uplink gets the rest of the drain
deadline to publish; a second signal exits at once (committed events are safe on disk).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings
from gateway.content.service import ContentService, IdentityConsents
from gateway.identity.subjects import ConsentRecord
from gateway.layout import Layout, LayoutError, embedded_layout, load_layout
from gateway.log import configure_logging, get_logger
from gateway.models import ActivationReport, EventBase, Fix, Observation, PositionFix, SubjectEvent, priority_of
from gateway.mqtt.local import local_broker_address
from gateway.ops.ready import announce_ready
from gateway.pipeline import Pipeline
from gateway.presence.service import PresenceService
from gateway.runtime.memory import MemoryTrim
from gateway.runtime.notify import Notifier
from gateway.runtime.reload import ReloadResult, plan_reload
from gateway.runtime.status_provider import (
    BackPressure,
    DaemonMetricsSampler,
    DaemonStatusProvider,
    PipelineView,
    Runtime,
    pipeline_view,
)
from gateway.runtime.supervisor import Policy, Supervisor, TaskSpec
from gateway.runtime.worker import PipelineWorker
from gateway.sources.base import Source
from gateway.status.metrics import default_metrics, monitor_loop_lag
from gateway.status.server import StatusServer
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox, OutboxFullError

log = get_logger(__name__)

QUEUE_BATCHES = 256
# observations handed to the pipeline thread in one job at most, when batches have piled up
MAX_JOB_OBSERVATIONS = 2048
# load shedding: fixes on every n-th tick at most (the pipeline also caps it at localization.window_s)
SHED_MAX_STRIDE = 3
# the status page's copy of the pipeline counters is rebuilt at most this often while busy
VIEW_EVERY_S = 0.2
# a job that hands events to the loop mid-way waits (at most this long) until the activations
# they started have written their packets: the loop has the interpreter to itself meanwhile
SETTLE_WAIT_S = 0.02


@dataclass(slots=True)
class Queued:
    """A batch waiting for the pipeline: when it was queued and, for a live source, which one."""

    batch: list[Observation] | None  # None: the end marker the drain puts
    t: float  # time.monotonic() when queued
    source: Source | None = None  # a live source (its late drops are counted there); None: a recording
    n: int = 0  # a live batch: how many (non-empty) live batches were queued up to it; 0: none


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
    # sensor nodes' Wi-Fi reports go to the capture's grouping (docs/wifi.md, "Several receivers")
    sink = next((s.capabilities.probe_sink for s in sources if s.capabilities.probe_sink), None)
    for s in sources:
        nodes = s.capabilities.nodes
        if sink is not None and nodes is not None:
            nodes.watch_wifi(sink)
    return sources


# (enabled?, factory) for radio sources contributed by their modules; see gateway/sources/.
SOURCE_FACTORIES: list[tuple[Callable[[Settings], bool], Callable[[Settings, Layout], Source]]] = []


def _wifi_source(settings: Settings, layout: Layout) -> Source:
    from gateway.sources.wifi import make_wifi_source  # the capture relay's frames, or a pcap replay (wifi.pcap)

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


def _subject_of(e: EventBase) -> str | None:
    return e.subject if isinstance(e, SubjectEvent | ActivationReport) else None


class PendingEvents(list[EventBase]):
    """Events produced and not committed to the outbox yet, oldest first (RAM only).

    It counts, so the daemon's accounting adds up (docs/storage.md): every event ``added`` is
    committed to the outbox (it gets a seq), erased by an opt-out, or dropped here - lowest
    priority first, counted by priority - when the disk has refused appends for longer than
    ``outbox.ram_max_events`` events.
    """

    def __init__(self) -> None:
        super().__init__()
        self.added = 0
        self.committed = 0
        self.erased = 0
        self.dropped: dict[str, int] = {}

    def append(self, ev: EventBase) -> None:
        self.added += 1
        super().append(ev)

    def extend(self, evs: Iterable[EventBase]) -> None:
        n = len(self)
        super().extend(evs)
        self.added += len(self) - n

    def drop_to(self, max_events: int) -> dict[str, int]:
        """Keep at most ``max_events``: drop the lowest priority first, oldest first within one."""
        over = len(self) - max_events
        if over <= 0:
            return {}
        order = sorted(range(len(self)), key=lambda i: (int(priority_of(self[i])), i))
        gone = set(order[:over])
        out: dict[str, int] = {}
        for i in gone:
            name = priority_of(self[i]).name.lower()
            out[name] = out.get(name, 0) + 1
        self[:] = [e for i, e in enumerate(self) if i not in gone]
        for name, n in out.items():
            self.dropped[name] = self.dropped.get(name, 0) + n
        return out


_TYPE_OF: dict[type[EventBase], str] = {}


def _event_type(e: EventBase) -> str:
    """The wire ``type`` of an event ("zone.entered" ...), from its class (one lookup per class)."""
    cls = type(e)
    t = _TYPE_OF.get(cls)
    if t is None:
        field = cls.model_fields.get("type")
        t = _TYPE_OF[cls] = str(field.default) if field is not None else cls.__name__
    return t


class PresenceConsents:
    """Content's ``IdentityConsents`` over the presence service: consents and opt-outs from cloud
    commands go to the same identity resolver as the status page's opt-out."""

    def __init__(self, presence: PresenceService, clock: Callable[[], float]) -> None:
        self.presence = presence
        self.clock = clock

    async def add_consent(
        self, customer_ref: str, *, irk: bytes | None, app_token: str | None, scope: frozenset[str]
    ) -> None:
        record = ConsentRecord(customer_ref=customer_ref, scope=scope, irk=irk, app_token=app_token)
        await self.presence.run_owned(partial(self.presence.put_consent, record))

    async def revoke_consent(self, customer_ref: str) -> None:
        await self.presence.revoke_consent(customer_ref)

    async def add_optout(self, identifier: str) -> None:
        await self.presence.add_optout(identifier, self.clock())


class Daemon:
    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        *,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        """``reload_settings`` loads the configuration again as it was loaded for this run (same
        file, environment and overrides): "Reload config" on the status page calls it."""
        self.settings = settings
        self.layout = layout
        self._reload_settings = reload_settings
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
            on_partial=self._partial,
        )
        self.queue: asyncio.Queue[Queued] = asyncio.Queue(maxsize=QUEUE_BATCHES)
        # the one thread that touches pipeline state once the daemon runs (inline before / after)
        self.worker = PipelineWorker()
        self.presence.run_owned = self.worker.call
        self.backpressure = BackPressure(self.worker.stats)
        # the C heaps' free pages back to the system every 15 minutes of event time (pipeline thread)
        self.memory = MemoryTrim.glibc()
        self.pipeline_view: PipelineView = pipeline_view(self.pipeline, self.presence)
        self._view_t = 0.0
        self._dispatched = False
        self._stride = 1  # load shedding: compute fixes every n-th tick (pipeline.shed_after_s)
        # catch-up shedding (``Pipeline.horizon``): the last event time of the live batch queued last
        # and how many were queued; the newest of the live batches after the one in hand in its job,
        # and how many live batches had been queued up to that job's last
        self._queued_ts = -math.inf
        self._queued_n = 0
        self._job_ts = -math.inf
        self._job_n = -1
        self.pipeline.horizon = self._horizon
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending = PendingEvents()
        self.outbox_refusing: str | None = None  # why the disk refuses appends (None: it does not)
        self.unsaved_at_exit: dict[str, int] = {}
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
        # sources fed by sensor nodes say when one goes quiet and comes back; the localizer must
        # know, so a silent sensor is not read as "every device is far from it"
        for src in self.sources:
            nodes = src.capabilities.nodes
            if nodes is not None:
                nodes.watch_sensors(self._sensor_state)
        self._pipeline_idle = asyncio.Event()
        self._last_obs_wall = time.monotonic()

    def _forget_subject(self, subject: str) -> None:
        """An opt-out erased ``subject`` from presence: drop it everywhere else it still lives (the
        localizer's buffered observations, events not yet committed, the status page's lists).

        Runs where the opt-out ran, on the pipeline thread: the events and lists are the loop's,
        so that part is sent there - after every event the pipeline produced before the opt-out
        (those were handed to the loop first, in order)."""
        self.pipeline.localizer.forget(subject)
        if self.runtime.last_fixes is not None:
            self.runtime.last_fixes = [f for f in self.runtime.last_fixes if f.device != subject]
        self._refresh_view(force=True)
        if self._loop is not None and self.worker.ident == threading.get_ident():
            self._loop.call_soon_threadsafe(self._forget_events, subject)
        else:
            self._forget_events(subject)

    def _forget_events(self, subject: str) -> None:
        kept = [e for e in self.pending if _subject_of(e) != subject]
        self.pending.erased += len(self.pending) - len(kept)
        self.pending[:] = kept
        recent = [e for e in self.recent if _subject_of(e) != subject]
        self.recent.clear()
        self.recent.extend(recent)

    def _on_fixes(self, fixes: list[Fix]) -> None:
        self.runtime.last_fixes = fixes  # a new list each tick: the page reads it from the loop

    def _sensor_state(self, sensor: str, active: bool) -> None:
        self.worker.post(partial(self.pipeline.localizer.set_sensor_active, sensor, active))

    # -- on the pipeline thread (PipelineWorker jobs) ------------------------------------------------

    def _horizon(self) -> float:
        """On the pipeline thread: the newest event time of live observations waiting behind the
        batch in hand (a tick whose successor is due in them is shed; ``pipeline.shed_after_s`` 0:
        never)."""
        if self.settings.pipeline.shed_after_s <= 0:
            return -math.inf
        if self._job_n < 0 or self._queued_n <= self._job_n:  # nothing queued after this job
            return self._job_ts
        return max(self._job_ts, self._queued_ts)

    def _process(
        self,
        batches: list[list[Observation]],
        stride: int = 1,
        due: list[float] | None = None,
        late: list[int] | None = None,
        after: list[float] | None = None,
        queued_n: int = -1,
    ) -> list[EventBase]:
        """Each batch in turn (the same results as one by one). Events go to the loop as soon as a
        batch has produced them (a fix tick's zone entries), not after the job's later batches:
        an activation never waits for the rest of a job that piled up behind a slow moment.
        ``stride``: the load shedding's fix stride (``pipeline.shed_after_s``; 1: every tick).
        ``due``: when each batch turns late (``pipeline.max_delay_s``); a batch not started by
        then is skipped and its index appended to ``late`` (the loop counts it).
        ``after``: the newest event time of the live batches after each one in this job;
        ``queued_n``: how many live batches had been queued up to its last (-1: not live)."""
        self.pipeline.fix_stride = stride
        self._job_n = queued_n
        events: list[EventBase] = []
        last = len(batches) - 1
        for i, batch in enumerate(batches):
            if due is not None and late is not None and time.monotonic() > due[i]:
                late.append(i)
                continue
            self._job_ts = after[i] if after is not None else -math.inf
            events += self.pipeline.process(batch)
            if events and i < last:
                self.worker.emit(self._deliver, events, settle=self._settle, wait_s=SETTLE_WAIT_S)
                events = []
        self._job_ts, self._job_n = -math.inf, -1
        self._refresh_view()
        if batches and batches[-1]:
            self.memory.maybe_trim(batches[-1][-1].ts)
        return events

    def _partial(self, events: list[EventBase]) -> None:
        """A long fix tick's events so far (``localization.tick_chunk_devices``): to the loop now."""
        self.worker.emit(self._deliver, events, settle=self._settle, wait_s=SETTLE_WAIT_S)

    def _advance(self, now: float) -> list[EventBase]:
        events = self.pipeline.advance(now)
        self._refresh_view(force=True)
        self.memory.maybe_trim(now)
        return events

    def _close_pipeline(self) -> list[EventBase]:
        events = self.pipeline.close()
        self._refresh_view(force=True)
        return events

    def _refresh_view(self, force: bool = False) -> None:
        """The status page's copy of the pipeline counters (it never reads the live ones)."""
        t = time.monotonic()
        if force or t - self._view_t >= VIEW_EVERY_S:
            self._view_t = t
            self.pipeline_view = pipeline_view(self.pipeline, self.presence)

    # -- back on the loop ----------------------------------------------------------------------------

    async def _settle(self) -> None:
        """After events handed over mid-job: the activations they started write their packets
        before the job goes on (it waits for this, ``SETTLE_WAIT_S`` at most)."""
        if self._dispatched:
            await ContentService.let_dispatch_run()

    def _deliver(self, events: list[EventBase], now: float | None = None) -> None:
        """Events of a pipeline job, on the loop, in job order: to the outbox writer and content."""
        if events:
            self.pending.extend(events)
            if self.content is not None and self.content.on_events(events, now):
                self._dispatched = True

    # -- tasks ------------------------------------------------------------------------------------

    def _source_task(self, src: Source) -> Callable[[], Awaitable[None]]:
        return lambda: self._run_source(src)

    async def _run_source(self, src: Source) -> None:
        live = not src.capabilities.replay
        # closed here, not by the garbage collector: a restart must release the radio first
        bp = self.backpressure
        async with contextlib.aclosing(src.batches()) as batches:
            async for batch in batches:
                if live:
                    # radios cannot be paused: when the pipeline is behind, drop and count
                    n = self._queued_n + 1 if batch else 0
                    try:
                        self.queue.put_nowait(Queued(batch, time.monotonic(), src, n))
                    except asyncio.QueueFull:
                        src.health.drop("backpressure", len(batch))
                    else:
                        if n:  # the time first: the pipeline thread reads the count first
                            self._queued_ts = batch[-1].ts
                            self._queued_n = n
                        bp.queued_batches += 1
                        bp.queued_observations += len(batch)
                    await asyncio.sleep(0)
                else:
                    await self.queue.put(Queued(batch, time.monotonic()))
                    bp.queued_batches += 1
                    bp.queued_observations += len(batch)

    def _take(self, items: list[Queued]) -> tuple[list[Queued], bool]:
        """The items the pipeline should process (late live ones dropped and counted), and whether
        the end marker came."""
        bp = self.backpressure
        now = time.monotonic()
        max_delay = self.settings.pipeline.max_delay_s  # read each time: reloadable
        out: list[Queued] = []
        for it in items:
            if it.batch is None:
                return out, True
            wait = now - it.t
            bp.queued_batches -= 1
            bp.queued_observations -= len(it.batch)
            bp.wait_s = wait
            bp.max_wait_s = max(bp.max_wait_s, wait)
            bp.waits.append(wait)
            if it.source is not None and 0 < max_delay < wait:
                it.source.health.drop("late", len(it.batch))
                bp.dropped_late += len(it.batch)
                continue
            out.append(it)
        return out, False

    def _late_in_job(self, taken: list[Queued], late: list[int], events: list[EventBase]) -> None:
        """A job's delivery (on the loop, in job order): count the batches it found late, then
        deliver its events as ``_deliver`` does."""
        bp = self.backpressure
        for i in late:
            it = taken[i]
            n = len(it.batch or ())
            if it.source is not None:
                it.source.health.drop("late", n)
            bp.dropped_late += n
        self._deliver(events)

    async def _run_pipeline(self) -> None:
        """Hand the queued batches to the pipeline thread - everything waiting, up to
        ``MAX_JOB_OBSERVATIONS``, in one job - and wait for it; its events come back through
        ``_deliver``. New activations get the loop to themselves (their packets written) before
        the next job starts competing for the interpreter."""
        while True:
            items = [await self.queue.get()]
            n = len(items[0].batch or ())
            while items[-1].batch is not None and n < MAX_JOB_OBSERVATIONS and not self.queue.empty():
                items.append(self.queue.get_nowait())
                n += len(items[-1].batch or ())
            oldest = time.monotonic() - items[0].t if items[0].source is not None else 0.0
            taken, end = self._take(items)
            if taken:
                self._last_obs_wall = time.monotonic()
                self._dispatched = False
                stride = self._shed_stride(oldest)
                batches = [it.batch for it in taken if it.batch is not None]
                # a live batch may also turn late while the job's earlier batches compute (a job of
                # several batches on a throttled CPU): checked again just before it is processed
                max_delay = self.settings.pipeline.max_delay_s
                due = [it.t + max_delay if it.source is not None and max_delay > 0 else math.inf for it in taken]
                late: list[int] = []
                after = [-math.inf] * len(taken)  # newest live event time after each batch of the job
                for i in range(len(taken) - 2, -1, -1):
                    it = taken[i + 1]
                    ts = it.batch[-1].ts if it.source is not None and it.batch else -math.inf
                    after[i] = max(after[i + 1], ts)
                await self.worker.call(
                    partial(self._process, batches, stride, due, late, after, max(it.n for it in taken) or -1),
                    deliver=partial(self._late_in_job, taken, late),
                )
                if self._dispatched:
                    await ContentService.let_dispatch_run()
            if end:
                self._pipeline_idle.set()
                return
            if self.queue.empty():
                self._pipeline_idle.set()
            else:
                self._pipeline_idle.clear()

    def _shed_stride(self, wait: float) -> int:
        """Load shedding (live batches only): the fix stride for the next job, from how long its oldest
        batch waited: the largest as soon as batches wait longer than ``pipeline.shed_after_s`` (a
        backlog grows fast on a throttled CPU), down one per job once they wait less than half of it;
        the pipeline caps it at ``localization.window_s`` ticks."""
        after = self.settings.pipeline.shed_after_s  # read each time: reloadable
        if after <= 0:
            self._stride = 1
        elif wait > after:
            self._stride = SHED_MAX_STRIDE
        elif wait < after / 2:
            self._stride = max(1, self._stride - 1)
        return self._stride

    def event_clock(self) -> Callable[[], float] | None:
        """Where event time comes from when nothing is heard: the live sources' clock (the wall
        clock for radios; a source may declare its own, like the simulator's, or sensor nodes fed by
        the simulator in the demo), the wall clock when they disagree, none for a replay (its end
        closes every visit)."""
        clocks = {src.capabilities.event_clock or time.time for src in self.sources if not src.capabilities.replay}
        if not clocks:
            return None
        return clocks.pop() if len(clocks) == 1 else time.time

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
                await self.worker.call(partial(self._advance, now), deliver=partial(self._deliver, now=now))
                if self.content is not None:
                    self.content.tick(now)

    async def _run_writer(self) -> None:
        """Commit pending events every ``flush_interval_s``. A disk that refuses them (full with
        nothing left to evict, or held by another process) does not stop the daemon: the events
        wait in RAM (bounded, lowest priority dropped first and counted) and the writer retries
        with a growing delay; one log line when it starts and one when it ends."""
        assert self.outbox is not None
        delay = self.settings.outbox.flush_interval_s
        next_space_check = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
            except (OutboxFullError, sqlite3.OperationalError) as e:
                self._refused(f"{type(e).__name__}: {e}")
                delay = min(5.0, delay * 2)
                continue
            delay = self.settings.outbox.flush_interval_s  # read each time: reloadable
            if self.outbox_refusing is not None:
                log.info("outbox.accepting_again", pending=len(self.pending), dropped=self.pending.dropped)
                self.outbox_refusing = None
            if time.monotonic() >= next_space_check:  # keep the disk state fresh while idle
                next_space_check = time.monotonic() + 1.0
                await self.outbox.check_space()

    @property
    def held_events(self) -> tuple[int, dict[str, int]]:
        """Events waiting in RAM for the outbox, and those dropped there by priority."""
        return len(self.pending), self.pending.dropped

    def _refused(self, reason: str) -> None:
        dropped = self.pending.drop_to(self.settings.outbox.ram_max_events)
        if self.outbox_refusing is None:
            log.error("outbox.refusing_writes", reason=reason, pending=len(self.pending))
            self.outbox_refusing = reason
        if dropped:
            log.debug("events dropped in RAM", dropped=dropped, pending=len(self.pending))

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
                self.pending.committed += len(chunk)
                self.committed_by_type.update(_event_type(e) for e in chunk)
                self.recent.extend(e for e in chunk if not isinstance(e, PositionFix))
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
            await asyncio.wait_for(
                self.queue.put(Queued(None, time.monotonic())), max(0.1, (t_end - time.monotonic()) / 4)
            )
            await asyncio.wait_for(self._pipeline_idle.wait(), max(0.1, (t_end - time.monotonic()) / 2))
        await self.worker.call(self._close_pipeline, deliver=self.pending.extend)
        if self.content is not None:  # in-flight dispatches report before the final flush
            await self.content.drain(max(0.1, (t_end - time.monotonic()) / 4))
        if self.outbox is not None:
            try:
                n = await self.flush()
                log.info("events committed", count=n)
            except (OutboxFullError, sqlite3.OperationalError) as e:  # counted at close (_final_flush)
                log.error("events not committed at drain", reason=str(e), pending=len(self.pending))
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
            self.settings.outbox_path,
            self.settings.gateway.id,
            max_bytes=self.settings.outbox.max_bytes,
            keep_free_bytes=self.settings.outbox.keep_free_bytes,
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
        self._loop = asyncio.get_running_loop()
        self.worker.start()
        sup = self.supervisor
        for src in self.sources:
            policy: Policy = "finite" if src.capabilities.finite else "restart"
            sup.add(TaskSpec(self._task_name(src), self._source_task(src), policy, "intake"))
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
        identity = self.content_identity or PresenceConsents(self.presence, self.event_clock() or time.time)
        self.content = await ContentService.open(
            self.settings, emit=self.pending.extend, dispatcher=dispatcher, identity=identity, reply=self._reply
        )
        host, port = local_broker_address(self.settings)  # the same rule as the sensor-node source
        client_id = f"{self.settings.gateway.id}-actors"
        self.supervisor.add(
            TaskSpec("actors-local", lambda: dispatcher.run_local(host, port, client_id), "restart", "egress")
        )

    # -- what the status page asks (gateway.runtime.status_provider.DaemonView) ------------------------

    def queue_event(self, event: EventBase) -> None:
        self.pending.append(event)

    @staticmethod
    def _task_name(src: Source) -> str:
        return f"source:{src.name}"

    async def restart_sources(self) -> list[str]:
        """Restart, through the supervisor, every running source that declares ``restartable``."""
        done = []
        for src in self.sources:
            if src.capabilities.restartable and self.supervisor.restart(self._task_name(src)):
                done.append(src.name)
        if done:
            log.info("sources restarted on request", sources=done)
        return done

    async def reload_config(self) -> ReloadResult:
        """Load the configuration again; apply the keys that can change live, name the others."""
        if self._reload_settings is None:
            return ReloadResult(False, errors=("this daemon was not started from a configuration it can read again",))
        result, settings = plan_reload(self.settings, self._reload_settings)
        if result.applied:
            self.settings = settings
            self.supervisor.settings = settings.supervisor
            if any(k.startswith("log.") for k in result.applied):
                configure_logging(settings.log.level, settings.log.format)
        log.info(
            "configuration reloaded" if result.ok else "configuration reload refused",
            applied=list(result.applied),
            needs_restart=list(result.needs_restart),
            errors=len(result.errors),
        )
        return result

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
        # the pipeline thread finishes what it was given (its events delivered) before the rest closes
        steps.append(("pipeline worker", self.worker.stop))
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
            try:
                await self.flush()
            except (OutboxFullError, sqlite3.OperationalError) as e:
                # the disk refused them to the end: lost with the process, and counted as such
                for ev in self.pending:
                    name = priority_of(ev).name.lower()
                    self.unsaved_at_exit[name] = self.unsaved_at_exit.get(name, 0) + 1
                log.error("events not saved at exit", reason=str(e), events=self.unsaved_at_exit)
                self.pending.clear()

    def _stats(self) -> dict[str, Any]:
        st = self.pipeline.stats
        return {
            "observations": st.observations,
            "fixes": st.fixes,
            "events": st.events,
            "dropped": st.dropped,
            "accounting": self.accounting(),
            "memory_trims": self.memory.runs,
            "memory_trimmed_mib": round(self.memory.returned_kib / 1024, 1),
        }

    def accounting(self) -> dict[str, Any]:
        """Where every event of this run went (docs/storage.md): ``added`` = committed + erased +
        dropped in RAM + unsaved at exit + still pending; the outbox's own counters say what
        became of committed ones (acknowledged, evicted by priority, dead-lettered, backlog)."""
        p = self.pending
        out: dict[str, Any] = {
            "added": p.added,
            "committed": p.committed,
            "erased": p.erased,
            "dropped_in_ram": dict(p.dropped),
            "unsaved_at_exit": dict(self.unsaved_at_exit),
            "pending": len(p),
        }
        if self.outbox is not None:
            ob = self.outbox.stats()
            out["outbox"] = {
                "last_seq": ob.last_seq,
                "appended": ob.appended,
                "acked": ob.acked,
                "backlog": ob.backlog,
                "evicted": ob.evicted,
                "evicted_by_priority": ob.evicted_by_priority,
                "dead_letters": ob.dead_letters,
                "disk": ob.disk_state,
            }
        return out


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
        return await Daemon(settings, layout, reload_settings=lambda: load_settings(args.config)).run()

    try:
        return asyncio.run(main())
    except (OSError, sqlite3.Error) as e:  # state dir / database unusable: say which, exit 1 for systemd
        log.error("gateway could not run", reason=f"{type(e).__name__}: {e}")
        return 1


def add_commands(sub: Any) -> None:
    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", "-c", type=Path, default=os.environ.get("GATEWAY_CONFIG"))
    run.set_defaults(func=_cmd_run)
