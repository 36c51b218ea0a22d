"""The status app over a real in-process Daemon (simulator source, real pipeline, SQLite outbox,
uplink to a real mosquitto on 127.0.0.1): readiness, live dots, health, test event, opt-out,
restart scanner (through the supervisor) and reload config (the file read again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import StatusSettings, load_settings
from gateway.runtime.daemon import Daemon, load_store_layout
from gateway.runtime.status_provider import DaemonMetricsSampler, DaemonStatusProvider
from gateway.status.app import make_app
from gateway.status.metrics import GatewayMetrics
from tests.conftest import Mosquitto
from tests.unit.status.support import login

pytestmark = pytest.mark.integration


async def until(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


def write_config(path: Path, mosquitto: Mosquitto, state_dir: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
[paths]
state_dir = "{state_dir}"
[simulator]
enabled = true
speed = 4.0
seed = 11
shoppers_per_hour = 2400
link_rotations = true  # the test finds a phone by its simulated IRK identity
[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
tls = false
[status]
enabled = false
{extra}
"""
    )
    return path


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Reloading ``[log]`` reconfigures structlog for the whole process: put it back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("restore_logging")
async def test_status_over_a_running_daemon(tmp_path: Path, mosquitto: Mosquitto, credential: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", mosquitto, tmp_path / "state")
    settings = load_settings(config)
    daemon = Daemon(settings, load_store_layout(settings), reload_settings=lambda: load_settings(config))
    provider = DaemonStatusProvider(daemon)
    assert not provider.ready()
    metrics = GatewayMetrics()
    sampler = DaemonMetricsSampler(daemon, metrics)
    app = make_app(provider, StatusSettings(loop_lag_interval_s=0), credential, metrics=metrics)
    run = asyncio.create_task(daemon.run())
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as c:
            await until(lambda: provider.ready())
            assert (await c.get("/healthz")).status == 200
            csrf = await login(c)

            async def dots() -> list[dict[str, Any]]:
                return list((await (await c.get("/api/devices")).json())["devices"])

            first = await until(dots, 20)
            assert all(len(d["subject"]) == 24 and ":" not in d["subject"] for d in first)
            status = await (await c.get("/api/status")).json()
            assert status["sources"][0]["name"] == "simulator"
            assert status["sources"][0]["observations"] > 0
            assert status["extra"]["fixes"] > 0
            assert status["outbox"]["backlog"] is not None
            assert status["disk"]["total_bytes"] > 0
            await until(lambda: daemon.uplink is not None and daemon.uplink.status()["link"] == "connected")

            published = daemon.uplink.status()["published_events"] if daemon.uplink else 0
            r = await c.post("/api/actions/test-event", json={}, headers={"X-CSRF-Token": csrf})
            assert (await r.json()) == {"ok": True, "message": "test event queued"}
            await until(
                lambda: (
                    daemon.pipeline.stats is not None
                    and daemon.uplink is not None
                    and daemon.uplink.status()["published_events"] > published
                )
            )
            recent = (await (await c.get("/api/status")).json())["recent_events"]
            assert any(e["type"] == "heartbeat" for e in recent)
            # presence events the daemon committed are listed too, newest first, never a fix
            await until(lambda: any(e.type == "zone.entered" for e in daemon.recent), 20)
            recent = (await (await c.get("/api/status")).json())["recent_events"]
            assert any(e["type"] == "zone.entered" and e["zone"] for e in recent)
            assert all(e["type"] != "fix" for e in recent)
            assert [e["ts"] for e in recent] == sorted((e["ts"] for e in recent), reverse=True)

            # opt out the phone behind one dot: it must leave the map and stay off it
            src = daemon.sources[0]
            sim = src.sim  # type: ignore[attr-defined]
            kr = daemon.presence.keyring
            shown = {d["subject"] for d in await dots()}
            victim = mac = None
            for pid, person in sorted(sim.people.items()):
                subj = kr.pseudonym(f"sim-11-{pid}", sim.now)
                if person.kind != "beacon" and subj in shown and person.t_end > sim.now + 20:
                    victim, mac = subj, sim.device_id(person, sim.now)
                    break
            assert victim is not None and mac is not None
            r = await c.post("/api/actions/optout", json={"identifier": mac}, headers={"X-CSRF-Token": csrf})
            assert r.status == 200
            await until(lambda: victim not in {d["subject"] for d in provider.devices()})
            await asyncio.sleep(1.0)
            assert victim not in {d["subject"] for d in await dots()}
            # erased everywhere else too: no queued or listed event, no buffered observation
            # bringing a fix back (the localizer forgot it)
            assert all(getattr(e, "subject", None) != victim for e in [*daemon.pending, *daemon.recent])
            assert all(f.device != victim for f in daemon.runtime.last_fixes or [])
            optouts = (await (await c.get("/api/status")).json())["optouts"]
            assert optouts == daemon.presence.resolver.optout_count >= 1  # the MAC and the identity behind it

            # -- restart scanner: the simulator's task is restarted by the supervisor, and keeps going
            task = daemon.supervisor.states["source:simulator"]
            assert task.restarts == 0
            r = await c.post("/api/actions/restart-scanner", json={}, headers={"X-CSRF-Token": csrf})
            assert r.status == 200
            assert (await r.json())["message"] == "1 source(s) restarted: simulator"
            await until(lambda: task.restarts == 1 and task.state == "running")
            seen = daemon.sources[0].health.observations
            await until(lambda: daemon.sources[0].health.observations > seen)

            # -- reload config: the file is read again; live keys applied, the others named
            async def reload() -> tuple[int, str]:
                r = await c.post("/api/actions/reload-config", json={}, headers={"X-CSRF-Token": csrf})
                return r.status, str((await r.json())["message"])

            assert await reload() == (200, "configuration reloaded: no changes")
            write_config(
                config,
                mosquitto,
                tmp_path / "state",
                '[log]\nlevel = "warning"\n[outbox]\nflush_interval_s = 0.3\n[localization]\nsigma_db = 7.5\n',
            )
            status, message = await reload()
            assert status == 200
            assert message == (
                "configuration reloaded: applied log.level, outbox.flush_interval_s;"
                " needs a restart (systemctl restart gateway): localization.sigma_db"
            )
            assert daemon.settings.log.level == "warning" and daemon.settings.outbox.flush_interval_s == 0.3
            assert daemon.settings.localization.sigma_db == settings.localization.sigma_db  # until the restart
            config.write_text(config.read_text() + "\n[outbox]\nappend_batch = 0\n")  # invalid (and a dup table)
            status, message = await reload()
            assert status == 409 and message.startswith("configuration not reloaded (1 error(s)): ")
            assert daemon.settings.log.level == "warning"  # nothing changed
            config.write_text(
                config.read_text()
                .replace("\n[outbox]\nappend_batch = 0\n", "")
                .replace("flush_interval_s = 0.3", "flush_interval_s = 0.3\nappend_batch = 0")
            )
            status, message = await reload()
            assert status == 409 and "outbox.append_batch" in message
            assert daemon.settings.outbox.append_batch == settings.outbox.append_batch

            # /metrics carries the daemon's own counters (totals read with no await in between; the
            # pipeline's come from the copy its thread makes, which may be replaced meanwhile)
            def fixes_metric() -> float:
                line = next(x for x in metrics.render().decode().splitlines() if x.startswith("gateway_fixes_total "))
                return float(line.split()[1])

            before = daemon.pipeline_view.fixes
            sampler.sample()
            obs, after = daemon.sources[0].health.observations, daemon.pipeline_view.fixes
            text = metrics.render().decode()
            assert f'gateway_observations_total{{source="simulator"}} {float(obs)}' in text
            assert 0 < before <= fixes_metric() <= after
            assert 'gateway_events_total{type="visit.started"}' in text
            assert "gateway_uplink_connected 1.0" in text
            before = daemon.pipeline_view.fixes
            sampler.sample()  # deltas, not totals: sampling twice does not double count
            assert before <= fixes_metric() <= daemon.pipeline_view.fixes
            assert "gateway_fixes_total" in await (await c.get("/metrics")).text()
    finally:
        daemon.supervisor.request_stop("test over")
        assert await asyncio.wait_for(run, 20) == 0
