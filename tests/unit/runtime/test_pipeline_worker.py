"""The pipeline off the event loop (issue 22): the worker thread, and the daemon around it.

* ``PipelineWorker``: jobs in order, results delivered on the loop even to a caller that left,
  failures to the caller, inline before start / after stop, load accounted.
* A real ``Daemon`` (SQLite outbox, every task under the supervisor) computes the same events and
  fixes as the pipeline called directly, batch by batch, on the same observations.
* Every touch of pipeline state - batches, ``advance``, ``close``, opt-out, consent, a sensor
  going quiet, the status page's copy - happens on one thread, not the loop's (fails on the old
  daemon, which ran the pipeline on the loop).
* The event loop keeps its timers while a pipeline job computes for 0.4 s (the old daemon: the
  whole job's length), and an overloaded pipeline drops late live batches, counted on the source,
  the status snapshot and /metrics.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings, load_settings
from gateway.identity.subjects import IdentityResolver
from gateway.layout import Layout, load_layout
from gateway.models import Observation, SourceHealth
from gateway.pipeline import Pipeline
from gateway.presence.engine import PresenceEngine
from gateway.presence.qualification import Qualifier
from gateway.runtime.daemon import Daemon, PresenceConsents
from gateway.runtime.status_provider import DaemonMetricsSampler, DaemonStatusProvider
from gateway.runtime.worker import PipelineWorker
from gateway.sim.store import StoreSimulator
from gateway.sources.base import RECORDING, Capabilities
from gateway.status.metrics import GatewayMetrics
from tests.conftest import LAYOUT, free_port

# -- the worker alone ---------------------------------------------------------------------------------


async def test_jobs_run_in_order_on_one_thread_and_deliver_on_the_loop() -> None:
    w = PipelineWorker()
    loop_thread = threading.get_ident()
    ran: list[tuple[int, int]] = []
    delivered: list[tuple[int, int]] = []
    w.start()
    try:

        def job(i: int) -> int:
            ran.append((i, threading.get_ident()))
            time.sleep(0.002)
            return i * 10

        calls = [
            asyncio.create_task(
                w.call(lambda i=i: job(i), deliver=lambda r: delivered.append((r, threading.get_ident())))
            )
            for i in range(20)
        ]
        await asyncio.sleep(0)  # the tasks submit their jobs, in order
        w.post(lambda: job(99))
        results = await asyncio.gather(*calls)
        assert results == [i * 10 for i in range(20)]
        await w.call(lambda: None)
        assert [i for i, _ in ran] == [*range(20), 99]  # submission order
        assert {t for _, t in ran} == {w.ident} and w.ident != loop_thread
        assert delivered == [(i * 10, loop_thread) for i in range(20)]  # on the loop, in order
        assert w.stats.jobs == 22 and w.stats.waiting == 0
        assert w.stats.busy_s >= 21 * 0.002 and w.stats.max_job_s >= 0.002
    finally:
        await w.stop()
    assert not w.running


async def test_a_cancelled_caller_still_gets_its_results_delivered() -> None:
    w = PipelineWorker()
    w.start()
    gate = threading.Event()
    delivered: list[list[str]] = []
    try:
        task = asyncio.create_task(w.call(lambda: (gate.wait(5), ["event"])[1], deliver=delivered.append))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await w.call(lambda: None)  # after the cancelled job
        assert delivered == [["event"]]
    finally:
        gate.set()
        await w.stop()


async def test_failures_reach_the_caller_and_the_thread_keeps_serving() -> None:
    w = PipelineWorker()
    w.start()
    try:

        def boom() -> None:
            raise ValueError("bad batch")

        with pytest.raises(ValueError, match="bad batch"):
            await w.call(boom)
        w.post(boom)  # nobody waits: logged
        assert await w.call(lambda: 7) == 7
    finally:
        await w.stop()


async def test_a_job_hands_what_it_has_to_the_loop_before_it_ends() -> None:
    """``emit`` from inside a job delivers on the loop at once, before the job's own result."""
    w = PipelineWorker()
    loop_thread = threading.get_ident()
    gate = threading.Event()
    got: list[tuple[str, int]] = []

    def note(r: str) -> None:
        got.append((r, threading.get_ident()))

    def job() -> str:
        w.emit(note, "first tick")
        gate.wait(5)  # the rest of the job, still computing
        return "rest"

    w.start()
    try:
        task = asyncio.create_task(w.call(job, deliver=note))
        for _ in range(500):  # bounded: 5 s
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [("first tick", loop_thread)] and not task.done()
        gate.set()
        assert await task == "rest"
        assert got == [("first tick", loop_thread), ("rest", loop_thread)]
    finally:
        gate.set()
        await w.stop()
    got.clear()
    w.emit(note, "inline")  # no thread: at once, on the caller's thread
    assert got == [("inline", loop_thread)]


