"""Wi-Fi sources: pcap replay, the capture drain loop, channel hopper fallbacks, settings.

The live AF_PACKET path on a real veth pair is in tests/integration/test_wifi_capture.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, WifiSettings, load_settings
from gateway.models import Observation
from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.pcap import write_pcap
from gateway.parsers.radiotap import build_radiotap
from gateway.sources.base import Source
from gateway.sources.wifi import (
    ChannelHopper,
    PcapReplaySource,
    WifiCaptureSource,
    channel_freq,
    make_wifi_source,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "wifi"


def _probe(mac: bytes, seq: int, rssi: int, ch: int = 6) -> bytes:
    ies = [(0, b""), (1, bytes([2, 4, 11, 22])), (3, bytes([ch]))]
    return build_radiotap(signal_dbm=rssi, freq_mhz=channel_freq(ch), flags=0) + build_probe_request(mac, seq, ies)


async def _collect(src: Source, limit: int = 100_000) -> list[Observation]:
    out: list[Observation] = []
    async for batch in src.batches():
        assert batch, "sources never yield empty batches"
        out.extend(batch)
        if len(out) >= limit:
            break
    return out


async def test_pcap_replay_source_yields_wifi_observations() -> None:
    s = WifiSettings(pcap=FIX / "crowd.pcap", sensor_id="gw-1")
    src = make_wifi_source(s)
    assert isinstance(src, PcapReplaySource)
    assert isinstance(src, Source)
    obs = await _collect(src)
    # the same frames `gateway decode pcap` prints: 78 probe requests, all with radiotap RSSI
    assert len(obs) == 78
    assert all(o.radio == "wifi" and o.sensor == "gw-1" for o in obs)
    assert all(o.link is not None and o.link.startswith("wifi-") for o in obs)
    assert all(":" in o.device for o in obs)  # raw MAC in RAM, pseudonymised downstream
    assert [o.ts for o in obs] == sorted(o.ts for o in obs)
    h = src.health
    assert h.state == "stopped"
    assert h.observations == 78
    assert h.dropped["bad_fcs"] == 1
    assert h.dropped["malformed.radiotap"] == 1
    assert h.dropped["malformed.ieee80211"] == 1
    assert h.dropped["off_channel"] == 74
    assert h.detail["other_frames"] == 2
    assert len({o.link for o in obs}) < len({o.device for o in obs})  # rotations linked


async def test_pcap_replay_of_corrupt_file_fails_with_offset() -> None:
    src = PcapReplaySource(WifiSettings(), FIX / "truncated.pcap")
    obs = await _collect(src)
    assert len(obs) == 16  # everything before the damage
    assert src.health.state == "failed"
    assert "truncated record" in src.health.detail["error"]
    assert "byte offset 3750" in src.health.detail["error"]


async def test_pcap_replay_missing_file() -> None:
    src = PcapReplaySource(WifiSettings(), Path("/nonexistent/x.pcap"))
    assert await _collect(src) == []
    assert src.health.state == "failed"
    assert "cannot open" in src.health.detail["error"]


async def test_pcap_replay_paces_at_recorded_speed(tmp_path: Path) -> None:
    mac = bytes.fromhex("020000000001")
    recs = [(1000.0 + 0.1 * i, _probe(mac, i, -50)) for i in range(5)]
    p = tmp_path / "paced.pcap"
    with p.open("wb") as f:
        write_pcap(f, recs, 127)
    t0 = time.monotonic()
    obs = await _collect(PcapReplaySource(WifiSettings(pcap_speed=1.0), p))
    assert len(obs) == 5
    assert time.monotonic() - t0 >= 0.35
    t0 = time.monotonic()
    await _collect(PcapReplaySource(WifiSettings(pcap_speed=0.0), p))
    assert time.monotonic() - t0 < 0.35


async def test_plain_80211_replay_has_no_rssi_to_range_with(tmp_path: Path) -> None:
    mac = bytes.fromhex("020000000001")
    frame = _probe(mac, 1, -50)
    rt_len = int.from_bytes(frame[2:4], "little")
    p = tmp_path / "plain.pcap"
    with p.open("wb") as f:
        write_pcap(f, [(1.0, frame[rt_len:])], 105)
    src = PcapReplaySource(WifiSettings(), p)
    assert await _collect(src) == []
    assert src.health.dropped == {"no_rssi": 1}


def _capture_with_socketpair(**kw: object) -> tuple[WifiCaptureSource, socket.socket]:
    """A capture source whose packet socket is replaced by one end of a datagram socketpair, so the
    drain loop (batching, decoding, backpressure) can be driven without privileges."""
    src = WifiCaptureSource(WifiSettings(linktype="radiotap", **kw), clock=lambda: 500.0)  # type: ignore[arg-type]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    src._sock = a
    return src, b


def test_drain_reads_at_most_batch_max_per_wakeup() -> None:
    src, tx = _capture_with_socketpair(batch_max=3)
    try:
        for i in range(7):
            tx.send(_probe(bytes.fromhex("020000000001"), 10 + i, -40 - i))
        src._on_readable()
        assert len(src._pending) == 3
        src._on_readable()
        src._on_readable()
        src._on_readable()  # nothing left: returns without blocking
        assert [o.rssi for o in src._pending] == [-40.0 - i for i in range(7)]
        assert all(o.ts == 500.0 for o in src._pending)
        assert src.frames == 7
        assert src._wake.is_set()
    finally:
        tx.close()
        assert src._sock is not None
        src._sock.close()


def test_drain_counts_drops_and_backpressure() -> None:
    src, tx = _capture_with_socketpair(max_pending=100)
    try:
        mac = bytes.fromhex("020000000001")
        for i in range(105):
            tx.send(_probe(mac, i, -50))
        tx.send(_probe(mac, 200, -50, ch=4))  # valid, on its channel: but the buffer is full
        tx.send(b"\x00\x00\x09\x00" + bytes(3))  # malformed radiotap
        off = bytearray(_probe(mac, 201, -50, ch=6))
        off[-1] = 9  # DS parameter set: sent on channel 9, heard on 6
        tx.send(bytes(off))
        for _ in range(5):
            src._on_readable()
        src._conv.sync_health()
        assert len(src._pending) == 100
        assert src.health.dropped["backpressure"] == 6
        assert src.health.dropped["malformed.radiotap"] == 1
        assert src.health.dropped["off_channel"] == 1
    finally:
        tx.close()
        assert src._sock is not None
        src._sock.close()


async def test_capture_on_missing_interface_fails_clearly() -> None:
    src = WifiCaptureSource(WifiSettings(interface="nosuchif0", linktype="radiotap"))
    assert await _collect(src) == []
    assert src.health.state == "failed"
    assert "cannot open a packet socket on nosuchif0" in src.health.detail["error"]


async def test_capture_auto_linktype_refuses_unknown_interface() -> None:
    src = WifiCaptureSource(WifiSettings(interface="nosuchif0"))
    assert await _collect(src) == []
    assert src.health.state == "failed"
    assert "not a monitor interface" in src.health.detail["error"]


async def test_hopper_reports_when_no_backend_can_tune() -> None:
    hop = ChannelHopper("nosuchif0", [1, 6, 11], 0.01)
    await asyncio.wait_for(hop.run(), 20.0)
    assert hop.state.startswith("unavailable: cannot set the channel")
    assert "nl80211" in hop.state
    assert "iw" in hop.state
    assert hop.current is None


async def test_hopper_without_channels_is_off() -> None:
    hop = ChannelHopper("mon0", [], 0.1)
    await hop.run()
    assert hop.state == "off: no channels configured"


async def test_hopper_cycles_with_a_working_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    tuned: list[int] = []

    async def fake_nl80211(ch: int) -> None:
        tuned.append(ch)

    hop = ChannelHopper("mon0", [1, 6, 11], 0.01)
    monkeypatch.setattr(hop, "_nl80211", fake_nl80211)
    task = asyncio.create_task(hop.run())
    for _ in range(500):
        if len(tuned) >= 7:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tuned[:7] == [1, 6, 11, 1, 6, 11, 1]
    assert hop.state == "hopping via nl80211"


def test_channel_freq() -> None:
    assert [channel_freq(c) for c in (1, 6, 11, 14, 36, 149)] == [2412, 2437, 2462, 2484, 5180, 5745]


def test_wifi_settings_from_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[wifi]\nenabled = true\ninterface = "wlan1mon"\nchannels = [1, 6]\nlinktype = "radiotap"\n')
    monkeypatch.setenv("GATEWAY_WIFI__DWELL_S", "0.5")
    s = load_settings(cfg)
    assert (s.wifi.interface, s.wifi.channels, s.wifi.linktype, s.wifi.dwell_s) == ("wlan1mon", [1, 6], "radiotap", 0.5)
    assert s.wifi.keep_off_channel is False
    bad = tmp_path / "bad.toml"
    bad.write_text('[wifi]\nlinktype = "ethernet"\n')
    with pytest.raises(ConfigError, match=r"wifi\.linktype"):
        load_settings(bad)


def test_drain_holds_a_new_random_mac_until_its_group_is_decided() -> None:
    """A rotated MAC's observations wait (not lost) for the group decision; then they carry the link."""
    now = [500.0]
    src = WifiCaptureSource(WifiSettings(linktype="radiotap", group_hold_s=30.0), clock=lambda: now[0])
    a, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    src._sock = a
    try:
        old, new = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
        for t, mac, seq in ((500.0, old, 100), (530.0, old, 130), (560.0, new, 160), (560.0, new, 161)):
            now[0] = t
            tx.send(_probe(mac, seq, -50))
            src._on_readable()
        assert [o.device for o in src._pending] == ["02:00:00:00:00:01"] * 2  # the new MAC's frames are held
        assert src._conv.held
        src._release(src._conv.poll(575.0))  # what the source's once-a-second wake-up does
        assert not src._conv.held
        assert [o.device for o in src._pending] == ["02:00:00:00:00:01"] * 2 + ["02:00:00:00:00:02"] * 2
        assert len({o.link for o in src._pending}) == 1  # linked: one device
        assert [o.ts for o in src._pending] == sorted(o.ts for o in src._pending)
    finally:
        tx.close()
        a.close()


def test_daemon_default_decides_a_rotation_at_once() -> None:
    """By default (group_hold_s 0) nothing is held: a held probe would reach the pipeline after
    localization.window_s and be dropped as too_late instead of localized."""
    assert WifiSettings().group_hold_s == 0.0
    now = [500.0]
    src = WifiCaptureSource(WifiSettings(linktype="radiotap"), clock=lambda: now[0])
    a, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    src._sock = a
    try:
        old, new = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
        for t, mac, seq in ((500.0, old, 100), (530.0, old, 130), (560.0, new, 160)):
            now[0] = t
            tx.send(_probe(mac, seq, -50))
            src._on_readable()
        assert not src._conv.held
        assert [o.device for o in src._pending] == ["02:00:00:00:00:01"] * 2 + ["02:00:00:00:00:02"]
        assert len({o.link for o in src._pending}) == 1  # linked at once
    finally:
        tx.close()
        a.close()
