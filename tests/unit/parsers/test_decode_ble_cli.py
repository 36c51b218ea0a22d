"""``gateway decode ble``: the real CLI in a subprocess (JSON out, exit 2 + one stderr line on bad input)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import gateway_cmd, gateway_env

MIKROTIK_TLM = "0201060303AAFE1116AAFE20000B701549023532D802384F46"
BLUECHARM_IBEACON = "0201061AFF4C000215426C7565436861726D426561636F6E730EFE1355C5"
ALTBEACON = "1BFF1801BEAC2F234454CF6D4A0FADF2F4911BA9FFA600010002C500"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_cmd("decode", "ble", *args), capture_output=True, text=True, env=gateway_env(), timeout=60
    )


def test_decode_hex_prints_one_json_object() -> None:
    p = run(BLUECHARM_IBEACON)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["flags"] == 6
    assert out["local_name"] is None
    (frame,) = out["frames"]
    assert frame == {
        "type": "ibeacon",
        "uuid": "426c7565-4368-6172-6d42-6561636f6e73",
        "major": 3838,
        "minor": 4949,
        "measured_power": -59,
        "company_id": "0x004C",
        "company": "Apple, Inc.",
        "rssi_at_1m": -59.0,
    }


def test_decode_file_one_payload_per_line_and_bad_lines_reported(tmp_path: Path) -> None:
    f = tmp_path / "adverts.txt"
    f.write_text(f"# captured in store 12\n{MIKROTIK_TLM}\n\n0201061aff4c0002\n{ALTBEACON.lower()}\n")
    p = run("--file", str(f))
    assert p.returncode == 2
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["frames"][0]["type"] for x in lines] == ["eddystone-tlm", "altbeacon"]
    tlm = lines[0]["frames"][0]
    assert tlm["battery_mv"] == 2928
    assert tlm["adv_count"] == 37040856
    assert tlm["uptime_s"] == 3724474.2
    assert lines[1]["frames"][0]["beacon_id"] == "2f234454cf6d4a0fadf2f4911ba9ffa600010002"
    assert (
        p.stderr.strip()
        == f"{f}:4: malformed advert: offset 3: AD structure length 26 overruns the payload (4 bytes left)"
    )


def test_malformed_input_exit_2_with_one_line_naming_offset() -> None:
    p = run("0201061aff4c0002")
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        "malformed advert: offset 3: AD structure length 26 overruns the payload (4 bytes left)"
    ]


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("02 01 06 0z", "malformed advert: offset 3: not a hex digit: 'z'"),
        ("020106f", "malformed advert: offset 3: odd number of hex digits (half a byte at the end)"),
        ("", "malformed advert: offset 0: empty payload"),
        ("0716aafe10eb0861", "malformed advert: offset 6: Eddystone-URL scheme byte 0x08 is not defined (0x00-0x03)"),
        ("0x0201060403aafe", "malformed advert: offset 3: AD structure length 4 overruns the payload (3 bytes left)"),
    ],
)
def test_malformed_input_in_process(arg: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "ble", arg]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [expected]


def test_separators_and_prefix_are_tolerated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "ble", "0x02:01:06 " + MIKROTIK_TLM[6:]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["length"] == 25
    assert out["frames"][0]["temperature_c"] == 5449 / 256


def test_needs_hex_or_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "ble"]) == 2
    assert "either HEX or --file F (- for either reads standard input)" in capsys.readouterr().err


def test_stdin_company_names_kind_and_bare_manufacturer_hint() -> None:
    """``-`` reads stdin; company ids come with their SIG name; bare manufacturer data gets a hint."""
    p = subprocess.run(
        gateway_cmd("decode", "ble", "-"),
        input="0aff4c001005471cfe5900\n4c001005471cfe5900\n",
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
    )
    assert p.returncode == 2
    first = json.loads(p.stdout.splitlines()[0])
    assert first["kind"] == "phone"
    assert first["messages"][0]["message"] == "apple-nearby-info"
    assert first["frames"][0]["company_id"] == "0x004C" and first["frames"][0]["company"] == "Apple, Inc."
    assert "<stdin>:2: malformed advert" in p.stderr
    assert "bare manufacturer data (company 0x004C Apple, Inc.)" in p.stderr and "try 0aff4c00" in p.stderr