async def test_inline_before_start_and_after_stop() -> None:
    w = PipelineWorker()
    me = threading.get_ident()
    assert await w.call(threading.get_ident) == me
    w.start()
    assert await w.call(threading.get_ident) != me
    await w.stop()
    got: list[int] = []
    w.post(lambda: got.append(threading.get_ident()))
    assert got == [me] and await w.call(threading.get_ident) == me


# -- the daemon ------------------------------------------------------------------------------------------


class ListSource:
    """Given batches, as a recording (waits when the queue is full) or as a live radio."""

    def __init__(
        self,
        batches: list[list[Observation]],
        *,
        live: bool = False,
        pace_s: float = 0.0,
        release: asyncio.Event | None = None,
    ) -> None:
        self.release = release  # a recording ends only once this is set
        self.name = "list"
        self.health = SourceHealth(self.name)
        self._batches = batches
        self._live = live
        self._pace_s = pace_s
        self.now = batches[0][0].ts if batches and batches[0] else 0.0

    @property
    def capabilities(self) -> Capabilities:
        # live: event time from the data's own clock (visits time out on it, not on the wall clock)
        return Capabilities(event_clock=lambda: self.now) if self._live else RECORDING

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        self.health.state = "running"
        for b in self._batches:
            self.now = b[-1].ts
            self.health.observations += len(b)
            yield b
            await asyncio.sleep(self._pace_s)
        if self._live:
            await asyncio.Event().wait()  # a radio does not end
        if self.release is not None:
            await self.release.wait()


def sim_batches(seconds: float, seed: int = 3, shoppers_per_hour: float = 1500) -> list[list[Observation]]:
    s = load_settings(simulator={"seed": seed, "shoppers_per_hour": shoppers_per_hour})
    sim = StoreSimulator(load_layout(LAYOUT), s.simulator)
    out = []
    for k in range(1, int(seconds / s.simulator.tick_s) + 1):
        b = sim.step(s.simulator.start_ts + k * s.simulator.tick_s)
        if b:
            out.append(b)
    return out


def copies(batches: list[list[Observation]]) -> list[list[Observation]]:
    return [[replace(o) for o in b] for b in batches]  # the pipeline rewrites o.device


def daemon_settings(tmp_path: Path, **extra: Any) -> Settings:
    # the uplink points at a closed loopback port: committed events stay in the outbox to be read
    # (and the drain does not wait long for it)
    extra.setdefault("supervisor", {"drain_deadline_s": 3})
    return load_settings(
        paths={"state_dir": str(tmp_path / "state")},
        mqtt={"host": "127.0.0.1", "port": free_port(), "tls": False},
        status={"enabled": False},
        content={"enabled": False},
        **extra,
    )


def reference_pipeline(daemon: Daemon, settings: Settings, layout: Layout) -> Pipeline:
    """The pipeline the daemon builds, on the daemon's pseudonym keys, called directly."""
    resolver = IdentityResolver(
        daemon.presence.keyring, optout_key=bytes(32), consent_scope=settings.privacy.consent_scope
    )
    engine = PresenceEngine(
        layout, settings.presence, settings.gateway.store_id, resolver.subject_kind, qualifier=Qualifier()
    )
    return Pipeline(settings, layout, identity=resolver, presence=engine)


def outbox_events(settings: Settings) -> list[dict[str, Any]]:
    with sqlite3.connect(settings.outbox_path) as db:
        rows = db.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    out = []
    for (payload,) in rows:
        d = json.loads(payload)["event"]  # the uplink envelope around the event
        d.pop("event_id")
        out.append(d)
    return out


