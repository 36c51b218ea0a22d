"""Live Wi-Fi capture as a store runs it: the relay, as root, in a private network namespace.

There is no Wi-Fi hardware (nor ``mac80211_hwsim``) on a CI machine, so the monitor interface is one
end of a veth pair inside a namespace made for the test; radiotap + 802.11 frames injected on the
other end with a raw packet socket reach the relay exactly as a monitor interface delivers them.
The relay runs as its unit runs it (``python -m gateway.capture.relay --config``, root, in the
namespace); the daemon's side is either :class:`WifiRelaySource` in this process or, in
:func:`test_gateway_run_unprivileged_on_the_relay_frames`, ``gateway run`` as ``nobody`` with no
capabilities and only the address families ``gateway.service`` allows - publishing to a real
mosquitto. The host's own interfaces are never touched. Needs root; skipped, with the reason, only
when the kernel refuses a namespace or a veth pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import WifiSettings
from gateway.demo.cloud_standin import CloudStandIn
from gateway.models import Observation
from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.radiotap import build_radiotap
from gateway.sources.wifi import WifiRelaySource
from tests import sandbox
from tests.conftest import LAYOUT, REPO, Mosquitto, gateway_env

pytestmark = pytest.mark.integration

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class Netns:
    name: str
    ip: str
    inject_if: str = "winj"
    capture_if: str = "wcap"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.ip, "-n", self.name, *args], capture_output=True, text=True, timeout=10)

    def add_veth(self) -> None:
        for cmd in (
            ("link", "add", self.inject_if, "type", "veth", "peer", "name", self.capture_if),
            ("link", "set", self.inject_if, "up"),
            ("link", "set", self.capture_if, "up"),
        ):
            r = self.run(*cmd)
            if r.returncode != 0:
                pytest.skip(f"cannot create a veth pair in the namespace: {r.stderr.strip()}")

    def injector(self) -> socket.socket:
        """A raw packet socket on the inject end, opened inside the namespace (it stays bound there
        when this thread returns to its own namespace)."""
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(fd)
            try:
                tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                tx.bind((self.inject_if, 0))
            finally:
                _setns(own)
        finally:
            os.close(fd)
            os.close(own)
        return tx

    def relay(self, config: Path) -> subprocess.Popen[bytes]:
        """The relay as its unit runs it, as root, inside the namespace."""
        cmd = [sys.executable, "-m", "gateway.capture.relay", "--config", str(config)]
        return subprocess.Popen(
            [self.ip, "netns", "exec", self.name, *cmd],
            env=gateway_env(),
            stderr=subprocess.PIPE,
        )


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh network namespace holding an up veth pair (inject end, capture end)."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("the ip tool (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace and a relay with CAP_NET_RAW")
    name = f"gwwifi{os.getpid()}"
    r = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"this machine refuses a private network namespace: {r.stderr.strip()}")
    ns = Netns(name, ip)
    try:
        # no IPv6 autoconfiguration chatter on the pair: every frame on it is ours
        subprocess.run(
            [ip, "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            capture_output=True,
            timeout=10,
        )
        ns.add_veth()
        yield ns
    finally:
        subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=10)


def _frame(mac: bytes, seq: int, rssi: int, rx_ch: int, tx_ch: int, *, bad_fcs: bool = False) -> bytes:
    rt = build_radiotap(signal_dbm=rssi, freq_mhz=2407 + 5 * rx_ch, flags=0x40 if bad_fcs else 0)
    ies = [(0, b""), (1, bytes([0x02, 0x04, 0x0B, 0x16])), (3, bytes([tx_ch])), (45, bytes(26))]
    return rt + build_probe_request(mac, seq, ies)


def _relay_config(path: Path, interface: str, socket_path: Path, **extra: object) -> Path:
    lines = [
        "[wifi]",
        f'interface = "{interface}"',
        f'capture_socket = "{socket_path}"',
        "channels = [1, 6]",
        "dwell_s = 0.05",
    ]
    for k, v in extra.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def _until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    return err.decode(errors="replace")


async def test_relay_in_a_private_netns_feeds_the_source(netns: Netns, tmp_path: Path) -> None:
    """Frames injected on the interface the relay captures come out of the daemon's source decoded,
    with drop reasons counted; the interface disappearing and coming back is a relay state, and
    capture resumes without a restart of either side."""
    sock = tmp_path / "capture.sock"
    src = WifiRelaySource(WifiSettings(capture_socket=sock, sensor_id="gw-test", relay_silent_s=3.0, group_hold_s=0.0))
    got: list[Observation] = []

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)

    task = asyncio.create_task(consume())
    cfg = _relay_config(tmp_path / "relay.toml", netns.capture_if, sock, linktype="radiotap", kernel_filter=False)
    relay = netns.relay(cfg)
    tx = netns.injector()
    h = src.health
    err = ""
    try:
        await _until(lambda: h.detail.get("relay") == "capturing", 20, "the relay to capture")
        assert h.state == "running"
        assert h.detail["interface"] == netns.capture_if
        assert h.detail["kernel_filter"] == "off"
        # no wireless device in the namespace: hopping says it cannot, capture goes on anyway
        await _until(lambda: h.detail.get("hopping", "").startswith("unavailable"), 20, "the hopper's verdict")
        assert "cannot set the channel" in h.detail["hopping"]
        phone = bytes.fromhex("02aabbccdd01")  # randomized (locally administered)
        laptop = bytes.fromhex("001122334455")  # public MAC
        for f in (
            _frame(phone, 100, -55, 6, 6),
            _frame(phone, 101, -56, 6, 6),
            _frame(laptop, 7, -70, 6, 6),
            _frame(laptop, 8, -90, 6, 4),  # off-channel leakage: dropped
            _frame(laptop, 9, -71, 6, 6, bad_fcs=True),  # damaged: dropped
            b"\x00\x00\xff\x00" + bytes(60),  # radiotap length beyond the frame: malformed, dropped
        ):
            tx.send(f)
        await _until(lambda: len(got) >= 3 and h.dropped.get("malformed.radiotap") == 1, 10, "the frames")
        assert [o.device for o in got] == ["02:aa:bb:cc:dd:01"] * 2 + ["00:11:22:33:44:55"]
        assert [o.rssi for o in got] == [-55.0, -56.0, -70.0]
        assert all(o.radio == "wifi" and o.sensor == "gw-test" for o in got)
        assert got[0].link == got[1].link != got[2].link
        assert abs(got[0].ts - time.time()) < 30  # the relay's capture time
        assert (h.dropped["off_channel"], h.dropped["bad_fcs"]) == (1, 1)

        # the adapter is unplugged: the relay says so (and keeps running); plugged back: capturing again
        assert netns.run("link", "del", netns.inject_if).returncode == 0  # takes its peer with it
        tx.close()
        await _until(lambda: h.detail.get("relay", "").startswith("waiting"), 20, "the relay to notice")
        assert h.state == "degraded"
        assert netns.capture_if in h.detail["relay"]
        netns.add_veth()
        tx = netns.injector()
        await _until(lambda: h.detail.get("relay") == "capturing", 40, "the relay to capture again")
        tx.send(_frame(laptop, 10, -69, 6, 6))
        await _until(lambda: len(got) == 4, 10, "a frame after the interface came back")
        assert h.recoveries == 0  # the same relay process throughout
    finally:
        tx.close()
        err = _stop(relay)
        await _until(lambda: h.detail.get("relay", "").startswith("disconnected"), 10, "the relay's end")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert relay.returncode == 0, err
    assert "relay stopped: received=" in err


async def test_kernel_filter_passes_only_probe_requests(netns: Netns, tmp_path: Path) -> None:
    """With the BPF filter, data frames and beacons never reach the relay (its counts show it)."""
    sock = tmp_path / "capture.sock"
    src = WifiRelaySource(WifiSettings(capture_socket=sock))
    got: list[Observation] = []

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)

    task = asyncio.create_task(consume())
    relay = netns.relay(_relay_config(tmp_path / "r.toml", netns.capture_if, sock, linktype="radiotap", hop=False))
    tx = netns.injector()
    h = src.health
    try:
        await _until(lambda: h.detail.get("relay") == "capturing", 20, "the relay to capture")
        assert h.detail["kernel_filter"] == "probe requests only"
        assert h.detail["hopping"].startswith("off")
        rt = build_radiotap(signal_dbm=-50, freq_mhz=2437, flags=0)
        mac = bytes.fromhex("02aabbccdd03")
        data_frame = rt + bytes([0x08, 0x00, 0, 0]) + mac * 3 + b"\x00\x00" + bytes(30)
        beacon = rt + bytes([0x80, 0x00, 0, 0]) + b"\xff" * 6 + mac * 2 + b"\x00\x00" + bytes(12)
        for f in [data_frame, beacon, _frame(mac, 1, -50, 6, 6), data_frame, beacon, _frame(mac, 2, -51, 6, 6)]:
            tx.send(f)
        await _until(lambda: len(got) == 2 and h.detail.get("relay_received") == 2, 10, "two probe requests")
    finally:
        tx.close()
        _stop(relay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [o.rssi for o in got] == [-50.0, -51.0]
    assert src.frames == 2  # the four other frames were dropped in the kernel
    assert h.detail.get("other_frames", 0) == 0


async def test_plain_80211_interface(netns: Netns, tmp_path: Path) -> None:
    """linktype 105 (no radiotap): the filter reads the frame control at offset 0; no RSSI to range."""
    sock = tmp_path / "capture.sock"
    src = WifiRelaySource(WifiSettings(capture_socket=sock))
    task = asyncio.create_task(anext(src.batches()))
    relay = netns.relay(_relay_config(tmp_path / "r.toml", netns.capture_if, sock, linktype="ieee80211", hop=False))
    tx = netns.injector()
    try:
        await _until(lambda: src.health.detail.get("relay") == "capturing", 20, "the relay to capture")
        mac = bytes.fromhex("02aabbccdd04")
        probe = _frame(mac, 1, -50, 6, 6)
        plain = probe[int.from_bytes(probe[2:4], "little") :]
        data_frame = bytes([0x08, 0x00, 0, 0]) + mac * 3 + b"\x00\x00" + bytes(30)
        for f in (data_frame, plain, data_frame, plain):
            tx.send(f)
        await _until(lambda: src.health.dropped.get("no_rssi", 0) >= 2, 10, "two plain probe requests")
    finally:
        tx.close()
        _stop(relay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await task
    assert src.frames == 2  # only the probe requests passed the kernel filter
    assert src.health.dropped == {"no_rssi": 2}


def _unit_families(unit: str) -> list[str]:
    for line in (REPO / "systemd" / unit).read_text().splitlines():
        if line.startswith("RestrictAddressFamilies="):
            return line.split("=", 1)[1].split()
    raise AssertionError(f"{unit} has no RestrictAddressFamilies=")


def _store_dirs(netns: Netns, mosquitto: Mosquitto) -> tuple[Path, Path, Path]:
    """A world-traversable working directory (the daemon runs as nobody; pytest's tmp_path is
    root-only) with the daemon's own run and state directories, and the store's config."""
    base = Path(tempfile.mkdtemp(prefix="gw-wifi-store-", dir="/tmp"))
    base.chmod(0o755)
    run_dir, state_dir = base / "run", base / "state"
    for d in (run_dir, state_dir):
        d.mkdir(mode=0o750)
        os.chown(d, 65534, 65534)  # as RuntimeDirectory= / StateDirectory= for User=
    cfg = base / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
id = "gw-wifi"
store_id = "demo-store"
[paths]
state_dir = "{state_dir}"
layout = "{LAYOUT}"
[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
tls = false
[status]
enabled = false
[log]
format = "json"
[presence]
publish_fixes = true
[wifi]
enabled = true
interface = "{netns.capture_if}"
linktype = "radiotap"
sensor_id = "gw"
channels = [6]
capture_socket = "{run_dir / "capture.sock"}"
relay_silent_s = 2.0
"""
    )
    cfg.chmod(0o644)
    return base, run_dir, cfg


