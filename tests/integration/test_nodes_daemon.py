"""The daemon with the nodes source (SOURCE_FACTORIES) over a real mosquitto: simulated ESPresense
nodes -> nodes source -> pipeline; node health on the status snapshot and in the metrics; a node that
falls silent is reported and the localizer stops expecting it. Also ``gateway demo --nodes``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.localization.localizer import MlLocalizer
from gateway.runtime.daemon import Daemon, embedded_layout
from gateway.runtime.status_provider import DaemonMetricsSampler, DaemonStatusProvider
from gateway.sim.espresense import EspresenseEmitter
from gateway.sources.nodes import NodesSource
from gateway.status.metrics import GatewayMetrics
from tests.conftest import Mosquitto, gateway_cmd, gateway_env, make_mosquitto, until

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = make_mosquitto(tmp_path, "set_tcp_nodelay true\n")
    m.start()
    try:
        yield m
    finally:
        m.stop()


async def test_daemon_reads_nodes_reports_health_and_unexpects_a_silent_node(tmp_path: Path, broker: Mosquitto) -> None:
    layout = embedded_layout()
    settings = load_settings(
        paths={"state_dir": str(tmp_path / "state")},
        simulator={"enabled": False, "speed": 10.0, "seed": 5, "shoppers_per_hour": 1800},
        nodes={"enabled": True, "mapping": {s.id: s.id for s in layout.sensors}},
        local_broker={"host": broker.host, "port": broker.port},
        mqtt={"host": broker.host, "port": broker.port, "tls": False},
        status={"enabled": False},
    )
    daemon = Daemon(settings, layout)
    src = next(s for s in daemon.sources if isinstance(s, NodesSource))
    em = EspresenseEmitter(layout, settings.simulator, broker.host, broker.port)
    src.use_clock(em.clock)
    provider = DaemonStatusProvider(daemon)
    metrics = GatewayMetrics()
    sampler = DaemonMetricsSampler(daemon, metrics)
    run = asyncio.create_task(daemon.run())
    emit = asyncio.create_task(em.run())
    try:
        await until(lambda: daemon.runtime.last_fixes)
        assert daemon.pipeline.stats.observations > 0

        def states() -> dict[str, str]:
            return {n["name"]: n["state"] for n in provider.snapshot().nodes}

        await until(lambda: set(states().values()) == {"up"})
        snap = provider.snapshot()
        assert len(snap.nodes) == len(layout.sensors)
        assert set(snap.sensors_last_heard) == {s.id for s in layout.sensors}
        sampler.sample()
        text = metrics.render().decode()
        assert 'gateway_node_up{node="n22"} 1.0' in text
        assert 'gateway_node_messages_total{node="n22"}' in text
        loc = daemon.pipeline.localizer
        assert isinstance(loc, MlLocalizer)
        i22 = layout.sensor_index()["n22"]
        assert bool(loc._active[i22])
        # n22 loses power: quiet within a few (simulated) seconds, and the localizer is told
        em.silence("n22")
        await until(lambda: states()["n22"] in ("quiet", "down"))
        assert not bool(loc._active[i22])
        assert {k for k, v in states().items() if v != "up"} == {"n22"}
        sampler.sample()
        assert 'gateway_node_up{node="n22"} 0.0' in metrics.render().decode()
        # "Restart scanner": the supervisor restarts the node subscription (a new connection), and
        # the node path keeps producing
        assert src.health.detail["connects"] == 1
        r = await provider.restart_scanner()
        assert r.ok and r.message == "1 source(s) restarted: nodes"
        await until(lambda: daemon.supervisor.states["source:nodes"].restarts == 1)
        await until(lambda: src.health.detail["connects"] == 2 and src.health.state == "running")
        seen = daemon.pipeline.stats.observations
        await until(lambda: daemon.pipeline.stats.observations > seen)
    finally:
        daemon.supervisor.request_stop("test over", 0)
        emit.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await emit
        rc = await asyncio.wait_for(run, 20)
    assert rc == 0


def test_demo_runs_the_node_path(tmp_path: Path) -> None:
    out = subprocess.run(
        # not --quiet: the run's statistics are in the "gateway stopped" log line (info)
        gateway_cmd("demo", "--nodes", "--duration", "90", "--speed", "30", "--status-port", "0"),
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("demo summary: "))
    summary = json.loads(line.removeprefix("demo summary: "))
    assert summary["by_type"].get("visit.started", 0) >= 1
    assert summary["gw-demo"]["gaps"] == [] and summary["gw-demo"]["duplicates"] == 0
    stopped = [json.loads(x) for x in out.stdout.splitlines() + out.stderr.splitlines() if '"gateway stopped"' in x]
    assert stopped and stopped[0]["stats"]["observations"] > 1000
