"""``gateway demo``: the simulated store end to end on embedded defaults, nothing to set up.

simulator -> identity -> localization -> presence -> SQLite outbox -> MQTT (embedded broker on
127.0.0.1) -> cloud stand-in that prints what arrives. Ctrl-C drains and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_settings
from gateway.demo.broker import BrokerUnavailable, EmbeddedBroker
from gateway.demo.cloud_standin import CloudStandIn
from gateway.layout import LayoutError
from gateway.log import configure_logging, get_logger
from gateway.mqtt.client import AsyncMqttClient
from gateway.runtime.daemon import Daemon, load_store_layout
from gateway.sim.espresense import EspresenseEmitter
from gateway.sources.nodes import NodesSource
from gateway.status.auth import write_credential

log = get_logger(__name__)


async def run_demo(args: argparse.Namespace) -> int:
    broker = EmbeddedBroker(prefer="amqtt" if args.pure_python_broker else "mosquitto")
    await broker.start()
    tmp = None
    state_dir = args.state_dir
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gateway-demo-")
        state_dir = Path(tmp.name)
    try:
        # a one-off technician login for the demo's status page (the real one comes from provisioning)
        password = secrets.token_urlsafe(9)
        credential = Path(state_dir) / "status-credential.json"
        write_credential(credential, "tech", password)
        try:
            sim = {"enabled": True, "speed": args.speed, "duration_s": args.duration, "seed": args.seed}
            overrides: dict[str, Any] = {
                "paths": {"state_dir": str(state_dir)},
                "simulator": sim,
                # one embedded broker plays the cloud's and the store's (actors, sensor nodes)
                "mqtt": {"host": broker.host, "port": broker.port, "tls": False, "protocol": broker.protocol},
                "local_broker": {"host": broker.host, "port": broker.port},
                "status": {"port": args.status_port, "credential_file": str(credential)},
            }
            if args.nodes:
                # the simulated sensors become ESPresense nodes on the embedded broker; the gateway
                # hears them through its nodes source (the real node path) instead of in-process
                layout = load_store_layout(load_settings(args.config))
                sim["enabled"] = False
                overrides["nodes"] = {"enabled": True, "mapping": {x.id: x.id for x in layout.sensors}}
            settings = load_settings(args.config, **overrides)
            layout = load_store_layout(settings)
        except (ConfigError, LayoutError) as e:
            print(str(e))
            return 2
        configure_logging(settings.log.level, settings.log.format)
        cloud = CloudStandIn(
            broker.host,
            broker.port,
            prefix=settings.mqtt.topic_prefix,
            protocol=broker.protocol,
            verbose=not args.quiet,
        )
        cloud.push_commands = not args.no_content
        cloud_task = asyncio.create_task(cloud.run())
        await asyncio.wait_for(cloud.connected.wait(), 10)
        screen = DemoScreen(
            broker.host, broker.port, settings.content.actor_topic_prefix, "demo-screen", broker.protocol
        )
        screen_task = asyncio.create_task(screen.run())
        log.info(
            "demo running",
            store=settings.gateway.store_id,
            speed=args.speed,
            state_dir=str(state_dir),
            broker=broker.kind,
        )
        if settings.status.enabled:
            print(
                f"status page: http://127.0.0.1:{settings.status.port}/  (user tech, password {password})",
                flush=True,
            )
        daemon = Daemon(settings, layout, reload_settings=lambda: load_settings(args.config, **overrides))
        emitter_task: asyncio.Task[None] | None = None
        if args.nodes:
            emitter = EspresenseEmitter(layout, settings.simulator, broker.host, broker.port)
            for src in daemon.sources:
                if isinstance(src, NodesSource):
                    src.use_clock(emitter.clock)  # arrival in simulated time
            emitter_task = asyncio.create_task(_run_nodes(daemon, emitter))
        try:
            rc = await daemon.run()
            await asyncio.sleep(0.5)  # let the last PUBACKed messages reach the stand-in
        finally:
            for t in (emitter_task, cloud_task, screen_task):
                if t is not None:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        summary: dict[str, Any] = cloud.summary() | {"screen_shown": screen.shown}
        print("demo summary: " + json.dumps(summary, sort_keys=True))
        return rc
    finally:
        await broker.stop()
        if tmp is not None:
            tmp.cleanup()


async def _run_nodes(daemon: Daemon, emitter: EspresenseEmitter) -> None:
    """Publish the simulated store as ESPresense nodes; stop the daemon when a --duration ends
    (or when the emitter fails: a demo that silently stops producing would never end)."""
    try:
        await emitter.run()
    except Exception as e:
        log.error("node emitter failed", reason=str(e))
        daemon.supervisor.request_stop("node emitter failed", 1)
        return
    await asyncio.sleep(1.0)  # the last receptions reach the pipeline
    daemon.supervisor.request_stop("simulation finished", 0)


class DemoScreen:
    """A signage screen on the store-local broker: prints each activation it is sent."""

    def __init__(self, host: str, port: int, prefix: str, actor_id: str, protocol: Any) -> None:
        self.client = AsyncMqttClient(host, port, client_id=actor_id, protocol=protocol)
        self.topic = f"{prefix}/actors/{actor_id}"
        self.actor_id = actor_id
        self.shown = 0

    async def run(self) -> None:
        await self.client.connect()
        await self.client.subscribe(self.topic, qos=1)
        try:
            async for msg in self.client.messages():
                try:
                    doc = json.loads(msg.payload)
                except ValueError:
                    continue
                self.shown += 1
                print(
                    f"screen {self.actor_id} shows {doc.get('content_id')} (campaign {doc.get('campaign_id')},"
                    f" zone {doc.get('zone')})",
                    flush=True,
                )
        finally:
            await self.client.disconnect()


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_demo(args))
    except BrokerUnavailable as e:
        print(f"gateway demo: {e}", file=sys.stderr)
        return 1


def add_commands(sub: Any) -> None:
    d = sub.add_parser("demo", help="run a simulated store end to end (embedded broker + cloud stand-in)")
    d.add_argument("--config", "-c", type=Path, default=None, help="optional config file to start from")
    d.add_argument("--speed", type=float, default=10.0, help="simulated seconds per wall second (default 10)")
    d.add_argument("--duration", type=float, default=None, help="stop after this many simulated seconds")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--state-dir", type=Path, default=None, help="keep the outbox here (default: temporary)")
    d.add_argument("--status-port", type=int, default=8080)
    d.add_argument("--pure-python-broker", action="store_true", help="use amqtt even if mosquitto is installed")
    d.add_argument("--no-content", action="store_true", help="do not push the demo campaign/consent/screen")
    d.add_argument(
        "--nodes", action="store_true", help="simulated sensors publish as ESPresense nodes over MQTT (node path)"
    )
    d.add_argument("--quiet", action="store_true", help="print only the summary from the cloud stand-in")
    d.set_defaults(func=_cmd_demo)
