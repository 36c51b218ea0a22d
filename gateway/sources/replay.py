"""Replay source: observations from a JSON-lines file, as fast as possible or at recorded pace.

Line format: ``{"ts": 1767261600.5, "sensor": "n11", "device": "...", "rssi": -71}`` with optional
``radio``, ``rssi_at_1m``, ``link``. Bad lines are counted in ``health.dropped`` by reason and
skipped; they never stop the replay. Reading and parsing run in a worker thread, in chunks, so the
event loop is never blocked by file I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import IO, Any

from gateway.models import Observation, SourceHealth
from gateway.sources.base import RECORDING

CHUNK_LINES = 4096
_RADIOS = {"ble", "wifi", "node", "sim"}


def parse_line(line: str) -> Observation | str:
    """Parse one line into an Observation, or return the drop reason."""
    try:
        d: Any = json.loads(line)
    except ValueError:
        return "bad_json"
    if not isinstance(d, dict):
        return "bad_json"
    try:
        ts = float(d["ts"])
        rssi = float(d["rssi"])
        sensor = d["sensor"]
        device = d["device"]
    except (KeyError, TypeError, ValueError):
        return "missing_field"
    if not (isinstance(sensor, str) and isinstance(device, str) and sensor and device):
        return "missing_field"
    if not (math.isfinite(ts) and math.isfinite(rssi)) or not -130.0 <= rssi <= 20.0:
        return "bad_value"
    radio = d.get("radio", "sim")
    if radio not in _RADIOS:
        return "bad_value"
    r1m = d.get("rssi_at_1m")
    link = d.get("link")
    return Observation(
        ts, sensor, device, rssi, radio, float(r1m) if r1m is not None else None, str(link) if link else None
    )


def read_chunks(fh: IO[str], health: SourceHealth) -> Iterator[list[Observation]]:
    """Yield parsed, time-ordered chunks; bad and out-of-order lines are counted and skipped."""
    last_ts = -math.inf
    while True:
        lines = fh.readlines(CHUNK_LINES * 80)
        if not lines:
            return
        chunk: list[Observation] = []
        for line in lines:
            if not line.strip():
                continue
            r = parse_line(line)
            if isinstance(r, str):
                health.drop(r)
                continue
            if r.ts < last_ts:
                health.drop("out_of_order")
                continue
            last_ts = r.ts
            chunk.append(r)
        yield chunk


class ReplaySource:
    capabilities = RECORDING  # finite, waits rather than drops, its own time (see the daemon)

    def __init__(self, path: Path, speed: float = 0.0, *, name: str = "replay") -> None:
        self.name = name
        self.path = path
        self.speed = speed
        self.health = SourceHealth(name=name)

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        loop = asyncio.get_running_loop()
        fh = await loop.run_in_executor(None, lambda: self.path.open("r", encoding="utf-8", errors="replace"))
        self.health.state = "running"
        try:
            it = read_chunks(fh, self.health)
            t_wall0: float | None = None
            t_rec0 = 0.0
            while True:
                chunk = await loop.run_in_executor(None, next, it, None)
                if chunk is None:
                    break
                if not chunk:
                    continue
                if self.speed <= 0:
                    self._count(chunk)
                    yield chunk
                    continue
                # paced: split the chunk at 100 ms recorded-time boundaries and sleep between
                if t_wall0 is None:
                    t_wall0, t_rec0 = time.monotonic(), chunk[0].ts
                start = 0
                while start < len(chunk):
                    edge = chunk[start].ts + 0.1
                    end = start
                    while end < len(chunk) and chunk[end].ts < edge:
                        end += 1
                    part = chunk[start:end]
                    due = t_wall0 + (part[0].ts - t_rec0) / self.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._count(part)
                    yield part
                    start = end
        finally:
            await loop.run_in_executor(None, fh.close)
            self.health.state = "stopped"

    def _count(self, chunk: list[Observation]) -> None:
        self.health.observations += len(chunk)
        self.health.last_observation_ts = chunk[-1].ts
