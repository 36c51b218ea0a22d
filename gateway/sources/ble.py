"""The gateway's own BLE radio: a bleak ``BleakScanner`` source with a self-healing watchdog.

* Observations: ``sensor = settings.ble.sensor_id``, ``device`` = the address as heard (raw, RAM
  only), the advert's RSSI, ``radio="ble"``, ``rssi_at_1m`` from iBeacon / AltBeacon / Eddystone
  frames (normalised to 1 m), ``link`` = the IRK identity id when a resolvable private address
  resolves. Every advert BlueZ reports is kept (bleak asks for ``DuplicateData=False``): RSSI per
  advert is what the localizer needs.
* Passive scanning where BlueZ supports it (advertisement monitor API: BlueZ >= 5.56 with
  ``--experimental``, kernel >= 5.10); bleak needs or-patterns for that, so we pass patterns that
  match practically every advert (flags values, Apple/Microsoft company ids, Eddystone). If
  BlueZ refuses (or accepts the monitor but delivers nothing before the first stall), we fall
  back to active scanning and say so in ``health.detail["mode_reason"]``.
* Self-healing (the ladder Home Assistant's habluetooth uses): no advert for ``stall_s`` -> stop
  and restart the scan; still silent after another ``stall_s`` -> power-cycle the adapter through
  BlueZ (``org.bluez.Adapter1.Powered`` off, on) and restart; still silent -> report the radio
  ``failed`` and retry the power cycle every ``failed_retry_s``. Any advert returns to
  ``running``. The ladder is :class:`ScanWatchdog`, a pure class that takes time as an argument;
  :class:`BleSource` only performs the actions it asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.config import BleSettings, Settings
from gateway.identity.addresses import AddressError, IrkResolver, irk_from_hex
from gateway.layout import Layout
from gateway.log import REDACTED, get_logger, redact_text
from gateway.models import Observation, SourceHealth
from gateway.parsers.ble import AdvertParseError, rssi_at_1m_of
from gateway.parsers.ble_vendors import advert_info
from gateway.sources.base import LIVE_RADIO

log = get_logger("gateway.sources.ble")

# BlueZ object paths spell MACs with underscores (dev_AA_BB_...); the log redactor knows ':' / '-'.
_PATH_MAC_RE = re.compile(r"(?i)(?:[0-9a-f]{2}_){5}[0-9a-f]{2}")


def _describe(e: BaseException) -> str:
    """A short error text for logs and the status page, with any device address redacted."""
    return redact_text(_PATH_MAC_RE.sub(REDACTED, f"{type(e).__name__}: {str(e)[:200]}"))


AdvertCallback = Callable[[str, int, str | None, dict[int, bytes], dict[str, bytes]], None]
"""(address, rssi, address type "public"/"random"/None, manufacturer data, service data)."""

Action = Literal["none", "restart", "power_cycle", "fail"]

NO_RSSI = -127  # what bleak reports when a Device1 update carries no RSSI
MAX_PENDING = 50_000  # adverts buffered between two batches before counted drops start


# ---------------------------------------------------------------------------------------------
# The recovery ladder (pure)
# ---------------------------------------------------------------------------------------------


class ScanWatchdog:
    """Decides what to do about advert silence. Time (monotonic seconds) is always passed in."""

    def __init__(self, stall_s: float, failed_retry_s: float = 300.0) -> None:
        if stall_s <= 0 or failed_retry_s <= 0:
            raise ValueError("stall_s and failed_retry_s must be > 0")
        self.stall_s = stall_s
        self.failed_retry_s = failed_retry_s
        self.state: Literal["running", "restarted", "power-cycled", "failed"] = "running"
        self.restarts = 0
        self.power_cycles = 0
        self.failures = 0
        self.recovered = 0  # times adverts came back after a recovery action
        self.last_advert: float | None = None
        self._mark = 0.0  # start of the current silence budget

    def started(self, now: float) -> None:
        """The scan (re)started: silence is measured from here."""
        self._mark = now

    def advert(self, now: float) -> None:
        self.last_advert = now
        self._mark = now
        if self.state != "running":
            self.recovered += 1
            self.state = "running"

    def silent_for(self, now: float) -> float:
        return max(0.0, now - self._mark)

    def check(self, now: float) -> Action:
        silent = now - self._mark
        if self.state == "failed":
            if silent > self.failed_retry_s:
                self._mark = now
                self.power_cycles += 1
                return "power_cycle"
            return "none"
        if silent <= self.stall_s:
            return "none"
        self._mark = now
        if self.state == "running":
            self.state = "restarted"
            self.restarts += 1
            return "restart"
        if self.state == "restarted":
            self.state = "power-cycled"
            self.power_cycles += 1
            return "power_cycle"
        self.state = "failed"
        self.failures += 1
        return "fail"


# ---------------------------------------------------------------------------------------------
# Scanner backends
# ---------------------------------------------------------------------------------------------


class ScannerBackend(Protocol):
    """What the source needs from a radio; bleak in production, fakes in unit tests."""

    async def start(self, callback: AdvertCallback, passive: bool) -> str:
        """Start scanning; return the mode actually used ("passive" or "active")."""
        ...

    async def stop(self) -> None: ...

    async def power_cycle(self, off_s: float) -> None: ...


def passive_or_patterns() -> list[Any]:
    """Or-patterns broad enough to let (nearly) every advert through BlueZ's passive monitor."""
    from bleak.args.bluez import OrPattern
    from bleak.assigned_numbers import AdvertisementDataType as T

    pats = [OrPattern(0, T.FLAGS, bytes([f])) for f in (0x02, 0x04, 0x05, 0x06, 0x0A, 0x18, 0x1A, 0x1E)]
    pats += [
        OrPattern(0, T.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00"),  # Apple (iBeacon, continuity)
        OrPattern(0, T.MANUFACTURER_SPECIFIC_DATA, b"\x06\x00"),  # Microsoft
        OrPattern(0, T.SERVICE_DATA_UUID16, b"\xaa\xfe"),  # Eddystone
    ]
    return pats


class BleakBackend:
    """``BleakScanner`` on BlueZ; adapter power cycling over the system D-Bus."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self._scanner: Any = None
        self.passive_refused: str | None = None

    async def start(self, callback: AdvertCallback, passive: bool) -> str:
        from bleak import BleakScanner
        from bleak.exc import BleakError

        def on_detect(device: Any, adv: Any) -> None:
            details = device.details if isinstance(device.details, dict) else {}
            props = details.get("props") or {}
            callback(device.address, adv.rssi, props.get("AddressType"), adv.manufacturer_data, adv.service_data)

        if passive and self.passive_refused is None:
            scanner = BleakScanner(
                detection_callback=on_detect,
                scanning_mode="passive",
                bluez={"adapter": self.adapter, "or_patterns": passive_or_patterns()},
            )
            try:
                await scanner.start()
            except BleakError as e:
                # Remembered: BlueZ without the monitor API will not grow it on a restart.
                self.passive_refused = _describe(e)
                log.warning("ble.passive_unsupported", reason=self.passive_refused)
            else:
                self._scanner = scanner
                return "passive"
        scanner = BleakScanner(detection_callback=on_detect, scanning_mode="active", bluez={"adapter": self.adapter})
        await scanner.start()
        self._scanner = scanner
        return "active"

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            await scanner.stop()

    async def power_cycle(self, off_s: float) -> None:
        await set_adapter_powered(self.adapter, False)
        await asyncio.sleep(off_s)
        await set_adapter_powered(self.adapter, True)


async def set_adapter_powered(adapter: str, powered: bool) -> None:
    """``org.bluez.Adapter1.Powered = powered`` via org.freedesktop.DBus.Properties.Set."""
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path=f"/org/bluez/{adapter}",
                interface="org.freedesktop.DBus.Properties",
                member="Set",
                signature="ssv",
                body=["org.bluez.Adapter1", "Powered", Variant("b", powered)],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            name = reply.error_name if reply is not None else "no reply"
            raise RuntimeError(f"setting {adapter} Powered={powered} failed: {name}")
    finally:
        bus.disconnect()


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


def load_irks(path: Path) -> dict[str, bytes]:
    """IRK file: ``identity-id <32 hex digits>`` per line, ``#`` comments. Errors name the line only."""
    irks: dict[str, bytes] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<identity-id> <irk hex>'")
        try:
            irks[parts[0]] = irk_from_hex(parts[1])
        except AddressError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
    return irks


@dataclass(slots=True)
class _Heard:
    ts: float
    address: str
    rssi: int
    address_type: str | None
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]