@pytest.mark.timeout(240)
async def test_gateway_run_unprivileged_on_the_relay_frames(netns: Netns, mosquitto: Mosquitto) -> None:
    """The store's arrangement end to end. ``gateway run`` as ``nobody``, no capabilities, only the
    address families gateway.service allows, ``[wifi]`` enabled; it starts *before* the relay (as
    root in the namespace). Probe requests injected on the captured interface become events at a
    real broker (fixes, and the Wi-Fi device count); the relay restarting is noticed and capture goes
    on; the daemon stops cleanly."""
    if not sandbox.supported():
        pytest.skip(f"no seccomp address-family filter for {sys.platform}/{os.uname().machine} in tests/sandbox.py")
    base, run_dir, cfg = _store_dirs(netns, mosquitto)
    try:
        cloud = CloudStandIn(mosquitto.host, mosquitto.port, verbose=False, out=sys.stderr)
        cloud_task = asyncio.create_task(cloud.run())
        await asyncio.wait_for(cloud.connected.wait(), 10)
        families = _unit_families("gateway.service")
        daemon = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, read by a thread
            [
                sys.executable,
                "-m",
                "tests.sandbox",
                "--user",
                "nobody",
                *(f"--expose={p}" for p in (sys.base_prefix, sys.prefix, REPO)),
                "--families",
                ",".join(families),
                "--",
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(cfg),
            ],
            env=gateway_env(PYTHONDONTWRITEBYTECODE="1"),
            cwd=str(REPO),
            stderr=subprocess.PIPE,
        )
        log_lines: list[dict[str, object]] = []
        other_lines: list[str] = []

        def pump() -> None:
            assert daemon.stderr is not None
            for raw in daemon.stderr:
                try:
                    log_lines.append(json.loads(raw))
                except ValueError:
                    other_lines.append(raw.decode(errors="replace"))

        reader = asyncio.get_running_loop().run_in_executor(None, pump)

        def logged(event: str) -> bool:
            return any(r.get("event") == event for r in log_lines)

        relay: subprocess.Popen[bytes] | None = None
        tx: socket.socket | None = None
        try:
            await _until(lambda: (run_dir / "capture.sock").exists() or daemon.poll() is not None, 60, "the socket")
            assert daemon.poll() is None, (other_lines[-10:], log_lines[-5:])
            # the daemon really runs as nobody with every capability set empty
            sandbox_line = next(x for x in other_lines if x.startswith("sandbox:"))
            assert "uid=65534" in sandbox_line, sandbox_line
            for cap_set in ("CapEff=0 ", "CapPrm=0 ", "CapBnd=0 ", "CapAmb=0 "):
                assert cap_set in sandbox_line, sandbox_line
            sock_stat = (run_dir / "capture.sock").stat()
            assert (sock_stat.st_uid, sock_stat.st_mode & 0o777) == (65534, 0o660)  # bound by the daemon
            await _until(lambda: logged("wifi.relay_silent"), 30, "the daemon to miss the relay")
            relay = netns.relay(cfg)  # the relay starts after the daemon
            tx = netns.injector()
            await _until(lambda: logged("wifi.relay_heard"), 30, "the daemon to hear the relay")
            phone = bytes.fromhex("02aabbccdd10")
            seq = 0

            async def walk_in(seconds: float) -> None:
                nonlocal seq
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for _ in range(3):  # a burst
                        assert tx is not None
                        tx.send(_frame(phone, seq % 4096, -58, 6, 6))
                        seq += 1
                    await asyncio.sleep(0.3)

            def fixes() -> int:
                return sum(1 for e in cloud.events if e.get("event", {}).get("type") == "fix")

            await walk_in(4.0)
            await _until(lambda: fixes() > 0, 40, "fix events at the broker")
            # the relay restarts (an update, a crash): the daemon notices and capture goes on
            _stop(relay)
            relay = netns.relay(cfg)
            await _until(lambda: logged("wifi.relay_restarted"), 30, "the daemon to notice the restart")
            before = fixes()
            await walk_in(4.0)
            await _until(lambda: fixes() > before, 40, "fix events after the relay restarted")
        finally:
            if tx is not None:
                tx.close()
            relay_err = _stop(relay) if relay is not None else ""
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
            await reader
            assert daemon.stderr is not None
            daemon.stderr.close()
            # what the daemon published while it drained (the wait above held this loop)
            with contextlib.suppress(AssertionError):
                await _until(
                    lambda: any(e.get("event", {}).get("type") == "wifi.devices" for e in cloud.events), 10, ""
                )
            cloud_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await cloud_task
        assert daemon.returncode == 0, [r for r in log_lines if r.get("level") in ("error", "critical")] or log_lines[
            -10:
        ]
        assert "relay stopped: received=" in relay_err
        stopped = next(r for r in log_lines if r.get("event") == "gateway stopped")
        stats = stopped["stats"]
        assert isinstance(stats, dict)
        assert stats["observations"] > 10, stats
        assert "unknown_sensor" not in stats["dropped"]
        events = [e["event"] for e in cloud.events if "event" in e]
        subjects = {e.get("subject") for e in events if e.get("type") == "fix"}
        assert len(subjects) == 1  # one phone, one pseudonym; no raw MAC on the wire
        assert all("aa:bb:cc:dd:10" not in json.dumps(e) for e in events)
        # the Wi-Fi device count reached the platform too (at least the minute under way at shutdown):
        # the presence its bursts stand for (docs/wifi.md, Counting) - one phone heard for seconds
        # is a fraction of a device over the count's window, never more than one within its sd
        counts = [e for e in events if e.get("type") == "wifi.devices" and e.get("zone") is None]
        assert counts, (stats, [e.get("type") for e in events][-5:])
        assert max(e["devices"] for e in counts) > 0.0
        assert all(e["devices"] <= 1.0 + 1.645 * e["sd"] for e in counts), counts
        assert all(e["sd"] > 0 and e["window_s"] == WifiSettings().count_window_s for e in counts)
        assert not any(r.get("event") == "wifi.socket_failed" for r in log_lines)
    finally:
        shutil.rmtree(base, ignore_errors=True)
