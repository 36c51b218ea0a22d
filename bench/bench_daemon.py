"""Whole-daemon cost on a store's load: CPU % of one core and RSS for 100 / 500 / 2,000 devices.

Every stage runs: the real ``Daemon`` (source -> queue -> pipeline thread: identity, localization,
presence -> content rules with a campaign per zone and a screen on the store-local broker ->
SQLite outbox -> uplink to a local mosquitto on 127.0.0.1), the status page served with one client
following its live stream (``curl`` on ``/api/stream``), the metrics sampler, the watchdog.

What "N devices" means: N advertising devices present in the demo store (30 x 20 m, 12 sensors,
``hardware/layouts/demo-store.toml``), as the store simulator makes them (``gateway/sim``): each
device advertises at its kind's interval (phones about once a second) and every advert is heard by
the sensors within reach of it (about 9 of the 12); the arrival rate is calibrated so that N
devices were heard in the last minute once the store is full. The simulator runs in a process of
its own and hands the daemon's process its observations through a pipe (pickled batches, the stand-in
for a radio source's decoding), so the daemon's figures are the daemon's alone; CPU and RSS are
read by the daemon process about itself (all threads) and printed with the simulated time.

* ``daemon.cpu[N devices]``: the store filled first (the simulator runs ahead without feeding),
  then paced at real time (1 simulated second per wall second): after the daemon settles (it sees
  the full store at once), CPU seconds per simulated second over a window = % of one core.
  Reference in the same run: the same daemon with an empty store (fixed beacons and devices only,
  page client connected).
* ``daemon.day[N devices]``: a simulated 24 h as fast as the daemon goes: the store opens at 08:00 (N devices), closes
  at 21:00 (the pseudonym key rotates then), staff and fixtures stay; RSS every simulated 15 min,
  its least-squares slope over the day after the first opening hour, and CPU seconds per simulated
  second. To fit a 24 h day into minutes, every device advertises ``THIN`` x less often than
  its kind does (the same devices, identities, rotations, visits and state; fewer adverts each).

Bars (issue 22): 500 devices <= 5 % of one core; RSS <= 100 MB and flat over the day. A day takes
minutes of wall time per 100 devices on a shared 2-core box: ``--quick`` runs the day for 100
devices only, the full run for 100 and 500 (``--day 100,500,2000`` for more; ``--day-only``: the
day alone, without the idle and CPU runs).
``python -m bench.bench_daemon [--quick] [--devices 100,500,2000] [--day 100,500] [--day-only]``
``[--daemon-env unit|default] [--daemon-set KEY=VALUE ...]``

The day's line states each bar on its own: the peak against 100 MB and the slope against 5 % of the
peak a day (PASS / FAIL each), and the process's highest RSS (``ru_maxrss``), which also sees what
happens between two marks (start-up, a login on the status page).

RSS is printed at the start, peak and end of each run (and the day's slope) beside the RSS of a bare
``python -c "import numpy"`` and of python with the daemon's imports, both measured in the same run.

Memory (issue 22; docs/install.md, "Memory"). The simulator's frames reach the daemon through a
pipe read with a small read-ahead (256 KiB): with 16 MiB the reader held up to 32 MiB of frames
not yet taken whenever the daemon was busy, and that buffer - the bench's, not the daemon's - was
most of the "growth" once measured (36.6 MB of the 46 MB tracemalloc traced at 10:00).
The daemon's process gets the ``Environment=`` of systemd/gateway.service (allocator and BLAS
settings: what a box runs); ``--daemon-env default`` leaves them out (glibc's and OpenBLAS's defaults).
``BENCH_MEM_PROFILE=DIR`` (with ``BENCH_MEM_EVERY_H``, ``BENCH_MEM_FRAMES`` = tracemalloc frames, 0
for none, ``BENCH_MEM_TRIM=1`` = ``malloc_trim`` after each report) writes what the daemon holds
every few simulated hours: see ``MemProfile``. ``BENCH_CPU_PROFILE=FILE`` writes where the daemon's
threads spent their CPU (sampled stacks): see ``StackSampler``.

``--day-state N``: the day's per-subject state alone (N one-visit visitors qualified and counted
among a working set of other objects, then the rotation), the daemon's packed layout vs the dicts
it replaced, each in a fresh process, interleaved: RSS and Python's arenas at closing and after the
rotation (``day_state``). Seconds, where the day takes many minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import pickle
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAYOUT = REPO / "hardware" / "layouts" / "demo-store.toml"
USER, PASSWORD = "bench", "bench-password-1"
FRAME = struct.Struct("<I")
DAY_START = 1_767_247_200.0  # 2026-01-01 06:00 UTC
OPEN_H, CLOSE_H = 8.0, 21.0
THIN = 10.0  # the day's adverts: every device advertises this much less often than its kind does
BARS = {"cpu_pct_500": 5.0, "rss_mb": 100.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


UNIT = REPO / "systemd" / "gateway.service"
# the daemon's process environment: "unit" = the ``Environment=`` of systemd/gateway.service (what a
# box runs: allocator and BLAS settings), "default" = without them (glibc's and OpenBLAS's defaults)
DAEMON_ENV = "unit"
# ``--daemon-set KEY=VALUE``: an environment variable of the daemon's process set on top (to try an
# allocator setting before it goes into the unit)
DAEMON_SET: dict[str, str] = {}
# what the unit sets that changes memory (dropped from the environment for "default")
TUNABLES = ("MALLOC_", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """``Environment=`` assignments of a systemd unit (space-separated ``KEY=VALUE``, no quoting)."""
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.split("=", 1)[1].split():
                k, _, v = item.partition("=")
                out[k] = v
    return out


def env(daemon: str | None = None) -> dict[str, str]:
    """The environment of a child process; ``daemon`` ("unit" / "default"): the daemon's (above)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if daemon is not None:
        e = {k: v for k, v in e.items() if not k.startswith(TUNABLES)}
        if daemon == "unit":
            e |= unit_environment()
        e |= DAEMON_SET
    return e


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_anon_mb() -> float:
    """The anonymous part of the RSS (the rest is shared libraries' pages: ``RssFile``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def import_floor() -> dict[str, float]:
    """RSS (VmRSS, MB) of fresh processes: a bare python, python + numpy (the reference the day's
    figures are printed beside) and python + the daemon's imports (what ``gateway run`` loads before
    it starts)."""
    probe = "{imp}\nprint([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmRSS:')][0])"
    cases = (("python", "pass"), ("python+numpy", "import numpy"), ("daemon imports", "import gateway.runtime.daemon"))
    out: dict[str, float] = {}
    for label, imp in cases:
        cmd = [sys.executable, "-c", probe.format(imp=imp)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env(DAEMON_ENV), timeout=120, check=False)
        out[label] = float(r.stdout.strip() or "nan") / 1024
    return out


# -- the simulator's process ---------------------------------------------------------------------------


def _sim(seed: int, rate: float, thin: float, start: float) -> Any:
    from gateway.config import load_settings
    from gateway.layout import load_layout
    from gateway.sim.store import StoreSimulator

    s = load_settings(simulator={"seed": seed, "shoppers_per_hour": rate, "advert_interval_s": thin, "start_ts": start})
    return StoreSimulator(load_layout(LAYOUT), s.simulator), s.simulator.tick_s


def devices_heard(rate: float, seed: int = 7, fill_s: float = 1200.0) -> int:
    """Devices heard in the last simulated minute once the store filled at ``rate`` shoppers/h."""
    sim, tick = _sim(seed, rate, 5.0, DAY_START)  # fewer adverts: a device heard at least every 5 s
    t0 = sim.now
    k = 0
    while k * tick < fill_s:
        k += 1
        sim.step(t0 + k * tick)
    heard: set[str] = set()
    while k * tick < fill_s + 60:
        k += 1
        heard.update(o.link or o.device for o in sim.step(t0 + k * tick))
    return len(heard)


def calibrate(n: int) -> float:
    """The arrival rate (shoppers/h) that fills the store with ``n`` devices (two linear steps)."""
    rate = 10.0 * n
    for _ in range(2):
        got = devices_heard(rate)
        rate *= n / max(1, got)
    return rate


def generate(a: argparse.Namespace) -> None:
    """Child: run the simulator and write its observations to stdout, one frame per step.

    ``--fill`` simulated seconds run without output (the store fills), then ``--paced`` seconds at
    ``--speed`` simulated seconds per wall second (0: as fast as the daemon takes them: the pipe
    blocks while it is busy). ``--day``: arrivals follow opening hours (none outside OPEN_H..CLOSE_H)."""
    sim, tick = _sim(a.seed, a.rate, a.thin, a.start)
    out = sys.stdout.buffer
    t0 = sim.now
    k = 0

    def hour(t: float) -> float:
        return (t % 86400.0) / 3600.0

    is_open = True

    def step() -> tuple[float, list[Any]]:
        nonlocal k, is_open
        k += 1
        t = t0 + k * tick
        if a.day and is_open != (OPEN_H <= hour(t) < CLOSE_H):
            is_open = not is_open
            sim.settings.shoppers_per_hour = a.rate if is_open else 0.0
            # the simulator draws the next arrival when the last one came: draw it again at opening
            sim._next_arrival = t + sim._interarrival() if is_open else math.inf
        return t, sim.step(t)

    while k * tick < a.fill:
        step()
    t_emit = t0 + k * tick
    wall0 = time.monotonic()
    while True:
        t, obs = step()
        if t > t_emit + a.paced:
            break
        if a.speed > 0:
            delay = wall0 + (t - t_emit) / a.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        body = pickle.dumps((t, obs), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(FRAME.pack(len(body)) + body)
        out.flush()
    out.write(FRAME.pack(0))
    out.flush()


# -- the daemon's process --------------------------------------------------------------------------------


class PipeSource:
    """A live source reading the simulator's frames from stdin; event time from the data.

    It reads the next frame only once the daemon's queue is nearly empty, so a simulator running
    ahead waits for the daemon (the pipe fills) instead of its batches being dropped as late."""

    def __init__(self, mark_every: float, queue: asyncio.Queue[Any]) -> None:
        from gateway.models import SourceHealth

        self.queue = queue
        self.name = "bench"
        self.health = SourceHealth(self.name)
        self.now = 0.0
        self.mark_every = mark_every
        self.next_mark: float | None = None
        self.profile: Any = None  # async () -> None, run at every mark (``BENCH_MEM_PROFILE``)

    @property
    def capabilities(self) -> Any:
        from gateway.sources.base import Capabilities

        # live: the clock advances event time through silence (the night), maintenance follows it
        return Capabilities(event_clock=lambda: self.now, finite=True)

    def mark(self, what: str) -> None:
        print(
            f"{what} {self.now:.1f} {time.monotonic():.3f} {time.process_time():.3f} {rss_mb():.1f} "
            f"{self.health.observations} {rss_anon_mb():.1f}",
            flush=True,
        )

    async def batches(self) -> AsyncGenerator[list[Any], None]:
        loop = asyncio.get_running_loop()
        # a small read-ahead: the reader holds up to twice its limit of frames not yet taken, and
        # that buffer is the bench's, not the daemon's (16 MiB here once added 36 MB to the RSS)
        reader = asyncio.StreamReader(limit=1 << 18)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
        self.health.state = "running"
        while True:
            while self.queue.qsize() > 4:  # noqa: ASYNC110 - the daemon's queue has no "not full" event
                await asyncio.sleep(0.002)
            (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
            if n == 0:
                break
            t, obs = pickle.loads(await reader.readexactly(n))
            self.now = t
            if self.next_mark is None:
                self.next_mark = t
            while t >= self.next_mark:
                self.mark("MARK")
                self.next_mark += self.mark_every
                if self.profile is not None:
                    await self.profile()
            if obs:
                self.health.observations += len(obs)
                self.health.last_observation_ts = obs[-1].ts
                yield obs
        self.mark("END")


async def _serve(a: argparse.Namespace, signer: Any) -> None:
    from gateway.config import load_settings
    from gateway.content.commands import make_command
    from gateway.layout import load_layout
    from gateway.log import configure_logging
    from gateway.runtime.daemon import Daemon

    configure_logging("warning", "json")
    key = Path(a.state_dir) / "command.pub"
    settings = load_settings(
        paths={"state_dir": a.state_dir},
        mqtt={"host": "127.0.0.1", "port": a.mqtt_port, "tls": False},
        local_broker={"host": "127.0.0.1", "port": a.mqtt_port},
        content={"command_public_key_file": str(key)},
        status={"enabled": True, "port": a.status_port, "credential_file": a.credential},
    )
    layout = load_layout(LAYOUT)
    daemon = Daemon(settings, layout)
    src = PipeSource(a.mark_every, daemon.queue)
    daemon.sources = [src]
    prof_dir = os.environ.get("BENCH_MEM_PROFILE")
    if prof_dir:
        src.profile = MemProfile(Path(prof_dir), daemon, src).run
    sampler = StackSampler.from_env()
    run = asyncio.create_task(daemon.run())
    for _ in range(3000):  # bounded: 30 s to READY and the local broker
        c = daemon.content
        if daemon.runtime.ready and c is not None and c.dispatcher.mqtt is not None:
            break
        await asyncio.sleep(0.01)
    content = daemon.content
    if content is None:
        raise RuntimeError("content not started")
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("actors.put", {"actor": {"id": "screen", "categories": ["promo"], "scopes": ["zone"]}})
    ]
    for z in layout.zones:
        campaign: dict[str, Any] = {"id": f"c-{z.id}", "category": "promo", "content_id": f"v-{z.id}"}
        campaign |= {"actors": ["screen"], "segment": {"trigger": "zone.entered", "zone": z.id}, "caps": {}}
        bodies.append(("campaigns.put", {"campaign": campaign}))
    for i, (kind, body) in enumerate(bodies):
        cmd = make_command(kind, body, id=f"b{i}", revision=i + 1, aud=settings.gateway.id, signer=signer)
        if not (await content.handle_command("", cmd)).ok:
            raise RuntimeError(f"command {kind} refused")
    print("READY", flush=True)
    rc = await run
    if sampler is not None:
        sampler.stop()
    st = daemon.pipeline.stats
    out = {
        "rc": rc,
        "observations": st.observations,
        "fixes": st.fixes,
        "events": sum(st.events.values()),
        "committed": sum(daemon.committed_by_type.values()),
        "by_type": dict(sorted(daemon.committed_by_type.items())),
        "activations": content.counters.get("activations", 0),
        "late": daemon.backpressure.dropped_late,
        "queue_full": src.health.dropped.get("backpressure", 0),
        "pipeline_cpu_s": daemon.worker.stats.cpu_s,
        "pipeline_jobs": daemon.worker.stats.jobs,
        "trims": daemon.memory.runs,
        "trimmed_mb": daemon.memory.returned_kib / 1024,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("DONE " + json.dumps(out), flush=True)


def mallinfo() -> dict[str, int]:
    """glibc's malloc statistics (``mallinfo2``): heap from the system, in use, free, mmapped."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(n, ctypes.c_size_t) for n in names.split()]

    try:
        f = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    f.restype = MallInfo2
    m = f()
    return {"heap": m.arena, "in_use": m.uordblks, "free": m.fordblks, "mmapped": m.hblkhd}


