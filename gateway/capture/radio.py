"""The privileged radio operations, used only by the capture relay (``gateway-wifi-capture.service``).

* :func:`open_packet_socket` - the one ``AF_PACKET`` opener of the project (CAP_NET_RAW): a raw
  packet socket bound to the monitor interface, with a classic BPF filter that passes only probe
  requests (:func:`probe_request_filter`);
* :class:`ChannelHopper` - the one channel hopper (CAP_NET_ADMIN): nl80211 through pyroute2's public
  generic-netlink API (no subprocess per hop), else the ``iw`` tool, else it says why not and stops;
* :func:`set_monitor_mode` - ``wifi.set_monitor``: down, type monitor, up.

The unprivileged daemon never imports this module: it reads the relay's messages
(:mod:`gateway.sources.wifi`), and its unit denies ``AF_PACKET`` and ``AF_NETLINK`` altogether.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import shutil
import socket
import struct
from collections.abc import Callable
from typing import Any

from gateway.capture.wire import LINKTYPE_ETHERNET, LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, LINKTYPE_UNKNOWN

__all__ = [
    "ARPHRD_IEEE80211",
    "ARPHRD_IEEE80211_RADIOTAP",
    "ChannelHopper",
    "arphrd_type",
    "channel_freq",
    "linktype_of_arphrd",
    "open_packet_socket",
    "probe_request_filter",
    "set_monitor_mode",
]

ETH_P_ALL = 0x0003
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772  # Linux loopback frames carry a (zeroed) Ethernet header
ARPHRD_IEEE80211 = 801
ARPHRD_IEEE80211_RADIOTAP = 803
SIOCGIFHWADDR = 0x8927
SO_ATTACH_FILTER = 26

_ARPHRD_TO_LINKTYPE = {
    ARPHRD_ETHER: LINKTYPE_ETHERNET,
    ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,
    ARPHRD_IEEE80211: LINKTYPE_IEEE802_11,
    ARPHRD_IEEE80211_RADIOTAP: LINKTYPE_RADIOTAP,
}


def linktype_of_arphrd(arphrd: int | None) -> int:
    """The DLT link type of frames on an interface of this ARPHRD type (0: none we decode)."""
    return _ARPHRD_TO_LINKTYPE.get(arphrd or -1, LINKTYPE_UNKNOWN)


def channel_freq(ch: int) -> int:
    """Centre frequency (MHz) of a 2.4 / 5 GHz channel number."""
    if ch == 14:
        return 2484
    if 1 <= ch <= 13:
        return 2407 + 5 * ch
    return 5000 + 5 * ch


def arphrd_type(interface: str) -> int | None:
    """The interface's ARPHRD type (803: radiotap monitor), None if there is no such interface.

    Asked with SIOCGIFHWADDR rather than read from sysfs: /sys shows the network namespace it was
    mounted in, the ioctl the one we run in.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", interface.encode()[:15]))
    except OSError:
        return None
    return int(struct.unpack_from("H", res, 16)[0])


