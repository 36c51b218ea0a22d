"""Group rotating randomized Wi-Fi MACs over a whole capture (pure; offline counterpart of wifi_groups).

:class:`~gateway.identity.wifi_groups.WifiGrouper` decides online, frame by frame, with what has
been heard so far. A capture file on disk can do better: every MAC's whole life is known before a
single group is decided. :class:`ChainGrouper` first summarises each MAC (one pass, O(1) per
frame, O(MACs) memory) and then links MAC lifetimes into chains - one chain per device - with

* everything the online grouper uses (same fingerprint, the new MAC starts ``min_gap_s`` to
  ``max_gap_s`` after the old one's last frame, the sequence number continues the old MAC's, the
  RSSI continues),
* better estimates of the same things: the sequence-number rate of *both* MACs over their whole
  lives (a device's rate is its own: frames per burst times bursts per second), the mean RSSI of
  the old MAC's *last* burst against the new MAC's *first* burst,
* and a **global** decision: every possible link of a fingerprint is scored first, and a link is
  judged against all the others that compete for either of its ends (another successor for the
  old MAC, another predecessor for the new one). A device arriving while another of the same model
  leaves is the main source of wrong links (its random first sequence number may land where the
  leaver's would have continued); with competitors and a prior against linking in the score, such
  chance matches lose against a real continuation and lose when the evidence is thin.

Each candidate link ``a -> b`` gets a log-likelihood ratio "b is a's device after a MAC change"
against "b is an unrelated device": sequence advance (normal around the rate times the silence,
spread ``seq_slack + seq_spread * expected``, against uniform over 4096), RSSI step (normal,
spread from per-frame noise and the walk over the silence, against uniform over
``rssi_range_db``), and the ratio of the two MACs' sequence rates (normal in log, spread shrinking
with their heard bursts, against the spread between devices). Links are then taken greedily,
best score first, where the score is the ratio less ``log(exp(prior) + sum of exp(competitors))``,
while it is at least ``min_score`` and neither end is taken.

Group ids are counters (``prefix`` + n) in the order chains start; they never derive from a MAC.
Globally administered (public) MACs are a group each. Frames out of time order only count.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

__all__ = ["ChainGrouper", "ChainParams"]

SEQ_MOD = 4096
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(slots=True, frozen=True)
class ChainParams:
    min_gap_s: float = 2.0  # a MAC changes between probe bursts, not within one
    max_gap_s: float = 240.0  # longest silence between an old MAC's last and a new MAC's first frame
    burst_gap_s: float = 5.0  # frames further apart belong to different probe bursts
    seq_rate: float = 1.5  # sequence numbers per second when neither MAC has a rate of its own
    seq_slack: float = 16.0  # spread of the sequence advance: slack + spread * expected advance
    seq_spread: float = 0.2
    max_z: float = 3.0  # a sequence or RSSI step beyond this many spreads is no continuation at all
    rssi_frame_db: float = 5.0  # spread of one frame's RSSI around the device's level
    rssi_walk_db: float = 2.0  # how far a shopper's level wanders per ``rssi_walk_s`` of silence
    rssi_walk_s: float = 30.0
    rssi_range_db: float = 40.0  # spread of levels between devices (RSSI of an unrelated device)
    rate_sd: float = 0.45  # spread of log(rate) measured over one inter-burst silence
    pop_rate_sd: float = 0.6  # spread of log(rate) between devices
    prior: float = 0.0  # log-odds against a link before any evidence (with nothing competing)
    min_score: float = -0.5  # smallest score (ratio less log(exp(prior) + competitors)) of a link


@dataclass(slots=True, eq=False)
class _Life:
    """What a capture heard of one MAC address, from its first frame to its last."""

    idx: int
    mac: str
    randomized: bool
    fingerprint: str
    first_ts: float
    first_seq: int
    last_ts: float
    last_seq: int
    advance: int = 0  # sequence numbers counted from first to last frame (unwrapped)
    bursts: int = 1
    first_sum: float = 0.0  # RSSI of the first burst
    first_n: int = 0
    last_sum: float = 0.0  # RSSI of the latest burst
    last_n: int = 0
    frames: int = 1

    def rate(self) -> tuple[float, int] | None:
        """Sequence numbers per second over the MAC's life, and the silences it was measured over."""
        span = self.last_ts - self.first_ts
        if self.bursts < 2 or span <= 0.0:
            return None
        return self.advance / span, self.bursts - 1


def _log_normal_pdf(z: float, spread: float) -> float:
    return -0.5 * z * z - _LOG_SQRT_2PI - math.log(spread)


