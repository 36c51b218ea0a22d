"""Wi-Fi probe-request sources: the capture relay's frames (live) and pcap replay.

Live (:class:`WifiRelaySource`): the daemon holds no capability and its unit denies ``AF_PACKET``
and ``AF_NETLINK``, so it never opens the radio. The capture relay (``gateway-wifi-capture.service``,
:mod:`gateway.capture.relay`) does - packet socket, monitor mode, channel hopping - and sends every
frame, unparsed, as one message on a Unix ``SOCK_SEQPACKET`` connection to ``wifi.capture_socket``,
which this source binds and listens on (mode 0660, in the daemon's RuntimeDirectory). The source
reads with ``add_reader``, draining up to ``batch_max`` messages per wake-up, and decodes here,
unprivileged.

The relay also sends a status message about once a second. The source's health says what the relay
says (interface, hopping, monitor mode, its drops) and whether it is there at all: ``running``
while it captures, ``degraded`` with ``relay: not heard yet`` / ``disconnected`` / ``silent`` when
it has not connected, has closed its connection, or has sent nothing for ``wifi.relay_silent_s``,
and ``running`` again when it is back; a relay that restarted (a new instance id) counts as a
recovery. The source never fails for a missing relay: it waits for it, so start order does not
matter.

Observations: ``radio="wifi"``, ``sensor=settings.sensor_id``, ``device`` = raw MAC (RAM only -
the identity stage pseudonymises it), ``link`` = the MAC group id (rotating randomized MACs that
are probably one device). Frames off their channel, with a bad FCS or malformed are counted in
``health.dropped`` (same reasons as ``gateway decode pcap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path

from gateway.capture import wire
from gateway.capture.wire import CapturedFrame, FrameError, RelayStatus
from gateway.config import WifiSettings
from gateway.identity.wifi_groups import GroupParams, WifiGrouper
from gateway.identity.wifi_merge import NodeLevels, NodeProbe
from gateway.log import get_logger
from gateway.models import Observation, PresenceMark, SourceHealth
from gateway.parsers.pcap import PcapError, Record, read_records
from gateway.parsers.wifi_probe import Probe, ProbeDecoder
from gateway.sources.base import Capabilities

__all__ = ["PcapReplaySource", "RelaySocket", "WifiRelaySource", "make_wifi_source"]

log = get_logger(__name__)

SOCKET_MODE = 0o660  # the relay runs as the daemon's user/group (systemd/README.md)


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


def _mark(item: object, mark: PresenceMark) -> None:
    if isinstance(item, Observation):
        item.presence = mark


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
        self.grouper.on_mark = _mark  # one frame of each burst: what it stands for (the Wi-Fi count)
        self.ready = self.grouper.ready
        self.health = health
        self._health_calls = 0
        # several receivers: sensor nodes' reports of the same frames (identity/wifi_merge.py)
        self.nodes = NodeLevels(settings.node_merge_s)

    def convert(self, ts: float, linktype: int, data: bytes, channel_hint: int | None) -> Observation | None:
        p: Probe | None = self.decoder.decode(ts, linktype, data, channel_hint)
        if p is None:
            return None
        if p.rssi is None:
            # plain 802.11 without radiotap: nothing to range with (the grouper still learns from it)
            self.grouper.offer(p.mac, p.randomized, p.fingerprint, p.seq, ts, None, None, p.ssid)
            self.health.drop("no_rssi")
            return None
        obs = Observation(ts, self.sensor, p.mac, float(p.rssi), "wifi", None, None)
        levels = self.nodes.capture(p.mac, p.seq, ts)  # None until a node has reported
        obs.link = self.grouper.offer(p.mac, p.randomized, p.fingerprint, p.seq, ts, p.rssi, obs, p.ssid, levels)
        return obs  # link None: held (the grouper sets it on this object when it decides)

    def node_probes(self, probes: list[NodeProbe]) -> None:
        """Probe requests sensor nodes heard (their sources/node_ingest.py ``on_wifi``): merged with
        the capture's frames; one that came after its frame adds its level to the frame's burst."""
        for p in probes:
            late = self.nodes.node(p)
            if late is not None:
                self.grouper.add_levels(late[0], late[1])

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
        if self.nodes.active:  # several receivers: node reports merged with the capture's frames
            self.health.detail["node_reports"] = self.nodes.counts()
        # counting live groups walks every MAC (~7 ms at 50k): once per 32 batches is enough for a gauge
        if self._health_calls % 32 == 0:
            self.health.detail["groups"] = len(self.grouper)
        self._health_calls += 1


class RelaySocket:
    """The daemon's end of the relay's connection: listen, accept, read without blocking, decode.

    One relay at a time: a new connection replaces the old one (a restarted relay connects again
    before the old connection's end is noticed). ``connected`` says whether a relay is connected.
    """

    def __init__(self, path: Path, *, rcvbuf: int = 1 << 20) -> None:
        self.path = path
        self.rcvbuf = rcvbuf
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.messages = 0
        self.malformed = 0
        self.connections = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def open(self) -> None:
        """Bind and listen (a stale socket from a previous run is replaced); group-writable."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            sock.bind(str(self.path))
            os.chmod(self.path, SOCKET_MODE)
            sock.listen(4)
        except BaseException:
            sock.close()
            raise
        self.listener = sock

    def accept(self) -> socket.socket | None:
        """Take a waiting connection (closing the previous one); None if there is none."""
        if self.listener is None:
            return None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.drop_connection()
        self.conn = conn
        self.connections += 1
        return conn

    def drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.drop_connection()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def read(self, limit: int) -> Iterator[CapturedFrame | RelayStatus]:
        """What is queued now, up to ``limit`` messages (malformed ones counted and skipped); the
        relay closing its end drops the connection (``connected`` turns False)."""
        conn = self.conn
        if conn is None:
            return
        recv = conn.recv
        decode = wire.decode
        for _ in range(limit):
            try:
                msg = recv(wire.DATAGRAM_MAX + 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # reset by a relay that died
                self.last_error = f"relay connection: {e.strerror or e}"
                self.drop_connection()
                return
            if not msg:  # the relay closed its end (stopped)
                self.drop_connection()
                return
            self.messages += 1
            try:
                yield decode(msg)
            except FrameError as e:
                self.malformed += 1
                self.last_error = str(e)


class WifiRelaySource:
    """Live probe requests from the capture relay (see the module docstring)."""

    @property
    def capabilities(self) -> Capabilities:
        """Live ("Restart scanner" binds the capture socket again); takes nodes' Wi-Fi reports."""
        return Capabilities(restartable=True, probe_sink=self.node_probes)

    def __init__(
        self, settings: WifiSettings, *, socket_path: Path | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.path = socket_path or settings.capture_socket
        self.name = f"wifi:{settings.interface}"
        self.health = SourceHealth(name=self.name)
        self._clock = clock
        self._conv = _ProbeObservations(settings, self.health)
        self.rx = RelaySocket(self.path)
        self._pending: list[Observation] = []
        self._wake = asyncio.Event()
        self.frames = 0
        self.relay: RelayStatus | None = None  # the relay's latest status
        self._heard: float | None = None  # monotonic time of the relay's latest datagram
        self._since = time.monotonic()
        self._relay_drops_before: dict[str, int] = {}  # relay-side drops of earlier relay instances
        self._conn_fd: int | None = None

    def node_probes(self, probes: list[NodeProbe]) -> None:
        """Probe requests sensor nodes heard (``NodeIngest.on_wifi``; docs/wifi.md, "Several receivers")."""
        self._conv.node_probes(probes)

    def _on_accept(self) -> None:
        """A relay connects (at start, after a restart of either side): read from it from now on."""
        loop = asyncio.get_running_loop()
        if self._conn_fd is not None:
            loop.remove_reader(self._conn_fd)
            self._conn_fd = None
        conn = self.rx.accept()
        if conn is not None:
            self._conn_fd = conn.fileno()
            loop.add_reader(self._conn_fd, self._on_readable)
            self._heard = time.monotonic()
            self._wake.set()

    def _on_readable(self) -> None:
        """Drain up to batch_max messages; decode frames; note the relay's status; wake the consumer."""
        convert = self._conv.convert
        pending = self._pending
        limit = self.settings.max_pending
        n = 0
        got = False
        for item in self.rx.read(self.settings.batch_max):
            got = True
            if type(item) is not CapturedFrame:
                assert isinstance(item, RelayStatus)
                self._relay_status(item)
                continue
            n += 1
            obs = convert(item.ts, item.linktype, item.data, item.channel)
            if obs is None or obs.link is None:
                continue  # dropped, or held until its group is decided (then from take_ready)
            if len(pending) >= limit:
                self.health.drop("backpressure")
                continue
            pending.append(obs)
        if got:
            self._heard = time.monotonic()
        if not self.rx.connected and self._conn_fd is not None:  # the relay went away
            asyncio.get_running_loop().remove_reader(self._conn_fd)
            self._conn_fd = None
            self._wake.set()
        if self._conv.ready:
            self._release(self._conv.take_ready())
        self.frames += n
        if pending or got:
            self._wake.set()

    def _relay_status(self, st: RelayStatus) -> None:
        prev = self.relay
        if prev is not None and prev.instance != st.instance:
            # the relay restarted: its counts start again; keep the earlier instance's drops
            self.health.recoveries += 1
            for k, v in prev.counts.items():
                self._relay_drops_before[k] = self._relay_drops_before.get(k, 0) + v
            log.info("wifi.relay_restarted", interface=st.interface)
        self.relay = st

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

    def _sync_relay_health(self) -> None:
        """Health from the relay's latest status and from how long it has been silent."""
        h = self.health
        d = h.detail
        now = time.monotonic()
        silent_s = now - (self._heard if self._heard is not None else self._since)
        st = self.relay
        if not self.rx.connected and self._heard is not None:
            h.state = "degraded"
            d["relay"] = f"disconnected {silent_s:.0f} s ago (is gateway-wifi-capture.service running?)"
        elif silent_s > self.settings.relay_silent_s:
            h.state = "degraded"
            d["relay"] = (
                f"silent for {silent_s:.0f} s (is gateway-wifi-capture.service running?)"
                if self._heard is not None
                else f"not heard yet ({silent_s:.0f} s; is gateway-wifi-capture.service running?)"
            )
        elif st is not None:
            d["relay"] = st.state
            h.state = "running" if st.state == "capturing" else "degraded"
        if st is not None:
            d["interface"] = st.interface
            d["hopping"] = st.hopping
            d["monitor"] = st.monitor
            d["channel"] = st.channel
            d["linktype"] = st.linktype
            d["kernel_filter"] = st.kernel_filter
            d["relay_received"] = st.counts.get("received", 0)
            for key in ("dropped_busy", "dropped_no_daemon", "truncated"):
                total = st.counts.get(key, 0) + self._relay_drops_before.get(key, 0)
                if total:
                    h.dropped[f"relay_{key.removeprefix('dropped_')}"] = total
        d["relay_restarts"] = h.recoveries
        d["frames"] = self.frames
        if self.rx.malformed:
            h.dropped["malformed.relay_message"] = self.rx.malformed

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        h = self.health
        h.detail["socket"] = str(self.path)
        try:
            self.rx.open()
        except OSError as e:
            h.state = "failed"
            h.detail["error"] = f"cannot bind the capture socket {self.path}: {e.strerror or e}"
            log.error("wifi.socket_failed", path=str(self.path), error=str(e.strerror or e))
            return
        assert self.rx.listener is not None
        fd = self.rx.listener.fileno()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._on_accept)
        self._since = time.monotonic()
        h.state = "degraded"
        h.detail["relay"] = "not heard yet"
        was_silent = announced = False
        try:
            while True:
                # wake at least once a second: held MACs must not wait for the next frame, and a
                # silent relay must show on the status page
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands as the
                # event is set (gh-86296), and this loop would then never stop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
                if self._conv.held:
                    self._release(self._conv.poll(self._clock()))
                self._sync_relay_health()
                silent = h.detail.get("relay", "").startswith(("silent", "not heard yet (", "disconnected"))
                if silent and not was_silent:
                    log.warning("wifi.relay_silent", detail=h.detail["relay"])
                elif not silent and self.relay is not None and (was_silent or not announced):
                    log.info("wifi.relay_heard", relay=h.detail["relay"], interface=self.relay.interface)
                    announced = True
                was_silent = silent
                batch, self._pending = self._pending, []
                if not batch:
                    continue
                h.observations += len(batch)
                h.last_observation_ts = batch[-1].ts
                self._conv.sync_health()
                yield batch
        finally:
            # shutdown: held frames are decided now; the consumer may not take another batch,
            # so they only count (a live source's last frames are as good as lost anyway)
            lost = len(self._conv.flush())
            if lost:
                h.detail["held_at_stop"] = lost
            loop.remove_reader(fd)
            if self._conn_fd is not None:
                loop.remove_reader(self._conn_fd)
                self._conn_fd = None
            self.rx.close()
            self._conv.sync_health()
            if h.state != "failed":
                h.state = "stopped"


class PcapReplaySource:
    """Replay a pcap/pcapng capture as if it were live (``wifi.pcap``, pace ``wifi.pcap_speed``).

    The file is read in a worker thread, ``chunk`` records at a time, so the loop never waits on
    the disk. A corrupt file ends the replay with ``health.state = "failed"`` and the offset.
    """

    @property
    def capabilities(self) -> Capabilities:
        """A recording (finite, waits rather than drops, its own time); takes nodes' reports."""
        return Capabilities(replay=True, finite=True, probe_sink=self.node_probes)

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

    def node_probes(self, probes: list[NodeProbe]) -> None:
        """Probe requests sensor nodes heard (``NodeIngest.on_wifi``; docs/wifi.md, "Several receivers")."""
        self._conv.node_probes(probes)

    def _account(self, batch: list[Observation]) -> list[Observation]:
        self.health.observations += len(batch)
        self.health.last_observation_ts = batch[-1].ts
        self._conv.sync_health()
        return batch


def make_wifi_source(settings: WifiSettings) -> WifiRelaySource | PcapReplaySource:
    """The configured Wi-Fi source: pcap replay when ``wifi.pcap`` is set, else the capture relay's frames."""
    if settings.pcap is not None:
        return PcapReplaySource(settings)
    return WifiRelaySource(settings)
