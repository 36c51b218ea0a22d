"""Wi-Fi sources: pcap replay, the relay's frames (drain loop, relay state), settings.

The relay capturing on a real veth pair, and `gateway run` unprivileged on its frames, are in
tests/integration/test_wifi_capture.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.capture.radio import channel_freq
from gateway.capture.relay import Relay
from gateway.capture.wire import LINKTYPE_RADIOTAP, RelayStatus
from gateway.config import ConfigError, WifiSettings, load_settings
from gateway.models import Observation
from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.pcap import write_pcap
from gateway.parsers.radiotap import build_radiotap
from gateway.sources.base import Source
from gateway.sources.wifi import PcapReplaySource, WifiRelaySource, make_wifi_source

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


class _Wired:
    """A relay source whose socket is bound in ``tmp_path`` and a :class:`Relay` connected to it, so the
    drain loop (batching, decoding, backpressure, relay state) runs for real without privileges."""

    def __init__(self, tmp_path: Path, **kw: object) -> None:
        self.now = [500.0]
        path = tmp_path / "capture.sock"
        self.src = WifiRelaySource(WifiSettings(capture_socket=path, **kw), clock=lambda: self.now[0])  # type: ignore[arg-type]
        self.src.rx.open()
        self.relay = Relay(path)

    def send(self, frame: bytes, ts: float | None = None) -> None:
        t = self.now[0] if ts is None else ts
        assert self.relay.forward(frame, LINKTYPE_RADIOTAP, ts_ns=int(t * 1e9), channel=6)
        if not self.src.rx.connected:
            self.src.rx.accept()

    def close(self) -> None:
        self.relay.close()
        self.src.rx.close()


def test_drain_reads_at_most_batch_max_per_wakeup(tmp_path: Path) -> None:
    w = _Wired(tmp_path, batch_max=3, group_hold_s=0.0)
    src = w.src
    try:
        for i in range(7):
            w.send(_probe(bytes.fromhex("020000000001"), 10 + i, -40 - i), ts=500.0 + i)
        src._on_readable()
        assert len(src._pending) == 3
        src._on_readable()
        src._on_readable()
        src._on_readable()  # nothing left: returns without blocking
        assert [o.rssi for o in src._pending] == [-40.0 - i for i in range(7)]
        assert [o.ts for o in src._pending] == [500.0 + i for i in range(7)]  # the relay's capture time
        assert src.frames == 7
        assert src._wake.is_set()
    finally:
        w.close()


def test_drain_counts_drops_and_backpressure(tmp_path: Path) -> None:
    w = _Wired(tmp_path, max_pending=100, group_hold_s=0.0)
    src = w.src
    try:
        mac = bytes.fromhex("020000000001")
        for i in range(105):
            w.send(_probe(mac, i, -50))
        w.send(_probe(mac, 200, -50, ch=4))  # valid, on its channel: but the buffer is full
        w.send(b"\x00\x00\x09\x00" + bytes(3))  # malformed radiotap
        off = bytearray(_probe(mac, 201, -50, ch=6))
        off[-1] = 9  # DS parameter set: sent on channel 9, heard on 6
        w.send(bytes(off))
        for _ in range(5):
            src._on_readable()
        src._conv.sync_health()
        assert len(src._pending) == 100
        assert src.health.dropped["backpressure"] == 6
        assert src.health.dropped["malformed.radiotap"] == 1
        assert src.health.dropped["off_channel"] == 1
    finally:
        w.close()


async def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    assert pred()


async def test_relay_source_follows_the_relay_coming_going_and_restarting(tmp_path: Path) -> None:
    """Start order does not matter: before the relay the source waits (degraded, says why); it runs
    once the relay captures; a stopped relay shows as disconnected; a restarted one as a recovery."""
    path = tmp_path / "capture.sock"
    src = WifiRelaySource(WifiSettings(capture_socket=path, relay_silent_s=2.0, sensor_id="gw"))
    got: list[Observation] = []

    async def consume() -> None:
        async for batch in src.batches():
            got.extend(batch)

    task = asyncio.create_task(consume())
    h = src.health
    try:
        await _wait(lambda: path.exists())
        assert path.stat().st_mode & 0o777 == 0o660
        assert h.state == "degraded"
        assert h.detail["relay"].startswith("not heard yet")
        relay = Relay(path)
        st = RelayStatus("first", 1.0, "mon0", "capturing", "radiotap", "hopping via iw", "monitor mode set")
        assert relay.send_status(st)
        mac = bytes.fromhex("001122334455")
        for i in range(3):
            assert relay.forward(_probe(mac, i, -55), LINKTYPE_RADIOTAP, channel=6)
        await _wait(lambda: len(got) == 3 and h.state == "running")
        assert h.detail["relay"] == "capturing"
        assert (h.detail["interface"], h.detail["hopping"], h.detail["monitor"]) == (
            "mon0",
            "hopping via iw",
            "monitor mode set",
        )
        assert all(o.sensor == "gw" and o.radio == "wifi" for o in got)
        relay.stats.dropped_busy = 4  # what a relay that could not keep up reports
        relay.send_status(st)
        await _wait(lambda: h.dropped.get("relay_busy") == 4)
        relay.close()  # the relay stops
        await _wait(lambda: h.detail["relay"].startswith("disconnected"))
        assert h.state == "degraded"
        relay2 = Relay(path)  # ... and starts again: a new instance
        relay2.send_status(RelayStatus("second", 2.0, "mon0", "capturing"))
        relay2.forward(_probe(mac, 9, -55), LINKTYPE_RADIOTAP)
        await _wait(lambda: len(got) == 4 and h.state == "running")
        assert h.recoveries == 1
        assert h.detail["relay_restarts"] == 1
        assert h.dropped["relay_busy"] == 4  # the first instance's drops are kept
        # a relay that stays connected but says nothing (wedged) is reported silent
        await _wait(lambda: h.detail["relay"].startswith("silent"), 6.0)
        assert h.state == "degraded"
        relay2.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert h.state == "stopped"
    assert not path.exists()


async def test_relay_source_says_why_it_cannot_bind(tmp_path: Path) -> None:
    src = WifiRelaySource(WifiSettings(capture_socket=tmp_path / "missing-dir" / "capture.sock"))
    assert await _collect(src) == []
    assert src.health.state == "failed"
    assert "cannot bind the capture socket" in src.health.detail["error"]
    assert "No such file or directory" in src.health.detail["error"]


async def test_relay_source_stops_when_cancelled_as_it_is_woken(tmp_path: Path) -> None:
    """A cancel that lands in the same loop step as a wake-up still stops the source (with
    asyncio.wait_for on Python 3.11 the cancel was swallowed and the consumer never ended: an
    integration run hung in its teardown)."""
    src = WifiRelaySource(WifiSettings(capture_socket=tmp_path / "capture.sock"))

    async def consume() -> None:
        async for _ in src.batches():
            pass

    task = asyncio.create_task(consume())
    for _ in range(20):  # let it open the socket and wait
        await asyncio.sleep(0)
    src._wake.set()  # the relay's frame / disconnect wakes it ...
    task.cancel()  # ... as the daemon stops it
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3.0)
    assert src.health.state == "stopped"


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


def test_drain_holds_a_new_burst_until_its_device_is_decided(tmp_path: Path) -> None:
    """A new burst's observations wait (not lost) for the decision; then they carry the link."""
    w = _Wired(tmp_path, group_hold_s=30.0)
    src = w.src
    try:
        mac, public = bytes.fromhex("020000000001"), bytes.fromhex("001122334455")
        for t, m, seq in ((500.0, mac, 100), (500.02, mac, 101), (500.03, public, 7)):
            w.now[0] = t
            w.send(_probe(m, seq, -50))
            src._on_readable()
        assert [o.device for o in src._pending] == ["00:11:22:33:44:55"]  # the random MAC's frames are held
        assert src._conv.held
        src._release(src._conv.poll(500.5))  # what the source's once-a-second wake-up does
        assert src._conv.held  # its burst may not be over yet
        src._release(src._conv.poll(501.1))
        assert not src._conv.held
        assert [o.device for o in src._pending] == ["02:00:00:00:00:01", "02:00:00:00:00:01", "00:11:22:33:44:55"]
        assert src._pending[0].link == src._pending[1].link != src._pending[2].link
        assert [o.ts for o in src._pending] == sorted(o.ts for o in src._pending)
    finally:
        w.close()


