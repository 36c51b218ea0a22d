"""The contract between the daemon and the status page.

The web app never reaches into the pipeline: it asks a ``StatusProvider`` for plain, JSON-able
data and calls its async actions. The daemon implements the provider over its live state; tests
and the demo use ``gateway.demo.status_demo.SimulatedStatusProvider``. Keeping the boundary this narrow
is what lets the web server stay cheap (it only serialises what it is handed) and lets the page
be tested in a real browser without a running daemon.

Privacy: everything a provider returns may be shown to a technician and therefore holds
pseudonyms only - never a raw MAC, device name or IRK. ``add_optout`` receives the identifier the
technician typed (e.g. a MAC); the provider must not log, store or echo it back in clear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.layout import Layout
from gateway.models import SourceHealth


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


@dataclass(slots=True)
class StatusSnapshot:
    """Typed builder for ``StatusProvider.snapshot()``; ``as_dict()`` is what /api/status serves.

    Every field is plain data. Time stamps are Unix seconds; ``*_age_s`` are seconds before ``ts``.
    """

    ts: float
    version: str
    uptime_s: float
    gateway_id: str = ""
    store_id: str = ""
    ready: bool = True
    sources: list[SourceHealth] = field(default_factory=list)
    # sensor id -> Unix time last heard (None: never)
    sensors_last_heard: dict[str, float | None] = field(default_factory=dict)
    # node name -> {"sensor": id, "state": "up"|"down", "last_seen": ts, ...}
    nodes: list[dict[str, Any]] = field(default_factory=list)
    # {"state": "connected"|"connecting"|"disconnected", "broker": "host:port", "last_error": str|None,
    #  "reconnects": int, "last_publish_ts": float|None}
    uplink: dict[str, Any] = field(default_factory=dict)
    # {"backlog": int, "oldest_age_s": float|None, "evictions": int, "bytes": int}
    outbox: dict[str, Any] = field(default_factory=dict)
    # {"path": str, "total_bytes": int, "free_bytes": int}
    disk: dict[str, Any] = field(default_factory=dict)
    # {"synchronized": bool|None, "source": str, "offset_s": float|None}
    clock: dict[str, Any] = field(default_factory=dict)
    # newest first: {"ts", "type", "subject", "zone"?}
    recent_events: list[dict[str, Any]] = field(default_factory=list)
    # newest first: {"ts", "campaign_id", "content_id", "actor_id", "subject", "result"}
    recent_activations: list[dict[str, Any]] = field(default_factory=list)
    # {"id", "name", "active": bool, ...}
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    # {"id", "name", "kind", "state", ...}
    actors: list[dict[str, Any]] = field(default_factory=list)
    # zone id -> number of subjects currently inside
    zone_occupancy: dict[str, int] = field(default_factory=dict)
    # Wi-Fi devices present at the last minute's end (gateway/identity/wifi_count.py):
    # {"ts", "devices", "sd", "window_s", "by_zone": {zone: n}, "interval"?: {"start", "interval_s", "devices"}}
    wifi_devices: dict[str, Any] = field(default_factory=dict)
    optouts: int = 0
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
    """What the daemon hands the status server. Sync getters must be cheap and non-blocking
    (they run on the event loop, several times a second); actions may take time."""

    def ready(self) -> bool:
        """True once the pipeline is up (sources started, outbox open): /healthz answers 200."""
        ...

    def layout(self) -> Layout:
        """The store layout the pipeline uses (map geometry, sensors, zones)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Health and activity, JSON-able; build it with ``StatusSnapshot(...).as_dict()``."""
        ...

    def devices(self) -> list[dict[str, Any]]:
        """Current dots: ``DeviceDot(...).as_dict()`` items (subject, x, y, sigma_m, zone)."""
        ...

    def crlb_grid(self) -> dict[str, Any] | None:
        """Coverage overlay or None: ``{"x0", "y0", "step_m", "nx", "ny", "rmse_m": [[...] * nx] * ny}``
        (row j is y = y0 + j*step, column i is x = x0 + i*step; null cells are uncovered)."""
        ...

    async def restart_scanner(self) -> ActionResult: ...

    async def reload_config(self) -> ActionResult: ...

    async def send_test_event(self) -> ActionResult: ...

    async def add_optout(self, identifier: str) -> ActionResult:
        """Opt a device out (identifier as typed: MAC / beacon id). Never log it."""
        ...
