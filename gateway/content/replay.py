"""Replay protection for cloud commands that outlives the command state: the revision floor, the
ids seen and the start of this gateway's command history, kept in the **outbox's** SQLite file.

Why there: ``content.sqlite3`` is the file a technician may delete to "reset the campaigns", and
the outbox is the durable one (synchronous=FULL, never reset by the daemon). With the floor beside
the events, losing the command state does not reopen the door to replaying old commands: a
command with a revision at or below the floor of its kind is refused as stale (the platform
re-issues state with new revisions; ``applied_revision`` in the reply tells it the floor).

After a full state wipe (outbox and content state both gone) a new history starts (``epoch`` =
the gateway's clock when the tables were created), and commands issued before it (minus the clock
skew allowance) are refused. So a command captured on the wire is accepted at most once per
gateway: within its lifetime by the floor and the seen ids, after a wipe by the epoch, and after
its ``expires_at`` by the decoder (docs/commands.md, "Replay protection").

Tables (created next to the outbox's own; `gateway.uplink.outbox` never reads them)::

    command_floor (kind PRIMARY KEY, revision, command_id, issued_at)
    command_seen  (id PRIMARY KEY, expires_at)         -- accepted ids, pruned after expiry
    command_epoch (k = 1, started_at)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS command_floor (kind TEXT PRIMARY KEY, revision INTEGER NOT NULL,
                                          command_id TEXT NOT NULL, issued_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS command_seen (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS command_epoch (k INTEGER PRIMARY KEY CHECK (k = 1), started_at REAL NOT NULL);
"""
MAX_SEEN = 100_000  # ids kept at most (oldest expiry dropped first); far above any real command rate


@dataclass(frozen=True, slots=True)
class Floor:
    revision: int
    command_id: str
    issued_at: float


class ReplayGuard:
    """The persisted floor. ``open`` creates the tables (and the epoch) if they are missing."""

    def __init__(self, db: aiosqlite.Connection, epoch: float, floors: dict[str, Floor], seen: dict[str, float]):
        self._db = db
        self.epoch = epoch
        self.floors = floors
        self.seen = seen

    @classmethod
    async def open(cls, path: Path, now: float | None = None) -> ReplayGuard:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA synchronous=FULL")
            await db.executescript(SCHEMA)
            t = time.time() if now is None else now
            await db.execute("INSERT OR IGNORE INTO command_epoch VALUES (1, ?)", (t,))
            await db.commit()
            row = await (await db.execute("SELECT started_at FROM command_epoch")).fetchone()
            epoch = float(row[0]) if row is not None else t
            floors = {
                str(k): Floor(int(r), str(i), float(ts))
                for k, r, i, ts in await db.execute_fetchall(
                    "SELECT kind, revision, command_id, issued_at FROM command_floor"
                )
            }
            seen = {str(i): float(e) for i, e in await db.execute_fetchall("SELECT id, expires_at FROM command_seen")}
        except BaseException:
            await db.close()
            raise
        return cls(db, epoch, floors, seen)

    async def close(self) -> None:
        await self._db.close()

    def floor(self, kind: str) -> Floor | None:
        return self.floors.get(kind)

    def seen_before(self, command_id: str) -> bool:
        return command_id in self.seen

    async def record(self, command_id: str, kind: str | None, revision: int, issued_at: float, expires_at: float,
                     now: float) -> None:  # fmt: skip
        """Remember an applied command: its id until it expires, and the new floor of its kind."""
        db = self._db
        # ids of expired commands are of no use: the decoder refuses those anyway
        await db.execute("DELETE FROM command_seen WHERE expires_at < ?", (now - 86400.0,))
        await db.execute("INSERT OR REPLACE INTO command_seen VALUES (?, ?)", (command_id, expires_at))
        if len(self.seen) >= MAX_SEEN:
            await db.execute(
                "DELETE FROM command_seen WHERE id IN (SELECT id FROM command_seen ORDER BY expires_at LIMIT ?)",
                (len(self.seen) - MAX_SEEN + 1,),
            )
        if kind is not None:
            await db.execute(
                "INSERT OR REPLACE INTO command_floor VALUES (?, ?, ?, ?)", (kind, revision, command_id, issued_at)
            )
        await db.commit()
        self.seen = {i: e for i, e in self.seen.items() if e >= now - 86400.0}
        self.seen[command_id] = expires_at
        if len(self.seen) > MAX_SEEN:
            for i, _e in sorted(self.seen.items(), key=lambda kv: kv[1])[: len(self.seen) - MAX_SEEN]:
                del self.seen[i]
        if kind is not None:
            self.floors[kind] = Floor(revision, command_id, issued_at)
