"""How likely is it that MAC ``b`` is MAC ``a``'s device after a MAC change? (pure; shared scoring)

Both Wi-Fi groupings - online (:mod:`gateway.identity.wifi_groups`, the daemon) and over a whole
capture (:mod:`gateway.identity.wifi_chains`, ``gateway decode pcap``) - link MAC lifetimes into
device chains with the same evidence, as a log-likelihood ratio "``b`` continues ``a``'s device"
against "``b`` is an unrelated device of the same family" (:func:`link_scores`, numpy over pairs;
:func:`link_score`, one pair; a test keeps them equal):

* **family** (gate): the first half of the fingerprint (rates, HT, VHT capabilities) must match;
  the whole fingerprint matching is evidence (``same_fp``: a phone's next MAC usually sends the same
  elements; an Android 13 phone alternates its wildcard and directed element sets), weighed against
  how common ``b``'s fingerprint is in the family; another set is never evidence for the link
  (:func:`other_set`);
* **timing**: iPhones on iOS 16 draw a new MAC for every channel of a scan burst - the next MAC
  starts tens of ms after the last (``burst_gap_s``); otherwise the next MAC comes with the next
  burst, whose interval follows the population's schedule: scans repeated after 1.5-8 s
  (``repeat_share``), else a device's median interval (log-uniform 17-135 s) with log-normal
  spread. Against a new MAC of an unrelated device starting at any time within ``max_gap_s``;
* **sequence number**: modern phones restart it at a MAC change, older ones continue it; a mixture
  (``seq_continue``) of "continues: normal around the expected advance" and "restarts: uniform",
  against uniform - a continuation is strong evidence, a restart only a mild one against;
* **RSSI**: the step from ``a``'s last burst to ``b``'s first (frame noise; within a burst the
  channel changes, across bursts the shopper walks), against the spread of levels in a store;
* **sequence rates** of both MACs, where both were heard over several bursts (their own rate).

Facts and their sources: docs/wifi.md, "The phone population".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from gateway.identity.wifi_locate import BurstLocator, pos_score_m

__all__ = [
    "SEQ_MOD",
    "LinkParams",
    "Mac",
    "NodeMiss",
    "TimingTable",
    "Track",
    "Tracker",
    "evidence_score",
    "in_burst_pos",
    "link_score",
    "pos_score",
    "ssid_score",
]

SEQ_MOD = 4096
MAX_RECEIVERS = 32  # nodes a burst or a track keeps levels for
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)
# RSSI steps: Student-t with 4 degrees of freedom (a radio's gain, a body in the way: heavy tails)
_T_NU = 4.0
_T_EXP = (_T_NU + 1.0) / 2.0
_T_CONST = math.lgamma(_T_EXP) - math.lgamma(_T_NU / 2.0) - 0.5 * math.log(_T_NU * math.pi)


@dataclass(frozen=True, slots=True)
class LinkParams:
    burst_gap_s: float = 1.0  # per-channel MACs of one scan burst follow each other within this
    max_gap_s: float = 600.0  # longest silence between a MAC's last frame and the next MAC's first
    in_burst_share: float = 0.5  # prior share of next MACs that come within the same burst
    repeat_share: float = 0.3  # share of scans repeated at once ...
    repeat_s: tuple[float, float] = (1.5, 8.0)  # ... this long after the last
    interval_s: tuple[float, float] = (17.0, 135.0)  # range of devices' median burst intervals
    interval_sd: float = 0.6  # spread of one device's intervals around its median (log)
    seq_continue: float = 0.5  # prior chance that a device continues its sequence over a MAC change
    seq_window: float = 96.0  # a continued sequence without a rate of its own steps forward by at most ...
    seq_rate: float = 3.0  # ... this plus this many per second of silence (bursts the radio missed)
    seq_slack: float = 16.0  # spread of the sequence advance: slack + spread * expected advance
    seq_spread: float = 0.2
    rssi_frame_db: float = 5.0  # one frame's RSSI around the device's level
    rssi_channel_db: float = 3.0  # level difference between two channels of one burst
    rssi_walk_db: float = 2.5  # how far a shopper's level wanders per rssi_walk_s of silence
    rssi_walk_s: float = 30.0
    rssi_range_db: float = 40.0  # spread of levels between devices in a store
    max_z: float = 8.0  # an RSSI step beyond this many spreads is no continuation
    rate_sd: float = 0.45  # spread of log(sequence rate) measured over one silence
    pop_rate_sd: float = 0.6  # spread of log(sequence rate) between devices
    same_fp: float = 0.85  # chance a device's next MAC sends the same elements (whole fingerprint)
    ssid_cover: float = 0.9  # chance a device's directed scan probes a network it probed before
    min_ssid_share: float = 0.002  # floor of a network's share of directed scans (its rarity)
    min_fp_share: float = 0.05  # floor of a fingerprint's share of its family (rare ones are not certain)
    # several receivers (the capture radio's nodes, docs/wifi.md "Several receivers"): a burst's level
    # at each node against the device's latest there
    pos_frame_db: float = 5.0  # one frame's level at a node around the device's (radio.py: residual 4-8 dB)
    pos_persist_db: float = 3.0  # what persists between two bursts at one spot (shadowing, a body)
    pos_speed_db_s: float = 0.5  # how fast a shopper's level at a node can move (walking: dB per s)
    pos_dwell_s: float = 60.0  # a shopper stays at one spot about this long (store simulator: 45 s median)
    pos_miss: float = 0.2  # chance a node in range misses a burst (it hops channels, loses frames)
    pos_dims: float = 2.0  # independent steps the levels at several nodes carry (a position on the floor)
    pos_level_sd_db: float = 8.0  # prior spread of bursts' levels at a node (learnt from the bursts)
    pos_speed_m_s: float = 1.4  # with a locator (positions in metres): a shopper's walking speed at most

    def __post_init__(self) -> None:
        for name in (
            "burst_gap_s", "max_gap_s", "interval_sd", "seq_window", "seq_rate", "seq_slack",
            "rssi_frame_db", "rssi_channel_db", "rssi_walk_db", "rssi_walk_s", "rssi_range_db", "max_z",
            "rate_sd", "pop_rate_sd", "min_fp_share", "min_ssid_share", "pos_frame_db", "pos_persist_db",
            "pos_speed_db_s", "pos_level_sd_db", "pos_dims", "pos_dwell_s", "pos_speed_m_s",
        ):  # fmt: skip
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"LinkParams.{name} must be a positive number, got {v!r}")
        for name in ("in_burst_share", "repeat_share", "seq_continue", "same_fp", "ssid_cover", "pos_miss"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"LinkParams.{name} must be between 0 and 1 (exclusive), got {v!r}")
        if self.max_gap_s <= self.burst_gap_s:
            raise ValueError("LinkParams.max_gap_s must be above burst_gap_s")
        lo, hi = self.interval_s
        if not 0.0 < lo < hi:
            raise ValueError(f"LinkParams.interval_s must be 0 < low < high, got {self.interval_s!r}")
        lo, hi = self.repeat_s
        if not 0.0 < lo < hi:
            raise ValueError(f"LinkParams.repeat_s must be 0 < low < high, got {self.repeat_s!r}")


class TimingTable:
    """log LR of the silence between two MACs (a table over log(gap): the same for every pair)."""

    N = 2048

    def __init__(self, p: LinkParams) -> None:
        self.p = p
        self.lo = math.log(1e-3)
        self.hi = math.log(p.max_gap_s)
        self.step = (self.hi - self.lo) / (self.N - 1)
        self.inv_step = 1.0 / self.step
        gaps = np.exp(np.linspace(self.lo, self.hi, self.N))
        self.table = [_timing(float(g), p) for g in gaps]
        self.exp_table = [math.exp(v) for v in self.table]

    def one(self, gap: float) -> float:
        return self.table[self.index(math.log(max(gap, 1e-3)))]

    def index(self, log_gap: float) -> int:
        """The table's row for a silence of ``exp(log_gap)`` seconds."""
        k = int((log_gap - self.lo) * self.inv_step + 0.5)
        return 0 if k < 0 else (k if k < self.N else self.N - 1)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def _timing(gap: float, p: LinkParams) -> float:
    """log of p(gap | the same device's next MAC) * max_gap_s (uniform for an unrelated device)."""
    if gap <= p.burst_gap_s:
        dens = p.in_burst_share / p.burst_gap_s
    else:
        lo, hi = p.burst_gap_s, p.repeat_s[1]
        rep = 1.0 / (hi - lo) if gap <= hi else 0.0
        a, b = math.log(p.interval_s[0]), math.log(p.interval_s[1])
        u = math.log(gap)
        box = (_phi((u - a) / p.interval_sd) - _phi((u - b) / p.interval_sd)) / (b - a) / gap
        dens = (1.0 - p.in_burst_share) * (p.repeat_share * rep + (1.0 - p.repeat_share) * box)
    return math.log(max(dens, 1e-6) * p.max_gap_s)


