"""The outbox's SQLite file: schema, stored rows, and the statements that run inside the outbox's
transactions on its database thread (eviction, accounting counters, live-size refresh).

`gateway.uplink.outbox` owns the connection and the transactions; these functions take the
`sqlite3.Connection` of that thread and never commit themselves.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.models import Priority

SCHEMA_VERSION = 1
# Per-row overhead beyond the payload (row header, columns, index entry), for the size estimate.
ROW_OVERHEAD = 96

SCHEMA = """
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

REFRESH_SQL = (
    "SELECT (SELECT ts FROM events ORDER BY seq LIMIT 1),"
    " ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()))"
    " * (SELECT page_size FROM pragma_page_size()),"
    " (SELECT page_count FROM pragma_page_count())"
)

BUMP_SQL = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event_id: str
    type: str
    priority: Priority
    ts: float
    payload: bytes


def envelope_bytes(gateway_id_json: bytes, seq: int, event_json: bytes) -> bytes:
    """Canonical ``UplinkEvent`` JSON, byte-identical to ``UplinkEvent(...).model_dump_json()``.

    Built by concatenation because it is on the append hot path (tests pin the equality).
    """
    return b'{"v":1,"gateway_id":%s,"seq":%d,"event":%s}' % (gateway_id_json, seq, event_json)


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Collapse sequence numbers into inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def refresh_sync(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """(DB thread) Live bytes of the file and the ts of the oldest pending row."""
    row = conn.execute(REFRESH_SQL).fetchone()
    return int(row[1]), None if row[0] is None else float(row[0])


@dataclass(slots=True)
class Evicted:
    total: int = 0
    by_prio: dict[str, int] = field(default_factory=dict)
    # rows the uplink had already read: seq -> priority name (see Outbox._evicted_sent)
    sent: list[tuple[int, str]] = field(default_factory=list)
    # positions in the incoming batch evicted before they were stored (their seqs are consumed)
    incoming: set[int] = field(default_factory=set)
    # when rows above FIX went: stored rows of a lower priority left after it (0 by the policy;
    # counted in SQL, an independent check the daemon logs once per priority level reached)
    lower_left: int = 0


def evict_rows(
    conn: sqlite3.Connection,
    want_bytes: int,
    reason: str,
    used: int,
    backlog: int,
    protect_upto: int,
    incoming: Sequence[tuple[int, int]] = (),
    max_priority: int = int(max(Priority)),
) -> Evicted:
    """(DB thread, inside the caller's transaction) Evict rows worth ~want_bytes.

    Lowest priority first, oldest (lowest seq) first within a priority. Within a priority: stored
    rows the uplink has not read yet (seq > ``protect_upto``), then the ones it has (they may be in
    flight: evicting them could count as evicted an event the broker still acknowledges), then
    rows of the ``incoming`` batch ((priority, bytes) in seq order: the newest of all), which are
    then not inserted - so a batch of raw fixes never displaces a stored visit. Counters are
    persisted in ``meta`` in the same transaction and mirrored in memory once it committed.
    """
    out = Evicted()
    if backlog <= 0 and not incoming:
        return out
    # bytes a stored row frees: live bytes per row, which the schema's own pages inflate while the
    # backlog is small - the batch's average row is then the better estimate
    avg = max(1, used // backlog) if backlog > 0 else 1
    if incoming:
        avg = min(avg, max(1, sum(b for _, b in incoming) // len(incoming))) if backlog > 0 else avg
    left = want_bytes
    for prio in sorted(Priority):
        if left <= 0 or prio > max_priority:
            break
        pname = prio.name.lower()
        n = 0
        if backlog > 0:
            rows_wanted = max(1, -(-left // avg))
            n = max(
                0,
                conn.execute(
                    "DELETE FROM events WHERE seq IN"
                    " (SELECT seq FROM events WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?)",
                    (int(prio), protect_upto, rows_wanted),
                ).rowcount,
            )
            if rows_wanted - n > 0 and protect_upto > 0:
                sent = conn.execute(
                    "DELETE FROM events WHERE seq IN"
                    " (SELECT seq FROM events WHERE priority = ? AND seq <= ? ORDER BY seq LIMIT ?) RETURNING seq",
                    (int(prio), protect_upto, rows_wanted - n),
                ).fetchall()
                out.sent += [(int(r[0]), pname) for r in sent]
                n += len(sent)
            left -= n * avg
        for i, (p, size) in enumerate(incoming):
            if left <= 0:
                break
            if p == prio:
                out.incoming.add(i)
                n += 1
                left -= size
        if n <= 0:
            continue
        out.total += n
        out.by_prio[pname] = n
        conn.execute(BUMP_SQL, (f"evicted_priority.{pname}", n, n))
    if out.total:
        conn.execute(BUMP_SQL, (f"evicted.{reason}", out.total, out.total))
        top = max(Priority[k.upper()] for k in out.by_prio)
        if top > Priority.FIX:
            out.lower_left = int(
                conn.execute("SELECT count(*) FROM events WHERE priority < ?", (int(top),)).fetchone()[0]
            )
    return out
