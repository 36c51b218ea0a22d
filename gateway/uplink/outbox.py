"""Durable outbox: every event is on disk, with its sequence number, before it is published.

Design (why it looks like this):

* **One SQLite file, WAL, ``synchronous=FULL``**: a COMMIT returns only after the WAL is fsynced,
  so a power cut never loses a committed batch and never leaves a torn one (SQLite's atomic
  commit). Appends are batched, one transaction per batch, so the fsync cost is shared.
* **Sequence numbers are assigned in the append transaction** from a counter stored in the same
  file (``meta.last_seq``). They start at 1, are never reused and have no gaps, even across
  restarts, kill -9 and eviction: a number exists only if its row (and the counter) committed.
* **Payloads are built once**, at append: the canonical JSON bytes of
  ``UplinkEvent(gateway_id, seq, event)`` stored as a BLOB and published as-is (batches are
  concatenations of these bytes).
* **Rows are deleted only by `ack`** (after the broker's PUBACK), by `dead_letter` (moved to the
  ``dead_letter`` table, kept) or by eviction (counted).
* **Bounded size**: when the live pages would exceed ``max_bytes`` the outbox evicts, in one
  transaction with the append, the *lowest priority first and the oldest first within a
  priority* (``models.Priority``: raw fixes, then aggregates, then presence events, activation
  reports last). A full disk (``SQLITE_FULL``) triggers the same eviction and a retry; if even
  that cannot make room, `OutboxFullError` is raised and nothing is half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.log import get_logger
from gateway.models import (
    ActivationReport,
    Aggregate,
    DeviceCount,
    EventBase,
    Heartbeat,
    PositionFix,
    Priority,
    VisitEnded,
    VisitStarted,
    ZoneEntered,
    ZoneLeft,
    priority_of,
)

log = get_logger(__name__)

_T = TypeVar("_T")

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# Per-row overhead beyond the payload (row header, columns, index entry), for the size estimate.
_ROW_OVERHEAD = 96
_FULL_RETRIES = 6

WIRE_EVENT_TYPES: tuple[type[EventBase], ...] = (
    VisitStarted,
    ZoneEntered,
    ZoneLeft,
    VisitEnded,
    PositionFix,
    Aggregate,
    DeviceCount,
    ActivationReport,
    Heartbeat,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    priority INTEGER NOT NULL,
    ts REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_priority ON events (priority, seq);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    priority INTEGER NOT NULL,
    ts REAL NOT NULL,
    payload BLOB NOT NULL,
    reason_code INTEGER,
    reason TEXT NOT NULL,
    dead_ts REAL NOT NULL
);
"""

_USED_BYTES_SQL = (
    "SELECT ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()))"
    " * (SELECT page_size FROM pragma_page_size())"
)

_REFRESH_SQL = (
    "SELECT (SELECT ts FROM events ORDER BY seq LIMIT 1),"
    " ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()))"
    " * (SELECT page_size FROM pragma_page_size())"
)


class OutboxError(Exception):
    """The outbox cannot be used (wrong owner, unreadable file)."""


