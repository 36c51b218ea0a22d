"""A real three-node NATS cluster (JetStream + MQTT) on loopback, for the fleet test and bench.

Why NATS and not RabbitMQ (both are in Debian bookworm; docs/fleet.md has the details):

* NATS 2.9's MQTT layer keeps sessions, retained messages and QoS 1 messages for QoS 1
  subscribers in JetStream streams replicated on 3 nodes (R3, Raft; nats-server's
  server/README-MQTT.md describes the design). The node-kill test shows what matters here: with
  the platform holding a persistent QoS 1 session, no acknowledged event is lost when the
  gateway's node dies. The three nodes accept MQTT about 5 s after start.
* RabbitMQ 3.10.8's MQTT plugin keeps a persistent session's subscription in a *classic* queue
  (its ``rabbitmq_mqtt.schema`` has no setting for a quorum queue type; later releases added one).
  A classic queue lives on one node, so killing that node loses the subscriber's queued messages
  unless deprecated classic mirroring is configured; MQTT 3.1.1 only, no shared subscriptions.

Every node listens on 127.0.0.1 only, on free ports, with its JetStream store in a temporary
directory. ``kill(i)`` is ``SIGKILL`` (no goodbye to the cluster); ``stop()`` ends every process
this object started, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def nats_server_path() -> str | None:
    return shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)


def mqtt_probe(port: int, timeout: float = 2.0) -> bool:
    """One MQTT 3.1.1 CONNECT (clean session) -> CONNACK accepted, then DISCONNECT.

    A NATS node answers CONNACK only once JetStream (its metadata leader and the MQTT streams)
    is usable, so this is the real readiness check, not just "the port is open".
    """
    cid = b"probe-%d" % os.getpid()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    pkt = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(pkt)
            ack = b""
            while len(ack) < 4:
                chunk = s.recv(4 - len(ack))
                if not chunk:
                    return False
                ack += chunk
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")
            return ack[0] == 0x20 and ack[3] == 0
    except OSError:
        return False


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    store: Path
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of this node's process (from /proc), 0 when it is not running."""
        if not self.alive or self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0

    def cpu_seconds(self) -> float:
        """User+system CPU time this node has used so far (from /proc), for per-message cost."""
        if not self.alive or self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class NatsCluster:
    """Three (or ``n``) nats-server processes forming one cluster with JetStream and MQTT."""

    base: Path
    n: int = 3
    exe: str | None = None
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exe = self.exe or nats_server_path()
        cluster_ports = [free_port() for _ in range(self.n)]
        routes = ", ".join(f"nats-route://{HOST}:{p}" for p in cluster_ports)
        for i in range(self.n):
            name = f"gw-nats-{i}"
            d = self.base / name
            d.mkdir(parents=True, exist_ok=True)
            node = NatsNode(name, free_port(), cluster_ports[i], free_port(), d / "js", d / "nats.conf", d / "nats.log")
            node.conf.write_text(
                f'server_name: "{name}"\n'
                f"listen: {HOST}:{node.client_port}\n"
                # The fleet bench opens thousands of connections; raise the defaults a little.
                "max_payload: 1MB\n"
                f'jetstream {{ store_dir: "{node.store}" }}\n'
                f"cluster {{ name: gw-fleet, listen: {HOST}:{node.cluster_port}, routes: [{routes}] }}\n"
                # QoS 1 state (sessions, messages, consumers) replicated on every node.
                f"mqtt {{ listen: {HOST}:{node.mqtt_port}, stream_replicas: {self.n}, ack_wait: 5s }}\n"
            )
            self.nodes.append(node)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(HOST, n.mqtt_port) for n in self.nodes]

    def index_of_port(self, port: int) -> int:
        return [n.mqtt_port for n in self.nodes].index(port)

    def _spawn(self, node: NatsNode) -> None:
        assert self.exe is not None
        log = node.log.open("ab")
        try:
            node.proc = subprocess.Popen(
                [self.exe, "-c", str(node.conf)], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )
        finally:
            log.close()

    def start(self, timeout: float = 30.0) -> float:
        """Start every node; return the seconds until all of them accept MQTT connections."""
        if self.exe is None:
            raise RuntimeError("nats-server is not installed (scripts/bootstrap.sh installs it)")
        t0 = time.monotonic()
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout, t0)
        return time.monotonic() - t0

    def wait_ready(self, timeout: float, t0: float | None = None) -> None:
        t0 = time.monotonic() if t0 is None else t0
        pending = [n for n in self.nodes if n.alive or n.proc is None]
        for _ in range(int(timeout / 0.1) + 1):
            for node in [n for n in pending if n.proc is not None and n.proc.poll() is not None]:
                code = node.proc.returncode if node.proc else "?"
                raise RuntimeError(f"{node.name} exited with {code}: {self.tail(node)}")
            pending = [n for n in pending if not mqtt_probe(n.mqtt_port, 1.0)]
            if not pending or time.monotonic() - t0 > timeout:
                break
            time.sleep(0.1)
        if pending:
            names = ", ".join(n.name for n in pending)
            raise RuntimeError(f"NATS nodes {names} not accepting MQTT after {timeout:.0f}s: {self.tail(pending[0])}")

    def restart(self, i: int, timeout: float = 30.0) -> None:
        node = self.nodes[i]
        if not node.alive:
            self._spawn(node)
        self.wait_ready(timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node i: no goodbye to clients or to the other nodes."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)

    def rss_bytes(self) -> int:
        return sum(n.rss_bytes() for n in self.nodes)

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes)

    @staticmethod
    def tail(node: NatsNode, lines: int = 5) -> str:
        try:
            return " | ".join(node.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
