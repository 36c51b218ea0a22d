"""Metrics registry: names, labels, isolation, loop-lag probe."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.status.metrics import GatewayMetrics, monitor_loop_lag


def _samples(m: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_helpers_update_the_named_metrics() -> None:
    m = GatewayMetrics()
    m.observed("ble", 10)
    m.observed("ble", 5)
    m.observed("wifi", 2)
    m.dropped("bad_crc", 3)
    m.fixed(7)
    m.produced("zone.entered", 4)
    m.outbox(120, 33.5)
    m.evicted("fix", 9)
    m.published([0.02, 0.2, 3.0])
    m.reconnected()
    m.uplink_state(True)
    m.radio_recovered("ble")
    m.lag(0.004)
    s = _samples(m)
    assert s[("gateway_observations_total", (("source", "ble"),))] == 15
    assert s[("gateway_observations_total", (("source", "wifi"),))] == 2
    assert s[("gateway_drops_total", (("reason", "bad_crc"),))] == 3
    assert s[("gateway_fixes_total", ())] == 7
    assert s[("gateway_events_total", (("type", "zone.entered"),))] == 4
    assert s[("gateway_outbox_backlog", ())] == 120
    assert s[("gateway_outbox_oldest_age_seconds", ())] == 33.5
    assert s[("gateway_outbox_evictions_total", (("priority", "fix"),))] == 9
    assert s[("gateway_publish_latency_seconds_count", ())] == 3
    assert s[("gateway_publish_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("gateway_publish_latency_seconds_bucket", (("le", "5.0"),))] == 3
    assert s[("gateway_uplink_reconnects_total", ())] == 1
    assert s[("gateway_uplink_connected", ())] == 1
    assert s[("gateway_radio_recoveries_total", (("radio", "ble"),))] == 1
    assert s[("gateway_event_loop_lag_seconds", ())] == 0.004


def test_registries_are_isolated_from_each_other_and_the_global_one() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.observed("ble", 1)
    assert ("gateway_observations_total", (("source", "ble"),)) not in _samples(b)
    assert REGISTRY.get_sample_value("gateway_observations_total", {"source": "ble"}) is None


async def test_loop_lag_probe_sees_a_blocked_loop() -> None:
    m = GatewayMetrics()
    task = asyncio.create_task(monitor_loop_lag(m, 0.02))
    await asyncio.sleep(0.05)
    time.sleep(0.15)  # noqa: ASYNC251  (deliberately block the loop)
    await asyncio.sleep(0.05)
    task.cancel()
    s = _samples(m)
    assert s[("gateway_event_loop_lag_distribution_seconds_count", ())] >= 2
    # one sample saw >= 0.1 s lag (bucket le=0.05 misses it)
    total = s[("gateway_event_loop_lag_distribution_seconds_count", ())]
    assert s[("gateway_event_loop_lag_distribution_seconds_bucket", (("le", "0.05"),))] < total
