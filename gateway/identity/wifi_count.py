"""How many Wi-Fi devices are present: per minute and per aggregate interval, per zone (pure).

Fed by the pipeline after the identity stage (an observation's subject is its Wi-Fi group's daily
pseudonym) with its fixes (a subject's zone, where located). The count does not count groups: one
frame of every heard scan burst carries a :class:`~gateway.models.PresenceMark` - the presence (in
device-seconds) and the arrivals it stands for, learnt from the capture by
:mod:`gateway.identity.wifi_presence` - so a phone the grouping split in three still counts once:

* **per minute**: the mean number of devices present during the minute - the presence of the
  bursts heard within ``window_s`` centred on it, each spread evenly over its own ``window_s``
  around it. Where a burst surely continues its group's previous one within ``window_s``
  (``PresenceMark.follows``: the same MAC, a public MAC, a link sure by gap-blind evidence), the
  device counts as present all along in between instead, and what the two bursts stood for beyond
  that silence goes on with the device (spread over half the window after its latest burst): one
  followed phone counts as one, not as its bursts' scatter (issue 19, sixth round). A minute is
  published once frame time is ``window_s / 2`` (plus ``slack_s`` for held frames) past its end:
  the bursts after it are part of its evidence. Per zone: each burst by its subject's latest fix
  zone, where Wi-Fi is localized;
* **per aggregate interval** (``presence.aggregate_interval_s``, 15 min): the mean of its minutes,
  and the **distinct** devices present during it: those present at its start and end (half each)
  plus the arrivals its bursts stand for (Little's law: presence / mean visit);
* **uncertainty** (one standard deviation): the bursts' own scatter (each burst's contribution
  squared, as for a sum of counts) and the learnt parameters' (``PresenceMark.rel_sd``, the same
  for every burst of a family: it does not average out).

Events are :class:`gateway.models.DeviceCount` (``wifi.devices``, aggregate priority); nothing is
published before the first Wi-Fi burst is heard (a gateway without Wi-Fi sends none).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.models import DeviceCount, EventBase, Fix, PresenceMark

__all__ = ["MINUTE_S", "WifiCounter", "count_marks"]

MINUTE_S = 60.0


class _Minute:
    __slots__ = ("arrivals", "arrivals_syst", "end", "length", "n", "syst", "var", "zones")

    def __init__(self, end: float, length: float) -> None:
        self.end = end
        self.length = length
        self.n = 0.0
        self.var = 0.0  # the bursts' own scatter (sum of contributions squared) ...
        self.syst = 0.0  # ... and the learnt parameters' error (sum of contributions x rel_sd)
        self.arrivals = 0.0  # arrivals of the bursts heard within the minute ...
        self.arrivals_syst = 0.0  # ... and their parameters' error (sum of arrivals x arrivals_rel_sd)
        self.zones: dict[str, tuple[float, float, float]] = {}  # zone -> (n, var, syst)


class WifiCounter:
    def __init__(
        self,
        store_id: str,
        *,
        window_s: float = 300.0,
        interval_s: float = 900.0,
        slack_s: float = 5.0,
        zones: Iterable[str] = (),
        follow: bool = True,
    ) -> None:
        if not (window_s >= MINUTE_S and interval_s >= MINUTE_S and slack_s >= 0.0):
            raise ValueError("window_s and interval_s must be >= 60 and slack_s >= 0")
        self.store_id = store_id
        self.window_s = window_s
        self.interval_s = interval_s
        self.slack_s = slack_s
        self.zones = list(zones)
        self.follow = follow
        # heard bursts not yet behind every minute they count in: [ts, subject, mark, pieces, owed],
        # the pieces [start, end, devices] over which the burst's presence is spread: half of it
        # over each half of the window around it, unless it follows or is followed (_follow)
        self._marks: deque[list[Any]] = deque()
        self._last: dict[str, list[Any]] = {}  # subject -> its latest burst in _marks
        self._zone: dict[str, tuple[str | None, float]] = {}  # subject -> (zone of its latest fix, when)
        self._next_minute: float | None = None  # end of the next minute to publish
        self._now = -math.inf
        self._minutes: list[_Minute] = []  # published minutes of the interval under way
        self.latest: dict[str, Any] = {}  # the last minute's count, for the status page
        self._interval_view: dict[str, Any] = {}  # the last interval's, shown beside it
        self._pending: list[EventBase] = []  # minutes completed by heard(), until the next tick
        self.published = 0
        self.all_minutes: list[_Minute] | None = None  # every minute counted, when a list (count_marks)

    @property
    def delay_s(self) -> float:
        """How long after a minute's end its count is published (frame time)."""
        return self.window_s / 2.0 + self.slack_s

    def heard(self, ts: float, subject: str, mark: PresenceMark | None = None) -> None:
        """A Wi-Fi observation of ``subject`` at ``ts``; ``mark`` on one frame of each burst."""
        if self._next_minute is None:
            if mark is None:
                return
            self._next_minute = (math.floor(ts / MINUTE_S) + 1) * MINUTE_S
        if ts > self._now:
            self._now = ts
        if self._now >= self._next_minute + self.delay_s:
            done = self.tick(self._now)  # (tick() hands over and replaces the pending list)
            self._pending.extend(done)
        if mark is not None and mark.presence_s > 0.0:
            half = self.window_s / 2.0
            d = 0.5 * mark.presence_s / half
            before = [ts - half, ts, d]
            after = [ts, ts + half, d]
            entry: list[Any] = [ts, subject, mark, [before, after], 0.0]
            if self.follow:
                prev = self._last.get(subject)
                if mark.follows and prev is not None and 0.0 < ts - prev[0] < self.window_s:
                    self._follow(prev, entry, ts, after)
                self._last[subject] = entry
            self._marks.append(entry)

    def _follow(self, prev: list[Any], entry: list[Any], ts: float, after: list[float]) -> None:
        """``entry``'s burst surely continues ``prev``'s device: it was present all along in between
        - instead of each burst's presence spread over the window, which reads one phone's irregular
        bursts as 0.2-2 phones. What the two bursts stood for beyond the silence (the presence
        model's share of a visit's ends, kappa) is not dropped: it goes on with the device, spread
        after its latest burst, so the count's total stays the model's. Minutes already published
        keep what they counted."""
        # time before ``done`` is in published minutes: prev's pieces there stay as they are
        done = self._next_minute - MINUTE_S if self._next_minute is not None else -math.inf
        start = max(done, prev[0])
        moved = 0.0  # presence of prev's pieces after ``start``, taken off them
        kept = []
        for p in prev[3]:
            t0, t1, d = p
            if t1 > start:
                moved += (t1 - max(t0, start)) * d
                if t0 < start:
                    kept.append([t0, start, d])
            else:
                kept.append(p)
        prev[3] = kept
        entry_before = entry[3][0]
        moved += (entry_before[1] - entry_before[0]) * entry_before[2]
        # what is left goes on after the latest burst; where the silences filled outweigh what the
        # bursts stood for, the shortfall is taken from what later bursts carry (never below 0)
        rest = after[2] * (after[1] - after[0]) + moved - (ts - start) + prev[4]
        after[2] = max(0.0, rest) / (after[1] - after[0])
        entry[4] = min(0.0, rest)
        entry[3] = [[start, ts, 1.0], after]

    def located(self, fixes: Sequence[Fix]) -> None:
        """Fixes of any subjects: Wi-Fi subjects remember their zone (a zone is kept ``window_s``)."""
        for f in fixes:
            self._zone[f.device] = (f.zone, f.ts)

    def forget(self, subject: str) -> None:
        """An opt-out: the subject's bursts leave the counts at once."""
        self._zone.pop(subject, None)
        self._last.pop(subject, None)
        self._marks = deque(m for m in self._marks if m[1] != subject)

    def tick(self, now: float) -> list[EventBase]:
        """Publish every minute whose evidence is complete by ``now`` (frame time)."""
        out, self._pending = self._pending, []
        if now > self._now:
            self._now = now
        while self._next_minute is not None and self._next_minute + self.delay_s <= self._now:
            self._minute(self._next_minute, MINUTE_S, out)
            self._next_minute += MINUTE_S
            self._skip_silence(self._now - self.delay_s)
        return out

    def _skip_silence(self, until: float) -> None:
        """No burst heard for long (a closed store, a capture spanning days): once the interval
        under way is closed, jump to the interval ``until`` falls in - no zero minutes in between."""
        nxt = self._next_minute
        if self._marks or nxt is None or self._minutes:
            return
        step = self.interval_s
        target = math.floor(until / step) * step + MINUTE_S
        if target > nxt:
            self._next_minute = target

    def close(self, now: float) -> list[EventBase]:
        """Shutdown (or the end of a capture): every minute up to ``now`` on the evidence heard so
        far, the last one as far as it went (its ``interval_s`` says how far), and its interval."""
        out = self.tick(now)
        nxt = self._next_minute
        if nxt is None:
            return out
        end = max(self._now, now)
        while nxt <= end:
            self._minute(nxt, MINUTE_S, out)
            self._next_minute = nxt + MINUTE_S
            self._skip_silence(end)
            nxt = self._next_minute
        if end > nxt - MINUTE_S:
            self._minute(end, end - (nxt - MINUTE_S), out)
        if self._minutes:
            self._interval(out)
        self._next_minute = None
        return out

    # -- counting -----------------------------------------------------------------------------

    def _zone_of(self, subject: str, at: float) -> str | None:
        z = self._zone.get(subject)
        if z is None or z[1] < at - self.window_s:
            return None
        return z[0]

    def _minute(self, end: float, length: float, out: list[EventBase]) -> None:
        start = end - length
        half = self.window_s / 2.0
        m = _Minute(end, length)
        zones: dict[str, list[float]] = {}
        zoned = bool(self._zone)
        for ts, subject, mk, pieces, _owed in self._marks:
            if start <= ts < end:
                m.arrivals += mk.arrivals
                m.arrivals_syst += mk.arrivals * mk.arrivals_rel_sd
            c = 0.0
            for t0, t1, d in pieces:
                if t0 < end and t1 > start:
                    c += (min(end, t1) - max(start, t0)) * d
            if c == 0.0:
                continue
            c /= length
            m.n += c
            m.var += c * c
            m.syst += c * mk.rel_sd
            z = self._zone_of(subject, end) if zoned else None
            if z is not None:
                acc = zones.setdefault(z, [0.0, 0.0, 0.0])
                acc[0] += c
                acc[1] += c * c
                acc[2] += c * mk.rel_sd
        m.zones = {z: (v[0], v[1], v[2]) for z, v in zones.items()}
        out.append(self._event(start, length, None, m.n, m.var + m.syst * m.syst))
        for z in sorted(m.zones):
            n, var, syst = m.zones[z]
            out.append(self._event(start, length, z, n, var + syst * syst))
        self.latest = {
            "ts": end,
            "devices": round(m.n, 2),
            "sd": round(math.sqrt(m.var + m.syst * m.syst), 2),
            "window_s": self.window_s,
            "by_zone": {z: round(v[0], 2) for z, v in m.zones.items()},
        }
        if self._interval_view:
            self.latest["interval"] = self._interval_view
        self._minutes.append(m)
        if self.all_minutes is not None:
            self.all_minutes.append(m)
        # the interval this minute closes
        first_start = self._minutes[0].end - self._minutes[0].length
        if end % self.interval_s == 0.0 or end - first_start >= self.interval_s - 1e-6:
            self._interval(out)
        # bursts behind every later minute's window, and zones of subjects gone quiet
        marks = self._marks
        while marks and marks[0][0] + half <= end:
            gone = marks.popleft()
            if self._last.get(gone[1]) is gone:
                del self._last[gone[1]]
        if len(self._zone) > 4 * len(marks) + 64:
            keep = {m[1] for m in marks}
            self._zone = {s: z for s, z in self._zone.items() if s in keep}

    def _interval(self, out: list[EventBase]) -> None:
        minutes = self._minutes
        self._minutes = []
        begin = minutes[0].end - minutes[0].length
        end = minutes[-1].end
        length = end - begin
        if len(minutes) == 1 and length < MINUTE_S:  # a lone partial minute is its own interval already
            return
        total = sum(m.length for m in minutes)
        # minutes share bursts over window_s: their scatter is correlated over about that long; the
        # parameters' error is the same for all of them
        corr = min(max(1.0, self.window_s / MINUTE_S), len(minutes))

        def mean_sd(parts: list[tuple[float, float, float, float]]) -> tuple[float, float]:
            n = sum(x * w for x, _v, _s, w in parts) / total
            var = sum(v * w * w for _x, v, _s, w in parts) / (total * total) * corr
            syst = sum(s * w for _x, _v, s, w in parts) / total
            return n, var + syst * syst

        mean, var = mean_sd([(m.n, m.var, m.syst, m.length) for m in minutes])
        # distinct devices: present at the start and the end (half each), plus the arrivals (a
        # count: Poisson, and the learnt parameters' error, the same for all)
        first, last = minutes[0], minutes[-1]
        arrivals = sum(m.arrivals for m in minutes)
        distinct = 0.5 * (first.n + last.n) + arrivals
        syst = sum(m.arrivals_syst for m in minutes) + 0.5 * (first.syst + last.syst)
        distinct_var = 0.25 * (first.var + last.var) + arrivals + syst * syst
        out.append(self._event(begin, length, None, mean, var, distinct, distinct_var))
        for z in sorted({z for m in minutes for z in m.zones}):
            zn, zv = mean_sd([(*m.zones.get(z, (0.0, 0.0, 0.0)), m.length) for m in minutes])
            out.append(self._event(begin, length, z, zn, zv))
        self.latest["interval"] = self._interval_view = {
            "start": begin,
            "interval_s": length,
            "devices": round(mean, 2),
            "distinct": round(distinct, 1),
        }

    def _event(
        self,
        start: float,
        length: float,
        zone: str | None,
        n: float,
        var: float,
        distinct: float | None = None,
        distinct_var: float = 0.0,
    ) -> DeviceCount:
        self.published += 1
        return DeviceCount(
            ts=start + length,
            store_id=self.store_id,
            interval_start=start,
            interval_s=length,
            zone=zone,
            devices=round(n, 2),
            sd=round(math.sqrt(var), 2),
            window_s=self.window_s,
            distinct=None if distinct is None else round(distinct, 1),
            distinct_sd=None if distinct is None else round(math.sqrt(distinct_var), 1),
        )


