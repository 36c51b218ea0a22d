"""The small stores' page cache is bounded (storage.SMALL_CACHE_KIB): a day of visit history does not
stay in the daemon's RSS (issue 22)."""

from __future__ import annotations

import ctypes
import secrets
from pathlib import Path

import pytest

from gateway.models import VisitEnded
from gateway.presence.store import PresenceStore
from gateway.storage import SMALL_CACHE_KIB


def _sqlite_memory() -> int | None:
    """Bytes SQLite's allocator holds in this process (every connection), or None if unknown."""
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return None
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return int(lib.sqlite3_memory_used())


async def test_a_days_visits_stay_within_the_presence_stores_cache(tmp_path: Path) -> None:
    before = _sqlite_memory()
    if before is None:
        pytest.skip("needs the system's libsqlite3 (the one Python's sqlite3 uses)")
    store = await PresenceStore.open(tmp_path / "presence.sqlite3")
    try:
        t0 = 1_767_261_600.0
        for b in range(30):  # 15,000 visits of random subjects: the subject index is touched all over
            events = [
                VisitEnded(
                    ts=t0 + b * 500 + i,
                    store_id="s",
                    subject=secrets.token_hex(12),
                    started_ts=t0,
                    duration_s=60.0,
                    visitor=True,
                    dwell_by_zone={"a": 40.0, "b": 20.0},
                )
                for i in range(500)
            ]
            assert await store.record_visits(events) == 500
        held = _sqlite_memory()
        assert held is not None
        # SQLite's default cache (2,000 KiB) held ~2.0 MB here; the bound plus schema and statements
        assert held - before < (SMALL_CACHE_KIB + 256) * 1024, (held - before) / 2**20
    finally:
        await store.close()
