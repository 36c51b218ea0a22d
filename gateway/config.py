"""The one settings model: TOML file + ``GATEWAY_`` environment variables (nested with ``__``).

Precedence (highest first): explicit overrides passed in code, environment variables, the TOML
file, the defaults below. Unknown keys are errors everywhere. ``gateway config check FILE`` prints
each error with its field path; ``gateway config schema`` prints the JSON Schema; every key is
documented in ``docs/config.md`` (generated from the ``description`` texts here by
``gateway config docs``).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.layout import format_validation_error

# Ids are MQTT topic levels and sequence namespaces: no '.', which NATS maps to its own separator
# (a dotted id is refused by a NATS cluster; docs/fleet.md), no '/', '+', '#'.
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]


QUIET_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d\s*-\s*([01]\d|2[0-3]):[0-5]\d$")


def _check_tz(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (an IANA name such as 'Europe/Paris')") from None
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class GatewayIdentity(Section):
    id: Id = Field(default="gw-demo", description="This gateway's id; topic prefix and sequence namespace")
    store_id: Id = Field(default="demo-store", description="The store this gateway serves")


class Paths(Section):
    state_dir: Path = Field(default=Path("var"), description="Writable state: outbox, content state")
    layout: Path | None = Field(default=None, description="Store layout TOML; None uses the embedded example store")


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level")
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: key=value on a terminal, JSON lines otherwise"
    )


class SimulatorSettings(Section):
    enabled: bool = Field(default=False, description="Feed the pipeline from the store simulator")
    seed: int = Field(default=1, description="Random seed; same seed, same store day")
    speed: float = Field(default=1.0, gt=0, le=10000, description="Simulated seconds per wall second")
    start_ts: float = Field(default=1_767_261_600.0, description="Simulated start (Unix s); 2026-01-01 10:00Z")
    duration_s: float | None = Field(default=None, gt=0, description="Stop after this simulated time")
    shoppers_per_hour: float = Field(default=120.0, ge=0, le=100_000, description="Arrival rate")
    passer_by_fraction: float = Field(default=0.3, ge=0, le=1, description="Share who only pass the entrance")
    beacons: int = Field(default=2, ge=0, le=1000, description="Fixed beacons placed in the store")
    shadowing_db: float = Field(default=4.0, ge=0, le=20, description="Log-normal shadowing sigma (dB)")
    tx_spread_db: float = Field(default=3.0, ge=0, le=20, description="Per-device transmit power spread (dB)")
    fade_probability: float = Field(default=0.03, ge=0, le=1, description="Chance of a body-shadow fade")
    fade_db: float = Field(default=12.0, ge=0, le=40, description="Depth of a body-shadow fade (dB)")
    persistent_shadowing_db: float = Field(
        default=0.0,
        ge=0,
        le=20,
        description="Shadowing that persists per phone and sensor, sd (dB; gateway/sim/radio.py)",
    )
    shadowing_tau_s: float = Field(default=10.0, gt=0, le=3600, description="Time constant of that shadowing (s)")
    packet_loss: float = Field(
        default=0.0, ge=0, lt=1, description="Chance a sensor misses an advert whatever its strength"
    )
    detection_floor_dbm: float = Field(default=-95.0, ge=-130, le=-30, description="Weakest RSSI heard")
    advert_interval_s: float = Field(default=1.0, gt=0, le=60, description="Per-device advert interval")
    mac_rotation_s: float = Field(default=900.0, gt=0, description="Phones rotate random MACs this often")
    rotation_jitter_s: float = Field(
        default=60.0, ge=0, le=600, description="Each address lasts mac_rotation_s +- up to this (uniform)"
    )
    link_rotations: bool = Field(
        default=False,
        description="Mark a phone's address rotations as linkable (a consented phone whose IRK the box holds)",
    )
    staff: int = Field(default=2, ge=0, le=100, description="Staff walking the store all day (phone, some a scanner)")
    fixtures: int = Field(default=3, ge=0, le=100, description="Fixed devices in the store (TV, printer, Apple TV)")
    ios_share: float = Field(default=0.5, ge=0, le=1, description="Share of shoppers whose phone is an iPhone")
    android_silent: float = Field(
        default=0.3, ge=0, le=1, description="Share of Android phones that send no BLE advert while idle"
    )
    tick_s: float = Field(default=0.5, gt=0, le=10, description="Simulated step; fixed for reproducibility")
    street_beyond_m: float = Field(
        default=0.0,
        ge=0,
        le=500,
        description="People walk on this far beyond each end of the layout's pavement (still heard), not vanish there",
    )


class ReplaySettings(Section):
    enabled: bool = Field(default=False, description="Feed the pipeline from a JSON-lines replay file")
    path: Path | None = Field(default=None, description="Observations file ({ts,sensor,device,rssi} lines)")
    speed: float = Field(default=0.0, ge=0, description="0: as fast as possible; 1: recorded pace; N: N x")


class BleSettings(Section):
    enabled: bool = Field(default=False, description="Scan with the gateway's own BLE adapter (bleak)")
    adapter: str = Field(default="hci0", description="BlueZ adapter name")
    sensor_id: str = Field(default="gw", description="Layout sensor id of the gateway's own radio")
    passive: bool = Field(default=True, description="Passive scanning where BlueZ supports it")
    stall_s: float = Field(default=30.0, gt=0, description="Advert silence that triggers recovery")
    check_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="Batch cadence and watchdog check interval of the BLE source"
    )
    power_cycle_off_s: float = Field(
        default=1.0, ge=0, le=60, description="Time the adapter stays powered off during a recovery power cycle"
    )
    failed_retry_s: float = Field(
        default=300.0, gt=0, description="Once the radio is reported failed, retry a power cycle this often"
    )
    irk_file: Path | None = Field(
        default=None,
        description="Known IRKs ('<identity-id> <32 hex digits>' per line) for RPA resolution; read into RAM only",
    )


class WifiSettings(Section):
    enabled: bool = Field(default=False, description="Capture probe requests on a monitor interface")
    interface: str = Field(default="mon0", description="Monitor-mode interface the capture relay opens")
    sensor_id: str = Field(default="gw", description="Layout sensor id of the gateway's Wi-Fi radio")
    channels: list[int] = Field(default=[1, 6, 11], description="Channels the capture relay hops over")
    dwell_s: float = Field(default=0.25, gt=0, le=60, description="Time on each channel")
    set_monitor: bool = Field(
        default=False, description="The capture relay puts the interface into monitor mode at start"
    )
    pcap: Path | None = Field(default=None, description="Replay this pcap/pcapng instead of capturing")
    pcap_speed: float = Field(default=0.0, ge=0, description="pcap replay pace: 0 as fast as possible, 1 recorded")
    linktype: Literal["auto", "radiotap", "ieee80211"] = Field(
        default="auto",
        description="Frame format on the interface; auto: from its ARPHRD type (803 radiotap, 801 plain 802.11)",
    )
    hop: bool = Field(
        default=True, description="The capture relay hops over `channels` (CAP_NET_ADMIN); false: stay put"
    )
    keep_off_channel: bool = Field(
        default=False, description="Keep frames heard off the channel they were sent on (their RSSI is too low)"
    )
    kernel_filter: bool = Field(
        default=True, description="BPF filter on the relay's packet socket: only probe requests leave the kernel"
    )
    batch_max: int = Field(
        default=512, ge=1, le=65536, description="Frames read per event-loop wake-up (max), relay and daemon"
    )
    max_pending: int = Field(default=50_000, ge=100, description="Observations buffered for a slow consumer")
    rcvbuf_bytes: int = Field(default=4 << 20, ge=65536, description="Receive buffer of the relay's packet socket")
    capture_socket: Path = Field(
        default=Path("/run/gateway/capture.sock"),
        description=(
            "Unix datagram socket the daemon binds (mode 0660) and the capture relay "
            "(gateway-wifi-capture.service) sends frames to; in gateway.service's RuntimeDirectory"
        ),
    )
    relay_silent_s: float = Field(
        default=5.0,
        gt=1,
        le=300,
        description="The capture relay is reported silent (status page, /metrics) after this long without a datagram",
    )
    count_window_s: float = Field(
        default=300.0,
        ge=60,
        le=900,
        description=(
            "Wi-Fi devices present in a minute are estimated from the scan bursts heard within this window "
            "centred on it (docs/wifi.md, Counting); a minute's count is published half of it after the minute"
        ),
    )
    group_hold_s: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description=(
            "Longest hold (frame time) of a new burst's frames until its device is decided (usually when the "
            "burst is over, ~1.5 s); 0: at once. Held frames later than localization.window_s are counted "
            "too_late instead of localized. `gateway decode pcap --group-hold` defaults to 30"
        ),
    )
    node_merge_s: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description=(
            "A sensor node's report of a probe request (topic <nodes.native_prefix>/<node>/wifi) is the capture "
            "radio's frame when MAC and sequence number match within this time; its level at the node then goes "
            "into the grouping (docs/wifi.md, Several receivers)"
        ),
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not (1 <= c <= 14 or 32 <= c <= 177)]
        if bad:
            raise ValueError(f"{bad} not Wi-Fi channels (2.4 GHz: 1-14, 5 GHz: 32-177)")
        if len(set(v)) != len(v):
            raise ValueError("a channel is listed twice")
        return v


class NodesSettings(Section):
    enabled: bool = Field(default=False, description="Read in-store sensor nodes over the local broker")
    topic_prefix: str = Field(
        default="espresense", pattern=r"^[^+#/]([^+#]*[^+#/])?$", description="ESPresense topic root (no wildcards)"
    )
    mapping: dict[str, str] = Field(
        default_factory=dict, description="Node (room) name -> layout sensor id; unmapped nodes are refused"
    )
    silent_after_s: float = Field(default=30.0, gt=0, description="A node silent this long is 'down'")
    native_prefix: str = Field(
        default="retail-node",
        pattern=r"^[^+#/]([^+#]*[^+#/])?$",
        description="Native topic root: <prefix>/<node>/adv and /status",
    )
    quiet_gap_factor: float = Field(
        default=10.0,
        gt=1,
        le=1000,
        description="A node silent for this many of its recent mean message gaps is 'quiet': not expected to hear",
    )
    min_quiet_s: float = Field(default=3.0, gt=0, description="Never call a node quiet sooner than this")
    latency_s: float = Field(
        default=0.1,
        ge=0,
        le=10,
        description="Assumed node->gateway delay for messages without a node clock (ESPresense); ts = arrival - this",
    )
    latency_max_s: float = Field(
        default=1.0, ge=0, le=30, description="Bound on any node's latency estimate (native: measured per node)"
    )
    max_clock_skew_s: float = Field(
        default=5.0, gt=0, le=3600, description="Native batches whose node clock is further off are dropped"
    )
    max_rate_per_node: float = Field(
        default=1000.0, gt=0, description="Messages/s a node may send (burst: one second's worth); excess dropped"
    )
    max_pending: int = Field(default=100_000, ge=1000, description="Messages buffered for a slow pipeline")
    reconnect_max_s: float = Field(default=10.0, gt=0, le=300, description="Largest local-broker reconnect delay")
    broker_username: str | None = Field(default=None, description="User name on the local broker (None: anonymous)")
    broker_password: str | None = Field(default=None, description="Password on the local broker")

    @model_validator(mode="after")
    def _mapping_needed(self) -> NodesSettings:
        if self.enabled and not self.mapping:
            raise ValueError("nodes.enabled is true but nodes.mapping is empty (every node would be refused)")
        return self


class LocalizationSettings(Section):
    fix_interval_s: float = Field(default=1.0, gt=0, le=60, description="Fix cadence per device")
    window_s: float = Field(default=3.0, gt=0, le=120, description="Observation window per fix")
    forget_after_s: float = Field(default=30.0, gt=0, description="Drop a device's track after silence")
    detection_floor_dbm: float = Field(default=-95.0, description="Weakest RSSI the sensors report")
    sigma_db: float = Field(default=6.0, gt=0, le=30, description="Path-loss noise sigma (dB)")
    estimator: Literal["ml", "centroid"] = Field(
        default="ml", description="ml: censored robust ML + IMM tracker; centroid: first-cut fallback"
    )
    learn_radio: bool = Field(
        default=True,
        description="Learn each sensor's detection floor and packet loss and the advert-to-advert noise from"
        " the data (detection_floor_dbm, packet_loss and sigma_db are then only the starting values)",
    )
    shadowing_db: float = Field(
        default=2.0,
        ge=0,
        le=20,
        description="Part of the RSSI noise that persists over seconds (body, shelves; dB): added to the"
        " learnt advert-to-advert noise for the estimator's sigma (learn_radio)",
    )
    tx_spread_db: float = Field(default=4.0, gt=0, le=30, description="Prior sd of a phone's transmit offset (dB)")
    robust_nu: float = Field(
        default=4.0, ge=0, le=100, description="Student-t degrees of freedom for RSSI residuals (0: Gaussian)"
    )
    packet_loss: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Chance a sensor misses an advert for reasons other than weak signal; when unset and"
        " [nodes] is enabled: 0.3 (node reports arrive with jitter, docs/nodes.md)",
    )
    track_robust_nu: float = Field(
        default=16.0,
        ge=0,
        le=100,
        description="Student-t degrees of freedom in the per-tick update of a walking device (0: Gaussian)",
    )
    track_nu_p_walk: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="Walking-model probability above which a device's per-tick update uses track_robust_nu",
    )
    grid_step_m: float = Field(default=1.0, gt=0.1, le=10, description="Grid step of the initial position search")
    static_sigma_m: float = Field(
        default=0.03, gt=0, le=5, description="Standing model: position drift (m per sqrt(s))"
    )
    accel_sigma: float = Field(default=0.2, gt=0, le=10, description="Walking model: acceleration noise (m/s^2)")
    stand_s: float = Field(default=20.0, gt=0, description="Mean time a shopper stands before walking (s)")
    walk_s: float = Field(default=60.0, gt=0, description="Mean time a shopper walks before standing (s)")
    init_extra_var_m2: float = Field(
        default=4.0, ge=0, description="Extra position variance of a new track (multi-modal first fix)"
    )
    track_iterations: int = Field(
        default=3, ge=1, le=50, description="Gauss-Newton iterations per tick for a tracked device"
    )
    standing_window_s: float = Field(
        default=60.0, gt=0, le=3600, description="Memory of the standing window (ML over it while standing)"
    )
    walking_window_s: float = Field(default=2.0, gt=0, le=60, description="Memory of that window while walking")
    standing_p_walk: float = Field(
        default=0.6, gt=0, le=1, description="Walking-model probability below which a device counts as standing"
    )
    standing_mix: bool = Field(
        default=True,
        description="While standing, output the mixture of the standing-window fix and the tracker by"
        " P(walking) (off: the window fix alone)",
    )
    standing_min_adverts: float = Field(
        default=3.0, ge=1, description="Adverts in the standing window before its ML fix replaces the tracker's"
    )
    recent_window_s: float = Field(
        default=3.0, gt=0, le=60, description="Memory of the recent window tracks are checked against"
    )
    check_tx_sd_db: float = Field(
        default=0.5,
        ge=0,
        le=30,
        description="Track check of a walking device: its transmit offset is the tracker's, give or take this"
        " (dB) on top of the tracker's own uncertainty (0: the population prior tx_spread_db)",
    )
    check_grid_m: float = Field(default=3.0, gt=0.5, le=10, description="Grid step of the track check")
    check_every_ticks: int = Field(default=1, ge=1, le=100, description="Check each track every N ticks")
    restart_nll: float = Field(
        default=5.0, gt=0, description="Restart a track the recent data place >3 m away better by this (nats)"
    )
    report_jitter_s: float = Field(
        default=0.03,
        ge=0,
        le=1,
        description="Spread of one advert's reports across sensors: reports this close to a tick wait for the"
        " next one, so an advert is not split across two ticks (0: off; not for devices clearly walking)",
    )
    standing_search_nll: float = Field(
        default=2.0,
        ge=0,
        description="At each track check, move a standing device's window fix to the window's global best fit"
        " (grid search) when that explains the window better by this (nats; 0: off). The per-tick refinement is"
        " local and a wrong first fix (e.g. at a wall) otherwise stays in its basin",
    )
    standing_search_every_ticks: int = Field(
        default=3, ge=1, le=1000, description="Re-search the standing devices' windows every N ticks (all at once)"
    )
    standing_search_grid_m: float = Field(
        default=2.0,
        gt=0.5,
        le=10,
        description="Grid step of the standing re-search; a fix whose grid optimum lies farther than this is"
        " refined there (a 3 m grid never reached the wrong basins 2-4 m from the right one of small stores)",
    )
    standing_mean_sd: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="A standing device's fix is the posterior mean of its window over a 5 x 5 stencil this many"
        " sd (of the window fix) either side of the mode, not the mode itself: near walls and along the"
        " position / transmit-offset ridge the posterior is lopsided (0: the mode, the default: with it on a"
        " tick's fixes depend on how the tick is batched, docs/localization.md 9.10)",
    )
    standing_mean_every_ticks: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Recompute that posterior-mean correction every N ticks per device (in between, the last one)",
    )
    walkable_mean_sd: float = Field(
        default=2.5,
        ge=0,
        le=10,
        description="A tracked fix is the mean of its Gaussian cut to the walkable area (a 7 x 7 stencil this many"
        " sd either side), not its projection onto it: an estimate spilling over a wall is moved inside, not"
        " onto the wall (0: projection only; standing devices' window fixes are such means already)",
    )
    time_align: bool = Field(
        default=True,
        description="Fuse each tick's adverts at their mean time and extrapolate the fix to the tick"
        " (off: as if heard at the tick, which lags a walker by speed x window / 2)",
    )
    reinit_after_s: float = Field(default=15.0, gt=0, description="A track unheard this long restarts")
    sensor_silent_s: float = Field(
        default=15.0, gt=0, description="A sensor that heard nothing this long is treated as down (no censoring)"
    )
    zone_margin_m: float = Field(default=0.75, ge=0, description="Enter a zone at once only this far inside it")
    zone_confirm_fixes: int = Field(
        default=3, ge=1, le=100, description="Or after this many consecutive fixes in the new zone"
    )
    tick_chunk_devices: int = Field(
        default=0,
        ge=0,
        description="Compute a fix tick in parts of this many devices and hand each part's events on at once"
        " (0: one part, the default: parts pay the tick's fixed cost each and delay the last devices' fixes,"
        " so they lower the median hand-over but raise the p99 and the CPU). Fixes equal to one part's up to"
        " float rounding (part sizes change the estimator's numerics in the last bits)",
    )


class PresenceSettings(Section):
    enter_debounce_s: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="A new in-store zone must hold this long before 'zone.entered' (backdated)",
    )
    door_debounce_s: float = Field(
        default=4.0,
        ge=0,
        le=600,
        description="From an in-store zone into a door zone (kind entrance): how long it must hold (strays beside it)",
    )
    exit_debounce_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="Time seen outside the store (no zone / outside zone) before 'zone.left' (backdated)",
    )
    zone_hysteresis_m: float = Field(
        default=1.0,
        ge=0,
        le=20,
        description="Leaving the store: a fix this close to the current in-store zone still counts as in it",
    )
    visit_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Silence (or time outside the store) that ends a visit"
    )
    visitor_min_s: float = Field(
        default=60.0, ge=0, description="Only at the entrance for less than this: passer-by, not visitor"
    )
    max_visit_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="A visit longer than this is a resident device (staff, fixed beacon): ended, then ignored",
    )
    aggregate_interval_s: float = Field(
        default=900.0, gt=0, le=86400, description="Aggregate publication interval (aligned to Unix time)"
    )
    k_anonymity: int = Field(default=5, ge=1, description="Aggregates with fewer distinct subjects are withheld")
    dwell_bins_s: list[float] = Field(
        default=[60.0, 300.0, 900.0, 1800.0, 3600.0],
        min_length=1,
        description="Upper edges (s) of the aggregate dwell histogram bins; a last open bin is added",
    )
    front_from_outside: bool = Field(
        default=True,
        description="In-store zones that border an outside zone (pavement) qualify a visit like the entrance",
    )
    front_margin_m: float = Field(
        default=1.5, ge=0, le=10, description="Fixes closer than this to an outside zone are not 'clearly inside'"
    )
    visitor_deep_s: float = Field(
        default=10.0, ge=0, le=600, description="A visit qualifies only after this long seen clearly inside the store"
    )
    visitor_confirm_s: float = Field(
        default=45.0,
        ge=0,
        le=600,
        description="A visit qualifies in a zone past the entrance only once it has lasted this long (strays)",
    )
    resident_after_s: float = Field(
        default=3600.0,
        gt=0,
        description="A linked device present this long (staff phone, fixture, neighbour) is set apart as resident",
    )
    companion_radius_m: float = Field(
        default=5.0,
        ge=0,
        le=20,
        description="A tracker/earbuds/wearable this close to a phone moves with it: not an extra visitor",
    )
    report_passers_by: bool = Field(
        default=True, description="Emit 'visit.ended' (visitor=false) for passers-by; aggregates count them anyway"
    )
    publish_fixes: bool = Field(default=False, description="Also publish raw fixes (low priority)")

    @model_validator(mode="after")
    def _bins_increasing(self) -> PresenceSettings:
        b = self.dwell_bins_s
        if any(b[i] >= b[i + 1] for i in range(len(b) - 1)) or b[0] <= 0:
            raise ValueError("presence.dwell_bins_s must be positive and strictly increasing")
        return self


class LinkingSettings(Section):
    """Joining a device's address rotations without its IRK (``gateway/identity/linking.py``)."""

    enabled: bool = Field(default=True, description="Link address rotations of one device inside a pseudonym period")
    max_gap_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Longest silence between the old address's last and the new one's first advert",
    )
    rssi_tol_db: float = Field(
        default=6.5, gt=0, le=40, description="Largest mean RSSI difference (shared sensors) across the switch"
    )
    ambiguity_db: float = Field(
        default=1.5, ge=0, le=20, description="No link unless the best candidate beats the second by this much"
    )


