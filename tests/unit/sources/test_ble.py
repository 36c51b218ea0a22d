"""BLE source: the pure watchdog ladder, and the source driven through a fake scanner backend.

The real bleak + BlueZ D-Bus path is exercised in tests/integration/test_ble_bluez.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config import BleSettings
from gateway.identity.addresses import IrkResolver
from gateway.models import Observation
from gateway.sources.base import Source
from gateway.sources.ble import AdvertCallback, BleSource, ScanWatchdog, _describe, load_irks

SPEC_IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
SPEC_RPA = "70:81:94:0D:FB:AA"  # Core spec Vol 3 Part H D.7 sample data
IBEACON_BODY = bytes.fromhex("0215426c7565436861726d426561636f6e730efe1355c5")  # measured power -59
EDDY_UID = bytes.fromhex("00ee626c7565636861726d31000000000001")  # tx -18 @0 m -> -59 @1 m
EDDY = "0000feaa-0000-1000-8000-00805f9b34fb"


# ---------------------------------------------------------------------------------------------
# ScanWatchdog (pure, time passed in)
# ---------------------------------------------------------------------------------------------


def test_watchdog_ladder_restart_then_power_cycle_then_failed() -> None:
    w = ScanWatchdog(stall_s=10, failed_retry_s=100)
    w.started(0.0)
    assert w.check(10.0) == "none"
    assert w.check(10.5) == "restart"
    assert w.state == "restarted"
    assert w.check(20.0) == "none"  # the restart gets its own stall_s
    assert w.check(21.0) == "power_cycle"
    assert w.check(31.5) == "fail"
    assert w.state == "failed"
    assert w.check(100.0) == "none"
    assert w.check(132.0) == "power_cycle"  # periodic retry while failed
    assert w.state == "failed"
    assert (w.restarts, w.power_cycles, w.failures) == (1, 2, 1)
    w.advert(133.0)
    assert w.state == "running"
    assert w.recovered == 1
    assert w.check(140.0) == "none"


def test_watchdog_adverts_keep_it_quiet() -> None:
    w = ScanWatchdog(stall_s=5)
    w.started(0.0)
    for t in range(1, 100):
        w.advert(float(t))
        assert w.check(t + 4.9) == "none"
    assert w.restarts == 0
    with pytest.raises(ValueError):
        ScanWatchdog(stall_s=0)


# ---------------------------------------------------------------------------------------------
# BleSource through a fake backend
# ---------------------------------------------------------------------------------------------


class FakeBackend:
    """Stands in for bleak: records calls, lets the test inject adverts."""

    def __init__(self, passive_ok: bool = True, fail_start: int = 0) -> None:
        self.modes: list[bool] = []
        self.passive_ok = passive_ok
        self.passive_refused: str | None = None if passive_ok else "monitor API missing"
        self.fail_start = fail_start
        self.calls: list[str] = []
        self.cb: AdvertCallback | None = None

    async def start(self, callback: AdvertCallback, passive: bool) -> str:
        self.calls.append("start")
        self.modes.append(passive)
        if self.fail_start:
            self.fail_start -= 1
            raise RuntimeError("adapter not ready")
        self.cb = callback
        return "passive" if passive and self.passive_ok else "active"

    async def stop(self) -> None:
        self.calls.append("stop")
        self.cb = None

    async def power_cycle(self, off_s: float) -> None:
        self.calls.append("power_cycle")

    def emit(
        self,
        address: str,
        rssi: int,
        mfr: dict[int, bytes] | None = None,
        sdata: dict[str, bytes] | None = None,
        address_type: str | None = "random",
    ) -> None:
        assert self.cb is not None, "scanner not started"
        self.cb(address, rssi, address_type, mfr or {}, sdata or {})


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def settings(**kw: object) -> BleSettings:
    base: dict[str, object] = {"sensor_id": "gw-radio", "stall_s": 10.0, "check_interval_s": 0.01}
    base.update(kw)
    return BleSettings.model_validate(base)


async def next_batch(it: AsyncIterator[list[Observation]]) -> list[Observation]:
    async with asyncio.timeout(2.0):
        return await anext(it)


async def wait_for(cond: Callable[[], bool]) -> None:
    """Poll a condition the source changes from its own task (bounded: 2 s)."""
    async with asyncio.timeout(2.0):
        while not cond():  # noqa: ASYNC110 - the state lives in the source, there is no event to await
            await asyncio.sleep(0.005)


async def test_observations_carry_sensor_rssi_ranging_and_resolved_identity() -> None:
    be = FakeBackend()
    src = BleSource(
        settings(),
        backend=be,
        resolver=IrkResolver({"customer-42": SPEC_IRK}),
        wall_clock=lambda: 1_767_261_600.5,
    )
    assert isinstance(src, Source)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    be.emit("C0:11:22:33:44:55", -70, mfr={0x004C: IBEACON_BODY})
    be.emit("C0:11:22:33:44:55", -70, mfr={0x004C: IBEACON_BODY})  # duplicate kept
    be.emit(SPEC_RPA, -81, sdata={EDDY: EDDY_UID})
    be.emit(SPEC_RPA, -82, address_type="public")  # public: never treated as an RPA
    async with asyncio.timeout(2):
        batch = await task
    while len(batch) < 4:
        batch += await next_batch(it)
    assert [o.device for o in batch] == ["C0:11:22:33:44:55", "C0:11:22:33:44:55", SPEC_RPA, SPEC_RPA]
    assert all(o.sensor == "gw-radio" and o.radio == "ble" and o.ts == 1_767_261_600.5 for o in batch)
    assert [o.rssi for o in batch] == [-70.0, -70.0, -81.0, -82.0]
    assert [o.rssi_at_1m for o in batch] == [-59.0, -59.0, -59.0, None]
    assert [o.link for o in batch] == [None, None, "customer-42", None]
    assert src.health.observations == 4
    assert src.health.state == "running"
    assert src.health.detail["mode"] == "passive"
    await it.aclose()
    assert be.calls[-1] == "stop"
    assert src.health.state == "stopped"


async def test_observations_say_what_kind_of_device_and_whether_its_address_rotates() -> None:
    """The rotation linker downstream needs the advert's kind and rotation-stable content."""
    be = FakeBackend()
    src = BleSource(settings(), backend=be)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    nearby = bytes.fromhex("1005471cfe5900")  # Apple Nearby Info (ROS-BLE-Device-scanner log)
    be.emit("5C:11:22:33:44:55", -60, mfr={0x004C: nearby})  # resolvable private address
    be.emit("C0:11:22:33:44:55", -70, mfr={0x004C: IBEACON_BODY})  # random static
    async with asyncio.timeout(2):
        batch = await task
    while len(batch) < 2:
        batch += await next_batch(it)
    phone, beacon = batch[0].adv, batch[1].adv
    assert phone is not None and phone.kind == "phone" and phone.rotating
    assert beacon is not None and beacon.kind == "beacon" and not beacon.rotating
    assert "11:22" not in phone.signature and "5c1122" not in phone.signature  # no address in it
    await it.aclose()


