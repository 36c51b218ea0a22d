"""SQLite on a small or full disk: what the three stores (outbox, presence, content) share.

See docs/storage.md for the space model. Only the classification of "no room" and the size of
files and filesystems live here; each store decides what degrading means for its data.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TypedDict


class StoreStatus(TypedDict, total=False):
    """A small store on a full disk (docs/storage.md): what it could not write."""

    disk: str  # ok | full
    exclusive: bool  # opened without a -shm index (the disk had no room for one)
    visits_not_recorded: int
    unsaved_optouts: int
    unsaved_erasures: int


# A small WAL for the stores that write little (presence, content): a checkpoint every 32 pages
# and at most 256 KiB kept between checkpoints. SQLite's default (1000 pages, never truncated)
# lets a WAL grow to 4 MiB, which alone fills a small state partition.
SMALL_WAL_AUTOCHECKPOINT_PAGES = 32
SMALL_WAL_SIZE_LIMIT = 256 * 1024
# The page cache of the stores that write little (presence, content): at most 512 KiB each
# (``PRAGMA cache_size``, negative = KiB). SQLite's default is 2,000 KiB a connection, and the
# presence store's visit history fills it through the day (its subject index takes a day's ~26k
# visits at 500 devices in random order): 2.06 MB of the daemon's RSS by closing time, never
# returned (issue 22). The file stays in the OS's page cache; a smaller one costs a read() there.
SMALL_CACHE_KIB = 512


def is_disk_full(e: BaseException) -> bool:
    """SQLite ran out of room: ``SQLITE_FULL`` (the disk, or a ``max_page_count`` ceiling), or its
    -shm index could not be sized at open (``SQLITE_IOERR_SHMSIZE``: the filesystem is full)."""
    if not isinstance(e, sqlite3.OperationalError):
        return False
    name = getattr(e, "sqlite_errorname", "")
    return (
        getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or name in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE")
        or "database or disk is full" in str(e)
    )


def drop_stub_shm(db: Path) -> None:
    """Remove the -shm file SQLite began and could not size on a full disk (a few bytes; one in
    use is at least 32 KiB). Left there, the next normal-mode open after an exclusive-mode session
    reports "database is locked"."""
    shm = db.with_name(db.name + "-shm")
    with contextlib.suppress(OSError):
        if shm.stat().st_size < 32 * 1024:
            shm.unlink()


def file_size(p: Path) -> int:
    """Bytes of ``p``; 0 when it does not exist (or cannot be read)."""
    try:
        return p.stat().st_size
    except OSError:
        return 0


def fs_space(d: Path) -> tuple[int, int]:
    """(total, available to us) bytes of the filesystem holding ``d``."""
    st = os.statvfs(d)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
