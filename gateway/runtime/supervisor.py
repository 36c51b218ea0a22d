"""One supervisor owns every task of the daemon (asyncio.TaskGroup).

Each task has a policy:

* ``restart``: an exception is logged and the task restarted with exponential backoff; more than
  ``max_restarts`` failures within ``restart_window_s`` escalate to a clean shutdown (exit 1).
* ``fatal``: an exception brings the daemon down cleanly (drain, then exit 1).
* ``finite``: the task may end normally (a replay that reached the end of its file); when every
  finite task has ended and ``stop_when_finite_done`` is set, the daemon drains and exits 0.

``restart(name)`` restarts a running ``restart`` task now (the status page's "Restart scanner"):
its current run is cancelled (its ``finally`` blocks run) and it starts again at once; that is
counted in ``restarts`` but not as a failure.

Shutdown: ``request_stop()`` (first SIGTERM/SIGINT) runs the drain callback within the drain
deadline, then cancels every task; a second signal cancels everything at once without draining.
Time comes from an injectable monotonic clock; sleeping is injectable too, for tests.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.backoff import Backoff
from gateway.config import SupervisorSettings
from gateway.log import describe_exception, get_logger

log = get_logger(__name__)

Policy = Literal["restart", "fatal", "finite"]


@dataclass
class TaskSpec:
    name: str
    factory: Callable[[], Awaitable[None]]
    policy: Policy = "restart"
    # live tasks (sources, pipeline) are cancelled first on drain; others (outbox, uplink) last
    stage: Literal["intake", "core", "egress"] = "core"


@dataclass
class TaskState:
    name: str
    policy: Policy
    state: str = "pending"  # pending | running | backoff | done | failed | cancelled
    restarts: int = 0
    last_error: str | None = None
    failures: deque[float] = field(default_factory=deque)


class Supervisor:
    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        drain: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        stop_when_finite_done: bool = True,
    ) -> None:
        self.settings = settings
        self._drain = drain
        self._clock = clock
        self._sleep = sleep
        self._stop_when_finite_done = stop_when_finite_done
        self._specs: list[TaskSpec] = []
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, asyncio.Future[None]] = {}  # the current run of each task
        self._restart_requested: set[str] = set()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._forced = False
        self.exit_code = 0
        self.stop_reason: str | None = None

    def add(self, spec: TaskSpec) -> None:
        if spec.name in self.states:
            raise ValueError(f"duplicate task name {spec.name!r}")
        self._specs.append(spec)
        self.states[spec.name] = TaskState(spec.name, spec.policy)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, reason: str = "requested", exit_code: int | None = None) -> None:
        if exit_code is not None and exit_code > self.exit_code:
            self.exit_code = exit_code
        if self._stop.is_set():
            return
        self.stop_reason = reason
        log.info("shutdown requested", reason=reason)
        self._stop.set()

    def force_stop(self) -> None:
        """Second signal: cancel everything now, no drain."""
        self._forced = True
        self.exit_code = max(self.exit_code, 1)
        log.warning("forced shutdown: cancelling all tasks without draining")
        self._stop.set()
        for t in self._tasks.values():
            t.cancel()
        if self._shutdown_task is not None:
            self._shutdown_task.cancel()

    def restart(self, name: str) -> bool:
        """Restart task ``name`` now; False when it is not a running ``restart`` task."""
        run = self._runs.get(name)
        st = self.states.get(name)
        if run is None or run.done() or st is None or st.policy != "restart" or st.state != "running":
            return False
        if self._stop.is_set():
            return False
        self._restart_requested.add(name)
        run.cancel()
        return True

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_signal(signame: str) -> None:
            if self._stop.is_set():
                self.force_stop()
            else:
                self.request_stop(f"signal {signame}")

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)

    async def _guard(self, spec: TaskSpec) -> None:
        st = self.states[spec.name]
        me = asyncio.current_task()
        while True:
            st.state = "running"
            run = self._runs[spec.name] = asyncio.ensure_future(spec.factory())
            if isinstance(run, asyncio.Task):
                run.set_name(f"{spec.name}:run")
            try:
                await run
            except asyncio.CancelledError:
                if spec.name in self._restart_requested and me is not None and not me.cancelling():
                    self._restart_requested.discard(spec.name)
                    st.restarts += 1
                    log.info("task restarted on request", task=spec.name, restarts=st.restarts)
                    continue
                st.state = "cancelled"
                raise
            except Exception as e:
                st.last_error = f"{type(e).__name__}: {e}"
                # one line per failure (it repeats at every restart); the traceback only at debug level
                log.error("task failed", task=spec.name, error=describe_exception(e), policy=spec.policy)
                log.debug("task failed: traceback", task=spec.name, exc_info=e, traceback=True)
                if spec.policy == "fatal" or self._stop.is_set():
                    st.state = "failed"
                    self.request_stop(f"task {spec.name} failed", exit_code=1)
                    return
                now = self._clock()
                st.failures.append(now)
                while st.failures and st.failures[0] < now - self.settings.restart_window_s:
                    st.failures.popleft()
                if len(st.failures) > self.settings.max_restarts:
                    st.state = "failed"
                    self.request_stop(f"task {spec.name} keeps failing", exit_code=1)
                    return
                backoff = Backoff(self.settings.restart_backoff_min_s, self.settings.restart_backoff_max_s)
                delay = backoff.delay(len(st.failures) - 1)  # failures within the window
                st.state = "backoff"
                st.restarts += 1
                log.info("restarting task", task=spec.name, delay_s=round(delay, 3), restarts=st.restarts)
                await self._sleep(delay)
                continue
            st.state = "done"
            if spec.policy != "finite":
                if not self._stop.is_set():
                    log.warning("task ended unexpectedly", task=spec.name)
                    self.request_stop(f"task {spec.name} ended", exit_code=1)
                return
            finite = [s for s in self._specs if s.policy == "finite"]
            if self._stop_when_finite_done and all(self.states[s.name].state == "done" for s in finite):
                self.request_stop("all finite tasks done")
            return

    async def _shutdown(self) -> None:
        await self._stop.wait()
        if not self._forced:
            # stop intake first so nothing new arrives, then let core/egress drain
            for spec in self._specs:
                if spec.stage == "intake":
                    self._tasks[spec.name].cancel()
            if self._drain is not None:
                try:
                    await asyncio.wait_for(self._drain(self.settings.drain_deadline_s), self.settings.drain_deadline_s)
                except TimeoutError:
                    log.warning("drain deadline exceeded", deadline_s=self.settings.drain_deadline_s)
                except Exception as e:
                    log.error("drain failed", error=f"{type(e).__name__}: {e}")
                    self.exit_code = max(self.exit_code, 1)
        for t in self._tasks.values():
            t.cancel()

    async def run(self) -> int:
        async with asyncio.TaskGroup() as tg:
            for spec in self._specs:
                self._tasks[spec.name] = tg.create_task(self._guard(spec), name=spec.name)
            self._shutdown_task = tg.create_task(self._shutdown(), name="shutdown")
        return self.exit_code
