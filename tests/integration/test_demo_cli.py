"""`gateway demo` as a new user runs it: it says where its broker is, prints the status page
address it really serves (and says so when it serves none), `--quiet` prints the summary alone,
and the state it keeps is private to the user (0600)."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, gateway_cmd, gateway_env

pytestmark = pytest.mark.integration


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = gateway_cmd("demo", "--speed", "300", "--duration", "120", *args)
    return subprocess.run(cmd, capture_output=True, text=True, env=gateway_env(), timeout=120, check=False)


def summary(stdout: str) -> dict[str, object]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("demo summary: "))
    return dict(json.loads(line.removeprefix("demo summary: ")))


def test_broker_port_status_address_and_private_state(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    r = demo("--broker-port", str(port), "--status-port", "0", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"broker: mqtt://127.0.0.1:{port} (" in r.stdout
    m = re.search(r"status page: http://127\.0\.0\.1:(\d+)/  \(user tech, password \S+\)", r.stdout)
    assert m is not None and int(m.group(1)) > 0, r.stdout  # the port it bound, not the 0 asked for
    assert summary(r.stdout)["gw-demo"]["gaps"] == []  # type: ignore[index]
    # the demo's stand-in signs its commands: the gateway accepted them
    assert re.search(r"cloud <- reply demo-campaigns\.put-\S+ ok=True", r.stdout), r.stdout
    files = [p for p in state.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"outbox.sqlite3", "content.sqlite3", "content.key", "presence.sqlite3"}
    private = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.name != "command.pub"}
    assert set(private.values()) == {"0o600"}, private
    assert "Traceback" not in r.stderr


def test_status_port_taken_is_said_and_no_address_printed(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = demo("--status-port", str(busy))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"status page: not served (port {busy} unavailable" in r.stdout
    assert "http://" not in r.stdout


def test_quiet_prints_the_summary_alone() -> None:
    r = demo("--quiet", "--status-port", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("demo summary: "), r.stdout
    # logs: warnings and errors only
    levels = {json.loads(ln).get("level") for ln in r.stderr.splitlines() if ln.startswith("{")}
    assert levels <= {"warning", "error"}, r.stderr[-2000:]
    assert not [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("{")], r.stderr
