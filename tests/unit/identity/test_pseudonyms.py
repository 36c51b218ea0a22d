"""Keyed rotating pseudonyms: stable within a period, unlinkable across periods, key from the CSPRNG."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.config import PrivacySettings
from gateway.identity.pseudonyms import PseudonymKeyring

PARIS = ZoneInfo("Europe/Paris")


def ts_local(y: int, mo: int, d: int, h: int, mi: int = 0, tz: ZoneInfo = PARIS) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def test_pseudonym_is_truncated_hmac_of_identity() -> None:
    key = bytes(range(32))
    kr = PseudonymKeyring(nbytes=12, key_source=lambda n: key[:n])
    p = kr.pseudonym("AA:BB:CC:DD:EE:FF", 1_767_261_600.0)
    assert p == hmac.new(key, b"AA:BB:CC:DD:EE:FF", hashlib.sha256).hexdigest()[:24]
    assert "aabbccddeeff" not in p.lower()


def test_stable_within_period_and_changes_at_rotation_time() -> None:
    kr = PseudonymKeyring(rotation_time="21:00", tz=PARIS)
    morning = kr.pseudonym("dev", ts_local(2026, 3, 10, 9))
    evening = kr.pseudonym("dev", ts_local(2026, 3, 10, 20, 59))
    after = kr.pseudonym("dev", ts_local(2026, 3, 10, 21, 1))
    assert morning == evening
    assert after != evening
    assert kr.pseudonym("other", ts_local(2026, 3, 10, 9)) != morning


def test_fresh_keys_make_runs_unlinkable() -> None:
    t = 1_767_261_600.0
    assert PseudonymKeyring().pseudonym("dev", t) != PseudonymKeyring().pseudonym("dev", t)


def test_epoch_bounds_are_exact_across_dst() -> None:
    kr = PseudonymKeyring(rotation_time="21:00", tz=PARIS)
    # the DST change in Europe is on 2026-03-29 (02:00 -> 03:00)
    for day in (27, 28, 29, 30):
        t = ts_local(2026, 3, day, 12)
        e, lo, hi = kr.epoch_bounds(t)
        assert lo <= t < hi
        assert datetime.fromtimestamp(lo, PARIS).strftime("%H:%M") == "21:00"
        assert datetime.fromtimestamp(hi, PARIS).strftime("%H:%M") == "21:00"
        assert kr.epoch_of(lo) == e and kr.epoch_of(hi - 0.001) == e and kr.epoch_of(hi) == e + 1


def _epoch_uncached(ts: float, tz: ZoneInfo, offset_s: int, period_s: float) -> int:
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    return int((ts + (off.total_seconds() if off is not None else 0.0) - offset_s) // period_s)


@pytest.mark.parametrize(
    ("rotation", "period_h", "tz", "days"),
    [
        # rotation inside the hour DST skips / repeats, on the days it does
        ("02:30", 24.0, "Europe/Paris", [(2026, 3, 29), (2026, 10, 25)]),
        ("02:30", 24.0, "America/St_Johns", [(2026, 3, 8), (2026, 11, 1)]),  # -03:30 / -02:30
        ("00:07", 0.25, "Asia/Kathmandu", [(2026, 3, 29)]),  # +05:45, a period of 15 min
        ("21:00", 0.01, "UTC", [(2026, 3, 29)]),  # 36 s: not whole minutes, no minute cache
        # -00:44:30 -> 00:00 on 1972-01-07 at 00:44:30 UTC: a change off the whole minute
        ("00:00", 24.0, "Africa/Monrovia", [(1972, 1, 6)]),
    ],
)
def test_epoch_of_with_its_minute_cache_equals_the_tz_conversion(
    rotation: str, period_h: float, tz: str, days: list[tuple[int, int, int]]
) -> None:
    """Every observation asks epoch_of: the cached answer must be the conversion's, seconds apart,
    across offset changes and in whichever order times come."""
    zone = ZoneInfo(tz)
    kr = PseudonymKeyring(rotation_time=rotation, period_h=period_h, tz=zone)
    hh, mm = rotation.split(":")
    offset_s = int(hh) * 3600 + int(mm) * 60
    starts = [ts_local(y, m, d, 0, tz=zone) for y, m, d in days]
    times = [t0 + k * 7.3 for t0 in starts for k in range(0, 26 * 3600 // 7)]
    times += times[::-1]  # and back again: a minute cached from its later part, then asked for its earlier
    for t in times:
        assert kr.epoch_of(t) == _epoch_uncached(t, zone, offset_s, period_h * 3600.0), (t, tz)


def test_only_current_and_previous_keys_are_held() -> None:
    drawn: list[int] = []

    def src(n: int) -> bytes:
        drawn.append(n)
        return bytes([len(drawn)]) * n

    kr = PseudonymKeyring(key_source=src)
    t = 1_767_261_600.0
    for day in range(5):
        kr.pseudonym("d", t + day * 86400)
    assert len(kr._keys) == 2  # white-box: old keys are really dropped
    kr.forget_all()
    assert kr._keys == {}


def test_from_settings() -> None:
    kr = PseudonymKeyring.from_settings(PrivacySettings(pseudonym_bytes=8, timezone="Europe/Paris"))
    assert len(kr.pseudonym("x", 1_767_261_600.0)) == 16
    with pytest.raises(ValueError, match="nbytes"):
        PseudonymKeyring(nbytes=4)


def test_memo_off_gives_the_same_pseudonyms_and_keeps_nothing() -> None:
    """``memo=False`` (the resolver, which memoizes itself) hashes every time; a new period's
    first pseudonym drops the memo of the period before (issue 22)."""
    kr = PseudonymKeyring(key_source=lambda n: b"\x01" * n)
    t = 1_767_261_600.0
    off = [kr.pseudonym(f"aa:bb:cc:dd:ee:{i:02x}", t, memo=False) for i in range(50)]
    assert not kr._cache
    assert [kr.pseudonym(f"aa:bb:cc:dd:ee:{i:02x}", t) for i in range(50)] == off
    assert len(kr._cache) == 50
    nxt = kr.epoch_bounds(t)[2]
    kr.pseudonym("aa:bb:cc:dd:ee:00", nxt + 1.0)
    assert {k[0] for k in kr._cache} == {kr.epoch_of(nxt + 1.0)}
    assert kr.pseudonym("aa:bb:cc:dd:ee:07", t) == off[7]  # the period before: hashed again, equal