class PrivacySettings(Section):
    rotation_time: str = Field(
        default="21:00",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="Local time the pseudonym key rotates (store closing: visits are not split)",
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the store, for rotation_time")
    rotation_period_h: float = Field(default=24.0, gt=0, le=24 * 31, description="Pseudonym key lifetime")
    pseudonym_bytes: int = Field(default=12, ge=8, le=32, description="Truncated HMAC length")
    retention_days: float = Field(default=30.0, gt=0, description="Local tables are purged after this")
    consent_scope: str = Field(
        default="presence",
        min_length=1,
        description="Consent scope that lets a device be reported under its customer reference",
    )
    presence_db: Path | None = Field(
        default=None, description="Visit-history SQLite file; default <state_dir>/presence.sqlite3"
    )
    optout_key_file: Path | None = Field(
        default=None,
        description="Secret key for hashing opt-out identifiers (created 0600); default <state_dir>/optout.key",
    )

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        return _check_tz(v)


class BrokerEndpoint(Section):
    host: str = Field(description="Broker host")
    port: int = Field(ge=1, le=65535, description="Broker port")


class MqttSettings(Section):
    host: str | None = Field(default=None, description="Cloud broker host; None in demo: embedded broker")
    port: int = Field(default=8883, ge=1, le=65535, description="Cloud broker port")
    brokers: list[BrokerEndpoint] = Field(default_factory=list, description="Extra endpoints for failover")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    tls: bool = Field(default=True, description="Use TLS (client certificate auth)")
    ca_file: Path | None = Field(default=None, description="CA bundle for the broker certificate")
    cert_file: Path | None = Field(default=None, description="Device certificate (PEM)")
    key_file: Path | None = Field(default=None, description="Device private key (PEM)")
    username: str | None = Field(default=None, description="Optional username")
    password: str | None = Field(default=None, description="Optional password")
    client_id: str | None = Field(default=None, description="MQTT client id; default: gateway id")
    topic_prefix: str = Field(default="retail", description="Topic root: <prefix>/<store>/<gateway>/...")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive")
    session_expiry_s: int = Field(default=7 * 86400, ge=0, description="MQTT 5 session expiry")
    inflight: int = Field(default=64, ge=1, le=65535, description="Max unacknowledged QoS 1 publishes")
    batch_threshold: int = Field(default=200, ge=1, description="Backlog above which events are batched")
    batch_max: int = Field(default=100, ge=1, le=10000, description="Max events per batched message")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="Largest reconnect delay")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300, description="TCP+TLS+CONNACK timeout")
    batch_max_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Max payload of a batched message (also capped by the broker)"
    )


