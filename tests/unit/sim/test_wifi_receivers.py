"""Wi-Fi heard at several receivers: walks from the store simulator, levels from its radio model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.layout import load_layout
from gateway.sim.wifi_population import generate_store
from gateway.sim.wifi_receivers import WifiReceivers, fit_walk

LAYOUT = load_layout(Path(__file__).resolve().parents[3] / "hardware" / "layouts" / "demo-store.toml")


def test_a_walk_fits_a_stay_by_its_dwells_and_keeps_walking_speed() -> None:
    # walk 10 m in 10 s, dwell 20 s, walk 10 m back in 10 s: fitted to 100 s, the dwell takes 80 s
    t = np.array([0.0, 10.0, 30.0, 40.0])
    x = np.array([0.0, 10.0, 10.0, 0.0])
    y = np.zeros(4)
    w = fit_walk(t, x, y, 500.0, 100.0)
    assert list(w.t) == pytest.approx([500.0, 510.0, 590.0, 600.0])
    assert w.at(np.array([505.0, 550.0]))[:, 0] == pytest.approx([5.0, 10.0])
    # shorter than its walking: scaled whole
    assert fit_walk(t, x, y, 0.0, 20.0).t[-1] == pytest.approx(20.0)


def test_frames_carry_each_receivers_level_and_the_capture_radio_is_one_of_them() -> None:
    rx = WifiReceivers(LAYOUT)
    crowd = generate_store(30, 900.0, seed=4, receivers=rx)
    assert crowd.receivers == rx.ids and rx.ids[0] == "gw" and len(rx.ids) == len(LAYOUT.sensors)
    captured = [f for f in crowd.frames if f.captured]
    node_only = [f for f in crowd.frames if not f.captured]
    assert captured and node_only
    assert all(f.levels for f in node_only)  # heard by somebody
    assert all(f.rx_channel == f.tx_channel for f in crowd.frames)  # each receiver on the frame's channel
    heard_by = [len(f.levels or {}) for f in captured]
    assert np.mean(heard_by) > 1.5  # a frame in the demo store reaches several nodes
    # levels fall with distance: a node hears near devices louder than far ones (path loss)
    assert all(-100 <= v <= -20 for f in crowd.frames for v in (f.levels or {}).values())
    again = generate_store(30, 900.0, seed=4, receivers=WifiReceivers(LAYOUT))
    assert [(f.ts, f.mac, f.levels) for f in again.frames] == [(f.ts, f.mac, f.levels) for f in crowd.frames]


def test_without_receivers_the_crowd_is_the_single_radio_one() -> None:
    a = generate_store(20, 600.0, seed=2)
    assert a.receivers is None
    assert all(f.levels is None and f.captured for f in a.frames)


def test_receivers_must_be_the_layouts() -> None:
    with pytest.raises(ValueError, match="capture"):
        WifiReceivers(LAYOUT, capture="nope")
    with pytest.raises(ValueError, match="nodes"):
        WifiReceivers(LAYOUT, nodes=["gw"])
    assert WifiReceivers(LAYOUT, nodes=[]).ids == ["gw"]