async def test_the_daemon_computes_what_the_pipeline_computes_directly(tmp_path: Path) -> None:
    """Same fixes (published as fix events) and presence events, in the same order, through the
    queue, coalesced jobs and the worker thread as from ``Pipeline.process`` batch by batch."""
    batches = sim_batches(240)
    settings = daemon_settings(tmp_path, presence={"publish_fixes": True})
    layout = load_layout(LAYOUT)
    daemon = Daemon(settings, layout)
    ref = reference_pipeline(daemon, settings, layout)  # runs first: the keyring's keys exist after
    want = []
    for b in copies(batches):
        want += ref.process(b)
    want += ref.close()
    expected = [e.model_dump(mode="json", exclude={"event_id"}) for e in want]
    assert sum(e["type"] == "fix" for e in expected) > 1000
    assert {"visit.started", "zone.entered", "zone.left", "visit.ended"} <= {e["type"] for e in expected}

    release = asyncio.Event()
    daemon.sources = [ListSource(copies(batches), release=release)]
    jobs: list[int] = []
    process = daemon._process

    def counting(b: list[list[Observation]], *a: Any) -> Any:
        jobs.append(len(b))
        return process(b, *a)

    daemon._process = counting  # type: ignore[method-assign]
    run = asyncio.create_task(daemon.run())
    end = time.monotonic() + 120
    while daemon.pipeline.stats.observations < ref.stats.observations:  # counted on the pipeline thread
        assert time.monotonic() < end and not run.done()
        await asyncio.sleep(0.05)
    release.set()  # the recording ends with everything processed: the drain does not cut it short
    assert await asyncio.wait_for(run, 60) == 0
    got = outbox_events(settings)
    assert got == json.loads(json.dumps(expected))
    assert daemon.pipeline.stats.observations == ref.stats.observations
    assert daemon.pipeline.stats.fixes == ref.stats.fixes and daemon.pipeline.stats.events == ref.stats.events
    assert sum(jobs) == len(batches) and max(jobs) > 1  # batches that piled up went in one job


async def test_pipeline_state_is_touched_on_one_thread_only(tmp_path: Path) -> None:
    """Batches, the clock's advance, opt-outs, consents, sensors going quiet, the status page's
    copy and the final close all run on the pipeline thread while the page reads on the loop."""
    batches = sim_batches(120, seed=5, shoppers_per_hour=3000)
    settings = daemon_settings(tmp_path)
    layout = load_layout(LAYOUT)
    daemon = Daemon(settings, layout)
    src = ListSource(copies(batches), live=True, pace_s=0.002)
    daemon.sources = [src]
    threads: dict[str, set[int]] = {}

    def spy(name: str, obj: Any, attr: str) -> None:
        fn = getattr(obj, attr)

        def wrapped(*a: Any, **k: Any) -> Any:
            threads.setdefault(name, set()).add(threading.get_ident())
            return fn(*a, **k)

        setattr(obj, attr, wrapped)

    p = daemon.pipeline
    spy("process", p, "process")
    spy("advance", p, "advance")
    spy("close", p, "close")
    spy("localizer.forget", p.localizer, "forget")
    spy("localizer.set_sensor_active", p.localizer, "set_sensor_active")
    spy("resolver.add_optout", daemon.presence.resolver, "add_optout")
    spy("resolver.put_consent", daemon.presence.resolver, "put_consent")
    spy("resolver.revoke_consent", daemon.presence.resolver, "revoke_consent")
    spy("engine.forget", daemon.presence.engine, "forget")
    spy("qualifier.prune", daemon.presence.qualifier, "prune")
    spy("stats (page copy)", daemon, "_refresh_view")
    provider = DaemonStatusProvider(daemon)
    metrics = GatewayMetrics()
    sampler = DaemonMetricsSampler(daemon, metrics)
    run = asyncio.create_task(daemon.run())
    try:
        loop_end = asyncio.get_running_loop().time() + 60
        while not (daemon.runtime.last_fixes and p.stats.fixes > 500):
            assert asyncio.get_running_loop().time() < loop_end
            provider.snapshot()  # the page reads while the pipeline computes
            sampler.sample()
            await asyncio.sleep(0.01)
        victim = daemon.runtime.last_fixes[0].device
        raw = next(o.device for b in batches for o in b)  # a raw address the simulator used
        assert await daemon.presence.add_optout(raw, src.now) >= 0
        pc = PresenceConsents(daemon.presence, lambda: src.now)
        await pc.add_consent("cust-1", irk=bytes(16), app_token=None, scope=frozenset({"presence"}))
        await pc.revoke_consent("cust-1")
        await daemon.presence.maintain(src.now)
        daemon._sensor_state("n11", False)
        daemon._sensor_state("n11", True)
        # erase a subject the pipeline is tracking right now, through the resolver's own path
        await daemon.presence.run_owned(lambda: daemon.presence.engine.forget(victim))
        # the source has nothing more: the clock advances event time through the silence
        while "advance" not in threads:
            assert asyncio.get_running_loop().time() < loop_end
            provider.snapshot()
            await asyncio.sleep(0.05)
        snap = provider.snapshot()
        assert snap.pipeline["busy_pct"] >= 0 and snap.extra["fixes"] > 0
    finally:
        daemon.supervisor.request_stop("test over")
        assert await asyncio.wait_for(run, 60) == 0
    loop_thread = threading.get_ident()
    assert daemon.worker.ident is None  # stopped
    seen = set().union(*threads.values())
    assert len(seen) == 1 and loop_thread not in seen, {k: len(v) for k, v in threads.items()}
    assert {
        "process",
        "advance",
        "close",
        "resolver.add_optout",
        "engine.forget",
        "localizer.set_sensor_active",
    } <= set(threads)
    assert {"resolver.put_consent", "resolver.revoke_consent", "qualifier.prune", "stats (page copy)"} <= set(threads)


