"""Sensor-node ingest: how many ESPresense messages/s the gateway takes in on one core.

* ``nodes.decode``: the pure core (``NodeIngest.ingest_many``: topic routing, mapping, rate limit,
  JSON decode, validation, Observation) on prebuilt messages, beside ``json.loads`` of the same
  payloads (the floor any JSON decoder pays).
* ``nodes.ingest_mqtt``: end to end through a real mosquitto on 127.0.0.1. A publisher in another
  process writes pre-encoded MQTT PUBLISH packets as fast as the socket takes them (so it is not the
  bottleneck); the receiver is the real ``NodesSource`` (``gateway/mqtt/local.py``'s client on the
  asyncio loop, decode, batches). Reference, same messages, same broker: a raw paho client whose
  ``on_message`` only counts, driven by ``loop_forever()`` (paho's own fastest receive loop, no
  asyncio, no decoding). The bar is >= 20 000 messages/s.
* ``nodes.client[...]``: the MQTT client alone, each receiving the same stream from the same broker
  and only keeping ``(topic, payload)`` (checked against what was sent: a client that loses or
  garbles messages is not a candidate): ours (``LocalBrokerClient``), gmqtt and aiomqtt, beside
  paho's ``loop_forever``. Why the gateway keeps its own client rests on these lines (gmqtt and
  aiomqtt are the ``bench`` extra; without them their lines say so).
* ``nodes.jitter``: what arrival-time stamping costs in accuracy. The simulated store (same seed) is
  run through the real pipeline (ML localizer + tracker) with every reception delayed by an
  exponential transport delay of mean J and stamped ``arrival - latency_s`` (0.1 s), fed in arrival
  order; fix RMSE against ground truth beside the exact-time run (J = 0). docs/nodes.md quotes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import NodesSettings
from gateway.mqtt.local import LocalBrokerClient
from gateway.runtime.daemon import embedded_layout
from gateway.sources.node_ingest import NodeIngest
from gateway.sources.nodes import NodesSource

ROOMS = [s.id for s in embedded_layout().sensors]

PUBLISHER = r"""
import socket, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
blob = open(path, "rb").read()
def s(b):
    return len(b).to_bytes(2, "big") + b
cid = b"bench-pub"
var = s(b"MQTT") + bytes([4, 2]) + (60).to_bytes(2, "big")
body = var + s(cid)
pkt = bytes([0x10, len(body)]) + body
sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(pkt)
assert sock.recv(4)[:2] == b"\x20\x02"
t0 = time.monotonic()
view = memoryview(blob)
for i in range(0, len(blob), 1 << 16):
    sock.sendall(view[i : i + (1 << 16)])
