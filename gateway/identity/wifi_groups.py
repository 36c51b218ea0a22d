"""Group rotating randomized Wi-Fi MACs that are probably one device (pure; time is an argument).

A phone changes its random MAC every few minutes, but keeps its driver (same probe-request
fingerprint) and usually keeps counting 802.11 sequence numbers (12 bits, wrapping at 4096) across
the change. When a randomized MAC we have not seen appears, we look for a group that

* has the same fingerprint,
* went quiet shortly before: at least ``min_gap_s`` (a MAC changes between probe bursts) and
  ``early_frac`` of the group's own learned burst interval (a device whose next burst is not due
  yet has not rotated: it is still talking on its old MAC), at most ``gap_factor`` times that
  interval (and ``max_gap_s``),
* is continued by the new sequence number: ``(seq_new - seq_last) mod 4096`` close to the advance
  expected from the group's learned sequence rate (frames sent between bursts use the counter too),
* sounds alike (RSSI close to the group's smoothed RSSI: same place, same transmitter),

and pick the best by a normalised squared error (sequence, RSSI) - but only when it is clearly the
best: if the second-best group scores within ``min_margin`` of it, either device could have become
this MAC, and the MAC starts a group of its own (a split costs one group; a wrong merge makes a whole
group impure). Otherwise too the MAC starts a new group. Globally administered (public) MACs are
their own group.

A new link is on probation during the new MAC's first burst: when the mean RSSI of its frames so far
is ``trial_z`` spreads away from the group's RSSI before the link (the link was decided on one
frame), the link is rejected - the group gets its state back and the MAC is matched again.

A wrong link shows itself when the MAC it retired speaks again (a device does not go back to a MAC
it left): the link is then undone - the retired MAC gets its group back and the newer MAC is
matched again without that group - so such a mistake costs a couple of frames, not a group.

:meth:`WifiGrouper.offer` (what ``gateway decode pcap`` and the daemon sources use) goes further:
the frames of a new MAC with candidates are held until every candidate's old MAC has had time to
speak again (``confirm_factor`` burst intervals; at once if all have already), at most
``max_delay_s``; a group whose old MAC spoke meanwhile is then no candidate, so a device that did
not rotate does not get a stranger's frames at all. :meth:`observe` decides at once.

A hopping capture misses many bursts: a silence of several burst intervals is learned as that
many missed bursts (``fold_at``), so a group's interval stays its device's own.

Group ids are counters with a caller-chosen prefix, never derived from a MAC, so they can be
printed; they feed ``Observation.link`` and the pseudonym stage. State is bounded: MACs and groups
quiet for ``forget_s`` are dropped (:meth:`WifiGrouper.expire`, also run from :meth:`observe`).
Signals after Vanhoef et al., "Why MAC Address Randomization is not Enough" (AsiaCCS 2016) and
Martin et al., "A Study of MAC Address Randomization in Mobile Devices" (PETS 2017).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

__all__ = ["DEFAULT_GROUP_HOLD_S", "GroupParams", "WifiGrouper"]

SEQ_MOD = 4096
DEFAULT_GROUP_HOLD_S = 30.0  # longest hold of a new MAC's frames (frame time) in offer()


@dataclass(slots=True, frozen=True)
class GroupParams:
    max_gap_s: float = 240.0  # longest silence between the old MAC's last and the new MAC's first frame
    seq_rate: float = 1.5  # sequence numbers per second of silence, until a group has learned its own
    seq_slack: float = 16.0  # spread of the sequence-number advance: slack + spread * expected advance
    seq_spread: float = 0.2
    rssi_sigma_db: float = 6.5  # spread of a device's RSSI between bursts
    max_err: float = 3.0  # largest normalised error (sequence, RSSI) of an acceptable continuation
    min_gap_s: float = 2.0  # a MAC changes between probe bursts, not within one
    gap_factor: float = 5.0  # longest silence, in the group's own burst intervals (missed bursts)
    early_frac: float = 0.4  # shortest silence, in the group's burst intervals (its next burst is not due)
    min_margin: float = 0.1  # required score gap between the best and the second-best candidate
    burst_gap_s: float = 5.0  # frames further apart than this belong to different probe bursts
    forget_s: float = 900.0  # drop groups quiet this long
    rssi_alpha: float = 0.4  # smoothing of the group's RSSI
    trial_z: float = 2.5  # a link is undone when its MAC's first-burst mean RSSI is this many spreads off
    trial_frame_db: float = 6.0  # spread of one frame's RSSI around the device's level
    trial_ref_db: float = 3.0  # spread of the group's RSSI (walk since its last burst, smoothing)
    max_delay_s: float = DEFAULT_GROUP_HOLD_S  # longest hold of a new MAC's frames until its link is decided
    fold_at: float = 1.7  # a silence this many intervals long counts as several missed bursts
    confirm_factor: float = 1.4  # a candidate's old MAC is gone once silent this many burst intervals
    max_held_behind: int = 100_000  # frames offered while holding before every held MAC is decided anyway


@dataclass(slots=True, eq=False)
class _Mac:
    """One MAC address as heard: the group it belongs to and its own latest frame."""

    group: _Group
    first_ts: float
    first_seq: int
    last_ts: float
    last_seq: int
    trial: _Trial | None = None  # set while the link that gave this MAC its group is on probation
    held: _Held | None = None  # set while the MAC's link is undecided (its frames are held)


@dataclass(slots=True, eq=False)
class _Held:
    """A new MAC whose link waits for evidence: its frames so far, and when to decide at the latest."""

    mac: str
    fingerprint: str
    due: float
    frames: list[tuple[int, float, float | None, object]]
    cands: list[_Group]  # the groups it could continue at its first frame (the only ones it can)


@dataclass(slots=True, eq=False)
class _Trial:
    """What a group was before a new MAC was linked to it, and the MAC's evidence so far."""

    tail: _Mac | None
    prev: _Mac | None
    rssi: float | None
    last_ts: float
    seq_rate: float | None
    interval: float | None
    rssi_sum: float = 0.0
    rssi_n: int = 0


