"""The one retry timing of the daemon: exponential backoff, optionally jittered.

Retry ``k`` (0 for the first) waits ``min(max_s, first_s * 2**k)``; with ``jitter="full"`` a uniform
draw in ``[first_s, that]`` (clients of one broker that all lost it at once do not come back in
step), with ``jitter="spread"`` that value times a uniform draw in [0.8, 1.2]. Users: the uplink
(full jitter, per broker endpoint), the store-local broker links of the node source and the
actors (spread), webhook retries of the actors and task restarts in the supervisor (none: those
are deterministic and tested as such).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

Jitter = Literal["none", "full", "spread"]


@dataclass(slots=True)
class Backoff:
    first_s: float
    max_s: float = math.inf
    jitter: Jitter = "none"
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0  # retries since the last reset (the stateful use: next_delay / reset)

    def __post_init__(self) -> None:
        if not self.first_s >= 0 or not self.max_s >= 0:
            raise ValueError(f"backoff delays must be >= 0, got first_s={self.first_s}, max_s={self.max_s}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (0-based)."""
        cap = min(self.max_s, math.ldexp(self.first_s, min(max(retry, 0), 62)))
        if self.jitter == "full":
            return self.rng.uniform(self.first_s, max(self.first_s, cap))
        if self.jitter == "spread":
            return cap * self.rng.uniform(0.8, 1.2)
        return cap

    def next_delay(self) -> float:
        """The delay before the next retry, counting it."""
        d = self.delay(self.failures)
        self.failures += 1
        return d

    def reset(self) -> None:
        """It worked: the next failure waits ``first_s`` again."""
        self.failures = 0