def sqlite_memory() -> str:
    """What SQLite's own allocator holds in this process (page caches of every connection, schema,
    statements): ``sqlite3_memory_used`` and its high-water mark, MB."""
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        return "unknown"
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.restype = ctypes.c_int64
    lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return f"{lib.sqlite3_memory_used() / 2**20:.2f} MB (high water {lib.sqlite3_memory_highwater(0) / 2**20:.2f})"


def debugmallocstats() -> str:
    """``sys._debugmallocstats``'s report (written by C to fd 2, caught through a temporary file)."""
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


def pymalloc_arenas() -> list[str]:
    """Python's small-object allocator (its arenas are mmapped, outside mallinfo): the summary lines
    of ``sys._debugmallocstats``."""
    text = debugmallocstats()
    keep = ("# arenas allocated current", "# arenas highwater", "# bytes in allocated blocks", "# bytes in available")
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.startswith(keep)]
    return ["pymalloc " + "; ".join(lines)]


class StackSampler:
    """``BENCH_CPU_PROFILE=FILE``: where the daemon's threads spend their CPU, by sampling.

    A thread of its own reads every other thread's Python stack (``sys._current_frames``) every
    ``BENCH_CPU_EVERY_MS`` (2), after ``BENCH_CPU_SKIP_S`` (0), and counts, per thread, its stack
    weighted by the CPU time the thread used since the previous sample (its CPU clock; idle
    threads weigh nothing). Writes
    the top functions (self and inclusive) to FILE at exit. A poor man's py-spy for a box without
    it; costs ~1 % of a core itself.

    The sampler runs only when it holds the GIL, so it sees a busy thread mostly where that thread
    lets the GIL go: at the interpreter's switch interval, or at a call that releases it (a socket
    write, a queue wait) - and that frame is charged with all the CPU since the previous sample.
    With the default 5 ms interval, the tail of every pipeline job (~12 ms each at 500 devices)
    was charged to the ``call_soon_threadsafe`` write that ends it: "9.6 % of the pipeline thread
    in ``_write_to_self``", where the handoff costs ~16 us a job, 4 jobs a second. So the profile
    runs with a short switch interval, ``BENCH_CPU_SWITCH_MS`` (0.5; 0: leave Python's), which
    shrinks what a GIL-releasing call is charged with (9.0 -> 3.4 % there, same machine load) but
    does not remove it: the sampler itself waits for a core on a busy box. Read the self time of a
    frame that lets the GIL go (``select``, a queue wait, a socket write) as partly the tail of
    whatever that thread ran just before it."""

    def __init__(self, out: Path, every_s: float, skip_s: float, switch_s: float = 0.0) -> None:
        import threading

        self._switch0 = sys.getswitchinterval()  # given back at ``stop``
        if switch_s > 0:
            sys.setswitchinterval(switch_s)
        self.out, self.every, self.skip = out, every_s, skip_s
        self.self_counts: dict[tuple[str, str], int] = {}
        self.incl_counts: dict[tuple[str, str], int] = {}
        self.samples: dict[str, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._t.start()

    @classmethod
    def from_env(cls) -> StackSampler | None:
        f = os.environ.get("BENCH_CPU_PROFILE")
        every = float(os.environ.get("BENCH_CPU_EVERY_MS", "2")) / 1000
        switch = float(os.environ.get("BENCH_CPU_SWITCH_MS", "0.5")) / 1000
        return cls(Path(f), every, float(os.environ.get("BENCH_CPU_SKIP_S", "0")), switch) if f else None

    def _run(self) -> None:
        import threading

        me = threading.get_ident()
        last: dict[int, int] = {}
        clocks: dict[int, int] = {}
        names: dict[int, str] = {}
        t_end = time.monotonic() + self.skip
        while not self._stop.wait(self.every):
            if time.monotonic() < t_end:
                continue
            frames = sys._current_frames()
            if set(frames) - set(clocks):
                for t in threading.enumerate():
                    if t.ident is not None and t.ident not in clocks:
                        with contextlib.suppress(OSError):
                            clocks[t.ident] = time.pthread_getcpuclockid(t.ident)
                        names[t.ident] = t.name
            for ident, frame in frames.items():
                clk = clocks.get(ident)
                if ident == me or clk is None:
                    continue
                try:
                    ns = time.clock_gettime_ns(clk)
                except OSError:
                    continue
                w = (ns - last.get(ident, ns)) // 1000  # CPU us since the previous sample: the weight
                last[ident] = ns
                if w <= 0:
                    continue
                tname = names.get(ident, "?").split("-")[0]
                self.samples[tname] = self.samples.get(tname, 0) + w
                f: Any = frame
                seen: set[tuple[str, str]] = set()
                first = True
                while f is not None:
                    co = f.f_code
                    key = (tname, f"{co.co_filename.replace(str(REPO), '.')}:{co.co_firstlineno} {co.co_name}")
                    if first:
                        self.self_counts[key] = self.self_counts.get(key, 0) + w
                        first = False
                    if key not in seen:
                        seen.add(key)
                        self.incl_counts[key] = self.incl_counts.get(key, 0) + w
                    f = f.f_back

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        lines = [
            f"CPU us sampled by thread: {self.samples} "
            f"(switch interval {sys.getswitchinterval() * 1000:g} ms, sample every {self.every * 1000:g} ms)"
        ]
        sys.setswitchinterval(self._switch0)
        for title, counts in (("self", self.self_counts), ("inclusive", self.incl_counts)):
            lines.append(f"== top {title} ==")
            for (tn, fn), n in sorted(counts.items(), key=lambda kv: -kv[1])[:60]:
                lines.append(f"{n:7d} {100 * n / max(1, self.samples.get(tn, 1)):5.1f} % {tn:12s} {fn}")
        self.out.write_text("\n".join(lines) + "\n")


class MemProfile:
    """``BENCH_MEM_PROFILE=DIR``: what the daemon's memory holds, every ``BENCH_MEM_EVERY_H`` simulated hours.

    Writes ``DIR/h{HH}.txt``: RSS, tracemalloc's top allocation sites by growth since the previous
    report, the sizes of the containers reachable from the daemon (attribute paths, ``len`` >= 50)
    and the counts of live objects by type. Runs on the pipeline's thread (its owner), so nothing
    changes while it looks. Costs time: a diagnosis tool, not a figure."""

    def __init__(self, out: Path, daemon: Any, src: PipeSource) -> None:
        import tracemalloc

        out.mkdir(parents=True, exist_ok=True)
        self.out, self.daemon, self.src = out, daemon, src
        self.every = float(os.environ.get("BENCH_MEM_EVERY_H", "2")) * 3600.0
        self.next_t: float | None = None
        self.prev: Any = None
        self.prev_sizes: dict[str, int] = {}
        self.trim = os.environ.get("BENCH_MEM_TRIM") == "1"
        frames = int(os.environ.get("BENCH_MEM_FRAMES", "1"))
        if frames > 0:
            tracemalloc.start(frames)

    @staticmethod
    def sizes(root: Any, name: str, depth: int = 6) -> dict[str, int]:
        """``len`` of every container reachable from ``root`` by attributes / dict values (first seen)."""
        seen: set[int] = set()
        found: dict[str, int] = {}

        def walk(obj: Any, path: str, d: int) -> None:
            if id(obj) in seen or d < 0 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
                return
            seen.add(id(obj))
            if isinstance(obj, (dict, list, set, frozenset, tuple)) or type(obj).__name__ in ("deque", "OrderedDict"):
                n = len(obj)
                if n >= 50:
                    found[path] = n
                if isinstance(obj, dict):
                    items = list(obj.items())[:1]  # one sample value: the shape of a per-device entry
                    for _k, v in items:
                        walk(v, f"{path}[*]", d - 1)
                elif n:
                    with contextlib.suppress(Exception):
                        walk(next(iter(obj)), f"{path}[*]", d - 1)
                return
            if hasattr(obj, "shape") and hasattr(obj, "nbytes"):  # numpy arrays
                if obj.nbytes >= 1 << 16:
                    found[path + " (nbytes)"] = int(obj.nbytes)
                return
            attrs: dict[str, Any] = {}
            with contextlib.suppress(Exception):
                attrs = dict(vars(obj))
            for slot in getattr(type(obj), "__slots__", ()):
                with contextlib.suppress(Exception):
                    attrs[slot] = getattr(obj, slot)
            for k, v in attrs.items():
                if callable(v) and not hasattr(v, "__dict__"):
                    continue
                walk(v, f"{path}.{k}", d - 1)

        walk(root, name, depth)
        return found

    def report(self) -> str:
        import gc
        import tracemalloc
        from collections import Counter

        cur, peak = tracemalloc.get_traced_memory()
        lines = [f"sim_h {(self.src.now - DAY_START) / 3600:.2f} rss_mb {rss_mb():.1f} traced_mb {cur / 2**20:.1f}"]
        lines.append(f"traced peak_mb {peak / 2**20:.1f}")
        lines.append("mallinfo2 " + " ".join(f"{k} {v / 2**20:.1f}" for k, v in mallinfo().items()))
        lines.append(f"sqlite memory used {sqlite_memory()}")
        lines.append(f"pymalloc blocks in use {sys.getallocatedblocks()}")
        lines.extend(pymalloc_arenas())
        if self.trim:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            lines.append(f"after malloc_trim(0): rss_mb {rss_mb():.1f}")
        if tracemalloc.is_tracing():
            skip = [tracemalloc.__file__, "<frozen importlib._bootstrap>"]
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, f) for f in skip])
            top = snap.compare_to(self.prev, "traceback") if self.prev is not None else snap.statistics("traceback")
            lines.append("== top allocation sites (growth since the previous report) ==")
            for st in top[:25]:
                diff = getattr(st, "size_diff", st.size)
                lines.append(f"{diff / 1024:+9.0f} KiB now {st.size / 1024:8.0f} KiB n={st.count}")
                lines.extend(f"      {fr.filename.replace(str(REPO), '.')}:{fr.lineno}" for fr in st.traceback[:6])
            self.prev = snap
        sizes = self.sizes(self.daemon, "daemon")
        lines.append("== containers (len) reachable from the daemon: now (change) ==")
        for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:80]:
            lines.append(f"{v:9d} ({v - self.prev_sizes.get(k, 0):+d}) {k}")
        self.prev_sizes = sizes
        counts = Counter(type(o).__qualname__ for o in gc.get_objects())
        lines.append("== live gc objects by type ==")
        lines.extend(f"{n:9d} {t}" for t, n in counts.most_common(30))
        return "\n".join(lines) + "\n"

    async def run(self) -> None:
        if self.next_t is None:
            self.next_t = self.src.now
        if self.src.now < self.next_t:
            return
        self.next_t += self.every
        text = await self.daemon.worker.call(self.report)
        h = (self.src.now - DAY_START) / 3600
        (self.out / f"h{h:05.2f}.txt").write_text(text)


