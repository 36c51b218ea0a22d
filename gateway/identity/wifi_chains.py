"""Group rotating randomized Wi-Fi MACs over a whole capture (pure; offline counterpart of wifi_groups).

:class:`~gateway.identity.wifi_groups.WifiGrouper` decides online, frame by frame, with what has
been heard so far. A capture file on disk can do better: every MAC's whole life is known before a
single group is decided. :class:`ChainGrouper` first summarises each MAC (one pass, O(1) per
frame, one summary per MAC) and then links MAC lifetimes into chains - one chain per device - with

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
while it is at least ``min_score`` and neither end is taken. (With the default ``min_score`` -0.5,
two equally good candidates for one end - a posterior near one half each - still give a link, to
one of them: on the benchmark crowds that trade keeps the count within bounds; three do not.)

Cost of :meth:`ChainGrouper.solve`: every pair of same-fingerprint MACs whose start falls 2-240 s
after the other's end is scored, numpy-vectorised in chunks of ``_PAIRS_PER_CHUNK`` pairs, so the
time grows with MACs x MACs starting in a 240 s window (8,000 MACs of one model in an hour: ~0.5 s);
only links that could be taken are kept (the others only add to their ends' competition).

A MAC's sequence rate counts only forward steps of less than half the counter (2048) over
silences up to ``max_gap_s``: a step back (frames reordered between two radios), a counter restart
or a long absence does not make the rate up.

Group ids are counters (``prefix`` + n) in the order chains start; they never derive from a MAC.
Globally administered (public) MACs are a group each. A frame earlier than its MAC's latest one
(merged captures) moves the MAC's start back if it is earlier still, and is otherwise only counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["ChainGrouper", "ChainParams"]

SEQ_MOD = 4096
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_PAIRS_PER_CHUNK = 200_000  # candidate pairs scored per numpy pass (bounds solve()'s working memory)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


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

    def __post_init__(self) -> None:
        positive = (
            "min_gap_s",
            "burst_gap_s",
            "seq_rate",
            "seq_slack",
            "max_z",
            "rssi_frame_db",
            "rssi_walk_db",
            "rssi_walk_s",
            "rssi_range_db",
            "rate_sd",
            "pop_rate_sd",
        )
        for name in positive:
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"ChainParams.{name} must be a positive number, got {v!r}")
        if not (math.isfinite(self.max_gap_s) and self.max_gap_s > self.min_gap_s):
            raise ValueError(f"ChainParams.max_gap_s must be above min_gap_s, got {self.max_gap_s!r}")
        if not (math.isfinite(self.seq_spread) and self.seq_spread >= 0.0):
            raise ValueError(f"ChainParams.seq_spread must be >= 0, got {self.seq_spread!r}")
        for name in ("prior", "min_score"):
            v = getattr(self, name)
            if not (math.isfinite(v) and -50.0 <= v <= 50.0):
                raise ValueError(f"ChainParams.{name} must be within -50..50, got {v!r}")


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
    rate_adv: int = 0  # sequence numbers counted over plausible forward steps ...
    rate_span: float = 0.0  # ... and the time they took
    silences: int = 0  # inter-burst silences among those steps
    bursts: int = 1
    first_sum: float = 0.0  # RSSI of the first burst
    first_n: int = 0
    last_sum: float = 0.0  # RSSI of the latest burst
    last_n: int = 0
    frames: int = 1


class ChainGrouper:
    """Feed every probe request with :meth:`add`, then :meth:`solve` for the group of each MAC."""

    def __init__(self, params: ChainParams | None = None, *, prefix: str = "w") -> None:
        self.params = params or ChainParams()
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
        dt = ts - life.last_ts
        if dt < 0.0:
            self.out_of_order += 1
            if ts < life.first_ts:  # merged captures: the MAC was heard earlier than we thought
                life.first_ts = ts
                life.first_seq = seq
            return life.idx
        if dt >= self.params.burst_gap_s:
            life.bursts += 1
            life.last_sum = 0.0
            life.last_n = 0
        step = (seq - life.last_seq) % SEQ_MOD
        if step < SEQ_MOD // 2 and dt <= self.params.max_gap_s:
            life.rate_adv += step
            life.rate_span += dt
            if dt >= self.params.burst_gap_s:
                life.silences += 1
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
        v, ia, _ib = self._scores(_Columns([a, b]), np.array([0]), np.array([1]))
        return float(v[0]) if ia.size else None

    def _scores(self, c: _Columns, ia: I64, ib: I64) -> tuple[F64, I64, I64]:
        """Log-likelihood ratios of the possible links among ``ia[k] -> ib[k]``, and their ends."""
        p = self.params
        gap = c.first_ts[ib] - c.last_ts[ia]
        wa, wb = c.rate_w[ia], c.rate_w[ib]
        w = wa + wb
        rate = np.where(w > 0.0, (c.rate[ia] * wa + c.rate[ib] * wb) / np.maximum(w, 1e-12), p.seq_rate)
        expect = rate * gap
        dseq = (c.first_seq[ib] - c.last_seq[ia]) % SEQ_MOD
        spread = p.seq_slack + p.seq_spread * expect
        z = (dseq - expect) / spread
        # the sequence gate first: a few per cent of the pairs pass it
        keep = np.flatnonzero((gap >= p.min_gap_s) & (gap <= p.max_gap_s) & (dseq != 0) & (np.abs(z) <= p.max_z))
        ia, ib, gap, wa, wb, z, spread = ia[keep], ib[keep], gap[keep], wa[keep], wb[keep], z[keep], spread[keep]
        score = -0.5 * z * z - _LOG_SQRT_2PI - np.log(spread) + math.log(SEQ_MOD)
        # RSSI step from a's last burst to b's first (where both have one)
        na, nb = c.last_n[ia], c.first_n[ib]
        has = (na > 0) & (nb > 0)
        fd2 = p.rssi_frame_db * p.rssi_frame_db
        s = np.sqrt(
            fd2 / np.maximum(na, 1) + fd2 / np.maximum(nb, 1) + p.rssi_walk_db**2 * np.maximum(1.0, gap / p.rssi_walk_s)
        )
        zr = (c.first_rssi[ib] - c.last_rssi[ia]) / s
        score += np.where(has, -0.5 * zr * zr - _LOG_SQRT_2PI - np.log(s) + math.log(p.rssi_range_db), 0.0)
        # the two MACs' own sequence rates (where both have one)
        both = (wa > 0.0) & (wb > 0.0) & (c.rate[ia] > 0.0) & (c.rate[ib] > 0.0)
        d = np.log(np.where(both, c.rate[ia], 1.0) / np.where(both, c.rate[ib], 1.0))
        sd = p.rate_sd * np.sqrt(1.0 / np.maximum(wa, 1.0) + 1.0 / np.maximum(wb, 1.0))
        pop = p.pop_rate_sd
        score += np.where(both, -0.5 * (d / sd) ** 2 - np.log(sd) + 0.5 * (d / pop) ** 2 + math.log(pop), 0.0)
        ok = ~has | (np.abs(zr) <= p.max_z)
        return score[ok], ia[ok], ib[ok]

    def solve(self) -> dict[str, str]:
        """The group id of every MAC added so far (see the module docstring for how)."""
        p = self.params
        by_fp: dict[str, list[_Life]] = {}
        for life in self._lives.values():
            if life.randomized:
                by_fp.setdefault(life.fingerprint, []).append(life)
        pred: dict[int, str] = {}  # life idx -> the MAC before it in its chain
        has_succ: set[int] = set()
        exp_prior = math.exp(p.prior)
        keep_from = p.min_score + p.prior  # a link scoring less can never be taken (score <= v - prior)
        for fp in sorted(by_fp):
            lives = by_fp[fp]
            lives.sort(key=lambda x: (x.first_ts, x.idx))
            c = _Columns(lives)
            lo = np.searchsorted(c.first_ts, c.last_ts + p.min_gap_s, side="left")
            hi = np.searchsorted(c.first_ts, c.last_ts + p.max_gap_s, side="right")
            counts = np.maximum(hi - lo, 0)
            at_a = np.zeros(len(lives))
            at_b = np.zeros(len(lives))
            kept: list[tuple[F64, I64, I64]] = []
            start = 0
            cum = np.cumsum(counts)
            while start < len(lives):
                # a chunk of old MACs whose candidate pairs fit in _PAIRS_PER_CHUNK (at least one MAC)
                base = cum[start - 1] if start else 0
                stop = max(start + 1, int(np.searchsorted(cum, base + _PAIRS_PER_CHUNK, side="right")))
                n = counts[start:stop]
                total = int(n.sum())
                if total:
                    ia = np.repeat(np.arange(start, stop), n)
                    offs = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
                    ib = np.repeat(lo[start:stop], n) + offs
                    v, ia, ib = self._scores(c, ia, ib)
                    odds = np.exp(np.minimum(v, 700.0))
                    at_a += np.bincount(ia, weights=odds, minlength=len(lives))
                    at_b += np.bincount(ib, weights=odds, minlength=len(lives))
                    sel = v >= keep_from
                    kept.append((v[sel], ia[sel], ib[sel]))
                start = stop
            if not kept:
                continue
            v = np.concatenate([k[0] for k in kept])
            ia = np.concatenate([k[1] for k in kept])
            ib = np.concatenate([k[2] for k in kept])
            odds = np.exp(np.minimum(v, 700.0))
            # competitors at either end: every other possible link of a and of b
            others = np.maximum(at_a[ia] + at_b[ib] - 2.0 * odds, 0.0)
            score = v - np.log(exp_prior + others)
            gia, gib = c.idx[ia], c.idx[ib]
            order = np.lexsort((gib, gia, -score))
            for k in order.tolist():
                if score[k] < p.min_score:
                    break
                ai, bi = int(gia[k]), int(gib[k])
                if ai in has_succ or bi in pred:
                    continue
                has_succ.add(ai)
                pred[bi] = lives[int(ia[k])].mac
        self.linked = len(pred)
        groups: dict[str, str] = {}
        n_groups = 0
        # in the order chains start: a predecessor starts before its successor, so has its id
        for life in sorted(self._lives.values(), key=lambda x: (x.first_ts, x.idx)):
            before = pred.get(life.idx)
            if before is None:
                n_groups += 1
                groups[life.mac] = f"{self._prefix}{n_groups}"
            else:
                groups[life.mac] = groups[before]
        return groups


class _Columns:
    """The lives of one fingerprint as numpy columns (what :meth:`ChainGrouper._scores` reads)."""

    def __init__(self, lives: list[_Life]) -> None:
        self.idx = np.array([x.idx for x in lives], dtype=np.int64)
        self.first_ts = np.array([x.first_ts for x in lives], dtype=np.float64)
        self.last_ts = np.array([x.last_ts for x in lives], dtype=np.float64)
        self.first_seq = np.array([x.first_seq for x in lives], dtype=np.int64)
        self.last_seq = np.array([x.last_seq for x in lives], dtype=np.int64)
        # a MAC's rate and its weight (the inter-burst silences it was measured over; 0: none)
        w = np.array([x.silences if x.rate_span > 0.0 else 0 for x in lives], dtype=np.float64)
        span = np.array([x.rate_span for x in lives], dtype=np.float64)
        adv = np.array([x.rate_adv for x in lives], dtype=np.float64)
        self.rate_w = w
        self.rate = np.where(w > 0.0, adv / np.maximum(span, 1e-12), 0.0)
        self.first_n = np.array([x.first_n for x in lives], dtype=np.int64)
        self.last_n = np.array([x.last_n for x in lives], dtype=np.int64)
        self.first_rssi = np.array([x.first_sum / x.first_n if x.first_n else 0.0 for x in lives])
        self.last_rssi = np.array([x.last_sum / x.last_n if x.last_n else 0.0 for x in lives])
