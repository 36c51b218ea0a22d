"""Shared fixtures: a real mosquitto on 127.0.0.1 with a random port, paths, helpers."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYOUT = REPO / "hardware" / "layouts" / "demo-store.toml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Mosquitto:
    host: str
    port: int
    conf: Path
    exe: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def make_mosquitto(
    tmp_path: Path, extra_conf: str = "", port: int | None = None, persist_to: Path | None = None
) -> Mosquitto:
    """A broker config on 127.0.0.1 (started by the caller); ``persist_to``: a directory where it keeps
    sessions and queued messages across a restart, as a production broker does."""
    exe = mosquitto_path()
    if exe is None:
        pytest.fail("mosquitto is not installed (the README's test command installs it)")
    port = port or free_port()
    if persist_to is not None:
        persist_to.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        # started as root, mosquitto drops to its own user, which cannot enter pytest's 0700 tmp dirs
        + (f"persistence true\npersistence_location {persist_to}/\n" if persist_to else "persistence false\n")
        + ("user root\n" if persist_to and os.geteuid() == 0 else "")
        + "max_inflight_messages 0\n"
        "max_queued_messages 0\n" + extra_conf
    )
    return Mosquitto("127.0.0.1", port, conf, exe)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    m = make_mosquitto(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()


async def until(pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``pred`` on the running loop every 50 ms until it is truthy (its value) or ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not (v := pred()):
        if loop.time() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
    return v


@pytest.fixture
def demo_layout() -> Path:
    return LAYOUT


def gateway_cmd(*args: str) -> list[str]:
    """Run the CLI of *this* checkout as a subprocess."""
    return [sys.executable, "-m", "gateway", *args]


def gateway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# How long the interpreter may take to exit once pytest is done.
EXIT_GRACE_S = 60


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Never let a leaked thread turn a finished run into a hung CI job.

    pytest keeps the last failure's traceback (``sys.last_*``); its frames can hold an unclosed
    aiosqlite connection, whose worker thread is not a daemon: the interpreter then waits for it
    forever after the summary. Drop those references so the connection's finaliser stops it; if a
    thread still holds the exit, dump every thread's stack and exit with status 1 after a grace.
    """
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=sys.__stderr__)