sock.sendall(b"\xe0\x00")
print(f"{time.monotonic() - t0:.4f}", flush=True)
sock.close()
"""


def messages(n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        room = ROOMS[i % len(ROOMS)]
        mac = f"{rng.getrandbits(48):012x}"
        ident = f"irk:{rng.getrandbits(128):032x}" if i % 3 else mac
        doc = {
            "mac": mac,
            "id": ident,
            "rssi@1m": -65,
            "rssi": round(rng.uniform(-95, -45), 2),
            "rxAdj": 0,
            "distance": round(rng.uniform(0.5, 20), 2),
            "var": 0.1,
            "int": 1000,
        }
        out.append((f"espresense/devices/{ident}/{room}", json.dumps(doc, separators=(",", ":")).encode()))
    return out


def publish_packet(topic: str, payload: bytes) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    n = len(body)
    rem = bytearray()
    while True:
        b = n % 128
        n //= 128
        rem.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x30]) + bytes(rem) + body


def settings() -> NodesSettings:
    return NodesSettings(enabled=True, mapping={r: r for r in ROOMS}, max_rate_per_node=1e9, max_pending=10**7)


def bench_decode(msgs: list[tuple[str, bytes]]) -> None:
    core = NodeIngest(settings(), ROOMS)
    payloads = [p for _, p in msgs]
    loads = json.loads
    t0 = time.perf_counter()
    for p in payloads:
        loads(p)
    ref = len(payloads) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(msgs), 2000):
        core.ingest_many(msgs[i : i + 2000], 1_767_261_600.0)
    rate = len(msgs) / (time.perf_counter() - t0)
    assert core.observations == len(msgs), core.dropped
    print(f"nodes.decode: {rate:.0f} msgs/s (reference json.loads only {ref:.0f}/s, ratio {rate / ref:.2f})")


class Broker:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-nodes-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        conf = Path(self.tmp.name) / "m.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
        )
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.tmp.cleanup()


def start_publisher(port: int, blob_path: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, "127.0.0.1", str(port), blob_path], stdout=subprocess.PIPE, text=True
    )


def run_reference(port: int, blob_path: str, n: int) -> tuple[float, int]:
    got = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(_c: object, _u: object, _m: object) -> None:
        nonlocal got, first, last
        got += 1
        last = time.perf_counter()
        if got == 1:
            first = last
        if got == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ref", protocol=mqtt.MQTTv311)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("espresense/devices/+/+", 0)
    th = threading.Thread(target=c.loop_forever, daemon=True)
    th.start()
    time.sleep(0.5)
    pub = start_publisher(port, blob_path)
    done.wait(120)
    # quiet for a second: what did not arrive by then was lost
    while time.perf_counter() - last < 1.0 and got < n:
        time.sleep(0.1)
    pub.wait(60)
    c.disconnect()
    th.join(5)
    return (got - 1) / max(last - first, 1e-9), got


def run_socket_ceiling(port: int, blob_path: str, n: int, total_bytes: int) -> float:
    """What the publisher + broker deliver at all: a raw socket subscriber that only counts bytes."""
    sock = socket.create_connection(("127.0.0.1", port))
    cid = b"bench-raw"
    var = len(b"MQTT").to_bytes(2, "big") + b"MQTT" + bytes([4, 2]) + (60).to_bytes(2, "big")
    body = var + len(cid).to_bytes(2, "big") + cid
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4)[:2] == b"\x20\x02"
    flt = b"espresense/devices/+/+"
    sub = (1).to_bytes(2, "big") + len(flt).to_bytes(2, "big") + flt + b"\x00"
    sock.sendall(bytes([0x82, len(sub)]) + sub)
    assert sock.recv(5)[:1] == b"\x90"
    pub = start_publisher(port, blob_path)
    got = 0
    first = 0.0
    sock.settimeout(5.0)
    try:
        while got < total_bytes:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            if not got:
                first = time.perf_counter()
            got += len(chunk)
    except TimeoutError:
        pass
    last = time.perf_counter()
    pub.wait(60)
    sock.close()
    return n * min(1.0, got / total_bytes) / max(last - first, 1e-9)


async def run_nodes_source(port: int, blob_path: str, n: int) -> tuple[float, int]:
    src = NodesSource(settings(), embedded_layout(), host="127.0.0.1", port=port, client_id="bench-src")
    first = last = 0.0
    count = 0

    async def consume() -> None:
        nonlocal first, last, count
        async for batch in src.batches():
            now = time.perf_counter()
            if count == 0:
                first = now
            count += len(batch)
            last = now

    task = asyncio.create_task(consume())
    await src.wait_connected()
    pub = await asyncio.to_thread(start_publisher, port, blob_path)
    t_end = time.monotonic() + 120
    while count < n and time.monotonic() < t_end:
        await asyncio.sleep(0.05)
        if count and time.perf_counter() - last > 2.0:
            break  # the rest was lost
    await asyncio.to_thread(pub.wait, 60)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # the first batch's arrival is counted from its end: exclude it like the reference's first message
    return count / max(last - first, 1e-9), count


Received = tuple[float, list[tuple[str, bytes]]]  # (msgs/s from the first to the last message, messages)


async def _until_quiet(got: list[tuple[str, bytes]], n: int, stamps: list[float], pub: subprocess.Popen[str]) -> None:
    t_end = time.monotonic() + 120
    while len(got) < n and time.monotonic() < t_end:
        await asyncio.sleep(0.05)
        if got and time.perf_counter() - stamps[-1] > 2.0:
            break  # the rest was lost
    await asyncio.to_thread(pub.wait, 60)


def _rate(got: list[tuple[str, bytes]], stamps: list[float]) -> float:
    return (len(got) - 1) / max(stamps[-1] - stamps[0], 1e-9) if len(stamps) > 1 else 0.0


async def client_local(port: int, blob_path: str, n: int) -> Received:
    got: list[tuple[str, bytes]] = []
    stamps: list[float] = []

    def on(msgs: list[tuple[str, bytes]]) -> None:
        if not got:
            stamps.append(time.perf_counter())
        got.extend(msgs)
        stamps.append(time.perf_counter())

    c = LocalBrokerClient("127.0.0.1", port, on, client_id="bench-local")
    await c.connect()
    await c.subscribe(["espresense/devices/+/+"])
    pub = await asyncio.to_thread(start_publisher, port, blob_path)
    await _until_quiet(got, n, stamps, pub)
    await c.close()
    return _rate(got, stamps), got


async def client_gmqtt(port: int, blob_path: str, n: int) -> Received | None:
    try:
        import gmqtt
    except ImportError:
        return None
    got: list[tuple[str, bytes]] = []
    stamps: list[float] = []

    def on_message(_client: object, topic: str, payload: bytes, _qos: int, _properties: object) -> int:
        got.append((topic, payload))
        stamps.append(time.perf_counter())
        return 0

    c = gmqtt.Client("bench-gmqtt")
    c.on_message = on_message
    await c.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv311)
    c.subscribe("espresense/devices/+/+", qos=0)
    await asyncio.sleep(0.5)  # the SUBACK (gmqtt's subscribe does not wait for it)
    pub = await asyncio.to_thread(start_publisher, port, blob_path)
    await _until_quiet(got, n, stamps, pub)
    await c.disconnect()
    return _rate(got, stamps), got


async def client_aiomqtt(port: int, blob_path: str, n: int) -> Received | None:
    try:
        import aiomqtt
    except ImportError:
        return None
    got: list[tuple[str, bytes]] = []
    stamps: list[float] = []
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-aiomqtt", protocol=aiomqtt.ProtocolVersion.V311
    ) as c:
        await c.subscribe("espresense/devices/+/+")

        async def consume() -> None:
            async for m in c.messages:
                got.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]
                stamps.append(time.perf_counter())

        task = asyncio.create_task(consume())
        pub = await asyncio.to_thread(start_publisher, port, blob_path)
        await _until_quiet(got, n, stamps, pub)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return _rate(got, stamps), got


def compare_clients(port: int, blob: str, msgs: list[tuple[str, bytes]], paho_rate: float, paho_got: int) -> None:
    n = len(msgs)
    runs = (("local", client_local), ("gmqtt", client_gmqtt), ("aiomqtt", client_aiomqtt))
    for name, run in runs:
        res = asyncio.run(run(port, blob, n))  # type: ignore[operator]
        if res is None:
            print(f"nodes.client[{name}]: not installed (pip install -e '.[bench]')")
            continue
        rate, got = res
        if got == msgs:
            ok = "all received, all correct"
        else:
            same = "equal" if got == msgs[: len(got)] else "differing"
            ok = f"WRONG: {len(got)}/{n} received, {same} prefix"
        print(
            f"nodes.client[{name}]: {rate:.0f} msgs/s, {ok} (reference raw paho loop_forever {paho_rate:.0f}/s,"
            f" {paho_got}/{n}; ratio {rate / paho_rate:.2f})",
            flush=True,
        )


def jitter_study(quick: bool) -> None:
    import math
    from collections.abc import Sequence

    import numpy as np

    from gateway.config import Settings, SimulatorSettings
    from gateway.models import Fix, Observation
    from gateway.pipeline import Pipeline
    from gateway.sim.store import StoreSimulator

    class PassThrough:
        def resolve(self, batch: Sequence[Observation]) -> list[Observation]:
            for o in batch:
                o.device = o.link or o.device
                o.link = None
            return list(batch)

        def subject_kind(self, subject: str) -> str:
            return "pseudonym"

    layout = embedded_layout()
    sim_s = SimulatorSettings(seed=3, duration_s=120.0 if quick else 600.0, shoppers_per_hour=900)
    sim = StoreSimulator(layout, sim_s)
    obs: list[Observation] = []
    links: dict[str, int] = {}
    assert sim_s.duration_s is not None
    for _ in range(int(sim_s.duration_s / sim_s.tick_s)):
        batch = sim.step(sim.now + sim_s.tick_s)
        for o in batch:
            if o.link:
                links[o.link] = int(o.link.rsplit("-", 1)[1])
        obs.extend(batch)

    def run(mean_delay: float, stamp_latency: float, packet_loss: float = 0.05) -> tuple[float, float]:
        rng = np.random.default_rng(7)
        delay = rng.exponential(mean_delay, len(obs)) if mean_delay > 0 else np.zeros(len(obs))
        arrival = np.array([o.ts for o in obs]) + delay
        order = np.argsort(arrival, kind="stable")
        fixes: list[Fix] = []
        st = Settings(localization={"packet_loss": packet_loss})
        p = Pipeline(st, layout, identity=PassThrough(), on_fixes=fixes.extend)  # type: ignore[arg-type]
        stream = [
            Observation(float(arrival[i]) - stamp_latency, o.sensor, o.device, o.rssi, o.radio, o.rssi_at_1m, o.link)
            for i in order.tolist()
            for o in (obs[i],)
        ]
        for k in range(0, len(stream), 200):
            p.process(stream[k : k + 200])
        errs = []
        for f in fixes:
            pid = links.get(f.device, sim.mac_owner.get(f.device))
            tp = sim.truth_position(pid, f.ts) if pid is not None else None
            if tp is not None:
                errs.append(math.hypot(f.x - tp[0], f.y - tp[1]))
        e = np.asarray(errs)
        return float(np.sqrt(np.mean(e**2))), float(np.median(e))

    ref_rmse, ref_med = run(0.0, 0.0)
    print(f"nodes.jitter J=0 (exact event time): rmse {ref_rmse:.2f} m, median {ref_med:.2f} m ({len(obs)} receptions)")
    for j in (0.05, 0.1, 0.25, 0.5, 1.0, 2.0):
        r, m = run(j, 0.1)
        print(
            f"nodes.jitter J={j:g} s: rmse {r:.2f} m, median {m:.2f} m"
            f" (reference exact time rmse {ref_rmse:.2f} m, ratio {r / ref_rmse:.3f})"
        )
    # a reception that arrives in the next fix tick reads as a miss in this one; a higher random-loss
    # allowance makes misses cheap, which is the mitigation docs/nodes.md recommends for nodes
    for pl in (0.2, 0.5):
        r0, _ = run(0.0, 0.0, pl)
        for j in (0.1, 0.25, 0.5, 1.0):
            r, m = run(j, 0.1, pl)
            print(
                f"nodes.jitter J={j:g} s, localization.packet_loss={pl:g}: rmse {r:.2f} m, median {m:.2f} m"
                f" (reference same setting exact time {r0:.2f} m, ratio {r / r0:.3f};"
                f" default setting exact {ref_rmse:.2f} m)"
            )


def main(quick: bool = False) -> None:
    n = 60_000 if quick else 300_000
    msgs = messages(n)
    bench_decode(msgs)
    broker = Broker()
    try:
        with tempfile.NamedTemporaryFile(suffix=".mqtt", delete=False) as f:
            f.write(b"".join(publish_packet(t, p) for t, p in msgs))
            blob = f.name
        total = Path(blob).stat().st_size
        ceiling = run_socket_ceiling(broker.port, blob, n, total)
        ref_rate, ref_got = run_reference(broker.port, blob, n)
        rate, got = asyncio.run(run_nodes_source(broker.port, blob, n))
        compare_clients(broker.port, blob, msgs, ref_rate, ref_got)
        Path(blob).unlink()
    finally:
        broker.stop()
    print(
        f"nodes.ingest_mqtt: {rate:.0f} msgs/s, {got}/{n} received"
        f" (reference raw paho loop_forever on_message {ref_rate:.0f}/s, {ref_got}/{n}; ratio {rate / ref_rate:.2f})"
    )
    print(
        f"nodes.delivery_ceiling: {ceiling:.0f} msgs/s (publisher + mosquitto into a raw socket that only counts"
        f" bytes; when the figures above are near it, the broker side is the limit, not the gateway)"
    )
    print(f"nodes.ingest_mqtt_bar: {'PASS' if rate >= 20_000 and got == n else 'FAIL'} (>= 20000 msgs/s, no loss)")
    jitter_study(quick)


if __name__ == "__main__":
    main("--quick" in sys.argv)
