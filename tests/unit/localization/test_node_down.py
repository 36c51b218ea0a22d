"""Node health -> localizer: a node that dies stops being expected to hear (fix error with and without).

The stream goes through the real node core (ESPresense messages, arrival time stamps, liveness) into
the real ML localizer with default settings. Node n22 dies at t = 20 s. Without the health wiring the
localizer keeps censoring n22 (its silence reads as "every device is far from n22") until its own
``sensor_silent_s`` (15 s) runs out; with it, ``NodeIngest.check`` reports n22 inactive after
``min_quiet_s`` and the device standing under n22 keeps its fix.
"""

from __future__ import annotations

import json
import math

import numpy as np

from gateway.config import LocalizationSettings, NodesSettings
from gateway.layout import Layout
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, simulate_rssi
from gateway.sources.node_ingest import NodeIngest

# Misses carry position information when the floor is within the store's RSSI range (ESP32 nodes with
# a report cut-off, e.g. ESPresense max_distance) and random loss is rare; that is when a dead node
# hurts. With a -95 dBm floor every sensor hears the whole store and a miss says little anywhere.
FLOOR = -82.0
RADIO = RadioParams(sigma_db=5.0, tx_spread_db=0.0, packet_loss=0.0, floor_dbm=FLOOR)
LOC = LocalizationSettings(detection_floor_dbm=FLOOR, packet_loss=0.01)
DIES_AT = 20.0


def run(layout: Layout, model: PathLossModel, wired: bool, seed: int) -> list[float]:
    ids = [s.id for s in layout.sensors]
    core = NodeIngest(NodesSettings(enabled=True, mapping={i: i for i in ids}), ids)
    loc = MlLocalizer(layout, LOC)
    rng = np.random.default_rng(seed)
    target = np.array([11.25, 10.0])  # under n22
    others = np.column_stack([rng.uniform(2, 28, 9), rng.uniform(2, 18, 9)])
    pos = np.vstack([target, others])
    errs = []
    for k in range(40):
        t = 1000.0 + k
        r, heard = simulate_rssi(model, pos, np.zeros(len(pos)), RADIO, rng)
        msgs = []
        for d in range(len(pos)):
            if d == 0 and k < DIES_AT + 2:  # the shopper walks in after the node died
                continue
            for s in np.flatnonzero(heard[d]):
                if ids[s] == "n22" and k >= DIES_AT:
                    continue
                body = {"mac": f"02000000000{d:x}", "id": f"dev{d}", "rssi": float(r[d, s])}
                msgs.append((f"espresense/devices/dev{d}/{ids[s]}", json.dumps(body).encode()))
        loc.add(core.ingest_many(msgs, t + 0.05))
        for tt in (t + 0.3, t + 0.8):
            changes = core.check(tt)
            if wired:
                for sensor, active in changes:
                    loc.set_sensor_active(sensor, active)
        fx = {f.device: f for f in loc.fixes(t + 0.9)}
        f = fx.get("02:00:00:00:00:00")
        if f is not None and DIES_AT + 4 <= k < DIES_AT + 14:
            errs.append(math.hypot(f.x - target[0], f.y - target[1]))
    if wired:
        assert core.nodes["n22"].state == "quiet"  # detected, and told to the localizer
    return errs


def test_dead_node_is_not_read_as_far_away(layout: Layout, model: PathLossModel) -> None:
    with_health = [e for seed in range(3) for e in run(layout, model, True, seed)]
    without = [e for seed in range(3) for e in run(layout, model, False, seed)]
    assert len(with_health) == len(without) == 30
    m_with, m_without = float(np.mean(with_health)), float(np.mean(without))
    assert m_with < 2.5, m_with
    assert m_without > m_with + 5.0, (m_without, m_with)