def busy_python(seconds: float) -> int:
    """Pure-Python work (holds the interpreter between switch intervals)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def test_the_loop_keeps_its_timers_while_a_job_computes(tmp_path: Path) -> None:
    """A 1 s pipeline job (pure Python, the worst case for the GIL) while a timer ticks every
    10 ms on the loop: the timer keeps running and is never late by half the job. On the old
    daemon the job ran on the loop and the timer waited for all of it (a lag of >= 1 s). The
    margin is wide on purpose: on a loaded shared box a switch can take a few hundred ms."""
    settings = daemon_settings(tmp_path)
    daemon = Daemon(settings, load_layout(LAYOUT))
    batches = sim_batches(5)
    daemon.sources = [ListSource(copies(batches), live=True)]
    real = daemon.pipeline.process
    slow = {"left": 1}

    def process(batch: list[Observation]) -> Any:
        if slow["left"]:
            slow["left"] -= 1
            busy_python(1.0)
        return real(batch)

    daemon.pipeline.process = process  # type: ignore[method-assign]
    run = asyncio.create_task(daemon.run())
    lags: list[float] = []
    try:
        end = time.monotonic() + 20
        while daemon.worker.stats.jobs == 0 and daemon.worker.stats.waiting == 0:
            assert time.monotonic() < end
            await asyncio.sleep(0.001)
        t_start = time.monotonic()
        while time.monotonic() - t_start < 1.2:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)
    finally:
        daemon.supervisor.request_stop("test over")
        assert await asyncio.wait_for(run, 30) == 0
    assert daemon.worker.stats.max_job_s >= 1.0
    assert len(lags) >= 4  # the loop ran all along (~100 rounds on an idle box, fewer when loaded)
    assert max(lags) < 0.5, f"loop late by {max(lags) * 1000:.0f} ms while a job computed"


async def test_a_ticks_events_reach_the_loop_before_the_rest_of_its_job(tmp_path: Path) -> None:
    """Batches that piled up go in one job; the events of a batch (its fix ticks) are on the loop,
    pending for the outbox and content, while a later batch of the job still computes - not when
    the whole job ends (as before: an activation waited for the batches queued behind it)."""
    settings = daemon_settings(tmp_path, presence={"publish_fixes": True})
    daemon = Daemon(settings, load_layout(LAYOUT))
    batches = sim_batches(30)
    first, rest = batches[:-1], batches[-1]
    gate = threading.Event()
    real = daemon.pipeline.process

    def process(batch: list[Observation]) -> Any:
        if batch is rest:
            gate.wait(5)  # the job's last batch: still computing
        return real(batch)

    daemon.pipeline.process = process  # type: ignore[method-assign]
    daemon.worker.start()
    try:
        job = asyncio.create_task(daemon.worker.call(partial(daemon._process, [*first, rest]), deliver=daemon._deliver))
        for _ in range(500):  # bounded: 5 s
            if daemon.pipeline.stats.observations == sum(map(len, first)) and daemon.pending:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # anything handed over is on the loop by now
        early = len(daemon.pending)
        assert early > 0 and not job.done()
        assert sum(e.type == "fix" for e in daemon.pending) > 10
        gate.set()
        await job
        assert len(daemon.pending) >= early
    finally:
        gate.set()
        await daemon.worker.stop()


async def _drain_slowly(
    daemon: Daemon, src: Any, batches: list[list[Observation]], note: Callable[[list[Observation]], object]
) -> tuple[Any, GatewayMetrics]:
    """Run ``daemon`` until ``src`` has handed over ``batches`` and its pipeline is idle, its pipeline
    20 ms a batch (a board far slower than the radios; ``note(batch)`` as each starts); then the
    status snapshot and the metrics sampled from it."""
    real = daemon.pipeline.process

    def slow(batch: list[Observation]) -> Any:
        note(batch)
        time.sleep(0.02)
        return real(batch)

    daemon.pipeline.process = slow  # type: ignore[method-assign]
    provider = DaemonStatusProvider(daemon)
    metrics = GatewayMetrics()
    sampler = DaemonMetricsSampler(daemon, metrics)
    run = asyncio.create_task(daemon.run())
    try:
        end = time.monotonic() + 30
        # handed over, queue empty, and no job in flight: a job's batches may still turn late inside it
        while (
            src.health.observations < sum(len(b) for b in batches)
            or daemon.backpressure.queued_batches
            or not daemon._pipeline_idle.is_set()
        ):
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
        sampler.sample()
        snap = provider.snapshot()
    finally:
        daemon.supervisor.request_stop("test over")
        assert await asyncio.wait_for(run, 30) == 0
    return snap, metrics


async def test_late_live_batches_are_dropped_and_counted(tmp_path: Path) -> None:
    """An overloaded pipeline: live batches that waited longer than pipeline.max_delay_s are
    dropped, counted on the source (``late``), in the status snapshot and on /metrics."""
    settings = daemon_settings(tmp_path, pipeline={"max_delay_s": 0.05})
    daemon = Daemon(settings, load_layout(LAYOUT))
    batches = sim_batches(30)
    handed: dict[int, float] = {}  # id(batch) -> when the source handed it over

    class Noting(ListSource):
        async def batches(self) -> AsyncGenerator[list[Observation], None]:
            async for b in super().batches():
                handed[id(b)] = time.monotonic()
                yield b

    src = Noting(copies(batches), live=True, pace_s=0.001)
    daemon.sources = [src]
    started: list[float] = []  # how long each processed batch had waited when it started
    snap, metrics = await _drain_slowly(
        daemon, src, batches, lambda batch: started.append(time.monotonic() - handed[id(batch)])
    )
    late = src.health.dropped.get("late", 0)
    bp = daemon.backpressure
    assert late > 0 and bp.dropped_late == late
    assert daemon.pipeline.stats.observations + late + src.health.dropped.get("backpressure", 0) == sum(
        len(b) for b in batches
    )
    assert snap.pipeline["dropped_late"] == late and snap.pipeline["max_wait_s"] > 0.05
    # late also inside a job: a batch never starts after max_delay_s, however many batches its job
    # holds (it started up to ~1 s late when only the queue was checked)
    assert started and max(started) < 0.05 + 0.25, max(started)
    text = metrics.render().decode()
    assert f'gateway_drops_total{{reason="late"}} {float(late)}' in text
    assert "gateway_pipeline_queue_wait_seconds_count" in text and "gateway_pipeline_busy_ratio" in text


async def test_an_overloaded_pipeline_sheds_fix_ticks_visibly(tmp_path: Path) -> None:
    """Live batches waiting longer than pipeline.shed_after_s: fixes on every 3rd tick only (then
    every 2nd as the queue empties), counted as ``fix_tick_shed`` in the pipeline's drops, the
    status snapshot and /metrics; no observation is lost to it (max_delay_s 0: none dropped late)."""
    settings = daemon_settings(tmp_path, pipeline={"max_delay_s": 0, "shed_after_s": 0.01})
    daemon = Daemon(settings, load_layout(LAYOUT))
    batches = sim_batches(30)
    src = ListSource(copies(batches), live=True, pace_s=0.001)
    daemon.sources = [src]
    strides: list[int] = []
    snap, metrics = await _drain_slowly(daemon, src, batches, lambda _: strides.append(daemon.pipeline.fix_stride))
    shed = daemon.pipeline.stats.dropped.get("fix_tick_shed", 0)
    assert shed > 0 and max(strides) == 3 and strides[0] == 1
    assert daemon.pipeline.stats.observations + src.health.dropped.get("backpressure", 0) == sum(
        len(b) for b in batches
    )
    assert snap.extra["dropped"]["fix_tick_shed"] > 0  # the status page's drop counts
    assert 'gateway_drops_total{reason="fix_tick_shed"}' in metrics.render().decode()


def test_the_shed_stride_follows_the_queue_wait(tmp_path: Path) -> None:
    daemon = Daemon(daemon_settings(tmp_path, pipeline={"shed_after_s": 0.05}), load_layout(LAYOUT))
    assert [daemon._shed_stride(w) for w in (0.01, 0.06, 0.2, 0.04, 0.02, 0.06, 0.01, 0.01, 0.0)] == [
        1, 3, 3, 3, 2, 3, 2, 1, 1
    ]  # fmt: skip
    daemon._shed_stride(1.0)
    daemon.settings = daemon_settings(tmp_path, pipeline={"shed_after_s": 0})
    assert daemon._shed_stride(1.0) == 1  # 0: never


def test_every_read_of_the_page_goes_through_the_copy() -> None:
    """The status side's view of the daemon has no live pipeline to read (mypy would flag one)."""
    from gateway.runtime.status_provider import DaemonView

    assert "pipeline" not in DaemonView.__dict__ and "pipeline_view" in DaemonView.__dict__


