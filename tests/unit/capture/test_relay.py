"""The capture relay: its datagram format, its sender over a real Unix socket, and what it reports
when it cannot capture (no privileges needed: a missing interface, a non-monitor one).

The relay capturing real frames in a private network namespace is in
tests/integration/test_wifi_capture.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.capture import wire
from gateway.capture.relay import Relay, run_relay
from gateway.capture.wire import (
    HEADER,
    LINKTYPE_ETHERNET,
    LINKTYPE_RADIOTAP,
    MAX_FRAME,
    CapturedFrame,
    FrameError,
    RelayStatus,
)
from gateway.config import WifiSettings
from gateway.sources.wifi import RelaySocket
from tests.conftest import gateway_env


def test_frame_roundtrip_carries_time_linktype_and_channel() -> None:
    f = wire.decode(wire.encode_frame(b"\x00\x00\x08\x00abc", 1_700_000_000_123_456_789, LINKTYPE_RADIOTAP, 11))
    assert isinstance(f, CapturedFrame)
    assert f.linktype == LINKTYPE_RADIOTAP
    assert f.data == b"\x00\x00\x08\x00abc"
    assert f.ts == pytest.approx(1_700_000_000.123456789)
    assert f.channel == 11
    assert not f.truncated
    assert wire.decode(wire.encode_frame(b"x", 0, LINKTYPE_RADIOTAP)).channel is None  # type: ignore[union-attr]


def test_oversized_frame_truncated_and_flagged() -> None:
    f = wire.decode(wire.encode_frame(b"x" * (MAX_FRAME + 10), 0, LINKTYPE_RADIOTAP))
    assert isinstance(f, CapturedFrame)
    assert f.truncated
    assert len(f.data) == MAX_FRAME


def test_status_roundtrip() -> None:
    st = RelayStatus("abc123", 1.5, "mon0", "capturing", "radiotap", "hopping via iw", "monitor mode set", "off", 6)
    st.counts = {"received": 3, "forwarded": 2}
    got = wire.decode(wire.encode_status(st, 7))
    assert got == st


@pytest.mark.parametrize(
    ("dgram", "msg"),
    [
        (b"GWC", "shorter"),
        (b"XXXX" + bytes(HEADER.size), "bad magic"),
        (b"GWCF\x09" + bytes(20), "version 9"),
        (b"GWCF\x01" + bytes(20), "version 1 at offset 4"),
        (HEADER.pack(b"GWCF", 2, wire.FLAG_STATUS, 0, 0, 0, 0) + b"{nope", "not JSON"),
        (HEADER.pack(b"GWCF", 2, wire.FLAG_STATUS, 0, 0, 0, 0) + b"[1]", "not a JSON object"),
        (HEADER.pack(b"GWCF", 2, wire.FLAG_STATUS, 0, 0, 0, 0) + b'{"state": "x"}', "field missing"),
        (HEADER.pack(b"GWCF", 2, wire.FLAG_STATUS, 0, 0, 0, 0) + b" " * 5000, "over 4096"),
    ],
)
def test_malformed_datagrams_named(dgram: bytes, msg: str) -> None:
    with pytest.raises(FrameError, match=msg):
        wire.decode(dgram)


@pytest.mark.timeout(30)
async def test_frames_flow_over_a_real_socket(tmp_path: Path) -> None:
    path = tmp_path / "capture.sock"
    rx = RelaySocket(path)
    rx.open()
    try:
        assert path.stat().st_mode & 0o777 == 0o660
        relay = Relay(path)
        frames = [(bytes([i]) * (20 + i), LINKTYPE_RADIOTAP) for i in range(50)]
        for data, link in frames:
            assert relay.forward(data, link, channel=6)
        relay._sock.send(b"junk")  # type: ignore[union-attr]  # a stray message is counted, not fatal
        relay.forward(b"last", LINKTYPE_ETHERNET, ts_ns=5_000_000_000)
        relay.send_status(RelayStatus("i1", 0.0, "mon0", "capturing"))
        assert rx.accept() is not None
        got = list(rx.read(1000))
        relay.close()
        assert list(rx.read(10)) == []
        assert not rx.connected  # the relay closed its end
    finally:
        rx.close()
    frames_got = [g for g in got if isinstance(g, CapturedFrame)]
    assert [g.data for g in frames_got[:50]] == [f[0] for f in frames]
    assert all(g.channel == 6 for g in frames_got[:50])
    assert (frames_got[50].data, frames_got[50].ts, frames_got[50].linktype) == (b"last", 5.0, LINKTYPE_ETHERNET)
    status = got[-1]
    assert isinstance(status, RelayStatus)
    assert status.counts["forwarded"] == 51  # a status is not a frame
    assert relay.connects == 1
    assert rx.malformed == 1
    assert relay.stats.dropped_busy == 0
    assert not path.exists()  # the receiver removes its socket on close


def test_relay_drops_and_counts_when_daemon_absent(tmp_path: Path) -> None:
    relay = Relay(tmp_path / "nobody.sock")
    for _ in range(3):
        assert relay.forward(b"frame", LINKTYPE_RADIOTAP) is False
    assert relay.send_status(RelayStatus("i", 0.0, "mon0", "capturing")) is False
    relay.close()
    assert relay.stats.dropped_no_daemon == 3
    assert relay.stats.forwarded == 0
    # the runtime directory itself missing (daemon not started yet) is the same case
    relay = Relay(tmp_path / "no-such-dir" / "capture.sock")
    assert relay.forward(b"frame", LINKTYPE_RADIOTAP) is False
    relay.close()
    assert relay.stats.dropped_no_daemon == 1


def test_relay_never_blocks_when_daemon_is_slow(tmp_path: Path) -> None:
    path = tmp_path / "slow.sock"
    rx = RelaySocket(path)
    rx.open()  # listening, but never read: the connection's buffer fills up
    relay = Relay(path, sndbuf=65536)
    t0 = time.monotonic()
    for _ in range(5000):
        relay.forward(b"y" * 1000, LINKTYPE_RADIOTAP)
    elapsed = time.monotonic() - t0
    relay.close()
    rx.close()
    assert relay.stats.dropped_busy > 0
    assert relay.stats.forwarded + relay.stats.dropped_busy == 5000
    assert elapsed < 5.0


def test_a_burst_is_not_lost_while_the_daemon_is_busy(tmp_path: Path) -> None:
    """500 frames sent before the daemon reads one (its loop busy): all queued, none dropped - a
    datagram socket would keep only net.unix.max_dgram_qlen of them (10 on a bare kernel)."""
    path = tmp_path / "burst.sock"
    rx = RelaySocket(path)
    rx.open()
    relay = Relay(path)
    try:
        for i in range(500):
            assert relay.forward(bytes([i % 256]) * 300, LINKTYPE_RADIOTAP), relay.stats
        rx.accept()
        got = list(rx.read(1000))
    finally:
        relay.close()
        rx.close()
    assert len(got) == 500
    assert relay.stats.dropped_busy == 0


def test_relay_reconnects_after_the_daemon_restarts(tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    now = [0.0]
    relay = Relay(path, reconnect_s=0.5, clock=lambda: now[0])
    assert not relay.forward(b"a", LINKTYPE_RADIOTAP)  # no daemon yet
    rx = RelaySocket(path)
    rx.open()
    assert not relay.forward(b"b", LINKTYPE_RADIOTAP)  # the next try is not due yet: no syscall storm
    now[0] = 1.0
    assert relay.forward(b"c", LINKTYPE_RADIOTAP)
    rx.accept()
    rx.close()  # the daemon stops (and unlinks its socket)
    assert not relay.forward(b"d", LINKTYPE_RADIOTAP)  # the connection is gone
    rx = RelaySocket(path)
    rx.open()  # ... and starts again
    assert relay.forward(b"e", LINKTYPE_RADIOTAP)  # reconnects at once after a lost connection
    rx.accept()
    got = [x.data for x in rx.read(10) if isinstance(x, CapturedFrame)]
    relay.close()
    rx.close()
    assert got == [b"e"]
    assert relay.connects == 2
    assert relay.stats.dropped_no_daemon == 3


async def _statuses(path: Path, settings: WifiSettings, want: int, **kw: object) -> list[RelayStatus]:
    """Run the relay until it has sent ``want`` status datagrams; return them."""
    rx = RelaySocket(path)
    rx.open()
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(settings, path, stop=stop, **kw))  # type: ignore[arg-type]
    got: list[RelayStatus] = []
    try:
        for _ in range(200):
            rx.accept()
            got += [x for x in rx.read(100) if isinstance(x, RelayStatus)]
            if len(got) >= want:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        got += [x for x in rx.read(100) if isinstance(x, RelayStatus)]
        rx.close()
    return got


@pytest.mark.timeout(30)
async def test_relay_waits_for_a_missing_interface_and_says_so(tmp_path: Path) -> None:
    """No such interface (the USB adapter is not plugged in): the relay keeps running and retrying."""
    got = await _statuses(tmp_path / "c.sock", WifiSettings(interface="nosuchif0"), 2, retry_s=0.05)
    waiting = [s for s in got if s.state.startswith("waiting")]
    assert waiting, [s.state for s in got]
    assert "interface nosuchif0 does not exist" in waiting[0].state
    assert len({s.instance for s in got}) == 1
    assert got[-1].state == "stopped"


@pytest.mark.timeout(30)
async def test_relay_refuses_a_non_monitor_interface_clearly(tmp_path: Path) -> None:
    got = await _statuses(tmp_path / "c.sock", WifiSettings(interface="lo"), 2, retry_s=0.05)
    assert any("lo is not a monitor interface (ARPHRD type 772)" in s.state for s in got), [s.state for s in got]


@pytest.mark.timeout(30)
def test_relay_entry_point_stops_on_sigterm_with_counts(tmp_path: Path) -> None:
    """``python -m gateway.capture.relay`` (what the unit runs): runs, reports, stops cleanly."""
    path = tmp_path / "cap.sock"
    rx = RelaySocket(path)
    rx.open()
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[wifi]\ninterface = "nosuchif0"\ncapture_socket = "{path}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.capture.relay", "--config", str(cfg)],
        env=gateway_env(),
        stderr=subprocess.PIPE,
    )
    try:
        got: list[RelayStatus] = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            rx.accept()
            got += [x for x in rx.read(10) if isinstance(x, RelayStatus)]
            time.sleep(0.05)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        rx.close()
    assert got and got[0].interface == "nosuchif0"
    assert proc.returncode == 0, err.decode()
    assert b"relay stopped: received=0" in err
    assert b"interface nosuchif0 does not exist" in err


def test_relay_config_error_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text("[wifi]\ndwell_s = -1\n")
    r = subprocess.run(
        [sys.executable, "-m", "gateway.capture.relay", "--config", str(cfg)],
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "wifi.dwell_s" in r.stderr


async def test_relay_task_cancel_is_clean(tmp_path: Path) -> None:
    task = asyncio.create_task(run_relay(WifiSettings(interface="nosuchif0"), tmp_path / "x.sock", retry_s=0.05))
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.done()
