"""systemd notify protocol (sd_notify) over ``$NOTIFY_SOCKET``, without libsystemd.

READY=1 after start-up, STATUS=... for humans, WATCHDOG=1 at half of ``$WATCHDOG_USEC`` *only while
the event loop is healthy* (a stuck loop stops the pings and systemd restarts us), STOPPING=1 when
draining. Outside systemd (no socket) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket

from gateway.log import get_logger

log = get_logger(__name__)


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        e = os.environ if env is None else env
        self._addr: str | bytes | None = None
        path = e.get("NOTIFY_SOCKET")
        if path:
            # '@' prefix = Linux abstract namespace socket
            self._addr = b"\0" + path[1:].encode() if path.startswith("@") else path
        self._sock: socket.socket | None = None
        self.watchdog_usec: int | None = None
        wd = e.get("WATCHDOG_USEC")
        pid = e.get("WATCHDOG_PID")
        if wd and wd.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(wd)

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        if self._addr is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self._addr)
            return True
        except OSError as e:
            log.warning("sd_notify failed", error=str(e))
            return False

    def ready(self, status: str = "running") -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "draining") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
