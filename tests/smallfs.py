"""A real, small filesystem for disk-full tests: a tmpfs of a given size, mounted for the test.

Mounting needs root (the project's tests and CI run as root). Elsewhere the tests that need it
are skipped with that reason: a file-size limit (RLIMIT_FSIZE) is not a substitute here, because
SQLite reports EFBIG as an I/O error, not as SQLITE_FULL, and a full *filesystem* is what the
stores must survive (every store shares it, and the -shm index needs room at open).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1024 * 1024


def can_mount() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def small_filesystem(where: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a ``size_bytes`` tmpfs on ``where`` (created) for the duration of the block."""
    if not can_mount():
        pytest.skip("mounting a small tmpfs needs root (the project's CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(where)],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        # lazy: a process the test started may still hold a file open for a moment
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def free_bytes(d: Path) -> int:
    st = os.statvfs(d)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0) -> int:
    """Another writer: write ``path`` until the filesystem has at most ``leave`` bytes free.
    Returns the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    with open(path, "ab", buffering=0) as f:
        while free_bytes(path.parent) > leave:
            try:
                written += f.write(chunk)
            except OSError:
                break
    return written
