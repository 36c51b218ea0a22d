"""Node reports merged with the capture radio's frames by (MAC, sequence number, time)."""

from __future__ import annotations

import pytest

from gateway.identity.wifi_merge import NodeLevels, NodeProbe

MAC = "DA:A1:19:00:00:01"


def test_before_any_node_report_the_capture_runs_alone() -> None:
    m = NodeLevels()
    assert m.capture(MAC, 10, 100.0) is None  # levels None: the grouping as with one radio


def test_a_report_before_its_frame_goes_with_the_frame() -> None:
    m = NodeLevels(window_s=2.0)
    assert m.node(NodeProbe(100.2, "n11", MAC, 10, -61.0)) is None
    assert m.node(NodeProbe(100.4, "n12", MAC, 10, -75.0)) is None
    assert m.node(NodeProbe(100.3, "n13", MAC, 11, -70.0)) is None  # another frame of the MAC
    assert m.capture(MAC, 10, 100.0) == {"n11": -61.0, "n12": -75.0}
    assert m.capture("DA:A1:19:00:00:02", 10, 100.1) == {}  # heard by no node
    assert m.matched == 2 and m.late == 0


def test_a_report_after_its_frame_comes_back_for_the_grouper() -> None:
    m = NodeLevels(window_s=2.0)
    m.node(NodeProbe(99.0, "n11", "DA:A1:19:00:00:09", 1, -60.0))  # nodes are active
    assert m.capture(MAC, 10, 100.0) == {}
    assert m.node(NodeProbe(101.0, "n14", MAC, 10, -58.0)) == (MAC, {"n14": -58.0})
    assert m.late == 1
    # too far apart in time: another frame with the same counter (it wraps at 4096)
    assert m.node(NodeProbe(105.0, "n14", MAC, 10, -58.0)) is None


def test_reports_nobody_captured_expire_counted_and_memory_is_bounded() -> None:
    m = NodeLevels(window_s=1.0, max_pending=3)
    for i in range(5):
        m.node(NodeProbe(100.0 + 0.01 * i, "n11", MAC, i, -60.0))
    assert m.overflow == 2
    assert m.capture("DA:A1:19:00:00:02", 1, 110.0) == {}
    assert m.unmatched == 3 and len(m) == 1  # only the capture frame just heard is kept
    with pytest.raises(ValueError, match="window_s"):
        NodeLevels(window_s=0.0)
