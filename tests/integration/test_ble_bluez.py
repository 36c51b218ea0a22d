"""The BLE source end to end: real bleak against a BlueZ D-Bus stand-in on a private bus.

A private ``dbus-daemon`` is started per test; ``tests/fixtures/bluez_standin.py`` owns
``org.bluez`` on it; ``DBUS_SYSTEM_BUS_ADDRESS`` points bleak (and the source's adapter power
cycling) there. Covers passive scanning, the fallback to active scanning, observations with
ranging data and IRK links, and the stall -> restart -> power cycle -> failed ladder.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import BleSettings
from gateway.identity.addresses import IrkResolver
from gateway.models import Observation
from gateway.sources.ble import BleSource
from tests.fixtures.bluez_standin import BlueZStandIn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SPEC_IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
SPEC_RPA = "70:81:94:0D:FB:AA"  # Core spec Vol 3 Part H D.7 sample data
BEACON = "C3:00:00:00:00:01"
IBEACON_BODY = bytes.fromhex("0215426c7565436861726d426561636f6e730efe1355c5")  # BlueCharm, -59 @1 m
EDDY = "0000feaa-0000-1000-8000-00805f9b34fb"
EDDY_URL = bytes.fromhex("10ee01626c7565636861726d626561636f6e7300")  # tx -18 @0 m -> -59 @1 m


@pytest.fixture
def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    exe = shutil.which("dbus-daemon")
    if exe is None:
        pytest.fail("dbus-daemon is not installed (apt-get install dbus)")
    sock = tmp_path / "system_bus_socket"
    proc = subprocess.Popen(
        [exe, "--session", "--nofork", "--nopidfile", "--print-address", f"--address=unix:path={sock}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:"), address
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def _close_bleak_bus() -> None:
    """bleak keeps one BlueZ manager per event loop; close its bus before pytest closes the loop."""
    from bleak.backends.bluezdbus import manager as m

    loop = asyncio.get_running_loop()
    mgr = m._global_instances.pop(loop, None)
    if mgr is not None and mgr._bus is not None:
        mgr._bus.disconnect()
        await mgr._bus.wait_for_disconnect()
        if mgr._bus_watcher_task is not None:
            await asyncio.wait({mgr._bus_watcher_task}, timeout=2)


class Run:
    """The source's batches() consumed in a task, observations collected."""

    def __init__(self, src: BleSource) -> None:
        self.src = src
        self.obs: list[Observation] = []
        self._it: AsyncIterator[list[Observation]] = src.batches()
        self._task = asyncio.ensure_future(self._consume())

    async def _consume(self) -> None:
        async for batch in self._it:
            self.obs.extend(batch)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until(cond: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    try:
        async with asyncio.timeout(limit_s):
            while not cond():  # noqa: ASYNC110 - state lives in the stand-in / source
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


def ble_settings(**kw: object) -> BleSettings:
    base: dict[str, object] = {
        "adapter": "hci0",
        "sensor_id": "gw-radio",
        "stall_s": 1.0,
        "check_interval_s": 0.05,
        "power_cycle_off_s": 0.05,
        "failed_retry_s": 60.0,
    }
    base.update(kw)
    return BleSettings.model_validate(base)


async def test_passive_scan_delivers_every_advert_with_ranging_and_links(system_bus: str) -> None:
    bluez = BlueZStandIn(system_bus, passive_supported=True)
    await bluez.start()
    src = BleSource(ble_settings(), resolver=IrkResolver({"customer-42": SPEC_IRK}))
    run = Run(src)
    try:
        await until(lambda: bool(bluez.monitors), "passive monitor registered")
        assert not bluez.discovering  # passive: no StartDiscovery
        for rssi in (-70, -71, -72):
            assert bluez.advertise(BEACON, rssi, manufacturer_data={0x004C: IBEACON_BODY})
        for rssi in (-80, -81):
            assert bluez.advertise(SPEC_RPA, rssi, service_data={EDDY: EDDY_URL})
        await until(lambda: len(run.obs) >= 5, "5 observations")
        beacon = [o for o in run.obs if o.device == BEACON]
        phone = [o for o in run.obs if o.device == SPEC_RPA]
        assert [o.rssi for o in beacon] == [-70.0, -71.0, -72.0]  # one observation per advert
        assert [o.rssi for o in phone] == [-80.0, -81.0]
        assert {o.rssi_at_1m for o in run.obs} == {-59.0}
        assert {o.link for o in beacon} == {None}
        assert {o.link for o in phone} == {"customer-42"}
        assert {(o.sensor, o.radio) for o in run.obs} == {("gw-radio", "ble")}
        assert src.health.state == "running"
        assert src.health.detail["mode"] == "passive"
        assert src.health.observations == 5
    finally:
        await run.close()
        await _close_bleak_bus()
        await bluez.stop()
    assert not bluez.monitors  # the monitor was unregistered on the way out
    assert src.health.state == "stopped"


async def test_falls_back_to_active_when_bluez_has_no_monitor_api(system_bus: str) -> None:
    bluez = BlueZStandIn(system_bus, passive_supported=False)
    await bluez.start()
    src = BleSource(ble_settings())
    run = Run(src)
    try:
        await until(lambda: bluez.discovering, "active discovery started")
        assert bluez.discovery_filter == {"Transport": "le", "DuplicateData": False}  # duplicates kept
        assert bluez.advertise(BEACON, -65, manufacturer_data={0x004C: IBEACON_BODY})
        await until(lambda: len(run.obs) >= 1, "1 observation")
        assert src.health.detail["mode"] == "active"
        assert "passive" in str(src.health.detail["mode_reason"])
    finally:
        await run.close()
        await _close_bleak_bus()
        await bluez.stop()
    assert not bluez.discovering


async def _advertise_forever(bluez: BlueZStandIn, stop: asyncio.Event) -> None:
    rssi = -60
    while not stop.is_set():
        bluez.advertise(BEACON, rssi, manufacturer_data={0x004C: IBEACON_BODY})
        rssi = -60 if rssi < -75 else rssi - 1
        await asyncio.sleep(0.05)


async def test_scan_stall_is_fixed_by_restarting_the_scan(system_bus: str) -> None:
    bluez = BlueZStandIn(system_bus, passive_supported=False)
    await bluez.start()
    src = BleSource(ble_settings())
    run = Run(src)
    stop = asyncio.Event()
    adv = asyncio.ensure_future(_advertise_forever(bluez, stop))
    try:
        await until(lambda: len(run.obs) >= 3, "adverts flowing")
        bluez.stall = "scan"
        await until(lambda: src.health.detail["scan_restarts"] == 1, "scan restart")
        n = len(run.obs)
        await until(lambda: len(run.obs) > n + 3, "adverts flowing again")
        await until(lambda: src.health.state == "running", "running again")
        assert src.health.detail["power_cycles"] == 0
        assert src.health.detail["recovered"] == 1
        assert bluez.calls.count("StartDiscovery") == 2
        assert bluez.calls.count("StopDiscovery") == 1
    finally:
        stop.set()
        await adv
        await run.close()
        await _close_bleak_bus()
        await bluez.stop()


async def test_adapter_stall_needs_a_power_cycle_through_bluez(system_bus: str) -> None:
    bluez = BlueZStandIn(system_bus, passive_supported=True)
    await bluez.start()
    src = BleSource(ble_settings())
    run = Run(src)
    stop = asyncio.Event()
    adv = asyncio.ensure_future(_advertise_forever(bluez, stop))
    try:
        await until(lambda: len(run.obs) >= 3, "adverts flowing")
        bluez.stall = "adapter"
        await until(lambda: src.health.detail["scan_restarts"] == 1, "scan restart")
        assert src.health.state == "degraded"
        await until(lambda: src.health.detail["power_cycles"] == 1, "power cycle")
        n = len(run.obs)
        await until(lambda: len(run.obs) > n + 3, "adverts flowing after the power cycle")
        await until(lambda: src.health.state == "running", "running again")
        assert "Powered=False" in bluez.calls
        assert bluez.calls.index("Powered=False") < bluez.calls.index("Powered=True")
        assert bluez.powered
        assert src.health.recoveries == 2
        assert src.health.detail["recovered"] == 1
        assert src.health.detail["mode"] == "passive"
    finally:
        stop.set()
        await adv
        await run.close()
        await _close_bleak_bus()
        await bluez.stop()


async def test_dead_radio_is_reported_failed_then_recovers_if_it_returns(system_bus: str) -> None:
    bluez = BlueZStandIn(system_bus, passive_supported=False)
    await bluez.start()
    src = BleSource(ble_settings(stall_s=0.8))
    run = Run(src)
    stop = asyncio.Event()
    adv = asyncio.ensure_future(_advertise_forever(bluez, stop))
    try:
        await until(lambda: len(run.obs) >= 2, "adverts flowing")
        bluez.stall = "dead"
        await until(lambda: src.health.state == "failed", "failed")
        assert src.health.detail["failures"] == 1
        assert src.health.detail["scan_restarts"] == 1
        assert src.health.detail["power_cycles"] == 1
        bluez.stall = None  # e.g. someone replugged the dongle
        await until(lambda: src.health.state == "running", "running again")
    finally:
        stop.set()
        await adv
        await run.close()
        await _close_bleak_bus()
        await bluez.stop()
