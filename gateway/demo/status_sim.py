"""A ``StatusProvider`` over the real data path fed by the store simulator.

``StoreSimulator`` -> ``Pipeline`` (identity/pseudonyms -> localizer -> presence) runs in-process,
advanced to ``start_ts + speed * elapsed wall time`` whenever the page asks for data. The dots are
the localizer's fixes, the events are presence's events: what the page shows is what the daemon
would compute from those radios. Used by the browser test and ``gateway status demo --sim``; the
daemon's own provider reads the same objects from its running pipeline instead.

Opt-out goes through the daemon's own path, ``gateway.identity.subjects.IdentityResolver``: the
identifier the technician types (a MAC or beacon id) is kept only as keyed digests (with a
per-run key: nothing is persisted here), observations of it - and of the identity it was seen
linked to - are dropped *before* pseudonymisation, and the subject's track is forgotten at once.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway import __version__
from gateway.config import Settings
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.subjects import IdentityResolver
from gateway.layout import Layout
from gateway.models import Fix, SourceHealth
from gateway.pipeline import Pipeline
from gateway.sim.store import StoreSimulator
from gateway.status.coverage import coverage_grid
from gateway.status.provider import (
    ActionResult,
    ActorRow,
    CampaignRow,
    DeviceDot,
    EventRow,
    StatusSnapshot,
    UplinkStatus,
)

MAX_STEP_S = 30.0  # never simulate more than this per call (a page left open overnight)


class SimPipelineProvider:
    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        *,
        clock: Callable[[], float] = time.monotonic,
        campaigns: list[CampaignRow] | None = None,
        actors: list[ActorRow] | None = None,
        warmup_s: float = 0.0,
    ) -> None:
        """``warmup_s`` of simulated time are run at once, so the store is not empty at start."""
        self.settings = settings
        self._layout = layout
        self._clock = clock
        self._t0 = clock()
        self.sim = StoreSimulator(layout, settings.simulator)
        s = settings.privacy
        self.keyring = PseudonymKeyring(
            rotation_time=s.rotation_time, period_h=s.rotation_period_h, nbytes=s.pseudonym_bytes
        )
        self.identity = IdentityResolver(self.keyring, optout_key=os.urandom(32), consent_scope=s.consent_scope)
        self.pipeline = Pipeline(settings, layout, identity=self.identity, on_fixes=self._on_fixes)
        self.sim_start = settings.simulator.start_ts
        self.sim_now = self.sim_start
        self._latest: dict[str, Fix] = {}
        self._events: deque[EventRow] = deque(maxlen=50)
        self._heard: dict[str, float | None] = {s.id: None for s in layout.sensors}
        self._health = SourceHealth(name="simulated", state="running")
        self._rate = 0.0
        self._reloads = 0
        self._test_events = 0
        self._crlb: dict[str, Any] | None = None
        self._campaigns = campaigns or []
        self._actors = actors or []
        if warmup_s > 0:
            self._t0 -= warmup_s / settings.simulator.speed
            for _ in range(int(warmup_s / MAX_STEP_S) + 2):
                self.advance()

    # -- driving the simulation -----------------------------------------------------------------

    def _on_fixes(self, fixes: list[Fix]) -> None:
        for f in fixes:
            self._latest[f.device] = f

    def advance(self) -> None:
        target = self.sim_start + (self._clock() - self._t0) * self.settings.simulator.speed
        target = min(target, self.sim_now + MAX_STEP_S)
        tick = self.settings.simulator.tick_s
        n_obs = 0
        span = 0.0
        while self.sim_now + tick <= target:
            self.sim_now += tick
            span += tick
            obs = self.sim.step(self.sim_now)
            for o in obs:
                self._heard[o.sensor] = o.ts
            n_obs += len(obs)
            events = self.pipeline.process(obs)
            events += self.pipeline.advance(self.sim_now)
            for e in events:
                d = e.model_dump(mode="json", include={"type", "subject", "zone"})
                self._events.appendleft(
                    EventRow(ts=e.ts, type=str(d["type"]), subject=d.get("subject"), zone=d.get("zone"))
                )
        if span:
            self._health.observations += n_obs
            self._health.last_observation_ts = self.sim_now
            self._rate = n_obs / span
            self._health.detail["adverts_per_s"] = round(self._rate, 1)
        horizon = self.sim_now - self.settings.localization.forget_after_s
        for subj in [k for k, f in self._latest.items() if f.ts < horizon]:
            del self._latest[subj]

    # -- StatusProvider -------------------------------------------------------------------------

    def ready(self) -> bool:
        return True

    def layout(self) -> Layout:
        return self._layout

    def devices(self) -> list[dict[str, Any]]:
        self.advance()
        return [
            DeviceDot(f.device, round(f.x, 2), round(f.y, 2), round(f.sigma_m, 2), f.zone).as_dict()
            for f in self._latest.values()
        ]

    def devices_version(self) -> int | None:
        return None  # the simulation advances on every call

    def snapshot(self) -> StatusSnapshot:
        self.advance()
        occ = {z.id: 0 for z in self._layout.zones}
        for f in self._latest.values():
            if f.zone in occ:
                occ[f.zone] += 1
        st = self.pipeline.stats
        self._health.dropped = dict(st.dropped)
        return StatusSnapshot(
            ts=self.sim_now,
            version=__version__,
            uptime_s=self.sim_now - self.sim_start,
            gateway_id=self.settings.gateway.id,
            store_id=self.settings.gateway.store_id,
            sources=[self._health],
            sensors_last_heard=dict(self._heard),
            uplink=UplinkStatus(state="not connected (simulation)", broker=None, last_error=None, reconnects=0),
            outbox={"backlog": 0, "oldest_age_s": None, "evictions": 0},
            clock={"synchronized": None, "source": "simulated", "offset_s": None},
            recent_events=list(self._events)[:20],
            campaigns=self._campaigns,
            actors=self._actors,
            zone_occupancy=occ,
            optouts=self.identity.optout_count,
            extra={"fixes": st.fixes, "events": dict(st.events), "reloads": self._reloads},
        )

    def crlb_grid(self) -> dict[str, Any] | None:
        if self._crlb is None:
            loc = self.settings.localization
            self._crlb = coverage_grid(self._layout, loc.sigma_db, loc.detection_floor_dbm)
        return self._crlb

    async def restart_scanner(self) -> ActionResult:
        self._health.recoveries += 1
        return ActionResult(True, f"scanner restarted (recoveries: {self._health.recoveries})")

    async def reload_config(self) -> ActionResult:
        self._reloads += 1
        return ActionResult(True, "configuration reloaded")

    async def send_test_event(self) -> ActionResult:
        self._test_events += 1
        self._events.appendleft({"ts": self.sim_now, "type": "heartbeat", "subject": None, "zone": None})
        return ActionResult(True, "test event queued")

    async def add_optout(self, identifier: str) -> ActionResult:
        if not identifier.strip():
            return ActionResult(False, "identifier is empty")
        erased = self.identity.add_optout(identifier, self.sim_now)
        for subject in erased.subjects:
            self._latest.pop(subject, None)
            self.pipeline.localizer.forget(subject)
            self.pipeline.presence.forget(subject)
        return ActionResult(True, "opt-out recorded; the device is no longer tracked")
