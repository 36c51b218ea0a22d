"""Outbox tools: ``stats`` for technicians, ``drive`` to exercise append + drain end to end.

``python -m gateway.ops.outbox_tool drive ...`` appends synthetic presence events in batches while an
`Uplink` drains them to a broker - the crash tests kill it with SIGKILL at random moments and
check that, after restarts, the platform saw every sequence number. It is a real process with
the real outbox and uplink, independent of the daemon wiring.

Both are also offered as ``gateway outbox stats|drive`` through `add_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config import GatewayIdentity, MqttSettings
from gateway.models import EventBase, ZoneEntered
from gateway.storage import file_size, fs_space
from gateway.uplink.outbox import Outbox, OutboxError


def _stats_cmd(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        print(f"{args.db}: no such outbox file", file=sys.stderr)
        return 2
    if not Path(args.db).is_file():
        print(f"{args.db}: not an outbox file (a directory?)", file=sys.stderr)
        return 2
    return asyncio.run(_stats(args))


async def _stats(args: argparse.Namespace) -> int:
    try:
        out = await asyncio.to_thread(read_stats, Path(args.db))
    except OutboxError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


def read_stats(path: Path) -> dict[str, Any]:
    """What an outbox file holds, read-only (it never writes, takes no lock a running daemon would
    wait for, and leaves the reserve file alone - on a full disk that room is the daemon's):
    backlog, sequence numbers, eviction and dead-letter counters, sizes, the filesystem's room."""
    import sqlite3

    wal = path.with_name(path.name + "-wal")
    # read-only; a cleanly closed file has no WAL and needs no -shm either (works on a full disk)
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if not wal.exists() else "")
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            meta = {str(k): v for k, v in con.execute("SELECT key, value FROM meta")}
            backlog, oldest, dead = con.execute(
                "SELECT count(*), (SELECT ts FROM events ORDER BY seq LIMIT 1), (SELECT count(*) FROM dead_letter)"
                " FROM events"
            ).fetchone()
            by_type = dict(con.execute("SELECT type, count(*) FROM events GROUP BY type ORDER BY type").fetchall())
            pages, free, page = (
                con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
            )
        finally:
            con.close()
    except sqlite3.Error as e:
        hint = " (disk full: stop the daemon or free space to read it)" if "I/O" in str(e) else ""
        raise OutboxError(f"{path}: not an outbox: {e}{hint}") from None
    if "gateway_id" not in meta:
        raise OutboxError(f"{path}: not an outbox (no gateway id)")

    def counters(prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): int(v) for k, v in meta.items() if k.startswith(prefix) and v}

    fs_total, fs_free = fs_space(path.parent)
    return {
        "gateway_id": meta["gateway_id"],
        "backlog": backlog,
        "backlog_by_type": by_type,
        "oldest_ts": oldest,
        "last_seq": int(meta.get("last_seq", 0)),
        "evicted": counters("evicted."),
        "evicted_by_priority": counters("evicted_priority."),
        "dead_letters": dead,
        "bytes": (pages - free) * page,
        "file_bytes": file_size(path) + file_size(wal) + file_size(path.with_name(path.name + "-shm")),
        "reserve_bytes": file_size(path.with_name(path.name + ".reserve")),
        "fs_free_bytes": fs_free,
        "fs_total_bytes": fs_total,
    }


def _events(n: int, start: int, store_id: str) -> list[EventBase]:
    return [
        ZoneEntered(ts=1_767_261_600.0 + i, store_id=store_id, subject=f"p{i % 97}", zone=f"z{i % 5}")
        for i in range(start, start + n)
    ]


