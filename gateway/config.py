"""The one settings model: TOML file + ``GATEWAY_`` environment variables (nested with ``__``).

Precedence (highest first): explicit overrides passed in code, environment variables, the TOML
file, the defaults below. Unknown keys are errors everywhere. ``gateway config check FILE`` prints
each error with its field path; ``gateway config schema`` prints the JSON Schema; every key is
documented in ``docs/config.md`` (generated from the ``description`` texts here by
``gateway config docs``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.layout import format_validation_error

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


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
    detection_floor_dbm: float = Field(default=-95.0, ge=-130, le=-30, description="Weakest RSSI heard")
    advert_interval_s: float = Field(default=1.0, gt=0, le=60, description="Per-device advert interval")
    mac_rotation_s: float = Field(default=900.0, gt=0, description="Phones rotate random MACs this often")
    link_rotations: bool = Field(
        default=True, description="Mark rotations of one phone as linkable (as IRK resolution would)"
    )
    tick_s: float = Field(default=0.5, gt=0, le=10, description="Simulated step; fixed for reproducibility")


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


class WifiSettings(Section):
    enabled: bool = Field(default=False, description="Capture probe requests on a monitor interface")
    interface: str = Field(default="mon0", description="Monitor-mode interface")
    sensor_id: str = Field(default="gw", description="Layout sensor id of the gateway's Wi-Fi radio")
    channels: list[int] = Field(default=[1, 6, 11], description="Channels to hop over")
    dwell_s: float = Field(default=0.25, gt=0, le=60, description="Time on each channel")
    set_monitor: bool = Field(default=False, description="Put the interface into monitor mode at start")
    pcap: Path | None = Field(default=None, description="Replay this pcap/pcapng instead of capturing")


class NodesSettings(Section):
    enabled: bool = Field(default=False, description="Read in-store sensor nodes over the local broker")
    topic_prefix: str = Field(default="espresense", description="ESPresense topic root")
    mapping: dict[str, str] = Field(
        default_factory=dict, description="Node (room) name -> layout sensor id; unmapped nodes are refused"
    )
    silent_after_s: float = Field(default=30.0, gt=0, description="A node silent this long is 'down'")


class LocalizationSettings(Section):
    fix_interval_s: float = Field(default=1.0, gt=0, le=60, description="Fix cadence per device")
    window_s: float = Field(default=3.0, gt=0, le=120, description="Observation window per fix")
    forget_after_s: float = Field(default=30.0, gt=0, description="Drop a device's track after silence")
    detection_floor_dbm: float = Field(default=-95.0, description="Weakest RSSI the sensors report")
    sigma_db: float = Field(default=6.0, gt=0, le=30, description="Path-loss noise sigma (dB)")


class PresenceSettings(Section):
    enter_debounce_s: float = Field(default=3.0, ge=0, description="Time inside a zone before 'entered'")
    exit_debounce_s: float = Field(default=5.0, ge=0, description="Time outside a zone before 'left'")
    visit_timeout_s: float = Field(default=60.0, gt=0, description="Silence that ends a visit")
    visitor_min_s: float = Field(default=60.0, ge=0, description="Shorter visits only at the entrance: passer-by")
    aggregate_interval_s: float = Field(default=900.0, gt=0, description="Aggregate publication interval")
    k_anonymity: int = Field(default=5, ge=1, description="Aggregates with fewer subjects are withheld")
    publish_fixes: bool = Field(default=False, description="Also publish raw fixes (low priority)")


class PrivacySettings(Section):
    rotation_time: str = Field(
        default="21:00",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="Local time the pseudonym key rotates",
    )
    rotation_period_h: float = Field(default=24.0, gt=0, le=24 * 31, description="Pseudonym key lifetime")
    pseudonym_bytes: int = Field(default=12, ge=8, le=32, description="Truncated HMAC length")
    retention_days: float = Field(default=30.0, gt=0, description="Local tables are purged after this")


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
    command_secret_file: Path | None = Field(
        default=None, description="Shared secret for HMAC-SHA256 command signatures; None: broker ACL only"
    )
    command_issuers: list[str] | None = Field(default=None, description="Allowed command issuers; None: any")
    cap_per_subject: int | None = Field(default=1, ge=1, description="Default cap: activations per subject")
    cap_per_subject_window_s: float = Field(default=3600.0, gt=0, description="Default per-subject cap window")
    cap_per_actor: int | None = Field(default=None, ge=1, description="Default cap: activations per actor")
    cap_per_actor_window_s: float = Field(default=60.0, gt=0, description="Default per-actor cap window")
    quiet_hours: list[str] = Field(
        default_factory=list, description='Store-wide quiet windows, e.g. ["21:00-08:00"] (local time)'
    )
    timezone: str = Field(default="UTC", description="IANA zone for time-of-day windows and quiet hours")
    max_concurrent_dispatch: int = Field(default=256, ge=1, le=10000, description="In-flight actor dispatches")


class StatusSettings(Section):
    enabled: bool = Field(default=True, description="Serve the technician status page")
    bind: list[str] = Field(default=["127.0.0.1"], description="Addresses to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    credential_file: Path | None = Field(default=None, description="Hashed technician credential")


class SupervisorSettings(Section):
    drain_deadline_s: float = Field(default=10.0, gt=0, le=300, description="Graceful shutdown deadline")
    restart_backoff_min_s: float = Field(default=0.5, gt=0, description="First restart delay")
    restart_backoff_max_s: float = Field(default=30.0, gt=0, description="Largest restart delay")
    max_restarts: int = Field(default=10, ge=0, description="Restarts within the window before giving up")
    restart_window_s: float = Field(default=300.0, gt=0, description="Window for max_restarts")


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
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    local_broker: LocalBrokerSettings = Field(default_factory=LocalBrokerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)
    content: ContentSettings = Field(default_factory=ContentSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.replay.enabled and self.replay.path is None:
            raise ValueError("replay.enabled is true but replay.path is not set")
        if self.mqtt.tls and self.mqtt.host is not None and self.mqtt.ca_file is None:
            raise ValueError("mqtt.tls is true but mqtt.ca_file is not set")
        if self.mqtt.reconnect_max_s < self.mqtt.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


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
        raise ConfigError(format_validation_error(e, f"{source} (+ GATEWAY_* env)")) from None


def config_docs() -> str:
    """Markdown reference of every key, generated from the model (docs/config.md)."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `gateway config docs` from `gateway/config.py`. Every key can be set in the TOML file",
        "(`[section]` then `key = value`) or by environment variable `GATEWAY_<SECTION>__<KEY>`",
        "(e.g. `GATEWAY_MQTT__PORT=8883`). Unknown keys are errors. Check a file with",
        "`gateway config check FILE`; the JSON Schema is printed by `gateway config schema`.",
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
