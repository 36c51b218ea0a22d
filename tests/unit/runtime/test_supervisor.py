import asyncio

import pytest

from gateway.config import SupervisorSettings
from gateway.runtime.supervisor import Supervisor, TaskSpec

FAST = SupervisorSettings(
    drain_deadline_s=1.0, restart_backoff_min_s=0.01, restart_backoff_max_s=0.05, max_restarts=3, restart_window_s=60
)


async def test_restart_policy_restarts_with_backoff_then_gives_up() -> None:
    calls = 0
    delays: list[float] = []

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    async def sleep(d: float) -> None:
        delays.append(d)

    sup = Supervisor(FAST, sleep=sleep)
    sup.add(TaskSpec("flaky", flaky, "restart"))
    rc = await asyncio.wait_for(sup.run(), 5)
    assert rc == 1
    assert calls == FAST.max_restarts + 1
    assert delays == [0.01, 0.02, 0.04]  # exponential, capped at 0.05 later
    assert sup.states["flaky"].state == "failed"
    assert "keeps failing" in (sup.stop_reason or "")


async def test_restart_recovers() -> None:
    calls = 0
    done = asyncio.Event()

    async def once_flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("transient")
        done.set()
        await asyncio.Event().wait()

    sup = Supervisor(FAST)
    sup.add(TaskSpec("t", once_flaky, "restart"))
    runner = asyncio.create_task(sup.run())
    await asyncio.wait_for(done.wait(), 5)
    assert sup.states["t"].restarts == 1 and sup.states["t"].state == "running"
    sup.request_stop("test")
    assert await asyncio.wait_for(runner, 5) == 0


async def test_fatal_task_brings_everything_down_cleanly_with_drain() -> None:
    drained: list[float] = []
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def fatal() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("broken invariant")

    async def drain(deadline: float) -> None:
        drained.append(deadline)

    sup = Supervisor(FAST, drain=drain)
    sup.add(TaskSpec("forever", forever, "restart"))
    sup.add(TaskSpec("fatal", fatal, "fatal"))
    assert await asyncio.wait_for(sup.run(), 5) == 1
    assert drained == [FAST.drain_deadline_s]
    assert cancelled.is_set()


async def test_finite_tasks_done_stops_with_zero() -> None:
    order: list[str] = []

    async def finite() -> None:
        await asyncio.sleep(0.01)
        order.append("finite-done")

    async def drain(deadline: float) -> None:
        order.append("drain")

    async def forever() -> None:
        await asyncio.Event().wait()

    sup = Supervisor(FAST, drain=drain)
    sup.add(TaskSpec("replay", finite, "finite", "intake"))
    sup.add(TaskSpec("egress", forever, "restart", "egress"))
    assert await asyncio.wait_for(sup.run(), 5) == 0
    assert order == ["finite-done", "drain"]


async def test_drain_stops_intake_first_and_respects_deadline() -> None:
    intake_cancelled_before_drain: list[bool] = []
    intake_task_done = asyncio.Event()

    async def intake() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            intake_task_done.set()

    async def slow_drain(deadline: float) -> None:
        await asyncio.sleep(0)
        intake_cancelled_before_drain.append(intake_task_done.is_set())
        await asyncio.sleep(30)

    s = FAST.model_copy(update={"drain_deadline_s": 0.2})
    sup = Supervisor(s, drain=slow_drain)
    sup.add(TaskSpec("src", intake, "restart", "intake"))
    runner = asyncio.create_task(sup.run())
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sup.request_stop("SIGTERM")
    assert await asyncio.wait_for(runner, 5) == 0
    assert loop.time() - t0 < 2.0
    assert intake_cancelled_before_drain == [True]


async def test_second_signal_forces_exit_without_drain() -> None:
    drain_started = asyncio.Event()

    async def slow_drain(deadline: float) -> None:
        drain_started.set()
        await asyncio.sleep(30)

    async def forever() -> None:
        await asyncio.Event().wait()

    s = FAST.model_copy(update={"drain_deadline_s": 60})
    sup = Supervisor(s, drain=slow_drain)
    sup.add(TaskSpec("t", forever, "restart"))
    runner = asyncio.create_task(sup.run())
    await asyncio.sleep(0.01)
    sup.request_stop("first")
    await asyncio.wait_for(drain_started.wait(), 5)
    sup.force_stop()
    assert await asyncio.wait_for(runner, 5) == 1


async def test_duplicate_names_rejected() -> None:
    sup = Supervisor(FAST)
    sup.add(TaskSpec("a", asyncio.sleep, "restart"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        sup.add(TaskSpec("a", asyncio.sleep, "restart"))  # type: ignore[arg-type]


async def test_restart_on_request_releases_first_and_is_not_a_failure() -> None:
    """The status page's "Restart scanner": the run is cancelled (its finally runs) and started again
    at once; other tasks, the failure window and the exit code are untouched."""
    log: list[str] = []
    started = asyncio.Event()

    async def scanner() -> None:
        log.append("start")
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            log.append("released")

    async def other() -> None:
        await asyncio.Event().wait()

    async def replay() -> None:
        await asyncio.Event().wait()

    sup = Supervisor(FAST, stop_when_finite_done=False)
    sup.add(TaskSpec("scanner", scanner, "restart", "intake"))
    sup.add(TaskSpec("pipeline", other, "fatal"))
    sup.add(TaskSpec("replay", replay, "finite", "intake"))
    runner = asyncio.create_task(sup.run())
    await asyncio.wait_for(started.wait(), 5)
    started.clear()
    assert sup.restart("scanner")
    await asyncio.wait_for(started.wait(), 5)
    assert log == ["start", "released", "start"]
    st = sup.states["scanner"]
    assert st.restarts == 1 and st.state == "running" and not st.failures and st.last_error is None
    assert not sup.restart("pipeline") and not sup.restart("replay") and not sup.restart("nope")
    assert sup.states["pipeline"].state == "running" and not sup.stopping
    sup.request_stop("test")
    assert not sup.restart("scanner")  # not while stopping
    assert await asyncio.wait_for(runner, 5) == 0
    assert log[-1] == "released"


async def test_each_failure_is_one_log_line_without_traceback() -> None:
    """A task failing at every restart logs one line per failure (type, message, where) - not a
    multi-line traceback each time; the traceback is there at debug level only."""
    import io
    import json

    from gateway.log import configure_logging

    async def broken() -> None:
        raise OSError("replay file vanished")

    async def sleep(_d: float) -> None:
        return None

    for level, want_traceback in (("info", False), ("debug", True)):
        buf = io.StringIO()
        configure_logging(level, "json", stream=buf)
        try:
            sup = Supervisor(FAST, sleep=sleep)
            sup.add(TaskSpec("source:replay", broken, "restart"))
            assert await asyncio.wait_for(sup.run(), 5) == 1
        finally:
            configure_logging("info", "json")
        lines = [json.loads(ln) for ln in buf.getvalue().splitlines()]
        failed = [r for r in lines if r["event"] == "task failed"]
        assert len(failed) == FAST.max_restarts + 1
        assert all(r["error"].startswith("OSError: replay file vanished at test_supervisor.py:") for r in failed)
        assert all(r["level"] == "error" and "exception" not in r for r in failed)
        traces = [r for r in lines if "exception" in r]
        assert bool(traces) == want_traceback
        if want_traceback:
            assert "Traceback (most recent call last)" in traces[0]["exception"]
