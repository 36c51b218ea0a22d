"""The outbox's room on the disk (docs/storage.md): how much the filesystem lets it grow, the reserve
file that keeps a full disk workable, and the disk states shown on the status page and /metrics.

Pure planning (`plan_space`) and small file helpers; `gateway.uplink.outbox` applies them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.log import get_logger
from gateway.storage import file_size, fs_space

log = get_logger(__name__)

# SQLite's shared-memory WAL index (-shm) is created at open in 32 KiB steps.
SHM_BYTES = 32 * 1024
# One WAL frame = a page + its 24-byte header.
FRAME_OVERHEAD = 24

# Disk states, worst last (status page, /metrics, one log line per change).
DISK_OK = "ok"  # the outbox can grow to max_bytes, or is well below what the disk allows
DISK_LIMITED = "limited"  # the disk, not max_bytes, sets the cap and the outbox is at it (evicting)
DISK_FULL = "full"  # the filesystem is full (another writer took the room left free): file frozen
DISK_STATES = (DISK_OK, DISK_LIMITED, DISK_FULL)


@dataclass(frozen=True, slots=True)
class SpacePlan:
    """What the disk allows the outbox: ``cap_bytes`` of live pages (eviction keeps below it)
    and a hard ceiling of ``max_pages`` for the file (``PRAGMA max_page_count``)."""

    cap_bytes: int
    max_pages: int
    disk_bound: bool  # the disk, not max_bytes, sets cap_bytes


def plan_space(
    *,
    max_bytes: int,
    page_size: int,
    page_count: int,
    fs_avail: int,
    keep_free: int,
    reserve_missing: int,
    wal_missing: int,
    frozen: bool,
) -> SpacePlan:
    """(pure) The outbox's cap from the filesystem's free space.

    The file may grow by what is free minus the room left for others (``keep_free``), minus what
    the reserve file and the WAL may still take; never while ``frozen`` (the disk is full). Free
    pages inside the file are reused, so the cap never drops below the file's current size: an
    eviction cannot give space back to the filesystem and is not asked to.
    """
    room = 0 if frozen else max(0, fs_avail - keep_free - reserve_missing - wal_missing)
    max_pages = page_count + room // page_size
    slack = max(8, max_pages // 50)  # b-tree fill and the next batch's index pages
    disk_cap = max(0, max_pages - slack) * page_size
    return SpacePlan(min(max_bytes, disk_cap), max_pages, disk_cap < max_bytes)


def allocate(path: Path, size: int) -> int:
    """Make ``path`` hold ``size`` allocated bytes (fallocate); return what it holds after."""
    if size <= 0:
        return file_size(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return 0
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # no room: keep what was there before
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return file_size(path)


def make_room_to_open(path: Path) -> None:
    """Before SQLite opens the file on a (nearly) full filesystem, hand the reserve file's room
    to it: the -shm index (32 KiB) is freed from the reserve and the rest becomes the WAL file.

    A clean close deletes the WAL; its room went into the reserve (`_restore_reserve_at_close`).
    Renaming the (zero-filled, allocated) reserve to the -wal name gives it back to the WAL in one
    step that no other writer can race: SQLite reads an all-zero header as an empty WAL and writes
    its frames from the start of the file, over blocks that are already allocated. A WAL left by a
    crash (valid frames) is never touched; then the reserve is only released.
    """
    reserve = path.with_name(path.name + ".reserve")
    wal = path.with_name(path.name + "-wal")
    try:
        _, avail = fs_space(path.parent)
    except OSError:
        return
    size = file_size(reserve)
    if avail >= SHM_BYTES + 256 * 1024 or size == 0:
        return
    try:
        if path.exists() and not wal.exists() and size > SHM_BYTES:
            os.truncate(reserve, size - SHM_BYTES)
            os.rename(reserve, wal)
            log.warning("outbox.reserve_released", to="wal", bytes=size, fs_free_bytes=avail, at="open")
        else:
            reserve.unlink()
            log.warning("outbox.reserve_released", to="filesystem", bytes=size, fs_free_bytes=avail, at="open")
    except OSError as e:
        log.warning("outbox.reserve_release_failed", reason=str(e))
