"""How many Wi-Fi devices are present: per minute and per aggregate interval, per zone (pure).

Fed by the pipeline after the identity stage (an observation's subject is its Wi-Fi group's daily
pseudonym, so one group is one subject) and with its fixes (a subject's zone, where located):

* **per minute**: the devices present at the end of each minute are the distinct groups heard in
  the ``window_s`` before it (a phone scans every 17-135 s by its median, so two minutes hear
  nearly every phone that is there). Where located, per zone by the subject's latest fix zone;
* **per aggregate interval** (``presence.aggregate_interval_s``, 15 min): the mean of its minutes -
  the devices present on average - not the distinct groups of the interval, which would count a
  phone once per group the grouping split it into.

Grouping splits and joins phones (docs/wifi.md), within a two-minute window much less than over an
hour, so the per-minute count is the figure to trust; its uncertainty ``sd`` is the error measured
for it on simulated stores (``bench/bench_wifi.py``: per-minute counts within ~10 %, so
``rel_sd`` 0.1 of the count) and Poisson noise, ``sqrt(rel_sd^2 n^2 + n)``.

Events are :class:`gateway.models.DeviceCount` (``wifi.devices``, aggregate priority), published
for each completed minute and interval; nothing is published before the first Wi-Fi device is
heard (a gateway without Wi-Fi sends none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.models import DeviceCount, EventBase, Fix

__all__ = ["WifiCounter"]

MINUTE_S = 60.0


class WifiCounter:
    def __init__(
        self,
        store_id: str,
        *,
        window_s: float = 120.0,
        interval_s: float = 900.0,
        rel_sd: float = 0.1,
        zones: Iterable[str] = (),
    ) -> None:
        if not (window_s > 0.0 and interval_s >= MINUTE_S):
            raise ValueError("window_s must be > 0 and interval_s >= 60")
        self.store_id = store_id
        self.window_s = window_s
        self.interval_s = interval_s
        self.rel_sd = rel_sd
        self.zones = list(zones)
        self._last_heard: dict[str, float] = {}  # subject -> latest frame time
        self._zone: dict[str, str | None] = {}  # subject -> zone of its latest fix
        self._next_minute: float | None = None  # end of the next minute to publish
        self._minutes: list[tuple[float, float, dict[str | None, float]]] = []  # (end, n, by zone) this interval
        self.latest: dict[str, Any] = {}  # the last minute's count, for the status page
        self._pending: list[EventBase] = []  # minutes completed by heard(), until the next tick
        self.published = 0

    def heard(self, ts: float, subject: str) -> None:
        """A Wi-Fi observation of ``subject`` at ``ts`` (minutes it completes are counted first)."""
        if self._next_minute is not None and ts >= self._next_minute:
            done = self.tick(ts)  # (tick() hands over and replaces the pending list)
            self._pending.extend(done)
        if ts > self._last_heard.get(subject, -math.inf):
            self._last_heard[subject] = ts
        if self._next_minute is None:
            self._next_minute = (math.floor(ts / MINUTE_S) + 1) * MINUTE_S

    def located(self, fixes: Sequence[Fix]) -> None:
        """Fixes of any subjects: the Wi-Fi ones remember their zone."""
        last = self._last_heard
        for f in fixes:
            if f.device in last:
                self._zone[f.device] = f.zone

    def forget(self, subject: str) -> None:
        """An opt-out: the subject leaves the counts at once."""
        self._last_heard.pop(subject, None)
        self._zone.pop(subject, None)

    def tick(self, now: float) -> list[EventBase]:
        """Publish every minute (and interval) completed by ``now``."""
        out, self._pending = self._pending, []
        while self._next_minute is not None and self._next_minute <= now:
            self._minute(self._next_minute, out)
            self._next_minute += MINUTE_S
        return out

    def close(self, now: float) -> list[EventBase]:
        """Shutdown: the completed minutes, then the minute under way as far as it went (its
        ``interval_s`` says how far) and the interval it closes."""
        out = self.tick(now)
        nxt = self._next_minute
        if nxt is not None and now > nxt - MINUTE_S:
            self._minute(now, out, length=now - (nxt - MINUTE_S), final=True)
            self._next_minute = None
        return out

    def _sd(self, n: float) -> float:
        return math.sqrt((self.rel_sd * n) ** 2 + n)

    def _minute(self, end: float, out: list[EventBase], *, length: float = MINUTE_S, final: bool = False) -> None:
        start = end - self.window_s
        present = [s for s, t in self._last_heard.items() if start < t <= end]
        by_zone: dict[str | None, float] = {}
        for s in present:
            z = self._zone.get(s)
            if z is not None:
                by_zone[z] = by_zone.get(z, 0.0) + 1.0
        n = float(len(present))
        by_zone[None] = n
        out.append(self._event(end - length, length, None, n))
        for z in sorted(k for k in by_zone if k is not None):
            out.append(self._event(end - length, length, z, by_zone[z]))
        self.latest = {
            "ts": end,
            "devices": n,
            "sd": round(self._sd(n), 2),
            "window_s": self.window_s,
            "by_zone": {z: v for z, v in by_zone.items() if z is not None},
        }
        # the interval this minute closes
        self._minutes.append((end, n, by_zone))
        if final or end % self.interval_s == 0.0 or end - self._minutes[0][0] >= self.interval_s - 1e-6:
            self._interval(end, out)
        # forget subjects silent longer than the window (bounded memory)
        stale = [s for s, t in self._last_heard.items() if t <= start]
        for s in stale:
            del self._last_heard[s]
            self._zone.pop(s, None)

    def _interval(self, end: float, out: list[EventBase]) -> None:
        minutes = self._minutes
        self._minutes = []
        k = len(minutes)
        begin = minutes[0][0] - MINUTE_S
        if k == 1 and end - begin < MINUTE_S:  # a lone partial minute is its own interval already
            return
        zones = sorted({z for _e, _n, bz in minutes for z in bz if z is not None})
        mean = sum(n for _e, n, _bz in minutes) / k
        length = end - begin
        out.append(self._event(begin, length, None, mean))
        for z in zones:
            out.append(self._event(begin, length, z, sum(bz.get(z, 0.0) for _e, _n, bz in minutes) / k))
        self.latest["interval"] = {"start": begin, "interval_s": length, "devices": round(mean, 2)}

    def _event(self, start: float, length: float, zone: str | None, n: float) -> DeviceCount:
        self.published += 1
        return DeviceCount(
            ts=start + length,
            store_id=self.store_id,
            interval_start=start,
            interval_s=length,
            zone=zone,
            devices=round(n, 2),
            sd=round(self._sd(n), 2),
            window_s=self.window_s,
        )
