"""The shipped units verify with systemd and stay within the hardening target (exposure <= 2.5)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


# -- the daemon's and the relay's code paths against what their units allow ---------------------------
# (issue 19: the daemon's live Wi-Fi path once opened AF_PACKET itself, which gateway.service denies)


def _exec_args(unit: str) -> list[str]:
    return _unit(unit)["Service.ExecStart"][0].split()


def _config_arg(args: list[str]) -> str:
    return args[args.index("--config") + 1]


def test_capture_socket_follows_the_units() -> None:
    """The socket both sides use is where the units put it: in the daemon's RuntimeDirectory, which the
    relay may write to, both running as the same user and group (the socket is mode 0660)."""
    from gateway.config import WifiSettings
    from gateway.sources.wifi import SOCKET_MODE

    daemon, relay = _unit("gateway.service"), _unit("gateway-wifi-capture.service")
    runtime = Path("/run") / daemon["Service.RuntimeDirectory"][0]
    sock = WifiSettings().capture_socket
    assert sock.parent == runtime, (sock, runtime)
    # the relay reads the same config file (no --socket of its own: one place decides the path)
    assert _config_arg(_exec_args("gateway-wifi-capture.service")) == _config_arg(_exec_args("gateway.service"))
    assert "--socket" not in _exec_args("gateway-wifi-capture.service")
    writable = [p.lstrip("-") for v in relay.get("Service.ReadWritePaths", []) for p in v.split()]
    assert str(runtime) in writable, writable
    assert relay["Service.User"] == daemon["Service.User"]
    assert relay["Service.Group"] == daemon["Service.Group"]
    assert SOCKET_MODE & 0o060 == 0o060  # the group may connect
    assert int(daemon["Service.RuntimeDirectoryMode"][0], 8) & 0o010  # ... and reach it
    assert daemon["Service.RuntimeDirectoryPreserve"] == ["restart"]  # a daemon restart keeps the path
    # the relay stops and starts with the daemon, never holds a stale socket of a stopped one
    assert relay["Unit.PartOf"] == ["gateway.service"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_daemon_wifi_path_runs_within_gateway_service(tmp_path: Path) -> None:
    """Run ``gateway run`` with ``[wifi]`` enabled under what gateway.service allows - its
    RestrictAddressFamilies= (the same seccomp rule systemd installs), no capability, an unprivileged
    user when this test runs as root - fed by a relay: probe requests must become observations.
    A daemon that opened a packet or netlink socket itself fails here (EAFNOSUPPORT)."""
    from gateway.capture.relay import Relay
    from gateway.capture.wire import LINKTYPE_RADIOTAP, RelayStatus
    from gateway.parsers.ieee80211 import build_probe_request
    from gateway.parsers.radiotap import build_radiotap
    from tests import sandbox
    from tests.conftest import gateway_env

    if not sandbox.supported():
        pytest.skip(f"tests/sandbox.py has no seccomp filter for {os.uname().machine}")
    families = _unit("gateway.service")["Service.RestrictAddressFamilies"][0].split()
    assert _unit("gateway.service")["Service.CapabilityBoundingSet"] == [""]
    base = tmp_path
    who: list[str] = []
    if os.geteuid() == 0:  # be the unit's unprivileged user (nobody stands in for "gateway")
        base = Path(tempfile.mkdtemp(prefix="gw-unit-", dir="/tmp"))
        base.chmod(0o755)
        who = ["--user", "nobody", *(f"--expose={p}" for p in (sys.base_prefix, sys.prefix, REPO))]
    try:
        run_dir, state_dir = base / "run", base / "state"
        for d in (run_dir, state_dir):
            d.mkdir(mode=0o750)
            if who:
                os.chown(d, 65534, 65534)
        sock = run_dir / "capture.sock"
        cfg = base / "gateway.toml"
        cfg.write_text(
            f'[gateway]\nid = "gw-unit"\nstore_id = "s1"\n[paths]\nstate_dir = "{state_dir}"\n'
            '[mqtt]\nhost = "127.0.0.1"\nport = 9\ntls = false\n[status]\nenabled = false\n[log]\nformat = "json"\n'
            f'[wifi]\nenabled = true\nsensor_id = "gw"\ncapture_socket = "{sock}"\n'
        )
        cfg.chmod(0o644)
        sandboxed = [sys.executable, "-m", "tests.sandbox", *who, "--families", ",".join(families), "--"]
        proc = subprocess.Popen(
            [*sandboxed, sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
            env=gateway_env(PYTHONDONTWRITEBYTECODE="1"),
            cwd=str(REPO),
            stderr=subprocess.PIPE,
            text=True,
        )
        relay = Relay(sock)
        try:
            deadline = time.monotonic() + 60
            while not relay.send_status(RelayStatus("unit-test", 0.0, "mon0", "capturing")):
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the daemon never listened on its capture socket"
                time.sleep(0.1)
            rt = build_radiotap(signal_dbm=-60, freq_mhz=2437, flags=0)
            ies = [(0, b""), (1, bytes([2, 4, 11, 22])), (3, bytes([6]))]
            for i in range(20):
                assert relay.forward(rt + build_probe_request(bytes.fromhex("001122334455"), i, ies), LINKTYPE_RADIOTAP)
                time.sleep(0.05)
            time.sleep(1.5)
        finally:
            relay.close()
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate(timeout=10)
    finally:
        if who:
            shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert f"families={','.join(families)}" in err
    if who:
        assert "uid=65534" in err and "CapEff=0 " in err and "CapBnd=0 " in err
    logs = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert any(r.get("event") == "wifi.relay_heard" for r in logs), err[-3000:]
    stopped = next(r for r in logs if r.get("event") == "gateway stopped")
    assert stopped["stats"]["observations"] == 20, stopped
    assert "Address family not supported" not in err


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_relay_code_path_runs_within_its_unit(tmp_path: Path) -> None:
    """The relay under its unit's RestrictAddressFamilies=: it finds the interface type, opens the
    packet socket (as root: CAP_NET_RAW), asks nl80211 to hop and reaches the daemon's socket -
    none of it refused for its address family."""
    from gateway.capture.wire import RelayStatus
    from gateway.sources.wifi import RelaySocket
    from tests import sandbox
    from tests.conftest import gateway_env

    if not sandbox.supported():
        pytest.skip(f"tests/sandbox.py has no seccomp filter for {os.uname().machine}")
    if os.geteuid() != 0:
        pytest.skip("the relay's packet socket needs CAP_NET_RAW (root here)")
    families = _unit("gateway-wifi-capture.service")["Service.RestrictAddressFamilies"][0].split()
    sock = tmp_path / "capture.sock"
    rx = RelaySocket(sock)
    rx.open()
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[wifi]\ninterface = "lo"\nlinktype = "radiotap"\nchannels = [1, 6]\ncapture_socket = "{sock}"\n')
    sandboxed = [sys.executable, "-m", "tests.sandbox", "--families", ",".join(families), "--"]
    proc = subprocess.Popen(
        [*sandboxed, sys.executable, "-m", "gateway.capture.relay", "--config", str(cfg)],
        env=gateway_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    last: RelayStatus | None = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rx.accept()
            for m in rx.read(100):
                if isinstance(m, RelayStatus):
                    last = m
            if last is not None and last.state == "capturing" and last.hopping.startswith("unavailable"):
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        rx.close()
    assert last is not None, err
    assert last.state == "capturing", (last, err)
    # lo is no wireless device: nl80211 answers "no such family/device", not "address family refused"
    assert "Address family not supported" not in last.hopping, last.hopping
    assert "nl80211" in last.hopping
    assert proc.returncode == 0, err
