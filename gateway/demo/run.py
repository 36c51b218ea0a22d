"""``gateway demo``: the simulated store end to end on embedded defaults, nothing to set up.

simulator -> identity -> localization -> presence -> SQLite outbox -> MQTT (embedded broker on
127.0.0.1) -> cloud stand-in that prints what arrives. Ctrl-C drains and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_settings
from gateway.content.commands import Ed25519Signer
from gateway.demo.broker import EmbeddedBroker
from gateway.demo.cloud_standin import CloudStandIn
from gateway.layout import LayoutError
from gateway.log import configure_logging, get_logger
from gateway.mqtt.client import AsyncMqttClient
from gateway.runtime.daemon import Daemon, load_store_layout
from gateway.sim.espresense import EspresenseEmitter
from gateway.sources.nodes import NodesSource
from gateway.status.auth import write_credential

log = get_logger(__name__)


class DemoArgError(ValueError):
    """A bad ``gateway demo`` argument (message names it)."""


def check_args(args: argparse.Namespace) -> None:
    """Every argument checked before anything starts (one line naming it, exit 2)."""
    if not (math.isfinite(args.speed) and 0 < args.speed <= 10000):
        raise DemoArgError(f"--speed {args.speed:g}: must be > 0 and <= 10000 (simulated seconds per wall second)")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise DemoArgError(f"--duration {args.duration:g}: must be a positive number of simulated seconds")
    if not 0 <= args.status_port <= 65535:
        raise DemoArgError(f"--status-port {args.status_port}: must be 0..65535 (0: any free port)")
    if args.broker_port is not None:
        if not 1 <= args.broker_port <= 65535:
            raise DemoArgError(f"--broker-port {args.broker_port}: must be 1..65535")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", args.broker_port))
            except OSError as e:
                raise DemoArgError(f"--broker-port {args.broker_port}: cannot listen on it ({e.strerror})") from None
    if args.config is not None and not args.config.is_file():
        raise DemoArgError(f"--config {args.config}: no such file")
    if args.state_dir is not None:
        d = args.state_dir
        if d.exists() and not d.is_dir():
            raise DemoArgError(f"--state-dir {d}: exists and is not a directory")
        if not d.exists() and not d.parent.is_dir():
            raise DemoArgError(f"--state-dir {d}: its parent directory {d.parent} does not exist")
        if d.exists() and not os.access(d, os.W_OK | os.X_OK):
            raise DemoArgError(f"--state-dir {d}: not writable")


async def run_demo(args: argparse.Namespace) -> int:
    try:
        check_args(args)
    except DemoArgError as e:
        print(f"gateway demo: error: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        configure_logging("warning")
    tmp = None
    state_dir = args.state_dir
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gateway-demo-")
        state_dir = Path(tmp.name)
    old_umask = os.umask(0o077)  # the outbox, content state and keys are private to this user (0600)
    state_dir.mkdir(mode=0o700, exist_ok=True)
    broker = EmbeddedBroker(port=args.broker_port or 0, prefer="amqtt" if args.pure_python_broker else "mosquitto")
    try:
        try:
            await broker.start()
        except (OSError, RuntimeError, TimeoutError) as e:
            print(f"gateway demo: cannot start the embedded broker on 127.0.0.1:{broker.port}: {e}", file=sys.stderr)
            return 1
        return await _run_with_broker(args, broker, Path(state_dir))
    finally:
        await broker.stop()
        if tmp is not None:
            tmp.cleanup()
        os.umask(old_umask)


async def _run_with_broker(args: argparse.Namespace, broker: EmbeddedBroker, state_dir: Path) -> int:
    # a one-off technician login for the demo's status page (the real one comes from provisioning)
    password = secrets.token_urlsafe(9)
    credential = state_dir / "status-credential.json"
    write_credential(credential, "tech", password)
    # the stand-in plays the platform: it signs commands with its private key, the gateway gets
    # only the public key (as `gateway provision --command-pubkey` installs it on a real box)
    signer = Ed25519Signer.generate()
    pubkey = state_dir / "command.pub"
    pubkey.write_bytes(signer.public_pem())
    try:
        sim = {"enabled": True, "speed": args.speed, "duration_s": args.duration, "seed": args.seed}
        overrides: dict[str, Any] = {
            "paths": {"state_dir": str(state_dir)},
            "simulator": sim,
            # one embedded broker plays the cloud's and the store's (actors, sensor nodes)
            "mqtt": {"host": broker.host, "port": broker.port, "tls": False, "protocol": broker.protocol},
            "local_broker": {"host": broker.host, "port": broker.port},
            "status": {"port": args.status_port, "credential_file": str(credential)},
            "content": {"command_public_key_file": str(pubkey)},
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
        print(str(e), file=sys.stderr)
        return 2
    configure_logging("warning" if args.quiet else settings.log.level, settings.log.format)

    def say(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    say(f"broker: mqtt://{broker.host}:{broker.port} ({broker.kind}, MQTT {broker.protocol})")
    cloud = CloudStandIn(
        broker.host,
        broker.port,
        prefix=settings.mqtt.topic_prefix,
        protocol=broker.protocol,
        verbose=not args.quiet,
        signer=signer,
    )
    cloud.push_commands = not args.no_content
    cloud_task = asyncio.create_task(cloud.run())
    await asyncio.wait_for(cloud.connected.wait(), 10)
    screen = DemoScreen(
        broker.host, broker.port, settings.content.actor_topic_prefix, "demo-screen", broker.protocol, quiet=args.quiet
    )
    screen_task = asyncio.create_task(screen.run())
    log.info(
        "demo running", store=settings.gateway.store_id, speed=args.speed, state_dir=str(state_dir), broker=broker.kind
    )
    daemon = Daemon(settings, layout, reload_settings=lambda: load_settings(args.config, **overrides))
    emitter_task: asyncio.Task[None] | None = None
    if args.nodes:
        emitter = EspresenseEmitter(layout, settings.simulator, broker.host, broker.port)
        for src in daemon.sources:
            if isinstance(src, NodesSource):
                src.use_clock(emitter.clock)  # arrival in simulated time
        emitter_task = asyncio.create_task(_run_nodes(daemon, emitter))
    announce = asyncio.create_task(_announce_status(daemon, password, say))
    try:
        rc = await daemon.run()
        await asyncio.sleep(0.5)  # let the last PUBACKed messages reach the stand-in
    finally:
        for t in (emitter_task, cloud_task, screen_task, announce):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
    summary: dict[str, Any] = cloud.summary() | {"screen_shown": screen.shown}
    print("demo summary: " + json.dumps(summary, sort_keys=True))
    return rc


async def _announce_status(daemon: Daemon, password: str, say: Callable[[str], None]) -> None:
    """Print the status page address once the daemon is ready - the address it really serves, or
    that it serves none (the port was taken: the daemon logs why and keeps running)."""
    if not daemon.settings.status.enabled:
        return
    for _ in range(6000):  # the daemon has no ready event to wait on; 5 minutes of start-up at most
        if daemon.runtime.ready:
            break
        await asyncio.sleep(0.05)
    srv = daemon.status_server
    if srv is None or not srv.addresses:
        say(f"status page: not served (port {daemon.settings.status.port} unavailable; try --status-port 0)")
        return
    host, port = srv.addresses[0]
    say(f"status page: http://{host}:{port}/  (user tech, password {password})")


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

    def __init__(self, host: str, port: int, prefix: str, actor_id: str, protocol: Any, quiet: bool = False) -> None:
        self.client = AsyncMqttClient(host, port, client_id=actor_id, protocol=protocol)
        self.topic = f"{prefix}/actors/{actor_id}"
        self.actor_id = actor_id
        self.shown = 0
        self.quiet = quiet

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
                if self.quiet:
                    continue
                print(
                    f"screen {self.actor_id} shows {doc.get('content_id')} (campaign {doc.get('campaign_id')},"
                    f" zone {doc.get('zone')})",
                    flush=True,
                )
        finally:
            await self.client.disconnect()


def _cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(args))


def add_commands(sub: Any) -> None:
    d = sub.add_parser("demo", help="run a simulated store end to end (embedded broker + cloud stand-in)")
    d.add_argument("--config", "-c", type=Path, default=None, help="optional config file to start from")
    d.add_argument("--speed", type=float, default=10.0, help="simulated seconds per wall second (default 10)")
    d.add_argument("--duration", type=float, default=None, help="stop after this many simulated seconds")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--state-dir", type=Path, default=None, help="keep the outbox here (default: temporary)")
    d.add_argument("--status-port", type=int, default=8080, help="status page port (0: any free port)")
    d.add_argument("--broker-port", type=int, default=None, help="embedded broker port (default: any free port)")
    d.add_argument("--pure-python-broker", action="store_true", help="use amqtt even if mosquitto is installed")
    d.add_argument("--no-content", action="store_true", help="do not push the demo campaign/consent/screen")
    d.add_argument(
        "--nodes", action="store_true", help="simulated sensors publish as ESPresense nodes over MQTT (node path)"
    )
    d.add_argument("--quiet", action="store_true", help="print only the summary line (warnings and errors still log)")
    d.set_defaults(func=_cmd_demo)
