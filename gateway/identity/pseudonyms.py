"""Keyed, rotating pseudonyms: the only form in which a device identity leaves RAM.

``pseudonym = hex(HMAC-SHA-256(K_epoch, identity))[: 2 * nbytes]``

* ``K_epoch`` is 32 random bytes drawn from the OS CSPRNG the first time an epoch is used. It is
  held only in this object (RAM), never written, logged or published, and is dropped once the
  epoch is over (the previous epoch's key is kept for a grace period so late observations still
  map consistently, then forgotten). Without the key a pseudonym cannot be linked back to a MAC,
  nor to the same device's pseudonym of another day.
* An epoch is a rotation period (default 24 h) starting at ``rotation_time`` local time (default
  21:00, store closing), computed from the wall-clock *argument* - never read inside.
* ``identity`` is what the identity stage decided is one device: a MAC, an IRK-resolved identity,
  a Wi-Fi fingerprint group, a beacon id. Linked addresses therefore share one pseudonym.
"""

from __future__ import annotations

import hmac
import itertools
import os
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from gateway.config import PrivacySettings

# identity -> pseudonym memo, per period: a few times the devices present. A day's distinct
# addresses (tens of thousands in a busy store) are not worth keeping (issue 22: RSS), a miss
# costs one HMAC (about a microsecond). The identity resolver keeps its own memo and does not fill
# this one (``memo=False``); other callers (``gateway decode pcap``) do
CACHE_MAX = 4096


def evict_older_half(memo: dict[Any, Any]) -> None:
    """Drop the older half of a full memo (dict order is insertion order); what is still in use is
    back at its next lookup, one HMAC."""
    for k in list(itertools.islice(memo, len(memo) // 2)):
        del memo[k]


def _parse_hhmm(text: str) -> int:
    hh, mm = text.split(":")
    return int(hh) * 3600 + int(mm) * 60


class PseudonymKeyring:
    def __init__(
        self,
        *,
        rotation_time: str = "21:00",
        period_h: float = 24.0,
        nbytes: int = 12,
        tz: tzinfo | None = None,
        key_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not 8 <= nbytes <= 32:
            raise ValueError("nbytes must be within 8..32")
        self._offset_s = _parse_hhmm(rotation_time)
        self._period_s = period_h * 3600.0
        self._nbytes = nbytes
        self._tz = tz or ZoneInfo("UTC")
        self._key_source = key_source
        self._keys: dict[int, bytes] = {}
        self._cache: dict[tuple[int, str], str] = {}
        # the UTC minute [lo, hi) whose epoch was computed last, and that epoch: every observation
        # asks, and a time zone conversion costs microseconds. An epoch starts on a whole local minute
        # (rotation_time is HH:MM) when the period is whole minutes; a UTC minute whose start and end
        # have the same whole-minute UTC offset then lies within one epoch (checked when cached: zones
        # with seconds in their offsets, e.g. Monrovia until 1972, are converted every time).
        self._whole_minutes = self._period_s % 60.0 == 0.0
        self._minute: tuple[float, float, int] = (0.0, 0.0, 0)

    def epoch_of(self, ts: float) -> int:
        """Index of the rotation period that contains Unix time ``ts`` (up to float rounding within a
        microsecond of a period's start)."""
        lo, hi, e = self._minute
        if lo <= ts < hi:
            return e
        off_s = self._utc_offset(ts)
        e = int((ts + off_s - self._offset_s) // self._period_s)
        if self._whole_minutes and off_s % 60.0 == 0.0:
            lo = (ts // 60.0) * 60.0
            if self._utc_offset(lo) == off_s == self._utc_offset(lo + 59.999):
                self._minute = (lo, lo + 60.0, e)
        return e

    def _utc_offset(self, ts: float) -> float:
        off = datetime.fromtimestamp(ts, self._tz).utcoffset()
        return off.total_seconds() if off is not None else 0.0

    @classmethod
    def from_settings(cls, settings: PrivacySettings, **kw: Any) -> PseudonymKeyring:
        return cls(
            rotation_time=settings.rotation_time,
            period_h=settings.rotation_period_h,
            nbytes=settings.pseudonym_bytes,
            tz=ZoneInfo(settings.timezone),
            **kw,
        )

    def epoch_start(self, epoch: int) -> float:
        """Unix time at which ``epoch`` begins (inverse of ``epoch_of``; DST-aware)."""
        local = epoch * self._period_s + self._offset_s
        ts = local
        for _ in range(3):  # fixed point: ts = local - utcoffset(ts)
            off = datetime.fromtimestamp(ts, self._tz).utcoffset()
            nxt = local - (off.total_seconds() if off is not None else 0.0)
            if nxt == ts:
                break
            ts = nxt
        return ts

    def epoch_bounds(self, ts: float) -> tuple[int, float, float]:
        """``(epoch, start, end)`` of the rotation period containing ``ts`` (end exclusive).

        Lets callers test "same period?" with two float comparisons instead of a tz conversion.
        """
        e = self.epoch_of(ts)
        return e, self.epoch_start(e), self.epoch_start(e + 1)

    def _key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            key = self._key_source(32)
            self._keys[epoch] = key
            # keep only this epoch's key and the one before it; the memo only for the newest epoch
            # (late observations of the one before are hashed again: it stayed all night, full of
            # the day's last 4,096 identities - issue 22)
            for old in [e for e in self._keys if e < epoch - 1]:
                del self._keys[old]
            newest = max(self._keys)
            self._cache = {k: v for k, v in self._cache.items() if k[0] >= newest}
        return key

    def pseudonym(self, identity: str, ts: float, *, memo: bool = True) -> str:
        """``identity``'s pseudonym in the rotation period of ``ts``. ``memo=False``: neither read
        nor fill the memo - for a caller that keeps one of its own in front (the identity resolver:
        a second memo of the same subjects was ~1 MB of small objects at 500 devices, issue 22)."""
        epoch = self.epoch_of(ts)
        if memo:
            hit = self._cache.get((epoch, identity))
            if hit is not None:
                return hit
        digest = hmac.digest(self._key(epoch), identity.encode("utf-8"), "sha256").hex()  # one-shot (C)
        p = digest[: 2 * self._nbytes]
        if not memo:
            return p
        if len(self._cache) >= CACHE_MAX:
            evict_older_half(self._cache)
        self._cache[(epoch, identity)] = p
        return p

    def forget_all(self) -> None:
        """Drop every key (e.g. on shutdown): all pseudonyms become unlinkable."""
        self._keys.clear()
        self._cache.clear()
