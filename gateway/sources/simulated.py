"""Simulated source: the store simulator stepped in fixed ticks, paced against the wall clock.

``speed`` simulated seconds pass per wall second; the simulated step is always ``tick_s`` so the
stream depends only on the seed (see gateway/sim/store.py). Stepping a tick is CPU work, so it runs
in a worker thread when a tick is large; small ticks run inline (cheaper than a thread hop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from gateway.config import SimulatorSettings
from gateway.layout import Layout
from gateway.models import Observation, SourceHealth
from gateway.sim.store import StoreSimulator
from gateway.sources.base import Capabilities


class SimulatedSource:
    def __init__(
        self, layout: Layout, settings: SimulatorSettings, *, name: str = "simulator", sensors: list[str] | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.sim = StoreSimulator(layout, settings, sensors=sensors)
        self.health = SourceHealth(name=name, detail={"seed": settings.seed, "speed": settings.speed})
        t0 = self.sim.now
        self._t_end = t0 + settings.duration_s if settings.duration_s is not None else float("inf")
        # event time is the simulator's; with a duration it ends on its own (and is not restarted:
        # a restart resumes from the simulator's current time, so it would not change the stream)
        bounded = settings.duration_s is not None
        self.capabilities = Capabilities(finite=bounded, event_clock=self.sim_time, restartable=not bounded)

    def sim_time(self) -> float:
        return float(self.sim.now)

    async def batches(self) -> AsyncGenerator[list[Observation], None]:
        s = self.settings
        t_sim0 = self.sim.now
        t_end = self._t_end
        wall0 = time.monotonic()
        self.health.state = "running"
        k = 0
        try:
            while True:
                k += 1
                t = t_sim0 + k * s.tick_s
                if t > t_end:
                    break
                due = wall0 + (t - t_sim0) / s.speed
                delay = due - time.monotonic()
                # always yield to the loop, even when behind schedule
                await asyncio.sleep(max(0.0, delay))
                obs = self.sim.step(t)
                self.health.detail["sim_time"] = t
                self.health.detail["people"] = len(self.sim.people)
                if obs:
                    self.health.observations += len(obs)
                    self.health.last_observation_ts = obs[-1].ts
                    yield obs
        finally:
            self.health.state = "stopped"