@dataclass(slots=True, eq=False)
class Mac:
    """What the groupers know of one MAC address (one lifetime)."""

    idx: int
    mac: str
    fingerprint: str
    first_ts: float
    first_seq: int
    last_ts: float
    last_seq: int
    rate_adv: int = 0  # sequence numbers counted over plausible forward steps between bursts ...
    rate_span: float = 0.0  # ... and the time they took
    silences: int = 0  # inter-burst silences among those steps
    bursts: int = 1
    first_sum: float = 0.0  # RSSI of the first burst
    first_n: int = 0
    last_sum: float = 0.0  # RSSI of the latest burst
    last_n: int = 0
    frames: int = 1
    ssids: set[int] | None = None  # the networks its directed probes named (hashed; RAM only)
    # several receivers: its first burst's level at each node that heard it, [sum, frames]
    pos: dict[str, list[float]] | None = None
    nodes: set[str] | None = None  # a public MAC: the nodes that heard its latest burst ...
    nodes_before: set[str] | None = None  # ... the one before, and the silence between them
    nodes_gap: float = 0.0

    def public_levels(self, ts: float, levels: Mapping[str, float], burst_gap_s: float, miss: NodeMiss) -> None:
        """A frame of a public MAC heard at nodes (before its time is learnt: a new burst starts
        ``burst_gap_s`` after its last frame)."""
        if self.nodes is None:
            self.nodes = set(levels)
            return
        dt = ts - self.last_ts
        if dt >= burst_gap_s:
            self.node_burst(dt, miss)
        self.nodes.update(levels)

    def node_burst(self, gap: float, miss: NodeMiss) -> None:
        """A public MAC starts a burst ``gap`` s after its last: its last two bursts' nodes teach ``miss``."""
        if self.nodes_before is not None and self.nodes is not None:
            miss.bursts(self.nodes_before, self.nodes, self.nodes_gap)
        self.nodes_before, self.nodes, self.nodes_gap = self.nodes, set(), gap

    def add_levels(self, levels: Mapping[str, float]) -> None:
        """One frame of the first burst as heard at nodes (receiver id -> RSSI)."""
        pos = self.pos
        if pos is None:
            pos = self.pos = {}
        for r, v in levels.items():
            acc = pos.get(r)
            if acc is None:
                if len(pos) < MAX_RECEIVERS:
                    pos[r] = [v, 1.0]
            else:
                acc[0] += v
                acc[1] += 1.0

    def add_pos(self, other: Mac) -> None:
        """Another MAC of the same burst (its first burst's levels at nodes)."""
        if other.pos is None:
            return
        if self.pos is None:
            self.pos = {}
        for r, (v, n) in other.pos.items():
            acc = self.pos.get(r)
            if acc is None:
                if len(self.pos) < MAX_RECEIVERS:
                    self.pos[r] = [v, n]
            else:
                acc[0] += v
                acc[1] += n

    @property
    def rate(self) -> float:
        return self.rate_adv / self.rate_span if self.silences and self.rate_span > 0.0 else 0.0


