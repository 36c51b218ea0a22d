"""Embed the status app in the daemon's event loop: one ``AppRunner``, one ``TCPSite`` per bind
address (default localhost; provisioning adds the store LAN address)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.config import StatusSettings
from gateway.log import get_logger
from gateway.status.app import make_app
from gateway.status.metrics import GatewayMetrics, default_metrics
from gateway.status.provider import StatusProvider

log = get_logger(__name__)


class StatusServer:
    """``await start()`` binds every address in ``settings.bind``; ``await stop()`` drains
    (live streams are told to end, then the runner cleans up)."""

    def __init__(
        self,
        provider: StatusProvider,
        settings: StatusSettings,
        credential_path: Path | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        shutdown_timeout_s: float = 3.0,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.credential_path = credential_path if credential_path is not None else settings.credential_file
        self.metrics = metrics if metrics is not None else default_metrics()
        self._clock = clock
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self.bound_ports: list[int] = []
        self.addresses: list[tuple[str, int]] = []

    @property
    def app(self) -> web.Application | None:
        return self._runner.app if self._runner is not None else None

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("status server already started")
        app = make_app(self.provider, self.settings, self.credential_path, metrics=self.metrics, clock=self._clock)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        self._runner = runner
        try:
            for host in self.settings.bind:
                site = web.TCPSite(runner, host, self.settings.port)
                await site.start()
        except OSError:
            await self.stop()
            raise
        self.addresses = []
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                self.addresses.append((str(addr[0]), int(addr[1])))
        self.bound_ports = [p for _h, p in self.addresses]
        log.info("status.listening", addresses=[f"{h}:{p}" for h, p in self.addresses])
        if self.credential_path is None:
            log.warning("status.no_credential", hint="gateway status set-password --file F --user U")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.bound_ports = []
        self.addresses = []
