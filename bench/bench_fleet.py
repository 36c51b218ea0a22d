"""Fleet simulation: hundreds of gateways (real Outbox + Uplink) on a 3-node NATS cluster.

    python -m bench.bench_fleet [--quick]

What runs (all on 127.0.0.1):

* the demo store's event volume, measured by running the simulator + pipeline for a few simulated
  minutes (events per store per minute, presence events: visits and zone changes);
* a three-node NATS 2.9 cluster with JetStream and MQTT (bench/brokers.py): every QoS 1 publish
  is stored R3 before its PUBACK;
* worker processes (``--worker``), each running a slice of the fleet in one asyncio loop: per
  gateway one SQLite `Outbox` (on /dev/shm, so the store's disk is not what is measured) and one
  `Uplink` (MQTT 3.1.1, persistent session, broker list rotated so gateway k starts on node k % 3),
  fed Poisson arrivals at the demo rate with ``ts`` = wall clock (for end-to-end latency);
* the platform consumer: one connection per node in one NATS queue group ``platform`` subscribed to
  ``retail.*.*.events`` (NATS's equivalent of ``$share/platform/retail/+/+/events``; NATS's MQTT
  layer has no shared subscriptions), deduplicating by ``(gateway_id, seq)``.

Fleet sizes grow step by step until one is not sustained (an event missing after the drain, a
backlog left, p99 latency above 5 s, or the offered rate not reached). Figures per step: broker
RSS per connected gateway, broker CPU per message, msgs/s per gateway and in total, end-to-end
latency p50/p99, beside references measured in the same run: raw MQTT connections (CONNECT only,
clean session) for memory, one raw paho QoS 1 publisher for throughput and broker CPU per message,
a raw paho publish -> consumer round trip for latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.brokers import HOST, NatsCluster, nats_server_path
from gateway.config import OutboxSettings

REPO = Path(__file__).resolve().parent.parent
LAYOUT = REPO / "hardware" / "layouts" / "demo-store.toml"
PER_WORKER = 250
# A step is sustained when nothing piles up: every event delivered, no backlog left, the offered
# rate reached, and p99 end-to-end latency under 5 s (presence dashboards refresh on that scale;
# the latency includes the daemon's 0.2 s append cadence and, here, CPU shared with the simulator).
SUSTAIN_P99_S = 5.0


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def proc_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the demo's event volume ---------------------------------------------------------------------


def demo_volume(warmup_min: float, minutes: float) -> tuple[float, dict[str, int]]:
    """Events per store per minute, from the simulator + pipeline at the demo's default settings.

    The simulated store opens empty; the first ``warmup_min`` minutes (filling up) are not counted.
    """
    from gateway.config import load_settings
    from gateway.layout import load_layout
    from gateway.pipeline import Pipeline
    from gateway.sim.store import StoreSimulator

    s = load_settings()
    layout = load_layout(LAYOUT)
    sim = StoreSimulator(layout, s.simulator)
    pipe = Pipeline(s, layout)
    warm = int(warmup_min * 60 / s.simulator.tick_s)
    before: dict[str, int] = {}
    for k in range(1, warm + int(minutes * 60 / s.simulator.tick_s) + 1):
        if k == warm + 1:
            before = dict(pipe.stats.events)
        batch = sim.step(s.simulator.start_ts + k * s.simulator.tick_s)
        if batch:
            pipe.process(batch)
    by_type = {t: n - before.get(t, 0) for t, n in pipe.stats.events.items()}
    return sum(by_type.values()) / minutes, by_type


# -- worker process: a slice of the fleet ----------------------------------------------------------


async def _worker(cfg: dict[str, Any]) -> None:
    from gateway.config import BrokerEndpoint, GatewayIdentity, MqttSettings
    from gateway.log import configure_logging
    from gateway.models import ZoneEntered
    from gateway.uplink.link import Uplink
    from gateway.uplink.outbox import Outbox

    configure_logging("error", "json", sys.stderr)
    endpoints: list[tuple[str, int]] = [tuple(e) for e in cfg["endpoints"]]  # type: ignore[misc]
    rate_per_s: float = cfg["rate_per_min"] / 60.0
    d = Path(cfg["dir"])
    rng = random.Random(cfg["offset"])
    loop = asyncio.get_running_loop()
    outboxes: list[Outbox] = []
    uplinks: list[Uplink] = []
    idents: list[GatewayIdentity] = []
    for k in range(cfg["offset"], cfg["offset"] + cfg["gateways"]):
        ident = GatewayIdentity(id=f"gw-{k:05d}", store_id=f"store-{k:05d}")
        rot = endpoints[k % len(endpoints) :] + endpoints[: k % len(endpoints)]
        settings = MqttSettings(
            host=rot[0][0],
            port=rot[0][1],
            brokers=[BrokerEndpoint(host=h, port=p) for h, p in rot[1:]],
            protocol="3.1.1",
            tls=False,
            keepalive_s=60,
            connect_timeout_s=20,
            reconnect_min_s=0.5,
            reconnect_max_s=5.0,
        )
        ob = await Outbox.open(d / f"{ident.id}.db", ident.id)
        outboxes.append(ob)
        idents.append(ident)
        uplinks.append(Uplink(settings, ident, ob, rng=random.Random(k)))
    t0 = time.monotonic()
    runs = [asyncio.create_task(up.run()) for up in uplinks]
    for _ in range(int(cfg["connect_limit_s"] / 0.1)):
        if all(up.link_state == "connected" for up in uplinks):
            break
        await asyncio.sleep(0.1)
    connected = sum(up.link_state == "connected" for up in uplinks)
    print(json.dumps({"connected": connected, "connect_s": time.monotonic() - t0}), flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    appended = 0
    flush_s = cfg["flush_interval_s"]
    nprng = np.random.default_rng(cfg["offset"])
    n_gw = len(outboxes)

    async def flush(i: int, k: int, t_from: float, t_to: float) -> None:
        ident = idents[i]
        evs = [
            ZoneEntered(
                ts=rng.uniform(t_from, t_to),
                store_id=ident.store_id,
                subject=f"{rng.getrandbits(96):024x}",
                zone=f"zone-{rng.randrange(7)}",
            )
            for _ in range(k)
        ]
        evs.sort(key=lambda e: e.ts)
        await outboxes[i].append(evs)

    # Like the daemon's writer: events accumulate and are appended every outbox.flush_interval_s,
    # one transaction per gateway per flush. Arrivals per gateway and interval are Poisson.
    cpu0 = time.process_time()
    t_end = time.monotonic() + cfg["duration_s"]
    last = time.time()
    for _ in range(int(cfg["duration_s"] / flush_s) + 1):
        await asyncio.sleep(flush_s)
        now = time.time()
        counts = nprng.poisson(rate_per_s * (now - last), n_gw)
        jobs = [flush(i, int(k), last, now) for i, k in enumerate(counts) if k]
        await asyncio.gather(*jobs)
        appended += int(counts.sum())
        last = now
        if time.monotonic() >= t_end:
            break
    for _ in range(int(cfg["drain_limit_s"] / 0.1)):
        if all(ob.backlog == 0 for ob in outboxes):
            break
        await asyncio.sleep(0.1)
    stats = [up.status() for up in uplinks]
    print(
        json.dumps(
            {
                "appended": appended,
                "published": sum(s["published_events"] for s in stats),
                "backlog": sum(s["backlog"] for s in stats),
                "reconnects": sum(s["reconnects"] for s in stats),
                "connect_failures": sum(s["connect_failures"] for s in stats),
                "connected": sum(up.link_state == "connected" for up in uplinks),
                "rss": proc_rss(os.getpid()),
                "cpu_s": time.process_time() - cpu0,
            }
        ),
        flush=True,
    )
    for r in runs:
        r.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    for ob in outboxes:
        await ob.close()


# -- platform consumer: NATS queue group (core protocol, a few lines) ------------------------------


@dataclass
class Consumer:
    """Connections in queue group ``platform``; dedup by (gateway_id, seq); latency per event."""

    ports: list[int]
    subject: str = "retail.*.*.events"
    seen: dict[str, set[int]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    messages: int = 0
    duplicates: int = 0
    per_conn: list[int] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.per_conn = [0] * len(self.ports)
        ready = [asyncio.get_running_loop().create_future() for _ in self.ports]
        self._tasks = [asyncio.create_task(self._run(i, p, ready[i])) for i, p in enumerate(self.ports)]
        await asyncio.wait_for(asyncio.gather(*ready), 10)

    def reset(self) -> None:
        self.seen.clear()
        self.latencies.clear()
        self.messages = self.duplicates = 0
        self.per_conn = [0] * len(self.ports)

    @property
    def distinct(self) -> int:
        return sum(len(s) for s in self.seen.values())

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _record(self, payload: bytes, now: float) -> None:
        doc = json.loads(payload)
        items = doc.get("batch", [doc])
        for it in items:
            seqs = self.seen.setdefault(it["gateway_id"], set())
            if it["seq"] in seqs:
                self.duplicates += 1
                continue
            seqs.add(it["seq"])
            self.latencies.append(now - it["event"]["ts"])

    async def _run(self, i: int, port: int, ready: asyncio.Future[None]) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        await reader.readline()  # INFO
        writer.write(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":false,"name":"platform-%d"}\r\n' % i
            + b"SUB %s platform 1\r\nPING\r\n" % self.subject.encode()
        )
        await writer.drain()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"MSG "):
                    size = int(line.split()[-1])
                    data = await reader.readexactly(size + 2)
                    self.messages += 1
                    self.per_conn[i] += 1
                    self._record(data[:-2], time.time())
                elif line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
                elif line.startswith(b"PONG") and not ready.done():
                    ready.set_result(None)
                elif line.startswith(b"-ERR"):
                    raise RuntimeError(f"NATS consumer: {line!r}")
        finally:
            writer.close()


@dataclass
class MqttConsumer(Consumer):
    """The at-least-once platform path: one MQTT 3.1.1 persistent session, QoS 1 on every gateway.

    NATS then stores every event in the R3 ``$MQTT_msgs`` stream for this subscriber's durable
    JetStream consumer (what the node-kill test relies on); NATS's MQTT layer has no shared
    subscriptions, so one session takes everything.
    """

    client_id: str = "platform-durable"

    async def start(self) -> None:
        from gateway.mqtt.client import AsyncMqttClient

        self.per_conn = [0]
        client = AsyncMqttClient(
            HOST,
            self.ports[0],
            client_id=self.client_id,
            protocol="3.1.1",
            clean_start=False,
            connect_timeout_s=20,
            message_queue_size=100_000,
        )
        await client.connect()
        await client.subscribe("retail/+/+/events", qos=1)
        self._client = client
        self._tasks = [asyncio.create_task(self._read())]

    async def _read(self) -> None:
        async for msg in self._client.messages():
            self.messages += 1
            self.per_conn[0] += 1
            self._record(msg.payload, time.time())

    async def stop(self) -> None:
        await super().stop()
        await self._client.disconnect()


# -- references -----------------------------------------------------------------------------------


def raw_connections_rss(cluster: NatsCluster, n: int, base: int) -> float:
    """Broker RSS per plain MQTT connection (CONNECT, clean session, nothing else) over ``base``."""
    socks: list[socket.socket] = []
    try:
        for k in range(n):
            port = cluster.endpoints[k % len(cluster.endpoints)][1]
            s = socket.create_connection((HOST, port), timeout=5)
            cid = b"raw-%05d" % k
            body = b"\x00\x04MQTT\x04\x02\x00\x78" + len(cid).to_bytes(2, "big") + cid
            s.sendall(b"\x10" + bytes([len(body)]) + body)
            s.recv(4)
            socks.append(s)
        time.sleep(1.0)
        return (cluster.rss_bytes() - base) / n
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")
            s.close()


def raw_paho_publish(port: int, payload: bytes, seconds: float, window: int = 64) -> tuple[float, float]:
    """One raw paho client, QoS 1, ``window`` in flight, for ``seconds``: (msgs/s, PUBACK RTT p50 s)."""
    done = threading.Event()
    acked = 0
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    lock = threading.Condition()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-paho-ref", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(window)

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            t = sent_at.pop(mid, None)
            if t is not None:
                rtts.append(time.perf_counter() - t)
            lock.notify()

    def on_connect(*_a: Any) -> None:
        done.set()

    c.on_publish = on_publish
    c.on_connect = on_connect
    c.connect(HOST, port)
    c.loop_start()
    try:
        if not done.wait(20):
            raise RuntimeError("raw paho reference could not connect")
        # Latency reference first: one message at a time.
        for _ in range(200):
            t = time.perf_counter()
            info = c.publish("retail/ref/ref/events", payload, qos=1)
            info.wait_for_publish(5)
            rtts.append(time.perf_counter() - t)
        rtt_p50 = statistics.median(rtts)
        sent = 0
        acked = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            with lock:
                while sent - acked >= window:
                    lock.wait(1.0)
            c.publish("retail/ref/ref/events", payload, qos=1)
            sent += 1
        with lock:
            for _ in range(100):
                if acked >= sent:
                    break
                lock.wait(0.1)
        return acked / (time.perf_counter() - t0), rtt_p50
    finally:
        c.disconnect()
        c.loop_stop()


async def raw_paho_subprocess(port: int, payload: bytes, seconds: float) -> tuple[float, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_fleet",
        "--ref",
        json.dumps([port, payload.decode(), seconds]),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
    rate, rtt = json.loads(out.decode().strip().splitlines()[-1])
    return float(rate), float(rtt)


# -- orchestration --------------------------------------------------------------------------------


@dataclass
class StepResult:
    gateways: int
    connected: int
    connect_s: float
    appended: int
    delivered: int
    duplicates: int
    backlog: int
    msgs_s: float
    offered_s: float
    p50_s: float
    p99_s: float
    rss_per_conn: float
    cpu_us_per_msg: float
    broker_cores: float
    worker_rss: int
    worker_cores: float
    reconnects: int
    sustained: bool
    why: str


async def run_step(
    cluster: NatsCluster,
    consumer: Consumer,
    n: int,
    rate_per_min: float,
    duration_s: float,
    work: Path,
    rss_idle: int,
) -> StepResult:
    d = work / f"step-{n}"
    d.mkdir()
    workers = max(1, math.ceil(n / PER_WORKER))
    sizes = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    procs: list[asyncio.subprocess.Process] = []
    offset = 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for size in sizes:
        cfg = {
            "endpoints": cluster.endpoints,
            "gateways": size,
            "offset": offset,
            "rate_per_min": rate_per_min,
            "duration_s": duration_s,
            "dir": str(d),
            "connect_limit_s": 90,
            "flush_interval_s": OutboxSettings().flush_interval_s,
            "drain_limit_s": 20,
        }
        offset += size
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bench_fleet",
                "--worker",
                json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                cwd=REPO,
            )
        )
    try:
        hello = []
        for p in procs:
            assert p.stdout is not None
            hello.append(json.loads(await asyncio.wait_for(p.stdout.readline(), 150)))
        connected = sum(h["connected"] for h in hello)
        connect_s = max(h["connect_s"] for h in hello)
        await asyncio.sleep(1.0)
        consumer.reset()
        cpu0 = cluster.cpu_seconds()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        await asyncio.sleep(duration_s)
        delivered_in_window = consumer.distinct
        cpu_window = cluster.cpu_seconds() - cpu0
        # All-in broker memory per gateway: connections, sessions, retained birth messages and
        # JetStream buffers under load, over the idle cluster measured before any client (Go's
        # RSS moves with its GC, so a delta between two steps is too noisy to mean anything).
        rss_conn = (cluster.rss_bytes() - rss_idle) / max(1, connected)
        msgs_in_window = consumer.messages
        done = []
        for p in procs:
            assert p.stdout is not None
            done.append(json.loads(await asyncio.wait_for(p.stdout.readline(), duration_s + 60)))
        await asyncio.sleep(0.5)
    finally:
        for p in procs:
            if p.stdin is not None:
                with contextlib.suppress(Exception):
                    p.stdin.close()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 20)
            except TimeoutError:
                p.kill()
                await p.wait()
    appended = sum(x["appended"] for x in done)
    backlog = sum(x["backlog"] for x in done)
    delivered = consumer.distinct
    p50, p99 = percentile(consumer.latencies, 50), percentile(consumer.latencies, 99)
    offered = n * rate_per_min / 60
    msgs_s = delivered_in_window / duration_s
    why = []
    if connected < n:
        why.append(f"{n - connected} gateways never connected")
    if delivered < appended:
        why.append(f"{appended - delivered} events not delivered")
    if backlog:
        why.append(f"backlog {backlog} left")
    if p99 > SUSTAIN_P99_S:
        why.append(f"p99 {p99:.2f}s > {SUSTAIN_P99_S}s")
    if appended < 0.9 * offered * duration_s:
        why.append(f"offered rate not reached ({appended / duration_s:.0f}/s of {offered:.0f}/s)")
    shutil.rmtree(d, ignore_errors=True)
    return StepResult(
        gateways=n,
        connected=connected,
        connect_s=connect_s,
        appended=appended,
        delivered=delivered,
        duplicates=consumer.duplicates,
        backlog=backlog,
        msgs_s=msgs_s,
        offered_s=offered,
        p50_s=p50,
        p99_s=p99,
        rss_per_conn=rss_conn,
        cpu_us_per_msg=cpu_window / max(1, msgs_in_window) * 1e6,
        broker_cores=cpu_window / duration_s,
        worker_rss=sum(x["rss"] for x in done),
        worker_cores=sum(x["cpu_s"] for x in done) / duration_s,
        reconnects=sum(x["reconnects"] for x in done),
        sustained=not why,
        why="; ".join(why) or "ok",
    )


@dataclass(frozen=True)
class Refs:
    rate: float
    rtt: float
    cpu_us: float
    raw_rss: float


async def ramp(
    kind: str,
    cluster: NatsCluster,
    consumer: Consumer,
    steps: list[int],
    per_min: float,
    duration: float,
    work: Path,
    rss_idle: int,
    refs: Refs,
) -> None:
    """Grow the fleet step by step until a step is not sustained; print each step's figures."""
    label = {"queue": "queue-group consumer", "durable": "durable QoS 1 consumer"}[kind]
    best: StepResult | None = None
    for n in steps:
        r = await run_step(cluster, consumer, n, per_min, duration, work, rss_idle)
        print(
            f"fleet.step[{kind}] {n} gateways: {'SUSTAINED' if r.sustained else 'NOT sustained'} ({r.why}); "
            f"connected {r.connected} in {r.connect_s:.1f} s; {r.msgs_s:,.0f} msgs/s delivered "
            f"(offered {r.offered_s:,.0f}/s, {r.msgs_s / n * 60:.1f} msgs/min per gateway); "
            f"e2e latency p50 {r.p50_s * 1e3:.0f} ms p99 {r.p99_s * 1e3:.0f} ms "
            f"(reference raw PUBACK p50 {refs.rtt * 1e3:.2f} ms); "
            f"{r.appended} events, {r.delivered} delivered, {r.duplicates} duplicates, backlog {r.backlog}, "
            f"{r.reconnects} reconnects; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        print(
            f"fleet.broker_cost[{kind}] {n} gateways: {n} connections, {r.rss_per_conn / 1024:.1f} KiB broker RSS "
            f"per gateway (reference raw MQTT connection {refs.raw_rss / 1024:.1f} KiB, ratio "
            f"{r.rss_per_conn / max(1.0, refs.raw_rss):.1f}); broker CPU {r.broker_cores:.2f} cores in total "
            f"({r.broker_cores / n * 1000:.2f} per 1000 gateways), {r.cpu_us_per_msg:.0f} us/msg "
            f"(reference raw paho {refs.cpu_us:.0f} us/msg, "
            f"ratio {r.cpu_us_per_msg / max(1.0, refs.cpu_us):.2f}); "
            f"simulated gateways: {r.worker_rss / n / 1024:.0f} KiB RSS each, {r.worker_cores:.2f} CPU cores "
            f"in total (their own CPU use is what bounds the fleet on this machine)",
            flush=True,
        )
        if not r.sustained:
            break
        best = r
    if best is None:
        print(f"fleet.largest_sustained[{kind}]: none of the steps was sustained ({label})", flush=True)
    else:
        print(
            f"fleet.largest_sustained[{kind}]: {best.gateways} gateways with the {label} "
            f"({best.msgs_s:,.0f} msgs/s, p99 {best.p99_s * 1e3:.0f} ms) on this {os.cpu_count()}-core machine "
            f"(reference raw paho one connection {refs.rate:,.0f} msgs/s, ratio {best.msgs_s / refs.rate:.2f})",
            flush=True,
        )