class LocalBrokerSettings(Section):
    host: str | None = Field(default=None, description="Store-local broker; None: embedded broker")
    port: int = Field(default=1883, ge=1, le=65535, description="Store-local broker port")


class OutboxSettings(Section):
    path: Path | None = Field(default=None, description="SQLite file; default <state_dir>/outbox.sqlite3")
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024, description="Size cap, then eviction")
    append_batch: int = Field(default=500, ge=1, description="Events per append transaction (max)")
    flush_interval_s: float = Field(default=0.2, gt=0, le=10, description="Append flush cadence")
    keep_free_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Room the outbox leaves free on its filesystem for the other stores and logs;"
        " None: 5 % of the filesystem, 256 KiB..64 MiB (docs/storage.md)",
    )
    ram_max_events: int = Field(
        default=20_000,
        ge=100,
        description="Events held in RAM while the disk refuses them; beyond, the lowest priority is dropped (counted)",
    )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST_RE = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def parse_allow_entry(entry: str) -> str | IPNetwork:
    """One ``content.webhook_allow`` entry: an IP network (``10.20.0.0/24``, a bare IP) or a host
    name (``tablets.store.lan``, ``*.example.com``). Raises ValueError naming the entry."""
    e = entry.strip()
    try:
        return ipaddress.ip_network(e, strict=False)
    except ValueError:
        pass
    if not _HOST_RE.fullmatch(e) or len(e) > 253:
        raise ValueError(f"{entry!r} is neither an IP network (10.20.0.0/24) nor a host name (*.example.com)")
    return e.lower()