class OutboxFullError(OutboxError):
    """Not even eviction could make room (disk full and nothing left to evict)."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event_id: str
    type: str
    priority: Priority
    ts: float
    payload: bytes


@dataclass(slots=True)
class OutboxStats:
    backlog: int
    oldest_ts: float | None
    last_seq: int
    evicted: dict[str, int] = field(default_factory=dict)
    evicted_by_priority: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    max_bytes: int = 0
    dead_letters: int = 0
    appended: int = 0
    acked: int = 0

    @property
    def evicted_total(self) -> int:
        return sum(self.evicted.values())


def envelope_bytes(gateway_id_json: bytes, seq: int, event_json: bytes) -> bytes:
    """Canonical ``UplinkEvent`` JSON, byte-identical to ``UplinkEvent(...).model_dump_json()``.

    Built by concatenation because it is on the append hot path (tests pin the equality).
    """
    return b'{"v":1,"gateway_id":%s,"seq":%d,"event":%s}' % (gateway_id_json, seq, event_json)


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Collapse sequence numbers into inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _is_full(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and (
        getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(e).lower()
    )


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _refresh_sync(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """(DB thread) Live bytes of the file and the ts of the oldest pending row."""
    row = conn.execute(_REFRESH_SQL).fetchone()
    return int(row[1]), None if row[0] is None else float(row[0])


def _evict_rows(
    conn: sqlite3.Connection, want_bytes: int, reason: str, used: int, backlog: int
) -> tuple[int, dict[str, int]]:
    """(DB thread, inside the caller's transaction) Delete rows worth ~want_bytes.

    Lowest priority first, oldest (lowest seq) first within a priority. Counters are persisted in
    ``meta`` in the same transaction and mirrored in memory only once it committed.
    """
    by_prio: dict[str, int] = {}
    if backlog <= 0:
        return 0, by_prio
    avg = max(1, used // max(1, backlog))
    remaining = max(1, -(-want_bytes // avg))
    total = 0
    bump = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?"
    for prio in sorted(Priority):
        if remaining <= 0:
            break
        n = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE priority = ? ORDER BY seq LIMIT ?)",
            (int(prio), remaining),
        ).rowcount
        if n <= 0:
            continue
        total += n
        remaining -= n
        pname = prio.name.lower()
        by_prio[pname] = n
        conn.execute(bump, (f"evicted_priority.{pname}", n, n))
    if total:
        conn.execute(bump, (f"evicted.{reason}", total, total))
    return total, by_prio


class Outbox:
    """Durable, bounded, ordered queue of wire events for one gateway. Open with `Outbox.open`."""

    def __init__(self, db: aiosqlite.Connection, path: Path, gateway_id: str, max_bytes: int) -> None:
        self._db = db
        self.path = path
        self.gateway_id = gateway_id
        self.max_bytes = max_bytes
        self._gw_json = json.dumps(gateway_id).encode()
        self._lock = asyncio.Lock()
        self._data = asyncio.Event()
        self._last_seq = 0
        self._backlog = 0
        self._oldest_ts: float | None = None
        self._used_bytes = 0
        self._evicted: dict[str, int] = {}
        self._evicted_by_priority: dict[str, int] = {}
        self._dead = 0
        self._appended = 0
        self._acked = 0
        self._closed = False

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, gateway_id: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Outbox:
        """Open (or create) the outbox file; resume from what was acknowledged before."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise OutboxError(f"{path}: cannot open outbox: {e}") from None
        ob = cls(db, path, gateway_id, max_bytes)
        try:
            await ob._init()
        except sqlite3.DatabaseError as e:
            await db.close()
            raise OutboxError(f"{path}: cannot use outbox: {e}") from None
        except BaseException:
            await db.close()
            raise
        return ob

    async def _init(self) -> None:
        db = self._db
        mode = await (await db.execute("PRAGMA journal_mode=WAL")).fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise OutboxError(f"{self.path}: could not switch to WAL (got {mode})")
        for pragma in (
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=5000",
            "PRAGMA cache_size=-8192",  # 8 MiB page cache: RSS stays flat however big the backlog
            "PRAGMA journal_size_limit=8388608",  # WAL truncated back to 8 MiB after checkpoints
            "PRAGMA temp_store=MEMORY",
        ):
            await db.execute(pragma)
        await db.executescript(_SCHEMA)
        meta: dict[str, Any] = {str(r[0]): r[1] for r in await db.execute_fetchall("SELECT key, value FROM meta")}
        owner = meta.get("gateway_id")
        if owner is None:
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("gateway_id", self.gateway_id), ("schema_version", SCHEMA_VERSION), ("last_seq", 0)],
            )
            await db.execute("COMMIT")
        elif owner != self.gateway_id:
            raise OutboxError(
                f"{self.path} holds the outbox of gateway {owner!r}, not {self.gateway_id!r}: "
                "sequence numbers are per gateway; move the file away or set outbox.path"
            )
        self._last_seq = int(meta.get("last_seq", 0))
        for k, v in meta.items():
            if k.startswith("evicted."):
                self._evicted[k.removeprefix("evicted.")] = int(v)
            elif k.startswith("evicted_priority."):
                self._evicted_by_priority[k.removeprefix("evicted_priority.")] = int(v)
        row = await (await db.execute("SELECT count(*), (SELECT count(*) FROM dead_letter) FROM events")).fetchone()
        assert row is not None
        self._backlog, self._dead = int(row[0]), int(row[1])
        # A row above last_seq can only exist if meta was edited by hand; never reuse its number.
        top = await (await db.execute("SELECT max(seq) FROM events")).fetchone()
        if top is not None and top[0] is not None and int(top[0]) > self._last_seq:
            self._last_seq = int(top[0])
        await self._refresh()
        log.info(
            "outbox.opened",
            path=str(self.path),
            backlog=self._backlog,
            last_seq=self._last_seq,
            bytes=self._used_bytes,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._db.close()

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- appending ------------------------------------------------------------------------
    #
    # Every transaction runs as ONE function on aiosqlite's connection thread (one hop per
    # transaction instead of one per statement): the loop is never blocked, statements of two
    # transactions never interleave, and the append path stays well above 20k events/s.

    def _run(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        return self._db._execute(fn, *args)  # type: ignore[no-untyped-call]

    async def append(self, events: Sequence[EventBase]) -> list[int]:
        """Store events durably in ONE transaction; return their new sequence numbers.

        When it returns, the batch is fsynced. On any error nothing of the batch is stored and
        no sequence number is consumed.
        """
        if not events:
            return []
        rows_in: list[tuple[str, str, int, float, bytes]] = []
        incoming = 0
        for ev in events:
            if not isinstance(ev, WIRE_EVENT_TYPES):
                raise TypeError(f"outbox.append: {type(ev).__name__} is not a wire event type")
            body = ev.__pydantic_serializer__.to_json(ev)
            incoming += len(body) + 64 + _ROW_OVERHEAD
            rows_in.append((ev.event_id, str(getattr(ev, "type", "")), int(priority_of(ev)), ev.ts, body))
        async with self._lock:
            self._check_open()
            attempt = 0
            while True:
                first = self._last_seq + 1
                try:
                    ev_total, ev_prio, used, oldest = await self._run(
                        self._tx_append, first, rows_in, incoming, self._used_bytes, self._backlog
                    )
                    self._apply_eviction("size", ev_total, ev_prio)
                    break
                except sqlite3.OperationalError as e:
                    if not _is_full(e) or attempt >= _FULL_RETRIES:
                        if _is_full(e):
                            raise OutboxFullError(f"{self.path}: disk full and eviction could not make room") from e
                        raise
                    attempt += 1
                    # Free at least the batch's size, doubling each time, in its own transaction.
                    want = max(incoming, self._used_bytes // 50) * (2**attempt)
                    n = await self._evict_tx(want, "disk_full")
                    log.warning("outbox.disk_full", attempt=attempt, evicted=n, backlog=self._backlog)
                    if n == 0 and attempt >= 2:
                        raise OutboxFullError(f"{self.path}: disk full and nothing left to evict") from e
            self._last_seq = first + len(rows_in) - 1
            self._backlog += len(rows_in)
            self._appended += len(rows_in)
            self._used_bytes, self._oldest_ts = used, oldest
        self._data.set()
        return list(range(first, first + len(rows_in)))

    def _tx_append(
        self, first: int, rows_in: list[tuple[str, str, int, float, bytes]], incoming: int, used: int, backlog: int
    ) -> tuple[int, dict[str, int], int, float | None]:
        """(DB thread) Evict if needed, insert the batch and advance last_seq; all or nothing."""
        conn = self._db._conn
        gw = self._gw_json
        last = first + len(rows_in) - 1
        rows = [
            (seq, eid, typ, prio, ts, envelope_bytes(gw, seq, body))
            for seq, (eid, typ, prio, ts, body) in zip(range(first, last + 1), rows_in, strict=True)
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            evicted: tuple[int, dict[str, int]] = (0, {})
            over = used + incoming - self.max_bytes
            if over > 0:
                # Evict a little more than needed so that eviction is not paid on every append.
                evicted = _evict_rows(conn, over + self.max_bytes // 50, "size", used, backlog)
            conn.executemany(
                "INSERT INTO events (seq, event_id, type, priority, ts, payload) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return (*evicted, *_refresh_sync(conn))

    # -- eviction -------------------------------------------------------------------------

    async def _evict_tx(self, want_bytes: int, reason: str) -> int:
        try:
            n, by_prio, used, oldest = await self._run(
                self._tx_evict, want_bytes, reason, self._used_bytes, self._backlog
            )
        except sqlite3.OperationalError:
            return 0
        self._apply_eviction(reason, n, by_prio)
        self._used_bytes, self._oldest_ts = used, oldest
        return n

    def _tx_evict(
        self, want_bytes: int, reason: str, used: int, backlog: int
    ) -> tuple[int, dict[str, int], int, float | None]:
        conn = self._db._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            n, by_prio = _evict_rows(conn, want_bytes, reason, used, backlog)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return (n, by_prio, *_refresh_sync(conn))

    def _apply_eviction(self, reason: str, total: int, by_prio: dict[str, int]) -> None:
        """Mirror a committed eviction in the in-memory counters."""
        if not total:
            return
        for pname, n in by_prio.items():
            self._evicted_by_priority[pname] = self._evicted_by_priority.get(pname, 0) + n
        self._evicted[reason] = self._evicted.get(reason, 0) + total
        self._backlog -= total
        log.warning("outbox.evicted", reason=reason, rows=total, backlog=self._backlog)

    # -- reading and acknowledging --------------------------------------------------------

    async def pending(self, limit: int, after_seq: int = 0) -> list[StoredEvent]:
        """Up to ``limit`` stored events with seq > after_seq, oldest (lowest seq) first."""
        self._check_open()
        rows = await self._db.execute_fetchall(
            "SELECT seq, event_id, type, priority, ts, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [StoredEvent(r[0], r[1], r[2], Priority(r[3]), r[4], r[5]) for r in rows]

    async def ack(self, seqs: Sequence[int]) -> None:
        """The broker has these (PUBACK success): delete them, durably, in one transaction."""
        if not seqs:
            return
        ranges = _ranges(seqs)
        async with self._lock:
            self._check_open()
            n, used, oldest = await self._run(self._tx_delete, ranges, None)
            self._backlog -= n
            self._acked += n
            self._used_bytes, self._oldest_ts = used, oldest

    async def dead_letter(self, seqs: Sequence[int], reason: str, reason_code: int | None = None) -> int:
        """Move rows the broker will never accept to ``dead_letter`` (kept, counted, not sent)."""
        if not seqs:
            return 0
        ranges = _ranges(seqs)
        async with self._lock:
            self._check_open()
            n, used, oldest = await self._run(self._tx_delete, ranges, (reason_code, reason, time.time()))
            self._backlog -= n
            self._dead += n
            self._used_bytes, self._oldest_ts = used, oldest
        log.error("outbox.dead_lettered", rows=n, reason=reason, reason_code=reason_code)
        return n

    def _tx_delete(
        self, ranges: list[tuple[int, int]], dead: tuple[int | None, str, float] | None
    ) -> tuple[int, int, float | None]:
        """(DB thread) Delete acknowledged rows, or move them to dead_letter when ``dead`` is given."""
        conn = self._db._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if dead is not None:
                conn.executemany(
                    "INSERT OR REPLACE INTO dead_letter (seq, event_id, type, priority, ts, payload, reason_code,"
                    " reason, dead_ts) SELECT seq, event_id, type, priority, ts, payload, ?, ?, ? FROM events"
                    " WHERE seq BETWEEN ? AND ?",
                    [(*dead, a, b) for a, b in ranges],
                )
            cur = conn.executemany("DELETE FROM events WHERE seq BETWEEN ? AND ?", ranges)
            n = max(0, cur.rowcount)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return (n, *_refresh_sync(conn))

    async def dead_letters(self, limit: int = 100) -> list[tuple[StoredEvent, int | None, str]]:
        rows = await self._db.execute_fetchall(
            "SELECT seq, event_id, type, priority, ts, payload, reason_code, reason FROM dead_letter"
            " ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [(StoredEvent(r[0], r[1], r[2], Priority(r[3]), r[4], r[5]), r[6], r[7]) for r in rows]

    # -- waiting and status ---------------------------------------------------------------

    @property
    def data_event(self) -> asyncio.Event:
        """Set whenever an append commits (the uplink clears it before it reads)."""
        return self._data

    async def wait_for_data(self, timeout: float | None = None) -> bool:
        """Wait until an append commits (or timeout); return True if one did."""
        if not self._data.is_set():
            try:
                await asyncio.wait_for(self._data.wait(), timeout)
            except TimeoutError:
                return False
        self._data.clear()
        return True

    def stats(self) -> OutboxStats:
        return OutboxStats(
            backlog=self._backlog,
            oldest_ts=self._oldest_ts,
            last_seq=self._last_seq,
            evicted=dict(self._evicted),
            evicted_by_priority=dict(self._evicted_by_priority),
            bytes=self._used_bytes,
            max_bytes=self.max_bytes,
            dead_letters=self._dead,
            appended=self._appended,
            acked=self._acked,
        )

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def set_page_cap(self, pages: int) -> None:
        """Cap the file at ``pages`` pages (``PRAGMA max_page_count``): a tiny simulated disk."""
        await self._db.execute(f"PRAGMA max_page_count = {int(pages)}")

    async def _refresh(self) -> None:
        row = await (await self._db.execute(_REFRESH_SQL)).fetchone()
        assert row is not None
        self._oldest_ts = None if row[0] is None else float(row[0])
        self._used_bytes = int(row[1])

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: outbox is closed")