def link_score(
    a: Mac, b: Mac, p: LinkParams, timing: TimingTable, fp_share: float, seq_continue: float | None = None
) -> float | None:
    """log LR that ``b`` continues ``a``'s device; None when it cannot (see the module docstring).

    ``fp_share``: the share of ``b``'s fingerprint among its family's frames (same-family pairs
    only); ``seq_continue``: the family's chance of continuing its sequence (default the prior).
    """
    gap = b.first_ts - a.last_ts
    if not 0.0 < gap <= p.max_gap_s:
        return None
    return timing.one(gap) + evidence_score(a, b, gap, p, fp_share, seq_continue)


def evidence_score(
    a: Mac,
    b: Mac,
    gap: float,
    p: LinkParams,
    fp_share: float,
    seq_continue: float | None = None,
    a_level: tuple[float, float] | None = None,
) -> float:
    """:func:`link_score` without its timing term (-inf: an RSSI step too far to be one device).

    ``a_level``: (level, frames) of ``a``'s device from more than its last burst (a track's level).
    """
    return _evidence(a, b, gap, p, fp_share, seq_continue, a_level, False)[0]


BLIND_GAP_S = 180.0  # the silence every link is judged at by the gap-blind score (see _evidence)


def _evidence(
    a: Mac,
    b: Mac,
    gap: float,
    p: LinkParams,
    fp_share: float,
    seq_continue: float | None,
    a_level: tuple[float, float] | None,
    blind: bool,
    same_fp: bool | None = None,
    a_share: float | None = None,
) -> tuple[float, float]:
    """(:func:`evidence_score`, its gap-blind variant or 0.0 unless ``blind``). ``same_fp``: whether
    ``b``'s element set is one ``a``'s device has used (default: ``a``'s own); ``a_share``: the
    share of ``a``'s element set in the family (see :func:`other_set`; None: ``b``'s rarity alone).

    The gap-blind score judges every link as if its silence were ``BLIND_GAP_S``: the RSSI step
    against a fixed walk, a plausible sequence continuation worth the same at any silence. A link
    confident by it was not chosen for being short, so the silences of such links sample how long
    a device stays silent between heard bursts without favouring short ones (wifi_presence.py).
    """
    score = 0.0
    blind_score = 0.0
    # RSSI step (where both have one)
    in_burst = gap <= p.burst_gap_s
    if a_level is not None:
        a_mean, a_n = a_level
    else:
        a_n = a.last_n
        a_mean = a.last_sum / a_n if a_n else 0.0
    b_n = b.first_n
    if a_n and b_n:
        fd2 = p.rssi_frame_db * p.rssi_frame_db
        frames = fd2 / a_n + fd2 / b_n
        if in_burst:
            extra = p.rssi_channel_db * p.rssi_channel_db
        else:
            w = gap / p.rssi_walk_s
            extra = p.rssi_walk_db * p.rssi_walk_db * (w if w > 1.0 else 1.0)
        s2 = frames + extra  # the step's variance
        step = b.first_sum / b_n - a_mean
        step2 = step * step
        if step2 > p.max_z * p.max_z * s2:
            return -math.inf, -math.inf
        log_range = math.log(p.rssi_range_db)
        score += _T_CONST - _T_EXP * math.log1p(step2 / s2 / _T_NU) - 0.5 * math.log(s2) + log_range
        if blind:
            sb2 = frames + p.rssi_walk_db * p.rssi_walk_db * (BLIND_GAP_S / p.rssi_walk_s)
            blind_score += _T_CONST - _T_EXP * math.log1p(step2 / sb2 / _T_NU) - 0.5 * math.log(sb2) + log_range
    # sequence number: continues (normal around the expected advance) or restarts (uniform)
    ra = a.rate_adv / a.rate_span if a.silences and a.rate_span > 0.0 else 0.0
    rb = b.rate_adv / b.rate_span if b.silences and b.rate_span > 0.0 else 0.0
    wa, wb = (a.silences if ra > 0.0 else 0), (b.silences if rb > 0.0 else 0)
    dseq = (b.first_seq - a.last_seq) % SEQ_MOD
    if wa + wb > 0 and not in_burst:
        # a MAC heard over several bursts has its own rate: the advance is about rate x silence
        expect = (ra * wa + rb * wb) / (wa + wb) * gap
        spread = p.seq_slack + p.seq_spread * expect
        z = (dseq - expect) / spread
        cont = math.exp(-0.5 * z * z - _LOG_SQRT_2PI) / spread * SEQ_MOD if dseq else 0.0
        plausible = dseq > 0 and -2.5 < z < 2.5
    else:
        # else the rest of a burst and a few frames between bursts: any small step forward
        window = p.seq_window + p.seq_rate * gap
        if window > SEQ_MOD / 2:
            window = SEQ_MOD / 2
        plausible = 0 < dseq <= window
        cont = SEQ_MOD / window if plausible else 0.0
    q = p.seq_continue if seq_continue is None else seq_continue
    score += math.log(q * cont + (1.0 - q))
    if blind:
        cont_b = SEQ_MOD / (p.seq_window + p.seq_rate * BLIND_GAP_S) if plausible else 0.0
        blind_score += math.log(q * cont_b + (1.0 - q))
    # the two MACs' own sequence rates, and the fingerprint within the family: gap-free evidence
    rest = 0.0
    if wa > 0 and wb > 0:
        d = math.log(ra / rb)
        sd = p.rate_sd * math.sqrt(1.0 / wa + 1.0 / wb)
        pop = p.pop_rate_sd
        rest += -0.5 * (d / sd) ** 2 - math.log(sd) + 0.5 * (d / pop) ** 2 + math.log(pop)
    share = fp_share if fp_share > p.min_fp_share else p.min_fp_share
    if same_fp is None:
        same_fp = a.fingerprint == b.fingerprint
    if same_fp:
        rest += math.log(p.same_fp / share)
    elif a_share is not None:
        rest += other_set(p.same_fp, a_share)
    else:
        rest += math.log((1.0 - p.same_fp) / share)
    return score + rest, (blind_score + rest if blind else 0.0)


