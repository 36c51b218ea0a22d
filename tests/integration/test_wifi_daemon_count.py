"""The Wi-Fi device count through a real in-process daemon: a recorded capture replayed (wifi.pcap)
through the pipeline to events, the status page's snapshot and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.config import load_settings
from gateway.runtime.daemon import Daemon, load_store_layout
from gateway.runtime.status_provider import DaemonMetricsSampler, DaemonStatusProvider
from gateway.status.metrics import GatewayMetrics
from tests.conftest import Mosquitto

pytestmark = pytest.mark.integration

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "wifi"


async def test_replayed_capture_gives_counts_on_the_page_and_as_events(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = load_settings(
        paths={"state_dir": str(tmp_path / "state")},
        # 6 minutes of a store in 12 s: minutes complete while the daemon runs
        wifi={"enabled": True, "pcap": str(FIX / "crowd.pcap"), "pcap_speed": 30.0, "sensor_id": "gw"},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "tls": False},
        status={"enabled": False},
    )
    daemon = Daemon(settings, load_store_layout(settings))
    provider = DaemonStatusProvider(daemon)
    metrics = GatewayMetrics()
    sampler = DaemonMetricsSampler(daemon, metrics)
    run = asyncio.create_task(daemon.run())
    try:
        wifi: dict[str, object] = {}
        for _ in range(300):
            if provider.ready():
                wifi = provider.snapshot().wifi_devices
                if wifi.get("devices"):
                    break
            await asyncio.sleep(0.1)
        assert wifi["devices"] > 0 and wifi["sd"] > 0 and wifi["window_s"] == 300.0  # type: ignore[operator]
        sampler.sample()
        text = generate_latest(metrics.registry).decode()
        assert 'gateway_source_up{source="wifi-pcap:crowd.pcap"}' in text
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, 60)  # the replay is finite: the daemon stops by itself
    assert daemon.pipeline.stats.events.get("wifi.devices", 0) >= 5  # committed (and sent: test_wifi_capture)
