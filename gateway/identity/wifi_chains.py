"""Group rotating randomized Wi-Fi MACs over a whole capture (pure; offline counterpart of wifi_groups).

:class:`~gateway.identity.wifi_groups.WifiGrouper` decides online, frame by frame, with what has
been heard so far. A capture file on disk can do better: every MAC's whole life is known before a
single group is decided. :class:`ChainGrouper` first summarises each MAC (one pass, O(1) per
frame, one summary per MAC) and then links MAC lifetimes into chains - one chain per device:

1. the MACs of one scan burst (an iPhone's per-channel MACs) become one unit (:meth:`_bursts`);
2. bursts are followed into devices by :class:`~gateway.identity.wifi_links.Tracker` (the
   evidence of :mod:`gateway.identity.wifi_links`), ``passes`` times: each pass learns the
   families' sequence behaviour and arrival rates (sum of P(new device), at most ``arrivals``)
   from the one before; the last teaches the count (below) and gives the groups;
   with ``count_arrivals`` (default), the pass before the last teaches the count, and the last
   weighs "a new device" by the arrivals the count reads (each burst's presence over the mean
   visit) instead: the cap binds in a busy store (300 phones an hour: up to one per 70 s in a
   family), and an arriving phone's bursts then joined another's track (frame-weighted purity
   +0.02..+0.10 on the simulated stores, V-measure the same; docs/wifi.md).

**Counting** (:meth:`ChainGrouper.marks`): what every heard burst stands for in presence
(gateway/identity/wifi_presence.py), learnt over the whole capture - the silences of public MACs,
within one MAC, and across the links made with gap-blind confidence in the last pass; the mean
visit from public MACs' visits and from devices followed with confidence all along. A device so
followed all along is one arrival (its first burst's), whatever its presence over the mean visit.

Cost of :meth:`ChainGrouper.solve`: each tracking pass scores every burst against the tracks of
its family heard within ``max_gap_s``.

A MAC's sequence rate counts only forward steps of less than half the counter (2048) over
silences up to ``max_gap_s`` between its own bursts: a step back (frames reordered between two
radios), a counter restart or a long absence does not make the rate up.

Group ids are counters (``prefix`` + n) in the order chains start; they never derive from a MAC.
Globally administered (public) MACs are a group each. A frame earlier than its MAC's latest one
(merged captures) moves the MAC's start back if it is earlier still, and is otherwise only counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gateway.identity.wifi_links import (
    SEQ_MOD,
    LinkParams,
    Mac,
    NodeMiss,
    TimingTable,
    Track,
    Tracker,
    evidence_score,
    in_burst_pos,
    link_score,
)
from gateway.identity.wifi_locate import BurstLocator
from gateway.identity.wifi_presence import FOLLOWED_MIN, PresenceModel, PresenceParams
from gateway.models import PresenceMark
from gateway.parsers.ieee80211 import family_of

__all__ = ["ChainGrouper", "ChainParams"]

_PAIRS_PER_CHUNK = 200_000  # candidate pairs scored per numpy pass (bounds solve()'s working memory)


@dataclass(slots=True, frozen=True)
class ChainParams:
    link: LinkParams = field(default_factory=LinkParams)
    mac_burst_gap_s: float = 5.0  # frames of one MAC further apart than this are different bursts
    min_p: float = 0.5  # a MAC joins the best candidate's chain when that is at least this likely
    passes: int = 2  # tracking passes: each learns the families' sequence behaviour from the last
    learn_arrivals: bool = True  # ... and their arrival rates, at most ``arrivals``
    arrivals: float = 1.0 / 300.0  # new devices of one family per second (the weight of "a new device")
    count_arrivals: bool = True  # the last pass weighs "a new device" by the count's arrivals (module doc)
    presence: PresenceParams = field(default_factory=PresenceParams)  # the count (learn_s: the whole capture)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mac_burst_gap_s) and self.mac_burst_gap_s > 0.0):
            raise ValueError(f"ChainParams.mac_burst_gap_s must be a positive number, got {self.mac_burst_gap_s!r}")
        if not 0.0 < self.min_p < 1.0:
            raise ValueError(f"ChainParams.min_p must be between 0 and 1, got {self.min_p!r}")
        if not 1 <= self.passes <= 10:
            raise ValueError(f"ChainParams.passes must be 1..10, got {self.passes!r}")


class ChainGrouper:
    """Feed every probe request with :meth:`add`, then :meth:`solve` for the group of each MAC."""

    def __init__(
        self, params: ChainParams | None = None, *, prefix: str = "w", locator: BurstLocator | None = None
    ) -> None:
        self.params = params or ChainParams()
        self.locator = locator  # several receivers: bursts placed in metres (wifi_locate.py), else dB steps
        self._link = self.params.link
        self._timing = TimingTable(self._link)
        # stage 2 links bursts: every link is across bursts (stage 1 took the ones within)
        self._cross = replace(self._link, in_burst_share=0.01)
        self._cross_timing = TimingTable(self._cross)
        self._prefix = prefix
        self._lives: dict[str, Mac] = {}
        self._randomized: dict[str, bool] = {}
        self._fp_frames: dict[str, int] = {}
        self.out_of_order = 0  # frames earlier than their MAC's latest (counted, not learned from)
        self.node_miss = NodeMiss(self._link.pos_miss)  # several receivers: how often a node misses a burst
        # the count (wifi_presence.py): learnt over the whole capture (nothing fades)
        self.presence = PresenceModel(replace(self.params.presence, learn_s=math.inf))
        self._burst_log: list[tuple[float, int]] = []  # (first frame time, MAC index) of every MAC burst
        self._heads: set[str] = set()  # set by solve(): randomized MACs heading their scan burst ...
        self._track_of: dict[str, Track] = {}  # ... and their tracks
        self._head_of: dict[str, str] = {}  # other MACs of a scan burst -> its head
        self._sure: dict[str, str] = {}  # burst heads linked by gap-blind confidence -> the MAC before
        self.linked = 0  # set by solve(): MAC changes linked into chains
        # set by solve(): burst head -> (the tail it continued, how likely the tracker found that)
        self.link_p: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._lives)

    def add(
        self,
        mac: str,
        randomized: bool,
        fingerprint: str,
        seq: int,
        ts: float,
        rssi: float | None,
        ssid: bytes | None = None,
        levels: Mapping[str, float] | None = None,
    ) -> int:
        """Learn from one frame; returns the MAC's index (its order of first appearance).

        ``ssid``: a directed probe's network name (kept as a salted hash in RAM, never output);
        ``levels``: where nodes heard the same frame too, each node's RSSI (receiver id -> dBm;
        ``rssi`` is the capture radio's, None when only nodes heard it)."""
        self._fp_frames[fingerprint] = self._fp_frames.get(fingerprint, 0) + 1
        life = self._lives.get(mac)
        if ssid:
            h = hash(ssid)
            if life is not None:
                if life.ssids is None:
                    life.ssids = {h}
                elif len(life.ssids) < 32:
                    life.ssids.add(h)
        if life is None:
            life = self._lives[mac] = Mac(len(self._lives), mac, fingerprint, ts, seq, ts, seq)
            if ssid:
                life.ssids = {hash(ssid)}
            self._randomized[mac] = randomized
            self._burst_log.append((ts, life.idx))
            if rssi is not None:
                life.first_sum = life.last_sum = rssi
                life.first_n = life.last_n = 1
            if levels is not None:
                life.add_levels(levels)
                if not randomized:
                    life.public_levels(ts, levels, self.params.mac_burst_gap_s, self.node_miss)
            return life.idx
        life.frames += 1
        dt = ts - life.last_ts
        if dt < 0.0:
            self.out_of_order += 1
            if ts < life.first_ts:  # merged captures: the MAC was heard earlier than we thought
                life.first_ts = ts
                life.first_seq = seq
            return life.idx
        if levels is not None and not self._randomized[mac]:
            life.public_levels(ts, levels, self.params.mac_burst_gap_s, self.node_miss)
        new_burst = dt >= self.params.mac_burst_gap_s
        if new_burst:
            life.bursts += 1
            life.last_sum = 0.0
            life.last_n = 0
            self._burst_log.append((ts, life.idx))
            if dt <= self.presence.params.visit_gap_s:  # one device's silence, known for sure (longer: ignored)
                # (the MAC's own silences so far: its time from first to last burst, bursts - 1)
                self.presence.silence(
                    family_of(fingerprint),
                    dt,
                    ts,
                    public=not self._randomized[mac],
                    own=(life.last_ts - life.first_ts, life.bursts - 2),
                )
            step = (seq - life.last_seq) % SEQ_MOD
            if step < SEQ_MOD // 2 and dt <= self._link.max_gap_s:
                life.rate_adv += step
                life.rate_span += dt
                life.silences += 1
        life.last_ts = ts
        life.last_seq = seq
        if rssi is not None:
            life.last_sum += rssi
            life.last_n += 1
            if life.bursts == 1:
                life.first_sum += rssi
                life.first_n += 1
        if levels is not None and life.bursts == 1:
            life.add_levels(levels)
        return life.idx

    def link_score(self, a: Mac, b: Mac) -> float | None:
        """Log-likelihood ratio of "``b`` is ``a``'s device after a MAC change" (None: impossible)."""
        v = link_score(a, b, self._link, self._timing, self._fp_shares().get(b.fingerprint, 1.0))
        return None if v is None or v == -math.inf else v

    def _fp_shares(self) -> dict[str, float]:
        fam: dict[str, int] = {}
        for fp, n in self._fp_frames.items():
            fam[family_of(fp)] = fam.get(family_of(fp), 0) + n
        return {fp: n / fam[family_of(fp)] for fp, n in self._fp_frames.items()}

    def _bursts(self, lives: list[Mac], share: dict[str, float]) -> list[tuple[Mac, list[Mac]]]:
        """Stage 1: the MACs of one scan burst (per-channel MACs: each starts within ``burst_gap_s``
        of the last) as one unit, summarised as one :class:`Mac` (RSSI over all its frames).

        Whether a family changes MAC within a burst at all is learned (EM over its MACs): a MAC
        follows a candidate within the burst with odds ``in_share / burst_gap_s`` against the
        family's rate of burst starts, times the evidence (RSSI, sequence, fingerprint); the share
        of MACs that follow one is the next ``in_share``. A family of one MAC per burst ends near 0
        (another phone of the model bursting within the same second stays another phone)."""
        lp = self._link
        span = max(60.0, lives[-1].last_ts - lives[0].first_ts) if lives else 60.0
        recent: dict[str, list[Mac]] = {}
        fam_n: dict[str, int] = {}
        pairs: list[tuple[Mac, list[tuple[Mac, float]]]] = []
        for b in lives:
            if not self._randomized[b.mac]:
                continue
            fam = family_of(b.fingerprint)
            fam_n[fam] = fam_n.get(fam, 0) + 1
            r = recent.setdefault(fam, [])
            r[:] = [a for a in r if b.first_ts - a.last_ts <= lp.burst_gap_s]
            cands = []
            for a in r:
                gap = b.first_ts - a.last_ts
                if gap > 0.0:
                    v = evidence_score(a, b, gap, lp, share.get(b.fingerprint, 1.0), 0.05)
                    if v > -math.inf and a.pos and b.pos:  # several receivers: one spot
                        v += in_burst_pos(a, b, lp, self.node_miss.share)
                    if v > -math.inf:
                        cands.append((a, math.exp(min(v, 700.0))))
            pairs.append((b, cands))
            r.append(b)
        in_share = dict.fromkeys(fam_n, 0.5)
        for _ in range(10):
            acc = dict.fromkeys(fam_n, 0.0)
            for b, cands in pairs:
                fam = family_of(b.fingerprint)
                if not cands:
                    continue
                sh = in_share[fam]
                starts = max(fam_n[fam] * (1.0 - sh) / span, 1e-6)  # burst starts per second
                k = sh / lp.burst_gap_s / starts
                tot = sum(e for _a, e in cands) * k
                acc[fam] += tot / (1.0 + tot)
            in_share = {f: min(0.95, max(0.01, acc[f] / fam_n[f])) for f in fam_n}
        self.in_burst_share = in_share
        unit_of: dict[int, list[Mac]] = {}
        units: list[list[Mac]] = []
        taken: set[int] = set()
        it = iter(pairs)
        nxt = next(it, None)
        for life in lives:
            if nxt is None or nxt[0] is not life:
                units.append([life])  # a public MAC
                continue
            b, cands = nxt
            nxt = next(it, None)
            fam = family_of(b.fingerprint)
            sh = in_share[fam]
            starts = max(fam_n[fam] * (1.0 - sh) / span, 1e-6)
            k = sh / lp.burst_gap_s / starts
            best: Mac | None = None
            best_e = 0.0
            tot = 1.0
            for a, e in cands:
                if a.idx in taken:
                    continue
                tot += e * k
                if e > best_e:
                    best, best_e = a, e
            if best is not None and best_e * k / tot >= self.params.min_p:
                taken.add(best.idx)
                u = unit_of[best.idx]
                u.append(b)
            else:
                u = [b]
                units.append(u)
            unit_of[b.idx] = u
        out = []
        for u in units:
            first, last = u[0], u[-1]
            if len(u) == 1:
                out.append((first, u))
                continue
            m = Mac(
                first.idx, first.mac, first.fingerprint, first.first_ts, first.first_seq, last.last_ts, last.last_seq
            )
            m.first_sum = m.last_sum = sum(x.first_sum for x in u)
            m.first_n = m.last_n = sum(x.first_n for x in u)
            m.frames = sum(x.frames for x in u)
            ssids = [x.ssids for x in u if x.ssids]
            m.ssids = set().union(*ssids) if ssids else None
            for x in u:
                m.add_pos(x)
            out.append((m, u))
        return out

    def solve(self) -> dict[str, str]:
        """The group id of every MAC added so far (see the module docstring for how)."""
        p = self.params
        share = self._fp_shares()
        lives = sorted(self._lives.values(), key=lambda x: (x.first_ts, x.idx))
        units = self._bursts(lives, share)
        directed = [u.ssids for u, _m in units if u.ssids]
        ssid_n: dict[int, int] = {}
        for ss in directed:
            for h in ss:
                ssid_n[h] = ssid_n.get(h, 0) + 1
        self._ssid_share = {h: n / len(directed) for h, n in ssid_n.items()}
        span = max(600.0, lives[-1].last_ts - lives[0].first_ts) if lives else 600.0
        by_count = p.count_arrivals and p.learn_arrivals
        bursts: dict[str, int] = {}
        for u, _m in units:
            if self._randomized[u.mac]:
                f = family_of(u.fingerprint)
                bursts[f] = bursts.get(f, 0) + 1
        arrivals: dict[str, float] = {}
        seq_q: dict[str, float] = {}
        if by_count:
            # the pass that teaches the count starts from estimates instead of a pass of its own:
            # each family's sequence behaviour (_seq_prior) and its arrivals as the count reads
            # them before any link (public MACs' silences, the priors), at most ``arrivals``
            seq_q = _seq_prior(units, self._randomized, self._link)
            arrivals = self._count_arrivals(bursts, span, p.arrivals)
        for k in range(p.passes):
            last = k == p.passes - 1
            # the count learns from the last pass - with count_arrivals, from the one before it:
            # what it learns (confident silences) must not depend on the arrivals it gives
            teach = k == max(0, p.passes - 2) if by_count else last
            groups, pred, p_start, links = self._track(units, share, arrivals, seq_q, learn=teach)
            if last:
                break
            seq_q = _learned(links, self._link)
            if by_count:
                # "a new device" weighed by how many the count says arrived (each burst's mark:
                # its presence over the mean visit), see the module docstring
                arrivals = self._count_arrivals(bursts, span, math.inf)
            elif p.learn_arrivals:
                fam: dict[str, float] = {}
                for mac, ps in p_start.items():
                    f = family_of(self._lives[mac].fingerprint)
                    fam[f] = fam.get(f, 0.0) + ps
                arrivals = {f: min(max(n, 1.0) / span, p.arrivals) for f, n in fam.items()}
        self.linked = len(pred)
        return groups

    def _count_arrivals(self, bursts: dict[str, int], span: float, cap: float) -> dict[str, float]:
        """New devices per second in each family as the count reads them: each burst's arrivals
        (its presence over the mean visit) over the capture's span, at most ``cap``."""
        pm = self.presence
        return {f: min(cap, max(1.0, n * pm.mark(f).arrivals) / span) for f, n in bursts.items()}

    def _track(
        self,
        units: list[tuple[Mac, list[Mac]]],
        share: dict[str, float],
        arrivals: dict[str, float],
        seq_q: dict[str, float],
        *,
        learn: bool = False,
    ) -> tuple[dict[str, str], dict[int, str], dict[str, float], list[tuple[Mac, Mac]]]:
        """Stage 2: bursts linked into devices by :class:`Tracker`; ``learn``: the last pass - the
        presence model learns the silences of the links made with gap-blind confidence."""
        tracker = Tracker(
            self._cross,
            self._cross_timing,
            min_p=self.params.min_p,
            arrivals=arrivals,
            default_arrivals=self.params.arrivals,
            seq_continue=seq_q,
            ssid_share=self._ssid_share,
        )
        tracker.fp_shares = share
        tracker.node_miss = self.node_miss
        tracker.locator = self.locator
        pred: dict[int, str] = {}
        link_p = self.link_p = {}
        p_start: dict[str, float] = {}
        groups: dict[str, str] = {}
        n_groups = 0
        tracker.blind = learn
        pm = self.presence
        confident = pm.params.confident
        if learn:
            self._heads = set()
            self._track_of = {}
            self._head_of = {}
            self._sure = {}
        for unit, members in units:
            if not self._randomized[unit.mac]:
                n_groups += 1
                groups[unit.mac] = f"{self._prefix}{n_groups}"
                continue
            track, p_new = tracker.assign(unit, share.get(unit.fingerprint, 1.0))
            p_start[unit.mac] = p_new
            if learn:
                self._heads.add(unit.mac)
                if tracker.last_confidence >= confident:
                    if track.tail_before is not None:
                        self._sure[unit.mac] = track.tail_before.mac
                    fam = family_of(unit.fingerprint)
                    pm.silence(fam, tracker.last_gap, unit.first_ts, own=(track.silence_s, track.silences))
                    track.silences += 1
                    track.silence_s += tracker.last_gap
                self._track_of[unit.mac] = track
            for m in members[1:]:
                p_start[m.mac] = 0.0
                pred[m.idx] = unit.mac
                if learn:
                    self._head_of[m.mac] = unit.mac
            if track.tail_before is None:
                n_groups += 1
                track.gid = f"{self._prefix}{n_groups}"
            else:
                pred[unit.idx] = track.tail_before.mac
                link_p[unit.mac] = (track.tail_before.mac, tracker.last_p)
            for m in members:
                groups[m.mac] = track.gid
        if learn:  # devices followed with confidence from their first burst to their last: whole visits
            for tr in {id(t): t for t in self._track_of.values()}.values():
                if tr.macs >= FOLLOWED_MIN and tr.silences >= tr.macs - 1:
                    fam = family_of(tr.tail.fingerprint)
                    pm.visit(fam, tr.tail.last_ts - tr.first_ts, tr.tail.last_ts, public=False)
        return groups, pred, p_start, tracker.links

    def marks(self, groups: dict[str, str]) -> list[tuple[float, str, PresenceMark]]:
        """After :meth:`solve` (``groups`` its result): ``(time, group id, mark)`` of every heard burst in
        time order - what each stands for in presence (wifi_presence.py, wifi_count.py)."""
        pm = self.presence
        by_idx = {life.idx: life for life in self._lives.values()}
        log = sorted(self._burst_log)
        # public MACs: their visits (bursts more than max_gap_s apart start another), known whole
        starts: dict[int, list[float]] = {}
        for ts, idx in log:
            life = by_idx[idx]
            if not self._randomized[life.mac]:
                starts.setdefault(idx, []).append(ts)
        own: dict[tuple[int, float], tuple[float, int]] = {}  # (MAC, burst time) -> its visit's (span, silences)
        first: set[tuple[int, float]] = set()  # (MAC, burst time) starting a visit
        for idx, times in starts.items():
            visit = [times[0]]
            for t in [*times[1:], math.inf]:
                if t - visit[-1] > pm.params.visit_gap_s:
                    pm.visit(family_of(by_idx[idx].fingerprint), visit[-1] - visit[0], visit[-1])
                    first.add((idx, visit[0]))
                    for v in visit:
                        own[(idx, v)] = (visit[-1] - visit[0], len(visit) - 1)
                    visit = [t]
                else:
                    visit.append(t)
        out: list[tuple[float, str, PresenceMark]] = []
        cache: dict[tuple[str, int, float, bool], PresenceMark] = {}
        # a burst surely continues its group's previous one: the same MAC's later burst, a public
        # MAC's within a visit, a head whose link in the grouping is the one the count was sure of
        links = self.link_p
        counted: set[int] = set()  # devices followed all along whose one arrival is counted
        for ts, idx in log:
            life = by_idx[idx]
            fam = family_of(life.fingerprint)
            if self._randomized[life.mac]:
                if ts == life.first_ts and life.mac not in self._heads:
                    continue  # a later MAC of its scan burst: the burst is marked once
                tr = self._track_of.get(life.mac) or self._track_of.get(self._head_of.get(life.mac, ""))
                if ts != life.first_ts:
                    follows = True
                else:
                    before = self._sure.get(life.mac)
                    follows = before is not None and links.get(life.mac, ("", 0.0))[0] == before
                key = (fam, tr.silences, tr.silence_s, follows) if tr is not None else (fam, 0, 0.0, follows)
                mk = cache.get(key)
                if mk is None:
                    mk = cache[key] = pm.mark(fam, own=(key[2], key[1]), follows=follows)
                if tr is not None and tr.macs >= FOLLOWED_MIN and tr.silences >= tr.macs - 1:
                    # followed with confidence from its first burst to its last (the visits the
                    # mean visit is learnt from): one arrival, at its first burst - not its
                    # presence over the mean visit, which for a few devices is mostly the prior's
                    mk = replace(mk, arrivals=0.0 if id(tr) in counted else 1.0)
                    counted.add(id(tr))
            else:
                span, silences = own[(idx, ts)]
                mk = pm.mark(
                    fam, public=True, own=(span, silences) if silences else None, follows=(idx, ts) not in first
                )
            out.append((ts, groups.get(life.mac, ""), mk))
        return out

    def life(self, mac: str) -> Mac | None:
        return self._lives.get(mac)