def serve(a: argparse.Namespace) -> None:
    from gateway.content.commands import Ed25519Signer

    Path(a.state_dir).mkdir(parents=True, exist_ok=True)
    signer = Ed25519Signer.generate()  # the platform's key; the daemon gets the public half
    (Path(a.state_dir) / "command.pub").write_bytes(signer.public_pem())
    asyncio.run(_serve(a, signer))


# -- the orchestrator ------------------------------------------------------------------------------------


class Run:
    """One simulator process piped into one daemon process, a page client on the daemon."""

    def __init__(self, tmp: Path, mqtt_port: int, cred: Path, gen_args: list[str], mark_every: float) -> None:
        self.status_port = free_port()
        self.gen = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_daemon", "--generate", *gen_args],
            stdout=subprocess.PIPE,
            env=env(),
            cwd=REPO,
        )
        assert self.gen.stdout is not None
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bench_daemon",
                "--serve",
                "--state-dir",
                str(tmp / f"state-{self.status_port}"),
                "--mqtt-port",
                str(mqtt_port),
                "--status-port",
                str(self.status_port),
                "--credential",
                str(cred),
                "--mark-every",
                str(mark_every),
            ],
            stdin=self.gen.stdout,
            stdout=subprocess.PIPE,
            text=True,
            env=env(DAEMON_ENV),
            cwd=REPO,
        )
        self.gen.stdout.close()  # the daemon holds the read end
        self.client: subprocess.Popen[bytes] | None = None
        self.marks: list[tuple[str, float, float, float, float, int]] = []
        self.anon: list[float] = []  # RssAnon at each mark
        self.done: dict[str, Any] = {}

    def follow_page(self) -> None:
        wait_port(self.status_port)
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.status_port}/login",
            data=json.dumps({"user": USER, "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:  # loopback only
            cookie = r.headers["Set-Cookie"].split(";", 1)[0]
        self.client = subprocess.Popen(
            ["curl", "-sN", "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{self.status_port}/api/stream"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def read(self, on_line: Any = None) -> None:
        assert self.daemon.stdout is not None
        for line in self.daemon.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] in ("MARK", "END"):
                w, sim, wall, cpu, rss, n = parts[0], *map(float, parts[1:5]), int(parts[5])
                self.marks.append((w, sim, wall, cpu, rss, n))
                self.anon.append(float(parts[6]) if len(parts) > 6 else float("nan"))
            elif parts[0] == "READY":
                self.follow_page()
            elif parts[0] == "DONE":
                self.done = json.loads(line[5:])
            if on_line is not None:
                on_line(parts)

    def close(self) -> None:
        for p in (self.client, self.gen, self.daemon):
            if p is not None and p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
                if p.poll() is None:
                    p.kill()
                    p.wait(5)


def slope_per_day(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 86400.0 if sxx else float("nan")


def idle_cost(tmp: Path, mqtt_port: int, cred: Path, seconds: float) -> tuple[float, float]:
    """CPU share and RSS of the daemon with nothing heard for ``seconds`` (page client connected)."""
    run = Run(tmp, mqtt_port, cred, ["--rate", "0", "--paced", str(seconds)], 1.0)
    try:
        run.read()
    finally:
        run.close()
    marks = [m for m in run.marks if m[0] == "MARK"]
    a, b = marks[len(marks) // 3], marks[-1]  # after the start-up settled
    return (b[3] - a[3]) / max(1e-9, b[2] - a[2]), b[4]


def cpu_for(n: int, tmp: Path, mqtt_port: int, cred: Path, window: float, fill: float, warm: float) -> dict[str, Any]:
    rate = calibrate(n)
    gen_args = ["--rate", f"{rate:.1f}", "--fill", str(fill), "--paced", str(warm + window)]
    run = Run(tmp, mqtt_port, cred, gen_args, 5.0)
    try:
        run.read()
    finally:
        run.close()
    marks = [m for m in run.marks if m[0] in ("MARK", "END")]
    start_sim = marks[0][1] + warm  # the daemon first sees the full store all at once: let it settle
    paced = [m for m in marks if m[1] >= start_sim]
    a, b = paced[0], paced[-1]
    sim_s = b[1] - a[1]
    return {
        "n": n,
        "rate": rate,
        "cpu": (b[3] - a[3]) / sim_s,
        "wall": b[2] - a[2],
        "sim": sim_s,
        "obs_s": (b[5] - a[5]) / sim_s,
        "rss": [m[4] for m in marks],
        "done": run.done,
    }


def day_for(n: int, tmp: Path, mqtt_port: int, cred: Path) -> dict[str, Any]:
    rate = calibrate(n)
    gen_args = ["--rate", f"{rate:.1f}", "--thin", str(THIN), "--start", str(DAY_START), "--day"]
    gen_args += ["--paced", "86400", "--speed", "0"]
    run = Run(tmp, mqtt_port, cred, gen_args, 900.0)
    t0 = time.monotonic()
    try:
        run.read()
    finally:
        run.close()
    marks = [m for m in run.marks if m[0] in ("MARK", "END")]
    hours = [(m[1] - DAY_START) / 3600.0 for m in marks]
    rss = [m[4] for m in marks]
    after = [i for i, h in enumerate(hours) if h >= 3.0]  # from 09:00 (the day starts at 06:00)
    slope = slope_per_day([marks[i][1] for i in after], [rss[i] for i in after])
    return {
        "n": n,
        "rate": rate,
        "hours": hours,
        "rss": rss,
        "anon": [a for m, a in zip(run.marks, run.anon, strict=True) if m[0] in ("MARK", "END")],
        "slope": slope,
        "cpu_per_sim_s": (marks[-1][3] - marks[0][3]) / max(1e-9, marks[-1][1] - marks[0][1]),
        "wall": time.monotonic() - t0,
        "done": run.done,
    }


def day_state(layout: str, visitors: int, seed: int = 7) -> dict[str, float]:
    """Child (``--day-state LAYOUT``): a day's per-subject state alone - ``visitors`` one-visit
    pseudonymous subjects qualified and counted as the presence engine and the content rules do,
    among a working set of other objects as a day makes them (per-device state that lives for a
    visit, a few things that stay, like memos) - then the rotation (the history pruned, the counts
    dropped, the visitors gone), ``malloc_trim``; RSS and Python's arenas at each step.

    ``LAYOUT`` "packed": the daemon's (``SubjectTable``: no Python object per subject); "dicts":
    the layout before (a dict of one ``array('d')`` per subject, a dict of counts): the reference."""
    import ctypes
    import gc
    import random
    from array import array

    from gateway.identity.subject_table import SubjectCounts
    from gateway.presence.qualification import Qualifier, VisitRecord

    def arenas() -> float:
        for ln in debugmallocstats().splitlines():
            if ln.startswith("# arenas allocated current"):
                return float(ln.split("=")[1])
        return float("nan")

    rng = random.Random(seed)
    zones = ["entrance", "grocery", "produce", "checkout", "electronics", "service"]
    t0 = DAY_START + (OPEN_H - 6.0) * 3600
    out: dict[str, float] = {"start_mb": rss_mb(), "start_arenas": arenas()}
    hist: Any
    counts: Any
    if layout == "packed":
        hist, counts = Qualifier(), SubjectCounts()
    else:
        hist, counts = {}, {}
    present: collections.deque[dict[str, Any]] = collections.deque()
    stays: list[Any] = []
    for i in range(visitors):
        subj = os.urandom(12).hex()
        start = t0 + i * (CLOSE_H - OPEN_H) * 3600 / visitors
        dwell = {z: round(rng.uniform(5, 300), 1) for z in rng.sample(zones, 4)}
        rec = VisitRecord(subj, "pseudonym", start, start + rng.uniform(300, 1800), dwell)
        if layout == "packed":
            hist.qualify(rec)
        else:  # the packing of main before issue 22's second pass: an array per subject
            buf = hist.setdefault(subj, array("d"))
            buf.extend((rec.started_ts, rec.ended_ts, 0.0, float(len(dwell))))
            for k, (_z, d) in enumerate(dwell.items()):
                buf.extend((float(k), d))
        counts[subj] = 1
        # the working set: what a device present holds (its address's RSSI by sensor, a fix),
        # for ~500 visitors at a time; one in 50 leaves something that stays (a memo, a log line)
        present.append({"subject": subj, "rssi": {f"s{k}": -60.0 - k for k in range(9)}, "fix": [1.0, 2.0, 0.5]})
        if len(present) > 500:
            gone = present.popleft()
            if rng.random() < 0.02:
                stays.append((gone["subject"], start))
    gc.collect()
    out |= {"closing_mb": rss_mb(), "closing_arenas": arenas()}
    # the rotation: the history pruned, the counts dropped, the visitors leave
    if layout == "packed":
        hist.prune(pseudonym_since=t0 + 86400.0, older_than=t0 - 86400.0)
        counts = SubjectCounts()
    else:
        hist.clear()
        counts = {}
    present.clear()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    out |= {"night_mb": rss_mb(), "night_arenas": arenas(), "kept": float(len(stays))}
    return out


def day_state_figures(visitors: int) -> None:
    """``--day-state N``: the day's per-subject state, packed vs the dicts before, each in a fresh process."""
    res: dict[str, dict[str, float]] = {}
    for layout in ("dicts", "packed", "dicts", "packed"):  # interleaved
        cmd = [sys.executable, "-m", "bench.bench_daemon", "--day-state-child", layout, str(visitors)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env(DAEMON_ENV), cwd=REPO, timeout=600, check=True)
        got = json.loads(p.stdout.strip().splitlines()[-1])
        prev = res.get(layout)
        res[layout] = got if prev is None else {k: min(v, prev[k]) for k, v in got.items()}
    for layout, r in res.items():
        print(
            f"daemon.day_state[{layout}, {visitors} visitors]: RSS start {r['start_mb']:.1f}, at closing "
            f"{r['closing_mb']:.1f} (+{r['closing_mb'] - r['start_mb']:.1f}), after the rotation "
            f"{r['night_mb']:.1f} MB (+{r['night_mb'] - r['start_mb']:.1f}); Python arenas {r['start_arenas']:.0f} -> "
            f"{r['closing_arenas']:.0f} -> {r['night_arenas']:.0f} (1 MiB each; best of 2 interleaved runs)",
            flush=True,
        )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", default="100,500,2000")
    ap.add_argument("--day", default=None, help="device counts for the simulated day (quick: 100; full: 100,500)")
    ap.add_argument("--day-only", action="store_true", help="only the simulated day (no idle and CPU runs)")
    ap.add_argument(
        "--day-state",
        type=int,
        default=0,
        help="only the day's per-subject state of this many visitors, packed vs dicts (fresh processes)",
    )
    ap.add_argument(
        "--daemon-env",
        choices=("unit", "default"),
        default=DAEMON_ENV,
        help="the daemon's environment: the shipped unit's Environment= (default), or without its tunables",
    )
    ap.add_argument(
        "--daemon-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable of the daemon's process on top of --daemon-env (repeatable)",
    )
    a = ap.parse_args(argv)
    globals()["DAEMON_ENV"] = a.daemon_env
    for item in a.daemon_set:
        k, sep, v = item.partition("=")
        if not sep or not k:
            ap.error(f"--daemon-set: {item!r} is not KEY=VALUE")
        DAEMON_SET[k] = v
    if a.day_state:
        day_state_figures(a.day_state)
        return
    counts = [] if a.day_only else [int(x) for x in a.devices.split(",") if x]
    days = [int(x) for x in (("100" if a.quick else "100,500") if a.day is None else a.day).split(",") if x]
    window = 30.0 if a.quick else 120.0
    warm = 20.0 if a.quick else 60.0
    fill = 900.0 if a.quick else 1800.0
    from gateway.status.auth import write_credential

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cred = tmp / "cred.json"
        write_credential(cred, USER, PASSWORD)
        mqtt_port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(mqtt_port)
            print(f"daemon.machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
            tun = {k: v for k, v in env(a.daemon_env).items() if k.startswith(TUNABLES) or k in DAEMON_SET}
            shown = " ".join(f"{k}={v}" for k, v in sorted(tun.items())) or "(none)"
            print(f"daemon.env: {a.daemon_env} {shown}", flush=True)
            floor = import_floor()
            ref = floor["python+numpy"]
            text = ", ".join(f"{k} {v:.1f} MB" for k, v in floor.items())
            print(f"daemon.floor: RSS {text} (references for the figures below)", flush=True)
            if not a.day_only:
                idle, idle_rss = idle_cost(tmp, mqtt_port, cred, 10.0 if a.quick else 30.0)
                print(
                    f"daemon.idle: {idle * 100:.2f} % of one core, RSS {idle_rss:.0f} MB (nothing heard; status page "
                    f"with one live-map client; the reference for the figures below)",
                    flush=True,
                )
            for n in counts:
                r = cpu_for(n, tmp, mqtt_port, cred, window, fill, warm)
                d = r["done"]
                ok = r["cpu"] * 100 <= BARS["cpu_pct_500"]
                bar = f"; bar <= {BARS['cpu_pct_500']:g} %: {'PASS' if ok else 'FAIL'}" if n == 500 else ""
                print(
                    f"daemon.cpu[{n} devices]: {r['cpu'] * 100:.2f} % of one core at real time ({r['sim']:.0f} s "
                    f"paced, {r['obs_s']:,.0f} obs/s, arrival rate {r['rate']:.0f} shoppers/h; reference idle "
                    f"{idle * 100:.2f} %); RSS start {r['rss'][0]:.0f}, peak {max(r['rss']):.0f}, end "
                    f"{r['rss'][-1]:.0f} MB (python+numpy {ref:.0f} MB); pipeline thread "
                    f"{d.get('pipeline_cpu_s', 0):.1f} CPU s in {d.get('pipeline_jobs')} jobs, late {d.get('late')}, "
                    f"events "
                    f"{d.get('committed')}, activations {d.get('activations')}{bar}",
                    flush=True,
                )
            for n in days:
                r = day_for(n, tmp, mqtt_port, cred)
                rss = r["rss"]
                by_h = ", ".join(f"{h:.0f}h {m:.0f}" for h, m in list(zip(r["hours"], rss, strict=True))[::8])
                flat = abs(r["slope"]) <= 0.05 * max(rss)
                low = max(rss) <= BARS["rss_mb"]
                ok = low and flat
                d = r["done"]
                print(
                    f"daemon.day[{n} devices]: RSS start {rss[0]:.1f}, peak {max(rss):.1f}, end {rss[-1]:.1f} MB, "
                    f"slope {r['slope']:+.1f} MB/day from 09:00 over a simulated 24 h (reference in this run: "
                    f"python+numpy {ref:.1f} MB, daemon imports {floor['daemon imports']:.1f} MB; by simulated "
                    f"hour: {by_h}); CPU {r['cpu_per_sim_s'] * 100:.2f} % of a core per simulated second with "
                    f"adverts {THIN:g} x thinned ({r['wall']:.0f} s wall; {d.get('observations')} obs, "
                    f"{d.get('committed')} events, late {d.get('late')}; malloc_trim {d.get('trims')} x, "
                    f"{d.get('trimmed_mb', 0):.1f} MB returned); bar RSS <= {BARS['rss_mb']:g} MB and "
                    f"flat (|slope| <= 5 % of it per day): {'PASS' if ok else 'FAIL'} (peak {max(rss):.1f} MB: "
                    f"{'PASS' if low else 'FAIL'}; slope {r['slope']:+.1f} MB/day against "
                    f"{0.05 * max(rss):.1f}: {'PASS' if flat else 'FAIL'})",
                    flush=True,
                )
                print(
                    f"daemon.day[{n} devices] highest RSS of the daemon's process (ru_maxrss, between the marks "
                    f"too: start-up, the page's login): {d.get('maxrss_mb', float('nan')):.1f} MB",
                    flush=True,
                )
                anon = r["anon"]
                print(
                    f"daemon.day[{n} devices] anonymous part of the RSS (the rest: shared libraries): start "
                    f"{anon[0]:.1f}, peak {max(anon):.1f}, end {anon[-1]:.1f} MB",
                    flush=True,
                )
                print(f"daemon.day[{n} devices] events by type: {json.dumps(d.get('by_type'))}", flush=True)
        finally:
            broker.terminate()
            broker.wait(5)


def _child_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--thin", type=float, default=1.0)
    ap.add_argument("--start", type=float, default=DAY_START + (10.0 - 6.0) * 3600)
    ap.add_argument("--day", action="store_true")
    ap.add_argument("--fill", type=float, default=0.0)
    ap.add_argument("--paced", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--state-dir")
    ap.add_argument("--mqtt-port", type=int)
    ap.add_argument("--status-port", type=int)
    ap.add_argument("--credential")
    ap.add_argument("--mark-every", type=float, default=10.0)
    return ap.parse_args(argv)


if __name__ == "__main__":
    if "--day-state-child" in sys.argv:
        i = sys.argv.index("--day-state-child")
        print(json.dumps(day_state(sys.argv[i + 1], int(sys.argv[i + 2]))), flush=True)
    elif "--generate" in sys.argv:
        generate(_child_args(sys.argv[1:]))
    elif "--serve" in sys.argv:
        serve(_child_args(sys.argv[1:]))
    else:
        main(sys.argv[1:])
