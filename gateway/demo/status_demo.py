"""A self-contained ``StatusProvider`` over a deterministic moving crowd.

Used by ``gateway status demo`` (look at the page without radios), by the browser test and by
the status bench. It is *not* the daemon's provider: the daemon implements ``StatusProvider``
over its live pipeline. Devices walk between random way-points inside the store at walking speed;
the same seed and the same sequence of clock readings give the same positions. Each device has a
locally administered MAC (``02:00:00:00:hh:ll``) so the opt-out action can be exercised exactly as
a technician would, and its dot carries a keyed pseudonym only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway import __version__
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.layout import Layout, load_layout, points_in_polygon
from gateway.models import SourceHealth
from gateway.sources.base import NodeStatus
from gateway.status.coverage import coverage_grid
from gateway.status.provider import (
    ActionResult,
    ActivationRow,
    ActorRow,
    CampaignRow,
    DeviceDot,
    EventRow,
    StatusProvider,
    StatusSnapshot,
)

DEFAULT_LAYOUT = Path(__file__).resolve().parent.parent / "data" / "demo-store.toml"


def demo_mac(i: int) -> str:
    return f"02:00:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


class SimulatedStatusProvider:
    """Moving dots + plausible health, all derived from a seed and the clock readings."""

    def __init__(
        self,
        layout: Layout,
        n_devices: int = 40,
        seed: int = 1,
        clock: Callable[[], float] = time.time,
        campaigns: list[CampaignRow] | None = None,
        actors: list[ActorRow] | None = None,
    ) -> None:
        self._layout = layout
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._t0 = clock()
        self._t = self._t0
        w, d = layout.store.width_m, layout.store.depth_m
        self._size = np.array([w, d])
        n = n_devices
        self._macs = [demo_mac(i) for i in range(n)]
        self._alive = np.ones(n, dtype=bool)
        self._pos = self._rng.uniform(0.05, 0.95, (n, 2)) * self._size
        self._target = self._rng.uniform(0.05, 0.95, (n, 2)) * self._size
        self._speed = self._rng.uniform(0.6, 1.4, n)
        self._sigma = self._rng.uniform(0.8, 3.0, n)
        self._keyring = PseudonymKeyring()
        self._subjects = [self._keyring.pseudonym(m, self._t0) for m in self._macs]
        self._zone_of: list[str | None] = [None] * n
        self._events: deque[EventRow] = deque(maxlen=50)
        self._activations: deque[ActivationRow] = deque(maxlen=50)
        self._optouts: set[str] = set()
        self._source = SourceHealth(name="simulated", state="running", detail={"adverts_per_s": 0.0})
        self._ble = SourceHealth(name="ble:hci0", state="running", detail={"adapter": "hci0", "adverts_per_s": 0.0})
        self._reloads = 0
        self._test_events = 0
        self._crlb: dict[str, Any] | None = None
        self._campaigns: list[CampaignRow] = (
            campaigns
            if campaigns is not None
            else [
                {"id": "welcome", "name": "Welcome offer", "active": True, "zones": ["entrance"]},
            ]
        )
        self._actors: list[ActorRow] = (
            actors
            if actors is not None
            else [
                {"id": "screen-1", "name": "Entrance screen", "kind": "screen", "state": "online"},
            ]
        )
        self._step()

    # -- simulation ------------------------------------------------------------------------------

    def _step(self) -> None:
        now = self._clock()
        dt = min(5.0, max(0.0, now - self._t))
        self._t = now
        if dt > 0:
            delta = self._target - self._pos
            dist = np.hypot(delta[:, 0], delta[:, 1])
            move = np.minimum(dist, self._speed * dt)
            with np.errstate(divide="ignore", invalid="ignore"):
                unit = np.where(dist[:, None] > 1e-9, delta / dist[:, None], 0.0)
            self._pos += unit * move[:, None]
            arrived = dist - move < 0.05
            k = int(arrived.sum())
            if k:
                self._target[arrived] = self._rng.uniform(0.05, 0.95, (k, 2)) * self._size
            n_alive = int(self._alive.sum())
            self._source.observations += int(n_alive * dt * 12)
            self._source.last_observation_ts = now
            self._source.detail["adverts_per_s"] = float(n_alive * 12)
            self._ble.observations += int(n_alive * dt)
            self._ble.last_observation_ts = now
            self._ble.detail["adverts_per_s"] = float(n_alive)
        self._update_zones(now)

    def _update_zones(self, now: float) -> None:
        zone_of: list[str | None] = [None] * len(self._macs)
        for z in self._layout.zones:
            inside = points_in_polygon(self._pos, z.polygon)
            for k in np.flatnonzero(inside & self._alive).tolist():
                if zone_of[k] is None:
                    zone_of[k] = z.id
        for i, (old, new) in enumerate(zip(self._zone_of, zone_of, strict=True)):
            if old != new and self._alive[i] and new is not None:
                self._events.appendleft({"ts": now, "type": "zone.entered", "subject": self._subjects[i], "zone": new})
                if any(new in c.get("zones", []) for c in self._campaigns if c.get("active")):
                    self._activations.appendleft(
                        {
                            "ts": now,
                            "campaign_id": self._campaigns[0]["id"],
                            "content_id": "c1",
                            "actor_id": self._actors[0]["id"] if self._actors else "",
                            "subject": self._subjects[i],
                            "result": "shown",
                        }
                    )
        self._zone_of = zone_of

    # -- StatusProvider --------------------------------------------------------------------------

    def ready(self) -> bool:
        return True

    def layout(self) -> Layout:
        return self._layout

    def devices(self) -> list[dict[str, Any]]:
        self._step()
        out = []
        for i in np.flatnonzero(self._alive):
            x, y = self._pos[i]
            out.append(
                DeviceDot(
                    self._subjects[i],
                    round(float(x), 2),
                    round(float(y), 2),
                    round(float(self._sigma[i]), 2),
                    self._zone_of[i],
                ).as_dict()
            )
        return out

    def devices_version(self) -> int | None:
        return None  # the crowd moves on every call

    def snapshot(self) -> StatusSnapshot:
        self._step()
        now = self._t
        occupancy = {z.id: 0 for z in self._layout.zones}
        for i, zid in enumerate(self._zone_of):
            if zid is not None and self._alive[i]:
                occupancy[zid] += 1
        last_heard: dict[str, float | None] = {}
        for k, s in enumerate(self._layout.sensors):
            # a deterministic, slightly staggered "last heard"; the last sensor is silent (down)
            last_heard[s.id] = None if k == len(self._layout.sensors) - 1 and k > 0 else now - (k % 4) * 0.7
        nodes: list[NodeStatus] = [
            {
                "name": s.id,
                "sensor": s.id,
                "state": "up" if last_heard[s.id] is not None else "down",
                "last_seen": last_heard[s.id],
            }
            for s in self._layout.sensors
            if s.kind == "node"
        ]
        return StatusSnapshot(
            ts=now,
            version=__version__,
            uptime_s=now - self._t0,
            gateway_id="gw-demo",
            store_id=self._layout.store.id,
            sources=[self._ble, self._source],
            sensors_last_heard=last_heard,
            nodes=nodes,
            uplink={
                "state": "connected",
                "broker": "127.0.0.1:8883",
                "last_error": None,
                "reconnects": 0,
                "last_publish_ts": now,
            },
            outbox={"backlog": 3, "oldest_age_s": 0.4, "evictions": 0, "bytes": 65536},
            disk={"path": "var", "total_bytes": 8 << 30, "free_bytes": 5 << 30},
            clock={"synchronized": True, "source": "ntp", "offset_s": 0.002},
            recent_events=list(self._events)[:20],
            recent_activations=list(self._activations)[:20],
            campaigns=self._campaigns,
            actors=self._actors,
            zone_occupancy=occupancy,
            optouts=len(self._optouts),
            extra={"reloads": self._reloads, "test_events": self._test_events},
        )

    def crlb_grid(self) -> dict[str, Any] | None:
        if self._crlb is None:
            self._crlb = coverage_grid(self._layout)
        return self._crlb

    async def restart_scanner(self) -> ActionResult:
        self._ble.recoveries += 1
        self._ble.state = "running"
        return ActionResult(True, f"scanner restarted (recoveries: {self._ble.recoveries})")

    async def reload_config(self) -> ActionResult:
        self._reloads += 1
        return ActionResult(True, "configuration reloaded")

    async def send_test_event(self) -> ActionResult:
        self._test_events += 1
        self._events.appendleft({"ts": self._clock(), "type": "heartbeat", "subject": "test", "zone": None})
        return ActionResult(True, "test event queued")

    async def add_optout(self, identifier: str) -> ActionResult:
        ident = identifier.strip().lower()
        if not ident:
            return ActionResult(False, "identifier is empty")
        # store only the pseudonym, never the identifier itself
        self._optouts.add(self._keyring.pseudonym(ident, self._t0))
        for i, m in enumerate(self._macs):
            if m == ident:
                self._alive[i] = False
        return ActionResult(True, "opt-out recorded; the device is no longer tracked")


# ---------------------------------------------------------------------------------------------
# gateway status demo
# ---------------------------------------------------------------------------------------------


def check_demo_args(args: argparse.Namespace) -> str | None:
    """Why these ``status demo`` arguments are wrong (None: fine)."""
    if not 0 <= args.port <= 65535:
        return f"--port {args.port}: must be 0..65535 (0: any free port)"
    try:
        ipaddress.ip_address(args.host)
    except ValueError:
        if args.host != "localhost":
            return f"--host {args.host!r}: not an IP address to listen on (e.g. 127.0.0.1)"
    if not 0 <= args.devices <= 10000:
        return f"--devices {args.devices}: must be 0..10000"
    if not args.credential.is_file():
        return f"--credential {args.credential}: no such file (make one: gateway status set-password)"
    for name in ("speed", "rate", "warmup"):
        v = getattr(args, name)
        low_ok = v >= 0 if name == "warmup" else v > 0
        if not (math.isfinite(v) and low_ok and v <= 1e6):
            return f"--{name} {v:g}: must be a finite number {'>= 0' if name == 'warmup' else '> 0'}"
    if args.speed > 10000:
        return f"--speed {args.speed:g}: at most 10000"
    return None


def _checked_demo_command(args: argparse.Namespace) -> int:
    from gateway.ops.status_cli import usage_error

    why = check_demo_args(args)
    if why is not None:
        return usage_error(why)
    return demo_command(args)


def add_commands(sub: Any) -> None:
    """``gateway status demo``, in the ``gateway status`` group (``gateway/ops/status_cli.py``)."""
    from gateway.ops.status_cli import status_actions

    dp = status_actions(sub).add_parser("demo", help="serve the status page over a simulated crowd (no radios needed)")
    dp.add_argument("--layout", type=Path, default=None, help="layout TOML (default: the embedded demo store)")
    dp.add_argument("--credential", type=Path, required=True, help="credential file (gateway status set-password)")
    dp.add_argument("--host", default="127.0.0.1")
    dp.add_argument("--port", type=int, default=8080)
    dp.add_argument("--devices", type=int, default=40, help="synthetic crowd size (without --sim)")
    dp.add_argument("--seed", type=int, default=1)
    dp.add_argument("--sim", action="store_true", help="drive the page from the store simulator + pipeline")
    dp.add_argument("--speed", type=float, default=1.0, help="--sim: simulated seconds per wall second")
    dp.add_argument("--rate", type=float, default=600.0, help="--sim: shoppers per hour")
    dp.add_argument("--warmup", type=float, default=60.0, help="--sim: simulated seconds run before serving")
    dp.set_defaults(func=_checked_demo_command)


def demo_command(args: argparse.Namespace) -> int:
    """``gateway status demo``: the page over a simulated crowd, for a look without radios."""
    from gateway.config import StatusSettings
    from gateway.layout import LayoutError
    from gateway.status.server import StatusServer

    try:
        layout = load_layout(args.layout or DEFAULT_LAYOUT)
    except LayoutError as e:
        print(e, file=sys.stderr)
        return 2
    settings = StatusSettings(bind=[args.host], port=args.port, credential_file=args.credential)
    provider: StatusProvider
    if args.sim:
        from gateway.config import load_settings
        from gateway.demo.status_sim import SimPipelineProvider

        full = load_settings(simulator={"seed": args.seed, "speed": args.speed, "shoppers_per_hour": args.rate})
        provider = SimPipelineProvider(full, layout, warmup_s=args.warmup)
    else:
        provider = SimulatedStatusProvider(layout, n_devices=args.devices, seed=args.seed)

    async def drive(p: Any, period_s: float) -> None:
        # the daemon's pipeline runs whether or not anyone watches the page
        while True:
            p.advance()
            await asyncio.sleep(period_s)

    async def run() -> None:
        server = StatusServer(provider, settings, args.credential)
        await server.start()
        driver = None
        if args.sim:
            driver = asyncio.create_task(drive(provider, 0.5 / args.speed))
        print(f"status page on http://{args.host}:{server.bound_ports[0]}/ (Ctrl-C stops)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            if driver is not None:
                driver.cancel()
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0
