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
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from pathlib import Path

import aiosqlite

from gateway.models import EventBase, VisitEnded
from gateway.presence.qualification import DAY_S, VisitRecord

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
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key
    if len(key) != 32:
        raise PresenceStoreError(f"{path}: opt-out key must be 32 bytes, found {len(key)}")
    return key


async def load_or_create_key(path: Path) -> bytes:
    """The per-box opt-out hashing key (32 random bytes, file mode 0600), created on first use."""
    return await asyncio.to_thread(_load_or_create_key_sync, path)


class PresenceStore:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> PresenceStore:
        p = Path(path)
        await asyncio.to_thread(_create_private, p)
        db = await aiosqlite.connect(p)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA secure_delete=ON")
            await db.executescript(_SCHEMA)
            async with db.execute("SELECT value FROM meta WHERE key='schema_version'") as cur:
                row = await cur.fetchone()
            if row is None:
                await db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise PresenceStoreError(f"{p}: schema version {row[0]}, expected {SCHEMA_VERSION}")
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, p)

    async def close(self) -> None:
        """Close the connection (idempotent: safe from a finally block after an earlier close)."""
        if not self._closed:
            self._closed = True
            await self._db.close()

    # -- visits --------------------------------------------------------------------------------

    async def record_visits(self, events: Iterable[EventBase]) -> int:
        """Store the *visitor* ``visit.ended`` events among ``events``; returns how many."""
        rows = [
            (e.subject, e.subject_kind, e.started_ts, e.ts, json.dumps(e.dwell_by_zone, sort_keys=True))
            for e in events
            if isinstance(e, VisitEnded) and e.visitor
        ]
        if rows:
            await self._db.executemany(
                "INSERT INTO visits (subject, kind, started_ts, ended_ts, dwell_json) VALUES (?, ?, ?, ?, ?)", rows
            )
            await self._db.commit()
        return len(rows)

    async def load_history(self, now: float, *, pseudonym_since: float, retention_days: float) -> list[VisitRecord]:
        """History usable for qualification at ``now``: customers within retention, pseudonyms
        of the current rotation period only."""
        oldest = now - retention_days * DAY_S
        async with self._db.execute(
            "SELECT subject, kind, started_ts, ended_ts, dwell_json FROM visits "
            "WHERE ended_ts >= ? AND (kind = 'customer' OR ended_ts >= ?) ORDER BY started_ts",
            (oldest, pseudonym_since),
        ) as cur:
            rows = await cur.fetchall()
        return [VisitRecord(r[0], r[1], float(r[2]), float(r[3]), json.loads(r[4])) for r in rows]

    async def purge(self, now: float, *, pseudonym_since: float, retention_days: float) -> int:
        """Delete visits older than the retention period, and pseudonymous visits of past
        rotation periods. Returns the number of rows deleted."""
        oldest = now - retention_days * DAY_S
        cur = await self._db.execute(
            "DELETE FROM visits WHERE ended_ts < ? OR (kind = 'pseudonym' AND ended_ts < ?)",
            (oldest, pseudonym_since),
        )
        n = cur.rowcount
        await cur.close()
        await self._db.commit()
        if n:
            await self._checkpoint()
        return max(0, n)

    async def forget_subject(self, subject: str) -> int:
        """Erase a subject's history (opt-out)."""
        cur = await self._db.execute("DELETE FROM visits WHERE subject = ?", (subject,))
        n = cur.rowcount
        await cur.close()
        await self._db.commit()
        await self._checkpoint()
        return max(0, n)

    async def _checkpoint(self) -> None:
        async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            await cur.fetchall()

    # -- opt-outs ------------------------------------------------------------------------------

    async def add_optouts(self, digests: Iterable[str], now: float) -> None:
        await self._db.executemany(
            "INSERT OR IGNORE INTO optouts (digest, added_ts) VALUES (?, ?)", [(d, now) for d in digests]
        )
        await self._db.commit()

    async def remove_optouts(self, digests: Iterable[str]) -> None:
        await self._db.executemany("DELETE FROM optouts WHERE digest = ?", [(d,) for d in digests])
        await self._db.commit()

    async def optout_digests(self) -> list[str]:
        async with self._db.execute("SELECT digest FROM optouts ORDER BY digest") as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for table in ("visits", "optouts"):
            async with self._db.execute(f"SELECT COUNT(*) FROM {table}") as cur:  # noqa: S608 - fixed names
                row = await cur.fetchone()
            out[table] = int(row[0]) if row else 0
        return out
