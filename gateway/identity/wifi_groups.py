"""Group rotating randomized Wi-Fi MACs that are probably one device, online (pure; time is an argument).

What the daemon and ``gateway decode pcap --grouping stream`` use. It runs the same two stages as the
whole-capture grouping (:mod:`gateway.identity.wifi_chains`), frame by frame, deciding with what
has been heard so far:

1. **within a burst**: iPhones on iOS 16 draw a new MAC for every channel of a scan burst. A new
   MAC that starts within ``burst_gap_s`` of the last frame of an open burst of its fingerprint
   family joins that burst when the evidence says so (RSSI, sequence number, fingerprint; odds
   learned per family - a family that keeps one MAC per burst learns that it does not change MAC
   within one, so another phone of the model bursting in the same second stays another phone);
2. **across bursts**: a new burst continues the device track it fits best
   (:class:`~gateway.identity.wifi_links.Tracker`: timing against the population's and the track's
   own schedule, sequence continuation or restart, RSSI against the track's level, fingerprint,
   the networks its directed probes name), if that is at least ``min_p`` likely against every
   other track and against "a new device" (the family's arrival rate, learned, at most
   ``arrivals``); else it starts a track of its own.

What is learned per family as frames come (a family's phones behave alike): the share of MAC
changes that continue the sequence number, the share within a burst, the arrival rate (from the
chance each burst starts a device, decayed over ``learn_s``), and how common each network name is.

:meth:`WifiGrouper.offer` can **hold** a new burst's frames until its decision is due: at most
``max_delay_s`` after its first frame (``wifi.group_hold_s``, daemon default 0: decide at once -
a held probe reaches the localizer late; ``decode pcap --grouping stream`` 30 s), and in any case
once the burst is over (``decide_after_s``) - by then its mean RSSI and the networks it probed for
are known. A new burst of the same family decides every held one first (it may continue them).
Held frames come back in :attr:`WifiGrouper.ready` as ``(item, group id)``.

Group ids are counters with a caller-chosen prefix, never derived from a MAC. State is bounded:
MACs quiet for ``forget_s`` are dropped (:meth:`WifiGrouper.expire`, run every minute of frame
time), tracks silent for ``max_gap_s`` leave the candidate lists, the learned tables are capped.
Globally administered (public) MACs are their own group.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from gateway.identity.wifi_links import (
    SEQ_MOD,
    LinkParams,
    Mac,
    TimingTable,
    Track,
    Tracker,
    evidence_score,
    in_burst_pos,
)
from gateway.identity.wifi_locate import BurstLocator
from gateway.identity.wifi_presence import FOLLOWED_MIN, PresenceModel, PresenceParams
from gateway.models import PresenceMark

__all__ = ["DEFAULT_GROUP_HOLD_S", "GroupParams", "WifiGrouper"]

DEFAULT_GROUP_HOLD_S = 30.0  # longest hold of a new burst's frames (frame time) in offer()
_MAX_SSIDS = 100_000  # network names remembered for their rarity (then the table starts again)


@dataclass(slots=True, frozen=True)
class GroupParams:
    link: LinkParams = field(default_factory=LinkParams)
    min_p: float = 0.5  # a burst continues the best track when that is at least this likely
    arrivals: float = 1.0 / 300.0  # most new devices of one family per second (learned below it)
    min_arrivals: float = 1.0 / 7200.0  # least (a family seen once is not a store of one phone)
    learn_s: float = 1800.0  # time over which learned arrival rates and shares fade
    mac_burst_gap_s: float = 5.0  # frames of one MAC further apart are different bursts
    forget_s: float = 900.0  # drop MACs quiet this long
    max_delay_s: float = DEFAULT_GROUP_HOLD_S  # longest hold of a new burst's frames until decided
    decide_after_s: float = 1.0  # a held burst is decided once it has been silent this long
    max_held_behind: int = 100_000  # frames offered while holding before every held burst is decided
    presence: PresenceParams = field(default_factory=PresenceParams)  # what a burst stands for (the count)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_p < 1.0:
            raise ValueError(f"GroupParams.min_p must be between 0 and 1, got {self.min_p!r}")
        for name in ("arrivals", "min_arrivals", "learn_s", "mac_burst_gap_s", "forget_s", "decide_after_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"GroupParams.{name} must be a positive number, got {v!r}")
        if not (math.isfinite(self.max_delay_s) and 0.0 <= self.max_delay_s < self.forget_s):
            raise ValueError(f"GroupParams.max_delay_s must be within [0, forget_s), got {self.max_delay_s!r}")


@dataclass(slots=True, eq=False)
class _Unit:
    """One scan burst of one device: its MACs, summarised as one :class:`Mac` (what stage 2 links)."""

    agg: Mac
    family: str
    track: Track | None = None
    held: list[tuple[float, object]] | None = None  # (ts, item) of held frames, until decided
    due: float = math.inf
    p_start: float = 1.0
    mark: PresenceMark | None = None  # what the burst stands for, until given to one of its frames
    extra: float = 0.0  # MACs joined to it, each by its chance of starting another burst (the count)


@dataclass(slots=True, eq=False)
class _MacState:
    mac: Mac
    unit: _Unit
    randomized: bool
    visit_ts: float = 0.0  # a public MAC: its visit's first burst ...
    visit_silences: int = 0  # ... and the silences since (how many, how long in all)
    visit_silence_s: float = 0.0
    mark: PresenceMark | None = None  # a later burst of the MAC: what it stands for, until given to a frame


class _Learned:
    """Per-family statistics, fading over ``learn_s`` of frame time (exponential)."""

    __slots__ = ("in_burst", "in_n", "links", "seq_cont", "starts", "starts_ts", "units")

    def __init__(self) -> None:
        self.starts = 0.0  # decayed sum of P(start) ...
        self.starts_ts = -math.inf  # ... as of this time
        self.in_burst = 1.0  # decayed sums for the in-burst share (prior 0.5: 1 of 2)
        self.in_n = 2.0
        self.seq_cont = 1.0  # decayed sums for the sequence continuation share (prior 0.5)
        self.links = 2.0
        self.units = 0.0  # decayed count of bursts started


class WifiGrouper:
    """Online grouping: :meth:`offer` (holding) or :meth:`observe` (at once) per probe request."""

    def __init__(
        self, params: GroupParams | None = None, *, prefix: str = "w", locator: BurstLocator | None = None
    ) -> None:
        self.params = params or GroupParams()
        p = self.params
        self._prefix = prefix
        self._next = 1
        self._link = p.link
        self._cross = replace(p.link, in_burst_share=0.01)  # stage 2 links bursts: never within one
        self._tracker = Tracker(self._cross, TimingTable(self._cross), min_p=p.min_p, default_arrivals=p.arrivals)
        self._tracker.locator = locator  # several receivers: bursts placed in metres (wifi_locate.py)
        self._macs: dict[str, _MacState] = {}
        self._open: dict[str, list[_Unit]] = {}  # family -> bursts still open (stage 1 candidates)
        self._learned: dict[str, _Learned] = {}
        self._fp_frames: dict[str, float] = {}
        self._fam_frames: dict[str, float] = {}
        self._fp_shares_view = _FpShares(self._fp_frames, self._fam_frames)
        self._ssid_n: dict[int, int] = {}
        self._directed = 0
        self._held: list[tuple[float, int, _Unit]] = []  # (due, n, unit) heap of undecided bursts
        self._held_by_family: dict[str, list[_Unit]] = {}
        self._n_held = 0
        self._heap_n = 0
        self._behind = 0  # frames offered since the current holding period started
        self._hold_start_ts = math.inf
        self._last_expire = -math.inf
        self.ready: list[tuple[object, str]] = []  # held frames decided: (item, group id), in order per MAC
        # the count (wifi_presence.py): one frame of every heard burst gets what the burst stands for
        self.presence = PresenceModel(p.presence)
        self._tracker.blind = True
        self._tracker.on_drop = self._track_done
        self.on_mark: Callable[[object, PresenceMark], None] | None = None  # (item, mark), before its group
        self.marks = 0  # marks given
        self.linked = 0  # bursts that continued a track
        self.created = 0  # groups started
        self.held_macs = 0
        self.held_frames = 0

    def __len__(self) -> int:
        """Groups with a MAC not yet forgotten."""
        return len({id(s.unit.track) for s in self._macs.values() if s.unit.track is not None})

    @property
    def holding(self) -> bool:
        """Whether any burst's frames are held (its track undecided)."""
        return self._n_held > 0

    # -- frames -------------------------------------------------------------------------------

    def observe(
        self,
        mac: str,
        randomized: bool,
        fingerprint: str,
        seq: int,
        ts: float,
        rssi: float | None,
        ssid: bytes | None = None,
        levels: Mapping[str, float] | None = None,
    ) -> str:
        """Group id of one probe request, decided at once (``levels``: see :meth:`offer`)."""
        gid = self._frame(mac, randomized, fingerprint, seq, ts, rssi, ssid, None, hold=False, levels=levels)
        assert gid is not None
        return gid

    def offer(
        self,
        mac: str,
        randomized: bool,
        fingerprint: str,
        seq: int,
        ts: float,
        rssi: float | None,
        item: object,
        ssid: bytes | None = None,
        levels: Mapping[str, float] | None = None,
    ) -> str | None:
        """Group id of one probe request, or None when it is held: its burst's track is not decided
        yet. A held frame comes back as ``(item, group id)`` in :attr:`ready` once decided - at the
        latest ``max_delay_s`` (frame time) after its burst's first frame: on a later :meth:`offer`
        or :meth:`poll`, or on :meth:`flush` at the end of input. Frames of one MAC keep their order.

        ``levels``: where nodes heard the same frame too, each node's RSSI (receiver id -> dBm;
        ``rssi`` is the capture radio's, None when only nodes heard it): a burst's levels there
        are followed across bursts as the shopper walks (wifi_links.Tracker.pos_score).
        """
        hold = self.params.max_delay_s > 0
        return self._frame(mac, randomized, fingerprint, seq, ts, rssi, ssid, item, hold=hold, levels=levels)

    def poll(self, now: float) -> None:
        """Decide every held burst whose time is up at ``now`` (frame time); results go to :attr:`ready`:
        silent for ``decide_after_s`` (its burst is over), or ``max_delay_s`` after its first frame."""
        heap = self._held
        p = self.params
        while heap and heap[0][0] <= now:
            u = heapq.heappop(heap)[2]
            if u.held is None:
                continue
            due = min(u.agg.first_ts + p.max_delay_s, u.agg.last_ts + p.decide_after_s)
            if due > now:  # it spoke again meanwhile: its burst goes on
                u.due = due
                self._heap_n += 1
                heapq.heappush(heap, (due, self._heap_n, u))
                continue
            self._decide(u)

    def flush_into_ready(self) -> None:
        """End of input: decide every held burst now (results in :attr:`ready`)."""
        pending = sorted(self._held, key=lambda e: e[2].agg.first_ts)
        self._held.clear()
        for _due, _n, u in pending:
            if u.held is not None:
                self._decide(u)

    def flush(self) -> list[tuple[object, str]]:
        """End of input: decide every held burst now; returns (and clears) :attr:`ready`."""
        self.flush_into_ready()
        out = list(self.ready)
        self.ready.clear()  # in place: callers may keep a reference to the list
        return out

    def _frame(
        self,
        mac: str,
        randomized: bool,
        fp: str,
        seq: int,
        ts: float,
        rssi: float | None,
        ssid: bytes | None,
        item: object,
        *,
        hold: bool,
        levels: Mapping[str, float] | None = None,
    ) -> str | None:
        if self._n_held:
            self._behind += 1
            if self._behind > self.params.max_held_behind or ts < self._hold_start_ts - self.params.max_delay_s:
                # a stalled clock (timeless records) or one stepping back (concatenated captures)
                # would never make a hold due: decide them all now rather than buffer without end
                self.flush_into_ready()
            elif ts >= self._held[0][0]:
                self.poll(ts)
        if ts - self._last_expire > 60.0:
            self.expire(ts)
        fam = fp[:8]
        self._fp_frames[fp] = self._fp_frames.get(fp, 0.0) + 1.0
        self._fam_frames[fam] = self._fam_frames.get(fam, 0.0) + 1.0
        st = self._macs.get(mac)
        h = hash(ssid) if ssid else None
        if st is None:
            st = self._new_mac(mac, randomized, fp, fam, seq, ts, rssi, h, levels)
        else:
            if levels is not None and not st.randomized:
                st.mac.public_levels(ts, levels, self.params.mac_burst_gap_s, self._tracker.node_miss)
            self._learn_frame(st, seq, ts, rssi, h)
            if levels is not None:
                self._learn_levels(st, levels)
        u = st.unit
        if u.held is not None:
            if not hold:
                self._decide(u)
            else:
                u.held.append((ts, item))
                self.held_frames += 1
                return None
        if item is not None:
            if st.mark is not None:
                self._give(item, st.mark)
                st.mark = None
            if u.mark is not None:
                self._give(item, u.mark)
                u.mark = None
        assert u.track is not None
        return u.track.gid

    def _give(self, item: object, mark: PresenceMark) -> None:
        self.marks += 1
        if self.on_mark is not None:
            self.on_mark(item, mark)

    def _new_mac(
        self,
        mac: str,
        randomized: bool,
        fp: str,
        fam: str,
        seq: int,
        ts: float,
        rssi: float | None,
        h: int | None,
        levels: Mapping[str, float] | None = None,
    ) -> _MacState:
        m = Mac(0, mac, fp, ts, seq, ts, seq)
        if rssi is not None:
            m.first_sum = m.last_sum = rssi
            m.first_n = m.last_n = 1
        if levels is not None:
            m.add_levels(levels)
        if h is not None:
            m.ssids = {h}
        if not randomized:  # a public MAC: a device of its own
            if levels is not None:
                m.public_levels(ts, levels, self.params.mac_burst_gap_s, self._tracker.node_miss)
            st = self._macs[mac] = _MacState(m, _Unit(m, fam, Track(self._gid(), m, None)), False, ts)
            self.presence.visit_open(mac, fam, ts)  # (fades the model to ts)
            st.mark = self.presence.mark(fam, public=True, own=(0.0, 0), so_far=True)
            return st
        # stage 1: does it continue a burst still open in its family?
        found = self._in_burst(m, fam, ts)
        if found is not None:
            u = found
        else:
            # stage 2 (now, or when its hold is up): held bursts of the family go first
            for other in self._held_by_family.pop(fam, []):
                if other.held is not None:
                    self._decide(other)
            agg = Mac(0, mac, fp, ts, seq, ts, seq, first_sum=m.first_sum, first_n=m.first_n)
            agg.last_sum, agg.last_n, agg.ssids = m.last_sum, m.last_n, set(m.ssids) if m.ssids else None
            agg.add_pos(m)
            u = _Unit(agg, fam)
            self._open.setdefault(fam, []).append(u)
            p = self.params
            le = self._learned.setdefault(fam, _Learned())
            self._decay(le, ts)
            le.units += 1.0
            if p.max_delay_s > 0.0:
                if not self._n_held:  # a holding period starts
                    self._behind = 0
                    self._hold_start_ts = ts
                u.held = []
                u.due = ts + min(p.max_delay_s, p.decide_after_s)
                self._heap_n += 1
                heapq.heappush(self._held, (u.due, self._heap_n, u))
                self._held_by_family.setdefault(fam, []).append(u)
                self._n_held += 1
                self.held_macs += 1
            else:
                self._assign(u)
        st = self._macs[mac] = _MacState(m, u, True)
        return st

    def _in_burst(self, m: Mac, fam: str, ts: float) -> _Unit | None:
        lp = self._link
        le = self._learned.setdefault(fam, _Learned())
        units = self._open.get(fam)
        if units:
            units[:] = [u for u in units if ts - u.agg.last_ts <= lp.burst_gap_s]
        if not units:
            # no burst of its family open: surely not within one - it counts in the family's
            # in-burst share as a 0 (the share is of all the family's new MACs, as the whole
            # capture's EM has it; counting only those with a burst open made a family of one
            # MAC per burst learn ~0.5 - its phones' chance meetings - and join them)
            self._decay(le, ts)
            le.in_n += 1.0
            return None
        share = min(0.95, max(0.01, le.in_burst / le.in_n))
        self._decay(le, ts)
        rate = max(le.units / self.params.learn_s, 1e-3)  # the family's burst starts per second
        k = share / lp.burst_gap_s / rate
        best: _Unit | None = None
        best_e = 0.0
        tot = 1.0
        fp_share = self._fp_share(m.fingerprint)
        for u in units:
            gap = ts - u.agg.last_ts
            if gap <= 0.0:
                continue
            v = evidence_score(u.agg, m, gap, lp, fp_share, 0.05)
            if v == -math.inf:
                continue
            if m.pos and u.agg.pos:  # several receivers: one burst is one spot
                v += in_burst_pos(u.agg, m, lp, self._tracker.node_miss.share)
            e = math.exp(min(v, 50.0)) * k
            tot += e
            if e > best_e:
                best, best_e = u, e
        p_in = (tot - 1.0) / tot
        le.in_burst += p_in
        le.in_n += 1.0
        if best is not None and best_e / tot >= self.params.min_p:
            # the count: the MAC may still be another device's burst (1 / tot); counted so much
            if best.held is not None or best.track is None:
                best.extra += 1.0 / tot
            else:
                self.presence.at(ts)
                best.mark = _plus(best.mark, self.presence.mark(fam), 1.0 / tot)
            a = best.agg
            a.last_ts, a.last_seq = m.last_ts, m.last_seq
            if m.first_n:
                a.first_sum += m.first_sum
                a.first_n += m.first_n
                a.last_sum += m.first_sum
                a.last_n += m.first_n
            if m.ssids:
                a.ssids = (a.ssids or set()) | m.ssids
            if best.held is not None:  # its levels at nodes count while the burst is undecided
                a.add_pos(m)
            return best
        return None

    def _learn_frame(self, st: _MacState, seq: int, ts: float, rssi: float | None, h: int | None) -> None:
        m = st.mac
        dt = ts - m.last_ts
        if dt < 0.0:
            return
        new_burst = dt >= self.params.mac_burst_gap_s
        if new_burst:
            m.bursts += 1
            m.last_sum = 0.0
            m.last_n = 0
            step = (seq - m.last_seq) % SEQ_MOD
            if step < SEQ_MOD // 2 and dt <= self._link.max_gap_s:
                m.rate_adv += step
                m.rate_span += dt
                m.silences += 1
            self._burst_again(st, dt, ts)
        m.last_ts, m.last_seq = ts, seq
        m.frames += 1
        if rssi is not None:
            m.last_sum += rssi
            m.last_n += 1
            if m.bursts == 1:
                m.first_sum += rssi
                m.first_n += 1
        if h is not None:
            if m.ssids is None:
                m.ssids = {h}
            elif len(m.ssids) < 32:
                m.ssids.add(h)
        # the burst's summary follows its MACs (a one-MAC burst: the MAC itself)
        a = st.unit.agg
        if a is not m:
            a.last_ts, a.last_seq = ts, seq
            a.frames += 1
            if new_burst and a.mac == m.mac:
                a.bursts = m.bursts
            if rssi is not None:
                if new_burst:
                    a.last_sum, a.last_n = 0.0, 0
                a.last_sum += rssi
                a.last_n += 1
                if st.unit.held is not None:  # the first burst still counts while undecided
                    a.first_sum += rssi
                    a.first_n += 1
            if h is not None:
                a.ssids = (a.ssids or set()) | {h}
            a.rate_adv, a.rate_span, a.silences = m.rate_adv, m.rate_span, m.silences

    def add_levels(self, mac: str, levels: Mapping[str, float]) -> None:
        """Levels at nodes of a frame of ``mac`` already offered (a node's report came after the
        capture's frame): they count while its burst's decision is held."""
        st = self._macs.get(mac)
        if st is not None and st.randomized:
            self._learn_levels(st, levels)

    def _learn_levels(self, st: _MacState, levels: Mapping[str, float]) -> None:
        """A frame heard at nodes: its MAC's first burst, and its burst's while undecided."""
        m = st.mac
        if m.bursts == 1:
            m.add_levels(levels)
        a = st.unit.agg
        if a is not m and st.unit.held is not None and m.bursts == 1:
            a.add_levels(levels)

    def _track_done(self, t: Track) -> None:
        """A track silent for good: followed with confidence all along, it was one visit."""
        if t.macs >= FOLLOWED_MIN and t.silences >= t.macs - 1:
            self.presence.visit(t.tail.fingerprint[:8], t.tail.last_ts - t.first_ts, t.tail.last_ts, public=False)

    def _burst_again(self, st: _MacState, dt: float, ts: float) -> None:
        """A MAC heard again after a silence: a burst of its own (and a silence of one device)."""
        pm = self.presence
        pm.at(ts)
        fam = st.unit.family
        if not st.randomized:
            if dt > pm.params.visit_gap_s:  # the visit was over: another starts
                pm.visit(fam, st.mac.last_ts - st.visit_ts, ts, key=st.mac.mac)
                st.visit_ts, st.visit_silences, st.visit_silence_s = ts, 0, 0.0
                pm.visit_open(st.mac.mac, fam, ts)
                st.mark = pm.mark(fam, public=True, own=(0.0, 0), so_far=True)
                return
            pm.silence(fam, dt, ts, public=True, own=(st.visit_silence_s, st.visit_silences))
            pm.visit_heard(st.mac.mac, ts)
            st.visit_silences += 1
            st.visit_silence_s += dt
            st.mark = pm.mark(fam, public=True, own=(st.visit_silence_s, st.visit_silences), so_far=True, follows=True)
            return
        tr = st.unit.track
        pm.silence(fam, dt, ts, own=(tr.silence_s, tr.silences) if tr is not None else (0.0, 0))
        if tr is not None:
            tr.silences += 1
            tr.silence_s += dt
        st.mark = pm.mark(fam, own=(tr.silence_s, tr.silences) if tr is not None else None, follows=True)

    # -- decisions ----------------------------------------------------------------------------

    def _decide(self, u: _Unit) -> None:
        held = u.held or []
        u.held = None
        self._n_held -= 1
        fam_list = self._held_by_family.get(u.family)
        if fam_list is not None and u in fam_list:
            fam_list.remove(u)
        self._assign(u)
        assert u.track is not None
        gid = u.track.gid
        add = self.ready.append
        for _ts, item in held:
            if u.mark is not None and item is not None:
                self._give(item, u.mark)
                u.mark = None
            add((item, gid))

    def _assign(self, u: _Unit) -> None:
        fam = u.family
        tr = self._tracker
        ts = u.agg.first_ts
        tr.arrivals[fam] = self._arrival_rate(fam, ts)
        le = self._learned.get(fam)
        if le is not None and le.links >= 5.0:
            tr.seq_continue[fam] = min(0.95, max(0.05, le.seq_cont / le.links))
        tr.ssid_share = self._ssid_shares_view
        tr.fp_shares = self._fp_shares_view
        track, p_new = tr.assign(u.agg, self._fp_share(u.agg.fingerprint), "")
        u.p_start = p_new
        pm = self.presence
        pm.at(ts)
        sure = tr.last_confidence >= pm.params.confident
        if sure:
            pm.silence(fam, tr.last_gap, ts, own=(track.silence_s, track.silences))
            track.silences += 1
            track.silence_s += tr.last_gap
        u.mark = pm.mark(fam, own=(track.silence_s, track.silences), follows=sure and track.tail_before is not None)
        if u.extra:
            u.mark = _plus(u.mark, pm.mark(fam), u.extra)
            u.extra = 0.0
        if track.tail_before is None:
            track.gid = self._gid()
        else:
            self.linked += 1
            self._learn_link(fam, track.tail_before, u.agg)
        u.track = track
        self._learn_start(fam, ts, p_new)
        if u.agg.ssids:
            self._directed += 1
            for s in u.agg.ssids:
                self._ssid_n[s] = self._ssid_n.get(s, 0) + 1
            if len(self._ssid_n) > _MAX_SSIDS:
                self._ssid_n.clear()
                self._directed = 0

    @property
    def _ssid_shares_view(self) -> _Shares:
        return _Shares(self._ssid_n, self._directed)

    def _gid(self) -> str:
        g = f"{self._prefix}{self._next}"
        self._next += 1
        self.created += 1
        return g

    def _fp_share(self, fp: str) -> float:
        fam = self._fam_frames.get(fp[:8], 0.0)
        return self._fp_frames.get(fp, 0.0) / fam if fam else 1.0

    def _decay(self, le: _Learned, ts: float) -> None:
        if le.starts_ts == -math.inf:
            le.starts_ts = ts
            return
        dt = ts - le.starts_ts
        if dt > 0.0:
            f = math.exp(-dt / self.params.learn_s)
            le.starts *= f
            le.units *= f
            le.in_burst = 1.0 + (le.in_burst - 1.0) * f
            le.in_n = 2.0 + (le.in_n - 2.0) * f
            le.seq_cont = 1.0 + (le.seq_cont - 1.0) * f
            le.links = 2.0 + (le.links - 2.0) * f
            le.starts_ts = ts

    def _arrival_rate(self, fam: str, ts: float) -> float:
        le = self._learned.setdefault(fam, _Learned())
        self._decay(le, ts)
        p = self.params
        return min(p.arrivals, max(p.min_arrivals, le.starts / p.learn_s))

    def _learn_start(self, fam: str, ts: float, p_new: float) -> None:
        le = self._learned.setdefault(fam, _Learned())
        self._decay(le, ts)
        le.starts += p_new

    def _learn_link(self, fam: str, a: Mac, b: Mac) -> None:
        le = self._learned.setdefault(fam, _Learned())
        lp = self._link
        gap = b.first_ts - a.last_ts
        dseq = (b.first_seq - a.last_seq) % SEQ_MOD
        le.links += 1.0
        if 0 < dseq <= lp.seq_window + lp.seq_rate * gap + (a.rate * gap if a.rate else 0.0):
            le.seq_cont += 1.0

    def expire(self, now: float) -> int:
        """Forget MACs quiet for ``forget_s``; returns how many were dropped."""
        self._last_expire = now
        cutoff = now - self.params.forget_s
        stale = [k for k, s in self._macs.items() if s.mac.last_ts < cutoff and s.unit.held is None]
        for k in stale:
            st = self._macs.pop(k)
            if not st.randomized:  # its visit is over
                self.presence.visit(st.unit.family, st.mac.last_ts - st.visit_ts, now, key=k)
        self._tracker.prune(now)
        for fam in list(self._open):
            keep = [u for u in self._open[fam] if now - u.agg.last_ts <= self._link.burst_gap_s]
            if keep:
                self._open[fam] = keep
            else:
                del self._open[fam]
        return len(stale)