class ContentSettings(Section):
    enabled: bool = Field(default=True, description="Evaluate campaigns and dispatch to local actors")
    state_path: Path | None = Field(
        default=None, description="Command state SQLite; default <state_dir>/content.sqlite3"
    )
    actor_topic_prefix: str = Field(default="gateway", description="Local MQTT actors: <prefix>/actors/<actor_id>")
    mqtt_ack_timeout_s: float = Field(default=2.0, gt=0, le=60, description="Wait for an actor's MQTT ack")
    webhook_timeout_s: float = Field(default=2.0, gt=0, le=60, description="Per-attempt webhook timeout")
    webhook_retries: int = Field(default=2, ge=0, le=10, description="Extra webhook attempts after a failure")
    webhook_backoff_s: float = Field(default=0.2, ge=0, le=30, description="First retry delay (doubles)")
    breaker_failures: int = Field(default=5, ge=1, le=1000, description="Consecutive failures that open a breaker")
    breaker_reset_s: float = Field(default=30.0, gt=0, le=3600, description="Open time before a half-open probe")
    command_auth: Literal["ed25519", "hmac-sha256"] = Field(
        default="ed25519",
        description="How cloud commands are signed: ed25519 (the platform's public key, installed by provisioning)"
        " or hmac-sha256 (a per-gateway shared key, command_secret_file); unsigned commands are always refused",
    )
    command_public_key_file: Path | None = Field(
        default=None,
        description="The platform's Ed25519 command-signing public key(s), PEM; None: every command is refused",
    )
    command_secret_file: Path | None = Field(
        default=None,
        description="Shared HMAC-SHA256 key (>= 32 bytes), only with command_auth = 'hmac-sha256'",
    )
    command_issuers: list[str] | None = Field(default=None, description="Allowed command issuers; None: any")
    accept_fleet_commands: bool = Field(
        default=True, description="Accept commands addressed to the whole fleet (aud '*') besides this gateway's"
    )
    command_clock_skew_s: float = Field(
        default=300.0, ge=0, le=3600, description="Allowed clock difference to the platform (issued_at, expires_at)"
    )
    command_max_lifetime_s: float = Field(
        default=86400.0, gt=0, le=30 * 86400, description="Longest expires_at - issued_at accepted for a command"
    )
    webhook_allow_http: bool = Field(default=False, description="Allow plain-http webhook actors (default: https only)")
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="Webhook allow-list: host names ('*.example.com') and IP networks ('10.20.0.0/24'); when not"
        " empty only these hosts; private, loopback and link-local addresses only inside a listed network",
    )
    cap_per_subject: int | None = Field(default=1, ge=1, description="Default cap: activations per subject")
    cap_per_subject_window_s: float = Field(default=3600.0, gt=0, description="Default per-subject cap window")
    cap_per_actor: int | None = Field(default=None, ge=1, description="Default cap: activations per actor")
    cap_per_actor_window_s: float = Field(default=60.0, gt=0, description="Default per-actor cap window")
    quiet_hours: list[str] = Field(
        default_factory=list, description='Store-wide quiet windows, e.g. ["21:00-08:00"] (local time)'
    )
    timezone: str = Field(default="UTC", description="IANA zone for time-of-day windows and quiet hours")
    max_concurrent_dispatch: int = Field(default=256, ge=1, le=10000, description="In-flight actor dispatches")

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        return _check_tz(v)

    @field_validator("quiet_hours")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for item in v:
            if not QUIET_RE.fullmatch(item.strip()):
                raise ValueError(f"{item!r} is not a window HH:MM-HH:MM (24 h clock, e.g. '21:00-08:00')")
        return v

    @field_validator("webhook_allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        for e in v:
            parse_allow_entry(e)
        return v

    @model_validator(mode="after")
    def _keys(self) -> ContentSettings:
        if self.command_auth == "ed25519" and self.command_secret_file is not None:
            raise ValueError(
                "content.command_secret_file is only used with command_auth = 'hmac-sha256'"
                " (ed25519 uses command_public_key_file)"
            )
        if self.command_auth == "hmac-sha256" and self.command_secret_file is None:
            raise ValueError("content.command_auth is 'hmac-sha256' but content.command_secret_file is not set")
        return self


class StatusSettings(Section):
    enabled: bool = Field(default=True, description="Serve the technician status page")
    bind: list[str] = Field(default=["127.0.0.1"], description="Addresses to listen on")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the page may be reached by (Host header), besides localhost and the bound"
        " addresses (any IP address when bound to 0.0.0.0 or ::); anything else is refused (DNS rebinding)",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    credential_file: Path | None = Field(
        default=None, description="Hashed technician credential (gateway status set-password); None: no login possible"
    )
    secure_cookie: bool = Field(
        default=False,
        description="Always mark the session cookie Secure (behind a TLS proxy); it is set anyway on https requests",
    )
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0, description="Absolute session lifetime")
    session_idle_s: float = Field(default=3600.0, gt=0, description="Session expires after this much inactivity")
    login_free_attempts: int = Field(default=3, ge=1, le=100, description="Failed logins before lockouts start")
    login_lockout_base_s: float = Field(default=1.0, gt=0, description="First lockout; doubles per further failure")
    login_lockout_max_s: float = Field(default=900.0, gt=0, description="Longest lockout per client address")
    stream_interval_s: float = Field(default=0.5, ge=0.05, le=60, description="Live map push cadence (SSE)")
    status_interval_s: float = Field(default=2.0, ge=0.2, le=300, description="Health panel push cadence (SSE)")
    max_stream_clients: int = Field(default=8, ge=1, le=256, description="Concurrent live-map streams")
    metrics_public: bool = Field(default=True, description="Serve /metrics without login (no personal data in it)")
    loop_lag_interval_s: float = Field(default=0.5, ge=0, le=60, description="Event-loop lag probe period (0: off)")

    @field_validator("bind")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            if a != "localhost":
                try:
                    ipaddress.ip_address(a)
                except ValueError:
                    raise ValueError(f"{a!r} is not an IP address to listen on (e.g. 127.0.0.1, 0.0.0.0, ::)") from None
        if not v:
            raise ValueError("empty: set status.enabled = false to serve no page")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for h in v:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", h):
                raise ValueError(f"{h!r} is not a host name")
        return v


