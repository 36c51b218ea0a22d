"""The contract between the daemon and the status page.

The web app never reaches into the pipeline: it asks a ``StatusProvider`` for a typed
``StatusSnapshot`` and the live dots, and calls its async actions. Three providers implement it:
``gateway.runtime.status_provider.DaemonStatusProvider`` over the running daemon (what ``gateway
run`` serves), and for the page without radios ``gateway.demo.status_demo.SimulatedStatusProvider``
(a synthetic crowd) and ``gateway.demo.status_sim.SimPipelineProvider`` (the store simulator
through the real pipeline). Keeping the boundary this narrow is what lets the web server stay
cheap (it only serialises what it is handed) and lets the page be tested in a real browser
without a running daemon.

Every record below is plain data; the JSON the page receives is ``StatusSnapshot.as_dict()``
(field for field, documented in docs/status-api.md). Time stamps are Unix seconds in *event time*
(the simulator's clock in the demo); ``*_age_s`` are seconds before ``ts``.

Privacy: everything a provider returns may be shown to a technician and therefore holds
pseudonyms only - never a raw MAC, device name or IRK. ``add_optout`` receives the identifier the
technician typed (e.g. a MAC); the provider must not log, store or echo it back in clear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

from gateway.layout import Layout
from gateway.models import SourceHealth
from gateway.sources.base import NodeStatus
from gateway.storage import StoreStatus


@dataclass(slots=True, frozen=True)
class ActionResult:
    """Outcome of a technician action; ``message`` is shown on the page (as text)."""

    ok: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message}


@dataclass(slots=True, frozen=True)
class DeviceDot:
    """One dot on the live map: a pseudonymous subject at (x, y) metres with 1-sigma radius."""

    subject: str
    x: float
    y: float
    sigma_m: float
    zone: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "x": self.x, "y": self.y, "sigma_m": self.sigma_m, "zone": self.zone}


class UplinkStatus(TypedDict, total=False):
    state: str  # connected | connecting | backoff | retrying | stopped (or a provider's own words)
    broker: str | None  # host:port being used
    last_error: str | None
    reconnects: int
    published_events: int
    last_publish_ts: float | None


class OutboxStatus(TypedDict, total=False):
    backlog: int | None  # events not yet acknowledged by the broker
    oldest_age_s: float | None  # event-time age of the oldest of them
    evictions: int
    bytes: int | None
    # the disk (docs/storage.md): ok | limited | full, the effective cap, evictions by priority,
    # and - while the disk refuses appends - why, and what waits in RAM or was dropped there
    disk_state: str
    cap_bytes: int
    evictions_by_priority: dict[str, int]
    refusing: str | None
    pending: int
    dropped_in_ram: dict[str, int]


class DiskStatus(TypedDict, total=False):
    """Empty when the state directory cannot be read."""

    path: str
    total_bytes: int
    free_bytes: int
    presence_store: StoreStatus


class ClockStatus(TypedDict):
    synchronized: bool | None  # None: not known
    source: str  # system | simulated | ...
    offset_s: float | None


class EventRow(TypedDict):
    """A committed event (never a fix), newest first."""

    ts: float
    type: str
    subject: str | None
    zone: str | None


class ActivationRow(TypedDict):
    ts: float
    campaign_id: str
    content_id: str
    actor_id: str
    subject: str
    result: str


class CampaignRow(TypedDict, total=False):
    id: str
    name: str
    active: bool
    category: str | None
    zones: list[str]


class ActorRow(TypedDict):
    id: str
    name: str
    kind: str
    state: str


class PipelineStatus(TypedDict, total=False):
    """The queue in front of the pipeline and the load of its thread: the box's headroom.

    Empty when the provider has no pipeline of its own to report."""

    queued_batches: int  # observation batches waiting for the pipeline
    queued_observations: int
    wait_s: float  # how long the newest batch the pipeline took had waited in the queue
    max_wait_s: float  # the longest such wait since start
    busy_pct: float  # share of wall time the pipeline thread spent computing, recently
    cpu_pct: float  # the pipeline thread's CPU time, % of one core, recently
    longest_job_s: float  # the longest single job (a batch with a fix tick) since start
    dropped_late: int  # observations dropped: they waited longer than pipeline.max_delay_s
    loop_lag_s: float  # how late the event loop last woke a timer


@dataclass(slots=True)
class StatusSnapshot:
    """What ``StatusProvider.snapshot()`` returns; ``as_dict()`` is what /api/status serves."""

    ts: float
    version: str
    uptime_s: float
    gateway_id: str = ""
    store_id: str = ""
    ready: bool = True
    sources: list[SourceHealth] = field(default_factory=list)
    # sensor id -> event time last heard (None: never)
    sensors_last_heard: dict[str, float | None] = field(default_factory=dict)
    nodes: list[NodeStatus] = field(default_factory=list)  # sensor nodes, when a source has them
    uplink: UplinkStatus = field(default_factory=lambda: UplinkStatus())
    outbox: OutboxStatus = field(default_factory=lambda: OutboxStatus())
    disk: DiskStatus = field(default_factory=lambda: DiskStatus())
    clock: ClockStatus = field(default_factory=lambda: ClockStatus(synchronized=None, source="system", offset_s=None))
    recent_events: list[EventRow] = field(default_factory=list)
    recent_activations: list[ActivationRow] = field(default_factory=list)
    campaigns: list[CampaignRow] = field(default_factory=list)
    actors: list[ActorRow] = field(default_factory=list)
    # zone id -> number of subjects currently inside
    zone_occupancy: dict[str, int] = field(default_factory=dict)
    # Wi-Fi devices present at the last minute's end (gateway/identity/wifi_count.py):
    # {"ts", "devices", "sd", "window_s", "by_zone": {zone: n}, "interval"?: {"start", "interval_s", "devices"}}
    wifi_devices: dict[str, Any] = field(default_factory=dict)
    optouts: int = 0
    pipeline: PipelineStatus = field(default_factory=lambda: PipelineStatus())
    # counters a provider adds for the technician (pipeline totals, loop lag ...), shown as they are
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = [source_health_dict(s) for s in self.sources]
        return d


def source_health_dict(h: SourceHealth) -> dict[str, Any]:
    """JSON form of a source's health (the dataclass holds only plain values)."""
    return {
        "name": h.name,
        "state": h.state,
        "observations": h.observations,
        "dropped": dict(h.dropped),
        "last_observation_ts": h.last_observation_ts,
        "recoveries": h.recoveries,
        "detail": dict(h.detail),
    }