class BleSource:
    """Implements the ``Source`` protocol for the gateway's own adapter."""

    capabilities = LIVE_RADIO  # "Restart scanner" stops and starts the scan

    def __init__(
        self,
        settings: BleSettings,
        *,
        backend: ScannerBackend | None = None,
        resolver: IrkResolver | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = "ble"
        self.settings = settings
        self.health = SourceHealth(name=self.name)
        self._backend: ScannerBackend = backend or BleakBackend(settings.adapter)
        if resolver is None and settings.irk_file is not None:
            resolver = IrkResolver(load_irks(settings.irk_file))
        self._resolver = resolver
        self._wall = wall_clock
        self._mono = monotonic
        self.watchdog = ScanWatchdog(settings.stall_s, settings.failed_retry_s)
        self._pending: list[_Heard] = []
        self._wake: asyncio.Event | None = None
        self._mode = "stopped"
        self._mode_reason: str | None = None
        self._last_error: str | None = None
        self._started = False
        self._stopped = False
        self._heard_any = False
        self._passive = settings.passive
        self._publish_health()

    # -- callbacks (run on the event loop by bleak) -------------------------------------------

    def _on_advert(
        self, address: str, rssi: int, address_type: str | None, mfr: dict[int, bytes], sdata: dict[str, bytes]
    ) -> None:
        self._heard_any = True
        if rssi == NO_RSSI:
            self.health.drop("no_rssi")  # bleak's placeholder: BlueZ reported no RSSI with this update
        elif len(self._pending) >= MAX_PENDING:
            self.health.drop("backlog_overflow")  # nobody is consuming batches(); bound the memory
        else:
            self._pending.append(_Heard(self._wall(), address, rssi, address_type, mfr, sdata))
        self.watchdog.advert(self._mono())
        if self._wake is not None:
            self._wake.set()

    # -- building observations ----------------------------------------------------------------

    def _build(self, heard: list[_Heard]) -> list[Observation]:
        links: list[str | None] | None = None
        if self._resolver is not None and len(self._resolver):
            links = self._resolver.resolve_many([h.address if h.address_type != "public" else "" for h in heard])
        sensor = self.settings.sensor_id
        out: list[Observation] = []
        for k, h in enumerate(heard):
            r1m: float | None = None
            if h.manufacturer_data or h.service_data:
                try:
                    r1m = rssi_at_1m_of(h.manufacturer_data, h.service_data)
                except AdvertParseError:
                    self.health.drop("malformed_frame")  # observation kept, ranging data dropped
            # what the advert says about its sender, for the rotation linker and presence
            rotating = h.address_type != "public" and h.address[:1] in "01234567"  # private: top bit 0
            out.append(
                Observation(
                    ts=h.ts,
                    sensor=sensor,
                    device=h.address,
                    rssi=float(h.rssi),
                    radio="ble",
                    rssi_at_1m=r1m,
                    link=links[k] if links is not None else None,
                    adv=advert_info(h.manufacturer_data, h.service_data, rotating=rotating),
                )
            )
        self.health.observations += len(out)
        self.health.last_observation_ts = heard[-1].ts
        return out

    # -- scanner control ----------------------------------------------------------------------

    async def _start_scan(self) -> None:
        try:
            self._mode = await self._backend.start(self._on_advert, self._passive)
            self._last_error = None
            if self._passive and self._mode != "passive":
                self._mode_reason = getattr(self._backend, "passive_refused", None) or "passive unsupported"
        except Exception as e:  # any failure is a radio problem the ladder handles
            self._mode = "stopped"
            self._last_error = _describe(e)
            log.warning("ble.scan_start_failed", error=self._last_error)
        self.watchdog.started(self._mono())

    async def _stop_scan(self) -> None:
        try:
            await self._backend.stop()
        except Exception as e:
            self._last_error = _describe(e)
            log.warning("ble.scan_stop_failed", error=self._last_error)
        self._mode = "stopped"

    async def _act(self, action: Action) -> None:
        if action == "restart":
            log.warning("ble.stalled_restart_scan", silent_s=self.watchdog.stall_s)
            if self._mode == "passive" and not self._heard_any:
                # BlueZ accepted the monitor but never delivered an advert (e.g. the controller
                # cannot offload the patterns): scan actively from now on.
                self._passive = False
                self._mode_reason = "passive scan accepted but delivered no adverts"
                log.warning("ble.passive_silent_fallback_active")
            await self._stop_scan()
            await self._start_scan()
        elif action == "power_cycle":
            log.warning("ble.stalled_power_cycle", adapter=self.settings.adapter)
            await self._stop_scan()
            try:
                await self._backend.power_cycle(self.settings.power_cycle_off_s)
            except Exception as e:
                self._last_error = _describe(e)
                log.warning("ble.power_cycle_failed", error=self._last_error)
            await self._start_scan()
        elif action == "fail":
            log.error("ble.radio_failed", adapter=self.settings.adapter)

    def _publish_health(self) -> None:
        w = self.watchdog
        h = self.health
        if self._stopped:
            h.state = "stopped"
        elif w.state == "failed":
            h.state = "failed"
        elif w.state != "running" or (self._started and self._mode == "stopped"):
            h.state = "degraded"
        else:
            h.state = "running" if self._started else "starting"
        h.recoveries = w.restarts + w.power_cycles
        h.detail.update(
            {
                "adapter": self.settings.adapter,
                "mode": self._mode,
                "mode_reason": self._mode_reason,
                "watchdog": w.state,
                "scan_restarts": w.restarts,
                "power_cycles": w.power_cycles,
                "failures": w.failures,
                "recovered": w.recovered,
                "silent_s": round(w.silent_for(self._mono()), 1),
                "last_error": self._last_error,
            }
        )

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        """Scan until cancelled; yield what arrived each tick; run the watchdog between yields."""
        self._wake = asyncio.Event()
        self._stopped = False
        tick = self.settings.check_interval_s
        await self._start_scan()
        self._started = True
        self._publish_health()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick):
                        await self._wake.wait()
                self._wake.clear()
                if self._pending:
                    heard, self._pending = self._pending, []
                    batch = self._build(heard)
                    self._publish_health()
                    yield batch
                action = self.watchdog.check(self._mono())
                if action != "none":
                    await self._act(action)
                self._publish_health()
        finally:
            self._stopped = True
            await self._stop_scan()
            self._publish_health()


def enabled(settings: Settings) -> bool:
    """For ``gateway.runtime.daemon.SOURCE_FACTORIES``: scan when ``[ble] enabled = true``."""
    return settings.ble.enabled


def make_source(settings: Settings, layout: Layout) -> BleSource:
    """For ``gateway.runtime.daemon.SOURCE_FACTORIES``; the layout is not needed (the sensor id names our radio)."""
    return BleSource(settings.ble)
