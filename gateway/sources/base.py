"""The one small protocol every observation source implements.

A source is an async iterator of *batches* of observations (a batch amortises per-item overhead;
a source yields as soon as it has something, so latency stays low). Sources also expose a
``health`` record the status page and metrics read. The daemon never knows which source it has:
BLE, Wi-Fi, sensor nodes, replay and the simulator are interchangeable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from gateway.models import Observation, SourceHealth


@runtime_checkable
class Source(Protocol):
    name: str
    health: SourceHealth

    def batches(self) -> AsyncIterator[list[Observation]]:
        """Yield observation batches until the source ends (replay) or is cancelled (live)."""
        ...
