"""What one heard Wi-Fi burst stands for in device presence: counting without trusting groups (pure).

Modern phones change MAC so often, and say so little about themselves, that no grouping can tell
every phone apart (docs/wifi.md). A count built on groups inherits their splits and joins. This
one does not: every heard scan burst stands for the time its device was in the store around it,
and the number of devices present is that time summed over a window, divided by the window.

For a device whose heard bursts are ``X`` seconds apart on average, each burst stands for ``X``
seconds of presence, and the ends of a visit add the time from arriving to the first heard burst
and from the last to leaving: on average ``E[X²] / E[X]`` in all (the waiting time from a random
moment to the next burst is length-biased). Over a store's devices of one fingerprint *family*::

    presence of the family = bursts x mean silence + visits x (E[X²]/E[X] - mean silence)
                           = bursts x mean silence x kappa,  kappa = 1 / (1 - (E[X²]/E[X] - mean silence) / mean visit)

by Little's law (visits = presence / mean visit). So a burst's weight is its family's mean silence
times ``kappa``, and it stands for ``weight / mean visit`` arrivals (how the number of distinct
devices over a period is estimated). What is learnt, from the capture itself:

* **silences** between two heard bursts of one device, per family (``E[X]``, ``E[X²]``): every
  silence of a public MAC and within one random MAC is one; across a MAC change only the links the
  grouping made with confidence *by gap-blind evidence* count (RSSI step against a fixed walk, a
  sequence continuation or shared network worth the same at any silence, no timing): confidence
  that does not depend on the silence picks silences without favouring short ones, which links
  chosen on timing would (a grouping splits at long silences). A family's own silences are shrunk
  towards those of all randomizing families (``shrink_devices``): a family with none of its own (iPhones
  on iOS 16: no directed probes, no sequence continuation) is assumed to scan like the rest;
* **the mean visit**: from whole visits, once over - of public MACs (whose presence is known
  exactly; a silence of ``visit_gap_s`` ends one) and of randomizing devices the grouping followed
  with confidence from their first burst to their last (``FOLLOWED_MIN`` bursts at least) - with a
  prior of ``prior_visits`` visits of ``prior_stay_s``. Online, public visits under way count too
  (:meth:`PresenceModel.visit_open`): visits over alone are the short ones for the first hours of
  a day (the long ones are still under way), so the mean is the product-limit (Kaplan-Meier) one,
  a visit under way being known to last at least as long as it has; one silent for
  ``quiet_silences`` of its family's mean silences is taken as over at its latest burst.

A burst whose device's silences are known - a public MAC's, or a randomizing device's the grouping
followed with confidence - weighs the device's own mean silence (shrunk to its family's): a phone
that scans every 10 s counts once however often it is heard, where it can be followed.
Statistics fade over ``learn_s`` of frame time (a whole capture: never). The learnt parameters'
uncertainty (from how many devices they were learnt) goes with each weight as a relative standard
deviation (``rel_sd``), with the mean visit's for the arrivals.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from gateway.models import PresenceMark

__all__ = ["PresenceModel", "PresenceParams"]


@dataclass(frozen=True, slots=True)
class PresenceParams:
    window_s: float = 300.0  # a burst's presence is spread over this window centred on it (wifi_count.py)
    learn_s: float = 6 * 3600.0  # learnt statistics fade over this much frame time (math.inf: never)
    confident: float = 0.9  # gap-blind chance of a link from which its silence is learnt
    max_gap_s: float = 600.0  # longest silence learnt between two bursts of a randomizing device
    visit_gap_s: float = 1800.0  # a public MAC's longer silence ends its visit (shorter ones are learnt)
    shrink_devices: float = 5.0  # a family's own silences count as much as the pool's once from this many devices
    prior_gap_s: float = 60.0  # before anything is learnt: mean silence between heard bursts ...
    prior_spread_s: float = 150.0  # ... and E[X²]/E[X]
    prior_n: float = 5.0  # ... worth this many silences
    prior_stay_s: float = 600.0  # mean visit (per arrival) before public visits say otherwise ...
    prior_visits: float = 5.0  # ... worth this many visits
    own_n: float = 2.0  # a device's own silences count against this many of its family's (online public MACs: none)
    quiet_silences: float = 2.0  # a public visit under way this many mean silences quiet counts as over
    max_kappa: float = 2.0

    def __post_init__(self) -> None:
        for name in (
            "window_s", "learn_s", "max_gap_s", "visit_gap_s", "shrink_devices", "prior_gap_s",
            "prior_spread_s", "prior_n", "prior_stay_s", "prior_visits", "own_n", "quiet_silences",
        ):  # fmt: skip
            v = getattr(self, name)
            if not (v > 0.0) or math.isnan(v) or (math.isinf(v) and name != "learn_s"):
                raise ValueError(f"PresenceParams.{name} must be a positive number, got {v!r}")
        if not 0.0 < self.confident < 1.0:
            raise ValueError(f"PresenceParams.confident must be between 0 and 1, got {self.confident!r}")
        if self.prior_spread_s < self.prior_gap_s:
            raise ValueError("PresenceParams.prior_spread_s (E[X²]/E[X]) cannot be below prior_gap_s (E[X])")
        if self.max_kappa < 1.0:
            raise ValueError(f"PresenceParams.max_kappa must be at least 1, got {self.max_kappa!r}")


class _Moments:
    """Decayed count, sum and sum of squares of silences, the devices they came from, and what the
    scatter of their mean needs when silences cluster by device (sums over devices of ``s_d²``,
    ``s_d n_d``, ``n_d²`` for a device's silences' sum ``s_d`` and number ``n_d``)."""

    __slots__ = ("c2", "cn", "d", "dm", "n", "n2", "s1", "s2")

    def __init__(self) -> None:
        self.dm = 0.0  # the devices' own mean silences, summed (the mean over devices: dm / d)
        self.n = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.d = 0.0
        self.c2 = 0.0
        self.cn = 0.0
        self.n2 = 0.0

    def add(self, g: float, own_s: float, own_n: int) -> None:
        """A silence ``g`` of a device whose silences so far add up to ``own_s`` in ``own_n``."""
        self.n += 1.0
        self.s1 += g
        self.s2 += g * g
        if own_n == 0:
            self.d += 1.0
            self.dm += g
        else:
            self.dm += (own_s + g) / (own_n + 1) - own_s / own_n
        self.c2 += 2.0 * own_s * g + g * g
        self.cn += own_s + g * own_n + g
        self.n2 += 2.0 * own_n + 1.0

    def scale(self, f: float) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) * f)

    def mean_var(self, mean: float) -> float:
        """Variance of the mean silence, devices drawn at random (their silences alike)."""
        if self.n <= 0.0:
            return math.inf
        return max(0.0, self.c2 - 2.0 * mean * self.cn + mean * mean * self.n2) / (self.n * self.n)


_EDGES = [0.0] + [30.0 * 1.15**k for k in range(48)]  # visit length bins (s): 30 s .. ~24 h, 15 % wide
_MAX_OPEN = 65536  # public visits under way remembered
_STAY_EVERY_S = 10.0  # the product-limit mean visit is recomputed at most this often (frame time)
BETWEEN_CV = 0.2  # families' mean silences differ by at least this much (relative sd) - an assumption
FOLLOWED_MIN = 3  # bursts of a device followed with confidence all along before its visit is learnt
_MAX_FAMILIES = 4096  # families remembered (a flood of forged fingerprints cannot grow this without end)


class PresenceModel:
    """Learns silences and visits (:meth:`silence`, :meth:`visit`), weighs bursts (:meth:`mark`)."""

    def __init__(self, params: PresenceParams | None = None) -> None:
        self.params = params or PresenceParams()
        self._random: dict[str, _Moments] = {}  # family -> silences of randomizing devices
        self._public: dict[str, _Moments] = {}  # family -> silences of public MACs
        self._pool = _Moments()  # every randomizing family's
        self._pool_public = _Moments()
        self._visits = 0.0  # whole visits over ...
        self._visit_time = 0.0  # ... and their presence (silences within them + their ends)
        self._ended = [0.0] * len(_EDGES)  # the same by length (product-limit mean visit) ...
        self._ended_s = [0.0] * len(_EDGES)  # ... and their sum in each bin
        self._open: dict[object, tuple[str, float, float]] = {}  # public visits under way: (family, first, latest)
        self._now = -math.inf  # latest frame time heard of
        self._stay: tuple[float, float] | None = None  # (time, value) of the latest product-limit mean
        self._ts = -math.inf  # time the decayed sums are as of

    # -- learning -----------------------------------------------------------------------------

    def _decay(self, ts: float) -> None:
        if ts > self._now:
            self._now = ts
        if ts <= self._ts:
            return
        if self._ts > -math.inf and math.isfinite(self.params.learn_s):
            f = math.exp(-(ts - self._ts) / self.params.learn_s)
            if f < 0.999:
                for m in (*self._random.values(), *self._public.values(), self._pool, self._pool_public):
                    m.scale(f)
                self._visits *= f
                self._visit_time *= f
                self._ended = [x * f for x in self._ended]
                self._ended_s = [x * f for x in self._ended_s]
            else:
                return  # too little time for it to matter: keep the old time so it adds up
        self._ts = ts

    def at(self, ts: float) -> None:
        """Frame time is ``ts``: what was learnt fades to it before a burst is weighed
        (:meth:`mark`). Without it a burst after a long quiet (a store closed overnight, a capture
        spanning days) was weighed by the statistics as they were when the quiet began, unfaded -
        the real Oppo's first bursts by silences learnt months before (issue 19, seventh round)."""
        self._decay(ts)

    def silence(
        self, family: str, gap: float, ts: float, *, public: bool = False, own: tuple[float, int] = (0.0, 0)
    ) -> None:
        """One silence of ``gap`` seconds between two heard bursts of one device (see the module
        docstring for which to give); ``own``: (total, number) of the silences given from the same
        device before (a device's silences are alike: what is learnt is as sure as the number of
        devices it comes from, not of silences)."""
        if not 0.0 < gap <= (self.params.visit_gap_s if public else self.params.max_gap_s):
            return
        self._decay(ts)
        table = self._public if public else self._random
        m = table.get(family)
        if m is None:
            if len(table) >= _MAX_FAMILIES:
                table.clear()
            m = table[family] = _Moments()
        m.add(gap, own[0], own[1])
        (self._pool_public if public else self._pool).add(gap, own[0], own[1])

    def visit(self, family: str, length: float, ts: float, *, public: bool = True, key: object = None) -> None:
        """A whole visit, over: ``length`` seconds from its first heard burst to its last (a public
        MAC's, or a randomizing device's followed with confidence all along); its two ends add
        ``spread``. ``key``: the handle it was opened with (:meth:`visit_open`), if it was."""
        if key is not None:
            self._open.pop(key, None)
        self._decay(ts)
        self._visits += 1.0
        d = max(0.0, length) + self.spread(family, public=public)
        self._visit_time += d
        k = bisect.bisect_right(_EDGES, d) - 1
        self._ended[k] += 1.0
        self._ended_s[k] += d
        self._stay = None

    def visit_open(self, key: object, family: str, ts: float) -> None:
        """A public MAC's visit starts with a burst at ``ts`` (``key``: the caller's handle for it);
        :meth:`visit_heard` as it is heard again, :meth:`visit` with ``key`` once it is over."""
        self._decay(ts)
        if len(self._open) >= _MAX_OPEN:  # a flood of forged public MACs: forget the oldest
            self._open.pop(next(iter(self._open)))
        self._open[key] = (family, ts, ts)

    def visit_heard(self, key: object, ts: float) -> None:
        """The public visit ``key`` under way was heard again at ``ts``."""
        v = self._open.get(key)
        if v is not None:
            self._open[key] = (v[0], v[1], ts)

    # -- what is learnt -----------------------------------------------------------------------

    def _pooled(self, public: bool) -> tuple[float, float, float]:
        """(variance of the mean, E[X], E[X²]) of the pool with the prior: every randomizing
        family's silences for a randomizing family (public MACs' while there are none), and the
        other way round."""
        p = self.params
        first, second = (self._pool_public, self._pool) if public else (self._pool, self._pool_public)
        m = first if first.n >= 1.0 else second
        n = m.n + p.prior_n
        mean = (m.s1 + p.prior_n * p.prior_gap_s) / n
        sq = (m.s2 + p.prior_n * p.prior_gap_s * p.prior_spread_s) / n
        # the prior stands for prior_n devices of one silence each, scattered as silences do
        prior_var = (sq - mean * mean) / p.prior_n
        var = m.mean_var(mean) if m.d >= 2.0 else math.inf
        var = 1.0 / (1.0 / var + 1.0 / prior_var) if var > 0.0 else 0.0
        # a family with none of its own may scan unlike the pool: as far as the families with
        # their own differ among themselves (at least BETWEEN_CV of the mean)
        return var + self._between(public, mean), mean, sq

    def _between(self, public: bool, mean: float) -> float:
        """Variance of a family's mean silence about the pool's: how far a family that cannot be
        followed may scan unlike the rest (BETWEEN_CV of the mean: an assumption)."""
        return (BETWEEN_CV * mean) ** 2

    def _moments(self, family: str, public: bool) -> tuple[float, float, float]:
        """(variance of the mean, E[X], E[X²]) of a family's silences, shrunk towards the pool's:
        its own weigh ``d / (d + shrink_devices)`` for silences from ``d`` devices."""
        var0, mean0, sq0 = self._pooled(public)
        m = (self._public if public else self._random).get(family)
        if m is None or m.n <= 0.0 or m.d <= 0.0:
            return var0, mean0, sq0
        w = m.d / (m.d + self.params.shrink_devices)
        own_mean = m.s1 / m.n
        own_var = m.mean_var(own_mean) if m.d >= 2.0 else var0
        mean = w * own_mean + (1.0 - w) * mean0
        return w * w * own_var + (1.0 - w) * (1.0 - w) * var0, mean, w * m.s2 / m.n + (1.0 - w) * sq0

    def device_silence(self, family: str, *, public: bool = False) -> float:
        """The mean over devices of their own mean silence (each device once, however often it
        scans), shrunk towards the pool's as :meth:`_moments` shrinks the mean silence: what the
        first burst of a device that will be followed stands for (see :meth:`mark`)."""
        p = self.params
        first, second = (self._pool_public, self._pool) if public else (self._pool, self._pool_public)
        pool = first if first.d >= 1.0 else second
        value = (pool.dm + p.prior_n * p.prior_gap_s) / (pool.d + p.prior_n)
        m = (self._public if public else self._random).get(family)
        if m is not None and m.d > 0.0:
            w = m.d / (m.d + p.shrink_devices)
            value = w * m.dm / m.d + (1.0 - w) * value
        return value

    def mean_silence(self, family: str, *, public: bool = False) -> float:
        """E[X]: mean silence between two heard bursts of a device of ``family``."""
        return self._moments(family, public)[1]

    def spread(self, family: str, *, public: bool = False) -> float:
        """E[X²]/E[X]: the presence a visit's two ends add to its bursts' silences, on average."""
        _n, mean, sq = self._moments(family, public)
        return max(mean, sq / mean)

    def stay(self) -> float:
        """Mean visit per arrival, with the prior: the visits over, and the public ones under way
        (product-limit mean; see the module docstring). Recomputed at most every ``_STAY_EVERY_S``."""
        p = self.params
        if not self._open:
            return (self._visit_time + p.prior_visits * p.prior_stay_s) / (self._visits + p.prior_visits)
        cached = self._stay
        if cached is not None and self._now - cached[0] < _STAY_EVERY_S:
            return cached[1]
        value = self._product_limit()
        self._stay = (self._now, value)
        return value

    def _product_limit(self) -> float:
        p = self.params
        ended = list(self._ended)
        ended_s = list(self._ended_s)
        under_way: list[float] = []  # how long each visit under way has lasted so far (censored)
        spreads: dict[str, tuple[float, float]] = {}
        now = self._now
        for fam, first, latest in self._open.values():
            sp = spreads.get(fam)
            if sp is None:
                sp = spreads[fam] = (self.spread(fam, public=True), self.mean_silence(fam, public=True))
            d = latest - first + sp[0]
            if now - latest > p.quiet_silences * sp[1]:  # quiet for long: over at its latest burst
                k = bisect.bisect_right(_EDGES, d) - 1
                ended[k] += 1.0
                ended_s[k] += d
            else:
                under_way.append(d)
        under_way.sort()
        n_total = sum(ended) + len(under_way)
        if n_total <= 0.0:
            return p.prior_stay_s
        # product-limit survival over the length bins: a visit under way is at risk up to its length
        at_risk = n_total
        surv = 1.0
        mean = 0.0
        j = 0  # visits under way shorter than the current bin's start (no longer at risk)
        last = 0.0
        for k, lo in enumerate(_EDGES):
            while j < len(under_way) and under_way[j] < lo:
                at_risk -= 1.0
                j += 1
            d = ended[k]
            if d > 0.0 and at_risk > 0.0:
                q = min(1.0, d / at_risk)
                mean += surv * q * (ended_s[k] / d)
                surv *= 1.0 - q
                last = ended_s[k] / d
            at_risk -= d
        # those that outlast every visit seen over: at least as long as the longest seen, or the prior
        tail = max(p.prior_stay_s, last, under_way[-1] if under_way else 0.0)
        m = mean + surv * tail
        return (n_total * m + p.prior_visits * p.prior_stay_s) / (n_total + p.prior_visits)

    def _kappa(self, mean: float, spread: float, stay: float) -> float:
        return min(self.params.max_kappa, 1.0 / max(1e-9, 1.0 - (spread - mean) / stay))

    def mark(
        self,
        family: str,
        *,
        public: bool = False,
        own: tuple[float, int] | None = None,
        so_far: bool = False,
        follows: bool = False,
    ) -> PresenceMark:
        """What one heard burst of ``family`` stands for. ``own``: (total, number) of the silences
        known of the burst's own device (a public MAC's visit, a track's confident links) - its own
        rate, shrunk to its family's (``own_n``): a phone that scans every 10 s counts once.

        ``so_far`` (the online grouping): ``own`` holds the silences heard *before* the burst. A
        public MAC's then weigh alone (every silence of it is heard and certainly its own), and at
        its first burst (``own`` with no silence) it weighs :meth:`device_silence`, the mean over
        devices of their own mean silence. So its visit adds up to its own rate: weights that
        start at (or are shrunk to) the mean over *bursts* - which leans to the fast scanners,
        they burst more often - make the slow ones, few bursts each standing for long, count
        short (measured on the crowds: the online grouping's public MACs read 0.92 of their
        presence on average, 1.00 so). A whole capture knows a visit's silences before and after a
        burst: shrunk as before. ``follows``: the burst surely continues its group's previous one
        (:attr:`PresenceMark.follows`)."""
        mean_var, mean, sq = self._moments(family, public)
        spread = max(mean, sq / mean)
        stay = self.stay()
        kappa = self._kappa(mean, spread, stay)
        w = mean
        if own is not None and own[1] > 0:
            k = 0.0 if public and so_far else self.params.own_n
            w = (own[0] + k * mean) / (own[1] + k)
        elif own is not None and public and so_far:
            w = self.device_silence(family, public=True)
        # uncertainty of the learnt parameters: the mean silence (the devices it was learnt from;
        # the pool's for a family without its own, and how families differ), and the mean visit
        # over its visits (visits vary about as much as they last), through kappa
        visits = self._visits + self.params.prior_visits
        stay_rel = 1.0 / math.sqrt(visits)
        k_rel = (kappa - 1.0) * stay_rel
        rel = math.sqrt(mean_var / (mean * mean) + k_rel * k_rel)
        presence = w * kappa
        return PresenceMark(
            presence_s=presence,
            rel_sd=rel,
            arrivals=presence / stay,
            arrivals_rel_sd=math.sqrt(rel * rel + stay_rel * stay_rel),
            follows=follows,
        )

    def summary(self) -> dict[str, float]:
        """What has been learnt (for a status line)."""
        _n, mean, sq = self._pooled(False)
        return {
            "silence_s": round(mean, 1),
            "spread_s": round(max(mean, sq / mean), 1),
            "silences": round(self._pool.n, 1),
            "devices": round(self._pool.d, 1),
            "silence_rel_sd": round(math.sqrt(self._pooled(False)[0]) / mean, 3),
            "stay_s": round(self.stay(), 1),
            "visits": round(self._visits, 1),
        }
