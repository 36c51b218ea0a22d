"""Presence store on a real SQLite file: history, restart, retention purge, opt-outs, erasure."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.models import VisitEnded, ZoneEntered
from gateway.presence.qualification import DAY_S
from gateway.presence.store import PresenceStore, PresenceStoreError, load_or_create_key
from tests.smallfs import MIB, fill, small_filesystem

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


async def test_writer_and_maintenance_sharing_the_connection_never_see_a_lock(
    tmp_path: Path, stores: list[PresenceStore]
) -> None:
    """The outbox writer records visits while maintenance purges and an opt-out erases, on one
    connection. With a statement per hop, the purge's WAL checkpoint ran between the writer's
    INSERT and its COMMIT and failed with "database table is locked" (3 of 3 runs on the old
    store); with each operation one hop on the connection's thread it cannot happen."""
    store = await opened(tmp_path / "presence.sqlite3", stores)

    async def writer() -> None:
        for i in range(200):
            await store.record_visits([ended(f"s{i}", T + i)])

    async def maintenance() -> None:
        for i in range(200):
            await store.purge(T + 10 * DAY_S, pseudonym_since=T + i, retention_days=30)
            await store.forget_subject(f"s{i}")

    await asyncio.gather(writer(), maintenance())
    # every visit was recorded and then purged or erased: nothing lost to an error, nothing left
    assert (await store.counts())["visits"] == 0


async def test_full_disk_degrades_and_catches_up(tmp_path: Path, stores: list[PresenceStore]) -> None:
    """On a full filesystem: history is not recorded (counted), purges wait, opt-outs and erasures
    are honoured from memory and written once the disk takes them; opening still works."""
    with small_filesystem(tmp_path / "fs", 1 * MIB) as d:
        db = d / "presence.sqlite3"
        store = await opened(db, stores)
        await store.record_visits([ended(f"old{i}", T) for i in range(20)])
        filler = d / "other-process.log"
        fill(filler)
        assert await store.record_visits([ended("lost", T + 1)]) == 0
        assert store.disk_full and store.visits_not_recorded == 1
        await store.add_optouts(["c" * 64], T)
        assert await store.optout_digests() == ["c" * 64]  # honoured although not written yet
        await store.forget_subject("old3")
        hist = await store.load_history(T + 60, pseudonym_since=T - 3600, retention_days=30)
        assert "old3" not in {r.subject for r in hist} and len(hist) == 19
        assert store.state()["unsaved_optouts"] == 1 and store.state()["unsaved_erasures"] == 1
        await store.close()
        store = await opened(db, stores)  # a restart on the full disk opens (exclusive if it must)
        assert len(await store.load_history(T + 60, pseudonym_since=T - 3600, retention_days=30)) == 20
        filler.unlink()
        await store.add_optouts(["c" * 64], T)  # (the first store's memory died with it)
        await store.forget_subject("old3")
        assert not store.disk_full
        await store.close()
        store = await opened(db, stores)
        assert await store.optout_digests() == ["c" * 64]
        assert (await store.counts())["visits"] == 19


async def test_unsaved_optouts_are_written_with_the_next_write(tmp_path: Path, stores: list[PresenceStore]) -> None:
    with small_filesystem(tmp_path / "fs", 1 * MIB) as d:
        db = d / "presence.sqlite3"
        store = await opened(db, stores)
        await store.record_visits([ended("a", T), ended("b", T)])
        filler = d / "other-process.log"
        fill(filler)
        await store.add_optouts(["d" * 64], T)
        await store.forget_subject("a")
        filler.unlink()
        assert await store.record_visits([ended("c", T)]) == 1  # this write carries them along
        assert store.state()["unsaved_optouts"] == 0 and store.state()["unsaved_erasures"] == 0
        await store.close()
        store = await opened(db, stores)
        assert await store.optout_digests() == ["d" * 64]
        assert sorted(r.subject for r in await store.load_history(T, pseudonym_since=0, retention_days=30)) == [
            "b",
            "c",
        ]
