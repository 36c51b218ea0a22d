"""/metrics of a running daemon add up: the events counted by type are exactly the events the
platform received, activation reports included; the operations series exist (build info,
outbox bytes, dead letters, publish failures, commands) and no counter exports ``_created``.

A real daemon in-process (simulated store, signed demo commands from the platform stand-in, a
real mosquitto), scraped over HTTP once everything it stored has been acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.config import load_settings
from gateway.content.commands import Ed25519Signer
from gateway.demo.cloud_standin import CloudStandIn
from gateway.runtime.daemon import Daemon, load_store_layout
from tests.conftest import Mosquitto

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_add_up_to_what_the_platform_received(tmp_path: Path, mosquitto: Mosquitto) -> None:
    signer = Ed25519Signer.generate()
    (tmp_path / "command.pub").write_bytes(signer.public_pem())
    settings = load_settings(
        paths={"state_dir": str(tmp_path / "state")},
        simulator={"enabled": True, "speed": 400, "duration_s": 900, "shoppers_per_hour": 600, "seed": 3},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "tls": False},
        status={"port": 0},
        content={"command_public_key_file": str(tmp_path / "command.pub")},
        log={"format": "json"},
    )
    cloud = CloudStandIn(mosquitto.host, mosquitto.port, verbose=False, signer=signer, out=sys.stderr)
    cloud.push_commands = True  # actor, campaign and consent, signed for this gateway
    cloud_task = asyncio.create_task(cloud.run())
    await asyncio.wait_for(cloud.connected.wait(), 10)
    daemon = Daemon(settings, load_store_layout(settings))
    daemon.supervisor._stop_when_finite_done = False  # keep serving /metrics after the simulated day
    run = asyncio.create_task(daemon.run())
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 90
        sim = next(s for s in daemon.sources if s.name.startswith("sim"))
        settled: tuple[int, float] | None = None  # (last_seq, since): nothing new for 3 s (the clock task
        # advances event time once more after the last batch, which may close a zone)
        while loop.time() < end:
            # the simulated 15 minutes are over, everything stored was acknowledged and received,
            # and the pipeline has worked through its queue (the last batches may still be in it)
            done = daemon.supervisor.states.get(f"source:{sim.name}")
            ob = daemon.outbox
            # ... and the event clock has ticked the pipeline through the simulated day's last second
            # (it does so 1 s after the last observation; its events would otherwise arrive after
            # the metrics sample below)
            ticked = daemon.pipeline._next_tick is not None and daemon.pipeline._next_tick > sim.sim.now
            if done is not None and done.state == "done" and ob is not None and not daemon.pending and ticked:
                received = sum(led.received for led in cloud.ledgers.values())
                if ob.backlog == 0 and ob.last_seq > 0 and received == ob.last_seq and daemon.queue.qsize() == 0:
                    if settled is None or settled[0] != ob.last_seq:
                        settled = (ob.last_seq, loop.time())
                    elif loop.time() - settled[1] >= 3.0:
                        break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the daemon did not settle")
        assert cloud.by_type.get("activation", 0) >= 1, cloud.by_type  # activations happened
        await asyncio.sleep(1.5)  # one more metrics sample (once a second)
        assert daemon.status_server is not None
        host, port = daemon.status_server.addresses[0]
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        received = dict(cloud.by_type)  # before the shutdown drain closes the open visits (more events)
        sent = sum(led.received for led in cloud.ledgers.values())
    finally:
        daemon.supervisor.request_stop("test over")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 30)
        cloud_task.cancel()
        await asyncio.gather(cloud_task, return_exceptions=True)
    got = samples(text)
    by_type = {dict(k[1])["type"]: v for k, v in got.items() if k[0] == "gateway_events_total"}
    assert by_type == {t: float(n) for t, n in received.items()}, (by_type, received)
    assert sum(by_type.values()) == sent
    assert "_created" not in text
    assert got[("gateway_build_info", (("python", sys.version.split()[0]), ("version", __version__)))] == 1.0
    assert got[("gateway_outbox_bytes", ())] > 0
    assert got[("gateway_outbox_max_bytes", ())] == settings.outbox.max_bytes
    assert got[("gateway_outbox_dead_letters_total", ())] == 0.0
    assert "# TYPE gateway_uplink_publish_failures_total counter" in text
    assert got[("gateway_commands_total", (("result", "ok"),))] >= 3
