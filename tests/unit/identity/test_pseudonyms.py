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
