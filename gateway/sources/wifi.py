"""Wi-Fi probe-request sources: live monitor-mode capture and pcap replay.

Live capture (:class:`WifiCaptureSource`):

* one raw ``AF_PACKET`` socket bound to the monitor interface (no tcpdump subprocess), driven by
  the event loop with ``add_reader``: each wake-up drains up to ``batch_max`` frames with
  non-blocking ``recv`` and decodes them in place (a few microseconds each), so the loop is never
  held for long and nothing blocks;
* channel hopping over ``channels`` with ``dwell_s`` per channel through nl80211 (pyroute2), or the
  ``iw`` tool when pyroute2 cannot, or not at all - the health record says which, and why;
* monitor mode is set at start when ``set_monitor`` asks and the kernel lets us.

Privileges: opening the socket needs CAP_NET_RAW; hopping and monitor mode need CAP_NET_ADMIN.
Only :meth:`WifiCaptureSource._open` and :class:`ChannelHopper` use them; everything else is
plain Python over bytes.

Observations: ``radio="wifi"``, ``sensor=settings.sensor_id``, ``device`` = raw MAC (RAM only -
the identity stage pseudonymises it), ``link`` = the MAC group id (rotating randomized MACs that
are probably one device). Frames off their channel, with a bad FCS or malformed are counted in
``health.dropped`` (same reasons as ``gateway decode pcap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import secrets
import shutil
import socket
import struct
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.config import WifiSettings
from gateway.identity.wifi_groups import GroupParams, WifiGrouper
from gateway.log import get_logger
from gateway.models import Observation, SourceHealth
from gateway.parsers.pcap import LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, PcapError, Record, read_records
from gateway.parsers.wifi_probe import Probe, ProbeDecoder
from gateway.sources.base import LIVE_RADIO, RECORDING

__all__ = ["ChannelHopper", "PcapReplaySource", "WifiCaptureSource", "channel_freq", "make_wifi_source"]

log = get_logger(__name__)

ETH_P_ALL = 0x0003
ARPHRD_IEEE80211 = 801
ARPHRD_IEEE80211_RADIOTAP = 803
SIOCGIFHWADDR = 0x8927


SO_ATTACH_FILTER = 26


def probe_request_filter(linktype: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF program passing only probe requests (frame control byte 0x40, flags ignored).

    With radiotap the 802.11 frame starts at the little-endian header length in bytes 2-3, which
    BPF loads into X. On a busy channel most frames are data frames: dropping them in the kernel
    keeps them off the socket, the event loop and the CPU. (A frame too short for the program is
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
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", interface.encode()[:15]))
    except OSError:
        return None
    return int(struct.unpack_from("H", res, 16)[0])


def _obs_ts(o: Observation) -> float:
    return o.ts


def _settled(queue: list[Observation]) -> list[Observation]:
    """Take the observations before the first one still held (link None) off ``queue``."""
    n = 0
    for o in queue:
        if o.link is None:
            break
        n += 1
    out = queue[:n]
    del queue[:n]
    return out


class _ProbeObservations:
    """Probe -> Observation with grouping: shared by the live and replay sources (pure).

    A new randomized MAC's frames are held until its group is decided (``wifi.group_hold_s`` at
    most, frame time; see :meth:`WifiGrouper.offer`): :meth:`convert` returns them with
    ``link=None`` and sets the link on the same objects when decided - they are listed by
    :meth:`take_ready` (after a frame), :meth:`poll` (time passing without frames) or :meth:`flush`
    (end of input).
    """

    def __init__(self, settings: WifiSettings, health: SourceHealth) -> None:
        self.sensor = settings.sensor_id
        self.decoder = ProbeDecoder(keep_off_channel=settings.keep_off_channel)
        # group ids must not repeat across restarts (they become pseudonym identities)
        params = GroupParams(max_delay_s=settings.group_hold_s)
        self.grouper = WifiGrouper(params, prefix=f"wifi-{secrets.token_hex(3)}-")
        self.ready = self.grouper.ready
        self.health = health
        self._health_calls = 0

    def convert(self, ts: float, linktype: int, data: bytes, channel_hint: int | None) -> Observation | None:
        p: Probe | None = self.decoder.decode(ts, linktype, data, channel_hint)
        if p is None:
            return None
        if p.rssi is None:
            # plain 802.11 without radiotap: nothing to range with (the grouper still learns from it)
            self.grouper.offer(p.mac, p.randomized, p.fingerprint, p.seq, ts, None, None)
            self.health.drop("no_rssi")
            return None
        obs = Observation(ts, self.sensor, p.mac, float(p.rssi), "wifi", None, None)
        obs.link = self.grouper.offer(p.mac, p.randomized, p.fingerprint, p.seq, ts, p.rssi, obs)
        return obs  # link None: held (the grouper sets it on this object when it decides)

    @property
    def held(self) -> bool:
        """Whether frames are held waiting for a group decision."""
        return self.grouper.holding

    def take_ready(self) -> list[Observation]:
        """Held observations whose group has been decided, with their link, in order per MAC."""
        out: list[Observation] = []
        for item, gid in self.ready:
            if isinstance(item, Observation):
                item.link = gid
                out.append(item)
        self.ready.clear()
        return out

    def poll(self, now: float) -> list[Observation]:
        """Decide held MACs whose hold has run out by ``now`` (a live capture with no frames)."""
        self.grouper.poll(now)
        return self.take_ready()

    def flush(self) -> list[Observation]:
        """End of input / shutdown: decide every held MAC now."""
        self.grouper.flush_into_ready()
        return self.take_ready()

    def sync_health(self) -> None:
        dropped = self.health.dropped
        for k, v in self.decoder.counts.items():
            if k != "not_probe_request":
                dropped[k] = v
        self.health.detail["other_frames"] = self.decoder.counts.get("not_probe_request", 0)
        # counting live groups walks every MAC (~7 ms at 50k): once per 32 batches is enough for a gauge
        if self._health_calls % 32 == 0:
            self.health.detail["groups"] = len(self.grouper)
        self._health_calls += 1


class ChannelHopper:
    """Cycle the interface over ``channels``, ``dwell_s`` each.

    Tries nl80211 through pyroute2 (no subprocess per hop), then the ``iw`` tool. When neither
    works (no wireless device, no CAP_NET_ADMIN) it says so once in the log and in ``state`` and
    stops trying; capture continues on whatever channel the radio is on.
    """

    def __init__(self, interface: str, channels: list[int], dwell_s: float) -> None:
        self.interface = interface
        self.channels = list(channels)
        self.dwell_s = dwell_s
        self.current: int | None = None
        self.backend: str | None = None
        self.state = "idle"
        self.failures: dict[str, str] = {}
        self._iw: Any = None
        self._ifindex: int | None = None

    async def _nl80211(self, ch: int) -> None:
        from pyroute2.iwutil import AsyncIW
        from pyroute2.netlink.nl80211 import NL80211_NAMES, nl80211cmd

        if self._iw is None:
            iw = AsyncIW()
            try:
                await iw.setup_endpoint()
            except BaseException:
                iw.close()
                raise
            self._iw = iw
            self._ifindex = socket.if_nametoindex(self.interface)
        msg = nl80211cmd()
        msg["cmd"] = NL80211_NAMES["NL80211_CMD_SET_WIPHY"]
        msg["attrs"] = [["NL80211_ATTR_IFINDEX", self._ifindex], ["NL80211_ATTR_WIPHY_FREQ", channel_freq(ch)]]
        await self._iw._do_request(msg)

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
        backends: list[tuple[str, Callable[[int], Any]]] = [("nl80211", self._nl80211), ("iw", self._iw_tool)]
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
            return True
        return False

    async def run(self) -> None:
        """Hop until cancelled (or until no backend works)."""
        if not self.channels:
            self.state = "off: no channels configured"
            return
        i = 0
        self.state = "starting"
        try:
            while True:
                ch = self.channels[i % len(self.channels)]
                if not await self.set_channel(ch):
                    why = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
                    self.state = f"unavailable: cannot set the channel ({why})"
                    log.warning("wifi.hopping_unavailable", interface=self.interface, reason=why)
                    return
                self.state = f"hopping via {self.backend}"
                if len(self.channels) == 1:
                    self.state = f"fixed on channel {ch} via {self.backend}"
                    return
                i += 1
                await asyncio.sleep(self.dwell_s)
        finally:
            self.close()

    def close(self) -> None:
        if self._iw is not None:
            with contextlib.suppress(Exception):
                self._iw.close()
            self._iw = None


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


class WifiCaptureSource:
    """Live probe-request capture from a monitor-mode interface (see the module docstring)."""

    capabilities = LIVE_RADIO  # "Restart scanner" reopens the socket

    def __init__(self, settings: WifiSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.name = f"wifi:{settings.interface}"
        self.health = SourceHealth(name=self.name)
        self._clock = clock
        self._conv = _ProbeObservations(settings, self.health)
        self.hopper = ChannelHopper(settings.interface, settings.channels, settings.dwell_s)
        self._sock: socket.socket | None = None
        self._pending: list[Observation] = []
        self._wake = asyncio.Event()
        self._linktype = LINKTYPE_RADIOTAP
        self._error: OSError | None = None
        self.frames = 0

    def _resolve_linktype(self) -> int | None:
        lt = self.settings.linktype
        if lt == "radiotap":
            return LINKTYPE_RADIOTAP
        if lt == "ieee80211":
            return LINKTYPE_IEEE802_11
        t = arphrd_type(self.settings.interface)
        self.health.detail["arphrd"] = t
        if t == ARPHRD_IEEE80211_RADIOTAP:
            return LINKTYPE_RADIOTAP
        if t == ARPHRD_IEEE80211:
            return LINKTYPE_IEEE802_11
        return None

    def _open(self) -> socket.socket:
        """The one privileged step (CAP_NET_RAW): a raw packet socket bound to the interface."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.settings.rcvbuf_bytes)
            if self.settings.kernel_filter:
                attach_filter(sock, probe_request_filter(self._linktype))
            sock.bind((self.settings.interface, ETH_P_ALL))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _on_readable(self) -> None:
        """Drain up to batch_max frames; decode them; wake the consumer."""
        sock = self._sock
        if sock is None:
            return
        now = self._clock()
        channel = self.hopper.current
        lt = self._linktype
        convert = self._conv.convert
        pending = self._pending
        limit = self.settings.max_pending
        n = 0
        for _ in range(self.settings.batch_max):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # interface gone (ENODEV), network down (ENETDOWN)...
                self.health.state = "degraded"
                self.health.detail["error"] = f"recv on {self.settings.interface}: {e.strerror or e}"
                self._error = e
                self._wake.set()
                break
            n += 1
            obs = convert(now, lt, data, channel)
            if obs is None or obs.link is None:
                continue  # dropped, or held until its group is decided (then from take_ready)
            if len(pending) >= limit:
                self.health.drop("backpressure")
                continue
            pending.append(obs)
        if self._conv.ready:
            self._release(self._conv.take_ready())
        self.frames += n
        if pending:
            self._wake.set()

    def _release(self, obs: list[Observation]) -> None:
        """Queue held observations whose group was decided (older than those queued: sorted in)."""
        pending = self._pending
        room = self.settings.max_pending - len(pending)
        if len(obs) > room:
            for _ in range(len(obs) - max(room, 0)):
                self.health.drop("backpressure")
            obs = obs[: max(room, 0)]
        if obs:
            pending.extend(obs)
            pending.sort(key=_obs_ts)

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        s = self.settings
        h = self.health
        h.detail["interface"] = s.interface
        if s.set_monitor:
            h.detail["monitor"] = await set_monitor_mode(s.interface)
            log.info("wifi.monitor", interface=s.interface, result=h.detail["monitor"])
        lt = self._resolve_linktype()
        if lt is None:
            h.state = "failed"
            h.detail["error"] = (
                f"{s.interface} is not a monitor interface (ARPHRD type {h.detail.get('arphrd')}); "
                "set wifi.set_monitor = true or wifi.linktype explicitly"
            )
            log.error("wifi.not_monitor", interface=s.interface, arphrd=h.detail.get("arphrd"))
            return
        self._linktype = lt
        h.detail["linktype"] = "radiotap" if lt == LINKTYPE_RADIOTAP else "ieee80211"
        h.detail["kernel_filter"] = "probe requests only" if s.kernel_filter else "off"
        try:
            self._sock = self._open()
        except OSError as e:
            h.state = "failed"
            h.detail["error"] = f"cannot open a packet socket on {s.interface}: {e.strerror or e}"
            log.error("wifi.open_failed", interface=s.interface, error=str(e.strerror or e))
            return
        loop = asyncio.get_running_loop()
        hop_task: asyncio.Task[None] | None = None
        if s.hop and s.channels:
            hop_task = asyncio.create_task(self.hopper.run(), name=f"{self.name}:hop")
        else:
            self.hopper.state = "off (wifi.hop = false)" if not s.hop else "off: no channels configured"
        h.detail["hopping"] = self.hopper.state
        loop.add_reader(self._sock.fileno(), self._on_readable)
        h.state = "running"
        try:
            while True:
                # wake at least once a second: a held MAC's frames must not wait for the next frame
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                self._wake.clear()
                if self._conv.held:
                    self._release(self._conv.poll(self._clock()))
                batch, self._pending = self._pending, []
                if self._error is not None and not batch:
                    # the socket is dead: fail loudly so the supervisor restarts the source
                    err, self._error = self._error, None
                    h.state = "failed"
                    log.error("wifi.capture_failed", interface=s.interface, error=str(err.strerror or err))
                    raise err
                if not batch:
                    continue
                h.observations += len(batch)
                h.last_observation_ts = batch[-1].ts
                h.detail["hopping"] = self.hopper.state
                h.detail["channel"] = self.hopper.current
                h.detail["frames"] = self.frames
                self._conv.sync_health()
                yield batch
        finally:
            # shutdown: held frames are decided now; the consumer may not take another batch,
            # so they only count (a live source's last frames are as good as lost anyway)
            lost = len(self._conv.flush())
            if lost:
                h.detail["held_at_stop"] = lost
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            if hop_task is not None:
                hop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hop_task
            self._conv.sync_health()
            h.detail["hopping"] = self.hopper.state
            if h.state != "failed":
                h.state = "stopped"


