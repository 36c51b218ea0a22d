"""Live AF_PACKET capture path, for real: a private network namespace with a veth pair.

Radiotap+802.11 frames are injected on one end with a raw packet socket and captured on the other
by ``WifiCaptureSource`` (its own socket, its own add_reader loop). The test process enters the
namespace with setns(2) on its main thread and returns to its own namespace afterwards, so the
host's interfaces are never touched. Needs root (CAP_SYS_ADMIN + CAP_NET_RAW); skipped with the
reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import WifiSettings
from gateway.models import Observation
from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.radiotap import build_radiotap
from gateway.sources.wifi import WifiCaptureSource, arphrd_type

pytestmark = pytest.mark.integration

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def veth_netns() -> Iterator[tuple[str, str]]:
    """Enter a fresh namespace holding an up veth pair (inject end, capture end); leave it after."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("the ip tool (iproute2) is not installed")
    name = f"gwwifi{os.getpid()}"
    r = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"this machine refuses a private network namespace: {r.stderr.strip()}")
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    entered = False
    try:
        for cmd in (
            # no IPv6 autoconfiguration chatter on the pair: every frame on it is ours
            [ip, "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            [ip, "-n", name, "link", "add", "winj", "type", "veth", "peer", "name", "wcap"],
            [ip, "-n", name, "link", "set", "winj", "up"],
            [ip, "-n", name, "link", "set", "wcap", "up"],
        ):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            if r.returncode != 0:
                pytest.skip(f"cannot create a veth pair in the namespace: {r.stderr.strip()}")
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(fd)
            entered = True
        except OSError as e:
            pytest.skip(f"setns into the test namespace refused: {e}")
        finally:
            os.close(fd)
        yield ("winj", "wcap")
    finally:
        if entered:
            _setns(own)
        os.close(own)
        subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=10)


def _frame(mac: bytes, seq: int, rssi: int, rx_ch: int, tx_ch: int, *, bad_fcs: bool = False) -> bytes:
    rt = build_radiotap(signal_dbm=rssi, freq_mhz=2407 + 5 * rx_ch, flags=0x40 if bad_fcs else 0)
    ies = [(0, b""), (1, bytes([0x02, 0x04, 0x0B, 0x16])), (3, bytes([tx_ch])), (45, bytes(26))]
    return rt + build_probe_request(mac, seq, ies)


async def test_capture_on_veth_in_private_netns(veth_netns: tuple[str, str], tmp_path: Path) -> None:
    inject_if, capture_if = veth_netns
    assert socket.if_nametoindex(capture_if) > 0  # we are inside the namespace
    assert arphrd_type(capture_if) == 1  # a veth is Ethernet: the source must be told the link type
    settings = WifiSettings(
        enabled=True,
        interface=capture_if,
        linktype="radiotap",
        channels=[1, 6],
        dwell_s=0.05,
        sensor_id="gw-test",
        kernel_filter=False,  # every frame reaches the decoder: its drop counts are checked below
        group_hold_s=30.0,  # the live hold/release path (the daemon's default, 0, decides at once)
    )
    src = WifiCaptureSource(settings)
    got: list[Observation] = []

    phone_a = bytes.fromhex("02aabbccdd01")  # randomized (locally administered)
    phone_b = bytes.fromhex("02aabbccdd02")  # the same phone after rotating its MAC
    laptop = bytes.fromhex("001122334455")  # public MAC
    frames = [
        _frame(phone_a, 100, -55, 6, 6),
        _frame(phone_a, 101, -56, 6, 6),
        _frame(laptop, 7, -70, 6, 6),
        _frame(laptop, 8, -90, 6, 4),  # off-channel leakage: must be dropped
        _frame(laptop, 9, -71, 6, 6, bad_fcs=True),  # damaged: dropped
        b"\x00\x00\xff\x00" + bytes(60),  # radiotap length beyond the frame: malformed, dropped
    ]
    later = [_frame(phone_b, 130, -57, 6, 6)]  # continues phone_a's sequence 20 s later (see ts below)

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)
            if len(got) >= 4:
                return

    task = asyncio.create_task(consume())
    # wait until the source is capturing
    for _ in range(200):
        if src.health.state in ("running", "failed"):
            break
        await asyncio.sleep(0.01)
    assert src.health.state == "running", src.health.detail

    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        tx.bind((inject_if, 0))
        for f in frames:
            tx.send(f)
        await asyncio.sleep(0.2)
        # the rotation happens a burst later: move the source's clock on
        src._clock = lambda: __import__("time").time() + 20.0
        for f in later:
            tx.send(f)
        await asyncio.sleep(0.2)
        # phone_b's frame is held until its group is decided (wifi.group_hold_s at most): with no
        # further frame, the source's once-a-second wake-up releases it once the hold has run out
        assert len(got) == 3
        src._clock = lambda: __import__("time").time() + 21.0 + settings.group_hold_s
        await asyncio.wait_for(task, 10.0)
    finally:
        tx.close()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert [o.device for o in got] == [
        "02:aa:bb:cc:dd:01",
        "02:aa:bb:cc:dd:01",
        "00:11:22:33:44:55",
        "02:aa:bb:cc:dd:02",
    ]
    assert [o.rssi for o in got] == [-55.0, -56.0, -70.0, -57.0]
    assert all(o.radio == "wifi" and o.sensor == "gw-test" for o in got)
    # the rotated MAC joined the first MAC's group; the laptop has its own
    assert got[0].link == got[1].link == got[3].link
    assert got[2].link != got[0].link
    h = src.health
    assert h.dropped.get("off_channel") == 1
    assert h.dropped.get("bad_fcs") == 1
    assert h.dropped.get("malformed.radiotap") == 1
    # no wireless device in the namespace: hopping must say it cannot, capture goes on anyway
    assert h.detail["hopping"].startswith("unavailable: cannot set the channel"), h.detail
    assert h.state == "stopped"


