"""doctor's BLE check over a real D-Bus: a private dbus-daemon with a stand-in org.bluez service
(dbus-fast) exporting /org/bluez/hci0 with org.bluez.Adapter1.Powered."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.ops.doctor import check_ble

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="no dbus")]

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

FAKE_BLUEZ = """
import asyncio, sys
from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_property, PropertyAccess

class Adapter(ServiceInterface):
    def __init__(self, powered):
        super().__init__("org.bluez.Adapter1")
        self._p = powered
    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> "b":
        return self._p

async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export("/org/bluez/hci0", Adapter(sys.argv[1] == "on"))
    await bus.request_name("org.bluez")
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    sock = tmp_path / "bus.sock"
    conf = tmp_path / "bus.conf"
    conf.write_text(BUS_CONF.format(sock=sock))
    proc = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={conf}"])
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    addr = f"unix:path={sock}"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
    try:
        yield addr
    finally:
        proc.terminate()
        proc.wait(10)


def _bluez(addr: str, powered: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", FAKE_BLUEZ, powered],
        stdout=subprocess.PIPE,
        text=True,
        env={"DBUS_SYSTEM_BUS_ADDRESS": addr, "PATH": "/usr/bin:/bin"},
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def _settings(adapter: str = "hci0") -> Settings:
    return Settings(ble={"enabled": True, "adapter": adapter})  # type: ignore[arg-type]


def test_powered_adapter_passes(system_bus: str) -> None:
    p = _bluez(system_bus, "on")
    try:
        c = check_ble(_settings(), 5)
        assert (c.status, c.detail) == ("pass", "hci0 present and powered (BlueZ)")
        missing = check_ble(_settings("hci7"), 5)
        assert missing.status == "fail"
        assert "hci7 not found" in missing.detail
    finally:
        p.terminate()
        p.communicate(timeout=10)


def test_powered_off_adapter_fails_with_remedy(system_bus: str) -> None:
    p = _bluez(system_bus, "off")
    try:
        c = check_ble(_settings(), 5)
        assert c.status == "fail"
        assert "powered off" in c.detail
        assert "bluetoothctl power on" in c.remedy
    finally:
        p.terminate()
        p.communicate(timeout=10)


def test_bluetoothd_not_running(system_bus: str) -> None:
    c = check_ble(_settings(), 5)
    assert c.status == "fail"
    assert c.detail == "BlueZ (bluetoothd) is not running"


def test_no_system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'nothing'}")
    c = check_ble(_settings(), 5)
    assert c.status == "fail"
    assert "D-Bus" in c.detail