def _plus(mark: PresenceMark | None, more: PresenceMark, f: float) -> PresenceMark:
    """``mark`` and ``f`` times ``more`` (a share of another burst; the relative errors are the learnt
    parameters', alike for both)."""
    if mark is None:
        return PresenceMark(more.presence_s * f, more.rel_sd, more.arrivals * f, more.arrivals_rel_sd)
    return PresenceMark(
        mark.presence_s + more.presence_s * f,
        mark.rel_sd,
        mark.arrivals + more.arrivals * f,
        mark.arrivals_rel_sd,
        mark.follows,
    )


class _Shares(dict[int, float]):
    """A network's share of directed bursts, computed on lookup (the counts change every burst)."""

    def __init__(self, counts: dict[int, int], total: int) -> None:
        super().__init__()
        self._counts = counts
        self._total = max(total, 1)

    def get(self, key: int, default: float | None = None) -> float:  # type: ignore[override]
        n = self._counts.get(key)
        return (default if default is not None else 1.0) if n is None else n / self._total


class _FpShares(dict[str, float]):
    """A fingerprint's share of its family's frames, computed on lookup (the counts change every frame)."""

    def __init__(self, fp_frames: dict[str, float], fam_frames: dict[str, float]) -> None:
        super().__init__()
        self._fp = fp_frames
        self._fam = fam_frames

    def get(self, key: str, default: float | None = None) -> float:  # type: ignore[override]
        fam = self._fam.get(key[:8], 0.0)
        return self._fp.get(key, 0.0) / fam if fam else (default if default is not None else 0.0)
