"""The shipped units verify with systemd and stay within the hardening target (exposure <= 2.5)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "systemd").glob("*.service"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _unit(name: str) -> dict[str, list[str]]:
    """Service-section keys -> all values (systemd allows repeats; configparser does not)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in (REPO / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault(f"{section}.{k}", []).append(v)
    return out


def test_units_present() -> None:
    assert [u.name for u in UNITS] == ["gateway-wifi-capture.service", "gateway.service"]
    configparser.ConfigParser(strict=False, interpolation=None).read(UNITS)  # parses at all


def test_main_unit_has_no_capabilities_and_no_raw_sockets() -> None:
    u = _unit("gateway.service")
    assert u["Service.Type"] == ["notify"]
    assert u["Service.CapabilityBoundingSet"] == [""]
    assert u["Service.AmbientCapabilities"] == [""]
    fam = u["Service.RestrictAddressFamilies"][0].split()
    assert "AF_PACKET" not in fam
    assert "AF_NETLINK" not in fam
    assert u["Service.User"] == ["gateway"]
    for key in ("WatchdogSec", "StateDirectory", "LogsDirectory", "SystemCallFilter", "MemoryDenyWriteExecute"):
        assert f"Service.{key}" in u, key
    assert u["Unit.StartLimitBurst"]
    assert u["Service.Restart"] == ["on-failure"]


def test_capture_unit_is_the_only_one_with_net_caps() -> None:
    u = _unit("gateway-wifi-capture.service")
    assert sorted(u["Service.CapabilityBoundingSet"][0].split()) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert sorted(u["Service.RestrictAddressFamilies"][0].split()) == ["AF_NETLINK", "AF_PACKET", "AF_UNIX"]
    assert "gateway.capture.relay" in u["Service.ExecStart"][0]


def _copy_units(tmp_path: Path) -> list[Path]:
    """Copy the units with ExecStart pointed at stub executables (verify checks they exist)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for exe in ("gateway", "python"):
        (bindir / exe).write_text("#!/bin/sh\nexit 0\n")
        (bindir / exe).chmod(0o755)
    out = []
    for unit in UNITS:
        dst = tmp_path / unit.name
        dst.write_text(unit.read_text().replace("/opt/gateway/current", str(tmp_path)))
        out.append(dst)
    return out


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.integration
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    units = _copy_units(tmp_path)
    r = _analyze("verify", *map(str, units))
    if r.returncode != 0 and "Failed to" in r.stderr and "bus" in r.stderr.lower():
        pytest.skip(f"systemd-analyze refuses to run here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr.lower(), r.stderr


@pytest.mark.integration
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", ["gateway.service", "gateway-wifi-capture.service"])
def test_systemd_analyze_security_exposure(tmp_path: Path, name: str) -> None:
    _copy_units(tmp_path)
    r = _analyze("security", "--offline=true", "--no-pager", str(tmp_path / name))
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security did not run here: {r.stderr.strip()[:200]}")
    score = float(m.group(1))
    print(f"{name}: systemd-analyze security exposure {score}")
    assert score <= 2.5, r.stdout


# Everything the daemon loads must work without writable+executable memory
# (MemoryDenyWriteExecute=yes). PR_SET_MDWE (Linux >= 6.3) applies the same rule to a process.
_MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("NO-MDWE"); sys.exit(0)
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("MDWE-NOT-ENFORCED"); sys.exit(0)
except (PermissionError, OSError):
    pass
import numpy as np
np.linalg.lstsq(np.random.default_rng(1).normal(size=(20, 3)), np.ones(20), rcond=None)
from argon2 import PasswordHasher
PasswordHasher().verify(PasswordHasher().hash("pw-123456"), "pw-123456")
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
ec.generate_private_key(ec.SECP256R1())
ed25519.Ed25519PrivateKey.generate().sign(b"x")
import ssl, sqlite3, json, zlib
import paho.mqtt.client, aiohttp, dbus_fast, pydantic, structlog, aiosqlite
import gateway.config, gateway.layout, gateway.capture.relay
print("OK")
"""


@pytest.mark.integration
def test_dependencies_run_under_memory_deny_write_execute() -> None:
    r = subprocess.run([sys.executable, "-c", _MDWE_PROBE], capture_output=True, text=True, timeout=60, check=False)
    out = r.stdout.strip()
    if out in ("NO-MDWE", "MDWE-NOT-ENFORCED"):
        pytest.skip(f"kernel cannot emulate MemoryDenyWriteExecute here ({out})")
    assert r.returncode == 0, r.stderr[-2000:]
    assert out == "OK", r.stderr[-2000:]