def other_set(keep: float, a_share: float) -> float:
    """log LR of a burst sending other elements than its candidate device's (whose set is
    ``a_share`` of its family's frames): a device keeps its set with chance ``keep``, and when it
    changes, the set it changes to is unknown - drawn like the family's other sets, so it is as
    likely from the device as from an unrelated one of the family (share ``b`` / (1 - ``a_share``)
    against share ``b``). Never evidence for the link: a rare set is not a sign of the same
    device (the old ``(1 - keep) / share b`` made a change to a rare set up to 3x likelier)."""
    return math.log((1.0 - keep) / max(1.0 - a_share, 1.0 - keep))


def ssid_score(known: set[int] | None, new: set[int] | None, share: dict[int, float], p: LinkParams) -> float:
    """log LR of the networks a new MAC probed for, given those its candidate device probed before:
    a device probes its own saved networks under every MAC. A shared network counts by its rarity
    (``share``: the fraction of directed scans naming it - a home network is as good as a name, a
    coffee-shop chain's much less); none shared speaks against. 0 when either has none."""
    if not known or not new:
        return 0.0
    common = known & new
    if not common:
        return math.log(1.0 - p.ssid_cover)
    rarest = min(share.get(s, 1.0) for s in common)
    return math.log(p.ssid_cover / max(rarest, p.min_ssid_share))


POS_STATS_N = 500.0  # a node's spread of levels: over about this many bursts


def pos_score(
    before: Mapping[str, tuple[float, float]],
    after: Mapping[str, list[float]],
    gap: float,
    p: LinkParams,
    stats: Mapping[str, list[float]] | None = None,
    miss: float | None = None,
) -> float:
    """log LR that a burst heard at nodes ``after`` (receiver -> [sum of levels, frames]) is the
    device heard ``gap`` seconds before at ``before`` (receiver -> (level, frames)), against an
    unrelated device. The device has either stayed at its spot (chance ``exp(-gap / pos_dwell_s)``:
    the step at each node is the levels' noise, and a node that heard one burst and not the other
    missed it, ``pos_miss``) or walked on - at most ``pos_speed_db_s`` per second, at most as far as
    two devices anywhere in the store. Unrelated: each node's spread of levels and share of bursts
    heard (``stats``: receiver -> [weight, mean, variance, share heard]; priors without). The
    level steps at k nodes are one position's: they count as ``pos_dims`` independent ones (a node
    missing a burst is its own: hopping, loss)."""
    fd2 = p.pos_frame_db * p.pos_frame_db
    pers2 = p.pos_persist_db * p.pos_persist_db
    prior = p.pos_level_sd_db * p.pos_level_sd_db
    stats = stats or {}
    walk = p.pos_speed_db_s * gap
    walk2 = walk * walk
    log = math.log
    log1p = math.log1p
    log_miss = log(p.pos_miss if miss is None else miss)
    stay = moved = missed = 0.0  # log densities relative to unrelated devices' (constants cancel)
    k = 0
    for r, (v, n) in after.items():
        st = stats.get(r)
        prev = before.get(r)
        if prev is None:  # heard now, not before: missed then, if it stayed
            heard = st[3] if st is not None else 0.5
            missed += log_miss - log(min(max(heard, 0.02), 0.98))
            continue
        k += 1
        level, na = prev
        var2 = 2.0 * (st[2] if st is not None and st[0] >= 20.0 else prior)
        base = fd2 / na + fd2 / n + pers2
        s_moved = base + (walk2 if walk2 < var2 else var2)
        s_un = base + var2
        step = v / n - level
        q = step * step / _T_NU
        un = _T_EXP * log1p(q / s_un) + 0.5 * log(s_un)
        stay += un - _T_EXP * log1p(q / base) - 0.5 * log(base)
        moved += un - _T_EXP * log1p(q / s_moved) - 0.5 * log(s_moved)
    for r in before:
        if r not in after:  # heard before, not now: missed now, if it stayed
            st2 = stats.get(r)
            heard = st2[3] if st2 is not None else 0.5
            missed += log_miss - log(min(max(1.0 - heard, 0.02), 0.98))
    c = p.pos_dims / k if k > p.pos_dims else 1.0
    pi = math.exp(-gap / p.pos_dwell_s)
    a = c * stay + missed + log(pi) if pi > 0.0 else -math.inf
    m = c * moved + log1p(-pi) if pi < 1.0 else -math.inf
    hi = a if a > m else m
    return hi + log(math.exp(a - hi) + math.exp(m - hi))


