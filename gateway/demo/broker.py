"""An MQTT broker on 127.0.0.1 for the demo.

Prefers a spawned ``mosquitto`` (the broker stores run in production: MQTT 5, fast) and falls back to
amqtt, a pure-Python broker (MQTT 3.1.1 only), when mosquitto is not installed. amqtt is the ``demo``
extra (``pip install -e '.[demo]'``, which ``./scripts/demo`` does), not a dependency of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Literal

from gateway.log import get_logger

log = get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    exe = shutil.which("mosquitto")
    if exe is None and Path("/usr/sbin/mosquitto").exists():
        exe = "/usr/sbin/mosquitto"
    return exe


class BrokerUnavailable(RuntimeError):
    """Neither mosquitto nor amqtt is installed."""


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, prefer: Literal["mosquitto", "amqtt"] = "mosquitto"):
        self.host = host
        self.port = port or free_port(host)
        self.prefer = prefer
        self.kind: Literal["mosquitto", "amqtt"] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._amqtt: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def protocol(self) -> Literal["5", "3.1.1"]:
        return "5" if self.kind == "mosquitto" else "3.1.1"

    async def start(self) -> None:
        exe = find_mosquitto() if self.prefer == "mosquitto" else None
        if exe is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gateway-broker-")
            conf = Path(self._tmp.name) / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
            )
            self._proc = await asyncio.create_subprocess_exec(
                exe, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            self.kind = "mosquitto"
        else:
            try:
                from amqtt.broker import Broker
            except ImportError:
                raise BrokerUnavailable(
                    "no MQTT broker for the demo: install mosquitto, or the demo extra for amqtt"
                    " (pip install -e '.[demo]'; ./scripts/demo does both)"
                ) from None

            self._amqtt = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
                }
            )
            await self._amqtt.start()
            self.kind = "amqtt"
        await self._wait_listening()
        log.info("embedded broker started", kind=self.kind, host=self.host, port=self.port)

    async def _wait_listening(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(f"mosquitto exited with code {self._proc.returncode}")
            try:
                _r, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                await w.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise TimeoutError(f"broker not listening on {self.host}:{self.port} after {timeout}s")

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._amqtt is not None:
            with contextlib.suppress(Exception):
                await self._amqtt.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._proc = self._amqtt = self._tmp = None