def test_load_meter_reports_the_share_of_the_last_window() -> None:
    from gateway.runtime.status_provider import LoadMeter
    from gateway.runtime.worker import WorkerStats

    w = WorkerStats()
    m = LoadMeter(window_s=1.0)
    m.update(w, now=100.0)
    w.busy_s, w.cpu_s = 0.25, 0.2
    m.update(w, now=100.5)  # shorter than the window: nothing new yet
    assert (m.busy_pct, m.cpu_pct) == (0.0, 0.0)
    m.update(w, now=101.0)
    assert (m.busy_pct, m.cpu_pct) == (25.0, 20.0)
    w.busy_s += 3.0  # more than the wall time (clock granularity): capped
    m.update(w, now=102.0)
    assert m.busy_pct == 100.0


@pytest.mark.parametrize("shed_after_s", [60.0, 0.0])
async def test_a_pipeline_behind_its_live_input_sheds_ticks_already_superseded(
    tmp_path: Path, shed_after_s: float
) -> None:
    """A slow pipeline (20 ms a batch) behind a live source: a fix tick whose successor is already
    due in batches waiting behind it is shed (``Pipeline.horizon``), counted as ``fix_tick_shed``,
    though no batch waited ``pipeline.shed_after_s`` (60 s: the fix stride stays 1); no observation
    is lost to it. ``shed_after_s`` 0 turns shedding off, this kind too. (The old daemon computed
    every tick until batches had waited shed_after_s.) Recordings never shed: the test above."""
    settings = daemon_settings(tmp_path, pipeline={"max_delay_s": 0, "shed_after_s": shed_after_s})
    daemon = Daemon(settings, load_layout(LAYOUT))
    batches = sim_batches(30)
    src = ListSource(copies(batches), live=True, pace_s=0.001)
    daemon.sources = [src]
    strides: list[int] = []
    snap, _ = await _drain_slowly(daemon, src, batches, lambda _: strides.append(daemon.pipeline.fix_stride))
    shed = daemon.pipeline.stats.dropped.get("fix_tick_shed", 0)
    assert set(strides) == {1}
    assert daemon.pipeline.stats.observations + src.health.dropped.get("backpressure", 0) == sum(
        len(b) for b in batches
    )
    if shed_after_s:
        assert shed > 0 and snap.extra["dropped"]["fix_tick_shed"] == shed
    else:
        assert shed == 0


async def test_a_job_waits_for_the_loop_to_settle_what_it_handed_over() -> None:
    """``emit(..., settle=...)``: the job goes on only once the loop has delivered and run
    ``settle`` (the activations it started writing their packets), ``wait_s`` at most - the loop
    does not have to win the interpreter back from a computing job step by step."""
    w = PipelineWorker()
    order: list[str] = []

    async def settle() -> None:
        await asyncio.sleep(0.05)  # a dispatch that takes a while
        order.append("settled")

    def job() -> None:
        w.emit(order.append, "delivered", settle=settle, wait_s=5.0)
        order.append("job goes on")
        w.emit(order.append, "bounded", settle=lambda: asyncio.sleep(5), wait_s=0.05)
        order.append("not held longer than wait_s")

    w.start()
    try:
        t0 = time.monotonic()
        await w.call(job)
        assert time.monotonic() - t0 < 4
        assert order == ["delivered", "settled", "job goes on", "bounded", "not held longer than wait_s"]
    finally:
        await w.stop()
    pending = list(w._settling)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