async def test_malformed_beacon_frame_is_counted_but_observation_kept() -> None:
    be = FakeBackend()
    src = BleSource(settings(), backend=be)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    be.emit("C0:11:22:33:44:55", -60, mfr={0x004C: bytes.fromhex("0215aabb")})  # truncated iBeacon
    async with asyncio.timeout(2):
        batch = await task
    assert len(batch) == 1
    assert batch[0].rssi_at_1m is None
    assert src.health.dropped == {"malformed_frame": 1}
    await it.aclose()


async def test_passive_refused_falls_back_to_active_and_says_why() -> None:
    be = FakeBackend(passive_ok=False)
    src = BleSource(settings(), backend=be)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    assert src.health.detail["mode"] == "active"
    assert src.health.detail["mode_reason"] == "monitor API missing"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await it.aclose()


async def test_stall_ladder_with_injected_clock_and_recovery() -> None:
    be = FakeBackend()
    mono = Clock()
    src = BleSource(settings(stall_s=10.0, failed_retry_s=50.0), backend=be, monotonic=mono)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    be.calls.clear()

    mono.t += 11  # silence > stall_s: restart the scan
    await wait_for(lambda: be.calls == ["stop", "start"])
    assert src.health.state == "degraded"
    assert src.health.detail["scan_restarts"] == 1

    mono.t += 11  # still silent: power-cycle the adapter, then restart the scan
    await wait_for(lambda: be.calls == ["stop", "start", "stop", "power_cycle", "start"])
    assert src.health.detail["power_cycles"] == 1

    mono.t += 11  # still silent: failed
    await wait_for(lambda: src.health.state == "failed")
    assert src.health.detail["failures"] == 1
    assert src.health.recoveries == 2

    be.emit("C0:11:22:33:44:55", -60)  # the radio comes back by itself
    async with asyncio.timeout(2):
        batch = await task
    assert len(batch) == 1
    await wait_for(lambda: src.health.state == "running")
    assert src.health.detail["recovered"] == 1
    await it.aclose()