class SupervisorSettings(Section):
    drain_deadline_s: float = Field(default=10.0, gt=0, le=300, description="Graceful shutdown deadline")
    restart_backoff_min_s: float = Field(default=0.5, gt=0, description="First restart delay")
    restart_backoff_max_s: float = Field(default=30.0, gt=0, description="Largest restart delay")
    max_restarts: int = Field(default=10, ge=0, description="Restarts within the window before giving up")
    restart_window_s: float = Field(default=300.0, gt=0, description="Window for max_restarts")


class PipelineSettings(Section):
    max_delay_s: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description=(
            "A live batch that waited longer than this for the pipeline is dropped and counted as late "
            "(latency stays bounded when the box is overloaded; recordings always wait); 0: never"
        ),
    )
    shed_after_s: float = Field(
        default=0.05,
        ge=0,
        le=60,
        description=(
            "Load shedding: once a live batch waited longer than this for the pipeline, fixes are computed on "
            "every 3rd tick only (at most localization.window_s apart), back to every tick one step per job "
            "once batches wait less than half of this; the skipped ticks' observations go into the next "
            "computed one, the ticks are counted as fix_tick_shed drops. Also, whatever the wait, a tick whose "
            "successor is already due in live observations waiting behind it is shed the same way; 0: never"
        ),
    )