def probe_request_filter(linktype: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF program passing only probe requests (frame control byte 0x40, flags ignored).

    With radiotap the 802.11 frame starts at the little-endian header length in bytes 2-3, which
    BPF loads into X. On a busy channel most frames are data frames: dropping them in the kernel
    keeps them off the socket, the relay and the daemon. (A frame too short for the program is
    dropped by the kernel too - it is never counted.)
    """
    accept, drop = (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)
    tail = [(0x54, 0, 0, 0xFC), (0x15, 0, 1, 0x40), accept, drop]  # and #0xfc; jeq #0x40
    if linktype == LINKTYPE_RADIOTAP:
        head = [
            (0x30, 0, 0, 3),  # ldb [3]
            (0x64, 0, 0, 8),  # lsh #8
            (0x07, 0, 0, 0),  # tax
            (0x30, 0, 0, 2),  # ldb [2]
            (0x4C, 0, 0, 0),  # or x
            (0x07, 0, 0, 0),  # tax      X = radiotap length
            (0x50, 0, 0, 0),  # ldb [x + 0]
        ]
    else:
        head = [(0x30, 0, 0, 0)]  # ldb [0]
    return head + tail


def attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    insns = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_packet_socket(interface: str, linktype: int, *, rcvbuf: int, kernel_filter: bool) -> socket.socket:
    """The one privileged step of capture (CAP_NET_RAW): a non-blocking raw packet socket bound to
    ``interface``, passing only probe requests when ``kernel_filter`` (for radiotap / 802.11)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if kernel_filter and linktype in (LINKTYPE_RADIOTAP, LINKTYPE_IEEE802_11):
            attach_filter(sock, probe_request_filter(linktype))
        sock.bind((interface, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ChannelHopper:
    """Cycle the interface over ``channels``, ``dwell_s`` each.

    Tries nl80211 through pyroute2's public API (``AsyncNL80211.bind`` / ``nlm_request``: no
    subprocess per hop), then the ``iw`` tool. When neither works (no wireless device, no
    CAP_NET_ADMIN) it says so in ``state`` and stops trying; capture continues on whatever channel
    the radio is on. ``current`` is the channel the radio was last tuned to (the relay puts it in
    every frame's message). Backends can be injected (tests).
    """

    def __init__(
        self,
        interface: str,
        channels: list[int],
        dwell_s: float,
        *,
        backends: list[tuple[str, Callable[[int], Any]]] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.interface = interface
        self.channels = list(channels)
        self.dwell_s = dwell_s
        self.current: int | None = None
        self.backend: str | None = None
        self.state = "idle"
        self.hops = 0
        self.failures: dict[str, str] = {}
        self._nl: Any = None
        self._ifindex: int | None = None
        self._backends = backends or [("nl80211", self._nl80211), ("iw", self._iw_tool)]
        self._on_change = on_change

    async def _nl80211(self, ch: int) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.nl80211 import NL80211_NAMES, AsyncNL80211

        if self._nl is None:
            nl = AsyncNL80211()
            try:
                await nl.bind()
            except BaseException:
                nl.close()
                raise
            self._nl = nl
            self._ifindex = socket.if_nametoindex(self.interface)
        msg = set_channel_message(self._ifindex or 0, ch)
        assert msg["cmd"] == NL80211_NAMES["NL80211_CMD_SET_WIPHY"]
        response = await self._nl.nlm_request(msg, msg_type=self._nl.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
        async for _ in response:  # the ACK (an error raises NetlinkError)
            pass

    async def _iw_tool(self, ch: int) -> None:
        exe = shutil.which("iw")
        if exe is None:
            raise FileNotFoundError("the iw tool is not installed")
        proc = await asyncio.create_subprocess_exec(
            exe, "dev", self.interface, "set", "channel", str(ch),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TimeoutError("iw did not answer within 5 s") from None
        if proc.returncode != 0:
            raise OSError(err.decode(errors="replace").strip() or f"iw exited with {proc.returncode}")

    async def set_channel(self, ch: int) -> bool:
        """Tune to ``ch``; False if no backend can."""
        backends = self._backends
        if self.backend is not None:
            backends = [b for b in backends if b[0] == self.backend]
        for name, fn in backends:
            try:
                await fn(ch)
            except Exception as e:  # any failure: note it, try the next backend
                self.failures[name] = f"{type(e).__name__}: {e}"
                if self.backend == name:
                    self.backend = None  # it worked before: re-probe all backends next time
                continue
            self.backend = name
            self.current = ch
            self.hops += 1
            return True
        return False

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change()

    async def run(self) -> None:
        """Hop until cancelled (or until no backend works)."""
        if not self.channels:
            self._set_state("off: no channels configured")
            return
        i = 0
        self._set_state("starting")
        try:
            while True:
                ch = self.channels[i % len(self.channels)]
                if not await self.set_channel(ch):
                    why = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
                    self._set_state(f"unavailable: cannot set the channel ({why})")
                    return
                if len(self.channels) == 1:
                    self._set_state(f"fixed on channel {ch} via {self.backend}")
                    return
                self._set_state(f"hopping via {self.backend}")
                i += 1
                await asyncio.sleep(self.dwell_s)
        finally:
            self.close()

    def close(self) -> None:
        if self._nl is not None:
            with contextlib.suppress(Exception):
                self._nl.close()
            self._nl = None


def set_channel_message(ifindex: int, ch: int) -> Any:
    """The nl80211 SET_WIPHY request that tunes ``ifindex`` to channel ``ch`` (20 MHz)."""
    from pyroute2.netlink.nl80211 import NL80211_NAMES, nl80211cmd

    msg = nl80211cmd()
    msg["cmd"] = NL80211_NAMES["NL80211_CMD_SET_WIPHY"]
    msg["attrs"] = [["NL80211_ATTR_IFINDEX", ifindex], ["NL80211_ATTR_WIPHY_FREQ", channel_freq(ch)]]
    return msg


async def set_monitor_mode(interface: str) -> str:
    """Put ``interface`` into monitor mode (down, type monitor, up). Returns what happened."""
    if arphrd_type(interface) == ARPHRD_IEEE80211_RADIOTAP:
        return "already in monitor mode"
    exe_ip, exe_iw = shutil.which("ip"), shutil.which("iw")
    if exe_ip is None or exe_iw is None:
        return "cannot set monitor mode: the ip/iw tools are missing"
    steps = [
        [exe_ip, "link", "set", interface, "down"],
        [exe_iw, "dev", interface, "set", "type", "monitor"],
        [exe_ip, "link", "set", interface, "up"],
    ]
    for cmd in steps:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 10.0)
        if proc.returncode != 0:
            msg = err.decode(errors="replace").strip()
            if cmd[1] == "dev":  # bring the link back up after a failed type change
                up = await asyncio.create_subprocess_exec(*steps[2], stderr=asyncio.subprocess.DEVNULL)
                await up.wait()
            return f"cannot set monitor mode: {' '.join(cmd[1:])}: {msg}"
    return "monitor mode set"