def count_marks(
    marks: Sequence[tuple[float, str, PresenceMark]],
    *,
    store_id: str = "",
    window_s: float = 300.0,
    interval_s: float = 900.0,
    follow: bool = True,
) -> tuple[list[DeviceCount], DeviceCount | None]:
    """The counts of a whole capture from its bursts' marks ``(time, subject, mark)`` in time order:
    every minute's and interval's events, and one for the whole capture (None without bursts) -
    the mean number of devices present over its minutes (those within ``window_s / 2`` of a burst)
    and its distinct devices: the arrivals its bursts stand for (the mean visit is learnt within the
    same capture, so visits cut by its ends count as short ones: no start and end terms)."""
    if not marks:
        return [], None
    c = WifiCounter(store_id, window_s=window_s, interval_s=interval_s, slack_s=0.0, follow=follow)
    c.all_minutes = []
    for ts, subject, mk in marks:
        c.heard(ts, subject, mk)
    events = [e for e in c.close(marks[-1][0]) if isinstance(e, DeviceCount)]
    minutes = c.all_minutes
    total = sum(m.length for m in minutes)
    if total <= 0.0:  # a capture of less than a moment (or without times)
        return events, None
    corr = min(max(1.0, window_s / MINUTE_S), len(minutes))
    mean = sum(m.n * m.length for m in minutes) / total
    syst = sum(m.syst * m.length for m in minutes) / total
    var = sum(m.var * m.length * m.length for m in minutes) / (total * total) * corr + syst * syst
    arrivals = sum(mk.arrivals for _t, _s, mk in marks)
    a_syst = sum(mk.arrivals * mk.arrivals_rel_sd for _t, _s, mk in marks)
    begin = minutes[0].end - minutes[0].length
    whole = DeviceCount(
        ts=minutes[-1].end,
        store_id=store_id,
        interval_start=begin,
        interval_s=minutes[-1].end - begin,
        devices=round(mean, 2),
        sd=round(math.sqrt(var), 2),
        window_s=window_s,
        distinct=round(arrivals, 1),
        distinct_sd=round(math.sqrt(arrivals + a_syst * a_syst), 1),
    )
    return events, whole
