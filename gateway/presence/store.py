"""Presence state on disk (aiosqlite): visit history for qualification, opt-out digests, retention.

What is stored, and only this:

* ``visits``: one row per finished *visitor* visit - subject (daily pseudonym or consented
  customer ref, never a raw identifier), subject kind, start/end time, dwell per zone. Passers-by
  are not stored. Pseudonymous rows are useful only within their rotation period (the pseudonym
  changes afterwards), so ``purge`` deletes them as soon as the period is over; customer rows are
  kept for ``privacy.retention_days``.
* ``optouts``: keyed HMAC-SHA-256 digests of opted-out identifiers (see
  ``gateway/identity/subjects.py``); the key lives in a separate 0600 file
  (``load_or_create_key``), so the table alone cannot be tested against candidate MACs.

The file is created 0600, uses ``PRAGMA secure_delete`` (deleted rows are overwritten, not just
unlinked from the b-tree) and checkpoints/truncates the WAL after deletions, so purged and
forgotten data does not linger in free pages or the journal.

One connection, shared by the daemon's tasks (the outbox writer records visits, the maintenance
task purges, the command channel adds opt-outs): **every operation is one function run on the
connection's thread** - its statements, its COMMIT and the checkpoint after it - so no task ever
meets another's open transaction. (With one statement per hop, the checkpoint after a purge could
run between another task's INSERT and its COMMIT and fail with "database table is locked".)

A full disk degrades, it does not stop the daemon (docs/storage.md): visit history is not
recorded (counted), a purge waits for the next maintenance round, opt-outs and erasures are kept in
memory (and honoured) and written as soon as the disk takes them; one log line per change of state.
The WAL is kept small (a checkpoint every 32 pages), and on a disk too full for SQLite's -shm index
the file is opened in exclusive locking mode (no -shm file; reads work).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.log import get_logger
from gateway.models import EventBase, VisitEnded
from gateway.presence.qualification import DAY_S, VisitRecord
from gateway.storage import (
    SMALL_CACHE_KIB,
    SMALL_WAL_AUTOCHECKPOINT_PAGES,
    SMALL_WAL_SIZE_LIMIT,
    StoreStatus,
    drop_stub_shm,
    is_disk_full,
)

log = get_logger(__name__)

_T = TypeVar("_T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS visits (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('pseudonym', 'customer')),
    started_ts REAL NOT NULL,
    ended_ts REAL NOT NULL,
    dwell_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS visits_subject ON visits (subject);
CREATE INDEX IF NOT EXISTS visits_ended ON visits (ended_ts);
CREATE TABLE IF NOT EXISTS optouts (digest TEXT PRIMARY KEY, added_ts REAL NOT NULL);
"""