async def test_start_failure_is_reported_and_retried_by_the_ladder() -> None:
    be = FakeBackend(fail_start=1)
    mono = Clock()
    src = BleSource(settings(), backend=be, monotonic=mono)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.calls == ["start"])
    await wait_for(lambda: src.health.detail.get("last_error") is not None)
    assert src.health.state == "degraded"
    assert "adapter not ready" in src.health.detail["last_error"]
    mono.t += 11
    await wait_for(lambda: be.cb is not None)
    assert src.health.detail["last_error"] is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await it.aclose()


def test_load_irks(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "irks.txt"
    p.write_text("# known customers\ncustomer-42 " + SPEC_IRK.hex() + "\n\n")
    assert load_irks(p) == {"customer-42": SPEC_IRK}
    p.write_text("customer-42 nothex\n")
    with pytest.raises(ValueError, match=r"irks.txt:1"):
        load_irks(p)


async def test_silent_passive_scan_falls_back_to_active_at_the_first_stall() -> None:
    be = FakeBackend()
    mono = Clock()
    src = BleSource(settings(), backend=be, monotonic=mono)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    assert src.health.detail["mode"] == "passive"
    mono.t += 11
    await wait_for(lambda: be.modes == [True, False])
    await wait_for(lambda: src.health.detail["mode"] == "active")
    assert "delivered no adverts" in src.health.detail["mode_reason"]
    be.emit("C0:11:22:33:44:55", -60)
    async with asyncio.timeout(2):
        assert len(await task) == 1
    await it.aclose()


async def test_passive_that_worked_stays_passive_across_restarts() -> None:
    be = FakeBackend()
    mono = Clock()
    src = BleSource(settings(), backend=be, monotonic=mono)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    be.emit("C0:11:22:33:44:55", -60)
    async with asyncio.timeout(2):
        await task
    task = asyncio.ensure_future(anext(it))
    mono.t += 11
    await wait_for(lambda: be.modes == [True, True])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await it.aclose()


def test_error_texts_never_carry_device_addresses() -> None:
    e = RuntimeError("device '/org/bluez/hci0/dev_70_81_94_0D_FB_AA' not found; peer 70:81:94:0d:fb:aa")
    text = _describe(e)
    assert "70_81" not in text
    assert "70:81" not in text
    assert text.startswith("RuntimeError: device '/org/bluez/hci0/dev_<redacted>'")


def test_daemon_factory_hooks() -> None:
    from gateway.config import Settings
    from gateway.runtime.daemon import embedded_layout
    from gateway.sources.ble import BleakBackend, enabled, make_source

    s = Settings.model_validate({"ble": {"enabled": True, "adapter": "hci1", "sensor_id": "gw"}})
    assert enabled(s)
    assert not enabled(Settings())
    src = make_source(s, embedded_layout())
    assert isinstance(src, Source)
    assert src.health.state == "starting"
    assert isinstance(src._backend, BleakBackend)
    assert src._backend.adapter == "hci1"


async def test_placeholder_rssi_and_backlog_are_counted_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.sources.ble as ble_mod

    monkeypatch.setattr(ble_mod, "MAX_PENDING", 3)
    be = FakeBackend()
    src = BleSource(settings(check_interval_s=5.0), backend=be)
    it = src.batches()
    task = asyncio.ensure_future(anext(it))
    await wait_for(lambda: be.cb is not None)
    be.emit("C0:11:22:33:44:55", -127)  # no RSSI in this update
    for rssi in (-60, -61, -62, -63, -64):  # emitted synchronously: only 3 fit before the batch
        be.emit("C0:11:22:33:44:55", rssi)
    async with asyncio.timeout(2):
        batch = await task
    assert [o.rssi for o in batch] == [-60.0, -61.0, -62.0]
    assert src.health.dropped == {"no_rssi": 1, "backlog_overflow": 2}
    await it.aclose()