def test_daemon_default_holds_a_burst_only_briefly(tmp_path: Path) -> None:
    """By default (group_hold_s 2) a held probe is released when its burst is over - well within
    localization.window_s (3 s), so it is still localized - and never later than 2 s."""
    assert WifiSettings().group_hold_s == 2.0
    w = _Wired(tmp_path)
    src = w.src
    try:
        t = 500.0
        for seq in range(10):  # a MAC speaking every 0.5 s: its burst never looks over
            w.now[0] = t
            w.send(_probe(bytes.fromhex("020000000001"), seq, -50))
            src._on_readable()
            src._release(src._conv.poll(t))
            t += 0.5
        assert src._pending and src._pending[0].ts == 500.0
        assert src._conv.grouper.held_frames <= 5  # decided by 502.0 at the latest
    finally:
        w.close()


def test_relay_state_shows_in_metrics() -> None:
    """/metrics: the source's state as gateway_source_up (sampled from its health every second)."""
    from prometheus_client import generate_latest

    from gateway.status.metrics import GatewayMetrics

    m = GatewayMetrics()
    m.source_state("wifi:mon0", False)  # relay silent: degraded
    assert b'gateway_source_up{source="wifi:mon0"} 0.0' in generate_latest(m.registry)
    m.source_state("wifi:mon0", True)
    assert b'gateway_source_up{source="wifi:mon0"} 1.0' in generate_latest(m.registry)
