"""Typed data shared by every stage of the pipeline.

Two families live here:

* **In-RAM pipeline records** (`Observation`, `Fix`): slotted dataclasses, cheap to build at
  100k/s. `Observation.device` may hold a *raw* identifier (MAC, beacon id) and therefore never
  leaves RAM; the identity stage replaces it with a pseudonym before anything is stored.
* **Wire messages** (pydantic, versioned, ``extra="forbid"``): every event that is stored in the
  outbox or published over MQTT. Their JSON Schemas are exported to ``docs/schemas/`` by
  ``gateway schemas``.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

WIRE_VERSION: Literal[1] = 1

# ---------------------------------------------------------------------------------------------
# In-RAM pipeline records
# ---------------------------------------------------------------------------------------------

Radio = Literal["ble", "wifi", "node", "sim"]


@dataclass(slots=True, frozen=True)
class AdvertInfo:
    """What one BLE advert says about its sender, for the rotation linker and presence (RAM only).

    ``kind`` is the device kind (``gateway.parsers.ble_vendors.DEVICE_KINDS``); ``signature`` the
    advert content that survives an address rotation (no name, no address); ``rotating`` whether the
    address is a private (rotating) one; ``seq`` a counter that keeps counting across a rotation.
    """

    kind: str
    signature: str
    rotating: bool = True
    seq: int | None = None


@dataclass(slots=True)
class Observation:
    """One reception of one device at one sensor.

    ``ts`` is Unix time in seconds (event time: the pipeline never reads the clock itself).
    ``device`` is the identifier as heard (raw MAC, beacon id, simulator id) - RAM only.
    ``rssi_at_1m`` is the advertised calibrated power normalised to 1 m, when the frame has one.
    """

    ts: float
    sensor: str
    device: str
    rssi: float
    radio: Radio = "ble"
    rssi_at_1m: float | None = None
    # Extra linking hints filled by parsers (e.g. Wi-Fi fingerprint group, resolved IRK identity):
    # ``irk_link(irk)``, ``app_link(token)`` or a group id. Identity turns it into the subject.
    link: str | None = None
    # What the BLE advert said about its sender (kind, rotation-stable content); None: not known.
    adv: AdvertInfo | None = None
    # Wi-Fi: set on one frame of each heard scan burst - the presence it stands for (the count)
    presence: PresenceMark | None = None


@dataclass(slots=True, frozen=True)
class PresenceMark:
    """What one heard Wi-Fi scan burst stands for (gateway/identity/wifi_presence.py): device-seconds
    of presence around it, and arrivals (new devices), each with a relative standard deviation."""

    presence_s: float
    rel_sd: float
    arrivals: float
    arrivals_rel_sd: float
    # the burst surely continues its group's previous one (the same MAC, a public MAC's visit, a
    # link sure by gap-blind evidence): the count takes the device as present in between
    follows: bool = False


_IRK_LINK_TAG = b"gateway/irk-link/v1\x00"


def irk_link(irk: bytes) -> str:
    """The ``Observation.link`` value for a device whose RPA resolved with ``irk``.

    A one-way tag of the IRK (SHA-256, domain-separated, truncated), so the link string is not the
    IRK itself; parsers, the BLE stage and consent records all derive it from the IRK.
    """
    if len(irk) != 16:
        raise ValueError(f"an IRK is 16 bytes, got {len(irk)}")
    return "irk:" + hashlib.sha256(_IRK_LINK_TAG + irk).hexdigest()[:32]


def app_link(token: str) -> str:
    """The ``Observation.link`` value for a device that advertised a companion-app token."""
    t = token.strip()
    if not t:
        raise ValueError("empty app token")
    return "app:" + t


@dataclass(slots=True)
class Fix:
    """A position estimate for one (pseudonymous) device at time ``ts``."""

    ts: float
    device: str
    x: float
    y: float
    sigma_m: float
    zone: str | None = None


@dataclass(slots=True)
class SourceHealth:
    """What a source reports about itself (status page, metrics, supervisor)."""

    name: str
    state: str = "starting"  # starting | running | degraded | failed | stopped
    observations: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_observation_ts: float | None = None
    recoveries: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


# ---------------------------------------------------------------------------------------------
# Wire messages
# ---------------------------------------------------------------------------------------------


class Priority(IntEnum):
    """Eviction order when the outbox is full: lowest priority is evicted first."""

    FIX = 0  # raw position fixes (optional, high volume)
    AGGREGATE = 1  # anonymous aggregates (can be recomputed roughly; k-anonymous)
    PRESENCE = 2  # visit / zone events
    ACTIVATION = 3  # activation reports (contractual: evicted last)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SubjectKind = Literal["pseudonym", "customer"]


class EventBase(WireModel):
    v: Literal[1] = WIRE_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Unique id; dedup key")
    ts: float = Field(description="Unix time (s) the event happened in the store")
    store_id: str


class SubjectEvent(EventBase):
    subject: str = Field(description="Daily pseudonym, or the platform's customer reference if consented")
    subject_kind: SubjectKind = "pseudonym"


class VisitStarted(SubjectEvent):
    type: Literal["visit.started"] = "visit.started"


class ZoneEntered(SubjectEvent):
    type: Literal["zone.entered"] = "zone.entered"
    zone: str


class ZoneLeft(SubjectEvent):
    type: Literal["zone.left"] = "zone.left"
    zone: str
    dwell_s: float = Field(ge=0)


class VisitEnded(SubjectEvent):
    type: Literal["visit.ended"] = "visit.ended"
    started_ts: float
    duration_s: float = Field(ge=0)
    visitor: bool = Field(description="False for a passer-by")
    path: list[str] = Field(default_factory=list, description="Zones visited, in order")
    dwell_by_zone: dict[str, float] = Field(default_factory=dict)
    visit_count: int | None = Field(default=None, description="Visits by this subject (incl. this one)")
    days_since_last_visit: float | None = None
    avg_visit_s: float | None = None
    visits_per_week: float | None = Field(
        default=None, description="Frequency over the subject's history (consented customers only)"
    )
    zone_affinity: dict[str, float] = Field(
        default_factory=dict, description="Share of the subject's in-store dwell per zone over its history"
    )
    resident: bool = Field(
        default=False,
        description="The subject turned out to be staff, a fixture or a neighbour (present all day): not a visit",
    )


class PositionFix(SubjectEvent):
    type: Literal["fix"] = "fix"
    x: float
    y: float
    sigma_m: float
    zone: str | None = None


class Aggregate(EventBase):
    type: Literal["aggregate"] = "aggregate"
    interval_start: float
    interval_s: float
    zone: str | None = Field(default=None, description="None for the whole store")
    visitors: int = Field(ge=0)
    passers_by: int = Field(ge=0)
    conversion: float | None = None
    dwell_histogram: dict[str, int] = Field(default_factory=dict)
    residents: int = Field(default=0, ge=0, description="Staff, fixtures and neighbours seen (set apart)")


class DeviceCount(EventBase):
    """Wi-Fi devices present (gateway/identity/wifi_count.py): the mean number present during the
    interval, estimated from the presence each heard scan burst stands for (not from device groups:
    gateway/identity/wifi_presence.py); for an aggregate interval also the distinct devices."""

    type: Literal["wifi.devices"] = "wifi.devices"
    interval_start: float
    interval_s: float = Field(gt=0)
    zone: str | None = Field(default=None, description="None for the whole store; a zone: devices located in it")
    devices: float = Field(ge=0, description="Estimated devices present (mean over the interval)")
    sd: float = Field(ge=0, description="Its uncertainty (one standard deviation)")
    window_s: float = Field(gt=0, description="Bursts heard within this window centred on a moment count for it")
    distinct: float | None = Field(
        default=None, ge=0, description="Aggregate intervals, whole store: distinct devices present during it"
    )
    distinct_sd: float | None = Field(default=None, ge=0, description="Its uncertainty (one standard deviation)")


class ActivationReport(EventBase):
    type: Literal["activation"] = "activation"
    campaign_id: str
    content_id: str
    actor_id: str
    subject: str
    subject_kind: SubjectKind = "pseudonym"
    result: str
    detail: str | None = None


class Heartbeat(EventBase):
    type: Literal["heartbeat"] = "heartbeat"
    note: str | None = None


Event = Annotated[
    VisitStarted
    | ZoneEntered
    | ZoneLeft
    | VisitEnded
    | PositionFix
    | Aggregate
    | DeviceCount
    | ActivationReport
    | Heartbeat,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_PRIORITY: dict[str, Priority] = {
    "fix": Priority.FIX,
    "aggregate": Priority.AGGREGATE,
    "wifi.devices": Priority.AGGREGATE,
    "visit.started": Priority.PRESENCE,
    "zone.entered": Priority.PRESENCE,
    "zone.left": Priority.PRESENCE,
    "visit.ended": Priority.PRESENCE,
    "heartbeat": Priority.PRESENCE,
    "activation": Priority.ACTIVATION,
}


def priority_of(event: EventBase) -> Priority:
    return EVENT_PRIORITY.get(str(getattr(event, "type", "")), Priority.PRESENCE)


class UplinkEvent(WireModel):
    """One event as published: the envelope adds the gateway and its sequence number."""

    v: Literal[1] = WIRE_VERSION
    gateway_id: str
    seq: int = Field(ge=1, description="Per-gateway sequence number, contiguous from 1")
    event: Event


class UplinkBatch(WireModel):
    """Several events in one MQTT message (used when the backlog is large)."""

    v: Literal[1] = WIRE_VERSION
    gateway_id: str
    batch: list[UplinkEvent] = Field(min_length=1)


class GatewayStatus(WireModel):
    """Retained status message (birth: online; last will: offline)."""

    v: Literal[1] = WIRE_VERSION
    gateway_id: str
    store_id: str
    state: Literal["online", "offline"]
    ts: float | None = None
    version: str | None = None


class WifiNodeProbe(WireModel):
    """One probe request a sensor node heard (``WifiNodeReport.probes``)."""

    dt: int = Field(ge=0, le=60_000, description="Milliseconds after the report's t0_ms (node clock)")
    addr: str = Field(
        pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$",
        description="Transmitter MAC as heard (RAM only in the gateway: merged with the capture, never stored)",
    )
    seq: int = Field(ge=0, le=4095, description="802.11 sequence number of the frame")
    rssi: float = Field(ge=-127, le=20, description="Signal (dBm) at the node")
    ch: int = Field(ge=1, le=196, description="Channel the node was tuned to")


class WifiNodeReport(WireModel):
    """A sensor node's batch of probe requests heard (topic ``<nodes.native_prefix>/<node>/wifi``,
    store-local broker). The gateway merges each with its own capture radio's frame (same MAC and
    sequence number, within ``wifi.node_merge_s``): one frame heard at several receivers is one
    burst with a level per receiver (docs/wifi.md, "Several receivers"). No SSID, no elements:
    the capture radio has them."""

    v: Literal[1] = 1
    node: str = Field(min_length=1, max_length=64, description="The node's name; must equal the topic's")
    t0_ms: int = Field(gt=0, lt=2**53, description="Node clock (Unix ms) the probes' dt count from")
    probes: list[WifiNodeProbe] = Field(max_length=1024)


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "uplink-event": UplinkEvent,
    "uplink-batch": UplinkBatch,
    "gateway-status": GatewayStatus,
    "wifi-node-report": WifiNodeReport,
}
