"""Privilege-separated Wi-Fi capture: a small relay moves raw frames to the unprivileged daemon.

Why: capturing in monitor mode needs CAP_NET_RAW (and CAP_NET_ADMIN for channel changes). Parsing
untrusted radio frames with those capabilities would make every parser bug a privileged bug. So
``gateway-wifi-capture.service`` runs only this module: it opens the packet socket
(:func:`gateway.capture.radio.open_packet_socket`), hops channels
(:class:`gateway.capture.radio.ChannelHopper`), and forwards each frame *unparsed*, with the
channel it was tuned to, as one message on a Unix ``SOCK_SEQPACKET`` connection to
``wifi.capture_socket`` (``/run/gateway/capture.sock``), bound by the daemon (no capabilities), which
does all 802.11 decoding. The format is in :mod:`gateway.capture.wire`.

What it does when things go wrong - it never exits for them, it says so and retries:

* the daemon is down, restarting or slow: frames are dropped and counted (capture must keep up
  with the radio); it connects again (at most every 0.5 s) as soon as the daemon's socket is back;
* the interface is missing (USB adapter not plugged yet), goes away or cannot be opened (no
  CAP_NET_RAW): the state says why, and it tries again every ``retry_s`` (doubling to 30 s);
* about once a second (and at every change) it sends a status message - state, interface,
  hopping, monitor mode, counts - so the daemon's status page and /metrics show the relay's
  state, and a relay that stopped (silence) or restarted (a new ``instance``).

SIGTERM / SIGINT stop it; the last line on stderr gives the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.capture import wire
from gateway.capture.radio import (
    ChannelHopper,
    arphrd_type,
    linktype_of_arphrd,
    open_packet_socket,
    set_monitor_mode,
)
from gateway.capture.wire import (
    LINKTYPE_IEEE802_11,
    LINKTYPE_RADIOTAP,
    LINKTYPE_UNKNOWN,
    RelayStatus,
)
from gateway.config import WifiSettings

__all__ = ["Relay", "RelayStats", "main", "run_relay"]

SO_SNDBUFFORCE = 32
STATUS_EVERY_S = 1.0  # the daemon calls the relay silent after wifi.relay_silent_s without a message
_LINKTYPE_NAMES = {LINKTYPE_RADIOTAP: "radiotap", LINKTYPE_IEEE802_11: "ieee80211", 1: "ethernet"}


@dataclass
class RelayStats:
    received: int = 0
    forwarded: int = 0
    dropped_no_daemon: int = 0
    dropped_busy: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped_no_daemon": self.dropped_no_daemon,
            "dropped_busy": self.dropped_busy,
            "truncated": self.truncated,
        }


class Relay:
    """Sender side: forward frames to the daemon's socket without ever blocking capture.

    A ``SOCK_SEQPACKET`` connection (message boundaries kept, like datagrams): an unconnected Unix
    datagram socket may queue only ``net.unix.max_dgram_qlen`` messages (10 on a kernel without
    systemd's sysctl) whatever their size, so a probe burst arriving while the daemon's loop is
    busy for a few milliseconds would be dropped; a connection is bounded by the socket buffer
    (``sndbuf`` bytes, ~1,000 frames) instead. When the daemon is not there the frames are dropped
    and counted, and a new connection is tried at most every ``reconnect_s``.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        sndbuf: int = 1 << 20,
        reconnect_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path
        self.stats = RelayStats()
        self.connects = 0
        self._path = str(socket_path)
        self._sndbuf = sndbuf
        self._reconnect_s = reconnect_s
        self._clock = clock
        self._sock: socket.socket | None = None
        self._next_try = -math.inf

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket | None:
        now = self._clock()
        if now < self._next_try:
            return None
        self._next_try = now + self._reconnect_s
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for opt in (SO_SNDBUFFORCE, socket.SO_SNDBUF):  # FORCE needs CAP_NET_ADMIN (the relay has it)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, self._sndbuf)
                    break
                except OSError:
                    continue
            sock.setblocking(False)
            sock.connect(self._path)
        except OSError:
            sock.close()  # no daemon (yet): no socket file, refused, or its directory is missing
            return None
        self._sock = sock
        self.connects += 1
        return sock

    def _send(self, msg: bytes) -> str | None:
        """Send one message; None when sent, else why not ("no_daemon" / "busy")."""
        sock = self._sock or self._connect()
        if sock is None:
            return "no_daemon"
        try:
            sock.send(msg)
        except (BlockingIOError, InterruptedError):
            return "busy"
        except OSError as e:
            if e.errno in (errno.ENOBUFS, errno.EAGAIN):
                return "busy"
            # the daemon closed its end (stopped, restarted): connect again on a later frame
            self.close()
            self._next_try = -math.inf
            return "no_daemon"
        return None

    def forward(self, data: bytes, linktype: int, ts_ns: int | None = None, channel: int | None = None) -> bool:
        s = self.stats
        s.received += 1
        if len(data) > wire.MAX_FRAME:
            s.truncated += 1
        why = self._send(wire.encode_frame(data, time.time_ns() if ts_ns is None else ts_ns, linktype, channel))
        if why is None:
            s.forwarded += 1
            return True
        if why == "busy":
            s.dropped_busy += 1
        else:
            s.dropped_no_daemon += 1
        return False

    def send_status(self, status: RelayStatus) -> bool:
        """Tell the daemon how the relay is; not counted as a frame (a lost status is resent soon)."""
        status.counts = self.stats.as_dict()
        return self._send(wire.encode_status(status, time.time_ns())) is None


class _Capture:
    """The relay's event-loop side: packet socket, hopper, forwarding, status, reopening."""

    def __init__(self, settings: WifiSettings, relay: Relay, *, interface: str, hop: bool, retry_s: float) -> None:
        self.settings = settings
        self.relay = relay
        self.interface = interface
        self.hop = hop and settings.hop and len(settings.channels) > 0
        self.retry_s = retry_s
        self.status = RelayStatus(
            instance=secrets.token_hex(6), started=time.time(), interface=interface, state="starting"
        )
        self.hopper = ChannelHopper(interface, list(settings.channels), settings.dwell_s, on_change=self._changed)
        self._sock: socket.socket | None = None
        self._lt = LINKTYPE_UNKNOWN
        self._lost: OSError | None = None
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()

    def _changed(self) -> None:
        self._dirty.set()

    def _set_state(self, state: str) -> None:
        if state != self.status.state:
            self.status.state = state
            print(f"relay: {state}", file=sys.stderr, flush=True)
            self._dirty.set()

    def _linktype(self) -> int | None:
        lt = self.settings.linktype
        if lt == "radiotap":
            return LINKTYPE_RADIOTAP
        if lt == "ieee80211":
            return LINKTYPE_IEEE802_11
        t = arphrd_type(self.interface)
        if t is None:
            return None
        found = linktype_of_arphrd(t)
        return found if found in (LINKTYPE_RADIOTAP, LINKTYPE_IEEE802_11) else LINKTYPE_UNKNOWN

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        forward = self.relay.forward
        lt = self._lt
        channel = self.hopper.current
        for _ in range(self.settings.batch_max):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # interface gone (ENODEV), network down (ENETDOWN)...
                self._lost = e
                self._wake.set()
                return
            forward(data, lt, time.time_ns(), channel)

    async def _open(self) -> socket.socket:
        """Open the packet socket, waiting (and saying why) until it can be opened."""
        s = self.settings
        delay = self.retry_s
        while True:
            if s.set_monitor:
                self.status.monitor = await set_monitor_mode(self.interface)
            lt = self._linktype()
            why: str
            if lt is None:
                why = f"interface {self.interface} does not exist"
            elif lt == LINKTYPE_UNKNOWN:
                why = (
                    f"{self.interface} is not a monitor interface (ARPHRD type {arphrd_type(self.interface)}); "
                    "set wifi.set_monitor = true or wifi.linktype explicitly"
                )
            else:
                try:
                    sock = open_packet_socket(self.interface, lt, rcvbuf=s.rcvbuf_bytes, kernel_filter=s.kernel_filter)
                except PermissionError:
                    why = f"cannot open a packet socket on {self.interface}: permission denied (needs CAP_NET_RAW)"
                except OSError as e:
                    why = f"cannot open a packet socket on {self.interface}: {e.strerror or e}"
                else:
                    self._lt = lt
                    self.status.linktype = _LINKTYPE_NAMES.get(lt, str(lt))
                    filtered = s.kernel_filter and lt in (LINKTYPE_RADIOTAP, LINKTYPE_IEEE802_11)
                    self.status.kernel_filter = "probe requests only" if filtered else "off"
                    return sock
            self._set_state(f"waiting: {why}; retrying in {delay:g} s")
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    async def _report(self) -> None:
        """A status message every STATUS_EVERY_S, and at once when something changed."""
        while True:
            self.status.hopping = self.hopper.state if self.hop else "off (wifi.hop = false or no channels)"
            self.status.channel = self.hopper.current
            self.relay.send_status(self.status)
            self._dirty.clear()
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel on 3.11
                async with asyncio.timeout(STATUS_EVERY_S):
                    await self._dirty.wait()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reporter = asyncio.create_task(self._report(), name="relay-status")
        try:
            while True:
                self._sock = await self._open()
                hop_task = asyncio.create_task(self.hopper.run(), name="relay-hop") if self.hop else None
                loop.add_reader(self._sock.fileno(), self._on_readable)
                self._set_state("capturing")
                try:
                    while self._lost is None:
                        await self._wake.wait()
                        self._wake.clear()
                    e, self._lost = self._lost, None
                    self._set_state(f"waiting: capture on {self.interface} failed: {e.strerror or e}")
                finally:
                    loop.remove_reader(self._sock.fileno())
                    self._sock.close()
                    self._sock = None
                    if hop_task is not None:
                        hop_task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await hop_task
                await asyncio.sleep(self.retry_s)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self.status.state = "stopped"
            self.relay.send_status(self.status)


async def run_relay(
    settings: WifiSettings,
    socket_path: Path,
    *,
    interface: str | None = None,
    hop: bool = True,
    retry_s: float = 2.0,
    stop: asyncio.Event | None = None,
) -> RelayStats:
    """Capture and forward until ``stop`` is set (or the task is cancelled); returns the counts."""
    relay = Relay(socket_path)
    cap = _Capture(settings, relay, interface=interface or settings.interface, hop=hop, retry_s=retry_s)
    task = asyncio.create_task(cap.run(), name="relay")
    try:
        if stop is None:
            await task
        else:
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        relay.close()
    return relay.stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.capture.relay", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="gateway.toml (its [wifi] section)")
    p.add_argument("--interface", default=None, help="monitor interface (overrides wifi.interface)")
    p.add_argument("--socket", default=None, help="the daemon's socket (overrides wifi.capture_socket)")
    p.add_argument("--no-hop", action="store_true", help="stay on the current channel")
    args = p.parse_args(argv)
    from gateway.config import ConfigError, load_settings

    try:
        wifi = load_settings(args.config).wifi
    except ConfigError as e:
        print("\n".join(e.lines), file=sys.stderr)
        return 2
    path = Path(args.socket) if args.socket else wifi.capture_socket

    async def _main() -> RelayStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_relay(wifi, path, interface=args.interface, hop=not args.no_hop, stop=stop)

    s = asyncio.run(_main())
    print(
        f"relay stopped: received={s.received} forwarded={s.forwarded} "
        f"dropped_no_daemon={s.dropped_no_daemon} dropped_busy={s.dropped_busy} pid={os.getpid()}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