async def fleet(quick: bool) -> None:
    warmup, minutes = (8, 4) if quick else (10, 20)
    per_min, by_type = demo_volume(warmup, minutes)
    print(
        f"fleet.store_volume: {per_min:.1f} events/min per store (demo store at 120 shoppers/h, "
        f"{minutes} simulated min after {warmup} min of warm-up: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(by_type.items()))})",
        flush=True,
    )
    print(
        f"fleet.machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before the run "
        "(shared machine: other jobs take CPU too)",
        flush=True,
    )
    if nats_server_path() is None:
        print("fleet: SKIPPED - nats-server is not installed (scripts/bootstrap.sh bench installs it)")
        return
    # Quick: the bar (500 gateways) only; full: grow until a step is not sustained.
    steps = [500] if quick else [250, 500, 1000, 2000, 3000, 4000, 5000]
    durable_steps = [500] if quick else [500, 1000, 2000, 3000, 4000, 5000]
    duration = 6.0 if quick else 30.0
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: ASYNC240 - once, before anything runs
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp, tempfile.TemporaryDirectory(dir=shm) as work:
        cluster = NatsCluster(Path(tmp))
        try:
            took = cluster.start(timeout=60)
        except RuntimeError as e:
            cluster.stop()
            print(f"fleet: SKIPPED - the NATS cluster cannot start on this machine: {e}")
            return
        try:
            print(f"fleet.cluster_start: {took:.1f} s to a 3-node NATS cluster accepting MQTT", flush=True)
            rss_idle = cluster.rss_bytes()
            payload = (
                b'{"v":1,"gateway_id":"gw-ref","seq":1,"event":{"v":1,"event_id":"' + b"0" * 32 + b'","ts":1.0,'
                b'"store_id":"store-ref","subject":"' + b"a" * 24 + b'","subject_kind":"pseudonym",'
                b'"type":"zone.entered","zone":"zone-1"}}'
            )
            # References run in their own process: paho's network thread next to the consumer's
            # loop would mostly measure GIL hand-offs. First with no subscriber at all (the
            # broker's own QoS 1 cost: R3 store + PUBACK), then with the platform's queue group
            # on the two other nodes only, so every message crosses a cluster route.
            ref_s = 2.0 if quick else 8.0
            ref_cpu0 = cluster.cpu_seconds()
            ref_rate, ref_rtt = await raw_paho_subprocess(cluster.endpoints[0][1], payload, ref_s)
            ref_cpu_us = (cluster.cpu_seconds() - ref_cpu0) / max(1.0, ref_rate * ref_s + 200) * 1e6
            consumer = Consumer([cluster.nodes[1].client_port, cluster.nodes[2].client_port])
            await consumer.start()
            remote_rate, _ = await raw_paho_subprocess(cluster.endpoints[0][1], payload, 2.0 if quick else 5.0)
            await consumer.stop()
            raw_n = 200 if quick else 1000
            raw_rss = await asyncio.to_thread(raw_connections_rss, cluster, raw_n, rss_idle)
            await asyncio.sleep(2.0)  # let the cluster finish closing those sessions
            print(
                f"fleet.reference: raw paho QoS 1 (one connection, window 64, no subscriber) {ref_rate:,.0f} msgs/s, "
                f"PUBACK round trip p50 {ref_rtt * 1e3:.2f} ms, broker CPU {ref_cpu_us:.0f} us/msg; "
                f"same publisher with the queue-group consumer only on other nodes {remote_rate:,.0f} msgs/s; "
                f"raw MQTT connection {raw_rss / 1024:.1f} KiB broker RSS each ({raw_n} conns); "
                f"idle cluster RSS {rss_idle / 2**20:.0f} MiB",
                flush=True,
            )
            refs = Refs(ref_rate, ref_rtt, ref_cpu_us, raw_rss)
            # The fleet's consumer has a queue member on every node, so no node's publishers
            # depend on a cross-node route (see the reference line above; docs/fleet.md).
            consumer = Consumer([n.client_port for n in cluster.nodes])
            await consumer.start()
            await ramp("queue", cluster, consumer, steps, per_min, duration, Path(work), rss_idle, refs)
            await consumer.stop()
            durable = MqttConsumer([cluster.nodes[1].mqtt_port])
            await durable.start()
            await ramp("durable", cluster, durable, durable_steps, per_min, duration, Path(work), rss_idle, refs)
            await durable.stop()
        finally:
            cluster.stop()


def main(quick: bool = False) -> None:
    asyncio.run(fleet(quick))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        asyncio.run(_worker(json.loads(sys.argv[2])))
    elif len(sys.argv) > 2 and sys.argv[1] == "--ref":
        port, text, secs = json.loads(sys.argv[2])
        print(json.dumps(raw_paho_publish(port, text.encode(), secs)))
    else:
        main("--quick" in sys.argv)