@dataclass(slots=True, eq=False)
class _Group:
    gid: str
    fingerprint: str
    tail: _Mac | None = None  # the MAC the device uses now: new MACs continue from it
    prev: _Mac | None = None  # the MAC before ``tail`` (to undo a wrong link)
    rssi: float | None = None
    last_ts: float = 0.0
    seq_rate: float | None = None  # learned sequence numbers per second between bursts
    interval: float | None = None  # learned time between probe bursts
    macs: int = 0
    frames: int = 0
    dormant: bool = False  # silent longer than max_gap_s: off the candidate lists until it speaks


def _fold(dt: float, iv: float, fold_at: float) -> float:
    """A silence between two heard bursts, as one burst interval: a capture hopping over channels
    misses many bursts, and ``dt`` is then a multiple of the device's interval, not a longer one."""
    if dt <= fold_at * iv:
        return dt
    return dt / round(dt / iv)


def _first_ts(m: _Mac) -> float:
    return m.first_ts


_NO_GROUP = _Group("", "")  # a held MAC's group until its link is decided


class WifiGrouper:
    """Online grouping: :meth:`observe` returns the group id of each frame as it arrives."""

    def __init__(self, params: GroupParams | None = None, *, prefix: str = "w") -> None:
        self.params = params or GroupParams()
        self._burst_gap_s = self.params.burst_gap_s
        self._alpha = self.params.rssi_alpha
        self._prefix = prefix
        self._next = 1
        self._by_mac: dict[str, _Mac] = {}
        self._by_fp: dict[str, list[_Group]] = {}
        self._last_expire = float("-inf")
        self.linked = 0  # new MACs attached to an existing group
        self.unlinked = 0  # links undone
        self.created = 0
        self._delay = self.params.max_delay_s
        self._fold_at = self.params.fold_at
        # MACs whose link is undecided (held frames), by when to decide: (due, first_ts, n, mac);
        # entries of MACs decided meanwhile by observe() are skipped when they come up
        self._held: list[tuple[float, float, int, _Mac]] = []
        self._n_held = 0
        # bounds on what callers buffer behind a held frame, whatever the capture's clock does: a
        # holding period ends after max_held_behind frames, or when time steps back past its start
        self._behind = 0
        self._hold_start_ts = math.inf
        self._next_due = math.inf
        self._next_event = -math.inf  # min(_next_due, next expiry): one test per frame in offer()
        self.ready: list[tuple[object, str]] = []  # held frames decided: (item, group id), in order per MAC
        self.held_macs = 0
        self.held_frames = 0

    def __len__(self) -> int:
        return len({id(m.group) for m in self._by_mac.values() if m.held is None})

    def _new_group(self, fp: str, randomized: bool) -> _Group:
        g = _Group(f"{self._prefix}{self._next}", fp)
        self._next += 1
        self.created += 1
        if randomized:
            self._by_fp.setdefault(fp, []).append(g)
        return g

    def _wake(self, g: _Group) -> None:
        """A group taken off the candidate lists for its silence speaks (or gets a MAC): list it again."""
        if g.dormant:
            g.dormant = False
            self._by_fp.setdefault(g.fingerprint, []).append(g)

    def _new_burst(self, g: _Group, last_seq: int, seq: int, dt: float) -> None:
        """The group's MAC speaks again after ``dt`` s of silence: learn its sequence rate and burst
        interval (a silence of several intervals counts as missed bursts, see :func:`_fold`)."""
        self._wake(g)
        rate = ((seq - last_seq) % SEQ_MOD) / dt
        sr = g.seq_rate
        g.seq_rate = rate if sr is None else sr + 0.3 * (rate - sr)
        iv = g.interval
        g.interval = dt if iv is None else iv + 0.3 * (_fold(dt, iv, self._fold_at) - iv)

    def _attach(self, m: _Mac, g: _Group) -> None:
        self._wake(g)  # a held MAC decided for a group that went dormant meanwhile
        if g.tail is not None:
            self.linked += 1
        m.group = g
        g.prev = g.tail
        g.tail = m
        g.macs += 1

    def observe(self, mac: str, randomized: bool, fingerprint: str, seq: int, ts: float, rssi: float | None) -> str:
        """Group id of one probe request from ``mac`` at time ``ts``, decided at once."""
        if ts - self._last_expire > 60.0:
            self.expire(ts)
        m = self._by_mac.get(mac)
        if m is None:
            m = self._start(mac, randomized, fingerprint, seq, ts, rssi)
        elif m.held is not None:  # mixed use of offer() and observe(): decide now
            self._decide(m, m.held)
        return self._frame(m, randomized, fingerprint, seq, ts, rssi)

    def offer(
        self, mac: str, randomized: bool, fingerprint: str, seq: int, ts: float, rssi: float | None, item: object
    ) -> str | None:
        """Group id of one probe request, or None when it is held: its MAC's link is not decided yet.

        A held frame comes back as ``(item, group id)`` in :attr:`ready` once decided - at the latest
        ``max_delay_s`` (frame time) after its MAC's first frame: on a later :meth:`offer` or
        :meth:`poll`, or on :meth:`flush` at the end of input. Frames of one MAC are released in order.
        """
        if self._n_held:
            self._behind += 1
            if self._behind > self.params.max_held_behind or ts < self._hold_start_ts - self._delay:
                # a stalled clock (timeless records) or one stepping back (concatenated captures)
                # would never make a hold due: decide them all now rather than buffer without end
                self.flush_into_ready()
        if ts >= self._next_event:  # a held MAC is due, or the periodic expiry
            if ts >= self._next_due:
                self.poll(ts)
            if ts - self._last_expire > 60.0:
                self.expire(ts)
        m = self._by_mac.get(mac)
        if m is None:
            if randomized and self._delay > 0.0:
                cands: list[_Group] = []
                best = self._match(fingerprint, seq, ts, rssi, None, cands)
                due = self._hold_until(ts, cands) if cands else None
                if due is not None and due <= ts:
                    # every candidate's old MAC has had its chance to speak again: decide now
                    g = best if best is not None else self._new_group(fingerprint, True)
                    m = _Mac(g, ts, seq, ts, seq)
                    if best is not None:
                        self._link(m, g)
                    else:
                        self._attach(m, g)
                    self._by_mac[mac] = m
                    return self._frame(m, randomized, fingerprint, seq, ts, rssi)
                if due is not None:
                    m = _Mac(_NO_GROUP, ts, seq, ts, seq)
                    m.held = _Held(mac, fingerprint, due, [(seq, ts, rssi, item)], cands)
                    self._by_mac[mac] = m
                    heapq.heappush(self._held, (due, ts, self.held_macs, m))
                    if not self._n_held:  # a holding period starts
                        self._behind = 0
                        self._hold_start_ts = ts
                    self._n_held += 1
                    if due < self._next_due:
                        self._next_due = due
                        if due < self._next_event:
                            self._next_event = due
                    self.held_macs += 1
                    self.held_frames += 1
                    return None
                # no candidate at all: a group of its own (no second search)
                g = self._new_group(fingerprint, True)
                m = _Mac(g, ts, seq, ts, seq)
                self._attach(m, g)
                self._by_mac[mac] = m
            else:
                m = self._start(mac, randomized, fingerprint, seq, ts, rssi)
        else:
            h2 = m.held
            if h2 is not None:
                h2.frames.append((seq, ts, rssi, item))
                self.held_frames += 1
                if ts >= m.last_ts:
                    m.last_ts = ts
                    m.last_seq = seq
                return None
            g = m.group
            last = m.last_ts
            if m.trial is None and g.tail is m and ts >= last:
                # most frames: a settled MAC's (what _frame does, inlined)
                dt = ts - last
                if dt >= self._burst_gap_s:  # once per burst, not per frame: a call is fine
                    self._new_burst(g, m.last_seq, seq, dt)
                m.last_ts = ts
                m.last_seq = seq
                if ts >= g.last_ts:
                    g.last_ts = ts
                if rssi is not None:
                    r = g.rssi
                    g.rssi = rssi if r is None else r + self._alpha * (rssi - r)
                g.frames += 1
                return g.gid
        return self._frame(m, randomized, fingerprint, seq, ts, rssi)

    @property
    def holding(self) -> bool:
        """Whether any MAC's frames are held (its link undecided)."""
        return self._n_held > 0

    def poll(self, now: float) -> None:
        """Decide every held MAC whose time is up at ``now`` (frame time); results go to :attr:`ready`."""
        heap = self._held
        due: list[_Mac] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[3])
        if due:
            self._decide_all(due)
        self._next_due = heap[0][0] if heap else math.inf
        self._next_event = min(self._next_due, self._last_expire + 60.0)

    def flush_into_ready(self) -> None:
        """End of input: decide every held MAC now (results in :attr:`ready`)."""
        self._decide_all([e[3] for e in self._held])
        self._held.clear()
        self._next_due = math.inf
        self._next_event = self._last_expire + 60.0

    def flush(self) -> list[tuple[object, str]]:
        """End of input: decide every held MAC now; returns (and clears) :attr:`ready`."""
        self.flush_into_ready()
        out = list(self.ready)
        self.ready.clear()  # in place: callers may keep a reference to the list
        return out

    def _decide_all(self, ms: list[_Mac]) -> None:
        if len(ms) > 1:
            ms.sort(key=_first_ts)  # due together: in the order they appeared
        for m in ms:
            h = m.held
            if h is not None:
                self._decide(m, h)

    def _hold_until(self, ts: float, cands: list[_Group]) -> float:
        """When to decide the link of a new MAC first heard at ``ts`` with candidates ``cands``.

        Each candidate group's old MAC has had time to speak again (showing it did not rotate) once
        it has been silent ``confirm_factor`` of its burst intervals; never later than
        ``max_delay_s``. A time not after ``ts`` means: decide now.
        """
        due = -math.inf
        confirm = self.params.confirm_factor
        for g in cands:
            t = g.tail
            iv = g.interval
            if t is None or iv is None:
                return ts + self._delay
            due = max(due, t.last_ts + confirm * iv)
        return min(due, ts + self._delay)

    def _decide(self, m: _Mac, h: _Held) -> None:
        """Link a held MAC with all the evidence in: groups whose old MAC spoke since are out."""
        m.held = None
        self._n_held -= 1
        frames = h.frames
        rs = [r for _s, _t, r, _i in frames if r is not None]
        mean = sum(rs) / len(rs) if rs else None
        fp = h.fingerprint
        # only its candidates at its first frame can fit (any other group did not fit then, and a
        # group changes by its own MACs speaking, which rules it out): no second search
        g = self._match(fp, m.first_seq, m.first_ts, mean, None, None, h.cands)
        if g is None:
            self._attach(m, self._new_group(fp, True))
        else:
            self._link(m, g)
        m.last_ts, m.last_seq = m.first_ts, m.first_seq
        add = self.ready.append
        for seq, ts, rssi, item in frames:
            add((item, self._frame(m, True, fp, seq, ts, rssi)))

    def _start(self, mac: str, randomized: bool, fingerprint: str, seq: int, ts: float, rssi: float | None) -> _Mac:
        g = self._match(fingerprint, seq, ts, rssi, None) if randomized else None
        if g is None:
            g = self._new_group(fingerprint, randomized)
            m = _Mac(g, ts, seq, ts, seq)
            self._attach(m, g)
        else:
            m = _Mac(g, ts, seq, ts, seq)
            self._link(m, g)
        self._by_mac[mac] = m
        return m

    def _frame(self, m: _Mac, randomized: bool, fingerprint: str, seq: int, ts: float, rssi: float | None) -> str:
        """One frame of a MAC with a group: undo/probation checks, then learn from it."""
        g = m.group
        if g.tail is not m:
            m.trial = None
            self._undo(m, fingerprint, randomized)
            g = m.group
        tr = m.trial
        if tr is not None:
            if ts - m.last_ts >= self._burst_gap_s:
                m.trial = None  # the MAC's second burst: the link has held through its first
            elif rssi is not None:
                tr.rssi_sum += rssi
                tr.rssi_n += 1
                if self._off_rssi(tr):
                    self._reject(m, tr, fingerprint, randomized)
                    g = m.group
        last = m.last_ts
        if ts >= last:
            if ts - last >= self._burst_gap_s:
                self._new_burst(g, m.last_seq, seq, ts - last)
            m.last_ts = ts
            m.last_seq = seq
            if ts >= g.last_ts:
                g.last_ts = ts
        if rssi is not None:
            r = g.rssi
            g.rssi = rssi if r is None else r + self._alpha * (rssi - r)
        g.frames += 1
        return g.gid

    def _link(self, m: _Mac, g: _Group) -> None:
        """Attach a new MAC to an existing group on probation (see :meth:`_reject`)."""
        m.trial = _Trial(g.tail, g.prev, g.rssi, g.last_ts, g.seq_rate, g.interval)
        self._attach(m, g)

    def _off_rssi(self, tr: _Trial) -> bool:
        ref = tr.rssi
        if ref is None or tr.rssi_n == 0:
            return False
        n = tr.rssi_n
        p = self.params
        spread = math.sqrt(p.trial_frame_db * p.trial_frame_db / n + p.trial_ref_db * p.trial_ref_db)
        return abs(tr.rssi_sum / n - ref) > p.trial_z * spread

    def _reject(self, m: _Mac, tr: _Trial, fingerprint: str, randomized: bool) -> None:
        """The MAC's own frames contradict its link: give the group its state back, match again."""
        g = m.group
        m.trial = None
        if g.tail is not m:
            return
        g.tail, g.prev = tr.tail, tr.prev
        g.rssi, g.last_ts, g.seq_rate, g.interval = tr.rssi, tr.last_ts, tr.seq_rate, tr.interval
        g.macs -= 1
        self.unlinked += 1
        mean = tr.rssi_sum / tr.rssi_n if tr.rssi_n else None
        other = self._match(fingerprint, m.first_seq, m.first_ts, mean, g)
        if other is None:
            other = self._new_group(fingerprint, randomized)
            self._attach(m, other)
        else:
            self._link(m, other)
        other.last_ts = max(other.last_ts, m.last_ts)

    def _undo(self, m: _Mac, fingerprint: str, randomized: bool) -> None:
        """``m`` was retired from its group but speaks again: the link that retired it was wrong."""
        g = m.group
        wrong = g.tail
        if g.prev is m and wrong is not None:
            # give the group back to m; match the newer MAC again, as of its first frame
            g.tail, g.prev = m, None
            g.last_ts = m.last_ts
            self.unlinked += 1
            other = self._match(fingerprint, wrong.first_seq, wrong.first_ts, None, g)
            if other is None:
                other = self._new_group(fingerprint, randomized)
            other.prev = None
            self._attach(wrong, other)
            other.last_ts = max(other.last_ts, wrong.last_ts)
        else:
            # an older MAC of the group: it stands alone from now on
            self._attach(m, self._new_group(fingerprint, randomized))
            m.group.last_ts = m.last_ts

    def _match(
        self,
        fp: str,
        seq: int,
        ts: float,
        rssi: float | None,
        exclude: _Group | None,
        cands: list[_Group] | None = None,
        among: list[_Group] | None = None,
    ) -> _Group | None:
        """The group whose tail MAC this frame continues best, or None.

        A group's fit (lower is better) is the normalised squared error of the sequence-number
        advance and of the RSSI; a group whose silence, sequence advance or RSSI is out of bounds
        does not fit at all. (Inlined loop: this runs for every candidate of every new MAC.)
        """
        p = self.params
        min_gap = p.min_gap_s
        max_gap = p.max_gap_s
        gap_factor = p.gap_factor
        seq_rate = p.seq_rate
        seq_slack = p.seq_slack
        seq_spread = p.seq_spread
        max_err = p.max_err
        sigma = p.rssi_sigma_db
        early = p.early_frac
        best: _Group | None = None
        best_score = second = float("inf")
        for g in self._by_fp.get(fp, ()) if among is None else among:
            t = g.tail
            if t is None:
                continue
            gap = ts - t.last_ts
            if gap < min_gap or gap > max_gap or g is exclude:
                continue
            interval = g.interval
            if interval is not None and (gap < early * interval or gap > gap_factor * interval + min_gap):
                # its next burst is not due yet (it has not rotated), or it has been silent for
                # several of its burst intervals (more likely gone than rotated)
                continue
            dseq = (seq - t.last_seq) % SEQ_MOD
            rate = g.seq_rate
            expect = (rate if rate is not None else seq_rate) * gap
            e_seq = (dseq - expect) / (seq_slack + seq_spread * expect)
            if dseq == 0 or abs(e_seq) > max_err:
                continue
            e_rssi = 0.0
            if rssi is not None:
                g_rssi = g.rssi
                if g_rssi is not None:
                    e_rssi = (rssi - g_rssi) / sigma
                    if abs(e_rssi) > max_err:
                        continue
            score = e_seq * e_seq + e_rssi * e_rssi
            if cands is not None:
                cands.append(g)
            if score < best_score:
                best, best_score, second = g, score, best_score
            elif score < second:
                second = score
        if best is not None and second - best_score < p.min_margin:
            return None  # two devices could have become this MAC: a wrong link costs more than a split
        return best

    def expire(self, now: float) -> int:
        """Forget MACs and groups quiet for ``forget_s``; returns how many MACs were dropped."""
        self._last_expire = now
        self._next_event = min(self._next_due, now + 60.0)
        cutoff = now - self.params.forget_s
        stale = [k for k, m in self._by_mac.items() if m.last_ts < cutoff]
        for k in stale:
            del self._by_mac[k]
        # groups silent longer than max_gap_s cannot be a candidate (see _match): off the lists, so
        # a new MAC's search only walks groups that could continue; they come back if they speak
        dormant = now - self.params.max_gap_s
        for fp in list(self._by_fp):
            keep = []
            for g in self._by_fp[fp]:
                if g.last_ts >= dormant:
                    keep.append(g)
                else:
                    g.dormant = True
            if keep:
                self._by_fp[fp] = keep
            else:
                del self._by_fp[fp]
        return len(stale)
