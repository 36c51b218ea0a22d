"""Hand the C allocator's free memory back to the system every 15 minutes of event time (issue 22).

The pipeline thread allocates and frees numpy temporaries and per-device state all day; what it
frees stays in glibc's heaps until something returns it. ``malloc_trim(0)`` gives back every
whole free page of every heap (not only the top), so memory freed when visits end and when the
pseudonym key rotates (the day's visit history is dropped) leaves the process's RSS. It walks the
heaps under their locks (a few milliseconds for the daemon's ~30 MB), so it runs on the pipeline
thread between jobs, at most once per ``TRIM_EVERY_S`` of event time (wall time on a box; the
simulator's time in the benches, where a day passes in minutes). Every 15 minutes rather than every
hour: what the heaps free between two trims (numpy's temporaries, visits ending) is resident until
the next one, and a trim costs a few milliseconds - 0.001 % of a core at four an hour.

Counted: how many trims ran and the RSS they returned (``/proc/self/status`` before and after).
Python's own small-object arenas are outside it (they go back whole, when empty). Off glibc (musl,
macOS) there is no ``malloc_trim`` and this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

TRIM_EVERY_S = 900.0


def rss_kib() -> int:
    """This process's resident set (``VmRSS``), KiB; 0 where ``/proc`` does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _glibc_trim() -> Callable[[], object] | None:
    # the process's own symbols (libc among them): no ``find_library`` (it runs ldconfig)
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: fn(0)


@dataclass(slots=True)
class MemoryTrim:
    """``maybe_trim(now)`` from the pipeline thread: trims when ``now`` (event time) has entered a
    new ``every_s`` period since the last trim."""

    trim: Callable[[], object] | None
    every_s: float = TRIM_EVERY_S
    runs: int = 0
    returned_kib: int = 0  # RSS given back by all trims (before - after, when it went down)
    _period: float | None = None

    @classmethod
    def glibc(cls, every_s: float = TRIM_EVERY_S) -> MemoryTrim:
        return cls(_glibc_trim(), every_s)

    def maybe_trim(self, now: float) -> bool:
        if self.trim is None:
            return False
        period = now // self.every_s
        if self._period is None:
            self._period = period  # the first call only starts the clock
            return False
        if period <= self._period:
            return False
        self._period = period
        before = rss_kib()
        self.trim()
        self.runs += 1
        self.returned_kib += max(0, before - rss_kib())
        return True