class PresenceStoreError(RuntimeError):
    """The presence database cannot be used (wrong schema, unreadable key file...)."""


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def _load_or_create_key_sync(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(32)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:  # raced with another process: use theirs
            return _load_or_create_key_sync(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # a full disk: leave no empty key file behind (it would fail every start)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return key
    if len(key) != 32:
        raise PresenceStoreError(f"{path}: opt-out key must be 32 bytes, found {len(key)}")
    return key


async def load_or_create_key(path: Path) -> bytes:
    """The per-box opt-out hashing key (32 random bytes, file mode 0600), created on first use."""
    return await asyncio.to_thread(_load_or_create_key_sync, path)


def _init_sync(conn: sqlite3.Connection, path: Path, exclusive: bool) -> None:
    if exclusive:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA wal_autocheckpoint={SMALL_WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={SMALL_WAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA cache_size=-{SMALL_CACHE_KIB}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise PresenceStoreError(f"{path}: schema version {row[0]}, expected {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T], checkpoint: bool) -> _T:
    """(DB thread) One write transaction, then (optionally) truncate the WAL: all in one hop."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    if checkpoint:
        # nothing of ours is open here (one hop): only another process could hold it back (busy)
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return out


class PresenceStore:
    def __init__(self, db: aiosqlite.Connection, path: Path, *, exclusive: bool = False) -> None:
        self._db = db
        self.path = path
        self._closed = False
        self.exclusive = exclusive
        self.disk_full = False  # the last write was refused for lack of room
        self.visits_not_recorded = 0
        # written as soon as the disk takes them (see `_flush_unsaved`); honoured meanwhile
        self._unsaved_optouts: dict[str, float] = {}
        self._unsaved_forgets: set[str] = set()

    @classmethod
    async def open(cls, path: str | Path) -> PresenceStore:
        p = Path(path)
        await asyncio.to_thread(_create_private, p)
        for exclusive in (False, True):
            db = await aiosqlite.connect(p, isolation_level=None)
            try:
                await db._execute(_init_sync, db._conn, p, exclusive)  # type: ignore[no-untyped-call]
            except sqlite3.OperationalError as e:
                await db.close()
                if is_disk_full(e) and not exclusive:
                    log.warning("presence.store_open_disk_full", reason=str(e))
                    drop_stub_shm(p)
                    continue
                raise
            except BaseException:
                await db.close()
                raise
            return cls(db, p, exclusive=exclusive)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close the connection (idempotent: safe from a finally block after an earlier close)."""
        if not self._closed:
            self._closed = True
            await self._db.close()
            # a statement kept by a reference cycle (an exception's traceback) keeps the file and
            # its lock open until collected - in exclusive mode, against the next open
            gc.collect()

    def _hop(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        return self._db._execute(fn, *args)  # type: ignore[no-untyped-call]

    async def _write(self, fn: Callable[[sqlite3.Connection], _T], *, checkpoint: bool = False) -> _T:
        """Run one write transaction; a full disk is noted (one log line per change) and raised."""
        try:
            out: _T = await self._hop(_write, self._db._conn, fn, checkpoint)
        except sqlite3.OperationalError as e:
            if is_disk_full(e):
                self._set_disk_full(True, str(e))
            raise
        self._set_disk_full(False)
        return out

    def _set_disk_full(self, full: bool, reason: str = "") -> None:
        if full == self.disk_full:
            return
        self.disk_full = full
        if full:
            log.error(
                "presence.store_disk_full",
                reason=reason,
                unsaved_optouts=len(self._unsaved_optouts),
                unsaved_erasures=len(self._unsaved_forgets),
            )
        else:
            log.info("presence.store_disk_ok", visits_not_recorded=self.visits_not_recorded)

    async def _flush_unsaved(self) -> None:
        """Write opt-outs and erasures the disk refused earlier (called before every write)."""
        if not (self._unsaved_optouts or self._unsaved_forgets):
            return
        optouts = dict(self._unsaved_optouts)
        forgets = set(self._unsaved_forgets)

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR IGNORE INTO optouts (digest, added_ts) VALUES (?, ?)", list(optouts.items()))
            conn.executemany("DELETE FROM visits WHERE subject = ?", [(s,) for s in forgets])

        await self._write(tx, checkpoint=bool(forgets))
        for d in optouts:
            self._unsaved_optouts.pop(d, None)
        self._unsaved_forgets.difference_update(forgets)

    # -- visits --------------------------------------------------------------------------------

    async def record_visits(self, events: Iterable[EventBase]) -> int:
        """Store the *visitor* ``visit.ended`` events among ``events``; returns how many (0 and
        counted in ``visits_not_recorded`` when the disk is full)."""
        rows = [
            (e.subject, e.subject_kind, e.started_ts, e.ts, json.dumps(e.dwell_by_zone, sort_keys=True))
            for e in events
            if isinstance(e, VisitEnded) and e.visitor and e.subject not in self._unsaved_forgets
        ]
        if not rows:
            return 0

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO visits (subject, kind, started_ts, ended_ts, dwell_json) VALUES (?, ?, ?, ?, ?)", rows
            )

        try:
            await self._flush_unsaved()
            await self._write(tx)
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            self.visits_not_recorded += len(rows)
            return 0
        return len(rows)

    async def load_history(self, now: float, *, pseudonym_since: float, retention_days: float) -> list[VisitRecord]:
        """History usable for qualification at ``now``: customers within retention, pseudonyms
        of the current rotation period only."""
        oldest = now - retention_days * DAY_S
        forgotten = set(self._unsaved_forgets)

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT subject, kind, started_ts, ended_ts, dwell_json FROM visits "
                "WHERE ended_ts >= ? AND (kind = 'customer' OR ended_ts >= ?) ORDER BY started_ts",
                (oldest, pseudonym_since),
            ).fetchall()

        rows = await self._hop(read, self._db._conn)
        return [
            VisitRecord(r[0], r[1], float(r[2]), float(r[3]), json.loads(r[4])) for r in rows if r[0] not in forgotten
        ]

    async def purge(self, now: float, *, pseudonym_since: float, retention_days: float) -> int:
        """Delete visits older than the retention period, and pseudonymous visits of past
        rotation periods. Returns the number of rows deleted (0 while the disk is full: the next
        maintenance round tries again)."""
        oldest = now - retention_days * DAY_S

        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM visits WHERE ended_ts < ? OR (kind = 'pseudonym' AND ended_ts < ?)",
                (oldest, pseudonym_since),
            ).rowcount

        try:
            await self._flush_unsaved()
            # the checkpoint is part of the purge: deleted rows must not linger in the WAL
            return max(0, await self._write(tx, checkpoint=True))
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            return 0

    async def forget_subject(self, subject: str) -> int:
        """Erase a subject's history (opt-out). On a full disk the erasure is kept and written
        with the next write the disk takes; meanwhile the subject's rows are neither loaded nor
        added to."""

        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM visits WHERE subject = ?", (subject,)).rowcount

        try:
            await self._flush_unsaved()
            return max(0, await self._write(tx, checkpoint=True))
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            self._unsaved_forgets.add(subject)
            return 0

    # -- opt-outs ------------------------------------------------------------------------------

    async def add_optouts(self, digests: Iterable[str], now: float) -> None:
        """Persist opt-out digests; on a full disk they are kept in memory (and returned by
        `optout_digests`) and written with the next write the disk takes."""
        rows = [(d, now) for d in digests]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR IGNORE INTO optouts (digest, added_ts) VALUES (?, ?)", rows)

        try:
            await self._flush_unsaved()
            await self._write(tx)
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            for d, ts in rows:
                self._unsaved_optouts.setdefault(d, ts)

    async def remove_optouts(self, digests: Iterable[str]) -> None:
        gone = [(d,) for d in digests]
        for (d,) in gone:
            self._unsaved_optouts.pop(d, None)
        await self._write(lambda conn: conn.executemany("DELETE FROM optouts WHERE digest = ?", gone))

    async def optout_digests(self) -> list[str]:
        rows = await self._hop(lambda conn: conn.execute("SELECT digest FROM optouts").fetchall(), self._db._conn)
        return sorted({str(r[0]) for r in rows} | set(self._unsaved_optouts))

    async def counts(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names
                for table in ("visits", "optouts")
            }

        return await self._hop(read, self._db._conn)

    def state(self) -> StoreStatus:
        """For the status page: ``disk`` ok/full, what waits for room, what was not recorded."""
        return StoreStatus(
            disk="full" if self.disk_full else "ok",
            exclusive=self.exclusive,
            visits_not_recorded=self.visits_not_recorded,
            unsaved_optouts=len(self._unsaved_optouts),
            unsaved_erasures=len(self._unsaved_forgets),
        )
