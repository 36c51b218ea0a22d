"""Every shipped layout validates; every board profile parses and names its radio options."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.layout import load_layout

HW = Path(__file__).resolve().parents[2] / "hardware"


@pytest.mark.parametrize("path", sorted((HW / "layouts").glob("*.toml")), ids=lambda p: p.name)
def test_layouts_validate(path: Path) -> None:
    lay = load_layout(path)
    assert path.stem == "demo-store" or len(lay.sensors) >= 3
    assert any(z.kind == "entrance" for z in lay.zones)


def test_at_least_three_layouts() -> None:
    assert len(list((HW / "layouts").glob("*.toml"))) >= 3


@pytest.mark.parametrize("path", sorted((HW / "boards").glob("*.toml")), ids=lambda p: p.name)
def test_board_profiles(path: Path) -> None:
    b = tomllib.loads(path.read_text())
    assert {"id", "name", "arch", "rtc", "status"} <= set(b["board"])
    radios = b["radios"]
    assert radios["wifi_builtin"]["monitor_mode"] is False  # all supported boards: CYW43455
    assert any(w["recommended"] for w in radios["wifi_usb"])
    for dongle in radios["wifi_usb"] + radios.get("ble_usb", []):
        assert dongle["why"]
