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
* **Bounded by ``max_bytes`` and by the disk** (docs/storage.md): the effective cap is the smaller
  of ``max_bytes`` and what the filesystem can give (its free space, re-read while running, minus
  room left free for the other stores, the WAL's working size and a reserve file). When an append
  would exceed it, the same transaction evicts the *lowest priority first and the oldest first
  within a priority* (``models.Priority``: raw fixes, then aggregates, then presence events,
  activation reports last). ``PRAGMA max_page_count`` makes the cap hard: the file never grows
  past what the disk can give, whatever the estimate says.
* **A full disk is a state, not an error** (another process filled it): the outbox releases its
  reserve file so the WAL can be checkpointed, freezes the file at its size and checkpoints after
  every commit, so each transaction reuses the WAL's allocated frames - eviction, appends into the
  freed pages and ack deletions keep working with 0 bytes free. It leaves the state (and re-creates
  the reserve) when space comes back. Only when nothing is left to evict does `append` raise
  `OutboxFullError` (nothing half-written, no seq consumed); an ack that cannot be written is kept
  in memory and retried, so a delivered row is never offered again in this process.
* **Exact accounting**: every appended event is acknowledged (delivered), evicted (counted by
  reason and priority) or dead-lettered (counted). Rows already handed to the uplink are evicted
  last within their priority, and one evicted after it read it but then acknowledged by the broker
  is moved from the eviction counters to the acknowledged ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
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
from gateway.storage import drop_stub_shm, file_size, fs_space, is_disk_full
from gateway.uplink.outbox_space import (
    DISK_FULL,
    DISK_LIMITED,
    DISK_OK,
    FRAME_OVERHEAD,
    SHM_BYTES,
    SpacePlan,
    allocate,
    make_room_to_open,
    plan_space,
)
from gateway.uplink.outbox_sql import (
    BUMP_SQL,
    REFRESH_SQL,
    ROW_OVERHEAD,
    SCHEMA,
    SCHEMA_VERSION,
    Evicted,
    StoredEvent,
    envelope_bytes,
    evict_rows,
    refresh_sync,
    rollback,
    seq_ranges,
)

log = get_logger(__name__)

_T = TypeVar("_T")

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_FULL_RETRIES = 6
# How often the filesystem's free space is re-read while appending (a statvfs and two stats).
SPACE_CHECK_S = 1.0
# Rows remembered as "evicted after the uplink read them" (to move them to acknowledged if their
# PUBACK still comes); bounded so a long outage cannot grow it without limit.
_EVICTED_SENT_MAX = 100_000

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


class OutboxError(Exception):
    """The outbox cannot be used (wrong owner, unreadable file)."""


class OutboxFullError(OutboxError):
    """Not even eviction could make room (disk full and nothing left to evict)."""


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
    # the disk (docs/storage.md): state, effective cap of live bytes, the outbox's files on disk
    # (database + WAL + shared-memory index), its reserve file, the filesystem's free bytes
    disk_state: str = DISK_OK
    cap_bytes: int = 0
    file_bytes: int = 0
    reserve_bytes: int = 0
    fs_free_bytes: int = 0
    reserve_releases: int = 0
    # acknowledged rows whose deletion could not be written yet (disk full): kept, not re-sent
    ack_deferred: int = 0

    @property
    def evicted_total(self) -> int:
        return sum(self.evicted.values())


class Outbox:
    """Durable, bounded, ordered queue of wire events for one gateway. Open with `Outbox.open`."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        gateway_id: str,
        max_bytes: int,
        keep_free_bytes: int | None = None,
    ) -> None:
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
        # -- the disk (written on the DB thread by the space check, read by the loop) --
        self._wal_path = path.with_name(path.name + "-wal")
        self._shm_path = path.with_name(path.name + "-shm")
        self.reserve_path = path.with_name(path.name + ".reserve")
        self._keep_free_setting = keep_free_bytes
        self._page_size = 4096
        self._page_count = 0
        self._wal_pages = 1000  # wal_autocheckpoint while not full
        self._wal_allow = 0  # bytes the WAL may occupy (grows with the largest transaction seen)
        self._keep_free = 0
        self._reserve_target = 0
        self._fs_avail = 0
        self._reserve_bytes = 0
        self._reserve_releases = 0
        self._frozen = False  # the filesystem is full: no growth, checkpoint after every commit
        self._plan = SpacePlan(max_bytes, 2**31 - 2, False)
        self._page_cap: int | None = None  # set_page_cap (tests: a tiny simulated disk)
        self._max_pages_set = -1
        self._autockpt_set = -1
        self._next_check = 0.0
        self._state_logged = DISK_OK
        self.exclusive = False  # opened without a -shm file (the disk was too full for one)
        # -- exact accounting --
        self._evicting = Priority.FIX  # the highest priority evicted in this process (logged once each)
        self._handed_out = 0  # highest seq `pending` returned in this process
        self._evicted_sent: dict[int, tuple[str, str]] = {}  # seq -> (priority, reason)
        self._ack_deferred: set[int] = set()  # acknowledged; deletion not written yet

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        gateway_id: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep_free_bytes: int | None = None,
    ) -> Outbox:
        """Open (or create) the outbox file; resume from what was acknowledged before.

        Works on a full filesystem: the reserve file is released first if SQLite would not find
        room for its index and first WAL frames, and with no room at all the file is opened in
        exclusive locking mode (no -shm file; reads and acks of rows work, appends wait for room).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(make_room_to_open, path)
        last = ""
        for exclusive in (False, True):
            try:
                db = await aiosqlite.connect(path, isolation_level=None)
            except sqlite3.Error as e:
                raise OutboxError(f"{path}: cannot open outbox: {e}") from None
            ob = cls(db, path, gateway_id, max_bytes, keep_free_bytes)
            ob.exclusive = exclusive
            try:
                await ob._init()
            except sqlite3.OperationalError as e:
                await db.close()
                if is_disk_full(e) and not exclusive:
                    # only the text: the exception's traceback would keep the failed connection's
                    # cursor - and with it its file lock - alive
                    last = str(e)
                    log.warning("outbox.open_disk_full", path=str(path), reason=str(e))
                    del e, db
                    # the failed connection is only closed once its last statement is finalized;
                    # a reference cycle through the exception can keep it (and its file lock,
                    # which would stop the exclusive-mode session from ever deleting its WAL)
                    gc.collect()
                    drop_stub_shm(path)
                    continue
                raise OutboxError(f"{path}: cannot use outbox: {e}") from None
            except sqlite3.DatabaseError as e:
                await db.close()
                raise OutboxError(f"{path}: cannot use outbox: {e}") from None
            except BaseException:
                await db.close()
                raise
            return ob
        raise OutboxError(f"{path}: cannot use outbox: {last}")

    async def _init(self) -> None:
        db = self._db
        if self.exclusive:
            await db.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = next(iter(await db.execute_fetchall("PRAGMA journal_mode=WAL")), None)
        if mode is None or str(mode[0]).lower() != "wal":
            raise OutboxError(f"{self.path}: could not switch to WAL (got {mode})")
        for pragma in (
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=5000",
            "PRAGMA cache_size=-8192",  # 8 MiB page cache: RSS stays flat however big the backlog
            "PRAGMA temp_store=MEMORY",
        ):
            await db.execute(pragma)
        row = next(iter(await db.execute_fetchall("PRAGMA page_size")), None)
        self._page_size = int(row[0]) if row else 4096
        await self._run(self._size_for_filesystem)
        await db.executescript(SCHEMA)
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
        row = next(iter(await db.execute_fetchall("SELECT count(*), (SELECT count(*) FROM dead_letter) FROM events")))
        assert row is not None
        self._backlog, self._dead = int(row[0]), int(row[1])
        # A row above last_seq can only exist if meta was edited by hand; never reuse its number.
        top = next(iter(await db.execute_fetchall("SELECT max(seq) FROM events")), None)
        if top is not None and top[0] is not None and int(top[0]) > self._last_seq:
            self._last_seq = int(top[0])
        await self._refresh()
        await self._run(self._check_space, True)
        self._log_state()
        log.info(
            "outbox.opened",
            path=str(self.path),
            backlog=self._backlog,
            last_seq=self._last_seq,
            bytes=self._used_bytes,
            cap_bytes=self._plan.cap_bytes,
            disk=self.disk_state,
            exclusive=self.exclusive,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._db.close()
        # SQLite closes a connection only once its last statement is finalized: a statement kept
        # by a reference cycle (an exception's traceback through a DB-thread frame) would keep the
        # file and its lock open - in exclusive mode, against the next open.
        gc.collect()
        # The WAL's room is free again: keep it for the next start (a full disk needs it to open).
        await asyncio.to_thread(self._restore_reserve_at_close)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the disk ---------------------------------------------------------------------------
    #
    # These run on the DB thread (inside `_run`): statvfs and stat are cheap syscalls, and doing
    # them there keeps the loop free and orders them with the transactions.

    def _size_for_filesystem(self) -> None:
        """(DB thread, at open) Size the WAL budget, the room left free and the reserve from the
        filesystem's size: a 2 MiB state partition gets a 16-page WAL, a 32 GiB card the default."""
        conn = self._db._conn
        total, _ = fs_space(self.path.parent)
        page = self._page_size
        self._wal_pages = max(16, min(1000, total // 64 // page))
        self._keep_free = (
            self._keep_free_setting
            if self._keep_free_setting is not None
            else max(256 * 1024, min(64 * 1024 * 1024, total // 20))
        )
        # WAL: the checkpoint threshold plus one large transaction (a 500-event batch with its
        # eviction is ~60 pages); the reserve covers a checkpoint of all of it and the -shm file.
        self._wal_allow = max(file_size(self._wal_path), (2 * self._wal_pages + 64) * (page + FRAME_OVERHEAD))
        self._reserve_target = self._wal_allow + SHM_BYTES
        conn.execute(f"PRAGMA journal_size_limit={self._wal_allow}")
        self._set_autocheckpoint(conn, self._wal_pages)

    def _set_autocheckpoint(self, conn: sqlite3.Connection, pages: int) -> None:
        if pages != self._autockpt_set:
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            self._autockpt_set = pages

    def _check_space(self, force: bool = False) -> None:
        """(DB thread) Re-read the filesystem at most every SPACE_CHECK_S: enter or leave the
        full state, top up the reserve file, re-plan the cap and the file's page ceiling."""
        now = time.monotonic()
        if not force and not self._frozen and now < self._next_check:
            return  # (while frozen, every write looks: room coming back must be seen at once)
        self._next_check = now + SPACE_CHECK_S
        conn = self._db._conn
        try:
            _, avail = fs_space(self.path.parent)
        except OSError:
            return
        wal = file_size(self._wal_path)
        self._wal_allow = max(self._wal_allow, wal)
        res = file_size(self.reserve_path)
        reserve_missing = max(0, self._reserve_target - res)
        if self._frozen:
            # leave only once the room others need and the reserve both fit again
            if avail >= self._keep_free + reserve_missing:
                self._frozen = False
        elif avail < self._keep_free // 2:
            self._frozen = True  # someone else filled the disk: hold our ground, do not grow
        if not self._frozen and reserve_missing and avail - reserve_missing >= self._keep_free:
            res = allocate(self.reserve_path, self._reserve_target)
            avail -= res - (self._reserve_target - reserve_missing)
            reserve_missing = max(0, self._reserve_target - res)
        self._reserve_bytes = res
        self._fs_avail = avail
        self._page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        plan = plan_space(
            max_bytes=self.max_bytes,
            page_size=self._page_size,
            page_count=self._page_count,
            fs_avail=avail,
            keep_free=self._keep_free,
            reserve_missing=reserve_missing,
            wal_missing=max(0, self._wal_allow - wal),
            frozen=self._frozen,
        )
        if self._page_cap is not None:
            plan = SpacePlan(
                min(plan.cap_bytes, self._page_cap * self._page_size), min(plan.max_pages, self._page_cap), True
            )
        self._plan = plan
        if plan.max_pages != self._max_pages_set:
            conn.execute(f"PRAGMA max_page_count={int(plan.max_pages)}")
            self._max_pages_set = plan.max_pages
        # frozen: checkpoint after every commit, so the next transaction starts at the WAL's first
        # frame and reuses its allocated space instead of asking the full disk for more
        self._set_autocheckpoint(conn, 1 if self._frozen else self._wal_pages)

    def _relieve_full(self) -> bool:
        """(DB thread) SQLite said full. If the filesystem is (nearly) full - not just our page
        ceiling - enter the full state, release the reserve file and checkpoint the WAL into the
        room it freed. Returns True if the filesystem was full."""
        conn = self._db._conn
        try:
            _, avail = fs_space(self.path.parent)
        except OSError:
            avail = 0
        # below our page ceiling, SQLITE_FULL can only be the filesystem; at it, the ceiling -
        # unless the room left for others is gone too
        at_ceiling = int(conn.execute("PRAGMA page_count").fetchone()[0]) >= self._max_pages_set
        fs_full = not at_ceiling or avail < self._keep_free // 2
        if fs_full:
            self._frozen = True
            if file_size(self.reserve_path) > 0:
                with contextlib.suppress(OSError):
                    self.reserve_path.unlink()
                    self._reserve_releases += 1
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(RESTART)")
        self._check_space(force=True)
        return fs_full

    def _restore_reserve_at_close(self) -> None:
        if self._reserve_target and file_size(self.reserve_path) < self._reserve_target:
            try:
                _, avail = fs_space(self.path.parent)
            except OSError:
                return
            allocate(self.reserve_path, min(self._reserve_target, avail))

    @property
    def disk_state(self) -> str:
        if self._frozen:
            return DISK_FULL
        if self._plan.disk_bound and self._used_bytes >= self._plan.cap_bytes * 0.9:
            return DISK_LIMITED
        return DISK_OK

    def _log_state(self) -> None:
        """One log line per change of the disk state (never per event)."""
        state = self.disk_state
        if state == self._state_logged:
            return
        self._state_logged = state
        fields = {
            "state": state,
            "cap_bytes": self._plan.cap_bytes,
            "bytes": self._used_bytes,
            "fs_free_bytes": self._fs_avail,
            "reserve_bytes": self._reserve_bytes,
            "backlog": self._backlog,
        }
        if state == DISK_FULL:
            log.error("outbox.disk_state", **fields)
        elif state == DISK_LIMITED:
            log.warning("outbox.disk_state", **fields)
        else:
            log.info("outbox.disk_state", **fields)

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
            incoming += len(body) + 64 + ROW_OVERHEAD
            rows_in.append((ev.event_id, str(getattr(ev, "type", "")), int(priority_of(ev)), ev.ts, body))
        lowest_incoming = min(r[2] for r in rows_in)
        async with self._lock:
            self._check_open()
            attempt = 0
            extra = 0  # bytes to evict beyond the cap on a retry after SQLITE_FULL
            try:
                # acknowledged rows the disk refused to delete go first (and are never evicted)
                if self._ack_deferred and not await self._delete_acked(sorted(self._ack_deferred), counted=True):
                    raise OutboxFullError(f"{self.path}: disk full: not even acknowledged rows can be deleted")
                while True:
                    first = self._last_seq + 1
                    try:
                        evicted, reason, used, oldest = await self._run(
                            self._tx_append, first, rows_in, incoming, extra
                        )
                        self._apply_eviction(reason, evicted)
                        break
                    except sqlite3.OperationalError as e:
                        if not is_disk_full(e) or attempt >= _FULL_RETRIES:
                            if is_disk_full(e):
                                raise OutboxFullError(f"{self.path}: disk full and eviction could not make room") from e
                            raise
                        attempt += 1
                        ceiling = self._plan.max_pages
                        fs_full = await self._run(self._relieve_full)
                        if self._plan.max_pages > ceiling:
                            extra = 0  # the disk has room again: retry as planned
                            continue
                        # Make room for the batch, a little more on each attempt (never a runaway).
                        # While the disk is full the append's own transaction must fit the WAL's
                        # allocated frames, so first free pages in small transactions of their own
                        # - stored rows no more important than the batch's least important one, so
                        # the order holds - then evict in the append's transaction, where dropping
                        # the batch's own low-priority rows costs no page at all.
                        need = incoming * attempt
                        reason = "disk_full" if fs_full else self._cap_reason()
                        n = 0
                        if self._frozen:
                            n = await self._evict(need, reason, lowest_incoming)
                        extra = need
                        if attempt >= 2 and n == 0 and self._backlog == 0 and not fs_full:
                            raise OutboxFullError(f"{self.path}: disk full and nothing left to evict") from e
            finally:
                self._log_state()
            self._last_seq = first + len(rows_in) - 1
            self._backlog += len(rows_in)
            self._appended += len(rows_in)
            self._used_bytes, self._oldest_ts = used, oldest
        self._data.set()
        return list(range(first, first + len(rows_in)))

    def _cap_reason(self) -> str:
        return "disk" if self._plan.disk_bound else "size"

    def _tx_append(
        self,
        first: int,
        rows_in: list[tuple[str, str, int, float, bytes]],
        incoming: int,
        extra: int,
    ) -> tuple[Evicted, str, int, float | None]:
        """(DB thread) Evict if needed, insert the batch and advance last_seq; all or nothing."""
        conn = self._db._conn
        self._check_space()
        gw = self._gw_json
        last = first + len(rows_in) - 1
        cap = self._plan.cap_bytes
        reason = "disk_full" if extra and self._frozen else self._cap_reason()
        conn.execute("BEGIN IMMEDIATE")
        try:
            evicted = Evicted()
            over = self._used_bytes + incoming - cap
            if over > 0 or extra:
                # Evict a little more than needed so that eviction is not paid on every append.
                sizes = [(prio, len(body) + 64 + ROW_OVERHEAD) for _, _, prio, _, body in rows_in]
                evicted = evict_rows(
                    conn,
                    max(0, over) + cap // 50 + extra,
                    reason,
                    self._used_bytes,
                    self._backlog,
                    self._handed_out,
                    sizes,
                )
            skip = evicted.incoming
            rows = [
                (seq, eid, typ, prio, ts, envelope_bytes(gw, seq, body))
                for k, (seq, (eid, typ, prio, ts, body)) in enumerate(zip(range(first, last + 1), rows_in, strict=True))
                if k not in skip
            ]
            conn.executemany(
                "INSERT INTO events (seq, event_id, type, priority, ts, payload) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last,))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return (evicted, reason, *refresh_sync(conn))

    # -- eviction -------------------------------------------------------------------------

    async def _evict(self, want_bytes: int, reason: str, max_priority: int) -> int:
        """Evict ~want_bytes of stored rows of priority <= ``max_priority`` in transactions of their
        own; while the disk is full, in steps that fit the WAL's allocated frames. Returns how many
        rows went."""
        total = 0
        step = max(self._page_size, self._wal_allow // 3) if self._frozen else want_bytes
        left = want_bytes
        for _ in range(64):  # bounded
            if left <= 0 or self._backlog <= 0:
                break
            try:
                ev, used, oldest = await self._run(self._tx_evict, min(step, left), reason, max_priority)
            except sqlite3.OperationalError as e:
                if not is_disk_full(e):
                    raise
                await self._run(self._relieve_full)
                try:
                    ev, used, oldest = await self._run(self._tx_evict, min(step, left), reason, max_priority)
                except sqlite3.OperationalError as e2:
                    if not is_disk_full(e2):
                        raise
                    break
            self._apply_eviction(reason, ev)
            self._used_bytes, self._oldest_ts = used, oldest
            if ev.total == 0:
                break
            total += ev.total
            left -= step
        return total

    def _tx_evict(self, want_bytes: int, reason: str, max_priority: int) -> tuple[Evicted, int, float | None]:
        conn = self._db._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            ev = evict_rows(
                conn, want_bytes, reason, self._used_bytes, self._backlog, self._handed_out, max_priority=max_priority
            )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return (ev, *refresh_sync(conn))

    def _apply_eviction(self, reason: str, ev: Evicted) -> None:
        """Mirror a committed eviction in the in-memory counters."""
        if not ev.total:
            return
        for pname, n in ev.by_prio.items():
            self._evicted_by_priority[pname] = self._evicted_by_priority.get(pname, 0) + n
        self._evicted[reason] = self._evicted.get(reason, 0) + ev.total
        self._backlog -= ev.total
        for seq, pname in ev.sent:
            self._evicted_sent[seq] = (pname, reason)
        while len(self._evicted_sent) > _EVICTED_SENT_MAX:
            del self._evicted_sent[next(iter(self._evicted_sent))]
        top = max(Priority[k.upper()] for k in ev.by_prio)
        if top > self._evicting:  # one line per priority level reached, never per eviction
            self._evicting = top
            log.warning(
                "outbox.evicting",
                priority=top.name.lower(),
                reason=reason,
                lower_priority_left=ev.lower_left,
                evicted_by_priority=self._evicted_by_priority,
            )
        log.debug("outbox.evicted", reason=reason, rows=ev.total, backlog=self._backlog)

    # -- reading and acknowledging --------------------------------------------------------

    async def pending(self, limit: int, after_seq: int = 0) -> list[StoredEvent]:
        """Up to ``limit`` stored events with seq > after_seq, oldest (lowest seq) first."""
        self._check_open()
        out: list[StoredEvent] = []
        cursor = after_seq
        for _ in range(1000):  # bounded; loops only past acknowledged rows not deleted yet
            rows = await self._run(self._read_pending, cursor, limit - len(out))
            if not rows:
                break
            cursor = int(rows[-1][0])
            skip = self._ack_deferred
            out += [StoredEvent(r[0], r[1], r[2], Priority(r[3]), r[4], r[5]) for r in rows if r[0] not in skip]
            if len(out) >= limit or not skip:
                break
        return out

    def _read_pending(self, after_seq: int, limit: int) -> list[Any]:
        """(DB thread) Read rows for the uplink and mark them as read in the same hop: an eviction
        queued behind this read must already know them (see `evict_rows`)."""
        rows = self._db._conn.execute(
            "SELECT seq, event_id, type, priority, ts, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        if rows and rows[-1][0] > self._handed_out:
            self._handed_out = int(rows[-1][0])
        return rows

    async def ack(self, seqs: Sequence[int]) -> None:
        """The broker has these (PUBACK success): delete them, durably.

        One transaction normally; while the disk is full, transactions small enough for the WAL's
        allocated frames. Rows the disk refuses even to delete are remembered as acknowledged (not
        offered again by `pending`, counted) and deleted before the next append.
        """
        if not seqs:
            return
        async with self._lock:
            self._check_open()
            try:
                await self._delete_acked(sorted(set(seqs) - self._ack_deferred), counted=False)
            finally:
                self._log_state()

    def _ack_chunk_rows(self, n: int) -> int:
        if not self._frozen:
            return max(1, n)
        row = max(1, self._used_bytes // max(1, self._backlog))
        return max(16, file_size(self._wal_path) // 3 // row)

    async def _delete_acked(self, seqs: list[int], *, counted: bool) -> bool:
        """Delete acknowledged rows; ``counted``: they were counted as acknowledged when deferred.
        Returns False if the disk refused (the rest is deferred)."""
        k = self._ack_chunk_rows(len(seqs))
        for i in range(0, len(seqs), k):
            chunk = seqs[i : i + k]
            # rows evicted after the uplink read them: the broker has them after all
            sent = [q for q in chunk if q in self._evicted_sent] if self._evicted_sent else []
            reclass: dict[tuple[str, str], int] = {}
            for q in sent:
                key = self._evicted_sent[q]
                reclass[key] = reclass.get(key, 0) + 1
            try:
                n, used, oldest = await self._delete_with_relief(seq_ranges(chunk), None, reclass)
            except sqlite3.OperationalError as e:
                if not is_disk_full(e):
                    raise
                rest = seqs[i:]
                if not counted:
                    fresh = [q for q in rest if q not in self._evicted_sent]
                    self._backlog -= len(fresh)
                    self._acked += len(fresh)
                self._ack_deferred.update(rest)
                log.debug("outbox.ack_deferred", rows=len(rest), reason=str(e))
                return False
            for q in sent:
                del self._evicted_sent[q]
            for (pname, reason), c in reclass.items():
                self._evicted_by_priority[pname] -= c
                self._evicted[reason] -= c
            self._acked += len(sent)
            if not counted:
                self._backlog -= n
                self._acked += n
            self._ack_deferred.difference_update(chunk)
            self._used_bytes, self._oldest_ts = used, oldest
        return True

    async def dead_letter(self, seqs: Sequence[int], reason: str, reason_code: int | None = None) -> int:
        """Move rows the broker will never accept to ``dead_letter`` (kept, counted, not sent)."""
        if not seqs:
            return 0
        ranges = seq_ranges(seqs)
        async with self._lock:
            self._check_open()
            n, used, oldest = await self._delete_with_relief(ranges, (reason_code, reason, time.time()), {})
            self._backlog -= n
            self._dead += n
            self._used_bytes, self._oldest_ts = used, oldest
        log.error("outbox.dead_lettered", rows=n, reason=reason, reason_code=reason_code)
        return n

    async def _delete_with_relief(
        self,
        ranges: list[tuple[int, int]],
        dead: tuple[int | None, str, float] | None,
        reclass: dict[tuple[str, str], int],
    ) -> tuple[int, int, float | None]:
        try:
            return await self._run(self._tx_delete, ranges, dead, reclass)
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            await self._run(self._relieve_full)
            return await self._run(self._tx_delete, ranges, dead, reclass)

    def _tx_delete(
        self,
        ranges: list[tuple[int, int]],
        dead: tuple[int | None, str, float] | None,
        reclass: dict[tuple[str, str], int],
    ) -> tuple[int, int, float | None]:
        """(DB thread) Delete acknowledged rows, or move them to dead_letter when ``dead`` is given.
        ``reclass``: acknowledged rows that had been evicted after the uplink read them, by
        (priority, reason): their eviction counters go down in the same transaction."""
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
            for (pname, reason), k in reclass.items():
                conn.execute(BUMP_SQL, (f"evicted_priority.{pname}", -k, -k))
                conn.execute(BUMP_SQL, (f"evicted.{reason}", -k, -k))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return (n, *refresh_sync(conn))

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
            try:  # not wait_for: on 3.11 it can swallow a cancel that lands as an append commits
                async with asyncio.timeout(timeout):
                    await self._data.wait()
            except TimeoutError:
                return False
        self._data.clear()
        return True

    def stats(self) -> OutboxStats:
        return OutboxStats(
            backlog=self._backlog,
            oldest_ts=self._oldest_ts,
            last_seq=self._last_seq,
            evicted={k: v for k, v in self._evicted.items() if v},
            evicted_by_priority={k: v for k, v in self._evicted_by_priority.items() if v},
            bytes=self._used_bytes,
            max_bytes=self.max_bytes,
            dead_letters=self._dead,
            appended=self._appended,
            acked=self._acked,
            disk_state=self.disk_state,
            cap_bytes=self._plan.cap_bytes,
            file_bytes=self._page_count * self._page_size + file_size(self._wal_path) + file_size(self._shm_path),
            reserve_bytes=self._reserve_bytes,
            fs_free_bytes=self._fs_avail,
            reserve_releases=self._reserve_releases,
            ack_deferred=len(self._ack_deferred),
        )

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def set_page_cap(self, pages: int) -> None:
        """Cap the file at ``pages`` pages (``PRAGMA max_page_count``): a tiny simulated disk."""
        self._page_cap = int(pages)
        await self._run(self._check_space, True)

    async def check_space(self) -> str:
        """Re-read the filesystem now (the writer calls it while idle); returns the disk state."""
        if not self._closed:
            async with self._lock:
                await self._run(self._check_space, True)
                self._log_state()
        return self.disk_state

    async def _refresh(self) -> None:
        row = next(iter(await self._db.execute_fetchall(REFRESH_SQL)), None)
        assert row is not None
        self._oldest_ts = None if row[0] is None else float(row[0])
        self._used_bytes = int(row[1])
        self._page_count = int(row[2])

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: outbox is closed")
