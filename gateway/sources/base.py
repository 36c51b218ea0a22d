"""The one small protocol every observation source implements, and what else a source can do.

A source is an async generator of *batches* of observations (a batch amortises per-item overhead;
a source yields as soon as it has something, so latency stays low). Sources also expose a
``health`` record the status page and metrics read. The daemon never knows which source it has:
BLE, Wi-Fi, sensor nodes, replay and the simulator are interchangeable.

What a source can do beyond that is *declared* in its ``capabilities`` (a `Capabilities` record),
never probed with ``hasattr``: whether it is a recording, whether it ends on its own, which clock
its event time follows, whether the technician's "Restart scanner" may restart it, whether it
is fed by sensor nodes (per-node health; sensors going quiet and coming back; their Wi-Fi reports),
and whether it takes those nodes' Wi-Fi reports (the Wi-Fi capture's grouping).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NotRequired, Protocol, TypedDict, runtime_checkable

from gateway.models import Observation, SourceHealth

if TYPE_CHECKING:
    from gateway.identity.wifi_merge import NodeProbe

NodeStateName = Literal["unknown", "up", "quiet", "down"]


class NodeStatus(TypedDict):
    """One sensor node as the status page and metrics see it (no device data in it)."""

    name: str  # the node's name in its topics ([nodes] mapping key)
    sensor: str  # the layout sensor it stands for
    state: NodeStateName
    last_seen: float | None  # event time of its last message
    # the nodes source fills these too:
    kind: NotRequired[str | None]  # "espresense" | "native", from its first message
    online: NotRequired[bool | None]  # its status topic / last will
    silent_s: NotRequired[float | None]
    rate_per_s: NotRequired[float]
    messages: NotRequired[int]
    observations: NotRequired[int]
    dropped: NotRequired[dict[str, int]]
    last_error: NotRequired[str | None]  # which field was wrong, never the data
    latency_s: NotRequired[float]
    uptime_s: NotRequired[float | None]
    version: NotRequired[str | None]
    wifi_rssi: NotRequired[float | None]


SensorStateListener = Callable[[str, bool], None]
# takes probe requests sensor nodes heard (docs/wifi.md, "Several receivers")
ProbeSink = Callable[[list["NodeProbe"]], None]


class SensorNodes(Protocol):
    """Capability of a source fed by sensor nodes (see `Capabilities.nodes`)."""

    def node_status(self) -> list[NodeStatus]:
        """Per-node health, cheap (the status page asks a few times a second)."""
        ...

    def watch_sensors(self, listener: SensorStateListener) -> None:
        """Call ``listener(sensor, active)`` whenever a node goes quiet/down (False) or comes back
        (True). The daemon forwards it to the localizer, so a silent sensor is not read as "every
        device is far from it"."""
        ...

    def watch_wifi(self, sink: ProbeSink) -> None:
        """Hand the probe requests the nodes report to ``sink`` (a Wi-Fi source's
        ``Capabilities.probe_sink``); without a sink they are counted and dropped."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a source declares about itself; the defaults describe a live radio that cannot restart."""

    # A recording (JSON lines, pcap): never dropped under back-pressure (it waits instead), and it
    # carries its own event time, so the wall clock must not drive the pipeline while it plays.
    replay: bool = False
    # Ends on its own (a recording, a simulation with a duration): the daemon stops when every
    # finite source has ended.
    finite: bool = False
    # The clock event time follows while nothing is heard (visits time out on it). None: the wall
    # clock for a live source; for a recording, the data's own time.
    event_clock: Callable[[], float] | None = None
    # "Restart scanner" on the status page may restart it (the supervisor cancels its task and
    # starts ``batches()`` again; the source's ``finally`` releases the radio first).
    restartable: bool = False
    # Fed by sensor nodes: per-node health and sensor up/down changes.
    nodes: SensorNodes | None = None
    # Takes probe requests heard by sensor nodes (merged with its own frames into bursts).
    probe_sink: ProbeSink | None = None


RECORDING = Capabilities(replay=True, finite=True)
LIVE_RADIO = Capabilities(restartable=True)


@runtime_checkable
class Source(Protocol):
    name: str
    health: SourceHealth

    @property
    def capabilities(self) -> Capabilities:
        """What this source can do (see `Capabilities`); a class attribute is enough."""
        ...

    def batches(self) -> AsyncGenerator[list[Observation], None]:
        """Yield observation batches until the source ends (replay) or is cancelled (live).

        An async generator: the daemon closes it when its task stops or restarts, so its
        ``finally`` blocks run at once (scanner stopped, socket closed) before a new one starts.
        """
        ...