def check_drive_args(args: argparse.Namespace) -> str | None:
    """Why these ``outbox drive`` arguments are wrong (None: fine); the settings models decide."""
    from pydantic import ValidationError

    for what, value, lo, hi in (
        ("--events", args.events, 0, 10**9),
        ("--batch", args.batch, 1, 100_000),
        ("--interval", args.interval, 0, 60),
        ("--timeout", args.timeout, 0, 3600),
    ):
        if not (lo <= value <= hi):
            return f"{what} {value}: must be {lo}..{hi}"
    db = Path(args.db)
    if db.is_dir() or not db.parent.is_dir():
        return f"--db {db}: {'is a directory' if db.is_dir() else f'directory {db.parent} does not exist'}"
    try:
        GatewayIdentity(id=args.gateway_id, store_id=args.store_id)
        MqttSettings(
            host=args.host,
            port=args.port,
            tls=False,
            inflight=args.inflight,
            batch_threshold=args.batch_threshold,
            batch_max=args.batch_max,
        )
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        flag = {"id": "--gateway-id", "store_id": "--store-id"}.get(str(err["loc"][0]), f"--{err['loc'][0]}")
        return f"{flag.replace('_', '-')} {err.get('input')!r}: {err['msg']}"
    return None


def _drive_cmd(args: argparse.Namespace) -> int:
    why = check_drive_args(args)
    if why is not None:
        print(f"gateway outbox drive: error: {why}", file=sys.stderr)
        return 2
    return asyncio.run(_drive(args))


async def _drive(args: argparse.Namespace) -> int:
    ident = GatewayIdentity(id=args.gateway_id, store_id=args.store_id)
    settings = MqttSettings(
        host=args.host,
        port=args.port,
        tls=False,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        inflight=args.inflight,
        batch_threshold=args.batch_threshold,
        batch_max=args.batch_max,
    )
    from gateway.uplink.link import Uplink

    ob = await Outbox.open(Path(args.db), ident.id)
    up = Uplink(settings, ident, ob)
    task = asyncio.create_task(up.run())
    ready = json.dumps({"ready": True, "last_seq": ob.last_seq, "backlog": ob.backlog})
    print(ready, flush=True)
    if args.ready_file:
        await asyncio.to_thread(Path(args.ready_file).write_text, ready)
    try:
        while ob.last_seq < args.events:
            n = min(args.batch, args.events - ob.last_seq)
            await ob.append(_events(n, ob.last_seq, ident.store_id))
            if args.interval > 0:
                await asyncio.sleep(args.interval)
        for _ in range(int(args.timeout / 0.05)):
            if ob.backlog == 0:
                break
            await asyncio.sleep(0.05)
        await up.drain(5.0)
        await asyncio.wait_for(task, 5.0)
    finally:
        if not task.done():
            task.cancel()
        await ob.close()
    done: dict[str, Any] = {"done": True, "last_seq": ob.last_seq, "backlog": ob.backlog, **up.status()}
    print(json.dumps(done, default=str), flush=True)
    return 0 if ob.backlog == 0 else 1


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("outbox", help="inspect or exercise the durable outbox")
    sub = p.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    st = sub.add_parser("stats", help="print backlog, last seq, evictions of an outbox file")
    st.add_argument("db", help="outbox SQLite file")
    st.set_defaults(func=_stats_cmd)
    dr = sub.add_parser("drive", help="append synthetic events while draining them to a broker (tests)")
    dr.add_argument("--db", required=True)
    dr.add_argument("--host", default="127.0.0.1")
    dr.add_argument("--port", type=int, required=True)
    dr.add_argument("--gateway-id", default="gw-drive")
    dr.add_argument("--store-id", default="store-drive")
    dr.add_argument("--events", type=int, default=1000, help="stop appending when last_seq reaches this")
    dr.add_argument("--batch", type=int, default=50)
    dr.add_argument("--interval", type=float, default=0.01, help="pause between append batches (s)")
    dr.add_argument("--inflight", type=int, default=64)
    dr.add_argument("--batch-threshold", type=int, default=200)
    dr.add_argument("--batch-max", type=int, default=100)
    dr.add_argument("--timeout", type=float, default=30.0, help="max wait for the backlog to drain (s)")
    dr.add_argument("--ready-file", help="write the ready line here too (for test harnesses)")
    dr.set_defaults(func=_drive_cmd)


def main(argv: list[str] | None = None) -> int:
    from gateway.log import configure_logging

    parser = argparse.ArgumentParser(prog="python -m gateway.ops.outbox_tool")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["outbox", *(argv if argv is not None else sys.argv[1:])])
    configure_logging("warning", "json", sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