NODES_PACKET_LOSS = 0.3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        nested_model_default_partial_update=True,
    )

    gateway: GatewayIdentity = Field(default_factory=GatewayIdentity)
    paths: Paths = Field(default_factory=Paths)
    log: LogSettings = Field(default_factory=LogSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    ble: BleSettings = Field(default_factory=BleSettings)
    wifi: WifiSettings = Field(default_factory=WifiSettings)
    nodes: NodesSettings = Field(default_factory=NodesSettings)
    localization: LocalizationSettings = Field(default_factory=LocalizationSettings)
    presence: PresenceSettings = Field(default_factory=PresenceSettings)
    linking: LinkingSettings = Field(default_factory=LinkingSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    local_broker: LocalBrokerSettings = Field(default_factory=LocalBrokerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)
    content: ContentSettings = Field(default_factory=ContentSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.replay.enabled and self.replay.path is None:
            raise ValueError("replay.enabled is true but replay.path is not set")
        if self.mqtt.tls and self.mqtt.host is not None and self.mqtt.ca_file is None:
            raise ValueError("mqtt.tls is true but mqtt.ca_file is not set")
        if self.mqtt.reconnect_max_s < self.mqtt.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
        if self.nodes.enabled and "packet_loss" not in self.localization.model_fields_set:
            # node reports are timed on arrival: a late reception reads as a miss unless misses are
            # cheap (bench_nodes: J=0.25 s costs +76 % RMSE at 0.05, +9 % at 0.2, ~0 at 0.5)
            self.localization.packet_loss = NODES_PACKET_LOSS
        return self

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.paths.state_dir / "outbox.sqlite3"

    @property
    def content_state_path(self) -> Path:
        return self.content.state_path or self.paths.state_dir / "content.sqlite3"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, GatewayEnvSource(settings_cls)]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


# GATEWAY_* variables that are not settings (read by the CLI, provision.sh, `gateway update`)
NON_SETTING_ENV = frozenset({"GATEWAY_CONFIG", "GATEWAY_PYTHON", "GATEWAY_READY_FILE", "GATEWAY_DEBUG"})
ENV_PREFIX = "GATEWAY_"


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else ann), True
    return ann, False


def env_value(ann: Any, raw: str) -> Any:
    """One environment value for a field of type ``ann``: lists as ``a,b,c`` or JSON, tables as
    ``k=v,k2=v2`` or JSON, an empty value unsets an optional field; everything else is handed to
    pydantic as the string (it parses numbers and booleans). Raises ValueError with the reason."""
    inner, optional = _unwrap_optional(ann)
    text = raw.strip()
    if optional and text == "":
        return None
    origin = typing.get_origin(inner)
    if origin is list:
        (item,) = typing.get_args(inner) or (str,)
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as e:
                raise ValueError(f"not a JSON list ({e})") from None
            if not isinstance(value, list):
                raise ValueError("not a list")
            return value
        if isinstance(item, type) and issubclass(item, BaseModel):
            raise ValueError('expected a JSON list, e.g. [{"host": "b1", "port": 8883}]')
        return [] if text == "" else [x.strip() for x in text.split(",")]
    if origin is dict:
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as e:
                raise ValueError(f"not a JSON object ({e})") from None
            if not isinstance(value, dict):
                raise ValueError("not an object")
            return value
        out: dict[str, str] = {}
        for pair in filter(None, (x.strip() for x in text.split(","))):
            k, eq, v = pair.partition("=")
            if not eq or not k.strip():
                raise ValueError(f"{pair!r} is not key=value (write k1=v1,k2=v2 or a JSON object)")
            out[k.strip()] = v.strip()
        return out
    return raw


def _env_names() -> list[str]:
    names = []
    for sec, f in Settings.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += [f"{ENV_PREFIX}{sec.upper()}__{k.upper()}" for k in ann.model_fields]
    return names


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def parse_env(environ: typing.Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Settings from ``GATEWAY_<SECTION>__<KEY>`` variables, and one problem line per variable that
    names nothing (with the closest real name) or holds a value of the wrong shape."""
    data: dict[str, Any] = {}
    problems: list[str] = []
    names = _env_names()
    sections = {f"{ENV_PREFIX}{k.upper()}" for k in Settings.model_fields}
    for name, raw in sorted(environ.items()):
        up = name.upper()
        if not up.startswith(ENV_PREFIX) or up in NON_SETTING_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        sec = parts[0].lower()
        fld = Settings.model_fields.get(sec)
        model = fld.annotation if fld is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            problems.append(f"{name}: unknown setting{_did_you_mean(up, names + sorted(sections))}")
            continue
        if len(parts) == 1:
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                problems.append(f"{name}: a whole section must be a JSON object; or set {up}__<KEY>")
                continue
            data[sec] = {**data.get(sec, {}), **value}
            continue
        key = parts[1].lower()
        sub = model.model_fields.get(key)
        if sub is None:
            problems.append(f"{name}: unknown setting{_did_you_mean(up, names)}")
            continue
        target = data.setdefault(sec, {})
        if len(parts) > 2:  # a table entry: GATEWAY_NODES__MAPPING__kitchen=s1
            inner, _ = _unwrap_optional(sub.annotation)
            if typing.get_origin(inner) is not dict or len(parts) != 3 or not parts[2]:
                problems.append(f"{name}: {sec}.{key} has no sub-keys")
                continue
            table = target.setdefault(key, {})
            if isinstance(table, dict):
                table[parts[2]] = raw
            continue
        try:
            target[key] = env_value(sub.annotation, raw)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    return data, problems


class GatewayEnvSource(PydanticBaseSettingsSource):
    """The ``GATEWAY_*`` environment, stricter and friendlier than pydantic-settings' own source:
    unknown names are errors (with the closest real name), list values may be written ``a,b,c``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data, problems = parse_env(os.environ)
        if problems:
            raise ConfigError([f"environment: {p}" for p in problems])
        return data


class ConfigError(ValueError):
    """Invalid configuration; ``lines`` holds one ``source: field.path: reason`` per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raise ConfigError with readable, field-named lines."""
    source = "<defaults+env>"
    cls: type[Settings] = Settings
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError([f"{p}: cannot read config: {e.strerror}"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError([f"{p}: not valid TOML: {e}"]) from None

        class _FromFile(Settings):
            model_config = SettingsConfigDict(toml_file=p)

        cls = _FromFile
    try:
        return cls(**overrides)
    except ValidationError as e:
        lines = format_validation_error(e, f"{source} (+ GATEWAY_* env)")
        for i, err in enumerate(e.errors()):  # one line per error, in the same order
            if err["type"] == "extra_forbidden" and i < len(lines):
                lines[i] += _suggest_key(tuple(str(x) for x in err["loc"]))
        raise ConfigError(lines) from None


def _suggest_key(loc: tuple[str, ...]) -> str:
    """'; did you mean [mqtt] port?' for a misspelt section or key of the file."""
    if len(loc) == 1:
        close = difflib.get_close_matches(loc[0], list(Settings.model_fields), n=1, cutoff=0.6)
        return f"; did you mean [{close[0]}]?" if close else ""
    fld = Settings.model_fields.get(loc[0])
    model = fld.annotation if fld is not None else None
    if len(loc) == 2 and isinstance(model, type) and issubclass(model, BaseModel):
        close = difflib.get_close_matches(loc[1], list(model.model_fields), n=1, cutoff=0.6)
        return f"; did you mean [{loc[0]}] {close[0]}?" if close else ""
    return ""


def config_docs() -> str:
    """Markdown reference of every key, generated from the model (docs/config.md)."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `gateway config docs` from `gateway/config.py`. Every key can be set in the TOML file",
        "(`[section]` then `key = value`) or by environment variable `GATEWAY_<SECTION>__<KEY>`",
        "(e.g. `GATEWAY_MQTT__PORT=8883`). An annotated example: [gateway.example.toml](gateway.example.toml).",
        "",
        "**Precedence** (highest first): environment variables, then the TOML file, then the defaults below.",
        "A variable overrides one key and leaves the rest of its section from the file",
        "(`GATEWAY_MQTT__PORT=8884` keeps `[mqtt] host`). In a variable, a list is `a,b,c` or JSON",
        "(`GATEWAY_WIFI__CHANNELS=1,6,11`, `GATEWAY_STATUS__BIND=127.0.0.1,10.20.0.5`), a table is",
        "`k=v,k2=v2` or JSON (`GATEWAY_NODES__MAPPING=kitchen=n11`; one entry: `GATEWAY_NODES__MAPPING__kitchen=n11`),",
        "`mqtt.brokers` is JSON only, and an empty value unsets an optional key (`GATEWAY_PATHS__LAYOUT=`).",
        "",
        "Unknown keys are errors, in the file and in the environment (`GATEWAY_MQTTT__PORT: unknown setting;",
        "did you mean GATEWAY_MQTT__PORT?`); `GATEWAY_CONFIG`, `GATEWAY_PYTHON`, `GATEWAY_READY_FILE` and",
        "`GATEWAY_DEBUG` are not settings. `gateway config check FILE` reports every error with its field",
        "path and what would stop `gateway run` (missing files, no source, no uplink broker, a bad command",
        "key); `--root DIR` checks an image mounted at DIR. The JSON Schema is printed by `gateway config schema`.",
        "",
    ]
    for name, fld in Settings.model_fields.items():
        ann = fld.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            continue
        out += [f"## `[{name}]`", "", "| key | type | default | env | description |", "|---|---|---|---|---|"]
        for key, sub in ann.model_fields.items():
            a = sub.annotation
            typ = a.__name__ if isinstance(a, type) else str(a).replace("typing.", "").replace("pathlib.", "")
            typ = typ.replace("|", "\\|")
            if sub.default_factory is not None:
                default: object = sub.default_factory()  # type: ignore[call-arg]
            else:
                default = sub.default
            d = "(required)" if default is Ellipsis or str(default) == "PydanticUndefined" else repr(default)
            env = f"GATEWAY_{name.upper()}__{key.upper()}"
            out.append(f"| `{key}` | `{typ}` | `{d}` | `{env}` | {sub.description or ''} |")
        out.append("")
    return "\n".join(out)
