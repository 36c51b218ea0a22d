"""The pipeline's own thread: identity -> localization -> presence off the event loop.

A fix tick solves every device heard since the previous tick in one batched numpy computation:
a few milliseconds on an x86 core, several times that on a store board. Run on the event loop it
held up everything queued behind it - MQTT I/O, actor dispatch, the status page (issue 22). On
this thread the loop keeps serving while a tick computes (numpy releases the GIL in its inner
loops, and the interpreter hands the GIL back every switch interval otherwise).

**One owner.** Everything that reads or changes pipeline state (the ``Pipeline`` and what it holds:
identity resolver, linker, localizer, presence engine and its qualifier) runs on this one thread,
in the order it was submitted, whatever the caller: observation batches, ``advance`` and ``close``,
opt-outs and consents (``PresenceService.run_owned``), a sensor going quiet (``post``), the status
page's view of it (built here, read on the loop). The loop never touches that state while the
worker runs, so there is nothing to lock and no race with a tick.

A job's result reaches the loop through ``call``'s return value and, when given, ``deliver`` -
called on the loop, in job order, even when the caller was cancelled meanwhile (events a job
produced are never lost that way). A long job hands what it has so far to the loop with ``emit``
(the events of a fix tick, say, while later batches of the same job still compute): delivered at
once, in order with everything else the worker delivers. Before ``start`` and after ``stop`` jobs run inline, on the
caller's thread (a daemon built but not running, tests).

``stats`` says how loaded the thread is: jobs, wall seconds busy, its own CPU seconds, the
longest job and the jobs waiting - the headroom figures on /metrics and the status page.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")


@dataclass
class WorkerStats:
    """Cumulative load of the worker thread (written on the loop, in job order)."""

    jobs: int = 0
    busy_s: float = 0.0  # wall time spent in jobs
    cpu_s: float = 0.0  # the thread's own CPU time in jobs
    max_job_s: float = 0.0
    last_job_s: float = 0.0
    waiting: int = 0  # jobs submitted and not finished (the worker's queue)


@dataclass
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T] | None
    deliver: Callable[[T], None] | None


class PipelineWorker:
    """One thread that owns the pipeline state; see the module docstring."""

    def __init__(self, name: str = "pipeline") -> None:
        self.name = name
        self.stats = WorkerStats()
        self._settling: set[asyncio.Future[None]] = set()  # settle tasks in flight (kept from the GC)
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def ident(self) -> int | None:
        """The worker thread's id while it runs (tests check who touched the state)."""
        return self._thread.ident if self._thread is not None else None

    def start(self) -> None:
        """Start the thread; jobs submitted from now on run there. Needs the running loop."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the jobs already submitted, then end the thread (jobs run inline afterwards)."""
        thread = self._thread
        if thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(thread.join, timeout_s)
        if thread.is_alive():
            log.error("pipeline worker did not stop", timeout_s=timeout_s, waiting=self.stats.waiting)
        self._thread = None

    async def call(self, fn: Callable[[], T], *, deliver: Callable[[T], None] | None = None) -> T:
        """Run ``fn`` on the worker after everything submitted before it; its result.

        ``deliver(result)`` runs on the loop as soon as the job ends, before the caller resumes and
        even if the caller was cancelled meanwhile (the job itself always runs to its end)."""
        if self._thread is None or self._loop is None:
            result = fn()
            if deliver is not None:
                deliver(result)
            return result
        fut: asyncio.Future[T] = self._loop.create_future()
        self.stats.waiting += 1
        self._jobs.put(_Job(fn, fut, deliver))
        return await fut

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the worker after everything submitted before it; nobody waits for it
        (a failure is logged). For state changes from synchronous callbacks on the loop."""
        if self._thread is None:
            fn()
            return
        self.stats.waiting += 1
        self._jobs.put(_Job(fn, None, None))

    def emit(
        self,
        deliver: Callable[[T], None],
        result: T,
        *,
        settle: Callable[[], Awaitable[object]] | None = None,
        wait_s: float = 0.0,
    ) -> None:
        """From inside a job: ``deliver(result)`` on the loop now, without waiting for the job to
        end - after every delivery of earlier jobs and emits, before the job's own. Called anywhere
        else (inline, before ``start`` or after ``stop``) it delivers at once, on the caller's thread.

        ``settle``: run on the loop after ``deliver`` (say, until the activations it started have
        written their packets); the job waits for it, ``wait_s`` at most, so the loop has the
        interpreter to itself meanwhile. Without that wait the job keeps the GIL and the loop gets
        it back only every switch interval (5 ms) for each step of a dispatch: an activation
        waited for the job's next batches in steps of 5 ms (issue 22)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or threading.get_ident() != thread.ident:
            deliver(result)
            return
        done = threading.Event() if settle is not None and wait_s > 0 else None
        try:
            loop.call_soon_threadsafe(self._emitted, deliver, result, settle, done)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            return
        if done is not None:
            done.wait(wait_s)

    def _emitted(
        self,
        deliver: Callable[[T], None],
        result: T,
        settle: Callable[[], Awaitable[object]] | None = None,
        done: threading.Event | None = None,
    ) -> None:
        try:
            deliver(result)
        except Exception as e:  # the job goes on; its caller learns of failures of its own result
            log.error("pipeline delivery failed", error=f"{type(e).__name__}: {e}")
        if settle is None:
            if done is not None:
                done.set()
            return

        async def settling() -> None:
            try:
                await settle()
            except Exception as e:
                log.error("pipeline delivery failed", error=f"{type(e).__name__}: {e}")
            finally:
                if done is not None:
                    done.set()

        self._settling.add(task := asyncio.ensure_future(settling()))
        task.add_done_callback(self._settling.discard)

    # -- the thread --------------------------------------------------------------------------------

    def _main(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            t0, c0 = time.perf_counter(), time.thread_time()
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn()
            except BaseException as e:  # handed to the caller (or logged): the thread keeps serving
                error = e
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            try:
                loop.call_soon_threadsafe(self._finish, job, result, error, wall, cpu)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                return

    def _finish(self, job: _Job[Any], result: Any, error: BaseException | None, wall: float, cpu: float) -> None:
        """On the loop, in job order: account, deliver, wake the caller."""
        st = self.stats
        st.waiting -= 1
        st.jobs += 1
        st.busy_s += wall
        st.cpu_s += cpu
        st.last_job_s = wall
        st.max_job_s = max(st.max_job_s, wall)
        if error is None and job.deliver is not None:
            try:
                job.deliver(result)
            except Exception as e:
                error = e
        fut = job.future
        if fut is None:
            if error is not None:
                log.error("pipeline job failed", error=f"{type(error).__name__}: {error}")
            return
        if fut.cancelled():
            if error is not None:
                log.error("pipeline job failed after its caller left", error=f"{type(error).__name__}: {error}")
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