def _learned(links: list[tuple[Mac, Mac]], p: LinkParams) -> dict[str, float]:
    """What the links of one tracking pass say of each family: the share of its MAC changes that
    continued the sequence number (a small step forward), between 0.05 and 0.95, for families with
    at least 5 links."""
    n: dict[str, int] = {}
    k: dict[str, int] = {}
    for a, b in links:
        f = family_of(b.fingerprint)
        gap = b.first_ts - a.last_ts
        dseq = (b.first_seq - a.last_seq) % SEQ_MOD
        n[f] = n.get(f, 0) + 1
        if 0 < dseq <= p.seq_window + p.seq_rate * gap + (a.rate * gap if a.rate else 0.0):
            k[f] = k.get(f, 0) + 1
    return {f: min(0.95, max(0.05, (k.get(f, 0) + 1) / (m + 2))) for f, m in n.items() if m >= 5}


_SEQ_PRIOR_LAST = 6  # bursts of the family before a burst that _seq_prior looks at


def _seq_prior(units: list[tuple[Mac, list[Mac]]], randomized: dict[str, bool], p: LinkParams) -> dict[str, float]:
    """Each family's share of MAC changes that continue the sequence number, before any tracking
    (what :func:`_learned` learns from a tracking pass's links): how often a burst continues the
    counter of one of the family's last few bursts, beyond what chance gives (a small step forward
    by coincidence: the step's window over 4096), for families with at least 5 bursts so judged.
    Where several of the family's phones speak at once the burst before may be another's: this
    reads low for a family that continues, never high for one that restarts."""
    recent: dict[str, list[Mac]] = {}
    acc: dict[str, list[float]] = {}  # family -> [bursts judged, continuing, expected by chance]
    for u, _m in units:
        if not randomized[u.mac]:
            continue
        fam = family_of(u.fingerprint)
        r = recent.setdefault(fam, [])
        cands = [a for a in r if 0.0 < u.first_ts - a.last_ts <= p.max_gap_s]
        if cands:
            miss = 1.0
            cont = False
            for a in cands:
                gap = u.first_ts - a.last_ts
                window = min(p.seq_window + p.seq_rate * gap, SEQ_MOD / 2)
                miss *= 1.0 - window / SEQ_MOD
                cont = cont or 0 < (u.first_seq - a.last_seq) % SEQ_MOD <= window
            s = acc.setdefault(fam, [0.0, 0.0, 0.0])
            s[0] += 1.0
            s[1] += cont
            s[2] += 1.0 - miss
        r.append(u)
        if len(r) > _SEQ_PRIOR_LAST:
            del r[0]
    out = {}
    for fam, (n, k, chance) in acc.items():
        if n >= 5:
            out[fam] = min(0.95, max(0.05, (k - chance) / max(n - chance, 1.0)))
    return out