class PcapReplaySource:
    """Replay a pcap/pcapng capture as if it were live (``wifi.pcap``, pace ``wifi.pcap_speed``).

    The file is read in a worker thread, ``chunk`` records at a time, so the loop never waits on
    the disk. A corrupt file ends the replay with ``health.state = "failed"`` and the offset.
    """

    capabilities = RECORDING  # finite, waits rather than drops, its own time (see the daemon)

    def __init__(self, settings: WifiSettings, path: Path | None = None, *, chunk: int = 2048) -> None:
        p = path or settings.pcap
        if p is None:
            raise ValueError("wifi.pcap is not set")
        self.path = Path(p)
        self.settings = settings
        self.name = f"wifi-pcap:{self.path.name}"
        self.health = SourceHealth(name=self.name)
        self._conv = _ProbeObservations(settings, self.health)
        self._chunk = chunk

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        h = self.health
        try:
            f = self.path.open("rb")
        except OSError as e:
            h.state = "failed"
            h.detail["error"] = f"cannot open {self.path}: {e.strerror}"
            return
        it: Iterator[Record] = read_records(f)

        def take() -> tuple[list[Record], PcapError | None]:
            out: list[Record] = []
            try:
                for rec in it:
                    out.append(rec)
                    if len(out) >= self._chunk:
                        break
            except PcapError as e:
                return out, e
            return out, None

        speed = self.settings.pcap_speed
        conv = self._conv
        # capture order: observations wait behind a held one until its group is decided
        queue: list[Observation] = []
        first_ts: float | None = None
        t0 = time.monotonic()
        last_ts = 0.0
        h.state = "running"
        try:
            while True:
                recs, err = await asyncio.to_thread(take)
                batch: list[Observation] = []
                for ts, lt, data in recs:
                    if ts is None:
                        ts = last_ts
                    last_ts = ts
                    if speed > 0:
                        if first_ts is None:
                            first_ts = ts
                        due = t0 + (ts - first_ts) / speed
                        delay = due - time.monotonic()
                        if delay > 0.005:
                            if batch:
                                yield self._account(batch)
                                batch = []
                            await asyncio.sleep(delay)
                    obs = self._conv.convert(ts, lt, data, None)
                    if conv.ready:
                        conv.take_ready()  # sets the links of held observations
                    if obs is None:
                        continue
                    if not queue and obs.link is not None:
                        batch.append(obs)  # nothing held: straight through
                        continue
                    queue.append(obs)
                    if queue[0].link is not None:
                        batch += _settled(queue)
                if not recs or err is not None:
                    conv.flush()  # end of input: decide every held MAC
                elif conv.ready:
                    conv.take_ready()
                batch += _settled(queue)
                if batch:
                    yield self._account(batch)
                if err is not None:
                    h.state = "failed"
                    h.detail["error"] = str(err)
                    log.error("wifi.pcap_corrupt", file=str(self.path), offset=err.offset, reason=err.reason)
                    return
                if not recs:
                    h.state = "stopped"
                    return
        finally:
            f.close()
            self._conv.sync_health()

    def _account(self, batch: list[Observation]) -> list[Observation]:
        self.health.observations += len(batch)
        self.health.last_observation_ts = batch[-1].ts
        self._conv.sync_health()
        return batch


def make_wifi_source(settings: WifiSettings) -> WifiCaptureSource | PcapReplaySource:
    """The configured Wi-Fi source: pcap replay when ``wifi.pcap`` is set, else live capture."""
    if settings.pcap is not None:
        return PcapReplaySource(settings)
    return WifiCaptureSource(settings)
