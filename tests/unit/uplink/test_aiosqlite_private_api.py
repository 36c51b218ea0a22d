"""The outbox runs each transaction as one function on aiosqlite's connection thread through two
private members, ``Connection._execute(fn, *args)`` and ``Connection._conn`` (aiosqlite has no public
"run this on your thread" call, and one hop per transaction instead of one per statement is what
keeps the append path above 20 000 events/s). pyproject.toml pins aiosqlite to the versions checked
here; this test fails as soon as an aiosqlite release changes what the outbox relies on."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
from importlib.metadata import version
from pathlib import Path

import aiosqlite

TESTED = ("0.20", "0.21", "0.22")  # the pin in pyproject.toml: aiosqlite>=0.20,<0.23


def test_the_installed_aiosqlite_is_a_tested_one() -> None:
    assert version("aiosqlite").startswith(TESTED), version("aiosqlite")


async def test_execute_runs_a_function_on_the_connection_thread_with_its_sqlite3_connection(tmp_path: Path) -> None:
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    db = await aiosqlite.connect(tmp_path / "t.db")
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        await db.commit()

        def tx(value: int) -> tuple[int, bool]:
            conn = db._conn  # what the outbox's transaction functions use
            assert isinstance(conn, sqlite3.Connection)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (value,))
            conn.execute("COMMIT")
            return threading.get_ident(), conn.in_transaction

        loop_thread = threading.get_ident()
        ident, in_tx = await db._execute(tx, 7)
        assert ident != loop_thread and not in_tx  # on aiosqlite's thread, committed
        async with db.execute("SELECT x FROM t") as cur:  # the public API sees the same connection
            assert [r[0] for r in await cur.fetchall()] == [7]
        # one function at a time: two transactions never interleave on the connection
        order: list[str] = []

        def slow(tag: str) -> None:
            order.append(f"{tag}-start")
            threading.Event().wait(0.05)
            order.append(f"{tag}-end")

        await asyncio.gather(db._execute(slow, "a"), db._execute(slow, "b"))
        assert order == ["a-start", "a-end", "b-start", "b-end"]
    finally:
        await db.close()