class ChainGrouper:
    """Feed every probe request with :meth:`add`, then :meth:`solve` once for the group of each MAC."""

    def __init__(self, params: ChainParams | None = None, *, prefix: str = "w") -> None:
        self.p = params or ChainParams()
        self._prefix = prefix
        self._lives: dict[str, _Life] = {}
        self.out_of_order = 0  # frames earlier than their MAC's latest (counted, not learned from)
        self.linked = 0  # set by solve(): MAC changes linked into chains

    def __len__(self) -> int:
        return len(self._lives)

    def add(self, mac: str, randomized: bool, fingerprint: str, seq: int, ts: float, rssi: float | None) -> int:
        """Learn from one frame; returns the MAC's index (its order of first appearance)."""
        life = self._lives.get(mac)
        if life is None:
            life = self._lives[mac] = _Life(len(self._lives), mac, randomized, fingerprint, ts, seq, ts, seq)
            if rssi is not None:
                life.first_sum = life.last_sum = rssi
                life.first_n = life.last_n = 1
            return life.idx
        life.frames += 1
        if ts < life.last_ts:
            self.out_of_order += 1
            return life.idx
        if ts - life.last_ts >= self.p.burst_gap_s:
            life.bursts += 1
            life.last_sum = 0.0
            life.last_n = 0
        life.advance += (seq - life.last_seq) % SEQ_MOD
        life.last_ts = ts
        life.last_seq = seq
        if rssi is not None:
            life.last_sum += rssi
            life.last_n += 1
            if life.bursts == 1:
                life.first_sum += rssi
                life.first_n += 1
        return life.idx

    def link_score(self, a: _Life, b: _Life) -> float | None:
        """Log-likelihood ratio of "``b`` is ``a``'s device after a MAC change" (None: impossible)."""
        p = self.p
        gap = b.first_ts - a.last_ts
        if gap < p.min_gap_s or gap > p.max_gap_s:
            return None
        ra, rb = a.rate(), b.rate()
        if ra is None and rb is None:
            rate = p.seq_rate
        elif rb is None:
            rate = ra[0]  # type: ignore[index]
        elif ra is None:
            rate = rb[0]
        else:
            rate = (ra[0] * ra[1] + rb[0] * rb[1]) / (ra[1] + rb[1])
        expect = rate * gap
        dseq = (b.first_seq - a.last_seq) % SEQ_MOD
        spread = p.seq_slack + p.seq_spread * expect
        z = (dseq - expect) / spread
        if dseq == 0 or abs(z) > p.max_z:
            return None
        score = _log_normal_pdf(z, spread) + math.log(SEQ_MOD)
        if a.last_n and b.first_n:
            s = math.sqrt(
                p.rssi_frame_db**2 / a.last_n
                + p.rssi_frame_db**2 / b.first_n
                + p.rssi_walk_db**2 * max(1.0, gap / p.rssi_walk_s)
            )
            z = (b.first_sum / b.first_n - a.last_sum / a.last_n) / s
            if abs(z) > p.max_z:
                return None
            score += _log_normal_pdf(z, s) + math.log(p.rssi_range_db)
        if ra is not None and rb is not None and ra[0] > 0.0 and rb[0] > 0.0:
            d = math.log(ra[0] / rb[0])
            s = p.rate_sd * math.sqrt(1.0 / ra[1] + 1.0 / rb[1])
            score += _log_normal_pdf(d / s, s) - _log_normal_pdf(d / p.pop_rate_sd, p.pop_rate_sd)
        return score

    def solve(self) -> dict[str, str]:
        """The group id of every MAC added so far (see the module docstring for how)."""
        p = self.p
        by_fp: dict[str, list[_Life]] = {}
        for life in self._lives.values():
            if life.randomized:
                by_fp.setdefault(life.fingerprint, []).append(life)
        pred: dict[int, str] = {}  # life idx -> the MAC before it in its chain
        has_succ: set[int] = set()
        exp_prior = math.exp(p.prior)
        for fp in sorted(by_fp):
            lives = by_fp[fp]
            lives.sort(key=lambda x: (x.first_ts, x.idx))
            firsts = [x.first_ts for x in lives]
            edges: list[tuple[float, _Life, _Life]] = []
            for a in lives:
                lo = bisect.bisect_left(firsts, a.last_ts + p.min_gap_s)
                hi = bisect.bisect_right(firsts, a.last_ts + p.max_gap_s)
                for b in lives[lo:hi]:
                    v = self.link_score(a, b)
                    if v is not None:
                        edges.append((v, a, b))
            if not edges:
                continue
            # competition: the summed odds of every candidate link at each end
            at_a: dict[int, float] = {}
            at_b: dict[int, float] = {}
            odds = [math.exp(min(v, 700.0)) for v, _a, _b in edges]
            for o, (_v, a, b) in zip(odds, edges, strict=True):
                at_a[a.idx] = at_a.get(a.idx, 0.0) + o
                at_b[b.idx] = at_b.get(b.idx, 0.0) + o
            scored = [
                (v - math.log(exp_prior + at_a[a.idx] + at_b[b.idx] - 2.0 * o), a.idx, b.idx, a.mac)
                for o, (v, a, b) in zip(odds, edges, strict=True)
            ]
            scored.sort(key=lambda e: (-e[0], e[1], e[2]))
            for s, ai, bi, a_mac in scored:
                if s < p.min_score:
                    break
                if ai in has_succ or bi in pred:
                    continue
                has_succ.add(ai)
                pred[bi] = a_mac
        self.linked = len(pred)
        groups: dict[str, str] = {}
        n = 0
        # in the order chains start: a predecessor starts before its successor, so has its id
        for life in sorted(self._lives.values(), key=lambda x: (x.first_ts, x.idx)):
            before = pred.get(life.idx)
            if before is None:
                n += 1
                groups[life.mac] = f"{self._prefix}{n}"
            else:
                groups[life.mac] = groups[before]
        return groups