class NodeMiss:
    """How often a node misses a burst of a device that has not moved, learnt from the devices
    followed for sure: a public MAC's bursts ``NEAR_S`` apart (the nodes that heard one and not
    the other, of those that heard either), beside a prior of ``PRIOR_N`` nodes at ``prior``.
    Nodes hop channels and lose frames: the simulated ones (1/6/11, the radio model's loss)
    miss 30 % of such bursts whatever the level."""

    NEAR_S = 15.0
    PRIOR_N = 20.0

    __slots__ = ("missed", "seen")

    def __init__(self, prior: float) -> None:
        self.missed = prior * self.PRIOR_N
        self.seen = self.PRIOR_N

    @property
    def share(self) -> float:
        return min(0.9, max(0.02, self.missed / self.seen))

    def bursts(self, before: set[str], after: set[str], gap: float) -> None:
        """Two bursts of one public MAC ``gap`` s apart, heard by the nodes ``before`` / ``after``."""
        if gap > self.NEAR_S or not (before or after):
            return
        both = len(before & after)
        self.missed += len(before) + len(after) - 2 * both
        self.seen += len(before) + len(after) - both
        if self.seen > 50_000.0:  # a running share (the daemon runs for months)
            self.missed *= 0.5
            self.seen *= 0.5


def in_burst_pos(a: Mac, b: Mac, p: LinkParams, miss: float | None = None) -> float:
    """:func:`pos_score` of two MACs of one scan burst (tens of ms apart: the same spot); 0 unless
    both were heard at nodes."""
    if not a.pos or not b.pos:
        return 0.0
    return pos_score({r: (v / n, n) for r, (v, n) in a.pos.items()}, b.pos, 0.0, p, None, miss)


LEVEL_MEMORY_S = 120.0  # a track's RSSI level forgets older bursts over this time
LEVEL_MAX_N = 12.0  # ... and never counts more frames than this (the shopper walks)


@dataclass(slots=True, eq=False)
class Track:
    """One device as followed so far: its latest MAC (the tail new MACs continue from) and the
    intervals between its bursts (log seconds), which sharpen the timing of its next MAC."""

    gid: str
    tail: Mac
    tail_before: Mac | None  # the tail before the latest assignment (None: the track started with it)
    macs: int = 1
    level: float = 0.0  # RSSI level of the device (frames weighted, older bursts fading) in the
    level_n: float = 0.0  # element set it was first heard with; its other sets' beside (a phone's
    level_fp: str = ""  # directed and wildcard scans, or an iPhone's two, may differ in level)
    level_ts: float = 0.0
    other_levels: dict[str, tuple[float, float, float]] | None = None  # fingerprint -> (level, n, ts)
    ssids: set[int] | None = None  # every network the device's MACs probed for
    iv_n: int = 0
    iv_sum: float = 0.0  # of log intervals
    iv_sq: float = 0.0
    iv_mu: float = 0.0  # their mean and spread (kept with them)
    iv_sd: float = 0.35
    first_ts: float = 0.0  # its first burst
    # several receivers: the device's latest burst's level at each node that heard it, (level, frames)
    pos: dict[str, tuple[float, float]] | None = None
    pos_ts: float = 0.0  # ... and when
    pos_xy: tuple[float, float, float] | None = None  # ... placed in metres (a locator's; cached)
    pos_xy_done: bool = False
    silences: int = 0  # confident silences the presence model learnt from it (wifi_presence.py) ...
    silence_s: float = 0.0  # ... and their sum

    def learn_ssids(self, m: Mac) -> None:
        if m.ssids:
            if self.ssids is None:
                self.ssids = set()
            if len(self.ssids) < 64:
                self.ssids |= m.ssids

    def learn_level(self, m: Mac) -> None:
        if not m.first_n:
            return
        ts = m.first_ts
        if not self.level_fp or m.fingerprint == self.level_fp:
            self.level_fp = m.fingerprint
            w = self.level_n * math.exp(-max(0.0, ts - self.level_ts) / LEVEL_MEMORY_S)
            self.level = (self.level * w + m.first_sum) / (w + m.first_n)
            self.level_n = min(w + m.first_n, LEVEL_MAX_N)
            self.level_ts = ts
            return
        if self.other_levels is None:
            self.other_levels = {}
        level, n, t0 = self.other_levels.get(m.fingerprint, (0.0, 0.0, ts))
        if n == 0.0 and len(self.other_levels) >= 8:
            return
        w = n * math.exp(-max(0.0, ts - t0) / LEVEL_MEMORY_S)
        self.other_levels[m.fingerprint] = (
            (level * w + m.first_sum) / (w + m.first_n),
            min(w + m.first_n, LEVEL_MAX_N),
            ts,
        )

    def has_fp(self, fingerprint: str) -> bool:
        """Whether a burst of ``fingerprint`` sends the device's elements: its latest MAC's, or
        the set the device was first heard with (an iPhone alternating two element sets goes back
        to its usual one). Any set the track ever used would let one wrong join pull in the
        next phone of another model."""
        return fingerprint == self.tail.fingerprint or fingerprint == self.level_fp

    def level_for(self, fingerprint: str) -> tuple[float, float] | None:
        """(level, frames) to compare a burst of ``fingerprint`` with: its own element set's where
        the track has heard it, else the track's first one's (None: no level yet)."""
        if fingerprint != self.level_fp and self.other_levels:
            other = self.other_levels.get(fingerprint)
            if other is not None:
                return other[0], other[1]
        return (self.level, self.level_n) if self.level_n else None

    def learn_pos(self, m: Mac) -> None:
        """The device's levels at the nodes that heard ``m``'s first burst (it walks: no average)."""
        if m.pos:
            self.pos = {r: (v / n, n) for r, (v, n) in m.pos.items()}
            self.pos_ts = m.first_ts
            self.pos_xy, self.pos_xy_done = None, False

    def learn_interval(self, gap: float) -> None:
        u = math.log(gap)
        self.iv_n += 1
        self.iv_sum += u
        self.iv_sq += u * u
        mu = self.iv_mu = self.iv_sum / self.iv_n
        self.iv_sd = 0.35 if self.iv_n < 2 else max(0.15, math.sqrt(max(0.0, self.iv_sq / self.iv_n - mu * mu)))


