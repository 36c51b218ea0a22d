"""A gateway on a real three-node broker cluster: kill -9 the node it is connected to, under load.

The cluster is NATS 2.9 with JetStream and its MQTT listener (bench/brokers.py says why not
RabbitMQ 3.10). The gateway is the real `Outbox` + `Uplink` over MQTT 3.1.1 with the three nodes
as its broker list; the platform stand-in holds a persistent session on another node. Every seq
must arrive (0 gaps); duplicates are allowed (at-least-once) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from bench.brokers import NatsCluster, nats_server_path
from gateway.config import BrokerEndpoint, GatewayIdentity, MqttSettings
from gateway.models import EventBase, ZoneEntered
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox
from tests.conftest import Mosquitto, make_mosquitto
from tests.integration.uplink_support import Cloud, until

pytestmark = pytest.mark.integration

IDENT = GatewayIdentity(id="gw-fleet-1", store_id="store-fleet-1")


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    if nats_server_path() is None:
        pytest.skip("nats-server is not installed (scripts/bootstrap.sh test installs the Debian package)")
    cluster = NatsCluster(tmp_path / "nats")
    try:
        took = cluster.start(timeout=30)
    except RuntimeError as e:
        cluster.stop()
        pytest.skip(f"the NATS cluster cannot start on this machine: {e}")
    print(f"3-node NATS cluster ready in {took:.1f}s")
    try:
        yield cluster
    finally:
        cluster.stop()


def node(cluster: NatsCluster, i: int) -> Mosquitto:
    """The platform stand-in only needs .host/.port; point it at one cluster node."""
    host, port = cluster.endpoints[i]
    return cast(Mosquitto, type("Node", (), {"host": host, "port": port})())


def events(n: int, start: int) -> list[EventBase]:
    return [
        ZoneEntered(ts=1000.0 + i, store_id=IDENT.store_id, subject=f"p{i}", zone="z") for i in range(start, start + n)
    ]


async def test_kill_connected_node_under_load_no_gaps(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    (h0, p0), *rest = nats_cluster.endpoints
    settings = MqttSettings(
        host=h0,
        port=p0,
        brokers=[BrokerEndpoint(host=h, port=p) for h, p in rest],
        protocol="3.1.1",
        tls=False,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        connect_timeout_s=5,
        batch_threshold=300,
    )
    ob = await Outbox.open(tmp_path / "outbox.db", IDENT.id)
    up = Uplink(settings, IDENT, ob)
    stop_load = asyncio.Event()

    async def load() -> None:
        i = 0
        for _ in range(20_000):  # bounded; about 2 500 events/s until stopped
            if stop_load.is_set():
                return
            await ob.append(events(25, i))
            i += 25
            await asyncio.sleep(0.01)

    consumer_node = len(nats_cluster.nodes) - 1
    kw: dict[str, Any] = {"protocol": "3.1.1"}
    try:
        async with Cloud(node(nats_cluster, consumer_node), topic="retail/#", client_id="platform-1", **kw) as cloud:
            task = asyncio.create_task(up.run())
            loader = asyncio.create_task(load())
            await cloud.wait_for(1000, 20)
            broker = up.status()["broker"]
            victim = nats_cluster.index_of_port(int(broker.rsplit(":", 1)[1]))
            assert victim != consumer_node
            before_kill = ob.stats().last_seq
            t_kill = time.monotonic()
            nats_cluster.kill(victim)  # SIGKILL: mid-window, with QoS 1 publishes in flight
            await until(lambda: up.status()["link"] != "connected" or up.status()["broker"] != broker, 10)
            # Keep loading through the outage and the failover.
            await until(lambda: up.status()["link"] == "connected" and up.status()["broker"] != broker, 40)
            failover_s = time.monotonic() - t_kill
            await asyncio.sleep(1.0)
            stop_load.set()
            await loader
            last = ob.stats().last_seq
            assert last > before_kill + 500  # the load really ran across the kill
            await cloud.wait_for(last, 30)
            await until(lambda: ob.stats().backlog == 0, 10)
            seen = set(cloud.seqs)
            gaps = [s for s in range(1, last + 1) if s not in seen]
            duplicates = len(cloud.seqs) - len(seen)
            first: list[int] = []
            firsts: set[int] = set()
            for s in cloud.seqs:
                if s not in firsts:
                    firsts.add(s)
                    first.append(s)
            out_of_order = sum(1 for a, b in itertools.pairwise(first) if b < a)
            # How far back a late first arrival reaches: the reorder buffer the platform needs.
            reach = max((m - s for m, s in zip(itertools.accumulate(first, max), first, strict=True)), default=0)
            window_events = settings.inflight * settings.batch_max
            print(
                f"killed node {victim} after seq {before_kill}; link back on {up.status()['broker']} in "
                f"{failover_s:.1f}s; {last} events, {len(gaps)} gaps, {duplicates} duplicates, "
                f"{out_of_order} first arrivals out of seq order (reaching back {reach} seqs), "
                f"{up.status()['reconnects']} reconnects, {up.status()['connect_failures']} connect failures"
            )
            assert gaps == []
            # The gateway publishes in seq order; JetStream may still redeliver out of order after a
            # node dies (docs/fleet.md), but never further back than what the gateway had in flight.
            assert reach <= window_events
            assert up.status()["reconnects"] >= 1
            assert up.status()["dead_lettered"] == 0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        stop_load.set()
        await ob.close()


async def test_dot_in_ids_is_refused_by_nats_and_nothing_is_lost(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    """NATS maps MQTT '/' to '.', so it rejects '.' in topics (and drops the link).

    The config refuses dotted ids for that reason; a gateway that still gets one (an old config
    validated elsewhere) must keep every event (no PUBACK, no delete) and say why in its status.
    """
    with pytest.raises(ValidationError, match="pattern"):
        GatewayIdentity(id="gw.dotted", store_id="store-x")
    ident = GatewayIdentity.model_construct(id="gw.dotted", store_id="store.dotted")
    (h0, p0), *_ = nats_cluster.endpoints
    settings = MqttSettings(
        host=h0, port=p0, protocol="3.1.1", tls=False, reconnect_min_s=0.05, reconnect_max_s=0.2, connect_timeout_s=5
    )
    ob = await Outbox.open(tmp_path / "outbox.db", ident.id)
    try:
        await ob.append(
            [ZoneEntered(ts=1000.0 + i, store_id=ident.store_id, subject=f"p{i}", zone="z") for i in range(10)]
        )
        up = Uplink(settings, ident, ob)
        task = asyncio.create_task(up.run())
        await until(lambda: up.status()["connect_failures"] + up.status()["reconnects"] >= 3, 20)
        st = up.status()
        print(f"dotted id on NATS: {st['last_error']!r}, state {st['link']}")
        assert st["last_error"]
        assert ob.stats().backlog == 10  # nothing acknowledged, nothing deleted
        assert st["published_events"] == 0
        assert st["dead_lettered"] == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await ob.close()


class StallableProxy:
    """TCP proxy in front of one broker; ``stall()`` drops every link and then accepts without answering.

    That is what a cluster node does while JetStream elects leaders (or a host that is gone while
    its load balancer still accepts): TCP works, CONNACK never comes.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            for _ in range(1_000_000):  # bounded
                data = await r.read(65536)
                if not data or self.stalled:
                    break
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        if self.stalled:
            with contextlib.suppress(OSError):
                await r.read()  # hold the connection open, never answer
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.append(uw)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    def stall(self) -> None:
        self.stalled = True
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def close(self) -> None:
        self.stall()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_link_loss_moves_on_to_the_next_endpoint_first(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a long session on node A dies, the uplink tries node B first, not A again.

    Retrying the node that just dropped us costs a whole ``connect_timeout_s`` when it still
    accepts TCP but never answers (seen on the NATS cluster after a node kill), for every gateway
    that was on it.
    """
    import gateway.uplink.link as uplink_mod

    monkeypatch.setattr(uplink_mod, "_STABLE_SESSION_S", 0.3)
    second = make_mosquitto(tmp_path)
    second.start()
    proxy = StallableProxy(second.port)
    pa = await proxy.start()
    ident = GatewayIdentity(id="gw-order", store_id="store-order")
    settings = MqttSettings(
        host="127.0.0.1",
        port=pa,
        brokers=[BrokerEndpoint(host=mosquitto.host, port=mosquitto.port)],
        protocol="3.1.1",
        tls=False,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        connect_timeout_s=4,
    )
    ob = await Outbox.open(tmp_path / "outbox.db", ident.id)
    up = Uplink(settings, ident, ob)
    task = asyncio.create_task(up.run())
    try:
        await until(lambda: up.status()["link"] == "connected" and up.status()["broker"] == f"127.0.0.1:{pa}", 10)
        await asyncio.sleep(0.6)  # a stable session on A
        t0 = time.monotonic()
        proxy.stall()
        want = f"{mosquitto.host}:{mosquitto.port}"
        await until(lambda: up.status()["link"] == "connected" and up.status()["broker"] == want, 15)
        took = time.monotonic() - t0
        print(f"link back on the next endpoint after {took:.2f}s (connect timeout {settings.connect_timeout_s}s)")
        assert took < settings.connect_timeout_s
        await ob.append([ZoneEntered(ts=1.0, store_id=ident.store_id, subject="p", zone="z")])
        await until(lambda: ob.stats().backlog == 0, 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.close()
        await ob.close()
        second.stop()
