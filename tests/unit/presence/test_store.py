"""Presence store on a real SQLite file: history, restart, retention purge, opt-outs, erasure."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.models import VisitEnded, ZoneEntered
from gateway.presence.qualification import DAY_S
from gateway.presence.store import PresenceStore, PresenceStoreError, load_or_create_key

T = 1_767_261_600.0


@pytest.fixture
async def stores() -> AsyncIterator[list[PresenceStore]]:
    """Stores to close even when an assertion fails (an open aiosqlite thread blocks exit)."""
    made: list[PresenceStore] = []
    yield made
    for st in made:
        await st.close()


async def opened(path: Path, stores: list[PresenceStore]) -> PresenceStore:
    st = await PresenceStore.open(path)
    stores.append(st)
    return st


def file_bytes(d: Path) -> bytes:
    """Every byte of the database and its journals (what an attacker with the disk would see)."""
    return b"".join(p.read_bytes() for p in d.iterdir() if p.name.startswith("presence.sqlite3"))


def ended(subject: str, ts: float, kind: str = "pseudonym", visitor: bool = True) -> VisitEnded:
    return VisitEnded(
        ts=ts,
        store_id="s",
        subject=subject,
        subject_kind=kind,  # type: ignore[arg-type]
        started_ts=ts - 600,
        duration_s=600,
        visitor=visitor,
        path=["grocery"],
        dwell_by_zone={"grocery": 600.0},
    )


async def test_history_survives_restart_and_only_visitors_are_stored(
    tmp_path: Path, stores: list[PresenceStore]
) -> None:
    db = tmp_path / "state" / "presence.sqlite3"
    store = await opened(db, stores)
    n = await store.record_visits(
        [
            ended("p1", T),
            ended("cust-1", T, kind="customer"),
            ended("p2", T, visitor=False),  # passer-by: not stored
            ZoneEntered(ts=T, store_id="s", subject="p1", zone="grocery"),
        ]
    )
    assert n == 2
    await store.close()
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600

    store = await opened(db, stores)
    hist = await store.load_history(T + 60, pseudonym_since=T - 3600, retention_days=30)
    assert sorted((r.subject, r.kind) for r in hist) == [("cust-1", "customer"), ("p1", "pseudonym")]
    r = next(r for r in hist if r.subject == "p1")
    assert (r.started_ts, r.ended_ts, r.dwell_by_zone) == (T - 600, T, {"grocery": 600.0})
    await store.close()


async def test_retention_purge_by_age_and_rotation(tmp_path: Path, stores: list[PresenceStore]) -> None:
    db = tmp_path / "presence.sqlite3"
    store = await opened(db, stores)
    now = T + 40 * DAY_S
    await store.record_visits(
        [
            ended("cust-old", T, kind="customer"),  # 40 days old: beyond 30 d retention
            ended("cust-new", now - 2 * DAY_S, kind="customer"),  # kept across rotation periods
            ended("p-yesterday", now - DAY_S, kind="pseudonym"),  # previous rotation period
            ended("p-today", now - 60, kind="pseudonym"),
        ]
    )
    pseudonym_since = now - 3600
    deleted = await store.purge(now, pseudonym_since=pseudonym_since, retention_days=30)
    assert deleted == 2
    hist = await store.load_history(now, pseudonym_since=pseudonym_since, retention_days=30)
    assert sorted(r.subject for r in hist) == ["cust-new", "p-today"]
    assert await store.purge(now, pseudonym_since=pseudonym_since, retention_days=30) == 0
    await store.close()
    # the purged subjects are gone from the file itself (secure_delete + WAL truncated)
    raw = file_bytes(tmp_path)
    assert b"cust-old" not in raw and b"p-yesterday" not in raw
    assert b"cust-new" in raw
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM visits").fetchone()[0] == 2


async def test_forget_subject_erases_bytes(tmp_path: Path, stores: list[PresenceStore]) -> None:
    db = tmp_path / "presence.sqlite3"
    store = await opened(db, stores)
    await store.record_visits([ended("optedout-subject", T), ended("kept-subject", T)])
    assert await store.forget_subject("optedout-subject") == 1
    assert (await store.counts())["visits"] == 1
    await store.close()
    raw = file_bytes(tmp_path)
    assert b"optedout-subject" not in raw and b"kept-subject" in raw


async def test_optout_digests_persist(tmp_path: Path, stores: list[PresenceStore]) -> None:
    db = tmp_path / "presence.sqlite3"
    store = await opened(db, stores)
    await store.add_optouts(["a" * 64, "b" * 64], T)
    await store.add_optouts(["a" * 64], T + 1)  # idempotent
    await store.close()
    store = await opened(db, stores)
    assert await store.optout_digests() == ["a" * 64, "b" * 64]
    await store.remove_optouts(["a" * 64])
    assert await store.optout_digests() == ["b" * 64]
    await store.close()


async def test_key_file_is_private_stable_and_validated(tmp_path: Path, stores: list[PresenceStore]) -> None:
    p = tmp_path / "sub" / "optout.key"
    k1 = await load_or_create_key(p)
    assert len(k1) == 32
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert await load_or_create_key(p) == k1
    p.write_bytes(b"short")
    with pytest.raises(PresenceStoreError, match="32 bytes"):
        await load_or_create_key(p)


async def test_schema_version_mismatch_is_a_clear_error(tmp_path: Path, stores: list[PresenceStore]) -> None:
    db = tmp_path / "presence.sqlite3"
    await opened(db, stores)
    await stores[-1].close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(PresenceStoreError, match="schema version 99"):
        await PresenceStore.open(db)
