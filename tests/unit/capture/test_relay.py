"""The capture relay moves raw frames over a real Unix datagram socket, never blocking capture."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.capture.relay import (
    HEADER,
    LINKTYPE_ETHERNET,
    LINKTYPE_RADIOTAP,
    MAX_FRAME,
    CaptureReceiver,
    FrameError,
    Relay,
    decode_frame,
    encode_frame,
)
from tests.conftest import gateway_env


def test_roundtrip_header() -> None:
    d = encode_frame(b"\x00\x00\x08\x00abc", 1_700_000_000_123_456_789, LINKTYPE_RADIOTAP)
    f = decode_frame(d)
    assert f.linktype == LINKTYPE_RADIOTAP
    assert f.data == b"\x00\x00\x08\x00abc"
    assert f.ts == pytest.approx(1_700_000_000.123456789)
    assert not f.truncated


def test_oversized_frame_truncated_and_flagged() -> None:
    f = decode_frame(encode_frame(b"x" * (MAX_FRAME + 10), 0, LINKTYPE_RADIOTAP))
    assert f.truncated
    assert len(f.data) == MAX_FRAME


@pytest.mark.parametrize(
    ("dgram", "msg"),
    [(b"GWC", "shorter"), (b"XXXX" + bytes(HEADER.size), "bad magic"), (b"GWCF\x09" + bytes(20), "version 9")],
)
def test_malformed_datagrams_named(dgram: bytes, msg: str) -> None:
    with pytest.raises(FrameError, match=msg):
        decode_frame(dgram)


@pytest.mark.timeout(30)
async def test_frames_flow_over_real_socket(tmp_path: Path) -> None:
    path = tmp_path / "capture.sock"
    frames = [(bytes([i]) * (20 + i), LINKTYPE_RADIOTAP) for i in range(50)]
    async with CaptureReceiver(path) as rx:
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)
        relay = Relay(path)

        def send() -> None:  # the relay is another process in production: a thread, paced like a radio
            for data, link in frames:
                relay.forward(data, link)
                time.sleep(0.002)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(b"junk", str(path))  # a stray datagram is counted, not fatal
            relay.forward(b"last", LINKTYPE_ETHERNET, ts_ns=5_000_000_000)

        sender = asyncio.create_task(asyncio.to_thread(send))
        got = [await asyncio.wait_for(rx.recv(), 5.0) for _ in range(51)]
        await sender
        relay.close()
    assert relay.stats.dropped_busy == 0
    assert [g.data for g in got[:50]] == [f[0] for f in frames]
    assert got[50].data == b"last"
    assert got[50].ts == 5.0
    assert got[50].linktype == LINKTYPE_ETHERNET
    assert rx.stats.frames == 51
    assert rx.stats.malformed == 1
    assert relay.stats.forwarded == 51
    assert relay.stats.dropped_no_daemon == 0
    assert not path.exists()  # receiver removes its socket on close


def test_relay_drops_and_counts_when_daemon_absent(tmp_path: Path) -> None:
    relay = Relay(tmp_path / "nobody.sock")
    for _ in range(3):
        assert relay.forward(b"frame", LINKTYPE_RADIOTAP) is False
    relay.close()
    assert relay.stats.dropped_no_daemon == 3
    assert relay.stats.forwarded == 0


def test_relay_never_blocks_when_daemon_is_slow(tmp_path: Path) -> None:
    path = tmp_path / "slow.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))  # bound but never read: the queue fills up
    relay = Relay(path)
    t0 = time.monotonic()
    for _ in range(5000):
        relay.forward(b"y" * 1000, LINKTYPE_RADIOTAP)
    elapsed = time.monotonic() - t0
    relay.close()
    rx.close()
    assert relay.stats.dropped_busy > 0
    assert relay.stats.forwarded + relay.stats.dropped_busy == 5000
    assert elapsed < 5.0


def _can_packet_capture() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()
    except (PermissionError, OSError, AttributeError):
        return False
    return True


@pytest.mark.integration
@pytest.mark.timeout(40)
@pytest.mark.skipif(not _can_packet_capture(), reason="no CAP_NET_RAW here: cannot open AF_PACKET")
async def test_relay_process_captures_loopback(tmp_path: Path) -> None:
    """The real relay entry point, capturing on ``lo`` (Ethernet link type), into a real socket."""
    path = tmp_path / "cap.sock"
    async with CaptureReceiver(path) as rx:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited on
            [sys.executable, "-m", "gateway.capture.relay", "--interface", "lo", "--no-hop", "--socket", str(path)],
            env=gateway_env(),
            stderr=subprocess.PIPE,
        )
        try:
            marker = os.urandom(16).hex().encode()
            found = False
            deadline = time.monotonic() + 10
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                while not found and time.monotonic() < deadline:
                    u.sendto(marker, ("127.0.0.1", 9))  # discard port; the frame is still seen on lo
                    # lo is shared with everything else on this machine: drain what arrives for a while
                    t_end = time.monotonic() + 0.2
                    while not found and time.monotonic() < t_end:
                        try:
                            f = await asyncio.wait_for(rx.recv(), 0.2)
                        except TimeoutError:
                            break
                        found = marker in f.data and f.linktype == LINKTYPE_ETHERNET
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert found, err.decode()
    assert proc.returncode == 0
    assert b"relay stopped: received=" in err


async def test_recv_batch_drains_a_burst_in_one_wakeup(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    async with CaptureReceiver(path) as rx:
        relay = Relay(path)
        for i in range(5):
            assert relay.forward(bytes([i]) * 30, LINKTYPE_RADIOTAP)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"bad", str(path))
        relay.forward(b"tail", LINKTYPE_RADIOTAP)
        relay.close()
        batch = await asyncio.wait_for(rx.recv_batch(), 2)
    assert [f.data for f in batch] == [bytes([i]) * 30 for i in range(5)] + [b"tail"]
    assert rx.stats.malformed == 1


def test_channel_hopper_schedule() -> None:
    from gateway.capture.relay import ChannelHopper

    calls: list[tuple[str, int]] = []
    h = ChannelHopper("mon0", [1, 6, 11], 0.25, set_channel=lambda i, c: calls.append((i, c)))
    got = [h.tick(t / 100) for t in range(0, 100, 5)]  # 1 s in 50 ms steps
    assert calls == [("mon0", 1), ("mon0", 6), ("mon0", 11), ("mon0", 1)]
    assert [g for g in got if g is not None] == [1, 6, 11, 1]
    assert h.hops == 4


def test_channel_hopper_gives_up_after_failures() -> None:
    from gateway.capture.relay import ChannelHopper

    def broken(_i: str, _c: int) -> None:
        raise RuntimeError("iw: No such device")

    h = ChannelHopper("mon0", [1, 6], 0.1, set_channel=broken, max_failures=3)
    for k in range(10):
        h.tick(k * 0.1)
    assert h.stopped
    assert h.failures == 3
    assert "No such device" in (h.last_error or "")


@pytest.mark.skipif(not __import__("shutil").which("iw"), reason="iw not installed")
def test_iw_set_channel_reports_real_iw_errors() -> None:
    from gateway.capture.relay import iw_set_channel

    with pytest.raises(RuntimeError, match="iw set channel 6 on lo"):
        iw_set_channel("lo", 6)  # lo is not a wireless device (or no nl80211 here)