async def test_non_monitor_interface_fails_clearly(veth_netns: tuple[str, str]) -> None:
    """linktype auto on an Ethernet veth, monitor mode asked for: refused, and the health says why."""
    _inject_if, capture_if = veth_netns
    src = WifiCaptureSource(WifiSettings(enabled=True, interface=capture_if, set_monitor=True, channels=[1]))
    batches = [b async for b in src.batches()]
    assert batches == []
    h = src.health
    assert h.state == "failed"
    assert h.detail["monitor"].startswith("cannot set monitor mode: dev wcap set type monitor"), h.detail
    assert "not a monitor interface (ARPHRD type 1)" in h.detail["error"]
    # the failed type change must not leave the interface down
    assert arphrd_type(capture_if) == 1


async def test_kernel_filter_passes_only_probe_requests(veth_netns: tuple[str, str]) -> None:
    """With the BPF filter, data frames and beacons never reach the socket (frames counts them)."""
    inject_if, capture_if = veth_netns
    src = WifiCaptureSource(WifiSettings(enabled=True, interface=capture_if, linktype="radiotap", hop=False))
    got: list[Observation] = []

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)
            if len(got) >= 2:
                return

    task = asyncio.create_task(consume())
    for _ in range(200):
        if src.health.state in ("running", "failed"):
            break
        await asyncio.sleep(0.01)
    assert src.health.state == "running", src.health.detail
    assert src.health.detail["kernel_filter"] == "probe requests only"
    rt = build_radiotap(signal_dbm=-50, freq_mhz=2437, flags=0)
    mac = bytes.fromhex("02aabbccdd03")
    data_frame = rt + bytes([0x08, 0x00, 0, 0]) + mac * 3 + b"\x00\x00" + bytes(30)
    beacon = rt + bytes([0x80, 0x00, 0, 0]) + b"\xff" * 6 + mac * 2 + b"\x00\x00" + bytes(12)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        tx.bind((inject_if, 0))
        for f in [data_frame, beacon, _frame(mac, 1, -50, 6, 6), data_frame, beacon, _frame(mac, 2, -51, 6, 6)]:
            tx.send(f)
        await asyncio.wait_for(task, 10.0)
    finally:
        tx.close()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [o.rssi for o in got] == [-50.0, -51.0]
    assert src.frames == 2  # the four other frames were dropped in the kernel
    assert src.health.detail.get("other_frames", 0) == 0


async def test_interface_removed_while_capturing_fails_the_source(veth_netns: tuple[str, str]) -> None:
    """The capture interface disappears (USB dongle unplugged): the source raises for a restart."""
    _inject_if, capture_if = veth_netns
    src = WifiCaptureSource(WifiSettings(enabled=True, interface=capture_if, linktype="radiotap", hop=False))

    async def consume() -> None:
        async for _batch in src.batches():
            pass

    task = asyncio.create_task(consume())
    for _ in range(200):
        if src.health.state in ("running", "failed"):
            break
        await asyncio.sleep(0.01)
    assert src.health.state == "running"
    ip = shutil.which("ip")
    assert ip is not None
    proc = await asyncio.create_subprocess_exec(ip, "link", "del", capture_if)  # this namespace only
    assert await asyncio.wait_for(proc.wait(), 10.0) == 0
    with pytest.raises(OSError) as e:
        await asyncio.wait_for(task, 10.0)
    assert src.health.state == "failed"
    assert f"recv on {capture_if}" in src.health.detail["error"]
    assert e.value.errno is not None


async def test_plain_80211_interface_with_kernel_filter(veth_netns: tuple[str, str]) -> None:
    """linktype 105 (no radiotap): the filter reads the frame control at offset 0; no RSSI to range."""
    inject_if, capture_if = veth_netns
    src = WifiCaptureSource(WifiSettings(enabled=True, interface=capture_if, linktype="ieee80211", hop=False))
    task = asyncio.create_task(anext(src.batches()))
    for _ in range(200):
        if src.health.state in ("running", "failed"):
            break
        await asyncio.sleep(0.01)
    assert src.health.state == "running"
    mac = bytes.fromhex("02aabbccdd04")
    probe = _frame(mac, 1, -50, 6, 6)
    plain = probe[int.from_bytes(probe[2:4], "little") :]
    data_frame = bytes([0x08, 0x00, 0, 0]) + mac * 3 + b"\x00\x00" + bytes(30)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        tx.bind((inject_if, 0))
        for f in (data_frame, plain, data_frame, plain):
            tx.send(f)
        for _ in range(200):
            if src.frames >= 2 and src.health.dropped.get("no_rssi", 0) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        tx.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await task
    assert src.frames == 2  # only the probe requests passed the kernel filter
    assert src.health.dropped == {"no_rssi": 2}