class Tracker:
    """Follow devices of every family in time: each new MAC (in order of first frame) continues the
    track whose tail it fits best - if that is at least ``min_p`` likely against every other track
    and against "a new device" - or starts a track of its own.

    "A new device" weighs its family's arrival rate (``arrivals``, devices per second) against the
    link ratios, which are normalised to a MAC starting uniformly within ``max_gap_s``. A track that
    has been continued across bursts before has its own interval: its next burst is expected around
    it (log-normal), beside a share ``(1 - track_share)`` of the population's schedule.

    The chance that the MAC starts a device, ``exp(new) / (exp(new) + sum of exp(link ratios))``,
    is returned beside: summed over MACs it estimates the number of devices even where a MAC's
    track cannot be told with confidence. Tracks silent for ``max_gap_s`` leave the candidate lists.
    """

    def __init__(
        self,
        p: LinkParams,
        timing: TimingTable,
        *,
        min_p: float,
        arrivals: dict[str, float] | None = None,
        default_arrivals: float = 1.0 / 600.0,
        seq_continue: dict[str, float] | None = None,
        in_burst: dict[str, float] | None = None,
        ssid_share: dict[int, float] | None = None,
        track_share: float = 0.8,
    ) -> None:
        self.p = p
        self.timing = timing
        self.min_p = min_p
        self.arrivals = arrivals or {}  # family -> new devices per second
        self.default_arrivals = default_arrivals
        self.seq_continue = seq_continue or {}  # family -> chance of continuing the sequence
        self.fp_shares: dict[str, float] = {}  # element set -> its share of its family's frames
        self.in_burst = in_burst or {}  # family -> share of its links within a burst
        self.ssid_share = ssid_share if ssid_share is not None else {}  # network -> share of directed scans
        self._tables: dict[float, TimingTable] = {}
        self.track_share = track_share
        self._rep_density = 1.0 / (p.repeat_s[1] - p.burst_gap_s)  # repeated scans: uniform over their range
        self._by_family: dict[str, list[Track]] = {}
        self.linked = 0
        self.links: list[tuple[Mac, Mac]] = []  # (old tail, new MAC) of every link made, for learning
        self.blind = False  # also score links gap-blind (see assign)
        self.on_drop: Callable[[Track], None] | None = None  # a track leaves the candidates (silent too long)
        self.last_confidence = 0.0
        self.last_gap = 0.0
        self.last_p = 0.0  # how likely the likeliest track was at the latest assign (linked or not)
        # several receivers: each node's spread of burst levels, [weight, mean, variance] (fading)
        self.pos_stats: dict[str, list[float]] = {}
        self.pos_bursts = 0.0  # bursts the shares of pos_stats are over (at most POS_STATS_N)
        self.node_miss = NodeMiss(p.pos_miss)  # the groupers share theirs (learnt from public MACs)
        self.locator: BurstLocator | None = None  # several receivers: bursts placed in metres (else dB steps)
        self._b_xy: tuple[Mac | None, float, tuple[float, float, float] | None] = (None, 0.0, None)

    def learn_pos_stats(self, m: Mac) -> None:
        """Each node's spread of levels over the bursts heard (what two unrelated devices' levels
        there differ by) and its share of bursts heard, over the latest ``POS_STATS_N`` bursts."""
        stats = self.pos_stats
        pos = m.pos or {}
        self.pos_bursts = w_all = min(self.pos_bursts + 1.0, POS_STATS_N)
        for r, row in stats.items():  # [weight, mean, variance, share of bursts heard]
            row[3] += ((1.0 if r in pos else 0.0) - row[3]) / w_all
        for r, (v, n) in pos.items():
            x = v / n
            st = stats.get(r)
            if st is None:
                if len(stats) < 4 * MAX_RECEIVERS:
                    stats[r] = [1.0, x, self.p.pos_level_sd_db**2, 1.0 / w_all]
                continue
            w = st[0] + 1.0 if st[0] < POS_STATS_N else POS_STATS_N
            d = x - st[1]
            st[1] += d / w
            st[2] += (d * (x - st[1]) - st[2]) / w
            st[0] = w

    def pos_score(self, track: Track, b: Mac) -> float:
        """log LR of ``b``'s levels at the nodes against the device's latest burst there
        (:func:`pos_score`, with each node's spread of levels and share of bursts learnt)."""
        if not track.pos or not b.pos:
            return 0.0
        loc = self.locator
        if loc is not None:
            if not track.pos_xy_done:
                track.pos_xy, track.pos_xy_done = loc.locate(track.pos), True
            if track.pos_xy is not None:
                frames = sum(n for _v, n in b.pos.values())
                cached = self._b_xy
                if cached[0] is not b or cached[1] != frames:  # placed once for all its candidates
                    cached = self._b_xy = (b, frames, loc.locate({r: (v / n, n) for r, (v, n) in b.pos.items()}))
                xy = cached[2]
                if xy is not None:
                    p = self.p
                    return pos_score_m(
                        track.pos_xy, xy, b.first_ts - track.pos_ts,
                        area_m2=loc.area_m2, dwell_s=p.pos_dwell_s, speed_m_s=p.pos_speed_m_s,
                    )  # fmt: skip
        return pos_score(track.pos, b.pos, b.first_ts - track.pos_ts, self.p, self.pos_stats, self.node_miss.share)

    def new_weight(self, family: str) -> float:
        """log weight of "a new device" against the link ratios (normalised to uniform over
        ``max_gap_s``): its arrival rate times ``max_gap_s``."""
        return math.log(self.arrivals.get(family, self.default_arrivals) * self.p.max_gap_s)

    def candidates(self, family: str, ts: float) -> list[Track]:
        tracks = self._by_family.get(family)
        if not tracks:
            return []
        horizon = ts - self.p.max_gap_s
        if tracks[0].tail.last_ts < horizon:  # oldest first: prune what went silent
            keep = [t for t in tracks if t.tail.last_ts >= horizon]
            self._dropped(tracks, horizon)
            self._by_family[family] = tracks = keep
        return tracks

    def _dropped(self, tracks: list[Track], horizon: float) -> None:
        """Tracks silent since before ``horizon`` leave: :attr:`on_drop` hears of each."""
        if self.on_drop is not None:
            for t in tracks:
                if t.tail.last_ts < horizon:
                    self.on_drop(t)

    def prune(self, now: float) -> None:
        """Drop tracks silent for ``max_gap_s`` in every family (the ones no MAC asked for lately too)."""
        horizon = now - self.p.max_gap_s
        for fam in list(self._by_family):
            tracks = self._by_family[fam]
            keep = [t for t in tracks if t.tail.last_ts >= horizon]
            if len(keep) < len(tracks):
                self._dropped(tracks, horizon)
            if keep:
                self._by_family[fam] = keep
            else:
                del self._by_family[fam]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_family.values())

    def _table(self, family: str) -> TimingTable:
        share = self.in_burst.get(family)
        if share is None:
            return self.timing
        share = round(share, 2)
        table = self._tables.get(share)
        if table is None:
            table = self._tables[share] = TimingTable(replace(self.p, in_burst_share=share))
        return table

    def _timing(self, t: Track, gap: float, table: TimingTable, log_gap: float) -> float:
        k = table.index(log_gap)
        p = table.p
        if t.iv_n == 0 or gap <= p.burst_gap_s:
            return table.table[k]
        sd = t.iv_sd
        z = (log_gap - t.iv_mu) / sd
        own = math.exp(-0.5 * z * z - _LOG_SQRT_2PI) / sd / gap  # log-normal density of the gap
        rep = self._rep_density if gap <= p.repeat_s[1] else 0.0
        dens = (1.0 - p.in_burst_share) * (p.repeat_share * rep + (1.0 - p.repeat_share) * own)
        mixed = self.track_share * dens * p.max_gap_s + (1.0 - self.track_share) * table.exp_table[k]
        return math.log(mixed if mixed > 1e-9 else 1e-9)

    def assign(self, b: Mac, fp_share: float, gid: str = "") -> tuple[Track, float]:
        """Put ``b`` on a track (a continued one or a new one); returns it and P(b starts a device).

        With :attr:`blind` set, :attr:`last_confidence` is then how likely the link made is by the
        gap-blind evidence alone (no timing; 0.0 for a new track) and :attr:`last_gap` its silence."""
        family = b.fingerprint[:8]
        tracks = self.candidates(family, b.first_ts)
        b_pos = b.pos
        if b_pos is not None:  # several receivers (a burst heard by no node has an empty one)
            self.learn_pos_stats(b)
        best: Track | None = None
        best_v = -math.inf
        best_blind = 0.0
        total = math.exp(self.new_weight(family))
        new = total
        total_blind = total
        blind = self.blind
        p = self.p
        q = self.seq_continue.get(family)
        table = self._table(family)
        t_rows, t_lo, t_inv, t_n = table.table, table.lo, table.inv_step, table.N
        # what every candidate is judged against: b's side of _evidence, once (the loop is hot;
        # test_wifi_links keeps it equal to _evidence)
        fp = b.fingerprint
        b_n = b.first_n
        b_mean = b.first_sum / b_n if b_n else 0.0
        fd2 = p.rssi_frame_db * p.rssi_frame_db
        fd2_b = fd2 / b_n if b_n else 0.0
        ch2 = p.rssi_channel_db * p.rssi_channel_db
        walk2 = p.rssi_walk_db * p.rssi_walk_db
        walk_s = p.rssi_walk_s
        blind_walk = walk2 * (BLIND_GAP_S / walk_s)
        max_z2 = p.max_z * p.max_z
        rssi_const = _T_CONST + math.log(p.rssi_range_db)
        rb = b.rate_adv / b.rate_span if b.silences and b.rate_span > 0.0 else 0.0
        qq = p.seq_continue if q is None else q
        log_restart = math.log(1.0 - qq)
        log_cont_blind = math.log(qq * SEQ_MOD / (p.seq_window + p.seq_rate * BLIND_GAP_S) + (1.0 - qq))
        share = fp_share if fp_share > p.min_fp_share else p.min_fp_share
        fp_same = math.log(p.same_fp / share)
        fp_shares = self.fp_shares
        keep = p.same_fp
        other_lr: dict[str, float] = {}  # the tail's element set -> log LR of b's other set (see other_set)
        b_seq = b.first_seq
        ssids = b.ssids
        burst_gap = p.burst_gap_s
        max_gap = p.max_gap_s
        log = math.log
        log1p = math.log1p
        for t in tracks:
            a = t.tail
            gap = b.first_ts - a.last_ts
            if not 0.0 < gap <= max_gap:
                continue  # still speaking when b started: another device
            in_burst = gap <= burst_gap
            if (a.silences and a.rate_span > 0.0) or rb > 0.0:
                # a MAC heard over several bursts (own sequence rates): the general scoring
                v, vb = _evidence(
                    a, b, gap, p, fp_share, q, t.level_for(fp), blind, t.has_fp(fp), fp_shares.get(a.fingerprint, 0.0)
                )
                if v == -math.inf:
                    continue
            else:
                # the level the burst is judged against: its element set's on the track
                other = t.other_levels
                if fp != t.level_fp and other is not None and fp in other:
                    a_mean, a_n = other[fp][0], other[fp][1]
                elif t.level_n:
                    a_mean, a_n = t.level, t.level_n
                else:
                    a_n = a.last_n
                    a_mean = a.last_sum / a_n if a_n else 0.0
                v = vb = 0.0
                if a_n and b_n:
                    frames = fd2 / a_n + fd2_b
                    if in_burst:
                        s2 = frames + ch2
                    else:
                        w = gap / walk_s
                        s2 = frames + walk2 * (w if w > 1.0 else 1.0)
                    step = b_mean - a_mean
                    step2 = step * step
                    if step2 > max_z2 * s2:
                        continue
                    v = rssi_const - _T_EXP * log1p(step2 / s2 / _T_NU) - 0.5 * log(s2)
                    if blind:
                        sb2 = frames + blind_walk
                        vb = rssi_const - _T_EXP * log1p(step2 / sb2 / _T_NU) - 0.5 * log(sb2)
                window = p.seq_window + p.seq_rate * gap
                if window > SEQ_MOD / 2:
                    window = SEQ_MOD / 2
                dseq = (b_seq - a.last_seq) % SEQ_MOD
                if 0 < dseq <= window:
                    v += log(qq * SEQ_MOD / window + (1.0 - qq))
                    vb += log_cont_blind
                else:
                    v += log_restart
                    vb += log_restart
                if fp == a.fingerprint or fp == t.level_fp:
                    f = fp_same
                else:
                    o = other_lr.get(a.fingerprint)
                    if o is None:
                        o = other_lr[a.fingerprint] = other_set(keep, fp_shares.get(a.fingerprint, 0.0))
                    f = o
                v += f
                vb += f
            if b_pos and t.pos:  # several receivers: the walk at each node (gap-blind: no evidence)
                v += self.pos_score(t, b)
            lg = log(gap)
            if t.iv_n == 0:  # TimingTable.index, inline (the loop is hot)
                k = int((lg - t_lo) * t_inv + 0.5)
                v += t_rows[0 if k < 0 else (k if k < t_n else t_n - 1)]
            else:
                v += self._timing(t, gap, table, lg)
            if ssids and t.ssids:
                ss = ssid_score(t.ssids, ssids, self.ssid_share, p)
                v += ss
                vb += ss
            e = math.exp(v if v < 700.0 else 700.0)
            total += e
            eb = 0.0
            if blind:
                eb = math.exp(vb if vb < 700.0 else 700.0)
                total_blind += eb
            if v > best_v:
                best, best_v, best_blind = t, v, eb
        p_new = new / total
        self.last_p = math.exp(min(best_v, 700.0)) / total if best is not None else 0.0
        self.last_confidence = 0.0
        self.last_gap = 0.0
        if best is not None and math.exp(min(best_v, 700.0)) / total >= self.min_p:
            a = best.tail
            gap = b.first_ts - a.last_ts
            if blind:
                self.last_confidence = best_blind / total_blind
                self.last_gap = gap
            if gap > p.repeat_s[1]:
                best.learn_interval(gap)
            best.learn_level(b)
            best.learn_ssids(b)
            best.learn_pos(b)
            best.tail_before = a
            best.tail = b
            best.macs += 1
            self.linked += 1
            self.links.append((a, b))
            # most recently continued last: the list stays ordered by tail time
            tracks.remove(best)
            tracks.append(best)
            return best, p_new
        track = Track(gid, b, None, first_ts=b.first_ts)
        track.learn_level(b)
        track.learn_ssids(b)
        track.learn_pos(b)
        self._by_family.setdefault(family, []).append(track)
        return track, p_new
