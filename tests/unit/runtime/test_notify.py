import os
import socket
from pathlib import Path

from gateway.runtime.notify import Notifier


def recv_all(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(1.0)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out
        sock.settimeout(0.05)


def test_notify_over_a_real_datagram_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval_s == 2.0
        assert n.ready("up")
        assert n.watchdog()
        assert n.status("busy")
        assert n.stopping()
        msgs = recv_all(srv)
        assert msgs[0].split("\n")[:2] == ["READY=1", "STATUS=up"]
        assert f"MAINPID={os.getpid()}" in msgs[0]
        assert msgs[1:] == ["WATCHDOG=1", "STATUS=busy", "STOPPING=1\nSTATUS=draining"]
        n.close()
    finally:
        srv.close()


def test_abstract_socket(tmp_path: Path) -> None:
    name = f"gateway-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert recv_all(srv)[0].startswith("READY=1")
        n.close()
    finally:
        srv.close()


def test_noop_without_socket_and_watchdog_for_other_pid() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert not n.enabled and not n.ready()
    assert n.watchdog_interval_s is None


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    n.close()
