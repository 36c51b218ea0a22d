"""The hourly malloc_trim: once per hour of event time, counted, and it does return memory."""

from __future__ import annotations

import ctypes

import pytest

from gateway.runtime.memory import MemoryTrim, rss_kib


def test_trims_once_per_new_hour_of_event_time() -> None:
    calls: list[int] = []
    m = MemoryTrim(lambda: calls.append(1), every_s=3600.0)
    t0 = 1_767_247_200.0  # a whole hour
    assert not m.maybe_trim(t0 + 10)  # the first call starts the clock
    assert not m.maybe_trim(t0 + 3000)
    assert m.maybe_trim(t0 + 3600)
    assert not m.maybe_trim(t0 + 3700)
    assert not m.maybe_trim(t0 + 100)  # event time going back (a late batch) trims nothing
    assert m.maybe_trim(t0 + 5 * 3600)  # a silent night: one trim, not one per hour missed
    assert len(calls) == m.runs == 2


def test_without_malloc_trim_nothing_happens() -> None:
    m = MemoryTrim(None)
    assert not m.maybe_trim(0.0)
    assert not m.maybe_trim(1e9)
    assert m.runs == 0


def test_glibc_trim_returns_freed_heap_pages() -> None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim") or rss_kib() == 0:
        pytest.skip("needs glibc and /proc")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    # 48 MiB in blocks below the mmap threshold (they come from the heap), all touched; then every
    # block but the last is freed: the heap cannot shrink from its top, the pages stay resident
    size, n = 48 * 1024, 1024
    blocks = [libc.malloc(size) for _ in range(n)]
    assert all(blocks)
    for b in blocks:
        libc.memset(b, 1, size)
    for b in blocks[:-1]:
        libc.free(b)
    m = MemoryTrim.glibc(every_s=1.0)
    m.maybe_trim(0.0)
    assert m.maybe_trim(1.0)
    libc.free(blocks[-1])
    assert m.runs == 1
    assert m.returned_kib > 24 * 1024, m.returned_kib


def test_the_daemon_does_not_load_the_updater() -> None:
    """The daemon announces READY through gateway.ops.ready; the updater (tarfile, archive and
    signature checks: 0.35 MB of RSS) is loaded only by ``gateway update``."""
    import subprocess
    import sys

    code = "import sys, gateway.runtime.daemon; print(sorted({'gateway.ops.update', 'tarfile'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
