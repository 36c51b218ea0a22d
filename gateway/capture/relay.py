"""Privilege-separated Wi-Fi capture: a tiny relay moves raw frames to the unprivileged daemon.

Why: capturing in monitor mode needs CAP_NET_RAW (and CAP_NET_ADMIN for channel changes). Parsing
untrusted radio frames with those capabilities would make every parser bug a privileged bug. So
``gateway-wifi-capture.service`` runs only this module: it reads frames from an ``AF_PACKET``
socket and forwards them, *unparsed*, as datagrams to ``/run/gateway/capture.sock``, a Unix
datagram socket bound by the main daemon (no capabilities) which does all 802.11 decoding.

Datagram format (network byte order), one frame per datagram::

    magic   4s  b"GWCF"
    version B   1
    flags   B   bit 0: frame was truncated to MAX_FRAME
    link    H   DLT link type of the payload (127 = radiotap, 105 = bare 802.11, 1 = Ethernet)
    ts_ns   Q   capture time, Unix nanoseconds
    payload     the raw frame bytes

The relay never blocks on the daemon: if the daemon is down or slow, frames are dropped and
counted (capture must keep up with the radio; the daemon's pseudonymisation is the only
consumer anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"GWCF"
VERSION = 1
HEADER = struct.Struct("!4sBBHQ")
MAX_FRAME = 8192
FLAG_TRUNCATED = 0x01
LINKTYPE_UNKNOWN = 0  # the daemon drops link types it has no parser for
LINKTYPE_ETHERNET = 1
LINKTYPE_IEEE802_11 = 105
LINKTYPE_RADIOTAP = 127
ETH_P_ALL = 0x0003
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772  # Linux loopback frames carry a (zeroed) Ethernet header
ARPHRD_IEEE80211 = 801
ARPHRD_IEEE80211_RADIOTAP = 803
DEFAULT_SOCKET = Path("/run/gateway/capture.sock")

_ARPHRD_TO_LINKTYPE = {
    ARPHRD_ETHER: LINKTYPE_ETHERNET,
    ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,
    ARPHRD_IEEE80211: LINKTYPE_IEEE802_11,
    ARPHRD_IEEE80211_RADIOTAP: LINKTYPE_RADIOTAP,
}


class FrameError(ValueError):
    """A datagram that is not a relay frame (wrong magic/version/short)."""


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    ts: float
    linktype: int
    data: bytes
    truncated: bool = False


def encode_frame(data: bytes, ts_ns: int, linktype: int) -> bytes:
    """Frame one captured packet for the socket; oversized packets are truncated and flagged."""
    flags = 0
    if len(data) > MAX_FRAME:
        data = data[:MAX_FRAME]
        flags |= FLAG_TRUNCATED
    return HEADER.pack(MAGIC, VERSION, flags, linktype, ts_ns) + data


def decode_frame(dgram: bytes) -> CapturedFrame:
    if len(dgram) < HEADER.size:
        raise FrameError(f"datagram of {len(dgram)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, flags, linktype, ts_ns = HEADER.unpack_from(dgram)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r} at offset 0")
    if version != VERSION:
        raise FrameError(f"unsupported relay version {version} at offset 4")
    return CapturedFrame(ts_ns / 1e9, linktype, bytes(dgram[HEADER.size :]), bool(flags & FLAG_TRUNCATED))


@dataclass
class RelayStats:
    received: int = 0
    forwarded: int = 0
    dropped_no_daemon: int = 0
    dropped_busy: int = 0
    truncated: int = 0


class Relay:
    """Sender side: forward frames to the daemon's socket without ever blocking capture."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.stats = RelayStats()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()

    def forward(self, data: bytes, linktype: int, ts_ns: int | None = None) -> bool:
        self.stats.received += 1
        if len(data) > MAX_FRAME:
            self.stats.truncated += 1
        dgram = encode_frame(data, time.time_ns() if ts_ns is None else ts_ns, linktype)
        try:
            self._sock.sendto(dgram, str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            self.stats.dropped_no_daemon += 1
            return False
        except (BlockingIOError, InterruptedError):
            self.stats.dropped_busy += 1
            return False
        except OSError as e:
            if e.errno in (errno.ENOBUFS, errno.EAGAIN):
                self.stats.dropped_busy += 1
                return False
            raise
        self.stats.forwarded += 1
        return True

    def pump(self, frames: Iterable[tuple[bytes, int]], should_stop: Callable[[], bool] = lambda: False) -> None:
        for data, linktype in frames:
            self.forward(data, linktype)
            if should_stop():
                break


def packet_frames(interface: str, should_stop: Callable[[], bool], poll_s: float = 0.5) -> Iterable[tuple[bytes, int]]:
    """Raw frames from an AF_PACKET socket on ``interface`` (needs CAP_NET_RAW)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((interface, ETH_P_ALL))
        sock.settimeout(poll_s)
        while not should_stop():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            # addr = (ifname, proto, pkttype, hatype, hwaddr)
            yield data, _ARPHRD_TO_LINKTYPE.get(int(addr[3]), LINKTYPE_UNKNOWN)
    finally:
        sock.close()


@dataclass
class ReceiverStats:
    frames: int = 0
    malformed: int = 0
    last_error: str | None = None
    by_linktype: dict[int, int] = field(default_factory=dict)


class CaptureReceiver:
    """Daemon side: bind the datagram socket and yield frames on the event loop (never blocks)."""

    def __init__(self, socket_path: Path, mode: int = 0o660) -> None:
        self.socket_path = socket_path
        self.mode = mode
        self.stats = ReceiverStats()
        self._sock: socket.socket | None = None

    def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(str(self.socket_path))
        os.chmod(self.socket_path, self.mode)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def __aenter__(self) -> CaptureReceiver:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def recv(self) -> CapturedFrame:
        """Next well-formed frame; malformed datagrams are counted and skipped. Cancel-safe."""
        if self._sock is None:
            self.open()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            frame = self._accept(await loop.sock_recv(self._sock, HEADER.size + MAX_FRAME))
            if frame is not None:
                return frame

    def _accept(self, dgram: bytes) -> CapturedFrame | None:
        """Decode one datagram and count it: a frame, or None for a malformed one (counted, kept as last_error)."""
        try:
            frame = decode_frame(dgram)
        except FrameError as e:
            self.stats.malformed += 1
            self.stats.last_error = str(e)
            return None
        self.stats.frames += 1
        self.stats.by_linktype[frame.linktype] = self.stats.by_linktype.get(frame.linktype, 0) + 1
        return frame

    async def recv_batch(self, max_frames: int = 256) -> list[CapturedFrame]:
        """Wait for one datagram, then drain what is already queued without waiting: one event
        loop wake-up per burst instead of per frame (monitor mode delivers bursts)."""
        out = [await self.recv()]
        assert self._sock is not None
        while len(out) < max_frames:
            try:
                dgram = self._sock.recv(HEADER.size + MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            frame = self._accept(dgram)
            if frame is not None:
                out.append(frame)
        return out

    async def frames(self) -> AsyncIterator[CapturedFrame]:
        while True:
            for frame in await self.recv_batch():
                yield frame


class ChannelHopper:
    """Cycles the monitor interface over ``channels`` (probe requests are sent on every channel a
    phone scans, so a few well-chosen ones suffice). Time is passed in; the setter is injected:
    production uses ``iw`` (this unit holds CAP_NET_ADMIN for it), tests record the calls.
    After ``max_failures`` consecutive failures it stops hopping and stays where it is."""

    def __init__(
        self,
        interface: str,
        channels: list[int],
        dwell_s: float,
        set_channel: Callable[[str, int], None] | None = None,
        max_failures: int = 5,
    ) -> None:
        if not channels:
            raise ValueError("no channels to hop over")
        self.interface = interface
        self.channels = channels
        self.dwell_s = dwell_s
        self.set_channel = set_channel or iw_set_channel
        self.max_failures = max_failures
        self.failures = 0
        self.hops = 0
        self.last_error: str | None = None
        self._current: int | None = None
        self._t0: float | None = None

    @property
    def stopped(self) -> bool:
        return self.failures >= self.max_failures

    def channel_at(self, now: float) -> int:
        if self._t0 is None:
            self._t0 = now
        slot = int((now - self._t0) / self.dwell_s)
        return self.channels[slot % len(self.channels)]

    def tick(self, now: float) -> int | None:
        """Switch if the schedule says so; returns the channel switched to, else None."""
        if self.stopped:
            return None
        ch = self.channel_at(now)
        if ch == self._current:
            return None
        try:
            self.set_channel(self.interface, ch)
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            self.failures += 1
            self.last_error = str(e)
            return None
        self.failures = 0
        self._current = ch
        self.hops += 1
        return ch


def iw_set_channel(interface: str, channel: int) -> None:
    r = subprocess.run(
        ["iw", "dev", interface, "set", "channel", str(channel)], capture_output=True, text=True, timeout=2, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"iw set channel {channel} on {interface}: {r.stderr.strip() or r.returncode}")


def set_monitor_mode(interface: str) -> None:
    """``wifi.set_monitor``: the interface must be down to change its type."""
    for cmd in (
        ["ip", "link", "set", "dev", interface, "down"],
        ["iw", "dev", interface, "set", "type", "monitor"],
        ["ip", "link", "set", "dev", interface, "up"],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")


def _hop_loop(hopper: ChannelHopper, should_stop: Callable[[], bool]) -> None:
    while not should_stop() and not hopper.stopped:
        hopper.tick(time.monotonic())
        time.sleep(min(0.05, hopper.dwell_s / 4))
    if hopper.stopped:
        print(f"channel hopping stopped: {hopper.last_error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.capture.relay", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="gateway.toml (for wifi.interface)")
    p.add_argument("--interface", default=None, help="monitor interface (overrides the config)")
    p.add_argument("--socket", default=str(DEFAULT_SOCKET), help="daemon's datagram socket")
    p.add_argument("--no-hop", action="store_true", help="stay on the current channel")
    args = p.parse_args(argv)
    from gateway.config import ConfigError, load_settings

    try:
        wifi = load_settings(args.config).wifi
    except ConfigError as e:
        print("\n".join(e.lines), file=sys.stderr)
        return 2
    interface = args.interface or wifi.interface
    if wifi.set_monitor:
        try:
            set_monitor_mode(interface)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"cannot put {interface} into monitor mode: {e}", file=sys.stderr)
            return 1
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if not args.no_hop and len(wifi.channels) > 1:
        hopper = ChannelHopper(interface, list(wifi.channels), wifi.dwell_s)
        threading.Thread(target=_hop_loop, args=(hopper, lambda: stop), daemon=True, name="hopper").start()
    relay = Relay(Path(args.socket))
    try:
        relay.pump(packet_frames(interface, lambda: stop), lambda: stop)
    except PermissionError:
        print(f"capture on {interface}: permission denied (needs CAP_NET_RAW)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"capture on {interface}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        relay.close()
    s = relay.stats
    print(
        f"relay stopped: received={s.received} forwarded={s.forwarded} "
        f"dropped_no_daemon={s.dropped_no_daemon} dropped_busy={s.dropped_busy}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
