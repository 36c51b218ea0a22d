"""One probe request heard at several receivers: node reports merged with the capture (pure).

Sensor nodes report the probe requests they hear (``models.WifiNodeReport``, topic
``<nodes.native_prefix>/<node>/wifi``; decoded by ``sources/node_ingest.py``). A frame the
gateway's capture radio heard too is the same frame when its transmitter MAC and 802.11 sequence
number match and the times agree within ``window_s`` (node clocks and MQTT latency): its levels at
the nodes then go with it into the grouping (:meth:`WifiGrouper.offer`'s ``levels``), where a
burst's levels are followed across bursts (``wifi_links.pos_score``).

Either may come first. A node report waits up to ``window_s`` for its capture frame
(:meth:`NodeLevels.capture` takes it); one arriving after its capture frame is returned by
:meth:`NodeLevels.node` for :meth:`WifiGrouper.add_levels` (the burst's decision is held for
``wifi.group_hold_s``: a late level still counts while it is). Node reports of frames the capture
radio never heard are counted (``unmatched``) and dropped: the grouping's frames are the capture's
(docs/wifi.md, "Several receivers": with the nodes' own frames in, more MACs without a capture
level to join them by, both groupings split more).

Raw MACs are RAM only: kept at most ``window_s`` (frame time), at most ``max_pending`` reports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["NodeLevels", "NodeProbe"]


@dataclass(frozen=True, slots=True)
class NodeProbe:
    """A probe request a node heard, on the gateway's clock."""

    ts: float
    sensor: str  # the layout sensor the node is mapped to
    mac: str  # raw transmitter MAC (RAM only)
    seq: int
    rssi: float


class NodeLevels:
    """Node reports matched to the capture radio's frames by (MAC, sequence number, time)."""

    def __init__(self, window_s: float = 2.0, max_pending: int = 50_000) -> None:
        if not window_s > 0.0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.window_s = window_s
        self.max_pending = max_pending
        self._pending: dict[tuple[str, int], list[NodeProbe]] = {}  # node reports awaiting their frame
        self._pending_order: deque[tuple[float, tuple[str, int]]] = deque()
        self._captured: dict[tuple[str, int], float] = {}  # capture frames lately heard -> their time
        self._captured_order: deque[tuple[float, tuple[str, int]]] = deque()
        self.active = False  # a node report has been seen (before: the capture alone, levels None)
        self.matched = 0  # node reports merged with a capture frame (before it or after it)
        self.late = 0  # ... of which after it
        self.unmatched = 0  # expired without a capture frame (heard by nodes alone)
        self.overflow = 0  # dropped: more than max_pending waiting

    def __len__(self) -> int:
        return len(self._pending_order) + len(self._captured_order)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        po = self._pending_order
        while po and po[0][0] < horizon:
            _ts, key = po.popleft()
            waiting = self._pending.get(key)
            if waiting is not None:
                keep = [p for p in waiting if p.ts >= horizon]
                self.unmatched += len(waiting) - len(keep)
                if keep:
                    self._pending[key] = keep
                else:
                    del self._pending[key]
        co = self._captured_order
        while co and co[0][0] < horizon:
            ts, key = co.popleft()
            if self._captured.get(key) == ts:
                del self._captured[key]

    def capture(self, mac: str, seq: int, ts: float) -> dict[str, float] | None:
        """A frame the capture radio heard: its levels at the nodes that reported it so far
        (``{}``: none yet; None: no node has ever reported, so the grouping runs as with one radio)."""
        self._expire(ts)
        if not self.active:
            return None
        key = (mac, seq)
        self._captured[key] = ts
        self._captured_order.append((ts, key))
        waiting = self._pending.pop(key, None)
        out: dict[str, float] = {}
        if waiting:
            for p in waiting:
                if abs(p.ts - ts) <= self.window_s:
                    out[p.sensor] = p.rssi
                    self.matched += 1
                else:
                    self.unmatched += 1
        return out

    def node(self, p: NodeProbe) -> tuple[str, dict[str, float]] | None:
        """A node's report: ``(MAC, {sensor: level})`` when the capture radio heard the frame
        already (for :meth:`WifiGrouper.add_levels`), else None (kept for its frame)."""
        self.active = True
        self._expire(p.ts)
        key = (p.mac, p.seq)
        ts = self._captured.get(key)
        if ts is not None and abs(ts - p.ts) <= self.window_s:
            self.matched += 1
            self.late += 1
            return p.mac, {p.sensor: p.rssi}
        if len(self._pending_order) >= self.max_pending:
            self.overflow += 1
            return None
        self._pending.setdefault(key, []).append(p)
        self._pending_order.append((p.ts, key))
        return None

    def counts(self) -> dict[str, int]:
        return {"matched": self.matched, "late": self.late, "unmatched": self.unmatched, "overflow": self.overflow}