@runtime_checkable
class StatusProvider(Protocol):
    """What the status server is handed. Sync getters must be cheap and non-blocking (they run on
    the event loop, several times a second); actions may take time. An action a provider cannot
    do answers ``ActionResult(False, why)`` (the page shows it, the API answers 409)."""

    def ready(self) -> bool:
        """True once the pipeline is up (sources started, outbox open): /healthz answers 200."""
        ...

    def layout(self) -> Layout:
        """The store layout the pipeline uses (map geometry, sensors, zones)."""
        ...

    def snapshot(self) -> StatusSnapshot:
        """Health and activity (the /api/status panel)."""
        ...

    def devices(self) -> list[dict[str, Any]]:
        """Current dots: ``DeviceDot(...).as_dict()`` items (subject, x, y, sigma_m, zone)."""
        ...

    def devices_version(self) -> int | None:
        """A number that changes whenever ``devices()`` would return something new, so the live
        stream neither rebuilds nor resends an unchanged map; None: not tracked (rebuild every
        interval)."""
        ...

    def crlb_grid(self) -> dict[str, Any] | None:
        """Coverage overlay or None: ``{"x0", "y0", "step_m", "nx", "ny", "rmse_m": [[...] * nx] * ny}``
        (row j is y = y0 + j*step, column i is x = x0 + i*step; null cells are uncovered);
        ``gateway.status.coverage.coverage_grid`` builds it."""
        ...

    async def restart_scanner(self) -> ActionResult:
        """Restart the live sources that allow it (radios, node subscription)."""
        ...

    async def reload_config(self) -> ActionResult:
        """Re-read and validate the configuration, apply what can change live, say what needs a restart."""
        ...

    async def send_test_event(self) -> ActionResult:
        """Queue a heartbeat event through the outbox and uplink."""
        ...

    async def add_optout(self, identifier: str) -> ActionResult:
        """Opt a device out (identifier as typed: MAC / beacon id). Never log it."""
        ...
